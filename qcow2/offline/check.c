/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * qcow2_check(): walk the whole metadata graph of an image, count the
 * references to every host cluster, and compare them with the refcounts on
 * disk. Read-only, with plain preads. Memory is a 32-bit counter and a bit
 * per cluster of the file, not of the virtual disk: 1 TiB preallocated with
 * 64 KiB clusters costs 66 MiB, a sparse 1 TiB image almost nothing.
 *
 * References: the header cluster; the active L1 table and every snapshot's,
 * each L2 table they point at (once per L1 that reaches it) and each data
 * cluster those map (a compressed cluster counts on every host cluster its
 * descriptor touches); the snapshot table; the refcount table and blocks;
 * with valid bitmaps (autoclear bit), their directory, tables and data.
 *
 * The same walk gathers the metadata statistics of qcow2-img stats, and
 * describes the references to one cluster (qcow2-img dump cluster).
 *
 * Repair reuses the engine: the image is opened read-write with
 * QCOW2_OPEN_REPAIR (refcount_rebuild.c: new refcount
 * structures past the end, then one header write), then checked again.
 */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2_check.h"
#include "qcow2_meta.h"
#include "offline/offline.h"
#include "io/io.h"
#include "format/format.h"

/* What a host cluster is used for (stats only). */
enum role { ROLE_NONE, ROLE_META, ROLE_DATA, ROLE_SNAPSHOT_DATA };

struct chk {
	struct qcow2_meta *m;
	uint64_t file_size;
	struct qcow2_header h;      /* a copy of the meta reader's */
	uint64_t cs;
	uint32_t cb;
	bool extl2, data_file;
	uint32_t l2e;               /* L2 entry size */
	uint64_t n;                 /* clusters of the file */
	uint32_t *ref;              /* references counted, per cluster
				       (saturating: 4 bytes per cluster) */
	uint64_t max_rc;
	uint8_t *buf;               /* one cluster */
	uint64_t next_contig;
	uint64_t l2_done, l2_total;
	struct qcow2_check_result *res;
	const struct qcow2_check_opts *o;
	/* Stats: a role per cluster of the file, and the last data cluster
	 * of the guest walk (fragmentation). */
	struct qcow2_image_stats *st;
	uint8_t *role;
	uint64_t prev_guest, prev_host;
	bool have_prev;
	/* Where the walk is, for the trace of one cluster. */
	bool active;
	uint32_t snap_index;
	uint32_t l1_index;
	uint64_t l2_off, l2_index;
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
	return qcow2_meta_pread(c->m, buf, len, off);
}

/* Describe a reference to the traced cluster. */
static void trace(struct chk *c, uint64_t off, const char *what)
{
	char msg[256], where[64];

	if (c->active)
		snprintf(where, sizeof(where), "the active L1 table");
	else
		snprintf(where, sizeof(where), "snapshot table entry %u",
			 c->snap_index);
	if (!strcmp(what, "data cluster") || !strcmp(what, "compressed cluster"))
		snprintf(msg, sizeof(msg), "%s of guest offset 0x%llx: entry %llu of "
			 "the L2 table at 0x%llx (%s)", what,
			 (unsigned long long)(((uint64_t)c->l1_index *
					       (c->cs / c->l2e) + c->l2_index) << c->cb),
			 (unsigned long long)c->l2_index,
			 (unsigned long long)c->l2_off, where);
	else if (!strcmp(what, "L2 table"))
		snprintf(msg, sizeof(msg), "L2 table of L1 index %u (%s)",
			 c->l1_index, where);
	else if (!strcmp(what, "L1 table") && !c->active)
		snprintf(msg, sizeof(msg), "L1 table of snapshot table entry %u",
			 c->snap_index);
	else
		snprintf(msg, sizeof(msg), "%s", what);
	c->o->reference(c->o->opaque, off, msg);
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
	if (c->ref[i] < UINT32_MAX)
		c->ref[i]++;
	if (c->o && c->o->reference && i == c->o->trace_offset / c->cs)
		trace(c, off, what);
	if (c->role) {
		bool data = !strcmp(what, "data cluster") ||
			    !strcmp(what, "compressed cluster");
		if (!data)
			c->role[i] = ROLE_META;
		else if (c->active && c->role[i] != ROLE_META)
			c->role[i] = ROLE_DATA;
		else if (c->role[i] == ROLE_NONE)
			c->role[i] = ROLE_SNAPSHOT_DATA;
	}
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

/* Guest-side statistics of one active L2 entry. */
static void stat_entry(struct chk *c, uint64_t e, uint64_t bm)
{
	struct qcow2_image_stats *st = c->st;
	uint64_t g = (uint64_t)c->l1_index * (c->cs / c->l2e) + c->l2_index;
	struct qcow2_l2_entry d;

	qcow2_meta_decode_l2(c->m, e, bm, &d);
	st->l2_entries++;
	if (d.type != QCOW2_L2_UNALLOCATED)
		st->l2_entries_used++;
	if (g >= st->guest_clusters)
		return;
	switch (d.type) {
	case QCOW2_L2_UNALLOCATED:
		return; /* counted as the rest, at the end */
	case QCOW2_L2_ZERO:
		st->zero_clusters++;
		return;
	case QCOW2_L2_COMPRESSED:
		st->compressed_clusters++;
		st->compressed_bytes += d.compressed_len;
		return;
	case QCOW2_L2_INVALID:
		st->invalid_clusters++;
		return;
	case QCOW2_L2_NORMAL:
		break;
	}
	st->data_clusters++;
	if (c->have_prev && g == c->prev_guest + 1) {
		st->adjacent_pairs++;
		if (d.host_offset != c->prev_host + c->cs) {
			st->split_pairs++;
			st->extents++;
		}
	} else {
		st->extents++;
	}
	c->have_prev = true;
	c->prev_guest = g;
	c->prev_host = d.host_offset;
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
		c->l2_index = i;
		if (active && c->st)
			stat_entry(c, e, bm);
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
	return qcow2_meta_read_table(c->m, off, size, out);
}

static int check_l1(struct chk *c, uint64_t l1_off, uint32_t l1_size,
		    bool active)
{
	uint64_t *l1;
	int ret;

	if (!l1_size)
		return 0;
	c->active = active;
	if (!inc_range(c, l1_off, (uint64_t)l1_size * 8, "L1 table"))
		return 0;
	ret = read_l1(c, l1_off, l1_size, &l1);
	if (ret < 0)
		return ret;
	for (uint32_t i = 0; i < l1_size; i++) {
		uint64_t l2 = l1[i] & L1E_OFFSET_MASK;

		if (!l2)
			continue;
		c->l1_index = i;
		c->l2_off = l2;
		if (active && c->st)
			c->st->l2_tables++;
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

static int check_snapshots(struct chk *c)
{
	struct qcow2_snapshot_entry *s;
	uint64_t bytes = 0;
	uint32_t n;
	int ret;

	if (!c->h.nb_snapshots)
		return 0;
	ret = qcow2_meta_snapshots(c->m, &s, &n);
	if (ret == -EINVAL) {
		problem(c, QCOW2_CHECK_CORRUPTION, c->h.snapshots_offset,
			"the snapshot table at 0x%llx is malformed or lies past the "
			"end of the file", (unsigned long long)c->h.snapshots_offset);
		return 0;
	}
	if (ret < 0)
		return ret;
	for (uint32_t i = 0; ret == 0 && i < n; i++) {
		c->snap_index = i;
		ret = check_l1(c, s[i].l1_table_offset, s[i].l1_size, false);
		bytes += s[i].entry_size;
	}
	c->active = true;
	if (ret == 0)
		inc_range(c, c->h.snapshots_offset, bytes, "snapshot table");
	qcow2_meta_free_snapshots(s, n);
	return ret;
}

static int check_bitmaps(struct chk *c)
{
	struct qcow2_bitmap_entry *b;
	uint32_t n;
	int ret;

	if (!(c->h.autoclear_features & QCOW2_AUTOCLEAR_BITMAPS) ||
	    !c->h.nb_bitmaps || !c->h.bitmap_directory_size)
		return 0;
	if (c->h.bitmap_directory_size > (64ull << 20) ||
	    !inc_range(c, c->h.bitmap_directory_offset,
		       c->h.bitmap_directory_size, "bitmap directory"))
		return 0;
	ret = qcow2_meta_bitmaps(c->m, &b, &n);
	if (ret == -EINVAL) {
		problem(c, QCOW2_CHECK_CORRUPTION, c->h.bitmap_directory_offset,
			"the bitmap directory at 0x%llx is malformed",
			(unsigned long long)c->h.bitmap_directory_offset);
		return 0;
	}
	for (uint32_t i = 0; ret == 0 && i < n; i++) {
		uint64_t *t;

		if (!b[i].table_size || (uint64_t)b[i].table_size * 8 > (64ull << 20) ||
		    !inc_range(c, b[i].table_offset, (uint64_t)b[i].table_size * 8,
			       "bitmap table"))
			continue;
		ret = qcow2_meta_read_table(c->m, b[i].table_offset,
					    b[i].table_size, &t);
		for (uint32_t j = 0; ret == 0 && j < b[i].table_size; j++) {
			uint64_t off = t[j] & 0x00fffffffffffe00ull;
			if (off)
				inc_range(c, off, 1, "bitmap data cluster");
		}
		if (ret == 0)
			free(t);
	}
	qcow2_meta_free_bitmaps(b, n);
	return ret;
}

/* The refcount table and blocks: count them, then compare every cluster's
 * refcount with its references, one block at a time. Only whether each
 * refcount is 1 is kept (a bit per cluster, for the COPIED flags). */
static int compare_refcounts(struct chk *c, uint64_t **one_out)
{
	uint64_t rt_entries = (uint64_t)c->h.refcount_table_clusters * c->cs / 8;
	uint64_t per = (c->cs * 8) >> c->h.refcount_order;
	uint64_t *rt, *one, highest = 0, loaded = UINT64_MAX;
	bool any = false, have = false;
	int ret;

	one = calloc((c->n + 63) / 64 + 1, sizeof(*one));
	if (!one)
		return -ENOMEM;
	inc_range(c, c->h.refcount_table_offset, rt_entries * 8, "refcount table");
	ret = qcow2_meta_read_table(c->m, c->h.refcount_table_offset, rt_entries,
				    &rt);
	if (ret < 0) {
		free(one);
		return ret;
	}
	/* The blocks are references too: all counted before comparing. */
	for (uint64_t b = 0; b < rt_entries; b++) {
		uint64_t off = rt[b] & REFT_OFFSET_MASK;

		rt[b] = 0;
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
		rt[b] = off;
		if (c->st)
			c->st->refcount_blocks++;
	}
	for (uint64_t i = 0; ret == 0 && i < c->n; i++) {
		uint64_t b = i / per, r1 = c->ref[i], r2 = 0;

		if (b != loaded) {
			loaded = b;
			have = b < rt_entries && rt[b];
			if (have)
				ret = read_at(c, c->buf, c->cs, rt[b]);
			if (ret < 0)
				break;
		}
		if (have)
			r2 = refblock_get(c->buf, i % per, c->h.refcount_order);
		if (r2 == 1)
			one[i / 64] |= 1ull << (i % 64);
		if (c->st) {
			unsigned k = r2 < 4 ? (unsigned)r2 : r2 < 8 ? 4 : r2 < 16 ? 5 : 6;
			c->st->rc_buckets[k]++;
			if (!r1 && !r2)
				c->st->free_clusters++;
		}
		if (r1 || r2) {
			highest = i;
			any = true;
		}
		if (r1 > c->max_rc || r1 == UINT32_MAX)
			problem(c, QCOW2_CHECK_CORRUPTION, i * c->cs, "cluster %llu is "
				"referenced %llu%s times, more than %u-bit refcounts hold",
				(unsigned long long)i, (unsigned long long)r1,
				r1 == UINT32_MAX ? " or more" : "",
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
	free(rt);
	if (ret < 0) {
		free(one);
		return ret;
	}
	c->res->image_end_offset = any ? (highest + 1) * c->cs : 0;
	*one_out = one;
	return 0;
}

/* A COPIED flag on the entry for the cluster at off must mean refcount 1. */
static void copied_flag(struct chk *c, const uint64_t *one, uint64_t off,
			uint64_t entry, const char *what, uint32_t l1_index)
{
	uint64_t i = off / c->cs, rc = 0;

	if (!!(one[i / 64] & (1ull << (i % 64))) == !!(entry & QCOW_OFLAG_COPIED))
		return;
	if (qcow2_meta_refcount(c->m, off, &rc) < 0)
		rc = 0;
	if (what)
		problem(c, QCOW2_CHECK_CORRUPTION, off, "OFLAG_COPIED L2 table: "
			"l1_index=%u l1_entry=0x%llx refcount=%llu", l1_index,
			(unsigned long long)entry, (unsigned long long)rc);
	else
		problem(c, QCOW2_CHECK_CORRUPTION, off, "OFLAG_COPIED data "
			"cluster: l2_entry=0x%llx refcount=%llu",
			(unsigned long long)entry, (unsigned long long)rc);
}

/* COPIED must mean refcount 1, in the active tables only. */
static int check_copied(struct chk *c, const uint64_t *one)
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
		copied_flag(c, one, l2, l1[i], "L2 table", i);
		if (c->data_file || read_at(c, c->buf, c->cs, l2) < 0)
			continue;
		for (uint64_t j = 0; j < n; j++) {
			uint64_t e, off;

			memcpy(&e, c->buf + j * c->l2e, 8);
			e = be64toh(e);
			off = e & L2E_OFFSET_MASK;
			if (!mapped(c, e) || off % c->cs || off / c->cs >= c->n)
				continue;
			copied_flag(c, one, off, e, NULL, 0);
		}
	}
	free(l1);
	return 0;
}

/* Figures that need the whole walk. */
static void finish_stats(struct chk *c)
{
	struct qcow2_image_stats *st = c->st;

	st->cluster_size = c->cs;
	st->file_size = c->file_size;
	st->file_clusters = c->n;
	st->leaked_clusters = c->res->leaks;
	st->unallocated_clusters = st->guest_clusters - st->data_clusters -
				   st->zero_clusters - st->compressed_clusters -
				   st->invalid_clusters;
	for (uint64_t i = 0; i < c->n; i++) {
		if (c->role[i] == ROLE_META)
			st->metadata_clusters++;
		else if (c->role[i] == ROLE_SNAPSHOT_DATA)
			st->snapshot_only_clusters++;
	}
}

static void chk_close(struct chk *c)
{
	free(c->ref);
	free(c->role);
	free(c->buf);
	qcow2_meta_close(c->m);
}

/* Opens path, or with path NULL the file at fd (taken over). */
static int chk_open(struct chk *c, const char *path, int fd, unsigned flags,
		    struct qcow2_error *err)
{
	int ret = path ? qcow2_meta_open(path, flags, &c->m, err) :
			 meta_open_fd(fd, "the image", flags, &c->m, err);

	if (ret < 0)
		return ret;
	c->h = *qcow2_meta_header(c->m);
	c->file_size = qcow2_meta_file_size(c->m);
	if (c->h.crypt_method) {
		snprintf(err->msg, sizeof(err->msg), "encrypted images are not "
			 "supported");
		return -ENOTSUP;
	}
	c->cb = c->h.cluster_bits;
	c->cs = 1ull << c->cb;
	c->extl2 = c->h.incompatible_features & QCOW2_INCOMPAT_EXTL2;
	c->data_file = c->h.incompatible_features & QCOW2_INCOMPAT_DATA_FILE;
	c->l2e = c->extl2 ? 16 : 8;
	c->n = (c->file_size + c->cs - 1) / c->cs;
	c->max_rc = c->h.refcount_order == 6 ? UINT64_MAX :
		    (1ull << (1u << c->h.refcount_order)) - 1;
	c->ref = calloc(c->n ? c->n : 1, sizeof(*c->ref));
	c->buf = malloc(c->cs);
	if (c->st) {
		memset(c->st, 0, sizeof(*c->st));
		c->role = calloc(c->n ? c->n : 1, 1);
	}
	if (!c->ref || !c->buf || (c->st && !c->role))
		return -ENOMEM;
	c->res->total_clusters = (c->h.size + c->cs - 1) / c->cs;
	c->res->marked_corrupt = c->h.incompatible_features &
				 QCOW2_INCOMPAT_CORRUPT;
	if (c->st)
		c->st->guest_clusters = c->res->total_clusters;
	c->l2_total = c->h.l1_size;
	return 0;
}

/* Every reference in the metadata graph, except those of the refcount
 * structures themselves. */
static int walk_graph(struct chk *c)
{
	int ret;

	inc(c, 0, "header");
	ret = check_l1(c, c->h.l1_table_offset, c->h.l1_size, true);
	if (ret == 0)
		ret = check_snapshots(c);
	if (ret == 0)
		ret = check_bitmaps(c);
	return ret;
}

int check_once(const char *path, const struct qcow2_check_opts *o,
		      struct qcow2_image_stats *st,
		      struct qcow2_check_result *res, struct qcow2_error *err)
{
	struct chk c = { .res = res, .o = o, .st = st, .active = true };
	uint64_t *one = NULL;
	int ret;

	memset(res, 0, sizeof(*res));
	/* A check that may repair locks the image as its writer would, so
	 * that nobody uses it meanwhile (qemu-img check -r does the same). */
	ret = chk_open(&c, path, -1, !o ? 0 : o->force_share ? QCOW2_OPEN_FORCE_SHARE :
		       o->repair != QCOW2_CHECK_NO_REPAIR ? QCOW2_OPEN_RDWR : 0,
		       err);
	if (ret == 0)
		ret = walk_graph(&c);
	if (ret == 0)
		ret = compare_refcounts(&c, &one);
	if (ret == 0)
		ret = check_copied(&c, one);
	if (ret == 0 && st)
		finish_stats(&c);
	if (ret < 0 && !err->msg[0])
		snprintf(err->msg, sizeof(err->msg), "cannot check %s: %s", path,
			 strerror(-ret));
	free(one);
	chk_close(&c);
	return ret;
}

static void first_problem(void *opaque, enum qcow2_check_problem kind,
			  uint64_t off, const char *msg)
{
	struct check_refs *r = opaque;

	(void)kind;
	(void)off;
	if (!r->first[0])
		snprintf(r->first, sizeof(r->first), "%s", msg);
}

int check_count_references(int fd, struct check_refs *out,
			   struct qcow2_error *err)
{
	struct qcow2_check_opts o = { .report = first_problem, .opaque = out };
	struct qcow2_check_result res = { 0 };
	struct chk c = { .res = &res, .o = &o, .active = true };
	char proc[64];
	int own, ret;

	memset(out, 0, sizeof(*out));
	err->msg[0] = '\0';
	/* The same file, not the same path (it may have been renamed or
	 * replaced since it was opened), through a description of our own:
	 * plain preads, no O_DIRECT, no lock (the caller holds the image's). */
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	own = open(proc, O_RDONLY | O_CLOEXEC);
	if (own < 0) {
		ret = -errno;
		snprintf(err->msg, sizeof(err->msg), "cannot reopen the image "
			 "through %s: %s", proc, strerror(errno));
		return ret;
	}
	ret = chk_open(&c, NULL, own, QCOW2_OPEN_FORCE_SHARE, err);
	if (ret == 0)
		ret = walk_graph(&c);
	if (ret == 0) {
		out->refs = c.ref;
		out->n = c.n;
		out->problems = res.corruptions + res.check_errors;
		c.ref = NULL;
	}
	chk_close(&c);
	return ret;
}
