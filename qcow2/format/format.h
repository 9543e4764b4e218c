/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * The on-disk format, pure: the header and its extensions, L1/L2 entries,
 * refcount block entries, compressed clusters. No IO and no image state:
 * every layer above may use it (format/).
 */
#ifndef QCOW2_FORMAT_H
#define QCOW2_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <zlib.h>
#include <zstd.h>

#include "qcow2.h"
#include "qcow2_meta.h" /* struct qcow2_header */

/* ---- The header and its extensions (header.c) ---------------------------- */

#define QCOW2_MAGIC 0x514649fbu /* "QFI\xfb" */
#define QCOW2_MIN_CLUSTER_BITS 9
#define QCOW2_MAX_CLUSTER_BITS 21
#define QCOW2_MAX_L1_BYTES (32u << 20)
#define QCOW2_MAX_REFTABLE_BYTES (8u << 20)
#define QCOW2_MAX_SNAPSHOTS 65536u
#define QCOW2_MAX_BACKING_NAME 1023u
#define QCOW2_MAX_BITMAPS 65535u
#define QCOW2_MAX_BITMAP_DIRECTORY (1024u * QCOW2_MAX_BITMAPS)
#define QCOW2_V2_HEADER_LEN 72u
#define QCOW2_V3_HEADER_LEN 104u

#define QCOW2_INCOMPAT_KNOWN 0x1full
#define QCOW2_AUTOCLEAR_KNOWN 0x3ull

/* Header extension types */
#define QCOW2_EXT_END 0x00000000u
#define QCOW2_EXT_BACKING_FORMAT 0xe2792acau
#define QCOW2_EXT_FEATURE_TABLE 0x6803f857u
#define QCOW2_EXT_BITMAPS 0x23852875u
#define QCOW2_EXT_CRYPTO 0x0537be77u
#define QCOW2_EXT_DATA_FILE 0x44415441u

/* Big-endian fields of on-disk structures. */
static inline uint32_t be32_at(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline uint64_t be64_at(const uint8_t *p)
{
	return (uint64_t)be32_at(p) << 32 | be32_at(p + 4);
}

/*
 * Decode and validate the header from buf, the first bytes of the image
 * (at least QCOW2_V2_HEADER_LEN; normally its whole first cluster, or the
 * file if shorter). file_size bounds the tables. Returns 0, or a negative
 * errno with a message in err: -EINVAL for a malformed image, -ENOTSUP for
 * a valid one using a feature this engine does not implement.
 */
int qcow2_header_parse(const uint8_t *buf, size_t buflen, uint64_t file_size,
		       struct qcow2_header *h, char *err, size_t errlen);
void qcow2_header_free(struct qcow2_header *h);
/* Name from the image's feature table, or NULL. */
const char *qcow2_header_feature_name(const struct qcow2_header *h, int type,
				      int bit);
/* L1 entries needed to map size bytes. */
uint64_t qcow2_l1_entries_needed(uint64_t size, uint32_t cluster_bits,
				 int extl2);

/* ---- L1 and L2 table entries, standard and extended ----------------------- */

#define L1E_OFFSET_MASK 0x00fffffffffffe00ull
#define L2E_OFFSET_MASK 0x00fffffffffffe00ull
#define QCOW_OFLAG_COPIED (1ull << 63)
#define QCOW_OFLAG_COMPRESSED (1ull << 62)
#define QCOW_OFLAG_ZERO (1ull << 0)

/* What one guest (sub)cluster reads as. */
enum l2_read_kind {
	L2_READ_UNALLOCATED, /* backing file, or zeros */
	L2_READ_ZERO,
	L2_READ_DATA,        /* host offset */
	L2_READ_COMPRESSED,
	L2_READ_INVALID,     /* the entry is corrupt */
};

struct l2_geom {
	uint32_t cluster_bits;
	bool extl2;
	bool has_data_file;
};

/*
 * Classify subcluster sc (0 when the image has no extended L2) of the entry
 * (entry, bitmap: bitmap is 0 without extended L2). For DATA, *host gets the
 * host offset of the cluster (not of the subcluster).
 */
static inline enum l2_read_kind l2_classify(const struct l2_geom *g,
					    uint64_t entry, uint64_t bitmap,
					    unsigned sc, uint64_t *host)
{
	uint64_t off = entry & L2E_OFFSET_MASK;
	bool allocated = off != 0 ||
			 (g->has_data_file && (entry & QCOW_OFLAG_COPIED));

	*host = 0;
	if (entry & QCOW_OFLAG_COMPRESSED)
		return L2_READ_COMPRESSED;
	if (allocated && (off & ((1ull << g->cluster_bits) - 1)))
		return L2_READ_INVALID;
	if (!g->extl2) {
		if (entry & QCOW_OFLAG_ZERO)
			return L2_READ_ZERO;
		if (!allocated)
			return L2_READ_UNALLOCATED;
		*host = off;
		return L2_READ_DATA;
	} else {
		bool sc_alloc = bitmap & (1ull << sc);
		bool sc_zero = bitmap & (1ull << (sc + 32));

		if (sc_alloc && sc_zero)
			return L2_READ_INVALID;
		if (sc_alloc && !allocated)
			return L2_READ_INVALID;
		if (sc_zero)
			return L2_READ_ZERO;
		if (!sc_alloc)
			return L2_READ_UNALLOCATED;
		*host = off;
		return L2_READ_DATA;
	}
}

/* Bits of the compressed descriptor: host offset below x, sector count
 * from x to 61, where x = 62 - (cluster_bits - 8). */
static inline void l2_compressed_decode(uint32_t cluster_bits, uint64_t entry,
					uint64_t *host, uint64_t *nb_sectors)
{
	unsigned x = 62 - (cluster_bits - 8);

	*host = entry & ((1ull << x) - 1);
	*nb_sectors = (entry >> x) & ((1ull << (cluster_bits - 8)) - 1);
}

/* ---- Refcount table and block entries (refblock.c) ------------------------ */

#define REFT_OFFSET_MASK 0xfffffffffffffe00ull

/* Entry i of a refcount block (or a slice of one) of 2^order-bit entries:
 * entries narrower than a byte are packed from the least significant bit,
 * wider ones are big-endian. */
uint64_t refblock_get(const uint8_t *slice, uint64_t i, uint32_t order);
void refblock_set(uint8_t *slice, uint64_t i, uint32_t order, uint64_t v);

/* ---- Compressed clusters (compress.c, decompress.c) ----------------------- */

/* Decompression state, reused from cluster to cluster (one per image:
 * used by its home thread only). Zero-initialized is ready to use. */
struct decompressor {
	z_stream zs;
	bool zs_ready;
	ZSTD_DCtx *zstd;
};

/* Decompress src (srclen bytes, possibly followed by unrelated bytes) into
 * exactly cluster_size bytes at dst: 0, -EIO (corrupt) or -ENOMEM. */
int decompress_cluster(struct decompressor *d, enum qcow2_compression type,
		       const uint8_t *src, size_t srclen, uint8_t *dst,
		       size_t cluster_size);
void decompress_cleanup(struct decompressor *d);

#endif
