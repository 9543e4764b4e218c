/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* Short-transfer handling shared by all backends. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/io.h"

static void iov_advance(struct io_op *op, uint64_t n)
{
	while (n > 0 && op->iovcnt > 0) {
		if (n >= op->iov->iov_len) {
			n -= op->iov->iov_len;
			op->iov++;
			op->iovcnt--;
		} else {
			op->iov->iov_base = (char *)op->iov->iov_base + n;
			op->iov->iov_len -= n;
			n = 0;
		}
	}
}

static void iov_zero_all(struct io_op *op)
{
	for (int i = 0; i < op->iovcnt; i++)
		memset(op->iov[i].iov_base, 0, op->iov[i].iov_len);
}

bool io_op_progress(struct io_op *op, int64_t res, int64_t *final)
{
	if (res < 0) {
		*final = res;
		return true;
	}
	if (op->opcode == IO_OP_FSYNC || op->opcode == IO_OP_PUNCH ||
	    op->opcode == IO_OP_FALLOCATE) {
		*final = 0;
		return true;
	}
	op->done += (uint64_t)res;
	if (op->done >= op->len) {
		*final = (int64_t)op->len;
		return true;
	}
	if (res == 0) {
		if (op->opcode == IO_OP_READ) {
			/* End of file: the rest reads as zeros. */
			iov_advance(op, 0);
			iov_zero_all(op);
			*final = (int64_t)op->len;
		} else {
			*final = -ENOSPC;
		}
		return true;
	}
	/*
	 * A short transfer that stops off a sector boundary: at the end of a
	 * file (which ends at any byte) the rest of a read is zeros. Elsewhere
	 * (FUSE, NFS and other file systems may return less than asked) the
	 * transfer goes on from there, unless O_DIRECT cannot resume at that
	 * offset: then it fails rather than pretend.
	 */
	if ((op->offset + (uint64_t)res) % 512 != 0) {
		struct stat st;
		int fl;

		if (op->opcode == IO_OP_READ &&
		    (fstat(op->fd, &st) < 0 || !S_ISREG(st.st_mode) ||
		     op->offset + (uint64_t)res >= (uint64_t)st.st_size)) {
			iov_advance(op, (uint64_t)res);
			iov_zero_all(op);
			*final = (int64_t)op->len;
			return true;
		}
		fl = fcntl(op->fd, F_GETFL);
		if (fl < 0 || (fl & O_DIRECT)) {
			*final = -EIO;
			return true;
		}
	}
	iov_advance(op, (uint64_t)res);
	op->offset += (uint64_t)res;
	return false;
}

int64_t io_op_syscall(struct io_op *op)
{
	ssize_t r;

	switch (op->opcode) {
	case IO_OP_READ:
		r = preadv(op->fd, op->iov, op->iovcnt, (off_t)op->offset);
		break;
	case IO_OP_WRITE:
		r = pwritev(op->fd, op->iov, op->iovcnt, (off_t)op->offset);
		break;
	case IO_OP_FSYNC:
		r = fdatasync(op->fd);
		break;
	case IO_OP_PUNCH:
		r = fallocate(op->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			      (off_t)op->offset, (off_t)op->len);
		break;
	case IO_OP_FALLOCATE:
		r = fallocate(op->fd, 0, (off_t)op->offset, (off_t)op->len);
		break;
	default:
		return -EINVAL;
	}
	return r < 0 ? -errno : r;
}

int64_t io_op_perform(struct io_op *op)
{
	int64_t res, final;

	do {
		res = io_op_syscall(op);
	} while (res == -EINTR || !io_op_progress(op, res, &final));
	return final;
}
