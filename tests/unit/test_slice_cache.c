/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* The slice cache with a fake loader whose loads complete on command: loads,
 * LRU eviction, and the dirty and write-back states (dirty slices and
 * slices being written are never evicted; what cleaning, a failed
 * write-back and dropping do to them). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "cache/cache.h"

#define MAXLOADS 16

struct fake {
	struct slice *pending[MAXLOADS];
	int npending;
	int fail_start; /* load() fails synchronously with this */
};

static int fake_load(void *opaque, struct slice_cache *c, struct slice *s)
{
	struct fake *f = opaque;

	(void)c;
	if (f->fail_start)
		return f->fail_start;
	assert_true(f->npending < MAXLOADS);
	f->pending[f->npending++] = s;
	return 0;
}

/* Complete the oldest pending load, filling the slice with its key. */
static void fake_finish(struct fake *f, struct slice_cache *c, int err)
{
	struct slice *s = f->pending[0];

	memmove(f->pending, f->pending + 1, (size_t)(f->npending - 1) * sizeof(s));
	f->npending--;
	if (!err)
		memcpy(s->data, &s->key, sizeof(s->key));
	slice_cache_load_done(c, s, err);
}

struct waiter {
	struct slice_waiter w;
	int woken;
	int err;
};

static void on_wake(struct slice_waiter *w, int err)
{
	struct waiter *x = (struct waiter *)w;

	x->woken++;
	x->err = err;
}

static void test_miss_then_hit(void **state)
{
	struct fake f = { 0 };
	struct slice_cache *c;
	struct waiter a = { .w.wake = on_wake }, b = { .w.wake = on_wake };
	const uint8_t *data;
	struct qcow2_cache_stats st;
	uint64_t k;

	(void)state;
	assert_int_equal(slice_cache_new(4096, 4, 512, fake_load, &f, &c), 0);
	assert_int_equal(slice_cache_get(c, 0x10000, &a.w, &data), -EAGAIN);
	/* a second request for the same slice waits on the same load */
	assert_int_equal(slice_cache_get(c, 0x10000, &b.w, &data), -EAGAIN);
	assert_int_equal(f.npending, 1);
	fake_finish(&f, c, 0);
	assert_int_equal(a.woken, 1);
	assert_int_equal(b.woken, 1);
	assert_int_equal(a.err, 0);
	assert_int_equal(slice_cache_get(c, 0x10000, &a.w, &data), 0);
	memcpy(&k, data, sizeof(k));
	assert_int_equal(k, 0x10000);
	slice_cache_stats(c, &st);
	assert_int_equal(st.misses, 1);
	assert_int_equal(st.hits, 1);
	assert_int_equal(st.loads, 1);
	assert_int_equal(st.slices, 4);
	slice_cache_free(c);
}

static void load(struct fake *f, struct slice_cache *c, uint64_t key)
{
	struct waiter w = { .w.wake = on_wake };
	const uint8_t *data;

	assert_int_equal(slice_cache_get(c, key, &w.w, &data), -EAGAIN);
	fake_finish(f, c, 0);
	assert_int_equal(w.woken, 1);
}

static void test_lru_eviction(void **state)
{
	struct fake f = { 0 };
	struct slice_cache *c;
	struct waiter w = { .w.wake = on_wake };
	const uint8_t *data;
	struct qcow2_cache_stats st;

	(void)state;
	assert_int_equal(slice_cache_new(512, 2, 512, fake_load, &f, &c), 0);
	load(&f, c, 0x1000);
	load(&f, c, 0x2000);
	/* touch 0x1000: 0x2000 becomes least recently used */
	assert_int_equal(slice_cache_get(c, 0x1000, &w.w, &data), 0);
	load(&f, c, 0x3000);
	assert_int_equal(slice_cache_get(c, 0x1000, &w.w, &data), 0);
	assert_int_equal(slice_cache_get(c, 0x3000, &w.w, &data), 0);
	assert_int_equal(slice_cache_get(c, 0x2000, &w.w, &data), -EAGAIN);
	fake_finish(&f, c, 0);
	slice_cache_stats(c, &st);
	assert_int_equal(st.evictions, 2);
	slice_cache_free(c);
}

static void test_all_slots_loading(void **state)
{
	struct fake f = { 0 };
	struct slice_cache *c;
	struct waiter a = { .w.wake = on_wake }, b = { .w.wake = on_wake };
	const uint8_t *data;

	(void)state;
	assert_int_equal(slice_cache_new(512, 2, 512, fake_load, &f, &c), 0);
	assert_int_equal(slice_cache_get(c, 0x1000, &a.w, &data), -EAGAIN);
	assert_int_equal(slice_cache_get(c, 0x2000, &a.w, &data), -EAGAIN);
	/* no slot free: b waits for any load to finish */
	assert_int_equal(slice_cache_get(c, 0x3000, &b.w, &data), -EAGAIN);
	assert_int_equal(f.npending, 2);
	fake_finish(&f, c, 0);
	assert_int_equal(b.woken, 1);
	assert_int_equal(b.err, 0);
	/* retrying now evicts the loaded slice and starts a load */
	assert_int_equal(slice_cache_get(c, 0x3000, &b.w, &data), -EAGAIN);
	fake_finish(&f, c, 0);
	fake_finish(&f, c, 0);
	slice_cache_free(c);
}

static void test_load_error(void **state)
{
	struct fake f = { 0 };
	struct slice_cache *c;
	struct waiter a = { .w.wake = on_wake };
	const uint8_t *data;
	struct qcow2_cache_stats st;

	(void)state;
	assert_int_equal(slice_cache_new(512, 2, 512, fake_load, &f, &c), 0);
	assert_int_equal(slice_cache_get(c, 0x1000, &a.w, &data), -EAGAIN);
	fake_finish(&f, c, -EIO);
	assert_int_equal(a.woken, 1);
	assert_int_equal(a.err, -EIO);
	/* the failed slice is not cached: the next get loads again */
	assert_int_equal(slice_cache_get(c, 0x1000, &a.w, &data), -EAGAIN);
	assert_int_equal(f.npending, 1);
	fake_finish(&f, c, 0);
	slice_cache_stats(c, &st);
	assert_int_equal(st.misses, 2);
	/* a load that cannot start reports its error and keeps no slot */
	f.fail_start = -ENOMEM;
	assert_int_equal(slice_cache_get(c, 0x5000, &a.w, &data), -ENOMEM);
	f.fail_start = 0;
	assert_int_equal(slice_cache_get(c, 0x1000, &a.w, &data), 0);
	slice_cache_free(c);
}

static void test_bad_geometry(void **state)
{
	struct fake f = { 0 };
	struct slice_cache *c;

	(void)state;
	assert_int_equal(slice_cache_new(3000, 2, 512, fake_load, &f, &c), -EINVAL);
	assert_int_equal(slice_cache_new(4096, 0, 512, fake_load, &f, &c), -EINVAL);
}

/* ---- dirty and write-back states ------------------------------------- */

struct full_rec {
	struct fake f; /* first: the cache's opaque is the fake loader's */
	int calls;
	struct slice_cache *last;
};

static void on_full(void *opaque, struct slice_cache *c)
{
	struct full_rec *r = opaque;

	r->calls++;
	r->last = c;
}

/* Load key and return its slice (the cache must have room). */
static struct slice *load_slice(struct fake *f, struct slice_cache *c,
				uint64_t key)
{
	struct waiter w = { .w.wake = on_wake };
	struct slice *s = NULL;

	load(f, c, key);
	assert_int_equal(slice_cache_get_slice(c, key, &w.w, &s), 0);
	assert_non_null(s);
	assert_int_equal(s->key, key);
	return s;
}

/* Is key cached and ready (a hit)? A hit changes only the LRU order. A
 * miss would queue this function's waiter: only assert hits with it. */
static bool is_hit(struct slice_cache *c, uint64_t key)
{
	struct waiter w = { .w.wake = on_wake };
	const uint8_t *data;

	return slice_cache_get(c, key, &w.w, &data) == 0;
}

static void test_dirty_count(void **state)
{
	struct fake f = { 0 };
	struct slice_cache *c;
	struct waiter w = { .w.wake = on_wake };
	struct slice *a, *b, *n;

	(void)state;
	assert_int_equal(slice_cache_new(512, 4, 512, fake_load, &f, &c), 0);
	assert_int_equal(slice_cache_dirty_count(c), 0);
	a = load_slice(&f, c, 0x1000);
	b = load_slice(&f, c, 0x2000);
	assert_false(a->dirty);
	assert_false(a->writing);
	assert_int_equal(slice_cache_dirty_count(c), 0);
	slice_cache_mark_dirty(c, a);
	assert_true(a->dirty);
	assert_int_equal(slice_cache_dirty_count(c), 1);
	/* marking a dirty slice again counts it once */
	slice_cache_mark_dirty(c, a);
	assert_int_equal(slice_cache_dirty_count(c), 1);
	slice_cache_mark_dirty(c, b);
	assert_int_equal(slice_cache_dirty_count(c), 2);
	/* a created slice is zero-filled, ready and dirty */
	assert_int_equal(slice_cache_create(c, 0x3000, &w.w, &n), 0);
	assert_int_equal(n->state, SLICE_READY);
	assert_true(n->dirty);
	for (uint32_t i = 0; i < 512; i++)
		assert_int_equal(n->data[i], 0);
	assert_int_equal(slice_cache_dirty_count(c), 3);
	assert_int_equal(f.npending, 0); /* created without a read */
	assert_int_equal(slice_cache_create(c, 0x3000, &w.w, &n), -EEXIST);
	assert_int_equal(slice_cache_create(c, 0x1000, &w.w, &n), -EEXIST);
	assert_int_equal(slice_cache_dirty_count(c), 3);
	/* cleaning a clean slice does not count down */
	slice_cache_clean(c, b, false);
	assert_int_equal(slice_cache_dirty_count(c), 2);
	slice_cache_clean(c, b, false);
	assert_int_equal(slice_cache_dirty_count(c), 2);
	assert_false(b->dirty);
	assert_int_equal(w.woken, 0);
	slice_cache_free(c);
}

static void test_dirty_never_evicted(void **state)
{
	struct full_rec r;
	struct slice_cache *c;
	struct waiter w = { .w.wake = on_wake }, w2 = { .w.wake = on_wake };
	struct slice *a, *b, *n;
	const uint8_t *data;
	struct qcow2_cache_stats st;
	uint64_t k;

	(void)state;
	memset(&r, 0, sizeof(r));
	assert_int_equal(slice_cache_new(512, 2, 512, fake_load, &r, &c), 0);
	slice_cache_set_full_handler(c, on_full);
	a = load_slice(&r.f, c, 0x1000);
	b = load_slice(&r.f, c, 0x2000);
	slice_cache_mark_dirty(c, a);
	slice_cache_mark_dirty(c, b);
	/* every slot dirty: the get waits, and the owner is asked to write
	 * back; nothing is evicted and no load starts */
	assert_int_equal(slice_cache_get(c, 0x3000, &w.w, &data), -EAGAIN);
	assert_int_equal(r.calls, 1);
	assert_ptr_equal(r.last, c);
	assert_int_equal(r.f.npending, 0);
	assert_int_equal(w.woken, 0);
	/* so does a create */
	assert_int_equal(slice_cache_create(c, 0x4000, &w2.w, &n), -EAGAIN);
	assert_int_equal(r.calls, 2);
	slice_cache_stats(c, &st);
	assert_int_equal(st.evictions, 0);
	assert_true(is_hit(c, 0x1000));
	assert_true(is_hit(c, 0x2000));
	assert_int_equal(slice_cache_dirty_count(c), 2);
	/* b's write-back finishes: both waiters retry */
	slice_cache_clean(c, b, false);
	assert_int_equal(slice_cache_dirty_count(c), 1);
	assert_int_equal(w.woken, 1);
	assert_int_equal(w.err, 0);
	assert_int_equal(w2.woken, 1);
	assert_int_equal(w2.err, 0);
	/* the retry evicts b, the clean one, never a */
	assert_int_equal(slice_cache_get(c, 0x3000, &w.w, &data), -EAGAIN);
	assert_int_equal(r.f.npending, 1);
	assert_ptr_equal(r.f.pending[0], b);
	fake_finish(&r.f, c, 0);
	assert_int_equal(w.woken, 2);
	assert_int_equal(slice_cache_get(c, 0x3000, &w.w, &data), 0);
	memcpy(&k, data, sizeof(k));
	assert_int_equal(k, 0x3000);
	assert_true(is_hit(c, 0x1000));
	assert_true(a->dirty);
	slice_cache_stats(c, &st);
	assert_int_equal(st.evictions, 1);
	assert_int_equal(r.calls, 2);
	slice_cache_free(c);
}

static void test_full_handler_only_with_dirty(void **state)
{
	struct full_rec r;
	struct slice_cache *c;
	struct waiter a = { .w.wake = on_wake }, b = { .w.wake = on_wake };
	const uint8_t *data;

	(void)state;
	memset(&r, 0, sizeof(r));
	assert_int_equal(slice_cache_new(512, 2, 512, fake_load, &r, &c), 0);
	slice_cache_set_full_handler(c, on_full);
	/* every slot loading, none dirty: nothing to write back */
	assert_int_equal(slice_cache_get(c, 0x1000, &a.w, &data), -EAGAIN);
	assert_int_equal(slice_cache_get(c, 0x2000, &a.w, &data), -EAGAIN);
	assert_int_equal(slice_cache_get(c, 0x3000, &b.w, &data), -EAGAIN);
	assert_int_equal(r.calls, 0);
	fake_finish(&r.f, c, 0);
	assert_int_equal(b.woken, 1);
	fake_finish(&r.f, c, 0);
	slice_cache_free(c);
}

static void test_writing_not_evicted(void **state)
{
	struct full_rec r;
	struct slice_cache *c;
	struct waiter w1 = { .w.wake = on_wake }, w2 = { .w.wake = on_wake },
		      w3 = { .w.wake = on_wake }, w4 = { .w.wake = on_wake };
	struct slice *a, *b;
	const uint8_t *data;
	struct qcow2_cache_stats st;

	(void)state;
	memset(&r, 0, sizeof(r));
	assert_int_equal(slice_cache_new(512, 2, 512, fake_load, &r, &c), 0);
	slice_cache_set_full_handler(c, on_full);
	a = load_slice(&r.f, c, 0x1000);
	b = load_slice(&r.f, c, 0x2000);
	/* a is being written back, as wb_write_slices leaves it; b, the
	 * most recently used, is clean: b goes */
	slice_cache_mark_dirty(c, a);
	a->writing = true;
	assert_int_equal(slice_cache_get(c, 0x3000, &w1.w, &data), -EAGAIN);
	assert_int_equal(r.f.npending, 1);
	assert_ptr_equal(r.f.pending[0], b);
	fake_finish(&r.f, c, 0);
	assert_int_equal(w1.woken, 1);
	assert_true(is_hit(c, 0x1000));
	/* while its write is in flight a is not handed out, even when it is
	 * the only slot not loading */
	assert_int_equal(slice_cache_get(c, 0x4000, &w2.w, &data), -EAGAIN);
	assert_int_equal(r.f.npending, 1);
	assert_ptr_equal(r.f.pending[0], b);
	assert_int_equal(slice_cache_get(c, 0x5000, &w3.w, &data), -EAGAIN);
	assert_int_equal(r.f.npending, 1); /* w3 waits for a slot */
	assert_int_equal(r.calls, 1);
	fake_finish(&r.f, c, 0);
	assert_int_equal(w2.woken, 1);
	assert_int_equal(w3.woken, 1);
	assert_int_equal(w3.err, 0);
	assert_true(is_hit(c, 0x1000));
	assert_true(is_hit(c, 0x4000));
	/* a slice only `writing` (not dirty) is held all the same */
	slice_cache_clean(c, a, false);
	assert_false(a->dirty);
	assert_false(a->writing);
	a->writing = true;
	b->writing = true; /* 0x4000's slot */
	assert_int_equal(slice_cache_get(c, 0x6000, &w4.w, &data), -EAGAIN);
	assert_int_equal(r.f.npending, 0);
	assert_int_equal(r.calls, 1); /* nothing dirty: no write-back asked */
	slice_cache_stats(c, &st);
	assert_int_equal(st.evictions, 2);
	assert_true(is_hit(c, 0x1000));
	assert_true(is_hit(c, 0x4000));
	/* b's write ends: the waiter retries and evicts it, not a */
	slice_cache_clean(c, b, false);
	assert_int_equal(w4.woken, 1);
	assert_int_equal(slice_cache_get(c, 0x6000, &w4.w, &data), -EAGAIN);
	assert_int_equal(r.f.npending, 1);
	assert_ptr_equal(r.f.pending[0], b);
	fake_finish(&r.f, c, 0);
	assert_true(is_hit(c, 0x1000));
	a->writing = false;
	slice_cache_free(c);
}

static void test_clean_redirtied(void **state)
{
	struct full_rec r;
	struct slice_cache *c;
	struct waiter w = { .w.wake = on_wake };
	struct slice *a, *b;
	const uint8_t *data;

	(void)state;
	memset(&r, 0, sizeof(r));
	assert_int_equal(slice_cache_new(512, 2, 512, fake_load, &r, &c), 0);
	slice_cache_set_full_handler(c, on_full);
	a = load_slice(&r.f, c, 0x1000);
	b = load_slice(&r.f, c, 0x2000);
	slice_cache_mark_dirty(c, a);
	slice_cache_mark_dirty(c, b);
	a->writing = true;
	b->writing = true;
	assert_int_equal(slice_cache_get(c, 0x3000, &w.w, &data), -EAGAIN);
	assert_int_equal(r.calls, 1);
	/* a changed while it was written: its write ends, it stays dirty,
	 * counted and unevictable; the waiter is woken to retry */
	slice_cache_clean(c, a, true);
	assert_false(a->writing);
	assert_true(a->dirty);
	assert_int_equal(slice_cache_dirty_count(c), 2);
	assert_int_equal(w.woken, 1);
	assert_int_equal(w.err, 0);
	/* the retry finds no slot again and asks for another write-back */
	assert_int_equal(slice_cache_get(c, 0x3000, &w.w, &data), -EAGAIN);
	assert_int_equal(r.f.npending, 0);
	assert_int_equal(r.calls, 2);
	/* b's write ends unchanged: clean, evictable */
	slice_cache_clean(c, b, false);
	assert_false(b->writing);
	assert_false(b->dirty);
	assert_int_equal(slice_cache_dirty_count(c), 1);
	assert_int_equal(w.woken, 2);
	assert_int_equal(slice_cache_get(c, 0x3000, &w.w, &data), -EAGAIN);
	assert_int_equal(r.f.npending, 1);
	assert_ptr_equal(r.f.pending[0], b);
	fake_finish(&r.f, c, 0);
	assert_true(is_hit(c, 0x1000));
	assert_true(a->dirty);
	slice_cache_free(c);
}

static void test_failed_writeback(void **state)
{
	struct full_rec r;
	struct slice_cache *c;
	struct waiter w = { .w.wake = on_wake }, l = { .w.wake = on_wake };
	struct slice *a;
	const uint8_t *data;

	(void)state;
	memset(&r, 0, sizeof(r));
	assert_int_equal(slice_cache_new(512, 2, 512, fake_load, &r, &c), 0);
	slice_cache_set_full_handler(c, on_full);
	a = load_slice(&r.f, c, 0x1000);
	slice_cache_mark_dirty(c, a);
	a->writing = true;
	/* the other slot is loading, with a waiter of its own */
	assert_int_equal(slice_cache_get(c, 0x2000, &l.w, &data), -EAGAIN);
	assert_int_equal(slice_cache_get(c, 0x3000, &w.w, &data), -EAGAIN);
	assert_int_equal(r.calls, 1);
	/* the write of a fails (wb_io_failed): writing cleared, dirty kept */
	a->writing = false;
	assert_true(a->dirty);
	assert_int_equal(slice_cache_dirty_count(c), 1);
	/* the write-back ends with the error: slot waiters get it, the
	 * load's waiter does not */
	slice_cache_fail_waiters(c, -EIO);
	assert_int_equal(w.woken, 1);
	assert_int_equal(w.err, -EIO);
	assert_int_equal(l.woken, 0);
	/* once only: the list was emptied */
	slice_cache_fail_waiters(c, -ENOSPC);
	assert_int_equal(w.woken, 1);
	assert_int_equal(w.err, -EIO);
	/* the failed slice is still dirty, counted and unevictable: with
	 * the load done, the next miss takes the loaded slot */
	fake_finish(&r.f, c, 0);
	assert_int_equal(l.woken, 1);
	assert_int_equal(l.err, 0);
	assert_true(a->dirty);
	assert_int_equal(slice_cache_dirty_count(c), 1);
	assert_int_equal(slice_cache_get(c, 0x3000, &w.w, &data), -EAGAIN);
	assert_int_equal(r.f.npending, 1);
	assert_ptr_not_equal(r.f.pending[0], a);
	fake_finish(&r.f, c, 0);
	assert_true(is_hit(c, 0x1000));
	assert_int_equal(r.f.npending, 0);
	/* a later write-back succeeds */
	a->writing = true;
	slice_cache_clean(c, a, false);
	assert_int_equal(slice_cache_dirty_count(c), 0);
	slice_cache_free(c);
}

static void test_drop(void **state)
{
	struct fake f = { 0 };
	struct slice_cache *c;
	struct waiter w = { .w.wake = on_wake }, l = { .w.wake = on_wake };
	struct slice *a, *b;
	const uint8_t *data;
	struct qcow2_cache_stats st;

	(void)state;
	assert_int_equal(slice_cache_new(512, 2, 512, fake_load, &f, &c), 0);
	a = load_slice(&f, c, 0x1000);
	b = load_slice(&f, c, 0x2000);
	/* a dirty slice is not dropped: its write-back is still owed */
	slice_cache_mark_dirty(c, a);
	slice_cache_drop(c, 0x1000);
	assert_true(is_hit(c, 0x1000));
	assert_true(a->dirty);
	assert_int_equal(a->state, SLICE_READY);
	assert_int_equal(slice_cache_dirty_count(c), 1);
	/* nor one being written */
	slice_cache_clean(c, a, false);
	a->writing = true;
	slice_cache_drop(c, 0x1000);
	assert_true(is_hit(c, 0x1000));
	a->writing = false;
	/* nor an unknown key (no-op) */
	slice_cache_drop(c, 0x9000);
	assert_true(is_hit(c, 0x1000));
	assert_true(is_hit(c, 0x2000));
	/* a clean one is: its slot is free again (no eviction needed) and
	 * the key misses */
	slice_cache_drop(c, 0x2000);
	assert_int_equal(b->state, SLICE_EMPTY);
	assert_int_equal(slice_cache_get(c, 0x2000, &w.w, &data), -EAGAIN);
	assert_int_equal(f.npending, 1);
	assert_ptr_equal(f.pending[0], b);
	slice_cache_stats(c, &st);
	assert_int_equal(st.evictions, 0);
	/* a loading one is not: its waiters still get the load */
	slice_cache_drop(c, 0x2000);
	assert_int_equal(b->state, SLICE_LOADING);
	assert_int_equal(slice_cache_get(c, 0x2000, &l.w, &data), -EAGAIN);
	fake_finish(&f, c, 0);
	assert_int_equal(w.woken, 1);
	assert_int_equal(l.woken, 1);
	assert_true(is_hit(c, 0x2000));
	assert_true(is_hit(c, 0x1000));
	assert_int_equal(slice_cache_dirty_count(c), 0);
	slice_cache_free(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_miss_then_hit),
		cmocka_unit_test(test_lru_eviction),
		cmocka_unit_test(test_all_slots_loading),
		cmocka_unit_test(test_load_error),
		cmocka_unit_test(test_bad_geometry),
		cmocka_unit_test(test_dirty_count),
		cmocka_unit_test(test_dirty_never_evicted),
		cmocka_unit_test(test_full_handler_only_with_dirty),
		cmocka_unit_test(test_writing_not_evicted),
		cmocka_unit_test(test_clean_redirtied),
		cmocka_unit_test(test_failed_writeback),
		cmocka_unit_test(test_drop),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
