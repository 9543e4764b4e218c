/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * fault_model: a seeded workload that keeps going after injected IO errors,
 * judged against a model of what every guest sector may legally hold
 * (issue 11; in the spirit of SQLite's IO-error tests).
 *
 *   fault_model [options] FRESH WORKDIR
 *
 * FRESH is an empty version 3 qcow2 image without a backing file (made by
 * qemu-img); it is not modified. In WORKDIR:
 *
 *   start.qcow2  FRESH after a prefill (plain sync context, no fault): about
 *                half the disk written, some of it as compressed clusters,
 *                flushed and closed: the image every crash state starts from
 *   img.qcow2    start.qcow2, then the workload through the fault backend
 *                (with a log of every completed write and fdatasync), closed,
 *                reopened read-write on a plain context (a dirty lazy-refcounts
 *                image is repaired there) and checked, sector by sector
 *   ours.raw     what that reopen read (the caller compares qemu's reading)
 *   writes.log   the fault backend's log
 *
 * Workload: writes of random length and offset, write-zeroes with and
 * without QCOW2_ZERO_UNMAP, discards, compressed cluster writes
 * (--compressed), verifying reads, client flushes (some concurrent with other
 * requests, some issued alone), timer write-backs (qcow2_writeback) and now
 * and then a resize that grows the disk; up to --depth requests in flight,
 * never overlapping one another. Every 512-byte sector written carries a
 * header ("QFMW" for writes, "QFMC" for compressed clusters, whose sectors
 * are otherwise one repeated byte so that they compress; then the request
 * id, the sector number and the seed), so the content of a sector names the
 * request that put it there; zeros mean never written, zeroed or discarded.
 *
 * The model keeps, for every sector, the list of mutating requests that
 * covered it (in issue order; requests to a sector never overlap, so issue
 * order is completion order), and for every request its kind, outcome and
 * when it was issued and completed (an event counter, and the log's size).
 * Candidate sets are not stored: they are read off that history, so they
 * collapse by themselves when a request succeeds. What a sector may hold,
 * seen at a given point:
 *
 *   reads now     the content of the last request that succeeded, or of any
 *                 request after it (these all failed): a failed request
 *                 leaves each sector it touched old or new, and both stay
 *                 possible;
 *   after reopen  the content of the last request acknowledged before the
 *                 last successful client flush was issued (the settled
 *                 one), or of any later request of the sector's history
 *                 (acknowledged after that, failed, or in flight when the
 *                 flush was issued); the prefill counts as flushed;
 *   crash state   (the log replayed up to a cut point) the same, where the
 *                 flush is the last successful one whose completion (its
 *                 callback) precedes the cut, and only requests issued
 *                 before the cut count.
 *
 * The disk size is modelled the same way (a resize is a request on the
 * size; one that failed with the new size installed counts as done). A
 * failed flush promises nothing; qcow2_writeback() promises nothing;
 * qcow2_close() returns the result of its final flush and counts as a flush
 * (when it returns 0, everything acknowledged before it must be durable).
 *
 * Faults (--fail-at N, --fail-errno, --fail-ops r,w,f,a, --fail-persist):
 * the Nth operation of the selected kinds fails (transient), or every one
 * from the Nth on (persistent). The workload keeps going: failed flushes
 * are retried (up to 3 times), writes, zeroes and discards continue, reads
 * are checked. Every request must succeed or fail with the injected errno;
 * with a transient fault the final flush (retried) must succeed (except
 * for fdatasync faults with --buffered: the page cache may have dropped the
 * writes, and an engine may then refuse every later flush, as QEMU does).
 *
 * Crash replay (--cuts K, default 6): the log is replayed onto a copy of
 * start.qcow2 up to K cut points picked among the points inside each client
 * flush, right before its last fdatasync and right after its completion,
 * plus two random points; each as "all" (every write up to the cut landed),
 * "lost" (the writes after the last fdatasync before the cut dropped) and
 * "half" (a seeded half of those dropped). Each state is opened read-only
 * and every sector judged against the crash-state set; with --cut-check,
 * qemu-img check must find no corruption (leaks are allowed; a dirty image
 * is first repaired by our read-write open, as QEMU would repair it).
 *
 * Options:
 *   --seed N --ops N (200) --depth N (1..16, 6) --max-len BYTES (128k)
 *   --l2-cache BYTES --l2-slice BYTES
 *   --buffered               the workload through the page cache (default
 *                            O_DIRECT; judging always uses the page cache)
 *   --compressed             compressed cluster writes (and in the prefill)
 *   --no-resize              no resizes
 *   --fail-at N --fail-errno EIO|ENOSPC|NUM --fail-ops r,w,f,a --fail-persist
 *   --probe                  workload only (no reopen, no replay); exit 3
 *                            when the injected error never surfaced
 *   --cuts K --cut-check     crash replay
 *   --trace                  every request on stderr
 *   --features               print "fallocate" when QCOW2_FAULT_FALLOCATE
 *                            exists, then exit
 *
 * Output ends with "counts: writes W fsyncs F punches P" (from the log;
 * without a fault, the operations of each kind) and "targets:" /
 * "targets2:", the write operations worth failing first (see
 * print_counts()).
 * Exit: 0 pass, 1 failure (with the sector, what it holds, what was allowed,
 * its history and the command to replay), 2 usage, 3 (--probe) the fault
 * never surfaced.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "qcow2.h"
#include "qcow2_fault.h"

extern char **environ;

#define SECTOR 512u
#define MAX_DEPTH 16
#define MAX_RESIZES 3
#define FLUSH_RETRIES 3
#define MAX_REPORTS 4

enum kind {
	K_WRITE, K_ZERO, K_DISCARD, K_COMPRESSED, K_TRUNCATE, /* mutating */
	K_READ, K_FLUSH, K_WRITEBACK, K_NKINDS
};

static const char *const kind_name[K_NKINDS] = {
	"write", "write-zeroes", "discard", "compressed write", "resize",
	"read", "flush", "writeback",
};

enum status { ST_INFLIGHT, ST_OK, ST_FAILED };

static const char *const status_name[] = { "in flight", "ok", "failed" };

/* Every request ever issued, by id (1-based; prefill included). */
struct rec {
	uint8_t kind, status;
	bool prefill;
	bool close;              /* K_FLUSH: qcow2_close()'s flush */
	unsigned flags;
	int ret;
	uint64_t off, len;       /* K_TRUNCATE: off = old size, len = new size */
	uint64_t lo, hi;         /* sectors it covers (discard: whole clusters) */
	uint64_t issue_seq, done_seq;
	uint64_t issue_log, done_log; /* log bytes then */
};

/* Per sector: ids of the mutating requests that covered it, in order. */
struct hist {
	uint32_t *ids;
	uint32_t n, cap;
};

/* One in-flight request. */
struct slot {
	bool busy, done;
	int ret;
	char msg[512];   /* the failed request's own message */
	uint32_t id;
	uint64_t lo, hi; /* bytes it may touch, for the overlap rule */
	uint8_t *buf;    /* max_len + cluster, aligned */
	uint8_t *zbuf;   /* compressed bytes */
};

static struct {
	const char *fresh, *dir;
	char path_start[4096], path_img[4096], path_log[4096], path_raw[4096];
	char path_state[4096], path_synced[4096], path_check[4096];
	char cmdline[8192];
	struct qcow2_ctx *ctx;
	struct qcow2_image *img;
	struct qcow2_info info;
	uint32_t cs;               /* cluster size */
	uint64_t seed;
	uint32_t seed32;
	uint64_t seq;              /* event counter: issues and completions */
	int log_fd;
	bool trace, compressed, resize, probe, cut_check, buffered;
	int cuts;
	struct qcow2_fault_opts fo;
	bool faulty;               /* a fault is configured */
	uint64_t surfaced;         /* requests failed with the injected errno */
	int fails;
	int reports;
	/* model */
	struct rec *recs;
	uint32_t nrecs, caprecs;
	struct hist *hist;
	uint64_t max_sectors;      /* the model covers this many */
	uint64_t init_size;        /* disk size of FRESH */
	uint64_t cur_size;         /* in-session size */
	struct hist size_hist;     /* resizes */
	uint64_t counts[K_NKINDS];
	unsigned resizes;
	int depth;
	uint64_t max_len;
	struct slot slots[MAX_DEPTH];
} g = { .log_fd = -1, .cuts = 6 };

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

static void die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fputs("fault_model: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(1);
}

static void fail(const char *fmt, ...)
{
	va_list ap;

	g.fails++;
	if (g.reports++ >= MAX_REPORTS * 4)
		return;
	va_start(ap, fmt);
	fputs("fault_model: FAIL: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

static void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (!p)
		die("out of memory");
	return p;
}

static void *xalloc_aligned(size_t n)
{
	void *p;

	if (posix_memalign(&p, 4096, n ? n : 4096))
		die("out of memory");
	memset(p, 0, n);
	return p;
}

static uint64_t log_bytes(void)
{
	struct stat st;

	if (g.log_fd < 0)
		return 0;
	if (fstat(g.log_fd, &st) < 0)
		die("log: %s", strerror(errno));
	return (uint64_t)st.st_size;
}

/* ---- patterns ------------------------------------------------------------- */

static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t get64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* The content request id puts into sector s (kinds that write data). */
static void fill_sector(uint8_t *p, uint64_t s, uint32_t id, bool comp)
{
	memcpy(p, comp ? "QFMC" : "QFMW", 4);
	put32(p + 4, id);
	put64(p + 8, s);
	put32(p + 16, g.seed32);
	if (comp) {
		memset(p + 20, 'a' + (int)(id % 26), SECTOR - 20);
		return;
	}
	uint64_t x = (id * 0x9e3779b97f4a7c15ull) ^ (s * 0xc2b2ae3d27d4eb4full) ^ 1;
	for (unsigned i = 20; i < SECTOR; i += 4) {
		x ^= x >> 12;
		x ^= x << 25;
		x ^= x >> 27;
		put32(p + i, (uint32_t)(x * 2685821657736338717ull >> 32));
	}
}

static bool is_zero(const uint8_t *p, size_t n)
{
	static const uint8_t z[SECTOR];

	while (n >= SECTOR) {
		if (memcmp(p, z, SECTOR))
			return false;
		p += SECTOR;
		n -= SECTOR;
	}
	return !n || !memcmp(p, z, n);
}

/* What a sector holds, decoded. */
static void describe(const uint8_t *p, uint64_t s, char *out, size_t n)
{
	if (is_zero(p, SECTOR)) {
		snprintf(out, n, "zeros");
		return;
	}
	if (!memcmp(p, "QFMW", 4) || !memcmp(p, "QFMC", 4)) {
		bool comp = p[3] == 'C';
		uint32_t id = get32(p + 4), seed = get32(p + 16);
		uint64_t sec = get64(p + 8);
		uint8_t want[SECTOR];
		fill_sector(want, sec, id, comp);
		snprintf(out, n, "%s data of request #%u for sector %" PRIu64 "%s%s%s",
			 comp ? "compressed-cluster" : "write", id, sec,
			 sec == s ? "" : " (another sector)",
			 seed == g.seed32 ? "" : " of another run",
			 seed == g.seed32 && memcmp(p, want, SECTOR) ? " (damaged)" : "");
		return;
	}
	snprintf(out, n, "other data (%02x %02x %02x %02x %02x %02x %02x %02x ...)",
		 p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]);
}

/* ---- model ---------------------------------------------------------------- */

static uint32_t new_rec(enum kind kind, uint64_t off, uint64_t len, unsigned flags)
{
	struct rec *r;

	if (g.nrecs + 1 >= g.caprecs) {
		g.caprecs = g.caprecs ? g.caprecs * 2 : 1024;
		g.recs = realloc(g.recs, g.caprecs * sizeof(*g.recs));
		if (!g.recs)
			die("out of memory");
		if (!g.nrecs)
			memset(&g.recs[0], 0, sizeof(g.recs[0])); /* id 0: none */
	}
	r = &g.recs[++g.nrecs];
	memset(r, 0, sizeof(*r));
	r->kind = (uint8_t)kind;
	r->status = ST_INFLIGHT;
	r->off = off;
	r->len = len;
	r->flags = flags;
	r->issue_seq = ++g.seq;
	r->issue_log = log_bytes();
	r->done_seq = UINT64_MAX;
	r->done_log = UINT64_MAX;
	return g.nrecs;
}

static void hist_push(struct hist *h, uint32_t id)
{
	if (h->n == h->cap) {
		h->cap = h->cap ? h->cap * 2 : 4;
		h->ids = realloc(h->ids, h->cap * sizeof(*h->ids));
		if (!h->ids)
			die("out of memory");
	}
	h->ids[h->n++] = id;
}

/* Sectors a mutating request covers: a discard only whole clusters (the
 * last one may end at the disk's end). */
static void cover(uint32_t id)
{
	struct rec *r = &g.recs[id];
	uint64_t lo = r->off, hi = r->off + r->len;

	if (r->kind == K_TRUNCATE) {
		hist_push(&g.size_hist, id);
		return;
	}
	if (r->kind == K_DISCARD) {
		lo = (lo + g.cs - 1) / g.cs * g.cs;
		hi = hi == g.cur_size ? hi : hi / g.cs * g.cs;
	}
	r->lo = lo / SECTOR;
	r->hi = hi > lo ? hi / SECTOR : r->lo;
	for (uint64_t s = r->lo; s < r->hi; s++)
		hist_push(&g.hist[s], id);
}

/* A point of view: which requests count. */
struct view {
	char what[160];
	uint64_t ack_seq;   /* requests acknowledged before: settled */
	uint64_t issue_seq; /* only requests issued before */
	uint64_t issue_log; /* ... with fewer log bytes then (crash cuts) */
	uint32_t flush_id;  /* the flush that settles (0: the prefill;
			     * UINT32_MAX: reads in this session) */
};

static bool visible(const struct rec *r, const struct view *v)
{
	return r->issue_seq < v->issue_seq && r->issue_log < v->issue_log;
}

/* The settled request of a history (0: none, the initial zeros), and the
 * index from which later requests are candidates. */
static uint32_t settled(const struct hist *h, const struct view *v, uint32_t *from)
{
	for (uint32_t i = h->n; i-- > 0;) {
		const struct rec *r = &g.recs[h->ids[i]];
		if (r->status == ST_OK && r->done_seq < v->ack_seq) {
			*from = i + 1;
			return h->ids[i];
		}
	}
	*from = 0;
	return 0;
}

/* Does content got (one sector) come from request id (0: initial)? */
static bool holds(uint32_t id, uint64_t s, const uint8_t *got)
{
	const struct rec *r = &g.recs[id];
	uint8_t want[SECTOR];

	if (!id || r->kind == K_ZERO || r->kind == K_DISCARD)
		return is_zero(got, SECTOR);
	if (get32(got + 4) != id)
		return false;
	fill_sector(want, s, id, r->kind == K_COMPRESSED);
	return !memcmp(got, want, SECTOR);
}

static bool sector_legal(uint64_t s, const struct view *v, const uint8_t *got)
{
	const struct hist *h = &g.hist[s];
	uint32_t from, base = settled(h, v, &from);

	if (holds(base, s, got))
		return true;
	for (uint32_t i = from; i < h->n; i++) {
		const struct rec *r = &g.recs[h->ids[i]];
		if (visible(r, v) && holds(h->ids[i], s, got))
			return true;
	}
	return false;
}

static int rec_desc(uint32_t id, char *out, size_t n)
{
	const struct rec *r = &g.recs[id];

	if (!id)
		return snprintf(out, n, "zeros (initial)");
	if (r->close)
		return snprintf(out, n, "close #%u (%s%s%s)", id, status_name[r->status],
				r->ret ? ": " : "", r->ret ? strerror(-r->ret) : "");
	if (r->kind == K_TRUNCATE)
		return snprintf(out, n, "resize #%u %" PRIu64 " -> %" PRIu64 " (%s%s%s)",
				id, r->off, r->len, status_name[r->status],
				r->ret ? ": " : "", r->ret ? strerror(-r->ret) : "");
	return snprintf(out, n, "%s%s #%u %" PRIu64 "+%" PRIu64 " (%s%s%s%s)",
			r->prefill ? "prefill " : "", kind_name[r->kind], id, r->off,
			r->len, status_name[r->status], r->ret ? ": " : "",
			r->ret ? strerror(-r->ret) : "",
			r->kind == K_ZERO && (r->flags & QCOW2_ZERO_UNMAP) ? ", unmap" : "");
}

static void print_flushes(void)
{
	unsigned shown = 0;

	fprintf(stderr, "  last client flushes:");
	for (uint32_t id = g.nrecs; id > 0 && shown < 6; id--) {
		const struct rec *r = &g.recs[id];
		if (r->kind != K_FLUSH)
			continue;
		fprintf(stderr, " %s#%u %s (log %" PRIu64 "..%" PRIu64 ")",
			r->close ? "close " : "", id, status_name[r->status], r->issue_log,
			r->done_log == UINT64_MAX ? 0 : r->done_log);
		shown++;
	}
	fputc('\n', stderr);
}

static void explain(uint64_t s, const struct view *v, const uint8_t *got)
{
	const struct hist *h = &g.hist[s];
	uint32_t from, base = settled(h, v, &from);
	char d[256], rd[256];

	fail("%s: sector %" PRIu64 " (byte %" PRIu64 ") holds something it may not",
	     v->what, s, s * SECTOR);
	if (g.reports > MAX_REPORTS)
		return;
	describe(got, s, d, sizeof(d));
	fprintf(stderr, "  it holds: %s\n", d);
	rec_desc(base, rd, sizeof(rd));
	fprintf(stderr, "  allowed: %s", rd);
	for (uint32_t i = from; i < h->n; i++)
		if (visible(&g.recs[h->ids[i]], v)) {
			rec_desc(h->ids[i], rd, sizeof(rd));
			fprintf(stderr, "; %s", rd);
		}
	fputc('\n', stderr);
	if (v->flush_id == UINT32_MAX)
		fprintf(stderr, "  (in this session: settled by the last request that "
			"succeeded); history of the sector:\n");
	else if (v->flush_id)
		fprintf(stderr, "  settled by flush #%u; history of the sector:\n",
			v->flush_id);
	else
		fprintf(stderr, "  settled by the prefill (no successful flush "
			"before); history of the sector:\n");
	for (uint32_t i = h->n > 12 ? h->n - 12 : 0; i < h->n; i++) {
		const struct rec *r = &g.recs[h->ids[i]];
		rec_desc(h->ids[i], rd, sizeof(rd));
		fprintf(stderr, "    %s, issued at event %" PRIu64 " (log %" PRIu64
			"), done at %" PRIu64 " (log %" PRIu64 ")\n", rd, r->issue_seq,
			r->issue_log, r->done_seq == UINT64_MAX ? 0 : r->done_seq,
			r->done_log == UINT64_MAX ? 0 : r->done_log);
	}
	print_flushes();
}

/* The sizes the disk may have (same rules as a sector). */
static bool size_legal(uint64_t size, const struct view *v, char *allowed, size_t n)
{
	uint32_t from, base = settled(&g.size_hist, v, &from);
	uint64_t want = base ? g.recs[base].len : g.init_size;
	bool ok = size == want;
	int k = snprintf(allowed, n, "%" PRIu64, want);

	for (uint32_t i = from; i < g.size_hist.n; i++) {
		const struct rec *r = &g.recs[g.size_hist.ids[i]];
		if (!visible(r, v))
			continue;
		ok |= size == r->len;
		if (k > 0 && (size_t)k < n)
			k += snprintf(allowed + k, n - (size_t)k, " or %" PRIu64, r->len);
	}
	return ok;
}

/* Judge a buffer read at guest offset off. Returns the bad sectors. */
static uint64_t judge(const struct view *v, uint64_t off, const uint8_t *buf,
		      uint64_t len)
{
	uint64_t bad = 0;

	for (uint64_t k = 0; k < len; k += SECTOR) {
		uint64_t s = (off + k) / SECTOR;
		if (sector_legal(s, v, buf + k))
			continue;
		if (!bad)
			explain(s, v, buf + k);
		bad++;
	}
	if (bad > 1)
		fprintf(stderr, "  (%" PRIu64 " bad sectors in %" PRIu64 "+%" PRIu64
			" in all)\n", bad, off, len);
	return bad;
}

/* The last successful client flush whose completion the log had reached
 * (UINT64_MAX: any), as a view. */
static void view_durable(struct view *v, uint64_t log_limit)
{
	uint64_t best_seq = 0;

	/* The prefill was flushed and closed before the workload. */
	v->flush_id = 0;
	v->ack_seq = 0;
	for (uint32_t id = 1; id <= g.nrecs; id++) {
		const struct rec *r = &g.recs[id];
		if (r->prefill && r->done_seq + 1 > best_seq)
			best_seq = r->done_seq + 1;
	}
	v->ack_seq = best_seq;
	for (uint32_t id = 1; id <= g.nrecs; id++) {
		const struct rec *r = &g.recs[id];
		if (r->kind == K_FLUSH && r->status == ST_OK &&
		    r->done_log <= log_limit && r->issue_seq > v->ack_seq) {
			v->ack_seq = r->issue_seq;
			v->flush_id = id;
		}
	}
	v->issue_seq = UINT64_MAX;
	v->issue_log = log_limit == UINT64_MAX ? UINT64_MAX : log_limit;
}

/* ---- requests ----------------------------------------------------------------- */

static void trace_issue(uint32_t id)
{
	const struct rec *r = &g.recs[id];

	if (g.trace)
		fprintf(stderr, "trace: issue #%u %s %" PRIu64 "+%" PRIu64 "%s log %"
			PRIu64 "\n", id, kind_name[r->kind], r->off, r->len,
			r->flags ? " unmap" : "", r->issue_log);
}

static void on_done(void *opaque, int ret, const char *error)
{
	struct slot *sl = opaque;

	sl->done = true;
	sl->ret = ret;
	sl->msg[0] = '\0';
	if ((ret < 0) != (error != NULL))
		fail("a request completed with %d and %s message", ret,
		     error ? "a" : "no");
	if (error)
		snprintf(sl->msg, sizeof(sl->msg), "%s", error);
}

static bool errno_ok(int ret)
{
	return g.faulty && ret == -(g.fo.fail_errno ? g.fo.fail_errno : EIO);
}

static void verify_read(struct slot *sl, struct rec *r)
{
	struct view v;

	snprintf(v.what, sizeof(v.what), "read #%u (%" PRIu64 "+%" PRIu64 ")",
		 sl->id, r->off, r->len);
	v.ack_seq = r->done_seq;
	v.issue_seq = r->done_seq;
	v.issue_log = UINT64_MAX;
	v.flush_id = UINT32_MAX; /* in session */
	judge(&v, r->off, sl->buf, r->len);
}

/* A request completed (or was refused at issue). */
static void finish(struct slot *sl)
{
	struct rec *r = &g.recs[sl->id];

	sl->busy = false;
	r->done_seq = ++g.seq;
	r->done_log = log_bytes();
	r->ret = sl->ret;
	r->status = sl->ret < 0 ? ST_FAILED : ST_OK;
	if (g.trace)
		fprintf(stderr, "trace: done  #%u %s: %s log %" PRIu64 "\n", sl->id,
			kind_name[r->kind], sl->ret ? strerror(-sl->ret) : "ok",
			r->done_log);
	if (sl->ret < 0) {
		if (!sl->msg[0]) {
			char d[256];
			rec_desc(sl->id, d, sizeof(d));
			fail("%s failed with %s but an empty message", d,
			     strerror(-sl->ret));
		} else if (errno_ok(sl->ret)) {
			g.surfaced++;
		} else {
			char d[256];
			rec_desc(sl->id, d, sizeof(d));
			fail("%s failed with %s (%s)%s", d, strerror(-sl->ret),
			     sl->msg,
			     g.faulty ? "; only the injected error may surface" :
					"; no fault was injected");
		}
	}
	if (r->kind == K_TRUNCATE) {
		struct qcow2_info info;
		qcow2_get_info(g.img, &info);
		/* The new size may be installed although the request failed
		 * (zeroing the new area failed): then the in-memory state has
		 * it and a later flush must keep it. */
		if (sl->ret < 0 && info.virtual_size == r->len)
			r->status = ST_OK;
		if (info.virtual_size != r->off && info.virtual_size != r->len)
			fail("after resize #%u (%" PRIu64 " -> %" PRIu64 ") the disk has %"
			     PRIu64 " bytes", sl->id, r->off, r->len, info.virtual_size);
		g.cur_size = info.virtual_size;
	}
	if (r->kind == K_READ && sl->ret == 0)
		verify_read(sl, r);
}

static int busy_count(void)
{
	int c = 0;

	for (int i = 0; i < g.depth; i++)
		c += g.slots[i].busy;
	return c;
}

static void reap(bool wait)
{
	qcow2_ctx_process(g.ctx, wait);
	for (int i = 0; i < g.depth; i++)
		if (g.slots[i].busy && g.slots[i].done)
			finish(&g.slots[i]);
	if (busy_count() && qcow2_ctx_inflight(g.ctx) == 0) {
		qcow2_ctx_process(g.ctx, false);
		for (int i = 0; i < g.depth; i++)
			if (g.slots[i].busy && g.slots[i].done)
				finish(&g.slots[i]);
		if (busy_count() && qcow2_ctx_inflight(g.ctx) == 0) {
			for (int i = 0; i < g.depth; i++)
				if (g.slots[i].busy) {
					char d[256];
					rec_desc(g.slots[i].id, d, sizeof(d));
					fprintf(stderr, "fault_model: %s never completed\n", d);
				}
			fprintf(stderr, "replay: %s\n", g.cmdline);
			die("FAIL: requests pending with no IO in flight: a hang");
		}
	}
}

static void drain(void)
{
	while (busy_count())
		reap(true);
}

static struct slot *free_slot(void)
{
	for (int i = 0; i < g.depth; i++)
		if (!g.slots[i].busy)
			return &g.slots[i];
	return NULL;
}

static bool overlaps(uint64_t lo, uint64_t hi)
{
	for (int i = 0; i < g.depth; i++)
		if (g.slots[i].busy && g.slots[i].hi > g.slots[i].lo &&
		    lo < g.slots[i].hi && g.slots[i].lo < hi)
			return true;
	return false;
}

/* Issue a request on slot sl. Returns its id. */
static uint32_t issue(struct slot *sl, enum kind kind, uint64_t off, uint64_t len,
		      unsigned flags)
{
	uint32_t id;
	int ret = 0;

	/* Data first: the log position is taken at issue, before any IO. */
	if (kind == K_WRITE || kind == K_COMPRESSED) {
		id = g.nrecs + 1;
		for (uint64_t k = 0; k < len; k += SECTOR)
			fill_sector(sl->buf + k, (off + k) / SECTOR, id, kind == K_COMPRESSED);
	}
	id = new_rec(kind, off, len, flags);
	if (kind <= K_TRUNCATE)
		cover(id);
	g.counts[kind]++;
	trace_issue(id);
	sl->busy = true;
	sl->done = false;
	sl->ret = 0;
	sl->id = id;
	sl->lo = off;
	sl->hi = off + len;
	if (kind == K_FLUSH || kind == K_WRITEBACK || kind == K_TRUNCATE)
		sl->lo = sl->hi = 0;
	switch (kind) {
	case K_WRITE:
		ret = qcow2_write(g.img, off, sl->buf, len, on_done, sl);
		break;
	case K_ZERO:
		ret = qcow2_write_zeroes(g.img, off, len, flags, on_done, sl);
		break;
	case K_DISCARD:
		ret = qcow2_discard(g.img, off, len, on_done, sl);
		break;
	case K_COMPRESSED: {
		size_t clen = 0;
		ret = qcow2_compress(g.info.compression_type, sl->buf, len, sl->zbuf,
				     len - 1, &clen);
		if (ret == 0)
			ret = qcow2_write_compressed(g.img, off, sl->zbuf, clen, on_done, sl);
		else if (ret == -ENOSPC) /* does not compress: stored plainly */
			ret = qcow2_write(g.img, off, sl->buf, len, on_done, sl);
		break;
	}
	case K_TRUNCATE:
		ret = qcow2_truncate(g.img, len, on_done, sl);
		break;
	case K_READ:
		memset(sl->buf, 0xee, len);
		ret = qcow2_read(g.img, off, sl->buf, len, on_done, sl);
		break;
	case K_FLUSH:
		ret = qcow2_flush(g.img, on_done, sl);
		break;
	case K_WRITEBACK:
		ret = qcow2_writeback(g.img, on_done, sl);
		break;
	default:
		break;
	}
	if (ret < 0) {
		/* Refused at once: no callback will run; the reason is
		 * the image's last message. */
		sl->done = true;
		sl->ret = ret;
		snprintf(sl->msg, sizeof(sl->msg), "%s", qcow2_last_error(g.img));
		finish(sl);
	}
	return id;
}

/* Pick a guest range: biased to small, cluster-sized and hot ranges. */
static void pick_range(uint64_t *off, uint64_t *len)
{
	uint64_t size = g.cur_size, cs = g.cs, sectors = size / SECTOR, l, o;
	uint64_t lc = rnd_below(10), oc = rnd_below(4);

	if (lc < 4)
		l = (1 + rnd_below(16)) * SECTOR;
	else if (lc < 7)
		l = (1 + rnd_below(cs / SECTOR)) * SECTOR;
	else if (lc < 8)
		l = cs * (1 + rnd_below(4));
	else
		l = (1 + rnd_below(g.max_len / SECTOR)) * SECTOR;
	if (l > g.max_len)
		l = g.max_len;
	if (oc == 0)
		o = rnd_below(size / cs) * cs;
	else if (oc == 1)
		o = rnd_below(sectors / 8 + 1) * SECTOR;
	else
		o = rnd_below(sectors) * SECTOR;
	if (o >= size)
		o = (sectors - 1) * SECTOR;
	if (o + l > size)
		l = size - o;
	*off = o;
	*len = l;
}

/* A compressed write: a whole cluster inside the disk (hot: the first few
 * clusters, so that host clusters are freed and reused). */
static bool pick_cluster(uint64_t *off)
{
	uint64_t n = g.cur_size / g.cs;

	if (!n)
		return false;
	*off = (rnd_below(3) ? rnd_below(n < 8 ? n : 8) : rnd_below(n)) * g.cs;
	return true;
}

/* A flush alone (nothing else in flight), retried when it fails. */
static bool barrier_flush(void)
{
	for (int t = 0; t <= FLUSH_RETRIES; t++) {
		struct slot *sl = &g.slots[0];
		drain();
		issue(sl, K_FLUSH, 0, 0, 0);
		drain();
		if (g.recs[sl->id].status == ST_OK)
			return true;
	}
	return false;
}

/* ---- files ------------------------------------------------------------------ */

static void xpwrite(int fd, const void *buf, uint64_t len, uint64_t off, const char *what)
{
	const uint8_t *p = buf;

	while (len) {
		ssize_t r = pwrite(fd, p, len, (off_t)off);
		if (r <= 0)
			die("%s: write at %" PRIu64 ": %s", what, off, strerror(errno));
		p += r;
		off += (uint64_t)r;
		len -= (uint64_t)r;
	}
}

/* Copy a file, leaving all-zero blocks as holes. */
static void copy_file(const char *from, const char *to)
{
	int in = open(from, O_RDONLY | O_CLOEXEC), out;
	uint8_t *b = xmalloc(1 << 20);
	struct stat st;
	uint64_t off = 0;

	if (in < 0 || fstat(in, &st) < 0)
		die("%s: %s", from, strerror(errno));
	unlink(to);
	out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (out < 0)
		die("%s: %s", to, strerror(errno));
	for (;;) {
		ssize_t r = pread(in, b, 1 << 20, (off_t)off), k = 0;
		if (r < 0)
			die("%s: %s", from, strerror(errno));
		if (r == 0)
			break;
		while (k < r) {
			ssize_t e;
			size_t n = (size_t)(r - k) < 4096 ? (size_t)(r - k) : 4096;
			if (is_zero(b + k, n)) {
				k += (ssize_t)n;
				continue;
			}
			/* a run of blocks that are not all zeros */
			for (e = k + (ssize_t)n; e < r; e += 4096) {
				n = (size_t)(r - e) < 4096 ? (size_t)(r - e) : 4096;
				if (is_zero(b + e, n))
					break;
			}
			if (e > r)
				e = r;
			xpwrite(out, b + k, (uint64_t)(e - k), off + (uint64_t)k, to);
			k = e;
		}
		off += (uint64_t)r;
	}
	if (ftruncate(out, (off_t)st.st_size) < 0)
		die("%s: %s", to, strerror(errno));
	close(in);
	close(out);
	free(b);
}

/* qemu-img check: 0 clean, 3 leaks only. Returns the exit status. */
static int qemu_check(const char *path, const char *out)
{
	char *argv[] = { "qemu-img", "check", "-f", "qcow2", (char *)path, NULL };
	posix_spawn_file_actions_t fa;
	pid_t pid;
	int st, ret;

	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 1, out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	posix_spawn_file_actions_adddup2(&fa, 1, 2);
	ret = posix_spawnp(&pid, "qemu-img", &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	if (ret)
		die("cannot run qemu-img: %s", strerror(ret));
	if (waitpid(pid, &st, 0) < 0)
		die("waitpid: %s", strerror(errno));
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void cat_file(const char *path)
{
	FILE *f = fopen(path, "r");
	char line[512];

	if (!f)
		return;
	while (fgets(line, sizeof(line), f))
		fprintf(stderr, "  | %s", line);
	fclose(f);
}

/* ---- reading a whole image -------------------------------------------------- */

/* A plain sync context and the page cache: for the prefill and for judging
 * images after the workload (only the workload runs on the fault backend,
 * with O_DIRECT unless --buffered). */
static int open_plain(const char *path, unsigned flags, struct qcow2_ctx **ctx,
		      struct qcow2_image **img, struct qcow2_error *err)
{
	struct qcow2_ctx_opts co = { .backend = QCOW2_BACKEND_SYNC };
	struct qcow2_open_opts oo = {
		.flags = flags | QCOW2_OPEN_NO_BACKING | QCOW2_OPEN_BUFFERED
	};
	int ret;

	ret = qcow2_ctx_new(&co, ctx);
	if (ret < 0)
		die("cannot create a context: %s", strerror(-ret));
	ret = qcow2_open(*ctx, path, &oo, img, err);
	if (ret < 0) {
		qcow2_ctx_free(*ctx);
		*ctx = NULL;
	}
	return ret;
}

/* Read every sector of img and judge it; optionally dump it. Returns the
 * number of bad sectors (or of failed reads). */
static uint64_t judge_image(struct qcow2_image *img, const struct view *v,
			    const char *dump, bool reads_may_fail)
{
	struct qcow2_info info;
	uint64_t chunk = 1 << 20, bad = 0;
	uint8_t *buf = xalloc_aligned(chunk);
	int dfd = -1;
	char allowed[256];

	qcow2_get_info(img, &info);
	if (!size_legal(info.virtual_size, v, allowed, sizeof(allowed))) {
		fail("%s: the disk has %" PRIu64 " bytes; allowed: %s (settled by "
		     "%s #%u)", v->what, info.virtual_size, allowed,
		     v->flush_id == UINT32_MAX ? "this session" : "flush",
		     v->flush_id == UINT32_MAX ? 0 : v->flush_id);
		if (g.reports <= MAX_REPORTS) {
			for (uint32_t i = 0; i < g.size_hist.n; i++) {
				const struct rec *r = &g.recs[g.size_hist.ids[i]];
				char d[256];
				rec_desc(g.size_hist.ids[i], d, sizeof(d));
				fprintf(stderr, "    %s, issued at event %" PRIu64 " (log %"
					PRIu64 "), done at %" PRIu64 " (log %" PRIu64 ")\n",
					d, r->issue_seq, r->issue_log, r->done_seq, r->done_log);
			}
			print_flushes();
		}
		bad++;
	}
	if (info.virtual_size > g.max_sectors * SECTOR) {
		fail("%s: the disk has %" PRIu64 " bytes, more than it ever had",
		     v->what, info.virtual_size);
		free(buf);
		return bad + 1;
	}
	if (dump) {
		dfd = open(dump, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (dfd < 0)
			die("%s: %s", dump, strerror(errno));
	}
	for (uint64_t o = 0; o < info.virtual_size; o += chunk) {
		uint64_t n = info.virtual_size - o < chunk ? info.virtual_size - o : chunk;
		int ret = qcow2_pread(img, buf, n, o);
		if (ret < 0) {
			if (!reads_may_fail || !errno_ok(ret)) {
				fail("%s: read at %" PRIu64 "+%" PRIu64 " failed: %s (%s)",
				     v->what, o, n, strerror(-ret), qcow2_last_error(img));
				bad++;
			}
			continue;
		}
		if (dfd >= 0)
			xpwrite(dfd, buf, n, o, dump);
		bad += judge(v, o, buf, n);
	}
	if (dfd >= 0)
		close(dfd);
	free(buf);
	return bad;
}

/* ---- prefill ------------------------------------------------------------------ */

/* One prefill request: recorded in the model (as acknowledged and flushed:
 * the prefill ends with a flush and a close), and performed when img is not
 * NULL (a cached start.qcow2 already holds it). */
static void prefill_req(struct qcow2_image *img, enum kind kind, uint64_t off,
			uint64_t len, uint8_t *buf, uint8_t *zbuf)
{
	uint32_t id = g.nrecs + 1;
	int ret = 0;

	for (uint64_t k = 0; img && kind != K_ZERO && k < len; k += SECTOR)
		fill_sector(buf + k, (off + k) / SECTOR, id, kind == K_COMPRESSED);
	id = new_rec(kind, off, len, 0);
	g.recs[id].prefill = true;
	cover(id);
	if (!img) {
		ret = 0;
	} else if (kind == K_WRITE) {
		ret = qcow2_pwrite(img, buf, len, off);
	} else if (kind == K_ZERO) {
		ret = qcow2_pwrite_zeroes(img, off, len, 0);
	} else {
		size_t clen;
		ret = qcow2_compress(g.info.compression_type, buf, len, zbuf, len - 1, &clen);
		if (ret == 0) {
			struct slot sl = { 0 };
			ret = qcow2_write_compressed(img, off, zbuf, clen, on_done, &sl);
			while (ret == 0 && !sl.done)
				qcow2_ctx_process(g.ctx, true);
			if (ret == 0)
				ret = sl.ret;
		} else if (ret == -ENOSPC) {
			ret = qcow2_pwrite(img, buf, len, off);
		}
	}
	if (ret < 0)
		die("prefill: %s %" PRIu64 "+%" PRIu64 " failed: %s", kind_name[kind],
		    off, len, strerror(-ret));
	g.recs[id].status = ST_OK;
	g.recs[id].done_seq = ++g.seq;
	g.recs[id].done_log = 0;
}

/*
 * start.qcow2: FRESH with about half of the disk written (data, some
 * compressed clusters, zeroed ranges). When the disk spans several L2
 * tables, a seeded half of their ranges is left alone, so that the
 * workload allocates L2 tables (and updates the L1 table). The image
 * depends only on FRESH and the options: runs in the same WORKDIR reuse it
 * (start.stamp says which), the model is rebuilt from the seed.
 */
static void prefill(void)
{
	struct qcow2_error err;
	struct qcow2_image *img = NULL;
	uint8_t *buf = xalloc_aligned(g.max_len + g.cs);
	uint8_t *zbuf = xalloc_aligned(g.cs);
	uint64_t size = g.init_size, off = 0, region = (uint64_t)g.cs * (g.cs / 8);
	uint64_t nregions = (size + region - 1) / region, keep_one = rnd_below(nregions);
	char stamp[512], old[512] = "", path[4200];
	struct stat st;
	FILE *f;
	int ret;

	if (stat(g.fresh, &st) < 0)
		die("%s: %s", g.fresh, strerror(errno));
	snprintf(stamp, sizeof(stamp), "fault_model prefill 2: seed %" PRIu64
		 " max-len %" PRIu64 " compressed %d fresh %jd bytes, mtime %jd.%09ld\n",
		 g.seed, g.max_len, g.compressed, (intmax_t)st.st_size,
		 (intmax_t)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
	snprintf(path, sizeof(path), "%s/start.stamp", g.dir);
	f = fopen(path, "r");
	if (f) {
		if (!fgets(old, sizeof(old), f))
			old[0] = 0;
		fclose(f);
	}
	if (strcmp(old, stamp) || access(g.path_start, R_OK)) {
		unlink(path);
		copy_file(g.fresh, g.path_start);
		ret = open_plain(g.path_start, QCOW2_OPEN_RDWR, &g.ctx, &img, &err);
		if (ret < 0)
			die("%s: %s", g.path_start, err.msg);
	}
	while (off < size) {
		uint64_t len = (1 + rnd_below(g.max_len / SECTOR)) * SECTOR;
		uint64_t r = off / region;
		if (len > size - off)
			len = size - off;
		if (nregions > 1 && r != keep_one &&
		    ((r * 0x9e3779b97f4a7c15ull) ^ g.seed) % 2) {
			off = (r + 1) * region; /* this L2 table's range stays empty */
			continue;
		}
		if (g.compressed && off % g.cs == 0 && off + g.cs <= size &&
		    rnd_below(3) == 0) {
			prefill_req(img, K_COMPRESSED, off, g.cs, buf, zbuf);
			len = g.cs;
		} else if (rnd_below(2)) {
			prefill_req(img, rnd_below(8) ? K_WRITE : K_ZERO, off, len, buf, zbuf);
		}
		off += len;
	}
	if (img) {
		ret = qcow2_fsync(img);
		if (ret < 0)
			die("prefill: flush failed: %s", strerror(-ret));
		ret = qcow2_close(img, NULL);
		if (ret < 0)
			die("prefill: close failed: %s", strerror(-ret));
		qcow2_ctx_free(g.ctx);
		g.ctx = NULL;
		f = fopen(path, "w");
		if (!f || fputs(stamp, f) < 0 || fclose(f))
			die("%s: %s", path, strerror(errno));
	}
	free(buf);
	free(zbuf);
}

/* ---- the workload --------------------------------------------------------------- */

static void workload(uint64_t ops)
{
	uint64_t issued = 0;

	while (issued < ops) {
		struct slot *sl = free_slot();
		uint64_t choice = rnd_below(100), off = 0, len = 0;
		enum kind kind;
		unsigned flags = 0;

		if (!sl) {
			reap(true);
			continue;
		}
		if (choice < 3) {
			issued++;
			barrier_flush();
			continue;
		} else if (choice < 4 && g.resize && g.resizes < MAX_RESIZES) {
			uint64_t grow = (1 + rnd_below(4 * g.cs / SECTOR)) * SECTOR;
			if (g.cur_size + grow > g.max_sectors * SECTOR)
				continue;
			issued++;
			g.resizes++;
			drain();
			issue(&g.slots[0], K_TRUNCATE, g.cur_size, g.cur_size + grow, 0);
			drain();
			continue;
		} else if (choice < 10) {
			kind = K_FLUSH;
		} else if (choice < 13) {
			kind = K_WRITEBACK;
		} else if (choice < 48) {
			kind = K_WRITE;
		} else if (choice < 56) {
			kind = K_ZERO;
			flags = rnd_below(2) ? QCOW2_ZERO_UNMAP : 0;
		} else if (choice < 64) {
			kind = K_DISCARD;
		} else if (choice < 74) {
			kind = g.compressed ? K_COMPRESSED : K_WRITE;
		} else {
			kind = K_READ;
		}
		if (kind == K_COMPRESSED) {
			int tries = 0;
			do {
				if (!pick_cluster(&off))
					break;
				len = g.cs;
			} while (overlaps(off, off + len) && ++tries < 8);
			if (!len || tries == 8) {
				reap(true);
				continue;
			}
		} else if (kind != K_FLUSH && kind != K_WRITEBACK) {
			int tries = 0;
			do {
				pick_range(&off, &len);
			} while (overlaps(off, off + len) && ++tries < 8);
			if (tries == 8) {
				reap(true);
				continue;
			}
		}
		issued++;
		issue(sl, kind, off, len, flags);
		if (busy_count() == g.depth || rnd_below(4) == 0)
			reap(busy_count() == g.depth);
	}
	drain();
}

/* Failed client flushes are retried: when flushes failed since the last
 * look, a barrier flush follows (itself retried up to FLUSH_RETRIES times).
 * Called between rounds of the workload. */
static unsigned flush_failures_seen;

static void retry_failed_flushes(void)
{
	unsigned failed = 0;

	for (uint32_t id = 1; id <= g.nrecs; id++)
		if (g.recs[id].kind == K_FLUSH && g.recs[id].status == ST_FAILED)
			failed++;
	if (failed > flush_failures_seen) {
		flush_failures_seen = failed;
		barrier_flush();
	}
}

/* ---- crash replay -------------------------------------------------------------------- */

struct logrec {
	uint32_t type;
	uint64_t off, len;
	const uint8_t *data;
	uint64_t end; /* log bytes after it */
};

static struct {
	uint8_t *bytes;
	uint64_t size;
	struct logrec *r;
	uint64_t n;
} lg;

static void read_log(void)
{
	int fd = open(g.path_log, O_RDONLY | O_CLOEXEC);
	struct stat st;
	uint64_t pos = 0, cap = 0;

	if (fd < 0 || fstat(fd, &st) < 0)
		die("%s: %s", g.path_log, strerror(errno));
	lg.size = (uint64_t)st.st_size;
	lg.bytes = xmalloc(lg.size);
	for (uint64_t o = 0; o < lg.size;) {
		ssize_t r = pread(fd, lg.bytes + o, lg.size - o, (off_t)o);
		if (r <= 0)
			die("%s: %s", g.path_log, strerror(errno));
		o += (uint64_t)r;
	}
	close(fd);
	while (pos + sizeof(struct qcow2_fault_record) <= lg.size) {
		struct qcow2_fault_record rec;
		memcpy(&rec, lg.bytes + pos, sizeof(rec));
		pos += sizeof(rec);
		if (rec.type != QCOW2_FAULT_REC_WRITE && rec.type != QCOW2_FAULT_REC_FSYNC)
			die("log: bad record type %u at byte %" PRIu64, rec.type,
			    pos - sizeof(rec));
		if (lg.n == cap) {
			cap = cap ? cap * 2 : 1024;
			lg.r = realloc(lg.r, cap * sizeof(*lg.r));
			if (!lg.r)
				die("out of memory");
		}
		lg.r[lg.n].type = rec.type;
		lg.r[lg.n].off = rec.offset;
		lg.r[lg.n].len = rec.type == QCOW2_FAULT_REC_WRITE ? rec.len : 0;
		lg.r[lg.n].data = lg.bytes + pos;
		pos += lg.r[lg.n].len;
		if (pos > lg.size)
			die("log: truncated record");
		lg.r[lg.n].end = pos;
		lg.n++;
	}
	if (pos != lg.size)
		die("log: %" PRIu64 " trailing bytes", lg.size - pos);
}

/* The state file is kept equal to the synced one except for the records
 * applied since the last reset (their ranges are listed). */
static struct {
	uint64_t *off, *len;
	size_t n, cap;
} delta;

static void apply(int fd, uint64_t from, uint64_t to, bool half, uint64_t salt,
		  bool track)
{
	for (uint64_t i = from; i < to; i++) {
		if (lg.r[i].type != QCOW2_FAULT_REC_WRITE)
			continue;
		if (half && ((i * 0x9e3779b97f4a7c15ull + salt) >> 33) % 2)
			continue;
		xpwrite(fd, lg.r[i].data, lg.r[i].len, lg.r[i].off, "state");
		if (!track)
			continue;
		if (delta.n == delta.cap) {
			delta.cap = delta.cap ? delta.cap * 2 : 256;
			delta.off = realloc(delta.off, delta.cap * sizeof(*delta.off));
			delta.len = realloc(delta.len, delta.cap * sizeof(*delta.len));
			if (!delta.off || !delta.len)
				die("out of memory");
		}
		delta.off[delta.n] = lg.r[i].off;
		delta.len[delta.n++] = lg.r[i].len;
	}
}

/* Make the state file equal to the synced one again. */
static void reset_state(int state, int synced)
{
	uint8_t *b = xmalloc(1 << 16);
	struct stat st;

	if (fstat(synced, &st) < 0)
		die("synced state: %s", strerror(errno));
	for (size_t i = 0; i < delta.n; i++)
		for (uint64_t o = delta.off[i], e = o + delta.len[i]; o < e;) {
			uint64_t n = e - o < (1 << 16) ? e - o : (1 << 16);
			ssize_t r = pread(synced, b, n, (off_t)o);
			if (r < 0)
				die("synced state: %s", strerror(errno));
			memset(b + r, 0, n - (uint64_t)r); /* past its end */
			xpwrite(state, b, n, o, "state");
			o += n;
		}
	delta.n = 0;
	if (ftruncate(state, st.st_size) < 0)
		die("state: %s", strerror(errno));
	free(b);
}

static uint64_t last_sync_before(uint64_t cut)
{
	for (uint64_t i = cut; i-- > 0;)
		if (lg.r[i].type == QCOW2_FAULT_REC_FSYNC)
			return i + 1;
	return 0;
}

/* Record count at a log byte size. */
static uint64_t records_at(uint64_t bytes)
{
	uint64_t lo = 0, hi = lg.n;

	while (lo < hi) {
		uint64_t mid = (lo + hi) / 2;
		if (lg.r[mid].end <= bytes)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* Judge one crash state (the file at path_state); variant for messages. */
static void judge_state(uint64_t cut, const char *variant, uint64_t kept,
			uint64_t pending)
{
	struct qcow2_ctx *ctx;
	struct qcow2_image *img;
	struct qcow2_error err;
	struct qcow2_info info;
	struct view v;
	uint64_t bytes = cut ? lg.r[cut - 1].end : 0;
	int ret, fails = g.fails;
	bool dirty;

	view_durable(&v, bytes);
	snprintf(v.what, sizeof(v.what), "crash state after record %" PRIu64 " of %"
		 PRIu64 " (log byte %" PRIu64 ", variant %s: %" PRIu64 " of %" PRIu64
		 " unsynced writes)", cut, lg.n, bytes, variant, kept, pending);
	ret = open_plain(g.path_state, 0, &ctx, &img, &err);
	if (ret < 0) {
		fail("%s: cannot open it: %s", v.what, err.msg);
		goto out;
	}
	qcow2_get_info(img, &info);
	dirty = info.dirty;
	judge_image(img, &v, NULL, false);
	qcow2_close(img, NULL);
	qcow2_ctx_free(ctx);
	if (g.cut_check) {
		copy_file(g.path_state, g.path_check);
		if (dirty) {
			/* Lazy refcounts: rebuilt by a read-write open. */
			ret = open_plain(g.path_check, QCOW2_OPEN_RDWR, &ctx, &img, &err);
			if (ret < 0) {
				fail("%s: the dirty image cannot be opened read-write "
				     "(refcount rebuild): %s", v.what, err.msg);
				goto out;
			}
			ret = qcow2_close(img, NULL);
			qcow2_ctx_free(ctx);
			if (ret < 0)
				fail("%s: closing it after the refcount rebuild fails: %s",
				     v.what, strerror(-ret));
		}
		char out[4200];
		snprintf(out, sizeof(out), "%s.out", g.path_check);
		ret = qemu_check(g.path_check, out);
		if (ret != 0 && ret != 3) {
			fail("%s: qemu-img check exits %d (corruption); the image %s",
			     v.what, ret, dirty ? "was marked dirty, and our read-write "
			     "open rebuilt its refcounts first" : "is not marked dirty");
			cat_file(out);
			print_flushes();
		}
	}
out:
	if (g.fails > fails) {
		char keep[4200];
		snprintf(keep, sizeof(keep), "%s/crash-%" PRIu64 "-%s.qcow2", g.dir, cut,
			 variant);
		copy_file(g.path_state, keep);
		fprintf(stderr, "  state kept as %s\n", keep);
	}
}

static void crash_replay(void)
{
	uint64_t *cuts, ncuts = 0, cap = (uint64_t)g.cuts + 8;
	uint64_t applied = 0;
	int synced, state, bad_states = 0;

	read_log();
	if (!lg.n || g.cuts <= 0)
		return;
	cuts = xmalloc(cap * sizeof(*cuts));
	/* Candidates around every client flush: inside it, before its last
	 * fdatasync and right after its completion; g.cuts of them are picked
	 * by the seed, and two random points added. */
	for (uint32_t id = 1; id <= g.nrecs; id++) {
		const struct rec *r = &g.recs[id];
		uint64_t a, b;
		if (r->kind != K_FLUSH || r->prefill || r->done_log == UINT64_MAX)
			continue;
		a = records_at(r->issue_log);
		b = records_at(r->done_log);
		if (ncuts + 3 > cap) {
			cap *= 2;
			cuts = realloc(cuts, cap * sizeof(*cuts));
			if (!cuts)
				die("out of memory");
		}
		if (b > a + 1)
			cuts[ncuts++] = a + 1 + rnd_below(b - a - 1);
		if (b > a && lg.r[b - 1].type == QCOW2_FAULT_REC_FSYNC)
			cuts[ncuts++] = b - 1;
		if (b > 0)
			cuts[ncuts++] = b;
	}
	for (uint64_t i = 0; i < ncuts && i < (uint64_t)g.cuts; i++) {
		uint64_t j = i + rnd_below(ncuts - i), t = cuts[i];
		cuts[i] = cuts[j];
		cuts[j] = t;
	}
	if (ncuts > (uint64_t)g.cuts)
		ncuts = (uint64_t)g.cuts;
	for (int i = 0; i < 2; i++)
		cuts[ncuts++] = 1 + rnd_below(lg.n);
	qsort(cuts, ncuts, sizeof(*cuts), cmp_u64);

	copy_file(g.path_start, g.path_synced);
	copy_file(g.path_start, g.path_state);
	synced = open(g.path_synced, O_RDWR | O_CLOEXEC);
	state = open(g.path_state, O_RDWR | O_CLOEXEC);
	if (synced < 0 || state < 0)
		die("%s: %s", g.path_synced, strerror(errno));
	for (uint64_t i = 0; i < ncuts && bad_states < 3; i++) {
		uint64_t cut = cuts[i], ls, pending = 0;

		if (i && cut == cuts[i - 1])
			continue;
		ls = last_sync_before(cut);
		if (ls > applied) {
			apply(synced, applied, ls, false, 0, false);
			apply(state, applied, ls, false, 0, false);
			applied = ls;
		}
		for (uint64_t k = ls; k < cut; k++)
			pending += lg.r[k].type == QCOW2_FAULT_REC_WRITE;
		for (int variant = 0; variant < 3; variant++) {
			static const char *const names[] = { "all", "lost", "half" };
			if (variant && !pending)
				break;
			reset_state(state, synced);
			if (variant != 1)
				apply(state, ls, cut, variant == 2, g.seed + cut, true);
			int before = g.fails;
			judge_state(cut, names[variant],
				    variant == 0 ? pending : variant == 1 ? 0 : pending / 2,
				    pending);
			bad_states += g.fails > before;
		}
	}
	close(state);
	close(synced);
	unlink(g.path_synced);
	unlink(g.path_state);
	unlink(g.path_check);
	free(cuts);
	printf("fault_model: %" PRIu64 " crash points replayed (%" PRIu64 " records)\n",
	       ncuts, lg.n);
}

/* qcow2_close() flushes and returns that flush's result: when it succeeds,
 * it settles everything acknowledged before, as a client flush does. It is
 * modelled as one (a "close" record), and crash points fall in it too. */
static void close_image(void)
{
	struct slot sl = { 0 };
	struct qcow2_error err;
	uint32_t id;
	int ret;

	id = new_rec(K_FLUSH, 0, 0, 0);
	g.recs[id].close = true;
	trace_issue(id);
	ret = qcow2_close(g.img, &err);
	g.img = NULL;
	sl.busy = true;
	sl.id = id;
	sl.ret = ret;
	snprintf(sl.msg, sizeof(sl.msg), "%s", ret < 0 ? err.msg : "");
	finish(&sl);
}

/* The workload on the open image, the final flush and read-back, close. */
static void run_workload(uint64_t ops)
{
	struct qcow2_stats st;
	bool final_ok;

	for (int i = 0; i < g.depth; i++) {
		g.slots[i].buf = xalloc_aligned(g.max_len + g.cs);
		g.slots[i].zbuf = xalloc_aligned(g.cs);
	}
	printf("fault_model: %" PRIu64 " bytes, cluster %u, refcount_bits %u%s%s, l2 cache %"
	       PRIu64 ", seed %" PRIu64 ", fault: %s\n", g.info.virtual_size,
	       g.cs, g.info.refcount_bits, g.info.lazy_refcounts ? ", lazy refcounts" : "",
	       g.compressed ? ", compressed writes" : "", g.info.l2_cache_size, g.seed,
	       g.faulty ? "yes" : "none");

	/* In rounds, so that failed flushes are retried soon. */
	for (uint64_t done = 0; done < ops; done += 10) {
		workload(ops - done < 10 ? ops - done : 10);
		retry_failed_flushes();
	}
	drain();
	final_ok = barrier_flush();
	/* (With the page cache, a failed fdatasync may have lost writes for
	 * good: an engine may refuse every later flush, as QEMU does.) */
	if (!final_ok && (!g.faulty || !g.fo.fail_persist) &&
	    !(g.buffered && (g.fo.fail_ops & QCOW2_FAULT_FSYNC)))
		fail("the final flush fails %d times in a row although the fault "
		     "was %s", FLUSH_RETRIES + 1, g.faulty ? "transient" : "absent");
	/* Every sector, in this session. */
	{
		struct view v;
		snprintf(v.what, sizeof(v.what), "final read-back before close");
		v.ack_seq = v.issue_seq = ++g.seq;
		v.issue_log = UINT64_MAX;
		v.flush_id = UINT32_MAX; /* in session */
		judge_image(g.img, &v, NULL, true);
	}
	qcow2_get_stats(g.img, &st);
	if (st.write_errors || st.read_errors || st.flush.errors)
		g.surfaced += !g.surfaced;
	printf("fault_model: requests: write %" PRIu64 " zeroes %" PRIu64 " discard %"
	       PRIu64 " compressed %" PRIu64 " resize %" PRIu64 " read %" PRIu64
	       " flush %" PRIu64 " writeback %" PRIu64 "; failed with the injected "
	       "error: %" PRIu64 "; engine: write errors %" PRIu64 " read errors %"
	       PRIu64 " flush errors %" PRIu64 ", evictions %" PRIu64
	       "; written back: l2 %" PRIu64 " refblock %" PRIu64 " l1 %" PRIu64
	       " reftable %" PRIu64 " header %" PRIu64 "\n",
	       g.counts[K_WRITE], g.counts[K_ZERO], g.counts[K_DISCARD],
	       g.counts[K_COMPRESSED], g.counts[K_TRUNCATE], g.counts[K_READ],
	       g.counts[K_FLUSH], g.counts[K_WRITEBACK], g.surfaced, st.write_errors,
	       st.read_errors, st.flush.errors, st.flush.flushes[QCOW2_FLUSH_EVICTION],
	       st.flush.l2_slices, st.flush.refblock_slices, st.flush.l1_writes,
	       st.flush.reftable_writes, st.flush.header_writes);
	close_image();
}

/* A write record that carries none of our sectors: a table, the header, a
 * compressed blob, zeros. */
static bool rec_is_data(const struct logrec *r)
{
	for (uint64_t k = 0; k + SECTOR <= r->len; k += SECTOR)
		if (!memcmp(r->data + k, "QFM", 3) && get32(r->data + k + 16) == g.seed32)
			return true;
	return false;
}

/* A hole punch (logged as a write of zeros of whole clusters). */
static bool rec_is_punch(const struct logrec *r)
{
	return r->len && r->off % g.cs == 0 && r->len % g.cs == 0 &&
	       is_zero(r->data, r->len);
}

/* Where the L1 and refcount tables have been: the start image's header,
 * every header written, and the tables they point at. */
static struct {
	uint64_t off[64], len[64];
	unsigned n;
} tables;

static uint64_t be64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return v;
}

static uint32_t be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void tables_from_header(const uint8_t *h)
{
	uint64_t l1 = be64(h + 40), rt = be64(h + 48);
	uint64_t l1_bytes = (uint64_t)be32(h + 36) * 8, rt_bytes = (uint64_t)be32(h + 56) * g.cs;

	if (memcmp(h, "QFI\xfb", 4) || tables.n + 2 > 64)
		return;
	for (unsigned i = 0; i < tables.n; i++)
		if (tables.off[i] == l1 || tables.off[i] == rt)
			return;
	tables.off[tables.n] = l1;
	tables.len[tables.n++] = l1_bytes ? l1_bytes : 8;
	tables.off[tables.n] = rt;
	tables.len[tables.n++] = rt_bytes ? rt_bytes : 8;
}

static bool rec_is_table(const struct logrec *r)
{
	if (r->off == 0)
		return true; /* the header */
	for (unsigned i = 0; i < tables.n; i++)
		if (r->off < tables.off[i] + tables.len[i] && tables.off[i] < r->off + r->len)
			return true;
	return false;
}

/*
 * "counts: writes W fsyncs F punches P" from the log (without a fault: the
 * operations of each kind the fault backend counts; punches are write
 * operations unless the engine has QCOW2_FAULT_FALLOCATE), then the numbers
 * N of the write operations where a write fault is most interesting:
 * "targets:" writes of the header, the L1 table or the refcount table (as
 * located by the headers), "targets2:" other writes without data of ours
 * (L2 tables, refcount blocks, compressed blobs, punches, zeros). The sweep
 * takes all of the first and samples the second.
 */
static void print_counts(void)
{
	uint64_t w = 0, f = 0, p = 0;
	bool punch_is_write = true;
	char *t1 = xmalloc(lg.n * 8 + 16), *t2 = xmalloc(lg.n * 8 + 16);
	size_t l1 = 0, l2 = 0;
	uint8_t h[104];
	int fd;

#ifdef QCOW2_FAULT_FALLOCATE
	punch_is_write = false;
#endif
	fd = open(g.path_start, O_RDONLY | O_CLOEXEC);
	if (fd >= 0 && pread(fd, h, sizeof(h), 0) == (ssize_t)sizeof(h))
		tables_from_header(h);
	if (fd >= 0)
		close(fd);
	for (uint64_t i = 0; i < lg.n; i++)
		if (lg.r[i].type == QCOW2_FAULT_REC_WRITE && lg.r[i].off == 0 &&
		    lg.r[i].len >= sizeof(h))
			tables_from_header(lg.r[i].data);
	t1[0] = t2[0] = 0;
	for (uint64_t i = 0; i < lg.n; i++) {
		if (lg.r[i].type == QCOW2_FAULT_REC_FSYNC) {
			f++;
			continue;
		}
		if (rec_is_punch(&lg.r[i])) {
			p++;
			if (!punch_is_write)
				continue;
		}
		w++;
		if (rec_is_data(&lg.r[i]))
			continue;
		if (rec_is_table(&lg.r[i]))
			l1 += (size_t)sprintf(t1 + l1, " %" PRIu64, w);
		else
			l2 += (size_t)sprintf(t2 + l2, " %" PRIu64, w);
	}
	printf("counts: writes %" PRIu64 " fsyncs %" PRIu64 " punches %" PRIu64 "\n",
	       w, f, p);
	printf("targets:%s\ntargets2:%s\n", t1, t2);
	free(t1);
	free(t2);
}

/* ---- main ------------------------------------------------------------------------- */

static uint64_t parse_size(const char *s)
{
	char *end;
	uint64_t v = strtoull(s, &end, 0);

	switch (*end) {
	case 'k': case 'K': v <<= 10; break;
	case 'M': v <<= 20; break;
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
	if (atoi(s) > 0)
		return atoi(s);
	die("unknown errno '%s'", s);
	return 0;
}

static unsigned parse_ops(const char *s)
{
	unsigned ops = 0;

	for (; *s; s++) {
		switch (*s) {
		case 'r': ops |= QCOW2_FAULT_READ; break;
		case 'w': ops |= QCOW2_FAULT_WRITE; break;
		case 'f': ops |= QCOW2_FAULT_FSYNC; break;
		case 'a':
#ifdef QCOW2_FAULT_FALLOCATE
			ops |= QCOW2_FAULT_FALLOCATE;
			break;
#else
			die("this engine has no QCOW2_FAULT_FALLOCATE");
#endif
		case ',': break;
		default: die("bad --fail-ops '%s'", s);
		}
	}
	return ops;
}

static void usage(void)
{
	fprintf(stderr,
		"usage: fault_model [--seed N] [--ops N] [--depth N] [--max-len BYTES]\n"
		"         [--l2-cache BYTES] [--l2-slice BYTES] [--buffered] [--compressed]\n"
		"         [--no-resize] [--fail-at N --fail-errno EIO|ENOSPC\n"
		"          --fail-ops r,w,f,a [--fail-persist]] [--probe] [--cuts K]\n"
		"         [--cut-check] [--trace] FRESH WORKDIR | --features\n");
	exit(2);
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "seed", required_argument, 0, 's' },
		{ "ops", required_argument, 0, 'n' },
		{ "depth", required_argument, 0, 'd' },
		{ "max-len", required_argument, 0, 'm' },
		{ "l2-cache", required_argument, 0, 'c' },
		{ "l2-slice", required_argument, 0, 'C' },
		{ "buffered", no_argument, 0, 'B' },
		{ "compressed", no_argument, 0, 'z' },
		{ "no-resize", no_argument, 0, 'R' },
		{ "fail-at", required_argument, 0, 'a' },
		{ "fail-errno", required_argument, 0, 'e' },
		{ "fail-ops", required_argument, 0, 'o' },
		{ "fail-persist", no_argument, 0, 'p' },
		{ "probe", no_argument, 0, 'P' },
		{ "cuts", required_argument, 0, 'k' },
		{ "cut-check", no_argument, 0, 'K' },
		{ "trace", no_argument, 0, 't' },
		{ "features", no_argument, 0, 'F' },
		{ 0, 0, 0, 0 },
	};
	struct qcow2_ctx_opts co = { .backend = QCOW2_BACKEND_SYNC };
	struct qcow2_open_opts oo = { .flags = QCOW2_OPEN_RDWR | QCOW2_OPEN_NO_BACKING };
	struct qcow2_error err;
	uint64_t ops = 200;
	int opt, ret;

	setvbuf(stdout, NULL, _IOLBF, 0);
	g.depth = 6;
	g.max_len = 128 << 10;
	g.resize = true;
	g.fo.log_fd = -1;
	g.fo.fail_errno = EIO;
	g.fo.fail_ops = QCOW2_FAULT_WRITE;
	while ((opt = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (opt) {
		case 's': g.seed = strtoull(optarg, 0, 0); break;
		case 'n': ops = strtoull(optarg, 0, 0); break;
		case 'd': g.depth = atoi(optarg); break;
		case 'm': g.max_len = parse_size(optarg); break;
		case 'c': oo.l2_cache_size = parse_size(optarg); break;
		case 'C': oo.l2_slice_size = (uint32_t)parse_size(optarg); break;
		case 'B': g.buffered = true; break;
		case 'z': g.compressed = true; break;
		case 'R': g.resize = false; break;
		case 'a': g.fo.fail_at = strtoull(optarg, 0, 0); break;
		case 'e': g.fo.fail_errno = parse_errno(optarg); break;
		case 'o': g.fo.fail_ops = parse_ops(optarg); break;
		case 'p': g.fo.fail_persist = true; break;
		case 'P': g.probe = true; break;
		case 'k': g.cuts = atoi(optarg); break;
		case 'K': g.cut_check = true; break;
		case 't': g.trace = true; break;
		case 'F':
#ifdef QCOW2_FAULT_FALLOCATE
			printf("fallocate\n");
#endif
			return 0;
		default: usage();
		}
	}
	if (optind != argc - 2 || g.depth < 1 || g.depth > MAX_DEPTH ||
	    g.max_len < SECTOR || g.max_len % SECTOR)
		usage();
	for (int i = 0, k = 0; i < argc && k >= 0 && (size_t)k < sizeof(g.cmdline); i++)
		k += snprintf(g.cmdline + k, sizeof(g.cmdline) - (size_t)k, "%s%s",
			      i ? " " : "", argv[i]);
	g.fresh = argv[optind];
	g.dir = argv[optind + 1];
	g.faulty = g.fo.fail_at > 0;
	g.seed32 = (uint32_t)g.seed;
	rng_state = g.seed * 0x9e3779b97f4a7c15ull + 0x2545f4914f6cdd1dull;
	if (!rng_state)
		rng_state = 1;
	if (mkdir(g.dir, 0755) < 0 && errno != EEXIST)
		die("%s: %s", g.dir, strerror(errno));
	snprintf(g.path_start, sizeof(g.path_start), "%s/start.qcow2", g.dir);
	snprintf(g.path_img, sizeof(g.path_img), "%s/img.qcow2", g.dir);
	snprintf(g.path_log, sizeof(g.path_log), "%s/writes.log", g.dir);
	snprintf(g.path_raw, sizeof(g.path_raw), "%s/ours.raw", g.dir);
	snprintf(g.path_state, sizeof(g.path_state), "%s/state.qcow2", g.dir);
	snprintf(g.path_synced, sizeof(g.path_synced), "%s/synced.qcow2", g.dir);
	snprintf(g.path_check, sizeof(g.path_check), "%s/check.qcow2", g.dir);

	/* FRESH's size bounds the model: the disk grows by at most
	 * MAX_RESIZES * 4 clusters. */
	{
		struct qcow2_ctx *c;
		struct qcow2_image *i;
		if (open_plain(g.fresh, 0, &c, &i, &err) < 0)
			die("%s: %s", g.fresh, err.msg);
		qcow2_get_info(i, &g.info);
		qcow2_close(i, NULL);
		qcow2_ctx_free(c);
		if (g.info.version < 3 || g.info.backing_file)
			die("%s: a version 3 image without a backing file is needed",
			    g.fresh);
		g.init_size = g.cur_size = g.info.virtual_size;
		g.cs = g.info.cluster_size;
		g.max_sectors = (g.init_size + MAX_RESIZES * 4ull * g.info.cluster_size) /
				SECTOR;
		g.hist = calloc(g.max_sectors, sizeof(*g.hist));
		if (!g.hist)
			die("out of memory");
		if (g.max_len > g.init_size)
			g.max_len = g.init_size;
	}
	prefill();

	/* The workload, through the fault backend. */
	copy_file(g.path_start, g.path_img);
	if (!g.probe) {
		g.log_fd = open(g.path_log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (g.log_fd < 0)
			die("%s: %s", g.path_log, strerror(errno));
	}
	g.fo.log_fd = g.log_fd;
	ret = qcow2_ctx_new_fault(&co, &g.fo, &g.ctx);
	if (ret < 0)
		die("cannot create the fault context: %s", strerror(-ret));
	if (g.buffered)
		oo.flags |= QCOW2_OPEN_BUFFERED;
	ret = qcow2_open(g.ctx, g.path_img, &oo, &g.img, &err);
	if (ret < 0 && !errno_ok(ret))
		die("%s: %s (%s)", g.path_img, err.msg, strerror(-ret));
	if (ret < 0) {
		/* The fault hit the open itself: no workload; the image must
		 * still be the prefilled one. */
		printf("fault_model: the open failed with the injected error: %s\n",
		       err.msg);
		g.surfaced++;
		g.img = NULL;
	} else {
		qcow2_get_info(g.img, &g.info);
		run_workload(ops);
	}
	qcow2_ctx_free(g.ctx);
	g.ctx = NULL;
	if (g.log_fd >= 0)
		close(g.log_fd);
	if (g.probe) {
		if (g.fails) {
			fprintf(stderr, "replay: %s\n", g.cmdline);
			return 1;
		}
		return g.surfaced ? 0 : 3;
	}

	/* Reopen on a plain context, read-write (a dirty image is repaired). */
	{
		struct qcow2_ctx *ctx;
		struct qcow2_image *img;
		struct view v;

		view_durable(&v, UINT64_MAX);
		snprintf(v.what, sizeof(v.what), "after close and reopen");
		ret = open_plain(g.path_img, QCOW2_OPEN_RDWR, &ctx, &img, &err);
		if (ret < 0) {
			fail("%s: cannot reopen %s: %s (%s)", v.what, g.path_img, err.msg,
			     strerror(-ret));
		} else {
			judge_image(img, &v, g.path_raw, false);
			ret = qcow2_close(img, NULL);
			qcow2_ctx_free(ctx);
			if (ret < 0)
				fail("%s: closing it fails: %s", v.what, strerror(-ret));
		}
	}
	if (g.cuts > 0)
		crash_replay();
	else
		read_log();
	print_counts();
	if (g.fails) {
		fprintf(stderr, "fault_model: FAILED (%d problems)\nreplay: %s\n", g.fails,
			g.cmdline);
		return 1;
	}
	printf("fault_model: ok\n");
	return 0;
}
