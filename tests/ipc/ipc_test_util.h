/* ipc_test_util.h: helpers shared by the ipc tests (header only). Public API
 * only, so that ipc_stress (like ipc_echo_service) builds against qcow2_ipc.h
 * alone; helpers that need the library's test entry points are in
 * ipc_test_internal.h. */
#ifndef IPC_TEST_UTIL_H
#define IPC_TEST_UTIL_H

#include "qcow2_ipc.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* splitmix64: seeded, reproducible. */
static inline uint64_t test_rand(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static inline uint64_t test_rand_range(uint64_t *state, uint64_t lo, uint64_t hi)
{
	return lo + test_rand(state) % (hi - lo + 1);
}

/* FNV-1a over a buffer, mixed with a seed. */
static inline uint64_t test_hash(const void *buf, size_t len, uint64_t seed)
{
	const uint8_t *p = buf;
	uint64_t h = 0xcbf29ce484222325ull ^ seed;
	for (size_t i = 0; i < len; i++)
		h = (h ^ p[i]) * 0x100000001b3ull;
	return h;
}

/* Fills buf with bytes derived from seed (what both sides can recompute). */
static inline void test_fill(void *buf, size_t len, uint64_t seed)
{
	uint8_t *p = buf;
	uint64_t st = seed;
	size_t i = 0;
	for (; i + 8 <= len; i += 8) {
		uint64_t v = test_rand(&st);
		memcpy(p + i, &v, 8);
	}
	if (i < len) {
		uint64_t v = test_rand(&st);
		memcpy(p + i, &v, len - i);
	}
}

/* A sealed memfd of size bytes, for registered regions. */
static inline int test_memfd(uint64_t size, unsigned seals)
{
	int fd = memfd_create("ipc-test-region", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)size) < 0 || (seals && fcntl(fd, F_ADD_SEALS, seals) < 0)) {
		int err = -errno;
		close(fd);
		return err;
	}
	return fd;
}

/* Checks that every iov of req lies inside one of the service's regions. */
static inline bool test_req_in_regions(const struct qcow2_ipc_server *s,
				       const struct qcow2_ipc_server_req *req)
{
	for (unsigned i = 0; i < req->nr_iov; i++) {
		const uint8_t *p = req->iov[i].iov_base;
		bool ok = false;
		void *base;
		uint64_t size;
		for (unsigned r = 0; qcow2_ipc_server_region(s, r, &base, &size) == 0; r++) {
			const uint8_t *b = base;
			if (p >= b && req->iov[i].iov_len <= size &&
			    (uint64_t)(p - b) <= size - req->iov[i].iov_len)
				ok = true;
		}
		if (!ok)
			return false;
	}
	return true;
}

#define TEST_CHECK(cond)                                                               \
	do {                                                                           \
		if (!(cond)) {                                                         \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, \
				#cond);                                                \
			exit(1);                                                       \
		}                                                                      \
	} while (0)

#endif
