/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * Rebuilding the refcounts of a dirty image (lazy refcounts, not closed
 * cleanly) before it is written: its tables are consistent, its refcounts
 * are not to be trusted (some may be missing, with their blocks).
 *
 * Every reference is counted from the metadata graph: the header cluster,
 * the active L1 table and each snapshot's, the L2 tables they point at and
 * the clusters those map (a compressed cluster counts once on every host
 * cluster it touches; each L1 that reaches an L2 table counts its clusters
 * again, as snapshots share them), the snapshot table. New refcount blocks
 * and table are written past the end of the file, made durable, and then
 * one header write points at them and clears the dirty bit. A crash before
 * that header write leaves the image as it was (dirty: rebuilt again next
 * time); the old refcount structures become free space.
 *
 * Memory is one counter per cluster of the file (not of the virtual disk).
 * Anything pointing outside the file, or unaligned, stops the rebuild with
 * a message: such an image needs a real repair (qemu-img check -r all).
 */
#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "l2_entry.h"
#include "refcount.h"

struct rebuild {
	struct qcow2_image *img;
	uint64_t cs;
	uint64_t nclusters;      /* clusters of the file */
	uint64_t *count;
	uint64_t max_rc;
	uint8_t *buf;            /* one cluster */
	uint64_t per;            /* refcount entries per block */
	bool verify;             /* second walk: COPIED flags vs counts */
};

static int pwrite_full(int fd, const void *buf, uint64_t len, uint64_t off)
{
	ssize_t r = pwrite(fd, buf, len, (off_t)off);

	if (r < 0)
		return -errno;
	return (uint64_t)r == len ? 0 : -EIO;
}

/* The active tables may write in place where COPIED is set: that must mean
 * refcount 1, or a snapshot's data would be overwritten. */
static int verify_copied(struct rebuild *rb, uint64_t entry, uint64_t off,
			 const char *what)
{
	if (!(entry & QCOW_OFLAG_COPIED) || rb->count[off / rb->cs] == 1)
		return 0;
	image_set_error(rb->img, "cannot rebuild refcounts: %s at 0x%llx is "
			"marked unshared but has %llu references; repair the image "
			"with qemu-img check -r all", what, (unsigned long long)off,
			(unsigned long long)rb->count[off / rb->cs]);
	return -EINVAL;
}

static int ref(struct rebuild *rb, uint64_t off, const char *what)
{
	uint64_t c = off / rb->cs;

	if (c >= rb->nclusters) {
		image_set_error(rb->img, "cannot rebuild refcounts: the %s at 0x%llx "
				"lies past the end of the file; repair the image with "
				"qemu-img check -r all", what, (unsigned long long)off);
		return -EINVAL;
	}
	if (rb->count[c] >= rb->max_rc) {
		image_set_error(rb->img, "cannot rebuild refcounts: cluster 0x%llx is "
				"referenced more often than %u-bit refcounts allow",
				(unsigned long long)(c * rb->cs),
				1u << rb->img->hdr.refcount_order);
		return -EINVAL;
	}
	rb->count[c]++;
	return 0;
}

/* Count a table of bytes at off (whole clusters). */
static int ref_range(struct rebuild *rb, uint64_t off, uint64_t bytes,
		     const char *what)
{
	if (off % rb->cs) {
		image_set_error(rb->img, "cannot rebuild refcounts: the %s at 0x%llx "
				"is not cluster-aligned", what, (unsigned long long)off);
		return -EINVAL;
	}
	for (uint64_t o = 0; o < bytes; o += rb->cs) {
		int ret = ref(rb, off + o, what);
		if (ret < 0)
			return ret;
	}
	return 0;
}

static int count_l2(struct rebuild *rb, uint64_t l2_off)
{
	struct qcow2_image *img = rb->img;
	uint64_t n = rb->cs / img->l2_entry_size;
	int ret;

	ret = qfile_pread_sync(&img->file, rb->buf, rb->cs, l2_off);
	if (ret < 0)
		return ret;
	for (uint64_t i = 0; i < n; i++) {
		uint64_t e;

		memcpy(&e, rb->buf + i * img->l2_entry_size, 8);
		e = be64toh(e);
		if ((e & QCOW_OFLAG_COMPRESSED) && !rb->verify) {
			uint64_t host, len;
			compressed_range(img, e & ((1ull << 62) - 1), &host, &len);
			for (uint64_t c = align_down(host, rb->cs); c < host + len;
			     c += rb->cs) {
				ret = ref(rb, c, "compressed cluster");
				if (ret < 0)
					return ret;
			}
		} else if (!(e & QCOW_OFLAG_COMPRESSED) && (e & L2E_OFFSET_MASK) &&
			   !img->has_data_file) {
			if (rb->verify)
				ret = verify_copied(rb, e, e & L2E_OFFSET_MASK,
						    "a data cluster");
			else
				ret = ref_range(rb, e & L2E_OFFSET_MASK, 1, "data cluster");
			if (ret < 0)
				return ret;
		}
	}
	return 0;
}

static int count_l1(struct rebuild *rb, uint64_t l1_off, uint32_t l1_size)
{
	uint64_t bytes = (uint64_t)l1_size * 8;
	uint64_t *l1;
	int ret;

	if (!l1_size)
		return 0;
	if (!rb->verify) {
		ret = ref_range(rb, l1_off, bytes, "L1 table");
		if (ret < 0)
			return ret;
	}
	l1 = malloc(bytes);
	if (!l1)
		return -ENOMEM;
	ret = qfile_pread_sync(&rb->img->file, l1, bytes, l1_off);
	for (uint32_t i = 0; ret == 0 && i < l1_size; i++) {
		uint64_t l2 = be64toh(l1[i]) & L1E_OFFSET_MASK;
		if (!l2)
			continue;
		if (rb->verify)
			ret = verify_copied(rb, be64toh(l1[i]), l2, "an L2 table");
		else
			ret = ref_range(rb, l2, 1, "L2 table");
		if (ret == 0)
			ret = count_l2(rb, l2);
	}
	free(l1);
	return ret;
}

static int count_snapshots(struct rebuild *rb)
{
	const struct qcow2_header *h = &rb->img->hdr;
	uint64_t file = rb->nclusters * rb->cs, pos = 0, size;
	uint8_t *t;
	int ret = 0;

	if (!h->nb_snapshots)
		return 0;
	if (h->snapshots_offset % rb->cs || h->snapshots_offset >= file) {
		image_set_error(rb->img, "cannot rebuild refcounts: bad snapshot "
				"table offset 0x%llx",
				(unsigned long long)h->snapshots_offset);
		return -EINVAL;
	}
	/* The table is at most 64k entries of at most 64 KiB each; read up to
	 * the end of the file and parse within it. */
	size = file - h->snapshots_offset;
	if (size > (64ull << 20))
		size = 64ull << 20;
	t = malloc(size);
	if (!t)
		return -ENOMEM;
	ret = qfile_pread_sync(&rb->img->file, t, size, h->snapshots_offset);
	for (uint32_t i = 0; ret == 0 && i < h->nb_snapshots; i++) {
		uint64_t l1_off, len;
		uint32_t l1_size, extra;
		uint16_t id_len, name_len;

		if (pos + 40 > size) {
			ret = -EINVAL;
			break;
		}
		l1_off = be64_at(t + pos);
		l1_size = be32_at(t + pos + 8);
		id_len = (uint16_t)(t[pos + 12] << 8 | t[pos + 13]);
		name_len = (uint16_t)(t[pos + 14] << 8 | t[pos + 15]);
		extra = be32_at(t + pos + 36);
		len = align_up(40ull + extra + id_len + name_len, 8);
		if (pos + len > size || (uint64_t)l1_size * 8 > QCOW2_MAX_L1_BYTES) {
			ret = -EINVAL;
			break;
		}
		ret = count_l1(rb, l1_off, l1_size);
		pos += len;
	}
	if (ret == -EINVAL && !rb->img->last_error[0])
		image_set_error(rb->img, "cannot rebuild refcounts: the snapshot "
				"table is malformed");
	if (ret == 0)
		ret = ref_range(rb, h->snapshots_offset, pos, "snapshot table");
	free(t);
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
	table = calloc(1, nt * rb->cs);
	if (!table)
		return -ENOMEM;
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
		ret = pwrite_full(img->file.fd, rb->buf, rb->cs, (start + b) * rb->cs);
	}
	if (ret == 0)
		ret = pwrite_full(img->file.fd, table, nt * rb->cs,
				  (start + nb) * rb->cs);
	free(table);
	if (ret == 0 && fdatasync(img->file.fd) < 0)
		ret = -errno;
	*rt_off = (start + nb) * rb->cs;
	*rt_clusters = (uint32_t)nt;
	return ret;
}

int refcount_rebuild(struct qcow2_image *img)
{
	struct rebuild rb = { .img = img, .cs = img->cluster_size };
	const struct qcow2_header *h = &img->hdr;
	uint64_t rt_off = 0, v;
	uint32_t rt_clusters = 0;
	int ret;

	rb.nclusters = align_up(img->file.size, rb.cs) / rb.cs;
	rb.max_rc = h->refcount_order == 6 ? UINT64_MAX :
		    (1ull << (1u << h->refcount_order)) - 1;
	rb.per = (rb.cs * 8) >> h->refcount_order;
	rb.count = calloc(rb.nclusters ? rb.nclusters : 1, sizeof(*rb.count));
	if (posix_memalign((void **)&rb.buf, img->file.mem_align, rb.cs))
		rb.buf = NULL;
	if (!rb.count || !rb.buf) {
		ret = -ENOMEM;
		goto out;
	}
	ret = ref(&rb, 0, "header");
	if (ret == 0)
		ret = count_l1(&rb, h->l1_table_offset, h->l1_size);
	if (ret == 0)
		ret = count_snapshots(&rb);
	if (ret == 0) {
		rb.verify = true;
		ret = count_l1(&rb, h->l1_table_offset, h->l1_size);
	}
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
	memcpy(&v, img->hdr_block + 72, 8);
	v = htobe64(be64toh(v) & ~QCOW2_INCOMPAT_DIRTY);
	memcpy(img->hdr_block + 72, &v, 8);
	ret = pwrite_full(img->file.fd, img->hdr_block, img->hdr_block_len, 0);
	if (ret == 0 && fdatasync(img->file.fd) < 0)
		ret = -errno;
	if (ret < 0)
		goto out;
	img->hdr.refcount_table_offset = rt_off;
	img->hdr.refcount_table_clusters = rt_clusters;
	img->hdr.incompatible_features &= ~QCOW2_INCOMPAT_DIRTY;
	img->file.size = rt_off + ((uint64_t)rt_clusters << img->cluster_bits);
	img->alloc_end = img->file.size;
	img->file_len = img->file.size;
	img->stats.refcount_rebuilds++;
out:
	free(rb.count);
	free(rb.buf);
	return ret;
}
