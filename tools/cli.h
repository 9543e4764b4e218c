/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* Shared command-line plumbing of the tools: options every command takes,
 * size parsing, opening an image with a context. */
#ifndef QCOW2_TOOLS_CLI_H
#define QCOW2_TOOLS_CLI_H

#include <stdbool.h>
#include <stdint.h>

#include "cli_units.h"
#include "qcow2.h"

extern const char *cli_prog; /* "qcow2-img", "qcow2-io" */

struct cli_open {
	enum qcow2_backend backend;  /* -i io_uring|sync */
	bool buffered;               /* -t writeback (default none: O_DIRECT) */
	bool raw;                    /* -f raw, or probed */
	bool format_set;             /* -f given (else the format is probed) */
	bool rdwr;
	uint64_t l2_cache;           /* --l2-cache */
	uint32_t l2_slice;           /* --l2-slice */
	unsigned depth;              /* io_uring queue depth */
	bool force_share;            /* -U: no image locks (read-only use) */
	bool no_backing;             /* do not open the backing chain */
};

/* Parse the shared options; returns 1 when opt was one, 0 when not, -1 on a
 * bad value (message printed). */
int cli_common_opt(struct cli_open *o, int opt, const char *arg);
/*
 * Open path with a new context; prints "prog: path: reason" on failure.
 * Without -f, the format of an image named on the command line is probed
 * as qemu-img does: qcow2 by its magic, otherwise raw with a warning (and
 * a probed raw image is not opened for writing: a write could make it look
 * like another format). Backing files are never probed.
 */
int cli_open_image(const struct cli_open *o, const char *path,
		   struct qcow2_ctx **ctx, struct qcow2_image **img);
/* cli_open_image() with the format as o says, never probed (backing files). */
int cli_open_as_is(const struct cli_open *o, const char *path,
		   struct qcow2_ctx **ctx, struct qcow2_image **img);
/* cli_open_as_is() that prints nothing: the reason is in err->msg. */
int cli_open_quiet(const struct cli_open *o, const char *path,
		   struct qcow2_ctx **ctx, struct qcow2_image **img,
		   struct qcow2_error *err);
/* Close (flushing a read-write image) and free the context; a failed final
 * flush is reported ("prog: path: ...") and returned. */
int cli_close_image(struct qcow2_ctx *ctx, struct qcow2_image *img);
/* A progress line on stderr when it is a terminal (or forced): "    (42.00/100%)". */
void cli_progress(bool enabled, uint64_t done, uint64_t total);

#define CLI_COMMON_LONGOPTS \
	{ "backend", required_argument, 0, 'i' }, \
	{ "cache", required_argument, 0, 't' }, \
	{ "format", required_argument, 0, 'f' }, \
	{ "l2-cache", required_argument, 0, 0x100 }, \
	{ "l2-slice", required_argument, 0, 0x101 }, \
	{ "force-share", no_argument, 0, 'U' }

#define CLI_COMMON_HELP \
	"  -i, --backend io_uring|sync   IO backend (default io_uring)\n" \
	"  -t, --cache none|writeback    none: O_DIRECT (default); writeback: page cache\n" \
	"  -f, --format qcow2|raw        format of IMAGE (default: qcow2 if it has the\n" \
	"                                qcow2 magic, else raw, with a warning)\n" \
	"      --l2-cache BYTES          L2 cache size (default: map the whole disk, <= 32M)\n" \
	"      --l2-slice BYTES          L2 slice size (default 4k)\n" \
	"  -U, --force-share             take no image lock: read an image another\n" \
	"                                process (QEMU) has open for writing\n"

#endif
