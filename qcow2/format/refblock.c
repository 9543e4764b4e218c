/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* Refcount block entries of every width the format allows (1 to 64 bits). */
#include <endian.h>
#include <string.h>

#include "format/format.h"

uint64_t refblock_get(const uint8_t *slice, uint64_t i, uint32_t order)
{
	switch (order) {
	case 0: case 1: case 2: {
		uint32_t bits = 1u << order;
		uint64_t bit = i * bits;
		return (slice[bit / 8] >> (bit % 8)) & ((1u << bits) - 1);
	}
	case 3:
		return slice[i];
	case 4: {
		uint16_t v;
		memcpy(&v, slice + i * 2, 2);
		return be16toh(v);
	}
	case 5: {
		uint32_t v;
		memcpy(&v, slice + i * 4, 4);
		return be32toh(v);
	}
	default: {
		uint64_t v;
		memcpy(&v, slice + i * 8, 8);
		return be64toh(v);
	}
	}
}

void refblock_set(uint8_t *slice, uint64_t i, uint32_t order, uint64_t v)
{
	switch (order) {
	case 0: case 1: case 2: {
		uint32_t bits = 1u << order;
		uint64_t bit = i * bits;
		uint8_t mask = (uint8_t)(((1u << bits) - 1) << (bit % 8));
		slice[bit / 8] = (uint8_t)((slice[bit / 8] & ~mask) |
					   ((v << (bit % 8)) & mask));
		break;
	}
	case 3:
		slice[i] = (uint8_t)v;
		break;
	case 4: {
		uint16_t x = htobe16((uint16_t)v);
		memcpy(slice + i * 2, &x, 2);
		break;
	}
	case 5: {
		uint32_t x = htobe32((uint32_t)v);
		memcpy(slice + i * 4, &x, 4);
		break;
	}
	default: {
		uint64_t x = htobe64(v);
		memcpy(slice + i * 8, &x, 8);
		break;
	}
	}
}
