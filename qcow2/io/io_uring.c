/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * io_uring backend. Ops are prepared into SQEs as they are queued and handed
 * to the kernel in one io_uring_submit() per batch. When the SQ ring is full,
 * ops wait on an overflow list and are prepared as completions free room.
 */
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "io/io.h"

struct io_ur {
	struct io_backend be;
	struct io_uring ring;
	unsigned prepared;      /* SQEs prepared but not yet submitted */
	bool defer_taskrun;     /* completions are posted only when we ask */
	struct io_op *over_head, **over_tail;
	int efd;
};

static struct io_ur *to_ur(struct io_backend *be)
{
	return (struct io_ur *)be;
}

/* An SQE's length is 32 bits, and the kernel moves at most 2 GiB - 4 KiB
 * a call: a longer single segment goes in pieces of this size (a short
 * transfer that io_op_progress() resumes). */
#define UR_MAX_SEGMENT (1u << 30)

static unsigned seg_len(const struct iovec *iov)
{
	return iov->iov_len > UR_MAX_SEGMENT ? UR_MAX_SEGMENT :
					       (unsigned)iov->iov_len;
}

static bool ur_prep(struct io_ur *u, struct io_op *op)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);

	if (!sqe)
		return false;
	switch (op->opcode) {
	case IO_OP_READ:
		if (op->iovcnt == 1)
			io_uring_prep_read(sqe, op->fd, op->iov[0].iov_base,
					   seg_len(&op->iov[0]), op->offset);
		else
			io_uring_prep_readv(sqe, op->fd, op->iov,
					    (unsigned)op->iovcnt, op->offset);
		break;
	case IO_OP_WRITE:
		if (op->iovcnt == 1)
			io_uring_prep_write(sqe, op->fd, op->iov[0].iov_base,
					    seg_len(&op->iov[0]), op->offset);
		else
			io_uring_prep_writev(sqe, op->fd, op->iov,
					     (unsigned)op->iovcnt, op->offset);
		break;
	case IO_OP_FSYNC:
		io_uring_prep_fsync(sqe, op->fd, IORING_FSYNC_DATASYNC);
		break;
	case IO_OP_PUNCH:
		io_uring_prep_fallocate(sqe, op->fd,
					FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
					op->offset, op->len);
		break;
	case IO_OP_FALLOCATE:
		io_uring_prep_fallocate(sqe, op->fd, 0, op->offset, op->len);
		break;
	}
	io_uring_sqe_set_data(sqe, op);
	u->prepared++;
	return true;
}

static void ur_overflow_push(struct io_ur *u, struct io_op *op)
{
	op->next = NULL;
	*u->over_tail = op;
	u->over_tail = &op->next;
}

static void ur_queue(struct io_backend *be, struct io_op *op)
{
	struct io_ur *u = to_ur(be);

	be->inflight++;
	if (u->over_head || !ur_prep(u, op))
		ur_overflow_push(u, op);
}

/* Hand prepared SQEs to the kernel; with get_events (and deferred task
 * running) also collect completions that are ready, in the same syscall. */
static int ur_flush(struct io_ur *u, bool get_events)
{
	int ret;

	for (;;) {
		if (u->prepared || (get_events && u->defer_taskrun)) {
			ret = get_events && u->defer_taskrun ?
				      io_uring_submit_and_get_events(&u->ring) :
				      io_uring_submit(&u->ring);
			if (ret < 0 && ret != -EINTR && ret != -EAGAIN &&
			    ret != -EBUSY)
				return ret;
			if (ret > 0)
				u->prepared -= (unsigned)ret < u->prepared ?
						       (unsigned)ret : u->prepared;
			if (ret < 0 || u->prepared)
				return 0; /* kernel busy: try after reaping */
			get_events = false;
		}
		/* Move overflowed ops into the room just freed. */
		if (!u->over_head)
			return 0;
		while (u->over_head) {
			struct io_op *op = u->over_head;
			if (!ur_prep(u, op))
				break;
			u->over_head = op->next;
			if (!u->over_head)
				u->over_tail = &u->over_head;
		}
		if (!u->prepared)
			return 0;
	}
}

static int ur_submit(struct io_backend *be)
{
	return ur_flush(to_ur(be), false);
}

/*
 * Completions are handled one at a time, and whatever IO a callback queued
 * is submitted before the next completion is looked at: the device queue
 * refills as soon as a request completes (measured: batching resubmission
 * until the whole CQ batch was processed cost ~25% IOPS at depth 32).
 */
static int ur_reap(struct io_backend *be, bool wait)
{
	struct io_ur *u = to_ur(be);
	struct io_uring_cqe *cqe;
	bool polled = false;
	int n = 0, ret;

	if (u->efd >= 0) {
		uint64_t v;
		if (read(u->efd, &v, sizeof(v)) < 0) {
			/* EAGAIN: nothing signalled */
		}
	}
	for (;;) {
		while (io_uring_peek_cqe(&u->ring, &cqe) == 0) {
			struct io_op *op = io_uring_cqe_get_data(cqe);
			int64_t res = cqe->res, final;

			io_uring_cqe_seen(&u->ring, cqe);
			if (!io_op_progress(op, res, &final)) {
				/* resubmit the remainder of a short transfer */
				if (u->over_head || !ur_prep(u, op))
					ur_overflow_push(u, op);
			} else {
				be->inflight--;
				n++;
				op->complete(op, final);
			}
			if (u->prepared || u->over_head) {
				ret = ur_flush(u, true);
				if (ret < 0)
					return ret;
			}
		}
		if (be->inflight == 0)
			return n;
		if (u->defer_taskrun && !polled) {
			/* With deferred task running, completions are posted
			 * only when the issuer enters the kernel to get them,
			 * and the event fd read above may have announced such
			 * work: enter once per reap, even when completions
			 * (posted inline at submission) were already there,
			 * or that work waits, unannounced, for the next
			 * unrelated entry. */
			polled = true;
			ret = ur_flush(u, true);
		} else if (n > 0 || !wait) {
			return n;
		} else {
			/* Submit what is prepared and wait, in one syscall. */
			ret = io_uring_submit_and_wait(&u->ring, 1);
			if (ret > 0)
				u->prepared -= (unsigned)ret < u->prepared ?
						       (unsigned)ret : u->prepared;
		}
		if (ret < 0 && ret != -EINTR && ret != -ETIME && ret != -EAGAIN &&
		    ret != -EBUSY)
			return ret;
	}
}

static int64_t ur_perform(struct io_backend *be, struct io_op *op)
{
	(void)be;
	return io_op_perform(op);
}

static int ur_event_fd(struct io_backend *be)
{
	struct io_ur *u = to_ur(be);
	int ret;

	if (u->efd < 0) {
		int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (fd < 0)
			return -errno;
		ret = io_uring_register_eventfd(&u->ring, fd);
		if (ret < 0) {
			close(fd);
			return ret;
		}
		u->efd = fd;
	}
	return u->efd;
}

static void ur_destroy(struct io_backend *be)
{
	struct io_ur *u = to_ur(be);

	io_uring_queue_exit(&u->ring);
	if (u->efd >= 0)
		close(u->efd);
	free(u);
}

static const struct io_backend_ops ur_ops = {
	.name = "io_uring",
	.queue = ur_queue,
	.submit = ur_submit,
	.reap = ur_reap,
	.perform = ur_perform,
	.event_fd = ur_event_fd,
	.destroy = ur_destroy,
};

int io_uring_backend_new(unsigned depth, struct io_backend **out)
{
	struct io_ur *u = calloc(1, sizeof(*u));
	struct io_uring_params p = { 0 };
	int ret;

	if (!u)
		return -ENOMEM;
	/*
	 * One thread owns the ring: let the kernel run completion work when
	 * we enter it (DEFER_TASKRUN) instead of interrupting us for each
	 * completion. Older kernels lack the flags: fall back step by step.
	 * CQ twice the SQ: completions of resubmitted ops never overflow.
	 */
	static const unsigned flag_sets[] = {
		IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
		IORING_SETUP_COOP_TASKRUN,
		0,
	};
	ret = -EINVAL;
	for (size_t i = 0; i < sizeof(flag_sets) / sizeof(flag_sets[0]); i++) {
		memset(&p, 0, sizeof(p));
		p.flags = IORING_SETUP_CQSIZE | flag_sets[i];
		p.cq_entries = depth * 2;
		ret = io_uring_queue_init_params(depth, &u->ring, &p);
		if (ret != -EINVAL)
			break;
	}
	if (ret < 0) {
		free(u);
		return ret;
	}
	u->defer_taskrun = p.flags & IORING_SETUP_DEFER_TASKRUN;
	u->be.ops = &ur_ops;
	u->over_tail = &u->over_head;
	u->efd = -1;
	*out = &u->be;
	return 0;
}
