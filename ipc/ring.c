/* ring.c: the shared layout of a queue region and the primitives both sides
 * use on it (mapping, doorbells). */
#include "ipc_testing.h"
#include "ring.h"

#include <errno.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

void (*ring_crash_point)(const char *where);

static uint64_t align_page(uint64_t x)
{
	return (x + QCOW2_IPC_PAGE - 1) & ~(uint64_t)(QCOW2_IPC_PAGE - 1);
}

int qcow2_ipc_compute_layout(const struct qcow2_ipc_geometry *g, struct qcow2_ipc_layout *out)
{
	if (!ring_is_pow2(g->sq_entries) || g->sq_entries > QCOW2_IPC_MAX_ENTRIES)
		return -EINVAL;
	if (!ring_is_pow2(g->cq_entries) || g->cq_entries > QCOW2_IPC_MAX_ENTRIES ||
	    g->cq_entries < g->sq_entries)
		return -EINVAL;
	if (g->max_segs == 0 || g->max_segs > QCOW2_IPC_MAX_SEGS ||
	    (uint64_t)g->cq_entries * g->max_segs > QCOW2_IPC_MAX_SEG_TABLE)
		return -EINVAL;
	if (g->data_size % QCOW2_IPC_PAGE != 0 || g->data_size > QCOW2_IPC_MAX_DATA_SIZE)
		return -EINVAL;

	/* Bounded by the limits above: nothing here can overflow. */
	uint64_t off = QCOW2_IPC_PAGE;          /* the control page */
	out->sq_off = off;
	off = align_page(off + (uint64_t)g->sq_entries * sizeof(struct qcow2_ipc_sqe));
	out->cq_off = off;
	off = align_page(off + (uint64_t)g->cq_entries * sizeof(struct qcow2_ipc_cqe));
	out->seg_off = off;
	off = align_page(off + (uint64_t)g->cq_entries * g->max_segs *
			       sizeof(struct qcow2_ipc_seg));
	out->inflight_off = off;
	off = align_page(off + (uint64_t)g->cq_entries * sizeof(struct qcow2_ipc_inflight));
	out->data_off = off;
	out->size = off + g->data_size;
	return 0;
}

void ring_view_init(struct ring_view *v, void *base, const struct qcow2_ipc_geometry *g,
		    const struct qcow2_ipc_layout *l)
{
	uint8_t *b = base;

	v->ctrl = base;
	v->sq = (struct qcow2_ipc_sqe *)(b + l->sq_off);
	v->cq = (struct qcow2_ipc_cqe *)(b + l->cq_off);
	v->segs = (struct qcow2_ipc_seg *)(b + l->seg_off);
	v->inflight = (struct qcow2_ipc_inflight *)(b + l->inflight_off);
	v->data = b + l->data_off;
	v->sq_mask = g->sq_entries - 1;
	v->cq_mask = g->cq_entries - 1;
}

/* The alignment a mapping of fd needs: the page size of its file system
 * (huge pages for a hugetlbfs memfd, as guest RAM often is). */
static uint64_t map_align(int fd)
{
	struct stat st;

	if (fstat(fd, &st) == 0 && st.st_blksize > QCOW2_IPC_PAGE &&
	    st.st_blksize <= (1 << 30) && ((uint64_t)st.st_blksize & (st.st_blksize - 1)) == 0)
		return (uint64_t)st.st_blksize;
	return QCOW2_IPC_PAGE;
}

/* Layout of a guarded mapping: [guard | size rounded to align | guard],
 * the whole reservation aligned to align. */
int ring_map(int fd, uint64_t size, void **base, uint64_t *align_out)
{
	uint64_t align = map_align(fd);
	if (size == 0 || size > SIZE_MAX / 2)
		return -EINVAL;
	uint64_t span = (size + align - 1) & ~(align - 1);
	size_t total = (size_t)(span + 3 * align);     /* one align of slack to align the start */
	uint8_t *reserve = mmap(NULL, total, PROT_NONE,
				MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (reserve == MAP_FAILED)
		return -errno;
	uint8_t *start = (uint8_t *)(((uintptr_t)reserve + align - 1) & ~(uintptr_t)(align - 1));
	void *p = mmap(start + align, (size_t)span, PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_FIXED, fd, 0);
	if (p == MAP_FAILED) {
		int err = -errno;
		munmap(reserve, total);
		return err;
	}
	/* Trim the slack so that ring_unmap finds the reservation again from
	 * base, size and align: keep [start, start + span + 2 align). */
	if (start > reserve)
		munmap(reserve, (size_t)(start - reserve));
	uint8_t *end = start + span + 2 * align;
	if (reserve + total > end)
		munmap(end, (size_t)(reserve + total - end));
	*base = p;
	*align_out = align;
	return 0;
}

void ring_unmap(void *base, uint64_t size, uint64_t align)
{
	if (!base)
		return;
	uint64_t span = (size + align - 1) & ~(align - 1);
	munmap((uint8_t *)base - align, (size_t)(span + 2 * align));
}

int ring_doorbell_ring(int fd)
{
	uint64_t one = 1;

	for (;;) {
		ssize_t n = write(fd, &one, sizeof(one));
		if (n == sizeof(one))
			return 0;
		if (n < 0 && errno == EINTR)
			continue;
		/* EAGAIN: the counter is saturated, so the peer has a wakeup
		 * pending anyway. */
		if (n < 0 && errno == EAGAIN)
			return 0;
		return n < 0 ? -errno : -EIO;
	}
}

int ring_doorbell_drain(int fd)
{
	uint64_t v;

	for (;;) {
		ssize_t n = read(fd, &v, sizeof(v));
		if (n == sizeof(v) || (n < 0 && errno == EAGAIN))
			return 0;
		if (n < 0 && errno == EINTR)
			continue;
		return n < 0 ? -errno : -EIO;
	}
}
