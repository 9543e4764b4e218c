/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * image.check (main thread): an online, read-only check of an open image.
 * The home worker first writes back the image's metadata (so the file says
 * what the cache says), then the whole-image walk runs on libuv's thread
 * pool, never on a worker, with no lock of its own (the service holds the
 * image's). IO may go on meanwhile; the check reads the file as it is, so
 * the reply says whether any metadata write-back happened during the walk
 * ("consistent": false): then a leak or a corruption it reports may be one
 * the walk saw half-written, and the check should be repeated.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2_check.h"
#include "service.h"

#define CHECK_MAX_PROBLEMS 100

struct check_job {
	uv_work_t work;
	struct rpc_call *call;
	struct svc *svc;
	struct svc_image *si;
	char *path;
	uint64_t writebacks_before;
	uint64_t start_ns;
	int result;
	struct qcow2_error err;
	struct qcow2_check_result res;
	json_t *problems;           /* filled on the pool thread, read after */
	uint64_t problems_total;
};

static uint64_t writebacks_of(json_t *stats)
{
	json_t *c = json_object_get(json_object_get(stats, "flush"), "by_cause");
	const char *k;
	json_t *v;
	uint64_t n = 0;

	json_object_foreach(c, k, v)
		n += (uint64_t)json_integer_value(v);
	return n;
}

static void job_free(struct check_job *j)
{
	struct svc_image *si = j->si;

	si->checking = false;
	json_decref(j->problems);
	free(j->path);
	free(j);
	si->pins--;
	registry_release(si);
}

static void on_problem(void *opaque, enum qcow2_check_problem kind,
		       uint64_t offset, const char *msg)
{
	struct check_job *j = opaque;
	static const char *const kinds[] = { "corruption", "leak", "error" };

	if (j->problems_total++ < CHECK_MAX_PROBLEMS)
		json_array_append_new(j->problems,
				      json_pack("{s:s, s:I, s:s}", "kind", kinds[kind],
						"offset", (json_int_t)offset, "message",
						msg ? msg : ""));
}

/* On a pool thread: touches only the job. */
static void run_check(uv_work_t *w)
{
	struct check_job *j = w->data;
	struct qcow2_check_opts o = { .repair = QCOW2_CHECK_NO_REPAIR,
				      .force_share = true,
				      .report = on_problem, .opaque = j };

	j->result = qcow2_check(j->path, &o, &j->res, &j->err);
}

static void finish_check(struct check_job *j, bool consistent)
{
	const struct qcow2_check_result *c = &j->res;

	if (j->result < 0) {
		rpc_reply_error(j->call, rpc_class_of_errno(j->result), j->result,
				"checking image '%s' failed: %s", j->si->name,
				j->err.msg[0] ? j->err.msg : strerror(-j->result));
	} else {
		rpc_reply_result(j->call, json_pack(
			"{s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:b, s:O, "
			"s:I, s:b, s:f}",
			"name", j->si->name,
			"corruptions", (json_int_t)c->corruptions,
			"leaks", (json_int_t)c->leaks,
			"check_errors", (json_int_t)c->check_errors,
			"total_clusters", (json_int_t)c->total_clusters,
			"allocated_clusters", (json_int_t)c->allocated_clusters,
			"fragmented_clusters", (json_int_t)c->fragmented_clusters,
			"compressed_clusters", (json_int_t)c->compressed_clusters,
			"image_end_offset", (json_int_t)c->image_end_offset,
			"marked_corrupt", c->marked_corrupt,
			"problems", j->problems,
			"problems_total", (json_int_t)j->problems_total,
			"consistent", consistent,
			"seconds", (double)(now_ns() - j->start_ns) / 1e9));
	}
	job_free(j);
}

static void after_stats(struct image_req *r)
{
	struct check_job *j = r->reply_opaque;
	bool consistent = r->result == 0 &&
			  writebacks_of(r->reply) == j->writebacks_before;

	json_decref(r->reply);
	free(r);
	finish_check(j, consistent);
}

/* Back on the main thread: learn whether metadata moved meanwhile. */
static void after_check(uv_work_t *w, int status)
{
	struct check_job *j = w->data;
	struct svc_image *si = j->si;
	struct image_req *r;

	if (status < 0)
		j->result = status;
	if (si->state != IMG_OPEN ||
	    !(r = image_req_new(j->svc, si, worker_image_stats, after_stats))) {
		/* closing: its final write-back may have moved metadata */
		finish_check(j, false);
		return;
	}
	r->since_open = true;
	r->reply_opaque = j;
	mailbox_post(&si->home->mb, &r->m);
}

/* The write-back is done: start the walk. */
static void after_flush(struct image_req *r)
{
	struct check_job *j = r->reply_opaque;
	int ret;

	if (r->result < 0) {
		rpc_reply_error(j->call, rpc_class_of_errno(r->result), r->result,
				"image '%s': the write-back before the check failed: "
				"%s", j->si->name, r->msg);
		free(r);
		job_free(j);
		return;
	}
	j->writebacks_before = writebacks_of(r->reply);
	json_decref(r->reply);
	free(r);
	j->start_ns = now_ns();
	j->work.data = j;
	ret = uv_queue_work(j->svc->loop, &j->work, run_check, after_check);
	if (ret < 0) {
		rpc_reply_error(j->call, ERR_FAILED, -ret, "cannot start the check: %s",
				uv_strerror(ret));
		job_free(j);
	}
}

struct check_params {
	const char *name;
};

static const struct param_spec check_spec[] = {
	{ "name", P_STRING, offsetof(struct check_params, name), true, 0 },
};

void rpc_image_check(struct rpc_call *call, json_t *params)
{
	struct check_params p = { 0 };
	struct svc_image *si;
	struct check_job *j;
	struct image_req *r;

	if (rpc_decode(call, params, check_spec, 1, &p) < 0)
		return;
	if (!(si = rpc_open_image(call, p.name)))
		return;
	if (si->checking) {
		rpc_reply_error(call, ERR_BUSY, EBUSY, "image '%s' is being checked "
				"already; wait for that check's reply", si->name);
		return;
	}
	j = calloc(1, sizeof(*j));
	/* the home worker writes back (a read-only image has nothing to
	 * write), then reports its counters */
	r = image_req_new(call->svc, si, si->read_only ? worker_image_stats :
							worker_flush_image,
			  after_flush);
	if (!j || !r || !(j->path = strdup(si->path)) ||
	    !(j->problems = json_array())) {
		if (j)
			free(j->path);
		free(j);
		free(r);
		rpc_reply_protocol_error(call, RPC_INTERNAL_ERROR, "out of memory");
		return;
	}
	j->call = call;
	j->svc = call->svc;
	j->si = si;
	si->pins++;
	si->checking = true;
	r->then_stats = true;
	r->since_open = true;
	r->reply_opaque = j;
	mailbox_post(&si->home->mb, &r->m);
}
