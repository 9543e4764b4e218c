/* SPDX-License-Identifier: MIT OR Apache-2.0 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

const char *cli_prog = "qcow2-img";

int cli_common_opt(struct cli_open *o, int opt, const char *arg)
{
	uint64_t v;

	switch (opt) {
	case 'i':
		if (!strcmp(arg, "io_uring"))
			o->backend = QCOW2_BACKEND_IO_URING;
		else if (!strcmp(arg, "sync"))
			o->backend = QCOW2_BACKEND_SYNC;
		else {
			fprintf(stderr, "%s: unknown backend '%s' (io_uring or sync)\n",
				cli_prog, arg);
			return -1;
		}
		return 1;
	case 't':
		if (!strcmp(arg, "none"))
			o->buffered = false;
		else if (!strcmp(arg, "writeback"))
			o->buffered = true;
		else {
			fprintf(stderr, "%s: unknown cache mode '%s' (none or writeback)\n",
				cli_prog, arg);
			return -1;
		}
		return 1;
	case 'f':
		o->format_set = true;
		if (!strcmp(arg, "qcow2"))
			o->raw = false;
		else if (!strcmp(arg, "raw"))
			o->raw = true;
		else {
			fprintf(stderr, "%s: unsupported format '%s' (qcow2 or raw)\n",
				cli_prog, arg);
			return -1;
		}
		return 1;
	case 'U':
		o->force_share = true;
		return 1;
	case 0x100:
	case 0x101:
		if (cli_parse_size(arg, &v) < 0 || v == 0 || v > (1ull << 32)) {
			fprintf(stderr, "%s: invalid size '%s'\n", cli_prog, arg);
			return -1;
		}
		if (opt == 0x100)
			o->l2_cache = v;
		else
			o->l2_slice = (uint32_t)v;
		return 1;
	default:
		return 0;
	}
}

/* Does the file at path start with the qcow2 magic? false also when it
 * cannot be read: the open then reports why. */
static bool has_qcow2_magic(const char *path)
{
	uint8_t magic[4];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	bool yes;

	if (fd < 0)
		return true; /* let the open say why */
	yes = pread(fd, magic, sizeof(magic), 0) == (ssize_t)sizeof(magic) &&
	      !memcmp(magic, "QFI\xfb", 4);
	close(fd);
	return yes;
}

int cli_open_image(const struct cli_open *o, const char *path,
		   struct qcow2_ctx **ctx, struct qcow2_image **img)
{
	struct cli_open probed = *o;

	if (!o->format_set && !has_qcow2_magic(path)) {
		if (o->rdwr) {
			fprintf(stderr, "%s: %s: not a qcow2 image (probing guessed raw), "
				"and raw images are opened for reading only; to write it, "
				"convert it: qcow2-img convert -O qcow2 %s NEW.qcow2\n",
				cli_prog, path, path);
			return -EINVAL;
		}
		fprintf(stderr, "%s: WARNING: image format was not specified for '%s' "
			"and probing guessed raw; specify -f raw to silence this\n",
			cli_prog, path);
		probed.raw = true;
		o = &probed;
	}
	return cli_open_as_is(o, path, ctx, img);
}

int cli_open_quiet(const struct cli_open *o, const char *path,
		   struct qcow2_ctx **ctx, struct qcow2_image **img,
		   struct qcow2_error *err)
{
	struct qcow2_ctx_opts co = { .backend = o->backend,
				     .queue_depth = o->depth ? o->depth : 256 };
	struct qcow2_open_opts oo = { 0 };
	int ret;

	err->msg[0] = '\0';
	if (o->force_share && o->rdwr) {
		snprintf(err->msg, sizeof(err->msg), "-U (force share) is for "
			 "reading only; an image is written only by its one locked "
			 "owner");
		return -EINVAL;
	}
	ret = qcow2_ctx_new(&co, ctx);
	if (ret < 0) {
		snprintf(err->msg, sizeof(err->msg), "cannot set up the %s backend: %s",
			 o->backend == QCOW2_BACKEND_SYNC ? "sync" : "io_uring",
			 strerror(-ret));
		return ret;
	}
	oo.flags = (o->buffered ? QCOW2_OPEN_BUFFERED : 0) |
		   (o->raw ? QCOW2_OPEN_RAW : 0) | (o->rdwr ? QCOW2_OPEN_RDWR : 0) |
		   (o->force_share ? QCOW2_OPEN_FORCE_SHARE : 0) |
		   (o->no_backing ? QCOW2_OPEN_NO_BACKING : 0);
	oo.l2_cache_size = o->l2_cache;
	oo.l2_slice_size = o->l2_slice;
	ret = qcow2_open(*ctx, path, &oo, img, err);
	if (ret < 0) {
		size_t n = strlen(path);
		char inner[sizeof(err->msg)];

		/* The file's name once: the engine's message may start with it. */
		memcpy(inner, err->msg, sizeof(inner));
		if (!inner[0])
			snprintf(err->msg, sizeof(err->msg), "%s: %s", path,
				 strerror(-ret));
		else if (strncmp(inner, path, n) || strncmp(inner + n, ": ", 2))
			snprintf(err->msg, sizeof(err->msg), "%s: %.*s", path,
				 (int)(sizeof(inner) - 2 - (n < 256 ? n : 256)), inner);
		qcow2_ctx_free(*ctx);
		*ctx = NULL;
		return ret;
	}
	return 0;
}

int cli_open_as_is(const struct cli_open *o, const char *path,
		   struct qcow2_ctx **ctx, struct qcow2_image **img)
{
	struct qcow2_error err;
	int ret = cli_open_quiet(o, path, ctx, img, &err);

	if (ret < 0)
		fprintf(stderr, "%s: %s\n", cli_prog, err.msg);
	return ret;
}

int cli_close_image(struct qcow2_ctx *ctx, struct qcow2_image *img)
{
	struct qcow2_error err;
	struct qcow2_info in;
	char name[4096];
	int ret;

	qcow2_get_info(img, &in);
	snprintf(name, sizeof(name), "%s", in.filename);
	ret = qcow2_close(img, &err);
	if (ret < 0)
		fprintf(stderr, "%s: %s: the final flush failed (%s): what was "
			"written since the last successful flush may be lost; check "
			"the image with qcow2-img check\n", cli_prog, name, err.msg);
	qcow2_ctx_free(ctx);
	return ret;
}

void cli_progress(bool enabled, uint64_t done, uint64_t total)
{
	if (!enabled)
		return;
	fprintf(stderr, "    (%.2f/100%%)\r", total ? 100.0 * (double)done / (double)total : 100.0);
	if (done >= total)
		fputc('\n', stderr);
	fflush(stderr);
}
