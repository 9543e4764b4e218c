/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* qcow2-img map: where every guest range comes from, like qemu-img map. */
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "commands.h"
#include "qcow2_meta.h"

struct map_entry {
	uint64_t start, length;
	int depth;
	bool present, zero, data, compressed, has_offset;
	uint64_t offset;
	const char *file;
};

/*
 * Does qemu-img map ask the file system about holes under this qcow2
 * image's data clusters? Only when it detects metadata preallocation:
 * more clusters referenced than the file has allocated, by its margin
 * (max(allocated * 10 / 9, allocated + 2)). Otherwise a data cluster is
 * data, whatever SEEK_HOLE says (which on ext4 also depends on what the
 * page cache holds of unwritten extents).
 */
static bool holes_count(const char *path, bool force_share)
{
	struct qcow2_meta *m;
	struct qcow2_error err;
	struct stat st;
	uint64_t cs, per, real, threshold, count = 0, *rt = NULL, *rc = NULL;
	uint64_t nclusters, nrt;
	bool yes = true;

	if (stat(path, &st) < 0 ||
	    qcow2_meta_open(path, force_share ? QCOW2_OPEN_FORCE_SHARE : 0, &m, &err) < 0)
		return true;
	cs = 1ull << qcow2_meta_header(m)->cluster_bits;
	per = qcow2_meta_refblock_entries(m);
	real = (uint64_t)st.st_blocks * 512 / cs;
	threshold = real * 10 / 9 > real + 2 ? real * 10 / 9 : real + 2;
	nclusters = ((uint64_t)st.st_size + cs - 1) / cs;
	nrt = (uint64_t)qcow2_meta_header(m)->refcount_table_clusters * cs / 8;
	rc = malloc(per * sizeof(*rc));
	if (rc && qcow2_meta_read_table(m, qcow2_meta_header(m)->refcount_table_offset,
					nrt, &rt) == 0) {
		for (uint64_t b = 0; b * per < nclusters && b < nrt && count < threshold; b++) {
			uint64_t blk = rt[b] & ~511ull;
			if (!blk || qcow2_meta_read_refblock(m, blk, rc) < 0)
				continue;
			for (uint64_t i = 0; i < per && b * per + i < nclusters; i++)
				count += rc[i] != 0;
		}
		yes = count >= threshold;
	}
	free(rt);
	free(rc);
	qcow2_meta_close(m);
	return yes;
}

static bool force_share_all;

/* holes_count(), once per image of the chain. */
static bool holes_count_cached(const char *path)
{
	static struct { char *path; bool yes; } seen[64];
	static int nseen;

	for (int i = 0; i < nseen; i++)
		if (!strcmp(seen[i].path, path))
			return seen[i].yes;
	bool yes = holes_count(path, force_share_all);
	if (nseen < 64 && (seen[nseen].path = strdup(path)) != NULL)
		seen[nseen++].yes = yes;
	return yes;
}

/* The status of [off, off+maxlen) resolved through the backing chain. */
static int resolve(struct qcow2_image *img, int depth, uint64_t off,
		   uint64_t maxlen, struct map_entry *e)
{
	struct qcow2_extent x;
	struct qcow2_info in;
	int ret = qcow2_block_status(img, off, maxlen, &x);

	if (ret < 0)
		return ret;
	qcow2_get_info(img, &in);
	memset(e, 0, sizeof(*e));
	e->start = off;
	e->length = x.length;
	e->depth = depth;
	e->file = in.filename;
	switch (x.type) {
	case QCOW2_EXTENT_DATA:
		/* A hole in the host file reads zeros: qemu-img map says so,
		 * and calls a raw file's holes no data at all. */
		e->present = e->has_offset = true;
		if (x.hole && in.format == QCOW2_FORMAT_QCOW2 && !x.data_file &&
		    !holes_count_cached(in.filename))
			x.hole = false;
		e->zero = x.hole;
		e->data = !x.hole || in.format != QCOW2_FORMAT_RAW;
		e->offset = x.host_offset;
		break;
	case QCOW2_EXTENT_ZERO:
		e->present = e->zero = true;
		e->has_offset = x.host_offset != 0;
		e->offset = x.host_offset;
		break;
	case QCOW2_EXTENT_COMPRESSED:
		e->present = e->data = e->compressed = true;
		break;
	case QCOW2_EXTENT_UNALLOCATED: {
		struct qcow2_image *b = qcow2_backing(img);
		struct qcow2_info bi;
		if (b) {
			qcow2_get_info(b, &bi);
			if (off < bi.virtual_size)
				return resolve(b, depth + 1, off,
					       x.length < bi.virtual_size - off ?
						       x.length : bi.virtual_size - off, e);
		}
		e->zero = true;
		break;
	}
	}
	return 0;
}

static bool mergeable(const struct map_entry *a, const struct map_entry *b)
{
	return a->depth == b->depth && a->present == b->present &&
	       a->zero == b->zero && a->data == b->data &&
	       a->compressed == b->compressed && a->has_offset == b->has_offset &&
	       (!a->has_offset || a->offset + a->length == b->offset) &&
	       a->file == b->file;
}

static void emit_json(const struct map_entry *e, bool *first)
{
	{
		json_t *o = json_object();
		char *s;
		json_object_set_new(o, "start", json_integer((json_int_t)e->start));
		json_object_set_new(o, "length", json_integer((json_int_t)e->length));
		json_object_set_new(o, "depth", json_integer(e->depth));
		json_object_set_new(o, "present", json_boolean(e->present));
		json_object_set_new(o, "zero", json_boolean(e->zero));
		json_object_set_new(o, "data", json_boolean(e->data));
		json_object_set_new(o, "compressed", json_boolean(e->compressed));
		if (e->has_offset)
			json_object_set_new(o, "offset", json_integer((json_int_t)e->offset));
		s = json_dumps(o, JSON_PRESERVE_ORDER | JSON_COMPACT);
		printf("%s%s", *first ? "[" : ",\n", s);
		free(s);
		json_decref(o);
	}
	*first = false;
}

static void emit(const struct map_entry *e, bool json, bool *first)
{
	if (json)
		emit_json(e, first);
	else if (e->has_offset && e->data && !e->zero) /* as qemu-img's */
		printf("%-#16" PRIx64 "%-#16" PRIx64 "%-#16" PRIx64 "%s\n",
		       e->start, e->length, e->offset, e->file);
}

static const char *usage_text =
	"Usage: qcow2-img map [OPTIONS] IMAGE\n"
	"\n"
	"Print where each guest range of IMAGE reads from, through the backing\n"
	"chain, like qemu-img map. The human format lists ranges with data and\n"
	"their host offsets; --json lists every range with its depth in the chain\n"
	"(0 = IMAGE), whether it is present in the chain, reads as zeros, holds\n"
	"data or is compressed, and the host offset of plain data.\n"
	"\n"
	"Options:\n"
	"      --json                    a JSON array (qemu-img map --output=json,\n"
	"                                plus \"compressed\")\n"
	CLI_COMMON_HELP
	"  -h, --help                    this text\n"
	"\n"
	"Exit status: 0 success, 1 error (the image cannot be opened or its\n"
	"metadata is corrupt), 2 usage error.\n";

int cmd_map(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "json", no_argument, 0, 'j' },
		{ "output", required_argument, 0, 'o' },
		{ "help", no_argument, 0, 'h' },
		CLI_COMMON_LONGOPTS,
		{ 0, 0, 0, 0 },
	};
	struct cli_open o = { 0 };
	bool json = false, first = true, have = false;
	struct qcow2_ctx *ctx;
	struct qcow2_image *img;
	struct qcow2_info in;
	struct map_entry cur = { 0 }, e;
	uint64_t off = 0;
	int opt, ret = 0;

	while ((opt = getopt_long(argc, argv, "hi:t:f:U", longopts, NULL)) != -1) {
		int r = cli_common_opt(&o, opt, optarg);
		if (r < 0)
			return 2;
		if (r)
			continue;
		if (opt == 'j' || (opt == 'o' && !strcmp(optarg, "json")))
			json = true;
		else if (opt == 'o' && !strcmp(optarg, "human"))
			json = false;
		else if (opt == 'h') {
			fputs(usage_text, stdout);
			return 0;
		} else {
			fputs(usage_text, stderr);
			return 2;
		}
	}
	if (optind != argc - 1) {
		fputs(usage_text, stderr);
		return 2;
	}
	force_share_all = o.force_share;
	if (cli_open_image(&o, argv[optind], &ctx, &img) < 0)
		return 1;
	qcow2_get_info(img, &in);
	if (!json)
		printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
	while (off < in.virtual_size) {
		ret = resolve(img, 0, off, in.virtual_size - off, &e);
		if (ret < 0) {
			fprintf(stderr, "%s: %s: %s\n", cli_prog, argv[optind],
				qcow2_last_error(img)[0] ? qcow2_last_error(img) :
							   strerror(-ret));
			break;
		}
		if (have && mergeable(&cur, &e)) {
			cur.length += e.length;
		} else {
			if (have)
				emit(&cur, json, &first);
			cur = e;
			have = true;
		}
		off += e.length;
	}
	if (ret == 0 && have)
		emit(&cur, json, &first);
	if (json)
		printf("%s]\n", first ? "[" : "");
	cli_close_image(ctx, img);
	return ret < 0 ? 1 : 0;
}
