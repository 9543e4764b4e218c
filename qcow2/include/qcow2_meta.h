/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * Offline, read-only access to an image's metadata, decoded (qcow2-img
 * dump). Nothing here goes through the engine or its caches: each call
 * reads the file with pread, so it shows what is on disk. Structures are
 * bounds-checked against the file; a table that lies past the end of the
 * file reads as zeros, as it would to a reader of the spec.
 *
 * A struct qcow2_meta is used by one thread at a time; different ones may
 * run on different threads. Everything it returns (the header, tables,
 * snapshot and bitmap lists) is owned as each function says: freed with
 * its qcow2_meta_free_* function, or living until qcow2_meta_close().
 */
#ifndef QCOW2_META_H
#define QCOW2_META_H

#include <stdbool.h>
#include <stdint.h>

#include "qcow2.h"

#ifdef __cplusplus
extern "C" {
#endif

struct qcow2_feature_name {
	uint8_t type; /* 0 incompatible, 1 compatible, 2 autoclear */
	uint8_t bit;
	char name[47];
};

/* A header extension: its type, and where its data lies in the file. */
struct qcow2_header_ext {
	uint32_t type;
	uint32_t length;
	uint64_t offset;
};

/* The header, decoded (field names are the spec's), with its extensions. */
struct qcow2_header {
	uint32_t version;
	uint64_t backing_file_offset;
	uint32_t backing_file_size;
	uint32_t cluster_bits;
	uint64_t size;
	uint32_t crypt_method;
	uint32_t l1_size;
	uint64_t l1_table_offset;
	uint64_t refcount_table_offset;
	uint32_t refcount_table_clusters;
	uint32_t nb_snapshots;
	uint64_t snapshots_offset;
	uint64_t incompatible_features;
	uint64_t compatible_features;
	uint64_t autoclear_features;
	uint32_t refcount_order;
	uint32_t header_length;
	uint8_t compression_type;

	/* extensions; strings are malloc'd and NUL-terminated */
	char *backing_file;
	char *backing_format;
	char *data_file;
	struct qcow2_feature_name *features;
	unsigned nb_features;
	uint32_t nb_bitmaps;
	uint64_t bitmap_directory_size;
	uint64_t bitmap_directory_offset;
	uint64_t crypto_header_offset;
	uint64_t crypto_header_length;
	unsigned nb_unknown_extensions;
	struct qcow2_header_ext *extensions; /* every one, in file order */
	unsigned nb_extensions;
};

struct qcow2_meta;

/* Open path read-only and decode its header. flags: 0 locks the image for
 * reading, as qcow2_open does; QCOW2_OPEN_RDWR locks it as a writer would
 * (the file is still only read: for a check that may repair);
 * QCOW2_OPEN_FORCE_SHARE takes no lock. Returns
 * 0 or a negative errno with a message in err (-EINVAL malformed, -ENOTSUP
 * unsupported, -EBUSY another process writes it). */
int qcow2_meta_open(const char *path, unsigned flags, struct qcow2_meta **out,
		    struct qcow2_error *err);
void qcow2_meta_close(struct qcow2_meta *m);
const struct qcow2_header *qcow2_meta_header(const struct qcow2_meta *m);
uint64_t qcow2_meta_file_size(const struct qcow2_meta *m);
/* Raw bytes; the part past the end of the file reads as zeros. */
int qcow2_meta_pread(struct qcow2_meta *m, void *buf, uint64_t len,
		     uint64_t off);

/* A table of big-endian 64-bit entries (L1, refcount table, bitmap table),
 * host-endian in a malloc'd array. -EFBIG beyond 64 MiB. */
int qcow2_meta_read_table(struct qcow2_meta *m, uint64_t off,
			  uint64_t entries, uint64_t **out);

/* What a whole L2 entry describes. With extended L2, a standard cluster is
 * NORMAL when any subcluster is allocated, ZERO when all read as zeros. */
enum qcow2_l2_type {
	QCOW2_L2_UNALLOCATED,
	QCOW2_L2_ZERO,
	QCOW2_L2_NORMAL,
	QCOW2_L2_COMPRESSED,
	QCOW2_L2_INVALID,   /* unaligned offset, contradictory bitmap */
};

struct qcow2_l2_entry {
	uint64_t raw;
	uint64_t bitmap;         /* extended L2: the subcluster bitmap */
	enum qcow2_l2_type type;
	uint64_t host_offset;    /* cluster (standard) or byte (compressed) */
	uint64_t compressed_len; /* bytes the descriptor covers (upper bound) */
	uint64_t reserved;       /* reserved bits that are set */
	bool copied;             /* bit 63 */
	bool zero_flag;          /* bit 0 (standard L2) */
};

/* Entries of one L2 table; the decoded entries of the table at off into
 * out[qcow2_meta_l2_entries()]. */
uint64_t qcow2_meta_l2_entries(const struct qcow2_meta *m);
int qcow2_meta_read_l2(struct qcow2_meta *m, uint64_t off,
		       struct qcow2_l2_entry *out);
void qcow2_meta_decode_l2(const struct qcow2_meta *m, uint64_t raw,
			  uint64_t bitmap, struct qcow2_l2_entry *e);

/* Refcounts: entries per block; one block decoded into out[entries]; the
 * refcount of the host cluster holding off (0 past the table). */
uint64_t qcow2_meta_refblock_entries(const struct qcow2_meta *m);
int qcow2_meta_read_refblock(struct qcow2_meta *m, uint64_t off,
			     uint64_t *out);
int qcow2_meta_refcount(struct qcow2_meta *m, uint64_t off, uint64_t *rc);

struct qcow2_snapshot_entry {
	uint64_t entry_offset;   /* where this entry lies in the file */
	uint32_t entry_size;     /* its bytes, padding included */
	uint64_t l1_table_offset;
	uint32_t l1_size;
	char *id;
	char *name;
	uint32_t date_sec, date_nsec;
	uint64_t vm_clock_nsec;
	uint64_t vm_state_size;  /* the 64-bit field when present */
	uint64_t disk_size;      /* valid when has_disk_size */
	bool has_disk_size;
	uint32_t extra_data_size;
};

/* The snapshot table, decoded; free with qcow2_meta_free_snapshots. */
int qcow2_meta_snapshots(struct qcow2_meta *m,
			 struct qcow2_snapshot_entry **out, uint32_t *n);
void qcow2_meta_free_snapshots(struct qcow2_snapshot_entry *s, uint32_t n);

#define QCOW2_BITMAP_IN_USE (1u << 0)
#define QCOW2_BITMAP_AUTO (1u << 1)
#define QCOW2_BITMAP_EXTRA_DATA_COMPATIBLE (1u << 2)

struct qcow2_bitmap_entry {
	uint64_t entry_offset;
	uint32_t entry_size;
	uint64_t table_offset;
	uint32_t table_size;     /* entries */
	uint32_t flags;
	uint8_t type;
	uint8_t granularity_bits;
	uint32_t extra_data_size;
	char *name;
};

/* The bitmap directory (whether or not the autoclear bit says it is
 * valid); free with qcow2_meta_free_bitmaps. */
int qcow2_meta_bitmaps(struct qcow2_meta *m, struct qcow2_bitmap_entry **out,
		       uint32_t *n);
void qcow2_meta_free_bitmaps(struct qcow2_bitmap_entry *b, uint32_t n);

#ifdef __cplusplus
}
#endif

#endif
