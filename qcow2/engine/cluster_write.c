/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * Cluster writes: a cluster not written in place gets a cluster_write, a
 * state machine that allocates a host cluster (and an L2 table if needed),
 * fills the parts of the cluster the request does not cover from the old
 * contents (backing file, compressed or shared cluster, zeros), writes the
 * data, and only then points the L2 entry at it. Old clusters it replaces
 * are freed later (rule 3). Allocations of the same guest cluster, and of
 * the same L2 table, are serialised; different clusters proceed in
 * parallel. Zero and discard requests change entries the same way.
 */
#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"

enum cw_state {
	CW_START,
	CW_L2,
	CW_L2_COPY_WAIT,
	CW_LOOKUP,
	CW_ALLOC,
	CW_COW,
	CW_COW_WAIT,
	CW_WRITE,
	CW_WRITE_WAIT,
	CW_JOIN_WAIT,
	CW_UPDATE,
	CW_DONE,
};

struct cluster_write {
	struct write_req *req;
	enum write_kind kind;   /* DATA here may still write zeros (req) */
	struct qcow2_image *img;
	enum cw_state state;
	uint64_t guest;         /* guest offset of the cluster */
	uint64_t csize;         /* bytes of the cluster inside the disk */
	uint64_t a, b;          /* the request writes [a, b) of it */
	uint64_t req_off;       /* request buffer offset of byte a */
	struct slice_waiter waiter;
	struct cluster_write *next_alloc; /* cluster_writes.hash chain */
	struct cluster_write *next_l2alloc; /* cluster_writes.l2_allocators */
	struct cluster_write *blocked;    /* same cluster, waiting for us */
	struct cluster_write *next_blocked;
	struct cluster_write *l2_blocked; /* same L2 table, waiting for it */
	struct cluster_write *next_batched; /* in img->gather.batch */
	struct cluster_write *owner;      /* joiner: the allocation we ride */
	struct cluster_write *joiners;    /* owner: writes riding on us */
	bool joinable;                    /* owner: host chosen, no COW buffer */
	bool allocating_l2;
	uint64_t l1_idx;
	uint64_t old_entry;
	bool in_place;
	bool have_l2, l2_counted;
	uint64_t new_l2;
	uint64_t old_l2;        /* shared table being copied, or 0 */
	bool l2_copied;
	bool l2_zeroed;         /* the new table's last slice is dirty */
	bool have_host, counted, fresh;
	uint64_t host;
	uint8_t *buf;           /* whole-cluster COW buffer */
	uint64_t buf_len;
	unsigned reads_pending;
	int err;
	struct file_read fw;
	struct req_slice rs;
	struct iovec buf_iov;
	/* Extended L2: the old subcluster bitmap; the part of the cluster
	 * written, [lo, hi) (whole subclusters, or the whole cluster) */
	uint64_t old_bitmap;
	uint64_t lo, hi;
	/* WRITE_COMPRESSED: clusters to count for the blob at host */
	uint64_t ctouch[2];
	int64_t cdelta[2];
	int ntouch, ncounted;
};

static void cw_run(struct cluster_write *cw);


static void cw_wake(struct slice_waiter *w, int err)
{
	struct cluster_write *cw = container_of(w, struct cluster_write, waiter);

	if (err && !cw->err) {
		cw->err = err;
		cw->state = CW_DONE;
	}
	cw_run(cw);
}

#define ALLOC_HASH_BUCKETS 1024u

int cluster_writes_init(struct qcow2_image *img)
{
	img->cluster_writes.hash = calloc(ALLOC_HASH_BUCKETS,
					  sizeof(*img->cluster_writes.hash));
	return img->cluster_writes.hash ? 0 : -ENOMEM;
}

void cluster_writes_free(struct qcow2_image *img)
{
	free(img->cluster_writes.hash);
	img->cluster_writes.hash = NULL;
}

static struct cluster_write **alloc_bucket(struct qcow2_image *img,
					   uint64_t guest)
{
	return &img->cluster_writes.hash[(guest >> img->cluster_bits) &
					 (ALLOC_HASH_BUCKETS - 1)];
}

/* Resume the writes of a list (pushed at the head: oldest last), oldest
 * first, so that clusters asked for in order are allocated in order. */
static void wake_list(struct cluster_write *list)
{
	struct cluster_write *fifo = NULL;
	struct qcow2_image *img;

	while (list) {
		struct cluster_write *next = list->next_blocked;
		list->next_blocked = fifo;
		fifo = list;
		list = next;
	}
	list = fifo;
	if (!list)
		return;
	img = list->img;
	write_gather_begin(img);
	while (list) {
		struct cluster_write *next = list->next_blocked;
		list->next_blocked = NULL;
		cw_run(list);
		list = next;
	}
	write_gather_end(img);
}

static int cw_start(struct cluster_write *cw)
{
	struct qcow2_image *img = cw->img;

	for (struct cluster_write *x = *alloc_bucket(img, cw->guest); x;
	     x = x->next_alloc) {
		if (x->guest != cw->guest)
			continue;
		if (x->joinable && cw->kind == WRITE_DATA) {
			/* The owner writes only its own bytes into a cluster
			 * that reads zeros elsewhere: write ours beside them,
			 * and complete when its L2 update is done (so a flush
			 * never covers data whose mapping is not set). */
			cw->owner = x;
			cw->next_blocked = x->joiners;
			x->joiners = cw;
			cw->host = x->host;
			cw->in_place = true;
			cw->state = CW_WRITE;
			return 0;
		}
		cw->next_blocked = x->blocked;
		x->blocked = cw;
		return -EAGAIN;
	}
	cw->next_alloc = *alloc_bucket(img, cw->guest);
	*alloc_bucket(img, cw->guest) = cw;
	cw->state = CW_L2;
	return 0;
}

static void l2_allocator_remove(struct cluster_write *cw)
{
	struct cluster_write **pp = &cw->img->cluster_writes.l2_allocators;

	while (*pp && *pp != cw)
		pp = &(*pp)->next_l2alloc;
	if (*pp)
		*pp = cw->next_l2alloc;
	cw->allocating_l2 = false;
}

static void cw_unlink(struct cluster_write *cw)
{
	struct cluster_write **pp = alloc_bucket(cw->img, cw->guest);

	while (*pp && *pp != cw)
		pp = &(*pp)->next_alloc;
	if (*pp)
		*pp = cw->next_alloc;
	if (cw->allocating_l2)
		l2_allocator_remove(cw);
}

static void l2_copy_written(struct file_read *fw, int err);

/* The entry a zero or discard request leaves in place of old. */
static uint64_t meta_entry(const struct cluster_write *cw, uint64_t old)
{
	const struct qcow2_image *img = cw->img;
	bool v3 = img->hdr.version >= 3;

	if (cw->kind == WRITE_DISCARD) /* never v2 with a backing file */
		return v3 && image_needs_zero_flag(img) ? QCOW_OFLAG_ZERO : 0;
	/* zeros (v3 only: the cursor writes zero data into v2 images with a
	 * backing file, and unmapped v2 clusters without one read zeros) */
	if (!(cw->req->flags & QCOW2_ZERO_UNMAP) &&
	    (old & QCOW_OFLAG_COPIED) && l2e_mapped(img, old) && v3)
		return (old & L2E_OFFSET_MASK) | QCOW_OFLAG_ZERO | QCOW_OFLAG_COPIED;
	return v3 ? QCOW_OFLAG_ZERO : 0;
}

/* meta_entry() for extended L2 (whole clusters): zero subclusters. */
static uint64_t meta_entry_ext(const struct cluster_write *cw, uint64_t old,
			       uint64_t *bitmap)
{
	const struct qcow2_image *img = cw->img;

	if (cw->kind == WRITE_DISCARD) {
		*bitmap = image_needs_zero_flag(img) ? EXTL2_ZERO_ALL : 0;
		return 0;
	}
	*bitmap = EXTL2_ZERO_ALL;
	if (!(cw->req->flags & QCOW2_ZERO_UNMAP) &&
	    (old & QCOW_OFLAG_COPIED) && l2e_mapped(img, old))
		return (old & L2E_OFFSET_MASK) | QCOW_OFLAG_COPIED;
	return 0;
}

static void l2_copy_read(struct file_read *fw, int err)
{
	struct cluster_write *cw = container_of(fw, struct cluster_write, fw);
	struct qcow2_image *img = cw->img;

	if (!err)
		err = file_write_start(img->ctx, &img->file, cw->new_l2, &cw->buf_iov,
				       1, img->cluster_size, &cw->fw, l2_copy_written);
	if (err) {
		cw->err = err;
		cw->state = CW_DONE;
		cw_run(cw);
	}
}

static void l2_copy_written(struct file_read *fw, int err)
{
	struct cluster_write *cw = container_of(fw, struct cluster_write, fw);

	free(cw->buf);
	cw->buf = NULL;
	if (err) {
		cw->err = err;
		cw->state = CW_DONE;
	} else {
		/* The copy must be durable before the L1 entry that points at
		 * it: the flush syncs before writing L1 when data is unsynced. */
		image_mark_data_unsynced(cw->img);
		cw->l2_copied = true;
		cw->state = CW_L2;
	}
	cw_run(cw);
}

/*
 * Make sure an L2 table with refcount 1 maps the cluster: allocate one for
 * an unmapped range, or copy one shared with an internal snapshot (its
 * entries keep their refcounts: each snapshot's reference is counted).
 */
static int cw_l2(struct cluster_write *cw)
{
	struct qcow2_image *img = cw->img;
	uint64_t e = img->l1[cw->l1_idx];
	int ret;

	if ((e & L1E_OFFSET_MASK) && (e & QCOW_OFLAG_COPIED) &&
	    !cw->allocating_l2) {
		cw->state = CW_LOOKUP;
		return 0;
	}
	if (!(e & L1E_OFFSET_MASK) && !cw->allocating_l2 &&
	    (cw->kind == WRITE_ZEROES || cw->kind == WRITE_DISCARD) &&
	    !image_needs_zero_flag(img)) {
		cw->state = CW_DONE; /* unmapped already reads zeros */
		return 0;
	}
	if (!cw->allocating_l2) {
		for (struct cluster_write *x = img->cluster_writes.l2_allocators;
		     x; x = x->next_l2alloc) {
			if (x != cw && x->l1_idx == cw->l1_idx) {
				cw->next_blocked = x->l2_blocked;
				x->l2_blocked = cw;
				return -EAGAIN;
			}
		}
		cw->allocating_l2 = true;
		cw->next_l2alloc = img->cluster_writes.l2_allocators;
		img->cluster_writes.l2_allocators = cw;
		cw->old_l2 = e & L1E_OFFSET_MASK;
	}
	ret = writeback_gate(img, &cw->waiter);
	if (ret < 0)
		return ret;
	if (!cw->have_l2) {
		bool fresh;
		ret = cluster_alloc(img, true, &cw->waiter, &cw->new_l2, &fresh);
		if (ret < 0)
			return ret;
		cw->have_l2 = true;
	}
	if (!cw->l2_counted) {
		ret = refcount_update(img, cw->new_l2, 1, &cw->waiter);
		if (ret < 0)
			return ret;
		cw->l2_counted = true;
	}
	if (cw->old_l2 && !cw->l2_copied) {
		/* A shared table is never changed in place, so the file holds
		 * its current contents. */
		if (posix_memalign((void **)&cw->buf, img->file.mem_align,
				   img->cluster_size))
			return -ENOMEM;
		cw->buf_iov.iov_base = cw->buf;
		cw->buf_iov.iov_len = img->cluster_size;
		cw->state = CW_L2_COPY_WAIT;
		ret = file_read_start(img->ctx, &img->file, cw->old_l2, &cw->buf_iov,
				      1, img->cluster_size, false, &cw->fw,
				      l2_copy_read);
		if (ret < 0) {
			free(cw->buf);
			cw->buf = NULL;
			return ret;
		}
		return -EAGAIN; /* the copy's callbacks resume */
	}
	if (!cw->old_l2 && !cw->l2_zeroed) {
		/* A new table reads zeros (appended), but the file may end
		 * before it: its last slice goes into the cache dirty, so the
		 * write-back writes it (covering the table) before the L1
		 * entry, whatever happens to the rest. */
		struct slice *s;
		ret = slice_cache_create(img->l2_cache, cw->new_l2 + img->cluster_size -
							img->l2_slice_size,
					 &cw->waiter, &s);
		if (ret < 0 && ret != -EEXIST)
			return ret;
		cw->l2_zeroed = true;
	}
	/* A copied table was just written. Slices load from the file. */
	img->l1[cw->l1_idx] = cw->new_l2 | QCOW_OFLAG_COPIED;
	image_mark_l1_dirty(img, (uint32_t)cw->l1_idx);
	if (cw->old_l2)
		cluster_free_later(img, cw->old_l2);
	/* Writes that waited for the table resume once this one has its
	 * cluster (cw_alloc), so that the clusters are allocated in order. */
	l2_allocator_remove(cw);
	cw->state = CW_LOOKUP;
	return 0;
}

static int cw_entry_slice(struct cluster_write *cw, struct slice **s,
			  uint64_t *idx)
{
	uint64_t first, l2_off;
	int ret = l2_slice_lookup(cw->img, cw->guest, &cw->waiter, s, &first,
				  &l2_off);

	if (ret == 1)
		return -EIO; /* the table vanished: cannot happen */
	if (ret < 0)
		return ret;
	*idx = ((cw->guest >> cw->img->cluster_bits) &
		((1ull << cw->img->l2_bits) - 1)) - first;
	return 0;
}

static int cw_lookup(struct cluster_write *cw)
{
	struct slice *s;
	uint64_t idx, e;
	int ret = cw_entry_slice(cw, &s, &idx);

	if (ret < 0)
		return ret;
	l2e_get(cw->img, s->data, idx, &e, &cw->old_bitmap);
	cw->old_entry = e;
	if (cw->kind == WRITE_COMPRESSED) {
		cw->state = CW_ALLOC; /* always a new place: blobs are packed */
		return 0;
	}
	if (cw->kind != WRITE_DATA) {
		cw->state = CW_UPDATE; /* metadata only */
		return 0;
	}
	if (l2e_range_in_place(cw->img, e, cw->old_bitmap, cw->a, cw->b)) {
		cw->in_place = true;
		cw->host = e & L2E_OFFSET_MASK;
		cw->state = CW_WRITE;
		return 0;
	}
	if (cw->img->extl2 && l2e_in_place(cw->img, e)) {
		/* Our cluster: allocate the subclusters in it (COW of the
		 * partly written ones only), then set their bits. */
		cw->host = e & L2E_OFFSET_MASK;
		cw->have_host = cw->counted = true;
		cw->fresh = false;
	}
	if (!(e & QCOW_OFLAG_COMPRESSED) && (e & QCOW_OFLAG_ZERO) &&
	    (e & QCOW_OFLAG_COPIED) && l2e_mapped(cw->img, e)) {
		/* preallocated zero cluster of our own: write into it */
		cw->host = e & L2E_OFFSET_MASK;
		cw->have_host = cw->counted = true;
		cw->fresh = false;
	}
	cw->state = CW_ALLOC;
	return 0;
}

/* The compressed data's bytes, padded with zeros to the block size. */
static uint64_t compressed_reserve(const struct cluster_write *cw)
{
	return align_up(cw->req->r.iov[0].iov_len, cw->img->block_size);
}

static int cw_alloc_compressed(struct cluster_write *cw)
{
	struct qcow2_image *img = cw->img;
	uint64_t clen = cw->req->r.iov[0].iov_len;
	int ret;

	if (!cw->have_host) {
		ret = cluster_alloc_bytes(img, compressed_reserve(cw),
					  align_up(clen, 512), &cw->waiter,
					  &cw->host, cw->ctouch, cw->cdelta,
					  &cw->ntouch);
		if (ret < 0)
			return ret;
		cw->have_host = true;
	}
	while (cw->ncounted < cw->ntouch) {
		ret = refcount_update(img, cw->ctouch[cw->ncounted],
				      cw->cdelta[cw->ncounted], &cw->waiter);
		if (ret < 0)
			return ret;
		cw->ncounted++;
	}
	img->stats.allocated_clusters++;
	cw->state = CW_WRITE;
	return 0;
}

/* Resume the writes that waited for cw's new L2 table. */
static void wake_l2_blocked(struct cluster_write *cw)
{
	struct cluster_write *list = cw->l2_blocked;

	cw->l2_blocked = NULL;
	wake_list(list);
}

static int cw_alloc(struct cluster_write *cw)
{
	struct qcow2_image *img = cw->img;
	int ret;

	ret = writeback_gate(img, &cw->waiter);
	if (ret < 0)
		return ret;
	if (cw->kind == WRITE_COMPRESSED) {
		ret = cw_alloc_compressed(cw);
		if (ret == 0)
			wake_l2_blocked(cw);
		return ret;
	}
	if (img->has_data_file && !cw->have_host) {
		/* The data file maps guest clusters one to one and has no
		 * refcounts; it may hold stale bytes there (not fresh). */
		cw->host = cw->guest;
		cw->have_host = cw->counted = true;
		cw->fresh = false;
	}
	if (!cw->have_host) {
		ret = cluster_alloc(img, false, &cw->waiter, &cw->host, &cw->fresh);
		if (ret < 0)
			return ret;
		cw->have_host = true;
	}
	if (!cw->counted) {
		ret = refcount_update(img, cw->host, 1, &cw->waiter);
		if (ret < 0)
			return ret;
		cw->counted = true;
		img->stats.allocated_clusters++;
	}
	wake_l2_blocked(cw);
	cw->state = CW_COW;
	return 0;
}

/* True when the old contents of the cluster read as zeros. */
static bool old_reads_zero(struct cluster_write *cw)
{
	struct qcow2_image *img = cw->img;
	uint64_t e = cw->old_entry;

	if (e & QCOW_OFLAG_COMPRESSED)
		return false;
	if (e & QCOW_OFLAG_ZERO)
		return true;
	if (l2e_mapped(img, e))
		return false;
	return !img->backing || cw->guest >= img->backing->virtual_size;
}

static void cow_read_done(void *opaque, int err, const char *msg)
{
	struct cluster_write *cw = opaque;

	if (err && !cw->err) {
		cw->err = err;
		/* the old data's message (it may name a backing file) */
		request_fail(&cw->req->r, err, msg);
	}
	if (--cw->reads_pending == 0 && cw->state == CW_COW_WAIT) {
		cw->state = cw->err ? CW_DONE : CW_WRITE;
		cw_run(cw);
	}
}

/* Extended L2: does the old entry need the whole cluster copied (its data
 * lives elsewhere: compressed, or shared with a snapshot)? Otherwise only
 * the partly written subclusters are filled. */
static bool cow_whole_cluster(const struct cluster_write *cw)
{
	uint64_t e = cw->old_entry;

	if (!cw->img->extl2)
		return true;
	if (e & QCOW_OFLAG_COMPRESSED)
		return true;
	return l2e_mapped(cw->img, e) && !(e & QCOW_OFLAG_COPIED);
}

/* True when the old contents of [lo, hi) outside [a, b) read as zeros. */
static bool edges_read_zero(struct cluster_write *cw)
{
	struct qcow2_image *img = cw->img;
	uint64_t edges;

	if (!img->extl2 || cow_whole_cluster(cw))
		return old_reads_zero(cw);
	edges = 0;
	if (cw->lo < cw->a)
		edges |= l2e_sc_mask(img, cw->lo, cw->a);
	if (cw->b < cw->hi)
		edges |= l2e_sc_mask(img, cw->b, cw->hi);
	/* (Edges allocated in our own cluster were left out by cw_cow.) */
	if (((cw->old_bitmap >> 32) & edges) == edges)
		return true;
	return !img->backing || cw->guest >= img->backing->virtual_size;
}

static int cw_cow(struct cluster_write *cw)
{
	struct qcow2_image *img = cw->img;
	uint64_t a = cw->a, b = cw->b, lo, hi;
	bool zeros;
	int ret;

	if (cow_whole_cluster(cw)) {
		lo = 0;
		hi = cw->csize;
	} else {
		uint64_t sc = 1ull << img->subcluster_bits;
		lo = align_down(a, sc);
		hi = align_up(b, sc) < cw->csize ? align_up(b, sc) : cw->csize;
		/* A partly written subcluster already allocated in our cluster
		 * keeps its other bytes where they are. Reading and rewriting
		 * them would undo an in-place write to them still in flight
		 * (those do not wait for cluster writes). */
		if (l2e_in_place(img, cw->old_entry)) {
			if (lo < a && (cw->old_bitmap & l2e_sc_mask(img, lo, a)))
				lo = a;
			if (b < hi && (cw->old_bitmap & l2e_sc_mask(img, b, hi)))
				hi = b;
		}
	}
	cw->lo = lo;
	cw->hi = hi;
	if (a == lo && b == hi) {
		cw->state = CW_WRITE; /* the request covers what changes */
		return 0;
	}
	zeros = edges_read_zero(cw);
	if (zeros && cw->fresh) {
		if (img->extl2) {
			/* The fresh cluster reads zeros around [a, b) already;
			 * no joining: joiners would not set their bits. */
			cw->lo = a;
			cw->hi = b;
			cw->state = CW_WRITE;
			return 0;
		}
		/* The rest of the cluster reads zeros: other writes to it may
		 * join instead of waiting for us. */
		struct cluster_write *list = cw->blocked;
		cw->blocked = NULL;
		cw->joinable = true;
		cw->state = CW_WRITE;
		wake_list(list);
		return 0;
	}
	cw->buf_len = align_up(hi - lo, img->block_size);
	if (posix_memalign((void **)&cw->buf, img->file.mem_align, cw->buf_len))
		return -ENOMEM;
	memset(cw->buf, 0, cw->buf_len);
	img->stats.cow_clusters++;
	if (zeros) {
		cw->state = CW_WRITE;
		return 0;
	}
	/* Read the old contents around [a, b) through the current mapping
	 * (still the old one: the L2 entry changes only after the write). */
	cw->state = CW_COW_WAIT;
	cw->reads_pending = 1;
	if (a > lo) {
		struct iovec v = { cw->buf, a - lo };
		cw->reads_pending++;
		ret = read_start(img, cw->guest + lo, &v, 1, a - lo, false,
				 cow_read_done, cw);
		if (ret < 0) {
			cw->reads_pending--;
			cw->err = ret;
		}
	}
	if (b < hi) {
		struct iovec v = { cw->buf + (b - lo), hi - b };
		cw->reads_pending++;
		ret = read_start(img, cw->guest + b, &v, 1, hi - b, false,
				 cow_read_done, cw);
		if (ret < 0) {
			cw->reads_pending--;
			cw->err = ret;
		}
	}
	if (--cw->reads_pending == 0) {
		cw->state = cw->err ? CW_DONE : CW_WRITE;
		return 0;
	}
	return -EAGAIN; /* cow_read_done resumes */
}

static void cw_write_finished(struct cluster_write *cw, int err)
{
	if (err) {
		image_set_error(cw->img, "write error on %s: %s",
				cw->img->filename, strerror(-err));
		cw->err = err;
		cw->state = CW_DONE;
	} else {
		image_mark_data_unsynced(cw->img);
		if (cw->owner)
			cw->state = CW_JOIN_WAIT; /* the owner's cw_done ends us */
		else
			cw->state = cw->in_place ? CW_DONE : CW_UPDATE;
	}
	cw_run(cw);
}

static void cw_write_done(struct file_read *fw, int err)
{
	cw_write_finished(container_of(fw, struct cluster_write, fw), err);
}

/*
 * Data writes gathered between write_gather_begin() and _end(): the
 * clusters allocated one after another usually land back to back in the
 * file (a new image written in order always does), and one 2 MiB write
 * costs the kernel far less than 32 of 64 KiB (buffered writes to one file
 * run one after another on io_uring's worker). Nothing inside the scope
 * waits for a gathered write, and its end submits them.
 */
#define WRITE_BATCH_MAX_IOV 256

struct write_batch {
	struct file_read fw;
	struct qcow2_image *img;
	struct qfile *file;
	uint64_t off, len;
	struct cluster_write *first, *last;
	int iovcnt;
	struct iovec iov[WRITE_BATCH_MAX_IOV];
};

static void batch_finish(struct write_batch *b, int err)
{
	struct cluster_write *cw = b->first;

	free(b);
	while (cw) {
		struct cluster_write *next = cw->next_batched;
		cw->next_batched = NULL;
		cw_write_finished(cw, err);
		cw = next;
	}
}

static void batch_written(struct file_read *fw, int err)
{
	batch_finish(container_of(fw, struct write_batch, fw), err);
}

static void batch_submit(struct qcow2_image *img)
{
	struct write_batch *b = img->gather.batch;
	int ret;

	img->gather.batch = NULL;
	if (!b)
		return;
	ret = file_write_start(img->ctx, b->file, b->off, b->iov, b->iovcnt,
			       b->len, &b->fw, batch_written);
	if (ret < 0)
		batch_finish(b, ret);
}

void write_gather_begin(struct qcow2_image *img)
{
	img->gather.depth++;
}

void write_gather_end(struct qcow2_image *img)
{
	if (--img->gather.depth == 0)
		batch_submit(img);
}

/* Where [off, +len) goes in the batch: after it (1), before it (-1), or
 * nowhere (0). Ends meeting in the file is what counts; buffers may lie
 * anywhere. */
static int batch_side(const struct write_batch *b, struct qfile *file,
		      uint64_t off, int iovcnt, uint64_t len)
{
	if (b->file != file || b->iovcnt + iovcnt > WRITE_BATCH_MAX_IOV)
		return 0;
	if (b->off + b->len == off)
		return 1;
	if (off + len == b->off)
		return -1;
	return 0;
}

/* Merge neighbouring iovecs whose buffers meet. */
static void batch_compact(struct write_batch *b)
{
	int n = 0;

	for (int i = 1; i < b->iovcnt; i++) {
		struct iovec *t = &b->iov[n];
		if ((uint8_t *)t->iov_base + t->iov_len ==
		    (uint8_t *)b->iov[i].iov_base)
			t->iov_len += b->iov[i].iov_len;
		else
			b->iov[++n] = b->iov[i];
	}
	b->iovcnt = n + 1;
}

/* Add cw's data write to the image's batch (the cw waits for it). Clusters
 * are usually allocated in guest order, but a write that allocated an L2
 * table lets those waiting for it go first once it has its own cluster:
 * its data comes before theirs. */
static int batch_add(struct cluster_write *cw, struct qfile *file,
		     uint64_t off, const struct iovec *iov, int iovcnt,
		     uint64_t len)
{
	struct qcow2_image *img = cw->img;
	struct write_batch *b;
	int side = 0;

	/* (A submit that fails at once ends writes that may start others,
	 * which may gather a new batch: look again.) */
	while (img->gather.batch &&
	       !(side = batch_side(img->gather.batch, file, off, iovcnt, len)))
		batch_submit(img);
	b = img->gather.batch;
	if (!b) {
		b = malloc(sizeof(*b));
		if (!b)
			return -ENOMEM;
		b->img = img;
		b->file = file;
		b->off = off;
		b->len = 0;
		b->first = b->last = NULL;
		b->iovcnt = 0;
		img->gather.batch = b;
		side = 1;
	}
	if (side > 0) {
		memcpy(&b->iov[b->iovcnt], iov, (size_t)iovcnt * sizeof(*iov));
		if (b->last)
			b->last->next_batched = cw;
		else
			b->first = cw;
		b->last = cw;
	} else {
		memmove(&b->iov[iovcnt], b->iov, (size_t)b->iovcnt * sizeof(*iov));
		memcpy(b->iov, iov, (size_t)iovcnt * sizeof(*iov));
		cw->next_batched = b->first;
		b->first = cw;
		b->off = off;
	}
	b->iovcnt += iovcnt;
	b->len += len;
	batch_compact(b);
	return -EAGAIN;
}

static int cw_write(struct cluster_write *cw)
{
	struct qcow2_image *img = cw->img;
	uint64_t off, len;
	struct iovec *iov;
	int iovcnt, ret;

	if (cw->kind == WRITE_COMPRESSED) {
		uint64_t clen = cw->req->r.iov[0].iov_len;

		cw->buf_len = compressed_reserve(cw);
		if (posix_memalign((void **)&cw->buf, img->file.mem_align,
				   cw->buf_len))
			return -ENOMEM;
		memcpy(cw->buf, cw->req->r.iov[0].iov_base, clen);
		memset(cw->buf + clen, 0, cw->buf_len - clen);
		cw->buf_iov.iov_base = cw->buf;
		cw->buf_iov.iov_len = cw->buf_len;
		iov = &cw->buf_iov;
		iovcnt = 1;
		off = cw->host;
		len = cw->buf_len;
	} else if (cw->buf) {
		uint8_t *dst = cw->buf + (cw->a - cw->lo);

		if (cw->req->kind == WRITE_ZEROES || cw->req->kind == WRITE_DISCARD)
			memset(dst, 0, cw->b - cw->a);
		else
			iov_to_buf(cw->req->r.iov, cw->req->r.iovcnt, cw->req_off,
				   dst, cw->b - cw->a);
		cw->buf_iov.iov_base = cw->buf;
		cw->buf_iov.iov_len = cw->buf_len;
		iov = &cw->buf_iov;
		iovcnt = 1;
		off = cw->host + cw->lo;
		len = cw->buf_len;
	} else {
		ret = req_slice_init(&cw->rs, cw->req, cw->req_off, cw->b - cw->a);
		if (ret < 0)
			return ret;
		iov = cw->rs.iov;
		iovcnt = cw->rs.iovcnt;
		off = cw->host + cw->a;
		len = cw->b - cw->a;
	}
	cw->state = CW_WRITE_WAIT;
	if (img->gather.depth && cw->kind != WRITE_COMPRESSED &&
	    iovcnt <= WRITE_BATCH_MAX_IOV)
		return batch_add(cw, img->data, off, iov, iovcnt, len);
	ret = file_write_start(img->ctx, img->data, off, iov, iovcnt, len,
			       &cw->fw, cw_write_done);
	if (ret < 0)
		return ret;
	return -EAGAIN; /* cw_write_done resumes */
}

/* Drop the old host cluster(s) of the entry being replaced. */
static void free_old(struct cluster_write *cw)
{
	struct qcow2_image *img = cw->img;
	uint64_t e = cw->old_entry;

	if (img->has_data_file)
		return; /* data clusters are not counted */
	if (e & QCOW_OFLAG_COMPRESSED) {
		uint64_t host, len;
		compressed_range(img, e & ((1ull << 62) - 1), &host, &len);
		for (uint64_t c = align_down(host, img->cluster_size);
		     c < host + len; c += img->cluster_size)
			cluster_free_later(img, c);
	} else if ((e & L2E_OFFSET_MASK) && (e & L2E_OFFSET_MASK) != cw->host) {
		/* Dropped by a discard or an unmapping zero write: the guest
		 * gave the space back, so does the image file. */
		if (cw->kind == WRITE_DISCARD || cw->kind == WRITE_ZEROES)
			cluster_discard_later(img, e & L2E_OFFSET_MASK);
		else
			cluster_free_later(img, e & L2E_OFFSET_MASK);
	}
}

static int cw_update(struct cluster_write *cw)
{
	struct qcow2_image *img = cw->img;
	struct slice *s;
	uint64_t idx, e, bitmap = 0;
	int ret;

	ret = writeback_gate(img, &cw->waiter);
	if (ret < 0)
		return ret;
	ret = cw_entry_slice(cw, &s, &idx);
	if (ret < 0)
		return ret;
	if (cw->kind == WRITE_DATA) {
		e = cw->host | QCOW_OFLAG_COPIED;
		if (img->extl2) {
			/* Copied whole: every subcluster now reads from the
			 * new cluster. Otherwise the written ones join those
			 * already allocated in it; the rest keep their state. */
			uint64_t m = l2e_sc_mask(img, cw->a, cw->b);
			uint64_t alloc = l2e_in_place(img, cw->old_entry) ?
					 cw->old_bitmap & EXTL2_ALLOC_ALL : 0;

			if (cw->lo == 0 && cw->hi == cw->csize && cow_whole_cluster(cw))
				bitmap = EXTL2_ALLOC_ALL;
			else
				bitmap = (alloc | m) |
					 (cw->old_bitmap & EXTL2_ZERO_ALL & ~(m << 32));
		}
	} else if (cw->kind == WRITE_COMPRESSED) {
		uint64_t sectors = align_up(cw->req->r.iov[0].iov_len, 512) / 512;
		unsigned x = 62 - (img->cluster_bits - 8);

		e = QCOW_OFLAG_COMPRESSED | ((sectors - 1) << x) | cw->host;
	} else {
		if (img->extl2)
			e = meta_entry_ext(cw, cw->old_entry, &bitmap);
		else
			e = meta_entry(cw, cw->old_entry);
		cw->host = e & L2E_OFFSET_MASK; /* kept, if any */
		if (e == cw->old_entry && bitmap == cw->old_bitmap) {
			cw->state = CW_DONE;
			return 0;
		}
	}
	l2e_set(img, s->data, idx, e, bitmap);
	slice_cache_mark_dirty(img->l2_cache, s);
	free_old(cw);
	cw->state = CW_DONE;
	return 0;
}

static void cw_done(struct cluster_write *cw)
{
	struct write_req *req = cw->req;
	struct cluster_write *blocked = cw->blocked, *l2b = cw->l2_blocked;
	struct cluster_write *joiners = cw->joiners;
	int err = cw->err;

	/* Leave the allocation list first: completions run below may issue
	 * writes to this cluster, which must not find (and join) us. */
	cw_unlink(cw);
	if (cw->owner) {
		/* A joiner that failed before its owner ended. */
		struct cluster_write **pp = &cw->owner->joiners;
		while (*pp && *pp != cw)
			pp = &(*pp)->next_blocked;
		if (*pp)
			*pp = cw->next_blocked;
	}
	free(cw->buf);
	req_slice_free(&cw->rs);
	free(cw);
	/* Joiners whose data is written finish with our outcome; those
	 * still writing finish when their write does. */
	while (joiners) {
		struct cluster_write *j = joiners;
		joiners = j->next_blocked;
		j->next_blocked = NULL;
		j->owner = NULL;
		if (err && !j->err)
			j->err = err;
		if (j->state == CW_JOIN_WAIT) {
			j->state = CW_DONE;
			cw_run(j);
		}
	}
	wake_list(l2b);
	wake_list(blocked);
	wreq_put(req, err);
}

static void cw_run(struct cluster_write *cw)
{
	for (;;) {
		int ret = 0;

		switch (cw->state) {
		case CW_START:
			ret = cw_start(cw);
			break;
		case CW_L2:
			ret = cw_l2(cw);
			break;
		case CW_LOOKUP:
			ret = cw_lookup(cw);
			break;
		case CW_ALLOC:
			ret = cw_alloc(cw);
			break;
		case CW_COW:
			ret = cw_cow(cw);
			break;
		case CW_WRITE:
			ret = cw_write(cw);
			break;
		case CW_UPDATE:
			ret = cw_update(cw);
			break;
		case CW_L2_COPY_WAIT:
		case CW_COW_WAIT:
		case CW_WRITE_WAIT:
		case CW_JOIN_WAIT:
			return; /* an IO callback resumes */
		case CW_DONE:
			cw_done(cw);
			return;
		}
		if (ret == -EAGAIN)
			return; /* parked; a waiter resumes the same state */
		if (ret < 0) {
			if (!cw->err)
				cw->err = ret;
			cw->state = CW_DONE;
		}
	}
}

int start_cluster_write(struct write_req *req, enum write_kind kind,
			uint64_t guest, uint64_t a, uint64_t b)
{
	struct qcow2_image *img = req->r.img;
	struct cluster_write *cw = calloc(1, sizeof(*cw));

	if (!cw)
		return -ENOMEM;
	cw->req = req;
	cw->kind = kind;
	cw->img = img;
	cw->guest = guest;
	cw->csize = img->virtual_size - guest < img->cluster_size ?
			    img->virtual_size - guest : img->cluster_size;
	cw->a = a;
	cw->b = b;
	cw->req_off = req->pos;
	cw->l1_idx = guest >> (img->cluster_bits + img->l2_bits);
	cw->waiter.wake = cw_wake;
	cw->state = CW_START;
	req->r.pending++;
	cw_run(cw);
	return 0;
}

bool cluster_allocating(struct qcow2_image *img, uint64_t guest)
{
	for (struct cluster_write *x = *alloc_bucket(img, guest); x;
	     x = x->next_alloc)
		if (x->guest == guest)
			return true;
	return false;
}
