/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * Compressed clusters: raw deflate (zlib) or zstd. A cluster decompresses to
 * exactly cluster_size bytes; the compressed bytes may be followed by
 * unrelated data (the rest of the last sector), so decompression stops when
 * the output is full.
 */
#include <errno.h>
#include <string.h>

#include "format/format.h"

static int inflate_cluster(struct decompressor *d, const uint8_t *src,
			   size_t srclen, uint8_t *dst, size_t cluster_size)
{
	z_stream *zs = &d->zs;
	int ret;

	if (!d->zs_ready) {
		memset(zs, 0, sizeof(*zs));
		/* -15: raw deflate, any window (qemu writes 12-bit windows) */
		if (inflateInit2(zs, -15) != Z_OK)
			return -ENOMEM;
		d->zs_ready = true;
	} else if (inflateReset(zs) != Z_OK) {
		return -EIO;
	}
	zs->next_in = (Bytef *)src;
	zs->avail_in = (uInt)srclen;
	zs->next_out = dst;
	zs->avail_out = (uInt)cluster_size;
	ret = inflate(zs, Z_FINISH);
	if ((ret == Z_STREAM_END || ret == Z_BUF_ERROR) && zs->avail_out == 0)
		return 0;
	return -EIO;
}

static int zstd_cluster(struct decompressor *d, const uint8_t *src,
			size_t srclen, uint8_t *dst, size_t cluster_size)
{
	ZSTD_inBuffer in = { src, srclen, 0 };
	ZSTD_outBuffer out = { dst, cluster_size, 0 };

	if (!d->zstd) {
		d->zstd = ZSTD_createDCtx();
		if (!d->zstd)
			return -ENOMEM;
	} else {
		ZSTD_DCtx_reset(d->zstd, ZSTD_reset_session_only);
	}
	while (out.pos < out.size) {
		size_t in_before = in.pos, out_before = out.pos;
		size_t r = ZSTD_decompressStream(d->zstd, &out, &in);

		if (ZSTD_isError(r))
			return -EIO;
		if (in.pos == in_before && out.pos == out_before)
			return -EIO; /* no progress: truncated input */
	}
	return 0;
}

int decompress_cluster(struct decompressor *d, enum qcow2_compression type,
		       const uint8_t *src, size_t srclen, uint8_t *dst,
		       size_t cluster_size)
{
	if (type == QCOW2_COMPRESSION_ZSTD)
		return zstd_cluster(d, src, srclen, dst, cluster_size);
	return inflate_cluster(d, src, srclen, dst, cluster_size);
}

void decompress_cleanup(struct decompressor *d)
{
	if (d->zs_ready)
		inflateEnd(&d->zs);
	d->zs_ready = false;
	if (d->zstd)
		ZSTD_freeDCtx(d->zstd);
	d->zstd = NULL;
}
