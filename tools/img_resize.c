/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* qcow2-img resize: grow the virtual disk. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "commands.h"

static const char *usage_text =
	"Usage: qcow2-img resize [OPTIONS] IMAGE [+]SIZE\n"
	"\n"
	"Grow IMAGE's virtual disk to SIZE bytes, or by SIZE with a leading '+'\n"
	"(k, M, G, T suffixes; a multiple of 512). The new area reads zeros, also\n"
	"where a longer backing file would show through. The L1 table is moved\n"
	"when it must grow, in an order that keeps the image consistent if the\n"
	"machine stops half way. Shrinking and images with internal snapshots\n"
	"are refused.\n"
	"\n"
	"Options:\n"
	"  -q, --quiet                   print nothing on success\n"
	CLI_COMMON_HELP
	"  -h, --help                    this text\n"
	"\n"
	"Exit status: 0 resized, 1 error (the image is unchanged), 2 usage error.\n";

int cmd_resize(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "quiet", no_argument, 0, 'q' },
		{ "help", no_argument, 0, 'h' },
		CLI_COMMON_LONGOPTS,
		{ 0, 0, 0, 0 },
	};
	struct cli_open o = { .rdwr = true };
	struct qcow2_ctx *ctx;
	struct qcow2_image *img;
	struct qcow2_info in;
	const char *arg;
	bool quiet = false, rel;
	uint64_t size;
	int opt, ret;

	optind = 0;
	while ((opt = getopt_long(argc, argv, "qhi:t:f:U", longopts, NULL)) != -1) {
		int r = cli_common_opt(&o, opt, optarg);
		if (r < 0)
			return 2;
		if (r)
			continue;
		if (opt == 'q') {
			quiet = true;
		} else if (opt == 'h') {
			fputs(usage_text, stdout);
			return 0;
		} else {
			fputs(usage_text, stderr);
			return 2;
		}
	}
	if (optind != argc - 2) {
		fputs(usage_text, stderr);
		return 2;
	}
	arg = argv[optind + 1];
	rel = arg[0] == '+';
	if (cli_parse_size(arg + rel, &size) < 0) {
		fprintf(stderr, "qcow2-img: resize: bad size '%s'\n", arg);
		return 2;
	}
	if (o.raw) {
		fprintf(stderr, "qcow2-img: resize: raw images: use truncate(1)\n");
		return 2;
	}
	if (cli_open_image(&o, argv[optind], &ctx, &img) < 0)
		return 1;
	qcow2_get_info(img, &in);
	if (rel)
		size += in.virtual_size;
	ret = qcow2_ftruncate(img, size);
	if (ret == 0)
		ret = qcow2_fsync(img);
	if (ret < 0) {
		const char *m = qcow2_last_error(img);
		fprintf(stderr, "qcow2-img: %s: %s\n", argv[optind],
			m && *m ? m : strerror(-ret));
		cli_close_image(ctx, img);
		return 1;
	}
	if (cli_close_image(ctx, img) < 0)
		return 1;
	if (!quiet)
		printf("Image resized.\n");
	return 0;
}
