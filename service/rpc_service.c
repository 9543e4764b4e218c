/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* service.* and rpc.discover (main thread). */
#include <errno.h>
#include <stdlib.h>

#include "service.h"

extern const char qcow2d_openrpc_json[]; /* schemas/qcow2d.openrpc.json */

void rpc_service_version(struct rpc_call *call, json_t *params)
{
	if (rpc_decode(call, params, NULL, 0, NULL) < 0)
		return;
	rpc_reply_result(call, json_pack("{s:s, s:s, s:s, s:s}", "name", "qcow2d",
					 "version", QCOW2D_VERSION, "jansson",
					 JANSSON_VERSION, "libuv",
					 uv_version_string()));
}

void rpc_service_stats(struct rpc_call *call, json_t *params)
{
	struct svc *svc = call->svc;
	json_t *workers = json_array();

	if (rpc_decode(call, params, NULL, 0, NULL) < 0) {
		json_decref(workers);
		return;
	}
	for (unsigned i = 0; i < svc->nworkers && workers; i++) {
		struct worker_stats *st = &svc->workers[i].stats;
		uint64_t up = now_ns() - st->start_ns;
		uint64_t idle = atomic_load_explicit(&st->idle_ns, memory_order_relaxed);
		uint64_t batches = atomic_load_explicit(&st->ring_batches,
							memory_order_relaxed);
		uint64_t reqs = atomic_load_explicit(&st->ring_requests,
						     memory_order_relaxed);

		json_array_append_new(
			workers,
			json_pack("{s:i, s:I, s:I, s:I, s:I, s:I, s:f, s:f}", "id", (int)i,
				  "images",
				  (json_int_t)atomic_load_explicit(
					  &st->images, memory_order_relaxed),
				  "loop_iterations",
				  (json_int_t)atomic_load_explicit(
					  &st->loop_iterations, memory_order_relaxed),
				  "timer_writebacks",
				  (json_int_t)atomic_load_explicit(
					  &st->writebacks, memory_order_relaxed),
				  "ring_batches", (json_int_t)batches,
				  "ring_requests", (json_int_t)reqs,
				  "idle_seconds", (double)idle / 1e9,
				  /* (idle is as of the worker's last loop turn) */
				  "busy_ratio", up && idle < up ?
						1.0 - (double)idle / (double)up : 0.0));
	}
	rpc_reply_result(
		call,
		json_pack("{s:f, s:{s:i, s:I, s:I}, s:i, s:o, s:{s:I, s:I, s:O}}",
			  "uptime_seconds", (double)(now_ns() - svc->start_ns) / 1e9,
			  "connections", "open", (int)svc->nconns, "total",
			  (json_int_t)svc->counters.connections_total, "refused",
			  (json_int_t)svc->counters.connections_refused,
			  "images", (int)svc->nimages, "workers", workers,
			  "requests", "total",
			  (json_int_t)svc->counters.requests_total, "errors",
			  (json_int_t)svc->counters.errors_total, "by_method",
			  svc->method_counts));
}

void rpc_discover(struct rpc_call *call, json_t *params)
{
	static json_t *doc;
	json_error_t err;

	if (rpc_decode(call, params, NULL, 0, NULL) < 0)
		return;
	if (!doc)
		doc = json_loads(qcow2d_openrpc_json, 0, &err);
	if (!doc) {
		rpc_reply_protocol_error(call, RPC_INTERNAL_ERROR,
					 "the built-in OpenRPC document does not "
					 "parse: %s", err.text);
		return;
	}
	rpc_reply_result(call, json_incref(doc));
}
