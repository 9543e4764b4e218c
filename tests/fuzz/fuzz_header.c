/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * libFuzzer target: the header and header extension parser
 * (qcow2_header_parse). The input is the start of an image file. It is
 * parsed twice: as a whole file of that size (tables must lie inside it),
 * and as the first bytes of a 1 TiB file (the table checks pass, so the
 * parser goes on to the backing file name). A header that parses must be
 * consistent with what the parser promises its callers.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "format/format.h"

#define ASSERT(c) \
	do { \
		if (!(c)) \
			__builtin_trap(); \
	} while (0)

static void parse_once(const uint8_t *data, size_t size, uint64_t file_size)
{
	struct qcow2_header h;
	char err[256] = "";
	uint64_t cs, extl2;
	int ret = qcow2_header_parse(data, size, file_size, &h, err, sizeof(err));

	if (ret < 0) {
		/* Refused, with a reason; nothing left allocated. */
		ASSERT(err[0] != '\0' || ret == -ENOMEM);
		ASSERT(!h.backing_file && !h.backing_format && !h.data_file &&
		       !h.features && !h.extensions);
		return;
	}
	ASSERT(ret == 0);
	ASSERT(h.version == 2 || h.version == 3);
	ASSERT(h.cluster_bits >= QCOW2_MIN_CLUSTER_BITS &&
	       h.cluster_bits <= QCOW2_MAX_CLUSTER_BITS);
	cs = 1ull << h.cluster_bits;
	ASSERT(h.refcount_order <= 6);
	ASSERT(h.header_length <= cs && h.header_length <= size);
	ASSERT(h.crypt_method == 0);
	ASSERT(h.compression_type <= 1);
	ASSERT(!(h.incompatible_features & ~QCOW2_INCOMPAT_KNOWN));
	ASSERT((uint64_t)h.l1_size * 8 <= QCOW2_MAX_L1_BYTES);
	extl2 = !!(h.incompatible_features & QCOW2_INCOMPAT_EXTL2);
	ASSERT(!extl2 || h.cluster_bits >= 14);
	ASSERT(qcow2_l1_entries_needed(h.size, h.cluster_bits, (int)extl2) <=
	       h.l1_size);
	if (h.l1_size) {
		ASSERT(h.l1_table_offset % cs == 0 && h.l1_table_offset != 0);
		ASSERT(h.l1_table_offset <= file_size &&
		       (uint64_t)h.l1_size * 8 <= file_size - h.l1_table_offset);
	}
	ASSERT(h.refcount_table_offset % cs == 0);
	ASSERT(h.nb_snapshots <= QCOW2_MAX_SNAPSHOTS);
	if (h.backing_file_offset) {
		ASSERT(h.backing_file);
		ASSERT(strlen(h.backing_file) == h.backing_file_size);
		ASSERT(h.backing_file_offset + h.backing_file_size <= size);
	} else {
		ASSERT(!h.backing_file);
	}
	if (h.backing_format)
		ASSERT(strlen(h.backing_format) <= 31);
	if (h.data_file)
		ASSERT(strlen(h.data_file) <= 4095);
	for (unsigned i = 0; i < h.nb_extensions; i++) {
		const struct qcow2_header_ext *x = &h.extensions[i];
		ASSERT(x->type != QCOW2_EXT_END);
		ASSERT(x->offset >= h.header_length + 8);
		ASSERT(x->offset + x->length <= size && x->offset + x->length <= cs);
	}
	for (unsigned i = 0; i < h.nb_features; i++) {
		const struct qcow2_feature_name *f = &h.features[i];
		ASSERT(strlen(f->name) < sizeof(f->name));
		/* The first entry naming a (type, bit) is the one found. */
		const char *n = qcow2_header_feature_name(&h, f->type, f->bit);
		ASSERT(n != NULL);
	}
	for (int type = 0; type < 3; type++)
		for (int bit = 0; bit < 64; bit++)
			(void)qcow2_header_feature_name(&h, type, bit);
	qcow2_header_free(&h);
	ASSERT(!h.backing_file && !h.extensions && !h.features);
	qcow2_header_free(&h); /* twice is harmless */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* A copy of exactly size bytes, so ASan sees any read past the end. */
	uint8_t *buf = malloc(size ? size : 1);

	if (!buf)
		return 0;
	memcpy(buf, data, size);
	parse_once(buf, size, size);
	parse_once(buf, size, 1ull << 40);
	free(buf);
	return 0;
}
