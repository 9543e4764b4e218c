/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * Offline metadata reader (qcow2_meta.h): plain preads of what is on disk,
 * decoded field by field. Used by qcow2-img dump and by the checker.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qcow2_meta.h"
#include "io/io.h"
#include "offline/offline.h"
#include "format/format.h"

#define META_MAX_TABLE (64ull << 20)

struct qcow2_meta {
	int fd;
	uint64_t file_size;
	struct qcow2_header h;
	uint64_t cs;
	uint32_t l2e;          /* L2 entry size */
	uint8_t *buf;          /* one cluster */
	uint64_t *reftable;    /* loaded by the first qcow2_meta_refcount */
	uint64_t reftable_entries;
};

int qcow2_meta_pread(struct qcow2_meta *m, void *buf, uint64_t len,
		     uint64_t off)
{
	uint8_t *p = buf;

	while (len) {
		ssize_t r = pread(m->fd, p, len, (off_t)off);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0) { /* past the end: zeros */
			memset(p, 0, len);
			return 0;
		}
		p += r;
		off += (uint64_t)r;
		len -= (uint64_t)r;
	}
	return 0;
}

int qcow2_meta_open(const char *path, unsigned flags, struct qcow2_meta **out,
		    struct qcow2_error *err)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	err->msg[0] = '\0';
	if (fd < 0) {
		snprintf(err->msg, sizeof(err->msg), "cannot open %s: %s", path,
			 strerror(errno));
		return -errno;
	}
	return meta_open_fd(fd, path, flags, out, err);
}

int meta_open_fd(int fd, const char *name, unsigned flags,
		 struct qcow2_meta **out, struct qcow2_error *err)
{
	struct qcow2_meta *m = calloc(1, sizeof(*m));
	uint8_t *hdr = NULL;
	struct stat st;
	size_t want;
	int ret;

	err->msg[0] = '\0';
	if (!m) {
		close(fd);
		return -ENOMEM;
	}
	m->fd = fd;
	if (fstat(m->fd, &st) < 0) {
		ret = -errno;
		snprintf(err->msg, sizeof(err->msg), "cannot open %s: %s", name,
			 strerror(errno));
		goto fail;
	}
	if (!(flags & QCOW2_OPEN_FORCE_SHARE)) {
		ret = file_lock(m->fd, flags & QCOW2_OPEN_RDWR, err->msg,
				sizeof(err->msg));
		if (ret < 0)
			goto fail;
	}
	m->file_size = (uint64_t)st.st_size;
	/* The header and its extensions live in the first cluster (2 MiB at
	 * most); the parser bounds itself by cluster_bits. */
	want = m->file_size < (2u << 20) ? (size_t)m->file_size : (2u << 20);
	hdr = malloc(want ? want : 1);
	if (!hdr) {
		ret = -ENOMEM;
		goto fail;
	}
	ret = qcow2_meta_pread(m, hdr, want, 0);
	if (ret == 0)
		ret = qcow2_header_parse(hdr, want, m->file_size, &m->h, err->msg,
					 sizeof(err->msg));
	free(hdr);
	if (ret < 0)
		goto fail;
	m->cs = 1ull << m->h.cluster_bits;
	m->l2e = (m->h.incompatible_features & QCOW2_INCOMPAT_EXTL2) ? 16 : 8;
	m->buf = malloc(m->cs);
	if (!m->buf) {
		ret = -ENOMEM;
		goto fail;
	}
	*out = m;
	return 0;
fail:
	if (ret == -ENOMEM && !err->msg[0])
		snprintf(err->msg, sizeof(err->msg), "out of memory");
	qcow2_meta_close(m);
	return ret;
}

void qcow2_meta_close(struct qcow2_meta *m)
{
	if (!m)
		return;
	if (m->fd >= 0)
		close(m->fd);
	qcow2_header_free(&m->h);
	free(m->buf);
	free(m->reftable);
	free(m);
}

const struct qcow2_header *qcow2_meta_header(const struct qcow2_meta *m)
{
	return &m->h;
}

uint64_t qcow2_meta_file_size(const struct qcow2_meta *m)
{
	return m->file_size;
}

int qcow2_meta_read_table(struct qcow2_meta *m, uint64_t off,
			  uint64_t entries, uint64_t **out)
{
	uint64_t *t;
	int ret;

	if (entries > META_MAX_TABLE / 8)
		return -EFBIG;
	t = malloc(entries ? entries * 8 : 8);
	if (!t)
		return -ENOMEM;
	ret = qcow2_meta_pread(m, t, entries * 8, off);
	if (ret < 0) {
		free(t);
		return ret;
	}
	for (uint64_t i = 0; i < entries; i++)
		t[i] = be64_at((const uint8_t *)&t[i]);
	*out = t;
	return 0;
}

uint64_t qcow2_meta_l2_entries(const struct qcow2_meta *m)
{
	return m->cs / m->l2e;
}

void qcow2_meta_decode_l2(const struct qcow2_meta *m, uint64_t raw,
			  uint64_t bitmap, struct qcow2_l2_entry *e)
{
	bool extl2 = m->l2e == 16;
	bool data_file = m->h.incompatible_features & QCOW2_INCOMPAT_DATA_FILE;
	uint64_t off = raw & L2E_OFFSET_MASK;
	bool allocated;

	memset(e, 0, sizeof(*e));
	e->raw = raw;
	e->bitmap = bitmap;
	e->copied = raw & QCOW_OFLAG_COPIED;
	if (raw & QCOW_OFLAG_COMPRESSED) {
		uint64_t nb;

		l2_compressed_decode(m->h.cluster_bits, raw & ~(3ull << 62),
				     &e->host_offset, &nb);
		e->compressed_len = (nb + 1) * 512 - (e->host_offset & 511);
		e->reserved = raw & QCOW_OFLAG_COPIED;
		e->type = (extl2 && bitmap) || e->reserved || data_file ?
			  QCOW2_L2_INVALID : QCOW2_L2_COMPRESSED;
		return;
	}
	e->host_offset = off;
	e->zero_flag = !extl2 && (raw & QCOW_OFLAG_ZERO);
	e->reserved = raw & (0x1feull | (0x3full << 56) | (extl2 ? 1ull : 0));
	allocated = off || (data_file && e->copied);
	if (off % m->cs) {
		e->type = QCOW2_L2_INVALID;
	} else if (!extl2) {
		e->type = e->zero_flag ? QCOW2_L2_ZERO :
			  allocated ? QCOW2_L2_NORMAL : QCOW2_L2_UNALLOCATED;
	} else {
		uint32_t alloc = (uint32_t)bitmap, zero = (uint32_t)(bitmap >> 32);

		if ((alloc & zero) || (alloc && !allocated))
			e->type = QCOW2_L2_INVALID;
		else if (alloc)
			e->type = QCOW2_L2_NORMAL;
		else if (zero == UINT32_MAX)
			e->type = QCOW2_L2_ZERO;
		else
			e->type = QCOW2_L2_UNALLOCATED;
	}
}

int qcow2_meta_read_l2(struct qcow2_meta *m, uint64_t off,
		       struct qcow2_l2_entry *out)
{
	uint64_t n = qcow2_meta_l2_entries(m);
	int ret = qcow2_meta_pread(m, m->buf, m->cs, off);

	if (ret < 0)
		return ret;
	for (uint64_t i = 0; i < n; i++) {
		const uint8_t *p = m->buf + i * m->l2e;
		qcow2_meta_decode_l2(m, be64_at(p), m->l2e == 16 ? be64_at(p + 8) : 0,
				     &out[i]);
	}
	return 0;
}

uint64_t qcow2_meta_refblock_entries(const struct qcow2_meta *m)
{
	return (m->cs * 8) >> m->h.refcount_order;
}

int qcow2_meta_read_refblock(struct qcow2_meta *m, uint64_t off,
			     uint64_t *out)
{
	uint64_t n = qcow2_meta_refblock_entries(m);
	int ret = qcow2_meta_pread(m, m->buf, m->cs, off);

	if (ret < 0)
		return ret;
	for (uint64_t i = 0; i < n; i++)
		out[i] = refblock_get(m->buf, i, m->h.refcount_order);
	return 0;
}

int qcow2_meta_refcount(struct qcow2_meta *m, uint64_t off, uint64_t *rc)
{
	uint64_t per = qcow2_meta_refblock_entries(m);
	uint64_t cl = off / m->cs, blk;
	int ret;

	if (!m->reftable) {
		m->reftable_entries = (uint64_t)m->h.refcount_table_clusters *
				      m->cs / 8;
		ret = qcow2_meta_read_table(m, m->h.refcount_table_offset,
					    m->reftable_entries, &m->reftable);
		if (ret < 0)
			return ret;
	}
	*rc = 0;
	if (cl / per >= m->reftable_entries)
		return 0;
	blk = m->reftable[cl / per] & REFT_OFFSET_MASK;
	if (!blk)
		return 0;
	if (blk % m->cs)
		return -EINVAL;
	ret = qcow2_meta_pread(m, m->buf, m->cs, blk);
	if (ret == 0)
		*rc = refblock_get(m->buf, cl % per, m->h.refcount_order);
	return ret;
}

/* A variable-length table (snapshots, bitmap directory): at most size
 * bytes at off, read whole. */
static int read_blob(struct qcow2_meta *m, uint64_t off, uint64_t size,
		     uint8_t **out)
{
	uint8_t *t;
	int ret;

	if (size > META_MAX_TABLE)
		size = META_MAX_TABLE;
	t = malloc(size ? size : 1);
	if (!t)
		return -ENOMEM;
	ret = qcow2_meta_pread(m, t, size, off);
	if (ret < 0) {
		free(t);
		return ret;
	}
	*out = t;
	return 0;
}

static char *dup_str(const uint8_t *p, size_t len)
{
	char *s = malloc(len + 1);

	if (s) {
		memcpy(s, p, len);
		s[len] = '\0';
	}
	return s;
}

int qcow2_meta_snapshots(struct qcow2_meta *m,
			 struct qcow2_snapshot_entry **out, uint32_t *n)
{
	uint32_t count = m->h.nb_snapshots;
	uint64_t size, pos = 0;
	struct qcow2_snapshot_entry *s;
	uint8_t *t = NULL;
	int ret = 0;

	*out = NULL;
	*n = 0;
	if (!count)
		return 0;
	if (m->h.snapshots_offset >= m->file_size)
		return -EINVAL;
	size = m->file_size - m->h.snapshots_offset;
	s = calloc(count, sizeof(*s));
	if (!s)
		return -ENOMEM;
	ret = read_blob(m, m->h.snapshots_offset, size, &t);
	if (size > META_MAX_TABLE)
		size = META_MAX_TABLE;
	for (uint32_t i = 0; ret == 0 && i < count; i++) {
		const uint8_t *p = t + pos;
		uint32_t id_len, name_len, extra;

		if (pos + 40 > size) {
			ret = -EINVAL;
			break;
		}
		id_len = (uint32_t)(p[12] << 8 | p[13]);
		name_len = (uint32_t)(p[14] << 8 | p[15]);
		extra = be32_at(p + 36);
		if (pos + 40 + (uint64_t)extra + id_len + name_len > size) {
			ret = -EINVAL;
			break;
		}
		s[i].entry_offset = m->h.snapshots_offset + pos;
		s[i].l1_table_offset = be64_at(p);
		s[i].l1_size = be32_at(p + 8);
		s[i].date_sec = be32_at(p + 16);
		s[i].date_nsec = be32_at(p + 20);
		s[i].vm_clock_nsec = be64_at(p + 24);
		s[i].vm_state_size = be32_at(p + 32);
		s[i].extra_data_size = extra;
		if (extra >= 8)
			s[i].vm_state_size = be64_at(p + 40);
		if (extra >= 16) {
			s[i].disk_size = be64_at(p + 48);
			s[i].has_disk_size = true;
		}
		s[i].id = dup_str(p + 40 + extra, id_len);
		s[i].name = dup_str(p + 40 + extra + id_len, name_len);
		if (!s[i].id || !s[i].name)
			ret = -ENOMEM;
		s[i].entry_size = (uint32_t)align_up(40ull + extra + id_len +
						     name_len, 8);
		pos += s[i].entry_size;
	}
	free(t);
	if (ret < 0) {
		qcow2_meta_free_snapshots(s, count);
		return ret;
	}
	*out = s;
	*n = count;
	return 0;
}

void qcow2_meta_free_snapshots(struct qcow2_snapshot_entry *s, uint32_t n)
{
	for (uint32_t i = 0; s && i < n; i++) {
		free(s[i].id);
		free(s[i].name);
	}
	free(s);
}

int qcow2_meta_bitmaps(struct qcow2_meta *m, struct qcow2_bitmap_entry **out,
		       uint32_t *n)
{
	uint32_t count = m->h.nb_bitmaps;
	uint64_t size = m->h.bitmap_directory_size, pos = 0;
	struct qcow2_bitmap_entry *b;
	uint8_t *d = NULL;
	int ret;

	*out = NULL;
	*n = 0;
	if (!count || !size)
		return 0;
	/* Entries are 24 bytes at least: a count the directory cannot hold
	 * is corrupt (not an allocation of count entries). */
	if (size > META_MAX_TABLE || count > size / 24)
		return -EINVAL;
	b = calloc(count, sizeof(*b));
	if (!b)
		return -ENOMEM;
	ret = read_blob(m, m->h.bitmap_directory_offset, size, &d);
	for (uint32_t i = 0; ret == 0 && i < count; i++) {
		const uint8_t *p = d + pos;
		uint32_t name_len, extra;

		if (pos + 24 > size) {
			ret = -EINVAL;
			break;
		}
		name_len = (uint32_t)(p[18] << 8 | p[19]);
		extra = be32_at(p + 20);
		if (pos + 24 + (uint64_t)extra + name_len > size) {
			ret = -EINVAL;
			break;
		}
		b[i].entry_offset = m->h.bitmap_directory_offset + pos;
		b[i].table_offset = be64_at(p);
		b[i].table_size = be32_at(p + 8);
		b[i].flags = be32_at(p + 12);
		b[i].type = p[16];
		b[i].granularity_bits = p[17];
		b[i].extra_data_size = extra;
		b[i].name = dup_str(p + 24 + extra, name_len);
		if (!b[i].name)
			ret = -ENOMEM;
		b[i].entry_size = (uint32_t)align_up(24ull + extra + name_len, 8);
		pos += b[i].entry_size;
	}
	free(d);
	if (ret < 0) {
		qcow2_meta_free_bitmaps(b, count);
		return ret;
	}
	*out = b;
	*n = count;
	return 0;
}

void qcow2_meta_free_bitmaps(struct qcow2_bitmap_entry *b, uint32_t n)
{
	for (uint32_t i = 0; b && i < n; i++)
		free(b[i].name);
	free(b);
}
