/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * Offline (offline/): the image read and written with plain preads and
 * pwrites, without the engine: the on-disk reader (qcow2_meta.h), the
 * checker and its walk of the metadata graph, image creation. The engine
 * builds on the walk (the refcount rebuild of a dirty image), so this layer
 * sits below it and never calls it.
 */
#ifndef QCOW2_OFFLINE_H
#define QCOW2_OFFLINE_H

#include <stdint.h>

#include "qcow2.h"
#include "qcow2_check.h"
#include "qcow2_meta.h"

struct check_refs {
	uint32_t *refs;      /* references per cluster of the file (malloc'd;
				saturating at UINT32_MAX) */
	uint64_t n;          /* clusters of the file */
	uint64_t problems;   /* corruptions found by the walk (tables outside
				the file, unaligned, invalid entries...) */
	char first[256];     /* the first of them */
};

/*
 * Count every reference the metadata graph holds of the image open at fd
 * (read through a descriptor of its own: the engine's may be O_DIRECT;
 * no lock is taken, the caller holds the image's) (the header, active and
 * snapshot L1/L2 tables and their clusters, the snapshot table, valid
 * bitmaps), not those of the refcount structures. Returns 0 with *out
 * filled (free out->refs), or a negative errno with a message in err.
 */
int check_count_references(int fd, struct check_refs *out,
			   struct qcow2_error *err);

/* One check of the image at path, as qcow2_check() without repair; a
 * check that will repair (opts->repair) locks the image as a writer. */
int check_once(const char *path, const struct qcow2_check_opts *opts,
	       struct qcow2_image_stats *st, struct qcow2_check_result *res,
	       struct qcow2_error *err);

/* qcow2_meta_open() of a file already open at fd (taken over: closed by
 * qcow2_meta_close(), also on failure); name is for messages. */
int meta_open_fd(int fd, const char *name, unsigned flags,
		 struct qcow2_meta **out, struct qcow2_error *err);

#endif
