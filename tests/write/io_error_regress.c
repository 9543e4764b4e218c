/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * Regression tests: what an IO error must never turn into (issue 11).
 * Each case sweeps the injected failure over every operation of its kind
 * that the scenario performs, and keeps going after it, then checks what a
 * client was promised:
 *
 *   flush-retry      write a cluster, flush (one write or fdatasync of the
 *                    flush fails), flush again: once a flush has succeeded,
 *                    the data must read back after a reopen.
 *   resize-retry     the same across a resize that relocates the L1 table
 *                    (a failed table write must not leave a header pointing
 *                    at a never-written table).
 *   reftable-retry   the same with enough clusters to grow the refcount
 *                    table (new table, then header switch).
 *   lazy-dirty-bit   lazy refcounts: once a flush succeeds while refcounts
 *                    are still only in the cache, the dirty bit must be on
 *                    disk, even if its first header write failed.
 *   stale-zbuf       a compressed cluster read (and kept decompressed), its
 *                    host cluster freed and reused by another compressed
 *                    cluster of the same length: reads return the new data.
 *   writeback-inline qcow2_writeback() never runs its callback inside the
 *                    call (lazy refcounts, only refcounts dirty).
 *   sync-lost        with the page cache, a failed fdatasync fails every
 *                    later flush (the kernel may have dropped the writes).
 *   sync-alloc-fail  a write-back whose fdatasync cannot even be queued
 *                    (allocation failure) must not report success: after a
 *                    successful flush, the log ends with an fdatasync.
 *   short-reads      a read that the file returns in odd-sized pieces (as
 *                    FUSE or NFS may) is resumed, not zero-filled.
 *   close-reports    qcow2_close() returns the error of its final flush;
 *                    when it returns 0, the data is durable.
 *   uring-4g         a single-segment read of more than 4 GiB (a raw
 *                    file) on io_uring reads the file, not zeros.
 *
 *   io_error_regress CASE DIR
 * Exit 0 pass, 1 fail, 2 usage.
 */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qcow2.h"
#include "qcow2_fault.h"

static char dir[4000];
static int failures;

#define FAIL(...)                                                              \
	do {                                                                   \
		fprintf(stderr, "FAIL: " __VA_ARGS__);                         \
		fputc('\n', stderr);                                           \
		failures++;                                                    \
	} while (0)

/* ---- calloc failure injection (linked with -Wl,--wrap=calloc) ---------- */

void *__real_calloc(size_t n, size_t size);
void *__wrap_calloc(size_t n, size_t size);
static long calloc_countdown = -1; /* fail the call that reaches 0 */

void *__wrap_calloc(size_t n, size_t size)
{
	if (calloc_countdown >= 0 && calloc_countdown-- == 0)
		return NULL;
	return __real_calloc(n, size);
}

/* ---- helpers ------------------------------------------------------------ */

struct handle {
	struct qcow2_ctx *ctx;
	struct qcow2_image *img;
};

struct done {
	bool done;
	int err;
};

static void on_done(void *opaque, int result, const char *error)
{
	struct done *d = opaque;

	d->done = true;
	d->err = result;
	if ((result < 0) != (error != NULL) || (error && !error[0]))
		FAIL("a request completed with %d and %s message", result,
		     error ? "an empty or unexpected" : "no");
}

static int wait_done(struct handle *h, struct done *d)
{
	while (!d->done)
		if (qcow2_ctx_process(h->ctx, true) < 0)
			return -EIO;
	return d->err;
}

static void path_of(char *out, size_t len, const char *name)
{
	snprintf(out, len, "%s/%s", dir, name);
}

static int create(const char *name, const struct qcow2_create_opts *co)
{
	struct qcow2_error err = { "" };
	char path[4096];
	int ret;

	path_of(path, sizeof(path), name);
	ret = qcow2_create(path, co, &err);
	if (ret < 0)
		fprintf(stderr, "create %s: %s\n", path, err.msg);
	return ret;
}

static int hopen_ctx(struct handle *h, const char *name,
		     const struct qcow2_ctx_opts *xo,
		     const struct qcow2_fault_opts *fo, unsigned flags)
{
	struct qcow2_open_opts oo = { .flags = flags };
	struct qcow2_error err = { "" };
	char path[4096];
	int ret;

	path_of(path, sizeof(path), name);
	ret = fo ? qcow2_ctx_new_fault(xo, fo, &h->ctx) : qcow2_ctx_new(xo, &h->ctx);
	if (ret < 0)
		return ret;
	ret = qcow2_open(h->ctx, path, &oo, &h->img, &err);
	if (ret < 0) {
		fprintf(stderr, "open %s: %s\n", path, err.msg);
		qcow2_ctx_free(h->ctx);
		h->ctx = NULL;
	}
	return ret;
}

/* Open flags of the sweeps: O_DIRECT, where a failed fdatasync may be
 * retried (with the page cache it may not: see case sync-lost). */
static unsigned open_flags = QCOW2_OPEN_RDWR;

/* Read-write, on the sync or the fault backend. */
static int hopen(struct handle *h, const char *name,
		 const struct qcow2_fault_opts *fo)
{
	struct qcow2_ctx_opts xo = { .backend = QCOW2_BACKEND_SYNC };

	return hopen_ctx(h, name, &xo, fo, open_flags);
}

static void hclose(struct handle *h)
{
	qcow2_close(h->img, NULL);
	qcow2_ctx_free(h->ctx);
	h->img = NULL;
	h->ctx = NULL;
}

static void fill(uint8_t *buf, size_t len, unsigned tag)
{
	for (size_t i = 0; i < len; i++)
		buf[i] = (uint8_t)(tag * 31 + i / 512 * 7 + (i & 0xff));
}

/* After a reopen: does [off, off+len) hold fill(tag)? */
static bool holds(const char *name, uint64_t off, size_t len, unsigned tag)
{
	struct handle h;
	uint8_t *got = malloc(len), *want = malloc(len);
	bool ok;

	fill(want, len, tag);
	ok = got && want && hopen(&h, name, NULL) == 0;
	if (ok) {
		ok = qcow2_pread(h.img, got, len, off) == 0 &&
		     memcmp(got, want, len) == 0;
		hclose(&h);
	}
	free(got);
	free(want);
	return ok;
}

struct written {
	uint64_t off;
	size_t len;
	unsigned tag;
};

/* Write fill(tag) at off; an acknowledged write is recorded in w. Returns
 * 1 when the write failed, else 0. */
static int write_ack(struct handle *h, struct written *w, int *nw,
		     uint64_t off, size_t len, unsigned tag)
{
	uint8_t *buf;
	int ret;

	if (posix_memalign((void **)&buf, 4096, len))
		return 1;
	fill(buf, len, tag);
	ret = qcow2_pwrite(h->img, buf, len, off);
	free(buf);
	if (ret == 0)
		w[(*nw)++] = (struct written){ off, len, tag };
	return ret < 0;
}

/* A scenario: requests on h; returns how many failed. */
typedef int (*scenario_fn)(struct handle *h, struct written *w, int *nw);

/* Records of a fault log of the kinds in ops (QCOW2_FAULT_WRITE, _FSYNC). */
static uint64_t log_count(int fd, unsigned ops)
{
	struct qcow2_fault_record rec;
	uint64_t n = 0;
	off_t pos = 0;

	while (pread(fd, &rec, sizeof(rec), pos) == (ssize_t)sizeof(rec)) {
		uint32_t type = le32toh(rec.type);
		pos += (off_t)sizeof(rec);
		if (type == QCOW2_FAULT_REC_WRITE)
			pos += (off_t)le64toh(rec.len);
		n += (type == QCOW2_FAULT_REC_WRITE && (ops & QCOW2_FAULT_WRITE)) ||
		     (type == QCOW2_FAULT_REC_FSYNC && (ops & QCOW2_FAULT_FSYNC));
	}
	return n;
}

/* The first operation of kind ops after the scenario's own: where the
 * flush's operations begin (the scenario's are failed by other cases). */
static uint64_t scenario_ops(const struct qcow2_create_opts *co, unsigned ops,
			     scenario_fn scenario)
{
	struct qcow2_fault_opts fo = { .fail_errno = EIO };
	struct written w[16];
	struct handle h;
	char logpath[4096];
	uint64_t n = 0;
	int nw = 0;

	path_of(logpath, sizeof(logpath), "probe.log");
	fo.log_fd = open(logpath, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fo.log_fd >= 0 && create("t.qcow2", co) == 0 &&
	    hopen(&h, "t.qcow2", &fo) == 0) {
		scenario(&h, w, &nw);
		n = log_count(fo.log_fd, ops);
		hclose(&h);
	}
	if (fo.log_fd >= 0)
		close(fo.log_fd);
	return n + 1;
}

/*
 * For N = 1, 2, ...: fail the Nth operation of `ops` (once) while the
 * scenario runs, then flush until a flush succeeds (3 tries). A transient
 * error must not outlive a retry, and once a flush has succeeded every
 * acknowledged write must read back after a reopen. The sweep ends at the
 * first N the scenario and its first flush no longer reach.
 */
static void flush_sweep(const char *what, const struct qcow2_create_opts *co,
			unsigned ops, scenario_fn scenario)
{
	uint64_t n = scenario_ops(co, ops, scenario), first = n;

	for (; n < first + 500; n++) {
		struct qcow2_fault_opts fo = { .log_fd = -1, .fail_at = n,
					       .fail_errno = EIO, .fail_ops = ops };
		struct written w[16];
		struct handle h;
		int nw = 0, errs, tries, ret = -1;

		if (create("t.qcow2", co) < 0 || hopen(&h, "t.qcow2", &fo) < 0) {
			FAIL("%s: cannot create or open the image", what);
			return;
		}
		errs = scenario(&h, w, &nw);
		for (tries = 0; tries < 3 && ret < 0; tries++)
			ret = qcow2_fsync(h.img);
		hclose(&h);
		if (ret < 0) {
			FAIL("%s: N=%llu: flushes after a transient error still fail "
			     "(%s)", what, (unsigned long long)n, strerror(-ret));
			continue;
		}
		for (int i = 0; i < nw; i++)
			if (!holds("t.qcow2", w[i].off, w[i].len, w[i].tag))
				FAIL("%s: EIO at operation %llu: %zu bytes written at "
				     "%llu, acknowledged and flushed, do not read back "
				     "after a reopen", what, (unsigned long long)n,
				     w[i].len, (unsigned long long)w[i].off);
		if (errs == 0 && tries == 1)
			break; /* operation N was not reached */
	}
	printf("%s: operations %llu..%llu\n", what, (unsigned long long)first,
	       (unsigned long long)n);
}

static int scen_one_cluster(struct handle *h, struct written *w, int *nw)
{
	return write_ack(h, w, nw, 0, 65536, 1);
}

static int scen_resize(struct handle *h, struct written *w, int *nw)
{
	int errs = write_ack(h, w, nw, 0, 4096, 2);

	/* 512-byte clusters: an L1 cluster maps 4 MiB; 64 MiB needs 16. */
	if (qcow2_ftruncate(h->img, 64ull << 20) < 0)
		return errs + 1;
	return errs + write_ack(h, w, nw, 60ull << 20, 4096, 3);
}

static int scen_reftable(struct handle *h, struct written *w, int *nw)
{
	int errs = 0;

	/* 512-byte clusters, 64-bit refcounts: a block covers 64 clusters,
	 * the first table 64 blocks (2 MiB of file): 3 MiB grows it. */
	for (unsigned i = 0; i < 6; i++)
		errs += write_ack(h, w, nw, (uint64_t)i << 19, 65536, 10 + i);
	return errs;
}

static void case_flush_retry(void)
{
	struct qcow2_create_opts co = { .size = 16 << 20 };

	flush_sweep("flush-retry (writes)", &co, QCOW2_FAULT_WRITE,
		    scen_one_cluster);
	flush_sweep("flush-retry (fdatasync)", &co, QCOW2_FAULT_FSYNC,
		    scen_one_cluster);
}

static void case_resize_retry(void)
{
	struct qcow2_create_opts co = { .size = 1 << 20, .cluster_size = 512 };

	flush_sweep("resize-retry (writes)", &co, QCOW2_FAULT_WRITE, scen_resize);
	flush_sweep("resize-retry (fdatasync)", &co, QCOW2_FAULT_FSYNC,
		    scen_resize);
}

static void case_reftable_retry(void)
{
	struct qcow2_create_opts co = { .size = 8 << 20, .cluster_size = 512,
					.refcount_bits = 64 };

	flush_sweep("reftable-retry (writes)", &co, QCOW2_FAULT_WRITE,
		    scen_reftable);
	flush_sweep("reftable-retry (fdatasync)", &co, QCOW2_FAULT_FSYNC,
		    scen_reftable);
}

static bool disk_dirty_bit(const char *name)
{
	char path[4096];
	uint64_t v = 0;
	int fd;

	path_of(path, sizeof(path), name);
	fd = open(path, O_RDONLY);
	if (fd < 0 || pread(fd, &v, 8, 72) != 8)
		FAIL("cannot read the header of %s", path);
	if (fd >= 0)
		close(fd);
	return be64toh(v) & QCOW2_INCOMPAT_DIRTY;
}

static void case_lazy_dirty_bit(void)
{
	struct qcow2_create_opts co = { .size = 16 << 20, .lazy_refcounts = true };
	uint64_t n;

	for (n = 1; n < 40; n++) {
		struct qcow2_fault_opts fo = { .log_fd = -1, .fail_at = n,
					       .fail_errno = EIO,
					       .fail_ops = QCOW2_FAULT_WRITE };
		struct written w[4];
		struct handle h;
		int nw = 0, errs, tries, ret = -1;

		if (create("t.qcow2", &co) < 0 || hopen(&h, "t.qcow2", &fo) < 0) {
			FAIL("lazy-dirty-bit: cannot create or open the image");
			return;
		}
		errs = write_ack(&h, w, &nw, 0, 65536, 4);
		for (tries = 0; tries < 3 && ret < 0; tries++)
			ret = qcow2_fsync(h.img);
		/* Refcounts stay cached (lazy): the file, as a crash now would
		 * leave it, must say that its refcounts are stale. */
		if (ret == 0 && nw && !disk_dirty_bit("t.qcow2"))
			FAIL("lazy-dirty-bit: EIO at write %llu: a flush succeeded "
			     "with refcounts only in the cache, and the dirty bit "
			     "is not on disk", (unsigned long long)n);
		hclose(&h);
		if (errs == 0 && tries == 1)
			break;
	}
	printf("lazy-dirty-bit: %llu runs\n", (unsigned long long)n);
}

static int write_compressed(struct handle *h, uint64_t off, const void *z,
			    size_t len)
{
	struct done d = { false, 0 };
	int ret = qcow2_write_compressed(h->img, off, z, len, on_done, &d);

	return ret < 0 ? ret : wait_done(h, &d);
}

static void case_stale_zbuf(void)
{
	/* 1-bit refcounts: no packing hold; each compressed cluster gets a
	 * host cluster of its own, from the free pool when it has one. */
	struct qcow2_create_opts co = { .size = 1 << 20, .refcount_bits = 1 };
	static uint8_t a[65536], b[65536], za[65536], zb[65536], got[65536];
	struct qcow2_extent e0, e4;
	struct handle h;
	size_t alen, blen;

	memset(a, 0x11, sizeof(a));
	memset(b, 0x22, sizeof(b));
	if (qcow2_compress(QCOW2_COMPRESSION_ZLIB, a, sizeof(a), za,
			   sizeof(za) - 1, &alen) < 0 ||
	    qcow2_compress(QCOW2_COMPRESSION_ZLIB, b, sizeof(b), zb,
			   sizeof(zb) - 1, &blen) < 0 || alen != blen) {
		FAIL("stale-zbuf: the clusters do not compress to one length");
		return;
	}
	if (create("z.qcow2", &co) < 0 || hopen(&h, "z.qcow2", NULL) < 0) {
		FAIL("stale-zbuf: cannot create or open the image");
		return;
	}
	/* G0 compressed, then read: its decompressed copy is kept. */
	if (write_compressed(&h, 0, za, alen) < 0 ||
	    qcow2_pread(h.img, got, sizeof(got), 0) < 0 ||
	    qcow2_block_status(h.img, 0, 65536, &e0) < 0) {
		FAIL("stale-zbuf: cannot write or read G0");
		goto out;
	}
	/* G0 overwritten: its host cluster is freed once that is durable. */
	if (qcow2_pwrite(h.img, a, sizeof(a), 0) < 0 ||
	    qcow2_fsync(h.img) < 0 || qcow2_fsync(h.img) < 0) {
		FAIL("stale-zbuf: cannot overwrite G0");
		goto out;
	}
	/* G4 compressed, other data, same length: the freed cluster. */
	if (write_compressed(&h, 4 * 65536, zb, blen) < 0 ||
	    qcow2_block_status(h.img, 4 * 65536, 65536, &e4) < 0) {
		FAIL("stale-zbuf: cannot write G4");
		goto out;
	}
	if (e0.type != QCOW2_EXTENT_COMPRESSED || e4.type != QCOW2_EXTENT_COMPRESSED ||
	    e0.host_offset != e4.host_offset) {
		FAIL("stale-zbuf: G4 did not reuse G0's host bytes (0x%llx, 0x%llx): "
		     "the scenario needs updating", (unsigned long long)e0.host_offset,
		     (unsigned long long)e4.host_offset);
		goto out;
	}
	if (qcow2_pread(h.img, got, sizeof(got), 4 * 65536) < 0 ||
	    memcmp(got, b, sizeof(b)))
		FAIL("stale-zbuf: G4 reads 0x%02x, not its own data 0x22 (a stale "
		     "decompressed cluster)", got[0]);
out:
	hclose(&h);
}

/* With the page cache, a failed fdatasync may have lost writes for good
 * (Linux marks the pages clean): no later flush may report success. */
static void case_sync_lost(void)
{
	struct qcow2_create_opts co = { .size = 16 << 20 };
	static uint8_t buf[65536];
	uint64_t n;

	open_flags = QCOW2_OPEN_RDWR | QCOW2_OPEN_BUFFERED;
	for (n = 1; n < 20; n++) {
		struct qcow2_fault_opts fo = { .log_fd = -1, .fail_at = n,
					       .fail_errno = EIO,
					       .fail_ops = QCOW2_FAULT_FSYNC };
		struct handle h;
		int first, later;

		if (create("t.qcow2", &co) < 0 || hopen(&h, "t.qcow2", &fo) < 0) {
			FAIL("sync-lost: cannot create or open the image");
			return;
		}
		if (qcow2_pwrite(h.img, buf, sizeof(buf), 0) < 0)
			FAIL("sync-lost: the write failed");
		first = qcow2_fsync(h.img);
		later = qcow2_fsync(h.img);
		if (first < 0 && later == 0)
			FAIL("sync-lost: fdatasync %llu failed on a buffered image, "
			     "and a later flush reported success",
			     (unsigned long long)n);
		if (first < 0 && !strstr(qcow2_last_error(h.img), "fdatasync"))
			FAIL("sync-lost: the message does not say what failed: %s",
			     qcow2_last_error(h.img));
		hclose(&h);
		if (first == 0)
			break;
	}
	printf("sync-lost: %llu runs\n", (unsigned long long)n);
}

/* Reads returned in odd-sized pieces are resumed, not zero-filled; with
 * O_DIRECT, which cannot resume mid-block, they fail, never read wrong. */
static void case_short_reads(void)
{
	struct qcow2_create_opts co = { .size = 4 << 20 };
	static uint8_t want[1 << 20], got[1 << 20];
	struct handle h;

	fill(want, sizeof(want), 7);
	open_flags = QCOW2_OPEN_RDWR;
	if (create("t.qcow2", &co) < 0 || hopen(&h, "t.qcow2", NULL) < 0) {
		FAIL("short-reads: cannot create or open the image");
		return;
	}
	if (qcow2_pwrite(h.img, want, sizeof(want), 65536) < 0)
		FAIL("short-reads: the write failed");
	hclose(&h);
	for (int direct = 0; direct < 2; direct++) {
		struct qcow2_fault_opts fo = { .log_fd = -1, .short_read = 1000 };
		int ret;

		open_flags = direct ? 0 : QCOW2_OPEN_BUFFERED;
		if (hopen(&h, "t.qcow2", &fo) < 0) {
			FAIL("short-reads: cannot open the image");
			return;
		}
		memset(got, 0xee, sizeof(got));
		ret = qcow2_pread(h.img, got, sizeof(got), 65536);
		if (ret == 0 && memcmp(got, want, sizeof(got)))
			FAIL("short-reads: %s: a read returned in 1000-byte pieces "
			     "reads wrong data", direct ? "O_DIRECT" : "buffered");
		if (ret < 0 && !direct)
			FAIL("short-reads: buffered: a read returned in pieces "
			     "failed (%s)", strerror(-ret));
		hclose(&h);
	}
}

/* One read of more than 4 GiB in a single segment (a raw file maps a
 * request as one extent): io_uring lengths are 32 bits. */
static void case_uring_4g(void)
{
	const uint64_t size = (4ull << 30) + 65536;
	struct qcow2_ctx_opts xo = { .backend = QCOW2_BACKEND_IO_URING };
	struct handle h;
	char path[4096];
	uint8_t *buf, tail[4096];
	int fd, ret;

	path_of(path, sizeof(path), "big.raw");
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	fill(tail, sizeof(tail), 9);
	if (fd < 0 || ftruncate(fd, (off_t)size) < 0 ||
	    pwrite(fd, tail, sizeof(tail), (off_t)(size - sizeof(tail))) !=
		    (ssize_t)sizeof(tail)) {
		FAIL("uring-4g: cannot make %s", path);
		return;
	}
	close(fd);
	buf = mmap(NULL, size, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (buf == MAP_FAILED) {
		FAIL("uring-4g: cannot map %llu bytes", (unsigned long long)size);
		return;
	}
	if (hopen_ctx(&h, "big.raw", &xo, NULL, QCOW2_OPEN_RAW) < 0) {
		printf("SKIP: io_uring unavailable\n");
		munmap(buf, size);
		exit(77);
	}
	ret = qcow2_pread(h.img, buf, size, 0);
	if (ret < 0)
		FAIL("uring-4g: the read failed: %s", strerror(-ret));
	else if (memcmp(buf + size - sizeof(tail), tail, sizeof(tail)))
		FAIL("uring-4g: the last block of a 4 GiB read reads 0x%02x, "
		     "not the file's 0x%02x", buf[size - 1], tail[sizeof(tail) - 1]);
	hclose(&h);
	munmap(buf, size);
	unlink(path);
}

/* qcow2_close() flushes: a failure of that flush must be returned, and a
 * close that returns 0 must leave the data durable. */
static void case_close_reports(void)
{
	struct qcow2_create_opts co = { .size = 16 << 20 };
	uint64_t n;
	int reported = 0;

	open_flags = QCOW2_OPEN_RDWR;
	for (n = 2; n < 40; n++) {
		struct qcow2_fault_opts fo = { .log_fd = -1, .fail_at = n,
					       .fail_errno = EIO, .fail_persist = true,
					       .fail_ops = QCOW2_FAULT_WRITE |
							   QCOW2_FAULT_FSYNC };
		struct qcow2_error err;
		struct written w[2];
		struct handle h;
		int nw = 0, ret;

		if (create("t.qcow2", &co) < 0 || hopen(&h, "t.qcow2", &fo) < 0) {
			FAIL("close-reports: cannot create or open the image");
			return;
		}
		write_ack(&h, w, &nw, 0, 65536, 5);
		ret = qcow2_close(h.img, &err);
		qcow2_ctx_free(h.ctx);
		if (ret < 0 && !err.msg[0])
			FAIL("close-reports: qcow2_close() failed without a message");
		if (ret < 0)
			reported++;
		else if (nw && !holds("t.qcow2", 0, 65536, 5))
			FAIL("close-reports: EIO from operation %llu on: qcow2_close() "
			     "returned 0, and the acknowledged write is lost",
			     (unsigned long long)n);
		if (ret == 0 && nw)
			break; /* the close's writes were all before N */
	}
	if (!reported)
		FAIL("close-reports: no failed final flush was reported");
	printf("close-reports: %llu runs, %d failed closes reported\n",
	       (unsigned long long)n - 1, reported);
}

static bool in_call;

static void inline_cb(void *opaque, int result, const char *error)
{
	struct done *d = opaque;

	if (in_call)
		FAIL("writeback-inline: the callback ran inside qcow2_writeback()");
	on_done(opaque, result, error);
	(void)d;
}

static void case_writeback_inline(void)
{
	struct qcow2_create_opts co = { .size = 16 << 20, .lazy_refcounts = true };
	static uint8_t buf[65536];
	struct handle h;
	struct done d = { false, 0 };
	int ret;

	if (create("t.qcow2", &co) < 0 || hopen(&h, "t.qcow2", NULL) < 0) {
		FAIL("writeback-inline: cannot create or open the image");
		return;
	}
	/* After a lazy flush only refcounts are dirty. */
	if (qcow2_pwrite(h.img, buf, sizeof(buf), 0) < 0 || qcow2_fsync(h.img) < 0 ||
	    !qcow2_has_dirty_metadata(h.img)) {
		FAIL("writeback-inline: no refcounts left dirty by a lazy flush");
		goto out;
	}
	in_call = true;
	ret = qcow2_writeback(h.img, inline_cb, &d);
	in_call = false;
	if (ret < 0 || wait_done(&h, &d) < 0)
		FAIL("writeback-inline: qcow2_writeback failed");
out:
	hclose(&h);
}

/* Every record of a fault log; returns the type of the last one (0: none). */
static uint32_t last_log_record(int fd)
{
	struct qcow2_fault_record rec;
	uint32_t last = 0;
	off_t pos = 0;

	while (pread(fd, &rec, sizeof(rec), pos) == (ssize_t)sizeof(rec)) {
		last = le32toh(rec.type);
		pos += (off_t)sizeof(rec);
		if (last == QCOW2_FAULT_REC_WRITE)
			pos += (off_t)le64toh(rec.len);
	}
	return last;
}

static void case_sync_alloc_fail(void)
{
	struct qcow2_create_opts co = { .size = 16 << 20 };
	static uint8_t buf[65536];
	char logpath[4096];
	long k;

	path_of(logpath, sizeof(logpath), "t.log");
	for (k = 0; k < 200; k++) {
		struct qcow2_fault_opts fo = { .fail_errno = EIO };
		struct handle h;
		int ret;
		bool hit;

		fo.log_fd = open(logpath, O_RDWR | O_CREAT | O_TRUNC, 0644);
		if (fo.log_fd < 0 || create("t.qcow2", &co) < 0 ||
		    hopen(&h, "t.qcow2", &fo) < 0) {
			FAIL("sync-alloc-fail: cannot set up");
			return;
		}
		if (qcow2_pwrite(h.img, buf, sizeof(buf), 0) < 0) {
			FAIL("sync-alloc-fail: write failed");
			hclose(&h);
			return;
		}
		/* The k-th allocation of the flush fails. */
		calloc_countdown = k;
		ret = qcow2_fsync(h.img);
		hit = calloc_countdown < 0;
		calloc_countdown = -1;
		if (ret == 0 && last_log_record(fo.log_fd) != QCOW2_FAULT_REC_FSYNC)
			FAIL("sync-alloc-fail: allocation %ld failed, the flush "
			     "succeeded, and no fdatasync followed its writes", k);
		hclose(&h);
		close(fo.log_fd);
		if (!hit)
			break;
	}
	printf("sync-alloc-fail: %ld runs\n", k + 1);
}

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		void (*run)(void);
	} cases[] = {
		{ "flush-retry", case_flush_retry },
		{ "resize-retry", case_resize_retry },
		{ "reftable-retry", case_reftable_retry },
		{ "lazy-dirty-bit", case_lazy_dirty_bit },
		{ "stale-zbuf", case_stale_zbuf },
		{ "writeback-inline", case_writeback_inline },
		{ "sync-alloc-fail", case_sync_alloc_fail },
		{ "sync-lost", case_sync_lost },
		{ "short-reads", case_short_reads },
		{ "uring-4g", case_uring_4g },
		{ "close-reports", case_close_reports },
	};

	if (argc == 2 && !strcmp(argv[1], "--list")) {
		for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
			printf("%s\n", cases[i].name);
		return 0;
	}
	if (argc != 3) {
		fprintf(stderr, "usage: io_error_regress CASE DIR | --list\n");
		return 2;
	}
	snprintf(dir, sizeof(dir), "%s/%s", argv[2], argv[1]);
	mkdir(argv[2], 0755);
	mkdir(dir, 0755);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		if (strcmp(argv[1], cases[i].name))
			continue;
		cases[i].run();
		printf("%s: %s\n", argv[1], failures ? "FAILED" : "ok");
		return failures ? 1 : 0;
	}
	fprintf(stderr, "io_error_regress: unknown case %s\n", argv[1]);
	return 2;
}
