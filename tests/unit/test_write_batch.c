/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * Gathered data writes (cluster_write.c): the clusters one write request
 * allocates are written with one IO per run of them that lies back to back
 * in the file, whatever the request's buffers look like; a run is broken
 * where the file is; a failed gathered write fails every cluster in it and
 * maps none of them, and the image stays consistent.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <cmocka.h>

#include "image_fixture.h"

#define BUFFERED (QCOW2_OPEN_RDWR | QCOW2_OPEN_BUFFERED)
#define CS 65536u
#define MIB (1u << 20)

/* Host offset of a guest cluster holding data. */
static uint64_t host_of(struct fx *h, uint64_t guest)
{
	struct qcow2_extent ext;

	fx_status(h, guest, &ext);
	assert_int_equal(ext.type, QCOW2_EXTENT_DATA);
	return ext.host_offset;
}

/* The write records logged from the first-th on; returns how many. */
static int writes_since(struct fx *h, uint64_t first, struct fx_rec *out,
			int max)
{
	int n = fx_log_read(h, first, out, max);

	for (int i = 0; i < n; i++)
		assert_int_equal(out[i].type, QCOW2_FAULT_REC_WRITE);
	return n;
}

/* 2 MiB into a new image, one request: 32 new clusters, one write. */
static void test_new_clusters_one_write(void **state)
{
	struct qcow2_create_opts co = { .size = 16 << 20 };
	struct fx_rec rec[64];
	uint64_t before, host;
	struct fx h;
	int n;

	(void)state;
	fx_create(&co);
	fx_open(&h, BUFFERED, NULL, true);
	before = fx_log_count(&h, QCOW2_FAULT_WRITE | QCOW2_FAULT_FSYNC);
	assert_int_equal(fx_write(&h, MIB, 2 * MIB, 1), 0);
	n = writes_since(&h, before, rec, 64);
	assert_int_equal(n, 1);
	host = host_of(&h, MIB);
	assert_int_equal(rec[0].offset, host);
	assert_int_equal(rec[0].len, 2 * MIB);
	for (uint64_t g = 0; g < 2 * MIB; g += CS)
		assert_int_equal(host_of(&h, MIB + g), host + g);
	fx_close(&h);
	assert_true(fx_holds(MIB, 2 * MIB, 1));
	fx_check(0);
}

/* One request over clusters [0, 4): 2 already ours (written in place), the
 * rest new. The new ones land back to back in the file (0, 1, then 3) and
 * are one write though the request's bytes for them are not contiguous in
 * memory (the buffer is given as one iovec per cluster, 2 in between). */
static void test_run_follows_the_file(void **state)
{
	struct qcow2_create_opts co = { .size = 16 << 20 };
	struct fx_rec rec[16];
	struct iovec iov[4];
	uint8_t *buf[4], *want;
	uint64_t before, x;
	struct fx h;
	int n;

	(void)state;
	fx_create(&co);
	fx_open(&h, BUFFERED, NULL, true);
	assert_int_equal(fx_write(&h, 2 * CS, CS, 9), 0);
	x = host_of(&h, 2 * CS);
	want = malloc(4 * CS);
	assert_non_null(want);
	fx_fill(want, 4 * CS, 2);
	for (int i = 0; i < 4; i++) {
		assert_int_equal(posix_memalign((void **)&buf[i], 4096, CS), 0);
		memcpy(buf[i], want + (size_t)i * CS, CS);
		iov[i].iov_base = buf[i];
		iov[i].iov_len = CS;
	}
	before = fx_log_count(&h, QCOW2_FAULT_WRITE | QCOW2_FAULT_FSYNC);
	{
		struct fx_done d = { 0 };
		assert_int_equal(qcow2_writev(h.img, 0, iov, 4, fx_on_done, &d), 0);
		assert_int_equal(fx_wait(&h, &d), 0);
	}
	n = writes_since(&h, before, rec, 16);
	assert_int_equal(host_of(&h, 0), x + CS);
	assert_int_equal(host_of(&h, CS), x + 2 * CS);
	assert_int_equal(host_of(&h, 2 * CS), x);
	assert_int_equal(host_of(&h, 3 * CS), x + 3 * CS);
	assert_int_equal(n, 2);
	for (int i = 0; i < n; i++) {
		if (rec[i].offset == x) {
			assert_int_equal(rec[i].len, CS); /* in place */
		} else {
			assert_int_equal(rec[i].offset, x + CS);
			assert_int_equal(rec[i].len, 3 * CS);
		}
	}
	assert_int_not_equal(rec[0].offset, rec[1].offset);
	fx_close(&h);
	assert_true(fx_holds(0, 4 * CS, 2));
	fx_check(0);
	for (int i = 0; i < 4; i++)
		free(buf[i]);
	free(want);
}

/* The gathered write fails: the request fails with a message, none of its
 * clusters is mapped, the same write then succeeds, and the image checks
 * clean apart from the clusters the failed write had counted. */
static void test_gathered_write_fails(void **state)
{
	struct qcow2_create_opts co = { .size = 16 << 20 };
	struct qcow2_fault_opts fo = { .fail_errno = EIO,
				       .fail_ops = QCOW2_FAULT_WRITE };
	struct qcow2_extent ext;
	uint8_t *buf;
	struct fx h;

	(void)state;
	/* probe: the first write after open is the gathered one */
	fx_create(&co);
	fx_open(&h, BUFFERED, NULL, true);
	fo.fail_at = fx_log_count(&h, QCOW2_FAULT_WRITE) + 1;
	fx_close(&h);

	fx_create(&co);
	fx_open(&h, BUFFERED, &fo, false);
	assert_int_equal(posix_memalign((void **)&buf, 4096, 2 * MIB), 0);
	fx_fill(buf, 2 * MIB, 1);
	{
		struct fx_done d = { 0 };
		struct iovec v = { buf, 2 * MIB };
		assert_int_equal(qcow2_writev(h.img, 0, &v, 1, fx_on_done, &d), 0);
		assert_int_equal(fx_wait(&h, &d), -EIO);
		assert_non_null(strstr(d.msg, "write error"));
	}
	for (uint64_t g = 0; g < 2 * MIB; g += CS) {
		fx_status(&h, g, &ext);
		assert_int_not_equal(ext.type, QCOW2_EXTENT_DATA);
	}
	assert_int_equal(fx_write(&h, 0, 2 * MIB, 2), 0);
	assert_int_equal(qcow2_fsync(h.img), 0);
	fx_close(&h);
	assert_true(fx_holds(0, 2 * MIB, 2));
	fx_check(2 * MIB / CS);
	free(buf);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_new_clusters_one_write, fx_cleanup),
		cmocka_unit_test_teardown(test_run_follows_the_file, fx_cleanup),
		cmocka_unit_test_teardown(test_gathered_write_fails, fx_cleanup),
	};

	return cmocka_run_group_tests(tests, fx_setup, fx_teardown);
}
