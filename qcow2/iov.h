/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* iovec helpers: slicing a request's buffers and filling them. */
#ifndef QCOW2_IOV_H
#define QCOW2_IOV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

/* Number of segments [off, off+len) of iov spans. */
int iov_count_range(const struct iovec *iov, int cnt, uint64_t off,
		    uint64_t len);
/* Write the segments of [off, off+len) into dst (room for iov_count_range).
 * Returns the number written. */
int iov_slice(const struct iovec *iov, int cnt, uint64_t off, uint64_t len,
	      struct iovec *dst);
void iov_memset(const struct iovec *iov, int cnt, uint64_t off, int c,
		uint64_t len);
void iov_from_buf(const struct iovec *iov, int cnt, uint64_t off,
		  const void *buf, uint64_t len);
void iov_to_buf(const struct iovec *iov, int cnt, uint64_t off, void *buf,
		uint64_t len);
/* True when every segment's base is a multiple of mem_align and every
 * length a multiple of len_align. */
bool iov_aligned(const struct iovec *iov, int cnt, size_t mem_align,
		 size_t len_align);
uint64_t iov_total(const struct iovec *iov, int cnt);

#endif
