/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * The read path, as an explicit state machine. A request walks its guest
 * range with a cursor: each step maps one extent (map_lookup) and starts the
 * work for it (data IO, zero fill, backing read, decompression). When an L2
 * slice is not cached, the cursor parks on the slice and resumes when it is
 * loaded. The request completes when the cursor has reached the end and
 * every piece of work it started has finished.
 */
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"

struct read_req {
	struct request r;
	uint64_t pos;           /* cursor, relative to r.offset */
	bool top_level;
	struct slice_waiter waiter;
};

/* One piece of work: a data read, a backing read or a compressed cluster. */
struct read_sub {
	struct read_req *req;
	uint64_t req_off;       /* where its bytes go in the request */
	uint64_t len;
	uint64_t desc;          /* compressed: the descriptor */
	uint64_t in_cluster;    /* compressed: offset of req_off's byte */
	uint64_t zcache_gen;    /* compressed: img->zcache.gen at the start */
	struct file_read fr;
	struct iovec *iov;
	int iovcnt;
	struct iovec iov_inline[2];
};

static void read_advance(struct read_req *req);

static void req_destroy(struct request *r)
{
	free(container_of(r, struct read_req, r));
}

static void req_put(struct read_req *req)
{
	request_put(&req->r);
}

static void req_fail(struct read_req *req, int err, const char *msg)
{
	request_fail(&req->r, err, msg);
}

static struct read_sub *sub_new(struct read_req *req, uint64_t len)
{
	struct read_sub *sub = calloc(1, sizeof(*sub));
	int n;

	if (!sub)
		return NULL;
	sub->req = req;
	sub->req_off = req->pos;
	sub->len = len;
	n = iov_count_range(req->r.iov, req->r.iovcnt, req->pos, len);
	if (n <= 2) {
		sub->iov = sub->iov_inline;
	} else {
		sub->iov = calloc((size_t)n, sizeof(*sub->iov));
		if (!sub->iov) {
			free(sub);
			return NULL;
		}
	}
	sub->iovcnt = iov_slice(req->r.iov, req->r.iovcnt, req->pos, len, sub->iov);
	req->r.pending++;
	return sub;
}

static void sub_end(struct read_sub *sub, int err, const char *msg)
{
	struct read_req *req = sub->req;

	if (err)
		req_fail(req, err, msg);
	if (sub->iov != sub->iov_inline)
		free(sub->iov);
	free(sub);
	req_put(req);
}

static void data_done(struct file_read *fr, int err)
{
	struct read_sub *sub = container_of(fr, struct read_sub, fr);

	if (err)
		image_set_error(sub->req->r.img, "read error on %s: %s",
				sub->req->r.img->data->path, strerror(-err));
	sub_end(sub, err, NULL);
}

static void backing_done(void *opaque, int err, const char *msg)
{
	sub_end(opaque, err, msg);
}

static void compressed_done(struct file_read *fr, int err)
{
	struct read_sub *sub = container_of(fr, struct read_sub, fr);
	struct qcow2_image *img = sub->req->r.img;
	struct zcache *z = &img->zcache;
	uint64_t host, clen;

	if (!err) {
		compressed_range(img, sub->desc, &host, &clen);
		z->valid = false;
		err = decompress_cluster(&z->dec, img->hdr.compression_type,
					 fr->bounce + fr->bounce_skip, clen,
					 z->buf, img->cluster_size);
		if (err) {
			image_set_error(img,
					"corrupt image: compressed cluster at host offset 0x%llx "
					"(%llu bytes) does not decompress",
					(unsigned long long)host, (unsigned long long)clen);
		} else {
			/* Bytes read before their cluster was reused may be
			 * stale: serve this request, keep nothing. */
			z->desc = sub->desc;
			z->valid = sub->zcache_gen == z->gen;
			img->stats.compressed_reads++;
			iov_from_buf(sub->iov, sub->iovcnt, 0,
				     z->buf + sub->in_cluster, sub->len);
		}
	}
	free(fr->bounce);
	fr->bounce = NULL;
	sub_end(sub, err, NULL);
}

void read_zcache_drop(struct qcow2_image *img)
{
	img->zcache.valid = false;
	img->zcache.gen++;
}

void read_zcache_free(struct qcow2_image *img)
{
	decompress_cleanup(&img->zcache.dec);
	free(img->zcache.buf);
	img->zcache.buf = NULL;
}

static int start_data(struct read_req *req, struct qfile *f, uint64_t host,
		      uint64_t len)
{
	struct read_sub *sub = sub_new(req, len);
	int ret;

	if (!sub)
		return -ENOMEM;
	if (f->direct && (host % f->align || len % f->align ||
			  !iov_aligned(sub->iov, sub->iovcnt, f->mem_align, f->align)))
		req->r.img->stats.bounced_reads++;
	ret = file_read_start(req->r.img->ctx, f, host, sub->iov, sub->iovcnt, len,
			      false, &sub->fr, data_done);
	if (ret < 0)
		sub_end(sub, ret, NULL);
	return 0;
}

static int start_backing(struct read_req *req, uint64_t guest, uint64_t len)
{
	struct qcow2_image *b = req->r.img->backing;
	uint64_t n = 0;

	if (b && guest < b->virtual_size) {
		struct read_sub *sub;
		int ret;

		n = b->virtual_size - guest < len ? b->virtual_size - guest : len;
		sub = sub_new(req, n);
		if (!sub)
			return -ENOMEM;
		req->r.img->stats.backing_reads++;
		ret = read_start(b, guest, sub->iov, sub->iovcnt, n, false,
				 backing_done, sub);
		if (ret < 0)
			sub_end(sub, ret, NULL);
	}
	if (n < len)
		iov_memset(req->r.iov, req->r.iovcnt, req->pos + n, 0, len - n);
	return 0;
}

static int start_compressed(struct read_req *req, uint64_t guest,
			    uint64_t desc, uint64_t len)
{
	struct qcow2_image *img = req->r.img;
	struct zcache *z = &img->zcache;
	uint64_t in_cluster = guest & (img->cluster_size - 1);
	struct read_sub *sub;
	uint64_t host, clen;
	int ret;

	if (!z->buf) {
		if (posix_memalign((void **)&z->buf, 4096, img->cluster_size))
			return -ENOMEM;
	}
	if (z->valid && z->desc == desc) {
		iov_from_buf(req->r.iov, req->r.iovcnt, req->pos,
			     z->buf + in_cluster, len);
		return 0;
	}
	sub = sub_new(req, len);
	if (!sub)
		return -ENOMEM;
	sub->desc = desc;
	sub->in_cluster = in_cluster;
	sub->zcache_gen = z->gen;
	compressed_range(img, desc, &host, &clen);
	ret = file_read_start(img->ctx, &img->file, host, NULL, 0, clen, true,
			      &sub->fr, compressed_done);
	if (ret < 0)
		sub_end(sub, ret, NULL);
	return 0;
}

static void read_wake(struct slice_waiter *w, int err)
{
	struct read_req *req = container_of(w, struct read_req, waiter);

	if (err) {
		image_set_error(req->r.img, "cannot read an L2 table of %s: %s",
				req->r.img->filename, strerror(-err));
		req_fail(req, err, NULL);
		req_put(req); /* the cursor stops */
		return;
	}
	read_advance(req);
}

static void read_advance(struct read_req *req)
{
	struct qcow2_image *img = req->r.img;

	while (req->pos < req->r.len && !req->r.error) {
		uint64_t guest = req->r.offset + req->pos;
		struct map_extent ext;
		int ret;

		if (img->raw) {
			ext.type = QCOW2_EXTENT_DATA;
			ext.host = guest;
			ext.len = req->r.len - req->pos;
		} else {
			ret = map_lookup(img, guest, req->r.len - req->pos, &ext,
					 &req->waiter);
			if (ret == -EAGAIN)
				return; /* parked on a slice; read_wake resumes */
			if (ret < 0) {
				req_fail(req, ret, NULL);
				break;
			}
		}
		switch (ext.type) {
		case QCOW2_EXTENT_DATA:
			ret = start_data(req, img->data, ext.host, ext.len);
			break;
		case QCOW2_EXTENT_ZERO:
			iov_memset(req->r.iov, req->r.iovcnt, req->pos, 0, ext.len);
			ret = 0;
			break;
		case QCOW2_EXTENT_UNALLOCATED:
			ret = start_backing(req, guest, ext.len);
			break;
		case QCOW2_EXTENT_COMPRESSED:
			ret = start_compressed(req, guest, ext.host, ext.len);
			break;
		default:
			ret = -EIO;
		}
		if (ret < 0) {
			req_fail(req, ret, NULL);
			break;
		}
		req->pos += ext.len;
	}
	req_put(req); /* the cursor is done */
}

int read_start(struct qcow2_image *img, uint64_t offset,
	       const struct iovec *iov, int iovcnt, uint64_t len,
	       bool top_level, qcow2_complete_fn cb, void *opaque)
{
	struct read_req *req = calloc(1, sizeof(*req));

	if (!req)
		return -ENOMEM;
	if (request_init(&req->r, img, offset, iov, iovcnt, len, cb, opaque) < 0) {
		free(req);
		return -ENOMEM;
	}
	req->r.destroy = req_destroy;
	/* Internal reads (backing files, copy-on-write) may call back
	 * inside the call; their failures count as their parent's. */
	req->r.in_submit = top_level;
	req->r.error_count = top_level ? &img->stats.read_errors : NULL;
	req->top_level = top_level;
	req->waiter.wake = read_wake;
	read_advance(req);
	/* A top-level request is never freed inside read_advance: its
	 * completion is deferred while in_submit is set. */
	if (top_level)
		request_submitted(&req->r);
	return 0;
}

int qcow2_readv(struct qcow2_image *img, uint64_t offset,
		const struct iovec *iov, int iovcnt, qcow2_complete_fn cb,
		void *opaque)
{
	uint64_t len;

	if (!img || !cb || iovcnt < 0 || iovcnt > IOV_MAX || (iovcnt && !iov))
		return -EINVAL;
	len = iov_total(iov, iovcnt);
	if (request_check_range(img, offset, len) < 0)
		return -EINVAL;
	img->stats.read_requests++;
	img->stats.read_bytes += len;
	return read_start(img, offset, iov, iovcnt, len, true, cb, opaque);
}
