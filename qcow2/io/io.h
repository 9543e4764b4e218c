/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * IO (io/): the engine's only way to touch files. IO backends (io_uring,
 * sync, fault), the context that owns one, host files with their O_DIRECT
 * alignment and QEMU-compatible locks, asynchronous reads and writes of a
 * file bounced when O_DIRECT cannot take the caller's buffers, and iovec
 * helpers. Knows nothing of qcow2.
 */
#ifndef QCOW2_IO_H
#define QCOW2_IO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>
#include <time.h>

#include "qcow2.h"

/* ---- Backends: queue an io_op, submit, reap --------------------------------- */

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

/* ---- The context, host files ------------------------------------------------ */

#define QCOW2_PRINTF(a, b) __attribute__((format(printf, a, b)))

/* Work finished without IO, whose callback must wait for the next
 * qcow2_ctx_process() (callbacks never run inside the call that queued). */
struct ctx_deferred {
	struct ctx_deferred *next;
	void (*run)(struct ctx_deferred *d);
};

struct qcow2_ctx {
	struct io_backend *be;
	enum qcow2_backend backend;
	struct ctx_deferred *deferred_head, **deferred_tail;
	unsigned ndeferred;
	int efd; /* the backend's eventfd once a caller asked for it */
};

void ctx_queue(struct qcow2_ctx *ctx, struct io_op *op);
void ctx_defer(struct qcow2_ctx *ctx, struct ctx_deferred *d);

/* An open host file and the alignment its IO needs. */
struct qfile {
	int fd;
	bool direct;        /* opened with O_DIRECT */
	uint32_t align;     /* offset/length alignment for O_DIRECT */
	uint32_t mem_align; /* buffer alignment for O_DIRECT */
	uint64_t size;      /* bytes, at open */
	bool no_sync;       /* QCOW2_OPEN_UNSAFE: fdatasync is skipped */
	char *path;
};

/* lock: take QEMU-compatible image locks (file_lock.c); a conflict fails
 * with -EBUSY and a message. */
int qfile_open(struct qfile *f, const char *path, bool rdwr, bool direct,
	       bool lock, char *err, size_t errlen);
/* Lock the image open at fd for reading, or writing (rdwr); 0 when the
 * file system has no OFD locks. */
int file_lock(int fd, bool rdwr, char *err, size_t errlen);
/* Drop those locks now (before close: see file_lock.c). */
void file_unlock(int fd);
void qfile_close(struct qfile *f);
/* Synchronous aligned read for open-time metadata (header, L1). */
int qfile_pread_sync(struct qfile *f, void *buf, uint64_t len, uint64_t off);
/* Writes, fdatasync and space reservation performed now, in the calling
 * thread, by the context's backend (the fault backend counts, fails and
 * logs them): for open and close time metadata, outside any request.
 * Writes are whole blocks; a misaligned buffer is bounced. 0 or -errno. */
int qfile_write_now(struct qcow2_ctx *ctx, struct qfile *f, const void *buf,
		    uint64_t len, uint64_t off);
int qfile_sync_now(struct qcow2_ctx *ctx, struct qfile *f);
int qfile_reserve_now(struct qcow2_ctx *ctx, struct qfile *f, uint64_t off,
		      uint64_t len);

/*
 * An asynchronous read from a qfile into an iovec, bounced through an
 * aligned buffer when O_DIRECT cannot take the caller's buffers.
 */
struct file_read;
typedef void (*file_read_done_fn)(struct file_read *fr, int err);

struct file_read {
	struct io_op op;
	struct iovec bounce_iov;
	uint8_t *bounce;        /* NULL when reading straight into iov */
	uint64_t bounce_skip;   /* wanted bytes start here in bounce */
	const struct iovec *dst;
	int dstcnt;
	uint64_t len;
	file_read_done_fn done;
	bool keep_bounce;       /* caller consumes and frees bounce */
};

/* Read [off, off+len) of f into iov (len bytes). iov may be modified by the
 * backend while retrying; it must stay valid until done() runs. With
 * keep_bounce, data stays in fr->bounce + fr->bounce_skip (iov ignored). */
int file_read_start(struct qcow2_ctx *ctx, struct qfile *f, uint64_t off,
		    struct iovec *iov, int iovcnt, uint64_t len,
		    bool keep_bounce, struct file_read *fr,
		    file_read_done_fn done);

/* Write len bytes of iov at off (block-aligned), bounced when O_DIRECT
 * cannot take the buffers. Uses struct file_read's fields. */
int file_write_start(struct qcow2_ctx *ctx, struct qfile *f, uint64_t off,
		     struct iovec *iov, int iovcnt, uint64_t len,
		     struct file_read *fw, file_read_done_fn done);

/* A path recorded in an image (backing file, data file) is relative to the
 * image's directory: the path to open (malloc'd), or NULL. */
char *path_beside(const char *image_path, const char *name);

/* Detect the block size and buffer alignment O_DIRECT needs for fd. */
void detect_alignment(int fd, uint32_t *align, uint32_t *mem_align);

/* ---- iovec helpers ---------------------------------------------------------- */

/* Number of segments [off, off+len) of iov spans. */
int iov_count_range(const struct iovec *iov, int cnt, uint64_t off,
		    uint64_t len);
/* Write the segments of [off, off+len) into dst (room for iov_count_range).
 * Returns the number written. */
int iov_slice(const struct iovec *iov, int cnt, uint64_t off, uint64_t len,
	      struct iovec *dst);
void iov_memset(const struct iovec *iov, int cnt, uint64_t off, int c,
		uint64_t len);
void iov_from_buf(const struct iovec *iov, int cnt, uint64_t off,
		  const void *buf, uint64_t len);
void iov_to_buf(const struct iovec *iov, int cnt, uint64_t off, void *buf,
		uint64_t len);
/* True when every segment's base is a multiple of mem_align and every
 * length a multiple of len_align. */
bool iov_aligned(const struct iovec *iov, int cnt, size_t mem_align,
		 size_t len_align);
uint64_t iov_total(const struct iovec *iov, int cnt);

/* The struct that contains member ptr points at. */
#define container_of(ptr, type, member) \
	((type *)((char *)(ptr) - offsetof(type, member)))

/* ---- Public structs' reserved words ---------------------------------------- */

/* Are the n reserved words of a caller's option struct all zero? A nonzero
 * one means a field this version does not know: the call fails (-EINVAL)
 * rather than ignore what the caller asked. */
#define RESERVED_ZERO(opts) reserved_zero((opts)->reserved, \
	sizeof((opts)->reserved) / sizeof((opts)->reserved[0]))

static inline bool reserved_zero(const uint64_t *r, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (r[i])
			return false;
	return true;
}

/* ---- Arithmetic (offsets and lengths) ------------------------------------------------------------- */

static inline uint64_t align_down(uint64_t v, uint64_t a)
{
	return v / a * a;
}

static inline uint64_t align_up(uint64_t v, uint64_t a)
{
	return (v + a - 1) / a * a;
}

/* ---- Time ------------------------------------------------------------------------------------------- */

/* CLOCK_MONOTONIC in ns: the clock of write-back latencies and of the
 * ages of unwritten metadata. */
static inline uint64_t monotonic_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#endif
