/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * io_uring backend. Ops are prepared into SQEs as they are queued and handed
 * to the kernel in one io_uring_submit() per batch. When the SQ ring is full,
 * ops wait on an overflow list and are prepared as completions free room.
 */
#include <errno.h>
#include <liburing.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "io_backend.h"

struct io_ur {
	struct io_backend be;
	struct io_uring ring;
	unsigned prepared;      /* SQEs prepared but not yet submitted */
	struct io_op *over_head, **over_tail;
	int efd;
};

static struct io_ur *to_ur(struct io_backend *be)
{
	return (struct io_ur *)be;
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
					   (unsigned)op->iov[0].iov_len, op->offset);
		else
			io_uring_prep_readv(sqe, op->fd, op->iov,
					    (unsigned)op->iovcnt, op->offset);
		break;
	case IO_OP_WRITE:
		if (op->iovcnt == 1)
			io_uring_prep_write(sqe, op->fd, op->iov[0].iov_base,
					    (unsigned)op->iov[0].iov_len, op->offset);
		else
			io_uring_prep_writev(sqe, op->fd, op->iov,
					     (unsigned)op->iovcnt, op->offset);
		break;
	case IO_OP_FSYNC:
		io_uring_prep_fsync(sqe, op->fd, IORING_FSYNC_DATASYNC);
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

static int ur_submit(struct io_backend *be)
{
	struct io_ur *u = to_ur(be);
	int ret;

	for (;;) {
		if (u->prepared) {
			ret = io_uring_submit(&u->ring);
			if (ret < 0 && ret != -EINTR && ret != -EAGAIN &&
			    ret != -EBUSY)
				return ret;
			if (ret > 0)
				u->prepared -= (unsigned)ret < u->prepared ?
						       (unsigned)ret : u->prepared;
			if (ret <= 0)
				return 0; /* try again after reaping */
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

static int ur_reap(struct io_backend *be, bool wait)
{
	struct io_ur *u = to_ur(be);
	struct io_uring_cqe *cqe;
	int n = 0;

	if (u->efd >= 0) {
		uint64_t v;
		if (read(u->efd, &v, sizeof(v)) < 0) {
			/* EAGAIN: nothing signalled */
		}
	}
	for (;;) {
		unsigned head, seen = 0;
		int ret;

		io_uring_for_each_cqe(&u->ring, head, cqe) {
			struct io_op *op = io_uring_cqe_get_data(cqe);
			int64_t final;

			seen++;
			if (!io_op_progress(op, cqe->res, &final)) {
				/* resubmit the remainder of a short transfer */
				if (u->over_head || !ur_prep(u, op))
					ur_overflow_push(u, op);
				continue;
			}
			be->inflight--;
			n++;
			op->complete(op, final);
		}
		io_uring_cq_advance(&u->ring, seen);
		if (seen)
			ur_submit(be);
		if (n > 0 || !wait || be->inflight == 0)
			return n;
		ur_submit(be);
		ret = io_uring_wait_cqe(&u->ring, &cqe);
		if (ret < 0 && ret != -EINTR && ret != -ETIME)
			return ret;
	}
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
	/* CQ twice the SQ: completions of resubmitted ops never overflow. */
	p.flags = IORING_SETUP_CQSIZE;
	p.cq_entries = depth * 2;
	ret = io_uring_queue_init_params(depth, &u->ring, &p);
	if (ret < 0) {
		free(u);
		return ret;
	}
	u->be.ops = &ur_ops;
	u->over_tail = &u->over_head;
	u->efd = -1;
	*out = &u->be;
	return 0;
}
