/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * Regression test (extended L2): a write in place to an allocated
 * subcluster, still in flight, must not be undone by a later write that
 * allocates the subcluster before it and ends inside the allocated one.
 * The later write used to read the allocated subcluster's other bytes and
 * write them back: when its read overtook the in-place write, the in-place
 * write's data was lost. Found by the write matrix (extl2-backing, round
 * two), once in a few hundred runs.
 *
 * Each round uses a fresh cluster: subcluster k is written whole (pattern
 * A); then, without waiting, W rewrites all of subcluster k but its first
 * block (pattern B, in place) and R writes the last block of subcluster
 * k-1 (unallocated) and the first block of k (pattern C). Afterwards k must
 * read C then B, and k-1 zeros then C. A race, so many rounds; it fails
 * with the bug in most runs on io_uring with O_DIRECT.
 *
 *   inflight_cow DIR [ROUNDS]     (default 1000)
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"

#define CLUSTER (256u << 10)
#define SC (CLUSTER / 32)

struct done {
	int pending, err;
};

static void complete(void *opaque, int result, const char *error)
{
	struct done *d = opaque;

	if (error)
		fprintf(stderr, "inflight_cow: a request failed: %s\n", error);
	if (result < 0 && !d->err)
		d->err = result;
	d->pending--;
}

static int check(const uint8_t *p, size_t len, uint8_t want, const char *what,
		 unsigned round)
{
	for (size_t i = 0; i < len; i++) {
		if (p[i] != want) {
			fprintf(stderr, "inflight_cow: round %u: %s: byte %zu is 0x%02x, "
				"expected 0x%02x\n", round, what, i, p[i], want);
			return -1;
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	unsigned rounds = argc > 2 ? (unsigned)atoi(argv[2]) : 1000;
	struct qcow2_create_opts co = {
		.size = (uint64_t)CLUSTER * (rounds + 1), .cluster_size = CLUSTER,
		.extended_l2 = true,
	};
	struct qcow2_ctx_opts xo = { .backend = QCOW2_BACKEND_IO_URING };
	struct qcow2_open_opts oo = { .flags = QCOW2_OPEN_RDWR };
	struct qcow2_error err = { "" };
	struct qcow2_ctx *ctx;
	struct qcow2_image *img;
	struct qcow2_info info;
	char path[4096];
	uint8_t *a, *b, *c, *r;
	unsigned bad = 0;
	size_t bs;
	int ret;

	if (argc < 2) {
		fprintf(stderr, "usage: inflight_cow DIR [ROUNDS]\n");
		return 2;
	}
	snprintf(path, sizeof(path), "%s/inflight.qcow2", argv[1]);
	ret = qcow2_create(path, &co, &err);
	if (ret == 0)
		ret = qcow2_ctx_new(&xo, &ctx);
	if (ret == 0) {
		ret = qcow2_open(ctx, path, &oo, &img, &err);
		if (ret == -EINVAL || ret == -ENOTSUP) { /* no O_DIRECT here */
			oo.flags |= QCOW2_OPEN_BUFFERED;
			ret = qcow2_open(ctx, path, &oo, &img, &err);
		}
	}
	if (ret < 0) {
		fprintf(stderr, "inflight_cow: %s: %s\n", path,
			err.msg[0] ? err.msg : strerror(-ret));
		return 1;
	}
	qcow2_get_info(img, &info);
	bs = info.block_size;
	if (SC < 2 * bs) {
		printf("SKIP: blocks of %zu bytes are too large for this test\n", bs);
		return 77;
	}
	if (posix_memalign((void **)&a, 4096, SC) ||
	    posix_memalign((void **)&b, 4096, SC) ||
	    posix_memalign((void **)&c, 4096, 2 * bs) ||
	    posix_memalign((void **)&r, 4096, 2 * SC))
		return 1;
	memset(a, 0xaa, SC);
	memset(b, 0xbb, SC);
	memset(c, 0xcc, 2 * bs);
	for (unsigned i = 0; i < rounds; i++) {
		uint64_t k = (uint64_t)CLUSTER * i + 2 * SC; /* subcluster 2 */
		struct done d = { 2, 0 };

		if (qcow2_pwrite(img, a, SC, k) < 0)
			return 1;
		if (qcow2_write(img, k + bs, b, SC - bs, complete, &d) < 0 ||
		    qcow2_write(img, k - bs, c, 2 * bs, complete, &d) < 0)
			return 1;
		while (d.pending)
			if (qcow2_ctx_process(ctx, true) < 0)
				return 1;
		if (d.err) {
			fprintf(stderr, "inflight_cow: write failed: %s\n",
				strerror(-d.err));
			return 1;
		}
		if (qcow2_pread(img, r, 2 * SC, k - SC) < 0)
			return 1;
		if (check(r, SC - bs, 0, "subcluster 1 (unwritten)", i) ||
		    check(r + SC - bs, 2 * bs, 0xcc, "the spanning write", i) ||
		    check(r + SC + bs, SC - bs, 0xbb, "the in-place write", i))
			bad++;
	}
	qcow2_close(img, NULL);
	qcow2_ctx_free(ctx);
	free(a);
	free(b);
	free(c);
	free(r);
	printf("inflight_cow: %u of %u rounds lost data\n", bad, rounds);
	return bad ? 1 : 0;
}
