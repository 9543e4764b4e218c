/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * libqcow2-client against a real qcow2d (started here on a temporary
 * socket, stopped by its PID with SIGTERM, which must exit 0). One
 * scenario per run:
 *
 *   props    properties before and after connect and start, what may be
 *            set when (-EACCES), unknown names (-ENOENT), types (-ENOTTY),
 *            bad values (-EINVAL), failed connects, errno left alone
 *   io       two queues on two threads: seeded random reads, writes (some
 *            FUA), readv/writev with mixed segments, write_zeroes with and
 *            without NO_UNMAP, discards and flushes, in batches of
 *            requests that do not overlap, some buffers in a mapped region
 *            (zero copy), some malloc'd (bounced through a small data
 *            area, so that requests wait for room), checked against an
 *            in-memory model; every block read back; image.stats counts
 *            what was sent; then qemu-img check and qemu-img convert must
 *            agree with the model
 *   edges    invalid requests and arguments (-EINVAL with a message, the
 *            queue goes on), FUA and vectored IO, read-only images and
 *            handles (-EROFS), do_io with min 0 and with a timeout that
 *            passes (-ETIME: qcow2d is stopped with SIGSTOP), the
 *            completion fd with epoll and poll, more requests than
 *            num-entries and more bounced bytes than the data area, a
 *            second handle attached by name, q2c_destroy() with requests
 *            in flight (qcow2d stays healthy), a queue whose image is
 *            closed under it (-ECONNRESET)
 *
 *   restart  q2c_reconnect(): qcow2d stopped with requests in the ring and
 *            killed, then started again (a handle attached by name waits for
 *            the image to be open again: -ENOENT until then); killed while
 *            busy at random moments, many times; stopped cleanly with a
 *            request left in the ring. Every request completes exactly once,
 *            with the right data; then qemu-img as judge (leaks allowed)
 *
 *   client_io QCOW2D QEMU_IMG WORKDIR props|io|edges|restart
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "qcow2-client.h"

#define DISK (64ull << 20)
#define BLK 4096u

static const char *qemu_img, *workdir;
static char sock_path[108];
static pid_t svc_pid = -1;
static atomic_int failures;

#define CHECK(cond)                                                                   \
	do {                                                                          \
		if (!(cond)) {                                                        \
			fprintf(stderr, "%s:%d: check failed: %s (last message: %s)\n", \
				__FILE__, __LINE__, #cond, q2c_get_error_msg());      \
			failures++;                                                   \
			goto out;                                                     \
		}                                                                     \
	} while (0)

static void die(const char *what)
{
	fprintf(stderr, "client_io: %s: %s\n", what, strerror(errno));
	if (svc_pid > 0)
		kill(svc_pid, SIGKILL);
	exit(1);
}

static uint64_t rnd(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static void fill(void *buf, size_t len, uint64_t *seed)
{
	uint8_t *p = buf;
	for (size_t i = 0; i < len; i++)
		p[i] = (uint8_t)rnd(seed);
}

/* ---- the service -------------------------------------------------------------- */

static int connect_ctl(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock_path);
	if (fd < 0)
		die("socket");
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

/* One control call on a connection of its own; the parsed reply. */
static json_t *ctl(const char *method, const char *params_fmt, ...)
{
	char line[4096], params[2048], reply[1 << 16];
	size_t n = 0;
	json_error_t jerr;
	va_list ap;
	int fd = connect_ctl();

	if (fd < 0)
		return NULL;
	va_start(ap, params_fmt);
	vsnprintf(params, sizeof(params), params_fmt, ap);
	va_end(ap);
	n = (size_t)snprintf(line, sizeof(line), "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":"
			     "\"%s\",\"params\":%s}\n", method, params);
	if (write(fd, line, n) != (ssize_t)n) {
		close(fd);
		return NULL;
	}
	n = 0;
	while (n < sizeof(reply) - 1 && read(fd, reply + n, 1) == 1 && reply[n] != '\n')
		n++;
	close(fd);
	reply[n] = '\0';
	return json_loads(reply, 0, &jerr);
}

static json_t *result(json_t *r)
{
	return json_object_get(r, "result");
}

static void start_service(void)
{
	svc_pid = fork();
	if (svc_pid < 0)
		die("fork");
	if (svc_pid == 0) {
		execl(getenv("QCOW2D"), "qcow2d", "--socket", sock_path, "--workers", "2",
		      "--log-level", getenv("CI_LOG") ? getenv("CI_LOG") : "warn",
		      "--flush-interval", "50", (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 1000; i++) {
		int fd = connect_ctl();
		if (fd >= 0) {
			close(fd);
			return;
		}
		usleep(10000);
	}
	die("qcow2d did not start listening");
}

/* SIGTERM, and qcow2d must exit 0. */
static int stop_service(void)
{
	int status;

	if (kill(svc_pid, SIGTERM) < 0 || waitpid(svc_pid, &status, 0) != svc_pid)
		return -1;
	svc_pid = -1;
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		fprintf(stderr, "client_io: qcow2d exited with status 0x%x\n", status);
		return -1;
	}
	return 0;
}

static void make_image(const char *name, char *path, size_t len)
{
	char cmd[1024];

	snprintf(path, len, "%s/%s.qcow2", workdir, name);
	snprintf(cmd, sizeof(cmd), "%s create -q -f qcow2 %s %llu", qemu_img, path,
		 (unsigned long long)DISK);
	if (system(cmd) != 0)
		die("qemu-img create");
}

/* qemu-img check is clean and the image reads back as model (len bytes). */
static int judge(const char *path, const uint8_t *model)
{
	char cmd[1024], raw[400];
	uint8_t *disk = malloc(DISK);
	int fd, ret = -1;

	snprintf(cmd, sizeof(cmd), "%s check -q %s", qemu_img, path);
	if (!disk || system(cmd) != 0)
		goto out;
	snprintf(raw, sizeof(raw), "%s.raw", path);
	snprintf(cmd, sizeof(cmd), "%s convert -f qcow2 -O raw %s %s", qemu_img, path, raw);
	if (system(cmd) != 0)
		goto out;
	fd = open(raw, O_RDONLY);
	if (fd >= 0 && pread(fd, disk, DISK, 0) == (ssize_t)DISK && !memcmp(disk, model, DISK))
		ret = 0;
	if (fd >= 0)
		close(fd);
	unlink(raw);
	for (uint64_t i = 0; ret < 0 && i < DISK; i += BLK)
		if (memcmp(disk + i, model + i, BLK)) {
			fprintf(stderr, "client_io: %s differs from the model at %llu\n", path,
				(unsigned long long)i);
			break;
		}
out:
	free(disk);
	return ret;
}

/* A handle on path (or name), connected; not started. */
static struct q2c *handle(const char *path, const char *name, bool ro)
{
	struct q2c *b = NULL;

	if (q2c_create(&b) < 0 || q2c_set_str(b, "socket", sock_path) < 0 ||
	    (path && q2c_set_str(b, "path", path) < 0) ||
	    (name && q2c_set_str(b, "name", name) < 0) ||
	    q2c_set_bool(b, "read-only", ro) < 0 || q2c_connect(b) < 0) {
		fprintf(stderr, "client_io: handle on %s: %s\n", path ? path : name,
			q2c_get_error_msg());
		q2c_destroy(&b);
	}
	return b;
}

/* Waits for n completions; each must have ret want (n > 0). */
static int wait_all(struct q2c_queue *q, int n, int want)
{
	struct q2c_completion c[64];
	int got = 0;

	while (got < n) {
		int k = n - got > 64 ? 64 : n - got;
		int r = q2cq_do_io(q, c, 1, k, NULL);
		if (r < 0) {
			fprintf(stderr, "client_io: do_io: %s\n", q2c_get_error_msg());
			return -1;
		}
		for (int i = 0; i < r; i++)
			if (c[i].ret != want) {
				fprintf(stderr, "client_io: a request gave %d (%s), not %d\n",
					c[i].ret, c[i].error_msg ? c[i].error_msg : "-", want);
				return -1;
			}
		got += r;
	}
	return 0;
}

static json_int_t stat_of(const char *image, const char *op, const char *field)
{
	json_t *r = ctl("image.stats", "{\"name\":\"%s\"}", image);
	json_int_t v = json_integer_value(json_object_get(json_object_get(json_object_get(
		result(r), "ops"), op), field));

	json_decref(r);
	return r ? v : -1;
}

/* ---- props ------------------------------------------------------------------------- */

static int run_props(void)
{
	struct q2c *b = NULL, *b2 = NULL;
	struct q2c_mem_region reg = { 0 };
	char img[300], *s = NULL;
	uint64_t u;
	bool bo;
	int i;
	json_t *r = NULL;

	make_image("p", img, sizeof(img));
	CHECK(q2c_create(&b) == 0);
	/* before connect */
	CHECK(q2c_get_uint64(b, "capacity", &u) == -EACCES);
	CHECK(strstr(q2c_get_error_msg(), "capacity"));
	CHECK(q2c_get_int(b, "request-alignment", &i) == -EACCES);
	CHECK(q2c_get_str(b, "stats", &s) == -EACCES);
	CHECK(q2c_get_int(b, "no-such-thing", &i) == -ENOENT);
	CHECK(q2c_set_int(b, "no-such-thing", 1) == -ENOENT);
	CHECK(q2c_set_int(b, "num-queues", 2) == -EACCES);       /* connect..start */
	CHECK(q2c_set_uint64(b, "capacity", 1) == -EACCES);
	CHECK(q2c_set_int(b, "path", 1) == -ENOTTY);
	CHECK(q2c_get_uint64(b, "num-entries", &u) == -ENOTTY);
	CHECK(q2c_set_str(b, "name", "no spaces") == -EINVAL);
	CHECK(q2c_get_int(b, "num-entries", &i) == 0 && i == 128);
	CHECK(q2c_get_int(b, "num-queues", &i) == 0 && i == 1);
	CHECK(q2c_get_int(b, "data-area-size", &i) == 0 && i == 4 << 20);
	CHECK(q2c_get_bool(b, "read-only", &bo) == 0 && !bo);
	CHECK(q2c_get_str(b, "path", &s) == 0 && !strcmp(s, ""));
	free(s);
	s = NULL;
	CHECK(q2c_connect(b) == -EINVAL);                       /* neither path nor name */
	CHECK(q2c_get_queue(b, 0) == NULL);

	/* connects that fail leave the handle usable, with a message */
	CHECK(q2c_set_str(b, "socket", "/nonexistent/qcow2d.sock") == 0);
	CHECK(q2c_set_str(b, "path", img) == 0);
	errno = 4242;
	CHECK(q2c_connect(b) == -ENOENT);
	CHECK(errno == 4242);                                   /* never touched */
	CHECK(strstr(q2c_get_error_msg(), "/nonexistent/qcow2d.sock"));
	CHECK(q2c_set_str(b, "socket", sock_path) == 0);
	CHECK(q2c_get_str(b, "socket", &s) == 0 && !strcmp(s, sock_path));
	free(s);
	s = NULL;
	CHECK(q2c_set_str(b, "path", "/nonexistent.qcow2") == 0);
	CHECK(q2c_connect(b) == -ENOENT);
	CHECK(strstr(q2c_get_error_msg(), "NoSuchFile"));
	CHECK(q2c_set_str(b, "path", img) == 0);
	CHECK(q2c_alloc_mem_region(b, &reg, 1 << 20) == 0);
	CHECK(q2c_map_mem_region(b, &reg) == 0);                /* before connect: fine */

	CHECK(q2c_connect(b) == 0);
	CHECK(q2c_connect(b) == -EBUSY);
	/* after connect */
	CHECK(q2c_set_str(b, "path", img) == -EACCES);
	CHECK(q2c_set_bool(b, "read-only", true) == -EACCES);
	CHECK(q2c_get_uint64(b, "capacity", &u) == 0 && u == DISK);
	CHECK(q2c_get_int(b, "request-alignment", &i) == 0 && i > 0 && (i & (i - 1)) == 0);
	{
		char name[100];
		int ra = i;
		CHECK(q2c_get_str(b, "image-name", &s) == 0);
		CHECK(!strncmp(s, "q2c-", 4));
		snprintf(name, sizeof(name), "%s", s);
		free(s);
		s = NULL;
		r = ctl("image.info", "{\"name\":\"%s\"}", name);
		CHECK(json_integer_value(json_object_get(result(r), "block_size")) == ra);
		CHECK(q2c_get_int(b, "optimal-buf-alignment", &i) == 0 &&
		      i == json_integer_value(json_object_get(result(r), "mem_align")));
		json_decref(r);
		r = NULL;
	}
	CHECK(q2c_get_int(b, "buf-alignment", &i) == 0 && i == 1);
	CHECK(q2c_get_int(b, "max-transfer", &i) == 0 && i == 8 << 20);
	CHECK(q2c_get_int(b, "max-segments", &i) == 0 && i == 64);
	CHECK(q2c_get_int(b, "max-queues", &i) == 0 && i == 64);
	CHECK(q2c_get_uint64(b, "mem-region-alignment", &u) == 0 && u == 4096);
	CHECK(q2c_get_bool(b, "needs-mem-regions", &bo) == 0 && !bo);
	CHECK(q2c_get_bool(b, "read-only", &bo) == 0 && !bo);
	CHECK(q2c_get_str(b, "stats", &s) == 0);
	r = json_loads(s, 0, NULL);
	CHECK(json_is_object(r));
	CHECK(json_object_get(r, "ops"));
	json_decref(r);
	r = NULL;
	free(s);
	s = NULL;
	CHECK(q2c_set_uint64(b, "capacity", 1) == -EACCES);
	CHECK(q2c_set_int(b, "num-entries", 100) == -EINVAL);
	CHECK(q2c_set_int(b, "num-entries", 8192) == -EINVAL);
	CHECK(q2c_set_int(b, "num-entries", 64) == 0);
	CHECK(q2c_set_int(b, "data-area-size", 1000) == -EINVAL);
	CHECK(q2c_set_int(b, "data-area-size", 1 << 20) == 0);
	CHECK(q2c_set_int(b, "num-queues", 0) == -EINVAL);
	CHECK(q2c_set_int(b, "num-queues", 65) == -EINVAL);
	CHECK(q2c_set_int(b, "num-queues", 2) == 0);
	CHECK(q2c_get_queue(b, 0) == NULL);

	CHECK(q2c_start(b) == 0);
	CHECK(q2c_start(b) == -EBUSY);
	CHECK(q2c_set_int(b, "num-queues", 1) == -EACCES);
	CHECK(q2c_map_mem_region(b, &reg) == -EBUSY);
	CHECK(q2c_get_queue(b, 0) && q2c_get_queue(b, 1) && q2c_get_queue(b, 0) != q2c_get_queue(b, 1));
	CHECK(q2c_get_queue(b, 2) == NULL && q2c_get_queue(b, -1) == NULL);
	CHECK(q2c_get_int(b, "num-entries", &i) == 0 && i == 64);
	r = ctl("image.list", "{}");
	CHECK(json_integer_value(json_object_get(json_array_get(json_object_get(result(r),
		"images"), 0), "clients")) == 2);
	json_decref(r);
	r = NULL;

	/* name only: the image must be open */
	CHECK(q2c_create(&b2) == 0);
	CHECK(q2c_set_str(b2, "socket", sock_path) == 0);
	CHECK(q2c_set_str(b2, "name", "not-open") == 0);
	CHECK(q2c_connect(b2) == -ENOENT);
	CHECK(strstr(q2c_get_error_msg(), "not-open"));
	q2c_destroy(&b2);
	CHECK(b2 == NULL);
	q2c_destroy(&b2);                                       /* NULL is fine */
	q2c_destroy(NULL);

	/* destroy closes what connect opened */
	q2c_destroy(&b);
	r = ctl("image.list", "{}");
	CHECK(json_array_size(json_object_get(result(r), "images")) == 0);
	json_decref(r);
	r = NULL;
	q2c_free_mem_region(NULL, &reg);
	reg.addr = NULL;
out:
	json_decref(r);
	free(s);
	q2c_destroy(&b);
	q2c_destroy(&b2);
	if (reg.addr)
		q2c_free_mem_region(NULL, &reg);
	return failures;
}

/* ---- io: two queues, two threads, a model ------------------------------------------ */

#define HALF (DISK / 2)
#define REGION_PER_THREAD (4u << 20)

enum kind { K_WRITE, K_WRITEV, K_READ, K_READV, K_WZ, K_DISCARD, K_FLUSH };

struct rq {
	enum kind kind;
	uint64_t off, len;
	uint32_t flags;
	struct iovec iov[6];
	int iovcnt;
	void *mallocs[6];
	int nm;
	int ret;
	bool done;
};

struct worker {
	pthread_t th;
	struct q2c_queue *q;
	int t;
	uint8_t *model;         /* shared; this worker's half only */
	uint8_t *defined;       /* per block: 0 after a discard */
	uint8_t *region;        /* its part of the mapped region */
	uint64_t seed;
	int rounds;
	/* what was sent to the service, per operation */
	uint64_t reads, writes, flushes, wzs, discards, fuas;
	int bad;
};

/* Splits [buf of len] into iov pieces of multiples of 512: from the region
 * (zero copy) or from malloc (bounced), each piece its own choice. */
static void make_iov(struct worker *w, struct rq *r, size_t *region_used, bool vec)
{
	int pieces = vec ? 2 + (int)(rnd(&w->seed) % 4) : 1;
	uint64_t left = r->len;

	r->iovcnt = 0;
	r->nm = 0;
	for (int i = 0; i < pieces && left; i++) {
		uint64_t len = i == pieces - 1 ? left
					       : (1 + rnd(&w->seed) % (left / 512)) * 512;
		if (len > left)
			len = left;
		if (i < pieces - 1 && len == left && left > 512)
			len = left - 512;
		void *p;
		if (rnd(&w->seed) % 2 && *region_used + len <= REGION_PER_THREAD) {
			p = w->region + *region_used;
			*region_used += len;
		} else {
			/* odd addresses too: buf-alignment is 1 */
			uint8_t *m = malloc(len + 1);
			if (!m)
				die("malloc");
			r->mallocs[r->nm++] = m;
			p = m + (rnd(&w->seed) & 1);
		}
		r->iov[r->iovcnt].iov_base = p;
		r->iov[r->iovcnt].iov_len = len;
		r->iovcnt++;
		left -= len;
	}
}

static bool overlaps(const struct rq *rs, int n, uint64_t off, uint64_t len)
{
	for (int i = 0; i < n; i++)
		if (rs[i].kind != K_FLUSH && off < rs[i].off + rs[i].len && rs[i].off < off + len)
			return true;
	return false;
}

/* Compares what a read returned with the model; blocks a discard left
 * undefined take what was read. */
static int check_read(struct worker *w, struct rq *r)
{
	uint64_t pos = r->off;
	int bad = 0;

	for (int i = 0; i < r->iovcnt; i++) {
		const uint8_t *p = r->iov[i].iov_base;
		for (uint64_t k = 0; k < r->iov[i].iov_len; k++, pos++) {
			if (!w->defined[pos / BLK]) {
				w->model[pos] = p[k];
				continue;
			}
			if (p[k] != w->model[pos] && !bad++)
				fprintf(stderr, "client_io: worker %d: read at %llu differs from "
					"the model\n", w->t, (unsigned long long)pos);
		}
	}
	for (uint64_t b = r->off / BLK; b < (r->off + r->len) / BLK; b++)
		w->defined[b] = 1;
	return bad;
}

static void apply(struct worker *w, struct rq *r)
{
	uint64_t pos = r->off;

	switch (r->kind) {
	case K_WRITE:
	case K_WRITEV:
		for (int i = 0; i < r->iovcnt; i++) {
			memcpy(w->model + pos, r->iov[i].iov_base, r->iov[i].iov_len);
			pos += r->iov[i].iov_len;
		}
		memset(w->defined + r->off / BLK, 1, r->len / BLK);
		break;
	case K_WZ:
		memset(w->model + r->off, 0, r->len);
		memset(w->defined + r->off / BLK, 1, r->len / BLK);
		break;
	case K_DISCARD:
		/* zeros or what was there: the next read says which */
		memset(w->defined + r->off / BLK, 0, r->len / BLK);
		break;
	case K_READ:
	case K_READV:
		w->bad += check_read(w, r);
		break;
	case K_FLUSH:
		break;
	}
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct rq rs[12];
	uint64_t base = (uint64_t)w->t * HALF;

	for (int round = 0; round < w->rounds && !w->bad; round++) {
		int n = 1 + (int)(rnd(&w->seed) % 12), k = 0;
		size_t region_used = 0;

		memset(rs, 0, sizeof(rs));
		for (int tries = 0; k < n && tries < 50; tries++) {
			struct rq *r = &rs[k];
			unsigned pick = (unsigned)(rnd(&w->seed) % 100);
			r->kind = pick < 30 ? K_WRITE : pick < 42 ? K_WRITEV : pick < 62 ? K_READ :
				  pick < 74 ? K_READV : pick < 84 ? K_WZ : pick < 92 ? K_DISCARD
								     : K_FLUSH;
			r->len = (1 + rnd(&w->seed) % 64) * BLK;
			r->off = base + (rnd(&w->seed) % ((HALF - r->len) / BLK + 1)) * BLK;
			if (r->kind != K_FLUSH && overlaps(rs, k, r->off, r->len))
				continue;
			switch (r->kind) {
			case K_WRITE:
			case K_WRITEV:
				make_iov(w, r, &region_used, r->kind == K_WRITEV);
				for (int i = 0; i < r->iovcnt; i++)
					fill(r->iov[i].iov_base, r->iov[i].iov_len, &w->seed);
				r->flags = rnd(&w->seed) % 3 == 0 ? Q2C_REQ_FUA : 0;
				if (r->iovcnt == 1 && r->kind == K_WRITE)
					q2cq_write(w->q, r->off, r->iov[0].iov_base, r->len, r,
						   r->flags);
				else
					q2cq_writev(w->q, r->off, r->iov, r->iovcnt, r, r->flags);
				w->writes++;
				w->fuas += r->flags != 0;
				break;
			case K_READ:
			case K_READV:
				make_iov(w, r, &region_used, r->kind == K_READV);
				for (int i = 0; i < r->iovcnt; i++)
					memset(r->iov[i].iov_base, 0xee, r->iov[i].iov_len);
				if (r->iovcnt == 1 && r->kind == K_READ)
					q2cq_read(w->q, r->off, r->iov[0].iov_base, r->len, r, 0);
				else
					q2cq_readv(w->q, r->off, r->iov, r->iovcnt, r, 0);
				w->reads++;
				break;
			case K_WZ:
				r->flags = rnd(&w->seed) % 2 ? Q2C_REQ_NO_UNMAP : 0;
				q2cq_write_zeroes(w->q, r->off, r->len, r, r->flags);
				w->wzs++;
				break;
			case K_DISCARD:
				q2cq_discard(w->q, r->off, r->len, r, 0);
				w->discards++;
				break;
			case K_FLUSH:
				q2cq_flush(w->q, r, 0);
				w->flushes++;
				break;
			}
			k++;
		}
		/* collect, a few at a time, in whatever order they complete */
		for (int got = 0; got < k;) {
			struct q2c_completion c[4];
			int m = q2cq_do_io(w->q, c, 1, 4, NULL);
			if (m < 1) {
				fprintf(stderr, "client_io: worker %d: do_io: %s\n", w->t,
					q2c_get_error_msg());
				w->bad++;
				break;
			}
			for (int i = 0; i < m; i++) {
				struct rq *r = c[i].user_data;
				if (r < rs || r >= rs + k || r->done) {
					fprintf(stderr, "client_io: worker %d: a completion of no "
						"request\n", w->t);
					w->bad++;
					continue;
				}
				r->done = true;
				if (c[i].ret != 0) {
					fprintf(stderr, "client_io: worker %d: kind %d at %llu+%llu: "
						"%s\n", w->t, r->kind, (unsigned long long)r->off,
						(unsigned long long)r->len, c[i].error_msg);
					w->bad++;
					continue;
				}
				apply(w, r);
			}
			got += m;
		}
		for (int i = 0; i < k; i++)
			for (int j = 0; j < rs[i].nm; j++)
				free(rs[i].mallocs[j]);
	}
	/* read everything back: 1 MiB at a time, zero copy and bounced in turn */
	for (uint64_t off = base, i = 0; off < base + HALF && !w->bad; off += 1 << 20, i++) {
		struct rq r = { .kind = K_READ, .off = off, .len = 1 << 20, .iovcnt = 1 };
		void *m = i % 2 ? malloc(1 << 20) : NULL;
		r.iov[0].iov_base = m ? m : w->region;
		r.iov[0].iov_len = 1 << 20;
		q2cq_read(w->q, off, r.iov[0].iov_base, r.len, &r, 0);
		w->reads++;
		if (wait_all(w->q, 1, 0) < 0)
			w->bad++;
		else
			w->bad += check_read(w, &r);
		free(m);
	}
	return NULL;
}

static int run_io(void)
{
	struct q2c *b = NULL;
	struct q2c_mem_region reg = { 0 };
	struct worker w[2];
	uint8_t *model = calloc(1, DISK), *defined = malloc(DISK / BLK);
	char img[300], name[100];
	char *s = NULL;
	uint64_t fl0;

	if (!model || !defined)
		die("calloc");
	memset(defined, 1, DISK / BLK);
	make_image("io", img, sizeof(img));
	snprintf(name, sizeof(name), "io-%d", (int)getpid());
	b = handle(img, name, false);
	CHECK(b);
	CHECK(q2c_set_int(b, "num-queues", 2) == 0);
	CHECK(q2c_set_int(b, "num-entries", 32) == 0);
	/* small: bounced requests wait for room */
	CHECK(q2c_set_int(b, "data-area-size", 1 << 20) == 0);
	CHECK(q2c_alloc_mem_region(b, &reg, 2 * REGION_PER_THREAD) == 0);
	CHECK(q2c_map_mem_region(b, &reg) == 0);
	CHECK(q2c_start(b) == 0);
	fl0 = (uint64_t)stat_of(name, "flush", "requests");
	for (int t = 0; t < 2; t++) {
		memset(&w[t], 0, sizeof(w[t]));
		w[t].q = q2c_get_queue(b, t);
		w[t].t = t;
		w[t].model = model;
		w[t].defined = defined;
		w[t].region = (uint8_t *)reg.addr + t * REGION_PER_THREAD;
		w[t].seed = 1000 + (uint64_t)t;
		w[t].rounds = getenv("CI_ROUNDS") ? atoi(getenv("CI_ROUNDS")) : 150;
		CHECK(pthread_create(&w[t].th, NULL, worker_main, &w[t]) == 0);
	}
	for (int t = 0; t < 2; t++)
		pthread_join(w[t].th, NULL);
	CHECK(w[0].bad == 0 && w[1].bad == 0);
	/* qcow2d saw exactly what was sent: a FUA write is a write and a flush */
	CHECK(stat_of(name, "read", "requests") == (json_int_t)(w[0].reads + w[1].reads));
	CHECK(stat_of(name, "write", "requests") == (json_int_t)(w[0].writes + w[1].writes));
	CHECK(stat_of(name, "write_zeroes", "requests") == (json_int_t)(w[0].wzs + w[1].wzs));
	CHECK(stat_of(name, "discard", "requests") ==
	      (json_int_t)(w[0].discards + w[1].discards));
	CHECK((uint64_t)stat_of(name, "flush", "requests") - fl0 ==
	      w[0].flushes + w[1].flushes + w[0].fuas + w[1].fuas);
	CHECK(w[0].fuas > 0 && w[0].discards > 0 && w[0].wzs > 0);
	for (int i = 0; i < 5; i++)
		CHECK(stat_of(name, (const char *[]){ "read", "write", "flush", "write_zeroes",
						      "discard" }[i], "errors") == 0);
	CHECK(q2c_get_str(b, "stats", &s) == 0 && strstr(s, "\"ops\""));
	q2c_destroy(&b);
	q2c_free_mem_region(NULL, &reg);
	reg.addr = NULL;
	CHECK(stop_service() == 0);
	CHECK(judge(img, model) == 0);
out:
	free(s);
	q2c_destroy(&b);
	if (reg.addr)
		q2c_free_mem_region(NULL, &reg);
	free(model);
	free(defined);
	return failures;
}

/* ---- edges ------------------------------------------------------------------------- */

/* One request; its completion (ret and message) in *c. */
static int one(struct q2c_queue *q, struct q2c_completion *c)
{
	return q2cq_do_io(q, c, 1, 1, NULL) == 1 ? 0 : -1;
}

static int expect_invalid(struct q2c_queue *q, const char *what, const char *word)
{
	struct q2c_completion c;

	if (one(q, &c) < 0 || c.ret != -EINVAL || !c.error_msg || !*c.error_msg ||
	    (word && !strstr(c.error_msg, word))) {
		fprintf(stderr, "client_io: %s: ret %d, message %s\n", what, c.ret,
			c.error_msg ? c.error_msg : "(none)");
		return -1;
	}
	return 0;
}

static int run_edges(void)
{
	struct q2c *a = NULL, *ro = NULL, *byname = NULL, *small = NULL, *d = NULL, *e = NULL;
	struct q2c *rohandle = NULL;
	struct q2c_mem_region reg = { 0 };
	struct q2c_queue *q;
	struct q2c_completion c[8];
	char img_a[300], img_r[300], img_s[300], img_d[300], img_e[300], *s = NULL;
	char name_a[100];
	uint8_t *buf = malloc(9 << 20), *buf2 = malloc(1 << 20);
	uint64_t seed = 7;
	json_t *r = NULL;
	int ep = -1, ra;

	if (!buf || !buf2)
		die("malloc");
	make_image("a", img_a, sizeof(img_a));
	make_image("r", img_r, sizeof(img_r));
	make_image("s", img_s, sizeof(img_s));
	make_image("d", img_d, sizeof(img_d));
	make_image("e", img_e, sizeof(img_e));

	a = handle(img_a, NULL, false);
	CHECK(a);
	CHECK(q2c_set_int(a, "data-area-size", 1 << 20) == 0);
	CHECK(q2c_alloc_mem_region(a, &reg, 1 << 20) == 0);
	CHECK(q2c_map_mem_region(a, &reg) == 0);
	CHECK(q2c_start(a) == 0);
	CHECK(q2c_get_int(a, "request-alignment", &ra) == 0);
	q = q2c_get_queue(a, 0);

	/* invalid requests: each completes with -EINVAL and a message */
	errno = 4242;
	q2cq_read(q, 1, buf, BLK, NULL, 0);
	CHECK(errno == 4242);
	CHECK(expect_invalid(q, "unaligned offset", "request-alignment") == 0);
	CHECK(errno == 4242);
	q2cq_read(q, 0, buf, (size_t)ra + 1, NULL, 0);
	CHECK(expect_invalid(q, "unaligned length", "request-alignment") == 0);
	q2cq_write(q, DISK, buf, BLK, NULL, 0);
	CHECK(expect_invalid(q, "past the end", "capacity") == 0);
	q2cq_write_zeroes(q, DISK - BLK, 2 * BLK, NULL, 0);
	CHECK(expect_invalid(q, "zeroes past the end", "capacity") == 0);
	q2cq_read(q, 0, buf, (8 << 20) + BLK, NULL, 0);
	CHECK(expect_invalid(q, "too long", "max-transfer") == 0);
	q2cq_write(q, 0, buf, 2 << 20, NULL, 0);
	CHECK(expect_invalid(q, "more than the data area", "data-area-size") == 0);
	q2cq_write(q, 0, buf, 0, NULL, 0);
	CHECK(expect_invalid(q, "length 0", "length 0") == 0);
	{
		struct iovec iov[65];
		for (int i = 0; i < 65; i++)
			iov[i] = (struct iovec){ buf + i * 512, 512 };
		q2cq_readv(q, 0, iov, 65, NULL, 0);
		CHECK(expect_invalid(q, "65 segments", "max-segments") == 0);
		q2cq_readv(q, 0, iov, 0, NULL, 0);
		CHECK(expect_invalid(q, "no segments", "max-segments") == 0);
	}
	q2cq_read(q, 0, buf, BLK, NULL, Q2C_REQ_FUA);
	CHECK(expect_invalid(q, "FUA read", "flags") == 0);
	q2cq_write(q, 0, buf, BLK, NULL, Q2C_REQ_NO_UNMAP);
	CHECK(expect_invalid(q, "NO_UNMAP write", "flags") == 0);
	q2cq_discard(q, 0, BLK, NULL, Q2C_REQ_NO_UNMAP);
	CHECK(expect_invalid(q, "NO_UNMAP discard", "flags") == 0);
	q2cq_flush(q, NULL, 0x80);
	CHECK(expect_invalid(q, "flush flags", "flags") == 0);
	/* several at once, valid ones among them, in order of queueing */
	fill(buf, 1 << 20, &seed);
	q2cq_write(q, 0, buf, 1 << 20, (void *)1, 0);
	q2cq_write(q, 3, buf, BLK, (void *)2, 0);
	q2cq_read(q, 0, buf2, 1 << 20, (void *)3, 0);
	{
		int got = 0, seen = 0;
		while (got < 3) {
			int n = q2cq_do_io(q, c, 1, 8, NULL);
			CHECK(n > 0);
			for (int i = 0; i < n; i++) {
				uintptr_t id = (uintptr_t)c[i].user_data;
				CHECK(id >= 1 && id <= 3 && !(seen & 1 << id));
				seen |= 1 << id;
				CHECK(c[i].ret == (id == 2 ? -EINVAL : 0));
				CHECK((c[i].error_msg != NULL) == (id == 2));
			}
			got += n;
		}
		CHECK(!memcmp(buf, buf2, 1 << 20));
	}
	/* bad arguments to do_io fail the call, not a request */
	q2cq_read(q, 0, buf2, BLK, NULL, 0);
	CHECK(q2cq_do_io(q, c, 2, 1, NULL) == -EINVAL);         /* min > max */
	CHECK(q2cq_do_io(q, c, 2, 8, NULL) == -EINVAL);         /* more than queued */
	CHECK(strstr(q2c_get_error_msg(), "outstanding"));
	CHECK(q2cq_do_io(q, NULL, 0, 1, NULL) == -EINVAL);
	CHECK(q2cq_do_io(q, c, 0, 8, &(struct timespec){ 0, 2000000000 }) == -EINVAL);
	CHECK(q2cq_do_io(NULL, c, 0, 8, NULL) == -EINVAL);
	CHECK(wait_all(q, 1, 0) == 0);
	/* min 0 never waits, and with nothing queued returns 0 */
	CHECK(q2cq_do_io(q, c, 0, 8, NULL) == 0);
	CHECK(q2cq_do_io(q, NULL, 0, 0, NULL) == 0);

	/* FUA and vectored: segments of odd sizes from the region and the heap */
	{
		uint8_t *rg = reg.addr;
		struct iovec wv[4] = { { rg + 100, 512 }, { buf + 1, 1536 }, { rg + 8192, 1024 },
				       { buf + 9000, 1024 } };
		struct iovec rv[3] = { { buf2 + 3, 1000 }, { rg + 65536, 3000 },
				       { buf2 + 5000, 4192 } };
		json_int_t f0;
		char *nm = NULL;
		CHECK(q2c_get_str(a, "image-name", &nm) == 0);
		snprintf(name_a, sizeof(name_a), "%s", nm);
		free(nm);
		f0 = stat_of(name_a, "flush", "requests");
		fill(rg, 1 << 20, &seed);
		q2cq_writev(q, 2 * BLK, wv, 4, NULL, Q2C_REQ_FUA);
		CHECK(wait_all(q, 1, 0) == 0);
		CHECK(stat_of(name_a, "flush", "requests") == f0 + 1);     /* the FUA */
		/* 8192 bytes: the 4096 just written and the next block */
		q2cq_readv(q, 2 * BLK, rv, 3, NULL, 0);
		CHECK(wait_all(q, 1, 0) == 0);
		{
			uint8_t want[4096], got[4096];
			size_t o = 0;
			for (int i = 0; i < 4; i++) {
				memcpy(want + o, wv[i].iov_base, wv[i].iov_len);
				o += wv[i].iov_len;
			}
			memcpy(got, rv[0].iov_base, 1000);
			memcpy(got + 1000, rv[1].iov_base, 3000);
			memcpy(got + 4000, rv[2].iov_base, 96);
			CHECK(!memcmp(want, got, 4096));
		}
		/* write_zeroes with FUA and NO_UNMAP: a flush after it too */
		q2cq_write_zeroes(q, 2 * BLK, BLK, NULL, Q2C_REQ_FUA | Q2C_REQ_NO_UNMAP);
		CHECK(wait_all(q, 1, 0) == 0);
		CHECK(stat_of(name_a, "flush", "requests") == f0 + 2);
		q2cq_read(q, 2 * BLK, buf2, BLK, NULL, 0);
		CHECK(wait_all(q, 1, 0) == 0);
		for (int i = 0; i < (int)BLK; i++)
			CHECK(buf2[i] == 0);
	}

	/* read-only: the image opened read-only, and a read-only handle on a
	 * read-write image; reads and flushes go on */
	ro = handle(img_r, NULL, true);
	CHECK(ro);
	CHECK(q2c_start(ro) == 0);
	{
		struct q2c_queue *rq = q2c_get_queue(ro, 0);
		bool bo;
		CHECK(q2c_get_bool(ro, "read-only", &bo) == 0 && bo);
		q2cq_write(rq, 0, buf, BLK, NULL, 0);
		CHECK(one(rq, &c[0]) == 0 && c[0].ret == -EROFS && c[0].error_msg);
		q2cq_write_zeroes(rq, 0, BLK, NULL, 0);
		CHECK(one(rq, &c[0]) == 0 && c[0].ret == -EROFS);
		q2cq_discard(rq, 0, BLK, NULL, 0);
		CHECK(one(rq, &c[0]) == 0 && c[0].ret == -EROFS);
		q2cq_read(rq, 0, buf2, BLK, NULL, 0);
		CHECK(wait_all(rq, 1, 0) == 0);
		q2cq_flush(rq, NULL, 0);
		CHECK(wait_all(rq, 1, 0) == 0);
	}
	rohandle = handle(NULL, name_a, true);
	CHECK(rohandle);
	CHECK(q2c_start(rohandle) == 0);
	q2cq_write(q2c_get_queue(rohandle, 0), 0, buf, BLK, NULL, 0);
	CHECK(one(q2c_get_queue(rohandle, 0), &c[0]) == 0 && c[0].ret == -EROFS);
	q2c_destroy(&rohandle);

	/* attach by name to the image handle a opened: the same disk */
	byname = handle(NULL, name_a, false);
	CHECK(byname);
	{
		uint64_t cap;
		struct q2c_queue *bq;
		CHECK(q2c_get_uint64(byname, "capacity", &cap) == 0 && cap == DISK);
		CHECK(q2c_start(byname) == 0);
		bq = q2c_get_queue(byname, 0);
		fill(buf, 65536, &seed);
		q2cq_write(bq, 1 << 20, buf, 65536, NULL, 0);
		CHECK(wait_all(bq, 1, 0) == 0);
		q2cq_read(q, 1 << 20, buf2, 65536, NULL, 0);
		CHECK(wait_all(q, 1, 0) == 0);
		CHECK(!memcmp(buf, buf2, 65536));
		/* its destroy leaves the image open for a */
		q2c_destroy(&byname);
		q2cq_read(q, 1 << 20, buf2, 65536, NULL, 0);
		CHECK(wait_all(q, 1, 0) == 0);
		r = ctl("image.info", "{\"name\":\"%s\"}", name_a);
		CHECK(result(r));
		json_decref(r);
		r = NULL;
	}

	/* do_io with a timeout: qcow2d stopped, the request cannot complete */
	{
		struct timespec t = { 0, 50 * 1000000 };
		int st;
		CHECK(kill(svc_pid, SIGSTOP) == 0);
		CHECK(waitpid(svc_pid, &st, WUNTRACED) == svc_pid && WIFSTOPPED(st));
		q2cq_read(q, 0, buf2, BLK, (void *)9, 0);
		CHECK(q2cq_do_io(q, c, 0, 8, NULL) == 0);       /* submits, never waits */
		CHECK(q2cq_do_io(q, c, 1, 8, &t) == -ETIME);
		CHECK(t.tv_sec == 0 && t.tv_nsec == 0);
		CHECK(strstr(q2c_get_error_msg(), "timeout"));
		t = (struct timespec){ 0, 0 };
		CHECK(q2cq_do_io(q, c, 1, 8, &t) == -ETIME);    /* a zero timeout */
		CHECK(kill(svc_pid, SIGCONT) == 0);
		t = (struct timespec){ 30, 0 };
		CHECK(q2cq_do_io(q, c, 1, 8, &t) == 1 && c[0].user_data == (void *)9 &&
		      c[0].ret == 0);
		CHECK(t.tv_sec < 30 && (t.tv_sec > 0 || t.tv_nsec > 0));  /* time left */
	}

	/* the completion fd, with epoll: silent while idle, readable when a
	 * completion arrives */
	{
		int fd = q2cq_get_completion_fd(q), st;
		struct epoll_event ev = { .events = EPOLLIN }, out;
		uint64_t v;
		CHECK(fd >= 0);
		ep = epoll_create1(EPOLL_CLOEXEC);
		CHECK(ep >= 0 && epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == 0);
		if (read(fd, &v, 8) < 0) {
			/* drained already */
		}
		CHECK(epoll_wait(ep, &out, 1, 50) == 0);
		CHECK(kill(svc_pid, SIGSTOP) == 0);
		CHECK(waitpid(svc_pid, &st, WUNTRACED) == svc_pid && WIFSTOPPED(st));
		q2cq_read(q, 0, buf2, BLK, (void *)11, 0);
		CHECK(q2cq_do_io(q, c, 0, 8, NULL) == 0);
		CHECK(epoll_wait(ep, &out, 1, 100) == 0);
		CHECK(kill(svc_pid, SIGCONT) == 0);
		CHECK(epoll_wait(ep, &out, 1, 10000) == 1);
		CHECK(read(fd, &v, 8) == 8);
		CHECK(q2cq_do_io(q, c, 0, 8, NULL) == 1 && c[0].user_data == (void *)11);
		CHECK(epoll_wait(ep, &out, 1, 50) == 0);
		/* completions not handed back: the fd says so at once */
		for (int i = 0; i < 3; i++)
			q2cq_read(q, 0, buf2, BLK, NULL, 0);
		CHECK(q2cq_do_io(q, c, 3, 3, NULL) == 3);
		for (int i = 0; i < 3; i++)
			q2cq_read(q, 0, buf2, BLK, (void *)(uintptr_t)(20 + i), 0);
		{
			int n = 0;
			struct pollfd p = { .fd = fd, .events = POLLIN };
			/* all three in, one handed back */
			while (n == 0)
				n = q2cq_do_io(q, c, 0, 1, NULL);
			CHECK(n == 1);
			/* the other two: they may still be in the CQ or in the
			 * queue, either way the fd is readable */
			CHECK(poll(&p, 1, 10000) == 1);
			CHECK(read(fd, &v, 8) == 8);
			CHECK(wait_all(q, 2, 0) == 0);
		}
		/* disabled: do_io still waits and completes */
		q2cq_set_completion_fd_enabled(q, false);
		q2cq_read(q, 0, buf2, BLK, NULL, 0);
		CHECK(wait_all(q, 1, 0) == 0);
		q2cq_set_completion_fd_enabled(q, true);
		{
			struct pollfd p = { .fd = fd, .events = POLLIN };
			int got;
			q2cq_write(q, 0, buf, BLK, (void *)12, 0);
			got = q2cq_do_io(q, c, 0, 8, NULL);
			CHECK(got == 0 || got == 1);
			/* (a fast write may complete within that call) */
			if (got == 0) {
				CHECK(poll(&p, 1, 10000) == 1);
				CHECK(wait_all(q, 1, 0) == 0);
			}
		}
	}

	/* more requests than num-entries, more bounced bytes than the data
	 * area: they wait, then complete, in any order but all of them */
	small = handle(img_s, NULL, false);
	CHECK(small);
	CHECK(q2c_set_int(small, "num-entries", 4) == 0);
	CHECK(q2c_set_int(small, "data-area-size", 65536) == 0);
	CHECK(q2c_start(small) == 0);
	{
		struct q2c_queue *sq = q2c_get_queue(small, 0);
		uint8_t *src = malloc(100 * 16384), *dst = malloc(100 * 16384);
		int ok = src && dst;
		if (ok) {
			fill(src, 100 * 16384, &seed);
			for (int i = 0; i < 100; i++)
				q2cq_write(sq, (uint64_t)i * 16384, src + i * 16384, 16384, NULL,
					   i % 10 == 0 ? Q2C_REQ_FUA : 0);
			ok = wait_all(sq, 100, 0) == 0;
			for (int i = 0; ok && i < 100; i++)
				q2cq_read(sq, (uint64_t)i * 16384, dst + i * 16384, 16384, NULL, 0);
			ok = ok && wait_all(sq, 100, 0) == 0 && !memcmp(src, dst, 100 * 16384);
			/* the whole data area at once works; a block more does not */
			q2cq_read(sq, 0, dst, 65536, NULL, 0);
			ok = ok && wait_all(sq, 1, 0) == 0 && !memcmp(src, dst, 65536);
			q2cq_read(sq, 0, dst, 65536 + BLK, NULL, 0);
			ok = ok && expect_invalid(sq, "past the data area", "data-area-size") == 0;
		}
		free(src);
		free(dst);
		CHECK(ok);
	}

	/* q2c_destroy() with requests in flight and queued */
	d = handle(img_d, NULL, false);
	CHECK(d);
	CHECK(q2c_set_int(d, "num-entries", 16) == 0);
	CHECK(q2c_start(d) == 0);
	{
		struct q2c_queue *dq = q2c_get_queue(d, 0);
		char *dn = NULL;
		CHECK(q2c_get_str(d, "image-name", &dn) == 0);
		for (int i = 0; i < 64; i++)
			q2cq_write(dq, (uint64_t)i * 65536, buf, 65536, NULL, 0);
		q2cq_flush(dq, NULL, 0);
		CHECK(q2cq_do_io(dq, c, 0, 8, NULL) >= 0);
		q2c_destroy(&d);
		r = ctl("service.version", "{}");
		CHECK(result(r));
		json_decref(r);
		r = ctl("image.info", "{\"name\":\"%s\"}", dn);
		free(dn);
		CHECK(r && !result(r));         /* closed */
		json_decref(r);
		r = NULL;
	}

	/* the image closed under a queue: qcow2d hangs up, -ECONNRESET */
	e = handle(img_e, NULL, false);
	CHECK(e);
	CHECK(q2c_start(e) == 0);
	{
		struct q2c_queue *eq = q2c_get_queue(e, 0);
		char *en = NULL;
		CHECK(q2c_get_str(e, "image-name", &en) == 0);
		q2cq_read(eq, 0, buf2, BLK, NULL, 0);
		CHECK(wait_all(eq, 1, 0) == 0);
		r = ctl("image.close", "{\"name\":\"%s\",\"force\":true}", en);
		free(en);
		CHECK(result(r));
		json_decref(r);
		r = NULL;
		q2cq_read(eq, 0, buf2, BLK, NULL, 0);
		CHECK(q2cq_do_io(eq, c, 1, 1, NULL) == -ECONNRESET);
		CHECK(strstr(q2c_get_error_msg(), "hung up"));
		CHECK(q2cq_do_io(eq, c, 0, 1, NULL) == -ECONNRESET);
		CHECK(q2c_get_str(e, "stats", &s) == -ENOENT);
		/* q2c_reconnect() opens it again and attaches the queue: the
		 * read left in the ring completes */
		CHECK(q2c_reconnect(e) == 0);
		CHECK(wait_all(eq, 1, 0) == 0);
		q2c_destroy(&e);
	}

	/* a is fine after all that */
	q2cq_read(q, 1 << 20, buf2, 65536, NULL, 0);
	CHECK(wait_all(q, 1, 0) == 0);
	q2c_destroy(&a);
	q2c_destroy(&ro);
	q2c_free_mem_region(NULL, &reg);
	reg.addr = NULL;
	CHECK(stop_service() == 0);
	{
		char cmd[700];
		const char *imgs[] = { img_a, img_r, img_s, img_d, img_e };
		for (int i = 0; i < 5; i++) {
			snprintf(cmd, sizeof(cmd), "%s check -q %s", qemu_img, imgs[i]);
			CHECK(system(cmd) == 0);
		}
	}
out:
	json_decref(r);
	free(s);
	if (ep >= 0)
		close(ep);
	q2c_destroy(&a);
	q2c_destroy(&ro);
	q2c_destroy(&rohandle);
	q2c_destroy(&byname);
	q2c_destroy(&small);
	q2c_destroy(&d);
	q2c_destroy(&e);
	if (reg.addr)
		q2c_free_mem_region(NULL, &reg);
	free(buf);
	free(buf2);
	return failures;
}

/* ---- restart: qcow2d killed and started again --------------------------------------- */

/* Up to 32 requests of 64 KiB (and one flush); epoch: the restarts
 * counted when each completed. */
struct batch {
	uint64_t off[33];
	uint8_t *buf[33];
	bool is_read[33], is_flush[33], fua[33], done[33];
	int epoch[33];
	int n;
};

/* Collects the batch's completions; when qcow2d is gone (-ECONNRESET),
 * starts another and reconnects. Every request must complete once, with
 * 0; writes go into the model, reads are checked against it. */
static int collect(struct q2c *b, struct batch *bt, uint8_t *model, int *restarts)
{
	struct q2c_queue *q = q2c_get_queue(b, 0);
	int got = 0;

	while (got < bt->n) {
		struct q2c_completion c[32];
		int n = q2cq_do_io(q, c, 1, 32, NULL);
		if (n == -ECONNRESET) {
			int tries = 0;
			if (svc_pid > 0) {
				waitpid(svc_pid, NULL, 0);
				svc_pid = -1;
			}
			start_service();
			(*restarts)++;
			/* its image lock may outlive a killed qcow2d a little */
			while (q2c_reconnect(b) < 0) {
				if (++tries == 250) {
					fprintf(stderr, "client_io: reconnect: %s\n",
						q2c_get_error_msg());
					return -1;
				}
				usleep(20000);
			}
			continue;
		}
		if (n < 0) {
			fprintf(stderr, "client_io: do_io: %s\n", q2c_get_error_msg());
			return -1;
		}
		for (int i = 0; i < n; i++) {
			int k = (int)(uintptr_t)c[i].user_data;
			if (k < 0 || k >= bt->n || bt->done[k] || c[i].ret != 0) {
				fprintf(stderr, "client_io: completion %d: ret %d (%s)%s\n", k,
					c[i].ret, c[i].error_msg ? c[i].error_msg : "-",
					k >= 0 && k < bt->n && bt->done[k] ? ", twice" : "");
				return -1;
			}
			bt->done[k] = true;
			bt->epoch[k] = *restarts;
			if (bt->is_flush[k])
				continue;
			if (bt->is_read[k] ? memcmp(bt->buf[k], model + bt->off[k], 65536)
					   : (memcpy(model + bt->off[k], bt->buf[k], 65536), 0)) {
				fprintf(stderr, "client_io: a read at %llu differs from the "
					"model (request %d; first bytes %02x %02x, model %02x %02x)\n",
					(unsigned long long)bt->off[k], k, bt->buf[k][0], bt->buf[k][1],
					model[bt->off[k]], model[bt->off[k] + 1]);
				return -1;
			}
		}
		got += n;
	}
	return 0;
}

/* Makes the batch's writes durable. A write that completed before qcow2d
 * was killed and was not followed by a flush may be lost, as on any disk
 * with a cache: those are written again; then a flush. A FUA write is
 * durable when it completes, killed or not: never written again. Repeated
 * until no restart came in between. */
static int settle(struct q2c *b, struct batch *bt, uint8_t *model, int *restarts)
{
	struct q2c_queue *q = q2c_get_queue(b, 0);

	for (;;) {
		struct batch again;
		int orig[33], r0 = *restarts;

		memset(&again, 0, sizeof(again));
		for (int k = 0; k < bt->n; k++) {
			if (bt->is_read[k] || bt->is_flush[k] || bt->fua[k] || bt->epoch[k] == r0)
				continue;
			orig[again.n] = k;
			again.off[again.n] = bt->off[k];
			again.buf[again.n] = bt->buf[k];
			q2cq_write(q, bt->off[k], bt->buf[k], 65536, (void *)(uintptr_t)again.n, 0);
			again.n++;
		}
		again.is_flush[again.n] = true;
		q2cq_flush(q, (void *)(uintptr_t)again.n, 0);
		again.n++;
		if (collect(b, &again, model, restarts) < 0)
			return -1;
		for (int j = 0; j < again.n - 1; j++)
			bt->epoch[orig[j]] = again.epoch[j];
		if (*restarts == r0)
			return 0;
	}
}

static int run_restart(void)
{
	struct q2c *a = NULL, *b2 = NULL;
	struct q2c_mem_region reg = { 0 };
	struct q2c_queue *q;
	struct q2c_completion c[4];
	uint8_t *model = calloc(1, DISK), *heap = malloc(32 * 65536);
	char img[300], name[64], cmd[700];
	uint64_t seed = 99;
	struct batch bt;
	int restarts = 0, st;

	if (!model || !heap)
		die("malloc");
	make_image("rs", img, sizeof(img));
	snprintf(name, sizeof(name), "rs-%d", (int)getpid());
	a = handle(img, name, false);
	CHECK(a);
	CHECK(q2c_set_int(a, "num-entries", 16) == 0);
	CHECK(q2c_set_int(a, "data-area-size", 1 << 20) == 0);
	CHECK(q2c_alloc_mem_region(a, &reg, 16 * 65536) == 0);
	CHECK(q2c_map_mem_region(a, &reg) == 0);
	CHECK(q2c_start(a) == 0);
	q = q2c_get_queue(a, 0);
	b2 = handle(NULL, name, false);
	CHECK(b2);
	CHECK(q2c_start(b2) == 0);

	/* Requests in the ring that the old qcow2d never took: stopped, then
	 * killed. The new one takes them from the SQ. */
	memset(&bt, 0, sizeof(bt));
	for (int i = 0; i < 32; i++) {
		bt.off[i] = (uint64_t)i * 65536;
		bt.buf[i] = i < 16 ? (uint8_t *)reg.addr + i * 65536 : heap + i * 65536;
		fill(bt.buf[i], 65536, &seed);
		q2cq_write(q, bt.off[i], bt.buf[i], 65536, (void *)(uintptr_t)i, 0);
	}
	bt.n = 32;
	CHECK(collect(a, &bt, model, &restarts) == 0);
	CHECK(settle(a, &bt, model, &restarts) == 0);
	CHECK(kill(svc_pid, SIGSTOP) == 0);
	CHECK(waitpid(svc_pid, &st, WUNTRACED) == svc_pid && WIFSTOPPED(st));
	memset(&bt, 0, sizeof(bt));
	for (int i = 0; i < 24; i++) {
		bt.is_read[i] = i >= 16;
		bt.off[i] = bt.is_read[i] ? (uint64_t)(i - 16) * 65536 : (32 + (uint64_t)i) * 65536;
		bt.buf[i] = i % 2 ? (uint8_t *)reg.addr + (i / 2) * 65536 : heap + i * 65536;
		if (bt.is_read[i]) {
			memset(bt.buf[i], 0xee, 65536);
			q2cq_read(q, bt.off[i], bt.buf[i], 65536, (void *)(uintptr_t)i, 0);
		} else {
			fill(bt.buf[i], 65536, &seed);
			bt.fua[i] = i % 4 == 0;
			q2cq_write(q, bt.off[i], bt.buf[i], 65536, (void *)(uintptr_t)i,
				   bt.fua[i] ? Q2C_REQ_FUA : 0);
		}
	}
	bt.n = 24;
	CHECK(q2cq_do_io(q, c, 0, 4, NULL) == 0);
	CHECK(kill(svc_pid, SIGKILL) == 0);
	CHECK(waitpid(svc_pid, NULL, 0) == svc_pid);
	svc_pid = -1;
	CHECK(q2cq_do_io(q, c, 1, 4, NULL) == -ECONNRESET);
	CHECK(q2c_reconnect(a) < 0);                    /* nobody there yet */
	CHECK(q2cq_do_io(q, c, 1, 4, NULL) == -ECONNRESET);
	start_service();
	CHECK(q2c_reconnect(b2) == -ENOENT);            /* its image is not open yet */
	for (int tries = 0; q2c_reconnect(a) < 0; tries++) {
		CHECK(tries < 250);
		usleep(20000);
	}
	CHECK(collect(a, &bt, model, &restarts) == 0);
	CHECK(settle(a, &bt, model, &restarts) == 0);
	CHECK(q2c_reconnect(b2) == 0);                  /* now it is */
	{
		uint8_t *p = heap;
		q2cq_read(q2c_get_queue(b2, 0), 40 * 65536, p, 65536, NULL, 0);
		CHECK(wait_all(q2c_get_queue(b2, 0), 1, 0) == 0);
		CHECK(!memcmp(p, model + 40 * 65536, 65536));
	}

	/* Killed while busy, at a few moments: some requests taken, some
	 * completed, some not even taken; nothing lost, nothing twice. */
	for (int round = 0; round < 12; round++) {
		memset(&bt, 0, sizeof(bt));
		for (int i = 0; i < 32; i++) {
			bt.off[i] = ((uint64_t)(round % 4) * 32 + (uint64_t)i) * 65536 + (8u << 20);
			bt.buf[i] = i % 2 && i < 32 ? (uint8_t *)reg.addr + (i / 2) * 65536
						    : heap + i * 65536;
			fill(bt.buf[i], 65536, &seed);
			bt.fua[i] = i % 5 == 0;
			q2cq_write(q, bt.off[i], bt.buf[i], 65536, (void *)(uintptr_t)i,
				   bt.fua[i] ? Q2C_REQ_FUA : 0);
		}
		bt.n = 32;
		CHECK(q2cq_do_io(q, c, 0, 0, NULL) == 0);
		if (round % 3 == 1) {
			usleep((useconds_t)(rnd(&seed) % 3000));
			CHECK(kill(svc_pid, SIGKILL) == 0);
		}
		CHECK(collect(a, &bt, model, &restarts) == 0);
		CHECK(settle(a, &bt, model, &restarts) == 0);
	}
	CHECK(restarts >= 4);

	/* A clean stop (SIGTERM detaches the queues, closes the image), then
	 * a start: the request left in the ring completes. */
	CHECK(stop_service() == 0);
	memset(&bt, 0, sizeof(bt));
	bt.is_read[0] = true;
	bt.off[0] = 8u << 20;
	bt.buf[0] = heap;
	q2cq_read(q, bt.off[0], bt.buf[0], 65536, (void *)0, 0);
	bt.n = 1;
	CHECK(collect(a, &bt, model, &restarts) == 0);

	/* everything reads back as the model */
	for (uint64_t off = 0; off < (16u << 20); off += 1 << 20) {
		uint8_t *p = malloc(1 << 20);
		CHECK(p);
		q2cq_read(q, off, p, 1 << 20, NULL, 0);
		if (wait_all(q, 1, 0) < 0 || memcmp(p, model + off, 1 << 20)) {
			free(p);
			CHECK(!"read back");
		}
		free(p);
	}
	q2c_destroy(&b2);
	q2c_destroy(&a);
	q2c_free_mem_region(NULL, &reg);
	reg.addr = NULL;
	CHECK(stop_service() == 0);
	/* qcow2d was killed: leaked clusters are allowed (exit 3), nothing else */
	snprintf(cmd, sizeof(cmd), "%s check -q %s", qemu_img, img);
	st = system(cmd);
	CHECK(WIFEXITED(st) && (WEXITSTATUS(st) == 0 || WEXITSTATUS(st) == 3));
	{
		char fix[800];
		snprintf(fix, sizeof(fix), "%s check -q -r leaks %s >/dev/null", qemu_img, img);
		CHECK(system(fix) == 0);
	}
	CHECK(judge(img, model) == 0);
out:
	q2c_destroy(&b2);
	q2c_destroy(&a);
	if (reg.addr)
		q2c_free_mem_region(NULL, &reg);
	free(model);
	free(heap);
	return failures;
}

int main(int argc, char **argv)
{
	char cmd[1024];
	int ret;

	if (argc != 5) {
		fprintf(stderr, "usage: client_io QCOW2D QEMU_IMG WORKDIR props|io|edges|restart\n");
		return 2;
	}
	setenv("QCOW2D", argv[1], 1);
	qemu_img = argv[2];
	workdir = argv[3];
	snprintf(cmd, sizeof(cmd), "rm -rf %s && mkdir -p %s", workdir, workdir);
	if (system(cmd) != 0)
		die("workdir");
	snprintf(sock_path, sizeof(sock_path), "%s/s.sock", workdir);
	if (strlen(sock_path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
		fprintf(stderr, "client_io: %s is too long for a socket path\n", sock_path);
		return 1;
	}
	start_service();
	if (!strcmp(argv[4], "props"))
		ret = run_props();
	else if (!strcmp(argv[4], "io"))
		ret = run_io();
	else if (!strcmp(argv[4], "edges"))
		ret = run_edges();
	else if (!strcmp(argv[4], "restart"))
		ret = run_restart();
	else
		ret = -1;
	if (svc_pid > 0 && ret == 0 && stop_service() < 0)
		ret = 1;
	if (svc_pid > 0) {
		kill(svc_pid, SIGCONT);
		kill(svc_pid, SIGKILL);
		waitpid(svc_pid, NULL, 0);
	}
	if (ret == 0) {
		snprintf(cmd, sizeof(cmd), "rm -rf %s", workdir);
		if (system(cmd) != 0)
			return 1;
	}
	printf("client_io %s: %s\n", argv[4], ret ? "FAILED" : "ok");
	return ret ? 1 : 0;
}
