/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * Synchronous backend: submit() performs queued ops with preadv/pwritev/
 * fdatasync; reap() runs their callbacks. Callbacks never run inside queue()
 * or submit(), so callers see the same ordering as with io_uring.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "io/io.h"
#include "io/qcow2_fault.h"

struct io_sync {
	struct io_backend be;
	struct io_op *queued_head, **queued_tail;
	struct io_op *done_head, **done_tail;
	int efd;
	bool fault;
	struct qcow2_fault_opts fo;
	uint64_t counted;  /* operations counted toward fail_at */
	bool failing;
	struct io_op *held;     /* the write held back (hold_write) */
	bool hold_done;
	unsigned fsyncs_since;  /* since it was held */
};

static struct io_sync *to_sync(struct io_backend *be)
{
	return (struct io_sync *)be;
}

static void sync_queue(struct io_backend *be, struct io_op *op)
{
	struct io_sync *s = to_sync(be);

	op->next = NULL;
	*s->queued_tail = op;
	s->queued_tail = &op->next;
	be->inflight++;
}

static void fault_log(struct io_sync *s, struct io_op *op, int64_t res)
{
	struct qcow2_fault_record rec = { 0 };

	if (s->fo.log_fd < 0 || res < 0 || op->opcode == IO_OP_READ ||
	    op->opcode == IO_OP_FALLOCATE)
		return; /* a reservation reads zeros, as the file did */
	rec.type = op->opcode == IO_OP_FSYNC ? QCOW2_FAULT_REC_FSYNC :
					       QCOW2_FAULT_REC_WRITE;
	rec.fd = op->fd;
	rec.offset = op->offset;
	rec.len = op->opcode == IO_OP_WRITE ? (uint64_t)res :
		  op->opcode == IO_OP_PUNCH ? op->len : 0;
	if (write(s->fo.log_fd, &rec, sizeof(rec)) != sizeof(rec))
		return;
	if (op->opcode == IO_OP_PUNCH) {
		/* A punched range reads zeros: logged as a write of zeros. */
		static const uint8_t zeros[4096];
		for (uint64_t left = rec.len; left;) {
			size_t n = left < sizeof(zeros) ? left : sizeof(zeros);
			if (write(s->fo.log_fd, zeros, n) != (ssize_t)n)
				return;
			left -= n;
		}
	}
	if (op->opcode == IO_OP_WRITE) {
		uint64_t left = rec.len;
		for (int i = 0; i < op->iovcnt && left; i++) {
			size_t n = op->iov[i].iov_len < left ? op->iov[i].iov_len : left;
			if (write(s->fo.log_fd, op->iov[i].iov_base, n) != (ssize_t)n)
				return;
			left -= n;
		}
	}
}

/* Should this operation fail (fault backend)? */
static bool fault_hit(struct io_sync *s, struct io_op *op)
{
	unsigned bit = op->opcode == IO_OP_READ ? QCOW2_FAULT_READ :
		       op->opcode == IO_OP_FSYNC ? QCOW2_FAULT_FSYNC :
		       op->opcode == IO_OP_WRITE ? QCOW2_FAULT_WRITE :
						   QCOW2_FAULT_FALLOCATE;

	if (!s->fault || !(s->fo.fail_ops & bit))
		return false;
	if (s->failing)
		return s->fo.fail_persist;
	if (s->fo.fail_at && ++s->counted == s->fo.fail_at) {
		s->failing = true;
		return true;
	}
	return false;
}

/* One system call, with the fault backend's short reads. */
static int64_t sync_do(struct io_sync *s, struct io_op *op)
{
	if (s->fault && s->fo.short_read && op->opcode == IO_OP_READ &&
	    op->iovcnt > 0 && op->iov[0].iov_len > s->fo.short_read) {
		ssize_t r = pread(op->fd, op->iov[0].iov_base, s->fo.short_read,
				  (off_t)op->offset);
		return r < 0 ? -errno : r;
	}
	return io_op_syscall(op);
}

/* The whole op, faults and log included: its final result. */
static int64_t sync_perform_op(struct io_sync *s, struct io_op *op)
{
	int64_t res, final;

	do {
		if (fault_hit(s, op)) {
			res = -(int64_t)(s->fo.fail_errno ? s->fo.fail_errno : EIO);
		} else {
			res = sync_do(s, op);
			if (s->fault && res >= 0)
				fault_log(s, op, res);
		}
	} while (res == -EINTR || !io_op_progress(op, res, &final));
	return final;
}

static int64_t sync_perform(struct io_backend *be, struct io_op *op)
{
	return sync_perform_op(to_sync(be), op);
}

static int sync_submit(struct io_backend *be)
{
	struct io_sync *s = to_sync(be);
	struct io_op *op;
	bool any = false;

	while ((op = s->queued_head) != NULL || s->held) {
		if (s->held && s->fsyncs_since >= s->fo.hold_fsyncs) {
			op = s->held; /* its time has come */
			s->held = NULL;
		} else if (!op) {
			break; /* only the held write is left, still held */
		} else {
			s->queued_head = op->next;
			if (!s->queued_head)
				s->queued_tail = &s->queued_head;
			if (s->fault && s->fo.hold_write && !s->hold_done &&
			    op->opcode == IO_OP_WRITE &&
			    op->offset == s->fo.hold_offset) {
				s->held = op;
				s->hold_done = true;
				s->fsyncs_since = 0;
				continue;
			}
			if (s->held && op->opcode == IO_OP_FSYNC)
				s->fsyncs_since++;
			if (s->held && op->opcode == IO_OP_WRITE &&
			    op->offset == s->fo.hold_offset)
				s->fsyncs_since = s->fo.hold_fsyncs; /* overtaken */
		}
		/* stash the result in `done`'s place: no longer needed */
		op->done = (uint64_t)sync_perform_op(s, op);
		op->next = NULL;
		*s->done_tail = op;
		s->done_tail = &op->next;
		any = true;
	}
	if (any && s->efd >= 0) {
		uint64_t one = 1;
		if (write(s->efd, &one, sizeof(one)) < 0) {
			/* the counter cannot overflow in practice; ignore */
		}
	}
	return 0;
}

static int sync_reap(struct io_backend *be, bool wait)
{
	struct io_sync *s = to_sync(be);
	struct io_op *list;
	int n = 0;

	if (wait && !s->done_head)
		sync_submit(be);
	if (s->efd >= 0) {
		uint64_t v;
		if (read(s->efd, &v, sizeof(v)) < 0) {
			/* EAGAIN: nothing signalled */
		}
	}
	/* Take the list first: callbacks may queue and complete new ops. */
	list = s->done_head;
	s->done_head = NULL;
	s->done_tail = &s->done_head;
	while (list) {
		struct io_op *op = list;
		list = op->next;
		be->inflight--;
		n++;
		op->complete(op, (int64_t)op->done);
	}
	return n;
}

static int sync_event_fd(struct io_backend *be)
{
	struct io_sync *s = to_sync(be);

	if (s->efd < 0) {
		s->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (s->efd < 0)
			return -errno;
	}
	return s->efd;
}

static void sync_destroy(struct io_backend *be)
{
	struct io_sync *s = to_sync(be);

	if (s->efd >= 0)
		close(s->efd);
	free(s);
}

static const struct io_backend_ops sync_ops = {
	.name = "sync",
	.queue = sync_queue,
	.submit = sync_submit,
	.reap = sync_reap,
	.perform = sync_perform,
	.event_fd = sync_event_fd,
	.destroy = sync_destroy,
};

int io_sync_new(const struct qcow2_fault_opts *fault, struct io_backend **out)
{
	struct io_sync *s = calloc(1, sizeof(*s));

	if (!s)
		return -ENOMEM;
	if (fault) {
		s->fault = true;
		s->fo = *fault;
	} else {
		s->fo.log_fd = -1;
	}
	s->be.ops = &sync_ops;
	s->queued_tail = &s->queued_head;
	s->done_tail = &s->done_head;
	s->efd = -1;
	*out = &s->be;
	return 0;
}
