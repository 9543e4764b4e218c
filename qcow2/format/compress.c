/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * Compressing a cluster for qcow2_write_compressed(). A pure function of its
 * arguments: callers run it on worker threads, off the IO loop.
 *
 * zlib: raw deflate with a 4 KiB window (what qemu writes, so that any
 * reader's inflate accepts it); zstd: one frame.
 */
#include <errno.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "format/format.h"

static int deflate_cluster(const void *src, size_t len, void *dst, size_t cap,
			   size_t *out)
{
	z_stream zs;
	int ret;

	memset(&zs, 0, sizeof(zs));
	if (deflateInit2(&zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9,
			 Z_DEFAULT_STRATEGY) != Z_OK)
		return -ENOMEM;
	zs.next_in = (Bytef *)src;
	zs.avail_in = (uInt)len;
	zs.next_out = dst;
	zs.avail_out = (uInt)cap;
	ret = deflate(&zs, Z_FINISH);
	*out = cap - zs.avail_out;
	deflateEnd(&zs);
	return ret == Z_STREAM_END ? 0 : -ENOSPC;
}

static int zstd_cluster(const void *src, size_t len, void *dst, size_t cap,
			size_t *out)
{
	size_t r = ZSTD_compress(dst, cap, src, len, ZSTD_CLEVEL_DEFAULT);

	if (ZSTD_isError(r))
		return ZSTD_getErrorCode(r) == ZSTD_error_dstSize_tooSmall ?
			       -ENOSPC : -EIO;
	*out = r;
	return 0;
}

int qcow2_compress(enum qcow2_compression type, const void *src, size_t len,
		   void *dst, size_t cap, size_t *out_len)
{
	if (!src || !dst || !out_len || !len)
		return -EINVAL;
	switch (type) {
	case QCOW2_COMPRESSION_ZLIB:
		return deflate_cluster(src, len, dst, cap, out_len);
	case QCOW2_COMPRESSION_ZSTD:
		return zstd_cluster(src, len, dst, cap, out_len);
	}
	return -EINVAL;
}
