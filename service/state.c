/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * --state-file FILE (main thread): the record of open images, so that a
 * service restarted after a crash, a SIGKILL or a clean stop opens again
 * what was open, with the same names and options, and clients that were
 * attached can attach again without an operator.
 *
 * The file holds {"version": 1, "images": [image.open params...]}: each
 * open image's params as its opener gave them, with the name it got. It is
 * rewritten whole after every image.open that succeeds and every
 * image.close (not by the stop's own closes: those images are to come
 * back), through a temporary file, fsync and rename, so that a crash leaves
 * the old record or the new one, never a mix. An image that cannot be
 * opened again at start is logged and left out of the next rewrite.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "service.h"

#define STATE_VERSION 1

int state_load(const char *file, json_t **images)
{
	json_error_t jerr;
	json_t *j, *v, *list;
	char msg[512];

	*images = NULL;
	if (access(file, F_OK) < 0 && errno == ENOENT)
		return 0; /* nothing was ever open */
	j = json_load_file(file, JSON_REJECT_DUPLICATES, &jerr);
	if (!j) {
		fprintf(stderr, "qcow2d: --state-file %s: line %d column %d: %s "
			"(move it away to start without it)\n", file, jerr.line,
			jerr.column, jerr.text);
		return -EINVAL;
	}
	v = json_object_get(j, "version");
	list = json_object_get(j, "images");
	if (!json_is_object(j) || json_integer_value(v) != STATE_VERSION ||
	    json_object_size(j) != 2 || !list) {
		fprintf(stderr, "qcow2d: --state-file %s: expected {\"version\": %d, "
			"\"images\": [...]} (move it away to start without it)\n",
			file, STATE_VERSION);
		json_decref(j);
		return -EINVAL;
	}
	if (images_check_config(list, msg, sizeof(msg)) < 0) {
		fprintf(stderr, "qcow2d: --state-file %s: %s (move it away to start "
			"without it)\n", file, msg);
		json_decref(j);
		return -EINVAL;
	}
	*images = json_incref(list);
	json_decref(j);
	return 0;
}

/* fsync the directory that holds path (the rename's own durability). */
static int sync_dir_of(const char *path)
{
	char copy[PATH_MAX];
	int fd, ret = 0;

	snprintf(copy, sizeof(copy), "%s", path);
	fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fsync(fd) < 0)
		ret = -errno;
	close(fd);
	return ret;
}

int state_save(struct svc *svc)
{
	const char *file = svc->cfg.state_file;
	char tmp[PATH_MAX];
	json_t *list, *doc;
	char *text;
	size_t len;
	int fd, ret = 0;

	if (!file)
		return 0;
	list = json_array();
	for (struct svc_image *si = svc->images; list && si; si = si->next)
		if (si->state == IMG_OPEN && si->params &&
		    json_array_append(list, si->params) < 0) {
			json_decref(list);
			list = NULL;
		}
	doc = list ? json_pack("{s:i, s:o}", "version", STATE_VERSION, "images",
			       list) : NULL;
	text = doc ? json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
	json_decref(doc);
	if (!text) {
		log_msg(LOG_ERROR, "cannot write the state file %s: out of memory; "
			"a restart may not open the images open now", file);
		return -ENOMEM;
	}
	len = strlen(text);
	snprintf(tmp, sizeof(tmp), "%s.tmp", file);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		ret = -errno;
	} else {
		for (size_t off = 0; off < len && ret == 0;) {
			ssize_t n = write(fd, text + off, len - off);
			if (n < 0 && errno != EINTR)
				ret = -errno;
			else if (n > 0)
				off += (size_t)n;
		}
		if (ret == 0 && (write(fd, "\n", 1) != 1 || fsync(fd) < 0))
			ret = -errno;
		if (close(fd) < 0 && ret == 0)
			ret = -errno;
		if (ret == 0 && rename(tmp, file) < 0)
			ret = -errno;
		if (ret == 0)
			ret = sync_dir_of(file);
		if (ret < 0)
			unlink(tmp);
	}
	free(text);
	if (ret < 0)
		log_msg(LOG_ERROR, "cannot write the state file %s: %s; a restart "
			"may not open the images open now (check the directory's "
			"permissions and space)", file, strerror(-ret));
	return ret;
}
