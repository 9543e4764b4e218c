/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * Where host clusters come from and how they go back.
 *
 * New clusters are appended at the end of the image (alloc_end), where the
 * file reads zeros, or reused from a pool of clusters freed in this session.
 * Tables (L2, refcount blocks) are always appended so that the parts of a
 * table never written read as zero entries. A refcount block is allocated
 * as the first cluster of the range it describes, so it describes itself.
 *
 * Freeing obeys rule 3: a dropped cluster is decremented only after the
 * entries that dropped it are on disk (after the next completed flush), and
 * enters the pool only when its refcount reaches zero.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/engine.h"

static int vec_push(uint64_t **v, size_t *len, size_t *cap, uint64_t x)
{
	if (*len == *cap) {
		size_t n = *cap ? *cap * 2 : 64;
		uint64_t *p = realloc(*v, n * sizeof(**v));
		if (!p)
			return -ENOMEM;
		*v = p;
		*cap = n;
	}
	(*v)[(*len)++] = x;
	return 0;
}

/*
 * Keep the file's size ahead of the allocations. Writes that extend a file
 * are serialised by file systems (and cannot be issued without blocking),
 * writes inside it are not: measured on ext4, allocating 4 KiB writes went
 * from half to near the in-place rate. The space ahead is reserved with
 * fallocate() (unwritten extents, which read zeros) rather than left as a
 * hole: a write into a hole makes the file system allocate blocks then and
 * there; measured on ext4, allocating writes went 1.6x faster. Where that
 * is not supported, or the space is not there, the file is only extended.
 * The file is trimmed at close.
 */
static void extend_file(struct qcow2_image *img)
{
	uint64_t step, target;

	if (img->alloc_end <= img->file_len)
		return;
	step = img->alloc_end / 8;
	if (step < (64ull << 20))
		step = 64ull << 20;
	target = align_up(img->alloc_end + step, img->cluster_size);
	if (img->file_len < target &&
	    qfile_reserve_now(img->ctx, &img->file, img->file_len,
			      target - img->file_len) == 0) {
		img->file_len = target;
		return;
	}
	if (ftruncate(img->file.fd, (off_t)target) == 0)
		img->file_len = target;
	/* On failure writes simply extend the file as they land. */
}

void cluster_alloc_trim(struct qcow2_image *img)
{
	if (img->file_len > img->alloc_end &&
	    ftruncate(img->file.fd, (off_t)img->alloc_end) == 0)
		img->file_len = img->alloc_end;
}

static int reftable_grow(struct qcow2_image *img, uint64_t need,
			 struct slice_waiter *w);

/*
 * Make sure a refcount block covers the cluster at alloc_end; if not, the
 * cluster there becomes that block and counts itself (it lies in its own
 * range: refcount_new_block()). -EAGAIN (w queued) when the cache has no
 * room; blocks made before that stay made.
 */
static int cover_alloc_end(struct qcow2_image *img, struct slice_waiter *w)
{
	for (;;) {
		uint64_t rt = refcount_table_index(img, img->alloc_end >>
						   img->cluster_bits);
		int ret;

		if (rt >= refcount_table_entries(img)) {
			ret = reftable_grow(img, rt + 1, w);
			if (ret < 0)
				return ret;
			continue;
		}
		if (refcount_block_at(img, rt))
			return 0;
		ret = refcount_new_block(img, rt, img->alloc_end, w);
		if (ret < 0)
			return ret;
		img->alloc_end += img->cluster_size;
		extend_file(img);
	}
}

/* True when every cluster of [start, start + n clusters) has a refcount
 * block in the (possibly just enlarged) table. */
static bool range_covered(struct qcow2_image *img, uint64_t start, uint64_t n)
{
	uint64_t first = refcount_table_index(img, start >> img->cluster_bits);
	uint64_t last = refcount_table_index(img, (start >> img->cluster_bits) +
						  n - 1);

	for (uint64_t rt = first; rt <= last; rt++)
		if (!refcount_block_at(img, rt))
			return false;
	return true;
}

/*
 * Grow the refcount table to at least `need` entries: the new, larger table
 * is placed at the end (in clusters covered by refcount blocks, allocated
 * first if needed), counted, and installed in memory. The next flush writes
 * it, then switches the header to it, then frees the old one (rule 3).
 * Resumable: -EAGAIN (w queued) keeps its progress in img->grow_*.
 */
static int reftable_grow(struct qcow2_image *img, uint64_t need,
			 struct slice_waiter *w)
{
	int ret;

	if (img->grow_phase && img->grower != w) {
		w->next = img->grow_waiters;
		img->grow_waiters = w;
		return -EAGAIN;
	}
	if (img->grow_phase == 0) {
		ret = refcount_table_enlarge(img, need, &img->grow_clusters);
		if (ret < 0)
			return ret;
		img->grow_phase = 1;
		img->grower = w;
	}
	if (img->grow_phase == 1) {
		uint64_t n = img->grow_clusters;

		/* Refcount blocks for the clusters the new table will take. */
		while (!range_covered(img, img->alloc_end, n)) {
			uint64_t rt = refcount_table_index(img, img->alloc_end >>
							   img->cluster_bits);
			if (refcount_block_at(img, rt)) {
				img->alloc_end += img->cluster_size;
				/* skip: that cluster stays a hole, counted 0 */
				continue;
			}
			ret = cover_alloc_end(img, w);
			if (ret < 0)
				return ret;
		}
		img->grow_off = img->alloc_end;
		img->grow_counted = 0;
		img->alloc_end += n << img->cluster_bits;
		extend_file(img);
		img->grow_phase = 2;
	}
	while (img->grow_counted < img->grow_clusters) {
		ret = refcount_update(img, img->grow_off +
				     ((uint64_t)img->grow_counted << img->cluster_bits),
				     1, w);
		if (ret < 0)
			return ret;
		img->grow_counted++;
	}
	/* Install: the old table's clusters are freed once the header that
	 * stops pointing at them is on disk. */
	for (uint32_t i = 0; i < img->hdr.refcount_table_clusters; i++)
		cluster_free_later(img, img->hdr.refcount_table_offset +
					  ((uint64_t)i << img->cluster_bits));
	img->hdr.refcount_table_offset = img->grow_off;
	img->hdr.refcount_table_clusters = img->grow_clusters;
	image_set_header_u64(img, 48, img->grow_off);
	image_set_header_u32(img, 56, img->grow_clusters);
	image_mark_reftable_dirty(img, 0);
	image_mark_reftable_dirty(img, refcount_table_entries(img) - 1);
	img->grow_off = 0;
	img->grow_phase = 0;
	img->grower = NULL;
	img->grow_waiters = slice_waiters_oldest_first(img->grow_waiters);
	write_gather_begin(img);
	while (img->grow_waiters) {
		struct slice_waiter *x = img->grow_waiters;
		img->grow_waiters = x->next;
		x->next = NULL;
		x->wake(x, 0);
	}
	write_gather_end(img);
	return 0;
}

/* The first refcount table index in [first, last] without a block, or
 * UINT64_MAX. Indexes past the table count as without. */
static uint64_t first_uncovered(struct qcow2_image *img, uint64_t first,
				uint64_t last)
{
	for (uint64_t rt = first; rt <= last; rt++)
		if (!refcount_block_at(img, rt))
			return rt;
	return UINT64_MAX;
}

int cluster_alloc_run(struct qcow2_image *img, uint64_t n,
		      struct slice_waiter *w, uint64_t *off)
{
	int ret;

	if (img->grow_phase && img->grower != w) {
		w->next = img->grow_waiters;
		img->grow_waiters = w;
		return -EAGAIN;
	}
	for (;;) {
		uint64_t a, k = 0, rt, first, last;

		ret = cover_alloc_end(img, w);
		if (ret < 0)
			return ret;
		a = img->alloc_end >> img->cluster_bits;
		/* k blocks placed at a.. and the run after them: how many
		 * ranges they touch have no block (a fixed point; k only
		 * grows, bounded by the ranges the run spans). */
		for (;;) {
			uint64_t u = 0;
			first = refcount_table_index(img, a);
			last = refcount_table_index(img, a + k + n - 1);
			for (uint64_t r = first; r <= last; r++)
				if (!refcount_block_at(img, r))
					u++;
			if (u <= k)
				break;
			k = u;
		}
		if (k == 0)
			break;
		/* One more block, at alloc_end (covered above), for the first
		 * range without one. Counted first, so that -EAGAIN leaves
		 * nothing half done. It is a fresh cluster: its entries read
		 * zero until the run's clusters are counted in it. */
		rt = first_uncovered(img, first, last);
		if (rt >= refcount_table_entries(img)) {
			ret = reftable_grow(img, rt + 1, w);
			if (ret < 0)
				return ret;
			continue;
		}
		ret = refcount_update(img, img->alloc_end, 1, w);
		if (ret < 0)
			return ret;
		refcount_set_block(img, rt, img->alloc_end);
		img->alloc_end += img->cluster_size;
		extend_file(img);
	}
	*off = img->alloc_end;
	img->alloc_end += n << img->cluster_bits;
	extend_file(img);
	return 0;
}

int cluster_alloc(struct qcow2_image *img, bool table, struct slice_waiter *w,
		  uint64_t *host, bool *fresh)
{
	int ret;

	if (!table && img->free_pool_len) {
		*host = img->free_pool[--img->free_pool_len];
		*fresh = false;
		return 0;
	}
	if (img->grow_phase && img->grower != w) {
		/* Appending now could use refcount blocks that only the new
		 * table, not yet on disk, points at. */
		w->next = img->grow_waiters;
		img->grow_waiters = w;
		return -EAGAIN;
	}
	ret = cover_alloc_end(img, w);
	if (ret < 0)
		return ret;
	*host = img->alloc_end;
	*fresh = true;
	img->alloc_end += img->cluster_size;
	extend_file(img);
	return 0;
}

/*
 * Compressed clusters are packed: the current host cluster (cz_cluster)
 * takes blobs until full. It holds one extra reference of its own (the
 * hold) while it takes blobs, so that it cannot drop to zero and be reused
 * for data when every blob in it has been overwritten; the hold is dropped
 * (as an ordinary deferred free) when the next cluster is started, or at
 * close. A crash with a hold on disk leaks nothing worse than that cluster.
 * With refcounts too narrow for a hold (1 or 2 bits), blobs get a cluster
 * each.
 */
int cluster_alloc_bytes(struct qcow2_image *img, uint64_t reserve,
			uint64_t blob_len, struct slice_waiter *w, uint64_t *host,
			uint64_t touch[2], int64_t delta[2], int *ntouch)
{
	uint64_t cs = img->cluster_size, max_rc, n, end;
	bool fresh, hold, span;
	int ret;

	max_rc = refcount_max(img);
	hold = max_rc >= 3;
	end = img->cz_cluster + cs;
	if (img->cz_cluster && img->cz_off + reserve <= end &&
	    img->cz_blobs + 2 <= max_rc) {
		*host = img->cz_off;
		touch[0] = img->cz_cluster;
		delta[0] = 1;
		*ntouch = 1;
		img->cz_off += reserve;
		img->cz_blobs++;
		return 0;
	}
	ret = cluster_alloc(img, false, w, &n, &fresh);
	if (ret < 0)
		return ret;
	/* Continue across the boundary when the new cluster follows. */
	span = img->cz_cluster && n == end && img->cz_off < end &&
	       img->cz_blobs + 2 <= max_rc;
	*ntouch = 0;
	if (span) {
		*host = img->cz_off;
		touch[0] = img->cz_cluster;
		delta[0] = 1;
		*ntouch = 1;
	} else {
		*host = n;
	}
	if (*host + blob_len > n) {
		touch[*ntouch] = n;
		delta[*ntouch] = 1;
		(*ntouch)++;
	}
	if (img->cz_cluster)
		cluster_free_later(img, img->cz_cluster); /* its hold */
	img->cz_cluster = 0;
	img->cz_off = 0;
	if (hold && *host + reserve < n + cs) {
		img->cz_cluster = n;
		img->cz_off = *host + reserve;
		img->cz_blobs = *host + blob_len > n ? 1 : 0;
		if (*ntouch && touch[*ntouch - 1] == n) {
			delta[*ntouch - 1]++;
		} else {
			touch[*ntouch] = n;
			delta[*ntouch] = 1;
			(*ntouch)++;
		}
	}
	if (!*ntouch) {
		/* Reserved, not referenced, not held: count nothing, the
		 * cluster stays free (cannot happen: blobs are not empty). */
		return -EINVAL;
	}
	return 0;
}

void cluster_alloc_bytes_release(struct qcow2_image *img)
{
	if (img->cz_cluster)
		cluster_free_later(img, img->cz_cluster);
	img->cz_cluster = 0;
	img->cz_off = 0;
}

int cluster_free_later(struct qcow2_image *img, uint64_t host)
{
	return vec_push(&img->frees_waiting, &img->frees_waiting_len,
			&img->frees_waiting_cap, host);
}

/* Bit 0 of a queued free (cluster offsets are aligned): punch a hole. */
#define FREE_PUNCH 1ull

int cluster_discard_later(struct qcow2_image *img, uint64_t host)
{
	return cluster_free_later(img, host | FREE_PUNCH);
}

/* A cluster at refcount 0 becomes reusable. */
static void pool_add(struct qcow2_image *img, uint64_t host)
{
	read_zbuf_drop(img);
	vec_push(&img->free_pool, &img->free_pool_len, &img->free_pool_cap, host);
}

struct punch {
	struct io_op op;
	struct qcow2_image *img;
};

static void punch_done(struct io_op *op, int64_t res)
{
	struct punch *p = (struct punch *)op;
	struct qcow2_image *img = p->img;

	/* Not supported by the file system, or failed: the cluster keeps its
	 * blocks, and is free all the same. */
	pool_add(img, op->offset);
	img->stats.punched_clusters += res == 0;
	img->punches_inflight--;
	free(p);
}

/* A cluster dropped by a discard reached refcount 0: give its blocks back
 * to the file system. It enters the pool only once the hole is punched, so
 * that a new write into it cannot race with the punch. */
static void punch_then_pool(struct qcow2_image *img, uint64_t host)
{
	struct punch *p = calloc(1, sizeof(*p));

	if (!p) {
		pool_add(img, host);
		return;
	}
	p->img = img;
	p->op.opcode = IO_OP_PUNCH;
	p->op.fd = img->file.fd;
	p->op.offset = host;
	p->op.len = img->cluster_size;
	p->op.complete = punch_done;
	img->punches_inflight++;
	ctx_queue(img->ctx, &p->op);
}

void cluster_frees_flush_started(struct qcow2_image *img)
{
	/* Entries dropped so far are written by this flush; in-place writes
	 * issued so far may still target their clusters. */
	img->frees_flushing_seq = img->ip_seq;
	for (size_t i = 0; i < img->frees_waiting_len; i++) {
		if (vec_push(&img->frees_flushing, &img->frees_flushing_len,
			     &img->frees_flushing_cap, img->frees_waiting[i]) < 0)
			break; /* out of memory: the cluster leaks, safely */
	}
	img->frees_waiting_len = 0;
}

static void free_worker(struct qcow2_image *img);

static void free_worker_wake(struct slice_waiter *w, int err)
{
	struct qcow2_image *img = (struct qcow2_image *)
		((char *)w - offsetof(struct qcow2_image, free_waiter));

	img->free_worker_parked = false;
	/* The refcount slice of the decrement it waited for could not be
	 * loaded: that cluster leaks (safe), as when the decrement fails.
	 * Retrying would load the failing slice again, forever. */
	if (err < 0 && img->frees_ready_pos < img->frees_ready_len)
		img->frees_ready_pos++;
	free_worker(img);
}

/* Apply ready decrements one by one; parks on slice loads and flushes. */
static void free_worker(struct qcow2_image *img)
{
	img->free_worker_waits_ip = false;
	if (img->frees_ready_pos < img->frees_ready_len &&
	    inplace_oldest_seq(img) <= img->frees_ready_seq) {
		img->free_worker_waits_ip = true; /* cluster_frees_kick resumes */
		return;
	}
	while (!img->free_worker_parked &&
	       img->frees_ready_pos < img->frees_ready_len) {
		uint64_t host = img->frees_ready[img->frees_ready_pos] & ~FREE_PUNCH;
		bool punch = img->frees_ready[img->frees_ready_pos] & FREE_PUNCH;
		uint64_t rc;
		int ret;

		img->free_waiter.wake = free_worker_wake;
		ret = writeback_gate(img, &img->free_waiter);
		if (ret == -EAGAIN) {
			img->free_worker_parked = true;
			return;
		}
		if (ret < 0)
			return; /* metadata cannot change: the clusters stay leaked */
		ret = refcount_update(img, host, -1, &img->free_waiter);
		if (ret == -EAGAIN) {
			img->free_worker_parked = true;
			return;
		}
		img->frees_ready_pos++;
		if (ret < 0)
			continue; /* a failed decrement leaks: safe */
		img->stats.freed_clusters++;
		/* the slice is cached: refcount_update just used it */
		ret = refcount_get(img, host, &rc, &img->free_waiter);
		if (ret == 0 && rc == 0) {
			if (punch)
				punch_then_pool(img, host);
			else
				pool_add(img, host);
		}
	}
	if (img->frees_ready_pos == img->frees_ready_len) {
		img->frees_ready_len = 0;
		img->frees_ready_pos = 0;
	}
}

void cluster_frees_flush_done(struct qcow2_image *img, int err)
{
	if (err) {
		/* Not known to be on disk: keep them for the next flush. */
		for (size_t i = 0; i < img->frees_flushing_len; i++)
			cluster_free_later(img, img->frees_flushing[i]);
	} else {
		for (size_t i = 0; i < img->frees_flushing_len; i++)
			vec_push(&img->frees_ready, &img->frees_ready_len,
				 &img->frees_ready_cap, img->frees_flushing[i]);
		if (img->frees_flushing_len &&
		    img->frees_flushing_seq > img->frees_ready_seq)
			img->frees_ready_seq = img->frees_flushing_seq;
	}
	img->frees_flushing_len = 0;
	free_worker(img);
}

void cluster_frees_kick(struct qcow2_image *img)
{
	if (img->free_worker_waits_ip &&
	    inplace_oldest_seq(img) > img->frees_ready_seq)
		free_worker(img);
}

void cluster_alloc_close(struct qcow2_image *img)
{
	free(img->free_pool);
	free(img->frees_waiting);
	free(img->frees_flushing);
	free(img->frees_ready);
}

bool cluster_frees_pending(const struct qcow2_image *img, bool ready_only)
{
	if (img->frees_ready_pos < img->frees_ready_len)
		return true;
	return !ready_only && (img->frees_waiting_len || img->frees_flushing_len);
}
