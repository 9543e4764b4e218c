/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* Decoding of L1 and L2 table entries (standard and extended). */
#ifndef QCOW2_L2_ENTRY_H
#define QCOW2_L2_ENTRY_H

#include <stdbool.h>
#include <stdint.h>

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

#endif
