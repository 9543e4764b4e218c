/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * libFuzzer target: the decoders of table entries.
 *
 * Input: byte 0 picks the cluster size (cluster_bits 9 + byte % 13), byte 1
 * the flags (bit 0 extended L2, ignored below 16 KiB clusters; bit 1
 * external data file; bits 2-4 the refcount order, 7 meaning 6); the rest
 * is a run of L2 entries (8 bytes, or 16 with extended L2: entry and
 * subcluster bitmap, big-endian), and also, read as a refcount block, a run
 * of refcount entries of that order.
 *
 * Every entry goes through the engine's decoder (l2_entry.h: what each
 * subcluster reads as, the compressed descriptor) and the offline reader's
 * (qcow2_meta_decode_l2), and the two must agree. Refcount entries are read
 * with refblock_get and written with refblock_set, and both must agree with
 * a plain bit-by-bit implementation of the spec.
 */
#include <endian.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "qcow2_meta.h"
#include "format/format.h"
#include "engine/engine.h"

#define ASSERT(c) \
	do { \
		if (!(c)) \
			__builtin_trap(); \
	} while (0)

/* An offline reader per geometry, opened on a memfd holding a header
 * alone (the decoder needs the cluster size and the feature bits). */
static struct qcow2_meta *metas[13][2][2];

static struct qcow2_meta *meta_for(uint32_t cb, bool extl2, bool df)
{
	struct qcow2_meta **slot = &metas[cb - 9][extl2][df];
	uint8_t h[112] = { 0 };
	struct qcow2_error err;
	char path[64];
	uint64_t incompat = (extl2 ? QCOW2_INCOMPAT_EXTL2 : 0) |
			    (df ? QCOW2_INCOMPAT_DATA_FILE : 0);
	int fd;

	if (*slot)
		return *slot;
	memcpy(h, "QFI\xfb", 4);
	h[7] = 3;                               /* version */
	h[23] = (uint8_t)cb;                    /* cluster_bits */
	incompat = htobe64(incompat);
	memcpy(h + 72, &incompat, 8);
	h[99] = 4;                              /* refcount_order */
	h[103] = 104;                           /* header_length */
	fd = memfd_create("qcow2-fuzz-l2", MFD_CLOEXEC);
	ASSERT(fd >= 0);
	ASSERT(write(fd, h, sizeof(h)) == (ssize_t)sizeof(h));
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	if (qcow2_meta_open(path, QCOW2_OPEN_FORCE_SHARE, slot, &err) < 0) {
		fprintf(stderr, "fuzz_l2_entry: %s\n", err.msg);
		abort();
	}
	close(fd);
	return *slot;
}

static void check_compressed(uint32_t cb, bool extl2, bool df, uint64_t raw,
			     uint64_t bitmap, const struct qcow2_l2_entry *e)
{
	unsigned x = 62 - (cb - 8);
	uint64_t host, nb, host2, nb2;

	/* The flags above the descriptor never leak into it: the engine
	 * masks them one way (map.c), the checker another (check.c). */
	l2_compressed_decode(cb, raw & ~QCOW_OFLAG_COMPRESSED & ~QCOW_OFLAG_COPIED,
			     &host, &nb);
	l2_compressed_decode(cb, raw & ((1ull << 62) - 1), &host2, &nb2);
	ASSERT(host == host2 && nb == nb2);
	ASSERT(host < (1ull << x));
	ASSERT(nb < (1ull << (cb - 8)));
	ASSERT(e->host_offset == host);
	ASSERT(e->compressed_len == (nb + 1) * 512 - (host & 511));
	ASSERT(e->compressed_len >= 1 && e->compressed_len <= (512ull << (cb - 8)));
	ASSERT(e->type == ((extl2 && bitmap) || (raw & QCOW_OFLAG_COPIED) || df ?
			   QCOW2_L2_INVALID : QCOW2_L2_COMPRESSED));
}

static void check_entry(struct qcow2_meta *m, uint32_t cb, bool extl2,
			bool df, uint64_t raw, uint64_t bitmap)
{
	const struct l2_geom g = { cb, extl2, df };
	uint64_t cs = 1ull << cb, off = raw & L2E_OFFSET_MASK;
	unsigned n[L2_READ_INVALID + 1] = { 0 };
	unsigned nsc = extl2 ? 32 : 1;
	struct qcow2_l2_entry e;

	qcow2_meta_decode_l2(m, raw, bitmap, &e);
	ASSERT(e.raw == raw && e.bitmap == bitmap);
	ASSERT(e.copied == !!(raw & QCOW_OFLAG_COPIED));
	for (unsigned sc = 0; sc < nsc; sc++) {
		uint64_t host = 1;
		enum l2_read_kind k = l2_classify(&g, raw, bitmap, sc, &host);

		ASSERT(k <= L2_READ_INVALID);
		ASSERT(k == L2_READ_DATA || host == 0);
		if (k == L2_READ_DATA)
			ASSERT(host == off && host % cs == 0);
		n[k]++;
	}
	if (raw & QCOW_OFLAG_COMPRESSED) {
		ASSERT(n[L2_READ_COMPRESSED] == nsc);
		check_compressed(cb, extl2, df, raw, bitmap, &e);
		return;
	}
	ASSERT(n[L2_READ_COMPRESSED] == 0);
	ASSERT(e.host_offset == off);
	ASSERT(e.zero_flag == (!extl2 && (raw & QCOW_OFLAG_ZERO)));
	switch (e.type) {
	case QCOW2_L2_INVALID:
		ASSERT(n[L2_READ_INVALID] > 0);
		if (off % cs)
			ASSERT(n[L2_READ_INVALID] == nsc);
		break;
	case QCOW2_L2_NORMAL:
		ASSERT(n[L2_READ_INVALID] == 0 && n[L2_READ_DATA] > 0);
		break;
	case QCOW2_L2_ZERO:
		ASSERT(n[L2_READ_ZERO] == nsc);
		break;
	case QCOW2_L2_UNALLOCATED:
		ASSERT(n[L2_READ_INVALID] == 0 && n[L2_READ_DATA] == 0 &&
		       n[L2_READ_UNALLOCATED] > 0);
		break;
	case QCOW2_L2_COMPRESSED:
		ASSERT(0);
	}
}

/* The spec's refcount block entry: entries narrower than a byte packed
 * from the least significant bit, wider ones big-endian. */
static uint64_t ref_get(const uint8_t *b, uint64_t i, uint32_t order)
{
	uint32_t bits = 1u << order;
	uint64_t v = 0;

	if (bits < 8)
		return (b[i * bits / 8] >> (i * bits % 8)) & ((1u << bits) - 1);
	for (uint32_t k = 0; k < bits / 8; k++)
		v = v << 8 | b[i * (bits / 8) + k];
	return v;
}

static void ref_set(uint8_t *b, uint64_t i, uint32_t order, uint64_t v)
{
	uint32_t bits = 1u << order;

	if (bits < 8) {
		uint32_t sh = (uint32_t)(i * bits % 8), mask = ((1u << bits) - 1) << sh;
		b[i * bits / 8] = (uint8_t)((b[i * bits / 8] & ~mask) |
					    ((v << sh) & mask));
		return;
	}
	for (uint32_t k = bits / 8; k-- > 0; v >>= 8)
		b[i * (bits / 8) + k] = (uint8_t)v;
}

static void check_refblock(const uint8_t *p, size_t len, uint32_t order)
{
	uint64_t n = ((uint64_t)len * 8) >> order;
	uint8_t *a, *b;

	if (!n)
		return;
	a = malloc(len);
	b = malloc(len);
	ASSERT(a && b);
	for (uint64_t i = 0; i < n; i++)
		ASSERT(refblock_get(p, i, order) == ref_get(p, i, order));
	/* Write every entry (a value derived from its neighbour) both ways;
	 * the blocks must come out identical. */
	memcpy(a, p, len);
	memcpy(b, p, len);
	for (uint64_t i = 0; i < n; i++) {
		uint64_t v = ref_get(p, (i + 1) % n, order) * 0x9e3779b97f4a7c15ull + i;
		refblock_set(a, i, order, v);
		ref_set(b, i, order, v);
		ASSERT(refblock_get(a, i, order) == ref_get(b, i, order));
	}
	ASSERT(memcmp(a, b, len) == 0);
	free(a);
	free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint32_t cb, order;
	bool extl2, df;
	size_t esz;
	struct qcow2_meta *m;

	if (size < 2)
		return 0;
	cb = 9 + data[0] % 13;
	extl2 = (data[1] & 1) && cb >= 14;
	df = data[1] & 2;
	order = (data[1] >> 2) & 7;
	if (order > 6)
		order = 6;
	m = meta_for(cb, extl2, df);
	ASSERT(qcow2_meta_l2_entries(m) == (1ull << cb) / (extl2 ? 16 : 8));
	data += 2;
	size -= 2;
	esz = extl2 ? 16 : 8;
	for (size_t i = 0; i + esz <= size; i += esz) {
		uint64_t raw, bitmap = 0;

		memcpy(&raw, data + i, 8);
		raw = be64toh(raw);
		if (extl2) {
			memcpy(&bitmap, data + i + 8, 8);
			bitmap = be64toh(bitmap);
		}
		check_entry(m, cb, extl2, df, raw, bitmap);
	}
	check_refblock(data, size, order);
	return 0;
}
