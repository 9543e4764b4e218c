/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * random_io: a seeded random workload against a qcow2 image, mirrored into a
 * raw model file (which must start with the image's guest contents, e.g.
 * from `qemu-img convert -O raw`).
 *
 * Requests: writes (every 512-byte sector carries a recognisable header:
 * "QWRT", request number, guest sector, seed), write-zeroes with and without
 * QCOW2_ZERO_UNMAP, discards, verifying reads, flushes (some concurrent with
 * other requests, some "barriers" issued alone) and timer write-backs. Up to
 * --depth requests are in flight; they never overlap one another, so the
 * model is unambiguous. Buffers are sometimes split into several iovecs (at
 * sector or odd byte boundaries) or misaligned, to exercise the bounce paths.
 *
 * At the end every sector of the disk is read back and compared with the
 * model, the image is closed, reopened read-only and compared again.
 *
 * Usage: random_io [options] IMAGE MODEL
 *   --backend io_uring|sync|fault   IO backend (default io_uring)
 *   --buffered                      page cache instead of O_DIRECT
 *   --l2-cache BYTES                L2 cache size (k/M suffixes)
 *   --l2-slice BYTES                L2 slice size
 *   --seed N  --ops N  --max-len BYTES  --depth N (1..64)
 *   --no-meta                       no write-zeroes and no discards
 *   --fail-at N --fail-errno EIO|ENOSPC|NUM --fail-ops r,w,f,a [--fail-persist]
 *                                   (a: fallocate, i.e. hole punches and the
 *                                   file's space reservation)
 *   --log FILE                      fault backend: log writes and syncs
 *   --expect-failure                a request failing with the injected errno
 *                                   is expected: stop, close, exit 0 (3 when
 *                                   the failure was never reached); without
 *                                   --fail-at, a real failure with
 *                                   --fail-errno (a full file system)
 *   --expect-evictions              fail unless the L2/refcount caches had to
 *                                   write back dirty slices to make room
 *   --marks DIR                     crash tests (with --log): at the start
 *                                   and after each barrier flush, copy the
 *                                   model to DIR/model-J.raw and append
 *                                   "mark J LOGBYTES" to DIR/marks.txt; for
 *                                   every mutating request append
 *                                   "touch write|zero|discard ID OFF LEN
 *                                   LOGBYTES" (LOGBYTES: the log's size then)
 *   --sequential                    4 KiB writes walking the disk, each issued
 *                                   from the previous one's completion
 *   --verify-only                   open read-only, compare with MODEL, exit
 *   --no-reopen                     skip the read-only reopen at the end
 *
 * Exit: 0 pass, 1 failure, 2 usage, 3 (--expect-failure) the injected failure
 * was not reached, 77 skip (io_uring unavailable).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qcow2.h"
#include "qcow2_fault.h"

#define SECTOR 512u
#define MAX_DEPTH 64
#define MAX_MARKS 12

enum kind { K_WRITE, K_ZERO, K_DISCARD, K_READ, K_FLUSH, K_WRITEBACK };

static const char *const kind_name[] = {
	"write", "write-zeroes", "discard", "read", "flush", "writeback",
};

struct req {
	bool busy, done;
	int ret;
	char msg[256];     /* the failed request's own message */
	enum kind kind;
	bool barrier;      /* flush issued alone: nothing else in flight */
	unsigned flags;
	uint64_t id;       /* request number, 1-based */
	uint64_t off, len;
	uint8_t *buf;      /* max_len + 4096, aligned */
	uint8_t *expect;
	struct iovec iov[4];
	int iovcnt;
};

static struct {
	const char *image, *model_path;
	struct qcow2_image *img;
	struct qcow2_ctx *ctx;
	struct qcow2_info info;
	int model;
	uint64_t seed;
	bool expect_failure;
	int fail_errno;
	int fails;
	bool stop;            /* no more requests: failure or injected error */
	bool injected;
	uint64_t counts[6];
	/* --marks */
	const char *marks_dir;
	FILE *marks;
	int log_fd;
	unsigned nmarks;
} g = { .model = -1, .log_fd = -1 };

static uint64_t rng_state;

static uint64_t rnd(void)
{
	/* xorshift64* */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 2685821657736338717ull;
}

static uint64_t rnd_below(uint64_t n)
{
	return n ? rnd() % n : 0;
}

static void fail(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fputs("random_io: FAIL: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	g.fails++;
	g.stop = true;
}

static void die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fputs("random_io: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(1);
}

/* ---- patterns ----------------------------------------------------------- */

static void fill_sector(uint8_t *p, uint64_t sector, uint64_t id)
{
	uint32_t seed32 = (uint32_t)g.seed;

	memcpy(p, "QWRT", 4);
	memcpy(p + 4, &(uint32_t){ (uint32_t)id }, 4);
	memcpy(p + 8, &sector, 8);
	memcpy(p + 16, &seed32, 4);
	for (unsigned i = 20; i < SECTOR; i++)
		p[i] = (uint8_t)(id * 7 + sector * 13 + i);
}

static void fill_pattern(uint8_t *buf, uint64_t off, uint64_t len, uint64_t id)
{
	for (uint64_t k = 0; k < len; k += SECTOR)
		fill_sector(buf + k, (off + k) / SECTOR, id);
}

/* What a 512-byte sector holds, for messages. */
static void describe(const uint8_t *p, char *out, size_t n)
{
	static const uint8_t z[SECTOR];
	uint32_t id, seed32;
	uint64_t sector;

	if (!memcmp(p, z, SECTOR)) {
		snprintf(out, n, "zeros");
		return;
	}
	if (!memcmp(p, "QWRT", 4)) {
		memcpy(&id, p + 4, 4);
		memcpy(&sector, p + 8, 8);
		memcpy(&seed32, p + 16, 4);
		snprintf(out, n, "data of request #%u for sector %" PRIu64
			 " (byte %" PRIu64 ")%s", id, sector, sector * SECTOR,
			 seed32 == (uint32_t)g.seed ? "" : " of another run");
		return;
	}
	snprintf(out, n, "other data (%02x %02x %02x %02x ...)", p[0], p[1], p[2],
		 p[3]);
}

/* Compare got with expect for guest range [off, off+len); report. */
static bool compare(const char *what, uint64_t off, const uint8_t *got,
		    const uint8_t *expect, uint64_t len)
{
	uint64_t k, bad = 0, first = UINT64_MAX;
	char dg[160], de[160];

	if (!memcmp(got, expect, len))
		return true;
	for (k = 0; k < len; k += SECTOR) {
		uint64_t n = len - k < SECTOR ? len - k : SECTOR;
		if (memcmp(got + k, expect + k, n)) {
			if (first == UINT64_MAX)
				first = k;
			bad++;
		}
	}
	describe(got + first, dg, sizeof(dg));
	describe(expect + first, de, sizeof(de));
	fail("%s at %" PRIu64 "+%" PRIu64 ": %" PRIu64 " sector(s) differ from "
	     "the model, first at byte %" PRIu64 ": got %s, expected %s",
	     what, off, len, bad, off + first, dg, de);
	return false;
}

/* ---- model -------------------------------------------------------------- */

static void model_pwrite(const void *buf, uint64_t len, uint64_t off)
{
	const uint8_t *p = buf;

	while (len) {
		ssize_t r = pwrite(g.model, p, len, (off_t)off);
		if (r <= 0)
			die("model write at %" PRIu64 ": %s", off, strerror(errno));
		p += r;
		off += (uint64_t)r;
		len -= (uint64_t)r;
	}
}

static void xpread(int fd, void *buf, uint64_t len, uint64_t off,
		   const char *what)
{
	uint8_t *p = buf;

	while (len) {
		ssize_t r = pread(fd, p, len, (off_t)off);
		if (r < 0)
			die("%s read at %" PRIu64 ": %s", what, off, strerror(errno));
		if (r == 0) { /* past the end: zeros */
			memset(p, 0, len);
			return;
		}
		p += r;
		off += (uint64_t)r;
		len -= (uint64_t)r;
	}
}

static void model_zero(uint64_t off, uint64_t len)
{
	static uint8_t z[1 << 16];

	while (len) {
		uint64_t n = len < sizeof(z) ? len : sizeof(z);
		model_pwrite(z, n, off);
		off += n;
		len -= n;
	}
}

static void model_discard(uint64_t off, uint64_t len)
{
	uint64_t cs = g.info.cluster_size, end = off + len;
	uint64_t s0 = (off + cs - 1) / cs * cs, e0 = end / cs * cs;

	/* The last cluster may end at the disk's end, inside a cluster. */
	if (end == g.info.virtual_size)
		e0 = end;
	if (e0 <= s0)
		return;
	/* A version 2 image with a backing file ignores discards (they would
	 * expose the backing file). */
	if (g.info.version < 3 && g.info.backing_file)
		return;
	model_zero(s0, e0 - s0);
}

static intmax_t log_bytes(void)
{
	struct stat st;

	if (fstat(g.log_fd, &st) < 0)
		die("log: %s", strerror(errno));
	return (intmax_t)st.st_size;
}

/* A mutating request is issued: the log's size now tells which records
 * completed before it. */
static void touch(enum kind kind, uint64_t id, uint64_t off, uint64_t len)
{
	if (g.marks)
		fprintf(g.marks, "touch %s %" PRIu64 " %" PRIu64 " %" PRIu64 " %jd\n",
			kind == K_WRITE ? "write" : kind == K_ZERO ? "zero" : "discard",
			id, off, len, log_bytes());
}

static void copy_file(int from, const char *to)
{
	int fd = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	uint8_t *b = malloc(1 << 20);
	uint64_t size = g.info.virtual_size;

	if (fd < 0 || !b)
		die("%s: %s", to, strerror(errno));
	for (uint64_t o = 0; o < size; o += 1 << 20) {
		uint64_t n = size - o < (1 << 20) ? size - o : (1 << 20);
		xpread(from, b, n, o, "model");
		if (pwrite(fd, b, n, (off_t)o) != (ssize_t)n)
			die("%s: %s", to, strerror(errno));
	}
	free(b);
	close(fd);
}

/* A barrier flush completed with nothing else in flight: everything the
 * model holds is durable now. Mark 0 is the start: the image as it was. */
static void mark(void)
{
	char path[4096];

	if (!g.marks || g.nmarks >= MAX_MARKS)
		return;
	snprintf(path, sizeof(path), "%s/model-%u.raw", g.marks_dir, g.nmarks);
	copy_file(g.model, path);
	fprintf(g.marks, "mark %u %jd\n", g.nmarks, log_bytes());
	g.nmarks++;
}

/* ---- requests ----------------------------------------------------------- */

static void on_done(void *opaque, int ret, const char *error)
{
	struct req *r = opaque;

	r->done = true;
	r->ret = ret;
	snprintf(r->msg, sizeof(r->msg), "%s", error ? error : "");
}

/* Set r->iov over r->buf: one buffer, several pieces, or misaligned. */
static void make_iov(struct req *r)
{
	uint64_t choice = rnd_below(10), len = r->len;

	r->iovcnt = 1;
	r->iov[0].iov_base = r->buf;
	r->iov[0].iov_len = len;
	if (choice == 0) {
		/* misaligned: the engine must bounce */
		r->iov[0].iov_base = r->buf + 8 * (1 + rnd_below(8));
	} else if (choice <= 2 && len > 1) {
		/* 2..4 pieces split at random bytes or sectors */
		int n = 2 + (int)rnd_below(3);
		bool odd = rnd() & 1;
		uint64_t pos = 0;
		for (int i = 0; i < n - 1; i++) {
			uint64_t left = len - pos, cut;
			if (left < 2)
				break;
			cut = 1 + rnd_below(left - 1);
			if (!odd)
				cut = cut / SECTOR * SECTOR;
			if (cut == 0)
				continue;
			r->iov[r->iovcnt - 1].iov_len = cut;
			r->iov[r->iovcnt].iov_base = (uint8_t *)r->iov[r->iovcnt - 1].iov_base + cut;
			r->iov[r->iovcnt].iov_len = left - cut;
			r->iovcnt++;
			pos += cut;
		}
	}
}

/* Bytes of the iovecs gathered into / scattered from a flat buffer. */
static void iov_gather(const struct req *r, uint8_t *dst)
{
	for (int i = 0; i < r->iovcnt; i++) {
		memcpy(dst, r->iov[i].iov_base, r->iov[i].iov_len);
		dst += r->iov[i].iov_len;
	}
}

static void iov_scatter(struct req *r, const uint8_t *src)
{
	for (int i = 0; i < r->iovcnt; i++) {
		memmove(r->iov[i].iov_base, src, r->iov[i].iov_len);
		src += r->iov[i].iov_len;
	}
}

static bool overlaps(const struct req *reqs, int n, uint64_t off, uint64_t len)
{
	for (int i = 0; i < n; i++)
		if (reqs[i].busy && reqs[i].len && off < reqs[i].off + reqs[i].len &&
		    reqs[i].off < off + len)
			return true;
	return false;
}

static int busy_count(const struct req *reqs, int n)
{
	int c = 0;

	for (int i = 0; i < n; i++)
		c += reqs[i].busy;
	return c;
}

static void finish(struct req *r)
{
	r->busy = false;
	if (r->ret < 0) {
		if (g.expect_failure && r->ret == -g.fail_errno) {
			if (!g.injected)
				printf("random_io: expected %s surfaced: request #%" PRIu64
				       " (%s %" PRIu64 "+%" PRIu64 ") failed: %s\n",
				       strerror(g.fail_errno), r->id, kind_name[r->kind],
				       r->off, r->len, r->msg);
			g.injected = true;
			g.stop = true;
			return;
		}
		fail("request #%" PRIu64 " (%s %" PRIu64 "+%" PRIu64 ") failed: %s (%s)",
		     r->id, kind_name[r->kind], r->off, r->len, strerror(-r->ret),
		     r->msg);
		return;
	}
	if (r->kind == K_READ) {
		char what[64];
		iov_gather(r, r->expect + r->len); /* expect has room for 2 * max */
		snprintf(what, sizeof(what), "read #%" PRIu64, r->id);
		compare(what, r->off, r->expect + r->len, r->expect, r->len);
	}
	if (r->barrier)
		mark();
}

/* Reap finished requests; detect requests nothing will ever complete. */
static void reap(struct req *reqs, int depth, bool wait)
{
	qcow2_ctx_process(g.ctx, wait);
	for (int i = 0; i < depth; i++)
		if (reqs[i].busy && reqs[i].done)
			finish(&reqs[i]);
	if (busy_count(reqs, depth) && qcow2_ctx_inflight(g.ctx) == 0) {
		/* Run deferred completions, if any, then judge. */
		qcow2_ctx_process(g.ctx, false);
		for (int i = 0; i < depth; i++)
			if (reqs[i].busy && reqs[i].done)
				finish(&reqs[i]);
		if (busy_count(reqs, depth) && qcow2_ctx_inflight(g.ctx) == 0) {
			for (int i = 0; i < depth; i++)
				if (reqs[i].busy)
					fprintf(stderr, "random_io: request #%" PRIu64 " (%s %"
						PRIu64 "+%" PRIu64 ") never completed\n",
						reqs[i].id, kind_name[reqs[i].kind],
						reqs[i].off, reqs[i].len);
			die("FAIL: requests pending with no IO in flight: a hang");
		}
	}
}

static void drain(struct req *reqs, int depth)
{
	while (busy_count(reqs, depth))
		reap(reqs, depth, true);
}

/* Pick a guest range: biased to small, cluster-sized and hot ranges. */
static void pick_range(uint64_t max_len, uint64_t *off, uint64_t *len)
{
	uint64_t size = g.info.virtual_size, cs = g.info.cluster_size;
	uint64_t sectors = size / SECTOR, l, o;
	uint64_t lc = rnd_below(10), oc = rnd_below(4);

	if (lc < 4)
		l = (1 + rnd_below(16)) * SECTOR;
	else if (lc < 7)
		l = (1 + rnd_below(cs / SECTOR)) * SECTOR;
	else if (lc < 8)
		l = cs * (1 + rnd_below(4));
	else
		l = (1 + rnd_below(max_len / SECTOR)) * SECTOR;
	if (l > max_len)
		l = max_len;
	if (oc == 0)
		o = rnd_below((size + cs - 1) / cs) * cs;           /* cluster start */
	else if (oc == 1)
		o = rnd_below(sectors / 8 + 1) * SECTOR;            /* hot eighth */
	else
		o = rnd_below(sectors) * SECTOR;
	if (o >= size)
		o = (sectors - 1) * SECTOR;
	if (o + l > size)
		l = size - o;
	*off = o;
	*len = l;
}

static int issue(struct req *r, enum kind kind, uint64_t id)
{
	int ret = 0;

	r->kind = kind;
	r->id = id;
	r->busy = true;
	r->done = false;
	r->barrier = false;
	r->ret = 0;
	g.counts[kind]++;
	switch (kind) {
	case K_WRITE:
		make_iov(r);
		fill_pattern(r->expect, r->off, r->len, id);
		iov_scatter(r, r->expect);
		touch(kind, id, r->off, r->len);
		model_pwrite(r->expect, r->len, r->off);
		ret = qcow2_writev(g.img, r->off, r->iov, r->iovcnt, on_done, r);
		break;
	case K_ZERO:
		touch(kind, id, r->off, r->len);
		model_zero(r->off, r->len);
		ret = qcow2_write_zeroes(g.img, r->off, r->len, r->flags, on_done, r);
		break;
	case K_DISCARD:
		touch(kind, id, r->off, r->len);
		model_discard(r->off, r->len);
		ret = qcow2_discard(g.img, r->off, r->len, on_done, r);
		break;
	case K_READ:
		make_iov(r);
		xpread(g.model, r->expect, r->len, r->off, "model");
		memset(r->buf, 0xa5, r->len + 4096 < 8192 ? r->len + 4096 : 8192);
		ret = qcow2_readv(g.img, r->off, r->iov, r->iovcnt, on_done, r);
		break;
	case K_FLUSH:
		r->off = r->len = 0;
		ret = qcow2_flush(g.img, on_done, r);
		break;
	case K_WRITEBACK:
		r->off = r->len = 0;
		ret = qcow2_writeback(g.img, on_done, r);
		break;
	}
	if (ret < 0) {
		/* Refused at submission: the callback will not run. */
		r->done = true;
		r->ret = ret;
	}
	return ret;
}

/* ---- whole-disk verification --------------------------------------------- */

static int verify_all(struct qcow2_image *img, const char *what)
{
	uint64_t size = g.info.virtual_size, chunk = 1 << 20;
	uint8_t *buf, *exp;
	int bad = 0;

	if (posix_memalign((void **)&buf, 4096, chunk) || !(exp = malloc(chunk)))
		die("out of memory");
	for (uint64_t o = 0; o < size && bad < 4; o += chunk) {
		uint64_t n = size - o < chunk ? size - o : chunk;
		int ret = qcow2_pread(img, buf, n, o);
		if (ret < 0) {
			fail("%s: read at %" PRIu64 "+%" PRIu64 " failed: %s (%s)", what,
			     o, n, strerror(-ret), qcow2_last_error(img));
			bad++;
			continue;
		}
		xpread(g.model, exp, n, o, "model");
		if (!compare(what, o, buf, exp, n))
			bad++;
	}
	free(buf);
	free(exp);
	return bad;
}

/* ---- statistics ---------------------------------------------------------- */

static void print_stats(const struct qcow2_stats *st)
{
	const struct qcow2_flush_stats *f = &st->flush;

	printf("requests: write %" PRIu64 " zeroes %" PRIu64 " discard %" PRIu64
	       " read %" PRIu64 " flush %" PRIu64 " writeback %" PRIu64 "\n",
	       g.counts[K_WRITE], g.counts[K_ZERO], g.counts[K_DISCARD],
	       g.counts[K_READ], g.counts[K_FLUSH], g.counts[K_WRITEBACK]);
	printf("engine: write requests %" PRIu64 " (%" PRIu64 " bytes, %" PRIu64
	       " errors), clusters allocated %" PRIu64 " cow %" PRIu64 " freed %"
	       PRIu64 "\n", st->write_requests, st->write_bytes, st->write_errors,
	       st->allocated_clusters, st->cow_clusters, st->freed_clusters);
	printf("flushes: client %" PRIu64 " timer %" PRIu64 " eviction %" PRIu64
	       " close %" PRIu64 "; slices written: l2 %" PRIu64 " refblock %"
	       PRIu64 "; l1 writes %" PRIu64 " reftable writes %" PRIu64
	       " header writes %" PRIu64 "; fdatasyncs %" PRIu64 " errors %"
	       PRIu64 "\n", f->flushes[QCOW2_FLUSH_CLIENT],
	       f->flushes[QCOW2_FLUSH_TIMER], f->flushes[QCOW2_FLUSH_EVICTION],
	       f->flushes[QCOW2_FLUSH_CLOSE], f->l2_slices, f->refblock_slices,
	       f->l1_writes, f->reftable_writes, f->header_writes, f->fdatasyncs,
	       f->errors);
	printf("caches: l2 %u slices of %u, hits %" PRIu64 " misses %" PRIu64
	       " evictions %" PRIu64 "; refcount %u slices, evictions %" PRIu64
	       "; reads: %" PRIu64 " (bounced %" PRIu64 ", compressed %" PRIu64
	       ", backing %" PRIu64 ")\n", st->l2_cache.slices,
	       st->l2_cache.slice_size, st->l2_cache.hits, st->l2_cache.misses,
	       st->l2_cache.evictions, st->refcount_cache.slices,
	       st->refcount_cache.evictions, st->read_requests, st->bounced_reads,
	       st->compressed_reads, st->backing_reads);
}

/* ---- --sequential --------------------------------------------------------- */

/* The next write is issued from the completion callback, as an event-loop
 * client does (the case that once lost joined writes). */
static struct {
	uint64_t issued, ops, next;
} seq;

static void seq_done(void *opaque, int ret, const char *error);

static void seq_issue(struct req *r)
{
	int ret;

	r->len = 4096;
	r->off = seq.next % (g.info.virtual_size - r->len + 1) / SECTOR * SECTOR;
	seq.next = r->off + r->len;
	r->id = ++seq.issued;
	r->kind = K_WRITE;
	fill_pattern(r->buf, r->off, r->len, r->id);
	model_pwrite(r->buf, r->len, r->off);
	ret = qcow2_write(g.img, r->off, r->buf, r->len, seq_done, r);
	if (ret < 0) {
		r->done = true;
		r->ret = ret;
	}
}

static void seq_done(void *opaque, int ret, const char *error)
{
	struct req *r = opaque;

	snprintf(r->msg, sizeof(r->msg), "%s", error ? error : "");
	if (ret == 0 && seq.issued < seq.ops && !g.stop) {
		seq_issue(r);
		return;
	}
	r->done = true;
	r->ret = ret;
}

/* ---- main ------------------------------------------------------------------ */

static uint64_t parse_size(const char *s)
{
	char *end;
	uint64_t v = strtoull(s, &end, 0);

	switch (*end) {
	case 'k': case 'K': v <<= 10; break;
	case 'M': v <<= 20; break;
	case 'G': v <<= 30; break;
	case '\0': break;
	default: die("bad size '%s'", s);
	}
	return v;
}

static int parse_errno(const char *s)
{
	if (!strcmp(s, "EIO"))
		return EIO;
	if (!strcmp(s, "ENOSPC"))
		return ENOSPC;
	if (!strcmp(s, "EDQUOT"))
		return EDQUOT;
	if (atoi(s) > 0)
		return atoi(s);
	die("unknown errno '%s'", s);
	return 0;
}

static void usage(void)
{
	fprintf(stderr,
		"usage: random_io [--backend io_uring|sync|fault] [--buffered]\n"
		"         [--l2-cache BYTES] [--l2-slice BYTES] [--seed N] [--ops N]\n"
		"         [--max-len BYTES] [--depth N] [--no-meta]\n"
		"         [--fail-at N --fail-errno EIO|ENOSPC --fail-ops r,w,f,a\n"
		"          [--fail-persist]] [--log FILE] [--expect-failure]\n"
		"         [--expect-evictions] [--marks DIR]\n"
		"         [--sequential] [--verify-only] [--no-reopen] IMAGE MODEL\n");
	exit(2);
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "backend", required_argument, 0, 'b' },
		{ "buffered", no_argument, 0, 'B' },
		{ "l2-cache", required_argument, 0, 'c' },
		{ "l2-slice", required_argument, 0, 'C' },
		{ "seed", required_argument, 0, 's' },
		{ "ops", required_argument, 0, 'n' },
		{ "max-len", required_argument, 0, 'm' },
		{ "depth", required_argument, 0, 'd' },
		{ "no-meta", no_argument, 0, 'M' },
		{ "log", required_argument, 0, 'l' },
		{ "fail-at", required_argument, 0, 'a' },
		{ "fail-errno", required_argument, 0, 'e' },
		{ "fail-ops", required_argument, 0, 'o' },
		{ "fail-persist", no_argument, 0, 'p' },
		{ "expect-failure", no_argument, 0, 'x' },
		{ "expect-evictions", no_argument, 0, 'E' },
		{ "marks", required_argument, 0, 'k' },
		{ "sequential", no_argument, 0, 'S' },
		{ "verify-only", no_argument, 0, 'V' },
		{ "no-reopen", no_argument, 0, 'R' },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	struct qcow2_ctx_opts co = { .backend = QCOW2_BACKEND_IO_URING, .queue_depth = 128 };
	bool use_fault = false;
	struct qcow2_fault_opts fo = { .log_fd = -1, .fail_errno = EIO,
				       .fail_ops = QCOW2_FAULT_WRITE | QCOW2_FAULT_FSYNC };
	struct qcow2_open_opts oo = { .flags = QCOW2_OPEN_RDWR };
	uint64_t ops = 500, max_len = 256 << 10, issued = 0;
	int depth = 8, opt, ret;
	bool no_meta = false, sequential = false, verify_only = false;
	bool expect_evictions = false, reopen = true;
	const char *log_path = NULL;
	struct qcow2_error err;
	struct qcow2_stats st;
	struct req *reqs;
	struct stat mst;

	setvbuf(stdout, NULL, _IOLBF, 0);
	while ((opt = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (opt) {
		case 'b':
			if (!strcmp(optarg, "sync"))
				co.backend = QCOW2_BACKEND_SYNC;
			else if (!strcmp(optarg, "fault"))
				use_fault = true;
			else if (!strcmp(optarg, "io_uring"))
				co.backend = QCOW2_BACKEND_IO_URING;
			else
				usage();
			break;
		case 'B': oo.flags |= QCOW2_OPEN_BUFFERED; break;
		case 'c': oo.l2_cache_size = parse_size(optarg); break;
		case 'C': oo.l2_slice_size = (uint32_t)parse_size(optarg); break;
		case 's': g.seed = strtoull(optarg, 0, 0); break;
		case 'n': ops = strtoull(optarg, 0, 0); break;
		case 'm': max_len = parse_size(optarg); break;
		case 'd': depth = atoi(optarg); break;
		case 'M': no_meta = true; break;
		case 'l': log_path = optarg; break;
		case 'a': fo.fail_at = strtoull(optarg, 0, 0); break;
		case 'e': fo.fail_errno = parse_errno(optarg); break;
		case 'o':
			fo.fail_ops = (strchr(optarg, 'r') ? QCOW2_FAULT_READ : 0) |
				      (strchr(optarg, 'w') ? QCOW2_FAULT_WRITE : 0) |
				      (strchr(optarg, 'f') ? QCOW2_FAULT_FSYNC : 0) |
				      (strchr(optarg, 'a') ? QCOW2_FAULT_FALLOCATE : 0);
			break;
		case 'p': fo.fail_persist = true; break;
		case 'x': g.expect_failure = true; break;
		case 'E': expect_evictions = true; break;
		case 'k': g.marks_dir = optarg; break;
		case 'S': sequential = true; break;
		case 'V': verify_only = true; break;
		case 'R': reopen = false; break;
		default: usage();
		}
	}
	if (optind != argc - 2 || depth < 1 || depth > MAX_DEPTH ||
	    max_len < SECTOR || max_len % SECTOR)
		usage();
	/* Without --fail-at, --expect-failure waits for a real failure with
	 * --fail-errno (a full file system). */
	if (g.expect_failure && fo.fail_at && !use_fault)
		die("--expect-failure with --fail-at needs --backend fault");
	if ((log_path || g.marks_dir) && !use_fault)
		die("--log and --marks need --backend fault");
	if (g.marks_dir && !log_path)
		die("--marks needs --log");
	g.image = argv[optind];
	g.model_path = argv[optind + 1];
	g.fail_errno = fo.fail_errno;
	rng_state = g.seed * 0x9e3779b97f4a7c15ull + 0x2545f4914f6cdd1dull;
	if (!rng_state)
		rng_state = 1;

	if (log_path) {
		fo.log_fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fo.log_fd < 0)
			die("%s: %s", log_path, strerror(errno));
		g.log_fd = fo.log_fd;
	}
	if (g.marks_dir) {
		char path[4096];
		snprintf(path, sizeof(path), "%s/marks.txt", g.marks_dir);
		g.marks = fopen(path, "w");
		if (!g.marks)
			die("%s: %s", path, strerror(errno));
	}
	ret = use_fault ? qcow2_ctx_new_fault(&co, &fo, &g.ctx) :
			  qcow2_ctx_new(&co, &g.ctx);
	if (ret < 0) {
		if (co.backend == QCOW2_BACKEND_IO_URING) {
			printf("SKIP: cannot create an io_uring context: %s\n", strerror(-ret));
			return 77;
		}
		die("cannot create the IO context: %s", strerror(-ret));
	}
	if (verify_only)
		oo.flags &= ~QCOW2_OPEN_RDWR;
	ret = qcow2_open(g.ctx, g.image, &oo, &g.img, &err);
	if (ret < 0)
		die("%s: %s (%s)", g.image, err.msg, strerror(-ret));
	qcow2_get_info(g.img, &g.info);
	g.model = open(g.model_path, verify_only ? O_RDONLY | O_CLOEXEC : O_RDWR | O_CLOEXEC);
	if (g.model < 0 || fstat(g.model, &mst) < 0)
		die("%s: %s", g.model_path, strerror(errno));
	if ((uint64_t)mst.st_size != g.info.virtual_size)
		die("%s has %jd bytes, the image's disk %" PRIu64, g.model_path,
		    (intmax_t)mst.st_size, g.info.virtual_size);
	if (g.info.block_size != SECTOR)
		die("the image's block size is %u; this driver assumes 512",
		    g.info.block_size);
	if (g.info.virtual_size < SECTOR || g.info.virtual_size % SECTOR)
		die("disk size %" PRIu64 " is not a multiple of 512", g.info.virtual_size);

	if (verify_only) {
		int bad = verify_all(g.img, "verify");
		qcow2_close(g.img, NULL);
		qcow2_ctx_free(g.ctx);
		if (!bad)
			printf("random_io: %s reads equal %s\n", g.image, g.model_path);
		return bad ? 1 : 0;
	}

	if (max_len > g.info.virtual_size)
		max_len = g.info.virtual_size;
	reqs = calloc((size_t)depth, sizeof(*reqs));
	if (!reqs)
		die("out of memory");
	for (int i = 0; i < depth; i++) {
		if (posix_memalign((void **)&reqs[i].buf, 4096, max_len + 4096) ||
		    !(reqs[i].expect = malloc(2 * max_len)))
			die("out of memory");
	}
	printf("random_io: %s: %" PRIu64 " bytes, cluster %u, refcount_bits %u, v%u%s%s,"
	       " l2 cache %" PRIu64 " (slice %u), %s, seed %" PRIu64 "\n",
	       g.image, g.info.virtual_size, g.info.cluster_size, g.info.refcount_bits,
	       g.info.version, g.info.backing_file ? ", backing " : "",
	       g.info.backing_file ? g.info.backing_file : "", g.info.l2_cache_size,
	       g.info.l2_slice_size, g.info.direct ? "O_DIRECT" : "buffered", g.seed);

	mark(); /* mark 0: the initial contents */
	if (sequential) {
		seq.ops = ops;
		for (int i = 0; i < depth && seq.issued < ops; i++) {
			reqs[i].busy = true;
			seq_issue(&reqs[i]);
		}
		issued = ops; /* the callbacks issue the rest */
		g.counts[K_WRITE] = ops;
	}

	bool want_barrier = false;
	while (!g.stop && issued < ops) {
		int free_slot = -1;

		for (int i = 0; i < depth; i++)
			if (!reqs[i].busy) {
				free_slot = i;
				break;
			}
		if (want_barrier) {
			if (busy_count(reqs, depth)) {
				reap(reqs, depth, true);
				continue;
			}
			want_barrier = false;
			issue(&reqs[0], K_FLUSH, ++issued);
			reqs[0].barrier = true;
			drain(reqs, depth);
			continue;
		}
		if (free_slot < 0) {
			reap(reqs, depth, true);
			continue;
		}
		struct req *r = &reqs[free_slot];
		uint64_t choice = rnd_below(100);
		enum kind kind;

		if (choice < 2) {
			want_barrier = true;
			continue;
		} else if (choice < 4) {
			kind = K_FLUSH;
		} else if (choice < 5) {
			kind = K_WRITEBACK;
		} else if (choice < 60 || (no_meta && choice < 80)) {
			kind = K_WRITE;
		} else if (no_meta) {
			kind = K_READ;
		} else if (choice < 70) {
			kind = K_ZERO;
		} else if (choice < 80) {
			kind = K_DISCARD;
		} else {
			kind = K_READ;
		}
		if (kind != K_FLUSH && kind != K_WRITEBACK) {
			int tries = 0;
			do {
				pick_range(max_len, &r->off, &r->len);
			} while (overlaps(reqs, depth, r->off, r->len) && ++tries < 8);
			if (tries == 8) {
				reap(reqs, depth, true);
				continue;
			}
			r->flags = kind == K_ZERO && (rnd() & 1) ? QCOW2_ZERO_UNMAP : 0;
		}
		issue(r, kind, ++issued);
		/* Let completions run now and then without blocking. */
		if (busy_count(reqs, depth) == depth || rnd_below(4) == 0)
			reap(reqs, depth, busy_count(reqs, depth) == depth);
	}
	drain(reqs, depth);

	if (g.expect_failure && !g.injected && !g.fails) {
		/* Not reached by the requests: a last flush may reach it. */
		issue(&reqs[0], K_FLUSH, ++issued);
		drain(reqs, depth);
	}

	qcow2_get_stats(g.img, &st);
	print_stats(&st);
	if (expect_evictions && !st.flush.flushes[QCOW2_FLUSH_EVICTION])
		fail("expected eviction write-backs (--expect-evictions), saw none");
	if (!g.expect_failure && !g.fails) {
		verify_all(g.img, "final read-back");
		if (qcow2_has_dirty_metadata(g.img))
			printf("random_io: closing with dirty metadata (written back by close)\n");
	}
	qcow2_close(g.img, NULL);
	g.img = NULL;
	if (!g.expect_failure && !g.fails && reopen) {
		struct qcow2_image *ro;
		struct qcow2_open_opts roo = oo;
		roo.flags &= ~QCOW2_OPEN_RDWR;
		ret = qcow2_open(g.ctx, g.image, &roo, &ro, &err);
		if (ret < 0) {
			fail("reopen after close: %s", err.msg);
		} else {
			struct qcow2_info ri;
			qcow2_get_info(ro, &ri);
			if (ri.dirty)
				fail("the image is marked dirty after a clean close");
			verify_all(ro, "read-back after reopen");
			qcow2_close(ro, NULL);
		}
	}
	qcow2_ctx_free(g.ctx);
	for (int i = 0; i < depth; i++) {
		free(reqs[i].buf);
		free(reqs[i].expect);
	}
	free(reqs);
	close(g.model);
	if (g.marks)
		fclose(g.marks);
	if (fo.log_fd >= 0)
		close(fo.log_fd);
	if (g.fails) {
		fprintf(stderr, "random_io: FAILED (seed %" PRIu64 ")\n", g.seed);
		return 1;
	}
	if (g.expect_failure) {
		if (!g.injected) {
			if (fo.fail_at)
				printf("random_io: the injected failure (operation %" PRIu64
				       ") was not reached: the workload has fewer operations\n",
				       fo.fail_at);
			else
				printf("random_io: no request failed with %s\n",
				       strerror(g.fail_errno));
			return 3;
		}
		printf("random_io: ok: the expected %s surfaced\n",
		       strerror(g.fail_errno));
		return 0;
	}
	printf("random_io: ok: %" PRIu64 " requests, image equals the model\n", issued);
	return 0;
}
