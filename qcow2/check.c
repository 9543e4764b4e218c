/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * qcow2_check(): walk the whole metadata graph of an image, count the
 * references to every host cluster, and compare them with the refcounts on
 * disk. Read-only, with plain preads; memory is one counter per cluster of
 * the file (a 1 TiB sparse image with a small file costs little).
 *
 * References: the header cluster; the active L1 table and every snapshot's,
 * each L2 table they point at (once per L1 that reaches it) and each data
 * cluster those map (a compressed cluster counts on every host cluster its
 * descriptor touches); the snapshot table; the refcount table and blocks;
 * with valid bitmaps (autoclear bit), their directory, tables and data.
 *
 * Repair reuses the engine: the image is opened read-write with
 * QCOW2_OPEN_REBUILD_REFCOUNTS (refcount_rebuild.c: new refcount
 * structures past the end, then one header write), then checked again.
 */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qcow2_check.h"
#include "internal.h"
#include "l2_entry.h"
#include "refcount.h"

struct chk {
	int fd;
	uint64_t file_size;
	struct qcow2_header h;
	uint64_t cs;
	uint32_t cb;
	bool extl2, data_file;
	uint32_t l2e;               /* L2 entry size */
	uint64_t n;                 /* clusters of the file */
	uint64_t *ref;              /* references counted, per cluster */
	uint64_t max_rc;
	uint8_t *buf;               /* one cluster */
	uint64_t next_contig;
	uint64_t l2_done, l2_total;
	struct qcow2_check_result *res;
	const struct qcow2_check_opts *o;
};

static void problem(struct chk *c, enum qcow2_check_problem kind,
		    uint64_t off, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static void problem(struct chk *c, enum qcow2_check_problem kind,
		    uint64_t off, const char *fmt, ...)
{
	char msg[256];
	va_list ap;

	if (kind == QCOW2_CHECK_CORRUPTION)
		c->res->corruptions++;
	else if (kind == QCOW2_CHECK_LEAK)
		c->res->leaks++;
	else
		c->res->check_errors++;
	if (!c->o || !c->o->report)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	c->o->report(c->o->opaque, kind, off, msg);
}

static int read_at(struct chk *c, void *buf, uint64_t len, uint64_t off)
{
	uint8_t *p = buf;

	while (len) {
		ssize_t r = pread(c->fd, p, len, (off_t)off);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0) { /* past the end: zeros */
			memset(p, 0, len);
			return 0;
		}
		p += r;
		off += (uint64_t)r;
		len -= (uint64_t)r;
	}
	return 0;
}

/* One reference to the cluster holding host offset off. */
static bool inc(struct chk *c, uint64_t off, const char *what)
{
	uint64_t i = off / c->cs;

	if (i >= c->n) {
		problem(c, QCOW2_CHECK_CORRUPTION, off, "%s at 0x%llx lies past the "
			"end of the file (0x%llx)", what, (unsigned long long)off,
			(unsigned long long)c->file_size);
		return false;
	}
	c->ref[i]++;
	return true;
}

/* A table of len bytes at off: aligned, inside the file; counted. */
static bool inc_range(struct chk *c, uint64_t off, uint64_t len,
		      const char *what)
{
	if (off % c->cs) {
		problem(c, QCOW2_CHECK_CORRUPTION, off, "%s at 0x%llx is not "
			"cluster-aligned", what, (unsigned long long)off);
		return false;
	}
	for (uint64_t o = 0; o < len; o += c->cs)
		if (!inc(c, off + o, what))
			return false;
	return true;
}

static bool mapped(const struct chk *c, uint64_t e)
{
	if (e & QCOW_OFLAG_COMPRESSED)
		return false;
	return (e & L2E_OFFSET_MASK) || (c->data_file && (e & QCOW_OFLAG_COPIED));
}

static void check_l2(struct chk *c, uint64_t l2_off, bool active)
{
	uint64_t n = c->cs / c->l2e;
	int ret = read_at(c, c->buf, c->cs, l2_off);

	if (ret < 0) {
		problem(c, QCOW2_CHECK_ERROR, l2_off, "cannot read the L2 table at "
			"0x%llx: %s", (unsigned long long)l2_off, strerror(-ret));
		return;
	}
	/* Fragmentation is counted within each L2 table (as qemu-img does). */
	c->next_contig = 0;
	for (uint64_t i = 0; i < n; i++) {
		uint64_t e, bm = 0;

		memcpy(&e, c->buf + i * c->l2e, 8);
		e = be64toh(e);
		if (c->extl2) {
			memcpy(&bm, c->buf + i * 16 + 8, 8);
			bm = be64toh(bm);
		}
		if (e & QCOW_OFLAG_COMPRESSED) {
			uint64_t host, nb, len;

			if (c->data_file) {
				problem(c, QCOW2_CHECK_CORRUPTION, l2_off + i * c->l2e,
					"compressed cluster in an image with an external "
					"data file (L2 entry 0x%llx)", (unsigned long long)e);
				continue;
			}
			if (c->extl2 && bm)
				problem(c, QCOW2_CHECK_CORRUPTION, l2_off + i * c->l2e,
					"compressed cluster with a subcluster bitmap "
					"(0x%llx)", (unsigned long long)bm);
			l2_compressed_decode(c->cb, e & ((1ull << 62) - 1), &host, &nb);
			len = (nb + 1) * 512 - (host & 511);
			for (uint64_t o = align_down(host, c->cs); o < host + len;
			     o += c->cs)
				if (!inc(c, o, "compressed cluster"))
					break;
			if (active) {
				c->res->allocated_clusters++;
				c->res->compressed_clusters++;
				c->res->fragmented_clusters++; /* by nature */
			}
			continue;
		}
		if (c->extl2) {
			uint32_t alloc = (uint32_t)bm, zero = (uint32_t)(bm >> 32);
			if (alloc & zero)
				problem(c, QCOW2_CHECK_CORRUPTION, l2_off + i * 16,
					"subclusters both allocated and zero (bitmap "
					"0x%llx)", (unsigned long long)bm);
			if (alloc && !mapped(c, e))
				problem(c, QCOW2_CHECK_CORRUPTION, l2_off + i * 16,
					"allocated subclusters in an unallocated cluster "
					"(bitmap 0x%llx)", (unsigned long long)bm);
		}
		if (!mapped(c, e))
			continue;
		if (!c->data_file) {
			uint64_t off = e & L2E_OFFSET_MASK;
			if (off % c->cs) {
				problem(c, QCOW2_CHECK_CORRUPTION, off, "data cluster "
					"offset 0x%llx is not cluster-aligned; L2 entry "
					"corrupted", (unsigned long long)off);
				continue;
			}
			inc(c, off, "data cluster");
		}
		if (active) {
			uint64_t off = e & L2E_OFFSET_MASK;
			c->res->allocated_clusters++;
			if (c->next_contig && off != c->next_contig)
				c->res->fragmented_clusters++;
			c->next_contig = off + c->cs;
		}
	}
}

static int read_l1(struct chk *c, uint64_t off, uint32_t size, uint64_t **out)
{
	uint64_t *l1 = malloc((size_t)size * 8 + 8);
	int ret;

	if (!l1)
		return -ENOMEM;
	ret = read_at(c, l1, (uint64_t)size * 8, off);
	if (ret < 0) {
		free(l1);
		return ret;
	}
	for (uint32_t i = 0; i < size; i++)
		l1[i] = be64toh(l1[i]);
	*out = l1;
	return 0;
}

static int check_l1(struct chk *c, uint64_t l1_off, uint32_t l1_size,
		    bool active)
{
	uint64_t *l1;
	int ret;

	if (!l1_size)
		return 0;
	if (!inc_range(c, l1_off, (uint64_t)l1_size * 8, "L1 table"))
		return 0;
	ret = read_l1(c, l1_off, l1_size, &l1);
	if (ret < 0)
		return ret;
	for (uint32_t i = 0; i < l1_size; i++) {
		uint64_t l2 = l1[i] & L1E_OFFSET_MASK;

		if (!l2)
			continue;
		if (inc_range(c, l2, 1, "L2 table"))
			check_l2(c, l2, active);
		c->l2_done++;
		if (c->o && c->o->progress)
			c->o->progress(c->o->opaque, c->l2_done,
				       c->l2_total > c->l2_done ? c->l2_total : c->l2_done);
	}
	free(l1);
	return 0;
}

/* Walk a variable-length table (snapshots, bitmap directory) of count
 * entries; fn gets each entry and returns its length, or 0 if malformed. */
static int check_snapshots(struct chk *c)
{
	uint64_t pos = 0, size;
	uint8_t *t;
	int ret;

	if (!c->h.nb_snapshots)
		return 0;
	if (c->h.snapshots_offset >= c->file_size) {
		problem(c, QCOW2_CHECK_CORRUPTION, c->h.snapshots_offset,
			"the snapshot table lies past the end of the file");
		return 0;
	}
	size = c->file_size - c->h.snapshots_offset;
	if (size > (64ull << 20))
		size = 64ull << 20;
	t = malloc(size);
	if (!t)
		return -ENOMEM;
	ret = read_at(c, t, size, c->h.snapshots_offset);
	for (uint32_t i = 0; ret == 0 && i < c->h.nb_snapshots; i++) {
		uint64_t len;

		if (pos + 40 > size)
			break;
		len = align_up(40ull + be32_at(t + pos + 36) +
			       (uint32_t)(t[pos + 12] << 8 | t[pos + 13]) +
			       (uint32_t)(t[pos + 14] << 8 | t[pos + 15]), 8);
		if (pos + len > size)
			break;
		ret = check_l1(c, be64_at(t + pos), be32_at(t + pos + 8), false);
		pos += len;
	}
	if (ret == 0)
		inc_range(c, c->h.snapshots_offset, pos, "snapshot table");
	free(t);
	return ret;
}

static int check_bitmaps(struct chk *c)
{
	uint64_t size = c->h.bitmap_directory_size, pos = 0;
	uint8_t *d;
	int ret;

	if (!(c->h.autoclear_features & QCOW2_AUTOCLEAR_BITMAPS) ||
	    !c->h.nb_bitmaps || !size)
		return 0;
	if (size > (64ull << 20) || !inc_range(c, c->h.bitmap_directory_offset,
					       size, "bitmap directory"))
		return 0;
	d = malloc(size);
	if (!d)
		return -ENOMEM;
	ret = read_at(c, d, size, c->h.bitmap_directory_offset);
	for (uint32_t i = 0; ret == 0 && i < c->h.nb_bitmaps && pos + 24 <= size; i++) {
		uint64_t t_off = be64_at(d + pos);
		uint32_t t_size = be32_at(d + pos + 8);
		uint16_t name = (uint16_t)(d[pos + 18] << 8 | d[pos + 19]);
		uint32_t extra = be32_at(d + pos + 20);
		uint64_t *t;

		pos += align_up(24ull + extra + name, 8);
		if (!t_size || (uint64_t)t_size * 8 > (64ull << 20) ||
		    !inc_range(c, t_off, (uint64_t)t_size * 8, "bitmap table"))
			continue;
		t = malloc((size_t)t_size * 8);
		if (!t) {
			ret = -ENOMEM;
			break;
		}
		ret = read_at(c, t, (uint64_t)t_size * 8, t_off);
		for (uint32_t j = 0; ret == 0 && j < t_size; j++) {
			uint64_t off = be64toh(t[j]) & 0x00fffffffffffe00ull;
			if (off)
				inc_range(c, off, 1, "bitmap data cluster");
		}
		free(t);
	}
	free(d);
	return ret;
}

/* The refcount table and blocks: count them, then compare every cluster's
 * refcount with its references. */
static int compare_refcounts(struct chk *c, uint64_t **disk_out)
{
	uint64_t rt_bytes = (uint64_t)c->h.refcount_table_clusters * c->cs;
	uint64_t per = (c->cs * 8) >> c->h.refcount_order;
	uint64_t *rt, *disk, highest = 0;
	bool any = false;
	int ret;

	disk = calloc(c->n ? c->n : 1, sizeof(*disk));
	rt = malloc(rt_bytes ? rt_bytes : 8);
	if (!disk || !rt) {
		free(disk);
		free(rt);
		return -ENOMEM;
	}
	inc_range(c, c->h.refcount_table_offset, rt_bytes, "refcount table");
	ret = read_at(c, rt, rt_bytes, c->h.refcount_table_offset);
	for (uint64_t b = 0; ret == 0 && b < rt_bytes / 8; b++) {
		uint64_t off = be64toh(rt[b]) & REFT_OFFSET_MASK;

		if (!off)
			continue;
		if (off % c->cs) {
			problem(c, QCOW2_CHECK_CORRUPTION, off, "refcount block %llu "
				"is not cluster-aligned; refcount table entry corrupted",
				(unsigned long long)b);
			continue;
		}
		if (!inc(c, off, "refcount block"))
			continue;
		if (b * per >= c->n)
			continue;
		ret = read_at(c, c->buf, c->cs, off);
		for (uint64_t i = 0; ret == 0 && i < per && b * per + i < c->n; i++)
			disk[b * per + i] = refblock_get(c->buf, i, c->h.refcount_order);
	}
	free(rt);
	if (ret < 0) {
		free(disk);
		return ret;
	}
	for (uint64_t i = 0; i < c->n; i++) {
		uint64_t r1 = c->ref[i], r2 = disk[i];

		if (r1 || r2) {
			highest = i;
			any = true;
		}
		if (r1 > c->max_rc)
			problem(c, QCOW2_CHECK_CORRUPTION, i * c->cs, "cluster %llu is "
				"referenced %llu times, more than %u-bit refcounts hold",
				(unsigned long long)i, (unsigned long long)r1,
				1u << c->h.refcount_order);
		else if (r2 < r1)
			problem(c, QCOW2_CHECK_CORRUPTION, i * c->cs, "cluster %llu "
				"refcount=%llu reference=%llu", (unsigned long long)i,
				(unsigned long long)r2, (unsigned long long)r1);
		else if (r2 > r1)
			problem(c, QCOW2_CHECK_LEAK, i * c->cs, "leaked cluster %llu "
				"refcount=%llu reference=%llu", (unsigned long long)i,
				(unsigned long long)r2, (unsigned long long)r1);
	}
	c->res->image_end_offset = any ? (highest + 1) * c->cs : 0;
	*disk_out = disk;
	return 0;
}

/* COPIED must mean refcount 1, in the active tables only. */
static int check_copied(struct chk *c, const uint64_t *disk)
{
	uint64_t *l1;
	int ret;

	if (!c->h.l1_size)
		return 0;
	ret = read_l1(c, c->h.l1_table_offset, c->h.l1_size, &l1);
	if (ret < 0)
		return ret;
	for (uint32_t i = 0; i < c->h.l1_size; i++) {
		uint64_t l2 = l1[i] & L1E_OFFSET_MASK, n = c->cs / c->l2e;

		if (!l2 || l2 % c->cs || l2 / c->cs >= c->n)
			continue;
		if ((disk[l2 / c->cs] == 1) != !!(l1[i] & QCOW_OFLAG_COPIED))
			problem(c, QCOW2_CHECK_CORRUPTION, l2, "OFLAG_COPIED L2 table: "
				"l1_index=%u l1_entry=0x%llx refcount=%llu", i,
				(unsigned long long)l1[i],
				(unsigned long long)disk[l2 / c->cs]);
		if (c->data_file || read_at(c, c->buf, c->cs, l2) < 0)
			continue;
		for (uint64_t j = 0; j < n; j++) {
			uint64_t e, off;

			memcpy(&e, c->buf + j * c->l2e, 8);
			e = be64toh(e);
			off = e & L2E_OFFSET_MASK;
			if (!mapped(c, e) || off % c->cs || off / c->cs >= c->n)
				continue;
			if ((disk[off / c->cs] == 1) != !!(e & QCOW_OFLAG_COPIED))
				problem(c, QCOW2_CHECK_CORRUPTION, off, "OFLAG_COPIED data "
					"cluster: l2_entry=0x%llx refcount=%llu",
					(unsigned long long)e,
					(unsigned long long)disk[off / c->cs]);
		}
	}
	free(l1);
	return 0;
}

static int check_once(const char *path, const struct qcow2_check_opts *o,
		      struct qcow2_check_result *res, struct qcow2_error *err)
{
	struct chk c = { .fd = -1, .res = res, .o = o };
	uint64_t *disk = NULL;
	uint8_t *hdr = NULL;
	struct stat st;
	size_t want;
	int ret;

	memset(res, 0, sizeof(*res));
	c.fd = open(path, O_RDONLY | O_CLOEXEC);
	if (c.fd < 0 || fstat(c.fd, &st) < 0) {
		ret = -errno;
		snprintf(err->msg, sizeof(err->msg), "cannot open %s: %s", path,
			 strerror(errno));
		goto out;
	}
	c.file_size = (uint64_t)st.st_size;
	want = c.file_size < (2u << 20) ? (size_t)c.file_size : (2u << 20);
	hdr = malloc(want ? want : 1);
	if (!hdr) {
		ret = -ENOMEM;
		goto out;
	}
	ret = read_at(&c, hdr, want, 0);
	if (ret == 0)
		ret = qcow2_header_parse(hdr, want, c.file_size, &c.h, err->msg,
					 sizeof(err->msg));
	if (ret < 0)
		goto out;
	if (c.h.crypt_method) {
		snprintf(err->msg, sizeof(err->msg), "encrypted images are not "
			 "supported");
		ret = -ENOTSUP;
		goto out;
	}
	c.cb = c.h.cluster_bits;
	c.cs = 1ull << c.cb;
	c.extl2 = c.h.incompatible_features & QCOW2_INCOMPAT_EXTL2;
	c.data_file = c.h.incompatible_features & QCOW2_INCOMPAT_DATA_FILE;
	c.l2e = c.extl2 ? 16 : 8;
	c.n = (c.file_size + c.cs - 1) / c.cs;
	c.max_rc = c.h.refcount_order == 6 ? UINT64_MAX :
		   (1ull << (1u << c.h.refcount_order)) - 1;
	c.ref = calloc(c.n ? c.n : 1, sizeof(*c.ref));
	c.buf = malloc(c.cs);
	if (!c.ref || !c.buf) {
		ret = -ENOMEM;
		goto out;
	}
	res->total_clusters = (c.h.size + c.cs - 1) / c.cs;
	c.l2_total = c.h.l1_size;
	inc(&c, 0, "header");
	ret = check_l1(&c, c.h.l1_table_offset, c.h.l1_size, true);
	if (ret == 0)
		ret = check_snapshots(&c);
	if (ret == 0)
		ret = check_bitmaps(&c);
	if (ret == 0)
		ret = compare_refcounts(&c, &disk);
	if (ret == 0)
		ret = check_copied(&c, disk);
	if (ret < 0 && !err->msg[0])
		snprintf(err->msg, sizeof(err->msg), "cannot check %s: %s", path,
			 strerror(-ret));
out:
	free(disk);
	free(c.ref);
	free(c.buf);
	free(hdr);
	qcow2_header_free(&c.h);
	if (c.fd >= 0)
		close(c.fd);
	return ret;
}

/* Rebuild the refcounts through the engine (crash-safe, see
 * refcount_rebuild.c). */
static int rebuild(const char *path, struct qcow2_error *err)
{
	struct qcow2_ctx_opts co = { .backend = QCOW2_BACKEND_SYNC };
	struct qcow2_open_opts oo = {
		.flags = QCOW2_OPEN_RDWR | QCOW2_OPEN_BUFFERED |
			 QCOW2_OPEN_NO_BACKING | QCOW2_OPEN_REBUILD_REFCOUNTS,
	};
	struct qcow2_ctx *ctx;
	struct qcow2_image *img;
	int ret = qcow2_ctx_new(&co, &ctx);

	if (ret < 0)
		return ret;
	ret = qcow2_open(ctx, path, &oo, &img, err);
	if (ret == 0)
		qcow2_close(img);
	qcow2_ctx_free(ctx);
	return ret;
}

int qcow2_check(const char *path, const struct qcow2_check_opts *opts,
		struct qcow2_check_result *res, struct qcow2_error *err)
{
	struct qcow2_check_result before;
	int ret;

	if (!path || !res || !err)
		return -EINVAL;
	err->msg[0] = '\0';
	ret = check_once(path, opts, res, err);
	if (ret < 0 || !opts || opts->repair == QCOW2_CHECK_NO_REPAIR)
		return ret;
	if (!res->leaks && !res->corruptions)
		return 0;
	/* Leaks only, or (all) refcounts too low as well: a rebuild fixes
	 * both. Other corruptions make the rebuild refuse, with a message. */
	if (opts->repair == QCOW2_CHECK_REPAIR_LEAKS && res->corruptions)
		return 0;
	before = *res;
	ret = rebuild(path, err);
	if (ret < 0)
		return ret;
	ret = check_once(path, NULL, res, err);
	if (ret < 0)
		return ret;
	res->leaks_fixed = before.leaks > res->leaks ? before.leaks - res->leaks : 0;
	res->corruptions_fixed = before.corruptions > res->corruptions ?
				 before.corruptions - res->corruptions : 0;
	return 0;
}
