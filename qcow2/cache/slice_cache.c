/* SPDX-License-Identifier: MIT OR Apache-2.0 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cache/cache.h"
#include "io/io.h"

struct slice_cache {
	uint32_t slice_size;
	uint32_t nslots;
	struct slice *slots;
	uint8_t *mem;
	struct slice **buckets;
	uint32_t bucket_mask;
	struct slice lru;          /* sentinel: next = most recent */
	struct slice freelist;     /* sentinel */
	struct slice_waiter *full_waiters; /* waiting for any free slot */
	slice_load_fn load;
	slice_full_fn full;
	void *opaque;
	unsigned ndirty;
	uint64_t dirty_since_ns;   /* when ndirty last left 0 (monotonic) */
	struct qcow2_cache_stats st;
};


static void list_init(struct slice *head)
{
	head->prev = head->next = head;
}

static void list_del(struct slice *s)
{
	s->prev->next = s->next;
	s->next->prev = s->prev;
	s->prev = s->next = s;
}

static void list_add_head(struct slice *head, struct slice *s)
{
	s->next = head->next;
	s->prev = head;
	head->next->prev = s;
	head->next = s;
}

static uint32_t hash_key(const struct slice_cache *c, uint64_t key)
{
	uint64_t h = (key / c->slice_size) * 0x9e3779b97f4a7c15ull;
	return (uint32_t)(h >> 32) & c->bucket_mask;
}

static struct slice *hash_find(struct slice_cache *c, uint64_t key)
{
	struct slice *s = c->buckets[hash_key(c, key)];

	while (s && s->key != key)
		s = s->hnext;
	return s;
}

static void hash_insert(struct slice_cache *c, struct slice *s)
{
	uint32_t b = hash_key(c, s->key);

	s->hnext = c->buckets[b];
	c->buckets[b] = s;
}

static void hash_remove(struct slice_cache *c, struct slice *s)
{
	struct slice **pp = &c->buckets[hash_key(c, s->key)];

	while (*pp && *pp != s)
		pp = &(*pp)->hnext;
	if (*pp)
		*pp = s->hnext;
	s->hnext = NULL;
}

int slice_cache_new(uint32_t slice_size, uint32_t nslots, uint32_t mem_align,
		    slice_load_fn load, void *opaque, struct slice_cache **out)
{
	struct slice_cache *c;
	uint32_t nb = 1;

	if (!slice_size || !nslots || (slice_size & (slice_size - 1)))
		return -EINVAL;
	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	while (nb < nslots * 2)
		nb <<= 1;
	c->slice_size = slice_size;
	c->nslots = nslots;
	c->bucket_mask = nb - 1;
	c->load = load;
	c->opaque = opaque;
	c->slots = calloc(nslots, sizeof(*c->slots));
	c->buckets = calloc(nb, sizeof(*c->buckets));
	if (mem_align < sizeof(void *))
		mem_align = sizeof(void *);
	if (!c->slots || !c->buckets ||
	    posix_memalign((void **)&c->mem, mem_align,
			   (size_t)slice_size * nslots)) {
		free(c->slots);
		free(c->buckets);
		free(c);
		return -ENOMEM;
	}
	list_init(&c->lru);
	list_init(&c->freelist);
	for (uint32_t i = 0; i < nslots; i++) {
		struct slice *s = &c->slots[i];
		s->data = c->mem + (size_t)i * slice_size;
		s->state = SLICE_EMPTY;
		list_init(s);
		list_add_head(&c->freelist, s);
	}
	c->st.slices = nslots;
	c->st.slice_size = slice_size;
	*out = c;
	return 0;
}

void slice_cache_free(struct slice_cache *c)
{
	if (!c)
		return;
	free(c->mem);
	free(c->slots);
	free(c->buckets);
	free(c);
}

/* A slot to load into: a free one, else the least recently used loaded one. */
static struct slice *take_slot(struct slice_cache *c)
{
	struct slice *s;

	if (c->freelist.next != &c->freelist) {
		s = c->freelist.next;
		list_del(s);
		return s;
	}
	/* The least recently used clean slice: dirty ones must be written
	 * back first, in the order the owner's flush rules demand. */
	for (s = c->lru.prev; s != &c->lru; s = s->prev) {
		if (s->dirty || s->writing)
			continue;
		list_del(s);
		hash_remove(c, s);
		c->st.evictions++;
		return s;
	}
	return NULL; /* every slot is loading or dirty */
}

static void wait_for_slot(struct slice_cache *c, struct slice_waiter *w)
{
	w->next = c->full_waiters;
	c->full_waiters = w;
	if (c->full && c->ndirty)
		c->full(c->opaque, c);
}

int slice_cache_get(struct slice_cache *c, uint64_t key,
		    struct slice_waiter *w, const uint8_t **data)
{
	struct slice *s;
	int ret = slice_cache_get_slice(c, key, w, &s);

	if (ret == 0)
		*data = s->data;
	return ret;
}

int slice_cache_get_slice(struct slice_cache *c, uint64_t key,
			  struct slice_waiter *w, struct slice **out)
{
	struct slice *s = hash_find(c, key);
	int ret;

	if (s && s->state == SLICE_READY) {
		c->st.hits++;
		if (c->lru.next != s) {
			list_del(s);
			list_add_head(&c->lru, s);
		}
		*out = s;
		return 0;
	}
	if (s) { /* loading */
		w->next = s->waiters;
		s->waiters = w;
		return -EAGAIN;
	}
	s = take_slot(c);
	if (!s) {
		wait_for_slot(c, w);
		return -EAGAIN;
	}
	c->st.misses++;
	s->key = key;
	s->state = SLICE_LOADING;
	s->waiters = NULL;
	hash_insert(c, s);
	ret = c->load(c->opaque, c, s);
	if (ret < 0) {
		hash_remove(c, s);
		s->state = SLICE_EMPTY;
		list_add_head(&c->freelist, s);
		return ret;
	}
	c->st.loads++;
	c->st.load_bytes += c->slice_size;
	w->next = NULL;
	s->waiters = w;
	return -EAGAIN;
}

static void wake_all(struct slice_waiter *w, int err)
{
	w = slice_waiters_oldest_first(w);
	while (w) {
		struct slice_waiter *next = w->next;
		w->next = NULL;
		w->wake(w, err);
		w = next;
	}
}

void slice_cache_load_done(struct slice_cache *c, struct slice *s, int err)
{
	struct slice_waiter *waiters = s->waiters, *full = c->full_waiters;

	s->waiters = NULL;
	c->full_waiters = NULL;
	if (err) {
		hash_remove(c, s);
		s->state = SLICE_EMPTY;
		list_add_head(&c->freelist, s);
	} else {
		s->state = SLICE_READY;
		list_add_head(&c->lru, s);
	}
	/* Waiters retry their lookup; those of a failed load get its error. */
	wake_all(waiters, err);
	wake_all(full, 0);
}

uint32_t slice_cache_slice_size(const struct slice_cache *c)
{
	return c->slice_size;
}

void slice_cache_stats(const struct slice_cache *c,
		       struct qcow2_cache_stats *st)
{
	*st = c->st;
}

uint32_t slice_cache_capacity(const struct slice_cache *c)
{
	return c->nslots;
}

int slice_cache_create(struct slice_cache *c, uint64_t key,
		       struct slice_waiter *w, struct slice **out)
{
	struct slice *s = hash_find(c, key);

	if (s)
		return -EEXIST;
	s = take_slot(c);
	if (!s) {
		wait_for_slot(c, w);
		return -EAGAIN;
	}
	s->key = key;
	s->state = SLICE_READY;
	s->waiters = NULL;
	memset(s->data, 0, c->slice_size);
	hash_insert(c, s);
	list_add_head(&c->lru, s);
	s->dirty = false;
	slice_cache_mark_dirty(c, s);
	*out = s;
	return 0;
}

void slice_cache_set_full_handler(struct slice_cache *c, slice_full_fn fn)
{
	c->full = fn;
}

void slice_cache_mark_dirty(struct slice_cache *c, struct slice *s)
{
	if (!s->dirty) {
		s->dirty = true;
		if (c->ndirty++ == 0)
			c->dirty_since_ns = monotonic_ns();
	}
}

void slice_cache_clean(struct slice_cache *c, struct slice *s, bool redirtied)
{
	struct slice_waiter *full;

	s->writing = false;
	if (!redirtied && s->dirty) {
		s->dirty = false;
		if (--c->ndirty == 0)
			c->dirty_since_ns = 0;
	}
	full = c->full_waiters;
	c->full_waiters = NULL;
	wake_all(full, 0);
}

void slice_cache_fail_waiters(struct slice_cache *c, int err)
{
	struct slice_waiter *full = c->full_waiters;

	c->full_waiters = NULL;
	wake_all(full, err);
}

unsigned slice_cache_dirty_count(const struct slice_cache *c)
{
	return c->ndirty;
}

uint64_t slice_cache_dirty_since(const struct slice_cache *c)
{
	return c->ndirty ? c->dirty_since_ns : 0;
}

struct slice *slice_cache_slot(struct slice_cache *c, uint32_t i)
{
	return &c->slots[i];
}

void slice_cache_drop(struct slice_cache *c, uint64_t key)
{
	struct slice *s = hash_find(c, key);

	if (!s || s->state != SLICE_READY || s->dirty || s->writing)
		return;
	list_del(s);
	hash_remove(c, s);
	s->state = SLICE_EMPTY;
	list_add_head(&c->freelist, s);
}
