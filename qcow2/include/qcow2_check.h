/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * Checking an image's metadata graph, offline (qcow2-img check). Counts
 * follow qemu-img check: corruptions (a cluster referenced more often than
 * its refcount says, a table or cluster outside the file or unaligned, a
 * COPIED flag that contradicts the refcount, invalid entries), leaks (a
 * refcount higher than the references), and the allocation figures.
 */
#ifndef QCOW2_CHECK_H
#define QCOW2_CHECK_H

#include <stdint.h>

#include "qcow2.h"

enum qcow2_check_repair {
	QCOW2_CHECK_NO_REPAIR = 0,
	QCOW2_CHECK_REPAIR_LEAKS,  /* free leaked clusters */
	QCOW2_CHECK_REPAIR_ALL,    /* also rebuild refcounts that are too low */
};

enum qcow2_check_problem {
	QCOW2_CHECK_CORRUPTION,
	QCOW2_CHECK_LEAK,
	QCOW2_CHECK_ERROR,         /* the check itself could not read something */
};

struct qcow2_check_result {
	uint64_t corruptions;
	uint64_t leaks;
	uint64_t check_errors;
	uint64_t corruptions_fixed;
	uint64_t leaks_fixed;
	uint64_t total_clusters;       /* of the virtual disk */
	uint64_t allocated_clusters;   /* guest clusters with data (active) */
	uint64_t fragmented_clusters;  /* not host-contiguous with the previous */
	uint64_t compressed_clusters;
	uint64_t image_end_offset;     /* end of the last cluster in use */
};

struct qcow2_check_opts {
	enum qcow2_check_repair repair;
	/* Each problem found, with the host offset it concerns (may be NULL);
	 * leaks are reported one cluster at a time. */
	void (*report)(void *opaque, enum qcow2_check_problem kind,
		       uint64_t offset, const char *msg);
	/* Progress through the L2 tables (may be NULL). */
	void (*progress)(void *opaque, uint64_t done, uint64_t total);
	void *opaque;
};

/*
 * Check the image at path (its own metadata; backing files are not read).
 * Returns 0 with *res filled (problems are in the counts), or a negative
 * errno when the check could not complete (message in err): the header is
 * unreadable or unsupported. With a repair mode, refcounts are rebuilt when
 * that fixes what was found (leaks; with REPAIR_ALL also refcounts that are
 * too low), in a crash-safe order, and the image is checked again: *res
 * then describes the image after the repair, with the *_fixed counts set.
 */
int qcow2_check(const char *path, const struct qcow2_check_opts *opts,
		struct qcow2_check_result *res, struct qcow2_error *err);

#endif
