/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * The data path end to end: a real qcow2d, an image it opens, queues that
 * attach over the control socket (queue.attach, then the ipc handshake on
 * the same connection), and seeded random IO (writes, zero writes with and
 * without unmap, discards, flushes, reads) checked against a model of the
 * disk, from two queues at once. Then: invalid entries complete with
 * -EINVAL and the queue goes on; a client that hangs up is detached; an
 * image with clients attached refuses image.close without force; SIGTERM
 * with a queue attached exits 0; qemu-img check finds the image clean and
 * qemu-img convert reads back exactly the model.
 *
 * Along the way, service.metrics must be OpenMetrics text that the strict
 * parser of python3-prometheus-client accepts and whose figures agree
 * (check_metrics.py).
 *
 * With "corrupt", another scenario: an image found corrupt while open
 * (run_corrupt()).
 *
 * queue_io QCOW2D QEMU_IMG WORKDIR CHECK_METRICS [corrupt]
 */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "qcow2_ipc.h"

#define DISK (64ull << 20)
#define BLK 4096u
#define CHUNK (256u * 1024)

static const char *workdir, *metrics_checker;
/* requests issued per operation (read, write, flush, write_zeroes,
 * discard) and bytes written, to compare with image.stats */
static uint64_t n_ops[5], n_write_bytes;
static char sock_path[100], img_path[256], img2_path[256];
static pid_t svc_pid = -1;
static int failures;

#define CHECK(cond)                                                          \
	do {                                                                 \
		if (!(cond)) {                                               \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, \
				__LINE__, #cond);                            \
			failures++;                                          \
			goto out;                                            \
		}                                                            \
	} while (0)

static void die(const char *what)
{
	fprintf(stderr, "queue_io: %s: %s\n", what, strerror(errno));
	if (svc_pid > 0)
		kill(svc_pid, SIGKILL);
	exit(1);
}

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

/* One line from fd, read byte by byte (nothing past it), parsed. */
static json_t *read_reply(int fd)
{
	char line[1 << 16];
	size_t n = 0;
	json_error_t jerr;

	for (;;) {
		ssize_t r = read(fd, line + n, 1);
		if (r <= 0)
			return NULL;
		if (line[n] == '\n')
			break;
		if (++n == sizeof(line) - 1)
			return NULL;
	}
	line[n] = '\0';
	return json_loads(line, 0, &jerr);
}

/* One request; the reply line read byte by byte (nothing past it: the ipc
 * handshake may follow on the same socket). Returns the parsed reply. */
static json_t *call(int fd, const char *method, const char *params_fmt, ...)
{
	static int id;
	char line[8192], params[4096];
	size_t n = 0;
	va_list ap;

	va_start(ap, params_fmt);
	vsnprintf(params, sizeof(params), params_fmt, ap);
	va_end(ap);
	n = (size_t)snprintf(line, sizeof(line),
			     "{\"jsonrpc\":\"2.0\",\"id\":%d,\"method\":\"%s\","
			     "\"params\":%s}\n", ++id, method, params);
	if (write(fd, line, n) != (ssize_t)n)
		die("write");
	return read_reply(fd);
}

static bool ok(json_t *reply)
{
	bool good = reply && json_object_get(reply, "result");

	if (!good) {
		char *s = reply ? json_dumps(reply, 0) : NULL;
		fprintf(stderr, "queue_io: unexpected reply: %s\n", s ? s : "(none)");
		free(s);
	}
	return good;
}

static const char *error_class(json_t *reply)
{
	return json_string_value(json_object_get(
		json_object_get(json_object_get(reply, "error"), "data"), "class"));
}

static void start_service(void)
{
	for (int i = 0; i < 500; i++) {
		int fd = connect_ctl();
		if (fd >= 0) {
			close(fd);
			return;
		}
		usleep(10000);
	}
	die("qcow2d did not start listening");
}

/* ---- a queue ------------------------------------------------------------- */

struct queue {
	int sock;
	json_int_t id;
	struct qcow2_ipc_client *c;
	uint8_t *data;
	uint64_t data_size;
};

static int queue_attach(struct queue *q, const char *name)
{
	struct qcow2_ipc_client_opts co = { .size = sizeof(co) };
	json_t *r;
	int ret;

	co.geometry.sq_entries = 32;
	co.geometry.cq_entries = 32;
	co.geometry.max_segs = 4;
	co.geometry.data_size = 32 * CHUNK;
	q->sock = connect_ctl();
	if (q->sock < 0)
		return -errno;
	r = call(q->sock, "queue.attach", "{\"name\":\"%s\"}", name);
	if (!ok(r) || json_integer_value(json_object_get(
			      json_object_get(r, "result"), "disk_size")) != (json_int_t)DISK ||
	    json_integer_value(json_object_get(json_object_get(r, "result"),
					       "protocol_version")) != 1) {
		json_decref(r);
		return -EPROTO;
	}
	q->id = json_integer_value(json_object_get(json_object_get(r, "result"),
						   "queue"));
	json_decref(r);
	ret = qcow2_ipc_client_new(&co, &q->c);
	if (ret == 0)
		ret = qcow2_ipc_client_handshake(q->c, q->sock);
	if (ret == 0)
		q->data = qcow2_ipc_client_data(q->c, &q->data_size);
	return ret;
}

static void queue_free(struct queue *q)
{
	qcow2_ipc_client_free(q->c);
	if (q->sock >= 0)
		close(q->sock);
	q->c = NULL;
	q->sock = -1;
}

/* Submit one request and wait for its completion. */
static int32_t do_io(struct queue *q, uint8_t op, uint8_t flags, uint64_t off,
		     uint64_t len, uint64_t buf_off)
{
	struct qcow2_ipc_seg seg = { .off = buf_off, .len = (uint32_t)len };
	struct qcow2_ipc_req req = { .opcode = op, .flags = flags, .offset = off,
				     .len = len, .tag = off ^ len };
	struct qcow2_ipc_completion cpl;
	unsigned n = 0;

	if (op == QCOW2_IPC_OP_READ || op == QCOW2_IPC_OP_WRITE) {
		req.nr_segs = 1;
		req.segs = &seg;
	}
	n_ops[op - 1]++;
	if (op == QCOW2_IPC_OP_WRITE)
		n_write_bytes += len;
	if (qcow2_ipc_client_submit(q->c, &req) < 0 ||
	    qcow2_ipc_client_commit(q->c) < 0)
		return -EPROTO;
	while (n == 0) {
		if (qcow2_ipc_client_wait(q->c, 64, 10000) < 0)
			return -ETIMEDOUT;
		if (qcow2_ipc_client_reap(q->c, &cpl, 1, &n) < 0)
			return -EPROTO;
	}
	return cpl.res;
}

static uint64_t rnd(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Seeded random IO on q against model; returns the number of mismatches
 * and errors. */
static int random_io(struct queue *q, uint8_t *model, uint64_t seed, int n)
{
	int bad = 0;

	for (int i = 0; i < n; i++) {
		uint64_t len = (rnd(&seed) % (CHUNK / BLK) + 1) * BLK;
		uint64_t off = (rnd(&seed) % ((DISK - len) / BLK + 1)) * BLK;
		unsigned kind = (unsigned)(rnd(&seed) % 10);
		int32_t res;

		if (kind < 4) { /* write */
			for (uint64_t k = 0; k < len; k++)
				q->data[k] = (uint8_t)rnd(&seed);
			res = do_io(q, QCOW2_IPC_OP_WRITE, 0, off, len, 0);
			if (res == 0)
				memcpy(model + off, q->data, len);
		} else if (kind < 5) {
			res = do_io(q, QCOW2_IPC_OP_WRITE_ZEROES,
				    rnd(&seed) & 1 ? QCOW2_IPC_F_UNMAP : 0, off, len, 0);
			if (res == 0)
				memset(model + off, 0, len);
		} else if (kind < 6) {
			/* a discard may leave the old data or zeros: the model
			 * cannot tell, so zero it first (then both read 0) */
			res = do_io(q, QCOW2_IPC_OP_WRITE_ZEROES, 0, off, len, 0);
			if (res == 0)
				res = do_io(q, QCOW2_IPC_OP_DISCARD, 0, off, len, 0);
			if (res == 0)
				memset(model + off, 0, len);
		} else if (kind < 7) {
			res = do_io(q, QCOW2_IPC_OP_FLUSH, 0, 0, 0, 0);
		} else {
			memset(q->data, 0xee, len);
			res = do_io(q, QCOW2_IPC_OP_READ, 0, off, len, 0);
			if (res == 0 && memcmp(q->data, model + off, len)) {
				fprintf(stderr, "queue_io: read at %llu+%llu differs "
					"from the model\n", (unsigned long long)off,
					(unsigned long long)len);
				bad++;
			}
		}
		if (res != 0) {
			fprintf(stderr, "queue_io: request %d (kind %u at %llu+%llu) "
				"failed: %s\n", i, kind, (unsigned long long)off,
				(unsigned long long)len, strerror(-res));
			bad++;
		}
	}
	return bad;
}

static int run(const char *qemu_img)
{
	uint8_t *model = calloc(1, DISK), *disk = NULL;
	struct queue q1 = { .sock = -1 }, q2 = { .sock = -1 }, q3 = { .sock = -1 };
	struct queue q4 = { .sock = -1 };
	char cmd[1024], raw[300];
	json_t *r = NULL;
	int ctl = -1, ev = -1, status, fd;

	if (!model)
		die("calloc");
	ctl = connect_ctl();
	CHECK(ctl >= 0);
	r = call(ctl, "image.open", "{\"path\":\"%s\",\"name\":\"disk\"}", img_path);
	CHECK(ok(r));
	json_decref(r);

	/* a subscriber to the queues' events */
	ev = connect_ctl();
	CHECK(ev >= 0);
	r = call(ev, "events.subscribe",
		 "{\"events\":[\"queue.attached\",\"queue.detached\"]}");
	CHECK(ok(r));
	json_decref(r);

	/* two queues, IO from both in turns */
	CHECK(queue_attach(&q1, "disk") == 0);
	CHECK(queue_attach(&q2, "disk") == 0);
	r = call(ctl, "image.list", "{}");
	CHECK(ok(r));
	CHECK(json_integer_value(json_object_get(json_array_get(json_object_get(
		json_object_get(r, "result"), "images"), 0), "clients")) == 2);
	json_decref(r);
	for (int round = 0; round < 4; round++) {
		CHECK(random_io(&q1, model, 1000 + round, 40) == 0);
		CHECK(random_io(&q2, model, 2000 + round, 40) == 0);
	}

	/* every request counted per operation, with its latency */
	r = call(ctl, "image.stats", "{\"name\":\"disk\"}");
	CHECK(ok(r));
	{
		static const char *const names[5] = { "read", "write", "flush",
						      "write_zeroes", "discard" };
		json_t *ops = json_object_get(json_object_get(r, "result"), "ops");
		for (int i = 0; i < 5; i++) {
			json_t *o = json_object_get(ops, names[i]), *c;
			json_int_t sum = 0;
			size_t k;
			CHECK(json_integer_value(json_object_get(o, "requests")) ==
			      (json_int_t)n_ops[i]);
			CHECK(json_integer_value(json_object_get(o, "errors")) == 0);
			json_array_foreach(json_object_get(json_object_get(
				o, "latency_histogram"), "counts"), k, c)
				sum += json_integer_value(c);
			CHECK(sum == (json_int_t)n_ops[i]);
		}
		CHECK(json_integer_value(json_object_get(json_object_get(ops, "write"),
							 "bytes")) ==
		      (json_int_t)n_write_bytes);
		CHECK(n_ops[0] > 0 && n_ops[1] > 0 && n_ops[2] > 0);
	}
	json_decref(r);
	r = NULL;

	/* the workers took the requests from the rings in batches */
	r = call(ctl, "service.stats", "{}");
	CHECK(ok(r));
	{
		json_int_t batches = 0, reqs = 0;
		size_t i;
		json_t *w;
		json_array_foreach(json_object_get(json_object_get(r, "result"), "workers"),
				   i, w) {
			double busy = json_number_value(json_object_get(w, "busy_ratio"));
			batches += json_integer_value(json_object_get(w, "ring_batches"));
			reqs += json_integer_value(json_object_get(w, "ring_requests"));
			CHECK(busy >= 0 && busy <= 1);
		}
		/* (invalid entries are taken but not counted: none yet) */
		CHECK(batches > 0 && reqs >= batches &&
		      reqs == (json_int_t)(n_ops[0] + n_ops[1] + n_ops[2] + n_ops[3] +
					   n_ops[4]));
	}
	json_decref(r);
	r = NULL;

	/* the same figures as OpenMetrics text, judged by a strict parser */
	r = call(ctl, "service.metrics", "{}");
	CHECK(ok(r));
	{
		char mpath[300], cmd2[700];
		const char *text = json_string_value(json_object_get(
			json_object_get(r, "result"), "text"));
		FILE *mf;

		snprintf(mpath, sizeof(mpath), "%s/metrics.txt", workdir);
		mf = fopen(mpath, "w");
		CHECK(text && mf);
		fputs(text, mf);
		fclose(mf);
		snprintf(cmd2, sizeof(cmd2), "/usr/bin/python3 %s %s disk",
			 metrics_checker, mpath);
		CHECK(system(cmd2) == 0);
	}
	json_decref(r);
	r = NULL;

	/* an online check with a queue attached (no IO meanwhile) */
	r = call(ctl, "image.check", "{\"name\":\"disk\"}");
	CHECK(ok(r));
	CHECK(json_integer_value(json_object_get(json_object_get(r, "result"),
						 "corruptions")) == 0);
	CHECK(json_integer_value(json_object_get(json_object_get(r, "result"),
						 "check_errors")) == 0);
	CHECK(json_is_true(json_object_get(json_object_get(r, "result"), "consistent")));
	json_decref(r);
	r = NULL;

	/* invalid entries complete with -EINVAL; the queue goes on */
	{
		int32_t res = do_io(&q1, QCOW2_IPC_OP_READ, 0, 100, BLK, 0);
		if (res != -EINVAL)
			fprintf(stderr, "queue_io: an unaligned read gave %d\n", res);
		CHECK(res == -EINVAL);
	}
	CHECK(do_io(&q1, QCOW2_IPC_OP_WRITE, 0, DISK, BLK, 0) == -EINVAL);
	CHECK(do_io(&q1, QCOW2_IPC_OP_READ, 0, 0, BLK, q1.data_size) == -EINVAL);
	CHECK(do_io(&q1, QCOW2_IPC_OP_FLUSH, 0, 0, 0, 0) == 0);

	/* clients attached: close refuses without force */
	r = call(ctl, "image.close", "{\"name\":\"disk\"}");
	CHECK(r && error_class(r) && !strcmp(error_class(r), "Busy"));
	json_decref(r);

	/* a client that hangs up is detached */
	queue_free(&q2);
	r = NULL;
	for (int i = 0; i < 200; i++) {
		json_decref(r);
		r = call(ctl, "image.list", "{}");
		CHECK(ok(r));
		if (json_integer_value(json_object_get(json_array_get(json_object_get(
			    json_object_get(r, "result"), "images"), 0), "clients")) == 1)
			break;
		usleep(10000);
	}
	CHECK(json_integer_value(json_object_get(json_array_get(json_object_get(
		json_object_get(r, "result"), "images"), 0), "clients")) == 1);
	json_decref(r);
	r = NULL;
	/* the subscriber saw both attaches, then the detach */
	{
		static const char *const want[3] = { "queue.attached", "queue.attached",
						     "queue.detached" };
		for (int i = 0; i < 3; i++) {
			json_t *note = read_reply(ev);
			json_t *p = json_object_get(note, "params");
			const char *name = json_string_value(json_object_get(p, "event"));
			int match = note && name && !strcmp(name, want[i]) &&
				    !strcmp(json_string_value(json_object_get(note, "method")),
					    "event") &&
				    json_is_number(json_object_get(p, "timestamp")) &&
				    !strcmp(json_string_value(json_object_get(
						    json_object_get(p, "data"), "name")), "disk");
			json_decref(note);
			CHECK(match);
		}
	}

	/* the write-back's causes and the dirty state: "disk" has a 50 ms
	 * timer, which must have written back; "d2" has none and an L2 cache
	 * of 4 slices of 1 KiB, so writes to 8 regions (8 MiB apart: one L2
	 * slice each) evict, and what is left stays dirty until a flush */
	r = call(ctl, "image.stats", "{\"name\":\"disk\"}");
	CHECK(ok(r) && json_integer_value(json_object_get(json_object_get(json_object_get(
			       json_object_get(r, "result"), "flush"), "by_cause"), "timer")) > 0);
	json_decref(r);
	r = call(ctl, "image.open", "{\"path\":\"%s\",\"name\":\"d2\","
		 "\"flush_interval_ms\":0,\"l2_cache_size\":4096,\"l2_slice_size\":1024}",
		 img2_path);
	CHECK(ok(r));
	json_decref(r);
	CHECK(queue_attach(&q4, "d2") == 0);
	memset(q4.data, 0x77, BLK);
	for (int k = 0; k < 8; k++)
		CHECK(do_io(&q4, QCOW2_IPC_OP_WRITE, 0, (uint64_t)k << 23, BLK, 0) == 0);
	r = call(ctl, "image.stats", "{\"name\":\"d2\"}");
	CHECK(ok(r));
	{
		json_t *f = json_object_get(json_object_get(r, "result"), "flush");
		json_t *by = json_object_get(f, "by_cause");
		CHECK(json_integer_value(json_object_get(by, "eviction")) > 0);
		CHECK(json_integer_value(json_object_get(by, "timer")) == 0);
		CHECK(json_is_true(json_object_get(f, "dirty")));
		CHECK(json_integer_value(json_object_get(f, "dirty_slices")) > 0);
		CHECK(json_number_value(json_object_get(f, "oldest_dirty_seconds")) > 0);
	}
	json_decref(r);
	r = call(ctl, "image.flush", "{\"name\":\"d2\"}");
	CHECK(ok(r));
	json_decref(r);
	r = call(ctl, "image.stats", "{\"name\":\"d2\"}");
	CHECK(ok(r));
	{
		json_t *f = json_object_get(json_object_get(r, "result"), "flush");
		CHECK(!json_is_true(json_object_get(f, "dirty")) &&
		      json_integer_value(json_object_get(f, "dirty_slices")) == 0 &&
		      json_number_value(json_object_get(f, "oldest_dirty_seconds")) == 0 &&
		      json_integer_value(json_object_get(json_object_get(f, "by_cause"),
							 "client")) == 1);
	}
	json_decref(r);
	r = NULL;
	queue_free(&q4);

	/* the timer writes back only what changed longer ago than the
	 * interval (400 ms): metadata a client flushes within 250 ms is never
	 * the timer's; metadata nobody flushes is, within 1.25 intervals */
	r = call(ctl, "image.close", "{\"name\":\"d2\",\"force\":true}");
	CHECK(ok(r));
	json_decref(r);
	r = call(ctl, "image.open", "{\"path\":\"%s\",\"name\":\"d3\","
		 "\"flush_interval_ms\":400}", img2_path);
	CHECK(ok(r));
	json_decref(r);
	r = NULL;
	CHECK(queue_attach(&q4, "d3") == 0);
	memset(q4.data, 0x78, BLK);
	for (int k = 0; k < 4; k++) {
		CHECK(do_io(&q4, QCOW2_IPC_OP_WRITE, 0, ((uint64_t)k << 23) + (1 << 20),
			    BLK, 0) == 0);
		usleep(250000);
		CHECK(do_io(&q4, QCOW2_IPC_OP_FLUSH, 0, 0, 0, 0) == 0);
	}
	r = call(ctl, "image.stats", "{\"name\":\"d3\"}");
	CHECK(ok(r) && json_integer_value(json_object_get(json_object_get(json_object_get(
			       json_object_get(r, "result"), "flush"), "by_cause"), "timer")) == 0);
	json_decref(r);
	r = NULL;
	CHECK(do_io(&q4, QCOW2_IPC_OP_WRITE, 0, (5ull << 23) + (1 << 20), BLK, 0) == 0);
	{
		json_int_t timer = 0;
		bool dirty = true;
		for (int t = 0; t < 60 && (timer == 0 || dirty); t++) {
			usleep(50000);
			r = call(ctl, "image.stats", "{\"name\":\"d3\"}");
			CHECK(ok(r));
			timer = json_integer_value(json_object_get(json_object_get(json_object_get(
				json_object_get(r, "result"), "flush"), "by_cause"), "timer"));
			dirty = json_is_true(json_object_get(json_object_get(
				json_object_get(r, "result"), "flush"), "dirty"));
			json_decref(r);
			r = NULL;
		}
		CHECK(timer == 1 && !dirty);
	}
	queue_free(&q4);

	/* queue.attach behind another call in flight on the connection is
	 * refused (the connection could not become the queue's) */
	{
		int fd2 = connect_ctl();
		const char *two = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"image.flush\","
				  "\"params\":{\"name\":\"disk\"}}\n"
				  "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"queue.attach\","
				  "\"params\":{\"name\":\"disk\"}}\n";
		json_t *a, *b;
		CHECK(fd2 >= 0 && write(fd2, two, strlen(two)) == (ssize_t)strlen(two));
		a = read_reply(fd2);
		b = read_reply(fd2);
		{
			json_t *att = json_integer_value(json_object_get(a, "id")) == 2 ? a : b;
			int refused = json_integer_value(json_object_get(
					      json_object_get(att, "error"), "code")) == -32600;
			json_decref(a);
			json_decref(b);
			close(fd2);
			CHECK(refused);
		}
	}

	/* a client that never sends its hello is dropped after 5 s, and a
	 * hello sent a byte at a time does not stall the worker (the other
	 * queue's IO goes on meanwhile) */
	{
		int slow = connect_ctl();
		json_t *sr;
		char c;
		struct timeval tv = { .tv_sec = 20 };
		uint64_t t0;

		CHECK(slow >= 0);
		sr = call(slow, "queue.attach", "{\"name\":\"disk\"}");
		CHECK(ok(sr));
		json_decref(sr);
		t0 = (uint64_t)time(NULL);
		/* Feed the hello a byte at a time until the image's worker
		 * answers an image.stats: it must answer long before the 64
		 * bytes are in (a worker waiting on the socket answers only
		 * after the last one). */
		{
			const char *req = "{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":"
					  "\"image.stats\",\"params\":{\"name\":\"disk\"}}\n";
			struct pollfd pf = { .fd = ctl, .events = POLLIN };
			int sent = 0;

			CHECK(write(slow, "Q", 1) == 1);
			sent++;
			CHECK(write(ctl, req, strlen(req)) == (ssize_t)strlen(req));
			while (sent < 64 && poll(&pf, 1, 200) == 0) {
				CHECK(write(slow, "Q", 1) == 1);
				sent++;
			}
			sr = read_reply(ctl);
			CHECK(ok(sr));
			json_decref(sr);
			CHECK(sent < 64);
		}
		CHECK(do_io(&q1, QCOW2_IPC_OP_READ, 0, 0, BLK, 0) == 0);
		setsockopt(slow, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		/* the service's reply (a refusal) or end of file, within the
		 * hello timeout, not our 20 s */
		while (read(slow, &c, 1) > 0)
			;
		CHECK((uint64_t)time(NULL) - t0 < 15);
		close(slow);
	}

	/* queue.detach: the service hangs up on the queue's connection */
	CHECK(queue_attach(&q3, "disk") == 0);
	CHECK(do_io(&q3, QCOW2_IPC_OP_FLUSH, 0, 0, 0, 0) == 0);
	r = call(ctl, "queue.detach", "{\"name\":\"disk\",\"queue\":%lld}",
		 (long long)q3.id + 1000);
	CHECK(r && error_class(r) && !strcmp(error_class(r), "ImageNotFound"));
	json_decref(r);
	r = call(ctl, "queue.detach", "{\"name\":\"disk\",\"queue\":%lld}",
		 (long long)q3.id);
	CHECK(ok(r));
	json_decref(r);
	r = NULL;
	{
		char c;
		struct timeval tv = { .tv_sec = 10 };
		setsockopt(q3.sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		CHECK(read(q3.sock, &c, 1) == 0); /* EOF, not a timeout */
	}
	queue_free(&q3);

	/* acknowledged and flushed, then SIGTERM with a queue attached */
	CHECK(random_io(&q1, model, 3000, 30) == 0);
	CHECK(do_io(&q1, QCOW2_IPC_OP_FLUSH, 0, 0, 0, 0) == 0);
	CHECK(kill(svc_pid, SIGTERM) == 0);
	CHECK(waitpid(svc_pid, &status, 0) == svc_pid);
	svc_pid = -1;
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);

	snprintf(cmd, sizeof(cmd), "%s check -q %s", qemu_img, img_path);
	CHECK(system(cmd) == 0);
	snprintf(raw, sizeof(raw), "%s/disk.raw", workdir);
	snprintf(cmd, sizeof(cmd), "%s convert -f qcow2 -O raw %s %s", qemu_img,
		 img_path, raw);
	CHECK(system(cmd) == 0);
	disk = malloc(DISK);
	fd = open(raw, O_RDONLY);
	CHECK(disk && fd >= 0 && pread(fd, disk, DISK, 0) == (ssize_t)DISK);
	close(fd);
	unlink(raw);
	CHECK(memcmp(disk, model, DISK) == 0);
out:
	json_decref(r);
	queue_free(&q1);
	queue_free(&q2);
	queue_free(&q3);
	queue_free(&q4);
	if (ctl >= 0)
		close(ctl);
	if (ev >= 0)
		close(ev);
	free(model);
	free(disk);
	return failures;
}

/* Damage the L2 entry of guest offset 0: its host offset + 512, no longer
 * cluster aligned (make_bad.py's l2-entry-unaligned). */
static int damage_l2_entry0(const char *path)
{
	uint64_t l1_off, l1e, e;
	int fd = open(path, O_RDWR), ret = -1;

	if (fd >= 0 && pread(fd, &l1_off, 8, 40) == 8 &&
	    pread(fd, &l1e, 8, (off_t)be64toh(l1_off)) == 8 &&
	    (be64toh(l1e) & 0x00fffffffffffe00ull) &&
	    pread(fd, &e, 8, (off_t)(be64toh(l1e) & 0x00fffffffffffe00ull)) == 8 &&
	    (be64toh(e) & 0x00fffffffffffe00ull)) {
		e = htobe64(be64toh(e) + 512);
		if (pwrite(fd, &e, 8, (off_t)(be64toh(l1e) & 0x00fffffffffffe00ull)) == 8 &&
		    fsync(fd) == 0)
			ret = 0;
	}
	if (fd >= 0)
		close(fd);
	return ret;
}

/*
 * An image found corrupt while qcow2d has it open: the read that finds it
 * fails with EIO, a subscriber gets image.corrupt, later writes fail with
 * EUCLEAN, reads elsewhere and flushes go on, image.info says so, another
 * image is served as before; after the close the header's corrupt bit is
 * on disk (qemu-img info), and image.open read-write is refused (Corrupt).
 */
static int run_corrupt(const char *qemu_img)
{
	struct queue q = { .sock = -1 }, q2 = { .sock = -1 };
	char cmd[1024];
	json_t *r = NULL, *res;
	int ctl = -1, ev = -1;

	ctl = connect_ctl();
	CHECK(ctl >= 0);
	/* good data at 0 and 2M, written through the service */
	r = call(ctl, "image.open", "{\"path\":\"%s\",\"name\":\"c\"}", img_path);
	CHECK(ok(r));
	json_decref(r);
	r = NULL;
	CHECK(queue_attach(&q, "c") == 0);
	memset(q.data, 0x11, CHUNK);
	CHECK(do_io(&q, QCOW2_IPC_OP_WRITE, 0, 0, 65536, 0) == 0);
	memset(q.data, 0x33, CHUNK);
	CHECK(do_io(&q, QCOW2_IPC_OP_WRITE, 0, 2 << 20, 65536, 0) == 0);
	CHECK(do_io(&q, QCOW2_IPC_OP_FLUSH, 0, 0, 0, 0) == 0);
	queue_free(&q);
	r = call(ctl, "image.close", "{\"name\":\"c\",\"force\":true}");
	CHECK(ok(r));
	json_decref(r);
	r = NULL;
	CHECK(damage_l2_entry0(img_path) == 0);

	ev = connect_ctl();
	CHECK(ev >= 0);
	r = call(ev, "events.subscribe", "{\"events\":[\"image.corrupt\"]}");
	CHECK(ok(r));
	json_decref(r);
	r = call(ctl, "image.open", "{\"path\":\"%s\",\"name\":\"c\"}", img_path);
	CHECK(ok(r));
	json_decref(r);
	r = call(ctl, "image.open", "{\"path\":\"%s\",\"name\":\"other\"}", img2_path);
	CHECK(ok(r));
	json_decref(r);
	r = NULL;
	CHECK(queue_attach(&q, "c") == 0);
	CHECK(queue_attach(&q2, "other") == 0);

	memset(q.data, 0, CHUNK);
	CHECK(do_io(&q, QCOW2_IPC_OP_READ, 0, 2 << 20, 65536, 0) == 0);
	CHECK(q.data[0] == 0x33 && q.data[65535] == 0x33);
	CHECK(do_io(&q, QCOW2_IPC_OP_READ, 0, 0, 65536, 0) == -EIO);
	r = read_reply(ev); /* the event, before any other line */
	CHECK(r);
	res = json_object_get(r, "params");
	CHECK(!strcmp(json_string_value(json_object_get(res, "event")) ?: "",
		      "image.corrupt"));
	res = json_object_get(res, "data");
	CHECK(!strcmp(json_string_value(json_object_get(res, "name")) ?: "", "c"));
	CHECK(strstr(json_string_value(json_object_get(res, "message")) ?: "",
		     "invalid L2 entry"));
	json_decref(r);
	r = NULL;
	memset(q.data, 0x55, CHUNK);
	CHECK(do_io(&q, QCOW2_IPC_OP_WRITE, 0, 4 << 20, 65536, 0) == -EUCLEAN);
	CHECK(do_io(&q, QCOW2_IPC_OP_WRITE_ZEROES, 0, 2 << 20, 65536, 0) == -EUCLEAN);
	CHECK(do_io(&q, QCOW2_IPC_OP_DISCARD, 0, 2 << 20, 65536, 0) == -EUCLEAN);
	memset(q.data, 0, CHUNK);
	CHECK(do_io(&q, QCOW2_IPC_OP_READ, 0, 2 << 20, 65536, 0) == 0);
	CHECK(q.data[0] == 0x33 && q.data[65535] == 0x33);
	CHECK(do_io(&q, QCOW2_IPC_OP_FLUSH, 0, 0, 0, 0) == 0);
	r = call(ctl, "image.info", "{\"name\":\"c\"}");
	CHECK(ok(r));
	res = json_object_get(r, "result");
	CHECK(json_is_true(json_object_get(res, "corrupt")));
	CHECK(strstr(json_string_value(json_object_get(res, "corrupt_reason")) ?: "",
		     "invalid L2 entry"));
	json_decref(r);
	r = NULL;
	/* the other image carries on */
	memset(q2.data, 0x77, CHUNK);
	CHECK(do_io(&q2, QCOW2_IPC_OP_WRITE, 0, 0, 65536, 0) == 0);
	memset(q2.data, 0, CHUNK);
	CHECK(do_io(&q2, QCOW2_IPC_OP_READ, 0, 0, 65536, 0) == 0);
	CHECK(q2.data[0] == 0x77 && q2.data[65535] == 0x77);
	queue_free(&q);
	queue_free(&q2);
	r = call(ctl, "image.close", "{\"name\":\"c\",\"force\":true}");
	CHECK(ok(r));
	json_decref(r);
	snprintf(cmd, sizeof(cmd), "%s info %s | grep -q 'corrupt: true'", qemu_img,
		 img_path);
	CHECK(system(cmd) == 0);
	r = call(ctl, "image.open", "{\"path\":\"%s\",\"name\":\"c\"}", img_path);
	CHECK(r && error_class(r) && !strcmp(error_class(r), "Corrupt"));
	json_decref(r);
	r = call(ctl, "image.open", "{\"path\":\"%s\",\"name\":\"c\","
		 "\"read_only\":true}", img_path);
	CHECK(ok(r));
	json_decref(r);
	r = NULL;
out:
	json_decref(r);
	queue_free(&q);
	queue_free(&q2);
	if (ctl >= 0)
		close(ctl);
	if (ev >= 0)
		close(ev);
	return failures;
}

int main(int argc, char **argv)
{
	char cmd[1024];
	int ret;

	if (argc != 5 && !(argc == 6 && !strcmp(argv[5], "corrupt"))) {
		fprintf(stderr, "usage: queue_io QCOW2D QEMU_IMG WORKDIR CHECK_METRICS "
			"[corrupt]\n");
		return 2;
	}
	workdir = argv[3];
	metrics_checker = argv[4];
	snprintf(cmd, sizeof(cmd), "rm -rf %s && mkdir -p %s", workdir, workdir);
	if (system(cmd) != 0)
		die("workdir");
	snprintf(sock_path, sizeof(sock_path), "%s/s.sock", workdir);
	snprintf(img_path, sizeof(img_path), "%s/disk.qcow2", workdir);
	snprintf(img2_path, sizeof(img2_path), "%s/d2.qcow2", workdir);
	snprintf(cmd, sizeof(cmd), "%s create -q -f qcow2 %s %llu", argv[2],
		 img_path, (unsigned long long)DISK);
	if (system(cmd) != 0)
		die("qemu-img create");
	snprintf(cmd, sizeof(cmd), "%s create -q -f qcow2 %s %llu", argv[2],
		 img2_path, (unsigned long long)DISK);
	if (system(cmd) != 0)
		die("qemu-img create");
	svc_pid = fork();
	if (svc_pid < 0)
		die("fork");
	if (svc_pid == 0) {
		execl(argv[1], argv[1], "--socket", sock_path, "--workers", "2",
		      "--log-level", getenv("QI_LOG") ? getenv("QI_LOG") : "info",
		      "--flush-interval", getenv("QI_FLUSH") ? getenv("QI_FLUSH") : "50", (char *)NULL);
		_exit(127);
	}
	start_service();
	ret = argc == 6 ? run_corrupt(argv[2]) : run(argv[2]);
	if (svc_pid > 0) {
		kill(svc_pid, SIGKILL);
		waitpid(svc_pid, NULL, 0);
	}
	if (!ret) {
		snprintf(cmd, sizeof(cmd), "rm -rf %s", workdir);
		if (system(cmd) != 0)
			return 1;
	}
	printf("queue_io: %s\n", ret ? "FAILED" : "ok");
	return ret ? 1 : 0;
}
