/* Unit tests of the attach handshake over socketpairs: good exchanges on
 * stream and seqpacket sockets, and every kind of bad message and bad fd the
 * service must refuse, without leaking an fd. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "handshake.h"
#include "ipc_test_internal.h"

#include <dirent.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

static const struct qcow2_ipc_geometry geom = {
	.sq_entries = 16, .cq_entries = 32, .max_segs = 8, .data_size = 1 << 16,
};
static const struct qcow2_ipc_server_opts sopts = {
	.size = sizeof(sopts), .disk_size = 1 << 30, .block_size = 512,
};

static unsigned count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	unsigned n = 0;
	assert_non_null(d);
	while (readdir(d))
		n++;
	closedir(d);
	return n;
}

struct accept_arg {
	int sock;
	int ret;
	struct qcow2_ipc_server *s;
};

static void *accept_thread(void *p)
{
	struct accept_arg *a = p;
	a->ret = qcow2_ipc_server_accept(a->sock, &sopts, &a->s);
	return NULL;
}

static void good_exchange(int type)
{
	int sv[2];
	struct qcow2_ipc_client *c;
	int rfd = test_memfd(1 << 20, F_SEAL_SHRINK | F_SEAL_GROW);
	struct qcow2_ipc_client_opts co = {
		.size = sizeof(co), .geometry = geom, .nr_regions = 1, .region_fds = &rfd,
	};
	unsigned fds_before = count_fds();

	assert_int_equal(socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv), 0);
	assert_int_equal(qcow2_ipc_client_new(&co, &c), 0);
	struct accept_arg a = { .sock = sv[1] };
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, accept_thread, &a), 0);
	assert_int_equal(qcow2_ipc_client_handshake(c, sv[0]), 0);
	pthread_join(t, NULL);
	assert_int_equal(a.ret, 0);
	void *base;
	uint64_t size;
	assert_int_equal(qcow2_ipc_server_region(a.s, 1, &base, &size), 0);
	assert_int_equal(size, 1 << 20);
	assert_int_equal(qcow2_ipc_server_region(a.s, 0, &base, &size), 0);
	assert_int_equal(size, 1 << 16);
	assert_int_equal(qcow2_ipc_server_region(a.s, 2, &base, &size), -EINVAL);

	/* One request through the attached queue. */
	struct qcow2_ipc_req r = { .opcode = QCOW2_IPC_OP_FLUSH, .tag = 5 };
	assert_int_equal(qcow2_ipc_client_submit(c, &r), 0);
	assert_int_equal(qcow2_ipc_client_commit(c), 0);
	struct qcow2_ipc_server_req req[2];
	unsigned n;
	assert_int_equal(qcow2_ipc_server_take(a.s, req, 2, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(qcow2_ipc_server_complete(a.s, req[0].id, 0), 0);
	assert_int_equal(qcow2_ipc_server_publish(a.s), 0);
	assert_int_equal(qcow2_ipc_client_wait(c, 0, -1), 0);
	struct qcow2_ipc_completion comp;
	assert_int_equal(qcow2_ipc_client_reap(c, &comp, 1, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(comp.tag, 5);

	/* Re-attach on a new connection (a restarted service). */
	qcow2_ipc_server_close(a.s);
	close(sv[0]);
	close(sv[1]);
	assert_int_equal(socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv), 0);
	a = (struct accept_arg){ .sock = sv[1] };
	assert_int_equal(pthread_create(&t, NULL, accept_thread, &a), 0);
	assert_int_equal(qcow2_ipc_client_handshake(c, sv[0]), 0);
	pthread_join(t, NULL);
	assert_int_equal(a.ret, 0);
	qcow2_ipc_server_close(a.s);
	qcow2_ipc_client_free(c);
	close(rfd);
	close(sv[0]);
	close(sv[1]);
	assert_int_equal(count_fds(), fds_before - 1);  /* rfd was made after counting */
}

static void test_good_stream(void **state)
{
	(void)state;
	good_exchange(SOCK_STREAM);
}

static void test_good_seqpacket(void **state)
{
	(void)state;
	good_exchange(SOCK_SEQPACKET);
}

/* ---- bad hellos ------------------------------------------------------------------- */

struct bad_env {
	struct qcow2_ipc_client *c;
	struct qcow2_ipc_hello hello;   /* a valid one to spoil */
	int fds[4];                     /* queue, kick, call, region */
	int region_fd;
};

static void env_init(struct bad_env *e)
{
	e->region_fd = test_memfd(1 << 16, F_SEAL_SHRINK);
	struct qcow2_ipc_client_opts co = { .size = sizeof(co), .geometry = geom,
					    .nr_regions = 1, .region_fds = &e->region_fd };
	assert_int_equal(qcow2_ipc_client_new(&co, &e->c), 0);
	struct qcow2_ipc_layout l;
	assert_int_equal(qcow2_ipc_compute_layout(&geom, &l), 0);
	e->hello = (struct qcow2_ipc_hello){
		.magic = QCOW2_IPC_HELLO_MAGIC, .version_min = 1, .version_max = 1,
		.sq_entries = geom.sq_entries, .cq_entries = geom.cq_entries,
		.max_segs = geom.max_segs, .nr_regions = 1, .data_size = geom.data_size,
		.region_size = l.size,
	};
	e->fds[0] = qcow2_ipc_client_queue_fd(e->c);
	e->fds[1] = qcow2_ipc_client_kick_fd(e->c);
	e->fds[2] = qcow2_ipc_client_call_fd(e->c);
	e->fds[3] = e->region_fd;
}

static void env_fini(struct bad_env *e)
{
	qcow2_ipc_client_free(e->c);
	close(e->region_fd);
}

/* sendmsg with any number of fds (handshake_send refuses more than 19). */
static void raw_send(int sock, const void *msg, size_t len, const int *fds, unsigned nfds)
{
	union {
		char buf[CMSG_SPACE(sizeof(int) * 64)];
		struct cmsghdr align;
	} cbuf;
	struct iovec iov = { .iov_base = (void *)msg, .iov_len = len };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
	assert_true(nfds <= 64);
	if (nfds) {
		memset(&cbuf, 0, sizeof(cbuf));
		m.msg_control = cbuf.buf;
		m.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
		struct cmsghdr *c = CMSG_FIRSTHDR(&m);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
		memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
	}
	assert_int_equal(sendmsg(sock, &m, MSG_NOSIGNAL), (ssize_t)len);
}

/* Sends hello + fds raw, runs accept, returns its result and checks the
 * reply carries the same status. */
static int try_accept(int type, const void *msg, size_t len, const int *fds, unsigned nfds)
{
	int sv[2];
	unsigned before = count_fds();
	assert_int_equal(socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv), 0);
	if (len)
		raw_send(sv[0], msg, len, fds, nfds);
	shutdown(sv[0], SHUT_WR);
	struct qcow2_ipc_server *s = NULL;
	int ret = qcow2_ipc_server_accept(sv[1], &sopts, &s);
	if (ret == 0)
		qcow2_ipc_server_close(s);
	struct qcow2_ipc_reply r;
	int rfds[4];
	unsigned nr;
	close(sv[1]);
	int e = handshake_recv(sv[0], &r, sizeof(r), rfds, 4, &nr);
	if (ret == -ECONNRESET) {
		assert_int_equal(e, -ECONNRESET);       /* no hello, no reply */
	} else {
		assert_int_equal(e, 0);
		assert_int_equal(nr, 0);
		assert_int_equal(r.magic, QCOW2_IPC_REPLY_MAGIC);
		assert_int_equal(r.status, ret);
	}
	close(sv[0]);
	assert_int_equal(count_fds(), before);         /* nothing leaked */
	return ret;
}

static void test_bad_hello(void **state)
{
	(void)state;
	struct bad_env e;
	struct qcow2_ipc_hello h;
	env_init(&e);

	for (int type = SOCK_STREAM; type <= SOCK_SEQPACKET; type += SOCK_SEQPACKET - SOCK_STREAM) {
		assert_int_equal(try_accept(type, &e.hello, sizeof(h), e.fds, 4), 0);

		h = e.hello; h.magic ^= 1;
		assert_int_equal(try_accept(type, &h, sizeof(h), e.fds, 4), -EPROTO);
		h = e.hello; h.flags = 1;
		assert_int_equal(try_accept(type, &h, sizeof(h), e.fds, 4), -EPROTO);
		h = e.hello; h.reserved[4] = 1;
		assert_int_equal(try_accept(type, &h, sizeof(h), e.fds, 4), -EPROTO);
		h = e.hello; h.version_min = 2; h.version_max = 3;
		assert_int_equal(try_accept(type, &h, sizeof(h), e.fds, 4), -EPROTONOSUPPORT);
		h = e.hello; h.version_min = 0; h.version_max = 0;
		assert_int_equal(try_accept(type, &h, sizeof(h), e.fds, 4), -EPROTONOSUPPORT);
		h = e.hello; h.version_min = 1; h.version_max = 9;  /* a newer client */
		assert_int_equal(try_accept(type, &h, sizeof(h), e.fds, 4), 0);
		h = e.hello; h.sq_entries = 3;
		assert_int_equal(try_accept(type, &h, sizeof(h), e.fds, 4), -EINVAL);
		h = e.hello; h.region_size += 4096;
		assert_int_equal(try_accept(type, &h, sizeof(h), e.fds, 4), -EINVAL);
		h = e.hello; h.data_size += 4096;   /* geometry of another region */
		assert_int_equal(try_accept(type, &h, sizeof(h), e.fds, 4), -EINVAL);
		h = e.hello; h.nr_regions = 17;
		assert_int_equal(try_accept(type, &h, sizeof(h), e.fds, 4), -EINVAL);

		/* fd counts */
		assert_int_equal(try_accept(type, &e.hello, sizeof(h), e.fds, 3), -EPROTO);
		assert_int_equal(try_accept(type, &e.hello, sizeof(h), NULL, 0), -EPROTO);
		h = e.hello; h.nr_regions = 0;
		assert_int_equal(try_accept(type, &h, sizeof(h), e.fds, 4), -EPROTO);
		int many[40];
		for (int i = 0; i < 40; i++)
			many[i] = e.fds[i % 4];
		h = e.hello; h.nr_regions = 16;
		assert_int_equal(try_accept(type, &h, sizeof(h), many, 20), -EPROTO);
		assert_int_equal(try_accept(type, &h, sizeof(h), many, 40), -EPROTO);
		/* 19 is the most there can be; these duplicates are no memfds. */
		assert_int_equal(try_accept(type, &h, sizeof(h), many, 19), -EINVAL);
	}

	/* A stream may deliver the hello in pieces: fds with the first. */
	{
		int sv[2];
		assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
		raw_send(sv[0], &e.hello, 10, e.fds, 4);
		raw_send(sv[0], (const uint8_t *)&e.hello + 10, 54, NULL, 0);
		struct qcow2_ipc_server *s;
		assert_int_equal(qcow2_ipc_server_accept(sv[1], &sopts, &s), 0);
		qcow2_ipc_server_close(s);
		close(sv[0]);
		close(sv[1]);
	}

	/* Short, long and missing messages. */
	assert_int_equal(try_accept(SOCK_STREAM, &e.hello, 10, e.fds, 4), -EPROTO);
	assert_int_equal(try_accept(SOCK_SEQPACKET, &e.hello, 10, e.fds, 4), -EPROTO);
	uint8_t longer[65];
	memcpy(longer, &e.hello, 64);
	longer[64] = 0;
	assert_int_equal(try_accept(SOCK_SEQPACKET, longer, 65, e.fds, 4), -EPROTO);
	assert_int_equal(try_accept(SOCK_STREAM, NULL, 0, NULL, 0), -ECONNRESET);
	assert_int_equal(try_accept(SOCK_SEQPACKET, NULL, 0, NULL, 0), -ECONNRESET);
	env_fini(&e);
}

/* The service's policy limits on what a client may make it map. */
static void test_limits(void **state)
{
	(void)state;
	struct bad_env e;
	env_init(&e);
	struct qcow2_ipc_layout l;
	assert_int_equal(qcow2_ipc_compute_layout(&geom, &l), 0);
	uint64_t total = l.size + (1 << 16);     /* queue + the 64 KiB region */
	struct {
		uint64_t max_map;
		uint32_t max_entries;
		int expect;
	} cases[] = {
		{ total, 0, 0 }, { total - 1, 0, -E2BIG }, { 0, 32, 0 }, { 0, 16, -E2BIG },
		{ total, 32, 0 },
	};
	for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct qcow2_ipc_attach att;
		struct qcow2_ipc_server *s = NULL;
		struct qcow2_ipc_server_opts o = sopts;
		o.max_map_bytes = cases[i].max_map;
		o.max_entries = cases[i].max_entries;
		assert_int_equal(test_attach_from_client(e.c, &geom, &e.region_fd, 1, &att), 0);
		assert_int_equal(qcow2_ipc_server_open(&att, &o, &s), cases[i].expect);
		qcow2_ipc_attach_close(&att);
		qcow2_ipc_server_close(s);
	}
	env_fini(&e);
}

/* struct qcow2_ipc_attach is extensible: recv_hello and open check its size
 * field, fill only what the library knows and zero a later version's rest. */
static void test_attach_size(void **state)
{
	(void)state;
	struct bad_env e;
	env_init(&e);
	unsigned before = count_fds();
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
	raw_send(sv[0], &e.hello, sizeof(e.hello), e.fds, 4);

	/* No size, or out of range: refused before the socket is read. */
	uint32_t bad_sizes[] = { 0, sizeof(struct qcow2_ipc_attach) - 4, 4097 };
	for (unsigned i = 0; i < sizeof(bad_sizes) / sizeof(bad_sizes[0]); i++) {
		struct qcow2_ipc_attach att;
		memset(&att, 0x5a, sizeof(att));
		att.size = bad_sizes[i];
		assert_int_equal(qcow2_ipc_server_recv_hello(sv[1], &att), -EINVAL);
		assert_int_equal(att.queue_fd, 0x5a5a5a5a);     /* untouched */
	}

	/* A later version's struct: what this library does not fill is 0. */
	struct {
		struct qcow2_ipc_attach att;
		uint64_t later[2];
	} v2;
	memset(&v2, 0xa5, sizeof(v2));
	v2.att.size = sizeof(v2);
	assert_int_equal(qcow2_ipc_server_recv_hello(sv[1], &v2.att), 0);
	assert_int_equal(v2.att.size, sizeof(v2));
	assert_int_equal(v2.att.reserved0, 0);
	assert_int_equal(v2.later[0], 0);
	assert_int_equal(v2.later[1], 0);
	assert_int_equal(v2.att.version, QCOW2_IPC_VERSION);
	assert_int_equal(v2.att.nr_regions, 1);
	assert_true(v2.att.queue_fd >= 0 && v2.att.region_fds[0] >= 0);

	/* open: a bad size or reserved field is refused and leaves the fds
	 * with the caller; a later field set is one this library cannot honour. */
	struct qcow2_ipc_server *s = NULL;
	v2.att.size = 0;
	assert_int_equal(qcow2_ipc_server_open(&v2.att, &sopts, &s), -EINVAL);
	v2.att.size = sizeof(v2.att);
	v2.att.reserved0 = 1;
	assert_int_equal(qcow2_ipc_server_open(&v2.att, &sopts, &s), -EINVAL);
	v2.att.reserved0 = 0;
	v2.att.size = sizeof(v2);
	v2.later[1] = 1;
	assert_int_equal(qcow2_ipc_server_open(&v2.att, &sopts, &s), -EOPNOTSUPP);
	assert_true(v2.att.queue_fd >= 0 && v2.att.region_fds[0] >= 0);
	v2.later[1] = 0;
	assert_int_equal(qcow2_ipc_server_open(&v2.att, &sopts, &s), 0);
	assert_int_equal(v2.att.queue_fd, -1);
	qcow2_ipc_attach_close(&v2.att);
	qcow2_ipc_server_close(s);
	close(sv[0]);
	close(sv[1]);
	assert_int_equal(count_fds(), before);         /* nothing leaked */
	env_fini(&e);
}

static void test_bad_fds(void **state)
{
	(void)state;
	struct bad_env e;
	int fds[4];
	env_init(&e);

	/* A pipe where an eventfd belongs. */
	int pp[2];
	assert_int_equal(pipe(pp), 0);
	memcpy(fds, e.fds, sizeof(fds));
	fds[1] = pp[0];
	assert_int_equal(try_accept(SOCK_STREAM, &e.hello, 64, fds, 4), -EINVAL);
	memcpy(fds, e.fds, sizeof(fds));
	fds[2] = pp[1];
	assert_int_equal(try_accept(SOCK_STREAM, &e.hello, 64, fds, 4), -EINVAL);
	/* An eventfd where the queue memfd belongs. */
	memcpy(fds, e.fds, sizeof(fds));
	fds[0] = e.fds[1];
	assert_int_equal(try_accept(SOCK_STREAM, &e.hello, 64, fds, 4), -EINVAL);
	/* A memfd without F_SEAL_SHRINK (queue, then region). */
	struct qcow2_ipc_layout l;
	assert_int_equal(qcow2_ipc_compute_layout(&geom, &l), 0);
	int unsealed = test_memfd(l.size, 0);
	memcpy(fds, e.fds, sizeof(fds));
	fds[0] = unsealed;
	assert_int_equal(try_accept(SOCK_STREAM, &e.hello, 64, fds, 4), -EPERM);
	memcpy(fds, e.fds, sizeof(fds));
	fds[3] = unsealed;
	assert_int_equal(try_accept(SOCK_STREAM, &e.hello, 64, fds, 4), -EPERM);
	/* Sealed, right size, but not the queue (no header). */
	int other = test_memfd(l.size, F_SEAL_SHRINK);
	memcpy(fds, e.fds, sizeof(fds));
	fds[0] = other;
	assert_int_equal(try_accept(SOCK_STREAM, &e.hello, 64, fds, 4), -EINVAL);
	/* Sealed, wrong size. */
	int small = test_memfd(l.size - 4096, F_SEAL_SHRINK);
	memcpy(fds, e.fds, sizeof(fds));
	fds[0] = small;
	assert_int_equal(try_accept(SOCK_STREAM, &e.hello, 64, fds, 4), -EINVAL);
	/* The queue opened read-only. */
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", e.fds[0]);
	int ro = open(path, O_RDONLY | O_CLOEXEC);
	assert_true(ro >= 0);
	memcpy(fds, e.fds, sizeof(fds));
	fds[0] = ro;
	assert_int_equal(try_accept(SOCK_STREAM, &e.hello, 64, fds, 4), -EACCES);
	/* A regular file of the right size on a normal file system. */
	char tmpl[] = "/tmp/ipc-test-XXXXXX";
	int reg = mkstemp(tmpl);
	assert_true(reg >= 0);
	unlink(tmpl);
	assert_int_equal(ftruncate(reg, (off_t)l.size), 0);
	memcpy(fds, e.fds, sizeof(fds));
	fds[0] = reg;
	assert_int_equal(try_accept(SOCK_STREAM, &e.hello, 64, fds, 4), -EINVAL);
	/* The client library refuses an unsealed region up front. */
	struct qcow2_ipc_client *c2;
	struct qcow2_ipc_client_opts co = { .size = sizeof(co), .geometry = geom,
					    .nr_regions = 1, .region_fds = &unsealed };
	assert_int_equal(qcow2_ipc_client_new(&co, &c2), -EPERM);

	close(pp[0]);
	close(pp[1]);
	close(unsealed);
	close(other);
	close(small);
	close(ro);
	close(reg);
	env_fini(&e);
}

/* Random bytes as a hello, with random fds among the client's: never a crash,
 * never an fd leak, only a refusal (or, by chance, an attach). */
static void test_garbage_hello(void **state)
{
	(void)state;
	struct bad_env e;
	env_init(&e);
	uint64_t rs = 12345;
	for (unsigned i = 0; i < 300; i++) {
		struct qcow2_ipc_hello h = e.hello;
		uint8_t *b = (uint8_t *)&h;
		unsigned flips = (unsigned)test_rand_range(&rs, 1, 8);
		for (unsigned k = 0; k < flips; k++)
			b[test_rand(&rs) % sizeof(h)] = (uint8_t)test_rand(&rs);
		if (i % 3 == 0)
			for (unsigned k = 0; k < sizeof(h); k++)
				b[k] = (uint8_t)test_rand(&rs);
		int fds[6];
		unsigned nfds = (unsigned)test_rand_range(&rs, 0, 6);
		for (unsigned k = 0; k < nfds; k++)
			fds[k] = e.fds[test_rand(&rs) % 4];
		int type = (i & 1) ? SOCK_SEQPACKET : SOCK_STREAM;
		int r = try_accept(type, &h, sizeof(h), fds, nfds);
		assert_true(r <= 0);
	}
	env_fini(&e);
}

/* ---- bad replies, seen by the client ------------------------------------------------ */

struct fake_arg {
	int sock;
	struct qcow2_ipc_reply reply;
	bool with_fd;
};

static void *fake_service(void *p)
{
	struct fake_arg *a = p;
	struct qcow2_ipc_hello h;
	int fds[19];
	unsigned n;
	if (handshake_recv(a->sock, &h, sizeof(h), fds, 19, &n) == 0)
		for (unsigned i = 0; i < n; i++)
			close(fds[i]);
	int efd = eventfd(0, EFD_CLOEXEC);
	handshake_send(a->sock, &a->reply, sizeof(a->reply), &efd, a->with_fd ? 1 : 0);
	close(efd);
	return NULL;
}

static int client_against(struct qcow2_ipc_client *c, struct qcow2_ipc_reply reply, bool with_fd)
{
	int sv[2];
	unsigned before = count_fds();
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	struct fake_arg a = { .sock = sv[1], .reply = reply, .with_fd = with_fd };
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, fake_service, &a), 0);
	int r = qcow2_ipc_client_handshake(c, sv[0]);
	pthread_join(t, NULL);
	close(sv[0]);
	close(sv[1]);
	assert_int_equal(count_fds(), before);
	return r;
}

static void test_bad_reply(void **state)
{
	(void)state;
	struct bad_env e;
	env_init(&e);
	struct qcow2_ipc_reply ok = { .magic = QCOW2_IPC_REPLY_MAGIC, .version = 1 };
	struct qcow2_ipc_reply r;

	assert_int_equal(client_against(e.c, ok, false), 0);
	assert_int_equal(client_against(e.c, ok, true), -EPROTO);
	r = ok; r.magic = 0;
	assert_int_equal(client_against(e.c, r, false), -EPROTO);
	r = ok; r.status = -EPROTONOSUPPORT;
	assert_int_equal(client_against(e.c, r, false), -EPROTONOSUPPORT);
	r = ok; r.status = 3;
	assert_int_equal(client_against(e.c, r, false), -EPROTO);
	r = ok; r.version = 2;
	assert_int_equal(client_against(e.c, r, false), -EPROTO);
	env_fini(&e);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_good_stream),
		cmocka_unit_test(test_good_seqpacket),
		cmocka_unit_test(test_bad_hello),
		cmocka_unit_test(test_bad_fds),
		cmocka_unit_test(test_limits),
		cmocka_unit_test(test_attach_size),
		cmocka_unit_test(test_garbage_hello),
		cmocka_unit_test(test_bad_reply),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
