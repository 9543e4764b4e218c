/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * random_io: a seeded random workload against a qcow2 image, mirrored into a
 * raw model file. Writes with per-sector patterns, write-zeroes (with and
 * without unmap), discards, flushes and verifying reads, up to --depth
 * non-overlapping requests in flight. Exit 0 pass, 1 fail, 2 usage.
 *
 * random_io [--backend io_uring|sync|fault] [--buffered] [--l2-cache N]
 *           [--seed N] [--ops N] [--max-len N] [--depth N] [--no-meta]
 *           [--log FILE] [--fail-at N --fail-errno EIO|ENOSPC
 *            --fail-ops r,w,f [--fail-persist]] [--expect-failure]
 *           [--sequential]   (4 KiB writes walking the disk, --depth at once)
 *           IMAGE MODEL
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qcow2.h"

enum kind { K_WRITE, K_ZERO, K_DISCARD, K_READ };

struct req {
	bool busy, done;
	int ret;
	enum kind kind;
	uint64_t off, len;
	uint8_t *buf;
	uint8_t *expect;
};

static uint64_t seed_state;

static uint64_t rnd(void)
{
	seed_state ^= seed_state << 13;
	seed_state ^= seed_state >> 7;
	seed_state ^= seed_state << 17;
	return seed_state;
}

/* --sequential: the next write is issued from the completion callback, as
 * an event-loop client does (the case that once lost joined writes). */
static struct {
	bool on;
	struct qcow2_image *img;
	int model;
	uint64_t issued, ops, next, disk, seed;
	int failed;
} seq;

static void on_done(void *opaque, int ret);

static void seq_issue(struct req *r)
{
	r->len = 4096;
	r->off = seq.next % (seq.disk - r->len + 1) / 512 * 512;
	seq.next = r->off + r->len;
	for (uint64_t k = 0; k < r->len; k++)
		r->buf[k] = (uint8_t)((r->off + k) / 512 * 31 + seq.seed + (k & 7));
	if (pwrite(seq.model, r->buf, r->len, (off_t)r->off) != (ssize_t)r->len ||
	    qcow2_write(seq.img, r->off, r->buf, r->len, on_done, r) < 0) {
		seq.failed++;
		r->done = true;
		return;
	}
	seq.issued++;
}

static void on_done(void *opaque, int ret)
{
	struct req *r = opaque;

	if (seq.on && ret == 0 && seq.issued < seq.ops) {
		seq_issue(r);
		return;
	}
	r->done = true;
	r->ret = ret;
}

static bool overlaps(struct req *reqs, int n, uint64_t off, uint64_t len)
{
	for (int i = 0; i < n; i++)
		if (reqs[i].busy && off < reqs[i].off + reqs[i].len &&
		    reqs[i].off < off + len)
			return true;
	return false;
}

static int parse_errno(const char *s)
{
	if (!strcmp(s, "EIO"))
		return EIO;
	if (!strcmp(s, "ENOSPC"))
		return ENOSPC;
	return atoi(s);
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "backend", required_argument, 0, 'b' },
		{ "buffered", no_argument, 0, 'B' },
		{ "l2-cache", required_argument, 0, 'c' },
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
		{ "sequential", no_argument, 0, 'S' },
		{ 0, 0, 0, 0 },
	};
	struct qcow2_ctx_opts co = { .backend = QCOW2_BACKEND_IO_URING, .queue_depth = 128 };
	struct qcow2_fault_opts fo = { .log_fd = -1, .fail_errno = EIO,
				       .fail_ops = QCOW2_FAULT_WRITE | QCOW2_FAULT_FSYNC };
	struct qcow2_open_opts oo = { .flags = QCOW2_OPEN_RDWR };
	uint64_t ops = 500, max_len = 256 << 10, seed = 1, issued = 0;
	int depth = 8, opt, model, fails = 0, injected = 0;
	bool no_meta = false, expect_failure = false, sequential = false;
	const char *log_path = NULL;
	struct qcow2_ctx *ctx;
	struct qcow2_image *img;
	struct qcow2_error err;
	struct qcow2_info in;
	struct qcow2_stats st;
	struct req *reqs;
	uint8_t *zeros;

	while ((opt = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (opt) {
		case 'b':
			co.backend = !strcmp(optarg, "sync") ? QCOW2_BACKEND_SYNC :
				     !strcmp(optarg, "fault") ? QCOW2_BACKEND_FAULT :
								 QCOW2_BACKEND_IO_URING;
			break;
		case 'B': oo.flags |= QCOW2_OPEN_BUFFERED; break;
		case 'c': oo.l2_cache_size = strtoull(optarg, 0, 0); break;
		case 's': seed = strtoull(optarg, 0, 0); break;
		case 'n': ops = strtoull(optarg, 0, 0); break;
		case 'm': max_len = strtoull(optarg, 0, 0); break;
		case 'd': depth = atoi(optarg); break;
		case 'M': no_meta = true; break;
		case 'l': log_path = optarg; break;
		case 'a': fo.fail_at = strtoull(optarg, 0, 0); break;
		case 'e': fo.fail_errno = parse_errno(optarg); break;
		case 'o':
			fo.fail_ops = (strchr(optarg, 'r') ? QCOW2_FAULT_READ : 0) |
				      (strchr(optarg, 'w') ? QCOW2_FAULT_WRITE : 0) |
				      (strchr(optarg, 'f') ? QCOW2_FAULT_FSYNC : 0);
			break;
		case 'p': fo.fail_persist = true; break;
		case 'x': expect_failure = true; break;
		case 'S': sequential = true; break;
		default: return 2;
		}
	}
	if (optind != argc - 2 || depth < 1 || depth > 64 || max_len < 512) {
		fprintf(stderr, "usage: random_io [options] IMAGE MODEL\n");
		return 2;
	}
	seed_state = seed * 2654435761u + 88172645463325252ull;
	if (log_path) {
		fo.log_fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fo.log_fd < 0) {
			perror(log_path);
			return 1;
		}
	}
	if (co.backend == QCOW2_BACKEND_FAULT)
		co.fault = &fo;
	if (qcow2_ctx_new(&co, &ctx) < 0) {
		fprintf(stderr, "random_io: cannot create the IO context\n");
		return 1;
	}
	if (qcow2_open(ctx, argv[optind], &oo, &img, &err) < 0) {
		fprintf(stderr, "random_io: %s: %s\n", argv[optind], err.msg);
		return 1;
	}
	qcow2_get_info(img, &in);
	model = open(argv[optind + 1], O_RDWR | O_CLOEXEC);
	if (model < 0) {
		perror(argv[optind + 1]);
		return 1;
	}
	if (max_len > in.virtual_size)
		max_len = in.virtual_size / 512 * 512;
	reqs = calloc((size_t)depth, sizeof(*reqs));
	zeros = calloc(1, max_len);
	for (int i = 0; i < depth; i++) {
		if (posix_memalign((void **)&reqs[i].buf, 4096, max_len) ||
		    !(reqs[i].expect = malloc(max_len)))
			return 1;
	}

	if (sequential) {
		seq.on = true;
		seq.img = img;
		seq.model = model;
		seq.ops = ops;
		seq.disk = in.virtual_size;
		seq.seed = seed;
		for (int i = 0; i < depth && seq.issued < ops; i++) {
			reqs[i].busy = true;
			reqs[i].kind = K_WRITE;
			seq_issue(&reqs[i]);
		}
		issued = ops; /* the callbacks issue the rest */
		if (seq.failed)
			fails++;
	}
	for (;;) {
		bool any_busy = false;

		for (int i = 0; i < depth; i++) {
			struct req *r = &reqs[i];
			if (r->busy && r->done) {
				r->busy = false;
				if (r->ret < 0) {
					if (expect_failure && r->ret == -fo.fail_errno) {
						injected++;
					} else {
						fprintf(stderr, "random_io: %s at %" PRIu64 "+%" PRIu64
							" failed: %s (%s)\n",
							r->kind == K_READ ? "read" : "write", r->off,
							r->len, strerror(-r->ret), qcow2_last_error(img));
						fails++;
					}
				} else if (r->kind == K_READ &&
					   memcmp(r->buf, r->expect, r->len)) {
					uint64_t k = 0;
					while (r->buf[k] == r->expect[k])
						k++;
					fprintf(stderr, "random_io: read at %" PRIu64 "+%" PRIu64
						" differs from the model at offset %" PRIu64 "\n",
						r->off, r->len, r->off + k);
					fails++;
				}
			}
			any_busy |= r->busy;
		}
		if (any_busy && qcow2_ctx_inflight(ctx) == 0) {
			/* Pending requests with no IO in flight: nothing will
			 * ever complete them. */
			int lost = 0;
			for (int i = 0; i < depth; i++)
				lost += reqs[i].busy && !reqs[i].done;
			if (lost) {
				fprintf(stderr, "random_io: %d requests never completed "
					"(no IO in flight)\n", lost);
				return 1;
			}
		}
		if (issued >= ops || fails || injected) {
			if (!any_busy)
				break;
			qcow2_ctx_process(ctx, true);
			continue;
		}
		for (int i = 0; i < depth && issued < ops; i++) {
			struct req *r = &reqs[i];
			uint64_t len, off, bs = 512;
			int ret = 0, choice;

			if (r->busy)
				continue;
			choice = (int)(rnd() % 100);
			if (choice < 3) {
				/* flush: everything issued so far must be durable */
				int ret2;
				while (any_busy) {
					any_busy = false;
					qcow2_ctx_process(ctx, true);
					for (int j = 0; j < depth; j++)
						any_busy |= reqs[j].busy && !reqs[j].done;
				}
				ret2 = qcow2_fsync(img);
				if (ret2 < 0) {
					if (expect_failure && ret2 == -fo.fail_errno)
						injected++;
					else {
						fprintf(stderr, "random_io: flush failed: %s (%s)\n",
							strerror(-ret2), qcow2_last_error(img));
						fails++;
					}
					break;
				}
				issued++;
				continue;
			}
			len = ((rnd() % (max_len / bs)) + 1) * bs;
			off = (rnd() % (in.virtual_size / bs)) * bs;
			if (off + len > in.virtual_size)
				len = in.virtual_size - off;
			if (overlaps(reqs, depth, off, len))
				continue; /* try another slot later */
			r->off = off;
			r->len = len;
			r->busy = true;
			r->done = false;
			issued++;
			if (choice < 63 || no_meta) {
				r->kind = K_WRITE;
				for (uint64_t k = 0; k < len; k++)
					r->buf[k] = (uint8_t)((off + k) / 512 * 31 + seed + (k & 7));
				if (pwrite(model, r->buf, len, (off_t)off) != (ssize_t)len)
					return 1;
				ret = qcow2_write(img, off, r->buf, len, on_done, r);
			} else if (choice < 75) {
				r->kind = K_ZERO;
				if (pwrite(model, zeros, len, (off_t)off) != (ssize_t)len)
					return 1;
				ret = qcow2_write_zeroes(img, off, len,
							 (rnd() & 1) ? QCOW2_ZERO_UNMAP : 0,
							 on_done, r);
			} else if (choice < 85) {
				/* whole clusters inside the range read zeros after */
				uint64_t cs = in.cluster_size;
				uint64_t s0 = (off + cs - 1) / cs * cs;
				uint64_t e0 = (off + len) / cs * cs;
				r->kind = K_DISCARD;
				if (off + len == in.virtual_size)
					e0 = off + len;
				if (e0 > s0 && pwrite(model, zeros, e0 - s0, (off_t)s0) !=
						       (ssize_t)(e0 - s0))
					return 1;
				ret = qcow2_discard(img, off, len, on_done, r);
			} else {
				r->kind = K_READ;
				if (pread(model, r->expect, len, (off_t)off) != (ssize_t)len)
					return 1;
				ret = qcow2_read(img, off, r->buf, len, on_done, r);
			}
			if (ret < 0) {
				fprintf(stderr, "random_io: submit failed: %s\n", strerror(-ret));
				return 1;
			}
			any_busy = true;
		}
		qcow2_ctx_process(ctx, true);
	}
	qcow2_get_stats(img, &st);
	printf("ops %" PRIu64 ": writes %" PRIu64 " allocated %" PRIu64 " cow %" PRIu64
	       " freed %" PRIu64 "; flushes client %" PRIu64 " eviction %" PRIu64
	       "; slices written l2 %" PRIu64 " refblock %" PRIu64 "; fdatasync %" PRIu64
	       "\n", issued, st.write_requests, st.allocated_clusters, st.cow_clusters,
	       st.freed_clusters, st.flush.flushes[QCOW2_FLUSH_CLIENT],
	       st.flush.flushes[QCOW2_FLUSH_EVICTION], st.flush.l2_slices,
	       st.flush.refblock_slices, st.flush.fdatasyncs);
	if (getenv("RANDOM_IO_EXPECT_EVICTIONS") && *getenv("RANDOM_IO_EXPECT_EVICTIONS") &&
	    st.flush.flushes[QCOW2_FLUSH_EVICTION] == 0) {
		fprintf(stderr, "random_io: expected eviction write-backs, saw none\n");
		fails++;
	}
	qcow2_close(img);
	qcow2_ctx_free(ctx);
	for (int i = 0; i < depth; i++) {
		free(reqs[i].buf);
		free(reqs[i].expect);
	}
	free(reqs);
	free(zeros);
	close(model);
	if (fo.log_fd >= 0)
		close(fo.log_fd);
	if (expect_failure) {
		if (!injected && fo.fail_at) {
			printf("random_io: the injected failure was not hit (fewer ops)\n");
		}
		return fails ? 1 : 0;
	}
	return fails ? 1 : 0;
}
