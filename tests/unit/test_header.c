/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* Header parsing: valid headers decode field by field; every malformed
 * header is refused with a message naming the problem. */
#include <endian.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "format/format.h"

#define CLUSTER 65536u
#define FILE_SIZE (1u << 20)

static uint8_t buf[CLUSTER];

static void put32(size_t off, uint32_t v)
{
	v = htobe32(v);
	memcpy(buf + off, &v, 4);
}

static void put64(size_t off, uint64_t v)
{
	v = htobe64(v);
	memcpy(buf + off, &v, 8);
}

/* A minimal valid v3 header: 1 GiB, 64 KiB clusters, L1 at 0x30000. */
static void make_v3(void)
{
	memset(buf, 0, sizeof(buf));
	put32(0, QCOW2_MAGIC);
	put32(4, 3);
	put32(20, 16);
	put64(24, 1ull << 30);
	put32(36, 2);
	put64(40, 0x30000);
	put64(48, 0x10000);
	put32(56, 1);
	put32(96, 4);
	put32(100, 112);
}

static size_t ext_at = 112;

static void add_ext(uint32_t type, const void *data, uint32_t len)
{
	put32(ext_at, type);
	put32(ext_at + 4, len);
	memcpy(buf + ext_at + 8, data, len);
	ext_at += 8 + ((len + 7) & ~7u);
}

static int parse(struct qcow2_header *h, char *err)
{
	return qcow2_header_parse(buf, sizeof(buf), FILE_SIZE, h, err, 256);
}

static void expect_error(int code, const char *needle)
{
	struct qcow2_header h;
	char err[256] = "";
	int ret = parse(&h, err);

	assert_int_equal(ret, code);
	if (!strstr(err, needle))
		fail_msg("message '%s' does not mention '%s'", err, needle);
}

static void test_v3_valid(void **state)
{
	struct qcow2_header h;
	char err[256];

	(void)state;
	make_v3();
	assert_int_equal(parse(&h, err), 0);
	assert_int_equal(h.version, 3);
	assert_int_equal(h.cluster_bits, 16);
	assert_int_equal(h.size, 1ull << 30);
	assert_int_equal(h.l1_size, 2);
	assert_int_equal(h.l1_table_offset, 0x30000);
	assert_int_equal(h.refcount_order, 4);
	assert_int_equal(h.header_length, 112);
	assert_null(h.backing_file);
	qcow2_header_free(&h);
}

static void test_v2_valid(void **state)
{
	struct qcow2_header h;
	char err[256];
	const char *name = "base.qcow2";

	(void)state;
	make_v3();
	put32(4, 2);
	memset(buf + 72, 0, 40); /* v2 has no v3 fields */
	put64(8, 512);
	put32(16, (uint32_t)strlen(name));
	memcpy(buf + 512, name, strlen(name));
	assert_int_equal(parse(&h, err), 0);
	assert_int_equal(h.version, 2);
	assert_int_equal(h.refcount_order, 4);
	assert_int_equal(h.header_length, 72);
	assert_string_equal(h.backing_file, name);
	qcow2_header_free(&h);
}

static void test_extensions(void **state)
{
	struct qcow2_header h;
	char err[256];
	uint8_t feat[48] = { 0, 9 };
	uint8_t bitmaps[24] = { 0 };

	(void)state;
	make_v3();
	ext_at = 112;
	add_ext(QCOW2_EXT_BACKING_FORMAT, "qcow2", 5);
	add_ext(QCOW2_EXT_DATA_FILE, "data.raw", 8);
	memcpy(feat + 2, "frobnicate", 10);
	add_ext(QCOW2_EXT_FEATURE_TABLE, feat, 48);
	bitmaps[3] = 3;
	add_ext(QCOW2_EXT_BITMAPS, bitmaps, 24);
	add_ext(0x12345678, "x", 1); /* unknown: skipped */
	put64(72, 1ull << 2);        /* data file incompatible bit */
	assert_int_equal(parse(&h, err), 0);
	assert_string_equal(h.backing_format, "qcow2");
	assert_string_equal(h.data_file, "data.raw");
	assert_int_equal(h.nb_features, 1);
	assert_string_equal(qcow2_header_feature_name(&h, 0, 9), "frobnicate");
	assert_null(qcow2_header_feature_name(&h, 1, 9));
	assert_int_equal(h.nb_bitmaps, 3);
	assert_int_equal(h.nb_unknown_extensions, 1);
	qcow2_header_free(&h);
}

static void test_unknown_incompatible_named(void **state)
{
	uint8_t feat[48] = { 0, 10 };

	(void)state;
	make_v3();
	ext_at = 112;
	memcpy(feat + 2, "time travel", 11);
	add_ext(QCOW2_EXT_FEATURE_TABLE, feat, 48);
	put64(72, 1ull << 10);
	expect_error(-ENOTSUP, "bit 10");
	expect_error(-ENOTSUP, "time travel");
}

static void test_unknown_compatible_tolerated(void **state)
{
	struct qcow2_header h;
	char err[256];

	(void)state;
	make_v3();
	put64(80, 1ull << 40);
	put64(88, 1ull << 40);
	assert_int_equal(parse(&h, err), 0);
	qcow2_header_free(&h);
}

static void test_bad_magic(void **state)
{
	(void)state;
	make_v3();
	buf[0] = 'X';
	expect_error(-EINVAL, "magic");
}

static void test_bad_version(void **state)
{
	(void)state;
	make_v3();
	put32(4, 1);
	expect_error(-ENOTSUP, "version 1");
	put32(4, 4);
	expect_error(-ENOTSUP, "version 4");
}

static void test_cluster_bits(void **state)
{
	(void)state;
	make_v3();
	put32(20, 8);
	expect_error(-EINVAL, "cluster_bits 8");
	put32(20, 22);
	expect_error(-EINVAL, "cluster_bits 22");
	put32(20, 63);
	expect_error(-EINVAL, "cluster_bits 63");
}

static void test_header_length(void **state)
{
	(void)state;
	make_v3();
	put32(100, 64);
	expect_error(-EINVAL, "header_length 64");
}

static void test_encrypted(void **state)
{
	(void)state;
	make_v3();
	put32(32, 1);
	expect_error(-ENOTSUP, "encrypted");
}

static void test_l1(void **state)
{
	(void)state;
	make_v3();
	put64(40, 0x30200);
	expect_error(-EINVAL, "not aligned");
	make_v3();
	put32(36, (32u << 20) / 8 + 1);
	expect_error(-EINVAL, "too large");
	make_v3();
	put64(40, FILE_SIZE);
	expect_error(-EINVAL, "beyond the end");
	make_v3();
	put32(36, 1); /* 1 GiB needs 2 entries at 64 KiB clusters */
	expect_error(-EINVAL, "needs 2");
}

/* Table places QEMU refuses: past the largest file offset. */
static void test_table_offsets(void **state)
{
	uint8_t bitmaps[24] = { 0 };

	(void)state;
	make_v3();
	put64(48, 0xffffffffffff0000ull);
	expect_error(-EINVAL, "refcount table offset invalid");
	make_v3();
	put32(60, 1);
	put64(64, 0xffffffffffff0000ull);
	expect_error(-EINVAL, "snapshot table offset invalid");
	/* bitmaps: checked only while the autoclear bit trusts them */
	make_v3();
	ext_at = 112;
	bitmaps[3] = 1;
	bitmaps[15] = 0x10;                 /* directory size 16 */
	memset(bitmaps + 16, 0xff, 6);      /* offset 0xffffffffffff0000 */
	add_ext(QCOW2_EXT_BITMAPS, bitmaps, 24);
	put64(88, 1);
	expect_error(-EINVAL, "bitmap directory");
	put64(88, 0);
	{
		struct qcow2_header h;
		char err[256];
		assert_int_equal(parse(&h, err), 0);
		qcow2_header_free(&h);
	}
	make_v3();
	ext_at = 112;
	memset(bitmaps, 0, sizeof(bitmaps));
	bitmaps[0] = 0x01;                  /* 65536 bitmaps */
	add_ext(QCOW2_EXT_BITMAPS, bitmaps, 24);
	put64(88, 1);
	expect_error(-EINVAL, "bitmaps");
}

static void test_refcount_order(void **state)
{
	(void)state;
	make_v3();
	put32(96, 7);
	expect_error(-EINVAL, "refcount_order 7");
}

static void test_extl2_small_cluster(void **state)
{
	(void)state;
	make_v3();
	put32(20, 12);
	put32(36, 256);
	put64(40, 0x3000);
	put64(48, 0x1000);
	put64(72, 1ull << 4);
	expect_error(-EINVAL, "16 KiB");
}

static void test_compression_type(void **state)
{
	(void)state;
	make_v3();
	buf[104] = 1; /* zstd without the incompatible bit */
	expect_error(-EINVAL, "compression-type");
	buf[104] = 7;
	put64(72, 1ull << 3);
	expect_error(-EINVAL, "unknown compression type 7");
}

static void test_extension_overflow(void **state)
{
	(void)state;
	make_v3();
	put32(112, QCOW2_EXT_BACKING_FORMAT);
	put32(116, CLUSTER);
	expect_error(-EINVAL, "past the end");
}

static void test_backing_name(void **state)
{
	(void)state;
	make_v3();
	put64(8, CLUSTER - 4);
	put32(16, 10);
	expect_error(-EINVAL, "outside the header cluster");
	put64(8, 1024);
	put32(16, 2000);
	expect_error(-EINVAL, "length 2000");
}

static void test_raw_data_without_file(void **state)
{
	(void)state;
	make_v3();
	put64(88, 1ull << 1);
	expect_error(-EINVAL, "external data file");
}

static void test_short_buffer(void **state)
{
	struct qcow2_header h;
	char err[256] = "";

	(void)state;
	make_v3();
	assert_int_equal(qcow2_header_parse(buf, 50, FILE_SIZE, &h, err, 256),
			 -EINVAL);
	assert_non_null(strstr(err, "too short"));
	assert_int_equal(qcow2_header_parse(buf, 90, FILE_SIZE, &h, err, 256),
			 -EINVAL);
}

static void test_l1_entries_needed(void **state)
{
	(void)state;
	assert_int_equal(qcow2_l1_entries_needed(0, 16, 0), 0);
	assert_int_equal(qcow2_l1_entries_needed(1, 16, 0), 1);
	assert_int_equal(qcow2_l1_entries_needed(512ull << 20, 16, 0), 1);
	assert_int_equal(qcow2_l1_entries_needed((512ull << 20) + 1, 16, 0), 2);
	assert_int_equal(qcow2_l1_entries_needed(256ull << 20, 16, 1), 1);
	assert_int_equal(qcow2_l1_entries_needed((256ull << 20) + 1, 16, 1), 2);
	assert_int_equal(qcow2_l1_entries_needed(1ull << 20, 9, 0), 32);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_v3_valid),
		cmocka_unit_test(test_v2_valid),
		cmocka_unit_test(test_extensions),
		cmocka_unit_test(test_unknown_incompatible_named),
		cmocka_unit_test(test_unknown_compatible_tolerated),
		cmocka_unit_test(test_bad_magic),
		cmocka_unit_test(test_bad_version),
		cmocka_unit_test(test_cluster_bits),
		cmocka_unit_test(test_header_length),
		cmocka_unit_test(test_encrypted),
		cmocka_unit_test(test_l1),
		cmocka_unit_test(test_table_offsets),
		cmocka_unit_test(test_refcount_order),
		cmocka_unit_test(test_extl2_small_cluster),
		cmocka_unit_test(test_compression_type),
		cmocka_unit_test(test_extension_overflow),
		cmocka_unit_test(test_backing_name),
		cmocka_unit_test(test_raw_data_without_file),
		cmocka_unit_test(test_short_buffer),
		cmocka_unit_test(test_l1_entries_needed),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
