/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* Refcounts: the refcount table (in memory) and refcount blocks (sliced,
 * cached, written back with the rest of the metadata). */
#ifndef QCOW2_REFCOUNT_H
#define QCOW2_REFCOUNT_H

#include <stdint.h>

#include "slice_cache.h"

struct qcow2_image;

#define REFT_OFFSET_MASK 0xfffffffffffffe00ull

/* Read entry i of a refcount block slice of the given width. */
uint64_t refblock_get(const uint8_t *slice, uint64_t i, uint32_t order);
void refblock_set(uint8_t *slice, uint64_t i, uint32_t order, uint64_t v);

int refcount_open(struct qcow2_image *img);
/* A dirty image (lazy refcounts): count every reference, write new
 * refcount structures past the end, then point the header at them and
 * clear the dirty bit (refcount_rebuild.c). Before refcount_open(). */
int refcount_rebuild(struct qcow2_image *img);
void refcount_close(struct qcow2_image *img);

/*
 * Add delta to the refcount of the host cluster at offset host (in the
 * cache; written back by the next flush). Returns 0, -EAGAIN when a slice
 * must be loaded first (w is woken; call again), -ERANGE on overflow or
 * underflow (corruption), or another negative errno.
 */
int refcount_update(struct qcow2_image *img, uint64_t host, int64_t delta,
		    struct slice_waiter *w);
/* Read the refcount of the cluster at host; same return convention. */
int refcount_get(struct qcow2_image *img, uint64_t host, uint64_t *out,
		 struct slice_waiter *w);

#endif
