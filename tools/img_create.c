/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* qcow2-img create: a new qcow2 image, with qemu-img's options. */
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "commands.h"
#include "create_opts.h"

static const char *usage_text =
	"Usage: qcow2-img create [-f qcow2] [-b BACKING [-F FMT]] [-u] [-o OPTIONS]\n"
	"                        [-q] [-p] IMAGE [SIZE]\n"
	"\n"
	"Create a qcow2 image. SIZE takes k, M, G, T suffixes and is rounded up to\n"
	"512 bytes; with a backing file it defaults to the backing file's size.\n"
	"An existing file at IMAGE is replaced. Option combinations qemu-img\n"
	"refuses are refused with the same explanation.\n"
	"\n"
	"Options:\n"
	"  -f qcow2                  the format (only qcow2 is created)\n"
	"  -b, --backing FILE        backing file (same as -o backing_file=FILE)\n"
	"  -F, --backing-format FMT  qcow2 or raw (same as -o backing_fmt=FMT)\n"
	"  -u                        do not open the backing file (SIZE required)\n"
	"  -o OPTIONS                creation options, below (may be repeated)\n"
	"  -q, --quiet               no \"Formatting\" line\n"
	"  -p, --progress            progress on stderr (default: on a terminal)\n"
	"  -h, --help                this text\n"
	"\n"
	CREATE_OPTS_HELP
	"\n"
	"Exit status: 0 created, 1 error (nothing is left behind), 2 usage error.\n";

/* The backing file's virtual size, opened as the image will open it. */
static int backing_size(const char *image, const struct qcow2_create_opts *o,
			uint64_t *size)
{
	struct cli_open co = { .backend = QCOW2_BACKEND_SYNC, .buffered = true };
	struct qcow2_ctx *ctx;
	struct qcow2_image *img;
	struct qcow2_info in;
	char *copy, *path;
	int ret;

	co.raw = o->backing_format && !strcmp(o->backing_format, "raw");
	if (o->backing_file[0] == '/') {
		path = strdup(o->backing_file);
	} else {
		copy = strdup(image);
		if (!copy)
			return -ENOMEM;
		if (asprintf(&path, "%s/%s", dirname(copy), o->backing_file) < 0)
			path = NULL;
		free(copy);
	}
	if (!path)
		return -ENOMEM;
	ret = cli_open_as_is(&co, path, &ctx, &img);
	free(path);
	if (ret < 0)
		return ret;
	qcow2_get_info(img, &in);
	*size = in.virtual_size;
	cli_close_image(ctx, img);
	return 0;
}

static int create_main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "backing", required_argument, 0, 'b' },
		{ "backing-format", required_argument, 0, 'F' },
		{ "quiet", no_argument, 0, 'q' },
		{ "progress", no_argument, 0, 'p' },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	struct qcow2_create_opts o = { 0 };
	struct qcow2_error err = { "" };
	bool size_set = false, quiet = false, unsafe = false;
	bool progress = isatty(STDERR_FILENO);
	const char *path;
	uint64_t bsize = 0;
	int opt, ret;

	optind = 0;
	while ((opt = getopt_long(argc, argv, "f:b:F:uo:qph", longopts, NULL)) != -1) {
		switch (opt) {
		case 'f':
			if (strcmp(optarg, "qcow2")) {
				fprintf(stderr, "qcow2-img: create: only qcow2 images are "
					"created, not '%s'\n", optarg);
				return 2;
			}
			break;
		case 'b':
			o.backing_file = optarg;
			break;
		case 'F':
			o.backing_format = optarg;
			break;
		case 'u':
			unsafe = true;
			break;
		case 'o':
			if (create_opts_parse(optarg, &o, &size_set) < 0)
				return 2;
			break;
		case 'q':
			quiet = true;
			break;
		case 'p':
			progress = true;
			break;
		case 'h':
			fputs(usage_text, stdout);
			return 0;
		default:
			fputs(usage_text, stderr);
			return 2;
		}
	}
	if (optind >= argc || argc - optind > 2) {
		fputs(usage_text, stderr);
		return 2;
	}
	path = argv[optind];
	if (argc - optind == 2) {
		if (cli_parse_size(argv[optind + 1], &o.size) < 0) {
			fprintf(stderr, "qcow2-img: create: bad size '%s'\n",
				argv[optind + 1]);
			return 2;
		}
		size_set = true;
	}
	if (o.backing_file && !unsafe) {
		ret = backing_size(path, &o, &bsize);
		if (ret < 0)
			return 1; /* message printed */
		if (!size_set) {
			o.size = bsize;
			size_set = true;
		}
	}
	if (!size_set) {
		fprintf(stderr, "qcow2-img: create: SIZE is required%s\n",
			o.backing_file ? " with -u" : "");
		return 2;
	}
	o.progress = create_opts_progress;
	o.progress_opaque = &progress;
	if (!quiet)
		create_opts_print(path, &o);
	ret = qcow2_create(path, &o, &err);
	if (ret < 0) {
		fprintf(stderr, "qcow2-img: %s: %s\n", path,
			err.msg[0] ? err.msg : strerror(-ret));
		return 1;
	}
	return 0;
}

int cmd_create(int argc, char **argv)
{
	int status = create_main(argc, argv);

	create_opts_release();
	return status;
}
