/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * libqcow2: an asynchronous qcow2 engine.
 *
 * Model: a qcow2_ctx is an IO context owned by one thread (one io_uring, or
 * the synchronous backend). Images are opened on a context; every request on
 * those images completes through that context. Nothing here is thread-safe:
 * use one context per thread, as a libuv loop is used.
 *
 * Asynchronous use:
 *   qcow2_readv(img, off, iov, n, cb, opaque);   queue a request
 *   qcow2_ctx_submit(ctx);                       push queued IO to the kernel
 *   poll(qcow2_ctx_event_fd(ctx)) ...            wait for the kernel
 *   qcow2_ctx_process(ctx, false);               reap; callbacks run here
 *
 * A request's callback runs exactly once, from qcow2_ctx_process() or
 * qcow2_ctx_run(), never from inside the call that queued it.
 *
 * Every function returns 0 (or a count) on success and a negative errno on
 * failure; errno is never used.
 *
 * Threads: a context, its images and their requests belong to the thread
 * that drives the context; no call may run concurrently with another on
 * the same context. qcow2_create(), qcow2_compress() and the offline
 * headers (qcow2_meta.h, qcow2_check.h) touch no context and may run on
 * any thread, one per image file.
 *
 * Lifetimes: buffers passed to a request stay the caller's and must stay
 * valid until its callback runs. Strings the library returns (in struct
 * qcow2_info, from qcow2_last_error(), qcow2_feature_name()) belong to the
 * image and live until qcow2_close(); qcow2_last_error()'s until the next
 * failing call on that image. A failed request's message lives until its
 * callback returns. struct qcow2_error is the caller's.
 *
 * Growth: option structs end in reserved words the caller leaves zero, and
 * structs the library fills (info, stats) in reserved words it zeroes, so
 * that later versions can add fields without breaking callers compiled
 * against this one.
 */
#ifndef QCOW2_H
#define QCOW2_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#ifdef __cplusplus
extern "C" {
#endif

struct qcow2_ctx;
struct qcow2_image;

/* ---- IO context -------------------------------------------------------- */

enum qcow2_backend {
	QCOW2_BACKEND_IO_URING = 0, /* liburing; the default */
	QCOW2_BACKEND_SYNC = 1,     /* pread/pwrite at submit time; tools, tests */
	/* 2 is the tests' fault backend (qcow2/io/qcow2_fault.h) */
};

struct qcow2_ctx_opts {
	enum qcow2_backend backend;
	unsigned queue_depth; /* io_uring entries; 0 selects 256 */
	/* Zero (a designated initializer does it): room for later options;
	 * a nonzero word fails the call with -EINVAL. */
	uint64_t reserved[4];
};

int qcow2_ctx_new(const struct qcow2_ctx_opts *opts, struct qcow2_ctx **out);
/* All images of the context must be closed first. */
void qcow2_ctx_free(struct qcow2_ctx *ctx);
/* An eventfd that becomes readable when completions are ready. Created on
 * first call; the context owns it. */
int qcow2_ctx_event_fd(struct qcow2_ctx *ctx);
/* Push queued IO to the kernel. */
int qcow2_ctx_submit(struct qcow2_ctx *ctx);
/* Submit, reap ready completions and run their callbacks (which may queue
 * more IO: it is submitted before returning). With wait, blocks until at
 * least one IO completed if any is in flight. Returns the number of IO
 * completions reaped. */
int qcow2_ctx_process(struct qcow2_ctx *ctx, bool wait);
/* Process until no IO is in flight. */
int qcow2_ctx_run(struct qcow2_ctx *ctx);
/* Number of host IOs in flight or queued. */
unsigned qcow2_ctx_inflight(const struct qcow2_ctx *ctx);

/* ---- Images ------------------------------------------------------------ */

#define QCOW2_OPEN_RDWR (1u << 0)       /* read-write */
#define QCOW2_OPEN_BUFFERED (1u << 1)   /* page cache instead of O_DIRECT */
#define QCOW2_OPEN_NO_BACKING (1u << 2) /* unallocated clusters read zeros */
#define QCOW2_OPEN_RAW (1u << 3)        /* the file is raw, not qcow2 */
/* Write refcounts in every flush even when the image has the lazy
 * refcounts feature (by default such images defer them to close). */
#define QCOW2_OPEN_STRICT_REFCOUNTS (1u << 4)
/* With RDWR, repair (qcow2-img check -r): rebuild the refcounts from the
 * tables (what a dirty image gets anyway) and make the active tables'
 * COPIED flags agree with them, keeping valid bitmaps valid. The handle is
 * then read-only (writes fail with -EROFS): close it and reopen to write. */
#define QCOW2_OPEN_REPAIR (1u << 5)
/* Images are locked as QEMU locks them (OFD locks): a writer excludes every
 * other opener, readers exclude writers, and a conflict fails with -EBUSY.
 * This flag takes no locks (qemu-img -U): reading an image that another
 * process writes may show inconsistent metadata. Read-only use only. */
#define QCOW2_OPEN_FORCE_SHARE (1u << 6)
/* Never wait for the disk (QEMU's cache=unsafe): flushes and the lazy
 * write-back write everything but issue no fdatasync, so the soft-update
 * order holds only for the page cache. A crash of the host (not of the
 * process) may leave the image corrupt. For scratch output that is thrown
 * away when the work fails, e.g. qcow2-img convert's -T unsafe. */
#define QCOW2_OPEN_UNSAFE (1u << 7)

struct qcow2_open_opts {
	unsigned flags;
	uint32_t l2_slice_size; /* bytes; 0 = 4096; clamped to [block, cluster] */
	uint64_t l2_cache_size; /* bytes; 0 = cover the disk, at most 32 MiB */
	const char *data_file;  /* override the external data file's path */
	/*
	 * Asked before the engine opens a file the image names itself: a
	 * backing file (at any depth of the chain; role "backing file") or
	 * the external data file (role "data file"; not when data_file
	 * above names it). path is the name resolved beside the image, as it
	 * will be opened. Return 0 to follow it, or a negative errno to fail
	 * the open with it (the engine's message names the file and the
	 * image). NULL: every name is followed. Runs on the opening thread,
	 * inside qcow2_open().
	 */
	int (*allow_file)(void *opaque, const char *path, const char *role);
	void *allow_file_opaque;
	/* Bytes of refcount slices cached (read-write); 0 = 4 MiB; at least
	 * 16 slices. */
	uint64_t refcount_cache_size;
	/* Zero (a designated initializer does it): room for later options;
	 * a nonzero word fails the call with -EINVAL. */
	uint64_t reserved[1];
};

/* Human-readable reason for a failure, filled by functions that take it. */
struct qcow2_error {
	char msg[512];
};

int qcow2_open(struct qcow2_ctx *ctx, const char *path,
	       const struct qcow2_open_opts *opts, struct qcow2_image **out,
	       struct qcow2_error *err);
/* No request may be in flight on the image (or on its backing chain).
 * A read-write image is flushed first: returns 0, or the error of that
 * final flush with its message in err (may be NULL): what was written
 * since the last successful flush may then be lost; the image is
 * consistent, with leaks at worst. The image is freed either way. */
int qcow2_close(struct qcow2_image *img, struct qcow2_error *err);

/* The message of the last synchronous call on this image that failed: an
 * open-time error, a request refused when it was made, or a synchronous
 * wrapper (qcow2_pread(), qcow2_fsync()...). "" if none. Asynchronous
 * requests carry their own to their callback. */
const char *qcow2_last_error(const struct qcow2_image *img);

/*
 * "" while the image and its backing chain look sound. Once the engine
 * finds metadata that cannot be right (a table outside the file, an
 * invalid table entry, a refcount that would overflow), it fails that
 * request with -EIO and marks the file corrupt as QEMU does; this returns
 * "FILE: what was found" (the first finding, of the image or else of the
 * first backing file marked). A marked image refuses new writes, discards
 * and resizes with -EUCLEAN and allocates nothing; reads go on; a flush
 * still writes back what was changed before, and in a read-write v3
 * image the header's corrupt bit with it, so that it opens read-only
 * until repaired (qcow2-img check -r all). Lives until qcow2_close().
 */
const char *qcow2_corrupt_reason(const struct qcow2_image *img);

enum qcow2_format { QCOW2_FORMAT_QCOW2 = 0, QCOW2_FORMAT_RAW = 1 };

enum qcow2_compression { QCOW2_COMPRESSION_ZLIB = 0, QCOW2_COMPRESSION_ZSTD = 1 };

/* Incompatible feature bits */
#define QCOW2_INCOMPAT_DIRTY (1ull << 0)
#define QCOW2_INCOMPAT_CORRUPT (1ull << 1)
#define QCOW2_INCOMPAT_DATA_FILE (1ull << 2)
#define QCOW2_INCOMPAT_COMPRESSION (1ull << 3)
#define QCOW2_INCOMPAT_EXTL2 (1ull << 4)
/* Compatible feature bits */
#define QCOW2_COMPAT_LAZY_REFCOUNTS (1ull << 0)
/* Autoclear feature bits */
#define QCOW2_AUTOCLEAR_BITMAPS (1ull << 0)
#define QCOW2_AUTOCLEAR_DATA_FILE_RAW (1ull << 1)

struct qcow2_info {
	enum qcow2_format format;
	const char *filename;       /* as opened */
	uint64_t virtual_size;      /* bytes */
	uint64_t file_size;         /* bytes of the image file */
	uint32_t block_size;        /* minimum IO unit and alignment */
	uint32_t mem_align;         /* buffer alignment that avoids copies */
	bool read_only;
	bool direct;                /* O_DIRECT */
	/* qcow2 only below */
	uint32_t version;           /* 2 or 3 */
	uint32_t cluster_size;
	uint32_t refcount_bits;
	uint32_t header_length;
	uint64_t incompatible_features;
	uint64_t compatible_features;
	uint64_t autoclear_features;
	enum qcow2_compression compression_type;
	bool extended_l2;
	bool dirty;
	bool corrupt;
	bool lazy_refcounts;
	uint32_t l1_size;           /* entries */
	uint64_t l1_table_offset;
	uint64_t refcount_table_offset;
	uint32_t refcount_table_clusters;
	uint32_t nb_snapshots;
	uint64_t snapshots_offset;
	uint32_t nb_bitmaps;
	const char *backing_file;   /* as recorded in the image, or NULL */
	const char *backing_path;   /* the file opened for it: relative names
				     * are relative to the image's directory */
	const char *backing_format; /* as recorded, or NULL */
	const char *data_file;      /* external data file as recorded, or NULL */
	bool data_file_raw;
	uint32_t l2_slice_size;     /* bytes, in effect */
	uint64_t l2_cache_size;     /* bytes, in effect */
	uint64_t file_allocated;    /* bytes the image file takes on disk */
	uint64_t reserved[7];       /* zero: room for later fields */
};

int qcow2_get_info(const struct qcow2_image *img, struct qcow2_info *info);
/* The opened backing image, or NULL. Owned by img. */
struct qcow2_image *qcow2_backing(const struct qcow2_image *img);
/* Name of a feature bit from the image's feature table (type 0 incompatible,
 * 1 compatible, 2 autoclear), or NULL when the image does not name it. */
const char *qcow2_feature_name(const struct qcow2_image *img, int type,
			       int bit);

/* ---- Requests ---------------------------------------------------------- */

/*
 * A request's completion. result: 0 or a negative errno. error: NULL on
 * success; on failure, this request's own message (what failed, in which
 * file, at which offset, what to do when there is something to do), valid
 * until the callback returns: copy it to keep it.
 */
typedef void (*qcow2_complete_fn)(void *opaque, int result, const char *error);

/*
 * Read len = sum(iov) bytes at guest offset. offset and len must be
 * multiples of info.block_size (len may end exactly at an unaligned virtual
 * size); -EINVAL otherwise. The iovec array is copied; the buffers must
 * stay valid until the callback. Buffers aligned to info.mem_align with
 * lengths multiple of block_size go straight to the kernel; others are
 * bounced through an aligned buffer.
 */
int qcow2_readv(struct qcow2_image *img, uint64_t offset,
		const struct iovec *iov, int iovcnt, qcow2_complete_fn cb,
		void *opaque);

static inline int qcow2_read(struct qcow2_image *img, uint64_t offset,
			     void *buf, size_t len, qcow2_complete_fn cb,
			     void *opaque)
{
	struct iovec iov = { .iov_base = buf, .iov_len = len };
	return qcow2_readv(img, offset, &iov, 1, cb, opaque);
}

/* Synchronous read: queues, then runs the context until it completes. Only
 * for callers that own the context (tools, tests). */
int qcow2_pread(struct qcow2_image *img, void *buf, size_t len,
		uint64_t offset);

/*
 * Write len = sum(iov) bytes at guest offset (image opened QCOW2_OPEN_RDWR;
 * same alignment rules as reads). Completion means the data is in the image
 * file and the metadata that maps it is in the engine's cache; it is durable
 * after a later qcow2_flush() completes.
 */
int qcow2_writev(struct qcow2_image *img, uint64_t offset,
		 const struct iovec *iov, int iovcnt, qcow2_complete_fn cb,
		 void *opaque);

static inline int qcow2_write(struct qcow2_image *img, uint64_t offset,
			      const void *buf, size_t len,
			      qcow2_complete_fn cb, void *opaque)
{
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
	return qcow2_writev(img, offset, &iov, 1, cb, opaque);
}

/*
 * Make [offset, offset+len) read as zeros. Whole clusters change metadata
 * only (the v3 zero flag; with QCOW2_ZERO_UNMAP their host clusters are
 * released, without it clusters of our own stay allocated); partial
 * clusters are written with zeros.
 */
#define QCOW2_ZERO_UNMAP (1u << 0)
int qcow2_write_zeroes(struct qcow2_image *img, uint64_t offset, uint64_t len,
		       unsigned flags, qcow2_complete_fn cb, void *opaque);

/*
 * Discard whole clusters in [offset, offset+len) (partial clusters at the
 * ends are left alone, as QEMU does): their host clusters are released and
 * they read as zeros. A version 2 image with a backing file has no zero
 * flag, and a released cluster would read the backing file's old data:
 * there a discard does nothing (and succeeds), as in QEMU.
 */
int qcow2_discard(struct qcow2_image *img, uint64_t offset, uint64_t len,
		  qcow2_complete_fn cb, void *opaque);

/* Why metadata is written back. */
enum qcow2_flush_cause {
	QCOW2_FLUSH_CLIENT = 0,   /* qcow2_flush() */
	QCOW2_FLUSH_TIMER = 1,    /* qcow2_writeback() from the owner's timer */
	QCOW2_FLUSH_EVICTION = 2, /* a cache needed room held by dirty slices */
	QCOW2_FLUSH_CLOSE = 3,    /* qcow2_close() */
	QCOW2_FLUSH_NCAUSES = 4,
};

/* Make every write completed before this call durable: data, then the
 * metadata that maps it, in the safe order. */
int qcow2_flush(struct qcow2_image *img, qcow2_complete_fn cb, void *opaque);
/* Write dirty metadata back without waiting for a client flush (call it
 * from a timer): same ordering, counted as QCOW2_FLUSH_TIMER. With nothing
 * dirty no round runs (and none is counted); cb still runs later, never
 * inside this call. */
int qcow2_writeback(struct qcow2_image *img, qcow2_complete_fn cb,
		    void *opaque);
/* True when the image has metadata in its caches not yet on disk. */
bool qcow2_has_dirty_metadata(const struct qcow2_image *img);

/* Synchronous write and flush, like qcow2_pread(). */
int qcow2_pwrite(struct qcow2_image *img, const void *buf, size_t len,
		 uint64_t offset);
int qcow2_fsync(struct qcow2_image *img);
int qcow2_pwrite_zeroes(struct qcow2_image *img, uint64_t offset, uint64_t len,
			unsigned flags);
int qcow2_pdiscard(struct qcow2_image *img, uint64_t offset, uint64_t len);

/* ---- Compressed clusters ----------------------------------------------- */

/*
 * Compress len bytes (one guest cluster) of src into dst (cap bytes) in the
 * image's format (qcow2_info.compression_type). Thread-safe and touches no
 * image: run it on worker threads. Returns 0 with *out_len set, -ENOSPC
 * when the result does not fit in cap (write the cluster uncompressed;
 * pass cap = cluster_size - 1 so that compression must save something).
 */
int qcow2_compress(enum qcow2_compression type, const void *src, size_t len,
		   void *dst, size_t cap, size_t *out_len);
/*
 * Store one guest cluster (offset cluster-aligned; the last cluster may be
 * partial) as compressed data from qcow2_compress(). Compressed clusters
 * share host clusters, packed at block granularity. The cluster's old
 * contents are replaced and freed. -ENOTSUP for images with an external
 * data file, or whose blocks are larger than a cluster.
 */
int qcow2_write_compressed(struct qcow2_image *img, uint64_t offset,
			   const void *data, size_t len, qcow2_complete_fn cb,
			   void *opaque);

/* ---- Resize ------------------------------------------------------------ */

/*
 * Grow the virtual disk to size bytes (a multiple of 512). The L1 table is
 * relocated when it must grow; the new area reads zeros (also where a
 * longer backing file would show through). Durable after the next flush.
 * -ENOTSUP for shrinking or an image with internal snapshots, -EFBIG when
 * the L1 table would exceed its limit (message in qcow2_last_error()).
 * No other request may be in flight.
 */
int qcow2_truncate(struct qcow2_image *img, uint64_t size,
		   qcow2_complete_fn cb, void *opaque);
/* Synchronous qcow2_truncate(). */
int qcow2_ftruncate(struct qcow2_image *img, uint64_t size);

/* ---- Creating images ---------------------------------------------------- */

enum qcow2_prealloc {
	QCOW2_PREALLOC_OFF = 0,
	QCOW2_PREALLOC_METADATA, /* L2 tables and data clusters mapped, sparse */
	QCOW2_PREALLOC_FALLOC,   /* ... and the data clusters fallocate()d */
	QCOW2_PREALLOC_FULL,     /* ... and written with zeros */
};

struct qcow2_create_opts {
	uint64_t size;                /* bytes; rounded up to 512 */
	uint32_t cluster_size;        /* 0: 64 KiB */
	uint32_t refcount_bits;       /* 0: 16 */
	uint32_t version;             /* 2 (compat 0.10) or 3 (1.1); 0: 3 */
	bool extended_l2;
	bool lazy_refcounts;
	enum qcow2_compression compression_type;
	const char *backing_file;     /* stored as given */
	const char *backing_format;   /* "qcow2", "raw" or NULL */
	const char *data_file;        /* external data file, created */
	bool data_file_raw;
	enum qcow2_prealloc preallocation;
	/* Called now and then during preallocation (may be NULL). */
	void (*progress)(void *opaque, uint64_t done, uint64_t total);
	void *progress_opaque;
	/* Zero (a designated initializer does it): room for later options;
	 * a nonzero word fails the call with -EINVAL. */
	uint64_t reserved[4];
};

/*
 * Create a qcow2 image at path (replacing any file there) with synchronous
 * IO. Option combinations qemu-img refuses are refused with the same
 * explanation in err (-EINVAL); IO errors return -errno.
 */
int qcow2_create(const char *path, const struct qcow2_create_opts *opts,
		 struct qcow2_error *err);

/* ---- Block status ------------------------------------------------------ */

enum qcow2_extent_type {
	QCOW2_EXTENT_DATA = 0,        /* allocated, reads host data */
	QCOW2_EXTENT_ZERO = 1,        /* reads zeros from this image */
	QCOW2_EXTENT_UNALLOCATED = 2, /* falls through to the backing file */
	QCOW2_EXTENT_COMPRESSED = 3,  /* one compressed cluster */
};

struct qcow2_extent {
	uint64_t offset;      /* guest offset */
	uint64_t length;      /* bytes */
	enum qcow2_extent_type type;
	uint64_t host_offset; /* DATA: in the data file; COMPRESSED: of the
			       * compressed bytes; ZERO: of the preallocated
			       * clusters, or 0; else 0 */
	bool data_file;       /* DATA lives in the external data file */
	bool hole;            /* DATA: the host range is a hole in its file (it
			       * reads zeros; qemu-img map says "zero") */
};

/*
 * Status of this image alone (no backing walk) from offset: the longest run
 * of one type starting there, at most len bytes (and within the disk).
 * Synchronous: it may load L2 slices through the context.
 */
int qcow2_block_status(struct qcow2_image *img, uint64_t offset,
		       uint64_t len, struct qcow2_extent *ext);

/* ---- Statistics -------------------------------------------------------- */

struct qcow2_cache_stats {
	uint64_t hits;
	uint64_t misses;
	uint64_t evictions;
	uint64_t loads;       /* slice reads issued */
	uint64_t load_bytes;
	uint32_t slices;      /* capacity */
	uint32_t slice_size;
};

#define QCOW2_FLUSH_HIST_BUCKETS 20 /* bucket i: latency < 2^i * 16 us */

struct qcow2_flush_stats {
	uint64_t flushes[QCOW2_FLUSH_NCAUSES];
	uint64_t l2_slices;          /* L2 slices written */
	uint64_t l2_bytes;
	uint64_t refblock_slices;    /* refcount block slices written */
	uint64_t refblock_bytes;
	uint64_t l1_writes;
	uint64_t l1_bytes;
	uint64_t reftable_writes;
	uint64_t reftable_bytes;
	uint64_t header_writes;
	uint64_t fdatasyncs;
	uint64_t errors;
	uint64_t total_ns;
	uint64_t max_ns;
	uint64_t latency_hist[QCOW2_FLUSH_HIST_BUCKETS];
};

struct qcow2_stats {
	uint64_t write_requests;
	uint64_t write_bytes;
	uint64_t write_errors;
	uint64_t allocated_clusters; /* data clusters allocated */
	uint64_t cow_clusters;       /* allocations that copied old data */
	uint64_t freed_clusters;
	uint64_t punched_clusters;   /* freed by discards, hole punched in the file */
	uint64_t refcount_rebuilds;  /* dirty image: refcounts rebuilt at open */
	struct qcow2_flush_stats flush;
	struct qcow2_cache_stats refcount_cache;
	uint64_t read_requests;
	uint64_t read_bytes;
	uint64_t read_errors;
	uint64_t bounced_reads;      /* data reads that went through a bounce */
	uint64_t compressed_reads;   /* clusters decompressed */
	uint64_t backing_reads;      /* requests forwarded to the backing file */
	struct qcow2_cache_stats l2_cache;
	/* Metadata not yet written back: dirty L2 and refcount slices now,
	 * and how long the oldest change not yet written has waited (at
	 * most; 0 when nothing is dirty). Not counters. */
	uint64_t dirty_slices;
	uint64_t dirty_age_ns;
	uint64_t reserved[6];        /* zero: room for later fields */
};

int qcow2_get_stats(const struct qcow2_image *img, struct qcow2_stats *st);

#ifdef __cplusplus
}
#endif

#endif /* QCOW2_H */
