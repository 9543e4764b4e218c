/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* qcow2-img bench: drive the engine alone, like qemu-img bench, and report
 * IOPS and latency percentiles. */
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "commands.h"

struct bench {
	struct qcow2_image *img;
	uint64_t count, issued, done, errors;
	uint64_t size, step, offset, next, disk;
	bool random, write;
	uint64_t seed;
	uint64_t *lat_ns;
	char first_error[256];  /* the first failed request's message */
	/* --writeback-interval: the service's lazy write-back timer */
	uint64_t wb_interval_ns, wb_last_ns, wb_started;
	bool wb_running;
};

struct bench_req {
	struct bench *b;
	void *buf;
	uint64_t start_ns;
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t xorshift(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void bench_issue(struct bench_req *r);

static void writeback_done(void *opaque, int ret, const char *error)
{
	struct bench *b = opaque;

	(void)ret; /* counted in the image's flush statistics */
	(void)error;
	b->wb_running = false;
}

/* What qcow2d's per-image timer does, checked after every wake-up (the
 * requests in flight keep them coming). */
static void writeback_tick(struct bench *b)
{
	uint64_t t;

	if (!b->wb_interval_ns || b->wb_running)
		return;
	t = now_ns();
	if (t - b->wb_last_ns < b->wb_interval_ns)
		return;
	b->wb_last_ns = t;
	if (!qcow2_has_dirty_metadata(b->img))
		return;
	if (qcow2_writeback(b->img, writeback_done, b) == 0) {
		b->wb_running = true;
		b->wb_started++;
	}
}

static void bench_done(void *opaque, int ret, const char *error)
{
	struct bench_req *r = opaque;
	struct bench *b = r->b;

	b->lat_ns[b->done++] = now_ns() - r->start_ns;
	if (ret < 0) {
		if (!b->errors++)
			snprintf(b->first_error, sizeof(b->first_error), "%s", error);
	}
	if (b->issued < b->count)
		bench_issue(r);
}

static void bench_issue(struct bench_req *r)
{
	struct bench *b = r->b;
	uint64_t off;
	int ret;

	if (b->random) {
		off = (xorshift(&b->seed) % ((b->disk - b->size) / b->size + 1)) * b->size;
	} else {
		if (b->next + b->size > b->disk)
			b->next = 0;
		off = b->next;
		b->next += b->step;
	}
	b->issued++;
	r->start_ns = now_ns();
	ret = b->write ? qcow2_write(b->img, off, r->buf, b->size, bench_done, r) :
			 qcow2_read(b->img, off, r->buf, b->size, bench_done, r);
	if (ret < 0) {
		b->lat_ns[b->done++] = 0;
		if (!b->errors++) {
			const char *why = qcow2_last_error(b->img);
			snprintf(b->first_error, sizeof(b->first_error), "%s",
				 why[0] ? why : strerror(-ret));
		}
	}
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static double pct(const uint64_t *v, uint64_t n, double p)
{
	uint64_t i = (uint64_t)(p / 100.0 * (double)(n - 1) + 0.5);

	return (double)v[i < n ? i : n - 1] / 1000.0;
}

static const char *usage_text =
	"Usage: qcow2-img bench [OPTIONS] IMAGE\n"
	"\n"
	"Run COUNT requests of SIZE bytes against IMAGE through the engine alone\n"
	"(no service), DEPTH at a time, like qemu-img bench; print the elapsed\n"
	"time, IOPS, throughput and latency percentiles.\n"
	"\n"
	"Options:\n"
	"  -c, --count COUNT             requests (default 75000)\n"
	"  -d, --depth DEPTH             requests in flight (default 64)\n"
	"  -s, --size SIZE               bytes per request (default 4k)\n"
	"  -S, --step STEP               sequential step (default SIZE)\n"
	"  -o, --offset OFFSET           first sequential offset (default 0)\n"
	"      --random                  SIZE-aligned random offsets instead\n"
	"      --seed N                  random seed (default 1)\n"
	"      --writeback-interval MS   write dirty metadata back every MS\n"
	"                                milliseconds, as qcow2d's --flush-interval\n"
	"                                does (default 0: only when a cache is full\n"
	"                                and at close); prints what was written\n"
	"  -w, --write                   write instead of read (the image is\n"
	"                                opened read-write; data is overwritten)\n"
	"      --json                    one JSON object on stdout\n"
	CLI_COMMON_HELP
	"  -h, --help                    this text\n"
	"\n"
	"Exit status: 0 success, 1 error (a request failed, or open failed),\n"
	"2 usage error.\n";

int cmd_bench(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "count", required_argument, 0, 'c' },
		{ "depth", required_argument, 0, 'd' },
		{ "size", required_argument, 0, 's' },
		{ "step", required_argument, 0, 'S' },
		{ "offset", required_argument, 0, 'o' },
		{ "random", no_argument, 0, 'r' },
		{ "seed", required_argument, 0, 'e' },
		{ "writeback-interval", required_argument, 0, 'W' },
		{ "write", no_argument, 0, 'w' },
		{ "json", no_argument, 0, 'j' },
		{ "help", no_argument, 0, 'h' },
		CLI_COMMON_LONGOPTS,
		{ 0, 0, 0, 0 },
	};
	struct cli_open o = { 0 };
	struct bench b = { .count = 75000, .size = 4096, .seed = 1 };
	uint64_t depth = 64, v, t0, elapsed;
	bool json = false;
	struct qcow2_ctx *ctx;
	struct qcow2_image *img;
	struct qcow2_info in;
	struct qcow2_stats st;
	struct bench_req *reqs;
	int opt, status = 0;

	while ((opt = getopt_long(argc, argv, "hc:d:s:S:o:wi:t:f:U", longopts, NULL)) != -1) {
		int r = cli_common_opt(&o, opt, optarg);
		if (r < 0)
			return 2;
		if (r)
			continue;
		switch (opt) {
		case 'c': case 'd': case 's': case 'S': case 'o': case 'e': case 'W':
			if (cli_parse_size(optarg, &v) < 0) {
				fprintf(stderr, "%s: bench: invalid number '%s'\n", cli_prog, optarg);
				return 2;
			}
			if (opt == 'c') b.count = v;
			else if (opt == 'd') depth = v;
			else if (opt == 's') b.size = v;
			else if (opt == 'S') b.step = v;
			else if (opt == 'o') b.offset = v;
			else if (opt == 'W') b.wb_interval_ns = v * 1000000ull;
			else b.seed = v ? v : 1;
			break;
		case 'r': b.random = true; break;
		case 'w': b.write = true; break;
		case 'j': json = true; break;
		case 'h':
			fputs(usage_text, stdout);
			return 0;
		default:
			fputs(usage_text, stderr);
			return 2;
		}
	}
	if (optind != argc - 1 || !b.count || !depth || depth > 4096 || !b.size ||
	    b.size > (64u << 20)) {
		fputs(usage_text, stderr);
		return 2;
	}
	if (!b.step)
		b.step = b.size;
	o.rdwr = b.write;
	o.depth = (unsigned)(depth * 2 > 256 ? depth * 2 : 256);
	if (cli_open_image(&o, argv[optind], &ctx, &img) < 0)
		return 1;
	qcow2_get_info(img, &in);
	b.img = img;
	b.disk = in.virtual_size;
	b.next = b.offset;
	if (b.size > b.disk || b.size % in.block_size || b.offset % in.block_size ||
	    b.step % in.block_size) {
		fprintf(stderr, "%s: bench: size, step and offset must be multiples of "
			"%u and the size at most the disk\n", cli_prog, in.block_size);
		cli_close_image(ctx, img);
		return 2;
	}
	b.lat_ns = calloc(b.count, sizeof(*b.lat_ns));
	reqs = calloc(depth, sizeof(*reqs));
	for (uint64_t i = 0; reqs && i < depth; i++) {
		reqs[i].b = &b;
		if (posix_memalign(&reqs[i].buf, in.mem_align > 4096 ? in.mem_align : 4096,
				   b.size)) {
			reqs[i].buf = NULL;
			break;
		}
		memset(reqs[i].buf, 0xa5 ^ (int)i, b.size);
	}
	if (!b.lat_ns || !reqs || !reqs[depth - 1].buf) {
		fprintf(stderr, "%s: out of memory\n", cli_prog);
		status = 1;
		goto out;
	}
	if (!json)
		printf("Sending %" PRIu64 " %s requests, %" PRIu64 " bytes each, %" PRIu64
		       " in parallel (%s, backend %s, cache %s)\n", b.count,
		       b.write ? "write" : "read", b.size, depth,
		       b.random ? "random offsets" : "sequential",
		       o.backend == QCOW2_BACKEND_SYNC ? "sync" : "io_uring",
		       o.buffered ? "writeback" : "none");
	t0 = now_ns();
	b.wb_last_ns = t0;
	for (uint64_t i = 0; i < depth && b.issued < b.count; i++)
		bench_issue(&reqs[i]);
	while (b.done < b.count) {
		if (qcow2_ctx_process(ctx, true) < 0) {
			fprintf(stderr, "%s: IO backend failure\n", cli_prog);
			status = 1;
			break;
		}
		writeback_tick(&b);
	}
	elapsed = now_ns() - t0;
	qcow2_ctx_run(ctx);
	qcow2_get_stats(img, &st);
	if (b.errors) {
		fprintf(stderr, "%s: bench: %" PRIu64 " requests failed; the first: %s\n",
			cli_prog, b.errors, b.first_error);
		status = 1;
	}
	qsort(b.lat_ns, b.done, sizeof(*b.lat_ns), cmp_u64);
	if (b.done) {
		double secs = (double)elapsed / 1e9;
		double iops = (double)b.done / secs;
		double mibs = iops * (double)b.size / (1 << 20);
		if (json) {
			json_t *r = json_object();
			json_object_set_new(r, "mode", json_string(b.write ? "write" : "read"));
			json_object_set_new(r, "pattern", json_string(b.random ? "random" : "sequential"));
			json_object_set_new(r, "count", json_integer((json_int_t)b.done));
			json_object_set_new(r, "depth", json_integer((json_int_t)depth));
			json_object_set_new(r, "size", json_integer((json_int_t)b.size));
			json_object_set_new(r, "backend", json_string(o.backend == QCOW2_BACKEND_SYNC ? "sync" : "io_uring"));
			json_object_set_new(r, "cache", json_string(o.buffered ? "writeback" : "none"));
			json_object_set_new(r, "seconds", json_real(secs));
			json_object_set_new(r, "iops", json_real(iops));
			json_object_set_new(r, "mib-per-s", json_real(mibs));
			json_object_set_new(r, "lat-us-p50", json_real(pct(b.lat_ns, b.done, 50)));
			json_object_set_new(r, "lat-us-p90", json_real(pct(b.lat_ns, b.done, 90)));
			json_object_set_new(r, "lat-us-p99", json_real(pct(b.lat_ns, b.done, 99)));
			json_object_set_new(r, "lat-us-p999", json_real(pct(b.lat_ns, b.done, 99.9)));
			json_object_set_new(r, "lat-us-max", json_real((double)b.lat_ns[b.done - 1] / 1000.0));
			json_object_set_new(r, "errors", json_integer((json_int_t)b.errors));
			if (b.write)
				json_object_set_new(r, "writeback", json_pack(
					"{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:f}",
					"interval-ms", (json_int_t)(b.wb_interval_ns / 1000000),
					"timer", (json_int_t)b.wb_started,
					"eviction", (json_int_t)st.flush.flushes[QCOW2_FLUSH_EVICTION],
					"errors", (json_int_t)st.flush.errors,
					"metadata-bytes", (json_int_t)(st.flush.l2_bytes +
						st.flush.refblock_bytes + st.flush.l1_bytes +
						st.flush.reftable_bytes),
					"fdatasyncs", (json_int_t)st.flush.fdatasyncs,
					"allocated-clusters", (json_int_t)st.allocated_clusters,
					"seconds", (double)st.flush.total_ns / 1e9,
					"max-seconds", (double)st.flush.max_ns / 1e9));
			json_dumpf(r, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
			printf("\n");
			json_decref(r);
		} else {
			printf("Run completed in %.3f seconds.\n", secs);
			printf("IOPS: %.0f, throughput: %.1f MiB/s\n", iops, mibs);
			printf("latency (us): p50 %.1f, p90 %.1f, p99 %.1f, p99.9 %.1f, max %.1f\n",
			       pct(b.lat_ns, b.done, 50), pct(b.lat_ns, b.done, 90),
			       pct(b.lat_ns, b.done, 99), pct(b.lat_ns, b.done, 99.9),
			       (double)b.lat_ns[b.done - 1] / 1000.0);
			if (b.write)
				printf("metadata write-backs: %" PRIu64 " by the timer, %"
				       PRIu64 " by eviction; %" PRIu64 " bytes of "
				       "metadata, %" PRIu64 " fdatasyncs, %.2f s (longest "
				       "%.2f s) before the close\n",
				       b.wb_started, st.flush.flushes[QCOW2_FLUSH_EVICTION],
				       st.flush.l2_bytes + st.flush.refblock_bytes +
					       st.flush.l1_bytes + st.flush.reftable_bytes,
				       st.flush.fdatasyncs, (double)st.flush.total_ns / 1e9,
				       (double)st.flush.max_ns / 1e9);
		}
	}
out:
	for (uint64_t i = 0; reqs && i < depth; i++)
		free(reqs[i].buf);
	free(reqs);
	free(b.lat_ns);
	cli_close_image(ctx, img);
	return status;
}
