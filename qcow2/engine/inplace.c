/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * In-place writes: a cluster mapped to a host cluster with refcount 1
 * (COPIED) is written where it is, with no metadata change. They are kept
 * in issue order: a cluster a discard dropped is decremented only once
 * every in-place write issued before the flush that wrote the discard is
 * done (inplace_ended(), asked by cluster_alloc.c), so that a late one
 * never lands in a reused cluster.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"

struct inplace_write {
	struct file_read fw;
	struct write_req *req;
	struct req_slice rs;
	uint64_t seq;
	struct inplace_write *prev, *next; /* img->inplace list */
};

bool inplace_ended(const struct qcow2_image *img, uint64_t seq)
{
	return !img->inplace.head || img->inplace.head->seq > seq;
}

static void inplace_link(struct inplace_writes *ip, struct inplace_write *w)
{
	w->seq = ++ip->seq;
	w->prev = ip->tail;
	w->next = NULL;
	if (ip->tail)
		ip->tail->next = w;
	else
		ip->head = w;
	ip->tail = w;
}

static void inplace_unlink(struct inplace_writes *ip, struct inplace_write *w)
{
	if (w->prev)
		w->prev->next = w->next;
	else
		ip->head = w->next;
	if (w->next)
		w->next->prev = w->prev;
	else
		ip->tail = w->prev;
}

static void inplace_done(struct file_read *fw, int err)
{
	struct inplace_write *w = container_of(fw, struct inplace_write, fw);
	struct write_req *req = w->req;
	bool oldest = !w->prev;

	inplace_unlink(&req->r.img->inplace, w);
	if (oldest)
		cluster_frees_kick(req->r.img);

	if (err)
		image_set_error(req->r.img, "write error on %s: %s",
				req->r.img->filename, strerror(-err));
	else
		image_mark_data_unsynced(req->r.img);
	req_slice_free(&w->rs);
	free(w);
	wreq_put(req, err);
}

int start_inplace(struct write_req *req, uint64_t host, uint64_t len)
{
	struct inplace_write *w = calloc(1, sizeof(*w));
	int ret;

	if (!w)
		return -ENOMEM;
	w->req = req;
	ret = req_slice_init(&w->rs, req, req->pos, len);
	if (ret < 0) {
		free(w);
		return ret;
	}
	req->r.pending++;
	inplace_link(&req->r.img->inplace, w);
	ret = file_write_start(req->r.img->ctx, req->r.img->data, host, w->rs.iov,
			       w->rs.iovcnt, len, &w->fw, inplace_done);
	if (ret < 0) {
		inplace_unlink(&req->r.img->inplace, w);
		req_slice_free(&w->rs);
		free(w);
		req->r.pending--;
	}
	return ret;
}
