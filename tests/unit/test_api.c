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
	oo.reserved[1] = 7;
	assert_int_equal(qcow2_open(ctx, path, &oo, &img, &err), -EINVAL);
	assert_null(img);
	oo.reserved[1] = 0;
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
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
