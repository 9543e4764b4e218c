/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * mem.c: memory regions. A mapped region's memfd is registered with every
 * queue at its handshake, so that a request whose buffers lie in it goes
 * to the service without a copy. Regions of one memfd (guest RAM mapped
 * in pieces) share one registered region: the ipc index is per memfd.
 */
#include "client.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define PAGE 4096u

static int alloc_region(struct q2c_mem_region *region, size_t len)
{
	char eb[128];
	void *p;
	int fd, err;

	if (len == 0 || len % PAGE)
		return q2c_err(-EINVAL, "a region's length must be a positive multiple of "
			       "mem-region-alignment (%u), not %zu", PAGE, len);
	fd = memfd_create("qcow2-client-region", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return q2c_err(-errno, "memfd_create: %s", q2c_strerror(errno, eb, sizeof(eb)));
	if (ftruncate(fd, (off_t)len) < 0 ||
	    fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
		err = errno;
		close(fd);
		return q2c_err(-err, "a region of %zu bytes: %s", len,
			       q2c_strerror(err, eb, sizeof(eb)));
	}
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) {
		err = errno;
		close(fd);
		return q2c_err(-err, "mapping a region of %zu bytes: %s", len,
			       q2c_strerror(err, eb, sizeof(eb)));
	}
	memset(region, 0, sizeof(*region));
	region->addr = p;
	region->len = len;
	region->fd = fd;
	return 0;
}

int q2c_alloc_mem_region(struct q2c *b, struct q2c_mem_region *region, size_t len)
{
	int saved = errno;
	int ret = b && region ? alloc_region(region, len)
			      : q2c_err(-EINVAL, "q2c_alloc_mem_region: no handle or region");

	errno = saved;
	return ret;
}

void q2c_free_mem_region(struct q2c *b, const struct q2c_mem_region *region)
{
	int saved = errno;

	(void)b;
	if (region && region->addr) {
		munmap(region->addr, region->len);
		close(region->fd);
	}
	errno = saved;
}

/* Numbers the distinct memfds 1, 2... in the order they were first mapped. */
static void number_memfds(struct q2c *b)
{
	b->nr_memfds = 0;
	for (unsigned i = 0; i < b->nr_regions; i++) {
		struct q2c_region *r = &b->regions[i];
		r->ipc_index = 0;
		for (unsigned j = 0; j < i; j++)
			if (b->regions[j].dev == r->dev && b->regions[j].ino == r->ino)
				r->ipc_index = b->regions[j].ipc_index;
		if (!r->ipc_index)
			r->ipc_index = ++b->nr_memfds;
	}
}

static int map_region(struct q2c *b, const struct q2c_mem_region *m)
{
	struct q2c_region *r;
	struct stat st;
	char eb[128];
	int seals, fd;

	if (b->state == Q2C_STARTED)
		return q2c_err(-EBUSY, "regions are mapped before q2c_start() (they travel "
			       "in each queue's handshake)");
	if (b->nr_regions == Q2C_MAX_REGIONS)
		return q2c_err(-E2BIG, "at most %d regions", Q2C_MAX_REGIONS);
	if (!m->addr || m->len == 0 || m->flags || m->fd_offset < 0 ||
	    ((uintptr_t)m->addr | m->len | (uint64_t)m->fd_offset) % PAGE)
		return q2c_err(-EINVAL, "a region needs addr, len and fd_offset multiples of "
			       "mem-region-alignment (%u), len > 0 and flags 0", PAGE);
	for (unsigned i = 0; i < b->nr_regions; i++) {
		const struct q2c_region *o = &b->regions[i];
		if ((uint8_t *)m->addr < o->addr + o->len && o->addr < (uint8_t *)m->addr + m->len)
			return q2c_err(-EINVAL, "the region at %p overlaps one mapped already",
				       m->addr);
	}
	if (fstat(m->fd, &st) < 0)
		return q2c_err(-EBADF, "the region's fd: %s", q2c_strerror(errno, eb, sizeof(eb)));
	if ((uint64_t)st.st_size < (uint64_t)m->fd_offset + m->len)
		return q2c_err(-EINVAL, "the region's fd holds %lld bytes, less than "
			       "fd_offset + len", (long long)st.st_size);
	/* The service maps the memfd: it must not shrink under that mapping. */
	seals = fcntl(m->fd, F_GET_SEALS);
	if (seals < 0)
		return q2c_err(-EINVAL, "the region's fd is not a memfd (it must be: the "
			       "service maps it)");
	if (!(seals & F_SEAL_SHRINK) && fcntl(m->fd, F_ADD_SEALS, F_SEAL_SHRINK) < 0)
		return q2c_err(-EINVAL, "the region's memfd is not sealed against shrinking "
			       "and cannot be (F_SEAL_SHRINK): %s",
			       q2c_strerror(errno, eb, sizeof(eb)));
	fd = fcntl(m->fd, F_DUPFD_CLOEXEC, 0);
	if (fd < 0)
		return q2c_err(-errno, "dup: %s", q2c_strerror(errno, eb, sizeof(eb)));
	r = &b->regions[b->nr_regions++];
	r->addr = m->addr;
	r->len = m->len;
	r->fd_offset = m->fd_offset;
	r->fd = fd;
	r->dev = st.st_dev;
	r->ino = st.st_ino;
	number_memfds(b);
	return 0;
}

int q2c_map_mem_region(struct q2c *b, const struct q2c_mem_region *region)
{
	int saved = errno;
	int ret = b && region ? map_region(b, region)
			      : q2c_err(-EINVAL, "q2c_map_mem_region: no handle or region");

	errno = saved;
	return ret;
}

void q2c_unmap_mem_region(struct q2c *b, const struct q2c_mem_region *region)
{
	int saved = errno;

	if (!b || !region)
		goto out;
	if (b->state == Q2C_STARTED) {
		q2c_err(-EBUSY, "regions are unmapped before q2c_start() or by q2c_destroy()");
		goto out;
	}
	for (unsigned i = 0; i < b->nr_regions; i++) {
		struct q2c_region *r = &b->regions[i];
		if (r->addr == region->addr && r->len == region->len) {
			close(r->fd);
			memmove(r, r + 1, (b->nr_regions - i - 1) * sizeof(*r));
			b->nr_regions--;
			number_memfds(b);
			break;
		}
	}
out:
	errno = saved;
}

const struct q2c_region *region_find(const struct q2c *b, const void *p, size_t len)
{
	const uint8_t *a = p;

	for (unsigned i = 0; i < b->nr_regions; i++) {
		const struct q2c_region *r = &b->regions[i];
		if (a >= r->addr && len <= r->len && (size_t)(a - r->addr) <= r->len - len)
			return r;
	}
	return NULL;
}

unsigned region_memfds(const struct q2c *b, int *fds)
{
	for (unsigned i = 0; i < b->nr_regions; i++)
		fds[b->regions[i].ipc_index - 1] = b->regions[i].fd;
	return b->nr_memfds;
}
