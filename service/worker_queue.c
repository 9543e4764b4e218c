/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * A client's queue on an image's home worker (ipc/: the rings). The
 * connection that asked for queue.attach is handed to the worker, which
 * completes the handshake on it (the client's hello and its fds, our
 * reply), then polls the queue's doorbell: requests are taken from the
 * ring (ipc/ validates them), become engine requests on the image, and
 * their results go back to the ring; completions are published once per
 * loop iteration. The connection stays open for the queue's life: the
 * client hanging it up detaches the queue (after its requests in flight
 * have completed).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "qcow2_ipc.h"
#include "service.h"

#define QUEUE_TAKE_BATCH 64
#define QUEUE_MAX_IO_BYTES (8u << 20)
/* A client has this long after the attach reply to send its hello. */
#define QUEUE_HELLO_TIMEOUT_MS 5000

struct wqueue {
	struct wqueue *next;         /* the worker's queues */
	struct worker *w;
	struct queue_msg *attach;    /* until the handshake is done */
	struct svc_image *si;        /* main thread's, for messages only */
	struct worker_image *wi;
	struct qcow2_image *img;
	uint64_t id;
	int sock;
	uv_poll_t sock_poll;
	uv_poll_t kick_poll;
	bool kick_polling;
	uv_timer_t hello_timer;      /* until the hello is in */
	bool hello_timing;
	bool reported;               /* the main thread knows how it ended */
	struct qcow2_ipc_server *srv;
	unsigned inflight;           /* engine requests not completed */
	unsigned handles;            /* open uv handles */
	bool closing;
	uint64_t requests, errors;
};

/* An engine request made from a ring entry. */
struct qop {
	struct wqueue *q;
	uint32_t id;
	enum image_op op;
	uint64_t bytes;
	uint64_t start_ns;
};

static enum image_op image_op_of(uint8_t opcode)
{
	switch (opcode) {
	case QCOW2_IPC_OP_READ: return OP_READ;
	case QCOW2_IPC_OP_WRITE: return OP_WRITE;
	case QCOW2_IPC_OP_FLUSH: return OP_FLUSH;
	case QCOW2_IPC_OP_WRITE_ZEROES: return OP_WRITE_ZEROES;
	default: return OP_DISCARD;
	}
}

static void queue_detach(struct wqueue *q, const char *why);

static void post_event(struct wqueue *q, int result, const char *msg)
{
	struct queue_msg *m = calloc(1, sizeof(*m));

	if (!m)
		return; /* the main thread's count goes stale; nothing else */
	m->svc = q->w->svc;
	m->si = q->si;
	m->id = q->id;
	m->result = result;
	m->detached = result == 0 && q->closing;
	snprintf(m->msg, sizeof(m->msg), "%s", msg ? msg : "");
	m->m.fn = queue_event_on_main;
	mailbox_post(&m->svc->mb, &m->m);
}

static void handle_closed(uv_handle_t *h)
{
	struct wqueue *q = h->data;

	if (--q->handles == 0) {
		if (q->sock >= 0)
			close(q->sock);
		free(q);
	}
}

/* Everything in flight is done: free the queue. */
static void queue_free(struct wqueue *q)
{
	struct wqueue **pp = &q->w->queues;

	while (*pp && *pp != q)
		pp = &(*pp)->next;
	if (*pp)
		*pp = q->next;
	if (q->srv) {
		qcow2_ipc_server_publish(q->srv);
		qcow2_ipc_server_close(q->srv);
		q->srv = NULL;
		/* the main thread learns of the detach before any close
		 * reply this lets through */
		post_event(q, 0, NULL);
		worker_image_queue_gone(q->wi);
	} else if (!q->reported) {
		/* detached before its hello (a forced close, a stop): the
		 * client learns it from the reply, the main thread from us */
		qcow2_ipc_server_send_reply(q->sock, 1, -ESHUTDOWN);
		log_msg(LOG_INFO, "queue %llu of image %s: dropped before its hello "
			"(the image is closing)", (unsigned long long)q->id,
			worker_image_name(q->wi));
		post_event(q, -ESHUTDOWN, "the image was closed before the hello");
	}
	if (q->hello_timing)
		uv_close((uv_handle_t *)&q->hello_timer, handle_closed);
	uv_close((uv_handle_t *)&q->sock_poll, handle_closed);
	if (q->kick_polling)
		uv_close((uv_handle_t *)&q->kick_poll, handle_closed);
}

static void queue_detach(struct wqueue *q, const char *why)
{
	if (q->closing)
		return;
	q->closing = true;
	log_msg(LOG_INFO, "queue %llu of image %s detached: %s",
		(unsigned long long)q->id, worker_image_name(q->wi), why);
	uv_poll_stop(&q->sock_poll);
	if (q->kick_polling)
		uv_poll_stop(&q->kick_poll);
	if (q->inflight == 0)
		queue_free(q);
}

static void op_done(void *opaque, int result, const char *error)
{
	struct qop *op = opaque;
	struct wqueue *q = op->q;

	qcow2_ipc_server_complete(q->srv, op->id, result);
	q->inflight--;
	worker_image_io_done(q->wi, op->op, op->bytes, result,
			     now_ns() - op->start_ns, error);
	free(op);
	if (result < 0)
		q->errors++;
	if (q->closing && q->inflight == 0)
		queue_free(q);
}

/* One ring entry to the engine. */
static void start_op(struct wqueue *q, const struct qcow2_ipc_server_req *r)
{
	struct qop *op = malloc(sizeof(*op));
	int ret;

	q->requests++;
	if (!op) {
		qcow2_ipc_server_complete(q->srv, r->id, -ENOMEM);
		return;
	}
	op->q = q;
	op->id = r->id;
	op->op = image_op_of(r->opcode);
	op->bytes = r->opcode == QCOW2_IPC_OP_FLUSH ? 0 : r->len;
	op->start_ns = now_ns();
	switch (r->opcode) {
	case QCOW2_IPC_OP_READ:
		ret = qcow2_readv(q->img, r->offset, r->iov, r->nr_iov, op_done, op);
		break;
	case QCOW2_IPC_OP_WRITE:
		ret = qcow2_writev(q->img, r->offset, r->iov, r->nr_iov, op_done, op);
		break;
	case QCOW2_IPC_OP_FLUSH:
		ret = qcow2_flush(q->img, op_done, op);
		break;
	case QCOW2_IPC_OP_WRITE_ZEROES:
		ret = qcow2_write_zeroes(q->img, r->offset, r->len,
					 r->flags & QCOW2_IPC_F_UNMAP ?
						 QCOW2_ZERO_UNMAP : 0,
					 op_done, op);
		break;
	case QCOW2_IPC_OP_DISCARD:
		ret = qcow2_discard(q->img, r->offset, r->len, op_done, op);
		break;
	default:
		ret = -EINVAL; /* ipc/ lets only known opcodes through */
	}
	if (ret < 0) {
		/* refused at once (read-only image, a range the engine
		 * rejects): the entry completes with the error */
		worker_image_io_refused(q->wi, op->op);
		free(op);
		q->errors++;
		qcow2_ipc_server_complete(q->srv, r->id, ret);
		return;
	}
	q->inflight++;
	worker_image_io_started(q->wi);
}

/* Take what the ring holds, until the client's side is empty and the
 * need-wakeup flag is set (then the doorbell wakes us). */
static void queue_run(struct wqueue *q)
{
	struct qcow2_ipc_server_req reqs[QUEUE_TAKE_BATCH];

	while (!q->closing) {
		unsigned n = 0;
		int ret = qcow2_ipc_server_take(q->srv, reqs, QUEUE_TAKE_BATCH, &n);

		if (ret < 0) {
			queue_detach(q, "the client broke the ring protocol");
			return;
		}
		for (unsigned i = 0; i < n; i++)
			start_op(q, &reqs[i]);
		if (n) {
			atomic_fetch_add_explicit(&q->w->stats.ring_batches, 1,
						  memory_order_relaxed);
			atomic_fetch_add_explicit(&q->w->stats.ring_requests, n,
						  memory_order_relaxed);
			continue;
		}
		ret = qcow2_ipc_server_prepare_sleep(q->srv);
		if (ret == -EAGAIN)
			continue;
		if (ret < 0)
			queue_detach(q, "the client broke the ring protocol");
		return;
	}
}

static void on_kick(uv_poll_t *p, int status, int events)
{
	struct wqueue *q = p->data;

	(void)events;
	if (status < 0) {
		queue_detach(q, uv_strerror(status));
		return;
	}
	qcow2_ipc_server_woken(q->srv);
	queue_run(q);
}

static void on_sock_after_attach(uv_poll_t *p, int status, int events)
{
	struct wqueue *q = p->data;
	char c;
	ssize_t n;

	(void)events;
	if (status < 0) {
		queue_detach(q, uv_strerror(status));
		return;
	}
	n = recv(q->sock, &c, 1, MSG_DONTWAIT | MSG_PEEK);
	if (n == 0)
		queue_detach(q, "the client closed its connection");
	else if (n > 0)
		queue_detach(q, "the client sent data after the handshake");
	else if (errno != EAGAIN && errno != EINTR)
		queue_detach(q, strerror(errno));
}

static void attach_failed(struct wqueue *q, int err, const char *what)
{
	char msg[256];

	snprintf(msg, sizeof(msg), "%s: %s", what, strerror(-err));
	log_msg(LOG_WARN, "queue %llu of image %s not attached: %s",
		(unsigned long long)q->id, worker_image_name(q->wi), msg);
	post_event(q, err, msg);
	q->reported = true;
	q->closing = true;
	uv_poll_stop(&q->sock_poll);
	queue_free(q);
}

static void on_hello_timeout(uv_timer_t *t)
{
	struct wqueue *q = t->data;

	qcow2_ipc_server_send_reply(q->sock, 1, -ETIMEDOUT);
	attach_failed(q, -ETIMEDOUT, "no hello within 5 s of the attach reply");
}

/* The client's hello arrived (or it hung up): finish the handshake. */
static void on_hello(uv_poll_t *p, int status, int events)
{
	struct wqueue *q = p->data;
	struct qcow2_ipc_attach att = { .size = sizeof(att) };
	struct qcow2_ipc_server_opts so = { .size = sizeof(so) };
	struct qcow2_info info;
	int ret, avail = 0;

	(void)events;
	if (status < 0) {
		uv_poll_stop(p);
		attach_failed(q, status, "waiting for the hello");
		return;
	}
	/* Never wait on the socket here (a client sending its hello a byte
	 * at a time would stall every image of this worker): read it once
	 * all of it is there (its fds come with its first byte), or the peer
	 * has gone. The hello timer bounds the wait. */
	if (ioctl(q->sock, FIONREAD, &avail) == 0 &&
	    avail < (int)sizeof(struct qcow2_ipc_hello)) {
		char c;
		ssize_t n = recv(q->sock, &c, 1, MSG_PEEK | MSG_DONTWAIT);
		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
			uv_poll_stop(p);
			attach_failed(q, n == 0 ? -ECONNRESET : -errno,
				      "waiting for the hello");
		}
		return; /* more to come */
	}
	uv_poll_stop(p);
	uv_timer_stop(&q->hello_timer);
	ret = qcow2_ipc_server_recv_hello(q->sock, &att);
	if (ret < 0) {
		if (ret != -ECONNRESET && ret != -EPIPE)
			qcow2_ipc_server_send_reply(q->sock, 1, ret);
		attach_failed(q, ret, "the client's hello");
		return;
	}
	qcow2_get_info(q->img, &info);
	so.disk_size = info.virtual_size;
	so.block_size = info.block_size;
	so.buf_align = 1; /* the engine bounces what O_DIRECT cannot take */
	so.max_io_bytes = QUEUE_MAX_IO_BYTES;
	ret = qcow2_ipc_server_open(&att, &so, &q->srv);
	qcow2_ipc_server_send_reply(q->sock, att.version, ret);
	qcow2_ipc_attach_close(&att);
	if (ret < 0) {
		q->srv = NULL;
		attach_failed(q, ret, "the client's queue");
		return;
	}
	uv_poll_init(&q->w->loop, &q->kick_poll, qcow2_ipc_server_kick_fd(q->srv));
	q->kick_poll.data = q;
	q->kick_polling = true;
	q->handles++;
	uv_poll_start(&q->kick_poll, UV_READABLE, on_kick);
	uv_poll_start(&q->sock_poll, UV_READABLE | UV_DISCONNECT,
		      on_sock_after_attach);
	worker_image_queue_added(q->wi);
	log_msg(LOG_INFO, "queue %llu attached to image %s (%u requests "
		"recovered in flight)", (unsigned long long)q->id,
		worker_image_name(q->wi), qcow2_ipc_server_in_flight(q->srv));
	post_event(q, 0, NULL);
	queue_run(q); /* requests recovered from the in-flight table */
}

void worker_attach_queue(struct msg *m)
{
	struct queue_msg *qm = (struct queue_msg *)m;
	struct worker *w = qm->worker;
	struct wqueue *q = calloc(1, sizeof(*q));

	if (!q || !worker_image_open(qm->wi)) {
		close(qm->fd);
		qm->result = q ? -ESHUTDOWN : -ENOMEM;
		snprintf(qm->msg, sizeof(qm->msg), "%s", q ? "the image is closing" :
							     "out of memory");
		free(q);
		qm->m.fn = queue_event_on_main;
		mailbox_post(&qm->svc->mb, &qm->m);
		return;
	}
	q->w = w;
	q->si = qm->si;
	q->wi = qm->wi;
	q->img = worker_image_engine(qm->wi);
	q->id = qm->id;
	q->sock = qm->fd;
	free(qm);
	uv_poll_init(&w->loop, &q->sock_poll, q->sock);
	q->sock_poll.data = q;
	uv_timer_init(&w->loop, &q->hello_timer);
	q->hello_timer.data = q;
	q->hello_timing = true;
	q->handles = 2;
	q->next = w->queues;
	w->queues = q;
	uv_timer_start(&q->hello_timer, on_hello_timeout, QUEUE_HELLO_TIMEOUT_MS, 0);
	uv_poll_start(&q->sock_poll, UV_READABLE | UV_DISCONNECT, on_hello);
}

void worker_detach_queue(struct msg *m)
{
	struct queue_msg *qm = (struct queue_msg *)m;
	struct wqueue *q;

	for (q = qm->worker->queues; q; q = q->next)
		if (q->id == qm->id && q->wi == qm->wi && q->srv && !q->closing)
			break;
	qm->result = q ? 0 : -ENOENT;
	if (q)
		queue_detach(q, "queue.detach");
	qm->m.fn = queue_detach_on_main;
	mailbox_post(&qm->svc->mb, &qm->m);
}

void worker_publish_queues(struct worker *w)
{
	/* (take() completes invalid entries itself: publish every queue;
	 * with nothing new, publishing is one comparison) */
	for (struct wqueue *q = w->queues; q; q = q->next)
		if (q->srv)
			qcow2_ipc_server_publish(q->srv);
}

void worker_detach_queues(struct worker *w, struct worker_image *wi,
			  const char *why)
{
	struct wqueue *q = w->queues;

	while (q) {
		struct wqueue *next = q->next; /* q may be freed */
		if (q->wi == wi)
			queue_detach(q, why);
		q = next;
	}
}
