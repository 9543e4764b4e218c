/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * Rebuilding the refcounts: of a dirty image (lazy refcounts, not closed
 * cleanly) before it is written, and for repairs (QCOW2_OPEN_REPAIR, what
 * qcow2-img check -r does). The tables are trusted, the refcounts are not.
 *
 * Every reference is counted by the checker's walk of the metadata graph
 * (check.c): the header cluster, the active L1 table and each snapshot's,
 * the L2 tables and the clusters they map, the snapshot table, valid
 * bitmaps. New refcount blocks and table are written past the end of the
 * file, made durable, and then one header write points at them and clears
 * the dirty bit. A crash before that header write leaves the image as it
 * was; the old refcount structures become free space. A repair then makes
 * the active tables' COPIED flags agree with the new refcounts, in place
 * (each flag, old or new, is safe once the refcounts are right).
 *
 * Memory is a 32-bit counter per cluster of the file (not of the virtual
 * disk).
 * Anything pointing outside the file, or unaligned, stops the rebuild with
 * a message: losing data is not a repair.
 */
#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "offline/offline.h"
#include "engine/engine.h"

struct rebuild {
	struct qcow2_image *img;
	uint64_t cs;
	uint64_t nclusters;      /* clusters of the file */
	uint32_t *count;         /* references, from the checker's walk */
	uint8_t *buf;            /* one cluster */
	uint64_t per;            /* refcount entries per block */
	bool fix_copied;         /* repair: set COPIED flags from the counts */
	uint64_t copied_fixed;
};

/* Written through the IO backend, so that crash replay and fault
 * injection see the rebuild too. */
static int write_full(struct qcow2_image *img, const void *buf, uint64_t len,
		      uint64_t off)
{
	return qfile_write_now(img->ctx, &img->file, buf, len, off);
}

/* COPIED (write in place) must mean refcount 1, or a snapshot's data, or
 * another guest range's, would be overwritten. Returns the entry as it
 * should be, or sets an error when it is wrong and not to be fixed. */
static int want_copied(struct rebuild *rb, uint64_t *entry, uint64_t off,
		       const char *what)
{
	uint64_t refs = rb->count[off / rb->cs];
	bool copied = *entry & QCOW_OFLAG_COPIED;

	if (copied == (refs == 1))
		return 0;
	if (rb->fix_copied) {
		*entry ^= QCOW_OFLAG_COPIED;
		rb->copied_fixed++;
		return 0;
	}
	if (!copied)
		return 0; /* only costs a copy on write */
	image_set_error(rb->img, "cannot rebuild refcounts: %s at 0x%llx is "
			"marked unshared but has %llu references; repair the image "
			"with qcow2-img check -r all", what, (unsigned long long)off,
			(unsigned long long)refs);
	return -EINVAL;
}

/* The active L2 table at l2_off: verify (or fix, in place) its COPIED
 * flags. Compressed clusters never carry it; with an external data file,
 * data clusters always do. */
static int copied_l2(struct rebuild *rb, uint64_t l2_off, bool write)
{
	struct qcow2_image *img = rb->img;
	uint64_t n = rb->cs / img->l2_entry_size;
	bool changed = false;
	int ret;

	if (img->has_data_file)
		return 0;
	ret = qfile_pread_sync(&img->file, rb->buf, rb->cs, l2_off);
	for (uint64_t i = 0; ret == 0 && i < n; i++) {
		uint64_t e, e2;

		memcpy(&e, rb->buf + i * img->l2_entry_size, 8);
		e = e2 = be64toh(e);
		if ((e & QCOW_OFLAG_COMPRESSED) || !(e & L2E_OFFSET_MASK))
			continue;
		ret = want_copied(rb, &e2, e & L2E_OFFSET_MASK, "a data cluster");
		if (ret == 0 && e2 != e) {
			e2 = htobe64(e2);
			memcpy(rb->buf + i * img->l2_entry_size, &e2, 8);
			changed = true;
		}
	}
	if (ret == 0 && changed && write)
		ret = write_full(img, rb->buf, rb->cs, l2_off);
	return ret;
}

/* The active L1 table and its L2 tables; with write, the fixes go to
 * disk (the L1 table last, then a sync). */
static int copied_flags(struct rebuild *rb, bool write)
{
	struct qcow2_image *img = rb->img;
	uint64_t bytes = align_up((uint64_t)img->l1_size * 8, img->file.align);
	bool changed = false;
	uint64_t *l1 = NULL;
	int ret = 0;

	for (uint32_t i = 0; ret == 0 && i < img->l1_size; i++) {
		uint64_t e = img->l1[i], l2 = e & L1E_OFFSET_MASK;

		if (!l2)
			continue;
		ret = want_copied(rb, &e, l2, "an L2 table");
		if (ret == 0 && e != img->l1[i]) {
			if (write)
				img->l1[i] = e;
			changed = true;
		}
		if (ret == 0)
			ret = copied_l2(rb, l2, write);
	}
	if (ret < 0 || !write || !changed || !img->l1_size)
		return ret;
	if (posix_memalign((void **)&l1, img->file.mem_align, bytes))
		return -ENOMEM;
	ret = qfile_pread_sync(&img->file, l1, bytes, img->hdr.l1_table_offset);
	for (uint32_t i = 0; ret == 0 && i < img->l1_size; i++)
		l1[i] = htobe64(img->l1[i]);
	if (ret == 0)
		ret = write_full(img, l1, bytes, img->hdr.l1_table_offset);
	free(l1);
	if (ret == 0)
		ret = qfile_sync_now(img->ctx, &img->file);
	return ret;
}

/* Lay the new structures out past the end: blocks, then the table. */
static int write_new_refcounts(struct rebuild *rb, uint64_t *rt_off,
			       uint32_t *rt_clusters)
{
	struct qcow2_image *img = rb->img;
	uint64_t per = rb->per, start = rb->nclusters;
	uint64_t nb = 1, nt = 1, total;
	uint64_t *table;
	int ret = 0;

	for (;;) {
		uint64_t nb2, nt2;
		total = start + nb + nt;
		nb2 = (total + per - 1) / per;
		nt2 = (nb2 * 8 + rb->cs - 1) / rb->cs;
		if (nb2 <= nb && nt2 <= nt)
			break;
		nb = nb2 > nb ? nb2 : nb;
		nt = nt2 > nt ? nt2 : nt;
	}
	if (nt * rb->cs > QCOW2_MAX_REFTABLE_BYTES * 8ull) {
		image_set_error(img, "cannot rebuild refcounts: the refcount table "
				"would be too large");
		return -EFBIG;
	}
	if (posix_memalign((void **)&table, img->file.mem_align, nt * rb->cs))
		return -ENOMEM;
	memset(table, 0, nt * rb->cs);
	for (uint64_t b = 0; b < nb && ret == 0; b++) {
		memset(rb->buf, 0, rb->cs);
		for (uint64_t i = 0; i < per; i++) {
			uint64_t c = b * per + i, v;
			if (c < rb->nclusters)
				v = rb->count[c];
			else
				v = c < total ? 1 : 0; /* the new structures */
			if (v)
				refblock_set(rb->buf, i, img->hdr.refcount_order, v);
		}
		table[b] = htobe64((start + b) * rb->cs);
		ret = write_full(img, rb->buf, rb->cs, (start + b) * rb->cs);
	}
	if (ret == 0)
		ret = write_full(img, table, nt * rb->cs,
				  (start + nb) * rb->cs);
	free(table);
	if (ret == 0)
		ret = qfile_sync_now(img->ctx, &img->file);
	*rt_off = (start + nb) * rb->cs;
	*rt_clusters = (uint32_t)nt;
	return ret;
}

int refcount_rebuild(struct qcow2_image *img)
{
	struct rebuild rb = { .img = img, .cs = img->cluster_size };
	const struct qcow2_header *h = &img->hdr;
	uint64_t rt_off = 0, v, max_rc;
	uint32_t rt_clusters = 0;
	struct check_refs refs;
	struct qcow2_error err;
	int ret;

	rb.fix_copied = img->flags & QCOW2_OPEN_REPAIR;
	rb.nclusters = align_up(img->file.size, rb.cs) / rb.cs;
	rb.per = (rb.cs * 8) >> h->refcount_order;
	max_rc = h->refcount_order == 6 ? UINT64_MAX :
		 (1ull << (1u << h->refcount_order)) - 1;
	ret = check_count_references(img->file.fd, &refs, &err);
	if (ret < 0) {
		image_set_error(img, "cannot rebuild refcounts: %s", err.msg);
		return ret;
	}
	rb.count = refs.refs;
	if (refs.problems) {
		image_set_error(img, "cannot rebuild refcounts: %s%s. qcow2-img "
				"check lists the damage, check -r all repairs what "
				"can be repaired without losing data, and the image "
				"can still be read (copied out with qcow2-img convert)",
				refs.first, refs.problems > 1 ? " (and more)" : "");
		ret = -EINVAL;
		goto out;
	}
	if (refs.n != rb.nclusters) {
		image_set_error(img, "cannot rebuild refcounts: the file changed "
				"size while it was walked");
		ret = -EBUSY;
		goto out;
	}
	for (uint64_t i = 0; i < rb.nclusters; i++) {
		if (rb.count[i] > max_rc || rb.count[i] == UINT32_MAX) {
			image_set_error(img, "cannot rebuild refcounts: cluster 0x%llx "
					"is referenced more often than %u-bit refcounts "
					"allow", (unsigned long long)(i * rb.cs),
					1u << h->refcount_order);
			ret = -EINVAL;
			goto out;
		}
	}
	if (posix_memalign((void **)&rb.buf, img->file.mem_align, rb.cs)) {
		rb.buf = NULL;
		ret = -ENOMEM;
		goto out;
	}
	ret = copied_flags(&rb, false); /* refuse before writing anything */
	if (ret == 0)
		ret = write_new_refcounts(&rb, &rt_off, &rt_clusters);
	if (ret < 0)
		goto out;
	/* One header write: the new table, and clean. */
	v = htobe64(rt_off);
	memcpy(img->hdr_block + 48, &v, 8);
	{
		uint32_t c = htobe32(rt_clusters);
		memcpy(img->hdr_block + 56, &c, 4);
	}
	/* A repair that got this far leaves nothing corrupt (anything it
	 * cannot fix stopped it above): the corrupt bit goes too. */
	memcpy(&v, img->hdr_block + 72, 8);
	v = htobe64(be64toh(v) & ~(QCOW2_INCOMPAT_DIRTY |
				   (rb.fix_copied ? QCOW2_INCOMPAT_CORRUPT : 0)));
	memcpy(img->hdr_block + 72, &v, 8);
	ret = write_full(img, img->hdr_block, img->hdr_block_len, 0);
	if (ret == 0)
		ret = qfile_sync_now(img->ctx, &img->file);
	if (ret < 0)
		goto out;
	img->hdr.refcount_table_offset = rt_off;
	img->hdr.refcount_table_clusters = rt_clusters;
	img->hdr.incompatible_features &= ~(QCOW2_INCOMPAT_DIRTY |
		(rb.fix_copied ? QCOW2_INCOMPAT_CORRUPT : 0));
	img->file.size = rt_off + ((uint64_t)rt_clusters << img->cluster_bits);
	cluster_alloc_init(img);
	img->stats.refcount_rebuilds++;
	if (rb.copied_fixed) {
		rb.copied_fixed = 0;
		ret = copied_flags(&rb, true);
	}
out:
	free(rb.count);
	free(rb.buf);
	return ret;
}
