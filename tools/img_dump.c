/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * qcow2-img dump: one metadata structure, decoded field by field. Each
 * structure is built once as a JSON value; --json prints it as is, and the
 * text form renders the same tree (offsets and raw entries in hex).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "qcow2_check.h"
#include "qcow2_meta.h"

static const char *usage_text =
	"Usage: qcow2-img dump [--json] [--all] IMAGE [WHAT [ARG]]\n"
	"\n"
	"Print one of IMAGE's metadata structures as it is on disk, decoded field\n"
	"by field, each entry with its flags. Nothing goes through the engine's\n"
	"caches, and nothing is written. WHAT is one of:\n"
	"  header                the header (the default)\n"
	"  extensions            every header extension: type, place, contents\n"
	"  l1                    the active L1 table's non-empty entries\n"
	"  l2 [L1-INDEX]         the L2 table of one L1 entry, or of every entry:\n"
	"                        each non-empty entry's type (data, zero,\n"
	"                        compressed, unallocated, invalid), host offset,\n"
	"                        COPIED flag, subcluster bitmap, reserved bits\n"
	"  refcount-table        the refcount table's non-empty entries\n"
	"  refcount-block N      refcount block N (a refcount table index), as\n"
	"                        runs of equal refcounts\n"
	"  snapshots             the snapshot table\n"
	"  bitmaps               the bitmap directory and each bitmap's table\n"
	"  cluster OFFSET        the host cluster holding OFFSET: its refcount and\n"
	"                        every reference to it (walks all metadata)\n"
	"\n"
	"Options:\n"
	"      --json          one JSON value on stdout: numbers in decimal, raw\n"
	"                      entries and feature bits as \"0x...\" strings\n"
	"  -a, --all           include empty entries in l1, l2 and refcount-table\n"
	"  -U, --force-share   take no image lock: read an image another process\n"
	"                      (QEMU) has open for writing; its metadata may be\n"
	"                      changing underneath\n"
	"  -h, --help          this text\n"
	"\n"
	"Exit status: 0 success, 1 the image or structure could not be read,\n"
	"2 usage error.\n";

/* Errors whose message is already printed: a usage error (exit 2), or
 * a failure (exit 1). */
#define ERR_USAGE (-EDOM)
#define ERR_PRINTED (-ECANCELED)

#define J_INT(v) json_integer((json_int_t)(v))

static void set_int(json_t *o, const char *k, uint64_t v)
{
	json_object_set_new(o, k, J_INT(v));
}

/* Raw 64-bit words go out as hex strings: JSON integers are signed (and
 * doubles in many readers), and the bits are what matter. */
static void set_hex(json_t *o, const char *k, uint64_t v)
{
	char buf[24];

	snprintf(buf, sizeof(buf), "0x%" PRIx64, v);
	json_object_set_new(o, k, json_string(buf));
}

/* Feature bits with their names from the image's table, or ours. */
static json_t *feature_names(const struct qcow2_header *h, int type,
			     uint64_t bits)
{
	static const char *known[3][5] = {
		{ "dirty", "corrupt", "external data file", "compression type",
		  "extended L2 entries" },
		{ "lazy refcounts" },
		{ "bitmaps", "raw external data" },
	};
	json_t *a = json_array();

	for (int bit = 0; bit < 64; bit++) {
		const char *name = NULL;
		char unknown[32];

		if (!(bits & (1ull << bit)))
			continue;
		for (unsigned i = 0; i < h->nb_features; i++)
			if (h->features[i].type == type && h->features[i].bit == bit)
				name = h->features[i].name;
		if (!name && bit < 5)
			name = known[type][bit];
		if (!name) {
			snprintf(unknown, sizeof(unknown), "unknown bit %d", bit);
			name = unknown;
		}
		json_array_append_new(a, json_string(name));
	}
	return a;
}

static json_t *dump_header(struct qcow2_meta *m)
{
	const struct qcow2_header *h = qcow2_meta_header(m);
	json_t *o = json_object();

	set_int(o, "magic", 0x514649fbu); /* checked by the parser */
	set_int(o, "version", h->version);
	set_int(o, "backing_file_offset", h->backing_file_offset);
	set_int(o, "backing_file_size", h->backing_file_size);
	if (h->backing_file)
		json_object_set_new(o, "backing_file", json_string(h->backing_file));
	set_int(o, "cluster_bits", h->cluster_bits);
	set_int(o, "size", h->size);
	set_int(o, "crypt_method", h->crypt_method);
	set_int(o, "l1_size", h->l1_size);
	set_int(o, "l1_table_offset", h->l1_table_offset);
	set_int(o, "refcount_table_offset", h->refcount_table_offset);
	set_int(o, "refcount_table_clusters", h->refcount_table_clusters);
	set_int(o, "nb_snapshots", h->nb_snapshots);
	set_int(o, "snapshots_offset", h->snapshots_offset);
	set_hex(o, "incompatible_features", h->incompatible_features);
	json_object_set_new(o, "incompatible_feature_names",
			    feature_names(h, 0, h->incompatible_features));
	set_hex(o, "compatible_features", h->compatible_features);
	json_object_set_new(o, "compatible_feature_names",
			    feature_names(h, 1, h->compatible_features));
	set_hex(o, "autoclear_features", h->autoclear_features);
	json_object_set_new(o, "autoclear_feature_names",
			    feature_names(h, 2, h->autoclear_features));
	set_int(o, "refcount_order", h->refcount_order);
	set_int(o, "refcount_bits", 1u << h->refcount_order);
	set_int(o, "header_length", h->header_length);
	json_object_set_new(o, "compression_type",
			    json_string(h->compression_type ? "zstd" : "zlib"));
	set_int(o, "file_size", qcow2_meta_file_size(m));
	return o;
}

static const char *ext_name(uint32_t type)
{
	switch (type) {
	case 0xe2792acau: return "backing file format";
	case 0x6803f857u: return "feature name table";
	case 0x23852875u: return "bitmaps";
	case 0x0537be77u: return "full disk encryption header pointer";
	case 0x44415441u: return "external data file";
	default: return "unknown";
	}
}

static json_t *dump_extensions(struct qcow2_meta *m)
{
	const struct qcow2_header *h = qcow2_meta_header(m);
	json_t *a = json_array();

	for (unsigned i = 0; i < h->nb_extensions; i++) {
		const struct qcow2_header_ext *x = &h->extensions[i];
		json_t *o = json_object();

		set_int(o, "type", x->type);
		json_object_set_new(o, "name", json_string(ext_name(x->type)));
		set_int(o, "data_offset", x->offset);
		set_int(o, "length", x->length);
		switch (x->type) {
		case 0xe2792acau:
			json_object_set_new(o, "backing_format",
					    json_string(h->backing_format));
			break;
		case 0x44415441u:
			json_object_set_new(o, "data_file", json_string(h->data_file));
			break;
		case 0x23852875u:
			set_int(o, "nb_bitmaps", h->nb_bitmaps);
			set_int(o, "bitmap_directory_size", h->bitmap_directory_size);
			set_int(o, "bitmap_directory_offset", h->bitmap_directory_offset);
			break;
		case 0x0537be77u:
			set_int(o, "crypto_header_offset", h->crypto_header_offset);
			set_int(o, "crypto_header_length", h->crypto_header_length);
			break;
		case 0x6803f857u: {
			json_t *f = json_array();
			for (unsigned j = 0; j < h->nb_features; j++) {
				json_t *e = json_object();
				static const char *types[] = { "incompatible", "compatible",
							       "autoclear" };
				json_object_set_new(e, "type", json_string(
					h->features[j].type < 3 ? types[h->features[j].type]
								: "unknown"));
				set_int(e, "bit", h->features[j].bit);
				json_object_set_new(e, "name", json_string(h->features[j].name));
				json_array_append_new(f, e);
			}
			json_object_set_new(o, "features", f);
			break;
		}
		}
		json_array_append_new(a, o);
	}
	return a;
}

static int dump_l1(struct qcow2_meta *m, bool all, json_t **out)
{
	const struct qcow2_header *h = qcow2_meta_header(m);
	json_t *a = json_array();
	uint64_t *l1;
	int ret = qcow2_meta_read_table(m, h->l1_table_offset, h->l1_size, &l1);

	if (ret < 0) {
		json_decref(a);
		return ret;
	}
	for (uint32_t i = 0; i < h->l1_size; i++) {
		json_t *o;

		if (!l1[i] && !all)
			continue;
		o = json_object();
		set_int(o, "index", i);
		set_hex(o, "raw", l1[i]);
		set_int(o, "l2_offset", l1[i] & 0x00fffffffffffe00ull);
		json_object_set_new(o, "copied", json_boolean(l1[i] >> 63));
		set_hex(o, "reserved", l1[i] & 0x7f000000000001ffull);
		json_array_append_new(a, o);
	}
	free(l1);
	*out = a;
	return 0;
}

static const char *l2_type_name(enum qcow2_l2_type t)
{
	static const char *names[] = { "unallocated", "zero", "data", "compressed",
				       "invalid" };
	return names[t];
}

static json_t *l2_table(struct qcow2_meta *m, uint32_t l1_index,
			uint64_t l2_off, bool all, int *err)
{
	const struct qcow2_header *h = qcow2_meta_header(m);
	uint64_t n = qcow2_meta_l2_entries(m);
	struct qcow2_l2_entry *e = calloc(n, sizeof(*e));
	bool extl2 = h->incompatible_features & QCOW2_INCOMPAT_EXTL2;
	json_t *t, *a;
	int ret;

	if (!e) {
		*err = -ENOMEM;
		return NULL;
	}
	ret = qcow2_meta_read_l2(m, l2_off, e);
	if (ret < 0) {
		free(e);
		*err = ret;
		return NULL;
	}
	t = json_object();
	set_int(t, "l1_index", l1_index);
	set_int(t, "offset", l2_off);
	a = json_array();
	for (uint64_t i = 0; i < n; i++) {
		uint64_t guest = (((uint64_t)l1_index * n) + i) << h->cluster_bits;
		json_t *o;

		if (!e[i].raw && !e[i].bitmap && !all)
			continue;
		o = json_object();
		set_int(o, "index", i);
		set_int(o, "guest_offset", guest);
		set_hex(o, "raw", e[i].raw);
		json_object_set_new(o, "type", json_string(l2_type_name(e[i].type)));
		set_int(o, "host_offset", e[i].host_offset);
		if (e[i].type == QCOW2_L2_COMPRESSED)
			set_int(o, "compressed_length", e[i].compressed_len);
		json_object_set_new(o, "copied", json_boolean(e[i].copied));
		if (!extl2)
			json_object_set_new(o, "zero_flag", json_boolean(e[i].zero_flag));
		else
			set_hex(o, "subcluster_bitmap", e[i].bitmap);
		if (e[i].reserved)
			set_hex(o, "reserved", e[i].reserved);
		json_array_append_new(a, o);
	}
	json_object_set_new(t, "entries", a);
	free(e);
	return t;
}

static int dump_l2(struct qcow2_meta *m, const char *arg, bool all,
		   json_t **out)
{
	const struct qcow2_header *h = qcow2_meta_header(m);
	uint64_t *l1, first = 0, last = h->l1_size;
	json_t *a;
	int ret;

	if (arg) {
		char *end;
		first = strtoull(arg, &end, 0);
		if (*end || first >= h->l1_size) {
			fprintf(stderr, "qcow2-img: dump: L1 index '%s' is not in [0, %u)\n",
				arg, h->l1_size);
			return ERR_USAGE;
		}
		last = first + 1;
	}
	ret = qcow2_meta_read_table(m, h->l1_table_offset, h->l1_size, &l1);
	if (ret < 0)
		return ret;
	a = json_array();
	for (uint64_t i = first; i < last && ret == 0; i++) {
		uint64_t l2 = l1[i] & 0x00fffffffffffe00ull;
		json_t *t;

		if (!l2) {
			if (arg)
				fprintf(stderr, "qcow2-img: dump: L1 entry %" PRIu64
					" has no L2 table\n", i);
			continue;
		}
		t = l2_table(m, (uint32_t)i, l2, all, &ret);
		if (t)
			json_array_append_new(a, t);
	}
	free(l1);
	if (ret < 0) {
		json_decref(a);
		return ret;
	}
	*out = a;
	return 0;
}

static int dump_reftable(struct qcow2_meta *m, bool all, json_t **out)
{
	const struct qcow2_header *h = qcow2_meta_header(m);
	uint64_t n = ((uint64_t)h->refcount_table_clusters << h->cluster_bits) / 8;
	uint64_t per = qcow2_meta_refblock_entries(m);
	json_t *a = json_array();
	uint64_t *t;
	int ret = qcow2_meta_read_table(m, h->refcount_table_offset, n, &t);

	if (ret < 0) {
		json_decref(a);
		return ret;
	}
	for (uint64_t i = 0; i < n; i++) {
		json_t *o;

		if (!t[i] && !all)
			continue;
		o = json_object();
		set_int(o, "index", i);
		set_int(o, "refblock_offset", t[i] & ~511ull);
		set_int(o, "first_cluster_offset", (i * per) << h->cluster_bits);
		if (t[i] & 511)
			set_int(o, "reserved", t[i] & 511);
		json_array_append_new(a, o);
	}
	free(t);
	*out = a;
	return 0;
}

static int dump_refblock(struct qcow2_meta *m, const char *arg, json_t **out)
{
	const struct qcow2_header *h = qcow2_meta_header(m);
	uint64_t n = ((uint64_t)h->refcount_table_clusters << h->cluster_bits) / 8;
	uint64_t per = qcow2_meta_refblock_entries(m), idx, *t, *rc, off;
	json_t *o, *runs;
	char *end;
	int ret;

	if (!arg) {
		fprintf(stderr, "qcow2-img: dump: refcount-block needs N, a refcount "
			"table index\n");
		return ERR_USAGE;
	}
	idx = strtoull(arg, &end, 0);
	if (*end || idx >= n) {
		fprintf(stderr, "qcow2-img: dump: refcount table index '%s' is not in "
			"[0, %" PRIu64 ")\n", arg, n);
		return ERR_USAGE;
	}
	ret = qcow2_meta_read_table(m, h->refcount_table_offset, n, &t);
	if (ret < 0)
		return ret;
	off = t[idx] & ~511ull;
	free(t);
	if (!off) {
		fprintf(stderr, "qcow2-img: dump: refcount table entry %" PRIu64
			" is empty (its clusters have refcount 0)\n", idx);
		return ERR_PRINTED;
	}
	rc = malloc(per * sizeof(*rc));
	if (!rc)
		return -ENOMEM;
	ret = qcow2_meta_read_refblock(m, off, rc);
	if (ret < 0) {
		free(rc);
		return ret;
	}
	o = json_object();
	set_int(o, "index", idx);
	set_int(o, "offset", off);
	set_int(o, "entries", per);
	runs = json_array();
	for (uint64_t i = 0; i < per;) {
		uint64_t j = i;
		json_t *r = json_object();

		while (j < per && rc[j] == rc[i])
			j++;
		set_int(r, "first_cluster_offset", (idx * per + i) << h->cluster_bits);
		set_int(r, "clusters", j - i);
		set_int(r, "refcount", rc[i]);
		json_array_append_new(runs, r);
		i = j;
	}
	json_object_set_new(o, "runs", runs);
	free(rc);
	*out = o;
	return 0;
}

static int dump_snapshots(struct qcow2_meta *m, json_t **out)
{
	struct qcow2_snapshot_entry *s;
	uint32_t n;
	json_t *a;
	int ret = qcow2_meta_snapshots(m, &s, &n);

	if (ret < 0)
		return ret;
	a = json_array();
	for (uint32_t i = 0; i < n; i++) {
		json_t *o = json_object();

		set_int(o, "entry_offset", s[i].entry_offset);
		json_object_set_new(o, "id", json_string(s[i].id));
		json_object_set_new(o, "name", json_string(s[i].name));
		set_int(o, "l1_table_offset", s[i].l1_table_offset);
		set_int(o, "l1_size", s[i].l1_size);
		set_int(o, "date_sec", s[i].date_sec);
		set_int(o, "date_nsec", s[i].date_nsec);
		set_int(o, "vm_clock_nsec", s[i].vm_clock_nsec);
		set_int(o, "vm_state_size", s[i].vm_state_size);
		if (s[i].has_disk_size)
			set_int(o, "disk_size", s[i].disk_size);
		set_int(o, "extra_data_size", s[i].extra_data_size);
		json_array_append_new(a, o);
	}
	qcow2_meta_free_snapshots(s, n);
	*out = a;
	return 0;
}

static int dump_bitmaps(struct qcow2_meta *m, json_t **out)
{
	const struct qcow2_header *h = qcow2_meta_header(m);
	struct qcow2_bitmap_entry *b;
	uint32_t n;
	json_t *o, *a;
	int ret = qcow2_meta_bitmaps(m, &b, &n);

	if (ret < 0)
		return ret;
	o = json_object();
	json_object_set_new(o, "valid", json_boolean(
		h->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS));
	set_int(o, "directory_offset", h->bitmap_directory_offset);
	set_int(o, "directory_size", h->bitmap_directory_size);
	a = json_array();
	for (uint32_t i = 0; i < n && ret == 0; i++) {
		json_t *e = json_object(), *fl = json_array(), *te = json_array();
		uint64_t *t;

		json_object_set_new(e, "name", json_string(b[i].name));
		set_int(e, "entry_offset", b[i].entry_offset);
		set_int(e, "flags", b[i].flags);
		if (b[i].flags & QCOW2_BITMAP_IN_USE)
			json_array_append_new(fl, json_string("in_use"));
		if (b[i].flags & QCOW2_BITMAP_AUTO)
			json_array_append_new(fl, json_string("auto"));
		if (b[i].flags & QCOW2_BITMAP_EXTRA_DATA_COMPATIBLE)
			json_array_append_new(fl, json_string("extra_data_compatible"));
		json_object_set_new(e, "flag_names", fl);
		set_int(e, "type", b[i].type);
		set_int(e, "granularity_bits", b[i].granularity_bits);
		set_int(e, "extra_data_size", b[i].extra_data_size);
		set_int(e, "table_offset", b[i].table_offset);
		set_int(e, "table_size", b[i].table_size);
		ret = qcow2_meta_read_table(m, b[i].table_offset, b[i].table_size, &t);
		for (uint32_t j = 0; ret == 0 && j < b[i].table_size; j++) {
			json_t *x;

			if (!t[j])
				continue; /* reads as zeros */
			x = json_object();
			set_int(x, "index", j);
			if (t[j] & 0x00fffffffffffe00ull)
				set_int(x, "data_offset", t[j] & 0x00fffffffffffe00ull);
			else
				json_object_set_new(x, "all_ones", json_boolean(t[j] & 1));
			json_array_append_new(te, x);
		}
		if (ret == 0)
			free(t);
		json_object_set_new(e, "table", te);
		json_array_append_new(a, e);
	}
	qcow2_meta_free_bitmaps(b, n);
	json_object_set_new(o, "bitmaps", a);
	if (ret < 0) {
		json_decref(o);
		return ret;
	}
	*out = o;
	return 0;
}

static void on_reference(void *opaque, uint64_t offset, const char *what)
{
	json_t *r = json_object();

	set_int(r, "offset", offset);
	json_object_set_new(r, "referenced_by", json_string(what));
	json_array_append_new(opaque, r);
}

static int dump_cluster(struct qcow2_meta *m, const char *path,
			const char *arg, bool force_share, json_t **out)
{
	uint64_t off, rc, cs = 1ull << qcow2_meta_header(m)->cluster_bits;
	struct qcow2_check_opts co = { .reference = on_reference };
	struct qcow2_check_result res;
	struct qcow2_error err = { "" };
	json_t *o, *refs;
	int ret;

	if (!arg || cli_parse_size(arg, &off) < 0) {
		fprintf(stderr, "qcow2-img: dump: cluster needs a host OFFSET\n");
		return ERR_USAGE;
	}
	ret = qcow2_meta_refcount(m, off, &rc);
	if (ret < 0)
		return ret;
	refs = json_array();
	co.trace_offset = off;
	co.force_share = force_share;
	co.opaque = refs;
	ret = qcow2_check(path, &co, &res, &err);
	if (ret < 0) {
		fprintf(stderr, "qcow2-img: dump: %s\n", err.msg);
		json_decref(refs);
		return ERR_PRINTED;
	}
	o = json_object();
	set_int(o, "cluster_offset", off & ~(cs - 1));
	json_object_set_new(o, "past_end_of_file",
			    json_boolean(off >= qcow2_meta_file_size(m)));
	set_int(o, "refcount", rc);
	set_int(o, "references", json_array_size(refs));
	json_object_set_new(o, "referenced_by", refs);
	*out = o;
	return 0;
}

/* Keys printed in hex in the text form. */
static bool hex_key(const char *k)
{
	size_t n = strlen(k);

	return (n >= 6 && !strcmp(k + n - 6, "offset")) || !strcmp(k, "raw") ||
	       !strcmp(k, "magic") ||
	       !strcmp(k, "reserved") || !strcmp(k, "subcluster_bitmap") ||
	       !strcmp(k, "type") || (n >= 8 && !strcmp(k + n - 8, "features")) ||
	       !strcmp(k, "flags");
}

static void print_scalar(const char *k, json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_INTEGER:
		if (hex_key(k))
			printf("0x%" PRIx64, (uint64_t)json_integer_value(v));
		else
			printf("%" PRId64, (int64_t)json_integer_value(v));
		break;
	case JSON_STRING:
		printf("%s", json_string_value(v));
		break;
	case JSON_TRUE:
		printf("yes");
		break;
	case JSON_FALSE:
		printf("no");
		break;
	case JSON_ARRAY: { /* of strings: names */
		size_t i;
		json_t *e;
		printf("[");
		json_array_foreach(v, i, e)
			printf("%s%s", i ? ", " : "", json_string_value(e));
		printf("]");
		break;
	}
	default:
		printf("null");
	}
}

static void print_text(json_t *v, int indent);

/* An object whose values are all scalars goes on one line in a list. */
static void print_row(json_t *o, int indent)
{
	const char *k;
	json_t *v;
	bool first = true;

	printf("%*s", indent, "");
	json_object_foreach(o, k, v) {
		if (json_is_object(v) || (json_is_array(v) && json_array_size(v) &&
					 !json_is_string(json_array_get(v, 0))))
			continue;
		printf("%s%s=", first ? "" : " ", k);
		print_scalar(k, v);
		first = false;
	}
	printf("\n");
	json_object_foreach(o, k, v) {
		if (json_is_object(v) || (json_is_array(v) && json_array_size(v) &&
					 !json_is_string(json_array_get(v, 0)))) {
			printf("%*s%s:\n", indent + 2, "", k);
			print_text(v, indent + 4);
		}
	}
}

static void print_text(json_t *v, int indent)
{
	const char *k;
	json_t *e;
	size_t i;

	if (json_is_array(v)) {
		if (!json_array_size(v))
			printf("%*s(none)\n", indent, "");
		json_array_foreach(v, i, e)
			print_row(e, indent);
		return;
	}
	json_object_foreach(v, k, e) {
		if (json_is_object(e) || (json_is_array(e) && json_array_size(e) &&
					 !json_is_string(json_array_get(e, 0)))) {
			printf("%*s%s:\n", indent, "", k);
			print_text(e, indent + 2);
			continue;
		}
		printf("%*s%-28s ", indent, "", k);
		print_scalar(k, e);
		printf("\n");
	}
}

int cmd_dump(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "json", no_argument, 0, 'j' },
		{ "all", no_argument, 0, 'a' },
		{ "force-share", no_argument, 0, 'U' },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	struct qcow2_error err = { "" };
	struct qcow2_meta *m;
	const char *path, *what = "header", *arg = NULL;
	bool json = false, all = false, force_share = false;
	json_t *out = NULL;
	int opt, ret;

	optind = 0;
	while ((opt = getopt_long(argc, argv, "ahU", longopts, NULL)) != -1) {
		switch (opt) {
		case 'j':
			json = true;
			break;
		case 'a':
			all = true;
			break;
		case 'U':
			force_share = true;
			break;
		case 'h':
			fputs(usage_text, stdout);
			return 0;
		default:
			fputs(usage_text, stderr);
			return 2;
		}
	}
	if (optind >= argc || argc - optind > 3) {
		fputs(usage_text, stderr);
		return 2;
	}
	path = argv[optind];
	if (optind + 1 < argc)
		what = argv[optind + 1];
	if (optind + 2 < argc)
		arg = argv[optind + 2];
	ret = qcow2_meta_open(path, force_share ? QCOW2_OPEN_FORCE_SHARE : 0, &m,
			      &err);
	if (ret < 0) {
		fprintf(stderr, "qcow2-img: %s: %s\n", path, err.msg);
		return 1;
	}
	if (!strcmp(what, "header"))
		out = dump_header(m);
	else if (!strcmp(what, "extensions"))
		out = dump_extensions(m);
	else if (!strcmp(what, "l1"))
		ret = dump_l1(m, all, &out);
	else if (!strcmp(what, "l2"))
		ret = dump_l2(m, arg, all, &out);
	else if (!strcmp(what, "refcount-table"))
		ret = dump_reftable(m, all, &out);
	else if (!strcmp(what, "refcount-block"))
		ret = dump_refblock(m, arg, &out);
	else if (!strcmp(what, "snapshots"))
		ret = dump_snapshots(m, &out);
	else if (!strcmp(what, "bitmaps"))
		ret = dump_bitmaps(m, &out);
	else if (!strcmp(what, "cluster"))
		ret = dump_cluster(m, path, arg, force_share, &out);
	else {
		fprintf(stderr, "qcow2-img: dump: unknown structure '%s'\n\n%s",
			what, usage_text);
		qcow2_meta_close(m);
		return 2;
	}
	qcow2_meta_close(m);
	if (ret < 0 || !out) {
		if (ret == ERR_USAGE || ret == ERR_PRINTED)
			return ret == ERR_USAGE ? 2 : 1;
		fprintf(stderr, "qcow2-img: %s: cannot read the %s: %s\n", path, what,
			ret == -EINVAL ? "it is malformed" : strerror(ret ? -ret : ENOMEM));
		return 1;
	}
	if (json) {
		json_dumpf(out, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
		printf("\n");
	} else {
		print_text(out, 0);
	}
	json_decref(out);
	return 0;
}
