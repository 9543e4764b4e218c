/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * The data area's allocator (client/bounce.c): runs never overlap, never
 * pass the end, and an allocation fails only when no run of that length
 * is free anywhere (checked against a plain array of flags, seeded).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "client.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rnd(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static void test_basics(void **state)
{
	struct bounce bb;
	uint32_t a, b, c;

	(void)state;
	assert_int_equal(bounce_init(&bb, 0), 0);
	assert_int_equal(bounce_alloc(&bb, 1, &a), -ENOSPC);
	bounce_fini(&bb);

	/* 70 chunks: the last word is partly past the end */
	assert_int_equal(bounce_init(&bb, 70 * Q2C_CHUNK), 0);
	assert_int_equal(bounce_alloc(&bb, 71, &a), -ENOSPC);
	assert_int_equal(bounce_alloc(&bb, 0, &a), -ENOSPC);
	assert_int_equal(bounce_alloc(&bb, 70, &a), 0);
	assert_int_equal(a, 0);
	assert_int_equal(bounce_alloc(&bb, 1, &b), -ENOSPC);
	bounce_free(&bb, a, 70);
	assert_int_equal(bb.used, 0);

	/* next fit from the last allocation, then around to the start */
	assert_int_equal(bounce_alloc(&bb, 30, &a), 0);
	assert_int_equal(bounce_alloc(&bb, 30, &b), 0);
	assert_int_equal(b, 30);
	bounce_free(&bb, a, 30);
	assert_int_equal(bounce_alloc(&bb, 10, &c), 0);
	assert_int_equal(c, 60);                /* after b, the 10 left at the end */
	assert_int_equal(bounce_alloc(&bb, 25, &c), 0);
	assert_int_equal(c, 0);                 /* wrapped */
	assert_int_equal(bounce_alloc(&bb, 6, &c), -ENOSPC);    /* 5 left at 25 */
	assert_int_equal(bounce_alloc(&bb, 5, &c), 0);
	assert_int_equal(c, 25);
	assert_int_equal(bb.used, 70);
	bounce_fini(&bb);
}

static void test_random(void **state)
{
	enum { N = 300, MAXLIVE = 64 };
	struct bounce bb;
	bool used[N];
	struct { uint32_t first, n; } live[MAXLIVE];
	int nlive = 0;
	uint64_t seed = 42;

	(void)state;
	memset(used, 0, sizeof(used));
	assert_int_equal(bounce_init(&bb, (uint64_t)N * Q2C_CHUNK), 0);
	for (int step = 0; step < 200000; step++) {
		if (nlive && (nlive == MAXLIVE || rnd(&seed) % 2)) {
			int k = (int)(rnd(&seed) % (uint64_t)nlive);
			bounce_free(&bb, live[k].first, live[k].n);
			for (uint32_t i = 0; i < live[k].n; i++)
				used[live[k].first + i] = false;
			live[k] = live[--nlive];
			continue;
		}
		uint32_t n = 1 + (uint32_t)(rnd(&seed) % (rnd(&seed) % 4 ? 8 : 80)), first;
		bool fits = false;
		for (uint32_t s = 0; s + n <= N && !fits; s++) {
			uint32_t i = 0;
			while (i < n && !used[s + i])
				i++;
			fits = i == n;
		}
		int ret = bounce_alloc(&bb, n, &first);
		assert_int_equal(ret, fits ? 0 : -ENOSPC);
		if (ret < 0)
			continue;
		assert_true(first + n <= N);
		for (uint32_t i = 0; i < n; i++) {
			assert_false(used[first + i]);
			used[first + i] = true;
		}
		live[nlive].first = first;
		live[nlive].n = n;
		nlive++;
	}
	bounce_fini(&bb);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_basics),
		cmocka_unit_test(test_random),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
