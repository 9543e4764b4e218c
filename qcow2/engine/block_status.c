/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* Synchronous block status for tools: one image's mapping of a range. */
#include <errno.h>
#include <stddef.h>
#include <unistd.h>

#include "engine/engine.h"

struct bs_wait {
	struct slice_waiter w;
	bool woken;
	int err;
};

static void bs_wake(struct slice_waiter *w, int err)
{
	struct bs_wait *bw = (struct bs_wait *)w;

	bw->woken = true;
	bw->err = err;
}

/* Is [host, host + *len) of fd a hole? *len is cut where that changes.
 * Without SEEK_DATA support, everything is data. */
static bool host_hole(int fd, uint64_t host, uint64_t *len)
{
	off_t d = lseek(fd, (off_t)host, SEEK_DATA), h;

	if (d < 0)
		return errno == ENXIO; /* no data from host to the end */
	if ((uint64_t)d > host) {
		if ((uint64_t)d - host < *len)
			*len = (uint64_t)d - host;
		return true;
	}
	h = lseek(fd, (off_t)host, SEEK_HOLE);
	if (h > d && (uint64_t)h - host < *len)
		*len = (uint64_t)h - host;
	return false;
}

int qcow2_block_status(struct qcow2_image *img, uint64_t offset,
		       uint64_t len, struct qcow2_extent *ext)
{
	struct map_extent m;
	int ret;

	if (offset >= img->virtual_size || len == 0)
		return -EINVAL;
	if (img->raw) {
		ext->offset = offset;
		ext->length = img->virtual_size - offset < len ?
				      img->virtual_size - offset : len;
		ext->type = QCOW2_EXTENT_DATA;
		ext->host_offset = offset;
		ext->data_file = false;
		ext->hole = host_hole(img->file.fd, offset, &ext->length);
		return 0;
	}
	for (;;) {
		struct bs_wait bw = { .w = { .wake = bs_wake } };

		ret = map_lookup(img, offset, len, &m, &bw.w);
		if (ret != -EAGAIN)
			break;
		while (!bw.woken) {
			ret = qcow2_ctx_process(img->ctx, true);
			if (ret < 0)
				return ret;
		}
		if (bw.err)
			return bw.err;
	}
	if (ret < 0)
		return ret;
	ext->offset = offset;
	ext->length = m.len;
	ext->type = m.type;
	ext->host_offset = 0;
	ext->data_file = false;
	ext->hole = false;
	if (m.type == QCOW2_EXTENT_DATA) {
		ext->host_offset = m.host;
		ext->data_file = img->has_data_file;
		/* qemu-img map looks for holes in the image file, not in an
		 * external data file. */
		if (!img->has_data_file) {
			ext->hole = host_hole(img->file.fd, m.host, &ext->length);
			/* Whole sectors: a data run cut where the file ends
			 * (inside its last cluster) takes the rest of that
			 * sector, as QEMU's file driver rounds it. */
			if (ext->length % 512 && align_up(ext->length, 512) <= m.len)
				ext->length = align_up(ext->length, 512);
		}
	} else if (m.type == QCOW2_EXTENT_ZERO) {
		ext->host_offset = m.host; /* preallocated, or 0 */
	} else if (m.type == QCOW2_EXTENT_COMPRESSED) {
		uint64_t clen;
		compressed_range(img, m.host, &ext->host_offset, &clen);
	}
	return 0;
}
