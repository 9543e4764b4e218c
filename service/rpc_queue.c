/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * queue.attach (main thread): the reply tells the client the rules its
 * requests are held to; then the connection's socket goes to the image's
 * home worker, where the ipc handshake (ipc/PROTOCOL.md) completes and the
 * queue lives until the client hangs up.
 */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <unistd.h>

#include "service.h"

struct attach_params {
	const char *name;
};

static const struct param_spec attach_spec[] = {
	{ "name", P_STRING, offsetof(struct attach_params, name), true, 0 },
};

struct detach_params {
	const char *name;
	uint64_t queue;
};

static const struct param_spec detach_spec[] = {
	{ "name", P_STRING, offsetof(struct detach_params, name), true, 0 },
	{ "queue", P_U64, offsetof(struct detach_params, queue), true, 0 },
};

void queue_detach_on_main(struct msg *m)
{
	struct queue_msg *qm = (struct queue_msg *)m;

	if (qm->result < 0)
		rpc_reply_error(qm->call, ERR_IMAGE_NOT_FOUND, ENOENT,
				"image '%s' has no queue %llu attached (image.list "
				"counts them; queue.attached events give their ids)",
				qm->si->name, (unsigned long long)qm->id);
	else
		rpc_reply_result(qm->call, json_pack("{s:s, s:I}", "name",
						     qm->si->name, "queue",
						     (json_int_t)qm->id));
	qm->si->pins--;
	registry_release(qm->si);
	free(qm);
}

/* queue.detach: the queue's requests in flight finish, then it goes (the
 * client sees its connection closed); the reply comes once it is
 * detaching, the queue.detached event once it is gone. */
void rpc_queue_detach(struct rpc_call *call, json_t *params)
{
	struct detach_params p = { 0 };
	struct svc_image *si;
	struct queue_msg *qm;

	if (rpc_decode(call, params, detach_spec, 2, &p) < 0)
		return;
	if (!(si = rpc_open_image(call, p.name)))
		return;
	if (!(qm = calloc(1, sizeof(*qm)))) {
		rpc_reply_protocol_error(call, RPC_INTERNAL_ERROR, "out of memory");
		return;
	}
	qm->m.fn = worker_detach_queue;
	qm->svc = call->svc;
	qm->worker = si->home;
	qm->si = si;
	qm->wi = si->wi;
	qm->id = p.queue;
	qm->call = call;
	si->pins++;
	mailbox_post(&si->home->mb, &qm->m);
}

struct handover {
	struct svc *svc;
	struct svc_image *si;
	uint64_t id;
};

void queue_event_on_main(struct msg *m)
{
	struct queue_msg *qm = (struct queue_msg *)m;
	struct svc_image *si = qm->si;

	if (qm->result < 0) {
		si->clients--;
		log_msg(LOG_WARN, "queue %llu of image %s: %s",
			(unsigned long long)qm->id, si->name, qm->msg);
	} else if (qm->detached) {
		si->clients--;
		svc_emit(qm->svc, EV_QUEUE_DETACHED,
			 json_pack("{s:s, s:I}", "name", si->name, "queue",
				   (json_int_t)qm->id));
	} else {
		svc_emit(qm->svc, EV_QUEUE_ATTACHED,
			 json_pack("{s:s, s:I}", "name", si->name, "queue",
				   (json_int_t)qm->id));
	}
	free(qm);
}

static void on_handover(void *opaque, int fd)
{
	struct handover *h = opaque;
	struct svc_image *si = h->si;
	struct queue_msg *qm;

	si->pins--;
	if (fd < 0 || si->state != IMG_OPEN || !(qm = calloc(1, sizeof(*qm)))) {
		if (fd >= 0)
			close(fd);
		si->clients--;
		log_msg(LOG_INFO, "queue %llu of image %s: not attached (%s)",
			(unsigned long long)h->id, si->name,
			fd < 0 ? "the client left or sent more before the reply" :
				 "the image is closing");
		free(h);
		registry_release(si);
		return;
	}
	qm->m.fn = worker_attach_queue;
	qm->svc = h->svc;
	qm->worker = si->home;
	qm->si = si;
	qm->wi = si->wi;
	qm->fd = fd;
	qm->id = h->id;
	free(h);
	mailbox_post(&si->home->mb, &qm->m);
}

void rpc_queue_attach(struct rpc_call *call, json_t *params)
{
	struct attach_params p = { 0 };
	struct svc *svc = call->svc;
	struct conn *conn = call->conn;
	struct svc_image *si;
	struct handover *h;
	int pid, uid;

	if (rpc_decode(call, params, attach_spec, 1, &p) < 0)
		return;
	if (call->batch || !call->id) {
		rpc_reply_protocol_error(call, RPC_INVALID_REQUEST,
					 "queue.attach must be a request of its own "
					 "(not in a batch, not a notification): the "
					 "connection becomes the queue's");
		return;
	}
	if (conn_inflight(conn) > 1) {
		rpc_reply_protocol_error(call, RPC_INVALID_REQUEST,
					 "queue.attach must be the connection's only "
					 "request in flight: the connection becomes the "
					 "queue's once its reply is written");
		return;
	}
	if (!(si = rpc_open_image(call, p.name)))
		return;
	{
		unsigned total = 0;
		for (struct svc_image *x = svc->images; x; x = x->next)
			total += x->clients;
		if (si->clients >= QUEUES_MAX_PER_IMAGE || total >= QUEUES_MAX) {
			rpc_reply_error(call, ERR_BUSY, EBUSY,
					"too many queues: image '%s' has %u (at most "
					"%u), qcow2d %u (at most %u); detach some first",
					si->name, si->clients, QUEUES_MAX_PER_IMAGE,
					total, QUEUES_MAX);
			return;
		}
	}
	h = malloc(sizeof(*h));
	if (!h) {
		rpc_reply_protocol_error(call, RPC_INTERNAL_ERROR, "out of memory");
		return;
	}
	h->svc = svc;
	h->si = si;
	h->id = ++svc->queue_ids;
	si->clients++;
	si->pins++;
	conn_peer(conn, &pid, &uid);
	log_msg(LOG_INFO, "queue %llu of image %s: attach for pid %d uid %d",
		(unsigned long long)h->id, si->name, pid, uid);
	rpc_reply_result(call, json_pack(
		"{s:I, s:s, s:i, s:I, s:i, s:i, s:i, s:i, s:b}",
		"queue", (json_int_t)h->id, "name", si->name,
		"protocol_version", 1,
		"disk_size", (json_int_t)si->virtual_size,
		"block_size", (int)si->block_size,
		"mem_align", (int)si->mem_align,
		"buf_align", 1,
		"max_io_bytes", 8 << 20,
		"read_only", si->read_only));
	conn_hand_over(conn, on_handover, h);
}
