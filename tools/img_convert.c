/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * qcow2-img convert: stream an image through the async engine into a raw
 * file, or into a new qcow2 image (optionally compressed: clusters are
 * compressed on worker threads, off the IO loop, and written as they come).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "commands.h"
#include "create_opts.h"

#define CONVERT_SLOTS 16
#define CONVERT_CHUNK (1u << 20)

enum slot_state { SLOT_FREE, SLOT_READING, SLOT_COMPRESSING, SLOT_WRITING };

struct slot {
	uint8_t *buf;
	uint64_t off;
	uint64_t len;
	bool busy;              /* raw output: a read is in flight */
	bool done;
	int ret;
	/* qcow2 output */
	enum slot_state state;
	unsigned writes;        /* in flight */
	uint8_t *cbuf;          /* compressed clusters, one cluster apart */
	size_t *clen;
	int *cres;              /* 0 compressed, -ENOSPC store as is, 1 zeros */
	struct slot *next;      /* pool queues */
};

static void slot_done(void *opaque, int ret)
{
	struct slot *s = opaque;

	s->done = true;
	s->ret = ret;
}

static bool all_zero(const uint8_t *p, uint64_t len)
{
	const uint64_t *w = (const uint64_t *)p;

	for (uint64_t i = 0; i < len / 8; i++)
		if (w[i])
			return false;
	for (uint64_t i = len / 8 * 8; i < len; i++)
		if (p[i])
			return false;
	return true;
}

static const char *usage_text =
	"Usage: qcow2-img convert [OPTIONS] -O raw|qcow2 SOURCE OUTPUT\n"
	"\n"
	"Read SOURCE (qcow2 with its backing chain, or raw with -f raw) through\n"
	"the asynchronous engine and write its guest contents to OUTPUT, created\n"
	"or replaced: a sparse raw file (ranges that read as zeros are holes), or\n"
	"a new qcow2 image (clusters that read as zeros stay unallocated) made\n"
	"with the -o options. With -c, every cluster is compressed (zlib, or\n"
	"zstd with -o compression_type=zstd) on worker threads; clusters that do\n"
	"not shrink are stored as they are. Up to 16 chunks of 1 MiB (one\n"
	"cluster, when larger) are in flight.\n"
	"\n"
	"Options:\n"
	"  -O raw|qcow2                  output format\n"
	"  -c, --compress                qcow2 output: compress clusters\n"
	"  -o OPTIONS                    qcow2 output: creation options (below)\n"
	"  -T, --target-cache none|writeback\n"
	"                                qcow2 output: O_DIRECT (default) or not\n"
	"  -j, --threads N               compression threads (default: CPUs)\n"
	"  -p, --progress                show progress (default when stderr is a\n"
	"                                terminal)\n"
	CLI_COMMON_HELP
	"  -h, --help                    this text (options -i -t -f --l2-* are\n"
	"                                the source's)\n"
	"\n"
	CREATE_OPTS_HELP
	"\n"
	"Exit status: 0 success, 1 error (message on stderr), 2 usage error.\n";

/* ---- raw output ---------------------------------------------------------- */

static int convert_raw(struct qcow2_ctx *ctx, struct qcow2_image *img,
		       const char *src, const char *dst, bool progress)
{
	struct qcow2_info in;
	struct slot slots[CONVERT_SLOTS] = { 0 };
	uint64_t next = 0, written = 0;
	int fd, status = 0;

	qcow2_get_info(img, &in);
	fd = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0 || ftruncate(fd, (off_t)in.virtual_size) < 0) {
		fprintf(stderr, "%s: %s: %s\n", cli_prog, dst, strerror(errno));
		if (fd >= 0)
			close(fd);
		return 1;
	}
	for (int i = 0; i < CONVERT_SLOTS; i++) {
		if (posix_memalign((void **)&slots[i].buf, 4096, CONVERT_CHUNK)) {
			fprintf(stderr, "%s: out of memory\n", cli_prog);
			status = 1;
			goto out;
		}
	}
	while (written < in.virtual_size && !status) {
		for (int i = 0; i < CONVERT_SLOTS && next < in.virtual_size; i++) {
			struct slot *s = &slots[i];
			int ret;
			if (s->busy)
				continue;
			s->off = next;
			s->len = in.virtual_size - next < CONVERT_CHUNK ?
					 in.virtual_size - next : CONVERT_CHUNK;
			s->busy = true;
			s->done = false;
			ret = qcow2_read(img, s->off, s->buf, s->len, slot_done, s);
			if (ret < 0) {
				fprintf(stderr, "%s: %s: read at %llu: %s\n", cli_prog, src,
					(unsigned long long)s->off, strerror(-ret));
				s->busy = false;
				status = 1;
				break;
			}
			next += s->len;
		}
		if (qcow2_ctx_process(ctx, true) < 0) {
			fprintf(stderr, "%s: IO backend failure\n", cli_prog);
			status = 1;
		}
		for (int i = 0; i < CONVERT_SLOTS; i++) {
			struct slot *s = &slots[i];
			if (!s->busy || !s->done)
				continue;
			s->busy = false;
			if (s->ret < 0) {
				const char *why = qcow2_last_error(img);
				fprintf(stderr, "%s: %s: read error at offset %llu: %s\n",
					cli_prog, src, (unsigned long long)s->off,
					why[0] ? why : strerror(-s->ret));
				status = 1;
				continue;
			}
			if (!all_zero(s->buf, s->len) &&
			    pwrite(fd, s->buf, s->len, (off_t)s->off) != (ssize_t)s->len) {
				fprintf(stderr, "%s: %s: write error: %s\n", cli_prog, dst,
					strerror(errno));
				status = 1;
			}
			written += s->len;
			cli_progress(progress, written, in.virtual_size);
		}
	}
	qcow2_ctx_run(ctx);
	if (!status && fsync(fd) < 0) {
		fprintf(stderr, "%s: %s: %s\n", cli_prog, dst, strerror(errno));
		status = 1;
	}
out:
	for (int i = 0; i < CONVERT_SLOTS; i++)
		free(slots[i].buf);
	close(fd);
	return status;
}

/* ---- qcow2 output ---------------------------------------------------------- */

/* Compression workers: slots in, slots out. */
struct pool {
	pthread_mutex_t lock;
	pthread_cond_t work, done_cond;
	struct slot *todo, *done;
	bool stop;
	enum qcow2_compression type;
	uint64_t cluster_size;
	unsigned busy;          /* slots queued or being compressed */
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
			if (all_zero(s->buf + o, n)) {
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
		pthread_cond_signal(&p->done_cond);
	}
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

struct qconv {
	struct qcow2_image *src, *dst;
	const char *src_name, *dst_name;
	uint64_t size, chunk, cs, wgran;
	bool compress;
	int status;
};

static void write_done(void *opaque, int ret)
{
	struct slot *s = opaque;

	if (ret < 0 && !s->ret)
		s->ret = ret;
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

/* Write a slot's data: runs of non-zero pieces, or compressed clusters. */
static void write_slot(struct qconv *c, struct slot *s)
{
	s->state = SLOT_WRITING;
	s->ret = 0;
	if (c->compress) {
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
	for (uint64_t o = 0; o < s->len && !c->status;) {
		uint64_t n, run = 0;
		while (o + run < s->len) {
			n = s->len - (o + run) < c->wgran ? s->len - (o + run) : c->wgran;
			if (all_zero(s->buf + o + run, n))
				break;
			run += n;
		}
		if (run) {
			issue(c, s, qcow2_write(c->dst, s->off + o, s->buf + o, run,
						write_done, s), "write");
			o += run;
			continue;
		}
		o += s->len - o < c->wgran ? s->len - o : c->wgran;
	}
}

static int convert_qcow2(struct qcow2_ctx *ctx, struct qcow2_image *src,
			 const char *src_name, const char *dst_name,
			 struct qcow2_create_opts *co, bool compress,
			 bool buffered, unsigned nthreads, bool progress)
{
	struct qcow2_info si, di;
	struct qcow2_open_opts oo = { .flags = QCOW2_OPEN_RDWR };
	struct qcow2_error err = { "" };
	struct qconv c = { .src = src, .src_name = src_name, .dst_name = dst_name,
			   .compress = compress };
	struct slot slots[CONVERT_SLOTS] = { 0 };
	struct pool pool = { .lock = PTHREAD_MUTEX_INITIALIZER,
			     .work = PTHREAD_COND_INITIALIZER,
			     .done_cond = PTHREAD_COND_INITIALIZER };
	pthread_t threads[64];
	unsigned nstarted = 0;
	uint64_t next = 0, finished = 0;
	int ret;

	qcow2_get_info(src, &si);
	co->size = si.virtual_size;
	ret = qcow2_create(dst_name, co, &err);
	if (ret < 0) {
		fprintf(stderr, "%s: %s: %s\n", cli_prog, dst_name,
			err.msg[0] ? err.msg : strerror(-ret));
		return 1;
	}
	if (buffered)
		oo.flags |= QCOW2_OPEN_BUFFERED;
	ret = qcow2_open(ctx, dst_name, &oo, &c.dst, &err);
	if (ret < 0) {
		fprintf(stderr, "%s: %s: %s\n", cli_prog, dst_name,
			err.msg[0] ? err.msg : strerror(-ret));
		return 1;
	}
	qcow2_get_info(c.dst, &di);
	c.size = si.virtual_size;
	c.cs = di.cluster_size;
	c.wgran = di.cluster_size > di.block_size ? di.cluster_size : di.block_size;
	c.chunk = CONVERT_CHUNK > c.cs ? CONVERT_CHUNK : c.cs;
	pool.type = di.compression_type;
	pool.cluster_size = c.cs;
	for (int i = 0; i < CONVERT_SLOTS; i++) {
		uint64_t n = c.chunk / c.cs + 1;
		struct slot *s = &slots[i];
		if (posix_memalign((void **)&s->buf, 4096, c.chunk) ||
		    (compress && (posix_memalign((void **)&s->cbuf, 4096, c.chunk) ||
				  !(s->clen = calloc(n, sizeof(*s->clen))) ||
				  !(s->cres = calloc(n, sizeof(*s->cres)))))) {
			fprintf(stderr, "%s: out of memory\n", cli_prog);
			c.status = 1;
			goto out;
		}
	}
	if (compress) {
		for (; nstarted < nthreads && nstarted < 64; nstarted++)
			if (pthread_create(&threads[nstarted], NULL, pool_worker, &pool))
				break;
		if (!nstarted) {
			fprintf(stderr, "%s: cannot start compression threads\n", cli_prog);
			c.status = 1;
			goto out;
		}
	}

	while (finished < c.size && !c.status) {
		bool waiting_pool;

		for (int i = 0; i < CONVERT_SLOTS && next < c.size && !c.status; i++) {
			struct slot *s = &slots[i];
			if (s->state != SLOT_FREE)
				continue;
			s->off = next;
			s->len = c.size - next < c.chunk ? c.size - next : c.chunk;
			s->state = SLOT_READING;
			s->done = false;
			ret = qcow2_read(src, s->off, s->buf, s->len, slot_done, s);
			if (ret < 0) {
				fprintf(stderr, "%s: %s: read at %llu: %s\n", cli_prog,
					src_name, (unsigned long long)s->off, strerror(-ret));
				s->state = SLOT_FREE;
				c.status = 1;
				break;
			}
			next += s->len;
		}
		/* Compressed slots come back from the workers. */
		pthread_mutex_lock(&pool.lock);
		while (pool.done) {
			struct slot *s = pool.done;
			pool.done = s->next;
			pool.busy--;
			pthread_mutex_unlock(&pool.lock);
			write_slot(&c, s);
			pthread_mutex_lock(&pool.lock);
		}
		waiting_pool = pool.busy > 0;
		pthread_mutex_unlock(&pool.lock);

		if (qcow2_ctx_inflight(ctx) > 0 || !waiting_pool) {
			if (qcow2_ctx_process(ctx, !waiting_pool) < 0) {
				fprintf(stderr, "%s: IO backend failure\n", cli_prog);
				c.status = 1;
			}
		}
		if (waiting_pool && qcow2_ctx_inflight(ctx) == 0) {
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_nsec += 2000000;
			if (ts.tv_nsec >= 1000000000) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000;
			}
			pthread_mutex_lock(&pool.lock);
			if (!pool.done)
				pthread_cond_timedwait(&pool.done_cond, &pool.lock, &ts);
			pthread_mutex_unlock(&pool.lock);
		}
		for (int i = 0; i < CONVERT_SLOTS; i++) {
			struct slot *s = &slots[i];
			if (s->state == SLOT_READING && s->done) {
				if (s->ret < 0) {
					const char *why = qcow2_last_error(src);
					fprintf(stderr, "%s: %s: read error at offset %llu: %s\n",
						cli_prog, src_name, (unsigned long long)s->off,
						why[0] ? why : strerror(-s->ret));
					c.status = 1;
					s->state = SLOT_FREE;
					continue;
				}
				if (compress) {
					s->state = SLOT_COMPRESSING;
					pthread_mutex_lock(&pool.lock);
					s->next = pool.todo;
					pool.todo = s;
					pool.busy++;
					pthread_cond_signal(&pool.work);
					pthread_mutex_unlock(&pool.lock);
				} else {
					write_slot(&c, s);
				}
			}
			if (s->state == SLOT_WRITING && s->writes == 0) {
				if (s->ret < 0) {
					const char *why = qcow2_last_error(c.dst);
					fprintf(stderr, "%s: %s: write error near offset %llu: %s\n",
						cli_prog, dst_name, (unsigned long long)s->off,
						why[0] ? why : strerror(-s->ret));
					c.status = 1;
				}
				s->state = SLOT_FREE;
				finished += s->len;
				cli_progress(progress, finished, c.size);
			}
		}
	}
	qcow2_ctx_run(ctx);
	if (!c.status && (ret = qcow2_fsync(c.dst)) < 0) {
		fprintf(stderr, "%s: %s: flush: %s\n", cli_prog, dst_name, strerror(-ret));
		c.status = 1;
	}
out:
	pthread_mutex_lock(&pool.lock);
	pool.stop = true;
	pthread_cond_broadcast(&pool.work);
	pthread_mutex_unlock(&pool.lock);
	for (unsigned i = 0; i < nstarted; i++)
		pthread_join(threads[i], NULL);
	qcow2_ctx_run(ctx);
	qcow2_close(c.dst);
	for (int i = 0; i < CONVERT_SLOTS; i++) {
		free(slots[i].buf);
		free(slots[i].cbuf);
		free(slots[i].clen);
		free(slots[i].cres);
	}
	return c.status;
}

static int convert_main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "progress", no_argument, 0, 'p' },
		{ "compress", no_argument, 0, 'c' },
		{ "target-cache", required_argument, 0, 'T' },
		{ "threads", required_argument, 0, 'j' },
		{ "help", no_argument, 0, 'h' },
		CLI_COMMON_LONGOPTS,
		{ 0, 0, 0, 0 },
	};
	struct cli_open o = { 0 };
	struct qcow2_create_opts co = { 0 };
	const char *out_fmt = NULL, *src, *dst;
	bool progress = isatty(2), compress = false, size_set = false;
	bool dst_buffered = false, have_opts = false;
	long nthreads = sysconf(_SC_NPROCESSORS_ONLN);
	struct qcow2_ctx *ctx;
	struct qcow2_image *img;
	int opt, status;

	while ((opt = getopt_long(argc, argv, "hpcO:o:T:j:i:t:f:U", longopts,
				  NULL)) != -1) {
		int r = cli_common_opt(&o, opt, optarg);
		if (r < 0)
			return 2;
		if (r)
			continue;
		switch (opt) {
		case 'O':
			out_fmt = optarg;
			break;
		case 'c':
			compress = true;
			break;
		case 'o':
			if (create_opts_parse(optarg, &co, &size_set) < 0)
				return 2;
			have_opts = true;
			break;
		case 'T':
			if (!strcmp(optarg, "writeback")) {
				dst_buffered = true;
			} else if (strcmp(optarg, "none")) {
				fprintf(stderr, "%s: -T: expected none or writeback\n", cli_prog);
				return 2;
			}
			break;
		case 'j':
			nthreads = strtol(optarg, NULL, 10);
			if (nthreads < 1 || nthreads > 64) {
				fprintf(stderr, "%s: -j: 1 to 64 threads\n", cli_prog);
				return 2;
			}
			break;
		case 'p':
			progress = true;
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
	if (!strcmp(out_fmt, "raw") && (compress || have_opts)) {
		fprintf(stderr, "%s: convert: -c and -o need -O qcow2\n", cli_prog);
		return 2;
	}
	if (size_set) {
		fprintf(stderr, "%s: convert: the size is the source's (no -o size)\n",
			cli_prog);
		return 2;
	}
	if (nthreads < 1)
		nthreads = 1;
	src = argv[optind];
	dst = argv[optind + 1];
	if (cli_open_image(&o, src, &ctx, &img) < 0)
		return 1;
	if (!strcmp(out_fmt, "raw"))
		status = convert_raw(ctx, img, src, dst, progress);
	else
		status = convert_qcow2(ctx, img, src, dst, &co, compress,
				       dst_buffered, (unsigned)nthreads, progress);
	cli_close_image(ctx, img);
	return status;
}

int cmd_convert(int argc, char **argv)
{
	int status = convert_main(argc, argv);

	create_opts_release();
	return status;
}
