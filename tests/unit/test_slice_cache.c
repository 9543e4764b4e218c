/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* The slice cache with a fake loader whose loads complete on command. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "slice_cache.h"

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

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_miss_then_hit),
		cmocka_unit_test(test_lru_eviction),
		cmocka_unit_test(test_all_slots_loading),
		cmocka_unit_test(test_load_error),
		cmocka_unit_test(test_bad_geometry),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
