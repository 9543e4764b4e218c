/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * The engine (engine/): an open image and its requests. Opening and
 * closing, guest-to-host mapping, reads, writes, cluster allocation with
 * deferred frees, refcounts, lazy write-back in soft-update order, resize,
 * block status. An image is touched by one thread at a time (its context's).
 *
 * One section per module below: its functions, and the state it owns,
 * which struct qcow2_image (after the sections) embeds. Inline helpers
 * that need the whole image come last.
 */
#ifndef QCOW2_ENGINE_H
#define QCOW2_ENGINE_H

#include <endian.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "qcow2.h"
#include "cache/cache.h"
#include "format/format.h"
#include "io/io.h"

struct qcow2_image;
struct cluster_write;

/* ---- The image (image.c: open, close, info) ----------------------------- */

/* Set the image's message of the failure being handled (bumps
 * img->error_seq; see request_fail()). */
void image_set_error(struct qcow2_image *img, const char *fmt, ...)
	QCOW2_PRINTF(2, 3);
/*
 * The engine found metadata that cannot be right (a table outside the
 * file, an invalid entry, a refcount that would overflow): the message
 * goes to image_set_error(), and the first one marks the image corrupt as
 * QEMU does. From then on new writes are refused (-EUCLEAN) and nothing is
 * allocated, reads go on, and a read-write v3 image gets the header's
 * corrupt bit with its next write-back, so that nobody writes it again
 * before a repair. The caller still fails its request (-EIO).
 */
void image_corrupt(struct qcow2_image *img, const char *fmt, ...)
	QCOW2_PRINTF(2, 3);
/* -EUCLEAN with a message when image_corrupt() marked the image, else 0. */
int image_refuse_if_corrupt(struct qcow2_image *img);
/* slice_load_fn of the image's caches: read the slice from the image file. */
int image_load_slice(void *opaque, struct slice_cache *c, struct slice *s);

/* ---- Requests (request.c) ----------------------------------------------- */

/*
 * What reads and writes share (request.c): the caller's iovec (copied),
 * the completion, the first error with its own message, and the count of
 * work in flight. The callback runs once, never inside the call that
 * started the request (in_submit: it is deferred to the context).
 */
struct request {
	struct qcow2_image *img;
	uint64_t offset;
	uint64_t len;
	struct iovec *iov;
	int iovcnt;
	unsigned pending;       /* started work, + 1 while the cursor runs */
	int error;              /* the first */
	char *error_msg;        /* its message (malloc'd), or NULL */
	uint64_t error_seq;     /* img->error_seq when the request began */
	bool in_submit;
	uint64_t *error_count;  /* stats counter of failed requests, or NULL */
	qcow2_complete_fn cb;
	void *opaque;
	struct ctx_deferred deferred;
	void (*destroy)(struct request *r); /* frees what contains r */
	struct iovec iov_inline[2];
};

/* The checks every request's range passes: inside the disk, aligned to
 * the block size (the end may be the unaligned end of the disk); -EINVAL
 * with the image's message set. */
int request_check_range(struct qcow2_image *img, uint64_t offset,
			uint64_t len);
/* Fill r (zeroed by the caller), copying iov; pending is 1 (the cursor),
 * in_submit set. -ENOMEM. */
int request_init(struct request *r, struct qcow2_image *img, uint64_t offset,
		 const struct iovec *iov, int iovcnt, uint64_t len,
		 qcow2_complete_fn cb, void *opaque);
/*
 * Record a failure (the first one counts). Its message: msg when the step
 * that failed has one (a backing file's request); else the image's message
 * when one was set since the request began (the failure being handled set
 * it: single thread); else a generic one naming the file and the error.
 */
void request_fail(struct request *r, int err, const char *msg);
/* One piece of work done: the last one completes the request. */
void request_put(struct request *r);
/* The call that started the request returns: later completions call back
 * directly. */
void request_submitted(struct request *r);

/* ---- Refcounts (refcount.c; refcount_rebuild.c) ------------------------- */

/* The refcount table in memory: refcount.c's alone (the allocator changes
 * it through the functions below, reads it through refcount_block_at()
 * and the other inline accessors at the end). Refcount blocks are sliced
 * in img->rc_cache and written back with the rest of the metadata. */
struct refcounts {
	uint64_t *reftable;         /* host-endian block offsets */
	uint32_t reftable_entries;
	uint32_t order;             /* log2(bits per refcount) */
	uint64_t block_entries;     /* refcounts per refcount block */
	uint32_t slice_size;        /* of img->rc_cache */
	uint64_t cache_bytes;       /* asked for at open (0: the default) */
};

int refcount_open(struct qcow2_image *img);
/* A dirty image (lazy refcounts): count every reference, write new
 * refcount structures past the end, then point the header at them and
 * clear the dirty bit (refcount_rebuild.c). Before refcount_open(). */
int refcount_rebuild(struct qcow2_image *img);
void refcount_close(struct qcow2_image *img);

/*
 * Add delta to the refcount of the host cluster at offset host (in the
 * cache; written back by the next flush). Returns 0, -EAGAIN when a slice
 * must be loaded first (w is woken; call again), -ERANGE on overflow or
 * underflow (corruption), or another negative errno.
 */
int refcount_update(struct qcow2_image *img, uint64_t host, int64_t delta,
		    struct slice_waiter *w);
/* Read the refcount of the cluster at host; same return convention. */
int refcount_get(struct qcow2_image *img, uint64_t host, uint64_t *out,
		 struct slice_waiter *w);

/* The cluster at block, in the range of refcount table entry rt, becomes
 * that range's refcount block and counts itself: the slice holding its own
 * entry is created in the cache already dirty, so the block's refcount is
 * written before the table entry that points at it (rule 1). -EAGAIN (w
 * queued) when the cache has no room. */
int refcount_new_block(struct qcow2_image *img, uint64_t rt, uint64_t block,
		       struct slice_waiter *w);
/* Point table entry rt at block (counted by the caller), dirty. */
void refcount_set_block(struct qcow2_image *img, uint64_t rt, uint64_t block);
/* Enlarge the table in memory to at least need + 1 entries, at least
 * doubling it, in whole clusters (*clusters: how many). The caller
 * places and counts it, then points the header at it. -ENOSPC past the
 * largest table, -ENOMEM. */
int refcount_table_enlarge(struct qcow2_image *img, uint64_t need,
			   uint32_t *clusters);

/* ---- Allocation (cluster_alloc.c) --------------------------------------- */

/*
 * Where host clusters come from and how they go back: cluster_alloc.c's
 * alone (others call the functions below, or read it through
 * cluster_alloc_end() and cluster_punches_inflight() at the end).
 */
struct allocator {
	uint64_t end;               /* end of the last allocated cluster */
	uint64_t file_len;          /* the image file's size as we set it */
	/* Refcount table growth in progress: phase 1, the table is enlarged
	 * in memory; phase 2, placed at grow_off. */
	int grow_phase;
	struct slice_waiter *grower;    /* the allocation doing it */
	struct slice_waiter *grow_waiters; /* other appends wait (they would
					      use blocks not yet on disk) */
	uint64_t grow_off;
	uint32_t grow_clusters;
	uint32_t grow_counted;
	/* Reusable clusters: their dropping entries and decrements are done. */
	uint64_t *free_pool;
	size_t free_pool_len, free_pool_cap;
	/* Clusters to decrement once the entries that dropped them are on
	 * disk (rule 3): queued now, released by the next completed flush. */
	uint64_t *frees_waiting;     /* waiting for a flush to start */
	size_t frees_waiting_len, frees_waiting_cap;
	uint64_t *frees_flushing;    /* covered by the running flush */
	size_t frees_flushing_len, frees_flushing_cap;
	uint64_t *frees_ready;       /* decrement now */
	size_t frees_ready_len, frees_ready_cap, frees_ready_pos;
	/* ...and once every in-place write issued before that flush began
	 * is done: a late one must not land in a reused cluster. */
	uint64_t frees_flushing_seq; /* inplace_last_started() when the
					running flush began */
	uint64_t frees_ready_seq;    /* ready frees wait for writes <= this */
	/* The worker that makes the ready decrements */
	struct slice_waiter free_waiter;
	bool free_worker_parked;     /* on a slice load or a flush */
	bool free_worker_waits_ip;   /* on in-place writes */
	unsigned punches_inflight;   /* holes being punched */
	/* Packing of compressed clusters (cluster_alloc_bytes) */
	uint64_t cz_cluster;         /* cluster taking blobs, held; or 0 */
	uint64_t cz_off;             /* its next free byte */
	uint64_t cz_blobs;           /* blobs counted in it */
};

/* Allocations start at the end of the file as it is (open; again after a
 * refcount rebuild wrote past it). */
void cluster_alloc_init(struct qcow2_image *img);
/*
 * A new host cluster. Data may reuse one from the free pool (*fresh false:
 * it holds old bytes); otherwise, and always for tables, it is appended at
 * the end (*fresh true: it reads zeros until written). The caller adds its
 * refcount. Returns 0, -EAGAIN (w queued: call again), or -errno.
 * Callers pass writeback_gate() first.
 */
int cluster_alloc(struct qcow2_image *img, bool table, struct slice_waiter *w,
		  uint64_t *host, bool *fresh);
/*
 * n contiguous clusters at the end, for a table (a relocated L1). Refcount
 * blocks the run needs are made first, before it. Returns 0 with *off set,
 * the caller then counts each cluster; -EAGAIN (w queued: call again;
 * blocks made stay made) or -errno.
 */
int cluster_alloc_run(struct qcow2_image *img, uint64_t n,
		      struct slice_waiter *w, uint64_t *off);
/*
 * Room for a compressed cluster: blob_len bytes referenced by its
 * descriptor, reserve bytes (blob_len rounded up to the block size)
 * written. Returns 0 with *host, and the clusters to count: touch[i] gets
 * +delta[i] (the caller applies them, resumably); -EAGAIN or -errno.
 */
int cluster_alloc_bytes(struct qcow2_image *img, uint64_t reserve,
			uint64_t blob_len, struct slice_waiter *w, uint64_t *host,
			uint64_t touch[2], int64_t delta[2], int *ntouch);
/* Drop the hold on the cluster compressed data was packed into (close). */
void cluster_alloc_bytes_release(struct qcow2_image *img);
/* Like cluster_free_later(), for a cluster a discard dropped: once free,
 * its blocks are given back to the file system (punched). */
int cluster_discard_later(struct qcow2_image *img, uint64_t host);
/* Queue the decrement of a host cluster dropped by a metadata change. */
int cluster_free_later(struct qcow2_image *img, uint64_t host);
/* Called by the write-back machinery around a flush. */
void cluster_frees_flush_started(struct qcow2_image *img);
void cluster_frees_flush_done(struct qcow2_image *img, int err);
/* Are decrements queued (ready_only: released by a flush, not yet made)? */
bool cluster_frees_pending(const struct qcow2_image *img, bool ready_only);
/* An in-place write finished: frees waiting for it may go on. */
void cluster_frees_kick(struct qcow2_image *img);
void cluster_alloc_close(struct qcow2_image *img);
/* Cut the file back to the end of its last cluster (clean close). */
void cluster_alloc_trim(struct qcow2_image *img);

/* ---- Write-back (writeback.c) ------------------------------------------- */

/*
 * What the next write-back must write or sync besides dirty slices:
 * writeback.c's (others mark it through the functions below, and written
 * data through image_mark_data_unsynced() at the end). The write-back's
 * own progress is in struct writeback (img->wb).
 */
struct meta_dirty {
	bool l1;                     /* entries [l1_lo, l1_hi) */
	uint32_t l1_lo, l1_hi;
	bool reftable;               /* entries [reftable_lo, reftable_hi) */
	uint32_t reftable_lo, reftable_hi;
	bool header;                 /* hdr_block changed */
	bool data_unsynced;          /* data written since the last fdatasync */
	/* Lazy refcounts: flushes leave refcounts in the cache (written at
	 * close) once the header's dirty bit is on disk. */
	bool lazy_refcounts;
	bool bit_on_disk;            /* that dirty bit */
	/* When l1, reftable or header last became dirty from all clean
	 * (monotonic ns; 0: clean); kept through a failed write-back. */
	uint64_t since_ns;
};

/* Read-write open (decides on lazy refcounts) and close. */
int writeback_init(struct qcow2_image *img);
void writeback_free(struct qcow2_image *img);
/*
 * May metadata change now? 0 yes; -EAGAIN while a flush runs (metadata is
 * being written in dependency order): w is parked and woken at its end; or
 * the error of the last write-back, which failed: metadata changes fail
 * until a write-back succeeds.
 */
int writeback_gate(struct qcow2_image *img, struct slice_waiter *w);
int writeback_start(struct qcow2_image *img, enum qcow2_flush_cause cause,
		    qcow2_complete_fn cb, void *opaque);
void image_mark_l1_dirty(struct qcow2_image *img, uint32_t idx);
/* Change big-endian header fields in hdr_block; written by the next flush
 * after the tables they point at. */
void image_set_header_u64(struct qcow2_image *img, unsigned off, uint64_t v);
void image_set_header_u32(struct qcow2_image *img, unsigned off, uint32_t v);
void image_mark_reftable_dirty(struct qcow2_image *img, uint32_t idx);
/* Is there anything to write back, or data to sync? */
bool writeback_pending(const struct qcow2_image *img);
/* Lazy refcounts, clean close: every refcount is on disk (the close flush
 * wrote them, synced); now the image may say so, if nothing is dirty. On
 * failure the bit stays set, which only costs a refcount rebuild. */
void writeback_clear_dirty_bit(struct qcow2_image *img);

/* ---- Guest-offset mapping (map.c: reads, writes, block status) ---------- */

struct map_extent {
	uint64_t len;
	enum qcow2_extent_type type;
	uint64_t host;          /* DATA: host offset; COMPRESSED: descriptor */
};

/* Map guest offset; at most maxlen bytes. Returns 0 with *ext filled, or
 * -EAGAIN when an L2 slice is loading (w is woken when it is ready), or a
 * negative errno (with the image's error message set). */
int map_lookup(struct qcow2_image *img, uint64_t guest, uint64_t maxlen,
	       struct map_extent *ext, struct slice_waiter *w);

/* The cached L2 slice mapping guest: returns 0 (slice, index of its first
 * entry within the table, table offset), 1 when no L2 table maps guest,
 * -EAGAIN (w queued) while the slice loads, or -EIO (corrupt L1 entry). */
int l2_slice_lookup(struct qcow2_image *img, uint64_t guest,
		    struct slice_waiter *w, struct slice **slice,
		    uint64_t *slice_first, uint64_t *l2_off);

/* Compressed cluster descriptor -> host byte range. */
void compressed_range(const struct qcow2_image *img, uint64_t desc,
		      uint64_t *host, uint64_t *len);

/* ---- Reads (read.c) ----------------------------------------------------- */

/*
 * A single-entry cache of the last decompressed cluster, keyed by its
 * descriptor: read.c's. Dropped whenever a host cluster becomes reusable
 * (a reused cluster can take a new blob with the same descriptor).
 */
struct zcache {
	uint8_t *buf;                /* one cluster, allocated on first use */
	uint64_t desc;               /* descriptor of the cluster in buf */
	bool valid;
	uint64_t gen;                /* bumped by every drop */
	struct decompressor dec;
};

/* A host cluster became reusable (free pool): drop the decompressed
 * cluster cache, and make reads in flight not fill it. */
void read_zcache_drop(struct qcow2_image *img);
/* Close. */
void read_zcache_free(struct qcow2_image *img);

/* Internal read: no alignment checks, callback may run synchronously. */
int read_start(struct qcow2_image *img, uint64_t offset,
	       const struct iovec *iov, int iovcnt, uint64_t len,
	       bool top_level, qcow2_complete_fn cb, void *opaque);

/* ---- Write requests (write.c: the cursor over the range) ---------------- */

/* Each cluster of a write request is written in place (inplace.c) when it
 * is already ours, else by a cluster write (cluster_write.c). */

enum write_kind { WRITE_DATA, WRITE_ZEROES, WRITE_DISCARD, WRITE_COMPRESSED };

struct write_req {
	struct request r;
	enum write_kind kind;
	unsigned flags;
	uint64_t pos;           /* cursor, relative to r.offset */
	struct slice_waiter waiter;
};

/* A piece of a request's buffers: [off, off+len) of req->r.iov. */
struct req_slice {
	struct iovec *iov;
	int iovcnt;
	struct iovec inline_iov[2];
	void *zeros; /* zero request: the buffer written */
};

/* [off, off+len) of a request's buffers, or zeros for a zero request
 * (write.c). */
int req_slice_init(struct req_slice *rs, struct write_req *req, uint64_t off,
		   uint64_t len);
void req_slice_free(struct req_slice *rs);
/* A piece of a write request done, failed with err (0: it succeeded). */
void wreq_put(struct write_req *req, int err);

/* ---- In-place writes (inplace.c) ---------------------------------------- */

/*
 * In-place writes in flight, numbered in issue order: inplace.c's alone.
 * They do not wait for metadata changes, so a cluster a discard dropped is
 * decremented only once every in-place write issued before the flush that
 * wrote the discard is done: a late one must not land in a reused
 * cluster. inplace.c owns that ordering: the allocator notes
 * inplace_last_started() when a flush begins, asks inplace_ended() before
 * it decrements, and is kicked (cluster_frees_kick()) when the oldest
 * write ends.
 */
struct inplace_writes {
	struct inplace_write *head, *tail; /* oldest first */
	uint64_t seq;                /* number of the last one started */
};

/* Write [req->pos, +len) of the request in place at host: one IO, counted
 * as a piece of the request. */
int start_inplace(struct write_req *req, uint64_t host, uint64_t len);
/* Have all in-place writes numbered up to seq ended? */
bool inplace_ended(const struct qcow2_image *img, uint64_t seq);

/* ---- Cluster writes (cluster_write.c) ----------------------------------- */

/* The cluster writes in flight, so that those of one guest cluster, and
 * those that need one new L2 table, go one at a time (or join). */
struct cluster_writes {
	struct cluster_write **hash; /* by guest cluster */
	struct cluster_write *l2_allocators; /* allocating an L2 table */
};

/* Data writes being gathered (write_gather_begin()). */
struct write_gather {
	unsigned depth;              /* of nested begin/end */
	struct write_batch *batch;   /* gathered so far, or NULL */
};

/* Read-write open and close. */
int cluster_writes_init(struct qcow2_image *img);
void cluster_writes_free(struct qcow2_image *img);
/* A cluster write for [a, b) of the guest cluster at guest, the request's
 * bytes from req->pos: counted as a piece of the request (cluster_write.c). */
int start_cluster_write(struct write_req *req, enum write_kind kind,
			uint64_t guest, uint64_t a, uint64_t b);
/* Between these (nested: the outermost end counts), the data writes of
 * cluster writes are gathered, those back to back in the file into one
 * IO, and submitted at the end (cluster_write.c). Wrapped around whatever
 * starts or resumes many cluster writes at once: a request's cursor, the
 * wake-up of waiters. */
void write_gather_begin(struct qcow2_image *img);
void write_gather_end(struct qcow2_image *img);
/* Is a cluster write allocating the guest cluster at guest? */
bool cluster_allocating(struct qcow2_image *img, uint64_t guest);

/* ---- Synchronous calls (sync.c) ----------------------------------------- */

/* Waiting for one request (sync.c): pass sync_cb with a struct sync_wait
 * as its opaque, then sync_finish() with what starting it returned: runs
 * the context until it completes; its result. A failure's message becomes
 * the image's last one. */
struct sync_wait {
	struct qcow2_image *img;
	bool done;
	int ret;
};
void sync_cb(void *opaque, int ret, const char *error);
int sync_finish(struct qcow2_image *img, struct sync_wait *w, int ret);

/* ---- The image: its shared description and its modules' states ---------- */

/*
 * An open image. First what every module reads: its files, header,
 * geometry, the metadata tables and caches (changed by the write path and
 * resize, written back by writeback.c), its backing file. Then the state
 * of each module, which only the file named beside it changes: the others
 * call that module's functions, or the inline accessors below.
 */
struct qcow2_image {
	struct qcow2_ctx *ctx;
	char *filename;
	unsigned flags;
	bool raw;
	struct qfile file;
	struct qfile data_store;    /* external data file, if any */
	struct qfile *data;         /* &file or &data_store */
	struct qcow2_header hdr;
	/* The header's first block as on disk (read-write images): read at
	 * open, changed by a refcount rebuild and by writeback.c, written
	 * whole (image_set_header_*()). */
	uint8_t *hdr_block;
	uint32_t hdr_block_len;
	uint64_t virtual_size;
	uint32_t block_size;        /* request alignment */

	/* geometry */
	uint32_t cluster_bits;
	uint64_t cluster_size;
	uint32_t l2_bits;           /* log2(entries per L2 table) */
	uint32_t l2_entry_size;     /* 8, or 16 with extended L2 */
	uint32_t subcluster_bits;   /* log2(subcluster size) */
	bool extl2;
	bool has_data_file;

	uint64_t *l1;               /* host-endian */
	uint32_t l1_size;

	struct slice_cache *l2_cache;
	uint32_t l2_slice_size;
	/* refcount blocks (read-write images; made by refcount.c) */
	struct slice_cache *rc_cache;

	struct qcow2_image *backing;
	char *backing_path;         /* hdr.backing_file beside the image */

	struct writeback *wb;       /* writeback.c's; NULL: read-only */

	/* Each module's own state */
	struct refcounts refcounts;           /* refcount.c */
	struct allocator alloc;               /* cluster_alloc.c */
	struct inplace_writes inplace;        /* inplace.c */
	struct cluster_writes cluster_writes; /* cluster_write.c */
	struct write_gather gather;           /* cluster_write.c */
	struct meta_dirty dirty;              /* writeback.c */
	struct zcache zcache;                 /* read.c */

	struct qcow2_stats stats;   /* counted by every module */
	char last_error[256];
	uint64_t error_seq;          /* bumped by every image_set_error() */
	/* Why image_corrupt() marked the image corrupt while open ("" if it
	 * did not): "FILE: its first finding", kept for the owner. */
	char corrupt_reason[512];
};

/* ---- Inline helpers ----------------------------------------------------- */

/* Read access to refcount.c's table (the allocator, the write-back). */

/* The table entry whose block holds the refcount of cluster_index. */
static inline uint64_t refcount_table_index(const struct qcow2_image *img,
					    uint64_t cluster_index)
{
	return cluster_index / img->refcounts.block_entries;
}

static inline uint32_t refcount_table_entries(const struct qcow2_image *img)
{
	return img->refcounts.reftable_entries;
}

/* The refcount block of table entry rt; 0 when there is none (past the
 * table too). */
static inline uint64_t refcount_block_at(const struct qcow2_image *img,
					 uint64_t rt)
{
	return rt < img->refcounts.reftable_entries ?
		       img->refcounts.reftable[rt] : 0;
}

/* The whole table (host-endian), for its write-back. */
static inline const uint64_t *refcount_table(const struct qcow2_image *img)
{
	return img->refcounts.reftable;
}

/* The largest refcount an entry holds. */
static inline uint64_t refcount_max(const struct qcow2_image *img)
{
	return img->refcounts.order == 6 ? UINT64_MAX :
	       (1ull << (1u << img->refcounts.order)) - 1;
}

/* Read access to cluster_alloc.c's state. */

/* The end of the last cluster allocated (at open, of the file, rounded up
 * to a cluster): what lies past it is not the image's (map.c, refcount.c
 * check entries against it). */
static inline uint64_t cluster_alloc_end(const struct qcow2_image *img)
{
	return img->alloc.end;
}

/* Holes being punched (a close waits for them). */
static inline unsigned cluster_punches_inflight(const struct qcow2_image *img)
{
	return img->alloc.punches_inflight;
}

/* Where the image's clusters end: the file as opened, or, once we allocate,
 * the end of the last cluster we allocated. */
static inline uint64_t image_end(const struct qcow2_image *img)
{
	return img->wb ? cluster_alloc_end(img) : img->file.size;
}

/* Unmapped clusters would show the backing file: zeros need the flag. */
static inline bool image_needs_zero_flag(const struct qcow2_image *img)
{
	return img->hdr.backing_file != NULL;
}

/* The number of the last in-place write started (inplace.c). */
static inline uint64_t inplace_last_started(const struct qcow2_image *img)
{
	return img->inplace.seq;
}

/* Data was written: the next write-back syncs it (writeback.c; on the
 * data path, so not a call). */
static inline void image_mark_data_unsynced(struct qcow2_image *img)
{
	img->dirty.data_unsynced = true;
}

/* L2 entries of this image in a cached slice. */
/* The entry maps a host cluster. With an external data file, clusters are
 * mapped one to one and guest cluster 0 lives at host offset 0: COPIED
 * says it is mapped. */
static inline bool l2e_mapped(const struct qcow2_image *img, uint64_t e)
{
	if (e & QCOW_OFLAG_COMPRESSED)
		return false;
	return (e & L2E_OFFSET_MASK) ||
	       (img->has_data_file && (e & QCOW_OFLAG_COPIED));
}

static inline bool l2e_in_place(const struct qcow2_image *img, uint64_t e)
{
	return !(e & (QCOW_OFLAG_COMPRESSED | QCOW_OFLAG_ZERO)) &&
	       (e & QCOW_OFLAG_COPIED) && l2e_mapped(img, e);
}

#define EXTL2_ALLOC_ALL 0x00000000ffffffffull
#define EXTL2_ZERO_ALL 0xffffffff00000000ull

/* Entry idx of an L2 slice; bitmap 0 without extended L2. */
static inline void l2e_get(const struct qcow2_image *img,
			   const uint8_t *slice, uint64_t idx, uint64_t *e,
			   uint64_t *bitmap)
{
	memcpy(e, slice + idx * img->l2_entry_size, 8);
	*e = be64toh(*e);
	*bitmap = 0;
	if (img->extl2) {
		memcpy(bitmap, slice + idx * 16 + 8, 8);
		*bitmap = be64toh(*bitmap);
	}
}

static inline void l2e_set(const struct qcow2_image *img, uint8_t *slice,
			   uint64_t idx, uint64_t e, uint64_t bitmap)
{
	e = htobe64(e);
	memcpy(slice + idx * img->l2_entry_size, &e, 8);
	if (img->extl2) {
		bitmap = htobe64(bitmap);
		memcpy(slice + idx * 16 + 8, &bitmap, 8);
	}
}

/* Allocation bits of the subclusters [a, b) of a cluster touches. */
static inline uint64_t l2e_sc_mask(const struct qcow2_image *img, uint64_t a,
				   uint64_t b)
{
	unsigned first = (unsigned)(a >> img->subcluster_bits);
	unsigned last = (unsigned)((b - 1) >> img->subcluster_bits);

	return ((2ull << last) - 1) & ~((1ull << first) - 1);
}

/* Written in place with no metadata change: mapped, ours, and (extended
 * L2) every subcluster [a, b) touches already allocated. */
static inline bool l2e_range_in_place(const struct qcow2_image *img,
				      uint64_t e, uint64_t bitmap, uint64_t a,
				      uint64_t b)
{
	uint64_t m;

	if (!l2e_in_place(img, e))
		return false;
	if (!img->extl2)
		return true;
	m = l2e_sc_mask(img, a, b);
	return (bitmap & m) == m;
}

#endif
