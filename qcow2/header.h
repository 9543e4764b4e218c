/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* The qcow2 header and its extensions, decoded (host-endian). */
#ifndef QCOW2_HEADER_H
#define QCOW2_HEADER_H

#include <stddef.h>
#include <stdint.h>

#include "qcow2_meta.h" /* struct qcow2_header */

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

#endif
