/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * JSON-RPC 2.0 over the control socket: one request (or batch) per line.
 * This file is the one place where a request is checked (structure, id,
 * method, params through rpc_decode()) before a handler sees it, and the
 * one place replies are made.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "service.h"

static const struct rpc_method methods[] = {
	{ "rpc.discover", rpc_discover },
	{ "service.version", rpc_service_version },
	{ "service.stats", rpc_service_stats },
	{ "service.metrics", rpc_service_metrics },
	{ "image.open", rpc_image_open },
	{ "image.close", rpc_image_close },
	{ "image.list", rpc_image_list },
	{ "image.info", rpc_image_info },
	{ "image.stats", rpc_image_stats },
	{ "image.flush", rpc_image_flush },
	{ "image.check", rpc_image_check },
	{ "queue.attach", rpc_queue_attach },
	{ "queue.detach", rpc_queue_detach },
	{ "events.subscribe", rpc_events_subscribe },
};

/* ---- errors -------------------------------------------------------------- */

static const char *const class_names[ERR_NCLASSES] = {
	[ERR_IMAGE_NOT_FOUND] = "ImageNotFound",
	[ERR_ALREADY_OPEN] = "AlreadyOpen",
	[ERR_BUSY] = "Busy",
	[ERR_LOCKED] = "Locked",
	[ERR_CORRUPT] = "Corrupt",
	[ERR_READ_ONLY] = "ReadOnly",
	[ERR_NOT_SUPPORTED] = "NotSupported",
	[ERR_IO] = "IOError",
	[ERR_NO_SPACE] = "NoSpace",
	[ERR_PATH_NOT_ALLOWED] = "PathNotAllowed",
	[ERR_NO_SUCH_FILE] = "NoSuchFile",
	[ERR_INVALID_IMAGE] = "InvalidImage",
	[ERR_SHUTTING_DOWN] = "ShuttingDown",
	[ERR_FAILED] = "Failed",
};

const char *rpc_error_class_name(enum rpc_error_class c)
{
	return class_names[c];
}

int rpc_error_code(enum rpc_error_class c)
{
	return -32000 - (int)c;
}

enum rpc_error_class rpc_class_of_errno(int err)
{
	switch (err) {
	case -EBUSY: return ERR_LOCKED; /* the engine's lock conflict */
	case -EUCLEAN: return ERR_CORRUPT;
	case -EROFS: return ERR_READ_ONLY;
	case -ENOTSUP: return ERR_NOT_SUPPORTED;
	case -EIO: return ERR_IO;
	case -ENOSPC: case -EDQUOT: return ERR_NO_SPACE;
	case -ENOENT: case -ENOTDIR: return ERR_NO_SUCH_FILE;
	case -EINVAL: case -EFBIG: case -ELOOP: return ERR_INVALID_IMAGE;
	case -EACCES: case -EPERM: return ERR_PATH_NOT_ALLOWED;
	default: return ERR_FAILED;
	}
}

/* ---- batches and replies ------------------------------------------------- */

struct rpc_batch {
	json_t *replies;
	unsigned pending;           /* calls not yet replied, + 1 while parsing */
	struct conn *conn;
	bool exact;                 /* a reply's id is a fraction */
};

/* Reals in results go out with 9 significant digits; an id that is a
 * fraction goes back exactly as it came (exact: 17 digits, a round trip). */
static void send_json(struct conn *conn, json_t *j, bool exact)
{
	char *text = json_dumps(j, JSON_COMPACT |
				   JSON_REAL_PRECISION(exact ? 17 : 9));

	if (text)
		conn_send(conn, text);
	else
		log_msg(LOG_ERROR, "out of memory encoding a reply");
}

static void batch_put(struct rpc_batch *b)
{
	if (--b->pending)
		return;
	if (json_array_size(b->replies))
		send_json(b->conn, b->replies, b->exact);
	json_decref(b->replies);
	conn_call_done(b->conn);
	free(b);
}

static void count_method(struct svc *svc, const char *method,
			 const char *error_class)
{
	json_t *m = json_object_get(svc->method_counts, method);

	if (!m) {
		m = json_pack("{s:I, s:{}}", "calls", (json_int_t)0, "errors");
		if (!m || json_object_set_new(svc->method_counts, method, m) < 0)
			return;
	}
	if (!error_class) {
		json_int_t n = json_integer_value(json_object_get(m, "calls"));
		json_object_set_new(m, "calls", json_integer(n + 1));
	} else {
		json_t *e = json_object_get(m, "errors");
		json_int_t n = json_integer_value(json_object_get(e, error_class));
		json_object_set_new(e, error_class, json_integer(n + 1));
	}
}

/* The call's reply (member "result" or "error", taken) goes out. */
static void finish(struct rpc_call *call, const char *member, json_t *value)
{
	json_t *resp = NULL;

	if (call->id)
		resp = json_pack("{s:s, s:O, s:o}", "jsonrpc", "2.0", "id",
				 call->id, member, value);
	else
		json_decref(value); /* a notification: no reply */
	if (call->batch) {
		if (resp) {
			json_array_append_new(call->batch->replies, resp);
			call->batch->exact |= json_is_real(call->id);
		}
		batch_put(call->batch);
	} else {
		if (resp)
			send_json(call->conn, resp, json_is_real(call->id));
		json_decref(resp);
		conn_call_done(call->conn);
	}
	json_decref(call->id);
	free(call);
}

void rpc_reply_result(struct rpc_call *call, json_t *result)
{
	if (!result) {
		rpc_reply_protocol_error(call, RPC_INTERNAL_ERROR,
					 "out of memory building the result");
		return;
	}
	finish(call, "result", result);
}

void utf8_sanitize(char *s)
{
	unsigned char *p = (unsigned char *)s;

	while (*p) {
		unsigned n, i;
		uint32_t cp, min;

		if (*p < 0x80) {
			p++;
			continue;
		}
		if (*p >= 0xc2 && *p <= 0xdf) {
			n = 1, cp = *p & 0x1f, min = 0x80;
		} else if (*p >= 0xe0 && *p <= 0xef) {
			n = 2, cp = *p & 0x0f, min = 0x800;
		} else if (*p >= 0xf0 && *p <= 0xf4) {
			n = 3, cp = *p & 0x07, min = 0x10000;
		} else {
			*p++ = '?';
			continue;
		}
		/* a NUL is not a continuation byte: no reading past the end */
		for (i = 1; i <= n && (p[i] & 0xc0) == 0x80; i++)
			cp = (cp << 6) | (p[i] & 0x3f);
		if (i <= n || cp < min || cp > 0x10ffff ||
		    (cp >= 0xd800 && cp <= 0xdfff)) {
			*p++ = '?';
			continue;
		}
		p += n + 1;
	}
}

json_t *json_string_lossy(const char *s)
{
	char *copy;
	json_t *j;

	if (!s)
		return json_null();
	if (!(copy = strdup(s)))
		return NULL;
	utf8_sanitize(copy);
	j = json_string(copy);
	free(copy);
	return j;
}

static void reply_error(struct rpc_call *call, int code, json_t *data,
			const char *fmt, va_list ap)
{
	char msg[1024];
	json_t *err;

	vsnprintf(msg, sizeof(msg), fmt, ap);
	/* Messages quote what clients and images say, and vsnprintf() or
	 * "%.100s" may cut a character in two: jansson takes valid UTF-8
	 * only. */
	utf8_sanitize(msg);
	err = json_pack("{s:i, s:s}", "code", code, "message", msg);
	if (err && data)
		json_object_set_new(err, "data", data);
	else
		json_decref(data);
	if (!err)
		err = json_null();
	call->svc->counters.errors_total++;
	finish(call, "error", err);
}

void rpc_reply_error(struct rpc_call *call, enum rpc_error_class cls, int err,
		     const char *fmt, ...)
{
	va_list ap;
	json_t *data = json_pack("{s:s, s:i}", "class", class_names[cls],
				 "errno", err < 0 ? -err : err);

	if (call->method)
		count_method(call->svc, call->method, class_names[cls]);
	va_start(ap, fmt);
	reply_error(call, rpc_error_code(cls), data, fmt, ap);
	va_end(ap);
}

void rpc_reply_protocol_error(struct rpc_call *call, int code,
			      const char *fmt, ...)
{
	va_list ap;

	if (call->method)
		count_method(call->svc, call->method,
			     code == RPC_INVALID_PARAMS ? "InvalidParams" :
							  "InternalError");
	va_start(ap, fmt);
	reply_error(call, code, NULL, fmt, ap);
	va_end(ap);
}

/* ---- params -------------------------------------------------------------- */

static const char *expected(enum param_type t)
{
	switch (t) {
	case P_STRING: return "a string";
	case P_BOOL: return "true or false";
	case P_U32: return "an integer from 0 to 4294967295";
	case P_U64: return "a non-negative integer";
	default: return "?";
	}
}

static void names_of(const struct param_spec *spec, unsigned n, char *buf,
		     size_t len)
{
	size_t at = 0;

	buf[0] = '\0';
	for (unsigned i = 0; i < n && at < len; i++)
		at += (size_t)snprintf(buf + at, len - at, "%s%s", i ? ", " : "",
				       spec[i].name);
	if (!n)
		snprintf(buf, len, "none");
}

int params_decode(json_t *params, const struct param_spec *spec, unsigned n,
		  void *out, const char *method, char *msg, size_t msglen)
{
	const char *key;
	json_t *v;
	char names[512];

	if (params && !json_is_object(params)) {
		snprintf(msg, msglen, "params must be an object (by name)");
		return -EINVAL;
	}
	json_object_foreach(params, key, v) {
		unsigned i;
		for (i = 0; i < n && strcmp(spec[i].name, key); i++)
			;
		if (i == n) {
			names_of(spec, n, names, sizeof(names));
			snprintf(msg, msglen, "unknown param '%s' (%s takes: %s)",
				 key, method, names);
			return -EINVAL;
		}
	}
	for (unsigned i = 0; i < n; i++) {
		char *field = (char *)out + spec[i].offset;
		bool ok;

		v = params ? json_object_get(params, spec[i].name) : NULL;
		if (!v) {
			if (!spec[i].required)
				continue;
			snprintf(msg, msglen, "missing param '%s' (%s)",
				 spec[i].name, expected(spec[i].type));
			return -EINVAL;
		}
		switch (spec[i].type) {
		case P_STRING:
			ok = json_is_string(v) &&
			     strlen(json_string_value(v)) == json_string_length(v);
			if (ok)
				*(const char **)field = json_string_value(v);
			break;
		case P_BOOL:
			ok = json_is_boolean(v);
			if (ok)
				*(bool *)field = json_is_true(v);
			break;
		case P_U32:
			ok = json_is_integer(v) && json_integer_value(v) >= 0 &&
			     json_integer_value(v) <= UINT32_MAX;
			if (ok)
				*(uint32_t *)field = (uint32_t)json_integer_value(v);
			break;
		case P_U64:
			ok = json_is_integer(v) && json_integer_value(v) >= 0;
			if (ok)
				*(uint64_t *)field = (uint64_t)json_integer_value(v);
			break;
		default:
			ok = false;
		}
		if (!ok) {
			snprintf(msg, msglen, "param '%s': expected %s%s",
				 spec[i].name, expected(spec[i].type),
				 spec[i].type == P_STRING && json_is_string(v) ?
					 " without NUL characters" : "");
			return -EINVAL;
		}
		if (spec[i].present_offset)
			*(bool *)((char *)out + spec[i].present_offset) = true;
	}
	return 0;
}

int rpc_decode(struct rpc_call *call, json_t *params,
	       const struct param_spec *spec, unsigned n, void *out)
{
	char msg[1024];
	int ret = params_decode(params, spec, n, out, call->method, msg,
				sizeof(msg));

	if (ret < 0)
		rpc_reply_protocol_error(call, RPC_INVALID_PARAMS, "%s", msg);
	return ret;
}

/* ---- dispatch ------------------------------------------------------------ */

static struct rpc_call *call_new(struct svc *svc, struct conn *conn,
				 struct rpc_batch *b)
{
	struct rpc_call *call = calloc(1, sizeof(*call));

	if (!call)
		return NULL;
	call->svc = svc;
	call->conn = conn;
	call->batch = b;
	if (b)
		b->pending++;
	else
		conn_call_started(conn);
	return call;
}

static bool valid_id(json_t *id)
{
	return json_is_string(id) || json_is_integer(id) || json_is_real(id) ||
	       json_is_null(id);
}

static void handle_one(struct svc *svc, struct conn *conn, json_t *req,
		       struct rpc_batch *b)
{
	struct rpc_call *call = call_new(svc, conn, b);
	json_t *id, *method, *params, *version;
	const char *name;

	if (!call) {
		log_msg(LOG_ERROR, "out of memory: a control request is dropped");
		return;
	}
	svc->counters.requests_total++;
	if (!json_is_object(req)) {
		call->id = json_null();
		rpc_reply_protocol_error(call, RPC_INVALID_REQUEST,
					 "a request must be a JSON object");
		return;
	}
	id = json_object_get(req, "id");
	version = json_object_get(req, "jsonrpc");
	method = json_object_get(req, "method");
	params = json_object_get(req, "params");
	if (id && !valid_id(id)) {
		call->id = json_null();
		rpc_reply_protocol_error(call, RPC_INVALID_REQUEST,
					 "'id' must be a string, a number or null");
		return;
	}
	/* A request without "id" is a notification, unless it is invalid
	 * (then it is answered with id null, as JSON-RPC 2.0 says). */
	call->id = id ? json_incref(id) : NULL;
	if (!json_is_string(version) || strcmp(json_string_value(version), "2.0")) {
		if (!call->id)
			call->id = json_null();
		rpc_reply_protocol_error(call, RPC_INVALID_REQUEST,
					 "'jsonrpc' must be \"2.0\"");
		return;
	}
	if (!json_is_string(method)) {
		if (!call->id)
			call->id = json_null();
		rpc_reply_protocol_error(call, RPC_INVALID_REQUEST,
					 "'method' must be a string");
		return;
	}
	if (params && !json_is_object(params) && !json_is_array(params)) {
		if (!call->id)
			call->id = json_null();
		rpc_reply_protocol_error(call, RPC_INVALID_REQUEST,
					 "'params' must be an object or an array");
		return;
	}
	name = json_string_value(method);
	for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
		if (!strcmp(methods[i].name, name)) {
			call->method = methods[i].name;
			count_method(svc, call->method, NULL);
			log_msg(LOG_DEBUG, "request %s", call->method);
			if (svc->stopping && strcmp(name, "service.version") &&
			    strcmp(name, "rpc.discover")) {
				rpc_reply_error(call, ERR_SHUTTING_DOWN, 0,
						"qcow2d is shutting down");
				return;
			}
			methods[i].fn(call, params);
			return;
		}
	}
	rpc_reply_protocol_error(call, RPC_METHOD_NOT_FOUND,
				 "unknown method '%.100s' (rpc.discover lists the "
				 "methods)", name);
}

void rpc_handle_line(struct svc *svc, struct conn *conn, const char *line,
		     size_t len)
{
	json_error_t jerr;
	/* Any JSON value parses: one that is not a request or a batch is an
	 * invalid request (-32600), not a parse error. */
	json_t *req = json_loadb(line, len,
				 JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);

	if (!req) {
		struct rpc_call *call = call_new(svc, conn, NULL);
		if (!call)
			return;
		svc->counters.requests_total++;
		call->id = json_null();
		rpc_reply_protocol_error(call, RPC_PARSE_ERROR,
					 "parse error at column %d: %s",
					 jerr.column, jerr.text);
		return;
	}
	if (json_is_array(req)) {
		size_t n = json_array_size(req), i;
		struct rpc_batch *b;
		json_t *elem;

		if (n == 0 || n > CONTROL_MAX_BATCH) {
			struct rpc_call *call = call_new(svc, conn, NULL);
			if (call) {
				svc->counters.requests_total++;
				call->id = json_null();
				if (n)
					rpc_reply_protocol_error(
						call, RPC_INVALID_REQUEST,
						"a batch of %zu requests; at most "
						"%u are taken at once",
						n, CONTROL_MAX_BATCH);
				else
					rpc_reply_protocol_error(
						call, RPC_INVALID_REQUEST,
						"an empty batch");
			}
			json_decref(req);
			return;
		}
		b = calloc(1, sizeof(*b));
		if (!b || !(b->replies = json_array())) {
			free(b);
			json_decref(req);
			log_msg(LOG_ERROR, "out of memory: a batch is dropped");
			return;
		}
		b->conn = conn;
		b->pending = 1;
		conn_call_started(conn);
		json_array_foreach(req, i, elem)
			handle_one(svc, conn, elem, b);
		batch_put(b);
	} else {
		handle_one(svc, conn, req, NULL);
	}
	json_decref(req);
}
