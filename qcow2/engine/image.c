/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * Opening an image: header, external data file, L1 table, L2 slice cache and
 * the backing chain. Opening is synchronous (a control-plane operation);
 * only requests are asynchronous.
 */
#include <endian.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/engine.h"

#define MAX_CHAIN_DEPTH 64
#define DEFAULT_SLICE_SIZE 4096u
#define MAX_DEFAULT_CACHE (32ull << 20)
#define MIN_CACHE_SLICES 16u

struct chain_id {
	dev_t dev;
	ino_t ino;
};

void image_set_error(struct qcow2_image *img, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(img->last_error, sizeof(img->last_error), fmt, ap);
	va_end(ap);
	img->error_seq++;
}

void image_corrupt(struct qcow2_image *img, const char *fmt, ...)
{
	va_list ap;
	uint64_t v;

	va_start(ap, fmt);
	vsnprintf(img->last_error, sizeof(img->last_error), fmt, ap);
	va_end(ap);
	img->error_seq++;
	if (img->corrupt_reason[0])
		return;
	snprintf(img->corrupt_reason, sizeof(img->corrupt_reason), "%.250s: %s",
		 img->filename, img->last_error);
	img->hdr.incompatible_features |= QCOW2_INCOMPAT_CORRUPT;
	/* Version 2 headers have no feature bits; a repair handle rewrites
	 * the header itself. */
	if (!img->wb || img->hdr.version < 3 || (img->flags & QCOW2_OPEN_REPAIR))
		return;
	memcpy(&v, img->hdr_block + 72, 8);
	image_set_header_u64(img, 72, be64toh(v) | QCOW2_INCOMPAT_CORRUPT);
}

int image_refuse_if_corrupt(struct qcow2_image *img)
{
	if (!img->corrupt_reason[0])
		return 0;
	image_set_error(img, "writes are refused: the image was found corrupt "
			"while open (%s); close it and repair it with qcow2-img "
			"check -r all", img->corrupt_reason);
	return -EUCLEAN;
}

const char *qcow2_corrupt_reason(const struct qcow2_image *img)
{
	for (; img; img = img->backing)
		if (img->corrupt_reason[0])
			return img->corrupt_reason;
	return "";
}

const char *qcow2_last_error(const struct qcow2_image *img)
{
	return img->last_error;
}

static void set_err(struct qcow2_error *err, const char *fmt, ...)
	QCOW2_PRINTF(2, 3);

static void set_err(struct qcow2_error *err, const char *fmt, ...)
{
	va_list ap;

	if (!err)
		return;
	va_start(ap, fmt);
	vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
	va_end(ap);
}

/* Say which file of the chain an error is about: "WHAT NAME: reason". */
static void prefix_err(struct qcow2_error *err, const char *what,
		       const char *name)
{
	char inner[sizeof(err->msg)];

	if (!err)
		return;
	memcpy(inner, err->msg, sizeof(inner));
	/* The name once: the inner message may start with it already. */
	if (*name && !strncmp(inner, name, strlen(name)) &&
	    !strncmp(inner + strlen(name), ": ", 2))
		set_err(err, "%s%s", what, inner);
	else
		set_err(err, "%s%s: %s", what, name, inner);
}

struct slice_load_io {
	struct file_read fr;
	struct iovec iov;
	struct qcow2_image *img;
	struct slice_cache *cache;
	struct slice *slice;
};

static void slice_load_done(struct file_read *fr, int err)
{
	struct slice_load_io *io = (struct slice_load_io *)fr;
	struct slice_cache *c = io->cache;
	struct slice *s = io->slice;
	struct qcow2_image *img = io->img;

	free(io);
	write_gather_begin(img); /* (wakes the requests that wait for it) */
	slice_cache_load_done(c, s, err);
	write_gather_end(img);
}

int image_load_slice(void *opaque, struct slice_cache *c, struct slice *s)
{
	struct qcow2_image *img = opaque;
	struct slice_load_io *io = malloc(sizeof(*io));
	uint32_t size = slice_cache_slice_size(c);
	int ret;

	if (!io)
		return -ENOMEM;
	io->img = img;
	io->cache = c;
	io->slice = s;
	io->iov.iov_base = s->data;
	io->iov.iov_len = size;
	ret = file_read_start(img->ctx, &img->file, s->key, &io->iov, 1, size,
			      false, &io->fr, slice_load_done);
	if (ret < 0)
		free(io);
	return ret;
}

static int setup_l2_cache(struct qcow2_image *img,
			  const struct qcow2_open_opts *opts,
			  struct qcow2_error *err)
{
	uint64_t slice = opts && opts->l2_slice_size ? opts->l2_slice_size :
						       DEFAULT_SLICE_SIZE;
	uint64_t cache, nslots;

	if (slice & (slice - 1)) {
		set_err(err, "L2 slice size %llu is not a power of two",
			(unsigned long long)slice);
		return -EINVAL;
	}
	if (slice < 512)
		slice = 512;
	if (slice > img->cluster_size)
		slice = img->cluster_size;
	img->l2_slice_size = (uint32_t)slice;

	if (opts && opts->l2_cache_size) {
		cache = opts->l2_cache_size;
	} else {
		/* Enough to map the whole disk, within reason. */
		uint64_t clusters = (img->virtual_size + img->cluster_size - 1) >>
				    img->cluster_bits;
		cache = clusters * img->l2_entry_size;
		if (cache > MAX_DEFAULT_CACHE)
			cache = MAX_DEFAULT_CACHE;
	}
	nslots = (cache + slice - 1) / slice;
	if (!(opts && opts->l2_cache_size) && nslots < MIN_CACHE_SLICES)
		nslots = MIN_CACHE_SLICES;
	if (nslots < 2)
		nslots = 2;
	if (nslots > (1u << 24)) {
		set_err(err, "L2 cache size %llu is too large",
			(unsigned long long)cache);
		return -EINVAL;
	}
	return slice_cache_new((uint32_t)slice, (uint32_t)nslots,
			       img->file.mem_align, image_load_slice, img,
			       &img->l2_cache);
}

static int load_l1(struct qcow2_image *img, struct qcow2_error *err)
{
	uint64_t bytes = (uint64_t)img->l1_size * 8;
	int ret;

	if (!img->l1_size)
		return 0;
	img->l1 = malloc(bytes);
	if (!img->l1)
		return -ENOMEM;
	ret = qfile_pread_sync(&img->file, img->l1, bytes,
			       img->hdr.l1_table_offset);
	if (ret < 0) {
		set_err(err, "cannot read the L1 table: %s", strerror(-ret));
		return ret;
	}
	for (uint32_t i = 0; i < img->l1_size; i++)
		img->l1[i] = be64toh(img->l1[i]);
	return 0;
}

static int open_chain(struct qcow2_ctx *ctx, const char *path,
		      const struct qcow2_open_opts *opts,
		      struct qcow2_image **out, struct qcow2_error *err,
		      struct chain_id *ids, int depth);

/* What the write path does not handle yet is refused at open, with why. */
static int check_writable(struct qcow2_image *img, struct qcow2_error *err)
{
	uint64_t incompat = img->hdr.incompatible_features;

	if ((incompat & QCOW2_INCOMPAT_CORRUPT) &&
	    !(img->flags & QCOW2_OPEN_REPAIR)) {
		set_err(err, "the image is marked corrupt; it can only be opened "
			"read-only (repair it with qcow2-img check -r all)");
		return -EUCLEAN;
	}
	return 0;
}

static void cache_full(void *opaque, struct slice_cache *c)
{
	(void)c;
	/* Dirty slices hold every slot: write them back (in order). */
	writeback_start(opaque, QCOW2_FLUSH_EVICTION, NULL, NULL);
}

static int write_setup(struct qcow2_image *img, struct qcow2_error *err)
{
	int ret;

	if (img->file.direct && (img->l2_slice_size % img->file.align ||
				 img->cluster_size % img->file.align)) {
		set_err(err, "clusters or L2 slices (%u bytes) are smaller than the "
			"device's block (%u bytes): open it with the writeback cache "
			"mode to write it", img->l2_slice_size, img->file.align);
		return -ENOTSUP;
	}
	if (img->data->direct &&
	    (1ull << img->subcluster_bits) % img->data->align) {
		set_err(err, "subclusters (%llu bytes) are smaller than the device's "
			"block (%u bytes): open it with the writeback cache mode to "
			"write it", 1ull << img->subcluster_bits, img->data->align);
		return -ENOTSUP;
	}
	/* The header's first block, rewritten in place when header fields
	 * change (a single-block write). */
	img->hdr_block_len = img->file.align > 512 ? img->file.align : 512;
	if (img->hdr_block_len < img->hdr.header_length)
		img->hdr_block_len = (uint32_t)align_up(img->hdr.header_length, 512);
	if (posix_memalign((void **)&img->hdr_block, img->file.mem_align,
			   img->hdr_block_len))
		return -ENOMEM;
	ret = qfile_pread_sync(&img->file, img->hdr_block, img->hdr_block_len, 0);
	if (ret < 0)
		return ret;
	if (img->hdr.version >= 3 && !(img->flags & QCOW2_OPEN_REPAIR) &&
	    (img->hdr.autoclear_features & QCOW2_AUTOCLEAR_BITMAPS)) {
		/* Persistent bitmaps are not kept up to date by our writes: the
		 * autoclear bit is cleared, durably, before the first one, so
		 * that nobody trusts them afterwards (the spec's rule for
		 * writers that do not maintain a feature). */
		uint64_t v = htobe64(img->hdr.autoclear_features &
				     ~QCOW2_AUTOCLEAR_BITMAPS);
		memcpy(img->hdr_block + 88, &v, 8);
		ret = qfile_write_now(img->ctx, &img->file, img->hdr_block,
				      img->hdr_block_len, 0);
		if (ret == 0)
			ret = qfile_sync_now(img->ctx, &img->file);
		if (ret < 0) {
			set_err(err, "cannot clear the bitmaps bit in the header of "
				"%s: %s", img->filename, strerror(-ret));
			return ret;
		}
		img->hdr.autoclear_features &= ~QCOW2_AUTOCLEAR_BITMAPS;
	}
	if ((img->hdr.incompatible_features & QCOW2_INCOMPAT_DIRTY) ||
	    (img->flags & QCOW2_OPEN_REPAIR)) {
		/* Not closed cleanly with lazy refcounts: the refcounts on
		 * disk are stale; rebuild them before the first write. */
		ret = refcount_rebuild(img);
		if (ret < 0) {
			set_err(err, "%s", img->last_error[0] ? img->last_error :
				"cannot rebuild the refcounts of the dirty image");
			return ret;
		}
		if (img->flags & QCOW2_OPEN_REPAIR)
			return 0; /* no write path: bitmaps stay valid */
	}
	ret = refcount_open(img);
	if (ret < 0) {
		set_err(err, "%s", img->last_error[0] ? img->last_error :
							"cannot load the refcount table");
		return ret;
	}
	ret = cluster_writes_init(img);
	if (ret < 0)
		return ret;
	ret = writeback_init(img);
	if (ret < 0)
		return ret;
	slice_cache_set_full_handler(img->l2_cache, cache_full);
	slice_cache_set_full_handler(img->rc_cache, cache_full);
	return 0;
}

static int open_backing(struct qcow2_image *img,
			const struct qcow2_open_opts *opts,
			struct qcow2_error *err, struct chain_id *ids,
			int depth)
{
	const char *fmt = img->hdr.backing_format;
	struct qcow2_open_opts bopts = { 0 };
	char *path;
	int ret;

	if (!fmt) {
		set_err(err,
			"the image names backing file '%s' without its format, and "
			"formats are never probed; record it with: qemu-img rebase -u "
			"-b '%s' -F qcow2|raw",
			img->hdr.backing_file, img->hdr.backing_file);
		return -EINVAL;
	}
	if (strcmp(fmt, "qcow2") == 0) {
		bopts.flags = 0;
	} else if (strcmp(fmt, "raw") == 0) {
		bopts.flags = QCOW2_OPEN_RAW;
	} else {
		set_err(err, "backing file '%s' has format '%s'; only qcow2 and raw "
			"backing files are supported", img->hdr.backing_file, fmt);
		return -ENOTSUP;
	}
	bopts.flags |= opts ? (opts->flags & QCOW2_OPEN_BUFFERED) : 0;
	bopts.l2_slice_size = opts ? opts->l2_slice_size : 0;
	path = img->backing_path;
	if (opts && opts->allow_file) {
		bopts.allow_file = opts->allow_file;
		bopts.allow_file_opaque = opts->allow_file_opaque;
		ret = opts->allow_file(opts->allow_file_opaque, path, "backing file");
		if (ret < 0) {
			set_err(err, "%s names backing file '%s', which the caller "
				"does not allow here", img->filename, path);
			return ret;
		}
	}
	ret = open_chain(img->ctx, path, &bopts, &img->backing, err, ids,
			 depth + 1);
	if (ret < 0)
		prefix_err(err, "backing file ", path);
	return ret;
}

static int open_data_file(struct qcow2_image *img,
			  const struct qcow2_open_opts *opts,
			  struct qcow2_error *err)
{
	char *path;
	int ret;

	if (opts && opts->data_file)
		path = strdup(opts->data_file);
	else if (img->hdr.data_file)
		path = path_beside(img->filename, img->hdr.data_file);
	else {
		set_err(err, "the image needs an external data file but does not "
			"name one; pass its path explicitly");
		return -EINVAL;
	}
	if (!path)
		return -ENOMEM;
	if (!(opts && opts->data_file) && opts && opts->allow_file) {
		ret = opts->allow_file(opts->allow_file_opaque, path, "data file");
		if (ret < 0) {
			set_err(err, "%s names external data file '%s', which the "
				"caller does not allow here", img->filename, path);
			free(path);
			return ret;
		}
	}
	ret = qfile_open(&img->data_store, path, img->flags & QCOW2_OPEN_RDWR,
			 !(img->flags & QCOW2_OPEN_BUFFERED),
			 !(img->flags & QCOW2_OPEN_FORCE_SHARE), err ? err->msg : NULL,
			 err ? sizeof(err->msg) : 0);
	if (ret < 0)
		prefix_err(err, "external data file", "");
	img->data_store.no_sync = img->flags & QCOW2_OPEN_UNSAFE;
	free(path);
	if (ret < 0)
		return ret;
	img->data = &img->data_store;
	img->has_data_file = true;
	return 0;
}

static int open_qcow2(struct qcow2_image *img,
		      const struct qcow2_open_opts *opts,
		      struct qcow2_error *err)
{
	uint64_t want = 4096, have;
	uint8_t *buf;
	int ret;

	/* The header cluster: its first 4 KiB say how big it is. */
	if (img->file.size >= 24) {
		uint8_t peek[24];
		ret = qfile_pread_sync(&img->file, peek, sizeof(peek), 0);
		if (ret < 0) {
			set_err(err, "cannot read the header: %s", strerror(-ret));
			return ret;
		}
		uint32_t cb = (uint32_t)peek[20] << 24 | (uint32_t)peek[21] << 16 |
			      (uint32_t)peek[22] << 8 | peek[23];
		if (cb >= QCOW2_MIN_CLUSTER_BITS && cb <= QCOW2_MAX_CLUSTER_BITS &&
		    (1ull << cb) > want)
			want = 1ull << cb;
	}
	have = want < img->file.size ? want : img->file.size;
	buf = malloc(want);
	if (!buf)
		return -ENOMEM;
	ret = qfile_pread_sync(&img->file, buf, want, 0);
	if (ret < 0) {
		set_err(err, "cannot read the header: %s", strerror(-ret));
		free(buf);
		return ret;
	}
	ret = qcow2_header_parse(buf, have, img->file.size, &img->hdr,
				 err ? err->msg : NULL, err ? sizeof(err->msg) : 0);
	free(buf);
	if (ret < 0)
		return ret;

	if (img->flags & QCOW2_OPEN_RDWR) {
		ret = check_writable(img, err);
		if (ret < 0)
			return ret;
	}

	img->virtual_size = img->hdr.size;
	img->cluster_bits = img->hdr.cluster_bits;
	img->cluster_size = 1ull << img->cluster_bits;
	img->extl2 = img->hdr.incompatible_features & QCOW2_INCOMPAT_EXTL2;
	img->l2_entry_size = img->extl2 ? 16 : 8;
	img->l2_bits = img->cluster_bits - (img->extl2 ? 4 : 3);
	img->subcluster_bits = img->extl2 ? img->cluster_bits - 5 : img->cluster_bits;
	img->l1_size = img->hdr.l1_size;
	img->data = &img->file;
	cluster_alloc_init(img);

	if (img->hdr.incompatible_features & QCOW2_INCOMPAT_DATA_FILE) {
		ret = open_data_file(img, opts, err);
		if (ret < 0)
			return ret;
	}
	if (img->data->align > img->block_size)
		img->block_size = img->data->align;
	ret = load_l1(img, err);
	if (ret < 0)
		return ret;
	ret = setup_l2_cache(img, opts, err);
	if (ret < 0)
		return ret;
	img->refcounts.cache_bytes = opts ? opts->refcount_cache_size : 0;
	if (img->flags & QCOW2_OPEN_RDWR)
		return write_setup(img, err);
	return 0;
}

static int open_chain(struct qcow2_ctx *ctx, const char *path,
		      const struct qcow2_open_opts *opts,
		      struct qcow2_image **out, struct qcow2_error *err,
		      struct chain_id *ids, int depth)
{
	unsigned flags = opts ? opts->flags : 0;
	struct qcow2_image *img;
	struct stat st;
	int ret;

	if (depth >= MAX_CHAIN_DEPTH) {
		set_err(err, "backing chain is deeper than %d images", MAX_CHAIN_DEPTH);
		return -ELOOP;
	}
	img = calloc(1, sizeof(*img));
	if (!img)
		return -ENOMEM;
	img->ctx = ctx;
	img->flags = flags;
	img->file.fd = -1;
	img->data_store.fd = -1;
	img->filename = strdup(path);
	if (!img->filename) {
		free(img);
		return -ENOMEM;
	}
	ret = qfile_open(&img->file, path, flags & QCOW2_OPEN_RDWR,
			 !(flags & QCOW2_OPEN_BUFFERED),
			 !(flags & QCOW2_OPEN_FORCE_SHARE), err ? err->msg : NULL,
			 err ? sizeof(err->msg) : 0);
	if (ret < 0)
		goto fail;
	img->file.no_sync = flags & QCOW2_OPEN_UNSAFE;
	if (fstat(img->file.fd, &st) < 0) {
		ret = -errno;
		goto fail;
	}
	for (int i = 0; i < depth; i++) {
		if (ids[i].dev == st.st_dev && ids[i].ino == st.st_ino) {
			set_err(err, "backing chain loop: %s is its own backing file "
				"(directly or through others)", path);
			ret = -ELOOP;
			goto fail;
		}
	}
	ids[depth].dev = st.st_dev;
	ids[depth].ino = st.st_ino;
	img->block_size = img->file.align;
	img->data = &img->file;

	if (flags & QCOW2_OPEN_RAW) {
		if (flags & QCOW2_OPEN_RDWR) {
			set_err(err, "read-write access is not implemented yet");
			ret = -ENOTSUP;
			goto fail;
		}
		img->raw = true;
		/* In whole sectors, as QEMU presents a raw file: the tail of
		 * the last one reads zeros. */
		img->virtual_size = align_up(img->file.size, 512);
		*out = img;
		return 0;
	}
	ret = open_qcow2(img, opts, err);
	if (ret < 0)
		goto fail;
	if (img->hdr.backing_file) {
		img->backing_path = path_beside(img->filename, img->hdr.backing_file);
		if (!img->backing_path)
			return -ENOMEM;
	}
	if (img->hdr.backing_file && !(flags & QCOW2_OPEN_NO_BACKING)) {
		ret = open_backing(img, opts, err, ids, depth);
		if (ret < 0)
			goto fail;
	}
	*out = img;
	return 0;
fail:
	qcow2_close(img, NULL);
	return ret;
}

int qcow2_open(struct qcow2_ctx *ctx, const char *path,
	       const struct qcow2_open_opts *opts, struct qcow2_image **out,
	       struct qcow2_error *err)
{
	struct chain_id ids[MAX_CHAIN_DEPTH];

	if (err)
		err->msg[0] = '\0';
	if (!ctx || !path || !out || (opts && !RESERVED_ZERO(opts)))
		return -EINVAL;
	return open_chain(ctx, path, opts, out, err, ids, 0);
}

/*
 * Write everything back. Decrements released by a flush (rule 3) may need
 * refcount slices loaded, and they dirty refcount blocks again: run them to
 * completion, then flush again, until nothing is left (a few rounds).
 */
static int close_flush(struct qcow2_image *img)
{
	cluster_alloc_bytes_release(img);
	for (int round = 0; round < 8; round++) {
		struct sync_wait w = { .img = img };
		int ret;

		if (round > 0 && !writeback_pending(img) &&
		    !cluster_frees_pending(img, false))
			break;
		ret = sync_finish(img, &w, writeback_start(img, QCOW2_FLUSH_CLOSE,
							   sync_cb, &w));
		if (ret < 0)
			return ret;
		/* Let the released decrements finish their slice loads. */
		while (cluster_frees_pending(img, true) &&
		       qcow2_ctx_inflight(img->ctx) > 0)
			if ((ret = qcow2_ctx_process(img->ctx, true)) < 0)
				return ret;
	}
	/* Decrements that could not be made (metadata frozen by an error)
	 * leave leaks at worst: not an error of the close. */
	return 0;
}

int qcow2_close(struct qcow2_image *img, struct qcow2_error *err)
{
	int ret = 0;

	if (err)
		err->msg[0] = '\0';
	if (!img)
		return 0;
	if (img->wb) {
		img->last_error[0] = '\0'; /* set by the final flush's failure */
		ret = close_flush(img);
		if (ret < 0 && err)
			snprintf(err->msg, sizeof(err->msg), "%s",
				 img->last_error[0] ? img->last_error :
				 strerror(-ret));
		while (cluster_punches_inflight(img) &&
		       qcow2_ctx_inflight(img->ctx) > 0)
			if (qcow2_ctx_process(img->ctx, true) < 0)
				break;
		writeback_clear_dirty_bit(img);
		cluster_alloc_trim(img);
	}
	writeback_free(img);
	cluster_writes_free(img);
	free(img->hdr_block);
	refcount_close(img);
	cluster_alloc_close(img);
	if (img->backing)
		qcow2_close(img->backing, NULL); /* read-only: nothing to flush */
	slice_cache_free(img->l2_cache);
	read_zcache_free(img);
	free(img->l1);
	qcow2_header_free(&img->hdr);
	qfile_close(&img->file);
	if (img->data_store.path || img->data_store.fd >= 0)
		qfile_close(&img->data_store);
	free(img->backing_path);
	free(img->filename);
	free(img);
	return ret;
}

struct qcow2_image *qcow2_backing(const struct qcow2_image *img)
{
	return img->backing;
}

const char *qcow2_feature_name(const struct qcow2_image *img, int type,
			       int bit)
{
	return qcow2_header_feature_name(&img->hdr, type, bit);
}

int qcow2_get_info(const struct qcow2_image *img, struct qcow2_info *info)
{
	const struct qcow2_header *h = &img->hdr;

	memset(info, 0, sizeof(*info));
	info->format = img->raw ? QCOW2_FORMAT_RAW : QCOW2_FORMAT_QCOW2;
	info->filename = img->filename;
	info->virtual_size = img->virtual_size;
	info->file_size = img->file.size;
	{
		struct stat st;
		if (fstat(img->file.fd, &st) == 0)
			info->file_allocated = (uint64_t)st.st_blocks * 512;
	}
	info->block_size = img->block_size;
	info->mem_align = img->data->mem_align > img->file.mem_align ?
				  img->data->mem_align : img->file.mem_align;
	info->read_only = !(img->flags & QCOW2_OPEN_RDWR) || !img->wb;
	info->direct = img->file.direct;
	if (img->raw)
		return 0;
	info->version = h->version;
	info->cluster_size = (uint32_t)img->cluster_size;
	info->refcount_bits = 1u << h->refcount_order;
	info->header_length = h->header_length;
	info->incompatible_features = h->incompatible_features;
	info->compatible_features = h->compatible_features;
	info->autoclear_features = h->autoclear_features;
	info->compression_type = h->compression_type;
	info->extended_l2 = img->extl2;
	info->dirty = h->incompatible_features & QCOW2_INCOMPAT_DIRTY;
	info->corrupt = h->incompatible_features & QCOW2_INCOMPAT_CORRUPT;
	info->lazy_refcounts = h->compatible_features & QCOW2_COMPAT_LAZY_REFCOUNTS;
	info->l1_size = h->l1_size;
	info->l1_table_offset = h->l1_table_offset;
	info->refcount_table_offset = h->refcount_table_offset;
	info->refcount_table_clusters = h->refcount_table_clusters;
	info->nb_snapshots = h->nb_snapshots;
	info->snapshots_offset = h->snapshots_offset;
	info->nb_bitmaps = h->nb_bitmaps;
	info->backing_file = h->backing_file;
	info->backing_path = img->backing_path;
	info->backing_format = h->backing_format;
	info->data_file = h->data_file;
	info->data_file_raw = h->autoclear_features & QCOW2_AUTOCLEAR_DATA_FILE_RAW;
	info->l2_slice_size = img->l2_slice_size;
	info->l2_cache_size = img->l2_cache ?
				      (uint64_t)img->l2_slice_size *
					      slice_cache_capacity(img->l2_cache) : 0;
	return 0;
}

int qcow2_get_stats(const struct qcow2_image *img, struct qcow2_stats *st)
{
	uint64_t since[3] = { img->dirty.since_ns, 0, 0 }, oldest = 0;

	*st = img->stats;
	if (img->l2_cache) {
		slice_cache_stats(img->l2_cache, &st->l2_cache);
		st->dirty_slices += slice_cache_dirty_count(img->l2_cache);
		since[1] = slice_cache_dirty_since(img->l2_cache);
	}
	if (img->rc_cache) {
		slice_cache_stats(img->rc_cache, &st->refcount_cache);
		st->dirty_slices += slice_cache_dirty_count(img->rc_cache);
		since[2] = slice_cache_dirty_since(img->rc_cache);
	}
	for (int i = 0; i < 3; i++)
		if (since[i] && (!oldest || since[i] < oldest))
			oldest = since[i];
	if (oldest) {
		uint64_t now = monotonic_ns();
		st->dirty_age_ns = now > oldest ? now - oldest : 0;
	}
	return 0;
}
