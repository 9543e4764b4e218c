/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* Short-transfer handling shared by all backends. */
#include <errno.h>
#include <string.h>

#include "io_backend.h"

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
	if (op->opcode == IO_OP_FSYNC || op->opcode == IO_OP_PUNCH) {
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
	/* A short transfer that stops at an offset O_DIRECT cannot resume
	 * from is end of file for reads (files end at any byte). */
	if ((op->offset + (uint64_t)res) % 512 != 0) {
		if (op->opcode == IO_OP_READ) {
			iov_advance(op, (uint64_t)res);
			iov_zero_all(op);
			*final = (int64_t)op->len;
		} else {
			*final = -EIO;
		}
		return true;
	}
	iov_advance(op, (uint64_t)res);
	op->offset += (uint64_t)res;
	return false;
}
