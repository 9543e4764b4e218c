/* queue_server.c: the consuming side of a queue (the service's end).
 *
 * Nothing in the shared region is trusted. Indices are read once and checked
 * against what the ring can hold; each entry is copied to local memory before
 * it is validated and translated; the service's own positions (sq_head,
 * cq_tail) are kept locally and only ever stored to the region. Any index
 * out of range marks the queue broken: every call then returns -EPROTO and the
 * client is told through the status word and its doorbell.
 *
 * In-flight table: before the service moves sq_head past an entry it records
 * a copy of it as TAKEN at that SQ position; before it publishes the entry's
 * completion it records COMPLETING at that CQ position; after publishing it
 * frees the record. A service attaching to the region later (after a crash)
 * resubmits exactly the records that are TAKEN below sq_head or COMPLETING at
 * or after cq_tail: nothing is lost and nothing is completed twice. */
#include "extstruct.h"
#include "handshake.h"
#include "ipc_testing.h"
#include "ring.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { ID_FREE = 0, ID_TAKEN, ID_COMPLETING };

struct server_id {
	uint64_t tag;
	uint32_t slot, gen;
	uint8_t state;
};

struct server_region {
	uint8_t *base;
	uint64_t size;
	void *mapping;          /* NULL for region 0 (inside the queue mapping) */
	uint64_t map_align;
};

struct qcow2_ipc_server {
	struct qcow2_ipc_geometry g;
	struct qcow2_ipc_layout l;
	struct ring_view v;
	void *base;
	uint64_t map_align;
	int queue_fd, kick_fd, call_fd;
	struct qcow2_ipc_server_opts opts;
	unsigned nr_regions;                    /* registered ones; region 0 extra */
	struct server_region regions[1 + QCOW2_IPC_MAX_REGIONS];

	uint32_t sq_head;                       /* local truth */
	uint32_t cq_tail, cq_published;
	bool broken;

	struct server_id *ids;                  /* cq_entries */
	uint32_t *free_ids, nr_free;
	uint32_t *completing, nr_completing;    /* completed, not yet published */
	uint32_t *recovered, nr_recovered, recovered_next;
	struct iovec *iov_pool;                 /* max_segs per id */

	struct qcow2_ipc_server_stats stats;
};

static int server_fail(struct qcow2_ipc_server *s)
{
	if (!s->broken) {
		s->broken = true;
		atomic_store_explicit(&s->v.ctrl->sq_cons.status, QCOW2_IPC_STATUS_BROKEN,
				      memory_order_release);
		ring_doorbell_ring(s->call_fd);
	}
	return -EPROTO;
}

void qcow2_ipc_server_close(struct qcow2_ipc_server *s)
{
	if (!s)
		return;
	ring_unmap(s->base, s->l.size, s->map_align);
	for (unsigned i = 1; i <= s->nr_regions; i++)
		ring_unmap(s->regions[i].mapping, s->regions[i].size, s->regions[i].map_align);
	int fds[] = { s->queue_fd, s->kick_fd, s->call_fd };
	for (unsigned i = 0; i < 3; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	free(s->ids);
	free(s->free_ids);
	free(s->completing);
	free(s->recovered);
	free(s->iov_pool);
	free(s);
}

static bool is_pow2_or_zero(uint64_t x)
{
	return (x & (x - 1)) == 0;
}

/* Reads the in-flight table left by an earlier service and decides, record by
 * record, what is still owed to the client. */
static int server_recover(struct qcow2_ipc_server *s)
{
	struct qcow2_ipc_ctrl *ctrl = s->v.ctrl;
	uint32_t sq_tail = atomic_load_explicit(&ctrl->sq_prod.sq_tail, memory_order_acquire);
	uint32_t cq_head = atomic_load_explicit(&ctrl->cq_cons.cq_head, memory_order_acquire);

	s->sq_head = atomic_load_explicit(&ctrl->sq_cons.sq_head, memory_order_relaxed);
	s->cq_tail = s->cq_published =
		atomic_load_explicit(&ctrl->cq_prod.cq_tail, memory_order_relaxed);
	if (atomic_load_explicit(&ctrl->sq_cons.status, memory_order_relaxed) !=
		    QCOW2_IPC_STATUS_OK ||
	    sq_tail - s->sq_head > s->g.sq_entries || s->cq_tail - cq_head > s->g.cq_entries)
		return -EPROTO;

	/* Decide everything before changing anything: a refused attach
	 * leaves the table as it found it. */
	for (uint32_t id = 0; id < s->g.cq_entries; id++) {
		uint64_t st = atomic_load_explicit(&s->v.inflight[id].state, memory_order_acquire);
		uint64_t kind = st >> 32;
		uint32_t pos = (uint32_t)st;
		bool owed;

		if (st == 0)
			owed = false;
		else if (kind == QCOW2_IPC_INFLIGHT_TAKEN)
			/* Below sq_head: taken. At or above: the entry is still
			 * in the SQ and will be taken again from there. */
			owed = (int32_t)(s->sq_head - pos) > 0;
		else if (kind == QCOW2_IPC_INFLIGHT_COMPLETING)
			/* Below cq_tail: its completion was published. */
			owed = (int32_t)(s->cq_tail - pos) <= 0;
		else
			return -EPROTO;
		if (owed) {
			s->ids[id].state = ID_TAKEN;
			s->recovered[s->nr_recovered++] = id;
		}
	}
	if (s->nr_recovered + (s->cq_tail - cq_head) > s->g.cq_entries)
		return -EPROTO;
	for (uint32_t id = 0; id < s->g.cq_entries; id++) {
		/* Owed records become TAKEN from a position below sq_head (the
		 * same meaning, whatever they said); the rest are freed. */
		uint64_t st = s->ids[id].state == ID_TAKEN
				      ? QCOW2_IPC_INFLIGHT_TAKEN << 32 | (uint32_t)(s->sq_head - 1)
				      : 0;
		atomic_store_explicit(&s->v.inflight[id].state, st, memory_order_release);
	}
	s->nr_free = 0;
	for (uint32_t id = s->g.cq_entries; id-- > 0;)
		if (s->ids[id].state == ID_FREE)
			s->free_ids[s->nr_free++] = id;
	s->stats.recovered = s->nr_recovered;
	atomic_store_explicit(&ctrl->sq_cons.sq_need_wakeup, 0, memory_order_relaxed);
	return 0;
}

int qcow2_ipc_server_open(struct qcow2_ipc_attach *att,
			  const struct qcow2_ipc_server_opts *caller_opts,
			  struct qcow2_ipc_server **out)
{
	struct qcow2_ipc_server_opts o;
	const struct qcow2_ipc_server_opts *opts = &o;
	struct qcow2_ipc_server *s;
	uint64_t size;
	int err;

	err = ext_check_in(att, sizeof(*att), EXT_ATTACH_VER0);
	if (err == 0)
		err = ext_copy_in(&o, sizeof(o), caller_opts, EXT_SERVER_OPTS_VER0);
	if (err < 0)
		return err;
	if (att->reserved0 || opts->reserved0)
		return -EINVAL;
	if (att->version != QCOW2_IPC_VERSION || att->nr_regions > QCOW2_IPC_MAX_REGIONS)
		return -EINVAL;
	if (opts->block_size == 0 || !is_pow2_or_zero(opts->block_size) ||
	    !is_pow2_or_zero(opts->buf_align))
		return -EINVAL;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->queue_fd = s->kick_fd = s->call_fd = -1;
	s->opts = *opts;
	if (s->opts.buf_align == 0)
		s->opts.buf_align = 1;
	if (s->opts.max_io_bytes == 0 || s->opts.max_io_bytes > UINT32_MAX)
		s->opts.max_io_bytes = UINT32_MAX;
	s->g = att->geometry;
	err = qcow2_ipc_compute_layout(&s->g, &s->l);
	if (err < 0)
		goto fail;
	err = -EINVAL;
	if (s->l.size != att->region_size)
		goto fail;

	/* Every fd is what it claims to be before anything is mapped. */
	err = handshake_check_memfd(att->queue_fd, &size);
	if (err < 0)
		goto fail;
	err = -EINVAL;
	if (size != s->l.size)
		goto fail;
	err = handshake_check_eventfd(att->kick_fd);
	if (err == 0)
		err = handshake_check_eventfd(att->call_fd);
	if (err < 0)
		goto fail;
	for (unsigned i = 0; i < att->nr_regions; i++) {
		err = handshake_check_memfd(att->region_fds[i], &size);
		if (err < 0)
			goto fail;
		s->regions[1 + i].size = size;
	}
	uint64_t mapped = s->l.size;
	for (unsigned i = 0; i < att->nr_regions; i++)
		mapped += s->regions[1 + i].size;      /* each < 2^63: no overflow in 17 */
	if ((opts->max_map_bytes && mapped > opts->max_map_bytes) ||
	    (opts->max_entries && s->g.cq_entries > opts->max_entries)) {
		err = -E2BIG;
		goto fail;
	}
	/* Non-blocking doorbells: a client that saturates the counter or
	 * never reads cannot block the service. */
	if (fcntl(att->kick_fd, F_SETFL, O_NONBLOCK) < 0 ||
	    fcntl(att->call_fd, F_SETFL, O_NONBLOCK) < 0) {
		err = -errno;
		goto fail;
	}

	s->ids = calloc(s->g.cq_entries, sizeof(*s->ids));
	s->free_ids = calloc(s->g.cq_entries, sizeof(*s->free_ids));
	s->completing = calloc(s->g.cq_entries, sizeof(*s->completing));
	s->recovered = calloc(s->g.cq_entries, sizeof(*s->recovered));
	s->iov_pool = calloc((size_t)s->g.cq_entries * s->g.max_segs, sizeof(*s->iov_pool));
	if (!s->ids || !s->free_ids || !s->completing || !s->recovered || !s->iov_pool) {
		err = -ENOMEM;
		goto fail;
	}

	err = ring_map(att->queue_fd, s->l.size, &s->base, &s->map_align);
	if (err < 0)
		goto fail;
	ring_view_init(&s->v, s->base, &s->g, &s->l);
	s->regions[0].base = s->v.data;
	s->regions[0].size = s->g.data_size;
	for (unsigned i = 0; i < att->nr_regions; i++) {
		err = ring_map(att->region_fds[i], s->regions[1 + i].size,
			       &s->regions[1 + i].mapping, &s->regions[1 + i].map_align);
		if (err < 0)
			goto fail;
		s->regions[1 + i].base = s->regions[1 + i].mapping;
		s->nr_regions++;
	}

	/* The header must describe the geometry the hello announced (a
	 * different memfd, or garbage, is refused here). */
	const struct qcow2_ipc_region_header *h = &s->v.ctrl->hdr;
	err = -EINVAL;
	if (h->magic != QCOW2_IPC_REGION_MAGIC || h->version != QCOW2_IPC_VERSION ||
	    h->sq_entries != s->g.sq_entries || h->cq_entries != s->g.cq_entries ||
	    h->max_segs != s->g.max_segs || h->data_size != s->g.data_size ||
	    h->region_size != s->l.size)
		goto fail;

	/* From here on the fds are ours (the call fd is needed by server_fail). */
	s->queue_fd = att->queue_fd;
	s->kick_fd = att->kick_fd;
	s->call_fd = att->call_fd;
	err = server_recover(s);
	if (err < 0) {
		s->queue_fd = s->kick_fd = s->call_fd = -1;
		goto fail;
	}
	att->queue_fd = att->kick_fd = att->call_fd = -1;
	for (unsigned i = 0; i < att->nr_regions; i++) {
		/* The mappings keep the memory; the fds are not needed. */
		close(att->region_fds[i]);
		att->region_fds[i] = -1;
	}
	att->nr_regions = 0;
	*out = s;
	return 0;
fail:
	qcow2_ipc_server_close(s);
	return err;
}

int qcow2_ipc_server_accept(int sock, const struct qcow2_ipc_server_opts *opts,
			    struct qcow2_ipc_server **out)
{
	struct qcow2_ipc_attach att = { .size = sizeof(att) };

	int err = qcow2_ipc_server_recv_hello(sock, &att);
	if (err == 0) {
		err = qcow2_ipc_server_open(&att, opts, out);
		qcow2_ipc_attach_close(&att);
	}
	/* A peer that went away or sent no hello gets no reply (and a
	 * non-blocking socket with nothing to read is the caller's bug). */
	if (err == -ECONNRESET || err == -ENOTSOCK || err == -EBADF || err == -EAGAIN)
		return err;
	int e = qcow2_ipc_server_send_reply(sock, QCOW2_IPC_VERSION, err);
	if (err == 0 && e < 0) {
		qcow2_ipc_server_close(*out);
		*out = NULL;
		return e;
	}
	return err;
}

/* Copies one segment out of the region and checks it lies in its region. */
static int server_translate(const struct qcow2_ipc_server *s, struct qcow2_ipc_seg seg,
			    struct iovec *iov)
{
	if (seg.region > s->nr_regions)
		return -EINVAL;
	const struct server_region *r = &s->regions[seg.region];
	if (seg.len == 0 || seg.off > r->size || seg.len > r->size - seg.off)
		return -EINVAL;
	if ((seg.off | seg.len) & (s->opts.buf_align - 1))
		return -EINVAL;
	iov->iov_base = r->base + seg.off;
	iov->iov_len = seg.len;
	return 0;
}

static bool seg_is_zero(const struct qcow2_ipc_seg *seg)
{
	return (seg->off | seg->len | seg->region) == 0;
}

static int server_check_range(const struct qcow2_ipc_server *s, const struct qcow2_ipc_sqe *e,
			      bool allow_empty)
{
	uint64_t mask = s->opts.block_size - 1;

	if ((e->len == 0 && !allow_empty) || ((e->offset | e->len) & mask))
		return -EINVAL;
	if (e->offset > s->opts.disk_size || e->len > s->opts.disk_size - e->offset)
		return -EINVAL;
	return 0;
}

int qcow2_ipc_server_validate(struct qcow2_ipc_server *s, const struct qcow2_ipc_sqe *sqe,
			      struct qcow2_ipc_server_req *req)
{
	/* sqe is a local copy: every field is read once, from here. The
	 * slot is checked for every entry, not only where it names a segment
	 * table: a client must not learn that an inline request may carry
	 * any slot. */
	if (sqe->reserved0 || sqe->reserved1 || sqe->slot >= s->g.cq_entries)
		return -EINVAL;
	req->opcode = sqe->opcode;
	req->flags = sqe->flags;
	req->offset = sqe->offset;
	req->len = sqe->len;
	req->tag = sqe->tag;
	req->nr_iov = 0;
	switch (sqe->opcode) {
	case QCOW2_IPC_OP_READ:
	case QCOW2_IPC_OP_WRITE: {
		if (sqe->flags || sqe->nr_segs == 0 || sqe->nr_segs > s->g.max_segs)
			return -EINVAL;
		if (sqe->len > s->opts.max_io_bytes || server_check_range(s, sqe, false) < 0)
			return -EINVAL;
		uint64_t sum = 0;
		if (sqe->nr_segs == 1) {
			if (server_translate(s, sqe->seg, &req->iov[0]) < 0)
				return -EINVAL;
			sum = sqe->seg.len;
		} else {
			if (!seg_is_zero(&sqe->seg))
				return -EINVAL;
			const struct qcow2_ipc_seg *table =
				&s->v.segs[(size_t)sqe->slot * s->g.max_segs];
			for (unsigned i = 0; i < sqe->nr_segs; i++) {
				struct qcow2_ipc_seg seg;
				ring_copy_in(&seg, &table[i], sizeof(seg));
				if (server_translate(s, seg, &req->iov[i]) < 0)
					return -EINVAL;
				sum += seg.len;
			}
		}
		if (sum != sqe->len)
			return -EINVAL;
		req->nr_iov = sqe->nr_segs;
		return 0;
	}
	case QCOW2_IPC_OP_FLUSH:
		if (sqe->flags || sqe->nr_segs || sqe->offset || sqe->len || !seg_is_zero(&sqe->seg))
			return -EINVAL;
		return 0;
	case QCOW2_IPC_OP_WRITE_ZEROES:
	case QCOW2_IPC_OP_DISCARD: {
		uint8_t allowed = sqe->opcode == QCOW2_IPC_OP_WRITE_ZEROES ? QCOW2_IPC_F_UNMAP : 0;
		if (sqe->flags & ~allowed || sqe->nr_segs || !seg_is_zero(&sqe->seg))
			return -EINVAL;
		return server_check_range(s, sqe, false);
	}
	default:
		return -EINVAL;
	}
}

/* Validates the copy of entry id; an invalid one is completed at once. */
static bool server_prepare(struct qcow2_ipc_server *s, uint32_t id, const struct qcow2_ipc_sqe *e,
			   struct qcow2_ipc_server_req *req)
{
	struct server_id *d = &s->ids[id];

	d->state = ID_TAKEN;
	d->tag = e->tag;
	d->slot = e->slot;
	d->gen = e->gen;
	req->id = id;
	req->iov = &s->iov_pool[(size_t)id * s->g.max_segs];
	if (qcow2_ipc_server_validate(s, e, req) == 0)
		return true;
	s->stats.invalid++;
	qcow2_ipc_server_complete(s, id, -EINVAL);
	return false;
}

static uint32_t server_cq_room(struct qcow2_ipc_server *s, uint32_t cq_head)
{
	/* Completions not yet consumed, plus requests that will need a CQE. */
	uint32_t owed = (s->cq_tail - cq_head) + (s->g.cq_entries - s->nr_free - s->nr_completing);
	return owed >= s->g.cq_entries ? 0 : s->g.cq_entries - owed;
}

int qcow2_ipc_server_take(struct qcow2_ipc_server *s, struct qcow2_ipc_server_req *out,
			  unsigned max, unsigned *nr)
{
	struct qcow2_ipc_ctrl *ctrl = s->v.ctrl;
	unsigned n = 0;

	*nr = 0;
	if (s->broken)
		return -EPROTO;
	while (n < max && s->recovered_next < s->nr_recovered) {
		uint32_t id = s->recovered[s->recovered_next++];
		struct qcow2_ipc_sqe e;
		ring_copy_in(&e, &s->v.inflight[id].sqe, sizeof(e));
		s->stats.taken++;
		if (server_prepare(s, id, &e, &out[n]))
			n++;
	}
	if (n == max) {
		*nr = n;
		return 0;
	}

	uint32_t tail = atomic_load_explicit(&ctrl->sq_prod.sq_tail, memory_order_acquire);
	uint32_t avail = tail - s->sq_head;
	if (avail > s->g.sq_entries)
		return server_fail(s);
	if (avail == 0) {
		*nr = n;
		return 0;
	}
	uint32_t cq_head = atomic_load_explicit(&ctrl->cq_cons.cq_head, memory_order_acquire);
	if (s->cq_tail - cq_head > s->g.cq_entries)
		return server_fail(s);
	uint32_t take = server_cq_room(s, cq_head);
	if (take > avail)
		take = avail;
	if (take > max - n)
		take = max - n;

	for (uint32_t i = 0; i < take; i++) {
		uint32_t pos = s->sq_head + i;
		uint32_t id = s->free_ids[--s->nr_free];
		struct qcow2_ipc_inflight *rec = &s->v.inflight[id];
		struct qcow2_ipc_sqe e;

		ring_copy_in(&e, &s->v.sq[pos & s->v.sq_mask], sizeof(e));
		rec->sqe = e;
		atomic_store_explicit(&rec->state, QCOW2_IPC_INFLIGHT_TAKEN << 32 | pos,
				      memory_order_release);
		ring_maybe_crash("take: recorded, sq_head not moved");
		s->stats.taken++;
		if (server_prepare(s, id, &e, &out[n]))
			n++;
	}
	if (take) {
		s->sq_head += take;
		/* Release: the in-flight records are written before the client
		 * may reuse the SQ entries they came from. */
		atomic_store_explicit(&ctrl->sq_cons.sq_head, s->sq_head, memory_order_release);
		ring_maybe_crash("take: sq_head moved");
	}
	*nr = n;
	return 0;
}

int qcow2_ipc_server_complete(struct qcow2_ipc_server *s, uint32_t id, int32_t res)
{
	if (s->broken)
		return -EPROTO;
	if (id >= s->g.cq_entries || s->ids[id].state != ID_TAKEN || res > 0)
		return -EINVAL;
	uint32_t cq_head = atomic_load_explicit(&s->v.ctrl->cq_cons.cq_head, memory_order_acquire);
	/* take() kept room for this completion; no room means the client
	 * moved cq_head backwards or past cq_tail. */
	if (s->cq_tail - cq_head >= s->g.cq_entries)
		return server_fail(s);

	struct server_id *d = &s->ids[id];
	struct qcow2_ipc_cqe *cqe = &s->v.cq[s->cq_tail & s->v.cq_mask];
	cqe->tag = d->tag;
	cqe->slot = d->slot;
	cqe->gen = d->gen;
	cqe->res = res;
	cqe->reserved = 0;
	ring_maybe_crash("complete: entry written, not recorded");
	atomic_store_explicit(&s->v.inflight[id].state,
			      QCOW2_IPC_INFLIGHT_COMPLETING << 32 | s->cq_tail,
			      memory_order_release);
	s->cq_tail++;
	d->state = ID_COMPLETING;
	s->completing[s->nr_completing++] = id;
	s->stats.completed++;
	return 0;
}

int qcow2_ipc_server_publish(struct qcow2_ipc_server *s)
{
	struct qcow2_ipc_ctrl *ctrl = s->v.ctrl;

	if (s->broken)
		return -EPROTO;
	if (s->cq_tail == s->cq_published)
		return 0;
	atomic_store_explicit(&ctrl->cq_prod.cq_tail, s->cq_tail, memory_order_release);
	s->cq_published = s->cq_tail;
	for (uint32_t i = 0; i < s->nr_completing; i++) {
		uint32_t id = s->completing[i];
		ring_maybe_crash("publish: cq_tail moved, record not freed");
		atomic_store_explicit(&s->v.inflight[id].state, 0, memory_order_release);
		s->ids[id].state = ID_FREE;
		s->free_ids[s->nr_free++] = id;
	}
	s->nr_completing = 0;
	if (!(s->opts.flags & QCOW2_IPC_SERVER_ALWAYS_CALL)) {
		/* Pairs with the client's fence in qcow2_ipc_client_wait. */
		ring_full_fence();
		if (!atomic_load_explicit(&ctrl->cq_cons.cq_need_wakeup, memory_order_relaxed))
			return 0;
	}
	s->stats.calls++;
	return ring_doorbell_ring(s->call_fd);
}

/* True when take() would return something (or find a protocol error). */
static bool server_has_work(struct qcow2_ipc_server *s)
{
	struct qcow2_ipc_ctrl *ctrl = s->v.ctrl;

	if (s->broken || s->recovered_next < s->nr_recovered)
		return true;
	uint32_t tail = atomic_load_explicit(&ctrl->sq_prod.sq_tail, memory_order_acquire);
	if (tail == s->sq_head)
		return false;
	uint32_t cq_head = atomic_load_explicit(&ctrl->cq_cons.cq_head, memory_order_acquire);
	if (tail - s->sq_head > s->g.sq_entries || s->cq_tail - cq_head > s->g.cq_entries)
		return true;
	return server_cq_room(s, cq_head) > 0;
}

int qcow2_ipc_server_prepare_sleep(struct qcow2_ipc_server *s)
{
	struct qcow2_ipc_ctrl *ctrl = s->v.ctrl;

	if (s->broken)
		return -EPROTO;
	atomic_store_explicit(&ctrl->sq_cons.sq_need_wakeup, 1, memory_order_relaxed);
	/* Pairs with the client's fence in commit (and reap): either we see
	 * its new sq_tail/cq_head here, or it sees our flag and kicks. */
	ring_full_fence();
	if (server_has_work(s)) {
		atomic_store_explicit(&ctrl->sq_cons.sq_need_wakeup, 0, memory_order_relaxed);
		return -EAGAIN;
	}
	return 0;
}

int qcow2_ipc_server_woken(struct qcow2_ipc_server *s)
{
	if (s->broken)
		return -EPROTO;
	int err = ring_doorbell_drain(s->kick_fd);
	atomic_store_explicit(&s->v.ctrl->sq_cons.sq_need_wakeup, 0, memory_order_relaxed);
	return err;
}

int qcow2_ipc_server_wait(struct qcow2_ipc_server *s, unsigned spin, int timeout_ms)
{
	for (unsigned i = 0; i < spin; i++) {
		if (server_has_work(s))
			return s->broken ? -EPROTO : 0;
		ring_cpu_relax();
	}
	int err = qcow2_ipc_server_prepare_sleep(s);
	if (err == -EAGAIN)
		return 0;
	if (err < 0)
		return err;
	struct pollfd p = { .fd = s->kick_fd, .events = POLLIN };
	int n;
	do
		n = poll(&p, 1, timeout_ms);
	while (n < 0 && errno == EINTR);
	err = qcow2_ipc_server_woken(s);
	if (n < 0)
		return -errno;
	if (err < 0)
		return err;
	return n == 0 ? -ETIMEDOUT : 0;
}

int qcow2_ipc_server_kick_fd(const struct qcow2_ipc_server *s)
{
	return s->kick_fd;
}

int qcow2_ipc_server_region(const struct qcow2_ipc_server *s, unsigned idx, void **base,
			    uint64_t *size)
{
	if (idx > s->nr_regions)
		return -EINVAL;
	*base = s->regions[idx].base;
	*size = s->regions[idx].size;
	return 0;
}

unsigned qcow2_ipc_server_in_flight(const struct qcow2_ipc_server *s)
{
	return s->g.cq_entries - s->nr_free;
}

int qcow2_ipc_server_broken(const struct qcow2_ipc_server *s)
{
	return s->broken ? -EPROTO : 0;
}

int qcow2_ipc_server_get_stats(const struct qcow2_ipc_server *s,
			       struct qcow2_ipc_server_stats *out)
{
	return ext_copy_out(out, &s->stats, sizeof(s->stats), EXT_SERVER_STATS_VER0);
}
