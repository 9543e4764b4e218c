/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * Request bookkeeping shared by reads and writes: argument checks, the
 * copied iovec, the first error and the message that travels with it to
 * the callback, and completion (deferred while inside the call that
 * started the request).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"

int request_check_range(struct qcow2_image *img, uint64_t offset,
			uint64_t len)
{
	if (offset > img->virtual_size || len > img->virtual_size - offset) {
		image_set_error(img, "request of %llu bytes at offset %llu is past "
				"the end of %s (%llu bytes)", (unsigned long long)len,
				(unsigned long long)offset, img->filename,
				(unsigned long long)img->virtual_size);
		return -EINVAL;
	}
	if (offset % img->block_size ||
	    (len % img->block_size && offset + len != img->virtual_size)) {
		image_set_error(img, "request of %llu bytes at offset %llu is not "
				"aligned to the %u-byte blocks of %s",
				(unsigned long long)len, (unsigned long long)offset,
				img->block_size, img->filename);
		return -EINVAL;
	}
	return 0;
}

int request_init(struct request *r, struct qcow2_image *img, uint64_t offset,
		 const struct iovec *iov, int iovcnt, uint64_t len,
		 qcow2_complete_fn cb, void *opaque)
{
	r->iov = r->iov_inline;
	if (iovcnt > 2) {
		r->iov = malloc((size_t)iovcnt * sizeof(*iov));
		if (!r->iov)
			return -ENOMEM;
	}
	if (iovcnt)
		memcpy(r->iov, iov, (size_t)iovcnt * sizeof(*iov));
	r->iovcnt = iovcnt;
	r->img = img;
	r->offset = offset;
	r->len = len;
	r->cb = cb;
	r->opaque = opaque;
	r->pending = 1;
	r->in_submit = true;
	r->error_seq = img->error_seq;
	return 0;
}

void request_fail(struct request *r, int err, const char *msg)
{
	struct qcow2_image *img = r->img;

	if (!err || r->error)
		return;
	r->error = err;
	if (msg && msg[0])
		r->error_msg = strdup(msg);
	else if (img->error_seq != r->error_seq && img->last_error[0])
		r->error_msg = strdup(img->last_error);
	else if (asprintf(&r->error_msg, "%s: %s", img->filename,
			  strerror(-err)) < 0)
		r->error_msg = NULL;
}

static void request_complete(struct request *r)
{
	if (r->iov != r->iov_inline)
		free(r->iov);
	r->iov = NULL;
	r->cb(r->opaque, r->error,
	      r->error ? (r->error_msg ? r->error_msg : strerror(-r->error)) : NULL);
	free(r->error_msg);
	r->destroy(r);
}

static void request_run_deferred(struct ctx_deferred *d)
{
	request_complete(container_of(d, struct request, deferred));
}

void request_put(struct request *r)
{
	if (--r->pending)
		return;
	if (r->error && r->error_count)
		(*r->error_count)++;
	if (r->in_submit) {
		r->deferred.run = request_run_deferred;
		ctx_defer(r->img->ctx, &r->deferred);
		return;
	}
	request_complete(r);
}

void request_submitted(struct request *r)
{
	r->in_submit = false;
}
