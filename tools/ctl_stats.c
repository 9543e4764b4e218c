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

	if ((t = ctl_table_new("lrrrl"))) {
		ctl_table_row(t);
		ctl_table_cell(t, "requests");
		ctl_table_cell(t, "COUNT");
		ctl_table_cell(t, "BYTES");
		ctl_table_cell(t, "ERRORS");
		for (int w = 0; w < 2; w++) {
			const char *op = w ? "write" : "read";
			char p[32];

			ctl_table_row(t);
			ctl_table_cell(t, "  %s", op);
			snprintf(p, sizeof(p), "%s.requests", op);
			ctl_table_cell(t, "%llu", ctl_ju(st, p));
			snprintf(p, sizeof(p), "%s.bytes", op);
			ctl_table_cell(t, "%s", ctl_fmt_size(ctl_ju(st, p), false, a,
							     sizeof(a)));
			snprintf(p, sizeof(p), "%s.errors", op);
			ctl_table_cell(t, "%llu", ctl_ju(st, p));
		}
		ctl_table_print(t, stdout, 0);
		ctl_table_free(t);
	}
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
		ctl_fmt_duration(ctl_jd(fl, "max_seconds"), b, sizeof(b));
		printf("  latency: %llu write-backs, mean %s, max %s\n", n, a, b);
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

struct rates {
	double read_iops, read_mbs, write_iops, write_mbs, wb[NCAUSES];
};

/* Counter path's increase from prev (NULL: from zero) to cur, per second. */
static double rate(json_t *prev, json_t *cur, const char *path, double dt)
{
	if (dt <= 0)
		return 0.0;
	return (double)(ctl_ju(cur, path) - ctl_ju(prev, path)) / dt;
}

/* The rates of image stats cur since prev (NULL: since its counters
 * started). The service's own clock ("seconds" since open or reset) times
 * them: our sleeps do not. */
static void image_rates(json_t *prev, json_t *cur, bool reset_each,
			struct rates *r)
{
	static const char *const monotonic[] = {
		"read.requests", "read.bytes", "write.requests", "write.bytes",
		"flush.by_cause.client", "flush.by_cause.timer",
		"flush.by_cause.eviction", "flush.by_cause.close",
	};
	double cs = ctl_jd(cur, "seconds"), dt;
	bool restart = !prev || reset_each || cs < ctl_jd(prev, "seconds");
	char p[64];

	/* A counter that went down: someone else reset them meanwhile. */
	for (size_t i = 0; i < sizeof(monotonic) / sizeof(monotonic[0]); i++)
		restart = restart ||
			  ctl_ju(cur, monotonic[i]) < ctl_ju(prev, monotonic[i]);
	if (restart)
		prev = NULL;
	dt = prev ? cs - ctl_jd(prev, "seconds") : cs;
	r->read_iops = rate(prev, cur, "read.requests", dt);
	r->read_mbs = rate(prev, cur, "read.bytes", dt) / 1e6;
	r->write_iops = rate(prev, cur, "write.requests", dt);
	r->write_mbs = rate(prev, cur, "write.bytes", dt) / 1e6;
	for (size_t i = 0; i < NCAUSES; i++) {
		snprintf(p, sizeof(p), "flush.by_cause.%s", causes[i]);
		r->wb[i] = rate(prev, cur, p, dt);
	}
}

/* "---- label ----" centred in width. */
static void group_header(const char *label, int width)
{
	int n = (int)strlen(label) + 2, left = (width - n) / 2,
	    right = width - n - left;

	for (int i = 0; i < left; i++)
		putchar('-');
	printf(" %s ", label);
	for (int i = 0; i < right; i++)
		putchar('-');
}

void ctl_print_watch_frame(json_t *prev, json_t *cur, const char *name,
			   bool reset_each, double interval, unsigned ours,
			   bool tty)
{
	json_t *images, *prev_images, *st;
	char when[32], a[32];
	time_t now = time(NULL);
	struct tm tm;
	const char *key;
	int w = 5;

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
		double reqs = (double)(ctl_ju(sv, "requests.total") -
				       ctl_ju(psv, "requests.total")) -
			      (psv ? ours : 0);
		double errs = (double)(ctl_ju(sv, "requests.errors") -
				       ctl_ju(psv, "requests.errors"));

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
	if (!json_object_size(images)) {
		printf("no images are open\n");
		json_decref(images);
		json_decref(prev_images);
		return;
	}
	json_object_foreach(images, key, st)
		if ((int)ctl_text_width(key) > w)
			w = (int)ctl_text_width(key);
	printf("%*s  ", w, "");
	group_header("read", 19);
	printf("  ");
	group_header("write", 19);
	printf("  ");
	group_header("write-backs/s", 33);
	printf("\n%-*s  %9s %9s  %9s %9s  %7s %7s %9s %7s  %s\n", w, "IMAGE",
	       "IOPS", "MB/s", "IOPS", "MB/s", "client", "timer", "eviction",
	       "close", "DIRTY");
	json_object_foreach(images, key, st) {
		struct rates r;

		image_rates(json_object_get(prev_images, key), st, reset_each, &r);
		printf("%-*s  %9.1f %9.2f  %9.1f %9.2f  %7.1f %7.1f %9.1f %7.1f  %s\n",
		       w, key, r.read_iops, r.read_mbs, r.write_iops, r.write_mbs,
		       r.wb[0], r.wb[1], r.wb[2], r.wb[3],
		       ctl_yes_no(st, "flush.dirty"));
	}
	json_decref(images);
	json_decref(prev_images);
}
