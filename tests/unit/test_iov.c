/* SPDX-License-Identifier: MIT OR Apache-2.0 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "io/io.h"

static void test_slice_and_fill(void **state)
{
	char a[10], b[5], c[20];
	struct iovec iov[3] = { { a, 10 }, { b, 5 }, { c, 20 } };
	struct iovec out[3];
	char src[35], back[35];

	(void)state;
	assert_int_equal(iov_total(iov, 3), 35);
	assert_int_equal(iov_count_range(iov, 3, 8, 10), 3);
	assert_int_equal(iov_count_range(iov, 3, 10, 5), 1);
	assert_int_equal(iov_slice(iov, 3, 8, 10, out), 3);
	assert_ptr_equal(out[0].iov_base, a + 8);
	assert_int_equal(out[0].iov_len, 2);
	assert_ptr_equal(out[1].iov_base, b);
	assert_int_equal(out[1].iov_len, 5);
	assert_ptr_equal(out[2].iov_base, c);
	assert_int_equal(out[2].iov_len, 3);

	for (int i = 0; i < 35; i++)
		src[i] = (char)i;
	iov_from_buf(iov, 3, 0, src, 35);
	iov_memset(iov, 3, 9, 0x7f, 7);
	iov_to_buf(iov, 3, 0, back, 35);
	for (int i = 0; i < 35; i++)
		assert_int_equal(back[i], i >= 9 && i < 16 ? 0x7f : i);
}

static void test_aligned(void **state)
{
	static char buf[8192] __attribute__((aligned(4096)));
	struct iovec ok[2] = { { buf, 512 }, { buf + 512, 1024 } };
	struct iovec bad_base[1] = { { buf + 1, 512 } };
	struct iovec bad_len[1] = { { buf, 100 } };

	(void)state;
	assert_true(iov_aligned(ok, 2, 512, 512));
	assert_false(iov_aligned(ok, 2, 4096, 512));
	assert_false(iov_aligned(bad_base, 1, 512, 512));
	assert_false(iov_aligned(bad_len, 1, 512, 512));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_slice_and_fill),
		cmocka_unit_test(test_aligned),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
