/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* Synchronous block status for tools: one image's mapping of a range. */
#include <errno.h>
#include <stddef.h>

#include "internal.h"

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
	if (m.type == QCOW2_EXTENT_DATA) {
		ext->host_offset = m.host;
		ext->data_file = img->has_data_file;
	} else if (m.type == QCOW2_EXTENT_COMPRESSED) {
		uint64_t clen;
		compressed_range(img, m.host, &ext->host_offset, &clen);
	}
	return 0;
}
