/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * A cache of metadata slices (parts of L2 tables or refcount blocks, from one
 * block up to one cluster), keyed by their offset in the image file. A miss
 * starts one load; every request that needs the slice meanwhile waits on it.
 * LRU replacement among loaded slices (cache/: one concept, one file).
 */
#ifndef QCOW2_CACHE_H
#define QCOW2_CACHE_H

#include <stdbool.h>
#include <stdint.h>

#include "qcow2.h"

struct slice_waiter {
	struct slice_waiter *next;
	/* err: 0 to retry the lookup, or the load's error */
	void (*wake)(struct slice_waiter *w, int err);
};

/* A waiter list (pushed at its head) turned oldest first: waiters resume in
 * the order they began to wait, so clusters asked for in order are
 * allocated in order. */
static inline struct slice_waiter *slice_waiters_oldest_first(
	struct slice_waiter *w)
{
	struct slice_waiter *out = NULL;

	while (w) {
		struct slice_waiter *next = w->next;
		w->next = out;
		out = w;
		w = next;
	}
	return out;
}

enum slice_state { SLICE_EMPTY, SLICE_LOADING, SLICE_READY };

struct slice {
	uint64_t key;
	uint8_t *data;
	enum slice_state state;
	struct slice_waiter *waiters;
	struct slice *hnext;
	struct slice *prev, *next; /* LRU list (READY) or free list (EMPTY) */
	void *io;                  /* owned by the loader while LOADING */
	bool dirty;                /* changed since it was last written */
	bool writing;              /* a write-back of it is in flight */
};

struct slice_cache;
/* Start reading c's slice s (s->key, slice size bytes into s->data); call
 * slice_cache_load_done() when finished. Returns 0 or -errno. */
typedef int (*slice_load_fn)(void *opaque, struct slice_cache *c,
			     struct slice *s);
/* No slot is free, and at least one holds a dirty slice (the others are
 * dirty, being written or loading): the owner should write dirty slices
 * back (slice_cache_clean() then lets waiters proceed). Not called when
 * only loads hold the slots: their completion frees one. May be NULL. */
typedef void (*slice_full_fn)(void *opaque, struct slice_cache *c);

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
/* Like slice_cache_get(), returning the slice itself. */
int slice_cache_get_slice(struct slice_cache *c, uint64_t key,
			  struct slice_waiter *w, struct slice **out);
/* Install a zero-filled, dirty slice at key without reading it (a table
 * that was just allocated). -EAGAIN with w queued when no slot is free;
 * -EEXIST if key is cached. */
int slice_cache_create(struct slice_cache *c, uint64_t key,
		       struct slice_waiter *w, struct slice **out);
void slice_cache_set_full_handler(struct slice_cache *c, slice_full_fn fn);
void slice_cache_mark_dirty(struct slice_cache *c, struct slice *s);
/* A write-back of s finished; it is clean unless the caller says it
 * changed meanwhile (redirtied: the cache cannot tell, and the engine
 * freezes metadata during a write-back, so it passes false). Wakes
 * requests waiting for a free slot. */
void slice_cache_clean(struct slice_cache *c, struct slice *s, bool redirtied);
unsigned slice_cache_dirty_count(const struct slice_cache *c);
/* When the cache last went from no dirty slice to one (CLOCK_MONOTONIC
 * ns), or 0 when none is dirty: the age of its oldest unwritten change is
 * at most now minus this. */
uint64_t slice_cache_dirty_since(const struct slice_cache *c);
/* A write-back failed: requests waiting for a free slot get its error
 * (dirty slices that could not be written still hold every slot). */
void slice_cache_fail_waiters(struct slice_cache *c, int err);
/* The i-th slot, for write-back scans over all slots (0 <= i < capacity). */
struct slice *slice_cache_slot(struct slice_cache *c, uint32_t i);
/* Drop a clean slice from the cache (its table was freed). */
void slice_cache_drop(struct slice_cache *c, uint64_t key);
uint32_t slice_cache_slice_size(const struct slice_cache *c);
uint32_t slice_cache_capacity(const struct slice_cache *c);
void slice_cache_stats(const struct slice_cache *c,
		       struct qcow2_cache_stats *st);

#endif
