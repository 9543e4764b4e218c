/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* qcow2-img check: the metadata graph against the refcounts, qemu-img's
 * counts and exit codes; optional repair. */
#include <errno.h>
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
	"Usage: qcow2-img check [--json] [-r leaks|all] [-q] IMAGE\n"
	"\n"
	"Verify IMAGE's metadata: every L1 and L2 table (the active one and each\n"
	"snapshot's), data and compressed clusters, the snapshot table, valid\n"
	"bitmaps, the refcount table and blocks. Each host cluster's references\n"
	"are counted and compared with its refcount:\n"
	"  corruption  referenced more often than its refcount says (or a table or\n"
	"              cluster outside the file, unaligned, an invalid entry, a\n"
	"              COPIED flag that contradicts the refcount): data may be\n"
	"              lost by further writes;\n"
	"  leak        a refcount higher than its references: wasted space only.\n"
	"Also printed: allocated, fragmented and compressed clusters of the\n"
	"virtual disk, and the image end offset (as qemu-img check does).\n"
	"Backing files are not read.\n"
	"\n"
	"Options:\n"
	"      --json          one JSON object (qemu-img check --output=json keys)\n"
	"  -r leaks            free leaked clusters (when nothing is corrupted)\n"
	"  -r all              also rebuild refcounts that are too low. Both rebuild\n"
	"                      the refcount structures past the end of the file and\n"
	"                      switch to them with one header write (a crash leaves\n"
	"                      the old ones in place); then the image is checked\n"
	"                      again. Other corruptions are reported, not repaired.\n"
	"  -q, --quiet         no list of problems, only the summary\n"
	"  -U, --force-share   take no image lock: read an image another process\n"
	"                      (QEMU) has open for writing; its metadata may be\n"
	"                      changing underneath\n" "                      (not with -r)\n"
	"  -h, --help          this text\n"
	"\n"
	"Exit status (as qemu-img check): 0 no problem, 2 corruptions, 3 leaks\n"
	"only, 1 the check could not complete (or usage error: 2 with a message),\n"
	"63 the image format is not supported.\n";

struct report_ctx {
	bool quiet, json, progress;
	json_t *problems;
};

static void report(void *opaque, enum qcow2_check_problem kind, uint64_t off,
		   const char *msg)
{
	struct report_ctx *r = opaque;
	const char *what = kind == QCOW2_CHECK_CORRUPTION ? "ERROR" :
			   kind == QCOW2_CHECK_LEAK ? "Leaked" : "CHECK ERROR";

	if (r->json) {
		json_t *p = json_object();
		json_object_set_new(p, "kind", json_string(
			kind == QCOW2_CHECK_CORRUPTION ? "corruption" :
			kind == QCOW2_CHECK_LEAK ? "leak" : "check-error"));
		json_object_set_new(p, "offset", json_integer((json_int_t)off));
		json_object_set_new(p, "message", json_string(msg));
		json_array_append_new(r->problems, p);
		return;
	}
	if (!r->quiet)
		printf("%s: %s\n", what, msg);
}

static void progress(void *opaque, uint64_t done, uint64_t total)
{
	cli_progress(((struct report_ctx *)opaque)->progress, done, total);
}

static double pct(uint64_t a, uint64_t b)
{
	return b ? 100.0 * (double)a / (double)b : 0.0;
}

int cmd_check(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "json", no_argument, 0, 'j' },
		{ "repair", required_argument, 0, 'r' },
		{ "quiet", no_argument, 0, 'q' },
		{ "force-share", no_argument, 0, 'U' },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	struct report_ctx rc = { 0 };
	bool show_progress = isatty(STDERR_FILENO);
	struct qcow2_check_opts o = { .report = report, .opaque = &rc };
	struct qcow2_check_result res;
	struct qcow2_error err = { "" };
	int opt, ret, status;

	optind = 0;
	while ((opt = getopt_long(argc, argv, "r:qhf:U", longopts, NULL)) != -1) {
		switch (opt) {
		case 'j':
			rc.json = true;
			break;
		case 'r':
			if (!strcmp(optarg, "leaks"))
				o.repair = QCOW2_CHECK_REPAIR_LEAKS;
			else if (!strcmp(optarg, "all"))
				o.repair = QCOW2_CHECK_REPAIR_ALL;
			else {
				fprintf(stderr, "qcow2-img: check: -r leaks or -r all, not "
					"'%s'\n", optarg);
				return 2;
			}
			break;
		case 'f':
			if (strcmp(optarg, "qcow2")) {
				fprintf(stderr, "qcow2-img: check: only qcow2 images have "
					"metadata to check\n");
				return 63;
			}
			break;
		case 'q':
			rc.quiet = true;
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
	rc.progress = show_progress && !rc.json;
	o.progress = progress;
	if (rc.json)
		rc.problems = json_array();
	ret = qcow2_check(argv[optind], &o, &res, &err);
	if (ret < 0) {
		fprintf(stderr, "qcow2-img: %s: %s\n", argv[optind],
			err.msg[0] ? err.msg : strerror(-ret));
		json_decref(rc.problems);
		return ret == -ENOTSUP ? 63 : 1;
	}
	status = res.check_errors ? 1 : res.corruptions ? 2 : res.leaks ? 3 : 0;
	if (rc.json) {
		json_t *j = json_object();
		json_object_set_new(j, "filename", json_string(argv[optind]));
		json_object_set_new(j, "format", json_string("qcow2"));
		json_object_set_new(j, "check-errors", json_integer((json_int_t)res.check_errors));
		json_object_set_new(j, "corruptions", json_integer((json_int_t)res.corruptions));
		json_object_set_new(j, "leaks", json_integer((json_int_t)res.leaks));
		json_object_set_new(j, "corruptions-fixed", json_integer((json_int_t)res.corruptions_fixed));
		json_object_set_new(j, "leaks-fixed", json_integer((json_int_t)res.leaks_fixed));
		json_object_set_new(j, "image-end-offset", json_integer((json_int_t)res.image_end_offset));
		json_object_set_new(j, "total-clusters", json_integer((json_int_t)res.total_clusters));
		json_object_set_new(j, "allocated-clusters", json_integer((json_int_t)res.allocated_clusters));
		json_object_set_new(j, "fragmented-clusters", json_integer((json_int_t)res.fragmented_clusters));
		json_object_set_new(j, "compressed-clusters", json_integer((json_int_t)res.compressed_clusters));
		json_object_set_new(j, "problems", rc.problems);
		json_dumpf(j, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
		printf("\n");
		json_decref(j);
		return status;
	}
	if (res.leaks_fixed || res.corruptions_fixed)
		printf("The following inconsistencies were found and repaired:\n\n"
		       "    %" PRIu64 " leaked clusters\n    %" PRIu64 " corruptions\n\n",
		       res.leaks_fixed, res.corruptions_fixed);
	if (!res.corruptions && !res.leaks && !res.check_errors)
		printf("No errors were found on the image.\n");
	if (res.corruptions)
		printf("\n%" PRIu64 " errors were found on the image.\nData may be "
		       "corrupted, or further writes to the image may corrupt it.\n",
		       res.corruptions);
	if (res.leaks)
		printf("\n%" PRIu64 " leaked clusters were found on the image.\nThis "
		       "means waste of disk space, but no harm to data.\n", res.leaks);
	if (res.check_errors)
		printf("\n%" PRIu64 " internal errors have occurred during the check.\n",
		       res.check_errors);
	if (res.total_clusters)
		printf("%" PRIu64 "/%" PRIu64 " = %.2f%% allocated, %.2f%% fragmented, "
		       "%.2f%% compressed clusters\n", res.allocated_clusters,
		       res.total_clusters, pct(res.allocated_clusters, res.total_clusters),
		       pct(res.fragmented_clusters, res.allocated_clusters),
		       pct(res.compressed_clusters, res.allocated_clusters));
	printf("Image end offset: %" PRIu64 "\n", res.image_end_offset);
	return status;
}
