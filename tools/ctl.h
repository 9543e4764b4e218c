/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * qcow2ctl's parts: a blocking JSON-RPC 2.0 client of qcow2d's control
 * socket (ctl_rpc.c), the text output's units, tables and JSON accessors
 * (ctl_fmt.c), and the text of stats results (ctl_stats.c). qcow2ctl.c
 * has the commands: which methods they call, with which params.
 */
#ifndef QCOW2_TOOLS_CTL_H
#define QCOW2_TOOLS_CTL_H

#include <jansson.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

/* ---- the control socket (ctl_rpc.c) ------------------------------------- */

struct ctl_conn {
	int fd;                      /* -1: not connected */
	int timeout_ms;              /* per reply; <= 0: wait as long as it takes */
	const sigset_t *sigmask;     /* while waiting (ppoll); NULL: as it is */
	volatile sig_atomic_t *stop; /* set by a signal handler: stop waiting */
	unsigned next_id;
	char *buf;                   /* bytes read past the last reply */
	size_t len, cap;
	char msg[512];               /* why the last call got no reply */
};

/*
 * The socket qcow2d listens on when started without --socket, found the
 * same way: $QCOW2D_SOCKET, else /run/qcow2d/qcow2d.sock as root, else
 * $XDG_RUNTIME_DIR/qcow2d.sock. *origin names the rule that applied
 * ("from $QCOW2D_SOCKET", "root's default", ...). -ENOENT when none
 * does; -ENOMEM.
 */
int ctl_default_socket(char **path, const char **origin);

/* Connect c (zeroed by the caller, or closed) to path; -errno with the
 * reason in c->msg. */
int ctl_connect(struct ctl_conn *c, const char *path);

/*
 * Send one request and wait for its reply. params (taken; NULL: none) is
 * a JSON object or array. 0: the service replied, and exactly one of
 * *result or *error is set (the caller's reference). -errno: no reply,
 * the reason in c->msg: -EINTR (a signal set *c->stop while we waited),
 * -ETIMEDOUT, -EPIPE or -ECONNRESET (the service went away), -EPROTO (a
 * reply that is not JSON-RPC 2.0 or not ours), -ENOMEM.
 */
int ctl_call(struct ctl_conn *c, const char *method, json_t *params,
	     json_t **result, json_t **error);

/* The next message qcow2d sends (after events.subscribe: notifications),
 * waiting as long as it takes unless a stop signal (c->stop) comes: 0 and
 * *msg, or -errno as ctl_call. */
int ctl_read_message(struct ctl_conn *c, json_t **msg);

void ctl_close(struct ctl_conn *c);

/* A JSON-RPC error object's class: data.class (qcow2d's domain errors,
 * e.g. "ImageNotFound"), else the name of a JSON-RPC code
 * ("InvalidParams"), else "code N" in buf. */
const char *ctl_error_class(json_t *error, char *buf, size_t len);

/* ---- text output (ctl_fmt.c) -------------------------------------------- */

/* A duration, three significant digits at most: "16 µs", "1.02 ms",
 * "12.5 s". */
void ctl_fmt_duration(double seconds, char *buf, size_t len);
/* Time up: "42 s", "5 min 3 s", "2 h 5 min", "3 d 4 h". */
void ctl_fmt_uptime(double seconds, char *buf, size_t len);
/* A size as cli_human_size() ("64 KiB", "1.5 MiB", "512 B"); exact adds
 * the count of bytes from 1 KiB up: "64 MiB (67108864 bytes)". Returns
 * buf. */
char *ctl_fmt_size(unsigned long long bytes, bool exact, char *buf, size_t len);

/* A table printed with aligned columns; cells are added left to right,
 * row by row. align: one letter a column, 'l' or 'r'. */
struct ctl_table;

struct ctl_table *ctl_table_new(const char *align);
/* Column col is at least width wide (a --watch refresh keeps its
 * columns where the previous one had them). */
void ctl_table_min_width(struct ctl_table *t, unsigned col, size_t width);
/* Start a row; its cells follow. */
int ctl_table_row(struct ctl_table *t);
int ctl_table_cell(struct ctl_table *t, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Print every row, indent spaces first, two spaces between columns; the
 * last column is not padded. */
void ctl_table_print(const struct ctl_table *t, FILE *f, int indent);
void ctl_table_free(struct ctl_table *t);

/* Display width of UTF-8 text (code points: "µs" is 2). */
size_t ctl_text_width(const char *s);

/* Values of a result by dotted path ("flush.by_cause.timer"). A member
 * that is missing or of another type reads as NULL, 0 or "no": a newer or
 * older qcow2d's result still prints. */
json_t *ctl_jget(json_t *o, const char *path);
unsigned long long ctl_ju(json_t *o, const char *path); /* counters */
double ctl_jd(json_t *o, const char *path);
const char *ctl_js(json_t *o, const char *path);
const char *ctl_yes_no(json_t *o, const char *path);

/* ---- stats as text (ctl_stats.c) ---------------------------------------- */

/* image.stats's result, grouped: requests, clusters, write-backs, caches. */
void ctl_print_image_stats(json_t *st);
/* service.stats's result: uptime, connections, requests by method,
 * workers. */
void ctl_print_service_stats(json_t *sv);
/*
 * One refresh of stats --watch: cur is image.stats's result (name given)
 * or {"service", "images": {name: stats}}; prev the previous refresh's
 * (NULL: the first), for the rates. reset_each: every reading reset the
 * counters. ours: requests the watch sent since the previous
 * service.stats (left out of the service's rate). tty: say how to stop.
 */
void ctl_print_watch_frame(json_t *prev, json_t *cur, const char *name,
			   bool reset_each, double interval, unsigned ours,
			   bool tty);

#endif
