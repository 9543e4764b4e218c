/* SPDX-License-Identifier: MIT OR Apache-2.0 */
#include <string.h>

#include "io/io.h"

/* Find the segment holding byte off; *skip is the offset within it. */
static int iov_seek(const struct iovec *iov, int cnt, uint64_t off,
		    uint64_t *skip)
{
	int i = 0;

	while (i < cnt && off >= iov[i].iov_len) {
		off -= iov[i].iov_len;
		i++;
	}
	*skip = off;
	return i;
}

int iov_count_range(const struct iovec *iov, int cnt, uint64_t off,
		    uint64_t len)
{
	uint64_t skip;
	int i = iov_seek(iov, cnt, off, &skip), n = 0;

	for (; i < cnt && len > 0; i++, skip = 0) {
		uint64_t take = iov[i].iov_len - skip;
		if (take == 0)
			continue;
		if (take > len)
			take = len;
		len -= take;
		n++;
	}
	return n;
}

int iov_slice(const struct iovec *iov, int cnt, uint64_t off, uint64_t len,
	      struct iovec *dst)
{
	uint64_t skip;
	int i = iov_seek(iov, cnt, off, &skip), n = 0;

	for (; i < cnt && len > 0; i++, skip = 0) {
		uint64_t take = iov[i].iov_len - skip;
		if (take == 0)
			continue;
		if (take > len)
			take = len;
		dst[n].iov_base = (char *)iov[i].iov_base + skip;
		dst[n].iov_len = take;
		len -= take;
		n++;
	}
	return n;
}

void iov_memset(const struct iovec *iov, int cnt, uint64_t off, int c,
		uint64_t len)
{
	uint64_t skip;
	int i = iov_seek(iov, cnt, off, &skip);

	for (; i < cnt && len > 0; i++, skip = 0) {
		uint64_t take = iov[i].iov_len - skip;
		if (take > len)
			take = len;
		memset((char *)iov[i].iov_base + skip, c, take);
		len -= take;
	}
}

void iov_from_buf(const struct iovec *iov, int cnt, uint64_t off,
		  const void *buf, uint64_t len)
{
	uint64_t skip;
	int i = iov_seek(iov, cnt, off, &skip);
	const char *p = buf;

	for (; i < cnt && len > 0; i++, skip = 0) {
		uint64_t take = iov[i].iov_len - skip;
		if (take > len)
			take = len;
		memcpy((char *)iov[i].iov_base + skip, p, take);
		p += take;
		len -= take;
	}
}

void iov_to_buf(const struct iovec *iov, int cnt, uint64_t off, void *buf,
		uint64_t len)
{
	uint64_t skip;
	int i = iov_seek(iov, cnt, off, &skip);
	char *p = buf;

	for (; i < cnt && len > 0; i++, skip = 0) {
		uint64_t take = iov[i].iov_len - skip;
		if (take > len)
			take = len;
		memcpy(p, (char *)iov[i].iov_base + skip, take);
		p += take;
		len -= take;
	}
}

bool iov_aligned(const struct iovec *iov, int cnt, size_t mem_align,
		 size_t len_align)
{
	for (int i = 0; i < cnt; i++) {
		if ((uintptr_t)iov[i].iov_base % mem_align ||
		    iov[i].iov_len % len_align)
			return false;
	}
	return true;
}

uint64_t iov_total(const struct iovec *iov, int cnt)
{
	uint64_t t = 0;

	for (int i = 0; i < cnt; i++)
		t += iov[i].iov_len;
	return t;
}
