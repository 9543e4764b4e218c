/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * Lazy metadata write-back in soft-update order.
 *
 * Metadata changes only in the caches (L2 and refcount slices) and in the
 * in-memory L1 and refcount tables. A flush writes them back in stages, each
 * made durable before the next begins, so that a crash at any instant leaves
 * an image with leaks at worst:
 *
 *   1. refcount block slices      (new clusters' refcounts, rule 1)
 *      -- fdatasync --            (also makes the data durable)
 *   2. refcount table entries     (point at blocks written in 1, rule 2)
 *      -- fdatasync --
 *   3. L2 slices                  (point at data and at counted clusters)
 *      -- fdatasync --
 *   4. L1 entries                 (point at L2 tables written in 3, rule 2;
 *                                  a relocated L1 is written whole)
 *      -- fdatasync --
 *   5. header                     (points at a relocated refcount table or
 *      -- fdatasync --             L1 table, both written above)
 *
 * Stages with nothing to write are skipped, and so are syncs nothing needs.
 * While a flush runs, metadata is frozen: requests that would change it
 * wait (writeback_gate()) and resume when it ends; data IO continues.
 * After a failed write-back, metadata changes fail with its error until a
 * later write-back (a client flush, the timer) succeeds.
 * Clusters dropped before the flush began are decremented after it ends
 * (rule 3, cluster_alloc.c). A flush requested while one runs is served by
 * the next round.
 */
#include <endian.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"

enum wb_stage {
	WB_IDLE, WB_DIRTY_BIT, WB_REFBLOCKS, WB_REFTABLE, WB_L2, WB_L1,
	WB_HEADER, WB_SYNC_LAST, WB_DONE
};

struct wb_waiter {
	struct wb_waiter *next;
	qcow2_complete_fn cb;
	void *opaque;
};

/* What a write-back IO writes: on failure, that state is dirty again. */
enum wb_what { WB_W_SLICE, WB_W_REFTABLE, WB_W_L1, WB_W_HEADER, WB_W_DIRTY_BIT,
	       WB_W_SYNC };

struct wb_io {
	struct io_op op;
	struct iovec iov;
	struct writeback *wb;
	enum wb_what what;
	struct slice_cache *cache; /* WB_W_SLICE: its cache and slice */
	struct slice *slice;
	uint32_t lo, hi;           /* WB_W_REFTABLE, WB_W_L1: entries */
	void *buf;                 /* table write-back: buffer to free */
};

struct writeback {
	struct qcow2_image *img;
	enum wb_stage stage;
	enum qcow2_flush_cause cause;
	unsigned pending;           /* IOs of the current stage */
	int error;
	char msg[256];              /* error's message: to the flush's waiters,
				       and to mutators while it lasts */
	bool wrote_since_sync;
	/* Data written before the round began is not yet synced: the first
	 * fdatasync of the round covers it. Data completing during the round
	 * is no table's business yet (metadata is frozen, and an entry is
	 * made only after its data is written): the next round's. */
	bool data_pending;
	uint64_t start_ns;
	struct wb_waiter *current;  /* served by the running flush */
	struct wb_waiter *next;     /* need another round */
	bool next_requested;
	enum qcow2_flush_cause next_cause;
	struct slice_waiter *frozen; /* mutators waiting for the end */
	int failed;                  /* the last write-back's error, or 0 */
	/* An fdatasync of a file opened without O_DIRECT failed: the page
	 * cache may have dropped writes it had accepted (Linux marks them
	 * clean), and no later fdatasync can tell. Every later write-back
	 * fails with this error: the image must be closed and checked. */
	int sync_lost;
	bool lazy;                   /* this round leaves refcounts cached */
	bool in_start;               /* inside writeback_start() */
	struct ctx_deferred finish;  /* a round that did no IO ends here */
};


int writeback_init(struct qcow2_image *img)
{
	img->dirty.lazy_refcounts =
		img->hdr.version >= 3 &&
		(img->hdr.compatible_features & QCOW2_COMPAT_LAZY_REFCOUNTS) &&
		!(img->flags & QCOW2_OPEN_STRICT_REFCOUNTS);
	img->wb = calloc(1, sizeof(*img->wb));
	if (!img->wb)
		return -ENOMEM;
	img->wb->img = img;
	return 0;
}

void writeback_free(struct qcow2_image *img)
{
	free(img->wb);
	img->wb = NULL;
}

int writeback_gate(struct qcow2_image *img, struct slice_waiter *w)
{
	struct writeback *wb = img->wb;

	if (!wb)
		return -EROFS;
	if (wb->stage != WB_IDLE) {
		w->next = wb->frozen;
		wb->frozen = w;
		return -EAGAIN;
	}
	if (wb->failed)
		image_set_error(img, "metadata changes to %s are refused until a "
				"flush succeeds: %s", img->filename, wb->msg);
	return wb->failed;
}

bool qcow2_has_dirty_metadata(const struct qcow2_image *img)
{
	return img->dirty.l1 || img->dirty.reftable || img->dirty.header ||
	       (img->l2_cache && slice_cache_dirty_count(img->l2_cache)) ||
	       (img->rc_cache && slice_cache_dirty_count(img->rc_cache));
}

bool writeback_pending(const struct qcow2_image *img)
{
	return qcow2_has_dirty_metadata(img) || img->dirty.data_unsynced;
}

void writeback_clear_dirty_bit(struct qcow2_image *img)
{
	uint64_t v;

	if (!img->dirty.bit_on_disk || qcow2_has_dirty_metadata(img))
		return;
	memcpy(&v, img->hdr_block + 72, 8);
	v = htobe64(be64toh(v) & ~QCOW2_INCOMPAT_DIRTY);
	memcpy(img->hdr_block + 72, &v, 8);
	if (qfile_write_now(img->ctx, &img->file, img->hdr_block,
			    img->hdr_block_len, 0) == 0 &&
	    qfile_sync_now(img->ctx, &img->file) == 0)
		img->dirty.bit_on_disk = false;
}

/* The tables or the header change: remember since when they differ from
 * the file (the age statistics report). */
static void note_dirty(struct qcow2_image *img)
{
	if (!img->dirty.since_ns)
		img->dirty.since_ns = monotonic_ns();
}

void image_mark_l1_dirty(struct qcow2_image *img, uint32_t idx)
{
	note_dirty(img);
	if (!img->dirty.l1) {
		img->dirty.l1 = true;
		img->dirty.l1_lo = idx;
		img->dirty.l1_hi = idx + 1;
		return;
	}
	if (idx < img->dirty.l1_lo)
		img->dirty.l1_lo = idx;
	if (idx + 1 > img->dirty.l1_hi)
		img->dirty.l1_hi = idx + 1;
}

void image_set_header_u64(struct qcow2_image *img, unsigned off, uint64_t v)
{
	v = htobe64(v);
	memcpy(img->hdr_block + off, &v, 8);
	note_dirty(img);
	img->dirty.header = true;
}

void image_set_header_u32(struct qcow2_image *img, unsigned off, uint32_t v)
{
	v = htobe32(v);
	memcpy(img->hdr_block + off, &v, 4);
	note_dirty(img);
	img->dirty.header = true;
}

void image_mark_reftable_dirty(struct qcow2_image *img, uint32_t idx)
{
	note_dirty(img);
	if (!img->dirty.reftable) {
		img->dirty.reftable = true;
		img->dirty.reftable_lo = idx;
		img->dirty.reftable_hi = idx + 1;
		return;
	}
	if (idx < img->dirty.reftable_lo)
		img->dirty.reftable_lo = idx;
	if (idx + 1 > img->dirty.reftable_hi)
		img->dirty.reftable_hi = idx + 1;
}

static void wb_advance(struct writeback *wb);
static void wb_finish(struct writeback *wb);

/*
 * A write-back IO failed, or could not even be queued: the flush fails, and
 * what it was to make durable is marked dirty again, so that a later flush
 * writes it (dirty state is cleared when a write is issued; only success
 * may leave it clear).
 */
static void wb_io_failed(struct writeback *wb, const struct wb_io *io, int err)
{
	struct qcow2_image *img = wb->img;
	int fd = io->op.fd;

	if (!wb->error)
		wb->error = err;
	switch (io->what) {
	case WB_W_SLICE:
		io->slice->writing = false; /* still dirty */
		break;
	case WB_W_REFTABLE:
		for (uint32_t i = io->lo; i < io->hi; i++)
			image_mark_reftable_dirty(img, i);
		break;
	case WB_W_L1:
		for (uint32_t i = io->lo; i < io->hi; i++)
			image_mark_l1_dirty(img, i);
		break;
	case WB_W_HEADER:
		img->dirty.header = true;
		break;
	case WB_W_DIRTY_BIT:
		break; /* dirty.bit_on_disk is set only when it succeeds */
	case WB_W_SYNC:
		/* Nothing written since the last good fdatasync is known to
		 * be durable: the next flush syncs before going on. */
		wb->wrote_since_sync = true;
		img->dirty.data_unsynced = true;
		if (!(fd == img->file.fd ? img->file.direct : img->data->direct) &&
		    err != -ENOMEM && !wb->sync_lost)
			wb->sync_lost = err;
		break;
	}
	if (wb->sync_lost)
		image_set_error(img, "fdatasync of %s failed (%s): writes the page "
				"cache held may be lost, and the image cannot be "
				"flushed again; close it and run qcow2-img check on it",
				img->filename, strerror(-wb->sync_lost));
	else
		image_set_error(img, "metadata write-back to %s failed: %s",
				img->filename, strerror(-err));
	if (wb->error == err)
		snprintf(wb->msg, sizeof(wb->msg), "%s", img->last_error);
}

static void wb_io_done(struct io_op *op, int64_t res)
{
	struct wb_io *io = (struct wb_io *)op;
	struct writeback *wb = io->wb;

	if (res < 0) {
		wb_io_failed(wb, io, (int)res);
	} else if (io->what == WB_W_SLICE) {
		/* (wakes writes waiting for a free slot) */
		write_gather_begin(wb->img);
		slice_cache_clean(io->cache, io->slice, false);
		write_gather_end(wb->img);
	} else if (io->what == WB_W_DIRTY_BIT) {
		wb->img->dirty.bit_on_disk = true;
	}
	free(io->buf);
	free(io);
	if (--wb->pending == 0)
		wb_advance(wb);
}

/* Queue the IO described by t (opcode, fd, offset, iov, and what it
 * writes). A failure to queue it fails the flush like a failed IO. */
static void wb_submit(struct writeback *wb, const struct wb_io *t)
{
	struct wb_io *io = calloc(1, sizeof(*io));

	if (!io) {
		free(t->buf);
		wb_io_failed(wb, t, -ENOMEM);
		return;
	}
	*io = *t;
	io->wb = wb;
	io->op.iov = &io->iov;
	io->op.iovcnt = t->op.opcode == IO_OP_FSYNC ? 0 : 1;
	io->op.len = t->op.opcode == IO_OP_FSYNC ? 0 : t->iov.iov_len;
	io->op.complete = wb_io_done;
	wb->pending++;
	ctx_queue(wb->img->ctx, &io->op);
	if (t->op.opcode == IO_OP_FSYNC)
		wb->img->stats.flush.fdatasyncs++;
	else
		wb->wrote_since_sync = true;
}

/* Write len bytes of data at off of the image file. */
static void wb_write(struct writeback *wb, enum wb_what what, uint64_t off,
		     void *data, uint64_t len, void *owned_buf, uint32_t lo,
		     uint32_t hi)
{
	struct wb_io t = {
		.op = { .opcode = IO_OP_WRITE, .fd = wb->img->file.fd, .offset = off },
		.iov = { .iov_base = data, .iov_len = len },
		.what = what, .buf = owned_buf, .lo = lo, .hi = hi,
	};

	wb_submit(wb, &t);
}

/* The header block (hdr_block), as it is in memory now. */
static void wb_write_header(struct writeback *wb, enum wb_what what)
{
	struct qcow2_image *img = wb->img;

	img->stats.flush.header_writes++;
	wb_write(wb, what, 0, img->hdr_block, img->hdr_block_len, NULL, 0, 0);
}

/* Write every dirty slice of cache c. Returns bytes queued. */
static uint64_t wb_write_slices(struct writeback *wb, struct slice_cache *c,
				uint64_t *nslices)
{
	struct qcow2_image *img = wb->img;
	uint32_t n = slice_cache_capacity(c), size = slice_cache_slice_size(c);
	uint64_t bytes = 0;

	for (uint32_t i = 0; i < n; i++) {
		struct slice *s = slice_cache_slot(c, i);

		if (!s->dirty || s->writing || s->state != SLICE_READY)
			continue;
		s->writing = true;
		{
			struct wb_io t = {
				.op = { .opcode = IO_OP_WRITE, .fd = img->file.fd,
					.offset = s->key },
				.iov = { .iov_base = s->data, .iov_len = size },
				.what = WB_W_SLICE, .cache = c, .slice = s,
			};
			wb_submit(wb, &t);
		}
		bytes += size;
		(*nslices)++;
	}
	return bytes;
}

/* Write entries [lo, hi) of a big-endian table at table_off, widened to
 * the file's alignment (the table owns whole clusters). The caller has
 * cleared their dirty state; a failure restores it. */
static uint64_t wb_write_table(struct writeback *wb, enum wb_what what,
			       uint64_t table_off, const uint64_t *table,
			       uint64_t nentries, uint64_t table_bytes,
			       uint32_t lo, uint32_t hi)
{
	struct qcow2_image *img = wb->img;
	uint64_t a = img->file.direct ? img->file.align : 512;
	uint64_t start = align_down((uint64_t)lo * 8, a);
	uint64_t end = align_up((uint64_t)hi * 8, a);
	uint8_t *buf;

	if (end > table_bytes)
		end = table_bytes;
	if (start >= end)
		return 0; /* entries past the table on disk (it is growing) */
	if (posix_memalign((void **)&buf, img->file.mem_align, end - start)) {
		struct wb_io t = { .what = what, .lo = lo, .hi = hi };
		wb_io_failed(wb, &t, -ENOMEM);
		return 0;
	}
	memset(buf, 0, end - start);
	for (uint64_t i = start / 8; i < end / 8 && i < nentries; i++) {
		uint64_t v = htobe64(table[i]);
		memcpy(buf + (i * 8 - start), &v, 8);
	}
	wb_write(wb, what, table_off + start, buf, end - start, buf, lo, hi);
	return end - start;
}

/* Queue an fdatasync of the image (and of its data file) when something
 * written since the last one needs it: metadata this round wrote, or data
 * written before the round began. Returns true if queued. (Data writes
 * that complete while a stage waits for its sync do not ask for another
 * one: under a steady load that would sync again and again while
 * metadata stays frozen.) */
static bool wb_sync(struct writeback *wb, bool force)
{
	struct qcow2_image *img = wb->img;

	struct wb_io t = {
		.op = { .opcode = IO_OP_FSYNC, .fd = img->file.fd },
		.what = WB_W_SYNC,
	};

	if (!force && !wb->wrote_since_sync && !wb->data_pending)
		return false;
	wb->wrote_since_sync = false;
	wb->data_pending = false;
	/* covers every data write completed so far */
	img->dirty.data_unsynced = false;
	if (img->file.no_sync)
		return false;
	wb_submit(wb, &t);
	if (img->data != &img->file) {
		t.op.fd = img->data->fd;
		wb_submit(wb, &t);
	}
	return true;
}

static void wb_finish_deferred(struct ctx_deferred *d)
{
	wb_finish((struct writeback *)((char *)d -
				       offsetof(struct writeback, finish)));
}

static void wb_finish(struct writeback *wb)
{
	struct qcow2_image *img = wb->img;
	struct qcow2_flush_stats *fs = &img->stats.flush;
	struct wb_waiter *done = wb->current;
	struct slice_waiter *frozen = wb->frozen;
	uint64_t ns = monotonic_ns() - wb->start_ns;
	int err = wb->error;
	unsigned b = 0;

	fs->flushes[wb->cause]++;
	fs->total_ns += ns;
	if (ns > fs->max_ns)
		fs->max_ns = ns;
	while (b + 1 < QCOW2_FLUSH_HIST_BUCKETS && ns >= (16000ull << b))
		b++;
	fs->latency_hist[b]++;
	if (err)
		fs->errors++;

	wb->stage = WB_IDLE;
	wb->current = NULL;
	wb->frozen = NULL;
	wb->error = 0;
	/* Until a write-back succeeds, metadata cannot change: dirty slices
	 * that cannot be written hold the caches, and requests would wait
	 * for room forever. */
	wb->failed = err;
	if (!err && !img->dirty.l1 && !img->dirty.reftable && !img->dirty.header)
		img->dirty.since_ns = 0;
	cluster_frees_flush_done(img, err);
	if (err) {
		/* Requests waiting for room held by unwritable slices fail
		 * rather than retry forever. */
		slice_cache_fail_waiters(img->l2_cache, err);
		if (img->rc_cache)
			slice_cache_fail_waiters(img->rc_cache, err);
	}
	/* Mutators resume; then the flush's waiters learn the outcome. */
	frozen = slice_waiters_oldest_first(frozen);
	write_gather_begin(img);
	while (frozen) {
		struct slice_waiter *w = frozen;
		frozen = w->next;
		w->next = NULL;
		w->wake(w, 0);
	}
	write_gather_end(img);
	while (done) {
		struct wb_waiter *d = done;
		done = d->next;
		if (d->cb)
			d->cb(d->opaque, err, err ? wb->msg : NULL);
		free(d);
	}
	if (wb->next_requested && wb->stage == WB_IDLE) {
		wb->next_requested = false;
		writeback_start(img, wb->next_cause, NULL, NULL);
	}
}

/* Run stages until one has IO in flight, or the flush is done. */
static void wb_advance(struct writeback *wb)
{
	struct qcow2_image *img = wb->img;
	struct qcow2_flush_stats *fs = &img->stats.flush;

	while (wb->pending == 0) {
		switch (wb->stage) {
		case WB_IDLE:
			return;
		case WB_DIRTY_BIT:
			/* Lazy refcounts: before tables that point at clusters
			 * whose refcounts stay in the cache reach the disk, the
			 * dirty bit says the refcounts on disk may be stale. It
			 * counts as on disk once its write has succeeded. */
			wb->stage = WB_REFBLOCKS;
			if (wb->sync_lost && !wb->error) {
				wb->error = wb->sync_lost;
				snprintf(wb->msg, sizeof(wb->msg), "an earlier "
					 "fdatasync of %s failed (%s): writes the "
					 "page cache held may be lost, and the image "
					 "cannot be flushed again; close it and run "
					 "qcow2-img check on it", img->filename,
					 strerror(-wb->sync_lost));
			}
			if (wb->lazy && !img->dirty.bit_on_disk && !wb->error &&
			    (img->dirty.l1 ||
			     slice_cache_dirty_count(img->l2_cache))) {
				uint64_t v;
				memcpy(&v, img->hdr_block + 72, 8);
				v = htobe64(be64toh(v) | QCOW2_INCOMPAT_DIRTY);
				memcpy(img->hdr_block + 72, &v, 8);
				/* synced before the L2 stage writes anything */
				wb_write_header(wb, WB_W_DIRTY_BIT);
			}
			break;
		case WB_REFBLOCKS:
			wb->stage = WB_REFTABLE;
			if (img->rc_cache && !wb->lazy && !wb->error)
				fs->refblock_bytes += wb_write_slices(wb, img->rc_cache,
								      &fs->refblock_slices);
			break;
		case WB_REFTABLE:
			if (img->dirty.reftable && !wb->error && !wb->lazy) {
				if (wb_sync(wb, false))
					break; /* blocks before the table */
				img->dirty.reftable = false;
				fs->reftable_writes++;
				/* Only the table the header points at is written:
				 * a growing table waits for its installation. */
				fs->reftable_bytes += wb_write_table(
					wb, WB_W_REFTABLE,
					img->hdr.refcount_table_offset,
					refcount_table(img),
					refcount_table_entries(img),
					(uint64_t)img->hdr.refcount_table_clusters
						<< img->cluster_bits,
					img->dirty.reftable_lo,
					img->dirty.reftable_hi);
			}
			wb->stage = WB_L2;
			break;
		case WB_L2:
			if (!wb->error && slice_cache_dirty_count(img->l2_cache)) {
				if (wb_sync(wb, false))
					break; /* data and refcounts before L2 */
				fs->l2_bytes += wb_write_slices(wb, img->l2_cache,
								&fs->l2_slices);
			}
			wb->stage = WB_L1;
			break;
		case WB_L1:
			if (!wb->error && img->dirty.l1) {
				if (wb_sync(wb, false))
					break; /* L2 tables before L1 */
				img->dirty.l1 = false;
				fs->l1_writes++;
				fs->l1_bytes += wb_write_table(
					wb, WB_W_L1, img->hdr.l1_table_offset, img->l1,
					img->l1_size,
					align_up((uint64_t)img->l1_size * 8,
						 img->cluster_size),
					img->dirty.l1_lo, img->dirty.l1_hi);
			}
			wb->stage = WB_HEADER;
			break;
		case WB_HEADER:
			if (img->dirty.header && !wb->error) {
				if (wb_sync(wb, false))
					break; /* tables before the header */
				img->dirty.header = false;
				wb_write_header(wb, WB_W_HEADER);
			}
			wb->stage = WB_SYNC_LAST;
			break;
		case WB_SYNC_LAST:
			/* A client flush promises durable data even when no
			 * metadata changed. */
			wb->stage = WB_DONE;
			if (!wb->error)
				wb_sync(wb, wb->cause == QCOW2_FLUSH_CLIENT ||
						    wb->cause == QCOW2_FLUSH_CLOSE);
			break;
		case WB_DONE:
			/* Callbacks never run inside the call that queued
			 * them: a round that needed no IO ends later. */
			if (wb->in_start) {
				wb->finish.run = wb_finish_deferred;
				ctx_defer(img->ctx, &wb->finish);
			} else {
				wb_finish(wb);
			}
			return;
		}
	}
}

int writeback_start(struct qcow2_image *img, enum qcow2_flush_cause cause,
		    qcow2_complete_fn cb, void *opaque)
{
	struct writeback *wb = img->wb;
	struct wb_waiter *w = NULL;

	if (!wb)
		return -EROFS;
	if (cb) {
		w = calloc(1, sizeof(*w));
		if (!w)
			return -ENOMEM;
		w->cb = cb;
		w->opaque = opaque;
	}
	if (wb->stage != WB_IDLE) {
		/* Writes completed after this flush began are not covered. */
		if (w) {
			w->next = wb->next;
			wb->next = w;
		}
		if (!wb->next_requested || cause == QCOW2_FLUSH_CLIENT)
			wb->next_cause = cause;
		wb->next_requested = true;
		return 0;
	}
	if (w) {
		w->next = wb->next;
		wb->next = w;
	}
	wb->current = wb->next;
	wb->next = NULL;
	wb->cause = cause;
	wb->error = 0;
	wb->data_pending = img->dirty.data_unsynced;
	wb->start_ns = monotonic_ns();
	/* Lazy refcounts: refcounts stay cached, except at close, when a
	 * table moved (the header will point at it), or when the refcount
	 * cache fills up. */
	wb->lazy = img->dirty.lazy_refcounts && cause != QCOW2_FLUSH_CLOSE &&
		   !img->dirty.header && img->rc_cache &&
		   slice_cache_dirty_count(img->rc_cache) * 2 <
			   slice_cache_capacity(img->rc_cache);
	wb->stage = WB_DIRTY_BIT;
	cluster_frees_flush_started(img);
	wb->in_start = true;
	wb_advance(wb);
	wb->in_start = false;
	return 0;
}

int qcow2_flush(struct qcow2_image *img, qcow2_complete_fn cb, void *opaque)
{
	if (!img || !cb)
		return -EINVAL;
	if (!img->wb)
		return -EROFS;
	/* A client flush always ends in an fdatasync: never synchronous. */
	return writeback_start(img, QCOW2_FLUSH_CLIENT, cb, opaque);
}

struct deferred_cb {
	struct ctx_deferred d;
	qcow2_complete_fn cb;
	void *opaque;
};

static void deferred_cb_run(struct ctx_deferred *d)
{
	struct deferred_cb *x = (struct deferred_cb *)d;

	x->cb(x->opaque, 0, NULL);
	free(x);
}

int qcow2_writeback(struct qcow2_image *img, qcow2_complete_fn cb,
		    void *opaque)
{
	if (!img || !cb)
		return -EINVAL;
	if (!img->wb)
		return -EROFS;
	if (img->wb->stage == WB_IDLE && !qcow2_has_dirty_metadata(img)) {
		struct deferred_cb *x = malloc(sizeof(*x));
		if (!x)
			return -ENOMEM;
		x->cb = cb;
		x->opaque = opaque;
		x->d.run = deferred_cb_run;
		ctx_defer(img->ctx, &x->d);
		return 0;
	}
	return writeback_start(img, QCOW2_FLUSH_TIMER, cb, opaque);
}
