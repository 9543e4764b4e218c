/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * qcow2-client.h: libqcow2-client, what a VMM links to do block IO on a
 * qcow2 image that qcow2d serves.
 *
 * The API has libblkio's shape (blkio.h), so that a VMM's libblkio glue
 * maps onto it one to one: struct q2c is struct blkio, struct q2c_queue is
 * struct blkioq, q2c_* is blkio_*, q2cq_* is blkioq_*, and the property
 * names are libblkio's where the meaning is the same.
 *
 * Life cycle:
 *
 *   q2c_create()         the handle; set properties ("path" or "name", ...)
 *   q2c_connect()        connect to qcow2d; open the image ("path") or find
 *                        the one open under "name"; read-only properties
 *                        ("capacity", "request-alignment"...) are now known
 *   q2c_set_int(b, "num-queues", N), q2c_map_mem_region()...
 *   q2c_start()          attach N queues (queue.attach + the ipc handshake)
 *   q2c_get_queue(b, i)  submit on queue i, from one thread
 *   q2c_destroy()        detach the queues, close what "path" opened
 *
 * Requests. q2cq_read() and the others queue a request and return at once;
 * q2cq_do_io() submits what is queued and collects completions. Each
 * request completes exactly once, with the user_data it was given, through
 * q2cq_do_io(): a request that is invalid (misaligned, past the end, too
 * long, bad flags) completes with -EINVAL and a message rather than failing
 * the call that queued it. ret is 0 or a negative errno: -EIO (the image or
 * its disk failed), -ENOSPC, -EROFS (read-only), -EUCLEAN (the image was
 * found corrupt: writes are refused), -EINVAL.
 *
 * Buffers. A buffer inside a region mapped with q2c_map_mem_region() goes
 * to the service as it is (zero copy: the service reads or writes that
 * memory directly). Any other buffer is copied through the queue's data
 * area (one copy; "needs-mem-regions" is false), so a simple caller need
 * not map anything. Either way the buffer stays the caller's and must not
 * be touched until the request completes. Buffers and offsets follow
 * "buf-alignment" and "request-alignment".
 *
 * Errors. Every function that can fail returns 0 (or what its comment
 * says) or a negative errno, never touches errno, and leaves a message for
 * a person in q2c_get_error_msg() on the calling thread.
 *
 * Threads. The library starts no threads and takes no locks on the data
 * path. A queue belongs to one thread at a time (one queue per VMM IO
 * thread); different queues may be used on different threads at once. The
 * handle's own functions (properties, regions, start, destroy) must not
 * run while another thread uses a queue, except q2c_get_* of read-only
 * properties, which may run on any thread after q2c_connect().
 *
 * Lifetimes. Strings the library returns from q2c_get_str() are the
 * caller's (free()); q2c_get_error_msg()'s until the thread's next call;
 * a completion's error_msg until the next q2cq_do_io() on that queue. A
 * queue lives until q2c_destroy(). Regions are the caller's: unmap them
 * only after q2c_destroy() (the service keeps its mapping while the queues
 * live).
 *
 * Service restart. When qcow2d stops answering (it was killed and started
 * again), q2cq_do_io() returns -ECONNRESET; q2c_reconnect() then attaches
 * the queues to the new service and resubmits every request that was in
 * flight, so that none is lost and none completes twice. As with a disk's
 * cache, a write that completed but was not yet followed by a flush may
 * be lost with the service that acknowledged it; a FUA write is not.
 */
#ifndef QCOW2_CLIENT_H
#define QCOW2_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>
#include <time.h>

#ifdef __cplusplus
extern "C" {
#endif

struct q2c;
struct q2c_queue;

/* Memory that requests may point into without a copy (blkio_mem_region).
 * fd is a memfd (or another shareable file) with addr mapped MAP_SHARED
 * from fd_offset; iova is unused (0). */
struct q2c_mem_region {
	void *addr;
	size_t len;
	uint64_t iova;
	int64_t fd_offset;
	int fd;
	uint32_t flags;         /* 0 */
};

/* One finished request (blkio_completion). */
struct q2c_completion {
	void *user_data;
	const char *error_msg;  /* NULL, or why it failed */
	int ret;                /* 0 or a negative errno */
	uint8_t reserved_[12];
};

/* Request flags. */
#define Q2C_REQ_FUA (1u << 0)       /* write, write_zeroes: durable when it
                                     * completes (a flush follows it) */
#define Q2C_REQ_NO_UNMAP (1u << 1)  /* write_zeroes: keep the space */

/* The message of this thread's last failed call ("" if none). */
const char *q2c_get_error_msg(void);

/* A handle, not yet connected. */
int q2c_create(struct q2c **out);
/* Detach every queue (requests still in flight are abandoned: their
 * buffers may still be written by the service until it has seen the
 * detach), close the image if q2c_connect() opened it, free everything
 * and set *b to NULL. NULL and *b == NULL are fine. */
void q2c_destroy(struct q2c **b);

/*
 * Properties (libblkio's names where libblkio has one):
 *
 *   name                 type  when           meaning
 *   socket               str   before connect qcow2d's control socket
 *                                             (default: $QCOW2D_SOCKET,
 *                                             else /run/qcow2d/qcow2d.sock
 *                                             as root, else
 *                                             $XDG_RUNTIME_DIR/qcow2d.sock)
 *   path                 str   before connect open this image (image.open);
 *                                             closed again by q2c_destroy()
 *   name                 str   before connect the image's name in qcow2d:
 *                                             with path, the name to open it
 *                                             under (default: generated);
 *                                             alone, attach to the image
 *                                             already open under that name
 *   read-only            bool  before connect open read-only
 *   num-queues           int   connect..start queues q2c_start() attaches
 *                                             (default 1)
 *   num-entries          int   connect..start requests in flight per queue
 *                                             (a power of two, default 128)
 *   data-area-size       int   connect..start bytes per queue for requests
 *                                             whose buffers are not in a
 *                                             mapped region (default 4 MiB,
 *                                             a multiple of 4096); such a
 *                                             request is at most this long
 *   capacity             u64   after connect  disk size in bytes
 *   request-alignment    int   after connect  offsets and lengths are
 *                                             multiples of it
 *   buf-alignment        int   after connect  buffer addresses are too
 *   optimal-buf-alignment int  after connect  alignment that avoids a
 *                                             copy in the service
 *   max-transfer         int   after connect  largest request in bytes
 *   max-segments         int   after connect  largest iovcnt
 *   max-queues           int   after connect  most queues for one image
 *   mem-region-alignment u64   after connect  addr, len and fd_offset of a
 *                                             region are multiples of it
 *   needs-mem-regions    bool  after connect  false: any buffer works
 *   image-name           str   after connect  the image's name in qcow2d
 *   stats                str   after connect  the image's statistics as
 *                                             JSON (image.stats' result)
 *
 * -ENOENT for an unknown name, -EACCES for one that cannot be set (or
 * read) now, -ENOTTY for the wrong type (as libblkio), -EINVAL for a bad
 * value.
 */
int q2c_get_bool(struct q2c *b, const char *name, bool *value);
int q2c_get_int(struct q2c *b, const char *name, int *value);
int q2c_get_uint64(struct q2c *b, const char *name, uint64_t *value);
int q2c_get_str(struct q2c *b, const char *name, char **value);
int q2c_set_bool(struct q2c *b, const char *name, bool value);
int q2c_set_int(struct q2c *b, const char *name, int value);
int q2c_set_uint64(struct q2c *b, const char *name, uint64_t value);
int q2c_set_str(struct q2c *b, const char *name, const char *value);

int q2c_connect(struct q2c *b);
int q2c_start(struct q2c *b);

/* Memory regions. alloc makes one (a sealed memfd, mapped shared) that
 * the caller then maps; free unmaps and closes what alloc made. map and
 * unmap only before q2c_start() (the regions travel in each queue's
 * handshake): -EBUSY after it. At most 15 regions. */
int q2c_alloc_mem_region(struct q2c *b, struct q2c_mem_region *region,
			 size_t len);
void q2c_free_mem_region(struct q2c *b, const struct q2c_mem_region *region);
int q2c_map_mem_region(struct q2c *b, const struct q2c_mem_region *region);
void q2c_unmap_mem_region(struct q2c *b, const struct q2c_mem_region *region);

/* Queue index (0..num-queues-1) after q2c_start(), else NULL. */
struct q2c_queue *q2c_get_queue(struct q2c *b, int index);

/* After -ECONNRESET: connect to the (restarted) service again, open the
 * image again when q2c_connect() had opened it, attach every queue again
 * and resubmit what was in flight. The queues keep their requests and
 * completions; call it from the thread that owns the handle, with no
 * queue in use by another thread. While qcow2d is not back (a failed
 * connect: -ECONNREFUSED, -ENOENT; -ECONNRESET when the dying service's
 * socket still took the connection) or the image is not open again
 * (-ENOENT; -EBUSY while qcow2d is opening it, e.g. from its
 * --state-file), call it again later (qcow2-bench retries for 60 s). */
int q2c_reconnect(struct q2c *b);

/* ---- requests (one queue, one thread) ----------------------------------- */

void q2cq_read(struct q2c_queue *q, uint64_t start, void *buf, size_t len,
	       void *user_data, uint32_t flags);
void q2cq_write(struct q2c_queue *q, uint64_t start, const void *buf,
		size_t len, void *user_data, uint32_t flags);
void q2cq_readv(struct q2c_queue *q, uint64_t start, const struct iovec *iov,
		int iovcnt, void *user_data, uint32_t flags);
void q2cq_writev(struct q2c_queue *q, uint64_t start, const struct iovec *iov,
		 int iovcnt, void *user_data, uint32_t flags);
/* Zeroes; the space may be deallocated unless Q2C_REQ_NO_UNMAP. */
void q2cq_write_zeroes(struct q2c_queue *q, uint64_t start, uint64_t len,
		       void *user_data, uint32_t flags);
void q2cq_discard(struct q2c_queue *q, uint64_t start, uint64_t len,
		  void *user_data, uint32_t flags);
/* Every write completed before it is durable when it completes. */
void q2cq_flush(struct q2c_queue *q, void *user_data, uint32_t flags);

/*
 * Submit the queued requests, then wait until at least min_completions
 * have completed (or *timeout passes: NULL waits without limit; it is
 * updated with the time left) and return up to max_completions of them in
 * completions. Returns how many it returned (>= 0), or a negative errno:
 * -ETIME when the timeout passed first (completions gathered so far stay
 * queued for the next call), -EINVAL for bad arguments (min_completions
 * above max_completions, or above the requests queued and not yet
 * returned: that wait could never end), -ECONNRESET when
 * the service is gone (see q2c_reconnect()), -EPROTO when the queue is
 * broken. min_completions 0 never waits.
 */
int q2cq_do_io(struct q2c_queue *q, struct q2c_completion *completions,
	       int min_completions, int max_completions,
	       struct timespec *timeout);

/* An eventfd that becomes readable when the queue may have completions
 * (for epoll, libuv or io_uring in the VMM's own loop). Read it (8 bytes)
 * to clear it, then call q2cq_do_io(q, ..., 0, max, NULL). With it
 * disabled (the default is enabled) the library may skip the service's
 * wake-ups while it spins. */
int q2cq_get_completion_fd(struct q2c_queue *q);
void q2cq_set_completion_fd_enabled(struct q2c_queue *q, bool enable);

#ifdef __cplusplus
}
#endif

#endif /* QCOW2_CLIENT_H */
