/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * The worker's side of an image: open and close on the engine, the lazy
 * write-back timer, info, stats and flushes. Runs on the image's home
 * worker only; results go back to the main thread as the request's reply
 * message (image_req_finish()).
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "service.h"

/* What image.stats subtracts: the counters at the last reset (zero, and
 * the open time, for figures since open). */
struct stats_base {
	struct qcow2_stats engine;
	struct op_stats ops[OP_NOPS];
	uint64_t ns;
	uint64_t timer_writebacks, timer_writeback_errors;
};

struct worker_image {
	struct worker_image *next;
	struct worker *w;
	struct qcow2_image *img;
	char *name;
	uv_timer_t timer;
	uint32_t flush_interval_ms;
	unsigned busy;              /* engine requests in flight */
	unsigned queues;            /* clients' queues attached */
	struct image_req *close_req; /* waiting for busy to reach 0 */
	bool close_posted;          /* close_req is queued to run again */
	bool writeback_running;
	bool read_only;
	uint64_t timer_writebacks, timer_writeback_errors;
	struct op_stats ops[OP_NOPS];
	uint64_t opened_ns;
	struct stats_base base;     /* counters at the last reset */
	struct svc_image *si;       /* main's record: passed back, never read */
	uint64_t err_window_ns, err_dropped;
	unsigned err_in_window;
	bool corrupt_reported;      /* image.corrupt was posted */
};

static const char *const op_names[OP_NOPS] = {
	"read", "write", "flush", "write_zeroes", "discard",
};

static void reply_to_main(struct msg *m)
{
	struct image_req *r = (struct image_req *)m;

	r->done(r);
}

void image_req_finish(struct image_req *r)
{
	r->m.fn = reply_to_main;
	mailbox_post(&r->svc->mb, &r->m);
}

static void set_msg(struct image_req *r, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void set_msg(struct image_req *r, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(r->msg, sizeof(r->msg), fmt, ap);
	va_end(ap);
}

/* ---- the path policy ----------------------------------------------------- */

static bool inside(const char *real, const char *dir)
{
	size_t n = strlen(dir);

	if (n == 1 && dir[0] == '/')
		return true;
	return !strncmp(real, dir, n) && real[n] == '/';
}

static bool same_file(const char *real, const char *named)
{
	char buf[PATH_MAX];

	return named && realpath(named, buf) && !strcmp(buf, real);
}

/* qcow2_open_opts.allow_file: a file the image names is followed inside
 * the allowed directories, or when the caller named exactly that file. */
static int allow_file(void *opaque, const char *path, const char *role)
{
	struct image_req *r = opaque;
	const struct image_open_args *a = &r->open;
	char real[PATH_MAX];

	if (!realpath(path, real))
		return 0; /* does not exist: the open fails and says so */
	for (unsigned i = 0; i < a->n_allow_dirs; i++)
		if (inside(real, a->allow_dirs[i]))
			return 0;
	if (same_file(real, !strcmp(role, "data file") ? a->data_file : a->backing))
		return 0;
	r->path_refused = true;
	log_msg(LOG_WARN, "image %s names %s '%s' (%s), outside the allowed "
		"directories: refused", a->path, role, path, real);
	return -EACCES;
}

/* ---- open and close ------------------------------------------------------ */

static void on_writeback_done(void *opaque, int result, const char *error);

static void close_when_idle(struct worker_image *wi);

/* Once the engine has marked the image corrupt (a request that found it
 * failed, or a deferred free found a refcount that was wrong), tell the
 * main thread, once. Checked on every failure and every tick. */
static void check_corrupt(struct worker_image *wi)
{
	const char *why = qcow2_corrupt_reason(wi->img);
	struct corrupt_msg *m;

	if (wi->corrupt_reported || !why[0])
		return;
	m = calloc(1, sizeof(*m));
	if (!m)
		return; /* the next check tries again */
	wi->corrupt_reported = true;
	m->m.fn = image_corrupt_on_main;
	m->svc = wi->w->svc;
	m->si = wi->si;
	snprintf(m->reason, sizeof(m->reason), "%s", why);
	mailbox_post(&m->svc->mb, &m->m);
}

/* The lazy write-back: metadata changed more than flush_interval_ms ago
 * and not written back since (by a client flush, most often) is written
 * back now. Ticks come four times per interval, so that the oldest change
 * waits at most 1.25 intervals. A guest that flushes more often than the
 * interval never sees a timer round: each round freezes metadata (and so
 * allocating writes) until its fdatasyncs are done. */
static void on_tick(uv_timer_t *t)
{
	struct worker_image *wi = t->data;
	struct qcow2_stats st;
	int ret;

	check_corrupt(wi);
	if (wi->writeback_running || wi->close_req ||
	    !qcow2_has_dirty_metadata(wi->img))
		return;
	qcow2_get_stats(wi->img, &st);
	if (st.dirty_age_ns < (uint64_t)wi->flush_interval_ms * 1000000ull)
		return;
	ret = qcow2_writeback(wi->img, on_writeback_done, wi);
	if (ret < 0) {
		log_msg(LOG_WARN, "image %s: the timer's write-back could not "
			"start: %s", wi->name, qcow2_last_error(wi->img));
		return;
	}
	wi->writeback_running = true;
	wi->busy++;
	wi->timer_writebacks++;
	atomic_fetch_add_explicit(&wi->w->stats.writebacks, 1,
				  memory_order_relaxed);
}

static void on_writeback_done(void *opaque, int result, const char *error)
{
	struct worker_image *wi = opaque;

	wi->writeback_running = false;
	wi->busy--;
	check_corrupt(wi);
	if (result < 0) {
		wi->timer_writeback_errors++;
		log_msg(LOG_ERROR, "image %s: metadata write-back failed: %s "
			"(retried at the next tick; writes that allocate fail until "
			"one succeeds)", wi->name, error);
	}
	close_when_idle(wi);
}

#define OPEN_LOCK_RETRIES 10
#define OPEN_LOCK_RETRY_MS 25

static void free_timer(uv_handle_t *h)
{
	free(h);
}

static void open_retry(uv_timer_t *t)
{
	struct image_req *r = t->data;

	uv_close((uv_handle_t *)t, free_timer);
	worker_open_image(&r->m);
}

void worker_open_image(struct msg *m)
{
	struct image_req *r = (struct image_req *)m;
	const struct image_open_args *a = &r->open;
	struct worker *w = r->worker;
	struct qcow2_open_opts oo = { 0 };
	struct qcow2_error err = { "" };
	struct worker_image *wi = calloc(1, sizeof(*wi));
	int ret;

	if (!wi || !(wi->name = strdup(r->name))) {
		free(wi);
		r->result = -ENOMEM;
		set_msg(r, "out of memory");
		image_req_finish(r);
		return;
	}
	oo.flags = (a->read_only ? 0 : QCOW2_OPEN_RDWR) |
		   (a->buffered ? QCOW2_OPEN_BUFFERED : 0);
	oo.l2_cache_size = a->l2_cache_size;
	oo.refcount_cache_size = a->refcount_cache_size;
	oo.l2_slice_size = a->l2_slice_size;
	oo.data_file = a->data_file;
	oo.allow_file = allow_file;
	oo.allow_file_opaque = r;
	ret = qcow2_open(w->ctx, a->path, &oo, &wi->img, &err);
	if (ret == -EBUSY && r->attempts < OPEN_LOCK_RETRIES) {
		/* Locked. A process killed with IO in flight keeps its files,
		 * and so its locks, while its io_uring drains: a restarted
		 * service retries for a short, bounded time. */
		uv_timer_t *t = malloc(sizeof(*t));
		free(wi->name);
		free(wi);
		if (t) {
			r->attempts++;
			uv_timer_init(&w->loop, t);
			t->data = r;
			uv_timer_start(t, open_retry, OPEN_LOCK_RETRY_MS, 0);
			return;
		}
		r->result = ret;
		set_msg(r, "%s", err.msg[0] ? err.msg : strerror(-ret));
		image_req_finish(r);
		return;
	}
	if (ret < 0) {
		r->result = ret;
		set_msg(r, "%s", err.msg[0] ? err.msg : strerror(-ret));
		free(wi->name);
		free(wi);
		image_req_finish(r);
		return;
	}
	wi->w = w;
	wi->si = r->si;
	wi->read_only = a->read_only;
	/* read-only: nothing to write back, no timer (info says 0) */
	wi->flush_interval_ms = a->read_only ? 0 : a->flush_interval_ms;
	wi->opened_ns = wi->base.ns = now_ns();
	uv_timer_init(&w->loop, &wi->timer);
	wi->timer.data = wi;
	if (wi->flush_interval_ms) {
		uint64_t tick = wi->flush_interval_ms / 4 ? wi->flush_interval_ms / 4 : 1;
		uv_timer_start(&wi->timer, on_tick, tick, tick);
	}
	wi->next = w->images;
	w->images = wi;
	atomic_fetch_add_explicit(&w->stats.images, 1, memory_order_relaxed);
	{
		struct qcow2_info in;
		qcow2_get_info(wi->img, &in);
		/* what queue.attach tells clients, kept by the main thread */
		r->reply = json_pack("{s:I, s:I, s:I}", "virtual_size",
				     (json_int_t)in.virtual_size, "block_size",
				     (json_int_t)in.block_size, "mem_align",
				     (json_int_t)in.mem_align);
	}
	r->wi = wi;
	r->result = 0;
	image_req_finish(r);
}

static void free_wi(uv_handle_t *h)
{
	struct worker_image *wi = h->data;

	free(wi->name);
	free(wi);
}

static void finish_close(struct worker_image *wi, struct image_req *r)
{
	struct worker *w = wi->w;
	struct qcow2_error err = { "" };
	struct worker_image **pp = &w->images;
	int ret;

	uv_timer_stop(&wi->timer);
	ret = qcow2_close(wi->img, &err);
	wi->img = NULL;
	r->result = ret;
	if (ret < 0)
		set_msg(r, "%s", err.msg[0] ? err.msg : strerror(-ret));
	while (*pp && *pp != wi)
		pp = &(*pp)->next;
	if (*pp)
		*pp = wi->next;
	atomic_fetch_sub_explicit(&w->stats.images, 1, memory_order_relaxed);
	uv_close((uv_handle_t *)&wi->timer, free_wi);
	image_req_finish(r);
}

void worker_close_image(struct msg *m)
{
	struct image_req *r = (struct image_req *)m;
	struct worker_image *wi = r->wi;

	/* Queues detach and requests in flight finish first: their
	 * callbacks must find the image open. */
	wi->close_req = r;
	/* no re-post while detaching: this call closes it if it can */
	wi->close_posted = true;
	worker_detach_queues(wi->w, wi, "the image is being closed");
	wi->close_posted = false;
	if (wi->busy == 0 && wi->queues == 0) {
		wi->close_req = NULL;
		finish_close(wi, r);
	}
}

/* From an engine callback (or a queue going away inside one): the engine
 * still uses the image after the callback returns, so a close that waited
 * runs later, as a message to this worker (the timer starts nothing
 * meanwhile: close_req is set). */
static void close_when_idle(struct worker_image *wi)
{
	struct image_req *r = wi->close_req;

	if (r && wi->busy == 0 && wi->queues == 0 && !wi->close_posted) {
		wi->close_posted = true;
		r->m.fn = worker_close_image;
		mailbox_post(&wi->w->mb, &r->m);
	}
}

const char *worker_image_name(const struct worker_image *wi)
{
	return wi->name;
}

struct qcow2_image *worker_image_engine(const struct worker_image *wi)
{
	return wi->img;
}

bool worker_image_open(const struct worker_image *wi)
{
	return !wi->close_req;
}

void worker_image_io_started(struct worker_image *wi)
{
	wi->busy++;
}

const char *image_op_name(enum image_op op)
{
	return op_names[op];
}

/* An io.error event for the main thread: at most IO_ERROR_EVENTS a second
 * per image (a failing disk fails every request), the rest counted. */
#define IO_ERROR_EVENTS 10

static void report_io_error(struct worker_image *wi, enum image_op op,
			    int result, const char *error)
{
	uint64_t t = now_ns();
	struct io_error_msg *m;

	if (t - wi->err_window_ns >= 1000000000ull) {
		wi->err_window_ns = t;
		wi->err_in_window = 0;
	}
	if (wi->err_in_window >= IO_ERROR_EVENTS || !(m = calloc(1, sizeof(*m)))) {
		wi->err_dropped++;
		return;
	}
	wi->err_in_window++;
	m->m.fn = io_error_on_main;
	m->svc = wi->w->svc;
	m->si = wi->si;
	m->op = op;
	m->err = result;
	m->dropped = wi->err_dropped;
	wi->err_dropped = 0;
	snprintf(m->msg, sizeof(m->msg), "%s", error ? error : strerror(-result));
	mailbox_post(&m->svc->mb, &m->m);
}

static void count_op(struct worker_image *wi, enum image_op op,
		     uint64_t bytes, int result, uint64_t ns)
{
	struct op_stats *st = &wi->ops[op];
	unsigned b = 0;

	st->requests++;
	if (result < 0)
		st->errors++;
	else
		st->bytes += bytes;
	st->total_ns += ns;
	while (b + 1 < OP_HIST_BUCKETS && ns >= (1000ull << b))
		b++;
	st->hist[b]++;
}

void worker_image_io_done(struct worker_image *wi, enum image_op op,
			  uint64_t bytes, int result, uint64_t ns,
			  const char *error)
{
	count_op(wi, op, bytes, result, ns);
	if (result < 0) {
		report_io_error(wi, op, result, error);
		check_corrupt(wi);
	}
	wi->busy--;
	close_when_idle(wi);
}

void worker_image_io_refused(struct worker_image *wi, enum image_op op)
{
	count_op(wi, op, 0, -1, 0);
}

void worker_image_queue_added(struct worker_image *wi)
{
	wi->queues++;
}

void worker_image_queue_gone(struct worker_image *wi)
{
	wi->queues--;
	close_when_idle(wi);
}

/* ---- info ---------------------------------------------------------------- */

void worker_image_info(struct msg *m)
{
	struct image_req *r = (struct image_req *)m;
	struct worker_image *wi = r->wi;
	struct qcow2_info in;
	json_t *o;

	qcow2_get_info(wi->img, &in);
	o = json_pack("{s:s, s:I, s:I, s:I, s:i, s:i, s:b, s:b, s:I}",
		      "format", in.format == QCOW2_FORMAT_RAW ? "raw" : "qcow2",
		      "virtual_size", (json_int_t)in.virtual_size,
		      "file_size", (json_int_t)in.file_size,
		      "file_allocated", (json_int_t)in.file_allocated,
		      "block_size", (int)in.block_size,
		      "mem_align", (int)in.mem_align,
		      "read_only", in.read_only,
		      "direct", in.direct,
		      "flush_interval_ms", (json_int_t)wi->flush_interval_ms);
	if (o && in.format == QCOW2_FORMAT_QCOW2) {
		json_t *q = json_pack(
			"{s:i, s:I, s:i, s:s, s:b, s:b, s:b, s:b, s:i, s:o, s:o, "
			"s:o, s:o, s:I, s:I}",
			"version", (int)in.version,
			"cluster_size", (json_int_t)in.cluster_size,
			"refcount_bits", (int)in.refcount_bits,
			"compression_type",
			in.compression_type == QCOW2_COMPRESSION_ZSTD ? "zstd" : "zlib",
			"extended_l2", in.extended_l2,
			"lazy_refcounts", in.lazy_refcounts,
			"dirty", in.dirty,
			"corrupt", in.corrupt,
			"snapshots", (int)in.nb_snapshots,
			"backing_file", json_string_lossy(in.backing_file),
			"backing_path", json_string_lossy(in.backing_path),
			"backing_format", json_string_lossy(in.backing_format),
			"data_file", json_string_lossy(in.data_file),
			"l2_cache_size", (json_int_t)in.l2_cache_size,
			"l2_slice_size", (json_int_t)in.l2_slice_size);
		if (q && qcow2_corrupt_reason(wi->img)[0])
			json_object_set_new(q, "corrupt_reason", json_string_lossy(
						    qcow2_corrupt_reason(wi->img)));
		if (!q || json_object_update(o, q) < 0) {
			json_decref(o);
			o = NULL;
		}
		json_decref(q);
	}
	r->reply = o;
	r->result = o ? 0 : -ENOMEM;
	if (!o)
		set_msg(r, "out of memory");
	image_req_finish(r);
}

/* ---- stats --------------------------------------------------------------- */

#define D(f) ((json_int_t)(cur->f - base->f))

static json_t *cache_json(const struct qcow2_cache_stats *cur,
			  const struct qcow2_cache_stats *base)
{
	return json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I}",
			 "hits", D(hits), "misses", D(misses),
			 "evictions", D(evictions), "loads", D(loads),
			 "load_bytes", D(load_bytes),
			 "slices", (json_int_t)cur->slices,
			 "slice_size", (json_int_t)cur->slice_size);
}

static json_t *flush_json(const struct qcow2_flush_stats *cur,
			  const struct qcow2_flush_stats *base, bool dirty)
{
	json_t *bounds = json_array(), *counts = json_array(), *o;

	for (unsigned i = 0; i < QCOW2_FLUSH_HIST_BUCKETS; i++) {
		if (i + 1 < QCOW2_FLUSH_HIST_BUCKETS)
			json_array_append_new(bounds,
					      json_real((double)(16ull << i) / 1e6));
		json_array_append_new(counts, json_integer(D(latency_hist[i])));
	}
	o = json_pack(
		"{s:{s:I, s:I, s:I, s:I}, s:I, s:{s:I, s:I}, s:{s:I, s:I}, "
		"s:{s:I, s:I}, s:{s:I, s:I}, s:I, s:I, s:f, s:f, "
		"s:{s:o, s:o}, s:b}",
		"by_cause",
		"client", D(flushes[QCOW2_FLUSH_CLIENT]),
		"timer", D(flushes[QCOW2_FLUSH_TIMER]),
		"eviction", D(flushes[QCOW2_FLUSH_EVICTION]),
		"close", D(flushes[QCOW2_FLUSH_CLOSE]),
		"errors", D(errors),
		"l2", "slices", D(l2_slices), "bytes", D(l2_bytes),
		"refcount_blocks", "slices", D(refblock_slices), "bytes",
		D(refblock_bytes),
		"l1", "writes", D(l1_writes), "bytes", D(l1_bytes),
		"refcount_table", "writes", D(reftable_writes), "bytes",
		D(reftable_bytes),
		"header_writes", D(header_writes),
		"fdatasyncs", D(fdatasyncs),
		"total_seconds", (double)(cur->total_ns - base->total_ns) / 1e9,
		/* the engine keeps the maximum since open: a reset cannot
		 * clear it, and the name says so */
		"max_seconds_since_open", (double)cur->max_ns / 1e9,
		"latency_histogram", "bounds_seconds", bounds, "counts", counts,
		"dirty", dirty);
	return o;
}

static json_t *ops_json(const struct worker_image *wi,
		       const struct stats_base *b)
{
	json_t *o = json_object();

	for (unsigned i = 0; i < OP_NOPS && o; i++) {
		const struct op_stats *cur = &wi->ops[i], *base = &b->ops[i];
		json_t *bounds = json_array(), *counts = json_array();

		for (unsigned k = 0; k < OP_HIST_BUCKETS; k++) {
			if (k + 1 < OP_HIST_BUCKETS)
				json_array_append_new(bounds,
						      json_real((double)(1ull << k) / 1e6));
			json_array_append_new(counts,
					      json_integer((json_int_t)(cur->hist[k] -
									base->hist[k])));
		}
		json_object_set_new(o, op_names[i], json_pack(
			"{s:I, s:I, s:I, s:f, s:{s:o, s:o}}",
			"requests", (json_int_t)(cur->requests - base->requests),
			"bytes", (json_int_t)(cur->bytes - base->bytes),
			"errors", (json_int_t)(cur->errors - base->errors),
			"total_seconds", (double)(cur->total_ns - base->total_ns) / 1e9,
			"latency_histogram", "bounds_seconds", bounds, "counts", counts));
	}
	return o;
}

void worker_image_stats(struct msg *m)
{
	struct image_req *r = (struct image_req *)m;
	struct worker_image *wi = r->wi;
	struct stats_base zero = { .ns = wi->opened_ns };
	const struct stats_base *b = r->since_open ? &zero : &wi->base;
	struct qcow2_stats now, *cur = &now;
	const struct qcow2_stats *base = &b->engine;
	uint64_t t = now_ns();
	json_t *o;

	qcow2_get_stats(wi->img, &now);
	o = json_pack(
		"{s:{s:I, s:I, s:I, s:I, s:I, s:I}, s:{s:I, s:I, s:I}, "
		"s:{s:I, s:I, s:I, s:I}, s:I, s:o, s:{s:o, s:o}, "
		"s:{s:I, s:I}, s:f}",
		"read", "requests", D(read_requests), "bytes", D(read_bytes),
		"errors", D(read_errors), "bounced", D(bounced_reads),
		"compressed_clusters", D(compressed_reads),
		"backing", D(backing_reads),
		"write", "requests", D(write_requests), "bytes", D(write_bytes),
		"errors", D(write_errors),
		"clusters", "allocated", D(allocated_clusters),
		"cow", D(cow_clusters), "freed", D(freed_clusters),
		"punched", D(punched_clusters),
		"refcount_rebuilds", D(refcount_rebuilds),
		"flush", flush_json(&cur->flush, &base->flush,
				    qcow2_has_dirty_metadata(wi->img)),
		"caches", "l2", cache_json(&cur->l2_cache, &base->l2_cache),
		"refcount", cache_json(&cur->refcount_cache, &base->refcount_cache),
		"timer_writebacks",
		"started", (json_int_t)(wi->timer_writebacks - b->timer_writebacks),
		"errors", (json_int_t)(wi->timer_writeback_errors -
				      b->timer_writeback_errors),
		"seconds", (double)(t - b->ns) / 1e9);
	if (o) {
		json_t *f = json_object_get(o, "flush");
		/* not counters: what waits to be written back now */
		json_object_set_new(f, "dirty_slices",
				    json_integer((json_int_t)now.dirty_slices));
		json_object_set_new(f, "oldest_dirty_seconds",
				    json_real((double)now.dirty_age_ns / 1e9));
	}
	if (o) {
		/* not counters: the file as it is now */
		struct qcow2_info in;
		qcow2_get_info(wi->img, &in);
		json_object_set_new(o, "file",
				    json_pack("{s:I, s:I}", "size",
					      (json_int_t)in.file_size, "allocated",
					      (json_int_t)in.file_allocated));
	}
	if (o && json_object_set_new(o, "ops", ops_json(wi, b)) < 0) {
		json_decref(o);
		o = NULL;
	}
	if (r->reset) {
		wi->base.engine = now;
		memcpy(wi->base.ops, wi->ops, sizeof(wi->ops));
		wi->base.ns = t;
		wi->base.timer_writebacks = wi->timer_writebacks;
		wi->base.timer_writeback_errors = wi->timer_writeback_errors;
	}
	r->reply = o;
	r->result = o ? 0 : -ENOMEM;
	if (!o)
		set_msg(r, "out of memory");
	image_req_finish(r);
}

#undef D

/* ---- flush --------------------------------------------------------------- */

static void on_flush_done(void *opaque, int result, const char *error)
{
	struct image_req *r = opaque;
	struct worker_image *wi = r->wi;

	wi->busy--;
	r->result = result;
	if (result < 0) {
		set_msg(r, "%s", error);
		image_req_finish(r);
	} else if (r->then_stats) {
		worker_image_stats(&r->m); /* replies */
	} else {
		image_req_finish(r);
	}
	close_when_idle(wi);
}

void worker_flush_image(struct msg *m)
{
	struct image_req *r = (struct image_req *)m;
	struct worker_image *wi = r->wi;
	int ret = qcow2_flush(wi->img, on_flush_done, r);

	if (ret < 0) {
		const char *why = qcow2_last_error(wi->img);

		/* e.g. -EROFS on a read-only image leaves no message */
		r->result = ret;
		set_msg(r, "%s", why[0] ? why : strerror(-ret));
		image_req_finish(r);
		return;
	}
	wi->busy++;
}
