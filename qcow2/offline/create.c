/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * Creating an image. Everything is laid out up front, as a fresh image has
 * nothing to preserve:
 *
 *   header cluster | refcount table | refcount blocks | L1 | L2s | data
 *
 * L2 tables and data clusters exist only with preallocation (or a raw
 * external data file, whose clusters are mapped one to one, as qemu-img
 * does). The tables are written first, then synced, then the header, so a
 * crash never leaves a file that looks like a valid image but is not.
 */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/io.h"
#include "format/format.h"

#define CREATE_IO_CHUNK (1u << 20)

struct layout {
	uint64_t cs;
	uint32_t cluster_bits;
	uint64_t size;
	uint32_t l2_entry_size;
	uint64_t l2_entries;      /* per table */
	uint64_t l1_size;         /* entries */
	uint64_t l1_clusters;
	uint64_t n_l2;            /* L2 tables written */
	uint64_t n_data;          /* data clusters in the image file */
	uint64_t per_block;       /* refcount entries per block */
	uint64_t rt_clusters, rb_clusters;
	/* cluster indexes */
	uint64_t rt_at, rb_at, l1_at, l2_at, data_at, total;
};

static int fail(struct qcow2_error *err, int ret, const char *fmt, ...)
	QCOW2_PRINTF(3, 4);

static int fail(struct qcow2_error *err, int ret, const char *fmt, ...)
{
	va_list ap;

	if (err) {
		va_start(ap, fmt);
		vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
		va_end(ap);
	}
	return ret;
}

static int check_opts(const struct qcow2_create_opts *o, uint32_t version,
		      uint32_t cs, uint32_t rb, struct qcow2_error *err)
{
	if (cs < 512 || cs > (2u << 20) || (cs & (cs - 1)))
		return fail(err, -EINVAL, "Cluster size must be a power of two "
			    "between 512 and 2048k");
	if (rb > 64 || (rb & (rb - 1)))
		return fail(err, -EINVAL, "Refcount width must be a power of two "
			    "and may not exceed 64 bits");
	if (version != 2 && version != 3)
		return fail(err, -EINVAL, "Invalid compat version: use 0.10 or 1.1");
	if (version == 2) {
		if (rb != 16)
			return fail(err, -EINVAL, "Different refcount widths than 16 "
				    "bits require compatibility level 1.1 or above");
		if (o->lazy_refcounts)
			return fail(err, -EINVAL, "Lazy refcounts only supported with "
				    "compatibility level 1.1 and above");
		if (o->extended_l2)
			return fail(err, -EINVAL, "Extended L2 entries are only "
				    "supported with compatibility level 1.1 and above");
		if (o->compression_type != QCOW2_COMPRESSION_ZLIB)
			return fail(err, -EINVAL, "Non-zlib compression type is only "
				    "supported with compatibility level 1.1 and above");
		if (o->data_file)
			return fail(err, -EINVAL, "Data file is only supported with "
				    "compatibility level 1.1 and above");
	}
	if (o->compression_type != QCOW2_COMPRESSION_ZLIB &&
	    o->compression_type != QCOW2_COMPRESSION_ZSTD)
		return fail(err, -EINVAL, "Unknown compression type");
	if (o->extended_l2 && cs < 16384)
		return fail(err, -EINVAL, "Extended L2 entries are only supported "
			    "with cluster sizes of at least 16384 bytes");
	if (o->data_file_raw && !o->data_file)
		return fail(err, -EINVAL, "data-file-raw requires data-file");
	if (o->data_file_raw && o->backing_file)
		return fail(err, -EINVAL, "Backing file and data-file-raw cannot "
			    "be used at the same time");
	if (o->backing_file && o->preallocation != QCOW2_PREALLOC_OFF &&
	    !o->extended_l2)
		return fail(err, -EINVAL, "Backing file and preallocation can only "
			    "be used at the same time if extended_l2 is on");
	if (o->backing_format && !o->backing_file)
		return fail(err, -EINVAL, "Backing format requires a backing file");
	if (o->backing_format && strcmp(o->backing_format, "qcow2") &&
	    strcmp(o->backing_format, "raw"))
		return fail(err, -EINVAL, "Backing format '%s' is not supported "
			    "(use qcow2 or raw)", o->backing_format);
	if (o->backing_file && strlen(o->backing_file) > QCOW2_MAX_BACKING_NAME)
		return fail(err, -EINVAL, "Backing file name too long");
	if (o->preallocation > QCOW2_PREALLOC_FULL)
		return fail(err, -EINVAL, "Unknown preallocation mode");
	return 0;
}

static uint64_t div_up(uint64_t a, uint64_t b)
{
	return (a + b - 1) / b;
}

static int plan(const struct qcow2_create_opts *o, uint32_t cs, uint32_t rb,
		struct layout *l, struct qcow2_error *err)
{
	bool map_all = o->preallocation != QCOW2_PREALLOC_OFF || o->data_file_raw;
	uint64_t t;

	memset(l, 0, sizeof(*l));
	l->cs = cs;
	l->cluster_bits = (uint32_t)__builtin_ctz(cs);
	l->size = align_up(o->size, 512);
	l->l2_entry_size = o->extended_l2 ? 16 : 8;
	l->l2_entries = cs / l->l2_entry_size;
	l->l1_size = qcow2_l1_entries_needed(l->size, l->cluster_bits,
					     o->extended_l2);
	if (l->l1_size * 8 > QCOW2_MAX_L1_BYTES)
		return fail(err, -EFBIG, "Image size is too large for this "
			    "cluster size (the L1 table would exceed %u MiB)",
			    QCOW2_MAX_L1_BYTES >> 20);
	l->l1_clusters = l->l1_size ? div_up(l->l1_size * 8, cs) : 1;
	l->n_l2 = map_all ? l->l1_size : 0;
	l->n_data = map_all && !o->data_file ? div_up(l->size, cs) : 0;
	l->per_block = (uint64_t)cs * 8 / rb;
	l->rt_clusters = 1;
	l->rb_clusters = 1;
	/* Blocks count themselves and the table: iterate to a fixed point. */
	for (;;) {
		uint64_t rbn, rtn;

		t = 1 + l->rt_clusters + l->rb_clusters + l->l1_clusters +
		    l->n_l2 + l->n_data;
		rbn = div_up(t, l->per_block);
		rtn = div_up(rbn * 8, cs);
		if (rbn <= l->rb_clusters && rtn <= l->rt_clusters)
			break;
		l->rb_clusters = rbn > l->rb_clusters ? rbn : l->rb_clusters;
		l->rt_clusters = rtn > l->rt_clusters ? rtn : l->rt_clusters;
	}
	if (l->rt_clusters * cs > QCOW2_MAX_REFTABLE_BYTES)
		return fail(err, -EFBIG, "Image size is too large for this "
			    "cluster size and refcount width");
	l->rt_at = 1;
	l->rb_at = l->rt_at + l->rt_clusters;
	l->l1_at = l->rb_at + l->rb_clusters;
	l->l2_at = l->l1_at + l->l1_clusters;
	l->data_at = l->l2_at + l->n_l2;
	l->total = t;
	return 0;
}

/* Bytes of a table of n 8-byte entries to write: its used 4 KiB blocks,
 * at least one, at most its clusters (cap). */
static size_t table_bytes(uint64_t n, uint64_t cap)
{
	uint64_t len = align_up(n * 8, 4096);

	if (!len)
		len = 4096;
	return (size_t)(len < cap ? len : cap);
}

static int pwrite_all(int fd, const void *buf, size_t len, uint64_t off)
{
	const uint8_t *p = buf;

	while (len) {
		ssize_t n = pwrite(fd, p, len, (off_t)off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
		off += (uint64_t)n;
	}
	return 0;
}

static void put_be32(uint8_t *p, uint32_t v)
{
	v = htobe32(v);
	memcpy(p, &v, 4);
}

static void put_be64(uint8_t *p, uint64_t v)
{
	v = htobe64(v);
	memcpy(p, &v, 8);
}

static const struct {
	uint8_t type, bit;
	const char *name;
} feature_names[] = {
	{ 0, 0, "dirty bit" },
	{ 0, 1, "corrupt bit" },
	{ 0, 2, "external data file" },
	{ 0, 3, "compression type" },
	{ 0, 4, "extended L2 entries" },
	{ 1, 0, "lazy refcounts" },
	{ 2, 0, "bitmaps" },
	{ 2, 1, "raw external data" },
};

/* Append a header extension at *pos; false when it does not fit. */
static bool put_ext(uint8_t *buf, uint64_t cap, uint64_t *pos, uint32_t type,
		    const void *data, uint32_t len)
{
	uint64_t padded = align_up(len, 8);

	if (*pos + 8 + padded > cap)
		return false;
	put_be32(buf + *pos, type);
	put_be32(buf + *pos + 4, len);
	memcpy(buf + *pos + 8, data, len);
	*pos += 8 + padded;
	return true;
}

static int build_header(const struct qcow2_create_opts *o, uint32_t version,
			uint32_t rb, const struct layout *l, uint8_t *buf,
			struct qcow2_error *err)
{
	uint64_t cap = l->cs, pos, incompat = 0, compat = 0, autoclear = 0;
	uint32_t hlen = version == 3 ? 112 : QCOW2_V2_HEADER_LEN;
	size_t blen = o->backing_file ? strlen(o->backing_file) : 0;
	uint8_t table[sizeof(feature_names) / sizeof(feature_names[0])][48];

	if (o->extended_l2)
		incompat |= QCOW2_INCOMPAT_EXTL2;
	if (o->data_file)
		incompat |= QCOW2_INCOMPAT_DATA_FILE;
	if (o->compression_type == QCOW2_COMPRESSION_ZSTD)
		incompat |= QCOW2_INCOMPAT_COMPRESSION;
	if (o->lazy_refcounts)
		compat |= 1;
	if (o->data_file_raw)
		autoclear |= 2;

	memset(buf, 0, cap);
	put_be32(buf + 0, QCOW2_MAGIC);
	put_be32(buf + 4, version);
	put_be32(buf + 20, l->cluster_bits);
	put_be64(buf + 24, l->size);
	put_be32(buf + 36, (uint32_t)l->l1_size);
	put_be64(buf + 40, l->l1_at * l->cs);
	put_be64(buf + 48, l->rt_at * l->cs);
	put_be32(buf + 56, (uint32_t)l->rt_clusters);
	if (version == 3) {
		put_be64(buf + 72, incompat);
		put_be64(buf + 80, compat);
		put_be64(buf + 88, autoclear);
		put_be32(buf + 96, (uint32_t)__builtin_ctz(rb));
		put_be32(buf + 100, hlen);
		buf[104] = (uint8_t)o->compression_type;
	}
	pos = hlen;
	/* Room for the end marker and the backing file name is kept. */
	cap -= 8 + blen;
	if (blen > l->cs || l->cs < hlen + 8 + blen)
		return fail(err, -EINVAL, "Backing file name too long for a %llu "
			    "byte cluster", (unsigned long long)l->cs);
	if (o->backing_format &&
	    !put_ext(buf, cap, &pos, QCOW2_EXT_BACKING_FORMAT, o->backing_format,
		     (uint32_t)strlen(o->backing_format)))
		return fail(err, -EINVAL, "The header extensions do not fit in "
			    "one cluster");
	if (o->data_file &&
	    !put_ext(buf, cap, &pos, QCOW2_EXT_DATA_FILE, o->data_file,
		     (uint32_t)strlen(o->data_file)))
		return fail(err, -EINVAL, "The data file name does not fit in "
			    "the header cluster");
	if (version == 3) {
		memset(table, 0, sizeof(table));
		for (size_t i = 0; i < sizeof(feature_names) / sizeof(feature_names[0]); i++) {
			table[i][0] = feature_names[i].type;
			table[i][1] = feature_names[i].bit;
			strncpy((char *)table[i] + 2, feature_names[i].name, 46);
		}
		/* Optional: left out when it does not fit (small clusters). */
		put_ext(buf, cap, &pos, QCOW2_EXT_FEATURE_TABLE, table,
			sizeof(table));
	}
	pos += 8; /* end of extensions */
	if (blen) {
		memcpy(buf + pos, o->backing_file, blen);
		put_be64(buf + 8, pos);
		put_be32(buf + 16, (uint32_t)blen);
	}
	return 0;
}

/* Refcount block i: 1 for every cluster of the layout it covers. */
static void build_refblock(const struct layout *l, uint32_t order, uint64_t i,
			   uint8_t *buf)
{
	uint64_t first = i * l->per_block;

	memset(buf, 0, l->cs);
	for (uint64_t c = first; c < l->total && c < first + l->per_block; c++)
		refblock_set(buf, c - first, order, 1);
}

/* L2 table i of a preallocated image. */
static void build_l2(const struct qcow2_create_opts *o, const struct layout *l,
		     uint64_t i, uint8_t *buf)
{
	uint64_t clusters = div_up(l->size, l->cs);

	memset(buf, 0, l->cs);
	for (uint64_t j = 0; j < l->l2_entries; j++) {
		uint64_t c = i * l->l2_entries + j, host;

		if (c >= clusters)
			break;
		host = o->data_file ? c * l->cs : (l->data_at + c) * l->cs;
		put_be64(buf + j * l->l2_entry_size, host | QCOW_OFLAG_COPIED);
	}
}

static void progress(const struct qcow2_create_opts *o, uint64_t done,
		     uint64_t total)
{
	if (o->progress)
		o->progress(o->progress_opaque, done, total);
}

/* The data clusters' space: fallocate, or zeros written (full). */
static int prealloc_data(const struct qcow2_create_opts *o, int fd,
			 uint64_t off, uint64_t len, uint8_t *zeros)
{
	if (o->preallocation == QCOW2_PREALLOC_FALLOC ||
	    o->preallocation == QCOW2_PREALLOC_FULL) {
		int r = posix_fallocate(fd, (off_t)off, (off_t)len);
		if (r && o->preallocation == QCOW2_PREALLOC_FALLOC)
			return -r;
	}
	if (o->preallocation == QCOW2_PREALLOC_FULL) {
		for (uint64_t p = 0; p < len; p += CREATE_IO_CHUNK) {
			uint64_t n = len - p < CREATE_IO_CHUNK ? len - p : CREATE_IO_CHUNK;
			int r = pwrite_all(fd, zeros, n, off + p);
			if (r < 0)
				return r;
			progress(o, p + n, len);
		}
	}
	return 0;
}

int qcow2_create(const char *path, const struct qcow2_create_opts *opts,
		 struct qcow2_error *err)
{
	uint32_t version, cs, rb, order;
	struct layout l;
	uint8_t *buf = NULL, *zeros = NULL;
	uint64_t *rt = NULL;
	char *data_path = NULL;
	int fd = -1, dfd = -1, ret;
	uint64_t work, done = 0;

	if (!path || !opts || !RESERVED_ZERO(opts))
		return -EINVAL;
	version = opts->version ? opts->version : 3;
	cs = opts->cluster_size ? opts->cluster_size : 65536;
	rb = opts->refcount_bits ? opts->refcount_bits : 16;
	ret = check_opts(opts, version, cs, rb, err);
	if (ret < 0)
		return ret;
	ret = plan(opts, cs, rb, &l, err);
	if (ret < 0)
		return ret;
	order = (uint32_t)__builtin_ctz(rb);
	buf = malloc(cs);
	zeros = calloc(1, CREATE_IO_CHUNK);
	rt = calloc(1, l.rt_clusters * cs);
	if (!buf || !zeros || !rt) {
		ret = -ENOMEM;
		goto out;
	}
	ret = build_header(opts, version, rb, &l, buf, err);
	if (ret < 0)
		goto out;

	fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		ret = fail(err, -errno, "cannot create %s: %s", path, strerror(errno));
		goto out;
	}
	if (opts->data_file) {
		data_path = path_beside(path, opts->data_file);
		if (!data_path) {
			ret = -ENOMEM;
			goto out;
		}
		dfd = open(data_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (dfd < 0) {
			ret = fail(err, -errno, "cannot create data file %s: %s",
				   data_path, strerror(errno));
			goto out;
		}
	}

	work = l.rb_clusters + l.n_l2;
	/* Refcount table, blocks, L1, L2 tables. */
	for (uint64_t i = 0; i < l.rb_clusters; i++)
		put_be64((uint8_t *)rt + i * 8, (l.rb_at + i) * cs);
	/* Tables are written up to their last used 4 KiB block: the rest of
	 * their clusters stays a hole that reads as zeros (as qemu-img
	 * leaves it). */
	ret = pwrite_all(fd, rt, table_bytes(l.rb_clusters, l.rt_clusters * cs),
			 l.rt_at * cs);
	for (uint64_t i = 0; ret == 0 && i < l.rb_clusters; i++) {
		build_refblock(&l, order, i, buf);
		ret = pwrite_all(fd, buf, cs, (l.rb_at + i) * cs);
		progress(opts, ++done, work);
	}
	if (ret == 0) {
		uint8_t *l1 = calloc(1, l.l1_clusters * cs);
		if (!l1) {
			ret = -ENOMEM;
			goto out;
		}
		for (uint64_t i = 0; i < l.n_l2; i++)
			put_be64(l1 + i * 8, ((l.l2_at + i) * cs) | QCOW_OFLAG_COPIED);
		ret = pwrite_all(fd, l1, table_bytes(l.l1_size, l.l1_clusters * cs),
				 l.l1_at * cs);
		free(l1);
	}
	for (uint64_t i = 0; ret == 0 && i < l.n_l2; i++) {
		build_l2(opts, &l, i, buf);
		ret = pwrite_all(fd, buf, cs, (l.l2_at + i) * cs);
		progress(opts, ++done, work);
	}
	if (ret < 0) {
		ret = fail(err, ret, "cannot write %s: %s", path, strerror(-ret));
		goto out;
	}
	/* Data: in the image, or in the data file (mapped one to one). */
	if (l.n_data) {
		if (ftruncate(fd, (off_t)(l.total * cs)) < 0)
			ret = -errno;
		if (ret == 0)
			ret = prealloc_data(opts, fd, l.data_at * cs, l.n_data * cs,
					    zeros);
	} else if (ftruncate(fd, (off_t)(l.total * cs)) < 0) {
		ret = -errno;
	}
	if (ret == 0 && dfd >= 0) {
		if (opts->data_file_raw || opts->preallocation != QCOW2_PREALLOC_OFF)
			if (ftruncate(dfd, (off_t)l.size) < 0)
				ret = -errno;
		if (ret == 0 && opts->preallocation != QCOW2_PREALLOC_OFF)
			ret = prealloc_data(opts, dfd, 0, l.size, zeros);
		if (ret == 0 && fdatasync(dfd) < 0)
			ret = -errno;
	}
	if (ret < 0) {
		ret = fail(err, ret, "cannot preallocate %s: %s",
			   dfd >= 0 ? data_path : path, strerror(-ret));
		goto out;
	}
	/* The header last, once everything it points at is durable. */
	if (fdatasync(fd) < 0) {
		ret = fail(err, -errno, "cannot write %s: %s", path, strerror(errno));
		goto out;
	}
	ret = build_header(opts, version, rb, &l, buf, err);
	if (ret == 0)
		ret = pwrite_all(fd, buf, cs, 0);
	if (ret == 0 && fsync(fd) < 0)
		ret = -errno;
	if (ret < 0)
		ret = fail(err, ret, "cannot write the header of %s: %s", path,
			   strerror(-ret));
out:
	if (dfd >= 0) {
		close(dfd);
		if (ret < 0)
			unlink(data_path); /* we created it */
	}
	if (fd >= 0) {
		close(fd);
		if (ret < 0)
			unlink(path);
	}
	free(data_path);
	free(rt);
	free(zeros);
	free(buf);
	return ret;
}
