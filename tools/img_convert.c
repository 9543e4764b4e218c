/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * qcow2-img convert: copy an image's guest contents into a new raw file or
 * a new qcow2 image (optionally compressed).
 *
 * What is read: a planner walks the source's block status through the
 * whole backing chain (a range is left out when it reads as zeros all the
 * way down: zero clusters, holes, unallocated in every image, past the end
 * of a shorter backing file) and hands out requests of up to 2 MiB of
 * what may hold data. What is written: each request's data less its
 * all-zero blocks (-S, 4 KiB by default, as qemu-img), so the output is a
 * sparse file or an image whose zero clusters stay unallocated.
 *
 * Raw output: -j threads, each with its own IO context and its own handle
 * on the source (reads, decompression and the copy into the output run on
 * every core), write the output file with pwrite. qcow2 output: reader
 * threads (-j, two by default), each with its own context and handle on
 * the source, fill buffers that the main thread writes into the new image
 * on its own context, in guest order, as qemu-img does without -W (the
 * engine may still allocate some clusters out of order when several writes
 * wait for the same new table); with -c, clusters are compressed on -j
 * worker threads in between.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <malloc.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "cli.h"
#include "commands.h"
#include "create_opts.h"

#define CONVERT_CHUNK (2u << 20)   /* bytes per request, as qemu-img */
#define CONVERT_INFLIGHT 8         /* requests in flight (-m), as qemu-img */
#define CONVERT_MAX_INFLIGHT 64
#define CONVERT_MAX_THREADS 64
/* qcow2 output: reader threads (-j). Measured on 2 CPUs, cold source:
 * 2 beat 1 (raw and qcow2 sources, 1.35 s against 1.67 s and 1.34 against
 * 1.51; medians of 6): the page cache's work for the reads (and the
 * host's faults for its pages on a VM) spreads over both. */
#define CONVERT_READERS 2
/* Ordered qcow2 output: slots whose writes are in flight at once. With
 * more, the engine lets a burst of writes that wait for the same metadata
 * go on in another order, and their clusters land out of order (raw ->
 * qcow2 of 1 GiB: 53 extents with 8; with 2 or 3, 4 as before the readers
 * had threads of their own); measured no slower. */
#define CONVERT_WRITING 2
#define CONVERT_SPARSE 4096        /* -S default, as qemu-img */
#define RAW_DIRECT_ALIGN 4096      /* O_DIRECT output: offsets and lengths */

enum target_cache { CACHE_UNSAFE, CACHE_WRITEBACK, CACHE_NONE };

static uint64_t min_u64(uint64_t a, uint64_t b)
{
	return a < b ? a : b;
}

static uint64_t align_down_u64(uint64_t v, uint64_t a)
{
	return v / a * a;
}

/* Are len bytes at p (8-byte aligned) all zero? Data usually differs in its
 * first word; zeros are scanned 64 bytes a step. */
static bool buf_is_zero(const uint8_t *p, uint64_t len)
{
	const uint64_t *w = (const uint64_t *)(const void *)p;
	uint64_t n = len / 8, i = 0;

	if (n && (w[0] | w[n - 1]))
		return false;
	for (; i + 8 <= n; i += 8)
		if (w[i] | w[i + 1] | w[i + 2] | w[i + 3] | w[i + 4] | w[i + 5] |
		    w[i + 6] | w[i + 7])
			return false;
	for (; i < n; i++)
		if (w[i])
			return false;
	for (i = n * 8; i < len; i++)
		if (p[i])
			return false;
	return true;
}

/*
 * The next range to write of a buffer holding guest [off, off + len), from
 * *pos on: runs of all-zero units (unit-aligned in guest offsets, the
 * buffer's ends cut them) at least sparse bytes long are left out; shorter
 * ones are written with the data around them. sparse 0 writes everything.
 * Returns false when nothing is left; else [*rs, *re) and *pos moved on.
 */
static bool next_run(const uint8_t *buf, uint64_t off, uint64_t len,
		     uint64_t unit, uint64_t sparse, uint64_t *pos,
		     uint64_t *rs, uint64_t *re)
{
	const uint64_t none = UINT64_MAX, end = off + len;
	uint64_t p = *pos, start = none, zstart = none;

	if (p >= end)
		return false;
	if (!sparse) {
		*rs = p;
		*re = end;
		*pos = end;
		return true;
	}
	while (p < end) {
		uint64_t q = min_u64(align_down_u64(p, unit) + unit, end);

		if (buf_is_zero(buf + (p - off), q - p)) {
			if (zstart == none)
				zstart = p;
		} else {
			if (zstart != none) {
				if (p - zstart >= sparse && start != none) {
					/* a hole ends the run */
					*rs = start;
					*re = zstart;
					*pos = p;
					return true;
				}
				if (p - zstart < sparse && start == none)
					start = zstart; /* too short to leave out */
				zstart = none;
			}
			if (start == none)
				start = p;
		}
		p = q;
	}
	*pos = end;
	if (zstart != none && end - zstart < sparse) {
		if (start == none)
			start = zstart;
		zstart = none;
	}
	if (start == none)
		return false;
	*rs = start;
	*re = zstart != none ? zstart : end;
	return true;
}

/* ---- the plan: what to read, from block status ---------------------------- */

/*
 * How guest [off, off + len) of img reads through its backing chain, from
 * off: *n bytes (0 < *n <= len) that are all zeros (*zero) or may hold
 * data. On failure, *where is the image whose block status failed.
 */
static int chain_status(struct qcow2_image *img, uint64_t off, uint64_t len,
			uint64_t *n, bool *zero, struct qcow2_image **where)
{
	for (;;) {
		struct qcow2_info info;
		struct qcow2_extent e;
		struct qcow2_image *b;
		int ret;

		qcow2_get_info(img, &info);
		if (off >= info.virtual_size) {
			/* past the end of a shorter backing file */
			*n = len;
			*zero = true;
			return 0;
		}
		ret = qcow2_block_status(img, off, len, &e);
		if (ret < 0) {
			*where = img;
			return ret;
		}
		if (!e.length || e.length > len)
			e.length = len;
		*n = e.length;
		switch (e.type) {
		case QCOW2_EXTENT_DATA:
			/* a hole in the image's own file reads zeros */
			*zero = e.hole;
			return 0;
		case QCOW2_EXTENT_COMPRESSED:
			*zero = false;
			return 0;
		case QCOW2_EXTENT_ZERO:
			*zero = true;
			return 0;
		case QCOW2_EXTENT_UNALLOCATED:
			b = qcow2_backing(img);
			if (!b) {
				*zero = true;
				return 0;
			}
			img = b;
			len = e.length;
			break;
		default:
			*zero = false;
			return 0;
		}
	}
}

/*
 * The plan is shared by the threads of a conversion. Each takes a segment
 * of the disk at a time (32 MiB) and hands itself requests from it, in
 * order: every thread reads its own handle's file sequentially, so the
 * kernel's readahead follows each of them (measured: 2 MiB requests dealt
 * out in turn to two threads read the source 1.6x slower than one thread).
 */
#define PLAN_SEGMENT (32u << 20)

struct plan {
	pthread_mutex_t lock;
	const char *src_name;
	uint64_t size;       /* of the disk */
	uint64_t pos;        /* segments before it are taken */
	uint64_t align;      /* requests start and end on it (or at size) */
	uint64_t chunk;      /* requests are at most this long (multiple of align) */
	bool use_status;     /* false with -S 0: read everything */
	atomic_bool failed;  /* hand out nothing more */
	uint64_t done;       /* bytes finished or skipped, for progress */
	bool progress;
};

/* One thread's segment: [pos, end) is left to hand out. */
struct cursor {
	uint64_t pos, end;
	uint64_t seq;        /* the caller's count of requests (their order) */
};

static void plan_fail(struct plan *p)
{
	atomic_store(&p->failed, true);
}

/* Bytes finished (written, or found to read zeros), for progress. */
static void plan_account(struct plan *p, uint64_t n)
{
	pthread_mutex_lock(&p->lock);
	p->done += n;
	cli_progress(p->progress, p->done, p->size);
	pthread_mutex_unlock(&p->lock);
}

/* At the end of a zero run found at pos in [pos, end), how far to skip:
 * its aligned part; 0 when too short to skip. */
static uint64_t zero_skip(const struct plan *p, uint64_t pos, uint64_t n,
			  uint64_t end)
{
	uint64_t e = pos + n;

	if (e >= end)
		return end - pos;
	e = align_down_u64(e, p->align);
	return e > pos ? e - pos : 0;
}

static void report_status_error(const struct plan *p, struct qcow2_image *img,
				struct qcow2_image *where, uint64_t off, int ret)
{
	struct qcow2_info info;
	const char *why = qcow2_last_error(where);

	qcow2_get_info(where, &info);
	fprintf(stderr, "%s: %s: block status near offset %llu: %s\n", cli_prog,
		where == img ? p->src_name : info.filename, (unsigned long long)off,
		why[0] ? why : strerror(-ret));
}

/*
 * Hand out the next request, [*off, *off + *len), from the cursor's
 * segment (taking the next segment when it is used up), reading img (the
 * caller's handle on the source) for block status. Returns 1 with a
 * request, 0 when everything is handed out (or after a failure), -errno
 * (message printed) when block status failed.
 */
static int plan_next(struct plan *p, struct cursor *c, struct qcow2_image *img,
		     uint64_t *off, uint64_t *len)
{
	struct qcow2_image *where = img;
	uint64_t start, end, n, skip;
	bool zero;
	int ret;

	for (;;) {
		if (atomic_load(&p->failed))
			return 0;
		if (c->pos >= c->end) {
			pthread_mutex_lock(&p->lock);
			c->pos = p->pos;
			c->end = min_u64(p->size, p->pos + PLAN_SEGMENT);
			p->pos = c->end;
			pthread_mutex_unlock(&p->lock);
			if (c->pos >= c->end)
				return 0;
		}
		start = c->pos;
		if (!p->use_status) {
			end = min_u64(start + p->chunk, c->end);
			break;
		}
		ret = chain_status(img, start, c->end - start, &n, &zero, &where);
		if (ret < 0)
			goto fail;
		if (zero && (skip = zero_skip(p, start, n, c->end))) {
			c->pos += skip;
			plan_account(p, skip);
			continue;
		}
		/* Data (or zeros too short to skip): read it, with the data
		 * that follows, up to a chunk. */
		end = min_u64(c->end, start + (zero ? p->align : n));
		while (end < c->end && end - start < p->chunk) {
			if (end % p->align) {
				end = min_u64(c->end, align_down_u64(end, p->align) +
							       p->align);
				continue;
			}
			ret = chain_status(img, end, c->end - end, &n, &zero, &where);
			if (ret < 0) {
				start = end;
				goto fail;
			}
			if (zero && zero_skip(p, end, n, c->end))
				break;
			end = min_u64(c->end, end + (zero ? p->align : n));
		}
		end = min_u64(end, start + p->chunk);
		break;
	}
	c->pos = end;
	*off = start;
	*len = end - start;
	return 1;
fail:
	plan_fail(p);
	report_status_error(p, img, where, start, ret);
	return ret;
}

/* why: the failed request's message (or the image's last one for a
 * request refused when it was made). */
static void report_read_error(const char *why, const char *src, uint64_t off,
			      int ret)
{
	fprintf(stderr, "%s: %s: read error at offset %llu: %s\n", cli_prog, src,
		(unsigned long long)off, why[0] ? why : strerror(-ret));
}

static const char *usage_text =
	"Usage: qcow2-img convert [OPTIONS] -O raw|qcow2 SOURCE OUTPUT\n"
	"\n"
	"Read SOURCE (qcow2 with its backing chain, or raw) through the\n"
	"asynchronous engine and write its guest contents to OUTPUT, created or\n"
	"replaced: a sparse raw file, or a new qcow2 image made with the -o\n"
	"options. Ranges that read as zeros through the whole backing chain are\n"
	"not read (block status), and all-zero runs of data at least -S bytes\n"
	"long are not written: holes in a raw file, unallocated clusters in a\n"
	"qcow2 image. With -c, every cluster is compressed (zlib, or zstd with\n"
	"-o compression_type=zstd) on worker threads; clusters that do not shrink\n"
	"are stored as they are.\n"
	"\n"
	"Options:\n"
	"  -O raw|qcow2                  output format\n"
	"  -c, --compress                qcow2 output: compress clusters\n"
	"  -o OPTIONS                    qcow2 output: creation options (below)\n"
	"  -S, --sparse SIZE             leave all-zero runs of at least SIZE\n"
	"                                bytes (a multiple of 512) unwritten\n"
	"                                (default 4k; 0: write everything, and\n"
	"                                read zero ranges too)\n"
	"  -m, --parallel N              requests of up to 2 MiB in flight\n"
	"                                (default 8, at most 64)\n"
	"  -j, --threads N               raw output: threads that read and write\n"
	"                                (default: twice the CPUs, at most -m);\n"
	"                                qcow2 output: threads that read the\n"
	"                                source (default 2, at most -m), with -c:\n"
	"                                compression threads (default: the CPUs;\n"
	"                                2 readers)\n"
	"  -T, --target-cache unsafe|writeback|none\n"
	"                                the output's cache: unsafe (default, as\n"
	"                                qemu-img convert): page cache, output\n"
	"                                not flushed; writeback: page cache, then\n"
	"                                flushed; none: O_DIRECT, flushed. With\n"
	"                                unsafe, a qcow2 output is written in\n"
	"                                order but never synced: a host crash\n"
	"                                may leave it corrupt (as qemu-img's)\n"
	"  -W                            qcow2 output: write in any order (default:\n"
	"                                in guest order)\n"
	"  -p, --progress                show progress (default when stderr is a\n"
	"                                terminal)\n"
	CLI_COMMON_HELP
	"  -h, --help                    this text (options -i -t -f --l2-* are\n"
	"                                the source's; convert reads it through\n"
	"                                the page cache unless -t none)\n"
	"\n"
	CREATE_OPTS_HELP
	"\n"
	"Exit status: 0 success, 1 error (message on stderr), 2 usage error.\n";

struct conv_opts {
	uint64_t sparse;
	unsigned inflight;
	unsigned threads;
	unsigned readers;        /* qcow2 output: reader threads */
	enum target_cache cache;
	bool compress;
	bool unordered;
	bool progress;
};

/*
 * An output written through the page cache and flushed at the end (-T
 * writeback): its write-out is
 * started as the data comes, every 8 MiB, by a thread of its own
 * (sync_file_range, which may block), so that the disk writes while we
 * read and the final flush finds little left. Measured on the development
 * VM, raw -> qcow2 of 1 GiB: 3.26 s without, 2.57 s with.
 */
#define KICK_BYTES (8u << 20)

struct kicker {
	int fd;                  /* the output; -1: no kicks */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	uint64_t pending;        /* bytes written since the last kick */
	bool stop;
	bool started;
	pthread_t thread;
};

static void *kicker_thread(void *arg)
{
	struct kicker *k = arg;

	pthread_mutex_lock(&k->lock);
	for (;;) {
		while (k->pending < KICK_BYTES && !k->stop)
			pthread_cond_wait(&k->cond, &k->lock);
		if (k->stop)
			break;
		k->pending = 0;
		pthread_mutex_unlock(&k->lock);
		(void)sync_file_range(k->fd, 0, 0, SYNC_FILE_RANGE_WRITE);
		pthread_mutex_lock(&k->lock);
	}
	pthread_mutex_unlock(&k->lock);
	return NULL;
}

/* Kicks for fd (-1: none); the caller keeps the fd open until
 * kicker_stop(). Without a thread there are no kicks, nothing else. */
static void kicker_start(struct kicker *k, int fd)
{
	k->fd = fd;
	k->started = false;
	if (fd < 0)
		return;
	pthread_mutex_init(&k->lock, NULL);
	pthread_cond_init(&k->cond, NULL);
	k->started = pthread_create(&k->thread, NULL, kicker_thread, k) == 0;
}

static void kick(struct kicker *k, uint64_t n)
{
	if (!k->started)
		return;
	pthread_mutex_lock(&k->lock);
	k->pending += n;
	if (k->pending >= KICK_BYTES)
		pthread_cond_signal(&k->cond);
	pthread_mutex_unlock(&k->lock);
}

static void kicker_stop(struct kicker *k)
{
	if (!k->started)
		return;
	pthread_mutex_lock(&k->lock);
	k->stop = true;
	pthread_cond_signal(&k->cond);
	pthread_mutex_unlock(&k->lock);
	pthread_join(k->thread, NULL);
	k->started = false;
}

/* ---- raw output -------------------------------------------------------- */

struct rslot {
	uint8_t *buf;
	uint64_t off, len;
	bool busy, done;
	int ret;
	char why[256];          /* the failed read's message */
};

static void rslot_done(void *opaque, int ret, const char *error)
{
	struct rslot *s = opaque;

	s->done = true;
	s->ret = ret;
	if (error)
		snprintf(s->why, sizeof(s->why), "%s", error);
}

struct raw_conv {
	struct plan plan;
	const struct conv_opts *opts;
	const char *dst_name;
	int fd;              /* the output */
	int bfd;             /* with O_DIRECT: a buffered fd for an unaligned tail */
	uint64_t unit;       /* zero detection */
	struct kicker kick;  /* -T writeback */
};

struct rworker {
	struct raw_conv *rc;
	const struct cli_open *o;
	struct qcow2_ctx *ctx;
	struct qcow2_image *img;
	bool own;            /* ctx and img are this worker's (not the caller's) */
	unsigned nslots;
	struct rslot slots[CONVERT_MAX_INFLIGHT];
	pthread_t thread;
	bool started;
	int status;
};

static int pwrite_all(int fd, const uint8_t *buf, uint64_t len, uint64_t off)
{
	while (len) {
		ssize_t r = pwrite(fd, buf, len, (off_t)off);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0)
			return -EIO;
		buf += r;
		len -= (uint64_t)r;
		off += (uint64_t)r;
	}
	return 0;
}

static int raw_write(struct raw_conv *rc, const struct rslot *s)
{
	uint64_t pos = s->off, rs, re;

	while (next_run(s->buf, s->off, s->len, rc->unit, rc->opts->sparse, &pos,
			&rs, &re)) {
		int fd = rc->fd, ret;

		if (rc->bfd >= 0 && (rs % RAW_DIRECT_ALIGN || re % RAW_DIRECT_ALIGN))
			fd = rc->bfd;
		ret = pwrite_all(fd, s->buf + (rs - s->off), re - rs, rs);
		if (ret < 0) {
			fprintf(stderr, "%s: %s: write error at offset %llu: %s\n",
				cli_prog, rc->dst_name, (unsigned long long)rs,
				strerror(-ret));
			return ret;
		}
	}
	return 0;
}

/* One thread of a raw conversion: claims requests, reads them through its
 * own context, writes their data. A worker of its own (not the caller's)
 * opens the source in its thread: an io_uring context belongs to the
 * thread that made it. */
static void *raw_worker(void *arg)
{
	struct rworker *w = arg;
	struct raw_conv *rc = w->rc;
	struct cursor cur = { 0 };
	unsigned busy = 0;
	bool more = true;

	if (w->own && cli_open_as_is(w->o, rc->plan.src_name, &w->ctx, &w->img) < 0) {
		w->ctx = NULL;
		w->status = 1;
		plan_fail(&rc->plan);
		return NULL;
	}
	for (unsigned i = 0; i < w->nslots; i++) {
		if (posix_memalign((void **)&w->slots[i].buf, 4096, CONVERT_CHUNK)) {
			fprintf(stderr, "%s: out of memory\n", cli_prog);
			w->status = 1;
			plan_fail(&rc->plan);
			more = false;
			break;
		}
	}
	for (;;) {
		for (unsigned i = 0; i < w->nslots && more; i++) {
			struct rslot *s = &w->slots[i];
			int ret;

			if (s->busy)
				continue;
			ret = plan_next(&rc->plan, &cur, w->img, &s->off, &s->len);
			if (ret <= 0) {
				more = false;
				if (ret < 0)
					w->status = 1;
				break;
			}
			s->busy = true;
			s->done = false;
			ret = qcow2_read(w->img, s->off, s->buf, s->len, rslot_done, s);
			if (ret < 0) {
				report_read_error(qcow2_last_error(w->img), rc->plan.src_name,
						  s->off, ret);
				s->busy = false;
				w->status = 1;
				plan_fail(&rc->plan);
				more = false;
				break;
			}
			busy++;
		}
		if (!busy)
			break;
		if (qcow2_ctx_process(w->ctx, true) < 0) {
			fprintf(stderr, "%s: IO backend failure\n", cli_prog);
			w->status = 1;
			plan_fail(&rc->plan);
			break;
		}
		for (unsigned i = 0; i < w->nslots; i++) {
			struct rslot *s = &w->slots[i];

			if (!s->busy || !s->done)
				continue;
			s->busy = false;
			busy--;
			if (s->ret < 0) {
				report_read_error(s->why, rc->plan.src_name, s->off, s->ret);
				w->status = 1;
				plan_fail(&rc->plan);
				more = false;
				continue;
			}
			if (w->status)
				continue;
			if (raw_write(rc, s) < 0) {
				w->status = 1;
				plan_fail(&rc->plan);
				more = false;
				continue;
			}
			plan_account(&rc->plan, s->len);
			kick(&rc->kick, s->len);
		}
	}
	qcow2_ctx_run(w->ctx);
	for (unsigned i = 0; i < w->nslots; i++)
		free(w->slots[i].buf);
	if (w->own)
		cli_close_image(w->ctx, w->img);
	return NULL;
}

static int convert_raw(const struct cli_open *o, struct qcow2_ctx *ctx,
		       struct qcow2_image *img, const char *src, const char *dst,
		       const struct conv_opts *co)
{
	struct qcow2_info in;
	struct raw_conv rc = { .plan = { .lock = PTHREAD_MUTEX_INITIALIZER },
			       .opts = co, .dst_name = dst, .bfd = -1 };
	struct rworker *w;
	struct cli_open o2 = *o;
	unsigned nw = co->threads, per;
	int flags = O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, status = 0;

	qcow2_get_info(img, &in);
	if (co->cache == CACHE_NONE)
		flags |= O_DIRECT;
	rc.fd = open(dst, flags, 0644);
	if (rc.fd < 0 || ftruncate(rc.fd, (off_t)in.virtual_size) < 0 ||
	    (co->cache == CACHE_NONE &&
	     (rc.bfd = open(dst, O_WRONLY | O_CLOEXEC)) < 0)) {
		fprintf(stderr, "%s: %s: %s\n", cli_prog, dst, strerror(errno));
		if (rc.fd >= 0)
			close(rc.fd);
		return 1;
	}
	rc.plan.src_name = src;
	rc.plan.size = in.virtual_size;
	rc.plan.align = in.block_size > 4096 ? in.block_size : 4096;
	rc.plan.chunk = CONVERT_CHUNK;
	rc.plan.use_status = co->sparse != 0;
	rc.plan.progress = co->progress;
	rc.unit = co->sparse && co->sparse < 4096 && co->cache != CACHE_NONE ?
			  co->sparse : 4096;

	/* Threads: each with its own context and handle on the source, so
	 * that reading, decompressing and copying run on every core. */
	if (nw > co->inflight)
		nw = co->inflight;
	if (nw > in.virtual_size / CONVERT_CHUNK + 1)
		nw = (unsigned)(in.virtual_size / CONVERT_CHUNK + 1);
	w = calloc(nw, sizeof(*w));
	if (!w) {
		fprintf(stderr, "%s: out of memory\n", cli_prog);
		if (rc.bfd >= 0)
			close(rc.bfd);
		close(rc.fd);
		return 1;
	}
	/* the others open the source as this one was opened, unprobed */
	o2.format_set = true;
	o2.raw = in.format == QCOW2_FORMAT_RAW;
	per = (co->inflight + nw - 1) / nw;
	for (unsigned i = 0; i < nw; i++) {
		w[i].rc = &rc;
		w[i].o = &o2;
		w[i].nslots = per;
		w[i].own = i > 0;
		if (i == 0) {
			w[i].ctx = ctx;
			w[i].img = img;
		} else if (pthread_create(&w[i].thread, NULL, raw_worker, &w[i]) == 0) {
			w[i].started = true;
		}
	}
	kicker_start(&rc.kick, co->cache == CACHE_WRITEBACK ? rc.fd : -1);
	raw_worker(&w[0]);
	for (unsigned i = 0; i < nw; i++) {
		if (w[i].started)
			pthread_join(w[i].thread, NULL);
		if (w[i].status)
			status = 1;
	}
	kicker_stop(&rc.kick);
	free(w);
	if (!status && co->cache != CACHE_UNSAFE && fsync(rc.fd) < 0) {
		fprintf(stderr, "%s: %s: %s\n", cli_prog, dst, strerror(errno));
		status = 1;
	}
	if (rc.bfd >= 0)
		close(rc.bfd);
	if (close(rc.fd) < 0 && !status) {
		fprintf(stderr, "%s: %s: %s\n", cli_prog, dst, strerror(errno));
		status = 1;
	}
	return status;
}

/* ---- qcow2 output ---------------------------------------------------------- */

/*
 * Readers and a writer. The kernel's work for a buffered read (readahead,
 * the copy out of the page cache) runs in the thread that drives the
 * read's context: when the thread that writes the new image also read a
 * cold source, that work delayed its writes. So the source is read
 * by reader threads, each with its own context, its own handle on the
 * source, its own 32 MiB segments of the plan and its own slots (2 MiB
 * buffers); the main thread writes the filled slots into the new image on
 * its own context, through the compression workers with -c, and gives each
 * slot back to its reader once written.
 *
 * Guest order (without -W): each reader publishes the lowest guest offset
 * it may still hand over (its reads in flight, else its place in the
 * plan); a filled slot is written once no reader can hand over one below
 * it. Readers own their slots, so the reader with the lowest offset always
 * has one to read into when the others' slots wait for it.
 */

enum slot_state { SLOT_FILLED, SLOT_COMPRESSING, SLOT_READY, SLOT_WRITING };

struct reader;

struct slot {
	uint8_t *buf;
	uint64_t off, len;
	struct reader *owner;
	bool done;              /* the reader's read completed */
	int ret;                /* of the read, then of the writes */
	enum slot_state state;  /* while the writer holds it */
	unsigned writes;        /* in flight */
	uint8_t *cbuf;          /* compressed clusters, one cluster apart */
	size_t *clen;
	int *cres;              /* 0 compressed, -ENOSPC store as is, 1 zeros */
	char why[256];          /* the failed read's or write's message */
	struct slot *next;      /* the list it is on */
};

static void qslot_done(void *opaque, int ret, const char *error)
{
	struct slot *s = opaque;

	s->done = true;
	s->ret = ret;
	if (error)
		snprintf(s->why, sizeof(s->why), "%s", error);
}

/* Wake the writer: a slot was handed over, compressed, or a reader ended.
 * The counter saturates long before it could fill: ignore the result. */
static void wake_writer(int fd)
{
	uint64_t one = 1;

	if (write(fd, &one, sizeof(one)) < 0) {
		/* EAGAIN: the writer has wakes pending already */
	}
}

/* Compression workers: slots in, slots out. */
struct pool {
	pthread_mutex_t lock;
	pthread_cond_t work;
	struct slot *todo, *done;
	bool stop;
	bool skip_zero;
	enum qcow2_compression type;
	uint64_t cluster_size;
	unsigned busy;          /* slots queued or being compressed */
	int wake_fd;            /* the writer's */
};

static void *pool_worker(void *arg)
{
	struct pool *p = arg;

	pthread_mutex_lock(&p->lock);
	for (;;) {
		struct slot *s;

		while (!p->todo && !p->stop)
			pthread_cond_wait(&p->work, &p->lock);
		if (p->stop)
			break;
		s = p->todo;
		p->todo = s->next;
		pthread_mutex_unlock(&p->lock);
		for (uint64_t i = 0; i * p->cluster_size < s->len; i++) {
			uint64_t o = i * p->cluster_size;
			uint64_t n = s->len - o < p->cluster_size ? s->len - o :
								    p->cluster_size;
			if (p->skip_zero && buf_is_zero(s->buf + o, n)) {
				s->cres[i] = 1;
				continue;
			}
			s->cres[i] = qcow2_compress(p->type, s->buf + o, n,
						    s->cbuf + o, p->cluster_size - 1,
						    &s->clen[i]);
		}
		pthread_mutex_lock(&p->lock);
		s->next = p->done;
		p->done = s;
		wake_writer(p->wake_fd);
	}
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

struct qconv {
	struct plan plan;
	struct qcow2_image *dst;
	const char *src_name, *dst_name;
	const struct cli_open *src_open; /* how readers open the source */
	const struct conv_opts *opts;
	uint64_t cs, unit;
	int status;              /* the writer's */
	struct kicker kick;
	/* between the readers and the writer, under lock */
	pthread_mutex_t lock;
	struct slot *filled;     /* read, not yet taken by the writer */
	unsigned live;           /* readers still running */
	struct reader *readers;
	unsigned nreaders;
	int wake_fd;             /* eventfd the writer sleeps on */
};

struct reader {
	struct qconv *c;
	struct qcow2_ctx *ctx;
	struct qcow2_image *img;
	struct slot *free;       /* c->lock: its free slots */
	pthread_cond_t cond;     /* a slot came back, or the conversion failed */
	uint64_t low;            /* c->lock: the lowest offset it may hand over */
	pthread_t thread;
	bool started;
	int status;
};

/* The lowest guest offset a reader may still hand over: its reads in
 * flight, and what the plan hands it next (at or after its cursor). */
static uint64_t reader_low(struct slot *const *reading, unsigned n,
			   const struct cursor *cur, bool more)
{
	uint64_t low = more ? cur->pos : UINT64_MAX;

	for (unsigned i = 0; i < n; i++)
		low = min_u64(low, reading[i]->off);
	return low;
}

/*
 * One reader thread: takes requests from the plan into its free slots,
 * reads them on its own context (opened here: an io_uring context belongs
 * to the thread that made it) and hands the filled slots to the writer.
 */
static void *reader_thread(void *arg)
{
	struct reader *r = arg;
	struct qconv *c = r->c;
	struct cursor cur = { 0 };
	struct slot *reading[CONVERT_MAX_INFLIGHT];
	unsigned nreading = 0;
	bool more = true;

	if (cli_open_as_is(c->src_open, c->src_name, &r->ctx, &r->img) < 0) {
		r->ctx = NULL;
		r->status = 1;
		plan_fail(&c->plan);
		more = false;
	}
	for (;;) {
		struct slot *ready = NULL;
		bool handed = false;

		while (more) {
			struct slot *s;
			int ret;

			pthread_mutex_lock(&c->lock);
			s = r->free;
			if (s)
				r->free = s->next;
			pthread_mutex_unlock(&c->lock);
			if (!s)
				break;
			ret = plan_next(&c->plan, &cur, r->img, &s->off, &s->len);
			if (ret > 0) {
				s->done = false;
				ret = qcow2_read(r->img, s->off, s->buf, s->len, qslot_done, s);
				if (ret < 0) {
					report_read_error(qcow2_last_error(r->img), c->src_name, s->off,
							  ret);
					plan_fail(&c->plan);
				} else {
					ret = 1;
				}
			}
			if (ret <= 0) {
				pthread_mutex_lock(&c->lock);
				s->next = r->free;
				r->free = s;
				pthread_mutex_unlock(&c->lock);
				if (ret < 0)
					r->status = 1;
				more = false;
				break;
			}
			reading[nreading++] = s;
		}
		if (!nreading) {
			if (!more)
				break;
			/* Every slot is with the writer: say how far we got
			 * (it may be waiting for that) and wait for one. */
			pthread_mutex_lock(&c->lock);
			r->low = reader_low(reading, 0, &cur, true);
			wake_writer(c->wake_fd);
			while (!r->free && !atomic_load(&c->plan.failed))
				pthread_cond_wait(&r->cond, &c->lock);
			pthread_mutex_unlock(&c->lock);
			continue;
		}
		if (qcow2_ctx_process(r->ctx, true) < 0) {
			fprintf(stderr, "%s: IO backend failure\n", cli_prog);
			r->status = 1;
			plan_fail(&c->plan);
			break;
		}
		for (unsigned i = 0; i < nreading;) {
			struct slot *s = reading[i];

			if (!s->done) {
				i++;
				continue;
			}
			reading[i] = reading[--nreading];
			if (s->ret < 0) {
				report_read_error(s->why, c->src_name, s->off, s->ret);
				r->status = 1;
				plan_fail(&c->plan);
				more = false;
				continue; /* the slot is dropped: nothing reads again */
			}
			s->next = ready;
			ready = s;
		}
		if (atomic_load(&c->plan.failed))
			more = false;
		pthread_mutex_lock(&c->lock);
		while (ready) {
			struct slot *s = ready;

			ready = s->next;
			s->next = c->filled;
			c->filled = s;
			handed = true;
		}
		r->low = reader_low(reading, nreading, &cur, more);
		pthread_mutex_unlock(&c->lock);
		if (handed)
			wake_writer(c->wake_fd);
	}
	if (r->ctx) {
		qcow2_ctx_run(r->ctx);
		cli_close_image(r->ctx, r->img);
	}
	pthread_mutex_lock(&c->lock);
	r->low = UINT64_MAX;
	c->live--;
	pthread_mutex_unlock(&c->lock);
	wake_writer(c->wake_fd);
	return NULL;
}

/* Stop: readers hand out nothing more and stop waiting for slots. */
static void writer_fail(struct qconv *c)
{
	c->status = 1;
	plan_fail(&c->plan);
	pthread_mutex_lock(&c->lock);
	for (unsigned i = 0; i < c->nreaders; i++)
		pthread_cond_broadcast(&c->readers[i].cond);
	pthread_mutex_unlock(&c->lock);
}

/* A written (or dropped) slot goes back to its reader. */
static void give_back(struct qconv *c, struct slot *s)
{
	struct reader *r = s->owner;

	pthread_mutex_lock(&c->lock);
	s->next = r->free;
	r->free = s;
	pthread_cond_signal(&r->cond);
	pthread_mutex_unlock(&c->lock);
}

static void write_done(void *opaque, int ret, const char *error)
{
	struct slot *s = opaque;

	if (ret < 0 && !s->ret) {
		s->ret = ret;
		snprintf(s->why, sizeof(s->why), "%s", error);
	}
	s->writes--;
}

static int issue(struct qconv *c, struct slot *s, int ret, const char *what)
{
	if (ret < 0) {
		const char *why = qcow2_last_error(c->dst);
		fprintf(stderr, "%s: %s: %s at offset %llu: %s\n", cli_prog,
			c->dst_name, what, (unsigned long long)s->off,
			why[0] ? why : strerror(-ret));
		c->status = 1;
		return ret;
	}
	s->writes++;
	return 0;
}

/* Write a slot's data: runs without long zero runs, or compressed clusters. */
static void write_slot(struct qconv *c, struct slot *s)
{
	uint64_t pos = s->off, rs, re;

	s->state = SLOT_WRITING;
	s->ret = 0;
	if (c->opts->compress) {
		for (uint64_t i = 0; i * c->cs < s->len && !c->status; i++) {
			uint64_t o = i * c->cs;
			uint64_t n = s->len - o < c->cs ? s->len - o : c->cs;
			if (s->cres[i] == 1)
				continue;
			if (s->cres[i] == 0)
				issue(c, s, qcow2_write_compressed(c->dst, s->off + o,
								   s->cbuf + o, s->clen[i],
								   write_done, s),
				      "compressed write");
			else if (s->cres[i] == -ENOSPC)
				issue(c, s, qcow2_write(c->dst, s->off + o, s->buf + o, n,
							write_done, s), "write");
			else
				issue(c, s, s->cres[i], "compression");
		}
		return;
	}
	while (!c->status && next_run(s->buf, s->off, s->len, c->unit,
				      c->opts->sparse, &pos, &rs, &re))
		issue(c, s, qcow2_write(c->dst, rs, s->buf + (rs - s->off), re - rs,
					write_done, s), "write");
}

/*
 * The writer's sleep. With readers or compression workers at work, on
 * their eventfd and the context's (after reaping what is ready: the
 * context's eventfd then says when there is more); else in the context.
 * Returns 0 or -errno (the IO backend failed).
 */
static int writer_wait(struct qconv *c, struct qcow2_ctx *ctx, int ctx_fd,
		       bool others)
{
	struct pollfd pfd[2] = { { .fd = c->wake_fd, .events = POLLIN },
				 { .fd = ctx_fd, .events = POLLIN } };
	uint64_t v;
	int n;

	if (!others)
		return qcow2_ctx_process(ctx, true) < 0 ? -EIO : 0;
	n = qcow2_ctx_process(ctx, false);
	if (n != 0)
		return n < 0 ? -EIO : 0;
	if (poll(pfd, qcow2_ctx_inflight(ctx) ? 2 : 1, -1) < 0 && errno != EINTR)
		return -errno;
	if (read(c->wake_fd, &v, sizeof(v)) < 0) {
		/* EAGAIN: the context woke us */
	}
	return qcow2_ctx_process(ctx, false) < 0 ? -EIO : 0;
}

static int convert_qcow2(const struct cli_open *o, struct qcow2_ctx *ctx,
			 struct qcow2_image *src, const char *src_name,
			 const char *dst_name, struct qcow2_create_opts *cro,
			 const struct conv_opts *co)
{
	struct qcow2_info si, di;
	struct qcow2_open_opts oo = { .flags = QCOW2_OPEN_RDWR };
	struct qcow2_error err = { "" };
	struct cli_open o2 = *o;
	struct qconv c = { .plan = { .lock = PTHREAD_MUTEX_INITIALIZER },
			   .src_name = src_name, .dst_name = dst_name,
			   .src_open = &o2, .opts = co, .kick = { .fd = -1 },
			   .lock = PTHREAD_MUTEX_INITIALIZER, .wake_fd = -1 };
	struct slot slots[CONVERT_MAX_INFLIGHT] = { 0 };
	struct slot *held[CONVERT_MAX_INFLIGHT];
	struct reader readers[CONVERT_MAX_THREADS] = { 0 };
	struct pool pool = { .lock = PTHREAD_MUTEX_INITIALIZER,
			     .work = PTHREAD_COND_INITIALIZER, .wake_fd = -1 };
	pthread_t threads[CONVERT_MAX_THREADS];
	unsigned nstarted = 0, nslots = co->inflight, nheld = 0, nr = co->readers;
	uint64_t chunk;
	int ret, ctx_fd;

	qcow2_get_info(src, &si);
	cro->size = si.virtual_size;
	ret = qcow2_create(dst_name, cro, &err);
	if (ret < 0) {
		fprintf(stderr, "%s: %s: %s\n", cli_prog, dst_name,
			err.msg[0] ? err.msg : strerror(-ret));
		return 1;
	}
	if (co->cache != CACHE_NONE)
		oo.flags |= QCOW2_OPEN_BUFFERED;
	if (co->cache == CACHE_UNSAFE)
		oo.flags |= QCOW2_OPEN_UNSAFE;
	ret = qcow2_open(ctx, dst_name, &oo, &c.dst, &err);
	if (ret < 0) {
		fprintf(stderr, "%s: %s: %s\n", cli_prog, dst_name,
			err.msg[0] ? err.msg : strerror(-ret));
		return 1;
	}
	qcow2_get_info(c.dst, &di);
	/* -T writeback: the image is flushed when it closes; its write-out
	 * is started as data comes. */
	kicker_start(&c.kick, co->cache != CACHE_WRITEBACK ? -1 :
				      open(dst_name, O_RDONLY | O_CLOEXEC));
	c.cs = di.cluster_size;
	/* Zeros are looked for in 4 KiB blocks (a partly written cluster
	 * keeps holes in the file where its zeros are, as with qemu-img);
	 * requests cover whole clusters, so that two never share one. All
	 * these sizes are powers of two: the largest is a multiple of the
	 * others. */
	c.unit = 4096 > di.block_size ? 4096 : di.block_size;
	if (co->sparse && co->sparse < c.unit && co->sparse % di.block_size == 0)
		c.unit = co->sparse;
	c.plan.align = c.cs > di.block_size ? c.cs : di.block_size;
	if (si.block_size > c.plan.align)
		c.plan.align = si.block_size;
	chunk = CONVERT_CHUNK;
	c.plan.chunk = chunk > c.plan.align ? align_down_u64(chunk, c.plan.align) :
					      c.plan.align;
	c.plan.src_name = src_name;
	c.plan.size = si.virtual_size;
	c.plan.use_status = co->sparse != 0;
	c.plan.progress = co->progress;
	/* the readers open the source as this one was opened, unprobed */
	o2.format_set = true;
	o2.raw = si.format == QCOW2_FORMAT_RAW;
	pool.type = di.compression_type;
	pool.cluster_size = c.cs;
	pool.skip_zero = co->sparse != 0;
	c.wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	ret = c.wake_fd < 0 ? -errno : qcow2_ctx_event_fd(ctx);
	if (ret < 0) {
		fprintf(stderr, "%s: eventfd: %s\n", cli_prog, strerror(-ret));
		c.status = 1;
		goto out;
	}
	ctx_fd = ret;
	pool.wake_fd = c.wake_fd;
	/* Each reader gets its share of the -m slots (one at least). */
	if (nr > nslots)
		nr = nslots;
	if (nr > si.virtual_size / PLAN_SEGMENT + 1)
		nr = (unsigned)(si.virtual_size / PLAN_SEGMENT + 1);
	for (unsigned i = 0; i < nslots; i++) {
		uint64_t n = c.plan.chunk / c.cs + 1;
		struct slot *s = &slots[i];
		if (posix_memalign((void **)&s->buf, 4096, c.plan.chunk) ||
		    (co->compress &&
		     (posix_memalign((void **)&s->cbuf, 4096, c.plan.chunk) ||
		      !(s->clen = calloc(n, sizeof(*s->clen))) ||
		      !(s->cres = calloc(n, sizeof(*s->cres)))))) {
			fprintf(stderr, "%s: out of memory\n", cli_prog);
			c.status = 1;
			goto out;
		}
		s->owner = &readers[i % nr];
		s->next = s->owner->free;
		s->owner->free = s;
	}
	if (co->compress) {
		for (; nstarted < co->threads && nstarted < CONVERT_MAX_THREADS; nstarted++)
			if (pthread_create(&threads[nstarted], NULL, pool_worker, &pool))
				break;
		if (!nstarted) {
			fprintf(stderr, "%s: cannot start compression threads\n", cli_prog);
			c.status = 1;
			goto out;
		}
	}
	c.readers = readers;
	c.nreaders = nr;
	c.live = nr;
	for (unsigned i = 0; i < nr; i++) {
		readers[i].c = &c;
		pthread_cond_init(&readers[i].cond, NULL);
	}
	for (unsigned i = 0; i < nr; i++) {
		if (pthread_create(&readers[i].thread, NULL, reader_thread, &readers[i])) {
			/* what it would have read is left to the others:
			 * the plan hands out its segments */
			pthread_mutex_lock(&c.lock);
			readers[i].low = UINT64_MAX;
			c.live--;
			pthread_mutex_unlock(&c.lock);
			continue;
		}
		readers[i].started = true;
	}
	if (!c.live) {
		fprintf(stderr, "%s: cannot start reader threads\n", cli_prog);
		c.status = 1;
		goto out;
	}

	for (;;) {
		bool failing = c.status || atomic_load(&c.plan.failed);
		uint64_t bound = UINT64_MAX;
		struct slot *in;
		unsigned live, busy;

		/* Take what the readers handed over, and how far they are. */
		pthread_mutex_lock(&c.lock);
		in = c.filled;
		c.filled = NULL;
		live = c.live;
		for (unsigned i = 0; i < nr; i++)
			bound = min_u64(bound, readers[i].low);
		pthread_mutex_unlock(&c.lock);
		pthread_mutex_lock(&pool.lock);
		while (in) {
			struct slot *s = in;

			in = s->next;
			held[nheld++] = s;
			if (co->compress && !failing) {
				s->state = SLOT_COMPRESSING;
				s->next = pool.todo;
				pool.todo = s;
				pool.busy++;
				pthread_cond_signal(&pool.work);
			} else {
				s->state = SLOT_READY;
			}
		}
		/* Compressed slots come back from the workers. */
		while (pool.done) {
			struct slot *s = pool.done;

			pool.done = s->next;
			pool.busy--;
			s->state = SLOT_READY;
		}
		busy = pool.busy;
		pthread_mutex_unlock(&pool.lock);

		/* Writes go out in guest order (clusters are allocated in that
		 * order): the lowest slot not yet written, once no reader can
		 * hand over one below it; with -W, as they come. */
		while (!failing && !c.status) {
			struct slot *next = NULL;
			unsigned writing = 0;

			/* (a slot whose writes are all done is given back
			 * below: it no longer counts, or with the other
			 * reader finished and this one waiting for its slots,
			 * nobody would wake the writer to write the rest) */
			for (unsigned i = 0; i < nheld; i++)
				writing += held[i]->state == SLOT_WRITING &&
					   held[i]->writes > 0;
			if (!co->unordered && writing >= CONVERT_WRITING)
				break;
			for (unsigned i = 0; i < nheld; i++) {
				struct slot *s = held[i];

				if (s->state == SLOT_WRITING ||
				    (co->unordered && s->state != SLOT_READY))
					continue;
				if (!next || s->off < next->off)
					next = s;
			}
			if (!next || next->state != SLOT_READY ||
			    (!co->unordered && next->off >= bound))
				break;
			write_slot(&c, next);
		}
		if (c.status && !atomic_load(&c.plan.failed))
			writer_fail(&c);
		failing = c.status || atomic_load(&c.plan.failed);

		/* Slots whose writes are done go back to their readers; after
		 * a failure, so do those that wait for nothing. */
		for (unsigned i = 0; i < nheld;) {
			struct slot *s = held[i];

			if (s->state == SLOT_WRITING && s->writes == 0) {
				if (s->ret < 0) {
					fprintf(stderr, "%s: %s: write error near offset %llu: %s\n",
						cli_prog, dst_name, (unsigned long long)s->off,
						s->why);
					if (!c.status)
						writer_fail(&c);
				} else {
					plan_account(&c.plan, s->len);
					kick(&c.kick, s->len);
				}
			} else if (!failing || s->state == SLOT_WRITING ||
				   s->state == SLOT_COMPRESSING) {
				i++;
				continue;
			}
			held[i] = held[--nheld];
			give_back(&c, s);
		}
		if (!live && !nheld)
			break;
		ret = writer_wait(&c, ctx, ctx_fd, live || busy);
		if (ret < 0) {
			fprintf(stderr, "%s: IO backend failure\n", cli_prog);
			/* the slots' writes may never complete: stop here */
			writer_fail(&c);
			break;
		}
	}
	for (unsigned i = 0; i < nr; i++) {
		if (readers[i].started)
			pthread_join(readers[i].thread, NULL);
		if (readers[i].status)
			c.status = 1;
	}
	qcow2_ctx_run(ctx);
	kicker_stop(&c.kick);
	if (!c.status && (ret = qcow2_fsync(c.dst)) < 0) {
		fprintf(stderr, "%s: %s: flush: %s\n", cli_prog, dst_name, strerror(-ret));
		c.status = 1;
	}
out:
	kicker_stop(&c.kick);
	if (c.kick.fd >= 0)
		close(c.kick.fd);
	pthread_mutex_lock(&pool.lock);
	pool.stop = true;
	pthread_cond_broadcast(&pool.work);
	pthread_mutex_unlock(&pool.lock);
	for (unsigned i = 0; i < nstarted; i++)
		pthread_join(threads[i], NULL);
	qcow2_ctx_run(ctx);
	ret = qcow2_close(c.dst, &err);
	if (ret < 0 && !c.status) {
		fprintf(stderr, "%s: %s: the final flush failed: %s\n", cli_prog,
			dst_name, err.msg);
		c.status = 1;
	}
	for (unsigned i = 0; i < c.nreaders; i++)
		pthread_cond_destroy(&readers[i].cond);
	for (unsigned i = 0; i < nslots; i++) {
		free(slots[i].buf);
		free(slots[i].cbuf);
		free(slots[i].clen);
		free(slots[i].cres);
	}
	if (c.wake_fd >= 0)
		close(c.wake_fd);
	return c.status;
}

static int convert_main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "progress", no_argument, 0, 'p' },
		{ "compress", no_argument, 0, 'c' },
		{ "sparse", required_argument, 0, 'S' },
		{ "parallel", required_argument, 0, 'm' },
		{ "target-cache", required_argument, 0, 'T' },
		{ "threads", required_argument, 0, 'j' },
		{ "help", no_argument, 0, 'h' },
		CLI_COMMON_LONGOPTS,
		{ 0, 0, 0, 0 },
	};
	struct cli_open o = { 0 };
	struct qcow2_create_opts cro = { 0 };
	struct conv_opts co = { .sparse = CONVERT_SPARSE,
				.inflight = CONVERT_INFLIGHT,
				.cache = CACHE_UNSAFE, .progress = isatty(2) };
	const char *out_fmt = NULL, *src, *dst;
	bool size_set = false, have_opts = false, src_cache_set = false;
	long ncpus = sysconf(_SC_NPROCESSORS_ONLN), nthreads = 0, v;
	struct qcow2_ctx *ctx;
	struct qcow2_image *img;
	int opt, status;

	while ((opt = getopt_long(argc, argv, "hpcWO:o:S:m:T:j:i:t:f:U", longopts,
				  NULL)) != -1) {
		int r = cli_common_opt(&o, opt, optarg);
		if (r < 0)
			return 2;
		if (r) {
			if (opt == 't')
				src_cache_set = true;
			continue;
		}
		switch (opt) {
		case 'O':
			out_fmt = optarg;
			break;
		case 'c':
			co.compress = true;
			break;
		case 'o':
			if (create_opts_parse(optarg, &cro, &size_set) < 0)
				return 2;
			have_opts = true;
			break;
		case 'S':
			if (cli_parse_size(optarg, &co.sparse) < 0 || co.sparse % 512 ||
			    co.sparse > CONVERT_CHUNK) {
				fprintf(stderr, "%s: -S: a multiple of 512 up to 2M "
					"(0: write everything)\n", cli_prog);
				return 2;
			}
			break;
		case 'm':
			v = strtol(optarg, NULL, 10);
			if (v < 1 || v > CONVERT_MAX_INFLIGHT) {
				fprintf(stderr, "%s: -m: 1 to %d requests\n", cli_prog,
					CONVERT_MAX_INFLIGHT);
				return 2;
			}
			co.inflight = (unsigned)v;
			break;
		case 'T':
			if (!strcmp(optarg, "writeback")) {
				co.cache = CACHE_WRITEBACK;
			} else if (!strcmp(optarg, "none")) {
				co.cache = CACHE_NONE;
			} else if (!strcmp(optarg, "unsafe")) {
				co.cache = CACHE_UNSAFE;
			} else {
				fprintf(stderr, "%s: -T: expected unsafe, writeback or "
					"none\n", cli_prog);
				return 2;
			}
			break;
		case 'W':
			co.unordered = true;
			break;
		case 'j':
			nthreads = strtol(optarg, NULL, 10);
			if (nthreads < 1 || nthreads > CONVERT_MAX_THREADS) {
				fprintf(stderr, "%s: -j: 1 to %d threads\n", cli_prog,
					CONVERT_MAX_THREADS);
				return 2;
			}
			break;
		case 'p':
			co.progress = true;
			break;
		case 'h':
			fputs(usage_text, stdout);
			return 0;
		default:
			fputs(usage_text, stderr);
			return 2;
		}
	}
	if (optind != argc - 2 || !out_fmt) {
		fputs(usage_text, stderr);
		return 2;
	}
	if (strcmp(out_fmt, "raw") && strcmp(out_fmt, "qcow2")) {
		fprintf(stderr, "%s: convert: output format '%s' is not supported "
			"(raw or qcow2)\n", cli_prog, out_fmt);
		return 2;
	}
	if (!strcmp(out_fmt, "raw") && (co.compress || have_opts)) {
		fprintf(stderr, "%s: convert: -c and -o need -O qcow2\n", cli_prog);
		return 2;
	}
	if (size_set) {
		fprintf(stderr, "%s: convert: the size is the source's (no -o size)\n",
			cli_prog);
		return 2;
	}
	if (cro.backing_file) {
		/* Ranges that read as zeros are not written: over a backing
		 * file, they would read its data. */
		fprintf(stderr, "%s: convert: the output cannot have a backing file "
			"(no -o backing_file)\n", cli_prog);
		return 2;
	}
	if (ncpus < 1)
		ncpus = 1;
	/* Raw output: twice the CPUs, as a thread waits in its writes for the
	 * output file (the file system writes one at a time) while others
	 * read and decompress; compression: the CPUs. */
	co.readers = CONVERT_READERS;
	if (!strcmp(out_fmt, "qcow2") && !co.compress && nthreads)
		co.readers = (unsigned)nthreads;
	if (!nthreads)
		nthreads = strcmp(out_fmt, "raw") ? ncpus : 2 * ncpus;
	if (nthreads > CONVERT_MAX_THREADS)
		nthreads = CONVERT_MAX_THREADS;
	co.threads = (unsigned)nthreads;
	/* The source through the page cache unless -t says otherwise, as
	 * qemu-img convert reads it (-T writeback). */
	if (!src_cache_set)
		o.buffered = true;
	src = argv[optind];
	dst = argv[optind + 1];
	if (cli_open_image(&o, src, &ctx, &img) < 0)
		return 1;
	if (!strcmp(out_fmt, "raw"))
		status = convert_raw(&o, ctx, img, src, dst, &co);
	else
		status = convert_qcow2(&o, ctx, img, src, dst, &cro, &co);
	cli_close_image(ctx, img);
	return status;
}

int cmd_convert(int argc, char **argv)
{
	int status;

	/* The engine allocates a bounce buffer for every compressed cluster
	 * it reads and frees it: keep the freed memory instead of giving it
	 * back to the kernel (brk) and faulting it in again, thousands of
	 * times a second. */
	mallopt(M_TRIM_THRESHOLD, 64 << 20);
	mallopt(M_MMAP_THRESHOLD, 4 << 20);
	status = convert_main(argc, argv);

	create_opts_release();
	return status;
}
