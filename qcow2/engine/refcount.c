/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * Refcount table and blocks. A refcount block of refcount_bits-wide entries
 * is cached in slices like an L2 table. Entries narrower than a byte are
 * packed from the least significant bit; wider ones are big-endian.
 */
#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"

int refcount_open(struct qcow2_image *img)
{
	const struct qcow2_header *h = &img->hdr;
	struct refcounts *rc = &img->refcounts;
	uint64_t bytes = (uint64_t)h->refcount_table_clusters << img->cluster_bits;
	uint64_t nslots;
	int ret;

	rc->order = h->refcount_order;
	rc->block_entries = (img->cluster_size * 8) >> h->refcount_order;
	if (h->refcount_table_offset == 0 || bytes == 0 ||
	    h->refcount_table_offset > img->file.size ||
	    bytes > img->file.size - h->refcount_table_offset) {
		image_set_error(img, "refcount table (0x%llx, %u clusters) lies "
				"outside the file",
				(unsigned long long)h->refcount_table_offset,
				h->refcount_table_clusters);
		return -EINVAL;
	}
	rc->reftable_entries = (uint32_t)(bytes / 8);
	rc->reftable = malloc(bytes);
	if (!rc->reftable)
		return -ENOMEM;
	ret = qfile_pread_sync(&img->file, rc->reftable, bytes,
			       h->refcount_table_offset);
	if (ret < 0)
		return ret;
	for (uint32_t i = 0; i < rc->reftable_entries; i++) {
		uint64_t e = be64toh(rc->reftable[i]);
		uint64_t off = e & REFT_OFFSET_MASK;
		if (off & (img->cluster_size - 1)) {
			image_set_error(img, "refcount table entry %u (0x%llx) is not "
					"aligned to a cluster", i, (unsigned long long)e);
			return -EINVAL;
		}
		rc->reftable[i] = off;
	}
	rc->slice_size = img->l2_slice_size;
	nslots = (rc->cache_bytes ? rc->cache_bytes : 4ull << 20) / rc->slice_size;
	if (nslots > UINT32_MAX)
		nslots = UINT32_MAX;
	if (nslots < 16)
		nslots = 16;
	ret = slice_cache_new(rc->slice_size, (uint32_t)nslots,
			      img->file.mem_align, image_load_slice, img,
			      &img->rc_cache);
	return ret;
}

void refcount_close(struct qcow2_image *img)
{
	slice_cache_free(img->rc_cache);
	img->rc_cache = NULL;
	free(img->refcounts.reftable);
	img->refcounts.reftable = NULL;
}

/* Locate the slice and index within it for cluster ci. -ENOENT when no
 * refcount block covers ci (its refcount is 0). */
static int rc_locate(struct qcow2_image *img, uint64_t ci, uint64_t *key,
		     uint64_t *idx)
{
	const struct refcounts *rc = &img->refcounts;
	uint64_t rt = ci / rc->block_entries;
	uint64_t in_block = ci % rc->block_entries;
	uint64_t per_slice = ((uint64_t)rc->slice_size * 8) >> rc->order;
	uint64_t block;

	if (rt >= rc->reftable_entries || !rc->reftable[rt])
		return -ENOENT;
	block = rc->reftable[rt];
	if (block >= cluster_alloc_end(img)) {
		image_corrupt(img, "corrupt image: refcount block at 0x%llx lies "
				"beyond the end of the image", (unsigned long long)block);
		return -EIO;
	}
	*key = block + (in_block / per_slice) * rc->slice_size;
	*idx = in_block % per_slice;
	return 0;
}

int refcount_get(struct qcow2_image *img, uint64_t host, uint64_t *out,
		 struct slice_waiter *w)
{
	uint64_t key, idx;
	const uint8_t *data;
	int ret = rc_locate(img, host >> img->cluster_bits, &key, &idx);

	if (ret == -ENOENT) {
		*out = 0;
		return 0;
	}
	if (ret < 0)
		return ret;
	ret = slice_cache_get(img->rc_cache, key, w, &data);
	if (ret < 0)
		return ret;
	*out = refblock_get(data, idx, img->refcounts.order);
	return 0;
}

int refcount_update(struct qcow2_image *img, uint64_t host, int64_t delta,
		    struct slice_waiter *w)
{
	uint64_t key, idx, v, max;
	struct slice *s;
	int ret = rc_locate(img, host >> img->cluster_bits, &key, &idx);

	if (ret == -ENOENT) {
		image_corrupt(img, "corrupt image: no refcount block covers host cluster 0x%llx",
				(unsigned long long)host);
		return -EIO;
	}
	if (ret < 0)
		return ret;
	ret = slice_cache_get_slice(img->rc_cache, key, w, &s);
	if (ret < 0)
		return ret;
	v = refblock_get(s->data, idx, img->refcounts.order);
	max = refcount_max(img);
	if ((delta < 0 && v < (uint64_t)-delta) ||
	    (delta > 0 && max - v < (uint64_t)delta)) {
		image_corrupt(img, "corrupt image: refcount of host cluster 0x%llx "
				"would %s (%llu %+lld)", (unsigned long long)host,
				delta < 0 ? "drop below zero" : "overflow",
				(unsigned long long)v, (long long)delta);
		return -ERANGE;
	}
	refblock_set(s->data, idx, img->refcounts.order, v + (uint64_t)delta);
	slice_cache_mark_dirty(img->rc_cache, s);
	return 0;
}

int refcount_new_block(struct qcow2_image *img, uint64_t rt, uint64_t block,
		       struct slice_waiter *w)
{
	const struct refcounts *rc = &img->refcounts;
	uint64_t per_slice = ((uint64_t)rc->slice_size * 8) >> rc->order;
	uint64_t idx = (block >> img->cluster_bits) % rc->block_entries;
	struct slice *s;
	int ret;

	ret = slice_cache_create(img->rc_cache,
				 block + idx / per_slice * rc->slice_size, w, &s);
	if (ret < 0)
		return ret;
	refblock_set(s->data, idx % per_slice, rc->order, 1);
	refcount_set_block(img, rt, block);
	return 0;
}

void refcount_set_block(struct qcow2_image *img, uint64_t rt, uint64_t block)
{
	img->refcounts.reftable[rt] = block;
	image_mark_reftable_dirty(img, (uint32_t)rt);
}

int refcount_table_enlarge(struct qcow2_image *img, uint64_t need,
			   uint32_t *clusters)
{
	struct refcounts *rc = &img->refcounts;
	uint64_t entries = (uint64_t)rc->reftable_entries * 2;
	uint64_t bytes, *table;

	if (entries < need + 1)
		entries = need + 1;
	bytes = align_up(entries * 8, img->cluster_size);
	if (bytes > QCOW2_MAX_REFTABLE_BYTES * 8ull) {
		image_set_error(img, "the refcount table would exceed %u MiB",
				QCOW2_MAX_REFTABLE_BYTES * 8 >> 20);
		return -ENOSPC;
	}
	table = realloc(rc->reftable, bytes);
	if (!table)
		return -ENOMEM;
	memset(table + rc->reftable_entries, 0,
	       bytes - (uint64_t)rc->reftable_entries * 8);
	rc->reftable = table;
	rc->reftable_entries = (uint32_t)(bytes / 8);
	*clusters = (uint32_t)(bytes >> img->cluster_bits);
	return 0;
}
