/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* The public API's growth rule: option structs end in reserved words the
 * caller leaves zero; a nonzero one (a field this version does not know)
 * fails the call with -EINVAL and does nothing. */
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
	assert_int_equal(qcow2_close(img), 0);
	qcow2_ctx_free(ctx);

	ko.reserved[2] = 1;
	assert_int_equal(qcow2_check(path, &ko, &res, &err), -EINVAL);
	ko.reserved[2] = 0;
	assert_int_equal(qcow2_check(path, &ko, &res, &err), 0);
	assert_int_equal(res.corruptions + res.leaks, 0);
	for (size_t i = 0; i < sizeof(res.reserved) / sizeof(res.reserved[0]); i++)
		assert_int_equal(res.reserved[i], 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_ctx_opts),
		cmocka_unit_test(test_create_open_check_opts),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
