/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* qcow2-img stats: metadata statistics, from the checker's walk. */
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "commands.h"
#include "qcow2_check.h"

static const char *usage_text =
	"Usage: qcow2-img stats [--json] IMAGE\n"
	"\n"
	"Walk IMAGE's metadata (as qcow2-img check does, read-only) and print:\n"
	"  guest clusters  data, zero, compressed, unallocated (backing file or\n"
	"                  zeros) and invalid, with their share of the virtual disk;\n"
	"                  compressed: the ratio of guest bytes to the host bytes\n"
	"                  their descriptors cover\n"
	"  fragmentation   extents (runs of data clusters adjacent both in the guest\n"
	"                  and in the file) and their average length; of the pairs\n"
	"                  of guest-adjacent data clusters, the share that are not\n"
	"                  adjacent in the file\n"
	"  L2 tables       how many the active L1 reaches, and how full they are\n"
	"  refcounts       refcount blocks; how many clusters of the file have each\n"
	"                  refcount (0, 1, 2, 3, 4-7, 8-15, 16+)\n"
	"  metadata        clusters holding metadata (header, L1/L2 tables, refcount\n"
	"                  structures, snapshot table, bitmaps), and their share\n"
	"  file            size; clusters only snapshots use; free clusters inside\n"
	"                  the file (refcount 0); leaked clusters (see check -r)\n"
	"Guest figures are of the active L1 table; backing files are not read.\n"
	"\n"
	"Options:\n"
	"      --json          one JSON object on stdout\n"
	"  -U, --force-share   take no image lock: read an image another process\n"
	"                      (QEMU) has open for writing; its metadata may be\n"
	"                      changing underneath\n"
	"  -h, --help          this text\n"
	"\n"
	"Exit status: 0 success, 1 the image could not be walked, 2 usage error.\n";

static const char *bucket_names[QCOW2_RC_BUCKETS] = {
	"0", "1", "2", "3", "4-7", "8-15", "16+",
};

static double pct(uint64_t a, uint64_t b)
{
	return b ? 100.0 * (double)a / (double)b : 0.0;
}

static double ratio(uint64_t a, uint64_t b)
{
	return b ? (double)a / (double)b : 0.0;
}

struct progress_ctx {
	bool enabled;
};

static void progress(void *opaque, uint64_t done, uint64_t total)
{
	cli_progress(((struct progress_ctx *)opaque)->enabled, done, total);
}

static void print_json(const char *path, const struct qcow2_image_stats *s)
{
	json_t *j = json_object(), *g = json_object(), *f = json_object(),
	       *l2 = json_object(), *rc = json_object(), *b = json_object(),
	       *file = json_object();
	uint64_t cs = s->cluster_size;

#define SET(o, k, v) json_object_set_new(o, k, json_integer((json_int_t)(v)))
	json_object_set_new(j, "filename", json_string(path));
	SET(j, "cluster-size", cs);
	SET(g, "total", s->guest_clusters);
	SET(g, "data", s->data_clusters);
	SET(g, "zero", s->zero_clusters);
	SET(g, "compressed", s->compressed_clusters);
	SET(g, "unallocated", s->unallocated_clusters);
	SET(g, "invalid", s->invalid_clusters);
	json_object_set_new(j, "guest-clusters", g);
	SET(j, "compressed-host-bytes", s->compressed_bytes);
	json_object_set_new(j, "compression-ratio", json_real(
		ratio(s->compressed_clusters * cs, s->compressed_bytes)));
	SET(f, "extents", s->extents);
	json_object_set_new(f, "average-extent-bytes", json_real(
		ratio(s->data_clusters * cs, s->extents)));
	SET(f, "guest-adjacent-pairs", s->adjacent_pairs);
	SET(f, "split-pairs", s->split_pairs);
	json_object_set_new(f, "split-share", json_real(
		ratio(s->split_pairs, s->adjacent_pairs)));
	json_object_set_new(j, "fragmentation", f);
	SET(l2, "tables", s->l2_tables);
	SET(l2, "entries", s->l2_entries);
	SET(l2, "entries-used", s->l2_entries_used);
	json_object_set_new(l2, "fill", json_real(
		ratio(s->l2_entries_used, s->l2_entries)));
	json_object_set_new(j, "l2", l2);
	SET(rc, "blocks", s->refcount_blocks);
	for (int i = 0; i < QCOW2_RC_BUCKETS; i++)
		SET(b, bucket_names[i], s->rc_buckets[i]);
	json_object_set_new(rc, "clusters-by-refcount", b);
	json_object_set_new(j, "refcounts", rc);
	SET(j, "metadata-clusters", s->metadata_clusters);
	SET(j, "metadata-bytes", s->metadata_clusters * cs);
	SET(file, "size", s->file_size);
	SET(file, "clusters", s->file_clusters);
	SET(file, "snapshot-only-clusters", s->snapshot_only_clusters);
	SET(file, "free-clusters", s->free_clusters);
	SET(file, "leaked-clusters", s->leaked_clusters);
	json_object_set_new(j, "file", file);
#undef SET
	json_dumpf(j, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	printf("\n");
	json_decref(j);
}

static void print_text(const char *path, const struct qcow2_image_stats *s)
{
	uint64_t cs = s->cluster_size, gc = s->guest_clusters;
	char a[32], b[32];

	cli_human_size(gc * cs, a, sizeof(a));
	cli_human_size(cs, b, sizeof(b));
	printf("image: %s\nvirtual disk: %s, %" PRIu64 " clusters of %s\n", path,
	       a, gc, b);
	printf("  data         %12" PRIu64 "  %6.2f%%\n", s->data_clusters,
	       pct(s->data_clusters, gc));
	printf("  zero         %12" PRIu64 "  %6.2f%%\n", s->zero_clusters,
	       pct(s->zero_clusters, gc));
	printf("  compressed   %12" PRIu64 "  %6.2f%%", s->compressed_clusters,
	       pct(s->compressed_clusters, gc));
	if (s->compressed_clusters) {
		cli_human_size(s->compressed_bytes, a, sizeof(a));
		printf("  ratio %.2f (in %s)",
		       ratio(s->compressed_clusters * cs, s->compressed_bytes), a);
	}
	printf("\n  unallocated  %12" PRIu64 "  %6.2f%%\n", s->unallocated_clusters,
	       pct(s->unallocated_clusters, gc));
	if (s->invalid_clusters)
		printf("  invalid      %12" PRIu64 "  (run qcow2-img check)\n",
		       s->invalid_clusters);
	cli_human_size((uint64_t)ratio(s->data_clusters * cs, s->extents), a,
		       sizeof(a));
	printf("fragmentation: %" PRIu64 " extents of %s on average; %" PRIu64
	       " of %" PRIu64 " guest-adjacent pairs split in the file (%.2f%%)\n",
	       s->extents, a, s->split_pairs, s->adjacent_pairs,
	       pct(s->split_pairs, s->adjacent_pairs));
	printf("L2 tables: %" PRIu64 ", %" PRIu64 " of %" PRIu64 " entries used "
	       "(%.2f%%)\n", s->l2_tables, s->l2_entries_used, s->l2_entries,
	       pct(s->l2_entries_used, s->l2_entries));
	printf("refcount blocks: %" PRIu64 "; clusters by refcount:", s->refcount_blocks);
	for (int i = 0; i < QCOW2_RC_BUCKETS; i++)
		if (s->rc_buckets[i])
			printf(" %s: %" PRIu64, bucket_names[i], s->rc_buckets[i]);
	cli_human_size(s->metadata_clusters * cs, a, sizeof(a));
	printf("\nmetadata: %" PRIu64 " clusters, %s (%.2f%% of the file)\n",
	       s->metadata_clusters, a, pct(s->metadata_clusters, s->file_clusters));
	cli_human_size(s->file_size, a, sizeof(a));
	printf("file: %s, %" PRIu64 " clusters; %" PRIu64 " used only by snapshots, %"
	       PRIu64 " free, %" PRIu64 " leaked\n", a, s->file_clusters,
	       s->snapshot_only_clusters, s->free_clusters, s->leaked_clusters);
}

int cmd_stats(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "json", no_argument, 0, 'j' },
		{ "force-share", no_argument, 0, 'U' },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	struct progress_ctx pc = { .enabled = isatty(STDERR_FILENO) };
	struct qcow2_image_stats st;
	struct qcow2_check_opts o = { .stats = &st, .progress = progress,
				      .opaque = &pc };
	struct qcow2_check_result res;
	struct qcow2_error err = { "" };
	bool json = false;
	int opt, ret;

	optind = 0;
	while ((opt = getopt_long(argc, argv, "hU", longopts, NULL)) != -1) {
		switch (opt) {
		case 'j':
			json = true;
			break;
		case 'U':
			o.force_share = true;
			break;
		case 'h':
			fputs(usage_text, stdout);
			return 0;
		default:
			fputs(usage_text, stderr);
			return 2;
		}
	}
	if (optind != argc - 1) {
		fputs(usage_text, stderr);
		return 2;
	}
	ret = qcow2_check(argv[optind], &o, &res, &err);
	if (ret < 0) {
		fprintf(stderr, "qcow2-img: %s: %s\n", argv[optind],
			err.msg[0] ? err.msg : strerror(-ret));
		return 1;
	}
	if (json)
		print_json(argv[optind], &st);
	else
		print_text(argv[optind], &st);
	return 0;
}
