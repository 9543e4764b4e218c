/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* qcow2-img info: what an image is, in words or JSON. */
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "commands.h"

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

static const char *usage_text =
	"Usage: qcow2-img info [OPTIONS] IMAGE\n"
	"\n"
	"Describe a qcow2 (or raw) image: format version, virtual and file size,\n"
	"cluster size, refcount width, feature bits by name, compression type,\n"
	"dirty/corrupt flags, snapshots, bitmaps, external data file and the whole\n"
	"backing chain. The image is opened read-only.\n"
	"\n"
	"Options:\n"
	"      --json                    one JSON object on stdout\n"
	CLI_COMMON_HELP
	"  -h, --help                    this text\n"
	"\n"
	"Exit status: 0 success, 1 the image cannot be opened, 2 usage error.\n";

int cmd_info(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "json", no_argument, 0, 'j' },
		{ "help", no_argument, 0, 'h' },
		CLI_COMMON_LONGOPTS,
		{ 0, 0, 0, 0 },
	};
	struct cli_open o = { 0 };
	bool json = false;
	struct qcow2_ctx *ctx;
	struct qcow2_image *img;
	struct qcow2_info in;
	char h1[32], h2[32];
	int opt;

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
	if (cli_open_image(&o, argv[optind], &ctx, &img) < 0)
		return 1;
	qcow2_get_info(img, &in);

	if (json) {
		json_t *root = json_object(), *chain = json_array();
		json_object_set_new(root, "filename", json_string(in.filename));
		json_object_set_new(root, "format", json_string(in.format == QCOW2_FORMAT_RAW ? "raw" : "qcow2"));
		json_object_set_new(root, "virtual_size", json_integer((json_int_t)in.virtual_size));
		json_object_set_new(root, "actual_size", json_integer((json_int_t)in.file_size));
		json_object_set_new(root, "block_size", json_integer(in.block_size));
		if (in.format == QCOW2_FORMAT_QCOW2) {
			json_object_set_new(root, "version", json_integer(in.version));
			json_object_set_new(root, "compat", json_string(in.version == 2 ? "0.10" : "1.1"));
			json_object_set_new(root, "cluster_size", json_integer(in.cluster_size));
			json_object_set_new(root, "refcount_bits", json_integer(in.refcount_bits));
			json_object_set_new(root, "incompatible_features", feature_list(img, 0, in.incompatible_features));
			json_object_set_new(root, "compatible_features", feature_list(img, 1, in.compatible_features));
			json_object_set_new(root, "autoclear_features", feature_list(img, 2, in.autoclear_features));
			json_object_set_new(root, "compression_type", json_string(in.compression_type == QCOW2_COMPRESSION_ZSTD ? "zstd" : "zlib"));
			json_object_set_new(root, "extended_l2", json_boolean(in.extended_l2));
			json_object_set_new(root, "lazy_refcounts", json_boolean(in.lazy_refcounts));
			json_object_set_new(root, "dirty", json_boolean(in.dirty));
			json_object_set_new(root, "corrupt", json_boolean(in.corrupt));
			json_object_set_new(root, "snapshots", json_integer(in.nb_snapshots));
			json_object_set_new(root, "bitmaps", json_integer(in.nb_bitmaps));
			json_object_set_new(root, "data_file", in.data_file ? json_string(in.data_file) : json_null());
			json_object_set_new(root, "data_file_raw", json_boolean(in.data_file_raw));
			json_object_set_new(root, "l1_size", json_integer(in.l1_size));
			json_object_set_new(root, "l2_slice_size", json_integer(in.l2_slice_size));
			json_object_set_new(root, "l2_cache_size", json_integer((json_int_t)in.l2_cache_size));
		}
		for (struct qcow2_image *b = qcow2_backing(img); b; b = qcow2_backing(b)) {
			struct qcow2_info bi;
			json_t *e = json_object();
			qcow2_get_info(b, &bi);
			json_object_set_new(e, "filename", json_string(bi.filename));
			json_object_set_new(e, "format", json_string(bi.format == QCOW2_FORMAT_RAW ? "raw" : "qcow2"));
			json_object_set_new(e, "virtual_size", json_integer((json_int_t)bi.virtual_size));
			json_array_append_new(chain, e);
		}
		json_object_set_new(root, "backing_chain", chain);
		json_dumpf(root, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
		printf("\n");
		json_decref(root);
		cli_close_image(ctx, img);
		return 0;
	}

	cli_human_size(in.virtual_size, h1, sizeof(h1));
	cli_human_size(in.file_size, h2, sizeof(h2));
	printf("%-22s%s\n", "image:", in.filename);
	printf("%-22s%s\n", "file format:", in.format == QCOW2_FORMAT_RAW ? "raw" : "qcow2");
	printf("%-22s%s (%" PRIu64 " bytes)\n", "virtual size:", h1, in.virtual_size);
	printf("%-22s%s (%" PRIu64 " bytes)\n", "file size:", h2, in.file_size);
	if (in.format == QCOW2_FORMAT_QCOW2) {
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
	int depth = 1;
	for (struct qcow2_image *b = qcow2_backing(img); b; b = qcow2_backing(b), depth++) {
		struct qcow2_info bi;
		qcow2_get_info(b, &bi);
		cli_human_size(bi.virtual_size, h1, sizeof(h1));
		printf("%-22s%s (%s, %s)\n", depth == 1 ? "backing chain:" : "", bi.filename,
		       bi.format == QCOW2_FORMAT_RAW ? "raw" : "qcow2", h1);
	}
	cli_close_image(ctx, img);
	return 0;
}
