/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * The text of stats results: image.stats and service.stats grouped for
 * people, and stats --watch's refreshes with rates. Only what the results
 * hold is printed: a member a qcow2d lacks reads as zero.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "ctl.h"

static void print_histogram(json_t *hist)
{
	json_t *bounds = json_object_get(hist, "bounds_seconds"),
	       *counts = json_object_get(hist, "counts"), *v;
	struct ctl_table *t = ctl_table_new("lr");
	size_t i;

	if (!t)
		return;
	json_array_foreach(counts, i, v) {
		char lo[32], hi[32];
		json_int_t n = json_integer_value(v);

		if (n <= 0)
			continue;
		/* bucket i: latency below bounds[i] and at least bounds[i-1];
		 * the last has no upper bound */
		ctl_table_row(t);
		if (i < json_array_size(bounds))
			ctl_fmt_duration(json_number_value(json_array_get(bounds, i)),
					 hi, sizeof(hi));
		if (i > 0)
			ctl_fmt_duration(json_number_value(json_array_get(bounds, i - 1)),
					 lo, sizeof(lo));
		if (i == 0)
			ctl_table_cell(t, "< %s", hi);
		else if (i < json_array_size(bounds))
			ctl_table_cell(t, "%s - %s", lo, hi);
		else
			ctl_table_cell(t, ">= %s", lo);
		ctl_table_cell(t, "%lld", (long long)n);
	}
	ctl_table_print(t, stdout, 4);
	ctl_table_free(t);
}

static unsigned long long hist_total(json_t *hist)
{
	unsigned long long n = 0;
	size_t i;
	json_t *v;

	json_array_foreach(json_object_get(hist, "counts"), i, v)
		if (json_integer_value(v) > 0)
			n += (unsigned long long)json_integer_value(v);
	return n;
}

/* Where fraction q of a histogram's counts lie: below the bound of the
 * bucket the q-th count falls in ("< 128 µs"); "-" when it is empty. */
static void hist_quantile(json_t *hist, double q, char *buf, size_t len)
{
	json_t *bounds = json_object_get(hist, "bounds_seconds"), *v;
	unsigned long long total = hist_total(hist), seen = 0;
	size_t i, nb = json_array_size(bounds);
	char d[24];

	snprintf(buf, len, "-");
	if (!total || !nb)
		return;
	json_array_foreach(json_object_get(hist, "counts"), i, v) {
		if (json_integer_value(v) > 0)
			seen += (unsigned long long)json_integer_value(v);
		if ((double)seen < q * (double)total)
			continue;
		ctl_fmt_duration(json_number_value(json_array_get(bounds,
								  i < nb ? i : nb - 1)),
				 d, sizeof(d));
		snprintf(buf, len, "%s %s", i < nb ? "<" : ">=", d);
		return;
	}
}

/* The mean of total seconds over n, or "-". */
static char *mean_str(double total, unsigned long long n, char *buf, size_t len)
{
	if (n)
		ctl_fmt_duration(total / (double)n, buf, len);
	else
		snprintf(buf, len, "-");
	return buf;
}

/* One row of the requests table: counts, and the latency when the
 * service times the op (ops.*; the engine's read/write are not). */
static void request_row(struct ctl_table *t, const char *label, json_t *op)
{
	unsigned long long n = ctl_ju(op, "requests");
	char a[32], b[32];

	ctl_table_row(t);
	ctl_table_cell(t, "  %s", label);
	ctl_table_cell(t, "%llu", n);
	ctl_table_cell(t, "%s", ctl_fmt_size(ctl_ju(op, "bytes"), false, a,
					     sizeof(a)));
	ctl_table_cell(t, "%llu", ctl_ju(op, "errors"));
	if (!json_object_get(op, "latency_histogram"))
		return;
	ctl_table_cell(t, "%s", mean_str(ctl_jd(op, "total_seconds"), n, a,
					 sizeof(a)));
	hist_quantile(json_object_get(op, "latency_histogram"), 0.99, b,
		      sizeof(b));
	ctl_table_cell(t, "%s", b);
}

void ctl_print_image_stats(json_t *st)
{
	struct ctl_table *t;
	char a[64], b[64], c[64];
	unsigned long long n, sum = 0;
	const char *key;
	json_t *v, *fl = json_object_get(st, "flush");
	bool first = true;

	ctl_fmt_duration(ctl_jd(st, "seconds"), a, sizeof(a));
	printf("image %s: counters over %s (since it was opened or they were "
	       "reset)\n\n", ctl_js(st, "name"), a);

	/* ops: what clients' queues asked, timed by the service; without it
	 * (an older qcow2d), the engine's reads and writes. */
	if ((t = ctl_table_new("lrrrrr"))) {
		json_t *ops = json_object_get(st, "ops");

		ctl_table_row(t);
		ctl_table_cell(t, "requests");
		ctl_table_cell(t, "COUNT");
		ctl_table_cell(t, "BYTES");
		ctl_table_cell(t, "ERRORS");
		if (ops) {
			ctl_table_cell(t, "MEAN");
			ctl_table_cell(t, "P99");
			json_object_foreach(ops, key, v)
				request_row(t, key, v);
		} else {
			request_row(t, "read", json_object_get(st, "read"));
			request_row(t, "write", json_object_get(st, "write"));
		}
		ctl_table_print(t, stdout, 0);
		ctl_table_free(t);
	}
	if (json_object_get(st, "ops"))
		printf("  in the engine: %llu reads (%s, %llu errors), %llu writes "
		       "(%s, %llu errors)\n", ctl_ju(st, "read.requests"),
		       ctl_fmt_size(ctl_ju(st, "read.bytes"), false, a, sizeof(a)),
		       ctl_ju(st, "read.errors"), ctl_ju(st, "write.requests"),
		       ctl_fmt_size(ctl_ju(st, "write.bytes"), false, b, sizeof(b)),
		       ctl_ju(st, "write.errors"));
	printf("  reads: %llu bounced through a buffer, %llu clusters "
	       "decompressed, %llu from the backing file\n",
	       ctl_ju(st, "read.bounced"),
	       ctl_ju(st, "read.compressed_clusters"), ctl_ju(st, "read.backing"));
	printf("\nclusters: %llu allocated, %llu copied on write, %llu freed, "
	       "%llu punched; %llu refcount rebuilds\n",
	       ctl_ju(st, "clusters.allocated"), ctl_ju(st, "clusters.cow"),
	       ctl_ju(st, "clusters.freed"), ctl_ju(st, "clusters.punched"),
	       ctl_ju(st, "refcount_rebuilds"));

	json_object_foreach(json_object_get(fl, "by_cause"), key, v)
		sum += ctl_ju(v, "");
	printf("\nmetadata write-backs: %llu (", sum);
	json_object_foreach(json_object_get(fl, "by_cause"), key, v) {
		printf("%s%s %llu", first ? "" : ", ", key, ctl_ju(v, ""));
		first = false;
	}
	printf("), %llu errors; dirty now: %s\n", ctl_ju(fl, "errors"),
	       ctl_yes_no(fl, "dirty"));
	printf("  timer write-backs: %llu started, %llu failed\n",
	       ctl_ju(st, "timer_writebacks.started"),
	       ctl_ju(st, "timer_writebacks.errors"));
	if ((t = ctl_table_new("lrr"))) {
		static const struct {
			const char *label, *key, *count;
		} tables[] = {
			{ "L2 slices", "l2", "slices" },
			{ "refcount block slices", "refcount_blocks", "slices" },
			{ "L1 table writes", "l1", "writes" },
			{ "refcount table writes", "refcount_table", "writes" },
		};
		char p[64];

		ctl_table_row(t);
		ctl_table_cell(t, "  written");
		ctl_table_cell(t, "COUNT");
		ctl_table_cell(t, "BYTES");
		for (size_t i = 0; i < sizeof(tables) / sizeof(tables[0]); i++) {
			ctl_table_row(t);
			ctl_table_cell(t, "    %s", tables[i].label);
			snprintf(p, sizeof(p), "%s.%s", tables[i].key, tables[i].count);
			ctl_table_cell(t, "%llu", ctl_ju(fl, p));
			snprintf(p, sizeof(p), "%s.bytes", tables[i].key);
			ctl_table_cell(t, "%s", ctl_fmt_size(ctl_ju(fl, p), false, a,
							     sizeof(a)));
		}
		ctl_table_row(t);
		ctl_table_cell(t, "    header writes");
		ctl_table_cell(t, "%llu", ctl_ju(fl, "header_writes"));
		ctl_table_print(t, stdout, 0);
		ctl_table_free(t);
	}
	printf("  fdatasyncs: %llu\n", ctl_ju(fl, "fdatasyncs"));
	n = hist_total(ctl_jget(fl, "latency_histogram"));
	if (!n) {
		printf("  latency: no write-backs\n");
	} else {
		ctl_fmt_duration(ctl_jd(fl, "total_seconds") / (double)n, a,
				 sizeof(a));
		/* A maximum cannot be reset: qcow2d says it is since open
		 * (max_seconds_since_open; max_seconds before 0.1.0's schema). */
		bool since_open = ctl_jget(fl, "max_seconds_since_open") != NULL;

		ctl_fmt_duration(ctl_jd(fl, since_open ? "max_seconds_since_open" :
							  "max_seconds"),
				 b, sizeof(b));
		printf("  latency: %llu write-back%s, mean %s, max %s%s\n", n,
		       n == 1 ? "" : "s", a, b, since_open ? " (since open)" : "");
		print_histogram(ctl_jget(fl, "latency_histogram"));
	}

	putchar('\n');
	if ((t = ctl_table_new("lrrrrrrl"))) {
		static const char *const caches[][2] = { { "L2", "l2" },
							 { "refcount", "refcount" } };

		ctl_table_row(t);
		ctl_table_cell(t, "caches");
		ctl_table_cell(t, "HITS");
		ctl_table_cell(t, "MISSES");
		ctl_table_cell(t, "HIT RATIO");
		ctl_table_cell(t, "EVICTIONS");
		ctl_table_cell(t, "LOADS");
		ctl_table_cell(t, "LOADED");
		ctl_table_cell(t, "SIZE");
		for (size_t i = 0; i < 2; i++) {
			json_t *cs = json_object_get(ctl_jget(st, "caches"),
						     caches[i][1]);
			unsigned long long h = ctl_ju(cs, "hits"),
					   m = ctl_ju(cs, "misses"),
					   slices = ctl_ju(cs, "slices"),
					   slice = ctl_ju(cs, "slice_size");

			if (!cs)
				continue;
			ctl_table_row(t);
			ctl_table_cell(t, "  %s", caches[i][0]);
			ctl_table_cell(t, "%llu", h);
			ctl_table_cell(t, "%llu", m);
			if (h + m)
				ctl_table_cell(t, "%.1f%%",
					       100.0 * (double)h / (double)(h + m));
			else
				ctl_table_cell(t, "-");
			ctl_table_cell(t, "%llu", ctl_ju(cs, "evictions"));
			ctl_table_cell(t, "%llu", ctl_ju(cs, "loads"));
			ctl_table_cell(t, "%s", ctl_fmt_size(ctl_ju(cs, "load_bytes"),
							     false, a, sizeof(a)));
			ctl_table_cell(t, "%s: %llu x %s",
				       ctl_fmt_size(slices * slice, false, c, sizeof(c)),
				       slices, ctl_fmt_size(slice, false, b, sizeof(b)));
		}
		ctl_table_print(t, stdout, 0);
		ctl_table_free(t);
	}
}

void ctl_print_service_stats(json_t *sv)
{
	struct ctl_table *t;
	char a[64];
	const char *key;
	json_t *v, *w;
	size_t i;

	ctl_fmt_uptime(ctl_jd(sv, "uptime_seconds"), a, sizeof(a));
	printf("service: up %s, %llu image%s open\n", a, ctl_ju(sv, "images"),
	       ctl_ju(sv, "images") == 1 ? "" : "s");
	printf("connections: %llu open, %llu since start, %llu refused\n",
	       ctl_ju(sv, "connections.open"), ctl_ju(sv, "connections.total"),
	       ctl_ju(sv, "connections.refused"));
	printf("requests: %llu, %llu errors\n", ctl_ju(sv, "requests.total"),
	       ctl_ju(sv, "requests.errors"));
	if ((t = ctl_table_new("lrrl"))) {
		ctl_table_row(t);
		ctl_table_cell(t, "METHOD");
		ctl_table_cell(t, "CALLS");
		ctl_table_cell(t, "ERRORS");
		ctl_table_cell(t, "BY CLASS");
		json_object_foreach(ctl_jget(sv, "requests.by_method"), key, v) {
			json_t *errs = json_object_get(v, "errors");
			unsigned long long ne = 0;
			char by[256] = "";
			size_t at = 0;
			const char *cls;
			json_t *n;

			json_object_foreach(errs, cls, n) {
				ne += ctl_ju(n, "");
				if (at < sizeof(by))
					at += (size_t)snprintf(by + at, sizeof(by) - at,
							       "%s%s %llu", at ? ", " : "",
							       cls, ctl_ju(n, ""));
			}
			ctl_table_row(t);
			ctl_table_cell(t, "%s", key);
			ctl_table_cell(t, "%llu", ctl_ju(v, "calls"));
			ctl_table_cell(t, "%llu", ne);
			if (ne)
				ctl_table_cell(t, "%s", by);
		}
		ctl_table_print(t, stdout, 2);
		ctl_table_free(t);
	}
	printf("workers:\n");
	if ((t = ctl_table_new("rrrr"))) {
		ctl_table_row(t);
		ctl_table_cell(t, "ID");
		ctl_table_cell(t, "IMAGES");
		ctl_table_cell(t, "LOOP ITERATIONS");
		ctl_table_cell(t, "TIMER WRITE-BACKS");
		json_array_foreach(json_object_get(sv, "workers"), i, w) {
			ctl_table_row(t);
			ctl_table_cell(t, "%llu", ctl_ju(w, "id"));
			ctl_table_cell(t, "%llu", ctl_ju(w, "images"));
			ctl_table_cell(t, "%llu", ctl_ju(w, "loop_iterations"));
			ctl_table_cell(t, "%llu", ctl_ju(w, "timer_writebacks"));
		}
		ctl_table_print(t, stdout, 2);
		ctl_table_free(t);
	}
}

/* ---- stats --watch ------------------------------------------------------- */

static const char *const causes[] = { "client", "timer", "eviction", "close" };
#define NCAUSES (sizeof(causes) / sizeof(causes[0]))
#define MAX_OPS 8

/* The ops an image's stats count, as paths into them: the clients'
 * (ops.*), or with an older qcow2d the engine's reads and writes. */
static size_t op_paths(json_t *st, char paths[][48], const char **names)
{
	json_t *ops = json_object_get(st, "ops"), *v;
	const char *key;
	size_t n = 0;

	if (!ops) {
		snprintf(paths[0], 48, "read");
		snprintf(paths[1], 48, "write");
		names[0] = "read";
		names[1] = "write";
		return 2;
	}
	json_object_foreach(ops, key, v) {
		if (n == MAX_OPS)
			break;
		snprintf(paths[n], 48, "ops.%.40s", key);
		names[n++] = key;
	}
	return n;
}

/* The increase of counter path from prev (NULL: from zero) to cur. */
static double delta(json_t *prev, json_t *cur, const char *path)
{
	return (double)(ctl_ju(cur, path) - ctl_ju(prev, path));
}

/*
 * The seconds from prev to cur by the service's own clock ("seconds" since
 * open or reset: our sleeps do not time it), after dropping prev (*prev =
 * NULL: count from zero) when the counters were reset in between: by this
 * watch, or by someone else (then "seconds" or a counter went down).
 */
static double interval_of(json_t **prev, json_t *cur, bool reset_each)
{
	static const char *const counters[] = {
		"read.requests", "write.requests", "flush.by_cause.client",
		"flush.by_cause.timer", "flush.by_cause.eviction",
		"flush.by_cause.close", "ops.read.requests", "ops.write.requests",
		"ops.flush.requests",
	};
	double cs = ctl_jd(cur, "seconds");
	bool restart = !*prev || reset_each || cs < ctl_jd(*prev, "seconds");

	for (size_t i = 0; i < sizeof(counters) / sizeof(counters[0]); i++)
		restart = restart ||
			  ctl_ju(cur, counters[i]) < ctl_ju(*prev, counters[i]);
	if (restart)
		*prev = NULL;
	return *prev ? cs - ctl_jd(*prev, "seconds") : cs;
}

/* An image's rows of the ops table: IOPS, MB/s, mean latency per op. */
static void watch_ops(struct ctl_table *t, const char *image, json_t *prev,
		      json_t *cur, bool reset_each)
{
	double dt = interval_of(&prev, cur, reset_each);
	char paths[MAX_OPS][48], p[64], lat[32];
	const char *names[MAX_OPS];
	size_t n = op_paths(cur, paths, names);

	for (size_t i = 0; i < n; i++) {
		double reqs, secs;

		snprintf(p, sizeof(p), "%s.requests", paths[i]);
		reqs = delta(prev, cur, p);
		snprintf(p, sizeof(p), "%s.total_seconds", paths[i]);
		secs = ctl_jd(cur, p) - ctl_jd(prev, p);
		ctl_table_row(t);
		ctl_table_cell(t, "%s", i ? "" : image);
		ctl_table_cell(t, "%s", names[i]);
		ctl_table_cell(t, "%.1f", dt > 0 ? reqs / dt : 0.0);
		snprintf(p, sizeof(p), "%s.bytes", paths[i]);
		ctl_table_cell(t, "%.2f",
			       dt > 0 ? delta(prev, cur, p) / dt / 1e6 : 0.0);
		if (json_object_get(cur, "ops"))
			ctl_table_cell(t, "%s",
				       mean_str(secs, (unsigned long long)reqs, lat,
						sizeof(lat)));
	}
}

/* An image's row of the write-backs table: per second, by cause. */
static void watch_writebacks(struct ctl_table *t, const char *image,
			     json_t *prev, json_t *cur, bool reset_each)
{
	double dt = interval_of(&prev, cur, reset_each);
	char p[64];

	ctl_table_row(t);
	ctl_table_cell(t, "%s", image);
	for (size_t i = 0; i < NCAUSES; i++) {
		snprintf(p, sizeof(p), "flush.by_cause.%s", causes[i]);
		ctl_table_cell(t, "%.1f", dt > 0 ? delta(prev, cur, p) / dt : 0.0);
	}
	ctl_table_cell(t, "%s", ctl_yes_no(cur, "flush.dirty"));
}

void ctl_print_watch_frame(json_t *prev, json_t *cur, const char *name,
			   bool reset_each, double interval, unsigned ours,
			   bool tty)
{
	json_t *images, *prev_images, *st;
	struct ctl_table *ops, *wb;
	char when[32], a[32];
	time_t now = time(NULL);
	struct tm tm;
	const char *key;

	localtime_r(&now, &tm);
	strftime(when, sizeof(when), "%H:%M:%S", &tm);
	ctl_fmt_duration(interval, a, sizeof(a));
	printf("qcow2ctl stats at %s, every %s; rates %s%s\n", when, a,
	       prev ? "since the previous refresh" :
		      "since the counters started (opened or reset)",
	       tty ? "; Ctrl-C stops" : "");
	if (name) {
		images = json_pack("{s:O}", name, cur);
		prev_images = prev ? json_pack("{s:O}", name, prev) : NULL;
	} else {
		json_t *sv = json_object_get(cur, "service"),
		       *psv = json_object_get(prev, "service");
		double dt = ctl_jd(sv, "uptime_seconds") -
			    ctl_jd(psv, "uptime_seconds");
		/* Our own requests are left out: a watch of an idle service
		 * says 0. */
		double reqs = delta(psv, sv, "requests.total") - (psv ? ours : 0);
		double errs = delta(psv, sv, "requests.errors");

		ctl_fmt_uptime(ctl_jd(sv, "uptime_seconds"), a, sizeof(a));
		printf("service: up %s, %llu image%s open, %llu connection%s, "
		       "%.1f requests/s (besides ours), %.1f errors/s\n", a,
		       ctl_ju(sv, "images"), ctl_ju(sv, "images") == 1 ? "" : "s",
		       ctl_ju(sv, "connections.open"),
		       ctl_ju(sv, "connections.open") == 1 ? "" : "s",
		       dt > 0 ? reqs / dt : 0.0, dt > 0 ? errs / dt : 0.0);
		images = json_incref(json_object_get(cur, "images"));
		prev_images = json_incref(json_object_get(prev, "images"));
	}
	putchar('\n');
	ops = ctl_table_new("llrrr");
	wb = ctl_table_new("lrrrrl");
	if (!json_object_size(images)) {
		printf("no images are open\n");
	} else if (ops && wb) {
		static const char *const cause_heads[NCAUSES] = {
			"CLIENT", "TIMER", "EVICTION", "CLOSE",
		};

		for (unsigned c = 2; c < 5; c++)
			ctl_table_min_width(ops, c, 8);
		for (unsigned c = 1; c < 5; c++)
			ctl_table_min_width(wb, c, 8);
		ctl_table_row(ops);
		ctl_table_cell(ops, "IMAGE");
		ctl_table_cell(ops, "OP");
		ctl_table_cell(ops, "IOPS");
		ctl_table_cell(ops, "MB/s");
		ctl_table_cell(ops, "LATENCY");
		ctl_table_row(wb);
		ctl_table_cell(wb, "WRITE-BACKS/S");
		for (size_t i = 0; i < NCAUSES; i++)
			ctl_table_cell(wb, "%s", cause_heads[i]);
		ctl_table_cell(wb, "DIRTY");
		json_object_foreach(images, key, st) {
			json_t *p = json_object_get(prev_images, key);

			watch_ops(ops, key, p, st, reset_each);
			watch_writebacks(wb, key, p, st, reset_each);
		}
		ctl_table_print(ops, stdout, 0);
		putchar('\n');
		ctl_table_print(wb, stdout, 0);
	}
	ctl_table_free(ops);
	ctl_table_free(wb);
	json_decref(images);
	json_decref(prev_images);
}
