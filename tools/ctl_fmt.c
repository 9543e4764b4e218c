/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* qcow2ctl's text output: durations, uptimes, sizes, aligned tables, and
 * reading the values of a JSON result. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_units.h"
#include "ctl.h"

/* Three significant digits at most, without an exponent: 850, 12.5, 1.02,
 * 16 (as cli_human_size() prints sizes). */
static void three_digits(double v, const char *unit, char *buf, size_t len)
{
	if (v >= 999.5)
		snprintf(buf, len, "%.0f %s", v, unit); /* %g: "1e+03" */
	else
		snprintf(buf, len, "%.3g %s", v, unit);
}

void ctl_fmt_duration(double s, char *buf, size_t len)
{
	if (s <= 0)
		snprintf(buf, len, "0 s");
	else if (s < 999.5e-6)
		three_digits(s * 1e6, "µs", buf, len);
	else if (s < 999.5e-3)
		three_digits(s * 1e3, "ms", buf, len);
	else
		three_digits(s, "s", buf, len);
}

void ctl_fmt_uptime(double seconds, char *buf, size_t len)
{
	unsigned long long s = seconds > 0 ? (unsigned long long)seconds : 0;

	if (s < 60)
		snprintf(buf, len, "%llu s", s);
	else if (s < 3600)
		snprintf(buf, len, "%llu min %llu s", s / 60, s % 60);
	else if (s < 86400)
		snprintf(buf, len, "%llu h %llu min", s / 3600, s % 3600 / 60);
	else
		snprintf(buf, len, "%llu d %llu h", s / 86400, s % 86400 / 3600);
}

char *ctl_fmt_size(unsigned long long bytes, bool exact, char *buf, size_t len)
{
	char h[32];

	cli_human_size(bytes, h, sizeof(h));
	if (exact && bytes >= 1024)
		snprintf(buf, len, "%s (%llu bytes)", h, bytes);
	else
		snprintf(buf, len, "%s", h);
	return buf;
}

size_t ctl_text_width(const char *s)
{
	size_t n = 0;

	/* Count the bytes that start a code point (not 10xxxxxx). */
	for (; *s; s++)
		if (((unsigned char)*s & 0xc0) != 0x80)
			n++;
	return n;
}

/* ---- tables -------------------------------------------------------------- */

struct ctl_table {
	char *align;
	size_t *min_width;           /* per column */
	unsigned ncols;
	char **cells;                /* row-major, ncols a row; NULL: empty */
	size_t nrows, cap;           /* rows */
	unsigned col;                /* the next cell of the last row */
};

struct ctl_table *ctl_table_new(const char *align)
{
	struct ctl_table *t = calloc(1, sizeof(*t));

	if (!t)
		return NULL;
	t->ncols = (unsigned)strlen(align);
	t->align = strdup(align);
	t->min_width = calloc(t->ncols ? t->ncols : 1, sizeof(*t->min_width));
	if (!t->align || !t->min_width) {
		ctl_table_free(t);
		return NULL;
	}
	return t;
}

void ctl_table_min_width(struct ctl_table *t, unsigned col, size_t width)
{
	if (col < t->ncols)
		t->min_width[col] = width;
}

int ctl_table_row(struct ctl_table *t)
{
	if (t->nrows == t->cap) {
		size_t cap = t->cap ? t->cap * 2 : 16;
		char **p = realloc(t->cells, cap * t->ncols * sizeof(*p));
		if (!p)
			return -ENOMEM;
		t->cells = p;
		t->cap = cap;
	}
	memset(t->cells + t->nrows * t->ncols, 0, t->ncols * sizeof(*t->cells));
	t->nrows++;
	t->col = 0;
	return 0;
}

int ctl_table_cell(struct ctl_table *t, const char *fmt, ...)
{
	va_list ap;
	char *s;
	int n;

	if (!t->nrows || t->col >= t->ncols)
		return -EINVAL; /* a programming error: more cells than columns */
	va_start(ap, fmt);
	n = vasprintf(&s, fmt, ap);
	va_end(ap);
	if (n < 0)
		return -ENOMEM;
	t->cells[(t->nrows - 1) * t->ncols + t->col++] = s;
	return 0;
}

void ctl_table_print(const struct ctl_table *t, FILE *f, int indent)
{
	size_t *w = calloc(t->ncols ? t->ncols : 1, sizeof(*w));

	if (!w)
		return;
	memcpy(w, t->min_width, t->ncols * sizeof(*w));
	for (size_t r = 0; r < t->nrows; r++)
		for (unsigned c = 0; c < t->ncols; c++) {
			const char *s = t->cells[r * t->ncols + c];
			size_t n = s ? ctl_text_width(s) : 0;
			if (n > w[c])
				w[c] = n;
		}
	for (size_t r = 0; r < t->nrows; r++) {
		unsigned last = t->ncols;

		/* Trailing empty cells print nothing, not padding. */
		while (last && !t->cells[r * t->ncols + last - 1])
			last--;
		fprintf(f, "%*s", indent, "");
		for (unsigned c = 0; c < last; c++) {
			const char *s = t->cells[r * t->ncols + c];
			size_t pad;

			s = s ? s : "";
			pad = w[c] - ctl_text_width(s);
			if (c)
				fputs("  ", f);
			if (t->align[c] == 'r')
				fprintf(f, "%*s%s", (int)pad, "", s);
			else if (c + 1 < last)
				fprintf(f, "%s%*s", s, (int)pad, "");
			else
				fputs(s, f);
		}
		fputc('\n', f);
	}
	free(w);
}

void ctl_table_free(struct ctl_table *t)
{
	if (!t)
		return;
	for (size_t i = 0; i < t->nrows * t->ncols; i++)
		free(t->cells[i]);
	free(t->cells);
	free(t->align);
	free(t->min_width);
	free(t);
}

/* ---- reading results ---------------------------------------------------- */

/* The value at a dotted path ("flush.by_cause.timer"), or NULL. */
json_t *ctl_jget(json_t *o, const char *path)
{
	char key[64];

	while (o && *path) {
		const char *dot = strchr(path, '.');
		size_t n = dot ? (size_t)(dot - path) : strlen(path);

		if (n >= sizeof(key))
			return NULL;
		memcpy(key, path, n);
		key[n] = '\0';
		o = json_object_get(o, key);
		path += n + (dot ? 1 : 0);
	}
	return o;
}

/* Counters: 0 when absent (an older or newer service). */
unsigned long long ctl_ju(json_t *o, const char *path)
{
	json_t *v = ctl_jget(o, path);

	return json_is_integer(v) && json_integer_value(v) > 0 ?
		       (unsigned long long)json_integer_value(v) : 0;
}

double ctl_jd(json_t *o, const char *path)
{
	return json_number_value(ctl_jget(o, path));
}

const char *ctl_js(json_t *o, const char *path)
{
	return json_string_value(ctl_jget(o, path));
}

const char *ctl_yes_no(json_t *o, const char *path)
{
	return json_is_true(ctl_jget(o, path)) ? "yes" : "no";
}
