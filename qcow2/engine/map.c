/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * Guest offset -> extent: walks L1, then one cached L2 slice, and returns the
 * longest run of one kind that the slice describes (host-contiguous for
 * data). Entries are validated here, so every reader sees the same checks.
 */
#include <endian.h>
#include <errno.h>
#include <string.h>

#include "engine/engine.h"

static enum qcow2_extent_type kind_to_type(enum l2_read_kind k)
{
	switch (k) {
	case L2_READ_ZERO:
		return QCOW2_EXTENT_ZERO;
	case L2_READ_DATA:
		return QCOW2_EXTENT_DATA;
	case L2_READ_COMPRESSED:
		return QCOW2_EXTENT_COMPRESSED;
	default:
		return QCOW2_EXTENT_UNALLOCATED;
	}
}

void compressed_range(const struct qcow2_image *img, uint64_t desc,
		      uint64_t *host, uint64_t *len)
{
	uint64_t nb;

	l2_compressed_decode(img->cluster_bits, desc, host, &nb);
	*len = (nb + 1) * 512 - (*host & 511);
}

static int check_compressed(struct qcow2_image *img, uint64_t desc,
			    uint64_t guest)
{
	uint64_t host, len;

	if (img->has_data_file) {
		image_corrupt(img,
				"corrupt image: compressed cluster at guest offset 0x%llx "
				"in an image with an external data file",
				(unsigned long long)guest);
		return -EIO;
	}
	compressed_range(img, desc, &host, &len);
	if (host < img->cluster_size ||
	    align_down(host, 512) + align_up(len + (host & 511), 512) >
		    align_up(image_end(img), 512)) {
		image_corrupt(img,
				"corrupt image: compressed cluster for guest offset 0x%llx "
				"(host 0x%llx, %llu bytes) lies outside the file",
				(unsigned long long)guest, (unsigned long long)host,
				(unsigned long long)len);
		return -EIO;
	}
	return 0;
}

int l2_slice_lookup(struct qcow2_image *img, uint64_t guest,
		    struct slice_waiter *w, struct slice **slice,
		    uint64_t *slice_first, uint64_t *l2_off_out)
{
	const uint32_t cb = img->cluster_bits;
	const uint64_t l1_idx = guest >> (cb + img->l2_bits);
	const uint32_t entries_per_slice = img->l2_slice_size / img->l2_entry_size;
	uint64_t l2_off, l2_idx;

	if (l1_idx >= img->l1_size || !(img->l1[l1_idx] & L1E_OFFSET_MASK))
		return 1;
	l2_off = img->l1[l1_idx] & L1E_OFFSET_MASK;
	if ((l2_off & (img->cluster_size - 1)) ||
	    l2_off >= cluster_alloc_end(img) ||
	    cluster_alloc_end(img) - l2_off < img->cluster_size) {
		image_corrupt(img,
				"corrupt image: L1 entry %llu points to an L2 table at 0x%llx, "
				"which is %s", (unsigned long long)l1_idx,
				(unsigned long long)l2_off,
				(l2_off & (img->cluster_size - 1)) ?
					"not aligned to a cluster" :
					"beyond the end of the file");
		return -EIO;
	}
	l2_idx = (guest >> cb) & ((1ull << img->l2_bits) - 1);
	*slice_first = l2_idx / entries_per_slice * entries_per_slice;
	*l2_off_out = l2_off;
	return slice_cache_get_slice(img->l2_cache,
				     l2_off + *slice_first * img->l2_entry_size,
				     w, slice);
}

int map_lookup(struct qcow2_image *img, uint64_t guest, uint64_t maxlen,
	       struct map_extent *ext, struct slice_waiter *w)
{
	const uint32_t cb = img->cluster_bits;
	const uint64_t l1_span_bits = cb + img->l2_bits;
	const uint64_t l1_idx = guest >> l1_span_bits;
	const uint64_t span_end = (l1_idx + 1) << l1_span_bits;
	const uint32_t entries_per_slice = img->l2_slice_size / img->l2_entry_size;
	const uint32_t unit_bits = img->extl2 ? img->subcluster_bits : cb;
	const struct l2_geom g = { cb, img->extl2, img->has_data_file };
	struct slice *slice;
	uint64_t l2_off, slice_first, pos, host0 = 0;
	enum l2_read_kind kind0 = L2_READ_UNALLOCATED;
	int ret;

	if (maxlen > img->virtual_size - guest)
		maxlen = img->virtual_size - guest;

	ret = l2_slice_lookup(img, guest, w, &slice, &slice_first, &l2_off);
	if (ret == 1) {
		ext->type = QCOW2_EXTENT_UNALLOCATED;
		ext->host = 0;
		ext->len = span_end - guest < maxlen ? span_end - guest : maxlen;
		return 0;
	}
	if (ret < 0)
		return ret;

	/* Walk (sub)cluster units from guest to the end of the slice. */
	pos = guest;
	ext->len = 0;
	while (ext->len < maxlen) {
		uint64_t idx = (pos >> cb) & ((1ull << img->l2_bits) - 1);
		uint64_t e, bm = 0, host, unit_end, take;
		unsigned sc = img->extl2 ?
				      (unsigned)((pos >> unit_bits) & 31) : 0;
		enum l2_read_kind k;

		if (pos >= span_end || idx < slice_first ||
		    idx >= slice_first + entries_per_slice)
			break;
		memcpy(&e, slice->data + (idx - slice_first) * img->l2_entry_size, 8);
		e = be64toh(e);
		if (img->extl2) {
			memcpy(&bm, slice->data + (idx - slice_first) * 16 + 8, 8);
			bm = be64toh(bm);
		}
		k = l2_classify(&g, e, bm, sc, &host);
		if (k == L2_READ_COMPRESSED)
			unit_end = ((pos >> cb) + 1) << cb;
		else
			unit_end = ((pos >> unit_bits) + 1) << unit_bits;
		if (k == L2_READ_DATA)
			host += pos & (img->cluster_size - 1);
		else if (k == L2_READ_ZERO && (e & L2E_OFFSET_MASK))
			/* preallocated zeros: their place is reported too */
			host = (e & L2E_OFFSET_MASK) + (pos & (img->cluster_size - 1));

		if (k == L2_READ_INVALID) {
			if (ext->len)
				break; /* report the good part first */
			image_corrupt(img,
					"corrupt image: invalid L2 entry 0x%016llx (bitmap 0x%016llx) "
					"for guest offset 0x%llx in the L2 table at 0x%llx",
					(unsigned long long)e, (unsigned long long)bm,
					(unsigned long long)pos, (unsigned long long)l2_off);
			return -EIO;
		}
		/* A cluster the file ends in is data; its part past the end
		 * reads as zeros. */
		if (k == L2_READ_DATA && !img->has_data_file &&
		    align_down(host, img->cluster_size) >= image_end(img)) {
			if (ext->len)
				break;
			image_corrupt(img,
					"corrupt image: guest offset 0x%llx maps to host offset "
					"0x%llx, beyond the end of the file (%llu bytes)",
					(unsigned long long)pos, (unsigned long long)host,
					(unsigned long long)image_end(img));
			return -EIO;
		}
		if (k == L2_READ_COMPRESSED) {
			if (ext->len)
				break;
			ret = check_compressed(img, e & ~QCOW_OFLAG_COMPRESSED &
							 ~QCOW_OFLAG_COPIED, pos);
			if (ret < 0)
				return ret;
		}

		if (ext->len == 0) {
			kind0 = k;
			host0 = host;
		} else if (k != kind0 ||
			   (k == L2_READ_DATA && host != host0 + ext->len) ||
			   (k == L2_READ_ZERO && (host || host0) &&
			    host != host0 + ext->len)) {
			break;
		}
		take = unit_end - pos;
		if (take > maxlen - ext->len)
			take = maxlen - ext->len;
		ext->len += take;
		pos += take;
		if (k == L2_READ_COMPRESSED) {
			host0 = e & ((1ull << 62) - 1);
			break;
		}
	}
	ext->type = kind_to_type(kind0);
	ext->host = host0;
	return 0;
}
