/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * client.h: libqcow2-client's private header: the handle, its queues and
 * their requests, and what the files of client/ call in one another.
 *
 *   error.c     the thread's error message
 *   rpc.c       JSON-RPC on the control socket (jansson)
 *   handle.c    the handle's life: create, connect, start, reconnect,
 *               destroy
 *   props.c     properties
 *   mem.c       memory regions
 *   bounce.c    the allocator of a queue's data area
 *   queue.c     a queue: attach, wait, do_io, the completion fd
 *   request.c   requests: queueing, validation, submission, completion
 */
#ifndef QCOW2_CLIENT_PRIV_H
#define QCOW2_CLIENT_PRIV_H

#include "qcow2-client.h"
#include "qcow2_ipc.h"

#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <sys/types.h>

#define Q2C_MAX_REGIONS 15              /* mapped by the caller */
#define Q2C_MAX_SEGS 64u                /* our max-segments */
#define Q2C_MAX_QUEUES 64               /* qcow2d's queues per image */
#define Q2C_CHUNK 4096u                 /* the data area's allocation unit */
#define Q2C_MSG 192                     /* a request's own message */
/* Polls of the CQ before a wait sleeps: a few microseconds, enough to
 * catch a service that answers at once without burning a core. */
#define Q2C_SPIN 256u
/* Control calls: a reply later than this means the service is stuck. An
 * image.open may rebuild a dirty image's refcounts: minutes at worst. */
#define Q2C_RPC_TIMEOUT_MS (10 * 60 * 1000)
/* The queue.attach and hello exchange (the service drops a hello after 5 s). */
#define Q2C_ATTACH_TIMEOUT_MS 30000
/* q2c_destroy(): how long the queues' requests in flight may take. */
#define Q2C_DESTROY_WAIT_MS 5000

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield");
#endif
}

/* ---- error.c ---------------------------------------------------------------- */

/* Sets this thread's message; returns err (a negative errno). */
int q2c_err(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int q2c_verr(int err, const char *fmt, va_list ap);
/* Thread-safe strerror. */
const char *q2c_strerror(int err, char *buf, size_t len);

/* ---- rpc.c ------------------------------------------------------------------ */

/* $QCOW2D_SOCKET, else /run/qcow2d/qcow2d.sock as root, else
 * $XDG_RUNTIME_DIR/qcow2d.sock: qcow2d's own rule. *path is malloc'd. */
int rpc_default_socket(char **path);
/* A blocking connection to the control socket in *fd. */
int rpc_connect(const char *path, int *fd);
/* One call: params (stolen; NULL for none) sent as a line, the reply line
 * read up to its newline and nothing past it (the ipc handshake may follow
 * on the same socket). 0 and the result (the caller's reference) or a
 * negative errno with the thread's message set: the service's errno for
 * an error reply (ENOENT for ImageNotFound...), -ECONNRESET when the
 * service hung up, -ETIMEDOUT, -EPROTO for a reply that is not one. */
int rpc_call(int fd, const char *method, json_t *params, int timeout_ms, json_t **result);

/* ---- bounce.c --------------------------------------------------------------- */

/* First fit over the data area in Q2C_CHUNK units, one bit per chunk. */
struct bounce {
	uint64_t *map;                  /* 1: in use */
	uint32_t nchunks, nwords;
	uint32_t hint;                  /* where the next search starts */
	uint32_t used;
};

int bounce_init(struct bounce *bb, uint64_t size);
void bounce_fini(struct bounce *bb);
/* n chunks in a row: 0 and *first, or -ENOSPC when there is no such run
 * now (frees will make one: n <= nchunks is the caller's check). */
int bounce_alloc(struct bounce *bb, uint32_t n, uint32_t *first);
void bounce_free(struct bounce *bb, uint32_t first, uint32_t n);

/* ---- the handle, its regions and queues ------------------------------------- */

/* The rules a queue's requests are held to (queue.attach's reply; before
 * q2c_start(), what image.info and the protocol's defaults say). */
struct q2c_rules {
	uint64_t capacity;
	uint32_t block_size;            /* request-alignment */
	uint32_t buf_align;             /* buf-alignment */
	uint32_t mem_align;             /* optimal-buf-alignment */
	uint64_t max_io;                /* max-transfer */
	bool read_only;
};

struct q2c_region {
	uint8_t *addr;
	size_t len;
	int64_t fd_offset;
	int fd;
	uint32_t ipc_index;             /* 1..: the ipc region of its memfd */
	dev_t dev;
	ino_t ino;
};

enum q2c_state { Q2C_CREATED, Q2C_CONNECTED, Q2C_STARTED };

struct q2c {
	enum q2c_state state;
	/* set before connect */
	char *socket, *path, *name;
	bool want_read_only;
	/* set between connect and start */
	int num_queues, num_entries, data_area_size;
	/* known after connect */
	struct q2c_rules rules;
	char *image;                    /* the image's name in qcow2d */
	char *abs_path;                 /* path, made absolute for image.open */
	bool opened;                    /* q2c_connect() opened it: close it */
	/* The handle's own control connection; properties may be read from
	 * any thread (stats is a call), so calls on it are serialised. */
	pthread_mutex_t ctl_lock;
	int ctl;
	struct q2c_region regions[Q2C_MAX_REGIONS];
	unsigned nr_regions;
	unsigned nr_memfds;             /* distinct memfds: ipc regions 1..n */
	struct q2c_queue **queues;
	int nr_queues;
};

/* handle.c */
/* Sends a call on the handle's connection (serialised). */
int handle_call(struct q2c *b, const char *method, json_t *params, json_t **result);

/* mem.c */
/* The region [p, p + len) lies in entirely, or NULL. */
const struct q2c_region *region_find(const struct q2c *b, const void *p, size_t len);
/* The memfds to register, in ipc order (fds[k - 1] is region k). */
unsigned region_memfds(const struct q2c *b, int *fds);

/* ---- requests and queues ---------------------------------------------------- */

struct q2c_req {
	struct q2c_req *next;           /* in the pending, done or free list */
	void *user_data;
	uint64_t start, len;
	uint8_t op;                     /* QCOW2_IPC_OP_* */
	uint8_t ipc_flags;
	bool fua;                       /* a write to be followed by a flush */
	bool overflow;                  /* malloc'd: freed when handed back */
	struct q2c_req *ov_prev, *ov_next;      /* the queue's overflow list */
	bool bounced;                   /* holds chunks of the data area */
	int ret;
	const char *msg;                /* why ret < 0: static, or msgbuf */
	uint32_t iovcnt;
	struct iovec *iov;              /* &iov1, the slot's array, or malloc'd */
	struct iovec iov1;
	uint64_t bounce_bytes;          /* bytes of buffers outside regions */
	uint32_t chunk, nchunks;        /* the data area it holds */
	char msgbuf[Q2C_MSG];
};

struct req_list {
	struct q2c_req *head, *tail;
	unsigned n;
};

struct q2c_queue {
	struct q2c *b;
	int index;
	int sock;                       /* queue.attach's connection, -1 after */
	struct qcow2_ipc_client *ipc;
	uint8_t *data;                  /* the data area (region 0) */
	uint64_t data_size;
	struct q2c_rules rules;
	uint32_t max_segs;
	struct bounce bounce;

	struct q2c_req *slots;          /* num_entries, preallocated */
	struct iovec *slot_iov;         /* max_segs per slot */
	struct q2c_req *free_list;
	struct q2c_req *overflow;       /* every malloc'd request */
	unsigned lost;                  /* requests dropped for lack of memory */
	struct req_list pending;        /* queued, not yet in the ring */
	struct req_list done;           /* completed, not yet handed back */
	unsigned in_flight;             /* in the ring */
	unsigned num_entries;

	struct qcow2_ipc_completion *cpl;       /* num_entries */
	struct qcow2_ipc_seg segs[Q2C_MAX_SEGS];
	char *msgs;                     /* messages of the last completions */
	size_t msgs_cap;

	bool fd_enabled;
	bool abandon;                   /* q2c_destroy(): copy nothing out */
	bool dead;                      /* the service hung up: -ECONNRESET */
	bool broken;                    /* -EPROTO */
	unsigned idle_calls;            /* do_io calls that found nothing */
};

static inline void req_list_push(struct req_list *l, struct q2c_req *r)
{
	r->next = NULL;
	if (l->tail)
		l->tail->next = r;
	else
		l->head = r;
	l->tail = r;
	l->n++;
}

static inline void req_list_push_front(struct req_list *l, struct q2c_req *r)
{
	r->next = l->head;
	l->head = r;
	if (!l->tail)
		l->tail = r;
	l->n++;
}

static inline struct q2c_req *req_list_pop(struct req_list *l)
{
	struct q2c_req *r = l->head;

	if (r) {
		l->head = r->next;
		if (!l->head)
			l->tail = NULL;
		l->n--;
	}
	return r;
}

/* queue.c */
int queue_create(struct q2c *b, int index, struct q2c_queue **out);
/* queue.attach on a new connection, then the ipc handshake. */
int queue_attach(struct q2c_queue *q);
/* True when the service hung up on the queue (it is marked dead). */
bool queue_gone(struct q2c_queue *q);
/* Waits (bounded) for what is in flight, hangs up, frees. */
void queue_destroy(struct q2c_queue *q, int wait_ms);

/* request.c */
void req_release(struct q2c_queue *q, struct q2c_req *r);
/* Moves pending requests into the ring, in order, while there is room
 * (ring slots, data area). 0 or -EPROTO. */
int req_submit_pending(struct q2c_queue *q);
/* Takes what the CQ holds, completes or continues those requests.
 * Returns how many it took (>= 0) or -EPROTO. */
int req_reap(struct q2c_queue *q);

#endif
