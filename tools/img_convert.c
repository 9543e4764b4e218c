/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* qcow2-img convert -O raw: stream an image through the async engine. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "commands.h"

#define CONVERT_SLOTS 16
#define CONVERT_CHUNK (1u << 20)

struct slot {
	uint8_t *buf;
	uint64_t off;
	uint64_t len;
	bool busy;
	bool done;
	int ret;
};

static void slot_done(void *opaque, int ret)
{
	struct slot *s = opaque;

	s->done = true;
	s->ret = ret;
}

static bool all_zero(const uint8_t *p, uint64_t len)
{
	const uint64_t *w = (const uint64_t *)p;

	for (uint64_t i = 0; i < len / 8; i++)
		if (w[i])
			return false;
	for (uint64_t i = len / 8 * 8; i < len; i++)
		if (p[i])
			return false;
	return true;
}

static const char *usage_text =
	"Usage: qcow2-img convert [OPTIONS] -O raw SOURCE OUTPUT\n"
	"\n"
	"Read SOURCE (qcow2 with its backing chain, or raw) through the\n"
	"asynchronous engine and write its guest contents to OUTPUT as a raw\n"
	"image. Up to 16 reads of 1 MiB are in flight; ranges that read as zeros\n"
	"are left as holes, so OUTPUT is sparse. OUTPUT is created or truncated.\n"
	"\n"
	"Options:\n"
	"  -O raw                        output format (qcow2 output: not yet)\n"
	"  -p, --progress                show progress (default when stderr is a\n"
	"                                terminal)\n"
	CLI_COMMON_HELP
	"  -h, --help                    this text\n"
	"\n"
	"Exit status: 0 success, 1 error (message on stderr), 2 usage error.\n";

int cmd_convert(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "progress", no_argument, 0, 'p' },
		{ "help", no_argument, 0, 'h' },
		CLI_COMMON_LONGOPTS,
		{ 0, 0, 0, 0 },
	};
	struct cli_open o = { 0 };
	const char *out_fmt = NULL, *src, *dst;
	bool progress = isatty(2);
	struct qcow2_ctx *ctx;
	struct qcow2_image *img;
	struct qcow2_info in;
	struct slot slots[CONVERT_SLOTS] = { 0 };
	uint64_t next = 0, written = 0;
	int opt, fd, status = 0;

	while ((opt = getopt_long(argc, argv, "hpO:i:t:f:", longopts, NULL)) != -1) {
		int r = cli_common_opt(&o, opt, optarg);
		if (r < 0)
			return 2;
		if (r)
			continue;
		switch (opt) {
		case 'O':
			out_fmt = optarg;
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
	if (optind != argc - 2 || !out_fmt) {
		fputs(usage_text, stderr);
		return 2;
	}
	if (strcmp(out_fmt, "raw") != 0) {
		fprintf(stderr, "%s: convert: output format '%s' is not supported yet "
			"(only raw)\n", cli_prog, out_fmt);
		return 1;
	}
	src = argv[optind];
	dst = argv[optind + 1];
	if (cli_open_image(&o, src, &ctx, &img) < 0)
		return 1;
	qcow2_get_info(img, &in);
	fd = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0 || ftruncate(fd, (off_t)in.virtual_size) < 0) {
		fprintf(stderr, "%s: %s: %s\n", cli_prog, dst, strerror(errno));
		if (fd >= 0)
			close(fd);
		cli_close_image(ctx, img);
		return 1;
	}
	for (int i = 0; i < CONVERT_SLOTS; i++) {
		if (posix_memalign((void **)&slots[i].buf, 4096, CONVERT_CHUNK)) {
			fprintf(stderr, "%s: out of memory\n", cli_prog);
			status = 1;
			goto out;
		}
	}
	while (written < in.virtual_size && !status) {
		for (int i = 0; i < CONVERT_SLOTS && next < in.virtual_size; i++) {
			struct slot *s = &slots[i];
			int ret;
			if (s->busy)
				continue;
			s->off = next;
			s->len = in.virtual_size - next < CONVERT_CHUNK ?
					 in.virtual_size - next : CONVERT_CHUNK;
			s->busy = true;
			s->done = false;
			ret = qcow2_read(img, s->off, s->buf, s->len, slot_done, s);
			if (ret < 0) {
				fprintf(stderr, "%s: %s: read at %llu: %s\n", cli_prog, src,
					(unsigned long long)s->off, strerror(-ret));
				s->busy = false;
				status = 1;
				break;
			}
			next += s->len;
		}
		if (qcow2_ctx_process(ctx, true) < 0) {
			fprintf(stderr, "%s: IO backend failure\n", cli_prog);
			status = 1;
		}
		for (int i = 0; i < CONVERT_SLOTS; i++) {
			struct slot *s = &slots[i];
			if (!s->busy || !s->done)
				continue;
			s->busy = false;
			if (s->ret < 0) {
				const char *why = qcow2_last_error(img);
				fprintf(stderr, "%s: %s: read error at offset %llu: %s\n",
					cli_prog, src, (unsigned long long)s->off,
					why[0] ? why : strerror(-s->ret));
				status = 1;
				continue;
			}
			if (!all_zero(s->buf, s->len) &&
			    pwrite(fd, s->buf, s->len, (off_t)s->off) != (ssize_t)s->len) {
				fprintf(stderr, "%s: %s: write error: %s\n", cli_prog, dst,
					strerror(errno));
				status = 1;
			}
			written += s->len;
			cli_progress(progress, written, in.virtual_size);
		}
	}
	qcow2_ctx_run(ctx);
	if (!status && fsync(fd) < 0) {
		fprintf(stderr, "%s: %s: %s\n", cli_prog, dst, strerror(errno));
		status = 1;
	}
out:
	for (int i = 0; i < CONVERT_SLOTS; i++)
		free(slots[i].buf);
	close(fd);
	cli_close_image(ctx, img);
	return status;
}
