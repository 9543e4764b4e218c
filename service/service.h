/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * qcow2d's private header: the service's threads and what crosses between
 * them.
 *
 * Threads own state; messages cross threads. The main thread owns the
 * control socket, its connections, the image registry (names, home
 * workers, states) and the service's counters. Each worker owns a libuv
 * loop, an engine context and the engine state of the images whose home it
 * is. The only shared structure is a mailbox (a locked list and a
 * uv_async_t): a message is a struct msg whose fn runs on the thread that
 * receives it. A control request that touches an image travels to the
 * image's home worker as a message, and its reply travels back as the same
 * message with another fn.
 */
#ifndef QCOW2D_SERVICE_H
#define QCOW2D_SERVICE_H

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "qcow2.h"

/* ---- logging (log.c) ---------------------------------------------------- */

enum log_level { LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG };

/* Parse "error", "warn", "info" or "debug". -EINVAL otherwise. */
int log_parse_level(const char *s, enum log_level *out);
void log_set_level(enum log_level level);
/* One line on stderr: "<level>: message" (journald reads the prefix). */
void log_msg(enum log_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* ---- messages between threads (mailbox.c) ------------------------------- */

struct msg {
	struct msg *next;
	void (*fn)(struct msg *m); /* runs on the receiving thread */
};

struct mailbox {
	uv_async_t async;
	pthread_mutex_t lock;
	struct msg *head, *tail;
};

/* On the owning thread, before any post: the mailbox's async handle joins
 * loop. */
int mailbox_init(struct mailbox *mb, uv_loop_t *loop);
/* Any thread: queue m; the owner's loop runs m->fn soon. */
void mailbox_post(struct mailbox *mb, struct msg *m);
/* On the owning thread: close the handle (messages still queued are run
 * first). */
void mailbox_close(struct mailbox *mb);

/* ---- configuration (main.c) --------------------------------------------- */

#define QCOW2D_MAX_WORKERS 256
/* image.open's l2_cache_size: the engine allocates the whole cache (and a
 * record per slice) at open; one request must not take the host's memory. */
#define QCOW2D_MAX_L2_CACHE (1ull << 30)
#define QCOW2D_DEFAULT_FLUSH_INTERVAL_MS 30000

struct svc_config {
	char *socket_path;
	unsigned workers;
	char **allow_dirs;          /* realpath()s */
	unsigned n_allow_dirs;
	unsigned flush_interval_ms;
	enum log_level log_level;
	json_t *open_at_start;      /* image.open params, from --config */
	char *metrics_listen;       /* --metrics-listen ADDR:PORT, or NULL */
	char *state_file;           /* --state-file FILE, or NULL */
	json_t *state_images;       /* image.open params from the state file */
};

/* ---- workers (worker.c) ------------------------------------------------- */

struct worker_image;

/* Written by the worker, read by the main thread (relaxed atomics). */
struct worker_stats {
	_Atomic uint64_t loop_iterations;
	_Atomic uint64_t images;
	_Atomic uint64_t writebacks;    /* timer write-backs started */
	_Atomic uint64_t ring_batches;  /* takes from a queue that got requests */
	_Atomic uint64_t ring_requests; /* requests those takes got */
	_Atomic uint64_t idle_ns;       /* the loop's time asleep in poll */
	uint64_t start_ns;              /* set before the thread starts */
};

struct worker {
	unsigned id;
	struct svc *svc;
	uv_thread_t thread;
	uv_loop_t loop;
	struct mailbox mb;
	struct qcow2_ctx *ctx;
	uv_poll_t ctx_poll;          /* the engine's event fd */
	uv_prepare_t submit;         /* hands queued IO to the kernel */
	struct worker_image *images; /* those whose home this is */
	struct wqueue *queues;       /* clients' queues on those images */
	bool stopping;
	struct worker_stats stats;
	int start_error;             /* set by the thread before ready */
	uv_sem_t ready;
	struct msg stop;             /* the last message it gets */
};

int workers_start(struct svc *svc, unsigned n);
/* Close every image (flushing it) and join the threads. */
void workers_stop(struct svc *svc);

/* ---- image registry (registry.c, main thread) --------------------------- */

enum svc_image_state { IMG_OPENING, IMG_OPEN, IMG_CLOSING };

struct svc_image {
	struct svc_image *next;
	char *name;
	char *path;                 /* as the caller named it */
	char *real;                 /* realpath(), to refuse a second open */
	struct worker *home;
	enum svc_image_state state;
	bool read_only;
	unsigned clients;           /* attached queues, and attaches under way */
	unsigned pins;              /* main-thread work still using the record
				     * (an attach handing its socket over, an
				     * online check): it outlives its removal
				     * from the registry until they end */
	bool unlinked;
	bool checking;              /* an image.check runs (one at a time) */
	uint64_t virtual_size;      /* from the open, for queue.attach's reply */
	uint32_t block_size, mem_align;
	struct worker_image *wi;    /* the worker's record: touched there only */
	uint64_t opened_ns;
	json_t *params;             /* image.open's params, for the state file */
};

struct svc_image *registry_find(struct svc *svc, const char *name);
struct svc_image *registry_find_real(struct svc *svc, const char *real);
struct svc_image *registry_add(struct svc *svc, const char *name,
			       const char *path, const char *real);
/* Out of the registry; freed now, or by registry_release() when the last
 * pin goes. */
void registry_remove(struct svc *svc, struct svc_image *si);
void registry_release(struct svc_image *si);

/* ---- the service (main.c) ----------------------------------------------- */

struct svc_counters {
	uint64_t connections_total;
	uint64_t connections_refused;
	uint64_t requests_total;
	uint64_t errors_total;
};

struct svc {
	struct svc_config cfg;
	uv_loop_t *loop;
	struct mailbox mb;           /* replies from workers */
	uv_pipe_t listener;
	uv_signal_t sigterm, sigint;
	struct worker *workers;
	unsigned nworkers;
	unsigned next_worker;        /* round robin for homes */
	struct svc_image *images;
	unsigned nimages;
	struct conn *conns;
	unsigned nconns;
	bool stopping;
	uint64_t start_ns;
	uint64_t queue_ids;          /* the last queue id given */
	void (*all_closed)(struct svc *svc); /* stopping: images all closed */
	struct svc_counters counters;
	json_t *method_counts;       /* method -> {"calls": N, "errors": {class: N}} */
	struct metrics_http *http;   /* --metrics-listen's server, or NULL */
};

uint64_t now_ns(void);
/* Begin a clean stop: stop accepting, close images, leave the loop. */
void svc_stop(struct svc *svc);

/* ---- metrics (rpc_metrics.c, main thread) -------------------------------- */

#define METRICS_CONTENT_TYPE \
	"application/openmetrics-text; version=1.0.0; charset=utf-8"

/* The end of a gather: err 0 and the OpenMetrics text (malloc'd, len
 * bytes, NUL-terminated; the callee frees it), or a negative errno and no
 * text. */
typedef void (*metrics_done_fn)(void *opaque, int err, char *text,
				size_t len);
struct metrics_gather;

/* Ask every open image's home worker for its statistics and write the
 * text once all have answered: done(opaque, ...) runs once, on the main
 * thread, perhaps before this returns. Returns the gather while it waits
 * for answers, NULL when done has already run. Used by service.metrics
 * and by GET /metrics (metrics_http.c). */
struct metrics_gather *metrics_gather(struct svc *svc, metrics_done_fn done,
				      void *opaque);
/* The asker goes away before the answers come: done will not run (the
 * gather frees itself when the last answer arrives). */
void metrics_gather_cancel(struct metrics_gather *g);

/* ---- GET /metrics over HTTP (metrics_http.c, main thread) ---------------- */

#define METRICS_HTTP_MAX_CONNS 64       /* connections at once */
#define METRICS_HTTP_TIMEOUT_S 10       /* a connection idle this long goes */
#define METRICS_HTTP_STOP_MS 5000       /* at the stop, for answers to go out */

/* "A.B.C.D:PORT" or "[IPV6]:PORT" (numeric; port 0: any free one). -EINVAL
 * with what is expected in msg. */
int metrics_listen_parse(const char *s, struct sockaddr_storage *ss,
			 socklen_t *sslen, char *msg, size_t msglen);
/* cfg.metrics_listen set: bind it and serve GET /metrics on the main loop
 * (svc->http). Errors are logged with what to do; 0 when not configured. */
int metrics_http_start(struct svc *svc);
/* Stop accepting connections (the stop begins). */
void metrics_http_quiesce(struct svc *svc);
/* Answer what is waiting, let the answers go out (bounded), stop the
 * server and close its handles; then stopped(svc), if given (at once when
 * there is no server). */
void metrics_http_stop(struct svc *svc, void (*stopped)(struct svc *svc));

/* ---- control connections (control.c, main thread) ----------------------- */

#define CONTROL_MAX_LINE (1u << 20)     /* bytes in one request line */
#define CONTROL_MAX_INFLIGHT 64         /* calls awaiting a reply, per connection */
#define CONTROL_MAX_BATCH 256           /* requests in one batch */
#define CONTROL_MAX_BACKLOG (16u << 20) /* reply bytes a client has not read */
#define CONTROL_MAX_CONNS 4096
#define QUEUES_MAX_PER_IMAGE 64         /* queues (and attaches under way) */
#define QUEUES_MAX 1024                 /* in the whole service */

int control_listen(struct svc *svc);
void control_close_all(struct svc *svc);

/* ---- JSON-RPC (jsonrpc.c) ----------------------------------------------- */

/* JSON-RPC 2.0's own codes. */
#define RPC_PARSE_ERROR -32700
#define RPC_INVALID_REQUEST -32600
#define RPC_METHOD_NOT_FOUND -32601
#define RPC_INVALID_PARAMS -32602
#define RPC_INTERNAL_ERROR -32603

/* Domain errors: a stable code and a class a program can switch on. */
enum rpc_error_class {
	ERR_IMAGE_NOT_FOUND,   /* -32000 */
	ERR_ALREADY_OPEN,      /* -32001 */
	ERR_BUSY,              /* -32002 */
	ERR_LOCKED,            /* -32003 */
	ERR_CORRUPT,           /* -32004 */
	ERR_READ_ONLY,         /* -32005 */
	ERR_NOT_SUPPORTED,     /* -32006 */
	ERR_IO,                /* -32007 */
	ERR_NO_SPACE,          /* -32008 */
	ERR_PATH_NOT_ALLOWED,  /* -32009 */
	ERR_NO_SUCH_FILE,      /* -32010 */
	ERR_INVALID_IMAGE,     /* -32011 */
	ERR_SHUTTING_DOWN,     /* -32012 */
	ERR_FAILED,            /* -32013: anything else */
	ERR_NCLASSES,
};

const char *rpc_error_class_name(enum rpc_error_class c);
int rpc_error_code(enum rpc_error_class c);
/* The class of an engine error (a negative errno). */
enum rpc_error_class rpc_class_of_errno(int err);

struct conn;
struct rpc_batch;

/* One request being answered. Handlers reply exactly once, now or later
 * (after a message round trip), through rpc_reply_*(). */
struct rpc_call {
	struct svc *svc;
	struct conn *conn;          /* NULL once the connection is gone */
	struct rpc_batch *batch;    /* or NULL */
	json_t *id;                 /* NULL: a notification, no reply */
	const char *method;         /* static: the method table's name */
	unsigned batch_index;
};

/* Reply with result (reference stolen). */
void rpc_reply_result(struct rpc_call *call, json_t *result);
/* Reply with a domain error; data = {"class", "errno"}. */
void rpc_reply_error(struct rpc_call *call, enum rpc_error_class cls, int err,
		     const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* Reply with one of JSON-RPC's own errors. */
void rpc_reply_protocol_error(struct rpc_call *call, int code,
			      const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Replace each byte of s that does not begin a valid UTF-8 sequence (nor
 * continue one) with '?', in place: jansson refuses invalid UTF-8, and
 * messages quote names from images and truncated text. */
void utf8_sanitize(char *s);
/* A JSON string of s with utf8_sanitize() applied; JSON null for NULL;
 * NULL when out of memory. */
json_t *json_string_lossy(const char *s);

/* Table-driven parameter decoding (one decoder for every method). */
enum param_type { P_STRING, P_BOOL, P_U32, P_U64 };

struct param_spec {
	const char *name;
	enum param_type type;
	size_t offset;              /* in the method's params struct */
	bool required;
	size_t present_offset;      /* a bool set when given; 0: none */
};

/* Decode params (an object, or absent) into out. On failure reply
 * invalid params naming the param and what was expected, and return
 * -EINVAL. Strings point into params: valid until the handler returns
 * (copy what a later reply needs). */
int rpc_decode(struct rpc_call *call, json_t *params,
	       const struct param_spec *spec, unsigned n, void *out);
/* The decoder itself: -EINVAL with the reason in msg. */
int params_decode(json_t *params, const struct param_spec *spec, unsigned n,
		  void *out, const char *method, char *msg, size_t msglen);

typedef void (*rpc_handler_fn)(struct rpc_call *call, json_t *params);

struct rpc_method {
	const char *name;
	rpc_handler_fn fn;
};

/* Handle one request line (a complete line, without its '\n'). */
void rpc_handle_line(struct svc *svc, struct conn *conn, const char *line,
		     size_t len);

/* The connection side (control.c). A call holds a reference on its
 * connection until it has replied; a connection that closed meanwhile
 * drops the reply. */
/* Queue text (malloc'd, taken) and a '\n'. */
void conn_send(struct conn *conn, char *text);
void conn_call_started(struct conn *conn);
void conn_call_done(struct conn *conn);
/* After the reply just sent has been written, give the connection's socket
 * away: fn gets a descriptor of it (or a negative errno: the client sent
 * more before reading the reply, or went away) and the connection is
 * closed here. */
void conn_hand_over(struct conn *conn, void (*fn)(void *opaque, int fd),
		    void *opaque);
/* Who is on the other end (SO_PEERCRED), for the log. */
void conn_peer(const struct conn *conn, int *pid, int *uid);
/* Events (events.c): a subscribed connection gets a JSON-RPC notification
 * {"method": "event", "params": {"event", "timestamp", "data"}} for each
 * event it asked for. */
enum svc_event {
	EV_IMAGE_OPENED, EV_IMAGE_CLOSED, EV_QUEUE_ATTACHED, EV_QUEUE_DETACHED,
	EV_IO_ERROR, EV_IMAGE_CORRUPT, EV_NEVENTS,
};
void conn_subscribe(struct conn *conn, unsigned mask);
/* Calls on the connection not yet answered (the caller's included). */
unsigned conn_inflight(const struct conn *conn);
unsigned conn_subscription(const struct conn *conn);
struct conn *conn_next(struct svc *svc, struct conn *prev); /* NULL: first */
/* Send an event to its subscribers (data taken). */
void svc_emit(struct svc *svc, enum svc_event ev, json_t *data);
const char *svc_event_name(enum svc_event ev);
void rpc_events_subscribe(struct rpc_call *call, json_t *params);

/* ---- method handlers ---------------------------------------------------- */

/* rpc_service.c */
void rpc_service_version(struct rpc_call *call, json_t *params);
void rpc_service_stats(struct rpc_call *call, json_t *params);
void rpc_discover(struct rpc_call *call, json_t *params);
/* rpc_check.c */
void rpc_image_check(struct rpc_call *call, json_t *params);
/* rpc_metrics.c */
void rpc_service_metrics(struct rpc_call *call, json_t *params);
/* rpc_queue.c */
void rpc_queue_attach(struct rpc_call *call, json_t *params);
void rpc_queue_detach(struct rpc_call *call, json_t *params);
/* The image named, open; or an error reply and NULL (rpc_image.c). */
struct svc_image *rpc_open_image(struct rpc_call *call, const char *name);
/* rpc_image.c */
void rpc_image_open(struct rpc_call *call, json_t *params);
void rpc_image_close(struct rpc_call *call, json_t *params);
void rpc_image_list(struct rpc_call *call, json_t *params);
void rpc_image_info(struct rpc_call *call, json_t *params);
void rpc_image_stats(struct rpc_call *call, json_t *params);
void rpc_image_flush(struct rpc_call *call, json_t *params);
/* Check the images a --config file opens at start (-EINVAL, reason in
 * msg); then open them (no connection: failures are logged). */
int images_check_config(json_t *list, char *msg, size_t msglen);
/* Open each image of list (image.open params) as if asked; with
 * skip_open, quietly skip those whose name or file is already open. */
void images_open_at_start(struct svc *svc, json_t *list, bool skip_open);

/* The record of open images (state.c). state_load(): the image.open
 * params in file (NULL when it does not exist yet), or -EINVAL after
 * saying why on stderr. state_save(): rewrite it from the open images
 * (no-op without --state-file); errors are logged. */
int state_load(const char *file, json_t **images);
int state_save(struct svc *svc);
/* Shutdown: close every image (the workers flush them); then done(svc). */
void images_close_all(struct svc *svc, void (*done)(struct svc *svc));

/* ---- worker side of image requests (worker_image.c) --------------------- */

struct image_open_args {
	const char *path;
	bool read_only;
	bool buffered;
	uint64_t l2_cache_size;
	uint64_t refcount_cache_size;
	uint32_t l2_slice_size;
	uint32_t flush_interval_ms;
	char *const *allow_dirs;
	unsigned n_allow_dirs;
	const char *backing;        /* names the caller allows exactly, or NULL */
	const char *data_file;
};

/* A request to an image's home worker and its reply. fn runs on the
 * worker; it sets result (0 or -errno), msg, and reply (a JSON result or
 * NULL), then posts done back to the main thread. */
struct image_req {
	struct msg m;
	struct svc *svc;
	struct worker *worker;
	struct svc_image *si;       /* main thread's record (not read there) */
	struct worker_image *wi;    /* the worker's record (not read on main) */
	struct rpc_call *call;      /* NULL: no reply */
	const char *name;           /* the image's name (main's, unchanging) */
	bool path_refused;          /* the path policy refused a file */
	unsigned attempts;          /* opens retried while the image was locked */
	void (*done)(struct image_req *r); /* on the main thread */
	int result;
	char msg[512];
	json_t *reply;
	bool reset;                 /* stats: reset after reading */
	bool since_open;            /* stats: ignore resets (metrics) */
	void *reply_opaque;         /* for done() */
	bool then_stats;            /* flush: reply with stats once done */
	bool force;
	struct image_open_args open;
};

/* A request to si's home worker: fn runs there, done back on the main
 * thread (NULL when out of memory). */
struct image_req *image_req_new(struct svc *svc, struct svc_image *si,
				void (*fn)(struct msg *m),
				void (*done)(struct image_req *r));

void worker_open_image(struct msg *m);
void worker_close_image(struct msg *m);
void worker_image_info(struct msg *m);
void worker_image_stats(struct msg *m);
void worker_flush_image(struct msg *m);
/* For the image's queues (worker_queue.c), on its home worker. */
const char *worker_image_name(const struct worker_image *wi);
struct qcow2_image *worker_image_engine(const struct worker_image *wi);
bool worker_image_open(const struct worker_image *wi); /* not closing */
/* The operations counted per image, whatever path brought them (the
 * queues now, exports later). */
enum image_op { OP_READ, OP_WRITE, OP_FLUSH, OP_WRITE_ZEROES, OP_DISCARD,
		OP_NOPS };
#define OP_HIST_BUCKETS 22 /* bucket i < 21: latency < 2^i us; 21: more */

struct op_stats {
	uint64_t requests, bytes, errors;
	uint64_t total_ns;
	uint64_t hist[OP_HIST_BUCKETS];
};

void worker_image_io_started(struct worker_image *wi);
/* A request of the image finished: count it (result < 0: an error). */
void worker_image_io_done(struct worker_image *wi, enum image_op op,
			  uint64_t bytes, int result, uint64_t ns,
			  const char *error);
/* A request the engine refused when it was made (a write to a read-only
 * or corrupt image, a range it rejects): counted as a failed request, but
 * not an IO error (no io.error event: the client asked for it). */
void worker_image_io_refused(struct worker_image *wi, enum image_op op);
void worker_image_queue_added(struct worker_image *wi);
void worker_image_queue_gone(struct worker_image *wi);

/* ---- queues (worker_queue.c, rpc_queue.c) ------------------------------- */

struct wqueue;

/* Main -> worker: attach the queue on this socket; worker -> main: it
 * attached, failed (result < 0) or was detached. */
struct queue_msg {
	struct msg m;
	struct svc *svc;
	struct worker *worker;
	struct svc_image *si;
	struct worker_image *wi;
	int fd;
	uint64_t id;
	int result;
	bool detached;
	char msg[256];
	struct rpc_call *call;       /* queue.detach: the request to answer */
};

/* queue.detach on the worker: detach queue id of the image (result
 * -ENOENT when there is none), then back to the main thread. */
void worker_detach_queue(struct msg *m);
void queue_detach_on_main(struct msg *m);

/* Worker -> main: a request on an image failed (for the io.error event). */
struct io_error_msg {
	struct msg m;
	struct svc *svc;
	struct svc_image *si;
	enum image_op op;
	int err;
	uint64_t dropped;            /* events not sent since the last one */
	char msg[256];
};

/* On the main thread: emit the io.error event. */
void io_error_on_main(struct msg *m);

/* The engine marked an image corrupt (once per open image). */
struct corrupt_msg {
	struct msg m;
	struct svc *svc;
	struct svc_image *si;
	char reason[512];
};

/* On the main thread: log it and emit the image.corrupt event. */
void image_corrupt_on_main(struct msg *m);
const char *image_op_name(enum image_op op);

void worker_attach_queue(struct msg *m);
void queue_event_on_main(struct msg *m);
/* Publish the completions of the worker's queues (once per loop turn). */
void worker_publish_queues(struct worker *w);
/* Detach the queues on wi (the image is closing). */
void worker_detach_queues(struct worker *w, struct worker_image *wi,
			  const char *why);
/* Post a finished request back to the main thread. */
void image_req_finish(struct image_req *r);

#endif
