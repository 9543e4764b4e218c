/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* Fixture of the unit tests that drive real images (image_fixture.h). */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "image_fixture.h"
#include "qcow2_check.h"
#include "engine/engine.h"

static char fx_dir[64];
char fx_image[128];
char fx_log[128];

int fx_setup(void **state)
{
	const char *tmp = getenv("TMPDIR");

	(void)state;
	snprintf(fx_dir, sizeof(fx_dir), "%s/qcow2-unit-XXXXXX",
		 tmp && *tmp && strlen(tmp) < 40 ? tmp : "/tmp");
	if (!mkdtemp(fx_dir)) {
		perror("mkdtemp");
		return -1;
	}
	snprintf(fx_image, sizeof(fx_image), "%s/t.qcow2", fx_dir);
	snprintf(fx_log, sizeof(fx_log), "%s/fault.log", fx_dir);
	return 0;
}

/* Images open now, so that a test that fails midway (cmocka jumps out
 * of it) does not leave them open, and locked, for the next. */
#define MAXOPEN 4
static struct fx open_now[MAXOPEN];

static void remember(const struct fx *h)
{
	for (int i = 0; i < MAXOPEN; i++) {
		if (!open_now[i].img) {
			open_now[i] = *h;
			return;
		}
	}
	fail_msg("more than %d images open", MAXOPEN);
}

static void forget(const struct qcow2_image *img)
{
	for (int i = 0; i < MAXOPEN; i++)
		if (open_now[i].img == img)
			memset(&open_now[i], 0, sizeof(open_now[i]));
}

int fx_cleanup(void **state)
{
	(void)state;
	for (int i = 0; i < MAXOPEN; i++) {
		struct fx h = open_now[i];

		if (!h.img)
			continue;
		qcow2_ctx_run(h.ctx);
		fx_close(&h);
	}
	return 0;
}

int fx_teardown(void **state)
{
	(void)state;
	unlink(fx_image);
	unlink(fx_log);
	return rmdir(fx_dir) < 0 ? -1 : 0;
}

void fx_create(const struct qcow2_create_opts *co)
{
	struct qcow2_error err = { "" };
	int ret = qcow2_create(fx_image, co, &err);

	if (ret < 0)
		print_error("create %s: %s\n", fx_image, err.msg);
	assert_int_equal(ret, 0);
}

void fx_open(struct fx *h, unsigned flags, const struct qcow2_fault_opts *fo,
	     bool log)
{
	struct qcow2_fault_opts f = { .log_fd = -1 };
	struct qcow2_ctx_opts xo = { .backend = QCOW2_BACKEND_SYNC };
	struct qcow2_open_opts oo = { .flags = flags };
	struct qcow2_error err = { "" };
	int ret;

	h->log_fd = -1;
	if (fo || log) {
		if (fo)
			f = *fo;
		f.log_fd = -1;
		if (log) {
			h->log_fd = open(fx_log, O_RDWR | O_CREAT | O_TRUNC |
						 O_CLOEXEC, 0644);
			assert_true(h->log_fd >= 0);
			f.log_fd = h->log_fd;
		}
	}
	assert_int_equal(fo || log ? qcow2_ctx_new_fault(&xo, &f, &h->ctx) :
			      qcow2_ctx_new(&xo, &h->ctx), 0);
	ret = qcow2_open(h->ctx, fx_image, &oo, &h->img, &err);
	if (ret < 0) {
		print_error("open %s: %s\n", fx_image, err.msg);
		qcow2_ctx_free(h->ctx);
		if (h->log_fd >= 0)
			close(h->log_fd);
		if (ret == -EINVAL && !(flags & QCOW2_OPEN_BUFFERED))
			skip(); /* no O_DIRECT on this file system */
	}
	assert_int_equal(ret, 0);
	remember(h);
}

void fx_close(struct fx *h)
{
	forget(h->img);
	qcow2_close(h->img, NULL);
	qcow2_ctx_free(h->ctx);
	if (h->log_fd >= 0)
		close(h->log_fd);
	h->img = NULL;
	h->ctx = NULL;
	h->log_fd = -1;
}

void fx_fill(uint8_t *buf, size_t len, unsigned tag)
{
	for (size_t i = 0; i < len; i++)
		buf[i] = tag ? (uint8_t)(tag * 31 + i / 512 * 7 + (i & 0xff)) : 0;
}

int fx_write(struct fx *h, uint64_t off, size_t len, unsigned tag)
{
	uint8_t *buf;
	int ret;

	assert_int_equal(posix_memalign((void **)&buf, 4096, len), 0);
	fx_fill(buf, len, tag);
	ret = qcow2_pwrite(h->img, buf, len, off);
	free(buf);
	return ret;
}

bool fx_holds(uint64_t off, size_t len, unsigned tag)
{
	struct fx h;
	uint8_t *got, *want = malloc(len);
	bool ok;

	assert_non_null(want);
	assert_int_equal(posix_memalign((void **)&got, 4096, len), 0);
	fx_fill(want, len, tag);
	fx_open(&h, QCOW2_OPEN_BUFFERED, NULL, false);
	ok = qcow2_pread(h.img, got, len, off) == 0 && memcmp(got, want, len) == 0;
	fx_close(&h);
	free(got);
	free(want);
	return ok;
}

void fx_check(uint64_t leaks)
{
	struct qcow2_check_opts o = { .repair = QCOW2_CHECK_NO_REPAIR };
	struct qcow2_check_result res;
	struct qcow2_error err = { "" };

	memset(&res, 0, sizeof(res));
	assert_int_equal(qcow2_check(fx_image, &o, &res, &err), 0);
	assert_int_equal(res.corruptions, 0);
	assert_int_equal(res.check_errors, 0);
	assert_int_equal(res.leaks, leaks);
}

void fx_on_done(void *opaque, int result, const char *error)
{
	struct fx_done *d = opaque;

	assert_false(d->done); /* exactly once */
	d->done = true;
	d->err = result;
	/* a message exactly when the request failed */
	assert_true((result < 0) == (error != NULL));
	if (error) {
		assert_true(error[0] != '\0');
		snprintf(d->msg, sizeof(d->msg), "%s", error);
	}
}

int fx_wait(struct fx *h, struct fx_done *d)
{
	while (!d->done) {
		assert_true(qcow2_ctx_inflight(h->ctx) > 0);
		assert_true(qcow2_ctx_process(h->ctx, true) >= 0);
	}
	return d->err;
}

struct rc_wait {
	struct slice_waiter w; /* first */
	bool woken;
	int err;
};

static void rc_wake(struct slice_waiter *w, int err)
{
	struct rc_wait *x = (struct rc_wait *)w;

	x->woken = true;
	x->err = err;
}

uint64_t fx_refcount(struct fx *h, uint64_t host)
{
	struct rc_wait w = { .w.wake = rc_wake };
	uint64_t rc = 0;

	for (int tries = 0; tries < 4; tries++) {
		int ret = refcount_get(h->img, host, &rc, &w.w);

		if (ret == 0)
			return rc;
		assert_int_equal(ret, -EAGAIN);
		while (!w.woken) {
			assert_true(qcow2_ctx_inflight(h->ctx) > 0);
			assert_true(qcow2_ctx_process(h->ctx, true) >= 0);
		}
		assert_int_equal(w.err, 0);
		w.woken = false;
	}
	fail_msg("the refcount of %#llx cannot be read",
		 (unsigned long long)host);
	return 0;
}

void fx_status(struct fx *h, uint64_t off, struct qcow2_extent *ext)
{
	assert_int_equal(qcow2_block_status(h->img, off, h->img->cluster_size,
					    ext), 0);
}

static int log_walk(const struct fx *h, uint64_t first, struct fx_rec *out,
		    int max, unsigned ops, uint64_t *count)
{
	struct qcow2_fault_record rec;
	uint64_t i = 0;
	off_t pos = 0;
	int n = 0;

	assert_true(h->log_fd >= 0);
	while (pread(h->log_fd, &rec, sizeof(rec), pos) == (ssize_t)sizeof(rec)) {
		uint32_t type = le32toh(rec.type);
		uint64_t len = le64toh(rec.len);

		pos += (off_t)sizeof(rec);
		if (type == QCOW2_FAULT_REC_WRITE)
			pos += (off_t)len;
		if ((type == QCOW2_FAULT_REC_WRITE && (ops & QCOW2_FAULT_WRITE)) ||
		    (type == QCOW2_FAULT_REC_FSYNC && (ops & QCOW2_FAULT_FSYNC)))
			(*count)++;
		if (out && i >= first && n < max)
			out[n++] = (struct fx_rec){ type, le64toh(rec.offset), len };
		i++;
	}
	return n;
}

uint64_t fx_log_count(const struct fx *h, unsigned ops)
{
	uint64_t count = 0;

	log_walk(h, 0, NULL, 0, ops, &count);
	return count;
}

int fx_log_read(const struct fx *h, uint64_t first, struct fx_rec *out,
		int max)
{
	uint64_t count = 0;

	return log_walk(h, first, out, max, 0, &count);
}
