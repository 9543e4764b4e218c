/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * request.c: a request from q2cq_read() and the others to its completion.
 *
 * Queueing takes a request struct (one of the queue's num-entries
 * preallocated ones, else a malloc'd one), checks it once, in req_check(),
 * and puts it on the pending list; an invalid one goes straight to the
 * done list with its error. q2cq_do_io() moves pending requests into the
 * ring in order while there is room (ring slots, and data area for the
 * buffers that are not in a mapped region), then reaps: a completion's tag
 * is its request's address (the ipc library accepts only the tag of the
 * request in flight in that slot, so a stale or forged one never reaches
 * us). A FUA write becomes a flush when it completes, and completes when
 * the flush does: the protocol has no FUA.
 */
#include "client.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- request structs ----------------------------------------------------------- */

static struct q2c_req *req_get(struct q2c_queue *q)
{
	struct q2c_req *r = q->free_list;

	if (r) {
		q->free_list = r->next;
		r->overflow = false;
	} else {
		/* More requests queued than the ring holds: they wait in the
		 * pending list, each in a struct of its own. */
		r = malloc(sizeof(*r));
		if (!r)
			return NULL;
		r->overflow = true;
		/* Listed, so that q2c_destroy() frees it wherever it is. */
		r->ov_prev = NULL;
		r->ov_next = q->overflow;
		if (q->overflow)
			q->overflow->ov_prev = r;
		q->overflow = r;
	}
	r->next = NULL;
	r->fua = false;
	r->bounced = false;
	r->ret = 0;
	r->msg = NULL;
	r->iovcnt = 0;
	r->iov = NULL;
	r->bounce_bytes = 0;
	return r;
}

void req_release(struct q2c_queue *q, struct q2c_req *r)
{
	if (r->overflow) {
		if (r->ov_prev)
			r->ov_prev->ov_next = r->ov_next;
		else
			q->overflow = r->ov_next;
		if (r->ov_next)
			r->ov_next->ov_prev = r->ov_prev;
		if (r->iov != &r->iov1)
			free(r->iov);
		free(r);
		return;
	}
	r->next = q->free_list;
	q->free_list = r;
}

/* ---- the one check ---------------------------------------------------------- */

static int req_invalid(struct q2c_req *r, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static int req_invalid(struct q2c_req *r, int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(r->msgbuf, sizeof(r->msgbuf), fmt, ap);
	va_end(ap);
	r->msg = r->msgbuf;
	r->ret = err;
	return err;
}

static const char *op_name(uint8_t op)
{
	switch (op) {
	case QCOW2_IPC_OP_READ: return "read";
	case QCOW2_IPC_OP_WRITE: return "write";
	case QCOW2_IPC_OP_FLUSH: return "flush";
	case QCOW2_IPC_OP_WRITE_ZEROES: return "write_zeroes";
	default: return "discard";
	}
}

/* Everything a request is held to, checked before it is queued: flags,
 * alignment, range, size, segments, buffers. Counts the bytes that will be
 * bounced through the data area. */
static int req_check(struct q2c_queue *q, struct q2c_req *r, const struct iovec *iov,
		     int iovcnt, uint32_t flags)
{
	const struct q2c_rules *ru = &q->rules;
	const char *op = op_name(r->op);
	uint32_t allowed = 0;

	if (r->op == QCOW2_IPC_OP_WRITE)
		allowed = Q2C_REQ_FUA;
	else if (r->op == QCOW2_IPC_OP_WRITE_ZEROES)
		allowed = Q2C_REQ_FUA | Q2C_REQ_NO_UNMAP;
	if (flags & ~allowed)
		return req_invalid(r, -EINVAL, "%s: flags 0x%x not allowed (only 0x%x)", op,
				   flags, allowed);
	if (r->op == QCOW2_IPC_OP_FLUSH)
		return 0;
	if (r->op == QCOW2_IPC_OP_READ || r->op == QCOW2_IPC_OP_WRITE) {
		uint64_t len = 0;
		if (iovcnt < 1 || iovcnt > (int)q->max_segs || !iov)
			return req_invalid(r, -EINVAL, "%s: %d buffers (1 to max-segments, %u)",
					   op, iovcnt, q->max_segs);
		for (int i = 0; i < iovcnt; i++) {
			if (((uintptr_t)iov[i].iov_base | iov[i].iov_len) & (ru->buf_align - 1))
				return req_invalid(r, -EINVAL, "%s: buffer %d (%p, %zu bytes) is "
						   "not aligned to buf-alignment (%u)", op, i,
						   iov[i].iov_base, iov[i].iov_len, ru->buf_align);
			if (iov[i].iov_len > ru->max_io - len) {
				len = ru->max_io + 1;   /* too long: said below */
				break;
			}
			len += iov[i].iov_len;
			if (iov[i].iov_len &&
			    !region_find(q->b, iov[i].iov_base, iov[i].iov_len))
				r->bounce_bytes += iov[i].iov_len;
		}
		r->len = len;
		if (len > ru->max_io)
			return req_invalid(r, -EINVAL, "%s: more than max-transfer (%llu bytes)",
					   op, (unsigned long long)ru->max_io);
		if (r->bounce_bytes > q->data_size)
			return req_invalid(r, -EINVAL, "%s: %llu bytes of buffers outside the "
					   "mapped regions, more than the data area they are "
					   "copied through (data-area-size, %llu bytes)", op,
					   (unsigned long long)r->bounce_bytes,
					   (unsigned long long)q->data_size);
	}
	if (r->len == 0)
		return req_invalid(r, -EINVAL, "%s: length 0", op);
	if ((r->start | r->len) & (ru->block_size - 1))
		return req_invalid(r, -EINVAL, "%s: offset %llu and length %llu must be "
				   "multiples of request-alignment (%u)", op,
				   (unsigned long long)r->start, (unsigned long long)r->len,
				   ru->block_size);
	if (r->start > ru->capacity || r->len > ru->capacity - r->start)
		return req_invalid(r, -EINVAL, "%s: %llu+%llu ends past the capacity (%llu)", op,
				   (unsigned long long)r->start, (unsigned long long)r->len,
				   (unsigned long long)ru->capacity);
	if (r->op != QCOW2_IPC_OP_READ && ru->read_only)
		return req_invalid(r, -EROFS, "%s: the image is read-only", op);
	return 0;
}

/* ---- queueing ------------------------------------------------------------------ */

static void queue_one(struct q2c_queue *q, uint8_t op, uint64_t start, uint64_t len,
		      const struct iovec *iov, int iovcnt, void *user_data, uint32_t flags)
{
	struct q2c_req *r;
	int n = 0;

	r = req_get(q);
	if (!r) {
		q->lost++;      /* said by the next q2cq_do_io() */
		return;
	}
	r->op = op;
	r->ipc_flags = op == QCOW2_IPC_OP_WRITE_ZEROES && !(flags & Q2C_REQ_NO_UNMAP)
			       ? QCOW2_IPC_F_UNMAP : 0;
	r->fua = flags & Q2C_REQ_FUA;
	r->user_data = user_data;
	r->start = start;
	r->len = len;
	if (req_check(q, r, iov, iovcnt, flags) < 0) {
		req_list_push(&q->done, r);
		return;
	}
	for (int i = 0; i < iovcnt; i++)
		n += iov[i].iov_len != 0;
	/* Our copy of the buffer list, without empty ones: the caller's
	 * array may be gone before the request is submitted. */
	if (n <= 1) {
		r->iov = &r->iov1;
	} else if (!r->overflow) {
		r->iov = &q->slot_iov[(size_t)(r - q->slots) * q->max_segs];
	} else {
		r->iov = malloc((size_t)n * sizeof(*r->iov));
		if (!r->iov) {
			r->iov = &r->iov1;
			req_invalid(r, -ENOMEM, "%s: out of memory", op_name(op));
			req_list_push(&q->done, r);
			return;
		}
	}
	for (int i = 0; i < iovcnt; i++)
		if (iov[i].iov_len)
			r->iov[r->iovcnt++] = iov[i];
	req_list_push(&q->pending, r);
}

static void req_queue(struct q2c_queue *q, uint8_t op, uint64_t start, uint64_t len,
		      const struct iovec *iov, int iovcnt, void *user_data, uint32_t flags)
{
	int saved = errno;      /* malloc may set it: the caller's stays */

	if (q)
		queue_one(q, op, start, len, iov, iovcnt, user_data, flags);
	errno = saved;
}

void q2cq_read(struct q2c_queue *q, uint64_t start, void *buf, size_t len, void *user_data,
	       uint32_t flags)
{
	struct iovec iov = { buf, len };

	req_queue(q, QCOW2_IPC_OP_READ, start, len, &iov, 1, user_data, flags);
}

void q2cq_write(struct q2c_queue *q, uint64_t start, const void *buf, size_t len,
		void *user_data, uint32_t flags)
{
	struct iovec iov = { (void *)buf, len };

	req_queue(q, QCOW2_IPC_OP_WRITE, start, len, &iov, 1, user_data, flags);
}

void q2cq_readv(struct q2c_queue *q, uint64_t start, const struct iovec *iov, int iovcnt,
		void *user_data, uint32_t flags)
{
	req_queue(q, QCOW2_IPC_OP_READ, start, 0, iov, iovcnt, user_data, flags);
}

void q2cq_writev(struct q2c_queue *q, uint64_t start, const struct iovec *iov, int iovcnt,
		 void *user_data, uint32_t flags)
{
	req_queue(q, QCOW2_IPC_OP_WRITE, start, 0, iov, iovcnt, user_data, flags);
}

void q2cq_write_zeroes(struct q2c_queue *q, uint64_t start, uint64_t len, void *user_data,
		       uint32_t flags)
{
	req_queue(q, QCOW2_IPC_OP_WRITE_ZEROES, start, len, NULL, 0, user_data, flags);
}

void q2cq_discard(struct q2c_queue *q, uint64_t start, uint64_t len, void *user_data,
		  uint32_t flags)
{
	req_queue(q, QCOW2_IPC_OP_DISCARD, start, len, NULL, 0, user_data, flags);
}

void q2cq_flush(struct q2c_queue *q, void *user_data, uint32_t flags)
{
	req_queue(q, QCOW2_IPC_OP_FLUSH, 0, 0, NULL, 0, user_data, flags);
}

/* ---- into the ring -------------------------------------------------------------- */

/* Copies the bounced buffers of r into its part of the data area (to_area)
 * or back out of it, in buffer order. */
static void bounce_copy(struct q2c_queue *q, struct q2c_req *r, bool to_area)
{
	uint8_t *area = q->data + (uint64_t)r->chunk * Q2C_CHUNK;

	for (uint32_t i = 0; i < r->iovcnt; i++) {
		const struct iovec *v = &r->iov[i];
		if (region_find(q->b, v->iov_base, v->iov_len))
			continue;
		if (to_area)
			memcpy(area, v->iov_base, v->iov_len);
		else
			memcpy(v->iov_base, area, v->iov_len);
		area += v->iov_len;
	}
}

/* The segments of r's buffers: in a mapped region as they are, others in
 * r's part of the data area; neighbours that touch are merged. */
static unsigned build_segs(struct q2c_queue *q, struct q2c_req *r)
{
	uint64_t bounce_off = (uint64_t)r->chunk * Q2C_CHUNK;
	unsigned n = 0;

	for (uint32_t i = 0; i < r->iovcnt; i++) {
		const struct iovec *v = &r->iov[i];
		const struct q2c_region *reg = region_find(q->b, v->iov_base, v->iov_len);
		struct qcow2_ipc_seg s = { .len = (uint32_t)v->iov_len };

		if (reg) {
			s.region = reg->ipc_index;
			s.off = (uint64_t)reg->fd_offset + (uint64_t)((uint8_t *)v->iov_base -
								      reg->addr);
		} else {
			s.region = 0;
			s.off = bounce_off;
			bounce_off += v->iov_len;
		}
		if (n && q->segs[n - 1].region == s.region &&
		    q->segs[n - 1].off + q->segs[n - 1].len == s.off) {
			q->segs[n - 1].len += s.len;
			continue;
		}
		q->segs[n++] = s;
	}
	return n;
}

/* One request into the ring: 0, -EAGAIN (no room now: it waits), -EPROTO. */
static int submit_one(struct q2c_queue *q, struct q2c_req *r)
{
	struct qcow2_ipc_req ir = { .opcode = r->op, .tag = (uint64_t)(uintptr_t)r };
	int ret;

	if (q->in_flight == q->num_entries)
		return -EAGAIN;
	if (r->op == QCOW2_IPC_OP_READ || r->op == QCOW2_IPC_OP_WRITE) {
		if (r->bounce_bytes) {
			uint32_t n = (uint32_t)((r->bounce_bytes + Q2C_CHUNK - 1) / Q2C_CHUNK);
			if (bounce_alloc(&q->bounce, n, &r->chunk) < 0)
				return -EAGAIN;
			r->nchunks = n;
			r->bounced = true;
			if (r->op == QCOW2_IPC_OP_WRITE)
				bounce_copy(q, r, true);
		}
		ir.nr_segs = (uint16_t)build_segs(q, r);
		ir.segs = q->segs;
	}
	if (r->op != QCOW2_IPC_OP_FLUSH) {
		ir.offset = r->start;
		ir.len = r->len;
		ir.flags = r->ipc_flags;
	}
	ret = qcow2_ipc_client_submit(q->ipc, &ir);
	if (ret < 0 && r->bounced) {
		bounce_free(&q->bounce, r->chunk, r->nchunks);
		r->bounced = false;
	}
	if (ret == -EINVAL) {
		/* req_check() let through what the ipc library refuses: our bug,
		 * but the request still completes. */
		req_invalid(r, -EINVAL, "%s: refused by the queue", op_name(r->op));
		req_list_pop(&q->pending);
		req_list_push(&q->done, r);
		return 0;
	}
	if (ret < 0)
		return ret;
	req_list_pop(&q->pending);
	q->in_flight++;
	return 0;
}

int req_submit_pending(struct q2c_queue *q)
{
	bool any = false;
	int ret = 0;

	/* In order: the head waits for room, and so does everything behind
	 * it, so that a large request is not overtaken for ever. */
	while (q->pending.head) {
		ret = submit_one(q, q->pending.head);
		if (ret < 0)
			break;
		any = true;
	}
	if (ret == -EAGAIN)
		ret = 0;
	if (ret == 0 && any)
		ret = qcow2_ipc_client_commit(q->ipc);
	if (ret < 0) {
		q->broken = true;
		return q2c_err(ret, "queue %d is broken (a protocol error: qcow2d's log "
			       "says which)", q->index);
	}
	return 0;
}

/* ---- completions ------------------------------------------------------------------ */

static const char *service_msg(struct q2c_req *r, int res)
{
	char eb[128];

	switch (-res) {
	case EIO:
		return "qcow2d: an IO error on the image (qcow2d's log and its io.error "
		       "event say where)";
	case ENOSPC:
		return "qcow2d: no space left on the image's file system";
	case EROFS:
		return "qcow2d: the image is read-only";
	case EUCLEAN:
		return "qcow2d: the image was found corrupt: writes are refused (image.info "
		       "says why; repair it offline with qcow2-img check -r all)";
	case EINVAL:
		return "qcow2d refused the request as invalid";
	default:
		snprintf(r->msgbuf, sizeof(r->msgbuf), "qcow2d: %s %s",
			 op_name(r->op), q2c_strerror(res, eb, sizeof(eb)));
		return r->msgbuf;
	}
}

static void req_complete(struct q2c_queue *q, struct q2c_req *r, int res)
{
	if (r->bounced) {
		if (r->op == QCOW2_IPC_OP_READ && res == 0 && !q->abandon)
			bounce_copy(q, r, false);
		bounce_free(&q->bounce, r->chunk, r->nchunks);
		r->bounced = false;
	}
	if (r->fua && res == 0 && r->op != QCOW2_IPC_OP_FLUSH) {
		/* Durable once a flush that follows its completion completes;
		 * it goes first, ahead of what waits. */
		r->op = QCOW2_IPC_OP_FLUSH;
		req_list_push_front(&q->pending, r);
		return;
	}
	/* qcow2d refuses flushes of a read-only image; with nothing ever
	 * written, every write is as durable as it will be (QEMU's flush of a
	 * read-only device succeeds too). */
	if (r->op == QCOW2_IPC_OP_FLUSH && res == -EROFS)
		res = 0;
	r->ret = res;
	if (res < 0)
		r->msg = service_msg(r, res);
	req_list_push(&q->done, r);
}

int req_reap(struct q2c_queue *q)
{
	unsigned n;
	int ret = qcow2_ipc_client_reap(q->ipc, q->cpl, q->num_entries, &n);

	if (ret < 0) {
		q->broken = true;
		return q2c_err(ret, "queue %d is broken (a protocol error: qcow2d's log "
			       "says which)", q->index);
	}
	for (unsigned i = 0; i < n; i++) {
		struct q2c_req *r = (struct q2c_req *)(uintptr_t)q->cpl[i].tag;
		q->in_flight--;
		req_complete(q, r, q->cpl[i].res);
	}
	return (int)n;
}
