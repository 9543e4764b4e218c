/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * The write path's requests. A write request walks its range cluster by
 * cluster:
 *
 * - a cluster mapped to a host cluster with refcount 1 (COPIED) is written
 *   in place (inplace.c): no metadata changes (runs of such clusters
 *   become one IO);
 * - any other cluster gets a cluster write (cluster_write.c): allocation,
 *   copy-on-write, the data, then the L2 entry.
 *
 * Metadata changes happen in the caches, never while a flush is writing
 * them back (writeback_gate()).
 */
#include <endian.h>
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"

static void write_advance(struct write_req *req);

/* The cursor's cluster: its guest offset, the part [a, b) of it the
 * request covers from req->pos on, and its bytes inside the disk. */
static void cursor_cluster(const struct write_req *req, uint64_t *cluster,
			   uint64_t *a, uint64_t *b, uint64_t *csize)
{
	const struct qcow2_image *img = req->r.img;
	uint64_t guest = req->r.offset + req->pos;
	uint64_t left = req->r.len - req->pos;

	*cluster = align_down(guest, img->cluster_size);
	*a = guest - *cluster;
	*csize = img->virtual_size - *cluster < img->cluster_size ?
			 img->virtual_size - *cluster : img->cluster_size;
	*b = *a + left < *csize ? *a + left : *csize;
}

int req_slice_init(struct req_slice *rs, struct write_req *req, uint64_t off,
		   uint64_t len)
{
	int n;

	rs->zeros = NULL;
	if (req->kind == WRITE_ZEROES || req->kind == WRITE_DISCARD) {
		/* Partial clusters of a zero request: write zeros. */
		if (posix_memalign(&rs->zeros, req->r.img->file.mem_align, len))
			return -ENOMEM;
		memset(rs->zeros, 0, len);
		rs->inline_iov[0].iov_base = rs->zeros;
		rs->inline_iov[0].iov_len = len;
		rs->iov = rs->inline_iov;
		rs->iovcnt = 1;
		return 0;
	}
	n = iov_count_range(req->r.iov, req->r.iovcnt, off, len);

	rs->iov = rs->inline_iov;
	if (n > 2) {
		rs->iov = calloc((size_t)n, sizeof(*rs->iov));
		if (!rs->iov)
			return -ENOMEM;
	}
	rs->iovcnt = iov_slice(req->r.iov, req->r.iovcnt, off, len, rs->iov);
	return 0;
}

void req_slice_free(struct req_slice *rs)
{
	if (rs->iov != rs->inline_iov)
		free(rs->iov);
	free(rs->zeros);
	rs->zeros = NULL;
	rs->iov = NULL;
}

/* ---- request bookkeeping ----------------------------------------------- */

static void wreq_destroy(struct request *r)
{
	free(container_of(r, struct write_req, r));
}

/* A piece of work done, failed with err (0: it succeeded). */
void wreq_put(struct write_req *req, int err)
{
	request_fail(&req->r, err, NULL);
	request_put(&req->r);
}

/* ---- the request cursor ------------------------------------------------ */

static void write_wake(struct slice_waiter *w, int err)
{
	struct write_req *req = container_of(w, struct write_req, waiter);

	if (err) {
		wreq_put(req, err);
		return;
	}
	write_advance(req);
}

/* Zero and discard requests: whole clusters change metadata; partial ones
 * are written with zeros (zero) or left alone (discard). */
static void meta_advance(struct write_req *req)
{
	struct qcow2_image *img = req->r.img;
	bool v2_backing = img->hdr.version < 3 && image_needs_zero_flag(img);
	/* A raw data file must read as the disk: zeros are written into it,
	 * for discards too (their clusters read zeros afterwards). */
	bool raw_data = img->has_data_file &&
			(img->hdr.autoclear_features & QCOW2_AUTOCLEAR_DATA_FILE_RAW);

	write_gather_begin(img);
	while (req->pos < req->r.len && !req->r.error) {
		uint64_t cluster, a, b, csize;
		bool whole;
		int ret = 0;

		cursor_cluster(req, &cluster, &a, &b, &csize);
		whole = a == 0 && b == csize;

		if (req->kind == WRITE_DISCARD) {
			/* A version 2 image has no zero flag: dropping the
			 * cluster would show the backing file's old data where
			 * the guest wrote. Such discards do nothing, as in
			 * QEMU (a discard is only a hint). */
			if (whole && !v2_backing)
				ret = start_cluster_write(req, raw_data ? WRITE_DATA :
							  WRITE_DISCARD, cluster, a, b);
		} else if (whole && !v2_backing && !raw_data) {
			ret = start_cluster_write(req, WRITE_ZEROES, cluster, a, b);
		} else {
			ret = start_cluster_write(req, WRITE_DATA, cluster, a, b);
		}
		if (ret < 0) {
			request_fail(&req->r, ret, NULL);
			break;
		}
		req->pos += b - a;
	}
	write_gather_end(img);
	wreq_put(req, 0);
}

static void write_advance(struct write_req *req)
{
	struct qcow2_image *img = req->r.img;
	const uint64_t cs = img->cluster_size;

	write_gather_begin(img);
	while (req->pos < req->r.len && !req->r.error) {
		uint64_t guest = req->r.offset + req->pos;
		uint64_t cluster, a, b, csize;
		struct slice *s;
		uint64_t first, l2_off, e, bm = 0, idx = 0, host, run;
		int ret = l2_slice_lookup(img, guest, &req->waiter, &s, &first,
					  &l2_off);

		cursor_cluster(req, &cluster, &a, &b, &csize);

		if (ret == -EAGAIN) {
			write_gather_end(img);
			return; /* write_wake resumes */
		}
		if (ret < 0) {
			request_fail(&req->r, ret, NULL);
			break;
		}
		if (ret == 0) {
			idx = ((guest >> img->cluster_bits) &
			       ((1ull << img->l2_bits) - 1)) - first;
			l2e_get(img, s->data, idx, &e, &bm);
		} else {
			e = 0;
		}
		if (ret == 1 || !l2e_range_in_place(img, e, bm, a, b) ||
		    cluster_allocating(img, cluster)) {
			ret = start_cluster_write(req, WRITE_DATA, cluster, a, b);
			if (ret < 0) {
				request_fail(&req->r, ret, NULL);
				break;
			}
			req->pos += b - a;
			continue;
		}
		/* In place: extend over following clusters of the slice that
		 * are host-contiguous and ours. */
		host = (e & L2E_OFFSET_MASK) + a;
		run = b - a;
		while (req->pos + run < req->r.len && b == cs) {
			uint64_t next = cluster + cs, n, nbm;
			uint64_t nidx = idx + 1;
			if (nidx >= img->l2_slice_size / img->l2_entry_size ||
			    (next >> (img->cluster_bits + img->l2_bits)) !=
				    (cluster >> (img->cluster_bits + img->l2_bits)))
				break;
			l2e_get(img, s->data, nidx, &n, &nbm);
			if (!l2e_range_in_place(img, n, nbm, 0,
					    img->virtual_size - next < cs ?
						    img->virtual_size - next : cs) ||
			    (n & L2E_OFFSET_MASK) != (e & L2E_OFFSET_MASK) + cs ||
			    cluster_allocating(img, next))
				break;
			cluster = next;
			idx = nidx;
			e = n;
			b = img->virtual_size - next < cs ? img->virtual_size - next : cs;
			if (req->r.len - req->pos - run < b)
				b = req->r.len - req->pos - run;
			run += b;
			if (b < cs)
				break;
		}
		ret = start_inplace(req, host, run);
		if (ret < 0) {
			request_fail(&req->r, ret, NULL);
			break;
		}
		req->pos += run;
	}
	write_gather_end(img);
	wreq_put(req, 0); /* the cursor is done */
}

/* A new request (validated by the caller), its cursor counted as pending. */
static struct write_req *wreq_new(struct qcow2_image *img, enum write_kind kind,
				  unsigned flags, uint64_t offset,
				  const struct iovec *iov, int iovcnt, uint64_t len,
				  qcow2_complete_fn cb, void *opaque)
{
	struct write_req *req = calloc(1, sizeof(*req));

	if (!req)
		return NULL;
	if (request_init(&req->r, img, offset, iov, iovcnt, len, cb, opaque) < 0) {
		free(req);
		return NULL;
	}
	req->r.destroy = wreq_destroy;
	req->r.error_count = &img->stats.write_errors;
	req->kind = kind;
	req->flags = flags;
	req->waiter.wake = write_wake;
	img->stats.write_requests++;
	img->stats.write_bytes += len;
	return req;
}

static int wreq_start(struct qcow2_image *img, enum write_kind kind,
		      unsigned flags, uint64_t offset, const struct iovec *iov,
		      int iovcnt, uint64_t len, qcow2_complete_fn cb,
		      void *opaque)
{
	struct write_req *req;

	if (!img || !cb)
		return -EINVAL;
	if (!(img->flags & QCOW2_OPEN_RDWR) || !img->wb) {
		image_set_error(img, "%s is open read-only", img->filename);
		return -EROFS;
	}
	if (image_refuse_if_corrupt(img) < 0)
		return -EUCLEAN;
	if (request_check_range(img, offset, len) < 0)
		return -EINVAL;
	req = wreq_new(img, kind, flags, offset, iov, iovcnt, len, cb, opaque);
	if (!req)
		return -ENOMEM;
	if (kind == WRITE_DATA)
		write_advance(req);
	else
		meta_advance(req);
	request_submitted(&req->r);
	return 0;
}

int qcow2_writev(struct qcow2_image *img, uint64_t offset,
		 const struct iovec *iov, int iovcnt, qcow2_complete_fn cb,
		 void *opaque)
{
	if (iovcnt < 0 || iovcnt > IOV_MAX || (iovcnt && !iov))
		return -EINVAL;
	return wreq_start(img, WRITE_DATA, 0, offset, iov, iovcnt,
			  iov_total(iov, iovcnt), cb, opaque);
}

int qcow2_write_zeroes(struct qcow2_image *img, uint64_t offset, uint64_t len,
		       unsigned flags, qcow2_complete_fn cb, void *opaque)
{
	if (flags & ~QCOW2_ZERO_UNMAP)
		return -EINVAL;
	return wreq_start(img, WRITE_ZEROES, flags, offset, NULL, 0, len, cb,
			  opaque);
}

int qcow2_discard(struct qcow2_image *img, uint64_t offset, uint64_t len,
		  qcow2_complete_fn cb, void *opaque)
{
	return wreq_start(img, WRITE_DISCARD, 0, offset, NULL, 0, len, cb,
			  opaque);
}

int qcow2_write_compressed(struct qcow2_image *img, uint64_t offset,
			   const void *data, size_t len, qcow2_complete_fn cb,
			   void *opaque)
{
	struct write_req *req;
	uint64_t csize;
	int ret;

	if (!img || !cb || !data || !len)
		return -EINVAL;
	if (!(img->flags & QCOW2_OPEN_RDWR) || !img->wb)
		return -EROFS;
	if (image_refuse_if_corrupt(img) < 0)
		return -EUCLEAN;
	if (img->has_data_file || img->block_size > img->cluster_size) {
		image_set_error(img, "compressed clusters need the image's own "
				"file and blocks no larger than a cluster");
		return -ENOTSUP;
	}
	if (offset % img->cluster_size || offset >= img->virtual_size ||
	    len >= img->cluster_size)
		return -EINVAL;
	csize = img->virtual_size - offset < img->cluster_size ?
			img->virtual_size - offset : img->cluster_size;
	/* The iovec is the compressed data; the request covers the cluster. */
	req = wreq_new(img, WRITE_COMPRESSED, 0, offset,
		       &(struct iovec){ (void *)data, len }, 1, csize, cb, opaque);
	if (!req)
		return -ENOMEM;
	ret = start_cluster_write(req, WRITE_COMPRESSED, offset, 0, csize);
	if (ret < 0)
		request_fail(&req->r, ret, NULL);
	wreq_put(req, 0);
	req->r.in_submit = false;
	return 0;
}
