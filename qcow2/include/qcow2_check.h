/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * Checking an image's metadata graph, offline (qcow2-img check). Counts
 * follow qemu-img check: corruptions (a cluster referenced more often than
 * its refcount says, a table or cluster outside the file or unaligned, a
 * COPIED flag that contradicts the refcount, invalid entries), leaks (a
 * refcount higher than the references), and the allocation figures.
 *
 * A check reads the file with plain preads, never through the engine, on
 * the calling thread; callbacks in qcow2_check_opts run on it, and the
 * message they get lives until they return. Checks of different files may
 * run on different threads at once. Structs follow qcow2.h's growth rule
 * (reserved words: the caller zeroes them in options, the library in
 * results).
 */
#ifndef QCOW2_CHECK_H
#define QCOW2_CHECK_H

#include <stdint.h>

#include "qcow2.h"

#ifdef __cplusplus
extern "C" {
#endif

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
	bool marked_corrupt;           /* the header's corrupt bit (-r all
					  clears it when nothing is left) */
	uint64_t reserved[8];          /* zero: room for later fields */
};

/* Refcount value buckets of struct qcow2_image_stats: 0, 1, 2, 3, 4-7,
 * 8-15, 16 and more. */
#define QCOW2_RC_BUCKETS 7

/*
 * Metadata statistics (qcow2-img stats), gathered by the same walk. Guest
 * figures are of the active L1 table, over the virtual disk's clusters.
 */
struct qcow2_image_stats {
	uint64_t cluster_size;
	uint64_t guest_clusters;
	uint64_t data_clusters;        /* standard clusters with data */
	uint64_t zero_clusters;        /* read as zeros by their entry */
	uint64_t compressed_clusters;
	uint64_t unallocated_clusters; /* backing file, or zeros */
	uint64_t invalid_clusters;     /* entries that are corrupt */
	uint64_t compressed_bytes;     /* host bytes their descriptors cover */
	/* Fragmentation of the data clusters: an extent is a run of clusters
	 * adjacent both in the guest and in the file. */
	uint64_t extents;
	uint64_t adjacent_pairs;       /* guest-adjacent data clusters */
	uint64_t split_pairs;          /* of those, not adjacent in the file */
	/* Metadata */
	uint64_t l2_tables;            /* reachable from the active L1 */
	uint64_t l2_entries;           /* their entries */
	uint64_t l2_entries_used;      /* not unallocated */
	uint64_t refcount_blocks;
	uint64_t metadata_clusters;    /* header, tables, refcount structures,
					  snapshot table, bitmaps */
	uint64_t snapshot_only_clusters; /* data and tables only snapshots use */
	/* Host clusters of the file */
	uint64_t file_size;
	uint64_t file_clusters;
	uint64_t rc_buckets[QCOW2_RC_BUCKETS];
	uint64_t free_clusters;        /* refcount 0 and unreferenced */
	uint64_t leaked_clusters;
	uint64_t reserved[8];          /* zero: room for later fields */
};

struct qcow2_check_opts {
	enum qcow2_check_repair repair;
	/* Take no image lock (qemu-img -U); not with a repair. */
	bool force_share;
	/* Each problem found, with the host offset it concerns (may be NULL);
	 * leaks are reported one cluster at a time. */
	void (*report)(void *opaque, enum qcow2_check_problem kind,
		       uint64_t offset, const char *msg);
	/* Progress through the L2 tables (may be NULL). */
	void (*progress)(void *opaque, uint64_t done, uint64_t total);
	/* Filled when not NULL (of the image as found, before any repair). */
	struct qcow2_image_stats *stats;
	/* With reference set, every reference to the host cluster holding
	 * trace_offset is described to it (what refers, from where). */
	uint64_t trace_offset;
	void (*reference)(void *opaque, uint64_t offset, const char *what);
	void *opaque;
	/* Zero (a designated initializer does it): room for later options;
	 * a nonzero word fails the call with -EINVAL. */
	uint64_t reserved[4];
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

#ifdef __cplusplus
}
#endif

#endif
