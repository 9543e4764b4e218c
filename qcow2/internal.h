/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* Private state of libqcow2. Nothing here is part of the public API. */
#ifndef QCOW2_INTERNAL_H
#define QCOW2_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <zlib.h>
#include <zstd.h>

#include "qcow2.h"
#include "header.h"
#include "io_backend.h"
#include "slice_cache.h"

#define QCOW2_PRINTF(a, b) __attribute__((format(printf, a, b)))

/* Work finished without IO, whose callback must wait for the next
 * qcow2_ctx_process() (callbacks never run inside the call that queued). */
struct ctx_deferred {
	struct ctx_deferred *next;
	void (*run)(struct ctx_deferred *d);
};

struct qcow2_ctx {
	struct io_backend *be;
	enum qcow2_backend backend;
	struct ctx_deferred *deferred_head, **deferred_tail;
	unsigned ndeferred;
	int efd; /* the backend's eventfd once a caller asked for it */
};

void ctx_queue(struct qcow2_ctx *ctx, struct io_op *op);
void ctx_defer(struct qcow2_ctx *ctx, struct ctx_deferred *d);

/* An open host file and the alignment its IO needs. */
struct qfile {
	int fd;
	bool direct;        /* opened with O_DIRECT */
	uint32_t align;     /* offset/length alignment for O_DIRECT */
	uint32_t mem_align; /* buffer alignment for O_DIRECT */
	uint64_t size;      /* bytes, at open */
	char *path;
};

int qfile_open(struct qfile *f, const char *path, bool rdwr, bool direct,
	       char *err, size_t errlen);
void qfile_close(struct qfile *f);
/* Synchronous aligned read for open-time metadata (header, L1). */
int qfile_pread_sync(struct qfile *f, void *buf, uint64_t len, uint64_t off);

/*
 * An asynchronous read from a qfile into an iovec, bounced through an
 * aligned buffer when O_DIRECT cannot take the caller's buffers.
 */
struct file_read;
typedef void (*file_read_done_fn)(struct file_read *fr, int err);

struct file_read {
	struct io_op op;
	struct iovec bounce_iov;
	uint8_t *bounce;        /* NULL when reading straight into iov */
	uint64_t bounce_skip;   /* wanted bytes start here in bounce */
	const struct iovec *dst;
	int dstcnt;
	uint64_t len;
	file_read_done_fn done;
	bool keep_bounce;       /* caller consumes and frees bounce */
};

/* Read [off, off+len) of f into iov (len bytes). iov may be modified by the
 * backend while retrying; it must stay valid until done() runs. With
 * keep_bounce, data stays in fr->bounce + fr->bounce_skip (iov ignored). */
int file_read_start(struct qcow2_ctx *ctx, struct qfile *f, uint64_t off,
		    struct iovec *iov, int iovcnt, uint64_t len,
		    bool keep_bounce, struct file_read *fr,
		    file_read_done_fn done);

struct qcow2_image {
	struct qcow2_ctx *ctx;
	char *filename;
	unsigned flags;
	bool raw;
	struct qfile file;
	struct qfile data_store;    /* external data file, if any */
	struct qfile *data;         /* &file or &data_store */
	struct qcow2_header hdr;
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

	struct qcow2_image *backing;

	/* single-entry cache of the last decompressed cluster */
	uint8_t *zbuf;
	uint64_t zbuf_desc;         /* descriptor of the cluster in zbuf */
	bool zbuf_valid;
	z_stream zs;
	bool zs_ready;
	ZSTD_DCtx *zstd;

	struct qcow2_stats stats;
	char last_error[256];
};

void image_set_error(struct qcow2_image *img, const char *fmt, ...)
	QCOW2_PRINTF(2, 3);

/* Guest-offset mapping (map.c) shared by reads and block status. */
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

/* Compressed cluster descriptor -> host byte range. */
void compressed_range(const struct qcow2_image *img, uint64_t desc,
		      uint64_t *host, uint64_t *len);

/* Decompression (decompress.c) into a full cluster. */
int decompress_cluster(struct qcow2_image *img, const uint8_t *src,
		       size_t srclen, uint8_t *dst);
void decompress_cleanup(struct qcow2_image *img);

/* Internal read: no alignment checks, callback may run synchronously. */
int read_start(struct qcow2_image *img, uint64_t offset,
	       const struct iovec *iov, int iovcnt, uint64_t len,
	       bool top_level, qcow2_complete_fn cb, void *opaque);

/* Detect the block size and buffer alignment O_DIRECT needs for fd. */
void detect_alignment(int fd, uint32_t *align, uint32_t *mem_align);

static inline uint64_t align_down(uint64_t v, uint64_t a)
{
	return v / a * a;
}

static inline uint64_t align_up(uint64_t v, uint64_t a)
{
	return (v + a - 1) / a * a;
}

#endif
