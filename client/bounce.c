/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * bounce.c: who holds which part of a queue's data area. Requests whose
 * buffers are not in a mapped region are copied through it. First fit
 * over 4 KiB chunks, one bit each, searched from where the last search
 * ended: requests complete in about the order they were issued, so the
 * space just past the last allocation is usually free, and a run never
 * wraps (the service needs one contiguous buffer per request).
 */
#include "client.h"

#include <errno.h>
#include <stdlib.h>

int bounce_init(struct bounce *bb, uint64_t size)
{
	bb->nchunks = (uint32_t)(size / Q2C_CHUNK);
	bb->nwords = (bb->nchunks + 63) / 64;
	bb->hint = 0;
	bb->used = 0;
	bb->map = NULL;
	if (!bb->nwords)
		return 0;
	bb->map = calloc(bb->nwords, sizeof(*bb->map));
	if (!bb->map)
		return -ENOMEM;
	/* Bits past the last chunk count as in use: no run reaches them. */
	if (bb->nchunks % 64)
		bb->map[bb->nwords - 1] = ~0ull << (bb->nchunks % 64);
	return 0;
}

void bounce_fini(struct bounce *bb)
{
	free(bb->map);
	bb->map = NULL;
}

static bool chunk_used(const struct bounce *bb, uint32_t i)
{
	return bb->map[i / 64] >> (i % 64) & 1;
}

static void mark(struct bounce *bb, uint32_t first, uint32_t n, bool used)
{
	for (uint32_t i = first; i < first + n; i++) {
		uint64_t bit = 1ull << (i % 64);
		if (used)
			bb->map[i / 64] |= bit;
		else
			bb->map[i / 64] &= ~bit;
	}
}

/* A run of n free chunks in [from, to), or -1. */
static int64_t find_run(const struct bounce *bb, uint32_t from, uint32_t to, uint32_t n)
{
	uint32_t i = from, run = 0;

	while (i < to) {
		if (i % 64 == 0 && bb->map[i / 64] == ~0ull) {
			run = 0;
			i += 64;        /* a full word: skip it */
			continue;
		}
		if (chunk_used(bb, i)) {
			run = 0;
		} else if (++run == n) {
			return (int64_t)(i + 1 - n);
		}
		i++;
	}
	return -1;
}

int bounce_alloc(struct bounce *bb, uint32_t n, uint32_t *first)
{
	int64_t at;

	if (n == 0 || n > bb->nchunks - bb->used)
		return -ENOSPC;
	at = find_run(bb, bb->hint, bb->nchunks, n);
	if (at < 0)
		at = find_run(bb, 0, bb->hint + n - 1 < bb->nchunks ? bb->hint + n - 1 : bb->nchunks,
			      n);
	if (at < 0)
		return -ENOSPC;
	mark(bb, (uint32_t)at, n, true);
	bb->used += n;
	bb->hint = (uint32_t)at + n;
	if (bb->hint >= bb->nchunks)
		bb->hint = 0;
	*first = (uint32_t)at;
	return 0;
}

void bounce_free(struct bounce *bb, uint32_t first, uint32_t n)
{
	mark(bb, first, n, false);
	bb->used -= n;
}
