/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * A cache of metadata slices (parts of L2 tables or refcount blocks, from one
 * block up to one cluster), keyed by their offset in the image file. A miss
 * starts one load; every request that needs the slice meanwhile waits on it.
 * LRU replacement among loaded slices.
 */
#ifndef QCOW2_SLICE_CACHE_H
#define QCOW2_SLICE_CACHE_H

#include <stdint.h>

#include "qcow2.h"

struct slice_waiter {
	struct slice_waiter *next;
	/* err: 0 to retry the lookup, or the load's error */
	void (*wake)(struct slice_waiter *w, int err);
};

enum slice_state { SLICE_EMPTY, SLICE_LOADING, SLICE_READY };

struct slice {
	uint64_t key;
	uint8_t *data;
	enum slice_state state;
	struct slice_waiter *waiters;
	struct slice *hnext;
	struct slice *prev, *next; /* LRU list (READY) or free list (EMPTY) */
	void *io;                  /* owned by the loader while LOADING */
};

struct slice_cache;
/* Start reading c's slice s (s->key, slice size bytes into s->data); call
 * slice_cache_load_done() when finished. Returns 0 or -errno. */
typedef int (*slice_load_fn)(void *opaque, struct slice_cache *c,
			     struct slice *s);

int slice_cache_new(uint32_t slice_size, uint32_t nslots, uint32_t mem_align,
		    slice_load_fn load, void *opaque, struct slice_cache **out);
/* No load may be in flight. */
void slice_cache_free(struct slice_cache *c);
/*
 * Get the slice at key. Loaded: returns 0, *data points at it (valid until
 * control returns to the event loop). Otherwise queues w, starts the load if
 * needed, and returns -EAGAIN; or returns another negative errno.
 */
int slice_cache_get(struct slice_cache *c, uint64_t key,
		    struct slice_waiter *w, const uint8_t **data);
void slice_cache_load_done(struct slice_cache *c, struct slice *s, int err);
uint32_t slice_cache_slice_size(const struct slice_cache *c);
uint32_t slice_cache_capacity(const struct slice_cache *c);
void slice_cache_stats(const struct slice_cache *c,
		       struct qcow2_cache_stats *st);

#endif
