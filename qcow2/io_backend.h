/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * The engine's only way to touch files: queue an io_op, submit, reap.
 * Backends: io_uring (io_uring.c) and synchronous syscalls (io_sync.c).
 */
#ifndef QCOW2_IO_BACKEND_H
#define QCOW2_IO_BACKEND_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

/* IO_OP_PUNCH: deallocate [offset, offset+len) keeping the size (reads
 * zeros after); IO_OP_FALLOCATE: reserve [offset, offset+len), extending
 * the file (reads zeros). Neither has an iov. */
enum io_opcode { IO_OP_READ, IO_OP_WRITE, IO_OP_FSYNC, IO_OP_PUNCH,
		 IO_OP_FALLOCATE };

struct io_op;
/* result: bytes transferred (always the full length for reads: the backend
 * retries short reads and zero-fills past end of file) or a negative errno. */
typedef void (*io_complete_fn)(struct io_op *op, int64_t result);

struct io_op {
	enum io_opcode opcode;
	int fd;
	uint64_t offset;
	struct iovec *iov; /* owned by the op's owner; the backend may adjust
			    * it in place while retrying a short transfer */
	int iovcnt;
	uint64_t len;      /* sum of iov lengths */
	uint64_t done;     /* bytes already transferred (short transfers) */
	io_complete_fn complete;
	struct io_op *next; /* backend queue link */
};

struct io_backend;

struct io_backend_ops {
	const char *name;
	/* Queue an op; it is handed to the kernel by submit(). */
	void (*queue)(struct io_backend *be, struct io_op *op);
	int (*submit)(struct io_backend *be);
	/* Run completions of finished ops; with wait, block for at least one
	 * when some are in flight. Returns the number reaped or -errno. */
	int (*reap)(struct io_backend *be, bool wait);
	/* Perform op now, in the calling thread, outside the queue (open and
	 * close time IO, the file's space reservation): returns what its
	 * completion would get. The fault backend counts, fails and logs it
	 * like a queued op. op->complete is not called. */
	int64_t (*perform)(struct io_backend *be, struct io_op *op);
	/* eventfd signalled on completion (created on demand), or -errno */
	int (*event_fd)(struct io_backend *be);
	void (*destroy)(struct io_backend *be);
};

struct io_backend {
	const struct io_backend_ops *ops;
	unsigned inflight; /* queued + submitted, not yet completed */
};

struct qcow2_fault_opts;
/* fault: NULL for the plain sync backend */
int io_sync_new(const struct qcow2_fault_opts *fault, struct io_backend **out);
int io_uring_backend_new(unsigned depth, struct io_backend **out);

/* Shared by the backends: account `res` bytes of a transfer. Returns true when
 * the op is finished (its result stored in *final), false when the remainder
 * must be submitted again (op->iov/iovcnt/offset advanced). */
bool io_op_progress(struct io_op *op, int64_t res, int64_t *final);

/* One system call for op's remainder (preadv, pwritev, fdatasync,
 * fallocate): bytes transferred or -errno. */
int64_t io_op_syscall(struct io_op *op);

/* Perform op with system calls until it is finished (short transfers
 * resumed, EINTR retried): its final result. */
int64_t io_op_perform(struct io_op *op);

#endif
