/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* L2 entry decoding: every kind of standard and extended entry. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "format/format.h"

static const struct l2_geom std64k = { 16, false, false };
static const struct l2_geom ext64k = { 16, true, false };
static const struct l2_geom std64k_df = { 16, false, true };

static void test_standard(void **state)
{
	uint64_t host;

	(void)state;
	assert_int_equal(l2_classify(&std64k, 0, 0, 0, &host), L2_READ_UNALLOCATED);
	assert_int_equal(l2_classify(&std64k, QCOW_OFLAG_COPIED | 0x50000, 0, 0, &host),
			 L2_READ_DATA);
	assert_int_equal(host, 0x50000);
	/* COPIED is irrelevant for reads */
	assert_int_equal(l2_classify(&std64k, 0x50000, 0, 0, &host), L2_READ_DATA);
	/* zero flag: plain and preallocated */
	assert_int_equal(l2_classify(&std64k, 1, 0, 0, &host), L2_READ_ZERO);
	assert_int_equal(l2_classify(&std64k, 0x50000 | 1, 0, 0, &host), L2_READ_ZERO);
	/* unaligned host offset is corrupt */
	assert_int_equal(l2_classify(&std64k, 0x50200, 0, 0, &host), L2_READ_INVALID);
	assert_int_equal(l2_classify(&std64k, QCOW_OFLAG_COMPRESSED | 0x1234, 0, 0, &host),
			 L2_READ_COMPRESSED);
}

static void test_data_file_offset_zero(void **state)
{
	uint64_t host = 99;

	(void)state;
	/* host offset 0 with COPIED means "allocated at 0" in a data file */
	assert_int_equal(l2_classify(&std64k_df, QCOW_OFLAG_COPIED, 0, 0, &host),
			 L2_READ_DATA);
	assert_int_equal(host, 0);
	assert_int_equal(l2_classify(&std64k, QCOW_OFLAG_COPIED, 0, 0, &host),
			 L2_READ_UNALLOCATED);
}

static void test_extended(void **state)
{
	uint64_t host;
	uint64_t e = QCOW_OFLAG_COPIED | 0x70000;
	/* sc 0 allocated, sc 1 zero, sc 2 unallocated, sc 31 allocated */
	uint64_t bm = (1ull << 0) | (1ull << 31) | (1ull << (32 + 1));

	(void)state;
	assert_int_equal(l2_classify(&ext64k, e, bm, 0, &host), L2_READ_DATA);
	assert_int_equal(host, 0x70000);
	assert_int_equal(l2_classify(&ext64k, e, bm, 1, &host), L2_READ_ZERO);
	assert_int_equal(l2_classify(&ext64k, e, bm, 2, &host), L2_READ_UNALLOCATED);
	assert_int_equal(l2_classify(&ext64k, e, bm, 31, &host), L2_READ_DATA);
	/* both allocated and zero: corrupt */
	assert_int_equal(l2_classify(&ext64k, e, 1ull | (1ull << 32), 0, &host),
			 L2_READ_INVALID);
	/* allocated subcluster without a host cluster: corrupt */
	assert_int_equal(l2_classify(&ext64k, 0, 1ull, 0, &host), L2_READ_INVALID);
	/* zero subcluster without host cluster is fine */
	assert_int_equal(l2_classify(&ext64k, 0, 1ull << 32, 0, &host), L2_READ_ZERO);
	assert_int_equal(l2_classify(&ext64k, 0, 0, 5, &host), L2_READ_UNALLOCATED);
	/* compressed clusters ignore the bitmap */
	assert_int_equal(l2_classify(&ext64k, QCOW_OFLAG_COMPRESSED | 77, 0, 3, &host),
			 L2_READ_COMPRESSED);
}

static void test_compressed_decode(void **state)
{
	uint64_t host, nb;

	(void)state;
	/* 64 KiB clusters: x = 62 - 8 = 54; 8 bits of sector count */
	l2_compressed_decode(16, (3ull << 54) | 0x123456, &host, &nb);
	assert_int_equal(host, 0x123456);
	assert_int_equal(nb, 3);
	/* 2 MiB clusters: x = 49; 13 bits of sector count */
	l2_compressed_decode(21, (0x1fffull << 49) | 0x1000, &host, &nb);
	assert_int_equal(host, 0x1000);
	assert_int_equal(nb, 0x1fff);
	/* 512-byte clusters: x = 61; 1 bit of sector count */
	l2_compressed_decode(9, (1ull << 61) | 0x200, &host, &nb);
	assert_int_equal(host, 0x200);
	assert_int_equal(nb, 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_standard),
		cmocka_unit_test(test_data_file_offset_zero),
		cmocka_unit_test(test_extended),
		cmocka_unit_test(test_compressed_decode),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
