/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* qcow2-img info: what an image is, in words or JSON. */
#include <endian.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "commands.h"
#include "qcow2_meta.h"

static const char *const incompat_names[] = {
	"dirty", "corrupt", "external data file", "compression type",
	"extended L2 entries",
};
static const char *const compat_names[] = { "lazy refcounts" };
static const char *const autoclear_names[] = { "bitmaps", "raw external data" };

static const char *feature_name(struct qcow2_image *img, int type, int bit)
{
	const char *n = qcow2_feature_name(img, type, bit);

	if (n && *n)
		return n;
	if (type == 0 && bit < 5)
		return incompat_names[bit];
	if (type == 1 && bit < 1)
		return compat_names[bit];
	if (type == 2 && bit < 2)
		return autoclear_names[bit];
	return NULL;
}

static json_t *feature_list(struct qcow2_image *img, int type, uint64_t bits)
{
	json_t *a = json_array();

	for (int b = 0; b < 64; b++) {
		if (!(bits & (1ull << b)))
			continue;
		const char *n = feature_name(img, type, b);
		char buf[32];
		if (!n) {
			snprintf(buf, sizeof(buf), "bit %d", b);
			n = buf;
		}
		json_array_append_new(a, json_string(n));
	}
	return a;
}

static void print_features(struct qcow2_image *img, const char *label,
			   int type, uint64_t bits)
{
	printf("%-22s", label);
	if (!bits)
		printf("none");
	for (int b = 0, first = 1; b < 64; b++) {
		if (!(bits & (1ull << b)))
			continue;
		const char *n = feature_name(img, type, b);
		printf("%s", first ? "" : ", ");
		if (n)
			printf("%s", n);
		else
			printf("bit %d", b);
		first = 0;
	}
	printf("\n");
}

/* One link of the backing chain as info shows it: opened without its own
 * backing file, or the reason it could not be. */
struct link {
	struct qcow2_ctx *ctx;
	struct qcow2_image *img;
	struct qcow2_info in;
	char path[4096];
	char error[600];        /* "" when opened */
};

#define MAX_CHAIN 64

/* Open path (format raw or qcow2, never probed) as a link. */
static void open_link(const struct cli_open *base, struct link *l,
		      const char *path, bool raw)
{
	struct cli_open o = *base;
	struct qcow2_error err;

	o.raw = raw;
	o.format_set = true;
	o.no_backing = true;
	snprintf(l->path, sizeof(l->path), "%s", path);
	if (cli_open_quiet(&o, path, &l->ctx, &l->img, &err) < 0) {
		size_t n = strlen(path);
		/* the path is shown beside the reason already */
		bool named = !strncmp(err.msg, path, n) && !strncmp(err.msg + n, ": ", 2);
		snprintf(l->error, sizeof(l->error), "%s", err.msg + (named ? n + 2 : 0));
		return;
	}
	qcow2_get_info(l->img, &l->in);
}

/* The chain below links[0]: each link's recorded backing file, opened as
 * the engine would (relative to the image, format as recorded). Stops at
 * the first link that cannot be opened (its error says why), at a loop, or
 * at MAX_CHAIN. Returns the number of links, links[0] included. */
static int walk_chain(const struct cli_open *o, struct link *links)
{
	struct stat st;
	dev_t dev[MAX_CHAIN];
	ino_t ino[MAX_CHAIN];
	int n = 1;

	if (stat(links[0].path, &st) == 0) {
		dev[0] = st.st_dev;
		ino[0] = st.st_ino;
	}
	while (n < MAX_CHAIN && !links[n - 1].error[0] &&
	       links[n - 1].in.backing_file) {
		const struct qcow2_info *up = &links[n - 1].in;
		struct link *l = &links[n];

		memset(l, 0, sizeof(*l));
		snprintf(l->path, sizeof(l->path), "%s", up->backing_path);
		if (!up->backing_format) {
			snprintf(l->error, sizeof(l->error), "its format is not "
				 "recorded (formats are never probed): qemu-img rebase -u "
				 "-b '%s' -F qcow2|raw", up->backing_file);
		} else if (strcmp(up->backing_format, "qcow2") &&
			   strcmp(up->backing_format, "raw")) {
			snprintf(l->error, sizeof(l->error), "format '%s' is not "
				 "supported (qcow2 or raw)", up->backing_format);
		} else {
			open_link(o, l, up->backing_path,
				  !strcmp(up->backing_format, "raw"));
		}
		n++;
		if (!l->error[0] && stat(l->path, &st) == 0) {
			for (int i = 0; i < n - 1; i++)
				if (dev[i] == st.st_dev && ino[i] == st.st_ino)
					snprintf(l->error, sizeof(l->error),
						 "a loop: this file is already in the chain");
			dev[n - 1] = st.st_dev;
			ino[n - 1] = st.st_ino;
		}
	}
	if (n == MAX_CHAIN && links[n - 1].in.backing_file && !links[n - 1].error[0])
		snprintf(links[n - 1].error, sizeof(links[n - 1].error),
			 "the chain is longer than %d images", MAX_CHAIN);
	return n;
}

/* Bytes the file occupies on disk (qemu-img's actual-size). */
static uint64_t allocated_bytes(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 ? (uint64_t)st.st_blocks * 512 : 0;
}

/* qemu-img info's snapshot list (and its format-specific bitmaps). */
static void add_snapshots_and_bitmaps(json_t *root, json_t *data,
				      const struct cli_open *o, const char *path)
{
	struct qcow2_meta *m;
	struct qcow2_error err;
	struct qcow2_snapshot_entry *sn;
	struct qcow2_bitmap_entry *bm;
	uint32_t n;

	if (qcow2_meta_open(path, o->force_share ? QCOW2_OPEN_FORCE_SHARE : 0, &m,
			    &err) < 0)
		return;
	if (qcow2_meta_header(m)->nb_snapshots &&
	    qcow2_meta_snapshots(m, &sn, &n) == 0) {
		json_t *a = json_array();
		for (uint32_t i = 0; i < n; i++) {
			json_t *e = json_object();
			uint64_t icount = UINT64_MAX;

			if (sn[i].extra_data_size >= 24 &&
			    qcow2_meta_pread(m, &icount, 8, sn[i].entry_offset + 40 + 16) == 0)
				icount = be64toh(icount);
			if (icount != UINT64_MAX)
				json_object_set_new(e, "icount", json_integer((json_int_t)icount));
			json_object_set_new(e, "vm-clock-nsec",
					    json_integer((json_int_t)(sn[i].vm_clock_nsec % 1000000000)));
			json_object_set_new(e, "name", json_string(sn[i].name ? sn[i].name : ""));
			json_object_set_new(e, "date-sec", json_integer(sn[i].date_sec));
			json_object_set_new(e, "date-nsec", json_integer(sn[i].date_nsec));
			json_object_set_new(e, "vm-clock-sec",
					    json_integer((json_int_t)(sn[i].vm_clock_nsec / 1000000000)));
			json_object_set_new(e, "id", json_string(sn[i].id ? sn[i].id : ""));
			json_object_set_new(e, "vm-state-size",
					    json_integer((json_int_t)sn[i].vm_state_size));
			json_array_append_new(a, e);
		}
		json_object_set_new(root, "snapshots", a);
		qcow2_meta_free_snapshots(sn, n);
	}
	if (qcow2_meta_header(m)->nb_bitmaps &&
	    (qcow2_meta_header(m)->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS) &&
	    qcow2_meta_bitmaps(m, &bm, &n) == 0) {
		json_t *a = json_array();
		for (uint32_t i = 0; i < n; i++) {
			json_t *e = json_object(), *f = json_array();
			if (bm[i].flags & QCOW2_BITMAP_IN_USE)
				json_array_append_new(f, json_string("in-use"));
			if (bm[i].flags & QCOW2_BITMAP_AUTO)
				json_array_append_new(f, json_string("auto"));
			json_object_set_new(e, "flags", f);
			json_object_set_new(e, "name", json_string(bm[i].name ? bm[i].name : ""));
			json_object_set_new(e, "granularity",
					    json_integer((json_int_t)1 << bm[i].granularity_bits));
			json_array_append_new(a, e);
		}
		json_object_set_new(data, "bitmaps", a);
		qcow2_meta_free_bitmaps(bm, n);
	}
	qcow2_meta_close(m);
}

/* qemu-img info --output=json's object for one image (its keys, its
 * nesting), with ours beside them. */
static json_t *info_json(const struct cli_open *o, struct link *l)
{
	const struct qcow2_info *in = &l->in;
	json_t *root = json_object();
	bool q = in->format == QCOW2_FORMAT_QCOW2;

	json_object_set_new(root, "virtual-size", json_integer((json_int_t)in->virtual_size));
	json_object_set_new(root, "filename", json_string(l->path));
	if (q)
		json_object_set_new(root, "cluster-size", json_integer(in->cluster_size));
	json_object_set_new(root, "format", json_string(q ? "qcow2" : "raw"));
	json_object_set_new(root, "actual-size",
			    json_integer((json_int_t)allocated_bytes(l->path)));
	json_object_set_new(root, "dirty-flag", json_boolean(q && in->dirty));
	if (q) {
		json_t *fs = json_object(), *data = json_object();
		json_object_set_new(data, "compat", json_string(in->version == 2 ? "0.10" : "1.1"));
		json_object_set_new(data, "compression-type",
				    json_string(in->compression_type == QCOW2_COMPRESSION_ZSTD ?
						"zstd" : "zlib"));
		if (in->version >= 3)
			json_object_set_new(data, "lazy-refcounts", json_boolean(in->lazy_refcounts));
		json_object_set_new(data, "refcount-bits", json_integer(in->refcount_bits));
		if (in->data_file) {
			json_object_set_new(data, "data-file", json_string(in->data_file));
			json_object_set_new(data, "data-file-raw", json_boolean(in->data_file_raw));
		}
		if (in->version >= 3) {
			json_object_set_new(data, "corrupt", json_boolean(in->corrupt));
			json_object_set_new(data, "extended-l2", json_boolean(in->extended_l2));
		}
		add_snapshots_and_bitmaps(root, data, o, l->path);
		json_object_set_new(fs, "type", json_string("qcow2"));
		json_object_set_new(fs, "data", data);
		json_object_set_new(root, "format-specific", fs);
		if (in->backing_file) {
			json_object_set_new(root, "full-backing-filename",
					    json_string(in->backing_path));
			json_object_set_new(root, "backing-filename",
					    json_string(in->backing_file));
			if (in->backing_format)
				json_object_set_new(root, "backing-filename-format",
						    json_string(in->backing_format));
		}
		/* ours */
		json_object_set_new(root, "version", json_integer(in->version));
		json_object_set_new(root, "incompatible-features",
				    feature_list(l->img, 0, in->incompatible_features));
		json_object_set_new(root, "compatible-features",
				    feature_list(l->img, 1, in->compatible_features));
		json_object_set_new(root, "autoclear-features",
				    feature_list(l->img, 2, in->autoclear_features));
		json_object_set_new(root, "nb-snapshots", json_integer(in->nb_snapshots));
		json_object_set_new(root, "nb-bitmaps", json_integer(in->nb_bitmaps));
		json_object_set_new(root, "l1-size", json_integer(in->l1_size));
		json_object_set_new(root, "l2-slice-size", json_integer(in->l2_slice_size));
		json_object_set_new(root, "l2-cache-size", json_integer((json_int_t)in->l2_cache_size));
	}
	json_object_set_new(root, "file-size", json_integer((json_int_t)in->file_size));
	json_object_set_new(root, "block-size", json_integer(in->block_size));
	return root;
}

static const char *usage_text =
	"Usage: qcow2-img info [OPTIONS] IMAGE\n"
	"\n"
	"Describe a qcow2 (or raw) image: format version, virtual and file size,\n"
	"cluster size, refcount width, feature bits by name, compression type,\n"
	"dirty/corrupt flags, snapshots, bitmaps, external data file and the whole\n"
	"backing chain. The image is opened read-only. A backing file that is\n"
	"missing or cannot be opened does not stop info: the chain is shown up to\n"
	"it and marked broken there, with the reason (commands that read guest\n"
	"data fail on such an image).\n"
	"\n"
	"With --json, one object in the shape of qemu-img info --output=json (the\n"
	"same keys, the same nesting, so scripts written for it work unchanged),\n"
	"with more keys beside them: version, incompatible-features,\n"
	"compatible-features, autoclear-features, nb-snapshots, nb-bitmaps,\n"
	"l1-size, l2-slice-size, l2-cache-size, file-size, block-size, and\n"
	"backing-chain: the images below, each {filename, format, virtual-size}\n"
	"or {filename, error} where the chain breaks.\n"
	"\n"
	"Options:\n"
	"      --json                    one JSON object on stdout\n"
	CLI_COMMON_HELP
	"  -h, --help                    this text\n"
	"\n"
	"Exit status: 0 success (also when the backing chain is broken), 1 the\n"
	"image cannot be opened, 2 usage error.\n";

int cmd_info(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "json", no_argument, 0, 'j' },
		{ "help", no_argument, 0, 'h' },
		CLI_COMMON_LONGOPTS,
		{ 0, 0, 0, 0 },
	};
	static struct link links[MAX_CHAIN];
	struct cli_open o = { 0 };
	bool json = false;
	struct qcow2_info in;
	char h1[32], h2[32];
	int opt, n;

	while ((opt = getopt_long(argc, argv, "hi:t:f:U", longopts, NULL)) != -1) {
		int r = cli_common_opt(&o, opt, optarg);
		if (r < 0)
			return 2;
		if (r)
			continue;
		if (opt == 'j')
			json = true;
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
	/* The image alone: a broken chain below it must not hide it. */
	o.no_backing = true;
	memset(&links[0], 0, sizeof(links[0]));
	snprintf(links[0].path, sizeof(links[0].path), "%s", argv[optind]);
	if (cli_open_image(&o, argv[optind], &links[0].ctx, &links[0].img) < 0)
		return 1;
	qcow2_get_info(links[0].img, &links[0].in);
	in = links[0].in;
	n = walk_chain(&o, links);

	if (json) {
		json_t *root = info_json(&o, &links[0]), *chain = json_array();
		for (int i = 1; i < n; i++) {
			json_t *e = json_object();
			json_object_set_new(e, "filename", json_string(links[i].path));
			if (links[i].error[0]) {
				json_object_set_new(e, "error", json_string(links[i].error));
			} else {
				json_object_set_new(e, "format", json_string(
					links[i].in.format == QCOW2_FORMAT_RAW ? "raw" : "qcow2"));
				json_object_set_new(e, "virtual-size",
						    json_integer((json_int_t)links[i].in.virtual_size));
			}
			json_array_append_new(chain, e);
		}
		json_object_set_new(root, "backing-chain", chain);
		json_dumpf(root, stdout, JSON_INDENT(4) | JSON_PRESERVE_ORDER);
		printf("\n");
		json_decref(root);
	} else {
		cli_human_size(in.virtual_size, h1, sizeof(h1));
		cli_human_size(in.file_size, h2, sizeof(h2));
		printf("%-22s%s\n", "image:", in.filename);
		printf("%-22s%s\n", "file format:", in.format == QCOW2_FORMAT_RAW ? "raw" : "qcow2");
		printf("%-22s%s (%" PRIu64 " bytes)\n", "virtual size:", h1, in.virtual_size);
		printf("%-22s%s (%" PRIu64 " bytes)\n", "file size:", h2, in.file_size);
		if (in.format == QCOW2_FORMAT_QCOW2) {
			struct qcow2_image *img = links[0].img;
			printf("%-22s%u (compat %s)\n", "version:", in.version, in.version == 2 ? "0.10" : "1.1");
			printf("%-22s%u\n", "cluster size:", in.cluster_size);
			printf("%-22s%u\n", "refcount bits:", in.refcount_bits);
			print_features(img, "incompatible:", 0, in.incompatible_features);
			print_features(img, "compatible:", 1, in.compatible_features);
			print_features(img, "autoclear:", 2, in.autoclear_features);
			printf("%-22s%s\n", "compression type:", in.compression_type == QCOW2_COMPRESSION_ZSTD ? "zstd" : "zlib");
			printf("%-22s%s\n", "extended L2:", in.extended_l2 ? "yes" : "no");
			printf("%-22s%s\n", "lazy refcounts:", in.lazy_refcounts ? "yes" : "no");
			printf("%-22s%s\n", "dirty:", in.dirty ? "yes" : "no");
			printf("%-22s%s\n", "corrupt:", in.corrupt ? "yes" : "no");
			printf("%-22s%u\n", "snapshots:", in.nb_snapshots);
			printf("%-22s%u\n", "bitmaps:", in.nb_bitmaps);
			if (in.data_file)
				printf("%-22s%s%s\n", "data file:", in.data_file, in.data_file_raw ? " (raw)" : "");
			printf("%-22s%u bytes, cache %" PRIu64 " bytes\n", "L2 slices:", in.l2_slice_size, in.l2_cache_size);
		}
		if (in.backing_file)
			printf("%-22s%s (format %s)\n", "backing file:", in.backing_file,
			       in.backing_format ? in.backing_format : "not recorded");
		for (int i = 1; i < n; i++) {
			const char *label = i == 1 ? "backing chain:" : "";
			if (links[i].error[0]) {
				printf("%-22s%s: BROKEN: %s\n", label, links[i].path,
				       links[i].error);
				continue;
			}
			cli_human_size(links[i].in.virtual_size, h1, sizeof(h1));
			printf("%-22s%s (%s, %s)\n", label, links[i].path,
			       links[i].in.format == QCOW2_FORMAT_RAW ? "raw" : "qcow2", h1);
		}
	}
	if (n > 1 && links[n - 1].error[0])
		fprintf(stderr, "qcow2-img: warning: the backing chain of %s is broken "
			"at %s: %s\n", argv[optind], links[n - 1].path, links[n - 1].error);
	for (int i = 0; i < n; i++)
		if (links[i].img)
			cli_close_image(links[i].ctx, links[i].img);
	return 0;
}
