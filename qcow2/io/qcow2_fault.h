/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * The fault backend, for tests only: not a public header (the tests get it
 * through meson's libqcow2_fault_dep). A context made by
 * qcow2_ctx_new_fault() is the sync backend with failures injected where a
 * test asks, and a log of what reached the file.
 */
#ifndef QCOW2_FAULT_H
#define QCOW2_FAULT_H

#include <stdbool.h>
#include <stdint.h>

#include "qcow2.h"

#ifdef __cplusplus
extern "C" {
#endif

#define QCOW2_FAULT_READ (1u << 0)
#define QCOW2_FAULT_WRITE (1u << 1)
#define QCOW2_FAULT_FSYNC (1u << 2)
#define QCOW2_FAULT_FALLOCATE (1u << 3) /* hole punches, space reservation */

/*
 * The fault backend behaves like the sync one, and:
 * - fails the fail_at-th operation among those in fail_ops (1-based; 0:
 *   never) with -fail_errno, and every later one too if fail_persist;
 * - with log_fd >= 0, appends a record for every completed write and
 *   fdatasync (struct qcow2_fault_record, then the written bytes), so a
 *   test can rebuild the file as a power loss at any point would leave it;
 * - with hold_write, holds back the first write at host offset
 *   hold_offset, as a write that lands late: it is performed (and
 *   completes) right after a later write to the same offset, or once
 *   hold_fsyncs fdatasyncs have been performed since;
 * - with short_read, returns reads in pieces of that many bytes.
 * Operations performed outside the queue (open and close time header and
 * refcount writes, the space reservation) are counted, failed and logged
 * alike.
 */
struct qcow2_fault_opts {
	uint64_t fail_at;
	int fail_errno;
	unsigned fail_ops;
	bool fail_persist;
	int log_fd;
	bool hold_write;
	uint64_t hold_offset;
	unsigned hold_fsyncs;
	/* Reads return at most this many bytes a call (0: as many as asked),
	 * as FUSE or NFS may; the engine must resume them. */
	uint32_t short_read;
};

#define QCOW2_FAULT_REC_WRITE 1u
#define QCOW2_FAULT_REC_FSYNC 2u

struct qcow2_fault_record { /* little-endian on disk, 24 bytes */
	uint32_t type;
	int32_t fd;
	uint64_t offset;
	uint64_t len;
};

/* A context on the fault backend (opts: as for qcow2_ctx_new(), its
 * backend ignored; fault is copied). */
int qcow2_ctx_new_fault(const struct qcow2_ctx_opts *opts,
			const struct qcow2_fault_opts *fault,
			struct qcow2_ctx **out);

#ifdef __cplusplus
}
#endif

#endif
