/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * libFuzzer target: a whole image file, through every read-only path.
 *
 * The input is written to a memfd and opened by its /proc/self/fd path:
 *
 * 1. the engine (qcow2_open: sync backend, buffered, no backing file, no
 *    lock; an external data file is replaced by a scratch file of zeros):
 *    qcow2_block_status maps the disk extent by extent, and each extent is
 *    read (whole when small, else its first and last blocks, into an
 *    aligned and a misaligned buffer), compressed clusters included. What
 *    the map accepts must read, and read as the map says: zeros, or the
 *    input's bytes at the host offset;
 * 2. the offline metadata reader (qcow2_meta.h): header, snapshot table,
 *    bitmap directory, the first L2 table and refcount block, refcounts;
 * 3. the offline checker (qcow2_check, with statistics and the trace of one
 *    cluster), when its walk is small enough (see walk_cost).
 *
 * Work per input is bounded (extents, bytes read, walk size), so that one
 * execution stays in the milliseconds whatever sizes the image claims.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "qcow2.h"
#include "qcow2_check.h"
#include "qcow2_meta.h"

#define ASSERT(c) \
	do { \
		if (!(c)) \
			__builtin_trap(); \
	} while (0)

#define MAX_EXTENTS 2048
#define MAX_READ_BYTES (1u << 20)
#define WHOLE_EXTENT (64u << 10)      /* extents up to this are read whole */
#define MAX_WALK (2u << 20)           /* L2 entries the checker may visit */
#define MAX_SNAPSHOTS_WALKED 256
#define MAX_DECODED (4u << 20)        /* bytes of decoded table entries */

static struct qcow2_ctx *ctx;
static int image_fd = -1;
static char image_path[64];
static char data_path[64];
static uint8_t *rbuf, *rbuf2;         /* WHOLE_EXTENT + 4096, page-aligned */

static void setup(void)
{
	int dfd;

	if (ctx)
		return;
	ASSERT(qcow2_ctx_new(&(struct qcow2_ctx_opts){ .backend = QCOW2_BACKEND_SYNC },
			     &ctx) == 0);
	image_fd = memfd_create("qcow2-fuzz-image", MFD_CLOEXEC);
	ASSERT(image_fd >= 0);
	snprintf(image_path, sizeof(image_path), "/proc/self/fd/%d", image_fd);
	/* A 1 MiB data file (zeros) stands in for any external data file the
	 * image names: nothing outside the memfds is ever opened. */
	dfd = memfd_create("qcow2-fuzz-data", MFD_CLOEXEC);
	ASSERT(dfd >= 0 && ftruncate(dfd, 1 << 20) == 0);
	snprintf(data_path, sizeof(data_path), "/proc/self/fd/%d", dfd);
	ASSERT(posix_memalign((void **)&rbuf, 4096, WHOLE_EXTENT + 4096) == 0);
	ASSERT(posix_memalign((void **)&rbuf2, 4096, WHOLE_EXTENT + 4096) == 0);
}

/* ---- 1. the engine ------------------------------------------------------ */

/* Read [off, off + len) of extent x, through an aligned buffer and a
 * misaligned one (the bounce path), and check what it reads as. */
static void read_range(struct qcow2_image *img, const struct qcow2_extent *x,
		       uint64_t off, uint64_t len, const uint8_t *data,
		       size_t size, uint64_t *budget)
{
	int ret;

	if (len > *budget || len > WHOLE_EXTENT)
		return;
	*budget -= len;
	ret = qcow2_pread(img, rbuf, len, off);
	if (x->type == QCOW2_EXTENT_COMPRESSED) {
		/* A stream that does not decompress fails, with a reason. */
		ASSERT(ret == 0 || (ret == -EIO && qcow2_last_error(img)[0]));
	} else {
		/* What block_status accepted reads. */
		ASSERT(ret == 0);
	}
	if (ret == 0 && x->type != QCOW2_EXTENT_COMPRESSED) {
		/* Zeros, except data in the image file: the input's bytes
		 * (zeros past its end). The stand-in data file is zeros. */
		bool file_data = x->type == QCOW2_EXTENT_DATA && !x->data_file;
		uint64_t host = x->host_offset + (off - x->offset);

		for (uint64_t i = 0; i < len; i++) {
			uint8_t want = file_data && host + i < size ? data[host + i] : 0;
			ASSERT(rbuf[i] == want);
		}
	}
	ASSERT(qcow2_pread(img, rbuf2 + 1, len, off) == ret);
	if (ret == 0)
		ASSERT(memcmp(rbuf, rbuf2 + 1, len) == 0);
}

/* block_status refused the block at off (off > 0: the one before was
 * fine). When a read of that block fails too, so must a read that starts
 * one sector earlier and takes it in: whether a block reads must not
 * depend on where the request starts. */
static void refused_read(struct qcow2_image *img, uint64_t off, uint64_t vsize)
{
	uint64_t len = vsize - off < 512 ? vsize - off : 512;

	if (!off || off % 512)
		return;
	if (qcow2_pread(img, rbuf, len, off) == 0)
		return; /* the read path may be more lenient than the map */
	ASSERT(qcow2_pread(img, rbuf, 512 + len, off - 512) < 0);
}

static void engine(const uint8_t *data, size_t size)
{
	struct qcow2_open_opts oo = {
		.flags = QCOW2_OPEN_BUFFERED | QCOW2_OPEN_NO_BACKING |
			 QCOW2_OPEN_FORCE_SHARE,
		/* Small caches (a sparse 2^62-byte disk would get 32 MiB);
		 * 512-byte slices for odd-sized inputs, to vary the slicing. */
		.l2_cache_size = 64 << 10,
		.l2_slice_size = (size & 1) ? 512 : 0,
		.data_file = data_path,
	};
	struct qcow2_image *img;
	struct qcow2_error err;
	struct qcow2_info info;
	struct qcow2_stats st;
	uint64_t off = 0, budget = MAX_READ_BYTES, bs;
	unsigned n = 0;
	int ret;

	ret = qcow2_open(ctx, image_path, &oo, &img, &err);
	if (ret < 0) {
		ASSERT(err.msg[0] != '\0' || ret == -ENOMEM);
		return;
	}
	ASSERT(qcow2_get_info(img, &info) == 0);
	ASSERT(info.read_only && info.format == QCOW2_FORMAT_QCOW2);
	ASSERT(info.file_size == size);
	ASSERT(info.cluster_size >= 512 && info.cluster_size <= (2u << 20));
	for (int type = 0; type < 3; type++)
		for (int bit = 0; bit < 64; bit++)
			(void)qcow2_feature_name(img, type, bit);
	bs = info.block_size;
	ASSERT(bs >= 512 && bs <= 4096 && !(bs & (bs - 1)));
	while (off < info.virtual_size && n++ < MAX_EXTENTS) {
		struct qcow2_extent x;
		uint64_t end, last;

		ret = qcow2_block_status(img, off, info.virtual_size - off, &x);
		if (ret < 0) {
			ASSERT(qcow2_last_error(img)[0] != '\0' || ret == -ENOMEM);
			refused_read(img, off, info.virtual_size);
			break;
		}
		ASSERT(x.offset == off);
		ASSERT(x.length > 0 && x.length <= info.virtual_size - off);
		ASSERT(x.type <= QCOW2_EXTENT_COMPRESSED);
		end = off + x.length;
		/* Extents start and end on sectors (or the disk's end). */
		ASSERT(end % 512 == 0 || end == info.virtual_size);
		if (x.length <= WHOLE_EXTENT) {
			read_range(img, &x, off, x.length, data, size, &budget);
		} else {
			read_range(img, &x, off, bs, data, size, &budget);
			last = (end - 1) / bs * bs;
			read_range(img, &x, last, end - last, data, size, &budget);
		}
		off = end;
	}
	ASSERT(qcow2_get_stats(img, &st) == 0);
	qcow2_close(img, NULL);
}

/* ---- 2. the offline metadata reader --------------------------------------- */

/* Nonzero entries of the L1 table at off (0 when it is not in the file). */
static uint64_t l1_used(struct qcow2_meta *m, uint64_t off, uint64_t entries)
{
	uint64_t fs = qcow2_meta_file_size(m), *t, used = 0;

	if (!entries || off >= fs || entries > (fs - off) / 8)
		return 0;
	if (qcow2_meta_read_table(m, off, entries, &t) < 0)
		return 0;
	for (uint64_t i = 0; i < entries; i++)
		used += (t[i] & 0x00fffffffffffe00ull) != 0;
	free(t);
	return used;
}

/*
 * Entries the checker would visit: L2 entries (it walks every L2 table once
 * per L1 entry that points at it, twice for the active table) and bitmap
 * table entries; UINT64_MAX when that is too much to find out cheaply.
 */
static uint64_t walk_cost(struct qcow2_meta *m,
			  const struct qcow2_snapshot_entry *s, uint32_t ns,
			  int snap_ret, const struct qcow2_bitmap_entry *b,
			  uint32_t nb, int bitmap_ret)
{
	const struct qcow2_header *h = qcow2_meta_header(m);
	uint64_t per = qcow2_meta_l2_entries(m), fs = qcow2_meta_file_size(m);
	uint64_t tables, cost = 0;

	if ((snap_ret < 0 && snap_ret != -EINVAL) ||
	    (bitmap_ret < 0 && bitmap_ret != -EINVAL))
		return UINT64_MAX;
	if (ns > MAX_SNAPSHOTS_WALKED)
		return UINT64_MAX;
	tables = 2 * l1_used(m, h->l1_table_offset, h->l1_size);
	for (uint32_t i = 0; i < ns; i++)
		tables += l1_used(m, s[i].l1_table_offset, s[i].l1_size);
	for (uint32_t i = 0; i < nb; i++)
		if (b[i].table_offset < fs &&
		    b[i].table_size <= (fs - b[i].table_offset) / 8)
			cost += b[i].table_size;
	return cost + tables * per;
}

static void meta(const uint8_t *data, size_t size, bool *walk_ok)
{
	struct qcow2_meta *m;
	struct qcow2_error err;
	const struct qcow2_header *h;
	struct qcow2_snapshot_entry *s;
	struct qcow2_bitmap_entry *b;
	uint32_t ns = 0, nb = 0;
	uint64_t *l1 = NULL, rc;
	int sret, bret, ret;

	(void)data;
	*walk_ok = false;
	ret = qcow2_meta_open(image_path, QCOW2_OPEN_FORCE_SHARE, &m, &err);
	if (ret < 0) {
		ASSERT(err.msg[0] != '\0');
		return;
	}
	h = qcow2_meta_header(m);
	ASSERT(qcow2_meta_file_size(m) == size);
	sret = qcow2_meta_snapshots(m, &s, &ns);
	ASSERT(sret == 0 || (s == NULL && ns == 0));
	for (uint32_t i = 0; i < ns; i++) {
		ASSERT(s[i].id && s[i].name);
		ASSERT(s[i].entry_offset >= h->snapshots_offset &&
		       s[i].entry_offset < size);
	}
	bret = qcow2_meta_bitmaps(m, &b, &nb);
	ASSERT(bret == 0 || (b == NULL && nb == 0));
	for (uint32_t i = 0; i < nb; i++)
		ASSERT(b[i].name && b[i].entry_offset >= h->bitmap_directory_offset);
	*walk_ok = walk_cost(m, s, ns, sret, b, nb, bret) <= MAX_WALK;
	qcow2_meta_free_snapshots(s, ns);
	qcow2_meta_free_bitmaps(b, nb);

	/* The first L2 table, and a refcount block, decoded (qcow2-img dump). */
	if (h->l1_size && qcow2_meta_read_table(m, h->l1_table_offset, 1, &l1) == 0) {
		uint64_t l2 = l1[0] & 0x00fffffffffffe00ull;
		uint64_t ne = qcow2_meta_l2_entries(m);
		struct qcow2_l2_entry *e = NULL;

		if (ne * sizeof(*e) <= MAX_DECODED)
			e = malloc(ne * sizeof(*e));
		if (e && l2 && l2 < size)
			(void)qcow2_meta_read_l2(m, l2, e);
		free(e);
		free(l1);
	}
	if (h->refcount_table_clusters &&
	    qcow2_meta_read_table(m, h->refcount_table_offset, 1, &l1) == 0) {
		uint64_t rb = l1[0] & 0xfffffffffffffe00ull;
		uint64_t ne = qcow2_meta_refblock_entries(m);
		uint64_t *r = NULL;

		if (ne * sizeof(*r) <= MAX_DECODED)
			r = malloc(ne * sizeof(*r));
		if (r && rb && rb < size)
			(void)qcow2_meta_read_refblock(m, rb, r);
		free(r);
		free(l1);
	}
	/* Refcounts of the first clusters and of the last byte. */
	for (uint64_t off = 0; off < size && off < (8ull << h->cluster_bits);
	     off += 1ull << h->cluster_bits)
		(void)qcow2_meta_refcount(m, off, &rc);
	if (size)
		(void)qcow2_meta_refcount(m, size - 1, &rc);
	qcow2_meta_close(m);
}

/* ---- 3. the checker ---------------------------------------------------------- */

static void report(void *opaque, enum qcow2_check_problem kind, uint64_t off,
		   const char *msg)
{
	(void)opaque;
	(void)off;
	ASSERT(kind <= QCOW2_CHECK_ERROR);
	ASSERT(msg && msg[0]);
}

static void reference(void *opaque, uint64_t off, const char *what)
{
	(void)opaque;
	(void)off;
	ASSERT(what && what[0]);
}

static void check(size_t size)
{
	struct qcow2_image_stats st;
	struct qcow2_check_opts o = {
		.force_share = true,
		.report = report,
		.stats = &st,
		/* Trace the references to the cluster of the last byte. */
		.trace_offset = size ? size - 1 : 0,
		.reference = reference,
	};
	struct qcow2_check_result res;
	struct qcow2_error err;
	int ret = qcow2_check(image_path, &o, &res, &err);

	if (ret < 0) {
		ASSERT(err.msg[0] != '\0');
		return;
	}
	ASSERT(res.corruptions_fixed == 0 && res.leaks_fixed == 0);
	ASSERT(st.file_size == size);
	ASSERT(st.guest_clusters == res.total_clusters);
	ASSERT(st.data_clusters + st.zero_clusters + st.compressed_clusters +
	       st.invalid_clusters + st.unallocated_clusters == st.guest_clusters);
	ASSERT(st.free_clusters <= st.file_clusters);
	ASSERT(res.image_end_offset <= st.file_clusters * st.cluster_size);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	bool walk_ok;

	setup();
	ASSERT(ftruncate(image_fd, 0) == 0);
	ASSERT(pwrite(image_fd, data, size, 0) == (ssize_t)size);
	engine(data, size);
	meta(data, size, &walk_ok);
	if (walk_ok)
		check(size);
	return 0;
}
