/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* The checker's walk of the metadata graph, for the refcount rebuild. */
#ifndef QCOW2_CHECK_INTERNAL_H
#define QCOW2_CHECK_INTERNAL_H

#include <stdint.h>

#include "qcow2.h"

struct check_refs {
	uint32_t *refs;      /* references per cluster of the file (malloc'd;
				saturating at UINT32_MAX) */
	uint64_t n;          /* clusters of the file */
	uint64_t problems;   /* corruptions found by the walk (tables outside
				the file, unaligned, invalid entries...) */
	char first[256];     /* the first of them */
};

/*
 * Count every reference the metadata graph holds (the header, active and
 * snapshot L1/L2 tables and their clusters, the snapshot table, valid
 * bitmaps), not those of the refcount structures. Returns 0 with *out
 * filled (free out->refs), or a negative errno with a message in err.
 */
int check_count_references(const char *path, struct check_refs *out,
			   struct qcow2_error *err);

#endif
