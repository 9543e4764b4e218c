/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * The write-back stages (writeback.c) and their error paths, driven through
 * the public API on the fault backend, with the image's dirty state read
 * from struct qcow2_image.
 *
 * A probe run of each scenario logs its flush; every operation of the log
 * is classified by what it writes (see classify()), which gives the flush
 * as a string such as "rs22s1s": refcount block slice, fdatasync, two L2
 * slices, fdatasync, L1, fdatasync. A second run of the same scenario on
 * the same fresh image then fails one chosen operation of that flush.
 */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "image_fixture.h"
#include "format/format.h"

#define BUFFERED (QCOW2_OPEN_RDWR | QCOW2_OPEN_BUFFERED)
#define DIRECT QCOW2_OPEN_RDWR
#define MAXOPS 64

/* ---- scenarios: what they write, what they leave dirty ------------------ */

struct scenario {
	struct qcow2_create_opts co;
	void (*run)(struct fx *h);
	uint64_t data_off;
	size_t data_len;
	unsigned tag;
	uint64_t size; /* virtual size afterwards */
};

/* One allocating write: a refcount slice, two L2 slices (the new table's
 * last slice is created dirty) and L1 entry 0 become dirty. */
static void run_alloc(struct fx *h)
{
	assert_int_equal(fx_write(h, 0, 65536, 1), 0);
}

static const struct scenario sc_alloc = {
	.co = { .size = 16 << 20 },
	.run = run_alloc, .data_off = 0, .data_len = 65536, .tag = 1,
	.size = 16 << 20,
};

/* 512-byte clusters, 64-bit refcounts: a refcount block covers 64
 * clusters, and 32 KiB of data needs new blocks (reftable entries). */
static void run_blocks(struct fx *h)
{
	assert_int_equal(fx_write(h, 0, 32768, 2), 0);
}

static const struct scenario sc_blocks = {
	.co = { .size = 16 << 20, .cluster_size = 512, .refcount_bits = 64 },
	.run = run_blocks, .data_off = 0, .data_len = 32768, .tag = 2,
	.size = 16 << 20,
};

/* The allocating write, then a resize that relocates the L1 table (1 to
 * 2 entries): the whole new table and the header become dirty. */
static void run_resize(struct fx *h)
{
	uint64_t old_l1 = h->img->hdr.l1_table_offset;

	run_alloc(h);
	assert_int_equal(qcow2_ftruncate(h->img, 1ull << 30), 0);
	assert_int_not_equal(h->img->hdr.l1_table_offset, old_l1);
}

static const struct scenario sc_resize = {
	.co = { .size = 16 << 20 },
	.run = run_resize, .data_off = 0, .data_len = 65536, .tag = 1,
	.size = 1ull << 30,
};

/* Lazy refcounts: the flush sets the dirty bit first and leaves the
 * refcounts in the cache. */
static const struct scenario sc_lazy = {
	.co = { .size = 16 << 20, .lazy_refcounts = true },
	.run = run_alloc, .data_off = 0, .data_len = 65536, .tag = 1,
	.size = 16 << 20,
};

/* ---- classifying the log ------------------------------------------------ */

static bool within(uint64_t off, uint64_t start, uint64_t len)
{
	return start && off >= start && off < start + len;
}

/*
 * What a write at off is, by the image's layout: 'h' header, 't' refcount
 * table, '1' L1 table, 'r' refcount block, '2' L2 table, 'd' anything
 * else (guest data).
 */
static char classify(const struct qcow2_image *img, uint64_t off)
{
	uint64_t cs = img->cluster_size;

	if (off == 0)
		return 'h';
	if (within(off, img->hdr.refcount_table_offset,
		   (uint64_t)img->hdr.refcount_table_clusters * cs))
		return 't';
	if (within(off, img->hdr.l1_table_offset,
		   align_up((uint64_t)img->l1_size * 8, cs)))
		return '1';
	for (uint32_t i = 0; i < img->refcounts.reftable_entries; i++)
		if (within(off, img->refcounts.reftable[i], cs))
			return 'r';
	for (uint32_t i = 0; i < img->l1_size; i++)
		if (within(off, img->l1[i] & L1E_OFFSET_MASK, cs))
			return '2';
	return 'd';
}

/* Operations of the log from record first on, as classes ('s': an
 * fdatasync), with their offsets. */
static void log_seq(const struct fx *h, uint64_t first, char *seq,
		    uint64_t *offs)
{
	struct fx_rec rec[MAXOPS];
	int n = fx_log_read(h, first, rec, MAXOPS);

	assert_true(n < MAXOPS);
	for (int i = 0; i < n; i++) {
		seq[i] = rec[i].type == QCOW2_FAULT_REC_FSYNC ?
				 's' : classify(h->img, rec[i].offset);
		if (offs)
			offs[i] = rec[i].offset;
	}
	seq[n] = '\0';
}

static uint64_t log_records(const struct fx *h)
{
	return fx_log_count(h, QCOW2_FAULT_WRITE | QCOW2_FAULT_FSYNC);
}

/* A flush that must succeed, and what it did. */
static void flush_ok(struct fx *h, char *seq)
{
	uint64_t first = log_records(h);

	assert_int_equal(qcow2_fsync(h->img), 0);
	log_seq(h, first, seq, NULL);
}

struct probe {
	char seq[MAXOPS + 1];   /* the flush, classified */
	uint64_t off[MAXOPS];
	uint64_t writes_before; /* operations before the flush */
	uint64_t syncs_before;
};

/* Run sc on a fresh image with the log on, flush, and classify. */
static void probe(const struct scenario *sc, unsigned flags, struct probe *p)
{
	struct fx h;
	uint64_t first;

	fx_create(&sc->co);
	fx_open(&h, flags, NULL, true);
	sc->run(&h);
	p->writes_before = fx_log_count(&h, QCOW2_FAULT_WRITE);
	p->syncs_before = fx_log_count(&h, QCOW2_FAULT_FSYNC);
	first = log_records(&h);
	assert_int_equal(qcow2_fsync(h.img), 0);
	log_seq(&h, first, p->seq, p->off);
	fx_close(&h);
}

/* fail_at (among writes) of the first write of class k in the probed
 * flush; its offset in *off. */
static uint64_t write_no(const struct probe *p, char k, uint64_t *off)
{
	uint64_t n = p->writes_before;

	for (size_t i = 0; p->seq[i]; i++) {
		if (p->seq[i] != 's')
			n++;
		if (p->seq[i] == k) {
			*off = p->off[i];
			return n;
		}
	}
	fail_msg("no '%c' in the flush \"%s\"", k, p->seq);
	return 0;
}

/* fail_at (among fdatasyncs) of the first fdatasync after a write of
 * class k in the probed flush. */
static uint64_t sync_no(const struct probe *p, char k)
{
	uint64_t n = p->syncs_before;
	bool seen = false;

	for (size_t i = 0; p->seq[i]; i++) {
		seen |= p->seq[i] == k;
		if (p->seq[i] == 's') {
			n++;
			if (seen)
				return n;
		}
	}
	fail_msg("no fdatasync after '%c' in the flush \"%s\"", k, p->seq);
	return 0;
}

/* ---- dirty state ---------------------------------------------------------- */

struct dirty {
	unsigned rc, l2;      /* dirty slices */
	bool l1, rt, hdr;
	uint32_t l1_lo, l1_hi, rt_lo, rt_hi;
	bool on_disk;         /* the dirty bit */
};

static void dirty_of(const struct qcow2_image *img, struct dirty *d)
{
	memset(d, 0, sizeof(*d));
	d->rc = slice_cache_dirty_count(img->rc_cache);
	d->l2 = slice_cache_dirty_count(img->l2_cache);
	d->l1 = img->dirty.l1;
	if (d->l1) {
		d->l1_lo = img->dirty.l1_lo;
		d->l1_hi = img->dirty.l1_hi;
	}
	d->rt = img->dirty.reftable;
	if (d->rt) {
		d->rt_lo = img->dirty.reftable_lo;
		d->rt_hi = img->dirty.reftable_hi;
	}
	d->hdr = img->dirty.header;
	d->on_disk = img->dirty.bit_on_disk;
}

/* No slice of c is left marked as being written; returns the dirty ones
 * (counted by hand, to check the cache's count) and the key of the last. */
static unsigned scan_slices(struct slice_cache *c, uint64_t *key)
{
	unsigned n = 0;

	for (uint32_t i = 0; i < slice_cache_capacity(c); i++) {
		struct slice *s = slice_cache_slot(c, i);

		assert_false(s->writing);
		if (s->dirty) {
			assert_int_equal(s->state, SLICE_READY);
			n++;
			if (key)
				*key = s->key;
		}
	}
	return n;
}

static int gate(struct qcow2_image *img)
{
	struct slice_waiter w = { 0 };

	return writeback_gate(img, &w);
}

static bool disk_dirty_bit(void)
{
	uint64_t v = 0;
	int fd = open(fx_image, O_RDONLY);

	assert_true(fd >= 0);
	assert_int_equal(pread(fd, &v, 8, 72), 8);
	close(fd);
	return be64toh(v) & QCOW2_INCOMPAT_DIRTY;
}

static void check_reopen(const struct scenario *sc)
{
	struct fx h;
	struct qcow2_info info;

	assert_true(fx_holds(sc->data_off, sc->data_len, sc->tag));
	fx_open(&h, QCOW2_OPEN_BUFFERED, NULL, false);
	assert_int_equal(qcow2_get_info(h.img, &info), 0);
	assert_int_equal(info.virtual_size, sc->size);
	assert_false(info.dirty);
	fx_close(&h);
	fx_check(0);
}

/* ---- one failed stage ------------------------------------------------------ */

struct stage_case {
	const struct scenario *sc;
	unsigned flags;
	char stage;            /* fail the first write of this class, */
	bool sync;             /* or the fdatasync after it */
	int err;
	const char *probe_seq; /* the flush without a failure */
	const char *fail_seq;  /* what the failing flush completes */
	const char *retry_seq; /* what the next flush writes */
	/* The state after the failure, against the state before the flush;
	 * failed_off: offset of the failed write. */
	void (*check)(struct fx *h, const struct dirty *before,
		      const struct dirty *after, uint64_t failed_off);
};

static void run_stage_case(const struct stage_case *c)
{
	struct qcow2_fault_opts fo = { .fail_errno = c->err };
	struct dirty before, after;
	struct probe p;
	struct fx h;
	char seq[MAXOPS + 1];
	uint64_t failed_off = 0, first, freed;
	struct qcow2_stats st;
	size_t frees;

	probe(c->sc, c->flags, &p);
	assert_string_equal(p.seq, c->probe_seq);
	if (c->sync) {
		fo.fail_ops = QCOW2_FAULT_FSYNC;
		fo.fail_at = sync_no(&p, c->stage);
	} else {
		fo.fail_ops = QCOW2_FAULT_WRITE;
		fo.fail_at = write_no(&p, c->stage, &failed_off);
	}

	fx_create(&c->sc->co);
	fx_open(&h, c->flags, &fo, true);
	c->sc->run(&h);
	dirty_of(h.img, &before);
	assert_int_equal(gate(h.img), 0);
	first = log_records(&h);
	assert_int_equal(qcow2_fsync(h.img), -c->err);
	log_seq(&h, first, seq, NULL);
	assert_string_equal(seq, c->fail_seq);
	assert_int_equal(qcow2_get_stats(h.img, &st), 0);
	assert_int_equal(st.flush.errors, 1);
	/* metadata changes fail with the error until a write-back succeeds */
	assert_int_equal(gate(h.img), -c->err);
	assert_true(qcow2_has_dirty_metadata(h.img));
	dirty_of(h.img, &after);
	assert_int_equal(scan_slices(h.img->rc_cache, NULL), after.rc);
	assert_int_equal(scan_slices(h.img->l2_cache, NULL), after.l2);
	c->check(&h, &before, &after, failed_off);

	/* the next flush writes what is dirty, and leaves nothing dirty */
	frees = h.img->alloc.frees_waiting_len;
	freed = frees ? h.img->alloc.frees_waiting[0] : 0;
	flush_ok(&h, seq);
	assert_string_equal(seq, c->retry_seq);
	assert_int_equal(gate(h.img), 0);
	dirty_of(h.img, &after);
	assert_int_equal(after.l2, 0);
	assert_false(after.l1);
	assert_false(after.rt);
	assert_false(after.hdr);
	assert_int_equal(scan_slices(h.img->l2_cache, NULL), 0);
	if (h.img->dirty.lazy_refcounts) {
		assert_true(after.on_disk);
		assert_true(disk_dirty_bit());
		assert_int_equal(after.rc, before.rc);
	} else if (frees) {
		/* it released the frees the failed flush kept: their
		 * decrements dirty a refcount block again */
		assert_int_equal(frees, 1);
		assert_int_equal(h.img->alloc.frees_waiting_len, 0);
		assert_int_equal(h.img->alloc.free_pool_len, 1);
		assert_int_equal(h.img->alloc.free_pool[0], freed);
		assert_int_equal(fx_refcount(&h, freed), 0);
		assert_int_equal(after.rc, 1);
		flush_ok(&h, seq);
		assert_string_equal(seq, "rs");
	}
	if (!h.img->dirty.lazy_refcounts)
		assert_false(qcow2_has_dirty_metadata(h.img));
	fx_close(&h);
	check_reopen(c->sc);
}

/* Refcount blocks: the failed slice is dirty again, and no later stage
 * ran. */
static void check_refblocks(struct fx *h, const struct dirty *b,
			    const struct dirty *a, uint64_t failed_off)
{
	uint64_t key = 0;

	assert_int_equal(b->rc, 1);
	assert_int_equal(a->rc, 1);
	assert_int_equal(scan_slices(h->img->rc_cache, &key), 1);
	assert_int_equal(key, failed_off);
	assert_int_equal(a->l2, b->l2);
	assert_true(a->l1);
	assert_int_equal(a->l1_lo, b->l1_lo);
	assert_int_equal(a->l1_hi, b->l1_hi);
}

static void test_fail_refblocks(void **state)
{
	const struct stage_case c = {
		.sc = &sc_alloc, .flags = BUFFERED, .stage = 'r', .err = ENOSPC,
		.probe_seq = "rs22s1s", .fail_seq = "", .retry_seq = "rs22s1s",
		.check = check_refblocks,
	};

	(void)state;
	run_stage_case(&c);
}

/* Refcount table: its dirty range is back; the blocks written before it
 * stay written; L2 and L1 were not reached. */
static void check_reftable(struct fx *h, const struct dirty *b,
			   const struct dirty *a, uint64_t failed_off)
{
	assert_int_equal(failed_off, h->img->hdr.refcount_table_offset);
	assert_true(b->rt);
	assert_true(a->rt);
	assert_int_equal(a->rt_lo, b->rt_lo);
	assert_int_equal(a->rt_hi, b->rt_hi);
	assert_true(b->rc > 0);
	assert_int_equal(a->rc, 0);
	assert_int_equal(a->l2, b->l2);
	assert_true(a->l1);
}

static void test_fail_reftable(void **state)
{
	const struct stage_case c = {
		.sc = &sc_blocks, .flags = BUFFERED, .stage = 't', .err = ENOSPC,
		.probe_seq = "rrsts2s1s", .fail_seq = "rrs",
		.retry_seq = "sts2s1s", .check = check_reftable,
	};

	(void)state;
	run_stage_case(&c);
}

/* L2: the failed slice is dirty again, the other slice of the stage was
 * written, and the L1 was not reached. */
static void check_l2(struct fx *h, const struct dirty *b,
		     const struct dirty *a, uint64_t failed_off)
{
	uint64_t key = 0;

	assert_int_equal(b->l2, 2);
	assert_int_equal(a->l2, 1);
	assert_int_equal(scan_slices(h->img->l2_cache, &key), 1);
	assert_int_equal(key, failed_off);
	assert_int_equal(a->rc, 0);
	assert_true(a->l1);
	assert_int_equal(a->l1_lo, b->l1_lo);
	assert_int_equal(a->l1_hi, b->l1_hi);
}

static void test_fail_l2(void **state)
{
	const struct stage_case c = {
		.sc = &sc_alloc, .flags = BUFFERED, .stage = '2', .err = ENOSPC,
		.probe_seq = "rs22s1s", .fail_seq = "rs2", .retry_seq = "s2s1s",
		.check = check_l2,
	};

	(void)state;
	run_stage_case(&c);
}

/* L1: its entries are dirty again (the same range); everything before
 * it was written. */
static void check_l1(struct fx *h, const struct dirty *b,
		     const struct dirty *a, uint64_t failed_off)
{
	assert_int_equal(failed_off, h->img->hdr.l1_table_offset);
	assert_true(b->l1);
	assert_true(a->l1);
	assert_int_equal(a->l1_lo, b->l1_lo);
	assert_int_equal(a->l1_hi, b->l1_hi);
	assert_int_equal(a->rc, 0);
	assert_int_equal(a->l2, 0);
	assert_int_equal(a->hdr, b->hdr);
}

static void test_fail_l1(void **state)
{
	const struct stage_case c = {
		.sc = &sc_alloc, .flags = BUFFERED, .stage = '1', .err = ENOSPC,
		.probe_seq = "rs22s1s", .fail_seq = "rs22s", .retry_seq = "s1s",
		.check = check_l1,
	};

	(void)state;
	run_stage_case(&c);
}

/* A relocated L1: written whole; failed, all of it is dirty again, the
 * header (which would point at it) was not written, and the old table
 * is not freed. */
static void check_l1_relocated(struct fx *h, const struct dirty *b,
			       const struct dirty *a, uint64_t failed_off)
{
	check_l1(h, b, a, failed_off);
	assert_int_equal(a->l1_lo, 0);
	assert_int_equal(a->l1_hi, h->img->l1_size);
	assert_true(a->hdr);
	assert_int_equal(h->img->alloc.frees_flushing_len, 0);
	assert_int_equal(h->img->alloc.frees_waiting_len, 1);
	assert_int_equal(fx_refcount(h, h->img->alloc.frees_waiting[0]), 1);
}

static void test_fail_l1_relocated(void **state)
{
	const struct stage_case c = {
		.sc = &sc_resize, .flags = BUFFERED, .stage = '1', .err = ENOSPC,
		.probe_seq = "rs22s1shs", .fail_seq = "rs22s",
		.retry_seq = "s1shs", .check = check_l1_relocated,
	};

	(void)state;
	run_stage_case(&c);
}

/* Header: dirty again, everything else written; the old L1 table, which
 * the header on disk still points at, is not freed. */
static void check_header(struct fx *h, const struct dirty *b,
			 const struct dirty *a, uint64_t failed_off)
{
	uint64_t old_l1;

	assert_int_equal(failed_off, 0);
	assert_true(b->hdr);
	assert_true(a->hdr);
	assert_false(a->l1);
	assert_int_equal(a->l2, 0);
	assert_int_equal(a->rc, 0);
	assert_int_equal(h->img->alloc.frees_flushing_len, 0);
	assert_int_equal(h->img->alloc.frees_waiting_len, 1);
	old_l1 = h->img->alloc.frees_waiting[0];
	assert_int_not_equal(old_l1, h->img->hdr.l1_table_offset);
	assert_int_equal(fx_refcount(h, old_l1), 1);
	assert_int_equal(h->img->alloc.free_pool_len, 0);
}

static void test_fail_header(void **state)
{
	const struct stage_case c = {
		.sc = &sc_resize, .flags = BUFFERED, .stage = 'h', .err = ENOSPC,
		.probe_seq = "rs22s1shs", .fail_seq = "rs22s1s",
		.retry_seq = "shs", .check = check_header,
	};

	(void)state;
	run_stage_case(&c);
}

/* Lazy refcounts, the dirty bit's header write fails: the bit does not
 * count as on disk, and nothing that needs it was written. */
static void check_dirty_bit(struct fx *h, const struct dirty *b,
			    const struct dirty *a, uint64_t failed_off)
{
	(void)h;
	assert_int_equal(failed_off, 0);
	assert_false(b->on_disk);
	assert_false(a->on_disk);
	assert_false(disk_dirty_bit());
	assert_int_equal(a->l2, b->l2);
	assert_true(a->l1);
	assert_int_equal(a->rc, b->rc);
	assert_false(a->hdr);
}

static void test_fail_dirty_bit(void **state)
{
	const struct stage_case c = {
		.sc = &sc_lazy, .flags = BUFFERED, .stage = 'h', .err = ENOSPC,
		.probe_seq = "hs22s1s", .fail_seq = "", .retry_seq = "hs22s1s",
		.check = check_dirty_bit,
	};

	(void)state;
	run_stage_case(&c);
}

/* O_DIRECT: the fdatasync after the refcount blocks fails. The blocks
 * were written (clean) but are not known durable: the next flush syncs
 * before writing anything that depends on them. */
static void check_sync_direct(struct fx *h, const struct dirty *b,
			      const struct dirty *a, uint64_t failed_off)
{
	(void)failed_off;
	assert_int_equal(a->rc, 0);
	assert_int_equal(a->l2, b->l2);
	assert_true(a->l1);
	assert_true(h->img->dirty.data_unsynced);
}

static void test_fail_sync_direct(void **state)
{
	const struct stage_case c = {
		.sc = &sc_alloc, .flags = DIRECT, .stage = 'r', .sync = true,
		.err = EIO, .probe_seq = "rs22s1s", .fail_seq = "r",
		.retry_seq = "s22s1s", .check = check_sync_direct,
	};

	(void)state;
	run_stage_case(&c);
}

/* With the page cache, a failed fdatasync may have lost writes the
 * kernel had accepted: every later flush fails, without writing (a round
 * without IO, whose callback still runs only later). */
static void test_fail_sync_buffered(void **state)
{
	struct qcow2_fault_opts fo = { .fail_errno = EIO,
				       .fail_ops = QCOW2_FAULT_FSYNC };
	struct dirty after;
	struct probe p;
	struct fx h;
	char seq[MAXOPS + 1];
	uint64_t first;

	(void)state;
	probe(&sc_alloc, BUFFERED, &p);
	assert_string_equal(p.seq, "rs22s1s");
	fo.fail_at = sync_no(&p, 'r');
	fx_create(&sc_alloc.co);
	fx_open(&h, BUFFERED, &fo, true);
	sc_alloc.run(&h);
	first = log_records(&h);
	assert_int_equal(qcow2_fsync(h.img), -EIO);
	log_seq(&h, first, seq, NULL);
	assert_string_equal(seq, "r");
	for (int i = 0; i < 2; i++) {
		struct fx_done d = { 0 };

		first = log_records(&h);
		assert_int_equal(qcow2_flush(h.img, fx_on_done, &d), 0);
		assert_false(d.done);
		assert_int_equal(fx_wait(&h, &d), -EIO);
		/* the flush's own message says what failed */
		assert_non_null(strstr(d.msg, "fdatasync"));
		log_seq(&h, first, seq, NULL);
		assert_string_equal(seq, "");
		assert_int_equal(gate(h.img), -EIO);
	}
	dirty_of(h.img, &after);
	assert_int_equal(after.rc, 0);
	assert_int_equal(after.l2, 2);
	assert_true(after.l1);
	assert_int_not_equal(qcow2_last_error(h.img)[0], '\0');
	fx_close(&h);
	/* a crash-safe image all the same: the L2 table and the data
	 * cluster, counted but not referenced, leak */
	fx_check(2);
}

/* ---- rounds with nothing to write ------------------------------------------ */

static void test_nothing_to_write(void **state)
{
	struct fx_done d = { 0 };
	struct qcow2_stats st;
	struct fx h;

	(void)state;
	fx_create(&sc_alloc.co);
	fx_open(&h, BUFFERED, NULL, true);
	assert_false(qcow2_has_dirty_metadata(h.img));
	assert_int_equal(qcow2_writeback(h.img, fx_on_done, &d), 0);
	assert_false(d.done);
	assert_int_equal(fx_wait(&h, &d), 0);
	assert_int_equal(log_records(&h), 0);
	/* a client flush always ends in an fdatasync, completed later */
	d.done = false;
	assert_int_equal(qcow2_flush(h.img, fx_on_done, &d), 0);
	assert_false(d.done);
	assert_int_equal(fx_wait(&h, &d), 0);
	assert_int_equal(fx_log_count(&h, QCOW2_FAULT_FSYNC), 1);
	assert_int_equal(fx_log_count(&h, QCOW2_FAULT_WRITE), 0);
	assert_int_equal(qcow2_get_stats(h.img, &st), 0);
	assert_int_equal(st.flush.flushes[QCOW2_FLUSH_CLIENT], 1);
	assert_int_equal(st.flush.flushes[QCOW2_FLUSH_TIMER], 0);
	fx_close(&h);
}

/* The dirty state in the statistics: slices not yet written back and the
 * age of the oldest change not yet written; both go back to 0 once a
 * write-back succeeds, and a failed one keeps the age (the change is still
 * not on disk). */
static void test_dirty_age(void **state)
{
	struct qcow2_fault_opts fo = { .fail_errno = EIO,
				       .fail_ops = QCOW2_FAULT_WRITE };
	struct fx_done d = { 0 };
	struct qcow2_stats st;
	uint64_t age;
	struct fx h;

	(void)state;
	/* probe: the first write of the write-back after one allocating write */
	fx_create(&sc_alloc.co);
	fx_open(&h, BUFFERED, NULL, true);
	assert_int_equal(fx_write(&h, 0, 65536, 1), 0);
	fo.fail_at = fx_log_count(&h, QCOW2_FAULT_WRITE) + 1;
	fx_close(&h);

	fx_create(&sc_alloc.co);
	fx_open(&h, BUFFERED, &fo, false);
	assert_int_equal(qcow2_get_stats(h.img, &st), 0);
	assert_int_equal(st.dirty_slices, 0);
	assert_int_equal(st.dirty_age_ns, 0);
	assert_int_equal(fx_write(&h, 0, 65536, 1), 0);
	usleep(30 * 1000);
	assert_int_equal(qcow2_get_stats(h.img, &st), 0);
	assert_true(st.dirty_slices >= 2); /* an L2 slice, a refcount slice */
	assert_true(st.dirty_age_ns >= 30 * 1000000ull);
	age = st.dirty_age_ns;
	/* the write-back fails: still dirty, and older */
	assert_int_equal(qcow2_flush(h.img, fx_on_done, &d), 0);
	assert_int_equal(fx_wait(&h, &d), -EIO);
	assert_int_equal(qcow2_get_stats(h.img, &st), 0);
	assert_true(st.dirty_slices >= 1);
	assert_true(st.dirty_age_ns > age);
	/* the next one succeeds: clean */
	d.done = false;
	assert_int_equal(qcow2_flush(h.img, fx_on_done, &d), 0);
	assert_int_equal(fx_wait(&h, &d), 0);
	assert_int_equal(qcow2_get_stats(h.img, &st), 0);
	assert_int_equal(st.dirty_slices, 0);
	assert_int_equal(st.dirty_age_ns, 0);
	fx_close(&h);
	fx_check(0);
}

/* QCOW2_OPEN_UNSAFE: every stage is written, in order, but no fdatasync is
 * issued, by the flushes, the close or the open; a client flush with
 * nothing to write still completes later, not inside the call. */
static void test_unsafe_never_syncs(void **state)
{
	struct fx_done d = { 0 };
	struct qcow2_stats st;
	struct fx h;

	(void)state;
	fx_create(&sc_resize.co);
	fx_open(&h, BUFFERED | QCOW2_OPEN_UNSAFE, NULL, true);
	sc_resize.run(&h);
	assert_int_equal(qcow2_flush(h.img, fx_on_done, &d), 0);
	assert_int_equal(fx_wait(&h, &d), 0);
	assert_true(fx_log_count(&h, QCOW2_FAULT_WRITE) > 0);
	assert_int_equal(fx_log_count(&h, QCOW2_FAULT_FSYNC), 0);
	/* the old L1 table's cluster is freed after the flush: its refcount
	 * is written by the next one */
	d.done = false;
	assert_int_equal(qcow2_flush(h.img, fx_on_done, &d), 0);
	assert_int_equal(fx_wait(&h, &d), 0);
	assert_false(qcow2_has_dirty_metadata(h.img));
	d.done = false;
	assert_int_equal(qcow2_flush(h.img, fx_on_done, &d), 0);
	assert_false(d.done);
	assert_int_equal(fx_wait(&h, &d), 0);
	assert_int_equal(qcow2_get_stats(h.img, &st), 0);
	assert_int_equal(st.flush.fdatasyncs, 0);
	assert_int_equal(st.flush.flushes[QCOW2_FLUSH_CLIENT], 3);
	assert_int_equal(fx_log_count(&h, QCOW2_FAULT_FSYNC), 0);
	fx_close(&h);
	assert_true(fx_holds(sc_resize.data_off, sc_resize.data_len, sc_resize.tag));
	fx_check(0);
}

/* Lazy refcounts with only refcounts dirty: a timer write-back starts a
 * round that writes nothing; it still ends later, not inside the call. */
static void test_lazy_round_without_io(void **state)
{
	struct fx_done d = { 0 };
	struct qcow2_stats st;
	struct fx h;
	char seq[MAXOPS + 1];
	uint64_t first;

	(void)state;
	fx_create(&sc_lazy.co);
	fx_open(&h, BUFFERED, NULL, true);
	run_alloc(&h);
	flush_ok(&h, seq);
	assert_string_equal(seq, "hs22s1s");
	assert_true(h.img->dirty.bit_on_disk);
	assert_int_equal(slice_cache_dirty_count(h.img->rc_cache), 1);
	assert_int_equal(slice_cache_dirty_count(h.img->l2_cache), 0);
	assert_true(qcow2_has_dirty_metadata(h.img));
	first = log_records(&h);
	assert_int_equal(qcow2_writeback(h.img, fx_on_done, &d), 0);
	assert_false(d.done);
	assert_int_equal(fx_wait(&h, &d), 0);
	log_seq(&h, first, seq, NULL);
	assert_string_equal(seq, "");
	assert_int_equal(slice_cache_dirty_count(h.img->rc_cache), 1);
	assert_int_equal(qcow2_get_stats(h.img, &st), 0);
	assert_int_equal(st.flush.flushes[QCOW2_FLUSH_TIMER], 1);
	fx_close(&h);
	/* the close wrote the refcounts and cleared the bit */
	assert_false(disk_dirty_bit());
	check_reopen(&sc_lazy);
}

/* A flush requested while one runs is served by the next round, which
 * begins when the running one ends. */
struct order {
	int n;
	int seen[2];
	struct fx_done d[2];
};

static void on_flush_a(void *opaque, int result, const char *error)
{
	struct order *o = opaque;

	o->seen[0] = ++o->n;
	fx_on_done(&o->d[0], result, error);
}

static void on_flush_b(void *opaque, int result, const char *error)
{
	struct order *o = opaque;

	o->seen[1] = ++o->n;
	fx_on_done(&o->d[1], result, error);
}

static void test_flush_during_flush(void **state)
{
	struct order o;
	struct qcow2_stats st;
	struct fx h;
	char seq[MAXOPS + 1];
	uint64_t first;

	(void)state;
	memset(&o, 0, sizeof(o));
	fx_create(&sc_alloc.co);
	fx_open(&h, BUFFERED, NULL, true);
	run_alloc(&h);
	first = log_records(&h);
	assert_int_equal(qcow2_flush(h.img, on_flush_a, &o), 0);
	assert_int_equal(qcow2_flush(h.img, on_flush_b, &o), 0);
	assert_int_equal(o.n, 0);
	assert_int_equal(fx_wait(&h, &o.d[1]), 0);
	assert_true(o.d[0].done);
	assert_int_equal(o.d[0].err, 0);
	assert_int_equal(o.seen[0], 1);
	assert_int_equal(o.seen[1], 2);
	/* the second round had nothing left but its fdatasync */
	log_seq(&h, first, seq, NULL);
	assert_string_equal(seq, "rs22s1ss");
	assert_int_equal(qcow2_get_stats(h.img, &st), 0);
	assert_int_equal(st.flush.flushes[QCOW2_FLUSH_CLIENT], 2);
	assert_false(qcow2_has_dirty_metadata(h.img));
	fx_close(&h);
	check_reopen(&sc_alloc);
}

/* A flush while data writes keep completing (in place: no metadata):
 * each stage's fdatasync is issued once. Before the fix, every data write
 * that completed while a stage waited for its fdatasync asked for another
 * one, so under a steady load the round (metadata frozen) synced again
 * and again. */
struct storm {
	struct fx *h;
	struct fx_done flush;
	unsigned writes, max;
	uint8_t *buf;
};

static void storm_write(struct storm *s);

static void on_storm_write(void *opaque, int result, const char *error)
{
	struct storm *s = opaque;

	(void)error;
	assert_int_equal(result, 0);
	if (!s->flush.done && s->writes < s->max)
		storm_write(s);
}

static void storm_write(struct storm *s)
{
	s->writes++;
	assert_int_equal(qcow2_write(s->h->img, 4096, s->buf, 4096, on_storm_write, s), 0);
}

static void test_sync_once_under_load(void **state)
{
	struct storm s = { .max = 400 };
	struct qcow2_stats st;
	struct fx h;

	(void)state;
	fx_create(&sc_alloc.co);
	fx_open(&h, BUFFERED, NULL, true);
	run_alloc(&h);
	s.h = &h;
	s.buf = aligned_alloc(4096, 4096);
	assert_non_null(s.buf);
	memset(s.buf, 0x5a, 4096);
	assert_int_equal(qcow2_flush(h.img, fx_on_done, &s.flush), 0);
	storm_write(&s);
	assert_int_equal(fx_wait(&h, &s.flush), 0);
	qcow2_ctx_run(h.ctx); /* the last write of the storm */
	assert_int_equal(qcow2_get_stats(h.img, &st), 0);
	/* the writes overlapped the round, which synced once per stage
	 * (refcounts, L2, L1) and once at the end */
	assert_true(s.writes > 4);
	assert_true(s.writes < s.max);
	assert_true(st.flush.fdatasyncs <= 4);
	free(s.buf);
	fx_close(&h);
	fx_check(0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_fail_refblocks, fx_cleanup),
		cmocka_unit_test_teardown(test_fail_reftable, fx_cleanup),
		cmocka_unit_test_teardown(test_fail_l2, fx_cleanup),
		cmocka_unit_test_teardown(test_fail_l1, fx_cleanup),
		cmocka_unit_test_teardown(test_fail_l1_relocated, fx_cleanup),
		cmocka_unit_test_teardown(test_fail_header, fx_cleanup),
		cmocka_unit_test_teardown(test_fail_dirty_bit, fx_cleanup),
		cmocka_unit_test_teardown(test_fail_sync_direct, fx_cleanup),
		cmocka_unit_test_teardown(test_fail_sync_buffered, fx_cleanup),
		cmocka_unit_test_teardown(test_nothing_to_write, fx_cleanup),
		cmocka_unit_test_teardown(test_dirty_age, fx_cleanup),
		cmocka_unit_test_teardown(test_unsafe_never_syncs, fx_cleanup),
		cmocka_unit_test_teardown(test_lazy_round_without_io, fx_cleanup),
		cmocka_unit_test_teardown(test_flush_during_flush, fx_cleanup),
		cmocka_unit_test_teardown(test_sync_once_under_load, fx_cleanup),
	};
	return cmocka_run_group_tests(tests, fx_setup, fx_teardown);
}
