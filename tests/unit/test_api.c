/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* The public API's rules: option structs end in reserved words the caller
 * leaves zero (a nonzero one, a field this version does not know, fails
 * the call with -EINVAL and does nothing); a failed request's message
 * travels with it to its callback. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <unistd.h>
#include <cmocka.h>

#include "qcow2.h"
#include "qcow2_check.h"
#include "io/qcow2_fault.h"

static char dir[] = "/tmp/qcow2-api-XXXXXX";
static char path[64];

static int setup(void **state)
{
	(void)state;
	if (!mkdtemp(dir))
		return -1;
	snprintf(path, sizeof(path), "%s/t.qcow2", dir);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	unlink(path);
	return rmdir(dir);
}

static void test_ctx_opts(void **state)
{
	struct qcow2_ctx_opts o = { .backend = QCOW2_BACKEND_SYNC };
	struct qcow2_ctx *ctx = NULL;

	(void)state;
	o.reserved[3] = 1;
	assert_int_equal(qcow2_ctx_new(&o, &ctx), -EINVAL);
	assert_null(ctx);
	o.reserved[3] = 0;
	assert_int_equal(qcow2_ctx_new(&o, &ctx), 0);
	qcow2_ctx_free(ctx);
}

static void test_create_open_check_opts(void **state)
{
	struct qcow2_create_opts co = { .size = 1 << 20 };
	struct qcow2_ctx_opts xo = { .backend = QCOW2_BACKEND_SYNC };
	struct qcow2_open_opts oo = { .flags = QCOW2_OPEN_BUFFERED };
	struct qcow2_check_opts ko = { 0 };
	struct qcow2_check_result res;
	struct qcow2_error err = { "" };
	struct qcow2_image *img = NULL;
	struct qcow2_ctx *ctx;

	(void)state;
	co.reserved[0] = 1;
	assert_int_equal(qcow2_create(path, &co, &err), -EINVAL);
	assert_int_equal(access(path, F_OK), -1); /* nothing created */
	co.reserved[0] = 0;
	assert_int_equal(qcow2_create(path, &co, &err), 0);

	assert_int_equal(qcow2_ctx_new(&xo, &ctx), 0);
	oo.reserved[0] = 7;
	assert_int_equal(qcow2_open(ctx, path, &oo, &img, &err), -EINVAL);
	assert_null(img);
	oo.reserved[0] = 0;
	assert_int_equal(qcow2_open(ctx, path, &oo, &img, &err), 0);
	assert_int_equal(qcow2_close(img, NULL), 0);
	qcow2_ctx_free(ctx);

	ko.reserved[2] = 1;
	assert_int_equal(qcow2_check(path, &ko, &res, &err), -EINVAL);
	ko.reserved[2] = 0;
	assert_int_equal(qcow2_check(path, &ko, &res, &err), 0);
	assert_int_equal(res.corruptions + res.leaks, 0);
	for (size_t i = 0; i < sizeof(res.reserved) / sizeof(res.reserved[0]); i++)
		assert_int_equal(res.reserved[i], 0);
}

/* qcow2_open_opts.allow_file: asked for every file the image names (the
 * backing file at every depth, the external data file) with the path as it
 * will be opened; a refusal fails the open with its errno and a message
 * naming the file; a data file the caller names itself is not asked. */
struct asked {
	int calls;
	char paths[4][128];
	char roles[4][32];
	const char *refuse; /* role refused, or NULL */
};

static int allow(void *opaque, const char *p, const char *role)
{
	struct asked *a = opaque;

	if (a->calls < 4) {
		snprintf(a->paths[a->calls], sizeof(a->paths[0]), "%s", p);
		snprintf(a->roles[a->calls], sizeof(a->roles[0]), "%s", role);
	}
	a->calls++;
	return a->refuse && !strcmp(role, a->refuse) ? -EACCES : 0;
}

static void test_allow_file(void **state)
{
	char base[80], mid[80], data[80], dpath[80];
	struct qcow2_create_opts co = { .size = 1 << 20 };
	struct qcow2_ctx_opts xo = { .backend = QCOW2_BACKEND_SYNC };
	struct qcow2_open_opts oo = { .flags = QCOW2_OPEN_BUFFERED,
				      .allow_file = allow };
	struct qcow2_error err = { "" };
	struct qcow2_image *img = NULL;
	struct qcow2_ctx *ctx;
	struct asked a = { 0 };

	(void)state;
	snprintf(base, sizeof(base), "%s/base.qcow2", dir);
	snprintf(mid, sizeof(mid), "%s/mid.qcow2", dir);
	snprintf(data, sizeof(data), "%s/d.qcow2", dir);
	snprintf(dpath, sizeof(dpath), "%s/d.raw", dir);
	assert_int_equal(qcow2_create(base, &co, &err), 0);
	co.backing_file = "base.qcow2"; /* relative: beside the image */
	co.backing_format = "qcow2";
	assert_int_equal(qcow2_create(mid, &co, &err), 0);
	co.backing_file = "mid.qcow2";
	assert_int_equal(qcow2_create(path, &co, &err), 0);
	assert_int_equal(qcow2_ctx_new(&xo, &ctx), 0);
	oo.allow_file_opaque = &a;

	/* allowed: asked for each backing file, in chain order */
	assert_int_equal(qcow2_open(ctx, path, &oo, &img, &err), 0);
	assert_int_equal(qcow2_close(img, NULL), 0);
	assert_int_equal(a.calls, 2);
	assert_string_equal(a.paths[0], mid);
	assert_string_equal(a.roles[0], "backing file");
	assert_string_equal(a.paths[1], base);

	/* refused: the open fails with the callback's errno, names the file */
	memset(&a, 0, sizeof(a));
	a.refuse = "backing file";
	img = NULL;
	assert_int_equal(qcow2_open(ctx, path, &oo, &img, &err), -EACCES);
	assert_null(img);
	assert_non_null(strstr(err.msg, mid));
	assert_non_null(strstr(err.msg, "not allow"));

	/* the external data file: asked as "data file" unless named */
	co.backing_file = NULL;
	co.backing_format = NULL;
	co.data_file = dpath;
	assert_int_equal(qcow2_create(data, &co, &err), 0);
	memset(&a, 0, sizeof(a));
	a.refuse = "data file";
	assert_int_equal(qcow2_open(ctx, data, &oo, &img, &err), -EACCES);
	assert_int_equal(a.calls, 1);
	assert_string_equal(a.roles[0], "data file");
	assert_non_null(strstr(err.msg, "d.raw"));
	oo.data_file = dpath;
	memset(&a, 0, sizeof(a));
	a.refuse = "data file";
	assert_int_equal(qcow2_open(ctx, data, &oo, &img, &err), 0);
	assert_int_equal(a.calls, 0);
	assert_int_equal(qcow2_close(img, NULL), 0);
	qcow2_ctx_free(ctx);
	unlink(base);
	unlink(mid);
	unlink(data);
	unlink(dpath);
}

/* An event loop that sleeps on qcow2_ctx_event_fd() must be woken for
 * every completion, including one deferred by a callback while other
 * deferred completions were still being run (regression: the fd was
 * signalled only when the deferred count went from 0 to 1, and a callback
 * running with another completion still queued found it at 2). */
struct chain {
	struct qcow2_image *img;
	uint8_t *buf;
	int done;
	bool started;
};

static void chain_done(void *opaque, int result, const char *error)
{
	struct chain *c = opaque;

	(void)error;
	assert_int_equal(result, 0);
	c->done++;
	if (!c->started) {
		/* an unallocated read completes in the call: deferred */
		c->started = true;
		assert_int_equal(qcow2_read(c->img, 0, c->buf, 4096, chain_done, c), 0);
	}
}

static void test_event_fd_deferred(void **state)
{
	struct qcow2_create_opts co = { .size = 1 << 20 };
	struct qcow2_open_opts oo = { .flags = QCOW2_OPEN_BUFFERED };
	struct qcow2_error err = { "" };
	struct qcow2_ctx *ctx;
	struct chain c = { 0 };
	struct pollfd pfd;
	int ret;

	(void)state;
	assert_int_equal(qcow2_create(path, &co, &err), 0);
	ret = qcow2_ctx_new(NULL, &ctx); /* io_uring: an event fd */
	if (ret == -ENOSYS || ret == -EPERM) {
		skip(); /* no io_uring here: nothing to wake */
		return;
	}
	assert_int_equal(ret, 0);
	pfd.fd = qcow2_ctx_event_fd(ctx);
	pfd.events = POLLIN;
	assert_true(pfd.fd >= 0);
	assert_int_equal(qcow2_open(ctx, path, &oo, &c.img, &err), 0);
	c.buf = malloc(3 * 4096);
	assert_non_null(c.buf);
	c.started = true; /* the first two do not chain */
	assert_int_equal(qcow2_read(c.img, 0, c.buf, 4096, chain_done, &c), 0);
	assert_int_equal(qcow2_read(c.img, 4096, c.buf + 4096, 4096, chain_done, &c), 0);
	c.started = false; /* the first callback starts a third read */
	/* the loop: sleep on the fd while anything is pending */
	while (qcow2_ctx_inflight(ctx) > 0) {
		assert_int_equal(poll(&pfd, 1, 2000), 1); /* 0: never woken */
		assert_true(qcow2_ctx_process(ctx, false) >= 0);
	}
	assert_int_equal(c.done, 3);
	assert_int_equal(qcow2_close(c.img, NULL), 0);
	qcow2_ctx_free(ctx);
	free(c.buf);
}

/* The same loop, when a completion posted at submission (a read served
 * from the page cache completes inline) and one the kernel left as
 * deferred task work (an O_DIRECT read done meanwhile) are both pending:
 * one round of processing must finish both (regression: the round read
 * the event fd, found the inline one, and returned; the other waited for
 * an unrelated later entry into the kernel, and the fd stayed quiet). */
static void count_done(void *opaque, int result, const char *error)
{
	(void)error;
	assert_int_equal(result, 0);
	(*(int *)opaque)++;
}

static void test_event_fd_inline_and_deferred(void **state)
{
	struct qcow2_create_opts co = { .size = 1 << 20 };
	struct qcow2_open_opts ob = { .flags = QCOW2_OPEN_BUFFERED | QCOW2_OPEN_RDWR };
	struct qcow2_open_opts od = { .flags = QCOW2_OPEN_RDWR };
	struct qcow2_error err = { "" };
	struct qcow2_image *imb, *imd;
	struct qcow2_ctx *ctx;
	char other[80];
	struct pollfd pfd;
	uint8_t *buf;
	int done = 0, ret;

	(void)state;
	snprintf(other, sizeof(other), "%s/direct.qcow2", dir);
	assert_int_equal(qcow2_create(path, &co, &err), 0);
	assert_int_equal(qcow2_create(other, &co, &err), 0);
	ret = qcow2_ctx_new(NULL, &ctx);
	if (ret == -ENOSYS || ret == -EPERM) {
		skip();
		return;
	}
	assert_int_equal(ret, 0);
	pfd.fd = qcow2_ctx_event_fd(ctx);
	pfd.events = POLLIN;
	assert_int_equal(qcow2_open(ctx, path, &ob, &imb, &err), 0);
	ret = qcow2_open(ctx, other, &od, &imd, &err);
	if (ret == -EINVAL) { /* no O_DIRECT on this file system */
		qcow2_close(imb, NULL);
		qcow2_ctx_free(ctx);
		unlink(other);
		skip();
		return;
	}
	assert_int_equal(ret, 0);
	assert_int_equal(posix_memalign((void **)&buf, 4096, 2 * 65536), 0);
	memset(buf, 0x5a, 2 * 65536);
	/* allocated data in both, the buffered one in the page cache */
	assert_int_equal(qcow2_pwrite(imb, buf, 65536, 0), 0);
	assert_int_equal(qcow2_pwrite(imd, buf, 65536, 0), 0);
	assert_int_equal(qcow2_fsync(imb), 0);
	assert_int_equal(qcow2_fsync(imd), 0);
	assert_int_equal(qcow2_pread(imb, buf, 65536, 0), 0);

	/* the O_DIRECT read completes in the kernel while we do nothing */
	assert_int_equal(qcow2_read(imd, 0, buf, 65536, count_done, &done), 0);
	assert_true(qcow2_ctx_submit(ctx) >= 0);
	usleep(200 * 1000);
	/* the cached read completes inline at submission */
	assert_int_equal(qcow2_read(imb, 0, buf + 65536, 65536, count_done, &done), 0);
	assert_true(qcow2_ctx_submit(ctx) >= 0);
	while (qcow2_ctx_inflight(ctx) > 0) {
		assert_int_equal(poll(&pfd, 1, 2000), 1); /* 0: never woken */
		assert_true(qcow2_ctx_process(ctx, false) >= 0);
	}
	assert_int_equal(done, 2);
	assert_int_equal(qcow2_close(imb, NULL), 0);
	assert_int_equal(qcow2_close(imd, NULL), 0);
	qcow2_ctx_free(ctx);
	free(buf);
	unlink(other);
}

struct done {
	int calls, result;
	char msg[512];
};

static void on_done(void *opaque, int result, const char *error)
{
	struct done *d = opaque;

	d->calls++;
	d->result = result;
	snprintf(d->msg, sizeof(d->msg), "%s", error ? error : "(none)");
}

/* A read and a write fail in the same round of completions, each with its
 * own reason: each callback gets its own message, not the last one the
 * image saw. */
static void test_request_messages(void **state)
{
	struct qcow2_create_opts co = { .size = 1 << 20 };
	struct qcow2_ctx_opts xo = { .backend = QCOW2_BACKEND_SYNC };
	struct qcow2_fault_opts fo = { .fail_at = 1, .fail_errno = EIO,
				       .fail_persist = true, .log_fd = -1,
				       .fail_ops = QCOW2_FAULT_READ | QCOW2_FAULT_FSYNC |
						   QCOW2_FAULT_WRITE };
	struct qcow2_open_opts oo = { .flags = QCOW2_OPEN_RDWR |
					       QCOW2_OPEN_BUFFERED };
	static uint8_t buf[2][65536];
	struct done r = { 0 }, w = { 0 }, ok = { 0 };
	struct qcow2_error err = { "" };
	struct qcow2_image *img;
	struct qcow2_ctx *ctx;

	(void)state;
	assert_int_equal(qcow2_create(path, &co, &err), 0);
	/* cluster 0 holds data, so that reading it reads the file */
	assert_int_equal(qcow2_ctx_new(&xo, &ctx), 0);
	assert_int_equal(qcow2_open(ctx, path, &oo, &img, &err), 0);
	assert_int_equal(qcow2_pwrite(img, buf[0], 65536, 0), 0);
	assert_int_equal(qcow2_close(img, &err), 0);
	qcow2_ctx_free(ctx);

	/* The smallest fail_at that lets the open and a first read through
	 * (the L2 slice is then cached): the next operation is the first to
	 * fail, and everything after it fails too. */
	for (;; fo.fail_at++) {
		assert_true(fo.fail_at < 64);
		assert_int_equal(qcow2_ctx_new_fault(&xo, &fo, &ctx), 0);
		if (qcow2_open(ctx, path, &oo, &img, &err) == 0) {
			if (qcow2_pread(img, buf[0], 65536, 0) == 0)
				break;
			qcow2_close(img, NULL);
		}
		qcow2_ctx_free(ctx);
	}
	assert_int_equal(qcow2_read(img, 0, buf[0], 65536, on_done, &r), 0);
	assert_int_equal(qcow2_write(img, 0, buf[1], 65536, on_done, &w), 0);
	assert_int_equal(qcow2_read(img, 65536, buf[1], 65536, on_done, &ok), 0);
	assert_int_equal(qcow2_ctx_run(ctx), 0);
	assert_int_equal(r.calls, 1);
	assert_int_equal(w.calls, 1);
	assert_int_equal(ok.calls, 1);
	assert_int_equal(r.result, -EIO);
	assert_int_equal(w.result, -EIO);
	assert_int_equal(ok.result, 0); /* unallocated: no IO, no message */
	assert_string_equal(ok.msg, "(none)");
	assert_non_null(strstr(r.msg, "read error"));
	assert_non_null(strstr(w.msg, "write error"));
	assert_non_null(strstr(r.msg, "t.qcow2"));
	/* the close's flush fails too (persistent EIO): its message comes
	 * back through err */
	assert_true(qcow2_close(img, &err) < 0);
	assert_true(err.msg[0] != '\0');
	qcow2_ctx_free(ctx);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_ctx_opts),
		cmocka_unit_test(test_create_open_check_opts),
		cmocka_unit_test(test_request_messages),
		cmocka_unit_test(test_allow_file),
		cmocka_unit_test(test_event_fd_deferred),
		cmocka_unit_test(test_event_fd_inline_and_deferred),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
