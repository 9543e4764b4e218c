/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * Events (main thread): events.subscribe makes a connection a subscriber;
 * each event goes to every subscriber that asked for it as a JSON-RPC
 * notification, with a wall-clock timestamp (QMP's idea: a program can
 * switch on the event name, a person can read the data).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "service.h"

static const char *const names[EV_NEVENTS] = {
	[EV_IMAGE_OPENED] = "image.opened",
	[EV_IMAGE_CLOSED] = "image.closed",
	[EV_QUEUE_ATTACHED] = "queue.attached",
	[EV_QUEUE_DETACHED] = "queue.detached",
	[EV_IO_ERROR] = "io.error",
	[EV_IMAGE_CORRUPT] = "image.corrupt",
};

const char *svc_event_name(enum svc_event ev)
{
	return names[ev];
}

void svc_emit(struct svc *svc, enum svc_event ev, json_t *data)
{
	struct timespec ts;
	json_t *note;
	char *text;

	clock_gettime(CLOCK_REALTIME, &ts);
	note = json_pack("{s:s, s:s, s:{s:s, s:f, s:o}}", "jsonrpc", "2.0",
			 "method", "event", "params", "event", names[ev],
			 "timestamp", (double)ts.tv_sec + (double)ts.tv_nsec / 1e9,
			 "data", data ? data : json_object());
	if (!note)
		return;
	text = json_dumps(note, JSON_COMPACT | JSON_REAL_PRECISION(16));
	json_decref(note);
	if (!text)
		return;
	for (struct conn *c = conn_next(svc, NULL); c; c = conn_next(svc, c))
		if (conn_subscription(c) & (1u << ev))
			conn_send(c, strdup(text));
	free(text);
}

void io_error_on_main(struct msg *m)
{
	struct io_error_msg *e = (struct io_error_msg *)m;

	log_msg(LOG_ERROR, "image %s: %s failed: %s", e->si->name,
		image_op_name(e->op), e->msg);
	svc_emit(e->svc, EV_IO_ERROR,
		 json_pack("{s:s, s:s, s:i, s:s, s:I}", "name", e->si->name,
			   "op", image_op_name(e->op), "errno", -e->err,
			   "message", e->msg, "dropped", (json_int_t)e->dropped));
	free(e);
}

void image_corrupt_on_main(struct msg *m)
{
	struct corrupt_msg *c = (struct corrupt_msg *)m;

	utf8_sanitize(c->reason); /* it names the file */
	log_msg(LOG_ERROR, "image %s is marked corrupt: %s; it refuses writes "
		"now: close it and repair it offline with qcow2-img check -r all",
		c->si->name, c->reason);
	svc_emit(c->svc, EV_IMAGE_CORRUPT,
		 json_pack("{s:s, s:s}", "name", c->si->name, "message",
			   c->reason));
	free(c);
}

void rpc_events_subscribe(struct rpc_call *call, json_t *params)
{
	const char *key;
	json_t *v, *list = NULL, *out;
	unsigned mask = 0;
	size_t i;

	/* (an array param: the table-driven decoder takes scalars only) */
	json_object_foreach(params, key, v) {
		if (strcmp(key, "events")) {
			rpc_reply_protocol_error(call, RPC_INVALID_PARAMS,
						 "unknown param '%s' (events.subscribe "
						 "takes: events)", key);
			return;
		}
		list = v;
	}
	if (params && !json_is_object(params)) {
		rpc_reply_protocol_error(call, RPC_INVALID_PARAMS,
					 "params must be an object (by name)");
		return;
	}
	if (!list) {
		mask = (1u << EV_NEVENTS) - 1;
	} else if (!json_is_array(list)) {
		rpc_reply_protocol_error(call, RPC_INVALID_PARAMS,
					 "param 'events': expected an array of event "
					 "names");
		return;
	} else {
		json_array_foreach(list, i, v) {
			unsigned e;
			for (e = 0; e < EV_NEVENTS; e++)
				if (json_is_string(v) && !strcmp(json_string_value(v), names[e]))
					break;
			if (e == EV_NEVENTS) {
				rpc_reply_protocol_error(
					call, RPC_INVALID_PARAMS,
					"param 'events': unknown event %s%s%s (events: "
					"image.opened, image.closed, queue.attached, "
					"queue.detached, io.error, image.corrupt)",
					json_is_string(v) ? "'" : "",
					json_is_string(v) ? json_string_value(v) : "(not a string)",
					json_is_string(v) ? "'" : "");
				return;
			}
			mask |= 1u << e;
		}
	}
	if (!call->conn || call->batch) {
		rpc_reply_protocol_error(call, RPC_INVALID_REQUEST,
					 "events.subscribe must be a request of its own");
		return;
	}
	conn_subscribe(call->conn, mask);
	out = json_array();
	for (unsigned e = 0; e < EV_NEVENTS && out; e++)
		if (mask & (1u << e))
			json_array_append_new(out, json_string(names[e]));
	rpc_reply_result(call, json_pack("{s:o}", "events", out));
}
