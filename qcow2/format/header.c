/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* Decoding and validation of the qcow2 header and header extensions. */
#include <endian.h>
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "format/format.h"

__attribute__((format(printf, 4, 5)))
static int fail(char *err, size_t errlen, int code, const char *fmt, ...)
{
	va_list ap;

	if (err && errlen) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return code;
}

uint64_t qcow2_l1_entries_needed(uint64_t size, uint32_t cluster_bits,
				 int extl2)
{
	uint32_t l2_bits = cluster_bits - (extl2 ? 4 : 3);
	uint32_t shift = cluster_bits + l2_bits;

	if (shift >= 64)
		return size ? 1 : 0;
	return (size + (1ull << shift) - 1) >> shift;
}

const char *qcow2_header_feature_name(const struct qcow2_header *h, int type,
				      int bit)
{
	for (unsigned i = 0; i < h->nb_features; i++) {
		if (h->features[i].type == type && h->features[i].bit == bit)
			return h->features[i].name;
	}
	return NULL;
}

static char *dup_name(const uint8_t *p, size_t len)
{
	char *s = malloc(len + 1);

	if (!s)
		return NULL;
	memcpy(s, p, len);
	s[len] = '\0';
	return s;
}

static int parse_extensions(const uint8_t *buf, size_t start, size_t end,
			    struct qcow2_header *h, char *err, size_t errlen)
{
	size_t off = start;

	while (off + 8 <= end) {
		uint32_t type = be32_at(buf + off);
		uint32_t len = be32_at(buf + off + 4);
		const uint8_t *data = buf + off + 8;
		struct qcow2_header_ext *x;

		if (type == QCOW2_EXT_END)
			return 0;
		if (len > end - off - 8)
			return fail(err, errlen, -EINVAL,
				    "header extension 0x%08x at offset %zu is %u bytes long, "
				    "past the end of the header cluster",
				    type, off, len);
		x = realloc(h->extensions, (h->nb_extensions + 1) * sizeof(*x));
		if (!x)
			return -ENOMEM;
		h->extensions = x;
		x[h->nb_extensions++] = (struct qcow2_header_ext){
			.type = type, .length = len, .offset = off + 8 };
		switch (type) {
		case QCOW2_EXT_BACKING_FORMAT:
			if (len == 0 || len > 31)
				return fail(err, errlen, -EINVAL,
					    "backing format extension has an invalid length %u", len);
			free(h->backing_format);
			h->backing_format = dup_name(data, len);
			if (!h->backing_format)
				return -ENOMEM;
			break;
		case QCOW2_EXT_DATA_FILE:
			if (len == 0 || len > 4095)
				return fail(err, errlen, -EINVAL,
					    "external data file extension has an invalid length %u", len);
			free(h->data_file);
			h->data_file = dup_name(data, len);
			if (!h->data_file)
				return -ENOMEM;
			break;
		case QCOW2_EXT_FEATURE_TABLE: {
			unsigned n = len / 48;
			free(h->features);
			h->features = calloc(n ? n : 1, sizeof(*h->features));
			if (!h->features)
				return -ENOMEM;
			h->nb_features = n;
			for (unsigned i = 0; i < n; i++) {
				const uint8_t *e = data + i * 48;
				h->features[i].type = e[0];
				h->features[i].bit = e[1];
				memcpy(h->features[i].name, e + 2, 46);
				h->features[i].name[46] = '\0';
			}
			break;
		}
		case QCOW2_EXT_BITMAPS:
			if (len < 24)
				return fail(err, errlen, -EINVAL,
					    "bitmaps extension is too short (%u bytes)", len);
			h->nb_bitmaps = be32_at(data);
			h->bitmap_directory_size = be64_at(data + 8);
			h->bitmap_directory_offset = be64_at(data + 16);
			break;
		case QCOW2_EXT_CRYPTO:
			if (len < 16)
				return fail(err, errlen, -EINVAL,
					    "encryption header extension is too short (%u bytes)", len);
			h->crypto_header_offset = be64_at(data);
			h->crypto_header_length = be64_at(data + 8);
			break;
		default:
			h->nb_unknown_extensions++;
			break;
		}
		off += 8 + (((size_t)len + 7) & ~(size_t)7);
	}
	return 0;
}

/* Where a table may lie, by QEMU's rule: cluster aligned, and ending
 * within INT64_MAX (file offsets are signed). */
static bool table_place_ok(uint64_t off, uint64_t entries, uint64_t entry_len,
			   uint64_t cluster_size)
{
	if (entries > (uint64_t)INT64_MAX / entry_len ||
	    (uint64_t)INT64_MAX - entries * entry_len < off)
		return false;
	return (off & (cluster_size - 1)) == 0;
}

static int check_features(const struct qcow2_header *h, char *err,
			  size_t errlen)
{
	uint64_t unknown = h->incompatible_features & ~QCOW2_INCOMPAT_KNOWN;

	if (unknown) {
		int bit = __builtin_ctzll(unknown);
		const char *name = qcow2_header_feature_name(h, 0, bit);
		return fail(err, errlen, -ENOTSUP,
			    "image uses unsupported incompatible feature bit %d%s%s%s; "
			    "it cannot be opened by this version of qcow2d",
			    bit, name ? " (\"" : "", name ? name : "", name ? "\")" : "");
	}
	return 0;
}

int qcow2_header_parse(const uint8_t *buf, size_t buflen, uint64_t file_size,
		       struct qcow2_header *h, char *err, size_t errlen)
{
	uint64_t cluster_size, l1_needed, ext_end;
	int ret;

	memset(h, 0, sizeof(*h));
	if (buflen < QCOW2_V2_HEADER_LEN)
		return fail(err, errlen, -EINVAL,
			    "file is too short for a qcow2 header (%zu bytes)", buflen);
	if (be32_at(buf) != QCOW2_MAGIC)
		return fail(err, errlen, -EINVAL, "not a qcow2 image (bad magic)");
	h->version = be32_at(buf + 4);
	if (h->version != 2 && h->version != 3)
		return fail(err, errlen, -ENOTSUP,
			    "unsupported qcow2 version %u (only 2 and 3 exist)", h->version);
	h->backing_file_offset = be64_at(buf + 8);
	h->backing_file_size = be32_at(buf + 16);
	h->cluster_bits = be32_at(buf + 20);
	h->size = be64_at(buf + 24);
	h->crypt_method = be32_at(buf + 32);
	h->l1_size = be32_at(buf + 36);
	h->l1_table_offset = be64_at(buf + 40);
	h->refcount_table_offset = be64_at(buf + 48);
	h->refcount_table_clusters = be32_at(buf + 56);
	h->nb_snapshots = be32_at(buf + 60);
	h->snapshots_offset = be64_at(buf + 64);

	if (h->cluster_bits < QCOW2_MIN_CLUSTER_BITS ||
	    h->cluster_bits > QCOW2_MAX_CLUSTER_BITS)
		return fail(err, errlen, -EINVAL,
			    "cluster_bits %u is out of range: cluster size must be "
			    "512 bytes to 2 MiB (cluster_bits 9 to 21)", h->cluster_bits);
	cluster_size = 1ull << h->cluster_bits;

	if (h->version == 2) {
		h->refcount_order = 4;
		h->header_length = QCOW2_V2_HEADER_LEN;
	} else {
		if (buflen < QCOW2_V3_HEADER_LEN)
			return fail(err, errlen, -EINVAL,
				    "file is too short for a version 3 header (%zu bytes)", buflen);
		h->incompatible_features = be64_at(buf + 72);
		h->compatible_features = be64_at(buf + 80);
		h->autoclear_features = be64_at(buf + 88);
		h->refcount_order = be32_at(buf + 96);
		h->header_length = be32_at(buf + 100);
		if (h->header_length < QCOW2_V3_HEADER_LEN)
			return fail(err, errlen, -EINVAL,
				    "header_length %u is too small: version 3 headers are at "
				    "least %u bytes", h->header_length, QCOW2_V3_HEADER_LEN);
		if (h->header_length > cluster_size || h->header_length > buflen)
			return fail(err, errlen, -EINVAL,
				    "header_length %u exceeds the first cluster", h->header_length);
		if (h->header_length > QCOW2_V3_HEADER_LEN)
			h->compression_type = buf[104];
	}

	/* Extensions live between the header and the backing file name (or
	 * the end of the first cluster). */
	ext_end = cluster_size < buflen ? cluster_size : buflen;
	if (h->backing_file_offset && h->backing_file_offset > h->header_length &&
	    h->backing_file_offset < ext_end)
		ext_end = h->backing_file_offset;
	ret = parse_extensions(buf, h->header_length, ext_end, h, err, errlen);
	if (ret < 0)
		goto out;
	ret = check_features(h, err, errlen);
	if (ret < 0)
		goto out;

	ret = -EINVAL;
	if (h->refcount_order > 6) {
		fail(err, errlen, ret, "refcount_order %u is out of range (0 to 6)",
		     h->refcount_order);
		goto out;
	}
	if (h->crypt_method != 0) {
		ret = fail(err, errlen, -ENOTSUP,
			   "image is encrypted (crypt_method %u); encrypted images are "
			   "not supported: decrypt it with qemu-img convert first",
			   h->crypt_method);
		goto out;
	}
	if (h->compression_type > 1) {
		fail(err, errlen, ret, "unknown compression type %u", h->compression_type);
		goto out;
	}
	if (h->compression_type != 0 &&
	    !(h->incompatible_features & (1ull << 3))) {
		fail(err, errlen, ret,
		     "compression type %u is set but the compression-type "
		     "incompatible feature bit is clear", h->compression_type);
		goto out;
	}
	if ((h->incompatible_features & (1ull << 4)) && h->cluster_bits < 14) {
		fail(err, errlen, ret,
		     "extended L2 entries need clusters of at least 16 KiB "
		     "(cluster_bits %u)", h->cluster_bits);
		goto out;
	}
	if ((h->incompatible_features & (1ull << 2)) && !h->data_file) {
		/* The caller may still supply the data file's path. */
	}
	if ((h->autoclear_features & (1ull << 1)) &&
	    !(h->incompatible_features & (1ull << 2))) {
		fail(err, errlen, ret,
		     "raw external data file flag is set, but the image has no "
		     "external data file");
		goto out;
	}

	/* L1 table */
	if ((uint64_t)h->l1_size * 8 > QCOW2_MAX_L1_BYTES) {
		fail(err, errlen, ret, "L1 table is too large (%u entries, limit %u)",
		     h->l1_size, QCOW2_MAX_L1_BYTES / 8);
		goto out;
	}
	l1_needed = qcow2_l1_entries_needed(h->size, h->cluster_bits,
					    !!(h->incompatible_features & (1ull << 4)));
	if (l1_needed > h->l1_size) {
		fail(err, errlen, ret,
		     "L1 table has %u entries, but a virtual size of %llu bytes "
		     "needs %llu", h->l1_size, (unsigned long long)h->size,
		     (unsigned long long)l1_needed);
		goto out;
	}
	if (h->l1_size) {
		if (h->l1_table_offset & (cluster_size - 1)) {
			fail(err, errlen, ret,
			     "L1 table offset 0x%llx is not aligned to a cluster",
			     (unsigned long long)h->l1_table_offset);
			goto out;
		}
		if (h->l1_table_offset == 0 ||
		    h->l1_table_offset > file_size ||
		    (uint64_t)h->l1_size * 8 > file_size - h->l1_table_offset) {
			fail(err, errlen, ret,
			     "L1 table (0x%llx, %u entries) lies beyond the end of the "
			     "file (%llu bytes)", (unsigned long long)h->l1_table_offset,
			     h->l1_size, (unsigned long long)file_size);
			goto out;
		}
	}

	/* Refcount table */
	if (h->refcount_table_offset & (cluster_size - 1)) {
		fail(err, errlen, ret,
		     "refcount table offset 0x%llx is not aligned to a cluster",
		     (unsigned long long)h->refcount_table_offset);
		goto out;
	}
	if ((uint64_t)h->refcount_table_clusters << h->cluster_bits >
	    QCOW2_MAX_REFTABLE_BYTES &&
	    h->refcount_table_clusters > 1) {
		fail(err, errlen, ret, "refcount table is too large (%u clusters)",
		     h->refcount_table_clusters);
		goto out;
	}
	if (!table_place_ok(h->refcount_table_offset,
			    (uint64_t)h->refcount_table_clusters << h->cluster_bits,
			    1, cluster_size)) {
		fail(err, errlen, ret,
		     "refcount table offset invalid: 0x%llx (header field "
		     "refcount_table_offset) of %u cluster(s) ends past the "
		     "largest file offset", (unsigned long long)h->refcount_table_offset,
		     h->refcount_table_clusters);
		goto out;
	}

	/* Snapshot table */
	if (h->nb_snapshots > QCOW2_MAX_SNAPSHOTS) {
		fail(err, errlen, ret, "too many snapshots (%u, limit %u)",
		     h->nb_snapshots, QCOW2_MAX_SNAPSHOTS);
		goto out;
	}
	if (h->nb_snapshots && (h->snapshots_offset & (cluster_size - 1))) {
		fail(err, errlen, ret,
		     "snapshot table offset 0x%llx is not aligned to a cluster",
		     (unsigned long long)h->snapshots_offset);
		goto out;
	}
	/* 40 bytes: the smallest snapshot table entry */
	if (h->nb_snapshots &&
	    !table_place_ok(h->snapshots_offset, h->nb_snapshots, 40, cluster_size)) {
		fail(err, errlen, ret,
		     "snapshot table offset invalid: 0x%llx (header field "
		     "snapshots_offset) with %u snapshots ends past the largest "
		     "file offset", (unsigned long long)h->snapshots_offset,
		     h->nb_snapshots);
		goto out;
	}

	/* Bitmap directory (trusted only while the autoclear bit says the
	 * bitmaps are kept up to date; otherwise ignored, as QEMU does) */
	if (h->nb_bitmaps && (h->autoclear_features & 1)) {
		if (h->nb_bitmaps > QCOW2_MAX_BITMAPS) {
			fail(err, errlen, ret, "bitmaps extension: %u bitmaps, more "
			     "than the limit of %u", h->nb_bitmaps, QCOW2_MAX_BITMAPS);
			goto out;
		}
		if (h->bitmap_directory_size > QCOW2_MAX_BITMAP_DIRECTORY ||
		    !table_place_ok(h->bitmap_directory_offset,
				    h->bitmap_directory_size, 1, cluster_size)) {
			fail(err, errlen, ret,
			     "bitmaps extension: bitmap directory offset 0x%llx or "
			     "size %llu invalid (cluster aligned, at most %u bytes)",
			     (unsigned long long)h->bitmap_directory_offset,
			     (unsigned long long)h->bitmap_directory_size,
			     QCOW2_MAX_BITMAP_DIRECTORY);
			goto out;
		}
	}

	/* Backing file name */
	if (h->backing_file_offset) {
		if (h->backing_file_size > QCOW2_MAX_BACKING_NAME ||
		    h->backing_file_size == 0) {
			fail(err, errlen, ret,
			     "backing file name length %u is invalid (1 to %u)",
			     h->backing_file_size, QCOW2_MAX_BACKING_NAME);
			goto out;
		}
		if (h->backing_file_offset > buflen ||
		    h->backing_file_size > buflen - h->backing_file_offset ||
		    h->backing_file_offset + h->backing_file_size > cluster_size) {
			fail(err, errlen, ret,
			     "backing file name (offset %llu) lies outside the header cluster",
			     (unsigned long long)h->backing_file_offset);
			goto out;
		}
		h->backing_file = dup_name(buf + h->backing_file_offset,
					   h->backing_file_size);
		if (!h->backing_file) {
			ret = -ENOMEM;
			goto out;
		}
		if (memchr(h->backing_file, '\0', h->backing_file_size)) {
			fail(err, errlen, ret, "backing file name contains a NUL byte");
			goto out;
		}
	}
	return 0;
out:
	qcow2_header_free(h);
	return ret;
}

void qcow2_header_free(struct qcow2_header *h)
{
	free(h->backing_file);
	free(h->backing_format);
	free(h->data_file);
	free(h->features);
	free(h->extensions);
	h->backing_file = h->backing_format = h->data_file = NULL;
	h->features = NULL;
	h->extensions = NULL;
	h->nb_features = h->nb_extensions = 0;
}
