/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* Synchronous wrappers of the requests, for tools: each runs the context
 * until its request completes. */
#include <errno.h>

#include "engine/engine.h"

/* The request's message becomes the image's last one: the caller of a
 * synchronous call reads it with qcow2_last_error(). */
void sync_cb(void *opaque, int ret, const char *error)
{
	struct sync_wait *w = opaque;

	w->done = true;
	w->ret = ret;
	if (ret < 0 && error)
		image_set_error(w->img, "%s", error);
}

int sync_finish(struct qcow2_image *img, struct sync_wait *w, int ret)
{
	if (ret < 0)
		return ret;
	while (!w->done) {
		if (qcow2_ctx_inflight(img->ctx) == 0)
			return -EIO; /* cannot happen: nothing left to wait for */
		ret = qcow2_ctx_process(img->ctx, true);
		if (ret < 0)
			return ret;
	}
	return w->ret;
}

int qcow2_pread(struct qcow2_image *img, void *buf, size_t len,
		uint64_t offset)
{
	struct sync_wait w = { .img = img };

	return sync_finish(img, &w, qcow2_read(img, offset, buf, len, sync_cb, &w));
}

int qcow2_pwrite(struct qcow2_image *img, const void *buf, size_t len,
		 uint64_t offset)
{
	struct sync_wait w = { .img = img };

	return sync_finish(img, &w, qcow2_write(img, offset, buf, len, sync_cb, &w));
}

int qcow2_pwrite_zeroes(struct qcow2_image *img, uint64_t offset, uint64_t len,
			unsigned flags)
{
	struct sync_wait w = { .img = img };

	return sync_finish(img, &w, qcow2_write_zeroes(img, offset, len, flags,
						       sync_cb, &w));
}

int qcow2_pdiscard(struct qcow2_image *img, uint64_t offset, uint64_t len)
{
	struct sync_wait w = { .img = img };

	return sync_finish(img, &w, qcow2_discard(img, offset, len, sync_cb, &w));
}

int qcow2_fsync(struct qcow2_image *img)
{
	struct sync_wait w = { .img = img };

	return sync_finish(img, &w, qcow2_flush(img, sync_cb, &w));
}

int qcow2_ftruncate(struct qcow2_image *img, uint64_t size)
{
	struct sync_wait w = { .img = img };

	return sync_finish(img, &w, qcow2_truncate(img, size, sync_cb, &w));
}
