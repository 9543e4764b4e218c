/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * The allocator's deferred frees (cluster_alloc.c, rule 3) on real images:
 * a host cluster dropped by a metadata change waits in frees_waiting, is
 * covered by the next flush (frees_flushing) while it runs, goes back to
 * waiting if that flush fails (not decremented, not reused), and is
 * decremented once a flush succeeds; at refcount 0 it enters the free pool
 * and the next allocating data write reuses it.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "image_fixture.h"

#define BUFFERED (QCOW2_OPEN_RDWR | QCOW2_OPEN_BUFFERED)
#define CS 65536u

static uint64_t cluster_of(uint64_t v)
{
	return v & ~(uint64_t)(CS - 1);
}

/* Host cluster of a guest cluster holding data. */
static uint64_t host_of(struct fx *h, uint64_t guest)
{
	struct qcow2_extent ext;

	fx_status(h, guest, &ext);
	assert_int_equal(ext.type, QCOW2_EXTENT_DATA);
	return ext.host_offset;
}

static void assert_lists(const struct qcow2_image *img, size_t waiting,
			 size_t flushing, size_t pool)
{
	assert_int_equal(img->alloc.frees_waiting_len, waiting);
	assert_int_equal(img->alloc.frees_flushing_len, flushing);
	assert_int_equal(img->alloc.free_pool_len, pool);
}

/* A cluster dropped by a discard (its hole punched once free), across a
 * failed flush and a good one. */
static void scenario_discard(struct fx *h, uint64_t *host)
{
	assert_int_equal(fx_write(h, 0, CS, 1), 0);
	*host = host_of(h, 0);
	assert_int_equal(qcow2_fsync(h->img), 0);
	assert_int_equal(qcow2_pdiscard(h->img, 0, CS), 0);
}

static void test_discard_cycle(void **state)
{
	struct qcow2_create_opts co = { .size = 16 << 20 };
	struct qcow2_fault_opts fo = { .fail_errno = ENOSPC,
				       .fail_ops = QCOW2_FAULT_WRITE };
	struct fx_done d = { 0 };
	struct qcow2_extent ext;
	struct qcow2_stats st;
	uint64_t host, h2;
	struct fx h;

	(void)state;
	/* probe: which write is the first of the flush after the discard */
	fx_create(&co);
	fx_open(&h, BUFFERED, NULL, true);
	scenario_discard(&h, &host);
	fo.fail_at = fx_log_count(&h, QCOW2_FAULT_WRITE) + 1;
	fx_close(&h);

	fx_create(&co);
	fx_open(&h, BUFFERED, &fo, false);
	scenario_discard(&h, &h2);
	assert_int_equal(h2, host);
	/* dropped: waiting, not decremented before a flush writes the entry
	 * that dropped it */
	assert_lists(h.img, 1, 0, 0);
	assert_int_equal(cluster_of(h.img->alloc.frees_waiting[0]), host);
	assert_int_equal(fx_refcount(&h, host), 1);
	fx_status(&h, 0, &ext);
	assert_int_not_equal(ext.type, QCOW2_EXTENT_DATA);

	/* a flush covers it while it runs; this one fails */
	assert_int_equal(qcow2_flush(h.img, fx_on_done, &d), 0);
	assert_lists(h.img, 0, 1, 0);
	assert_int_equal(cluster_of(h.img->alloc.frees_flushing[0]), host);
	assert_int_equal(fx_wait(&h, &d), -ENOSPC);
	/* back to waiting, once, not decremented, not in the pool */
	assert_lists(h.img, 1, 0, 0);
	assert_int_equal(cluster_of(h.img->alloc.frees_waiting[0]), host);
	assert_int_equal(fx_refcount(&h, host), 1);
	assert_int_equal(qcow2_get_stats(h.img, &st), 0);
	assert_int_equal(st.freed_clusters, 0);
	/* and not reusable: an allocating write fails until a flush works */
	assert_int_equal(fx_write(&h, 2 * CS, CS, 2), -ENOSPC);
	assert_lists(h.img, 1, 0, 0);

	/* a good flush: decremented to 0; the hole is punched first, and
	 * only then does the cluster enter the pool */
	d.done = false;
	assert_int_equal(qcow2_flush(h.img, fx_on_done, &d), 0);
	assert_lists(h.img, 0, 1, 0);
	assert_int_equal(fx_wait(&h, &d), 0);
	assert_int_equal(h.img->alloc.frees_flushing_len, 0);
	assert_int_equal(h.img->alloc.frees_waiting_len, 0);
	assert_int_equal(h.img->alloc.punches_inflight, 1);
	assert_int_equal(h.img->alloc.free_pool_len, 0);
	assert_int_equal(qcow2_ctx_run(h.ctx), 0);
	assert_int_equal(h.img->alloc.punches_inflight, 0);
	assert_lists(h.img, 0, 0, 1);
	assert_int_equal(h.img->alloc.free_pool[0], host);
	assert_int_equal(fx_refcount(&h, host), 0);
	assert_int_equal(qcow2_get_stats(h.img, &st), 0);
	assert_int_equal(st.freed_clusters, 1);

	/* the next allocating data write reuses it */
	assert_int_equal(fx_write(&h, 2 * CS, CS, 3), 0);
	assert_int_equal(host_of(&h, 2 * CS), host);
	assert_lists(h.img, 0, 0, 0);
	assert_int_equal(fx_refcount(&h, host), 1);
	/* the one after appends */
	assert_int_equal(fx_write(&h, 3 * CS, CS, 4), 0);
	assert_true(host_of(&h, 3 * CS) > host);
	fx_close(&h);

	assert_true(fx_holds(0, CS, 0));
	assert_true(fx_holds(2 * CS, CS, 3));
	assert_true(fx_holds(3 * CS, CS, 4));
	fx_check(0);
}

/* Write guest cluster off compressed (fx_fill(tag)); returns its host
 * cluster. */
static uint64_t write_compressed(struct fx *h, uint64_t off, unsigned tag)
{
	uint8_t *src = malloc(CS), *dst = malloc(CS);
	struct fx_done d = { 0 };
	struct qcow2_extent ext;
	size_t len;

	assert_non_null(src);
	assert_non_null(dst);
	fx_fill(src, CS, tag);
	assert_int_equal(qcow2_compress(QCOW2_COMPRESSION_ZLIB, src, CS, dst,
					CS - 1, &len), 0);
	assert_int_equal(qcow2_write_compressed(h->img, off, dst, len,
						fx_on_done, &d), 0);
	assert_int_equal(fx_wait(h, &d), 0);
	free(src);
	free(dst);
	fx_status(h, off, &ext);
	assert_int_equal(ext.type, QCOW2_EXTENT_COMPRESSED);
	return cluster_of(ext.host_offset);
}

static void test_compressed_overwrite(void **state)
{
	struct qcow2_create_opts co = { .size = 16 << 20 };
	struct qcow2_stats st;
	uint8_t *buf;
	uint64_t host;
	struct fx h;

	(void)state;
	fx_create(&co);
	fx_open(&h, BUFFERED, NULL, false);
	host = write_compressed(&h, 0, 5);
	/* its blob and the packing hold (more blobs may join it) */
	assert_int_equal(h.img->alloc.cz_cluster, host);
	assert_int_equal(fx_refcount(&h, host), 2);
	assert_int_equal(qcow2_fsync(h.img), 0);
	/* a read keeps the decompressed cluster */
	assert_int_equal(posix_memalign((void **)&buf, 4096, CS), 0);
	assert_int_equal(qcow2_pread(h.img, buf, CS, 0), 0);
	assert_true(h.img->zcache.valid);

	/* overwritten with plain data: the blob's cluster waits */
	assert_int_equal(fx_write(&h, 0, CS, 6), 0);
	assert_int_not_equal(host_of(&h, 0), host);
	assert_lists(h.img, 1, 0, 0);
	assert_int_equal(h.img->alloc.frees_waiting[0], host);
	assert_int_equal(fx_refcount(&h, host), 2);
	/* the flush decrements it; the hold keeps it out of the pool */
	assert_int_equal(qcow2_fsync(h.img), 0);
	assert_lists(h.img, 0, 0, 0);
	assert_int_equal(fx_refcount(&h, host), 1);
	assert_true(h.img->zcache.valid);

	/* the hold is dropped (as when the next packing cluster starts, or
	 * at close): the same life cycle, and at 0 it is reusable */
	cluster_alloc_bytes_release(h.img);
	assert_int_equal(h.img->alloc.cz_cluster, 0);
	assert_lists(h.img, 1, 0, 0);
	assert_int_equal(h.img->alloc.frees_waiting[0], host);
	assert_int_equal(fx_refcount(&h, host), 1);
	assert_int_equal(qcow2_fsync(h.img), 0);
	assert_lists(h.img, 0, 0, 1);
	assert_int_equal(h.img->alloc.free_pool[0], host);
	assert_int_equal(fx_refcount(&h, host), 0);
	/* a reusable cluster may take a new blob: the cache of the old one
	 * is dropped */
	assert_false(h.img->zcache.valid);
	assert_int_equal(qcow2_get_stats(h.img, &st), 0);
	assert_int_equal(st.freed_clusters, 2);

	/* reused by the next allocating data write */
	assert_int_equal(fx_write(&h, CS, CS, 7), 0);
	assert_int_equal(host_of(&h, CS), host);
	assert_lists(h.img, 0, 0, 0);
	assert_int_equal(fx_refcount(&h, host), 1);
	free(buf);
	fx_close(&h);

	assert_true(fx_holds(0, CS, 6));
	assert_true(fx_holds(CS, CS, 7));
	fx_check(0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_discard_cycle, fx_cleanup),
		cmocka_unit_test_teardown(test_compressed_overwrite, fx_cleanup),
	};
	return cmocka_run_group_tests(tests, fx_setup, fx_teardown);
}
