/* Unit tests of the queue: layout, validation of every field, tag
 * generations, index wraparound, the in-flight table, protocol errors and
 * doorbell suppression. Client and service run in this one process. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "ipc_test_internal.h"
#include "ring.h"

#include <poll.h>

#define DISK_SIZE (1ull << 30)
#define REGION_SIZE (1u << 20)

struct pair {
	struct qcow2_ipc_geometry g;
	struct qcow2_ipc_client *c;
	struct qcow2_ipc_server *s;
	struct qcow2_ipc_server_opts so;
	int region_fd;
};

static const struct qcow2_ipc_geometry default_geometry = {
	.sq_entries = 8, .cq_entries = 16, .max_segs = 4, .data_size = 64 * 1024,
};

static void pair_open_server(struct pair *p)
{
	struct qcow2_ipc_attach att;
	assert_int_equal(test_attach_from_client(p->c, &p->g, &p->region_fd, 1, &att), 0);
	assert_int_equal(qcow2_ipc_server_open(&att, &p->so, &p->s), 0);
	qcow2_ipc_attach_close(&att);
}

static void pair_init(struct pair *p, const struct qcow2_ipc_geometry *g, uint32_t first_index)
{
	memset(p, 0, sizeof(*p));
	p->g = *g;
	p->region_fd = test_memfd(REGION_SIZE, F_SEAL_SHRINK);
	assert_true(p->region_fd >= 0);
	struct qcow2_ipc_client_opts co = {
		.size = sizeof(co), .geometry = *g, .nr_regions = 1, .region_fds = &p->region_fd,
		.first_index = first_index,
	};
	assert_int_equal(qcow2_ipc_client_new(&co, &p->c), 0);
	p->so = (struct qcow2_ipc_server_opts){
		.size = sizeof(struct qcow2_ipc_server_opts),
		.disk_size = DISK_SIZE, .block_size = 512, .buf_align = 512,
	};
	pair_open_server(p);
}

static void pair_fini(struct pair *p)
{
	qcow2_ipc_server_close(p->s);
	qcow2_ipc_client_free(p->c);
	close(p->region_fd);
}

static struct qcow2_ipc_req read_req(uint64_t tag, const struct qcow2_ipc_seg *seg)
{
	return (struct qcow2_ipc_req){
		.opcode = QCOW2_IPC_OP_READ, .nr_segs = 1, .tag = tag, .offset = 4096,
		.segs = seg,
	};
}

/* ---- layout ------------------------------------------------------------------------ */

static void test_layout(void **state)
{
	(void)state;
	struct qcow2_ipc_layout l;
	struct qcow2_ipc_geometry g = { 64, 128, 16, 1 << 20 };

	assert_int_equal(qcow2_ipc_compute_layout(&g, &l), 0);
	assert_int_equal(l.sq_off, 4096);
	assert_int_equal(l.cq_off, 4096 + 4096);       /* 64 * 64 bytes */
	assert_int_equal(l.seg_off, l.cq_off + 4096);  /* 128 * 24 rounded */
	assert_int_equal(l.inflight_off, l.seg_off + 128 * 16 * 16);
	assert_int_equal(l.data_off, l.inflight_off + 128 * 128);
	assert_int_equal(l.size, l.data_off + (1 << 20));
	uint64_t offs[] = { l.sq_off, l.cq_off, l.seg_off, l.inflight_off, l.data_off };
	for (unsigned i = 0; i < 5; i++)
		assert_int_equal(offs[i] % QCOW2_IPC_PAGE, 0);

	struct qcow2_ipc_geometry bad[] = {
		{ 0, 8, 1, 0 }, { 3, 8, 1, 0 }, { 8, 4, 1, 0 }, { 8, 12, 1, 0 },
		{ 8192, 8192, 1, 0 }, { 8, 8, 0, 0 }, { 8, 8, 1025, 0 },
		{ 4096, 4096, 128, 0 }, { 8, 8, 1, 100 }, { 8, 8, 1, (1ull << 40) + 4096 },
	};
	for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(qcow2_ipc_compute_layout(&bad[i], &l), -EINVAL);
	/* Data area may be empty (zero copy only); the largest geometry fits. */
	struct qcow2_ipc_geometry big = { 4096, 4096, 64, 1ull << 40 };
	assert_int_equal(qcow2_ipc_compute_layout(&big, &l), 0);
}

/* ---- round trip --------------------------------------------------------------------- */

static void test_round_trip(void **state)
{
	(void)state;
	struct pair p;
	pair_init(&p, &default_geometry, 0);
	uint64_t dsize;
	uint8_t *data = qcow2_ipc_client_data(p.c, &dsize);
	assert_int_equal(dsize, 64 * 1024);

	struct qcow2_ipc_seg seg = { .off = 8192, .len = 4096, .region = 0 };
	struct qcow2_ipc_req r = read_req(0xabcdef0123ull, &seg);
	assert_int_equal(qcow2_ipc_client_submit(p.c, &r), 0);
	struct qcow2_ipc_server_req req[4];
	unsigned n;
	/* Not visible before commit. */
	assert_int_equal(qcow2_ipc_server_take(p.s, req, 4, &n), 0);
	assert_int_equal(n, 0);
	assert_int_equal(qcow2_ipc_client_commit(p.c), 0);
	assert_int_equal(qcow2_ipc_server_take(p.s, req, 4, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(req[0].opcode, QCOW2_IPC_OP_READ);
	assert_int_equal(req[0].offset, 4096);
	assert_int_equal(req[0].len, 4096);
	assert_int_equal(req[0].nr_iov, 1);
	assert_true(test_req_in_regions(p.s, &req[0]));
	memset(req[0].iov[0].iov_base, 0x5a, 4096);    /* the "read" */
	assert_int_equal(qcow2_ipc_server_in_flight(p.s), 1);
	assert_int_equal(qcow2_ipc_server_complete(p.s, req[0].id, 0), 0);
	/* Completing twice is the caller's bug, refused. */
	assert_int_equal(qcow2_ipc_server_complete(p.s, req[0].id, 0), -EINVAL);

	struct qcow2_ipc_completion comp[4];
	assert_int_equal(qcow2_ipc_client_reap(p.c, comp, 4, &n), 0);
	assert_int_equal(n, 0);                         /* not published yet */
	assert_int_equal(qcow2_ipc_server_publish(p.s), 0);
	assert_int_equal(qcow2_ipc_client_reap(p.c, comp, 4, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(comp[0].tag, 0xabcdef0123ull);
	assert_int_equal(comp[0].res, 0);
	for (unsigned i = 0; i < 4096; i++)
		assert_int_equal(data[8192 + i], 0x5a);
	assert_int_equal(qcow2_ipc_server_in_flight(p.s), 0);
	assert_int_equal(qcow2_ipc_client_in_flight(p.c), 0);

	/* Zero copy: a registered region, and a vectored write over both. */
	uint8_t *guest = mmap(NULL, REGION_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, p.region_fd, 0);
	assert_true(guest != MAP_FAILED);
	memset(guest + 65536, 0x11, 512);
	memset(data, 0x22, 1024);
	struct qcow2_ipc_seg segs[2] = {
		{ .off = 65536, .len = 512, .region = 1 },
		{ .off = 0, .len = 1024, .region = 0 },
	};
	struct qcow2_ipc_req w = {
		.opcode = QCOW2_IPC_OP_WRITE, .nr_segs = 2, .tag = 7, .offset = 0, .segs = segs,
	};
	assert_int_equal(qcow2_ipc_client_submit(p.c, &w), 0);
	assert_int_equal(qcow2_ipc_client_commit(p.c), 0);
	assert_int_equal(qcow2_ipc_server_take(p.s, req, 4, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(req[0].len, 1536);
	assert_int_equal(req[0].nr_iov, 2);
	assert_true(test_req_in_regions(p.s, &req[0]));
	assert_int_equal(((uint8_t *)req[0].iov[0].iov_base)[0], 0x11);
	assert_int_equal(req[0].iov[0].iov_len, 512);
	assert_int_equal(((uint8_t *)req[0].iov[1].iov_base)[1023], 0x22);
	assert_int_equal(qcow2_ipc_server_complete(p.s, req[0].id, -EIO), 0);
	assert_int_equal(qcow2_ipc_server_publish(p.s), 0);
	assert_int_equal(qcow2_ipc_client_reap(p.c, comp, 4, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(comp[0].tag, 7);
	assert_int_equal(comp[0].res, -EIO);
	munmap(guest, REGION_SIZE);
	pair_fini(&p);
}

/* ---- validation of every field --------------------------------------------------------- */

struct bad_case {
	const char *what;
	void (*mutate)(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *table);
	int expect;
};

static void m_none(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { (void)e; (void)t; }
static void m_op0(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { (void)t; e->opcode = 0; }
static void m_op6(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { (void)t; e->opcode = 6; }
static void m_op255(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { (void)t; e->opcode = 255; }
static void m_rflags(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { (void)t; e->flags = QCOW2_IPC_F_UNMAP; }
static void m_rflags2(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { (void)t; e->flags = 0x80; }
static void m_res0(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { (void)t; e->reserved0 = 1; }
static void m_res1(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { (void)t; e->reserved1 = 1ull << 63; }
static void m_nseg0(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { (void)t; e->nr_segs = 0; }
static void m_nsegmax(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { (void)t; e->nr_segs = 5; memset(&e->seg, 0, sizeof(e->seg)); }
static void m_nseg65535(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { (void)t; e->nr_segs = 65535; }
static void m_lenmismatch(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { (void)t; e->len += 512; }
static void m_lenzero(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { (void)t; e->len = 0; e->seg.len = 0; }
static void m_offalign(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { (void)t; e->offset += 1; }
static void m_lenalign(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { (void)t; e->len = 4097; e->seg.len = 4097; }
static void m_pastdisk(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { (void)t; e->offset = DISK_SIZE - 512; }
static void m_atdisk(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { (void)t; e->offset = DISK_SIZE - 4096; }
static void m_offwrap(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { (void)t; e->offset = UINT64_MAX - 511; }
static void m_region(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { (void)t; e->seg.region = 2; }
static void m_regionbig(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { (void)t; e->seg.region = UINT32_MAX; }
static void m_segpast(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { (void)t; e->seg.off = 64 * 1024 - 2048; }
static void m_segend(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { (void)t; e->seg.off = 64 * 1024 - 4096; }
static void m_segwrap(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { (void)t; e->seg.off = UINT64_MAX - 1023; }
static void m_segalign(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { (void)t; e->seg.off = 8; }
static void m_reg1ok(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { (void)t; e->seg.region = 1; e->seg.off = REGION_SIZE - 4096; }
static void m_reg1past(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { (void)t; e->seg.region = 1; e->seg.off = REGION_SIZE - 3584; }
static void m_big(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { (void)t; e->len = 1ull << 33; }

static void to_multi(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t)
{
	e->nr_segs = 2;
	memset(&e->seg, 0, sizeof(e->seg));
	t[0] = (struct qcow2_ipc_seg){ .off = 0, .len = 2048, .region = 0 };
	t[1] = (struct qcow2_ipc_seg){ .off = 4096, .len = 2048, .region = 1 };
}
static void m_flush(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t);
static void m_multi(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { to_multi(e, t); }
static void m_multiinline(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { to_multi(e, t); e->seg.len = 512; }
static void m_multislot(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { to_multi(e, t); e->slot = 16; }
static void m_inlineslot(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { (void)t; e->slot = 16; }
static void m_flushslot(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { m_flush(e, t); e->slot = 999; }
static void m_multibad(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { to_multi(e, t); t[1].off = REGION_SIZE; }
static void m_multizero(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { to_multi(e, t); t[0].len = 0; t[1].len = 4096; }
static void m_multisum(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { to_multi(e, t); t[1].len = 1536; }
static void m_multiovf(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { to_multi(e, t); t[0].len = UINT32_MAX - 511; t[1].len = 4096 + 512; }

static void m_flush(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { (void)t; memset(e, 0, sizeof(*e)); e->opcode = QCOW2_IPC_OP_FLUSH; }
static void m_flushlen(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { m_flush(e, t); e->len = 512; }
static void m_flushoff(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { m_flush(e, t); e->offset = 512; }
static void m_flushseg(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { m_flush(e, t); e->seg.len = 512; }
static void m_flushflag(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { m_flush(e, t); e->flags = 1; }
static void m_flushnseg(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { m_flush(e, t); e->nr_segs = 1; }

static void m_wz(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t)
{
	(void)t;
	memset(e, 0, sizeof(*e));
	e->opcode = QCOW2_IPC_OP_WRITE_ZEROES;
	e->offset = 1 << 20;
	e->len = 1 << 20;
}
static void m_wzunmap(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { m_wz(e, t); e->flags = QCOW2_IPC_F_UNMAP; }
static void m_wzflag(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { m_wz(e, t); e->flags = 2; }
static void m_wzseg(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { m_wz(e, t); e->seg.off = 4096; }
static void m_wznseg(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { m_wz(e, t); e->nr_segs = 1; }
static void m_wzzero(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { m_wz(e, t); e->len = 0; }
static void m_wzwhole(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { m_wz(e, t); e->offset = 0; e->len = DISK_SIZE; }
static void m_wzpast(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { m_wz(e, t); e->offset = 512; e->len = DISK_SIZE; }
static void m_wzalign(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { m_wz(e, t); e->len = 100; }
static void m_disc(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { m_wz(e, t); e->opcode = QCOW2_IPC_OP_DISCARD; }
static void m_discunmap(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { m_disc(e, t); e->flags = QCOW2_IPC_F_UNMAP; }
static void m_discpast(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { m_disc(e, t); e->offset = DISK_SIZE; }
static void m_writeok(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { (void)t; e->opcode = QCOW2_IPC_OP_WRITE; }
static void m_writeflag(struct qcow2_ipc_sqe *e, struct qcow2_ipc_seg *t) { (void)t; e->opcode = QCOW2_IPC_OP_WRITE; e->flags = 1; }

static const struct bad_case cases[] = {
	{ "valid read", m_none, 0 },
	{ "opcode 0", m_op0, -EINVAL },
	{ "opcode 6", m_op6, -EINVAL },
	{ "opcode 255", m_op255, -EINVAL },
	{ "read with unmap flag", m_rflags, -EINVAL },
	{ "read with unknown flag", m_rflags2, -EINVAL },
	{ "reserved0", m_res0, -EINVAL },
	{ "reserved1", m_res1, -EINVAL },
	{ "read without segments", m_nseg0, -EINVAL },
	{ "more segments than max_segs", m_nsegmax, -EINVAL },
	{ "65535 segments", m_nseg65535, -EINVAL },
	{ "len is not the sum of segments", m_lenmismatch, -EINVAL },
	{ "zero length", m_lenzero, -EINVAL },
	{ "unaligned disk offset", m_offalign, -EINVAL },
	{ "unaligned length", m_lenalign, -EINVAL },
	{ "past the disk end", m_pastdisk, -EINVAL },
	{ "ends at the disk end", m_atdisk, 0 },
	{ "offset + len wraps", m_offwrap, -EINVAL },
	{ "region not registered", m_region, -EINVAL },
	{ "region UINT32_MAX", m_regionbig, -EINVAL },
	{ "buffer past the data area", m_segpast, -EINVAL },
	{ "buffer ends at the data area's end", m_segend, 0 },
	{ "buffer offset wraps", m_segwrap, -EINVAL },
	{ "buffer misaligned", m_segalign, -EINVAL },
	{ "registered region, last page", m_reg1ok, 0 },
	{ "past a registered region", m_reg1past, -EINVAL },
	{ "larger than max_io_bytes", m_big, -EINVAL },
	{ "two segments", m_multi, 0 },
	{ "two segments and an inline one", m_multiinline, -EINVAL },
	{ "segment table of a slot out of range", m_multislot, -EINVAL },
	{ "inline read, slot out of range", m_inlineslot, -EINVAL },
	{ "flush, slot out of range", m_flushslot, -EINVAL },
	{ "segment in the table out of range", m_multibad, -EINVAL },
	{ "empty segment in the table", m_multizero, -EINVAL },
	{ "table does not sum to len", m_multisum, -EINVAL },
	{ "table sum overflows 32 bits", m_multiovf, -EINVAL },
	{ "flush", m_flush, 0 },
	{ "flush with length", m_flushlen, -EINVAL },
	{ "flush with offset", m_flushoff, -EINVAL },
	{ "flush with a buffer", m_flushseg, -EINVAL },
	{ "flush with flags", m_flushflag, -EINVAL },
	{ "flush with segments", m_flushnseg, -EINVAL },
	{ "write zeroes", m_wz, 0 },
	{ "write zeroes, unmap", m_wzunmap, 0 },
	{ "write zeroes, unknown flag", m_wzflag, -EINVAL },
	{ "write zeroes with a buffer", m_wzseg, -EINVAL },
	{ "write zeroes with segments", m_wznseg, -EINVAL },
	{ "write zeroes of nothing", m_wzzero, -EINVAL },
	{ "write zeroes, whole disk", m_wzwhole, 0 },
	{ "write zeroes past the end", m_wzpast, -EINVAL },
	{ "write zeroes, unaligned", m_wzalign, -EINVAL },
	{ "discard", m_disc, 0 },
	{ "discard with unmap flag", m_discunmap, -EINVAL },
	{ "discard at the end", m_discpast, -EINVAL },
	{ "write", m_writeok, 0 },
	{ "write with flags", m_writeflag, -EINVAL },
};

static void test_validate_fields(void **state)
{
	(void)state;
	struct pair p;
	struct ring_view v;
	struct qcow2_ipc_layout l;

	pair_init(&p, &default_geometry, 0);
	p.so.max_io_bytes = 1 << 20;
	/* Reopen with a max_io_bytes so that limit is checked too. */
	qcow2_ipc_server_close(p.s);
	pair_open_server(&p);
	assert_int_equal(qcow2_ipc_compute_layout(&p.g, &l), 0);
	ring_view_init(&v, qcow2_ipc_client_ctrl(p.c), &p.g, &l);

	struct iovec iov[4];
	for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct qcow2_ipc_sqe e = {
			.opcode = QCOW2_IPC_OP_READ, .nr_segs = 1, .slot = 3, .tag = 99,
			.gen = 1, .offset = 8192, .len = 4096,
			.seg = { .off = 4096, .len = 4096, .region = 0 },
		};
		struct qcow2_ipc_seg *table = &v.segs[3 * p.g.max_segs];
		cases[i].mutate(&e, table);
		struct qcow2_ipc_server_req req = { .iov = iov };
		int r = qcow2_ipc_server_validate(p.s, &e, &req);
		if (r != cases[i].expect)
			fail_msg("case '%s': validate returned %d, expected %d", cases[i].what, r,
				 cases[i].expect);
		if (r == 0)
			assert_true(test_req_in_regions(p.s, &req));
	}

	/* Through the ring: an invalid entry is completed with -EINVAL by take
	 * and never handed to the caller; the valid one next to it is. */
	struct qcow2_ipc_ctrl *ctrl = qcow2_ipc_client_ctrl(p.c);
	struct qcow2_ipc_sqe good = {
		.opcode = QCOW2_IPC_OP_FLUSH, .slot = 1, .tag = 1, .gen = 5,
	};
	struct qcow2_ipc_sqe bad = good;
	bad.opcode = 77;
	bad.tag = 2;
	v.sq[0] = bad;
	v.sq[1] = good;
	atomic_store(&ctrl->sq_prod.sq_tail, 2);
	struct qcow2_ipc_server_req out[4];
	for (unsigned i = 0; i < 4; i++)
		out[i].iov = NULL;
	unsigned n;
	assert_int_equal(qcow2_ipc_server_take(p.s, out, 4, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(out[0].tag, 1);
	struct qcow2_ipc_server_stats st = { .size = sizeof(st) };
	qcow2_ipc_server_get_stats(p.s, &st);
	assert_int_equal(st.invalid, 1);
	assert_int_equal(qcow2_ipc_server_publish(p.s), 0);
	assert_int_equal(atomic_load(&ctrl->cq_prod.cq_tail), 1);
	assert_int_equal(v.cq[0].tag, 2);
	assert_int_equal(v.cq[0].res, -EINVAL);
	assert_int_equal(v.cq[0].slot, 1);
	assert_int_equal(v.cq[0].gen, 5);
	assert_int_equal(qcow2_ipc_server_broken(p.s), 0);
	pair_fini(&p);
}

/* ---- tags and generations ------------------------------------------------------------ */

static void test_tag_generation(void **state)
{
	(void)state;
	struct pair p;
	struct ring_view v;
	struct qcow2_ipc_layout l;
	pair_init(&p, &default_geometry, 0);
	assert_int_equal(qcow2_ipc_compute_layout(&p.g, &l), 0);
	ring_view_init(&v, qcow2_ipc_client_ctrl(p.c), &p.g, &l);
	struct qcow2_ipc_ctrl *ctrl = qcow2_ipc_client_ctrl(p.c);

	struct qcow2_ipc_seg seg = { .off = 0, .len = 512 };
	struct qcow2_ipc_req r = read_req(42, &seg);
	struct qcow2_ipc_server_req req[2];
	struct qcow2_ipc_completion comp[4];
	unsigned n;

	/* First use of tag 42. */
	assert_int_equal(qcow2_ipc_client_submit(p.c, &r), 0);
	assert_int_equal(qcow2_ipc_client_commit(p.c), 0);
	assert_int_equal(qcow2_ipc_server_take(p.s, req, 2, &n), 0);
	assert_int_equal(n, 1);
	struct qcow2_ipc_sqe first = v.inflight[req[0].id].sqe;
	assert_int_equal(qcow2_ipc_server_complete(p.s, req[0].id, 0), 0);
	assert_int_equal(qcow2_ipc_server_publish(p.s), 0);
	assert_int_equal(qcow2_ipc_client_reap(p.c, comp, 4, &n), 0);
	assert_int_equal(n, 1);

	/* Tag 42 again: same slot (LIFO free list), next generation. */
	assert_int_equal(qcow2_ipc_client_submit(p.c, &r), 0);
	assert_int_equal(qcow2_ipc_client_commit(p.c), 0);
	assert_int_equal(qcow2_ipc_server_take(p.s, req, 2, &n), 0);
	assert_int_equal(n, 1);
	struct qcow2_ipc_sqe second = v.inflight[req[0].id].sqe;
	assert_int_equal(second.slot, first.slot);
	assert_int_equal(second.gen, first.gen + 1);

	/* A stale completion of the first use (as a confused or replaying
	 * service might write) is dropped, not delivered for the second. */
	uint32_t t = atomic_load(&ctrl->cq_prod.cq_tail);
	v.cq[t & v.cq_mask] = (struct qcow2_ipc_cqe){
		.tag = 42, .slot = first.slot, .gen = first.gen, .res = -EIO,
	};
	v.cq[(t + 1) & v.cq_mask] = (struct qcow2_ipc_cqe){
		.tag = 42, .slot = 1000, .gen = second.gen, .res = -EIO,    /* bad slot */
	};
	v.cq[(t + 2) & v.cq_mask] = (struct qcow2_ipc_cqe){
		.tag = 43, .slot = second.slot, .gen = second.gen, .res = -EIO, /* bad tag */
	};
	atomic_store(&ctrl->cq_prod.cq_tail, t + 3);
	assert_int_equal(qcow2_ipc_client_reap(p.c, comp, 4, &n), 0);
	assert_int_equal(n, 0);
	struct qcow2_ipc_client_stats cs = { .size = sizeof(cs) };
	qcow2_ipc_client_get_stats(p.c, &cs);
	assert_int_equal(cs.stale, 3);
	assert_int_equal(qcow2_ipc_client_in_flight(p.c), 1);

	/* The server's cq_tail is local: rewind our fake entries' effect by
	 * making the ring consistent for it again (the client consumed 3 it
	 * never published; a real service would find this a protocol error). */
	pair_fini(&p);
}

/* ---- wraparound ---------------------------------------------------------------------------- */

static void run_traffic(struct pair *p, unsigned total, uint64_t seed)
{
	uint64_t rs = seed, next_tag = 1, expect_tag = 1;
	unsigned done = 0;
	struct qcow2_ipc_server_req req[64];
	struct qcow2_ipc_completion comp[64];

	while (done < total) {
		unsigned batch = (unsigned)test_rand_range(&rs, 1, 40);
		for (unsigned i = 0; i < batch && next_tag <= total; i++) {
			struct qcow2_ipc_seg seg = { .off = (next_tag % 16) * 4096, .len = 4096 };
			struct qcow2_ipc_req r = read_req(next_tag, &seg);
			int e = qcow2_ipc_client_submit(p->c, &r);
			if (e == -EAGAIN)
				break;
			assert_int_equal(e, 0);
			next_tag++;
		}
		assert_int_equal(qcow2_ipc_client_commit(p->c), 0);
		unsigned n;
		assert_int_equal(qcow2_ipc_server_take(p->s, req, (unsigned)test_rand_range(&rs, 1, 64), &n), 0);
		for (unsigned i = 0; i < n; i++)
			assert_int_equal(qcow2_ipc_server_complete(p->s, req[i].id, -(int)(req[i].tag % 7)), 0);
		assert_int_equal(qcow2_ipc_server_publish(p->s), 0);
		assert_int_equal(qcow2_ipc_client_reap(p->c, comp, (unsigned)test_rand_range(&rs, 1, 64), &n), 0);
		for (unsigned i = 0; i < n; i++) {
			assert_int_equal(comp[i].tag, expect_tag);
			assert_int_equal(comp[i].res, -(int)(expect_tag % 7));
			expect_tag++;
		}
		done += n;
	}
}

static void test_wraparound(void **state)
{
	(void)state;
	uint32_t starts[] = { 0, UINT32_MAX - 5, UINT32_MAX, 0x7fffffff - 3 };
	for (unsigned i = 0; i < sizeof(starts) / sizeof(starts[0]); i++) {
		struct pair p;
		pair_init(&p, &default_geometry, starts[i]);
		run_traffic(&p, 1000, i);
		struct qcow2_ipc_ctrl *ctrl = qcow2_ipc_client_ctrl(p.c);
		assert_int_equal(atomic_load(&ctrl->sq_prod.sq_tail), starts[i] + 1000);
		assert_int_equal(atomic_load(&ctrl->cq_prod.cq_tail), starts[i] + 1000);
		pair_fini(&p);
	}
	/* The smallest rings: one entry each. */
	struct qcow2_ipc_geometry tiny = { 1, 1, 1, 65536 };
	struct pair p;
	pair_init(&p, &tiny, UINT32_MAX - 2);
	run_traffic(&p, 200, 9);
	pair_fini(&p);
}

/* ---- in-flight table and re-attach ---------------------------------------------------------- */

static void submit_reads(struct pair *p, uint64_t first_tag, unsigned n)
{
	for (unsigned i = 0; i < n; i++) {
		struct qcow2_ipc_seg seg = { .off = 0, .len = 512 };
		struct qcow2_ipc_req r = read_req(first_tag + i, &seg);
		assert_int_equal(qcow2_ipc_client_submit(p->c, &r), 0);
	}
	assert_int_equal(qcow2_ipc_client_commit(p->c), 0);
}

static void test_inflight_reattach(void **state)
{
	(void)state;
	struct pair p;
	struct ring_view v;
	struct qcow2_ipc_layout l;
	struct qcow2_ipc_server_req req[8];
	struct qcow2_ipc_completion comp[16];
	unsigned n;

	pair_init(&p, &default_geometry, 0);
	assert_int_equal(qcow2_ipc_compute_layout(&p.g, &l), 0);
	ring_view_init(&v, qcow2_ipc_client_ctrl(p.c), &p.g, &l);

	/* Tags 1..6 submitted. The service takes 4 (1..4): completes and
	 * publishes 1, completes 2 without publishing, leaves 3 and 4. */
	submit_reads(&p, 1, 6);
	assert_int_equal(qcow2_ipc_server_take(p.s, req, 4, &n), 0);
	assert_int_equal(n, 4);
	assert_int_equal(qcow2_ipc_server_complete(p.s, req[0].id, 0), 0);
	assert_int_equal(qcow2_ipc_server_publish(p.s), 0);
	assert_int_equal(qcow2_ipc_server_complete(p.s, req[1].id, 0), 0);
	uint32_t id3 = req[2].id;
	/* The service dies (no cleanup of the shared state). */
	qcow2_ipc_server_close(p.s);
	assert_int_equal(v.inflight[id3].state >> 32, QCOW2_IPC_INFLIGHT_TAKEN);

	/* A new one attaches: 2, 3, 4 are owed and come first, then 5, 6. */
	pair_open_server(&p);
	struct qcow2_ipc_server_stats st = { .size = sizeof(st) };
	qcow2_ipc_server_get_stats(p.s, &st);
	assert_int_equal(st.recovered, 3);
	assert_int_equal(qcow2_ipc_server_in_flight(p.s), 3);
	assert_int_equal(qcow2_ipc_server_take(p.s, req, 8, &n), 0);
	assert_int_equal(n, 5);
	uint64_t seen = 0;
	for (unsigned i = 0; i < n; i++) {
		seen |= 1ull << req[i].tag;
		assert_int_equal(qcow2_ipc_server_complete(p.s, req[i].id, 0), 0);
	}
	assert_int_equal(seen, 0x7cull);                /* tags 2..6 */
	assert_int_equal(qcow2_ipc_server_publish(p.s), 0);
	uint64_t got = 0;
	unsigned total = 0;
	do {
		assert_int_equal(qcow2_ipc_client_reap(p.c, comp, 16, &n), 0);
		for (unsigned i = 0; i < n; i++) {
			assert_false(got & (1ull << comp[i].tag));
			got |= 1ull << comp[i].tag;
		}
		total += n;
	} while (n);
	assert_int_equal(got, 0x7eull);                 /* 1..6, once each */
	assert_int_equal(total, 6);
	struct qcow2_ipc_client_stats cs = { .size = sizeof(cs) };
	qcow2_ipc_client_get_stats(p.c, &cs);
	assert_int_equal(cs.stale, 0);
	qcow2_ipc_server_close(p.s);

	/* Records a crash can leave: COMPLETING whose CQE was published (crash
	 * between publish and free: not owed), TAKEN at sq_head (crash before
	 * sq_head moved: taken again from the SQ, not from the table). */
	submit_reads(&p, 10, 2);
	struct qcow2_ipc_ctrl *ctrl = qcow2_ipc_client_ctrl(p.c);
	uint32_t head = atomic_load(&ctrl->sq_cons.sq_head);
	uint32_t cq_tail = atomic_load(&ctrl->cq_prod.cq_tail);
	atomic_store(&v.inflight[0].state, QCOW2_IPC_INFLIGHT_COMPLETING << 32 | (cq_tail - 1));
	atomic_store(&v.inflight[1].state, QCOW2_IPC_INFLIGHT_TAKEN << 32 | head);
	v.inflight[1].sqe = v.sq[head & v.sq_mask];
	pair_open_server(&p);
	qcow2_ipc_server_get_stats(p.s, &st);
	assert_int_equal(st.recovered, 0);
	assert_int_equal(atomic_load(&v.inflight[0].state), 0);
	assert_int_equal(qcow2_ipc_server_take(p.s, req, 8, &n), 0);
	assert_int_equal(n, 2);
	assert_int_equal(req[0].tag, 10);
	assert_int_equal(req[1].tag, 11);
	for (unsigned i = 0; i < n; i++)
		assert_int_equal(qcow2_ipc_server_complete(p.s, req[i].id, 0), 0);
	assert_int_equal(qcow2_ipc_server_publish(p.s), 0);
	assert_int_equal(qcow2_ipc_client_reap(p.c, comp, 16, &n), 0);
	assert_int_equal(n, 2);
	qcow2_ipc_server_close(p.s);

	/* A garbage record kind, or more owed than the CQ can hold, refuses
	 * the attach. */
	struct qcow2_ipc_attach att;
	atomic_store(&v.inflight[5].state, 7ull << 32);
	assert_int_equal(test_attach_from_client(p.c, &p.g, &p.region_fd, 1, &att), 0);
	assert_int_equal(qcow2_ipc_server_open(&att, &p.so, &p.s), -EPROTO);
	qcow2_ipc_attach_close(&att);
	atomic_store(&v.inflight[5].state, 0);
	for (unsigned i = 0; i < p.g.cq_entries; i++)
		atomic_store(&v.inflight[i].state, QCOW2_IPC_INFLIGHT_TAKEN << 32 | (head - 5));
	atomic_store(&ctrl->cq_cons.cq_head, cq_tail - 2);
	assert_int_equal(test_attach_from_client(p.c, &p.g, &p.region_fd, 1, &att), 0);
	assert_int_equal(qcow2_ipc_server_open(&att, &p.so, &p.s), -EPROTO);
	qcow2_ipc_attach_close(&att);
	/* A refused attach changed nothing. */
	for (unsigned i = 0; i < p.g.cq_entries; i++)
		assert_int_equal(atomic_load(&v.inflight[i].state),
				 QCOW2_IPC_INFLIGHT_TAKEN << 32 | (uint32_t)(head - 5));
	p.s = NULL;
	pair_fini(&p);
}

/* ---- protocol errors -------------------------------------------------------------------------- */

static void expect_broken(struct pair *p)
{
	struct qcow2_ipc_server_req req[4];
	unsigned n;
	assert_int_equal(qcow2_ipc_server_broken(p->s), -EPROTO);
	assert_int_equal(qcow2_ipc_server_take(p->s, req, 4, &n), -EPROTO);
	assert_int_equal(qcow2_ipc_server_publish(p->s), -EPROTO);
	assert_int_equal(qcow2_ipc_server_prepare_sleep(p->s), -EPROTO);
	/* The client is told: status word and its doorbell. */
	assert_int_equal(qcow2_ipc_client_wait(p->c, 0, -1), -EPROTO);
	struct qcow2_ipc_seg seg = { .off = 0, .len = 512 };
	struct qcow2_ipc_req r = read_req(1, &seg);
	assert_int_equal(qcow2_ipc_client_submit(p->c, &r), -EPROTO);
}

static void test_protocol_errors(void **state)
{
	(void)state;
	struct qcow2_ipc_server_req req[4];
	unsigned n;

	/* sq_tail more than sq_entries ahead of sq_head. */
	uint32_t jumps[] = { 9, 1000, UINT32_MAX, 0x80000000u };
	for (unsigned i = 0; i < 4; i++) {
		struct pair p;
		pair_init(&p, &default_geometry, 0);
		atomic_store(&qcow2_ipc_client_ctrl(p.c)->sq_prod.sq_tail, jumps[i]);
		assert_int_equal(qcow2_ipc_server_take(p.s, req, 4, &n), -EPROTO);
		assert_int_equal(n, 0);
		expect_broken(&p);
		pair_fini(&p);
	}
	/* Exactly sq_entries ahead is fine (a full ring). */
	{
		struct pair p;
		pair_init(&p, &default_geometry, 0);
		atomic_store(&qcow2_ipc_client_ctrl(p.c)->sq_prod.sq_tail, 8);
		assert_int_equal(qcow2_ipc_server_take(p.s, req, 4, &n), 0);
		assert_int_equal(qcow2_ipc_server_broken(p.s), 0);
		pair_fini(&p);
	}
	/* cq_head past cq_tail, seen by take. */
	{
		struct pair p;
		pair_init(&p, &default_geometry, 0);
		submit_reads(&p, 1, 1);
		atomic_store(&qcow2_ipc_client_ctrl(p.c)->cq_cons.cq_head, 5);
		assert_int_equal(qcow2_ipc_server_take(p.s, req, 4, &n), -EPROTO);
		expect_broken(&p);
		pair_fini(&p);
	}
	/* cq_head moved back after take, seen by complete. */
	{
		struct pair p;
		pair_init(&p, &default_geometry, 0);
		submit_reads(&p, 1, 2);
		assert_int_equal(qcow2_ipc_server_take(p.s, req, 4, &n), 0);
		assert_int_equal(n, 2);
		atomic_store(&qcow2_ipc_client_ctrl(p.c)->cq_cons.cq_head, (uint32_t)-16);
		assert_int_equal(qcow2_ipc_server_complete(p.s, req[0].id, 0), -EPROTO);
		expect_broken(&p);
		pair_fini(&p);
	}
	/* The client side refuses a service that publishes too much. */
	{
		struct pair p;
		struct qcow2_ipc_completion comp[4];
		pair_init(&p, &default_geometry, 0);
		atomic_store(&qcow2_ipc_client_ctrl(p.c)->cq_prod.cq_tail, 17);
		assert_int_equal(qcow2_ipc_client_reap(p.c, comp, 4, &n), -EPROTO);
		pair_fini(&p);
	}
}

/* ---- doorbells ---------------------------------------------------------------------------------- */

static bool fd_readable(int fd)
{
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	return poll(&pfd, 1, 0) == 1;
}

static void test_doorbells(void **state)
{
	(void)state;
	struct pair p;
	struct qcow2_ipc_client_stats cs = { .size = sizeof(cs) };
	struct qcow2_ipc_server_stats ss = { .size = sizeof(ss) };
	struct qcow2_ipc_server_req req[8];
	struct qcow2_ipc_completion comp[8];
	unsigned n;

	pair_init(&p, &default_geometry, 0);
	int kick = qcow2_ipc_server_kick_fd(p.s);

	/* Busy service (no flag): commit makes no syscall. */
	submit_reads(&p, 1, 1);
	qcow2_ipc_client_get_stats(p.c, &cs);
	assert_int_equal(cs.kicks, 0);
	assert_false(fd_readable(kick));

	/* Work pending: the service may not sleep (the lost-wakeup check). */
	assert_int_equal(qcow2_ipc_server_prepare_sleep(p.s), -EAGAIN);
	assert_int_equal(atomic_load(&qcow2_ipc_client_ctrl(p.c)->sq_cons.sq_need_wakeup), 0);
	assert_int_equal(qcow2_ipc_server_take(p.s, req, 8, &n), 0);
	assert_int_equal(qcow2_ipc_server_complete(p.s, req[0].id, 0), 0);
	/* Client not sleeping: publish makes no syscall. */
	assert_int_equal(qcow2_ipc_server_publish(p.s), 0);
	qcow2_ipc_server_get_stats(p.s, &ss);
	assert_int_equal(ss.calls, 0);
	assert_int_equal(qcow2_ipc_client_reap(p.c, comp, 8, &n), 0);
	assert_int_equal(n, 1);

	/* Idle service sleeps: the next commit kicks, once. */
	assert_int_equal(qcow2_ipc_server_prepare_sleep(p.s), 0);
	submit_reads(&p, 2, 1);
	submit_reads(&p, 3, 1);
	qcow2_ipc_client_get_stats(p.c, &cs);
	assert_int_equal(cs.kicks, 2);          /* flag still set until woken */
	assert_true(fd_readable(kick));
	assert_int_equal(qcow2_ipc_server_woken(p.s), 0);
	assert_false(fd_readable(kick));
	submit_reads(&p, 4, 1);
	qcow2_ipc_client_get_stats(p.c, &cs);
	assert_int_equal(cs.kicks, 2);
	assert_int_equal(qcow2_ipc_server_wait(p.s, 0, -1), 0);    /* work: returns */
	assert_int_equal(qcow2_ipc_server_take(p.s, req, 8, &n), 0);
	assert_int_equal(n, 3);
	for (unsigned i = 0; i < n; i++)
		assert_int_equal(qcow2_ipc_server_complete(p.s, req[i].id, 0), 0);
	/* Client sleeping (flag set by wait before it polls): publish calls. */
	atomic_store(&qcow2_ipc_client_ctrl(p.c)->cq_cons.cq_need_wakeup, 1);
	assert_int_equal(qcow2_ipc_server_publish(p.s), 0);
	qcow2_ipc_server_get_stats(p.s, &ss);
	assert_int_equal(ss.calls, 1);
	uint64_t calls;
	assert_int_equal(read(qcow2_ipc_client_call_fd(p.c), &calls, 8), 8);
	assert_int_equal(calls, 1);
	atomic_store(&qcow2_ipc_client_ctrl(p.c)->cq_cons.cq_need_wakeup, 0);
	assert_int_equal(qcow2_ipc_client_wait(p.c, 0, -1), 0);
	assert_int_equal(qcow2_ipc_client_reap(p.c, comp, 8, &n), 0);
	assert_int_equal(n, 3);
	/* Nothing to wait for: a bounded wait times out. */
	assert_int_equal(qcow2_ipc_client_wait(p.c, 10, 0), -ETIMEDOUT);
	assert_int_equal(qcow2_ipc_server_wait(p.s, 10, 0), -ETIMEDOUT);
	pair_fini(&p);

	/* Without suppression every commit kicks and every publish calls. */
	struct qcow2_ipc_geometry g = default_geometry;
	int rfd = test_memfd(4096, F_SEAL_SHRINK);
	struct qcow2_ipc_client_opts co = {
		.size = sizeof(co), .geometry = g, .flags = QCOW2_IPC_CLIENT_ALWAYS_KICK,
		.nr_regions = 1, .region_fds = &rfd,
	};
	memset(&p, 0, sizeof(p));
	p.g = g;
	p.region_fd = rfd;
	assert_int_equal(qcow2_ipc_client_new(&co, &p.c), 0);
	p.so = (struct qcow2_ipc_server_opts){
		.size = sizeof(struct qcow2_ipc_server_opts),
		.disk_size = DISK_SIZE, .block_size = 512, .flags = QCOW2_IPC_SERVER_ALWAYS_CALL,
	};
	pair_open_server(&p);
	submit_reads(&p, 1, 1);
	submit_reads(&p, 2, 1);
	qcow2_ipc_client_get_stats(p.c, &cs);
	assert_int_equal(cs.kicks, 2);
	assert_int_equal(qcow2_ipc_server_take(p.s, req, 8, &n), 0);
	assert_int_equal(qcow2_ipc_server_complete(p.s, req[0].id, 0), 0);
	assert_int_equal(qcow2_ipc_server_publish(p.s), 0);
	qcow2_ipc_server_get_stats(p.s, &ss);
	assert_int_equal(ss.calls, 1);
	pair_fini(&p);
}

/* The client's sleep protocol for its own event loop: prepare_sleep sets
 * cq_need_wakeup only when the CQ is empty (the lost-wakeup check), the
 * service then calls on each publish until woken clears the flag, and the
 * client may ring its own call fd. */
static void test_client_sleep_protocol(void **state)
{
	(void)state;
	struct pair p;
	struct qcow2_ipc_server_stats ss = { .size = sizeof(ss) };
	struct qcow2_ipc_server_req req[8];
	struct qcow2_ipc_completion comp[8];
	unsigned n;

	pair_init(&p, &default_geometry, 0);
	int call = qcow2_ipc_client_call_fd(p.c);
	_Atomic uint32_t *flag = &qcow2_ipc_client_ctrl(p.c)->cq_cons.cq_need_wakeup;

	/* Nothing in the CQ: the caller may sleep, the flag is set. */
	assert_true(call >= 0);
	assert_int_equal(qcow2_ipc_client_prepare_sleep(p.c), 0);
	assert_int_equal(atomic_load(flag), 1);
	assert_false(fd_readable(call));

	/* The service publishes: the fd becomes readable; the flag stays set,
	 * so a second publish calls again. */
	submit_reads(&p, 1, 2);
	assert_int_equal(qcow2_ipc_server_take(p.s, req, 8, &n), 0);
	assert_int_equal(n, 2);
	assert_int_equal(qcow2_ipc_server_complete(p.s, req[0].id, 0), 0);
	assert_int_equal(qcow2_ipc_server_publish(p.s), 0);
	assert_true(fd_readable(call));
	assert_int_equal(qcow2_ipc_server_complete(p.s, req[1].id, 0), 0);
	assert_int_equal(qcow2_ipc_server_publish(p.s), 0);
	qcow2_ipc_server_get_stats(p.s, &ss);
	assert_int_equal(ss.calls, 2);

	/* Completions there already: no sleep, the flag is cleared. */
	assert_int_equal(qcow2_ipc_client_prepare_sleep(p.c), -EAGAIN);
	assert_int_equal(atomic_load(flag), 0);
	/* woken drains the fd (a count of 2) and leaves the flag clear. */
	assert_int_equal(qcow2_ipc_client_woken(p.c), 0);
	assert_false(fd_readable(call));
	assert_int_equal(atomic_load(flag), 0);
	assert_int_equal(qcow2_ipc_client_reap(p.c, comp, 8, &n), 0);
	assert_int_equal(n, 2);

	/* Flag clear (a busy client): publish makes no call. */
	submit_reads(&p, 3, 1);
	assert_int_equal(qcow2_ipc_server_take(p.s, req, 8, &n), 0);
	assert_int_equal(qcow2_ipc_server_complete(p.s, req[0].id, 0), 0);
	assert_int_equal(qcow2_ipc_server_publish(p.s), 0);
	qcow2_ipc_server_get_stats(p.s, &ss);
	assert_int_equal(ss.calls, 2);
	assert_false(fd_readable(call));
	assert_int_equal(qcow2_ipc_client_reap(p.c, comp, 8, &n), 0);
	assert_int_equal(n, 1);

	/* The client may wake its own loop through the fd. */
	uint64_t one = 1;
	assert_int_equal(write(call, &one, 8), 8);
	assert_true(fd_readable(call));
	assert_int_equal(qcow2_ipc_client_woken(p.c), 0);
	assert_false(fd_readable(call));

	/* A broken queue: -EPROTO from both, the flag left clear. */
	assert_int_equal(qcow2_ipc_client_prepare_sleep(p.c), 0);
	atomic_store(&qcow2_ipc_client_ctrl(p.c)->sq_prod.sq_tail, 1000);
	assert_int_equal(qcow2_ipc_server_take(p.s, req, 8, &n), -EPROTO);
	assert_true(fd_readable(call));
	assert_int_equal(qcow2_ipc_client_woken(p.c), -EPROTO);
	assert_int_equal(atomic_load(flag), 0);
	assert_int_equal(qcow2_ipc_client_prepare_sleep(p.c), -EPROTO);
	assert_int_equal(atomic_load(flag), 0);
	pair_fini(&p);
}

/* The service stops taking when the CQ could not hold the completions, and
 * then sleeps instead of spinning. (A client that keeps at most cq_entries
 * requests outstanding, as the library does, never gets here; this one
 * writes the SQ raw.) */
static void test_cq_backpressure(void **state)
{
	(void)state;
	struct pair p;
	struct qcow2_ipc_geometry g = { 4, 4, 1, 65536 };
	struct qcow2_ipc_server_req req[8];
	struct qcow2_ipc_completion comp[8];
	unsigned n;

	pair_init(&p, &g, 0);
	submit_reads(&p, 1, 4);
	assert_int_equal(qcow2_ipc_server_take(p.s, req, 8, &n), 0);
	assert_int_equal(n, 4);
	for (unsigned i = 0; i < 4; i++)
		assert_int_equal(qcow2_ipc_server_complete(p.s, req[i].id, 0), 0);
	assert_int_equal(qcow2_ipc_server_publish(p.s), 0);
	/* Reap two, submit two: the CQ still holds two, so there is room for two. */
	assert_int_equal(qcow2_ipc_client_reap(p.c, comp, 2, &n), 0);
	assert_int_equal(n, 2);
	submit_reads(&p, 5, 2);
	assert_int_equal(qcow2_ipc_server_take(p.s, req, 8, &n), 0);
	assert_int_equal(n, 2);
	for (unsigned i = 0; i < 2; i++)
		assert_int_equal(qcow2_ipc_server_complete(p.s, req[i].id, 0), 0);
	assert_int_equal(qcow2_ipc_server_publish(p.s), 0);
	/* CQ full now (4 unconsumed): nothing is taken, the service sleeps. */
	assert_int_equal(qcow2_ipc_client_reap(p.c, comp, 0, &n), 0);
	struct qcow2_ipc_ctrl *ctrl = qcow2_ipc_client_ctrl(p.c);
	/* Raw entry: client slots are all busy from the library's view. */
	struct ring_view v;
	struct qcow2_ipc_layout l;
	assert_int_equal(qcow2_ipc_compute_layout(&g, &l), 0);
	ring_view_init(&v, ctrl, &g, &l);
	v.sq[atomic_load(&ctrl->sq_prod.sq_tail) & v.sq_mask] =
		(struct qcow2_ipc_sqe){ .opcode = QCOW2_IPC_OP_FLUSH, .tag = 99 };
	atomic_store(&ctrl->sq_prod.sq_tail, atomic_load(&ctrl->sq_prod.sq_tail) + 1);
	assert_int_equal(qcow2_ipc_server_take(p.s, req, 8, &n), 0);
	assert_int_equal(n, 0);
	assert_int_equal(qcow2_ipc_server_prepare_sleep(p.s), 0);
	assert_int_equal(qcow2_ipc_server_woken(p.s), 0);
	assert_int_equal(qcow2_ipc_client_reap(p.c, comp, 8, &n), 0);
	assert_int_equal(n, 4);
	assert_int_equal(qcow2_ipc_server_prepare_sleep(p.s), -EAGAIN);
	assert_int_equal(qcow2_ipc_server_take(p.s, req, 8, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(req[0].tag, 99);
	pair_fini(&p);
}

/* The client library refuses what it can tell is wrong, and reports full
 * rings and slots as -EAGAIN. */
static void test_client_submit_checks(void **state)
{
	(void)state;
	struct pair p;
	struct qcow2_ipc_seg segs[5] = { { 0, 512, 0 }, { 512, 512, 0 }, { 1024, 512, 0 },
					 { 1536, 512, 0 }, { 2048, 512, 0 } };
	pair_init(&p, &default_geometry, 0);
	struct qcow2_ipc_req bad[] = {
		{ .opcode = 0 },
		{ .opcode = 9 },
		{ .opcode = QCOW2_IPC_OP_READ, .nr_segs = 0, .segs = segs },
		{ .opcode = QCOW2_IPC_OP_READ, .nr_segs = 5, .segs = segs },
		{ .opcode = QCOW2_IPC_OP_READ, .nr_segs = 1, .segs = NULL },
		{ .opcode = QCOW2_IPC_OP_WRITE, .flags = QCOW2_IPC_F_UNMAP, .nr_segs = 1, .segs = segs },
		{ .opcode = QCOW2_IPC_OP_FLUSH, .nr_segs = 1, .segs = segs },
		{ .opcode = QCOW2_IPC_OP_WRITE_ZEROES, .flags = 2, .len = 512 },
		{ .opcode = QCOW2_IPC_OP_DISCARD, .flags = QCOW2_IPC_F_UNMAP, .len = 512 },
	};
	for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(qcow2_ipc_client_submit(p.c, &bad[i]), -EINVAL);
	assert_int_equal(qcow2_ipc_client_in_flight(p.c), 0);

	/* SQ of 8: the ninth waits for the service. */
	struct qcow2_ipc_req r = { .opcode = QCOW2_IPC_OP_READ, .nr_segs = 4, .segs = segs };
	for (unsigned i = 0; i < 8; i++)
		assert_int_equal(qcow2_ipc_client_submit(p.c, &r), 0);
	assert_int_equal(qcow2_ipc_client_submit(p.c, &r), -EAGAIN);
	assert_int_equal(qcow2_ipc_client_commit(p.c), 0);
	struct qcow2_ipc_server_req req[16];
	unsigned n;
	assert_int_equal(qcow2_ipc_server_take(p.s, req, 16, &n), 0);
	assert_int_equal(n, 8);
	assert_int_equal(req[7].len, 2048);
	assert_int_equal(req[7].nr_iov, 4);
	/* 16 slots (cq_entries): 8 more fit, then none until a completion is reaped. */
	for (unsigned i = 0; i < 8; i++)
		assert_int_equal(qcow2_ipc_client_submit(p.c, &r), 0);
	assert_int_equal(qcow2_ipc_client_commit(p.c), 0);
	assert_int_equal(qcow2_ipc_server_take(p.s, req + 8, 8, &n), 0);
	assert_int_equal(n, 8);
	assert_int_equal(qcow2_ipc_client_submit(p.c, &r), -EAGAIN);
	assert_int_equal(qcow2_ipc_server_complete(p.s, req[0].id, 0), 0);
	assert_int_equal(qcow2_ipc_server_publish(p.s), 0);
	assert_int_equal(qcow2_ipc_client_submit(p.c, &r), -EAGAIN);   /* not reaped yet */
	struct qcow2_ipc_completion comp[4];
	assert_int_equal(qcow2_ipc_client_reap(p.c, comp, 4, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(qcow2_ipc_client_submit(p.c, &r), 0);
	pair_fini(&p);
}

/* Guest RAM is often a hugetlbfs memfd: its mapping must be huge-page
 * aligned. Skipped where no huge pages are available. */
static void test_hugetlb_region(void **state)
{
	(void)state;
	const uint64_t huge = 2u << 20;
	int fd = memfd_create("ipc-test-huge", MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_HUGETLB);
	if (fd < 0)
		skip();
	void *probe = MAP_FAILED;
	if (ftruncate(fd, (off_t)huge) == 0)
		probe = mmap(NULL, huge, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
	if (probe == MAP_FAILED) {
		close(fd);
		skip();
	}
	munmap(probe, huge);
	assert_int_equal(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK), 0);
	struct qcow2_ipc_client *c;
	struct qcow2_ipc_client_opts co = { .size = sizeof(co), .geometry = default_geometry,
					    .nr_regions = 1, .region_fds = &fd };
	assert_int_equal(qcow2_ipc_client_new(&co, &c), 0);
	struct qcow2_ipc_attach att;
	struct qcow2_ipc_server *s;
	struct qcow2_ipc_server_opts so = {
		.size = sizeof(so), .disk_size = DISK_SIZE, .block_size = 512,
	};
	assert_int_equal(test_attach_from_client(c, &default_geometry, &fd, 1, &att), 0);
	assert_int_equal(qcow2_ipc_server_open(&att, &so, &s), 0);
	void *base;
	uint64_t size;
	assert_int_equal(qcow2_ipc_server_region(s, 1, &base, &size), 0);
	assert_int_equal(size, huge);
	assert_int_equal((uintptr_t)base % huge, 0);
	memset(base, 0x77, huge);
	qcow2_ipc_server_close(s);
	qcow2_ipc_client_free(c);
	close(fd);
}

/* ---- extensible structs ------------------------------------------------------------ */

/* Options and stats carry their size: too small (unset) or too large is
 * refused, a later version's struct works while its new fields are 0, and
 * stats fill only what the library knows. */
static void test_extensible_structs(void **state)
{
	(void)state;
	struct qcow2_ipc_client *c = NULL;
	struct {
		struct qcow2_ipc_client_opts o;
		uint64_t later;
	} co2 = { .o = { .size = sizeof(co2), .geometry = default_geometry } };
	struct qcow2_ipc_client_opts co = co2.o;
	uint32_t bad_sizes[] = { 0, sizeof(co) - 4, 4097 };

	for (unsigned i = 0; i < sizeof(bad_sizes) / sizeof(bad_sizes[0]); i++) {
		co.size = bad_sizes[i];
		assert_int_equal(qcow2_ipc_client_new(&co, &c), -EINVAL);
	}
	co2.later = 1;
	assert_int_equal(qcow2_ipc_client_new(&co2.o, &c), -EOPNOTSUPP);
	co2.later = 0;
	assert_int_equal(qcow2_ipc_client_new(&co2.o, &c), 0);
	qcow2_ipc_client_free(c);

	struct pair p;
	pair_init(&p, &default_geometry, 0);
	qcow2_ipc_server_close(p.s);
	p.s = NULL;
	struct {
		struct qcow2_ipc_server_opts o;
		uint64_t later;
	} so2 = { .o = p.so };
	so2.o.size = sizeof(so2);
	struct qcow2_ipc_server_opts so = p.so;
	struct qcow2_ipc_attach att;
	assert_int_equal(test_attach_from_client(p.c, &p.g, &p.region_fd, 1, &att), 0);
	for (unsigned i = 0; i < sizeof(bad_sizes) / sizeof(bad_sizes[0]); i++) {
		so.size = bad_sizes[i];
		assert_int_equal(qcow2_ipc_server_open(&att, &so, &p.s), -EINVAL);
	}
	so.size = sizeof(so);
	so.reserved0 = 1;
	assert_int_equal(qcow2_ipc_server_open(&att, &so, &p.s), -EINVAL);
	so2.later = 1;
	assert_int_equal(qcow2_ipc_server_open(&att, &so2.o, &p.s), -EOPNOTSUPP);
	so2.later = 0;
	assert_int_equal(qcow2_ipc_server_open(&att, &so2.o, &p.s), 0);
	qcow2_ipc_attach_close(&att);

	/* One request through, then the stats of both sides. */
	submit_reads(&p, 1, 1);
	struct qcow2_ipc_server_req req[1];
	unsigned n;
	assert_int_equal(qcow2_ipc_server_take(p.s, req, 1, &n), 0);
	assert_int_equal(n, 1);

	struct qcow2_ipc_client_stats cs = { .size = 0 };
	struct qcow2_ipc_server_stats ss = { .size = sizeof(ss) - 8 };
	assert_int_equal(qcow2_ipc_client_get_stats(p.c, &cs), -EINVAL);
	assert_int_equal(qcow2_ipc_server_get_stats(p.s, &ss), -EINVAL);
	struct {
		struct qcow2_ipc_client_stats s;
		uint64_t later;
	} cs2;
	struct {
		struct qcow2_ipc_server_stats s;
		uint64_t later;
	} ss2;
	memset(&cs2, 0xa5, sizeof(cs2));
	memset(&ss2, 0xa5, sizeof(ss2));
	cs2.s.size = sizeof(cs2);
	ss2.s.size = sizeof(ss2);
	assert_int_equal(qcow2_ipc_client_get_stats(p.c, &cs2.s), 0);
	assert_int_equal(qcow2_ipc_server_get_stats(p.s, &ss2.s), 0);
	assert_int_equal(cs2.s.size, sizeof(cs2));      /* left as the caller set it */
	assert_int_equal(cs2.s.reserved0, 0);
	assert_int_equal(cs2.s.submitted, 1);
	assert_int_equal(cs2.s.completed, 0);
	assert_int_equal(cs2.later, 0);
	assert_int_equal(ss2.s.size, sizeof(ss2));
	assert_int_equal(ss2.s.reserved0, 0);
	assert_int_equal(ss2.s.taken, 1);
	assert_int_equal(ss2.s.invalid, 0);
	assert_int_equal(ss2.later, 0);
	pair_fini(&p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_layout),
		cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_validate_fields),
		cmocka_unit_test(test_tag_generation),
		cmocka_unit_test(test_wraparound),
		cmocka_unit_test(test_inflight_reattach),
		cmocka_unit_test(test_protocol_errors),
		cmocka_unit_test(test_doorbells),
		cmocka_unit_test(test_client_sleep_protocol),
		cmocka_unit_test(test_cq_backpressure),
		cmocka_unit_test(test_client_submit_checks),
		cmocka_unit_test(test_hugetlb_region),
		cmocka_unit_test(test_extensible_structs),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
