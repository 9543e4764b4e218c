/* qcow2_ipc.h: the data path between a VMM (client) and qcow2d (service).
 *
 * A queue is one memfd-backed region mapped by both sides: a submission ring
 * (SQ), a completion ring (CQ), per-slot segment tables, the service's
 * in-flight table and a data-buffer area; plus two eventfd doorbells. The byte
 * layout, the memory-ordering rules and the handshake are specified in
 * ipc/PROTOCOL.md; the structs below are that layout (host endianness). This
 * header is C only (C11 _Atomic in the control page, which C++ cannot name).
 *
 * Errors. A function that can fail returns 0 (or what its comment says) or
 * a negative errno; errno is not how it reports, and its value afterwards
 * is unspecified.
 *
 * Threads. The library starts no threads, takes no locks and installs no
 * signal handlers. A client or a server object is single-threaded: calls on
 * one object must not overlap, though it may move to another thread when
 * the caller orders the hand-over (a mutex, a queue between threads).
 * Different objects are independent, and the two ends of a queue, in two
 * processes or threads, share nothing but the region and the eventfds. The
 * functions without an object (qcow2_ipc_layout, _server_recv_hello,
 * _server_send_reply, _server_accept, _attach_close) may run on any thread.
 * Only the calls that take a socket (they block as it does: set SO_RCVTIMEO
 * to bound them) and the wait functions (up to their timeout) sleep;
 * doorbells are non-blocking eventfd writes.
 *
 * Callbacks. There are none: the library never calls into the caller.
 * Completions and requests are collected by polling (reap, take) or by
 * sleeping in a wait function; a service with its own event loop polls
 * qcow2_ipc_server_kick_fd() between qcow2_ipc_server_prepare_sleep() and
 * qcow2_ipc_server_woken(), and a client with its own event loop polls
 * qcow2_ipc_client_call_fd() between qcow2_ipc_client_prepare_sleep() and
 * qcow2_ipc_client_woken().
 *
 * Lifetimes and ownership.
 *  - What the caller passes in (options, requests and their segment arrays)
 *    is read during the call only; what is kept is copied (fds are dup'ed).
 *    The caller's socket is never closed by the library.
 *  - A client owns the queue memfd and the two eventfds it creates and its
 *    dups of the region fds (the caller closes its own whenever it likes);
 *    the handshake sends the service copies. qcow2_ipc_client_free() unmaps
 *    the region and closes all of them.
 *  - qcow2_ipc_server_recv_hello() hands the received fds to the caller in
 *    the attach (qcow2_ipc_attach_close() closes what is left there); a
 *    successful qcow2_ipc_server_open() takes them over (sets them to -1), a
 *    failed one leaves them. qcow2_ipc_server_close() unmaps and closes
 *    everything the server holds.
 *  - An fd an object returns (qcow2_ipc_server_kick_fd(),
 *    qcow2_ipc_client_call_fd()) stays the object's: poll it, do not
 *    close it; read it only as qcow2_ipc_client_call_fd() says. Pointers into the mappings
 *    (qcow2_ipc_client_data(), qcow2_ipc_server_region()) are valid until
 *    the object is freed or closed; a taken request's iov until
 *    qcow2_ipc_server_complete() of its id.
 *  - Buffers are shared memory: while a request is in flight the service
 *    reads (WRITE) or writes (READ) its buffers, so the client leaves them
 *    alone until it reaps the completion. The service keeps its mappings of
 *    registered regions until it closes the queue: freeing the client does
 *    not revoke that access.
 *  - free/close accept NULL, and a broken queue (-EPROTO) is still freed or
 *    closed by its owner.
 *
 * Extensible structs. The options, the stats and the attach description
 * (struct qcow2_ipc_client_opts, _client_stats, _server_opts, _server_stats,
 * _attach) begin with a uint32_t size, which the caller sets to the sizeof
 * it was compiled with before it passes the struct in or has it filled:
 * struct qcow2_ipc_client_opts o = { .size = sizeof(o), ... }. Fields are
 * only ever appended, so that programs built against older or newer headers
 * keep working with this library:
 *  - a struct the library reads (options; an attach given to open): a size
 *    below the first version's or above 4096 is -EINVAL; fields past the
 *    caller's size count as 0, their default; bytes past the library's own
 *    struct must be 0, else -EOPNOTSUPP (an option this library does not
 *    know, set); reserved fields must be 0 (-EINVAL);
 *  - a struct the library fills (stats; an attach from recv_hello): the same
 *    range of sizes, else -EINVAL; the library fills the fields it knows that
 *    fit in size, zeroes what lies past its own struct and leaves size alone.
 * Each keeps its size a multiple of 8 with no padding at the end (explicit
 * reserved fields instead), so that a new field never lands in bytes an
 * older library ignores. The per-request structs (qcow2_ipc_req,
 * qcow2_ipc_completion, qcow2_ipc_server_req) are fixed, like the wire
 * structs they mirror and the geometry and layout: results come back in
 * arrays whose stride the library must know, and they change only with a
 * new protocol version, under new functions.
 */
#ifndef QCOW2_IPC_H
#define QCOW2_IPC_H

#include <assert.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define QCOW2_IPC_VERSION 1u            /* the only protocol version so far */

#define QCOW2_IPC_REGION_MAGIC 0x51324951u   /* "QI2Q" little endian: queue region */
#define QCOW2_IPC_HELLO_MAGIC 0x48324951u    /* "QI2H": client hello */
#define QCOW2_IPC_REPLY_MAGIC 0x52324951u    /* "QI2R": service reply */

/* Geometry limits (PROTOCOL.md, "Geometry"). */
#define QCOW2_IPC_MAX_ENTRIES 4096u     /* sq_entries, cq_entries */
#define QCOW2_IPC_MAX_SEGS 1024u        /* segments per request */
#define QCOW2_IPC_MAX_SEG_TABLE (256u * 1024u) /* cq_entries * max_segs */
#define QCOW2_IPC_MAX_DATA_SIZE (1ull << 40)
#define QCOW2_IPC_MAX_REGIONS 16u       /* registered memory regions */
#define QCOW2_IPC_PAGE 4096u            /* every area starts on this alignment */
#define QCOW2_IPC_LINE 128u             /* spacing of the index lines */

/* ---- entries ----------------------------------------------------------------- */

enum qcow2_ipc_opcode {
	QCOW2_IPC_OP_READ = 1,
	QCOW2_IPC_OP_WRITE = 2,
	QCOW2_IPC_OP_FLUSH = 3,
	QCOW2_IPC_OP_WRITE_ZEROES = 4,
	QCOW2_IPC_OP_DISCARD = 5,
};

/* sqe.flags */
#define QCOW2_IPC_F_UNMAP 0x01u         /* WRITE_ZEROES only: may deallocate */

/* A buffer: bytes [off, off + len) of a memory region. Region 0 is the queue's
 * own data area; region k >= 1 is the k-th memfd registered at attach time. */
struct qcow2_ipc_seg {
	uint64_t off;
	uint32_t len;
	uint32_t region;
};
static_assert(sizeof(struct qcow2_ipc_seg) == 16, "seg layout");

/* A submission. slot and gen belong to the client (they identify its in-flight
 * record) and come back unchanged in the completion. With one segment it is
 * inline in seg; with more, they are in the slot's segment table and seg must
 * be zero. */
struct qcow2_ipc_sqe {
	uint8_t opcode;
	uint8_t flags;
	uint16_t nr_segs;
	uint32_t slot;          /* < cq_entries */
	uint64_t tag;           /* client's choice, echoed */
	uint32_t gen;           /* client's generation of slot, echoed */
	uint32_t reserved0;     /* 0 */
	uint64_t offset;        /* disk byte offset */
	uint64_t len;           /* bytes; for READ/WRITE the sum of the segments */
	struct qcow2_ipc_seg seg;
	uint64_t reserved1;     /* 0 */
};
static_assert(sizeof(struct qcow2_ipc_sqe) == 64, "sqe layout");
static_assert(offsetof(struct qcow2_ipc_sqe, tag) == 8, "sqe layout");
static_assert(offsetof(struct qcow2_ipc_sqe, gen) == 16, "sqe layout");
static_assert(offsetof(struct qcow2_ipc_sqe, offset) == 24, "sqe layout");
static_assert(offsetof(struct qcow2_ipc_sqe, len) == 32, "sqe layout");
static_assert(offsetof(struct qcow2_ipc_sqe, seg) == 40, "sqe layout");

/* A completion: 0 or a negative errno in res. */
struct qcow2_ipc_cqe {
	uint64_t tag;
	uint32_t slot;
	uint32_t gen;
	int32_t res;
	uint32_t reserved;      /* 0 */
};
static_assert(sizeof(struct qcow2_ipc_cqe) == 24, "cqe layout");

/* ---- the shared region's control page ------------------------------------------ */

/* Written once by the client when it creates the region; read by the service
 * at attach only, to cross-check the handshake. */
struct qcow2_ipc_region_header {
	uint32_t magic;
	uint32_t version;
	uint32_t sq_entries;
	uint32_t cq_entries;
	uint32_t max_segs;
	uint32_t reserved0;
	uint64_t data_size;
	uint64_t region_size;
	uint8_t pad[QCOW2_IPC_LINE - 40];
};

/* Each line is written by one side only. */
struct qcow2_ipc_ctrl {
	struct qcow2_ipc_region_header hdr;
	struct {                        /* client writes */
		_Atomic uint32_t sq_tail;
		uint8_t pad[QCOW2_IPC_LINE - 4];
	} sq_prod;
	struct {                        /* service writes */
		_Atomic uint32_t sq_head;
		_Atomic uint32_t sq_need_wakeup;  /* service sleeps: kick it */
		_Atomic uint32_t status;          /* QCOW2_IPC_STATUS_* */
		uint8_t pad[QCOW2_IPC_LINE - 12];
	} sq_cons;
	struct {                        /* service writes */
		_Atomic uint32_t cq_tail;
		uint8_t pad[QCOW2_IPC_LINE - 4];
	} cq_prod;
	struct {                        /* client writes */
		_Atomic uint32_t cq_head;
		_Atomic uint32_t cq_need_wakeup;  /* client sleeps: call it */
		uint8_t pad[QCOW2_IPC_LINE - 8];
	} cq_cons;
};
static_assert(sizeof(_Atomic uint32_t) == 4, "lock-free 32-bit atomics");
static_assert(sizeof(struct qcow2_ipc_region_header) == QCOW2_IPC_LINE, "ctrl layout");
static_assert(offsetof(struct qcow2_ipc_ctrl, sq_prod) == 128, "ctrl layout");
static_assert(offsetof(struct qcow2_ipc_ctrl, sq_cons) == 256, "ctrl layout");
static_assert(offsetof(struct qcow2_ipc_ctrl, cq_prod) == 384, "ctrl layout");
static_assert(offsetof(struct qcow2_ipc_ctrl, cq_cons) == 512, "ctrl layout");
static_assert(sizeof(struct qcow2_ipc_ctrl) == 640, "ctrl layout");

#define QCOW2_IPC_STATUS_OK 0u
#define QCOW2_IPC_STATUS_BROKEN 1u      /* the service found a protocol error */

/* One record of the in-flight table (service writes; read back only by a
 * service that re-attaches). state: 0 free, else kind << 32 | position. */
struct qcow2_ipc_inflight {
	_Atomic uint64_t state;
	uint8_t pad[56];
	struct qcow2_ipc_sqe sqe;       /* the entry as taken */
};
static_assert(sizeof(struct qcow2_ipc_inflight) == 128, "inflight layout");
static_assert(sizeof(_Atomic uint64_t) == 8, "lock-free 64-bit atomics");

#define QCOW2_IPC_INFLIGHT_TAKEN 1ull      /* position = SQ index it came from */
#define QCOW2_IPC_INFLIGHT_COMPLETING 2ull /* position = CQ index of its completion */

/* ---- geometry and layout ----------------------------------------------------- */

struct qcow2_ipc_geometry {
	uint32_t sq_entries;    /* power of two, 1..4096 */
	uint32_t cq_entries;    /* power of two, sq_entries..4096 */
	uint32_t max_segs;      /* 1..1024, cq_entries * max_segs <= 256 Ki */
	uint64_t data_size;     /* multiple of 4096, may be 0 */
};

/* Byte offsets of each area in the region, all multiples of QCOW2_IPC_PAGE. */
struct qcow2_ipc_layout {
	uint64_t sq_off;
	uint64_t cq_off;
	uint64_t seg_off;       /* cq_entries tables of max_segs segments */
	uint64_t inflight_off;  /* cq_entries records */
	uint64_t data_off;
	uint64_t size;          /* the whole region */
};

/* Checks g and computes where everything is. -EINVAL when g is out of limits. */
int qcow2_ipc_compute_layout(const struct qcow2_ipc_geometry *g, struct qcow2_ipc_layout *out);

/* ---- handshake messages (over a connected AF_UNIX stream/seqpacket socket) ---- */

/* Client -> service, with SCM_RIGHTS fds: queue memfd, kick eventfd
 * (client -> service), call eventfd (service -> client), then nr_regions memfds. */
struct qcow2_ipc_hello {
	uint32_t magic;
	uint16_t version_min;
	uint16_t version_max;
	uint32_t sq_entries;
	uint32_t cq_entries;
	uint32_t max_segs;
	uint32_t nr_regions;
	uint64_t data_size;
	uint64_t region_size;
	uint32_t flags;         /* 0 */
	uint32_t reserved[5];   /* 0 */
};
static_assert(sizeof(struct qcow2_ipc_hello) == 64, "hello layout");

/* Service -> client, no fds. status 0: attached with that version. */
struct qcow2_ipc_reply {
	uint32_t magic;
	uint16_t version;
	uint16_t reserved0;
	int32_t status;
	uint32_t reserved[5];
};
static_assert(sizeof(struct qcow2_ipc_reply) == 32, "reply layout");

/* ---- client side ----------------------------------------------------------------- */

struct qcow2_ipc_client;

#define QCOW2_IPC_CLIENT_ALWAYS_KICK 0x1u  /* ring the doorbell on every commit */

/* Extensible (see the top of this file): set size. */
struct qcow2_ipc_client_opts {
	uint32_t size;                  /* sizeof(struct qcow2_ipc_client_opts) */
	uint32_t flags;                 /* QCOW2_IPC_CLIENT_* */
	struct qcow2_ipc_geometry geometry;
	const int *region_fds;          /* memfds (sealed F_SEAL_SHRINK); dup'ed */
	unsigned nr_regions;            /* <= QCOW2_IPC_MAX_REGIONS */
	uint32_t first_index;           /* where all four indices start (usually 0) */
};

/* A request. segs (nr_segs of them, for READ and WRITE) is copied by submit. */
struct qcow2_ipc_req {
	uint8_t opcode;
	uint8_t flags;
	uint16_t nr_segs;
	uint64_t tag;
	uint64_t offset;
	uint64_t len;           /* ignored for READ/WRITE: the sum of segs */
	const struct qcow2_ipc_seg *segs;
};

struct qcow2_ipc_completion {
	uint64_t tag;
	int32_t res;
};

/* Extensible (see the top of this file): set size. */
struct qcow2_ipc_client_stats {
	uint32_t size;                  /* sizeof(struct qcow2_ipc_client_stats) */
	uint32_t reserved0;             /* written as 0 */
	uint64_t submitted, completed;
	uint64_t kicks;                 /* doorbell writes */
	uint64_t stale;                 /* completions of no in-flight request, dropped */
};

/* Creates the region (memfd, sealed against shrinking) and the eventfds. */
int qcow2_ipc_client_new(const struct qcow2_ipc_client_opts *opts,
			 struct qcow2_ipc_client **out);
void qcow2_ipc_client_free(struct qcow2_ipc_client *c);
/* Sends the hello with the fds and waits for the reply; may be called again
 * on a new connection to re-attach to a restarted service. */
int qcow2_ipc_client_handshake(struct qcow2_ipc_client *c, int sock);
/* The data area (region 0) as mapped by the client. */
void *qcow2_ipc_client_data(struct qcow2_ipc_client *c, uint64_t *size);
/* Queues a request (not visible before commit). -EAGAIN: the SQ or the
 * in-flight slots are full (reap first); -EINVAL: bad request; -EPROTO: broken. */
int qcow2_ipc_client_submit(struct qcow2_ipc_client *c, const struct qcow2_ipc_req *req);
/* Publishes the queued requests; kicks the service if it sleeps. */
int qcow2_ipc_client_commit(struct qcow2_ipc_client *c);
/* Takes up to max completions. Completions of requests not in flight (stale
 * generation) are dropped and counted. -EPROTO when the service broke the ring. */
int qcow2_ipc_client_reap(struct qcow2_ipc_client *c, struct qcow2_ipc_completion *out,
			  unsigned max, unsigned *nr);
/* Waits for a completion: spins `spin` times, then sleeps on the call
 * eventfd (timeout_ms < 0: no limit). 0 when something may be reaped,
 * -ETIMEDOUT, -EPROTO when the service marked the queue broken. It is
 * prepare_sleep, poll and woken below. */
int qcow2_ipc_client_wait(struct qcow2_ipc_client *c, unsigned spin, int timeout_ms);
/* Sleep protocol, for a client that waits in its own event loop (the
 * counterpart of the service's). prepare_sleep sets cq_need_wakeup, fences
 * and looks at the CQ again: 0 when the caller may sleep until the call
 * fd is readable (the flag stays set: the service calls on each publish
 * until it is cleared), -EAGAIN when completions are there already (the
 * flag is cleared: reap), -EPROTO when the queue is broken. woken drains
 * the call fd and clears the flag; 0 or -EPROTO. A caller may leave the
 * flag set across many wake-ups and reaps (an event loop that only ever
 * sleeps); clearing it, by woken, makes a busy client's queue silent. */
int qcow2_ipc_client_prepare_sleep(struct qcow2_ipc_client *c);
int qcow2_ipc_client_woken(struct qcow2_ipc_client *c);
/* The call eventfd (service -> client: completions, or the queue broke),
 * non-blocking. The client's: poll it; drain it through woken, or read it
 * (8 bytes) where the caller's loop owns the wait. The client may also
 * write it (8 bytes, a count of 1) to wake its own loop: the service only
 * writes it. */
int qcow2_ipc_client_call_fd(const struct qcow2_ipc_client *c);
unsigned qcow2_ipc_client_in_flight(const struct qcow2_ipc_client *c);
/* Fills *out (the caller sets out->size). */
int qcow2_ipc_client_get_stats(const struct qcow2_ipc_client *c,
			       struct qcow2_ipc_client_stats *out);
/* The client's other fds and its raw mapping are not part of the API:
 * the handshake passes the fds. */

/* ---- service side ---------------------------------------------------------------- */

struct qcow2_ipc_server;

/* What a hello delivered; the fds belong to whoever holds this. Extensible
 * (see the top of this file): set size before qcow2_ipc_server_recv_hello. */
struct qcow2_ipc_attach {
	uint32_t size;          /* sizeof(struct qcow2_ipc_attach) */
	uint16_t version;
	uint16_t reserved0;     /* 0 */
	struct qcow2_ipc_geometry geometry;
	uint64_t region_size;
	int queue_fd, kick_fd, call_fd;
	unsigned nr_regions;
	int region_fds[QCOW2_IPC_MAX_REGIONS];
};

#define QCOW2_IPC_SERVER_ALWAYS_CALL 0x1u  /* signal the client on every publish */

/* Extensible (see the top of this file): set size. */
struct qcow2_ipc_server_opts {
	uint32_t size;          /* sizeof(struct qcow2_ipc_server_opts) */
	uint32_t flags;         /* QCOW2_IPC_SERVER_* */
	uint64_t disk_size;     /* requests must lie in [0, disk_size) */
	uint32_t block_size;    /* power of two: disk offset and length alignment */
	uint32_t buf_align;     /* power of two (or 0 = 1): segment offset/length alignment */
	uint64_t max_io_bytes;  /* largest READ/WRITE (0: no limit beyond 4 GiB) */
	/* Policy limits on what one client may make the service map and
	 * allocate (0: only the protocol's limits): the queue region plus all
	 * registered regions, and cq_entries (service memory per queue grows
	 * with cq_entries * max_segs). Beyond them open fails with -E2BIG. */
	uint64_t max_map_bytes;
	uint32_t max_entries;
	uint32_t reserved0;     /* 0 */
};

/* A validated request, copied out of the ring. iov points into the service's
 * mappings and stays valid until qcow2_ipc_server_complete(id). */
struct qcow2_ipc_server_req {
	uint32_t id;
	uint8_t opcode;
	uint8_t flags;
	uint16_t nr_iov;
	uint64_t offset;
	uint64_t len;
	uint64_t tag;           /* for logs only */
	struct iovec *iov;
};

/* Extensible (see the top of this file): set size. */
struct qcow2_ipc_server_stats {
	uint32_t size;          /* sizeof(struct qcow2_ipc_server_stats) */
	uint32_t reserved0;     /* written as 0 */
	uint64_t taken, completed;
	uint64_t invalid;       /* entries completed with -EINVAL by validation */
	uint64_t recovered;     /* in-flight entries found at attach */
	uint64_t calls;         /* doorbell writes */
};

/* Receives and validates a hello (fd count, kinds, seals, sizes). Fills att
 * (the caller sets att->size), whose fds the caller then owns
 * (qcow2_ipc_attach_close). Blocks; set SO_RCVTIMEO on sock to bound the
 * wait. */
int qcow2_ipc_server_recv_hello(int sock, struct qcow2_ipc_attach *att);
int qcow2_ipc_server_send_reply(int sock, uint16_t version, int32_t status);
void qcow2_ipc_attach_close(struct qcow2_ipc_attach *att);
/* Maps the region and the registered memory (with guard pages), validates the
 * shared state and recovers the in-flight table. Takes the fds of att (set to
 * -1) on success. */
int qcow2_ipc_server_open(struct qcow2_ipc_attach *att, const struct qcow2_ipc_server_opts *opts,
			  struct qcow2_ipc_server **out);
/* recv_hello + open + send_reply, on a blocking socket. */
int qcow2_ipc_server_accept(int sock, const struct qcow2_ipc_server_opts *opts,
			    struct qcow2_ipc_server **out);
void qcow2_ipc_server_close(struct qcow2_ipc_server *s);

/* Takes up to max requests: first those recovered from the in-flight table,
 * then new ones from the SQ. Invalid entries are completed with -EINVAL and
 * not returned. -EPROTO: the client broke the ring; the queue is broken. */
int qcow2_ipc_server_take(struct qcow2_ipc_server *s, struct qcow2_ipc_server_req *out,
			  unsigned max, unsigned *nr);
/* Writes the completion of request id (visible at the next publish). */
int qcow2_ipc_server_complete(struct qcow2_ipc_server *s, uint32_t id, int32_t res);
/* Publishes completions; calls the client if it sleeps. */
int qcow2_ipc_server_publish(struct qcow2_ipc_server *s);
/* Sleep protocol: prepare_sleep returns 0 when the caller may sleep on the
 * kick fd (the need-wakeup flag is set), -EAGAIN when work arrived meanwhile;
 * after waking, call woken (drains the eventfd, clears the flag). */
int qcow2_ipc_server_prepare_sleep(struct qcow2_ipc_server *s);
int qcow2_ipc_server_woken(struct qcow2_ipc_server *s);
/* The above around poll(): spin, then sleep. 0, -ETIMEDOUT or -EPROTO. */
int qcow2_ipc_server_wait(struct qcow2_ipc_server *s, unsigned spin, int timeout_ms);
int qcow2_ipc_server_kick_fd(const struct qcow2_ipc_server *s);
/* Where region idx (0: the data area) is mapped, e.g. to register it as
 * io_uring fixed buffers. -EINVAL past the last region. */
int qcow2_ipc_server_region(const struct qcow2_ipc_server *s, unsigned idx, void **base,
			    uint64_t *size);
unsigned qcow2_ipc_server_in_flight(const struct qcow2_ipc_server *s);
int qcow2_ipc_server_broken(const struct qcow2_ipc_server *s);  /* 0 or -EPROTO */
/* Fills *out (the caller sets out->size). */
int qcow2_ipc_server_get_stats(const struct qcow2_ipc_server *s,
			       struct qcow2_ipc_server_stats *out);

#ifdef __cplusplus
}
#endif

#endif
