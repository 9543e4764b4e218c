/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * Fixture of the unit tests that drive real images through the public API
 * and look at the engine's internal state (test_writeback.c,
 * test_free_lists.c): a temporary directory holding one image and one
 * fault log, handles on the sync or the fault backend, data patterns,
 * and synchronous access to refcounts and mappings. Failures are cmocka
 * assertions.
 */
#ifndef TESTS_UNIT_IMAGE_FIXTURE_H
#define TESTS_UNIT_IMAGE_FIXTURE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/engine.h"
#include "io/qcow2_fault.h"

/* The image and the fault log, in a directory made by fx_setup(). */
extern char fx_image[];
extern char fx_log[];

/* cmocka group setup and teardown: make and remove the directory. */
int fx_setup(void **state);
int fx_teardown(void **state);
/* cmocka test teardown: close the images a failed test left open. */
int fx_cleanup(void **state);

struct fx {
	struct qcow2_ctx *ctx;
	struct qcow2_image *img;
	int log_fd; /* the fault log, or -1 */
};

/* Create fx_image (replacing it). */
void fx_create(const struct qcow2_create_opts *co);
/* Open fx_image with flags on the sync backend (fo NULL) or the fault
 * backend. With log, the fault backend logs into fx_log (truncated) and
 * h->log_fd is its descriptor (fo's own log_fd is ignored). Skips the
 * test when O_DIRECT is asked for and the file system refuses it. */
void fx_open(struct fx *h, unsigned flags, const struct qcow2_fault_opts *fo,
	     bool log);
void fx_close(struct fx *h);

/* Deterministic contents of len bytes, told apart by tag. */
void fx_fill(uint8_t *buf, size_t len, unsigned tag);
/* Write fx_fill(tag) at guest off; returns the write's result. */
int fx_write(struct fx *h, uint64_t off, size_t len, unsigned tag);
/* Does [off, off+len) of a fresh read-only open of fx_image (page
 * cache) read fx_fill(tag) (tag 0: zeros)? */
bool fx_holds(uint64_t off, size_t len, unsigned tag);
/* qcow2_check of fx_image (closed): assert no corruption, no check
 * error, and `leaks` leaked clusters. */
void fx_check(uint64_t leaks);

/* Asynchronous requests: their callback's record, and a wait for it. */
struct fx_done {
	bool done;
	int err;
	char msg[256]; /* the failed request's own message */
};
void fx_on_done(void *opaque, int result, const char *error);
/* Run the context until d is done; returns its result. */
int fx_wait(struct fx *h, struct fx_done *d);

/* The refcount of the host cluster at host (loading its slice). */
uint64_t fx_refcount(struct fx *h, uint64_t host);
/* Block status of guest offset off (one cluster at most). */
void fx_status(struct fx *h, uint64_t off, struct qcow2_extent *ext);

/* The fault log: records of the kinds in ops (QCOW2_FAULT_WRITE,
 * QCOW2_FAULT_FSYNC) so far. A hole punch is logged as a write of zeros
 * but counted as QCOW2_FAULT_FALLOCATE by fail_at: count before any. */
uint64_t fx_log_count(const struct fx *h, unsigned ops);
struct fx_rec {
	uint32_t type; /* QCOW2_FAULT_REC_WRITE or _FSYNC */
	uint64_t offset;
	uint64_t len;
};
/* Records from the first-th (0-based) on, at most max; returns how many. */
int fx_log_read(const struct fx *h, uint64_t first, struct fx_rec *out,
		int max);

#endif
