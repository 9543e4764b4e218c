/* queue_client.c: the producing side of a queue (the VMM's end). It owns the
 * region: creates the memfd, seals it, and keeps one record per in-flight
 * request (slot) with a generation, so that a completion is accepted only
 * for the request that is in flight in that slot now. */
#include "extstruct.h"
#include "handshake.h"
#include "ipc_testing.h"
#include "ring.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

struct client_slot {
	uint64_t tag;
	uint32_t gen;
	uint32_t busy;
};

struct qcow2_ipc_client {
	struct qcow2_ipc_geometry g;
	struct qcow2_ipc_layout l;
	struct ring_view v;
	void *base;
	uint64_t map_align;
	int queue_fd, kick_fd, call_fd;
	unsigned nr_regions;
	int region_fds[QCOW2_IPC_MAX_REGIONS];
	uint32_t flags;

	uint32_t sq_tail;               /* next SQE to fill */
	uint32_t sq_published;          /* last tail stored to the ring */
	uint32_t cq_head;
	bool broken;

	struct client_slot *slots;      /* cq_entries */
	uint32_t *free_slots;
	uint32_t nr_free;

	struct qcow2_ipc_client_stats stats;
};

void qcow2_ipc_client_free(struct qcow2_ipc_client *c)
{
	if (!c)
		return;
	ring_unmap(c->base, c->l.size, c->map_align);
	int fds[] = { c->queue_fd, c->kick_fd, c->call_fd };
	for (unsigned i = 0; i < 3; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	for (unsigned i = 0; i < c->nr_regions; i++)
		close(c->region_fds[i]);
	free(c->slots);
	free(c->free_slots);
	free(c);
}

int qcow2_ipc_client_new(const struct qcow2_ipc_client_opts *caller_opts,
			 struct qcow2_ipc_client **out)
{
	struct qcow2_ipc_client_opts o;
	const struct qcow2_ipc_client_opts *opts = &o;
	struct qcow2_ipc_client *c;
	int err;

	err = ext_copy_in(&o, sizeof(o), caller_opts, EXT_CLIENT_OPTS_VER0);
	if (err < 0)
		return err;
	if (opts->nr_regions > QCOW2_IPC_MAX_REGIONS || (opts->nr_regions && !opts->region_fds))
		return -EINVAL;
	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->queue_fd = c->kick_fd = c->call_fd = -1;
	c->g = opts->geometry;
	c->flags = opts->flags;
	err = qcow2_ipc_compute_layout(&c->g, &c->l);
	if (err < 0)
		goto fail;
	c->slots = calloc(c->g.cq_entries, sizeof(*c->slots));
	c->free_slots = calloc(c->g.cq_entries, sizeof(*c->free_slots));
	if (!c->slots || !c->free_slots) {
		err = -ENOMEM;
		goto fail;
	}
	/* Pop order 0, 1, 2...: low slots stay hot in the cache. */
	for (uint32_t i = 0; i < c->g.cq_entries; i++)
		c->free_slots[i] = c->g.cq_entries - 1 - i;
	c->nr_free = c->g.cq_entries;

	for (unsigned i = 0; i < opts->nr_regions; i++) {
		uint64_t size;
		err = handshake_check_memfd(opts->region_fds[i], &size);
		if (err < 0)
			goto fail;
		int fd = fcntl(opts->region_fds[i], F_DUPFD_CLOEXEC, 0);
		if (fd < 0) {
			err = -errno;
			goto fail;
		}
		c->region_fds[c->nr_regions++] = fd;
	}

	c->queue_fd = memfd_create("qcow2-ipc-queue", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (c->queue_fd < 0) {
		err = -errno;
		goto fail;
	}
	if (ftruncate(c->queue_fd, (off_t)c->l.size) < 0 ||
	    fcntl(c->queue_fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
		err = -errno;
		goto fail;
	}
	err = ring_map(c->queue_fd, c->l.size, &c->base, &c->map_align);
	if (err < 0)
		goto fail;
	ring_view_init(&c->v, c->base, &c->g, &c->l);
	struct qcow2_ipc_region_header *h = &c->v.ctrl->hdr;
	h->magic = QCOW2_IPC_REGION_MAGIC;
	h->version = QCOW2_IPC_VERSION;
	h->sq_entries = c->g.sq_entries;
	h->cq_entries = c->g.cq_entries;
	h->max_segs = c->g.max_segs;
	h->data_size = c->g.data_size;
	h->region_size = c->l.size;
	struct qcow2_ipc_ctrl *ctrl = c->v.ctrl;
	c->sq_tail = c->sq_published = c->cq_head = opts->first_index;
	atomic_store(&ctrl->sq_prod.sq_tail, opts->first_index);
	atomic_store(&ctrl->sq_cons.sq_head, opts->first_index);
	atomic_store(&ctrl->cq_prod.cq_tail, opts->first_index);
	atomic_store(&ctrl->cq_cons.cq_head, opts->first_index);

	c->kick_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	c->call_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (c->kick_fd < 0 || c->call_fd < 0) {
		err = -errno;
		goto fail;
	}
	*out = c;
	return 0;
fail:
	qcow2_ipc_client_free(c);
	return err;
}

int qcow2_ipc_client_handshake(struct qcow2_ipc_client *c, int sock)
{
	struct qcow2_ipc_hello h;
	struct qcow2_ipc_reply r;
	int fds[3 + QCOW2_IPC_MAX_REGIONS];
	int rfds[3 + QCOW2_IPC_MAX_REGIONS];
	unsigned nrfds = 0;

	memset(&h, 0, sizeof(h));
	h.magic = QCOW2_IPC_HELLO_MAGIC;
	h.version_min = QCOW2_IPC_VERSION;
	h.version_max = QCOW2_IPC_VERSION;
	h.sq_entries = c->g.sq_entries;
	h.cq_entries = c->g.cq_entries;
	h.max_segs = c->g.max_segs;
	h.nr_regions = c->nr_regions;
	h.data_size = c->g.data_size;
	h.region_size = c->l.size;
	fds[0] = c->queue_fd;
	fds[1] = c->kick_fd;
	fds[2] = c->call_fd;
	for (unsigned i = 0; i < c->nr_regions; i++)
		fds[3 + i] = c->region_fds[i];
	int err = handshake_send(sock, &h, sizeof(h), fds, 3 + c->nr_regions);
	if (err < 0)
		return err;
	err = handshake_recv(sock, &r, sizeof(r), rfds, 3 + QCOW2_IPC_MAX_REGIONS, &nrfds);
	if (err < 0)
		return err;
	for (unsigned i = 0; i < nrfds; i++)
		close(rfds[i]);
	if (nrfds || r.magic != QCOW2_IPC_REPLY_MAGIC)
		return -EPROTO;
	if (r.status < 0)
		return r.status;
	if (r.status > 0 || r.version != QCOW2_IPC_VERSION)
		return -EPROTO;
	return 0;
}

void *qcow2_ipc_client_data(struct qcow2_ipc_client *c, uint64_t *size)
{
	if (size)
		*size = c->g.data_size;
	return c->v.data;
}

struct qcow2_ipc_ctrl *qcow2_ipc_client_ctrl(struct qcow2_ipc_client *c)
{
	return c->v.ctrl;
}

int qcow2_ipc_client_queue_fd(const struct qcow2_ipc_client *c)
{
	return c->queue_fd;
}

int qcow2_ipc_client_kick_fd(const struct qcow2_ipc_client *c)
{
	return c->kick_fd;
}

int qcow2_ipc_client_call_fd(const struct qcow2_ipc_client *c)
{
	return c->call_fd;
}

unsigned qcow2_ipc_client_in_flight(const struct qcow2_ipc_client *c)
{
	return c->g.cq_entries - c->nr_free;
}

int qcow2_ipc_client_get_stats(const struct qcow2_ipc_client *c,
			       struct qcow2_ipc_client_stats *out)
{
	return ext_copy_out(out, &c->stats, sizeof(c->stats), EXT_CLIENT_STATS_VER0);
}

static int client_check_broken(struct qcow2_ipc_client *c)
{
	if (!c->broken &&
	    atomic_load_explicit(&c->v.ctrl->sq_cons.status, memory_order_acquire) !=
		    QCOW2_IPC_STATUS_OK)
		c->broken = true;
	return c->broken ? -EPROTO : 0;
}

int qcow2_ipc_client_submit(struct qcow2_ipc_client *c, const struct qcow2_ipc_req *req)
{
	struct qcow2_ipc_ctrl *ctrl = c->v.ctrl;
	uint64_t len = req->len;

	if (c->broken)
		return -EPROTO;
	switch (req->opcode) {
	case QCOW2_IPC_OP_READ:
	case QCOW2_IPC_OP_WRITE:
		if (req->flags || req->nr_segs == 0 || req->nr_segs > c->g.max_segs ||
		    !req->segs)
			return -EINVAL;
		len = 0;
		for (unsigned i = 0; i < req->nr_segs; i++)
			len += req->segs[i].len;
		break;
	case QCOW2_IPC_OP_WRITE_ZEROES:
		if (req->flags & ~QCOW2_IPC_F_UNMAP || req->nr_segs)
			return -EINVAL;
		break;
	case QCOW2_IPC_OP_FLUSH:
	case QCOW2_IPC_OP_DISCARD:
		if (req->flags || req->nr_segs)
			return -EINVAL;
		break;
	default:
		return -EINVAL;
	}
	if (c->nr_free == 0)
		return -EAGAIN;
	/* The service only moves sq_head forward, by at most what we published. */
	uint32_t head = atomic_load_explicit(&ctrl->sq_cons.sq_head, memory_order_acquire);
	if (c->sq_published - head > c->g.sq_entries) {
		c->broken = true;
		return -EPROTO;
	}
	if (c->sq_tail - head >= c->g.sq_entries)
		return -EAGAIN;

	uint32_t slot = c->free_slots[--c->nr_free];
	struct client_slot *s = &c->slots[slot];
	s->gen++;
	s->tag = req->tag;
	s->busy = 1;

	struct qcow2_ipc_sqe *sqe = &c->v.sq[c->sq_tail & c->v.sq_mask];
	sqe->opcode = req->opcode;
	sqe->flags = req->flags;
	sqe->nr_segs = req->nr_segs;
	sqe->slot = slot;
	sqe->tag = req->tag;
	sqe->gen = s->gen;
	sqe->reserved0 = 0;
	sqe->offset = req->offset;
	sqe->len = len;
	sqe->reserved1 = 0;
	if (req->nr_segs == 1) {
		sqe->seg = req->segs[0];
	} else {
		memset(&sqe->seg, 0, sizeof(sqe->seg));
		if (req->nr_segs > 1)
			memcpy(&c->v.segs[(size_t)slot * c->g.max_segs], req->segs,
			       req->nr_segs * sizeof(*req->segs));
	}
	c->sq_tail++;
	c->stats.submitted++;
	return 0;
}

int qcow2_ipc_client_commit(struct qcow2_ipc_client *c)
{
	struct qcow2_ipc_ctrl *ctrl = c->v.ctrl;

	if (c->broken)
		return -EPROTO;
	if (c->sq_tail == c->sq_published)
		return 0;
	/* Release: the entries (and segment tables) before the index. */
	atomic_store_explicit(&ctrl->sq_prod.sq_tail, c->sq_tail, memory_order_release);
	c->sq_published = c->sq_tail;
	if (!(c->flags & QCOW2_IPC_CLIENT_ALWAYS_KICK)) {
		/* Pairs with the service's fence between setting need_wakeup
		 * and rechecking sq_tail: one of us sees the other's store. */
		ring_full_fence();
		if (!atomic_load_explicit(&ctrl->sq_cons.sq_need_wakeup, memory_order_relaxed))
			return 0;
	}
	c->stats.kicks++;
	return ring_doorbell_ring(c->kick_fd);
}

int qcow2_ipc_client_reap(struct qcow2_ipc_client *c, struct qcow2_ipc_completion *out,
			  unsigned max, unsigned *nr)
{
	struct qcow2_ipc_ctrl *ctrl = c->v.ctrl;
	unsigned n = 0;

	*nr = 0;
	if (c->broken)
		return -EPROTO;
	uint32_t tail = atomic_load_explicit(&ctrl->cq_prod.cq_tail, memory_order_acquire);
	if (tail - c->cq_head > c->g.cq_entries) {
		c->broken = true;
		return -EPROTO;
	}
	uint32_t head = c->cq_head;
	while (head != tail && n < max) {
		struct qcow2_ipc_cqe cqe;
		ring_copy_in(&cqe, &c->v.cq[head & c->v.cq_mask], sizeof(cqe));
		head++;
		struct client_slot *s = cqe.slot < c->g.cq_entries ? &c->slots[cqe.slot] : NULL;
		if (!s || !s->busy || s->gen != cqe.gen || s->tag != cqe.tag) {
			c->stats.stale++;
			continue;
		}
		s->busy = 0;
		c->free_slots[c->nr_free++] = cqe.slot;
		out[n].tag = cqe.tag;
		out[n].res = cqe.res;
		n++;
	}
	if (head != c->cq_head) {
		c->cq_head = head;
		atomic_store_explicit(&ctrl->cq_cons.cq_head, head, memory_order_release);
	}
	c->stats.completed += n;
	*nr = n;
	return 0;
}

static bool client_cq_ready(struct qcow2_ipc_client *c)
{
	return atomic_load_explicit(&c->v.ctrl->cq_prod.cq_tail, memory_order_acquire) !=
	       c->cq_head;
}

int qcow2_ipc_client_prepare_sleep(struct qcow2_ipc_client *c)
{
	struct qcow2_ipc_ctrl *ctrl = c->v.ctrl;

	if (client_check_broken(c) < 0)
		return -EPROTO;
	/* Set the flag, fence, recheck: a completion published before the
	 * service could see our flag is caught here, one published after it
	 * comes with a call (pairs with the fence in the service's publish). */
	atomic_store_explicit(&ctrl->cq_cons.cq_need_wakeup, 1, memory_order_relaxed);
	ring_full_fence();
	if (client_cq_ready(c) || client_check_broken(c) < 0) {
		atomic_store_explicit(&ctrl->cq_cons.cq_need_wakeup, 0, memory_order_relaxed);
		return c->broken ? -EPROTO : -EAGAIN;
	}
	return 0;
}

int qcow2_ipc_client_woken(struct qcow2_ipc_client *c)
{
	ring_doorbell_drain(c->call_fd);
	atomic_store_explicit(&c->v.ctrl->cq_cons.cq_need_wakeup, 0, memory_order_relaxed);
	return client_check_broken(c);
}

int qcow2_ipc_client_wait(struct qcow2_ipc_client *c, unsigned spin, int timeout_ms)
{
	for (unsigned i = 0;; i++) {
		if (client_check_broken(c) < 0)
			return -EPROTO;
		if (client_cq_ready(c))
			return 0;
		if (i >= spin)
			break;
		ring_cpu_relax();
	}
	int ret = qcow2_ipc_client_prepare_sleep(c);
	if (ret == -EAGAIN)
		return 0;
	if (ret < 0)
		return ret;
	struct pollfd p = { .fd = c->call_fd, .events = POLLIN };
	int n;
	do
		n = poll(&p, 1, timeout_ms);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		ret = -errno;
	else if (n == 0)
		ret = -ETIMEDOUT;
	if (qcow2_ipc_client_woken(c) < 0)
		return -EPROTO;
	return ret;
}
