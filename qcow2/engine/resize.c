/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * Growing the virtual disk.
 *
 * When the L1 table must grow, a larger one is placed at the end of the
 * image (cluster_alloc_run), counted, and installed in memory with every
 * entry dirty: the next flush writes it whole after the L2 tables, then
 * switches the header to it, then frees the old table (rule 3). Until that
 * header write, the image on disk is the old one plus leaked clusters.
 *
 * The new part of the disk must read zeros: the tail of the old last
 * cluster (a partial cluster may hold stale bytes past the old end) and,
 * with a backing file longer than the old size, the part the backing file
 * would otherwise show through. Both are zeroed with ordinary requests once
 * the size has changed.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"

enum resize_phase { RS_GROW_L1, RS_COUNT, RS_INSTALL, RS_ZERO_HEAD,
		    RS_ZERO_REST, RS_DONE };

struct resize_req {
	struct request r;       /* no buffers; r.img, the completion */
	enum resize_phase phase;
	uint64_t old_size, new_size;
	uint32_t new_l1_size;
	uint64_t l1_clusters;
	uint64_t l1_off;
	uint64_t counted;
	uint8_t *block;          /* the block holding the old end */
	struct slice_waiter waiter;
};

static void resize_advance(struct resize_req *rr);

static void resize_destroy(struct request *r)
{
	struct resize_req *rr = container_of(r, struct resize_req, r);

	free(rr->block);
	free(rr);
}

static void resize_end(struct resize_req *rr, int ret)
{
	rr->phase = RS_DONE;
	request_fail(&rr->r, ret, NULL);
	request_put(&rr->r);
}

static void resize_wake(struct slice_waiter *w, int err)
{
	struct resize_req *rr = container_of(w, struct resize_req, waiter);

	if (err) {
		resize_end(rr, err);
		return;
	}
	resize_advance(rr);
}

static void resize_io_done(void *opaque, int err, const char *msg)
{
	struct resize_req *rr = opaque;

	if (err) {
		request_fail(&rr->r, err, msg);
		resize_end(rr, err);
		return;
	}
	resize_advance(rr);
}

/* Install the new L1 and the new size (in memory and in the header block
 * the next flush writes). Cannot fail. */
static void resize_install(struct resize_req *rr, uint64_t *l1)
{
	struct qcow2_image *img = rr->r.img;

	if (l1) {
		uint64_t old_clusters =
			align_up((uint64_t)img->l1_size * 8, img->cluster_size) >>
			img->cluster_bits;

		if (img->hdr.l1_table_offset)
			for (uint64_t i = 0; i < old_clusters; i++)
				cluster_free_later(img, img->hdr.l1_table_offset +
							  (i << img->cluster_bits));
		memset(l1 + img->l1_size, 0,
		       (size_t)(rr->new_l1_size - img->l1_size) * 8);
		img->l1 = l1;
		img->l1_size = rr->new_l1_size;
		img->hdr.l1_size = rr->new_l1_size;
		img->hdr.l1_table_offset = rr->l1_off;
		image_set_header_u32(img, 36, rr->new_l1_size);
		image_set_header_u64(img, 40, rr->l1_off);
		image_mark_l1_dirty(img, 0);
		image_mark_l1_dirty(img, rr->new_l1_size - 1);
	}
	img->virtual_size = rr->new_size;
	img->hdr.size = rr->new_size;
	image_set_header_u64(img, 24, rr->new_size);
}

/* Where the new area must be zeroed explicitly: [old, zero_end). */
static uint64_t zero_end(const struct resize_req *rr)
{
	const struct qcow2_image *img = rr->r.img;
	uint64_t end = align_up(rr->old_size, img->cluster_size);

	if (img->backing && img->backing->virtual_size > end)
		end = img->backing->virtual_size;
	return end < rr->new_size ? end : rr->new_size;
}

static void resize_advance(struct resize_req *rr)
{
	struct qcow2_image *img = rr->r.img;
	uint64_t bs = img->block_size;
	int ret;

	for (;;) {
		switch (rr->phase) {
		case RS_GROW_L1:
			if (rr->new_l1_size <= img->l1_size) {
				rr->phase = RS_INSTALL;
				break;
			}
			ret = writeback_gate(img, &rr->waiter);
			if (ret == 0)
				ret = cluster_alloc_run(img, rr->l1_clusters,
							&rr->waiter, &rr->l1_off);
			if (ret == -EAGAIN)
				return;
			if (ret < 0) {
				resize_end(rr, ret);
				return;
			}
			rr->phase = RS_COUNT;
			break;
		case RS_COUNT:
			while (rr->counted < rr->l1_clusters) {
				ret = writeback_gate(img, &rr->waiter);
				if (ret == 0)
					ret = refcount_update(img, rr->l1_off +
							      (rr->counted << img->cluster_bits),
							      1, &rr->waiter);
				if (ret == -EAGAIN)
					return;
				if (ret < 0) {
					/* The run leaks: safe. */
					resize_end(rr, ret);
					return;
				}
				rr->counted++;
			}
			rr->phase = RS_INSTALL;
			break;
		case RS_INSTALL: {
			uint64_t *l1 = NULL;

			ret = writeback_gate(img, &rr->waiter);
			if (ret == -EAGAIN)
				return;
			if (ret < 0) {
				resize_end(rr, ret);
				return;
			}
			if (rr->new_l1_size > img->l1_size) {
				l1 = realloc(img->l1, (size_t)rr->new_l1_size * 8);
				if (!l1) {
					resize_end(rr, -ENOMEM);
					return;
				}
				img->l1 = l1;
			}
			resize_install(rr, l1);
			rr->phase = RS_ZERO_HEAD;
			break;
		}
		case RS_ZERO_HEAD:
			/* The block holding the old end: keep what is before
			 * it, zero the rest (read, clear, write). */
			rr->phase = RS_ZERO_REST;
			if (rr->old_size % bs && zero_end(rr) > rr->old_size) {
				uint64_t start = align_down(rr->old_size, bs);
				uint64_t len = rr->new_size - start < bs ?
					       rr->new_size - start : bs;

				if (!rr->block) {
					if (posix_memalign((void **)&rr->block,
							   img->file.mem_align, bs)) {
						resize_end(rr, -ENOMEM);
						return;
					}
					rr->phase = RS_ZERO_HEAD;
					ret = qcow2_read(img, start, rr->block, len,
							 resize_io_done, rr);
				} else {
					memset(rr->block + (rr->old_size - start), 0,
					       len - (rr->old_size - start));
					ret = qcow2_write(img, start, rr->block, len,
							  resize_io_done, rr);
				}
				if (ret < 0) {
					resize_end(rr, ret);
					return;
				}
				return;
			}
			break;
		case RS_ZERO_REST: {
			uint64_t from = align_up(rr->old_size, bs);
			uint64_t to = zero_end(rr);

			rr->phase = RS_DONE;
			if (to != rr->new_size)
				to = align_up(to, bs) < rr->new_size ?
				     align_up(to, bs) : rr->new_size;
			if (from < to) {
				ret = qcow2_write_zeroes(img, from, to - from, 0,
							 resize_io_done, rr);
				if (ret < 0) {
					resize_end(rr, ret);
					return;
				}
				return;
			}
			break;
		}
		case RS_DONE:
			resize_end(rr, 0);
			return;
		}
	}
}

int qcow2_truncate(struct qcow2_image *img, uint64_t size,
		   qcow2_complete_fn cb, void *opaque)
{
	struct resize_req *rr;
	uint64_t l1_entries;

	if (!img || !cb)
		return -EINVAL;
	if (!(img->flags & QCOW2_OPEN_RDWR) || !img->wb)
		return -EROFS;
	if (image_refuse_if_corrupt(img) < 0)
		return -EUCLEAN;
	if (size % 512) {
		image_set_error(img, "the new size must be a multiple of 512 bytes");
		return -EINVAL;
	}
	if (size < img->virtual_size) {
		image_set_error(img, "shrinking an image is not supported");
		return -ENOTSUP;
	}
	if (img->hdr.nb_snapshots && size != img->virtual_size) {
		image_set_error(img, "cannot resize an image with internal snapshots");
		return -ENOTSUP;
	}
	l1_entries = qcow2_l1_entries_needed(size, img->cluster_bits, img->extl2);
	if (l1_entries * 8 > QCOW2_MAX_L1_BYTES) {
		image_set_error(img, "%llu bytes need an L1 table larger than %u MiB",
				(unsigned long long)size, QCOW2_MAX_L1_BYTES >> 20);
		return -EFBIG;
	}
	rr = calloc(1, sizeof(*rr));
	if (!rr)
		return -ENOMEM;
	if (request_init(&rr->r, img, 0, NULL, 0, 0, cb, opaque) < 0) {
		free(rr);
		return -ENOMEM;
	}
	rr->r.destroy = resize_destroy;
	rr->old_size = img->virtual_size;
	rr->new_size = size;
	rr->new_l1_size = (uint32_t)l1_entries;
	rr->l1_clusters = align_up(l1_entries * 8, img->cluster_size) >>
			  img->cluster_bits;
	rr->waiter.wake = resize_wake;
	resize_advance(rr);
	/* Finished inside: its completion was deferred, rr is still ours
	 * until the context runs it. */
	request_submitted(&rr->r);
	return 0;
}
