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
	struct allocator *al = &img->alloc;
	uint64_t step, target;

	if (al->end <= al->file_len)
		return;
	step = al->end / 8;
	if (step < (64ull << 20))
		step = 64ull << 20;
	target = align_up(al->end + step, img->cluster_size);
	if (al->file_len < target &&
	    qfile_reserve_now(img->ctx, &img->file, al->file_len,
			      target - al->file_len) == 0) {
		al->file_len = target;
		return;
	}
	if (ftruncate(img->file.fd, (off_t)target) == 0)
		al->file_len = target;
	/* On failure writes simply extend the file as they land. */
}

void cluster_alloc_init(struct qcow2_image *img)
{
	img->alloc.end = align_up(img->file.size, img->cluster_size);
	img->alloc.file_len = img->file.size;
}

void cluster_alloc_trim(struct qcow2_image *img)
{
	struct allocator *al = &img->alloc;

	if (al->file_len > al->end &&
	    ftruncate(img->file.fd, (off_t)al->end) == 0)
		al->file_len = al->end;
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
	struct allocator *al = &img->alloc;

	for (;;) {
		uint64_t rt = refcount_table_index(img, al->end >>
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
		ret = refcount_new_block(img, rt, al->end, w);
		if (ret < 0)
			return ret;
		al->end += img->cluster_size;
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
 * Resumable: -EAGAIN (w queued) keeps its progress in img->alloc.grow_*.
 */
static int reftable_grow(struct qcow2_image *img, uint64_t need,
			 struct slice_waiter *w)
{
	struct allocator *al = &img->alloc;
	int ret;

	/* Refcounts found wrong may count clusters in use as free. */
	if (image_refuse_if_corrupt(img) < 0)
		return -EUCLEAN;
	if (al->grow_phase && al->grower != w) {
		w->next = al->grow_waiters;
		al->grow_waiters = w;
		return -EAGAIN;
	}
	if (al->grow_phase == 0) {
		ret = refcount_table_enlarge(img, need, &al->grow_clusters);
		if (ret < 0)
			return ret;
		al->grow_phase = 1;
		al->grower = w;
	}
	if (al->grow_phase == 1) {
		uint64_t n = al->grow_clusters;

		/* Refcount blocks for the clusters the new table will take. */
		while (!range_covered(img, al->end, n)) {
			uint64_t rt = refcount_table_index(img, al->end >>
							   img->cluster_bits);
			if (refcount_block_at(img, rt)) {
				al->end += img->cluster_size;
				/* skip: that cluster stays a hole, counted 0 */
				continue;
			}
			ret = cover_alloc_end(img, w);
			if (ret < 0)
				return ret;
		}
		al->grow_off = al->end;
		al->grow_counted = 0;
		al->end += n << img->cluster_bits;
		extend_file(img);
		al->grow_phase = 2;
	}
	while (al->grow_counted < al->grow_clusters) {
		ret = refcount_update(img, al->grow_off +
				     ((uint64_t)al->grow_counted << img->cluster_bits),
				     1, w);
		if (ret < 0)
			return ret;
		al->grow_counted++;
	}
	/* Install: the old table's clusters are freed once the header that
	 * stops pointing at them is on disk. */
	for (uint32_t i = 0; i < img->hdr.refcount_table_clusters; i++)
		cluster_free_later(img, img->hdr.refcount_table_offset +
					  ((uint64_t)i << img->cluster_bits));
	img->hdr.refcount_table_offset = al->grow_off;
	img->hdr.refcount_table_clusters = al->grow_clusters;
	image_set_header_u64(img, 48, al->grow_off);
	image_set_header_u32(img, 56, al->grow_clusters);
	image_mark_reftable_dirty(img, 0);
	image_mark_reftable_dirty(img, refcount_table_entries(img) - 1);
	al->grow_off = 0;
	al->grow_phase = 0;
	al->grower = NULL;
	al->grow_waiters = slice_waiters_oldest_first(al->grow_waiters);
	write_gather_begin(img);
	while (al->grow_waiters) {
		struct slice_waiter *x = al->grow_waiters;
		al->grow_waiters = x->next;
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
	struct allocator *al = &img->alloc;
	int ret;

	/* Refcounts found wrong may count clusters in use as free. */
	if (image_refuse_if_corrupt(img) < 0)
		return -EUCLEAN;
	if (al->grow_phase && al->grower != w) {
		w->next = al->grow_waiters;
		al->grow_waiters = w;
		return -EAGAIN;
	}
	for (;;) {
		uint64_t a, k = 0, rt, first, last;

		ret = cover_alloc_end(img, w);
		if (ret < 0)
			return ret;
		a = al->end >> img->cluster_bits;
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
		ret = refcount_update(img, al->end, 1, w);
		if (ret < 0)
			return ret;
		refcount_set_block(img, rt, al->end);
		al->end += img->cluster_size;
		extend_file(img);
	}
	*off = al->end;
	al->end += n << img->cluster_bits;
	extend_file(img);
	return 0;
}

int cluster_alloc(struct qcow2_image *img, bool table, struct slice_waiter *w,
		  uint64_t *host, bool *fresh)
{
	struct allocator *al = &img->alloc;
	int ret;

	if (image_refuse_if_corrupt(img) < 0)
		return -EUCLEAN;
	if (!table && al->free_pool_len) {
		*host = al->free_pool[--al->free_pool_len];
		*fresh = false;
		return 0;
	}
	if (al->grow_phase && al->grower != w) {
		/* Appending now could use refcount blocks that only the new
		 * table, not yet on disk, points at. */
		w->next = al->grow_waiters;
		al->grow_waiters = w;
		return -EAGAIN;
	}
	ret = cover_alloc_end(img, w);
	if (ret < 0)
		return ret;
	*host = al->end;
	*fresh = true;
	al->end += img->cluster_size;
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
	struct allocator *al = &img->alloc;
	uint64_t cs = img->cluster_size, max_rc, n, end;
	bool fresh, hold, span;
	int ret;

	if (image_refuse_if_corrupt(img) < 0)
		return -EUCLEAN;
	max_rc = refcount_max(img);
	hold = max_rc >= 3;
	end = al->cz_cluster + cs;
	if (al->cz_cluster && al->cz_off + reserve <= end &&
	    al->cz_blobs + 2 <= max_rc) {
		*host = al->cz_off;
		touch[0] = al->cz_cluster;
		delta[0] = 1;
		*ntouch = 1;
		al->cz_off += reserve;
		al->cz_blobs++;
		return 0;
	}
	ret = cluster_alloc(img, false, w, &n, &fresh);
	if (ret < 0)
		return ret;
	/* Continue across the boundary when the new cluster follows. */
	span = al->cz_cluster && n == end && al->cz_off < end &&
	       al->cz_blobs + 2 <= max_rc;
	*ntouch = 0;
	if (span) {
		*host = al->cz_off;
		touch[0] = al->cz_cluster;
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
	if (al->cz_cluster)
		cluster_free_later(img, al->cz_cluster); /* its hold */
	al->cz_cluster = 0;
	al->cz_off = 0;
	if (hold && *host + reserve < n + cs) {
		al->cz_cluster = n;
		al->cz_off = *host + reserve;
		al->cz_blobs = *host + blob_len > n ? 1 : 0;
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
	struct allocator *al = &img->alloc;

	if (al->cz_cluster)
		cluster_free_later(img, al->cz_cluster);
	al->cz_cluster = 0;
	al->cz_off = 0;
}

int cluster_free_later(struct qcow2_image *img, uint64_t host)
{
	struct allocator *al = &img->alloc;

	return vec_push(&al->frees_waiting, &al->frees_waiting_len,
			&al->frees_waiting_cap, host);
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
	struct allocator *al = &img->alloc;

	read_zcache_drop(img);
	vec_push(&al->free_pool, &al->free_pool_len, &al->free_pool_cap, host);
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
	img->alloc.punches_inflight--;
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
	img->alloc.punches_inflight++;
	ctx_queue(img->ctx, &p->op);
}

void cluster_frees_flush_started(struct qcow2_image *img)
{
	struct allocator *al = &img->alloc;

	/* Entries dropped so far are written by this flush; in-place writes
	 * issued so far may still target their clusters. */
	al->frees_flushing_seq = inplace_last_started(img);
	for (size_t i = 0; i < al->frees_waiting_len; i++) {
		if (vec_push(&al->frees_flushing, &al->frees_flushing_len,
			     &al->frees_flushing_cap, al->frees_waiting[i]) < 0)
			break; /* out of memory: the cluster leaks, safely */
	}
	al->frees_waiting_len = 0;
}

static void free_worker(struct qcow2_image *img);

static void free_worker_wake(struct slice_waiter *w, int err)
{
	struct qcow2_image *img = container_of(w, struct qcow2_image,
					       alloc.free_waiter);
	struct allocator *al = &img->alloc;

	al->free_worker_parked = false;
	/* The refcount slice of the decrement it waited for could not be
	 * loaded: that cluster leaks (safe), as when the decrement fails.
	 * Retrying would load the failing slice again, forever. */
	if (err < 0 && al->frees_ready_pos < al->frees_ready_len)
		al->frees_ready_pos++;
	free_worker(img);
}

/* Apply ready decrements one by one; parks on slice loads and flushes. */
static void free_worker(struct qcow2_image *img)
{
	struct allocator *al = &img->alloc;

	al->free_worker_waits_ip = false;
	if (al->frees_ready_pos < al->frees_ready_len &&
	    !inplace_ended(img, al->frees_ready_seq)) {
		al->free_worker_waits_ip = true; /* cluster_frees_kick resumes */
		return;
	}
	while (!al->free_worker_parked &&
	       al->frees_ready_pos < al->frees_ready_len) {
		uint64_t host = al->frees_ready[al->frees_ready_pos] & ~FREE_PUNCH;
		bool punch = al->frees_ready[al->frees_ready_pos] & FREE_PUNCH;
		uint64_t rc;
		int ret;

		al->free_waiter.wake = free_worker_wake;
		ret = writeback_gate(img, &al->free_waiter);
		if (ret == -EAGAIN) {
			al->free_worker_parked = true;
			return;
		}
		if (ret < 0)
			return; /* metadata cannot change: the clusters stay leaked */
		ret = refcount_update(img, host, -1, &al->free_waiter);
		if (ret == -EAGAIN) {
			al->free_worker_parked = true;
			return;
		}
		al->frees_ready_pos++;
		if (ret < 0)
			continue; /* a failed decrement leaks: safe */
		img->stats.freed_clusters++;
		/* the slice is cached: refcount_update just used it */
		ret = refcount_get(img, host, &rc, &al->free_waiter);
		if (ret == 0 && rc == 0) {
			if (punch)
				punch_then_pool(img, host);
			else
				pool_add(img, host);
		}
	}
	if (al->frees_ready_pos == al->frees_ready_len) {
		al->frees_ready_len = 0;
		al->frees_ready_pos = 0;
	}
}

void cluster_frees_flush_done(struct qcow2_image *img, int err)
{
	struct allocator *al = &img->alloc;

	if (err) {
		/* Not known to be on disk: keep them for the next flush. */
		for (size_t i = 0; i < al->frees_flushing_len; i++)
			cluster_free_later(img, al->frees_flushing[i]);
	} else {
		for (size_t i = 0; i < al->frees_flushing_len; i++)
			vec_push(&al->frees_ready, &al->frees_ready_len,
				 &al->frees_ready_cap, al->frees_flushing[i]);
		if (al->frees_flushing_len &&
		    al->frees_flushing_seq > al->frees_ready_seq)
			al->frees_ready_seq = al->frees_flushing_seq;
	}
	al->frees_flushing_len = 0;
	free_worker(img);
}

void cluster_frees_kick(struct qcow2_image *img)
{
	struct allocator *al = &img->alloc;

	if (al->free_worker_waits_ip &&
	    inplace_ended(img, al->frees_ready_seq))
		free_worker(img);
}

void cluster_alloc_close(struct qcow2_image *img)
{
	struct allocator *al = &img->alloc;

	free(al->free_pool);
	free(al->frees_waiting);
	free(al->frees_flushing);
	free(al->frees_ready);
}

bool cluster_frees_pending(const struct qcow2_image *img, bool ready_only)
{
	const struct allocator *al = &img->alloc;

	if (al->frees_ready_pos < al->frees_ready_len)
		return true;
	return !ready_only && (al->frees_waiting_len || al->frees_flushing_len);
}
