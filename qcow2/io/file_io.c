/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * Host files: opening with the right flags, finding the alignment O_DIRECT
 * needs, and reads that honour it (bouncing through an aligned buffer when
 * the caller's offsets or buffers do not).
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/io.h"

void detect_alignment(int fd, uint32_t *align, uint32_t *mem_align)
{
	struct stat st;

	*align = 512;
	*mem_align = 512;
#ifdef STATX_DIOALIGN
	{
		struct statx stx;
		if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 &&
		    (stx.stx_mask & STATX_DIOALIGN) && stx.stx_dio_offset_align) {
			*align = stx.stx_dio_offset_align;
			*mem_align = stx.stx_dio_mem_align ? stx.stx_dio_mem_align : *align;
			return;
		}
	}
#endif
	if (fstat(fd, &st) == 0 && S_ISBLK(st.st_mode)) {
		int ssz = 0;
		if (ioctl(fd, BLKSSZGET, &ssz) == 0 && ssz > 0) {
			*align = (uint32_t)ssz;
			*mem_align = (uint32_t)ssz;
		}
	}
	/* Else 512: what every Linux file system accepts for O_DIRECT on
	 * 512-byte-sector devices; on 4Kn devices statx answers above. */
}

int qfile_open(struct qfile *f, const char *path, bool rdwr, bool direct,
	       bool lock, char *err, size_t errlen)
{
	struct stat st;
	int flags = (rdwr ? O_RDWR : O_RDONLY) | O_CLOEXEC;

	memset(f, 0, sizeof(*f));
	f->fd = -1;
	f->fd = open(path, flags | (direct ? O_DIRECT : 0));
	if (f->fd < 0 && direct && errno == EINVAL) {
		snprintf(err, errlen,
			 "%s: the file system does not support O_DIRECT; "
			 "open it with the writeback cache mode", path);
		return -EINVAL;
	}
	if (f->fd < 0) {
		int e = errno;
		snprintf(err, errlen, "%s: %s", path, strerror(e));
		return -e;
	}
	if (fstat(f->fd, &st) < 0) {
		int e = errno;
		snprintf(err, errlen, "%s: %s", path, strerror(e));
		close(f->fd);
		f->fd = -1;
		return -e;
	}
	if (S_ISBLK(st.st_mode)) {
		uint64_t sz = 0;
		if (ioctl(f->fd, BLKGETSIZE64, &sz) == 0)
			f->size = sz;
	} else if (S_ISREG(st.st_mode)) {
		f->size = (uint64_t)st.st_size;
	} else {
		snprintf(err, errlen, "%s: not a regular file or block device", path);
		close(f->fd);
		f->fd = -1;
		return -EINVAL;
	}
	if (lock) {
		int ret = file_lock(f->fd, rdwr, err, errlen);
		if (ret < 0) {
			close(f->fd);
			f->fd = -1;
			return ret;
		}
	}
	f->direct = direct;
	detect_alignment(f->fd, &f->align, &f->mem_align);
	if (f->mem_align < 512)
		f->mem_align = 512;
	f->path = strdup(path);
	if (!f->path) {
		close(f->fd);
		f->fd = -1;
		return -ENOMEM;
	}
	return 0;
}

void qfile_close(struct qfile *f)
{
	if (f->fd >= 0) {
		file_unlock(f->fd);
		close(f->fd);
	}
	f->fd = -1;
	free(f->path);
	f->path = NULL;
}

int qfile_pread_sync(struct qfile *f, void *buf, uint64_t len, uint64_t off)
{
	uint64_t a = f->direct ? f->align : 1;
	uint64_t start = align_down(off, a);
	uint64_t end = align_up(off + len, a);
	uint8_t *bounce;
	uint64_t done = 0;

	if (posix_memalign((void **)&bounce, f->mem_align, end - start))
		return -ENOMEM;
	while (done < end - start) {
		ssize_t r = pread(f->fd, bounce + done, end - start - done,
				  (off_t)(start + done));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			int e = errno;
			free(bounce);
			return -e;
		}
		if (r == 0 || (start + done + (uint64_t)r) % a) {
			/* end of file: the rest reads as zeros */
			done += (uint64_t)r;
			memset(bounce + done, 0, end - start - done);
			break;
		}
		done += (uint64_t)r;
	}
	memcpy(buf, bounce + (off - start), len);
	free(bounce);
	return 0;
}

/* op (no callback) performed now by the context's backend: 0 or -errno. */
static int qfile_perform(struct qcow2_ctx *ctx, struct io_op *op)
{
	int64_t r = ctx->be->ops->perform(ctx->be, op);

	return r < 0 ? (int)r : 0;
}

int qfile_write_now(struct qcow2_ctx *ctx, struct qfile *f, const void *buf,
		    uint64_t len, uint64_t off)
{
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
	struct io_op op = { .opcode = IO_OP_WRITE, .fd = f->fd, .offset = off,
			    .iov = &iov, .iovcnt = 1, .len = len };
	void *bounce = NULL;
	int ret;

	if (f->direct && (off % f->align || len % f->align))
		return -EINVAL; /* callers write whole blocks */
	if (f->direct && (uintptr_t)buf % f->mem_align) {
		if (posix_memalign(&bounce, f->mem_align, len))
			return -ENOMEM;
		memcpy(bounce, buf, len);
		iov.iov_base = bounce;
	}
	ret = qfile_perform(ctx, &op);
	free(bounce);
	return ret;
}

int qfile_sync_now(struct qcow2_ctx *ctx, struct qfile *f)
{
	struct io_op op = { .opcode = IO_OP_FSYNC, .fd = f->fd };

	if (f->no_sync)
		return 0;
	return qfile_perform(ctx, &op);
}

int qfile_reserve_now(struct qcow2_ctx *ctx, struct qfile *f, uint64_t off,
		      uint64_t len)
{
	struct io_op op = { .opcode = IO_OP_FALLOCATE, .fd = f->fd,
			    .offset = off, .len = len };

	return qfile_perform(ctx, &op);
}

static void file_read_complete(struct io_op *op, int64_t res)
{
	struct file_read *fr = (struct file_read *)op;
	int err = res < 0 ? (int)res : 0;

	if (fr->bounce && !fr->keep_bounce) {
		if (!err)
			iov_from_buf(fr->dst, fr->dstcnt, 0,
				     fr->bounce + fr->bounce_skip, fr->len);
		free(fr->bounce);
		fr->bounce = NULL;
	}
	fr->done(fr, err);
}

int file_read_start(struct qcow2_ctx *ctx, struct qfile *f, uint64_t off,
		    struct iovec *iov, int iovcnt, uint64_t len,
		    bool keep_bounce, struct file_read *fr,
		    file_read_done_fn done)
{
	memset(&fr->op, 0, sizeof(fr->op));
	fr->op.opcode = IO_OP_READ;
	fr->op.fd = f->fd;
	fr->op.complete = file_read_complete;
	fr->done = done;
	fr->len = len;
	fr->dst = iov;
	fr->dstcnt = iovcnt;
	fr->keep_bounce = keep_bounce;
	fr->bounce = NULL;

	if (!keep_bounce &&
	    (!f->direct ||
	     (off % f->align == 0 && len % f->align == 0 &&
	      iov_aligned(iov, iovcnt, f->mem_align, f->align)))) {
		fr->op.offset = off;
		fr->op.iov = iov;
		fr->op.iovcnt = iovcnt;
		fr->op.len = len;
	} else {
		uint64_t a = f->direct ? f->align : 1;
		uint64_t start = align_down(off, a);
		uint64_t end = align_up(off + len, a);

		if (posix_memalign((void **)&fr->bounce, f->mem_align, end - start))
			return -ENOMEM;
		fr->bounce_skip = off - start;
		fr->bounce_iov.iov_base = fr->bounce;
		fr->bounce_iov.iov_len = end - start;
		fr->op.offset = start;
		fr->op.iov = &fr->bounce_iov;
		fr->op.iovcnt = 1;
		fr->op.len = end - start;
	}
	ctx_queue(ctx, &fr->op);
	return 0;
}

static void file_write_complete(struct io_op *op, int64_t res)
{
	struct file_read *fw = (struct file_read *)op;

	free(fw->bounce);
	fw->bounce = NULL;
	fw->done(fw, res < 0 ? (int)res : 0);
}

int file_write_start(struct qcow2_ctx *ctx, struct qfile *f, uint64_t off,
		     struct iovec *iov, int iovcnt, uint64_t len,
		     struct file_read *fw, file_read_done_fn done)
{
	memset(&fw->op, 0, sizeof(fw->op));
	fw->op.opcode = IO_OP_WRITE;
	fw->op.fd = f->fd;
	fw->op.offset = off;
	fw->op.complete = file_write_complete;
	fw->done = done;
	fw->len = len;
	fw->bounce = NULL;
	if (f->direct && (off % f->align || len % f->align))
		return -EINVAL; /* callers write whole blocks */
	if (!f->direct || iov_aligned(iov, iovcnt, f->mem_align, f->align)) {
		fw->op.iov = iov;
		fw->op.iovcnt = iovcnt;
	} else {
		if (posix_memalign((void **)&fw->bounce, f->mem_align, len))
			return -ENOMEM;
		iov_to_buf(iov, iovcnt, 0, fw->bounce, len);
		fw->bounce_iov.iov_base = fw->bounce;
		fw->bounce_iov.iov_len = len;
		fw->op.iov = &fw->bounce_iov;
		fw->op.iovcnt = 1;
	}
	fw->op.len = len;
	ctx_queue(ctx, &fw->op);
	return 0;
}

char *path_beside(const char *image_path, const char *name)
{
	char *copy, *dir, *out;

	/* An image named without a directory has its neighbours named
	 * without one too (as QEMU names them). */
	if (name[0] == '/' || !strchr(image_path, '/'))
		return strdup(name);
	copy = strdup(image_path);
	if (!copy)
		return NULL;
	dir = dirname(copy);
	if (asprintf(&out, "%s/%s", dir, name) < 0)
		out = NULL;
	free(copy);
	return out;
}
