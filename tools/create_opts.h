/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* qemu-img style "-o key=value,..." creation options, shared by create and
 * convert. */
#ifndef QCOW2_TOOLS_CREATE_OPTS_H
#define QCOW2_TOOLS_CREATE_OPTS_H

#include <stdbool.h>

#include "qcow2.h"

/* Parse a comma-separated option list into o (later lists add to earlier
 * ones; "size=" sets o->size and *size_set). Prints a message and returns
 * -EINVAL on an unknown key or a bad value. */
int create_opts_parse(const char *list, struct qcow2_create_opts *o,
		      bool *size_set);

/* Free the option values parsed so far (at the end of the command). */
void create_opts_release(void);

/* One line, qemu-img style: "fmt=qcow2 cluster_size=65536 ... size=N". */
void create_opts_print(const char *path, const struct qcow2_create_opts *o);

/* Progress callback for qcow2_create() (opaque: bool *enabled). */
void create_opts_progress(void *opaque, uint64_t done, uint64_t total);

#define CREATE_OPTS_HELP \
	"Creation options (-o, comma-separated, as qemu-img takes them):\n" \
	"  size=SIZE                 virtual size (k/M/G/T suffixes)\n" \
	"  compat=0.10|1.1           qcow2 version 2 or 3 (default 1.1)\n" \
	"  cluster_size=SIZE         512 to 2M, a power of two (default 64k)\n" \
	"  refcount_bits=N           1, 2, 4, 8, 16, 32 or 64 (default 16)\n" \
	"  extended_l2=on|off        32 subclusters per cluster (cluster >= 16k)\n" \
	"  compression_type=zlib|zstd  for compressed clusters (default zlib)\n" \
	"  lazy_refcounts=on|off     record the lazy refcounts feature\n" \
	"  backing_file=NAME         backing file (relative names: beside IMAGE)\n" \
	"  backing_fmt=qcow2|raw     its format, recorded in the image\n" \
	"  data_file=NAME            external data file (created)\n" \
	"  data_file_raw=on|off      the data file is a valid raw image\n" \
	"  preallocation=off|metadata|falloc|full\n" \
	"                            map every cluster up front; falloc also\n" \
	"                            reserves the space, full writes zeros\n"

#endif
