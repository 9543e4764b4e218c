/* ring.h: private helpers shared by both sides of a queue. */
#ifndef QCOW2_IPC_RING_H
#define QCOW2_IPC_RING_H

#include "ipc_testing.h"
#include "qcow2_ipc.h"

#include <stdbool.h>
#include <string.h>

/* Pointers into one mapping of a queue region. */
struct ring_view {
	struct qcow2_ipc_ctrl *ctrl;
	struct qcow2_ipc_sqe *sq;
	struct qcow2_ipc_cqe *cq;
	struct qcow2_ipc_seg *segs;             /* cq_entries * max_segs */
	struct qcow2_ipc_inflight *inflight;    /* cq_entries */
	uint8_t *data;
	uint32_t sq_mask, cq_mask;
};

void ring_view_init(struct ring_view *v, void *base, const struct qcow2_ipc_geometry *g,
		    const struct qcow2_ipc_layout *l);

/* Maps size bytes of fd shared, between two PROT_NONE guard areas, so that
 * an access just past either end faults instead of touching other memory.
 * *align is the mapping's alignment (4096, or the huge page size of a
 * hugetlbfs memfd); ring_unmap needs it back. */
int ring_map(int fd, uint64_t size, void **base, uint64_t *align);
void ring_unmap(void *base, uint64_t size, uint64_t align);

/* Doorbells: eventfd writes and drains that never block. */
int ring_doorbell_ring(int fd);
int ring_doorbell_drain(int fd);

/* Calls the restart tests' crash hook (ring_crash_point, ipc_testing.h). */
static inline void ring_maybe_crash(const char *where)
{
	if (__builtin_expect(ring_crash_point != NULL, 0))
		ring_crash_point(where);
}

static inline bool ring_is_pow2(uint32_t x)
{
	return x != 0 && (x & (x - 1)) == 0;
}

/* Dekker-style fence between publishing an index and reading the peer's
 * need-wakeup flag (and between setting our flag and rechecking the ring). */
static inline void ring_full_fence(void)
{
	atomic_thread_fence(memory_order_seq_cst);
}

/* Copies len bytes the peer may be changing into local memory. The compiler
 * barrier after the copy forbids it to drop the copy and read the shared
 * bytes again later (a double fetch): what was checked is what is used. */
static inline void ring_copy_in(void *dst, const void *src, size_t len)
{
	memcpy(dst, src, len);
	atomic_signal_fence(memory_order_seq_cst);
}

static inline void ring_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield");
#endif
}

#endif
