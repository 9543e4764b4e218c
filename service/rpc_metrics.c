/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * The service's counters and every open image's statistics in the
 * OpenMetrics text format, for a Prometheus scraper (main thread). One
 * gather, metrics_gather(), serves both ways of asking: the JSON-RPC method
 * service.metrics (below) and GET /metrics over HTTP (metrics_http.c).
 * Each image's figures come from its home worker (the same round trip as
 * image.stats, counted since open so that counters never go back when
 * someone resets image.stats); once all have answered, the text is written
 * family by family (OpenMetrics keeps a family's samples together). Names
 * have the qcow2d_ prefix, base units (seconds, bytes) and counters end in
 * _total.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "service.h"

struct metrics_gather {
	struct svc *svc;
	unsigned pending;           /* images yet to answer, + 1 while posting */
	json_t *images;             /* name -> {"stats", "clients"} */
	metrics_done_fn done;       /* NULL: cancelled, nothing is written */
	void *opaque;
};

/* The member at a dotted path ("flush.by_cause.client"), or NULL. */
static json_t *at(json_t *o, const char *path)
{
	char key[64];
	const char *dot;

	while ((dot = strchr(path, '.'))) {
		size_t n = (size_t)(dot - path) < sizeof(key) - 1 ?
				   (size_t)(dot - path) : sizeof(key) - 1;
		memcpy(key, path, n);
		key[n] = '\0';
		o = json_object_get(o, key);
		path = dot + 1;
	}
	return json_object_get(o, path);
}

static json_int_t ival(json_t *o, const char *path)
{
	return json_integer_value(at(o, path));
}

static double rval(json_t *o, const char *path)
{
	return json_number_value(at(o, path));
}

static void family(FILE *f, const char *name, const char *type,
		   const char *unit, const char *help)
{
	fprintf(f, "# TYPE qcow2d_%s %s\n", name, type);
	if (unit)
		fprintf(f, "# UNIT qcow2d_%s %s\n", name, unit);
	fprintf(f, "# HELP qcow2d_%s %s\n", name, help);
}

/*
 * An integer per image from its stats: without a label, the one at path;
 * with one, for each i the sample labelled values[i] comes from the path
 * path + keys[i] + tail (keys: the stats' own names, values: the labels'
 * when they differ; keys NULL: the same).
 */
static void per_image(FILE *f, json_t *images, const char *name,
		      const char *suffix, const char *path, const char *label,
		      const char *const *values, const char *const *keys,
		      unsigned n, const char *tail)
{
	const char *img;
	json_t *v;
	char at_path[128];

	json_object_foreach(images, img, v) {
		json_t *st = json_object_get(v, "stats");

		if (!label) {
			fprintf(f, "qcow2d_%s%s{image=\"%s\"} %lld\n", name, suffix,
				img, (long long)ival(st, path));
			continue;
		}
		for (unsigned i = 0; i < n; i++) {
			snprintf(at_path, sizeof(at_path), "%s%s%s", path,
				 (keys ? keys : values)[i], tail);
			fprintf(f, "qcow2d_%s%s{image=\"%s\",%s=\"%s\"} %lld\n", name,
				suffix, img, label, values[i],
				(long long)ival(st, at_path));
		}
	}
}

/* A histogram from a {"bounds_seconds", "counts"} object (counts per
 * bucket, the last one past every bound) and its sum. */
static void histogram(FILE *f, const char *name, const char *labels,
		      json_t *h, double sum)
{
	json_t *bounds = json_object_get(h, "bounds_seconds");
	json_t *counts = json_object_get(h, "counts");
	long long cum = 0;
	size_t i;
	json_t *c;

	json_array_foreach(counts, i, c) {
		cum += (long long)json_integer_value(c);
		if (i < json_array_size(bounds))
			fprintf(f, "qcow2d_%s_bucket{%s,le=\"%.9g\"} %lld\n", name,
				labels, json_number_value(json_array_get(bounds, i)),
				cum);
	}
	fprintf(f, "qcow2d_%s_bucket{%s,le=\"+Inf\"} %lld\n", name, labels, cum);
	fprintf(f, "qcow2d_%s_sum{%s} %.9g\n", name, labels, sum);
	fprintf(f, "qcow2d_%s_count{%s} %lld\n", name, labels, cum);
}

static const char *const ops[] = { "read", "write", "flush", "write_zeroes",
				   "discard" };

static void write_images(FILE *f, json_t *images)
{
	static const char *const causes[] = { "client", "timer", "eviction", "close" };
	static const char *const tables[] = { "l2", "refcount_block", "l1",
					      "refcount_table" };
	static const char *const table_keys[] = { "l2", "refcount_blocks", "l1",
						  "refcount_table" };
	static const char *const caches[] = { "l2", "refcount" };
	static const char *const clusters[] = { "allocated", "cow", "freed", "punched" };
	char labels[160];
	const char *img;
	json_t *v;

	family(f, "image_requests", "counter", NULL,
	       "Requests to the image, by operation (every path into it).");
	per_image(f, images, "image_requests", "_total", "ops.", "op", ops, NULL, 5,
		  ".requests");
	family(f, "image_request_errors", "counter", NULL,
	       "Requests that failed, by operation.");
	per_image(f, images, "image_request_errors", "_total", "ops.", "op", ops,
		  NULL, 5, ".errors");
	family(f, "image_request_bytes", "counter", "bytes",
	       "Bytes read and written by requests that succeeded.");
	per_image(f, images, "image_request_bytes", "_total", "ops.", "op", ops,
		  NULL, 5, ".bytes");

	family(f, "image_request_duration_seconds", "histogram", "seconds",
	       "Time from a request's arrival to its completion.");
	json_object_foreach(images, img, v) {
		json_t *st = json_object_get(v, "stats");
		for (unsigned i = 0; i < 5; i++) {
			json_t *o = json_object_get(json_object_get(st, "ops"), ops[i]);
			snprintf(labels, sizeof(labels), "image=\"%s\",op=\"%s\"", img,
				 ops[i]);
			histogram(f, "image_request_duration_seconds", labels,
				  json_object_get(o, "latency_histogram"),
				  json_number_value(json_object_get(o, "total_seconds")));
		}
	}

	family(f, "image_writebacks", "counter", NULL,
	       "Metadata write-backs, by cause.");
	per_image(f, images, "image_writebacks", "_total", "flush.by_cause.", "cause",
		  causes, NULL, 4, "");
	family(f, "image_writeback_errors", "counter", NULL,
	       "Metadata write-backs that failed.");
	per_image(f, images, "image_writeback_errors", "_total", "flush.errors", NULL,
		  NULL, NULL, 0, NULL);
	family(f, "image_writeback_duration_seconds", "histogram", "seconds",
	       "Time a metadata write-back took.");
	json_object_foreach(images, img, v) {
		json_t *st = json_object_get(v, "stats");
		snprintf(labels, sizeof(labels), "image=\"%s\"", img);
		histogram(f, "image_writeback_duration_seconds", labels,
			  json_object_get(json_object_get(st, "flush"),
					  "latency_histogram"),
			  rval(st, "flush.total_seconds"));
	}
	family(f, "image_metadata_written_bytes", "counter", "bytes",
	       "Metadata bytes written back, by table.");
	per_image(f, images, "image_metadata_written_bytes", "_total", "flush.",
		  "table", tables, table_keys, 4, ".bytes");
	family(f, "image_fdatasyncs", "counter", NULL,
	       "fdatasync calls made for the image.");
	per_image(f, images, "image_fdatasyncs", "_total", "flush.fdatasyncs", NULL,
		  NULL, NULL, 0, NULL);
	family(f, "image_dirty_slices", "gauge", NULL,
	       "L2 and refcount slices not yet written back.");
	per_image(f, images, "image_dirty_slices", "", "flush.dirty_slices", NULL,
		  NULL, NULL, 0, NULL);
	family(f, "image_oldest_dirty_seconds", "gauge", "seconds",
	       "How long the oldest metadata change not yet written back has "
	       "waited (at most).");
	json_object_foreach(images, img, v)
		fprintf(f, "qcow2d_image_oldest_dirty_seconds{image=\"%s\"} %.6f\n", img,
			rval(json_object_get(v, "stats"), "flush.oldest_dirty_seconds"));
	family(f, "image_metadata_dirty", "gauge", NULL,
	       "1 while the image has metadata not yet written back.");
	json_object_foreach(images, img, v)
		fprintf(f, "qcow2d_image_metadata_dirty{image=\"%s\"} %d\n", img,
			json_is_true(json_object_get(json_object_get(
				json_object_get(v, "stats"), "flush"), "dirty")));

	for (unsigned k = 0; k < 3; k++) {
		static const char *const what[] = { "hits", "misses", "evictions" };
		char name[64], help[96], tail[32];
		snprintf(name, sizeof(name), "image_cache_%s", what[k]);
		snprintf(help, sizeof(help), "Metadata cache %s, by cache.", what[k]);
		snprintf(tail, sizeof(tail), ".%s", what[k]);
		family(f, name, "counter", NULL, help);
		per_image(f, images, name, "_total", "caches.", "cache", caches, NULL, 2,
			  tail);
	}
	family(f, "image_clusters", "counter", NULL,
	       "Clusters allocated (of which copied on write), freed, punched.");
	per_image(f, images, "image_clusters", "_total", "clusters.", "event",
		  clusters, NULL, 4, "");
	family(f, "image_file_size_bytes", "gauge", "bytes",
	       "Size of the image file.");
	per_image(f, images, "image_file_size_bytes", "", "file.size", NULL, NULL,
		  NULL, 0, NULL);
	family(f, "image_file_allocated_bytes", "gauge", "bytes",
	       "Bytes the image file takes on disk.");
	per_image(f, images, "image_file_allocated_bytes", "", "file.allocated", NULL,
		  NULL, NULL, 0, NULL);
	family(f, "image_clients", "gauge", NULL, "Queues attached to the image.");
	json_object_foreach(images, img, v)
		fprintf(f, "qcow2d_image_clients{image=\"%s\"} %lld\n", img,
			(long long)json_integer_value(json_object_get(v, "clients")));
}

static void write_service(FILE *f, struct svc *svc)
{
	const char *method, *cls;
	json_t *m, *n;

	family(f, "uptime_seconds", "gauge", "seconds", "Time since qcow2d started.");
	fprintf(f, "qcow2d_uptime_seconds %.3f\n",
		(double)(now_ns() - svc->start_ns) / 1e9);
	family(f, "images", "gauge", NULL, "Images open.");
	fprintf(f, "qcow2d_images %u\n", svc->nimages);
	family(f, "connections", "gauge", NULL, "Control connections open.");
	fprintf(f, "qcow2d_connections %u\n", svc->nconns);
	family(f, "connections_accepted", "counter", NULL,
	       "Control connections accepted since start.");
	fprintf(f, "qcow2d_connections_accepted_total %llu\n",
		(unsigned long long)svc->counters.connections_total);
	family(f, "control_requests", "counter", NULL,
	       "Control requests, by method.");
	json_object_foreach(svc->method_counts, method, m)
		fprintf(f, "qcow2d_control_requests_total{method=\"%s\"} %lld\n",
			method, (long long)json_integer_value(json_object_get(m, "calls")));
	family(f, "control_errors", "counter", NULL,
	       "Control requests answered with an error, by method and class.");
	json_object_foreach(svc->method_counts, method, m)
		json_object_foreach(json_object_get(m, "errors"), cls, n)
			fprintf(f, "qcow2d_control_errors_total{method=\"%s\",class=\"%s\"} "
				"%lld\n", method, cls, (long long)json_integer_value(n));
	family(f, "worker_loop_iterations", "counter", NULL,
	       "Turns of each worker's event loop.");
	for (unsigned i = 0; i < svc->nworkers; i++)
		fprintf(f, "qcow2d_worker_loop_iterations_total{worker=\"%u\"} %llu\n", i,
			(unsigned long long)atomic_load_explicit(
				&svc->workers[i].stats.loop_iterations,
				memory_order_relaxed));
	family(f, "worker_idle_seconds", "counter", "seconds",
	       "Time each worker's loop slept waiting for work.");
	for (unsigned i = 0; i < svc->nworkers; i++)
		fprintf(f, "qcow2d_worker_idle_seconds_total{worker=\"%u\"} %.6f\n", i,
			(double)atomic_load_explicit(&svc->workers[i].stats.idle_ns,
						     memory_order_relaxed) / 1e9);
	family(f, "worker_ring_batches", "counter", NULL,
	       "Takes from a client's ring that found requests.");
	for (unsigned i = 0; i < svc->nworkers; i++)
		fprintf(f, "qcow2d_worker_ring_batches_total{worker=\"%u\"} %llu\n", i,
			(unsigned long long)atomic_load_explicit(
				&svc->workers[i].stats.ring_batches, memory_order_relaxed));
	family(f, "worker_ring_requests", "counter", NULL,
	       "Requests those takes found (divided by the batches: the mean batch).");
	for (unsigned i = 0; i < svc->nworkers; i++)
		fprintf(f, "qcow2d_worker_ring_requests_total{worker=\"%u\"} %llu\n", i,
			(unsigned long long)atomic_load_explicit(
				&svc->workers[i].stats.ring_requests, memory_order_relaxed));
	family(f, "worker_images", "gauge", NULL, "Images whose home is the worker.");
	for (unsigned i = 0; i < svc->nworkers; i++)
		fprintf(f, "qcow2d_worker_images{worker=\"%u\"} %llu\n", i,
			(unsigned long long)atomic_load_explicit(
				&svc->workers[i].stats.images, memory_order_relaxed));
}

/* All have answered: write the text and hand it over (unless cancelled). */
static void finish_gather(struct metrics_gather *g)
{
	metrics_done_fn done = g->done;
	void *opaque = g->opaque;
	char *text = NULL;
	size_t len = 0;
	FILE *f;
	int err = 0;

	if (done) {
		f = open_memstream(&text, &len);
		if (!f) {
			err = -ENOMEM;
		} else {
			write_service(f, g->svc);
			write_images(f, g->images);
			fputs("# EOF\n", f);
			if (ferror(f))
				err = -ENOMEM;
			if (fclose(f) != 0 && !err)
				err = -ENOMEM;
			if (err) {
				free(text);
				text = NULL;
				len = 0;
			}
		}
	}
	json_decref(g->images);
	free(g);
	if (done)
		done(opaque, err, text, len);
}

static void image_done(struct image_req *r)
{
	struct metrics_gather *g = r->reply_opaque;

	/* (cancelled or not: the gather is freed by its last answer) */
	if (r->result == 0 && r->reply && g->done)
		json_object_set_new(g->images, r->si->name,
				    json_pack("{s:o, s:i}", "stats", r->reply,
					      "clients", (int)r->si->clients));
	else
		json_decref(r->reply);
	free(r);
	if (--g->pending == 0)
		finish_gather(g);
}

struct metrics_gather *metrics_gather(struct svc *svc, metrics_done_fn done,
				      void *opaque)
{
	struct metrics_gather *g = calloc(1, sizeof(*g));

	if (!g || !(g->images = json_object())) {
		free(g);
		done(opaque, -ENOMEM, NULL, 0);
		return NULL;
	}
	g->svc = svc;
	g->done = done;
	g->opaque = opaque;
	g->pending = 1;
	for (struct svc_image *si = svc->images; si; si = si->next) {
		struct image_req *r;

		if (si->state != IMG_OPEN)
			continue;
		r = image_req_new(svc, si, worker_image_stats, image_done);
		if (!r)
			continue;
		r->since_open = true;
		r->reply_opaque = g;
		g->pending++;
		mailbox_post(&si->home->mb, &r->m);
	}
	if (--g->pending == 0) {
		finish_gather(g);
		return NULL;
	}
	return g;
}

void metrics_gather_cancel(struct metrics_gather *g)
{
	g->done = NULL;
	g->opaque = NULL;
}

/* ---- service.metrics ------------------------------------------------------ */

static void rpc_metrics_done(void *opaque, int err, char *text, size_t len)
{
	struct rpc_call *call = opaque;

	(void)len;
	if (err < 0) {
		rpc_reply_protocol_error(call, RPC_INTERNAL_ERROR, "cannot write the "
					 "metrics: %s", strerror(-err));
		return;
	}
	rpc_reply_result(call, json_pack("{s:s, s:s}", "content_type",
					 METRICS_CONTENT_TYPE, "text", text));
	free(text);
}

void rpc_service_metrics(struct rpc_call *call, json_t *params)
{
	if (rpc_decode(call, params, NULL, 0, NULL) < 0)
		return;
	/* (the call holds its connection: nothing to cancel) */
	metrics_gather(call->svc, rpc_metrics_done, call);
}
