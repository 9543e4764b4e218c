/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * qcow2ctl: the operator's client of qcow2d's control socket. Each command
 * is one or a few JSON-RPC calls (ctl_rpc.c); this file knows the methods,
 * their params and results, and turns results into text for people or
 * prints them as JSON for scripts.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli_units.h"
#include "ctl.h"

#ifndef QCOW2CTL_VERSION
#define QCOW2CTL_VERSION "unknown"
#endif

struct ctl {
	const char *socket;          /* --socket; NULL: qcow2d's default */
	bool json;
	int timeout_ms;              /* 0: none */
	const char *cmd;             /* the command, for messages */
	struct ctl_conn conn;
	bool connected;
	unsigned service_stats_id;   /* request id of the last service.stats */
};

/* ---- help ---------------------------------------------------------------- */

static const char usage_text[] =
"Usage: qcow2ctl [--socket PATH] [--json] [--timeout SECONDS] COMMAND [ARGS]\n"
"\n"
"Control a running qcow2d, the qcow2 storage service: open and close\n"
"images, list them, describe them and read their counters. qcow2ctl speaks\n"
"JSON-RPC 2.0 to qcow2d's control socket; each command names the methods it\n"
"calls, and 'call' sends any method.\n"
"\n"
"Commands:\n"
"  open PATH [OPTIONS]   open an image in qcow2d (image.open)\n"
"  close NAME [--force]  flush and close an open image (image.close)\n"
"  list                  the open images, a table (image.list)\n"
"  info NAME             what an open image is: format, sizes, features,\n"
"                        cache and write-back settings (image.info)\n"
"  stats [NAME] [--reset] [--watch SECONDS]\n"
"                        an image's counters, or without NAME the service's\n"
"                        and every open image's (image.stats, service.stats);\n"
"                        --watch refreshes them and shows rates\n"
"  flush NAME            write an image's dirty metadata and sync it to disk\n"
"                        (image.flush)\n"
"  check NAME            check an open image online, read-only (image.check)\n"
"  detach NAME QUEUE     detach a client's queue (queue.detach)\n"
"  metrics               the statistics as OpenMetrics text (service.metrics)\n"
"  events [EVENT...]     print events as they happen (events.subscribe)\n"
"  version               the versions of qcow2ctl and of the running qcow2d\n"
"                        (service.version)\n"
"  call METHOD [PARAMS]  send any method, PARAMS a JSON object; print the raw\n"
"                        result (scripts, debugging; rpc.discover lists the\n"
"                        methods)\n"
"\n"
"'qcow2ctl COMMAND --help' (or 'qcow2ctl help COMMAND') describes a command\n"
"and its options.\n"
"\n"
"Options (before or after COMMAND):\n"
"  --socket PATH       qcow2d's control socket; the default is found as\n"
"                      qcow2d finds its own: $QCOW2D_SOCKET if set, else\n"
"                      /run/qcow2d/qcow2d.sock as root, else\n"
"                      $XDG_RUNTIME_DIR/qcow2d.sock\n"
"  --json              print the method's JSON result instead of text: one\n"
"                      object, indented by 2 (stats --watch: one compact\n"
"                      object per line and refresh); on a service error, the\n"
"                      JSON-RPC error object ({code, message, data})\n"
"  --timeout SECONDS   give up waiting for a reply after SECONDS (default,\n"
"                      or 0: wait; a close or a flush writes the image's\n"
"                      metadata, which may take a while)\n"
"  --version           print qcow2ctl's version and exit (without connecting)\n"
"  -h, --help          print this help and exit\n"
"\n"
"Output:\n"
"  Text is for people: aligned tables, \"key: value\" lines, sizes in\n"
"  B/KiB/MiB/GiB, times in µs/ms/s. It may change between versions: scripts\n"
"  use --json, whose keys are qcow2d's (schemas/ in the source describes\n"
"  them).\n"
"\n"
"Exit status:\n"
"  0  success\n"
"  1  qcow2d answered with an error (its message and class, e.g.\n"
"     \"[ImageNotFound]\", on stderr), or it could not be reached\n"
"  2  usage error: unknown command or option, missing or bad argument\n"
"\n"
"The socket is mode 0660: run qcow2ctl as the user qcow2d runs as, as root,\n"
"or as a member of the socket's group.\n"
"\n"
"Examples:\n"
"  qcow2ctl open --name vm1 /var/lib/images/vm1.qcow2\n"
"  qcow2ctl list\n"
"  qcow2ctl stats vm1 --watch 1\n"
"  qcow2ctl --json info vm1 | jq .virtual_size\n"
"  qcow2ctl call image.stats '{\"name\": \"vm1\", \"reset\": true}'\n"
"  qcow2ctl close vm1\n";

static const char common_help[] =
"\n"
"Common options: --socket PATH, --json, --timeout SECONDS, -h/--help (see\n"
"'qcow2ctl --help'). Exit status: 0 success, 1 error, 2 usage error.\n";

static const char open_help[] =
"Usage: qcow2ctl open PATH [OPTIONS]\n"
"\n"
"Open the image at PATH in qcow2d (image.open) and print the name it goes\n"
"by, its worker thread and whether it is read-only. A relative PATH is\n"
"taken from the current directory (qcow2d wants absolute paths), and so\n"
"are --backing and --data-file. qcow2d locks the image as QEMU does: an\n"
"image another process writes is refused ([Locked]), and so is a file or a\n"
"name that is already open ([AlreadyOpen]).\n"
"\n"
"Options:\n"
"  --name NAME           the name the other commands take (1 to 64 of A-Z\n"
"                        a-z 0-9 . _ -; default: PATH's file name)\n"
"  --read-only           open for reading only\n"
"  --buffered            go through the page cache (default: O_DIRECT)\n"
"  --l2-cache BYTES      L2 table cache size, with a k/M/G suffix or none\n"
"                        (default: enough to map the whole disk, at most\n"
"                        32 MiB)\n"
"  --l2-slice BYTES      L2 cache slice size, a power of two (default 4k)\n"
"  --flush-interval MS   write back metadata changed longer ago than this\n"
"                        (default: qcow2d's --flush-interval; 0: only on\n"
"                        flush, eviction and close)\n"
"  --worker N            the worker thread that serves the image (default:\n"
"                        the next one, round robin)\n"
"  --backing FILE        allow this backing file (at any depth of the chain)\n"
"                        though it is outside qcow2d's --allow-dir\n"
"                        directories\n"
"  --data-file FILE      the external data file to use instead of the one\n"
"                        the image names\n";

static const char close_help[] =
"Usage: qcow2ctl close NAME [--force]\n"
"\n"
"Close image NAME (image.close): qcow2d writes its dirty metadata, syncs it\n"
"and releases the image and its lock. If that final write fails, the image\n"
"is closed anyway and the error says so (exit 1): writes since the last\n"
"successful flush may be lost; check the image with qcow2-img check.\n"
"\n"
"Options:\n"
"  --force   close even while clients are attached to the image\n";

static const char list_help[] =
"Usage: qcow2ctl list\n"
"\n"
"List the images qcow2d has open (image.list), one row each:\n"
"  NAME     the name the other commands take\n"
"  STATE    open, opening or closing\n"
"  MODE     rw (read-write) or ro (read-only)\n"
"  WORKER   the worker thread that serves it\n"
"  CLIENTS  attached clients\n"
"  PATH     the path it was opened by\n";

static const char info_help[] =
"Usage: qcow2ctl info NAME\n"
"\n"
"Describe open image NAME (image.info), one \"key: value\" line each: path,\n"
"format and version, virtual and file size, cluster size, refcount width,\n"
"compression type, features (extended L2, lazy refcounts), the dirty and\n"
"corrupt bits, snapshots, backing and data files, read-only or read-write,\n"
"cache mode (O_DIRECT or page cache), block size and memory alignment, the\n"
"L2 cache, the lazy write-back interval, the worker thread and clients.\n"
"Fields that qcow2ctl does not know yet follow as they are.\n";

static const char stats_help[] =
"Usage: qcow2ctl stats [NAME] [--reset] [--watch SECONDS]\n"
"\n"
"Print image NAME's counters (image.stats); without NAME the service's\n"
"(service.stats) and then those of every open image.\n"
"\n"
"An image's counters cover the time since it was opened or since they were\n"
"last reset:\n"
"  requests     what clients' queues asked, per op (read, write, flush,\n"
"               write_zeroes, discard): requests, bytes, errors, mean\n"
"               latency and the 99th percentile (the histogram bucket it\n"
"               falls in); the engine's reads and writes; reads bounced\n"
"               through a buffer, clusters decompressed, requests\n"
"               forwarded to the backing file\n"
"  clusters     data clusters allocated, copied on write, freed, punched;\n"
"               refcount rebuilds (a dirty image, at open)\n"
"  write-backs  metadata write-backs by cause (client: a flush; timer: the\n"
"               lazy write-back; eviction: a cache needed room; close) and\n"
"               errors; slices and bytes written per table (L2, refcount\n"
"               blocks, L1, refcount table, header); fdatasyncs; latency:\n"
"               count, mean, maximum and the non-empty buckets of the\n"
"               histogram; whether metadata is dirty now\n"
"  caches       L2 and refcount caches: hits, misses, hit ratio, evictions,\n"
"               loads and bytes loaded, slices and their size\n"
"The service's: uptime, open images, connections, requests and errors by\n"
"method, and per worker thread its images, loop iterations and timer\n"
"write-backs.\n"
"\n"
"Options:\n"
"  --reset            zero the image's counters after reading them (every\n"
"                     open image's, without NAME; the service's own are never\n"
"                     reset)\n"
"  --watch SECONDS    print again every SECONDS (0.1 to 86400, fractions\n"
"                     allowed) until SIGINT (Ctrl-C) or SIGTERM, then exit 0.\n"
"                     On a terminal each refresh redraws the screen;\n"
"                     otherwise refreshes are appended. Each shows, per image,\n"
"                     the rates since the previous refresh (the first: since\n"
"                     the counters started): IOPS, MB/s (10^6 bytes) and mean\n"
"                     latency per op, write-backs per second by cause, and\n"
"                     whether metadata is dirty; without NAME also the\n"
"                     service's requests per second (other than the watch's\n"
"                     own) and errors per second. With --json, each\n"
"                     refresh is one line: the compact object that --json\n"
"                     prints once without --watch.\n"
"\n"
"With --json and no NAME, the object is {\"service\": SERVICE-STATS, \"images\":\n"
"{NAME: IMAGE-STATS, ...}}; an image that closes meanwhile is left out.\n";

static const char flush_help[] =
"Usage: qcow2ctl flush NAME\n"
"\n"
"Write image NAME's dirty metadata (L2 tables, refcounts, L1 table, header)\n"
"and fdatasync the file (image.flush), as a guest's flush does. Data that\n"
"clients wrote is then on disk.\n";

static const char check_help[] =
"Usage: qcow2ctl check NAME\n"
"\n"
"Check open image NAME online, read-only (image.check): qcow2d writes its\n"
"metadata back, then walks the file on its thread pool while IO goes on,\n"
"as qemu-img check would offline. Prints each problem (the first 100) and a\n"
"summary; says so when metadata was written back during the walk (what it\n"
"found may be a passing state: check again). Nothing is repaired: use\n"
"qcow2-img check -r on a closed image.\n"
"\n"
"Exit status: 0 no problem found, 3 corruptions, leaks or check errors,\n"
"1 the check could not run.\n";

static const char detach_help[] =
"Usage: qcow2ctl detach NAME QUEUE\n"
"\n"
"Detach queue QUEUE (its id, from the queue.attached event) of image NAME\n"
"(queue.detach): the requests it has in flight finish, then qcow2d hangs up\n"
"the client's connection.\n";

static const char metrics_help[] =
"Usage: qcow2ctl metrics\n"
"\n"
"Print the service's and every open image's statistics in the OpenMetrics\n"
"text format (service.metrics), as a Prometheus scraper reads them.\n";

static const char events_help[] =
"Usage: qcow2ctl events [EVENT...]\n"
"\n"
"Subscribe to events (events.subscribe; default: all of image.opened,\n"
"image.closed, queue.attached, queue.detached, io.error, image.corrupt)\n"
"and print one line per event as it comes: local time, event, data. With\n"
"--json, each event's params as one compact JSON object per line. Runs\n"
"until SIGINT (Ctrl-C) or SIGTERM, then exits 0.\n";

static const char version_help[] =
"Usage: qcow2ctl version\n"
"\n"
"Print qcow2ctl's version, then the running qcow2d's and its libraries'\n"
"(service.version). With --json: {\"qcow2ctl\": VERSION, \"service\": RESULT}.\n";

static const char call_help[] =
"Usage: qcow2ctl call METHOD [PARAMS]\n"
"\n"
"Send one JSON-RPC request, METHOD with PARAMS (a JSON object, or an array;\n"
"default: none), and print the reply's result as indented JSON whatever\n"
"--json says; on a service error, print its error object the same way (and\n"
"its message on stderr) and exit 1. 'qcow2ctl call rpc.discover' prints the\n"
"OpenRPC document that describes every method.\n"
"\n"
"Example:\n"
"  qcow2ctl call image.open '{\"path\": \"/srv/a.qcow2\", \"read_only\": true}'\n";

/* ---- errors and usage ---------------------------------------------------- */

static int usage_error(const struct ctl *ctl, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static int usage_error(const struct ctl *ctl, const char *fmt, ...)
{
	va_list ap;

	fputs("qcow2ctl: ", stderr);
	if (ctl->cmd)
		fprintf(stderr, "%s: ", ctl->cmd);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	if (ctl->cmd)
		fprintf(stderr, "\nTry 'qcow2ctl %s --help'.\n", ctl->cmd);
	else
		fputs("\nTry 'qcow2ctl --help'.\n", stderr);
	return 2;
}

static void print_json(json_t *j, bool compact)
{
	json_dumpf(j, stdout, (compact ? JSON_COMPACT : JSON_INDENT(2)) |
			      JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
	putchar('\n');
}

/* ---- talking to qcow2d --------------------------------------------------- */

static int connect_service(struct ctl *ctl)
{
	const char *origin = "given by --socket";
	char *path = NULL;
	int ret;

	if (ctl->connected)
		return 0;
	if (ctl->socket) {
		path = strdup(ctl->socket);
		ret = path ? 0 : -ENOMEM;
	} else {
		ret = ctl_default_socket(&path, &origin);
	}
	if (ret == -ENOENT) {
		fprintf(stderr, "qcow2ctl: no control socket to connect to: pass "
			"--socket PATH, or set QCOW2D_SOCKET (or XDG_RUNTIME_DIR, "
			"where qcow2d puts its socket when it runs as a user)\n");
		return ret;
	}
	if (ret < 0) {
		fprintf(stderr, "qcow2ctl: %s\n", strerror(-ret));
		return ret;
	}
	ret = ctl_connect(&ctl->conn, path);
	if (ret < 0) {
		fprintf(stderr, "qcow2ctl: cannot connect to %s (%s): %s\n", path,
			origin, strerror(-ret));
		if (ret == -EACCES || ret == -EPERM)
			fprintf(stderr, "qcow2ctl: the socket is mode 0660: run as "
				"qcow2d's user, as root or as a member of the "
				"socket's group\n");
		else if (ret == -ECONNREFUSED)
			fprintf(stderr, "qcow2ctl: nothing listens there: is qcow2d "
				"running? If it listens elsewhere, pass --socket PATH "
				"(or set QCOW2D_SOCKET)\n");
		else
			fprintf(stderr, "qcow2ctl: is qcow2d running? If it listens "
				"elsewhere, pass --socket PATH (or set "
				"QCOW2D_SOCKET)\n");
		free(path);
		return ret;
	}
	free(path);
	ctl->connected = true;
	return 0;
}

static void report_error(const struct ctl *ctl, json_t *error)
{
	const char *msg = json_string_value(json_object_get(error, "message"));
	char buf[32];

	if (ctl->json)
		print_json(error, false);
	fprintf(stderr, "qcow2ctl: %s [%s]\n", msg ? msg : "(no message)",
		ctl_error_class(error, buf, sizeof(buf)));
}

/*
 * Call method with params (taken). 0: *result is the reply's result.
 * -EREMOTEIO: the service answered with an error: handed back in *error
 * when error is not NULL, else reported. -EINTR: a stop signal (watch).
 * Other -errno: no reply (reported).
 */
static int rpc(struct ctl *ctl, const char *method, json_t *params,
	       json_t **result, json_t **error)
{
	json_t *err = NULL;
	int ret = connect_service(ctl);

	*result = NULL;
	if (error)
		*error = NULL;
	if (ret < 0) {
		json_decref(params);
		return ret;
	}
	ret = ctl_call(&ctl->conn, method, params, result, &err);
	if (ret == -EINTR)
		return ret;
	if (ret < 0) {
		fprintf(stderr, "qcow2ctl: %s: %s\n", method, ctl->conn.msg);
		return ret;
	}
	if (err) {
		if (error)
			*error = err;
		else {
			report_error(ctl, err);
			json_decref(err);
		}
		return -EREMOTEIO;
	}
	return 0;
}

/* ---- option parsing ------------------------------------------------------ */

enum {
	OPT_SOCKET = 0x200, OPT_JSON, OPT_TIMEOUT, OPT_VERSION,
	OPT_NAME, OPT_READ_ONLY, OPT_BUFFERED, OPT_L2_CACHE, OPT_L2_SLICE,
	OPT_FLUSH_INTERVAL, OPT_WORKER, OPT_BACKING, OPT_DATA_FILE, OPT_FORCE,
	OPT_RESET, OPT_WATCH,
};

#define COMMON_LONGOPTS                                            \
	{ "socket", required_argument, NULL, OPT_SOCKET },         \
	{ "json", no_argument, NULL, OPT_JSON },                   \
	{ "timeout", required_argument, NULL, OPT_TIMEOUT },       \
	{ "help", no_argument, NULL, 'h' }

static int parse_seconds(const char *s, double min, double max, double *out)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || *end || !isfinite(v) || v < min || v > max)
		return -EINVAL;
	*out = v;
	return 0;
}

static int parse_u32(const char *s, uint32_t *out)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s || *end || s[0] == '-' || v > UINT32_MAX)
		return -EINVAL;
	*out = (uint32_t)v;
	return 0;
}

/* The options every command takes: 1 taken, 0 not one, 2 a usage error
 * (reported). */
static int common_opt(struct ctl *ctl, int opt, const char *arg)
{
	double t;

	switch (opt) {
	case OPT_SOCKET:
		if (!*arg)
			return usage_error(ctl, "--socket: an empty path");
		ctl->socket = arg;
		return 1;
	case OPT_JSON:
		ctl->json = true;
		return 1;
	case OPT_TIMEOUT:
		if (parse_seconds(arg, 0, 86400, &t) < 0)
			return usage_error(ctl, "--timeout: expected seconds from 0 "
					   "to 86400, got '%s'", arg);
		ctl->timeout_ms = t > 0 && t < 0.001 ? 1 : (int)(t * 1000);
		ctl->conn.timeout_ms = ctl->timeout_ms;
		return 1;
	default:
		return 0;
	}
}

/*
 * getopt_long over a command's arguments. Returns the next option, -1 at
 * the end, or -2 when the command is done: --help printed (*status 0) or a
 * usage error reported (*status 2).
 */
static int next_opt(struct ctl *ctl, int argc, char **argv,
		    const struct option *opts, const char *help, int *status)
{
	for (;;) {
		/* No '+': options may follow operands (open PATH --name N).
		 * ':' first: a missing value is ours to word. */
		int c = getopt_long(argc, argv, ":h", opts, NULL), r;

		switch (c) {
		case 'h':
			fputs(help, stdout);
			fputs(common_help, stdout);
			*status = 0;
			return -2;
		case ':':
			*status = usage_error(ctl, "option '%s' needs a value",
					      argv[optind - 1]);
			return -2;
		case '?':
			if (optopt)
				*status = usage_error(ctl, "unknown option '-%c'",
						      optopt);
			else
				*status = usage_error(ctl, "unknown option '%s'",
						      argv[optind - 1]);
			return -2;
		default:
			r = common_opt(ctl, c, optarg);
			if (r == 1)
				continue;
			if (r == 2) {
				*status = 2;
				return -2;
			}
			return c;
		}
	}
}

/* The operands after the options: exactly min to max of them. */
static int operands(struct ctl *ctl, int argc, char **argv, int min, int max,
		    const char *what)
{
	int n = argc - optind;

	if (n < min)
		return usage_error(ctl, "missing %s", what);
	if (n > max)
		return usage_error(ctl, "unexpected argument '%s'",
				   argv[optind + max]);
	return 0;
}

static const struct option plain_opts[] = {
	COMMON_LONGOPTS,
	{ NULL, 0, NULL, 0 },
};

/* For commands with no options of their own: parse, then check the
 * operand count. -1: go on; else the exit status. */
static int parse_plain(struct ctl *ctl, int argc, char **argv, const char *help,
		       int min, int max, const char *what)
{
	int status = 0, c = next_opt(ctl, argc, argv, plain_opts, help, &status);

	if (c == -2)
		return status;
	if (c != -1)
		return usage_error(ctl, "unexpected option");
	if (operands(ctl, argc, argv, min, max, what))
		return 2;
	return -1;
}

/* A path as the service wants it: absolute, from our current directory. */
static char *absolute(const char *p)
{
	char cwd[PATH_MAX], *out;

	if (p[0] == '/')
		return strdup(p);
	if (!getcwd(cwd, sizeof(cwd)))
		return NULL;
	while (p[0] == '.' && p[1] == '/')
		p += 2; /* "./a.qcow2": tidier in image.list and qcow2d's log */
	if (asprintf(&out, "%s%s%s", cwd, strcmp(cwd, "/") ? "/" : "", p) < 0) {
		errno = ENOMEM;
		return NULL;
	}
	return out;
}

/* ---- open ---------------------------------------------------------------- */

static int set_path(json_t *params, const char *key, const char *path)
{
	char *abs = absolute(path);
	json_t *v;

	if (!abs)
		return -errno;
	/* NULL: not UTF-8, which JSON cannot carry */
	v = json_string(abs);
	free(abs);
	if (!v)
		return -EILSEQ;
	return json_object_set_new(params, key, v) < 0 ? -ENOMEM : 0;
}

static int cmd_open(struct ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
		COMMON_LONGOPTS,
		{ "name", required_argument, NULL, OPT_NAME },
		{ "read-only", no_argument, NULL, OPT_READ_ONLY },
		{ "buffered", no_argument, NULL, OPT_BUFFERED },
		{ "l2-cache", required_argument, NULL, OPT_L2_CACHE },
		{ "l2-slice", required_argument, NULL, OPT_L2_SLICE },
		{ "flush-interval", required_argument, NULL, OPT_FLUSH_INTERVAL },
		{ "worker", required_argument, NULL, OPT_WORKER },
		{ "backing", required_argument, NULL, OPT_BACKING },
		{ "data-file", required_argument, NULL, OPT_DATA_FILE },
		{ NULL, 0, NULL, 0 },
	};
	json_t *params = json_object(), *res;
	const char *backing = NULL, *data_file = NULL;
	int status = 2, c, ret;
	uint64_t size;
	uint32_t u;

	if (!params)
		return 1;
	while ((c = next_opt(ctl, argc, argv, opts, open_help, &status)) >= 0) {
		switch (c) {
		case OPT_NAME:
			if (json_object_set_new(params, "name", json_string(optarg))) {
				status = usage_error(ctl, "--name: not UTF-8");
				goto out;
			}
			break;
		case OPT_READ_ONLY:
			json_object_set_new(params, "read_only", json_true());
			break;
		case OPT_BUFFERED:
			json_object_set_new(params, "buffered", json_true());
			break;
		case OPT_L2_CACHE:
		case OPT_L2_SLICE:
			if (cli_parse_size(optarg, &size) < 0 ||
			    (c == OPT_L2_SLICE && size > UINT32_MAX) ||
			    size > INT64_MAX) {
				status = usage_error(ctl, "--%s: expected a size in "
						     "bytes (k, M, G suffixes), got '%s'",
						     c == OPT_L2_CACHE ? "l2-cache" :
									 "l2-slice", optarg);
				goto out;
			}
			json_object_set_new(params,
					    c == OPT_L2_CACHE ? "l2_cache_size" :
								"l2_slice_size",
					    json_integer((json_int_t)size));
			break;
		case OPT_FLUSH_INTERVAL:
		case OPT_WORKER:
			if (parse_u32(optarg, &u) < 0) {
				status = usage_error(ctl, "--%s: expected an integer "
						     "from 0 to 4294967295, got '%s'",
						     c == OPT_WORKER ? "worker" :
								       "flush-interval",
						     optarg);
				goto out;
			}
			json_object_set_new(params, c == OPT_WORKER ? "worker" :
								"flush_interval_ms",
					    json_integer(u));
			break;
		case OPT_BACKING:
			backing = optarg;
			break;
		case OPT_DATA_FILE:
			data_file = optarg;
			break;
		default:
			status = usage_error(ctl, "unexpected option");
			goto out;
		}
	}
	if (c == -2)
		goto out;
	if (operands(ctl, argc, argv, 1, 1, "PATH, the image to open"))
		goto out;
	if (!argv[optind][0] || (backing && !*backing) ||
	    (data_file && !*data_file)) {
		status = usage_error(ctl, "an empty path");
		goto out;
	}
	if ((ret = set_path(params, "path", argv[optind])) < 0 ||
	    (backing && (ret = set_path(params, "backing", backing)) < 0) ||
	    (data_file && (ret = set_path(params, "data_file", data_file)) < 0)) {
		if (ret == -EILSEQ) {
			status = usage_error(ctl, "a path that is not UTF-8 (JSON, "
					     "and so qcow2d, takes UTF-8 only)");
		} else {
			fprintf(stderr, "qcow2ctl: open: cannot make the path "
				"absolute: %s\n", strerror(-ret));
			status = 1;
		}
		goto out;
	}
	ret = rpc(ctl, "image.open", params, &res, NULL);
	params = NULL;
	if (ret < 0) {
		status = 1;
		goto out;
	}
	if (ctl->json)
		print_json(res, false);
	else
		printf("opened image '%s' (%s) on worker %llu, %s\n",
		       ctl_js(res, "name"), ctl_js(res, "path"), ctl_ju(res, "worker"),
		       json_is_true(ctl_jget(res, "read_only")) ? "read-only" :
								 "read-write");
	json_decref(res);
	status = 0;
out:
	json_decref(params);
	return status;
}

/* ---- close, flush -------------------------------------------------------- */

static int cmd_close(struct ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
		COMMON_LONGOPTS,
		{ "force", no_argument, NULL, OPT_FORCE },
		{ NULL, 0, NULL, 0 },
	};
	bool force = false;
	int status = 2, c;
	json_t *res;

	while ((c = next_opt(ctl, argc, argv, opts, close_help, &status)) >= 0) {
		if (c != OPT_FORCE)
			return usage_error(ctl, "unexpected option");
		force = true;
	}
	if (c == -2)
		return status;
	if (operands(ctl, argc, argv, 1, 1, "NAME, the image to close"))
		return 2;
	if (rpc(ctl, "image.close",
		json_pack("{s:s, s:b}", "name", argv[optind], "force", force), &res,
		NULL) < 0)
		return 1;
	if (ctl->json)
		print_json(res, false);
	else
		printf("closed image '%s'\n", argv[optind]);
	json_decref(res);
	return 0;
}

static int cmd_flush(struct ctl *ctl, int argc, char **argv)
{
	int status = parse_plain(ctl, argc, argv, flush_help, 1, 1,
				 "NAME, the image to flush");
	json_t *res;

	if (status >= 0)
		return status;
	if (rpc(ctl, "image.flush", json_pack("{s:s}", "name", argv[optind]), &res,
		NULL) < 0)
		return 1;
	if (ctl->json)
		print_json(res, false);
	else
		printf("flushed image '%s': its metadata is written and synced\n",
		       argv[optind]);
	json_decref(res);
	return 0;
}

/* ---- list ---------------------------------------------------------------- */

static int cmd_list(struct ctl *ctl, int argc, char **argv)
{
	int status = parse_plain(ctl, argc, argv, list_help, 0, 0, "");
	json_t *res, *img, *images;
	struct ctl_table *t;
	size_t i;

	if (status >= 0)
		return status;
	if (rpc(ctl, "image.list", NULL, &res, NULL) < 0)
		return 1;
	if (ctl->json) {
		print_json(res, false);
		json_decref(res);
		return 0;
	}
	images = json_object_get(res, "images");
	if (!json_array_size(images)) {
		printf("no images are open\n");
		json_decref(res);
		return 0;
	}
	if (!(t = ctl_table_new("llrrrl"))) {
		json_decref(res);
		return 1;
	}
	ctl_table_row(t);
	ctl_table_cell(t, "NAME");
	ctl_table_cell(t, "STATE");
	ctl_table_cell(t, "MODE");
	ctl_table_cell(t, "WORKER");
	ctl_table_cell(t, "CLIENTS");
	ctl_table_cell(t, "PATH");
	json_array_foreach(images, i, img) {
		ctl_table_row(t);
		ctl_table_cell(t, "%s", ctl_js(img, "name"));
		ctl_table_cell(t, "%s", ctl_js(img, "state"));
		ctl_table_cell(t, "%s",
			       json_is_true(ctl_jget(img, "read_only")) ? "ro" : "rw");
		ctl_table_cell(t, "%llu", ctl_ju(img, "worker"));
		ctl_table_cell(t, "%llu", ctl_ju(img, "clients"));
		ctl_table_cell(t, "%s", ctl_js(img, "path"));
	}
	ctl_table_print(t, stdout, 0);
	ctl_table_free(t);
	json_decref(res);
	return 0;
}

/* ---- info ---------------------------------------------------------------- */

/* "key: value" lines, values aligned. Each key of the result printed is
 * taken out of rest, so that what is left (fields newer than qcow2ctl) is
 * printed after them. */
struct kv {
	struct ctl_table *t;
	json_t *rest;
};

static void kv_line(struct kv *kv, const char *key, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void kv_line(struct kv *kv, const char *key, const char *fmt, ...)
{
	va_list ap;
	char *v;

	va_start(ap, fmt);
	if (vasprintf(&v, fmt, ap) < 0)
		v = NULL;
	va_end(ap);
	ctl_table_row(kv->t);
	ctl_table_cell(kv->t, "%s:", key);
	ctl_table_cell(kv->t, "%s", v ? v : "?");
	free(v);
}

/* key's value, taken out of rest (the result, which rest copies, still
 * holds it). */
static json_t *take(struct kv *kv, const char *key)
{
	json_t *v = json_object_get(kv->rest, key);

	if (v)
		json_object_del(kv->rest, key);
	return v;
}

static void info_lines(struct kv *kv, json_t *in, json_t *listed)
{
	char a[64], b[64];
	json_t *v;
	const char *key;

#define SIZE(key, exact, buf) ctl_fmt_size(ctl_ju(in, key), exact, buf, sizeof(buf))
	kv_line(kv, "name", "%s", json_string_value(take(kv, "name")));
	if (listed)
		kv_line(kv, "path", "%s", ctl_js(listed, "path"));
	v = take(kv, "format");
	if (json_is_string(v) && ctl_jget(in, "version")) {
		kv_line(kv, "format", "%s, version %llu", json_string_value(v),
			ctl_ju(in, "version"));
		take(kv, "version");
	} else {
		kv_line(kv, "format", "%s",
			json_is_string(v) ? json_string_value(v) : "?");
	}
	if (take(kv, "virtual_size"))
		kv_line(kv, "virtual size", "%s", SIZE("virtual_size", true, a));
	if (take(kv, "file_size"))
		kv_line(kv, "file size", "%s", SIZE("file_size", true, a));
	if (take(kv, "cluster_size"))
		kv_line(kv, "cluster size", "%s", SIZE("cluster_size", false, a));
	if (take(kv, "refcount_bits"))
		kv_line(kv, "refcount bits", "%llu", ctl_ju(in, "refcount_bits"));
	if ((v = take(kv, "compression_type")))
		kv_line(kv, "compression type", "%s", json_string_value(v));
	if (take(kv, "extended_l2"))
		kv_line(kv, "extended L2", "%s", ctl_yes_no(in, "extended_l2"));
	if (take(kv, "lazy_refcounts"))
		kv_line(kv, "lazy refcounts", "%s", ctl_yes_no(in, "lazy_refcounts"));
	if (take(kv, "dirty"))
		kv_line(kv, "dirty", "%s", ctl_yes_no(in, "dirty"));
	if (take(kv, "corrupt"))
		kv_line(kv, "corrupt", "%s", ctl_yes_no(in, "corrupt"));
	if ((v = take(kv, "corrupt_reason")))
		kv_line(kv, "found corrupt", "%s (writes refused; repair offline "
			"with qcow2-img check -r all)", json_string_value(v));
	if (take(kv, "snapshots"))
		kv_line(kv, "snapshots", "%llu", ctl_ju(in, "snapshots"));
	if (ctl_jget(in, "backing_file")) {
		const char *file = ctl_js(in, "backing_file"),
			   *path = ctl_js(in, "backing_path"),
			   *fmt = ctl_js(in, "backing_format");

		take(kv, "backing_file");
		take(kv, "backing_path");
		take(kv, "backing_format");
		if (!file)
			kv_line(kv, "backing file", "none");
		else if (path && strcmp(path, file))
			kv_line(kv, "backing file", "%s (opened as %s)", file, path);
		else
			kv_line(kv, "backing file", "%s", file);
		if (fmt)
			kv_line(kv, "backing format", "%s", fmt);
	}
	if (ctl_jget(in, "data_file")) {
		const char *df = json_string_value(take(kv, "data_file"));
		kv_line(kv, "data file", "%s", df ? df : "none");
	}
	if ((v = take(kv, "read_only")))
		kv_line(kv, "access", "%s",
			json_is_true(v) ? "read-only" : "read-write");
	if ((v = take(kv, "direct")))
		kv_line(kv, "cache mode", "%s", json_is_true(v) ?
			"none (O_DIRECT)" : "writeback (page cache)");
	if (take(kv, "block_size"))
		kv_line(kv, "block size", "%s", SIZE("block_size", false, a));
	if (take(kv, "mem_align"))
		kv_line(kv, "memory alignment", "%s", SIZE("mem_align", false, a));
	if (take(kv, "l2_cache_size")) {
		take(kv, "l2_slice_size");
		kv_line(kv, "L2 cache", "%s in %s slices",
			SIZE("l2_cache_size", false, a),
			SIZE("l2_slice_size", false, b));
	}
#undef SIZE
	if (take(kv, "flush_interval_ms")) {
		if (ctl_ju(in, "flush_interval_ms"))
			kv_line(kv, "write-back interval", "%llu ms",
				ctl_ju(in, "flush_interval_ms"));
		else
			kv_line(kv, "write-back interval", "off (metadata is written "
				"on flush, eviction and close only)");
	}
	if (listed) {
		kv_line(kv, "worker", "%llu", ctl_ju(listed, "worker"));
		kv_line(kv, "clients", "%llu", ctl_ju(listed, "clients"));
	}
	json_object_foreach(kv->rest, key, v) {
		char *text = json_is_string(v) ?
			strdup(json_string_value(v)) :
			json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
		char *k = strdup(key);

		for (char *p = k; p && *p; p++)
			if (*p == '_')
				*p = ' ';
		kv_line(kv, k ? k : key, "%s", text ? text : "?");
		free(text);
		free(k);
	}
}

static int cmd_info(struct ctl *ctl, int argc, char **argv)
{
	int status = parse_plain(ctl, argc, argv, info_help, 1, 1,
				 "NAME, the image to describe");
	json_t *res, *list = NULL, *img, *listed = NULL;
	struct kv kv;
	size_t i;

	if (status >= 0)
		return status;
	if (rpc(ctl, "image.info", json_pack("{s:s}", "name", argv[optind]), &res,
		NULL) < 0)
		return 1;
	if (ctl->json) {
		print_json(res, false);
		json_decref(res);
		return 0;
	}
	/* image.info has no path, worker or clients; image.list has. */
	if (rpc(ctl, "image.list", NULL, &list, NULL) < 0) {
		json_decref(res);
		return 1;
	}
	json_array_foreach(json_object_get(list, "images"), i, img) {
		const char *n = ctl_js(img, "name");

		if (n && !strcmp(n, argv[optind]))
			listed = img;
	}
	kv.t = ctl_table_new("ll");
	kv.rest = json_copy(res);
	if (!kv.t || !kv.rest) {
		ctl_table_free(kv.t);
		json_decref(kv.rest);
		json_decref(res);
		json_decref(list);
		return 1;
	}
	info_lines(&kv, res, listed);
	ctl_table_print(kv.t, stdout, 0);
	ctl_table_free(kv.t);
	json_decref(kv.rest);
	json_decref(res);
	json_decref(list);
	return 0;
}

/* ---- stats --------------------------------------------------------------- */

static bool skippable(json_t *error)
{
	char buf[32];
	const char *cls = ctl_error_class(error, buf, sizeof(buf));

	/* closed or closing since image.list listed it */
	return !strcmp(cls, "ImageNotFound") || !strcmp(cls, "Busy");
}

/*
 * One reading: image name's stats, or {"service": ..., "images": {name:
 * stats}}. 0, -EINTR (a stop signal), or -errno (reported).
 */
static int collect_stats(struct ctl *ctl, const char *name, bool reset,
			 json_t **out)
{
	json_t *sv, *list, *images, *img, *st, *err;
	size_t i;
	int ret;

	*out = NULL;
	if (name)
		return rpc(ctl, "image.stats",
			   json_pack("{s:s, s:b}", "name", name, "reset", reset), out,
			   NULL);
	if ((ret = rpc(ctl, "service.stats", NULL, &sv, NULL)) < 0)
		return ret;
	ctl->service_stats_id = ctl->conn.next_id;
	if ((ret = rpc(ctl, "image.list", NULL, &list, NULL)) < 0) {
		json_decref(sv);
		return ret;
	}
	images = json_object();
	ret = images ? 0 : -ENOMEM;
	json_array_foreach(json_object_get(list, "images"), i, img) {
		const char *n = ctl_js(img, "name");

		if (ret < 0)
			break;
		const char *state = ctl_js(img, "state");

		if (!n || !state || strcmp(state, "open"))
			continue;
		ret = rpc(ctl, "image.stats",
			  json_pack("{s:s, s:b}", "name", n, "reset", reset), &st, &err);
		if (ret == -EREMOTEIO && skippable(err)) {
			json_decref(err);
			ret = 0;
			continue;
		}
		if (ret == -EREMOTEIO) {
			report_error(ctl, err);
			json_decref(err);
		}
		if (ret == 0)
			json_object_set_new(images, n, st);
	}
	json_decref(list);
	if (ret < 0) {
		json_decref(sv);
		json_decref(images);
		return ret;
	}
	*out = json_pack("{s:o, s:o}", "service", sv, "images", images);
	return *out ? 0 : -ENOMEM;
}

/* ---- stats --watch ------------------------------------------------------- */

static volatile sig_atomic_t stop_signal;

static void on_stop(int sig)
{
	stop_signal = sig;
}

/*
 * SIGINT and SIGTERM are blocked but while we wait (ppoll with waitmask, in
 * our sleep and in ctl_call), so a stop is seen there at once and never
 * lost between a check and a wait. No SA_RESTART: the wait returns EINTR.
 */
static void stops_begin(struct ctl *ctl, sigset_t *orig, sigset_t *waitmask)
{
	struct sigaction sa = { .sa_handler = on_stop };
	sigset_t stops;

	sigemptyset(&stops);
	sigaddset(&stops, SIGINT);
	sigaddset(&stops, SIGTERM);
	sigprocmask(SIG_BLOCK, &stops, orig);
	*waitmask = *orig;
	sigdelset(waitmask, SIGINT);
	sigdelset(waitmask, SIGTERM);
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	ctl->conn.sigmask = waitmask;
	ctl->conn.stop = &stop_signal;
}

static void stops_end(struct ctl *ctl, const sigset_t *orig)
{
	ctl->conn.sigmask = NULL;
	ctl->conn.stop = NULL;
	/* Leave the mask as we found it: a second stop signal still pending
	 * (timeout(1) signals its child and then its process group) reaches
	 * on_stop now, not whatever runs at exit. */
	sigprocmask(SIG_SETMASK, orig, NULL);
}

static int watch_stats(struct ctl *ctl, const char *name, bool reset,
		       double interval)
{
	sigset_t waitmask, orig;
	bool tty = !ctl->json && isatty(STDOUT_FILENO);
	json_t *prev = NULL, *cur;
	unsigned prev_id = 0;
	int ret = 0;

	stops_begin(ctl, &orig, &waitmask);
	while (!stop_signal) {
		struct timespec ts;

		ret = collect_stats(ctl, name, reset, &cur);
		if (ret == -EINTR || stop_signal) {
			json_decref(cur);
			ret = 0;
			break;
		}
		if (ret < 0)
			break;
		if (ctl->json) {
			print_json(cur, true);
		} else {
			if (tty)
				fputs("\033[H\033[2J", stdout); /* home, clear */
			else if (prev)
				putchar('\n');
			ctl_print_watch_frame(prev, cur, name, reset, interval,
				    ctl->service_stats_id - prev_id, tty);
		}
		fflush(stdout);
		json_decref(prev);
		prev = cur;
		prev_id = ctl->service_stats_id;
		ts.tv_sec = (time_t)interval;
		ts.tv_nsec = (long)((interval - (double)ts.tv_sec) * 1e9);
		/* EINTR: the loop's test says whether it was a stop */
		if (ppoll(NULL, 0, &ts, &waitmask) < 0 && errno != EINTR) {
			ret = -errno;
			break;
		}
	}
	json_decref(prev);
	stops_end(ctl, &orig);
	return ret < 0 ? 1 : 0;
}

static int cmd_stats(struct ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
		COMMON_LONGOPTS,
		{ "reset", no_argument, NULL, OPT_RESET },
		{ "watch", required_argument, NULL, OPT_WATCH },
		{ NULL, 0, NULL, 0 },
	};
	bool reset = false;
	double watch = 0;
	int status = 2, c;
	const char *name;
	json_t *res, *st;
	const char *key;

	while ((c = next_opt(ctl, argc, argv, opts, stats_help, &status)) >= 0) {
		if (c == OPT_RESET)
			reset = true;
		else if (c == OPT_WATCH) {
			if (parse_seconds(optarg, 0.1, 86400, &watch) < 0)
				return usage_error(ctl, "--watch: expected seconds from "
						   "0.1 to 86400, got '%s'", optarg);
		} else
			return usage_error(ctl, "unexpected option");
	}
	if (c == -2)
		return status;
	if (operands(ctl, argc, argv, 0, 1, ""))
		return 2;
	name = optind < argc ? argv[optind] : NULL;
	if (watch > 0)
		return watch_stats(ctl, name, reset, watch);
	if (collect_stats(ctl, name, reset, &res) < 0)
		return 1;
	if (ctl->json) {
		print_json(res, false);
	} else if (name) {
		ctl_print_image_stats(res);
	} else {
		ctl_print_service_stats(json_object_get(res, "service"));
		json_object_foreach(json_object_get(res, "images"), key, st) {
			putchar('\n');
			ctl_print_image_stats(st);
		}
	}
	json_decref(res);
	return 0;
}

/* ---- version, call ------------------------------------------------------- */

static int cmd_version(struct ctl *ctl, int argc, char **argv)
{
	int status = parse_plain(ctl, argc, argv, version_help, 0, 0, "");
	json_t *res, *out;

	if (status >= 0)
		return status;
	if (!ctl->json) {
		/* Ours first: it is worth having when qcow2d cannot answer. */
		printf("qcow2ctl %s (jansson %s)\n", QCOW2CTL_VERSION, JANSSON_VERSION);
		fflush(stdout);
	}
	if (rpc(ctl, "service.version", NULL, &res, NULL) < 0)
		return 1;
	if (ctl->json) {
		out = json_pack("{s:s, s:O}", "qcow2ctl", QCOW2CTL_VERSION, "service",
				res);
		if (out)
			print_json(out, false);
		json_decref(out);
	} else {
		printf("%s %s (jansson %s, libuv %s)\n",
		       ctl_js(res, "name") ? ctl_js(res, "name") : "qcow2d",
		       ctl_js(res, "version") ? ctl_js(res, "version") : "?",
		       ctl_js(res, "jansson") ? ctl_js(res, "jansson") : "?",
		       ctl_js(res, "libuv") ? ctl_js(res, "libuv") : "?");
	}
	json_decref(res);
	return 0;
}

static int cmd_call(struct ctl *ctl, int argc, char **argv)
{
	int status = parse_plain(ctl, argc, argv, call_help, 1, 2,
				 "METHOD, the method to call");
	json_t *params = NULL, *res, *err;
	json_error_t jerr;
	int ret;

	if (status >= 0)
		return status;
	if (optind + 1 < argc) {
		params = json_loads(argv[optind + 1],
				    JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
		if (!params)
			return usage_error(ctl, "PARAMS is not JSON: %s (at column %d)",
					   jerr.text, jerr.column);
		if (!json_is_object(params) && !json_is_array(params)) {
			json_decref(params);
			return usage_error(ctl, "PARAMS must be a JSON object (or "
					   "array), got '%s'", argv[optind + 1]);
		}
	}
	ret = rpc(ctl, argv[optind], params, &res, &err);
	if (ret == -EREMOTEIO) {
		bool json = ctl->json;

		/* raw: the error object on stdout whatever --json says */
		ctl->json = true;
		report_error(ctl, err);
		ctl->json = json;
		json_decref(err);
		return 1;
	}
	if (ret < 0)
		return 1;
	print_json(res, false);
	json_decref(res);
	return 0;
}

/* ---- check, detach, metrics, events --------------------------------------- */

static int cmd_check(struct ctl *ctl, int argc, char **argv)
{
	int status = parse_plain(ctl, argc, argv, check_help, 1, 1,
				 "NAME, the image to check");
	json_t *res, *p;
	size_t i;
	long long corrupt, leaks, errors;

	if (status >= 0)
		return status;
	if (rpc(ctl, "image.check", json_pack("{s:s}", "name", argv[optind]), &res,
		NULL) < 0)
		return 1;
	corrupt = (long long)json_integer_value(json_object_get(res, "corruptions"));
	leaks = (long long)json_integer_value(json_object_get(res, "leaks"));
	errors = (long long)json_integer_value(json_object_get(res, "check_errors"));
	if (ctl->json) {
		print_json(res, false);
	} else {
		json_array_foreach(json_object_get(res, "problems"), i, p)
			printf("%s at 0x%llx: %s\n",
			       json_string_value(json_object_get(p, "kind")),
			       (unsigned long long)json_integer_value(
				       json_object_get(p, "offset")),
			       json_string_value(json_object_get(p, "message")));
		if ((long long)json_integer_value(json_object_get(res, "problems_total")) >
		    (long long)json_array_size(json_object_get(res, "problems")))
			printf("(only the first %zu problems are listed)\n",
			       json_array_size(json_object_get(res, "problems")));
		if (!corrupt && !leaks && !errors)
			printf("image '%s': no errors were found\n", argv[optind]);
		else
			printf("image '%s': %lld corruption(s), %lld leaked cluster(s), "
			       "%lld check error(s)\n", argv[optind], corrupt, leaks,
			       errors);
		if (!json_is_true(json_object_get(res, "consistent")))
			printf("metadata was written back during the check: what it "
			       "found may be a passing state; check again\n");
	}
	json_decref(res);
	return corrupt || leaks || errors ? 3 : 0;
}

static int cmd_detach(struct ctl *ctl, int argc, char **argv)
{
	int status = parse_plain(ctl, argc, argv, detach_help, 2, 2,
				 "NAME and QUEUE, the image and its queue's id");
	json_t *res;
	char *end;
	unsigned long long id;

	if (status >= 0)
		return status;
	errno = 0;
	id = strtoull(argv[optind + 1], &end, 10);
	if (errno || end == argv[optind + 1] || *end || argv[optind + 1][0] == '-')
		return usage_error(ctl, "QUEUE must be a queue id (a number), got '%s'",
				   argv[optind + 1]);
	if (rpc(ctl, "queue.detach",
		json_pack("{s:s, s:I}", "name", argv[optind], "queue", (json_int_t)id),
		&res, NULL) < 0)
		return 1;
	if (ctl->json)
		print_json(res, false);
	else
		printf("detaching queue %llu of image '%s'\n", id, argv[optind]);
	json_decref(res);
	return 0;
}

static int cmd_metrics(struct ctl *ctl, int argc, char **argv)
{
	int status = parse_plain(ctl, argc, argv, metrics_help, 0, 0, "");
	json_t *res;

	if (status >= 0)
		return status;
	if (rpc(ctl, "service.metrics", NULL, &res, NULL) < 0)
		return 1;
	if (ctl->json)
		print_json(res, false);
	else
		fputs(json_string_value(json_object_get(res, "text")), stdout);
	json_decref(res);
	return 0;
}

static int cmd_events(struct ctl *ctl, int argc, char **argv)
{
	int status = 0, c = next_opt(ctl, argc, argv, plain_opts, events_help,
				     &status);
	sigset_t waitmask, orig;
	json_t *list, *res, *msg;
	int ret = 0;

	if (c == -2)
		return status;
	if (c != -1)
		return usage_error(ctl, "unexpected option");
	list = json_array();
	for (int i = optind; i < argc && list; i++)
		json_array_append_new(list, json_string(argv[i]));
	/* no EVENT: all of them (an empty list would be none) */
	if (rpc(ctl, "events.subscribe",
		optind < argc ? json_pack("{s:o}", "events", list) :
				(json_decref(list), NULL),
		&res, NULL) < 0)
		return 1;
	json_decref(res);
	stops_begin(ctl, &orig, &waitmask);
	while (!stop_signal) {
		json_t *p;

		ret = ctl_read_message(&ctl->conn, &msg);
		if (ret == -EINTR || stop_signal) {
			ret = 0;
			break;
		}
		if (ret < 0) {
			fprintf(stderr, "qcow2ctl: events: %s\n", ctl->conn.msg);
			break;
		}
		p = json_object_get(msg, "params");
		if (ctl->json) {
			/* (16 digits: the timestamp's microseconds) */
			char *text = json_dumps(p, JSON_COMPACT | JSON_REAL_PRECISION(16));
			if (text)
				puts(text);
			free(text);
		} else {
			time_t t = (time_t)json_number_value(json_object_get(p, "timestamp"));
			char when[32], *data = json_dumps(json_object_get(p, "data"),
							 JSON_COMPACT);
			struct tm tm;

			strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S",
				 localtime_r(&t, &tm));
			printf("%s %-15s %s\n", when,
			       json_string_value(json_object_get(p, "event")),
			       data ? data : "");
			free(data);
		}
		fflush(stdout);
		json_decref(msg);
	}
	stops_end(ctl, &orig);
	return ret < 0 ? 1 : 0;
}

/* ---- main ---------------------------------------------------------------- */

static const struct command {
	const char *name;
	int (*fn)(struct ctl *ctl, int argc, char **argv);
} commands[] = {
	{ "open", cmd_open },   { "close", cmd_close },     { "list", cmd_list },
	{ "info", cmd_info },   { "stats", cmd_stats },     { "flush", cmd_flush },
	{ "version", cmd_version }, { "call", cmd_call },
	{ "check", cmd_check }, { "detach", cmd_detach },
	{ "metrics", cmd_metrics }, { "events", cmd_events },
};

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		COMMON_LONGOPTS,
		{ "version", no_argument, NULL, OPT_VERSION },
		{ NULL, 0, NULL, 0 },
	};
	struct ctl ctl = { .conn = { .fd = -1 } };
	char *help_argv[3] = { NULL, NULL, NULL };
	int c, r, status;

	/* '+': stop at COMMAND; its own options are the command's. */
	while ((c = getopt_long(argc, argv, "+:h", opts, NULL)) != -1) {
		switch (c) {
		case 'h':
			fputs(usage_text, stdout);
			return 0;
		case OPT_VERSION:
			printf("qcow2ctl %s\n", QCOW2CTL_VERSION);
			return 0;
		case ':':
			return usage_error(&ctl, "option '%s' needs a value",
					   argv[optind - 1]);
		case '?':
			return usage_error(&ctl, "unknown option '%s'",
					   argv[optind - 1]);
		default:
			r = common_opt(&ctl, c, optarg);
			if (r == 2)
				return 2;
		}
	}
	if (optind >= argc) {
		fputs(usage_text, stderr);
		return 2;
	}
	if (!strcmp(argv[optind], "help")) {
		static char help_opt[] = "--help";

		if (optind + 1 >= argc) {
			fputs(usage_text, stdout);
			return 0;
		}
		/* "help COMMAND" is "COMMAND --help" */
		help_argv[0] = argv[optind + 1];
		help_argv[1] = help_opt;
		argc = 2;
		argv = help_argv;
		optind = 0;
	}
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		if (strcmp(argv[optind], commands[i].name))
			continue;
		ctl.cmd = commands[i].name;
		argc -= optind;
		argv += optind;
		optind = 0; /* getopt starts over, on the command's arguments */
		status = commands[i].fn(&ctl, argc, argv);
		ctl_close(&ctl.conn);
		return status;
	}
	return usage_error(&ctl, "unknown command '%s'", argv[optind]);
}
