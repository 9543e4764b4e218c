/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * image.* methods (main thread): check the params and the registry, then
 * send the work to the image's home worker and reply when it answers.
 */
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "service.h"

#define NAME_MAX_LEN 64

struct image_req *image_req_new(struct svc *svc, struct svc_image *si,
				void (*fn)(struct msg *m),
				void (*done)(struct image_req *r))
{
	struct image_req *r = calloc(1, sizeof(*r));

	if (!r)
		return NULL;
	r->m.fn = fn;
	r->svc = svc;
	r->si = si;
	r->worker = si->home;
	r->wi = si->wi;
	r->name = si->name;
	r->done = done;
	return r;
}

/* image_req_new() for call (may be NULL), or an error reply and NULL. */
static struct image_req *req_new(struct rpc_call *call, struct svc *svc,
				 struct svc_image *si,
				 void (*fn)(struct msg *m),
				 void (*done)(struct image_req *r))
{
	struct image_req *r = image_req_new(svc, si, fn, done);

	if (!r && call)
		rpc_reply_protocol_error(call, RPC_INTERNAL_ERROR, "out of memory");
	if (r)
		r->call = call;
	return r;
}

static void send_to_home(struct image_req *r)
{
	mailbox_post(&r->worker->mb, &r->m);
}

struct svc_image *rpc_open_image(struct rpc_call *call, const char *name)
{
	struct svc_image *si = registry_find(call->svc, name);

	if (!si) {
		rpc_reply_error(call, ERR_IMAGE_NOT_FOUND, ENOENT,
				"no image named '%s' is open (image.list lists "
				"them)", name);
		return NULL;
	}
	if (si->state != IMG_OPEN) {
		rpc_reply_error(call, ERR_BUSY, EBUSY, "image '%s' is being %s",
				name, si->state == IMG_OPENING ? "opened" : "closed");
		return NULL;
	}
	return si;
}

static void reply_engine_error(struct image_req *r, const char *what)
{
	enum rpc_error_class cls = r->path_refused ? ERR_PATH_NOT_ALLOWED :
						     rpc_class_of_errno(r->result);

	if (r->result == -EBUSY && !r->path_refused)
		rpc_reply_error(r->call, cls, r->result,
				"%s: %s; close it there first (retried for %d ms)",
				what, r->msg, 250);
	else
		rpc_reply_error(r->call, cls, r->result, "%s: %s", what, r->msg);
}

static bool valid_name(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > NAME_MAX_LEN)
		return false;
	for (size_t i = 0; i < n; i++) {
		char ch = s[i];
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		      (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' ||
		      ch == '-'))
			return false;
	}
	return true;
}

/* ---- image.open ---------------------------------------------------------- */

struct open_params {
	const char *path;
	const char *name;
	bool read_only;
	bool buffered;
	uint64_t l2_cache_size;
	uint64_t refcount_cache_size;
	uint32_t l2_slice_size;
	uint32_t flush_interval_ms;
	bool has_flush_interval;
	uint32_t worker;
	bool has_worker;
	const char *backing;
	const char *data_file;
};

#define OP(f) offsetof(struct open_params, f)
static const struct param_spec open_spec[] = {
	{ "path", P_STRING, OP(path), true, 0 },
	{ "name", P_STRING, OP(name), false, 0 },
	{ "read_only", P_BOOL, OP(read_only), false, 0 },
	{ "buffered", P_BOOL, OP(buffered), false, 0 },
	{ "l2_cache_size", P_U64, OP(l2_cache_size), false, 0 },
	{ "refcount_cache_size", P_U64, OP(refcount_cache_size), false, 0 },
	{ "l2_slice_size", P_U32, OP(l2_slice_size), false, 0 },
	{ "flush_interval_ms", P_U32, OP(flush_interval_ms), false,
	  OP(has_flush_interval) },
	{ "worker", P_U32, OP(worker), false, OP(has_worker) },
	{ "backing", P_STRING, OP(backing), false, 0 },
	{ "data_file", P_STRING, OP(data_file), false, 0 },
};
#undef OP
#define OPEN_SPEC_N (unsigned)(sizeof(open_spec) / sizeof(open_spec[0]))

struct open_req {
	struct image_req r;
	char *path, *backing, *data_file; /* copies: params die first */
};

static void open_req_free(struct open_req *o)
{
	free(o->path);
	free(o->backing);
	free(o->data_file);
	free(o);
}

static void close_done(struct image_req *r);

static void open_done(struct image_req *r)
{
	struct open_req *o = (struct open_req *)r;
	struct svc *svc = r->svc;
	struct svc_image *si = r->si;

	if (r->result < 0) {
		log_msg(LOG_WARN, "image %s (%s) not opened: %s", si->name,
			si->path, r->msg);
		if (r->call)
			reply_engine_error(r, "cannot open the image");
		registry_remove(svc, si);
		open_req_free(o);
		if (svc->stopping && !svc->images && svc->all_closed)
			svc->all_closed(svc);
		return;
	}
	si->state = IMG_OPEN;
	si->wi = r->wi;
	si->opened_ns = now_ns();
	si->virtual_size = (uint64_t)json_integer_value(
		json_object_get(r->reply, "virtual_size"));
	si->block_size = (uint32_t)json_integer_value(
		json_object_get(r->reply, "block_size"));
	si->mem_align = (uint32_t)json_integer_value(
		json_object_get(r->reply, "mem_align"));
	json_decref(r->reply);
	r->reply = NULL;
	log_msg(LOG_INFO, "image %s opened (%s%s) on worker %u", si->name,
		si->path, si->read_only ? ", read-only" : "", si->home->id);
	if (!svc->stopping)
		state_save(svc);
	svc_emit(svc, EV_IMAGE_OPENED,
		 json_pack("{s:s, s:s, s:i, s:b}", "name", si->name, "path",
			   si->path, "worker", (int)si->home->id, "read_only",
			   si->read_only));
	if (r->call)
		rpc_reply_result(r->call,
				 json_pack("{s:s, s:s, s:i, s:b}", "name", si->name,
					   "path", si->path, "worker",
					   (int)si->home->id, "read_only",
					   si->read_only));
	open_req_free(o);
	if (svc->stopping) {
		/* Opened while the service stops: close it right away. */
		struct image_req *c = req_new(NULL, svc, si, worker_close_image,
					      close_done);
		si->state = IMG_CLOSING;
		if (c)
			send_to_home(c);
	}
}

/* Start opening an image; call may be NULL (--config). Returns 0, or
 * -errno after replying (or logging) the reason. */
static int start_open(struct svc *svc, struct rpc_call *call,
		      const struct open_params *p, json_t *params)
{
	char real[PATH_MAX], *base;
	const char *name = p->name;
	struct svc_image *si;
	struct open_req *o;
	char namebuf[NAME_MAX_LEN + 1];

#define FAIL(cls, err, ...)                                             \
	do {                                                            \
		if (call)                                               \
			rpc_reply_error(call, cls, err, __VA_ARGS__);   \
		else                                                    \
			log_msg(LOG_ERROR, __VA_ARGS__);                \
		return -(err);                                          \
	} while (0)
#define BAD_PARAM(...)                                                     \
	do {                                                               \
		if (call)                                                  \
			rpc_reply_protocol_error(call, RPC_INVALID_PARAMS, \
						 __VA_ARGS__);             \
		else                                                       \
			log_msg(LOG_ERROR, __VA_ARGS__);                   \
		return -EINVAL;                                            \
	} while (0)

	if (p->path[0] != '/')
		BAD_PARAM("param 'path': expected an absolute path, got '%s'",
			  p->path);
	/* the service's working directory means nothing to a client */
	if (p->backing && p->backing[0] != '/')
		BAD_PARAM("param 'backing': expected an absolute path, got '%s'",
			  p->backing);
	if (p->data_file && p->data_file[0] != '/')
		BAD_PARAM("param 'data_file': expected an absolute path, got '%s'",
			  p->data_file);
	if (p->has_worker && p->worker >= svc->nworkers)
		BAD_PARAM("param 'worker': expected a worker from 0 to %u, got %u",
			  svc->nworkers - 1, p->worker);
	if (p->l2_cache_size > QCOW2D_MAX_L2_CACHE)
		BAD_PARAM("param 'l2_cache_size': expected at most %llu bytes "
			  "(1 GiB), got %llu", (unsigned long long)QCOW2D_MAX_L2_CACHE,
			  (unsigned long long)p->l2_cache_size);
	if (p->refcount_cache_size > QCOW2D_MAX_L2_CACHE)
		BAD_PARAM("param 'refcount_cache_size': expected at most %llu bytes "
			  "(1 GiB), got %llu", (unsigned long long)QCOW2D_MAX_L2_CACHE,
			  (unsigned long long)p->refcount_cache_size);
	if (p->l2_slice_size && (p->l2_slice_size & (p->l2_slice_size - 1)))
		BAD_PARAM("param 'l2_slice_size': expected a power of two, got %u",
			  p->l2_slice_size);
	if (!realpath(p->path, real))
		FAIL(rpc_class_of_errno(-errno), errno, "cannot open %s: %s",
		     p->path, strerror(errno));
	if (!name) {
		base = strrchr(p->path, '/') + 1;
		snprintf(namebuf, sizeof(namebuf), "%s", base);
		name = namebuf;
		/* too long: refused, not cut to NAME_MAX_LEN */
		if (strlen(base) > NAME_MAX_LEN || !valid_name(name))
			BAD_PARAM("the file name '%s' cannot be an image name; pass "
				  "'name' (1 to %d of A-Z a-z 0-9 . _ -)", base,
				  NAME_MAX_LEN);
	} else if (!valid_name(name)) {
		BAD_PARAM("param 'name': expected 1 to %d of A-Z a-z 0-9 . _ -, "
			  "got '%s'", NAME_MAX_LEN, name);
	}
	if ((si = registry_find(svc, name)))
		FAIL(ERR_ALREADY_OPEN, EEXIST, "an image named '%s' is already open "
		     "(%s); choose another 'name'", name, si->path);
	if ((si = registry_find_real(svc, real)))
		FAIL(ERR_ALREADY_OPEN, EEXIST, "%s is already open as image '%s'",
		     p->path, si->name);
	o = calloc(1, sizeof(*o));
	si = o ? registry_add(svc, name, p->path, real) : NULL;
	if (!si || !(o->path = strdup(p->path)) ||
	    (p->backing && !(o->backing = strdup(p->backing))) ||
	    (p->data_file && !(o->data_file = strdup(p->data_file)))) {
		if (si)
			registry_remove(svc, si);
		if (o)
			open_req_free(o);
		FAIL(ERR_FAILED, ENOMEM, "out of memory");
	}
	/* what the state file records: the params, with the name it got */
	si->params = params ? json_deep_copy(params) : json_object();
	if (si->params)
		json_object_set_new(si->params, "name", json_string(si->name));
	si->read_only = p->read_only;
	si->home = &svc->workers[p->has_worker ? p->worker :
				 svc->next_worker++ % svc->nworkers];
	o->r.m.fn = worker_open_image;
	o->r.svc = svc;
	o->r.si = si;
	o->r.worker = si->home;
	o->r.name = si->name;
	o->r.call = call;
	o->r.done = open_done;
	o->r.open.path = o->path;
	o->r.open.read_only = p->read_only;
	o->r.open.buffered = p->buffered;
	o->r.open.l2_cache_size = p->l2_cache_size;
	o->r.open.refcount_cache_size = p->refcount_cache_size;
	o->r.open.l2_slice_size = p->l2_slice_size;
	o->r.open.flush_interval_ms = p->has_flush_interval ?
		p->flush_interval_ms : svc->cfg.flush_interval_ms;
	o->r.open.allow_dirs = svc->cfg.allow_dirs;
	o->r.open.n_allow_dirs = svc->cfg.n_allow_dirs;
	o->r.open.backing = o->backing;
	o->r.open.data_file = o->data_file;
	if (call) {
		int pid, uid;
		conn_peer(call->conn, &pid, &uid);
		log_msg(LOG_INFO, "opening image %s (%s) for pid %d uid %d",
			si->name, si->path, pid, uid);
	}
	send_to_home(&o->r);
	return 0;
#undef FAIL
#undef BAD_PARAM
}

void rpc_image_open(struct rpc_call *call, json_t *params)
{
	struct open_params p = { 0 };

	if (rpc_decode(call, params, open_spec, OPEN_SPEC_N, &p) < 0)
		return;
	start_open(call->svc, call, &p, params);
}

int images_check_config(json_t *list, char *msg, size_t msglen)
{
	size_t i;
	json_t *params;

	if (!json_is_array(list)) {
		snprintf(msg, msglen, "'images' must be an array of image.open "
			 "params");
		return -EINVAL;
	}
	json_array_foreach(list, i, params) {
		struct open_params p = { 0 };
		char why[512];

		if (params_decode(params, open_spec, OPEN_SPEC_N, &p, "image.open",
				  why, sizeof(why)) < 0) {
			snprintf(msg, msglen, "images[%zu]: %s", i, why);
			return -EINVAL;
		}
	}
	return 0;
}

void images_open_at_start(struct svc *svc, json_t *list, bool skip_open)
{
	size_t i;
	json_t *params;

	json_array_foreach(list, i, params) {
		struct open_params p = { 0 };
		char why[512], real[PATH_MAX];

		if (params_decode(params, open_spec, OPEN_SPEC_N, &p, "image.open",
				  why, sizeof(why)) < 0)
			continue; /* (checked when the file was read) */
		if (skip_open &&
		    ((p.name && registry_find(svc, p.name)) ||
		     (realpath(p.path, real) && registry_find_real(svc, real)))) {
			log_msg(LOG_DEBUG, "state file: %s is open already", p.path);
			continue;
		}
		start_open(svc, NULL, &p, params);
	}
}

/* ---- image.close --------------------------------------------------------- */

struct close_params {
	const char *name;
	bool force;
};

static const struct param_spec close_spec[] = {
	{ "name", P_STRING, offsetof(struct close_params, name), true, 0 },
	{ "force", P_BOOL, offsetof(struct close_params, force), false, 0 },
};

static void close_done(struct image_req *r)
{
	struct svc *svc = r->svc;
	struct svc_image *si = r->si;

	/* Recorded before the reply goes out (it is closing, so left out);
	 * the stop's closes keep the record: those images come back. */
	if (!svc->stopping)
		state_save(svc);

	if (r->result < 0) {
		log_msg(LOG_ERROR, "image %s closed, but its final flush failed: %s",
			si->name, r->msg);
		if (r->call)
			reply_engine_error(r, "the image is closed, but its final "
					      "flush failed (writes since the last "
					      "successful flush may be lost)");
	} else {
		log_msg(LOG_INFO, "image %s closed", si->name);
		if (r->call)
			rpc_reply_result(r->call,
					 json_pack("{s:s}", "name", si->name));
	}
	svc_emit(svc, EV_IMAGE_CLOSED,
		 r->result < 0 ? json_pack("{s:s, s:s}", "name", si->name,
					   "error", r->msg) :
				 json_pack("{s:s}", "name", si->name));
	registry_remove(svc, si);
	free(r);
	if (svc->stopping && !svc->images && svc->all_closed)
		svc->all_closed(svc);
}

void rpc_image_close(struct rpc_call *call, json_t *params)
{
	struct close_params p = { 0 };
	struct svc_image *si;
	struct image_req *r;

	if (rpc_decode(call, params, close_spec, 2, &p) < 0)
		return;
	if (!(si = rpc_open_image(call, p.name)))
		return;
	if (si->clients && !p.force) {
		rpc_reply_error(call, ERR_BUSY, EBUSY,
				"image '%s' has %u client(s) attached; detach them "
				"or pass force", si->name, si->clients);
		return;
	}
	if (!(r = req_new(call, call->svc, si, worker_close_image, close_done)))
		return;
	si->state = IMG_CLOSING;
	send_to_home(r);
}

void images_close_all(struct svc *svc, void (*done)(struct svc *svc))
{
	svc->all_closed = done;
	if (!svc->images) {
		done(svc);
		return;
	}
	for (struct svc_image *si = svc->images; si; si = si->next) {
		struct image_req *r;

		if (si->state != IMG_OPEN)
			continue; /* opening: closed when open (open_done) */
		r = req_new(NULL, svc, si, worker_close_image, close_done);
		if (!r)
			continue;
		si->state = IMG_CLOSING;
		send_to_home(r);
	}
}

/* ---- image.list ---------------------------------------------------------- */

static const char *state_name(enum svc_image_state s)
{
	return s == IMG_OPEN ? "open" : s == IMG_OPENING ? "opening" : "closing";
}

static json_t *image_summary(const struct svc_image *si)
{
	return json_pack("{s:s, s:s, s:s, s:i, s:b, s:i}", "name", si->name,
			 "path", si->path, "state", state_name(si->state),
			 "worker", (int)si->home->id, "read_only", si->read_only,
			 "clients", (int)si->clients);
}

void rpc_image_list(struct rpc_call *call, json_t *params)
{
	json_t *list;

	if (rpc_decode(call, params, NULL, 0, NULL) < 0)
		return;
	list = json_array();
	for (struct svc_image *si = call->svc->images; si && list; si = si->next)
		json_array_append_new(list, image_summary(si));
	rpc_reply_result(call, json_pack("{s:o}", "images", list));
}

/* ---- info, stats, flush: a round trip to the home worker ---------------- */

struct name_params {
	const char *name;
	bool reset;
};

static const struct param_spec name_spec[] = {
	{ "name", P_STRING, offsetof(struct name_params, name), true, 0 },
	{ "reset", P_BOOL, offsetof(struct name_params, reset), false, 0 },
};

static void reply_done(struct image_req *r)
{
	if (r->result < 0) {
		reply_engine_error(r, r->si->name);
	} else {
		json_t *o = r->reply ? r->reply : json_object();
		if (o && !json_object_get(o, "name"))
			json_object_set_new(o, "name", json_string(r->si->name));
		rpc_reply_result(r->call, o);
	}
	free(r);
}

static void round_trip(struct rpc_call *call, json_t *params, bool with_reset,
		       void (*fn)(struct msg *m))
{
	struct name_params p = { 0 };
	struct svc_image *si;
	struct image_req *r;

	if (rpc_decode(call, params, name_spec, with_reset ? 2 : 1, &p) < 0)
		return;
	if (!(si = rpc_open_image(call, p.name)))
		return;
	if (!(r = req_new(call, call->svc, si, fn, reply_done)))
		return;
	r->reset = p.reset;
	send_to_home(r);
}

void rpc_image_info(struct rpc_call *call, json_t *params)
{
	round_trip(call, params, false, worker_image_info);
}

void rpc_image_stats(struct rpc_call *call, json_t *params)
{
	round_trip(call, params, true, worker_image_stats);
}

void rpc_image_flush(struct rpc_call *call, json_t *params)
{
	round_trip(call, params, false, worker_flush_image);
}
