/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * Regression test: a cluster dropped by a discard must not be reused while
 * an in-place write issued before the discard is still in flight. In-place
 * writes do not wait for metadata changes; if the cluster were decremented
 * and handed to another guest cluster, the late write would land in that
 * cluster's data.
 *
 * The fault backend holds back the in-place write W to guest cluster 0
 * (host cluster X) until a later write to X overtakes it, or until enough
 * fdatasyncs have passed. Then: discard guest cluster 0; flush a few times
 * (the discard is durable, X could be freed, punched and pooled); write guest
 * cluster 1 whole (it would get X from the free pool); flush until W is
 * done. Guest cluster 1 must read its own data.
 *
 *   late_write DIR
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"
#include "qcow2_fault.h"

#define CS 65536u

struct done {
	int pending, err;
};

static void complete(void *opaque, int result, const char *error)
{
	struct done *d = opaque;

	if (error)
		fprintf(stderr, "late_write: a request failed: %s\n", error);
	if (result < 0 && !d->err)
		d->err = result;
	d->pending--;
}

static int wait_for(struct qcow2_ctx *ctx, struct done *d)
{
	while (d->pending)
		if (qcow2_ctx_process(ctx, true) < 0)
			return -EIO;
	return d->err;
}

static int open_image(const char *path, const struct qcow2_fault_opts *fo,
		      struct qcow2_ctx **ctx, struct qcow2_image **img)
{
	struct qcow2_ctx_opts xo = { .backend = QCOW2_BACKEND_SYNC };
	struct qcow2_open_opts oo = {
		.flags = QCOW2_OPEN_RDWR | QCOW2_OPEN_BUFFERED,
	};
	struct qcow2_error err = { "" };
	int ret = fo ? qcow2_ctx_new_fault(&xo, fo, ctx) : qcow2_ctx_new(&xo, ctx);

	if (ret == 0)
		ret = qcow2_open(*ctx, path, &oo, img, &err);
	if (ret < 0)
		fprintf(stderr, "late_write: %s: %s\n", path,
			err.msg[0] ? err.msg : strerror(-ret));
	return ret;
}

int main(int argc, char **argv)
{
	struct qcow2_create_opts co = { .size = 16 * CS, .cluster_size = CS };
	struct qcow2_fault_opts fo = { .log_fd = -1, .hold_write = true,
				       .hold_fsyncs = 64 };
	struct qcow2_error err = { "" };
	struct qcow2_extent x;
	struct qcow2_ctx *ctx;
	struct qcow2_image *img;
	struct done w = { 1, 0 }, d = { 1, 0 };
	static uint8_t buf[CS], wbuf[4096], rbuf[CS];
	char path[4096];
	int ret, flushes = 0;

	if (argc < 2) {
		fprintf(stderr, "usage: late_write DIR\n");
		return 2;
	}
	snprintf(path, sizeof(path), "%s/late_write.qcow2", argv[1]);
	ret = qcow2_create(path, &co, &err);
	if (ret < 0) {
		fprintf(stderr, "late_write: %s: %s\n", path, err.msg);
		return 1;
	}
	/* Guest cluster 0 gets host cluster X. */
	if (open_image(path, NULL, &ctx, &img) < 0)
		return 1;
	memset(buf, 0x11, CS);
	if (qcow2_pwrite(img, buf, CS, 0) < 0 || qcow2_fsync(img) < 0 ||
	    qcow2_block_status(img, 0, CS, &x) < 0 ||
	    x.type != QCOW2_EXTENT_DATA) {
		fprintf(stderr, "late_write: setting up guest cluster 0 failed\n");
		return 1;
	}
	qcow2_close(img, NULL);
	qcow2_ctx_free(ctx);

	fo.hold_offset = x.host_offset;
	if (open_image(path, &fo, &ctx, &img) < 0)
		return 1;
	/* W: in place into X (its L2 slice cached first, so that it takes
	 * the in-place path at once), held back. */
	if (qcow2_pread(img, rbuf, 4096, 0) < 0)
		return 1;
	memset(wbuf, 0x22, sizeof(wbuf));
	if (qcow2_write(img, 0, wbuf, sizeof(wbuf), complete, &w) < 0)
		return 1;
	/* The discard of guest cluster 0, made durable. */
	if (qcow2_discard(img, 0, CS, complete, &d) < 0 || wait_for(ctx, &d) < 0) {
		fprintf(stderr, "late_write: discard failed\n");
		return 1;
	}
	/* Flushes: the discard is durable, then (without the rule this tests)
	 * X is decremented, punched and pooled, which takes a few rounds. */
	for (int i = 0; i < 4; i++)
		if (qcow2_fsync(img) < 0)
			return 1;
	/* Guest cluster 1, written whole: from the free pool if X is there. */
	memset(buf, 0x33, CS);
	if (qcow2_pwrite(img, buf, CS, CS) < 0) {
		fprintf(stderr, "late_write: writing guest cluster 1 failed\n");
		return 1;
	}
	while (w.pending && flushes++ < 100)
		if (qcow2_fsync(img) < 0)
			return 1;
	if (wait_for(ctx, &w) < 0) {
		fprintf(stderr, "late_write: the held write failed\n");
		return 1;
	}
	if (qcow2_pread(img, rbuf, CS, CS) < 0)
		return 1;
	for (unsigned i = 0; i < CS; i++) {
		if (rbuf[i] != 0x33) {
			fprintf(stderr, "late_write: guest cluster 1 byte %u is 0x%02x, "
				"expected 0x33: a write issued before a discard landed "
				"in the cluster after it was reused\n", i, rbuf[i]);
			return 1;
		}
	}
	qcow2_close(img, NULL);
	qcow2_ctx_free(ctx);
	printf("late_write: ok (the held write completed after %d flushes)\n",
	       flushes);
	return 0;
}
