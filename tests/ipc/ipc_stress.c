/* ipc_stress: a producer and a consumer process exchange many requests over
 * one queue attached through the real handshake. Each request is derived from
 * its tag (opcode, disk range, segments, buffers, expected result), so the
 * consumer checks that it receives exactly the requests submitted, in order,
 * with the payloads written (checksummed); the producer checks every
 * completion comes once, in order, with the result and read data expected.
 *
 *   ipc_stress [-n COUNT] [-m doorbell|always|poll] [-s SEED]
 *
 * doorbell: both sides sleep when idle, doorbells suppressed by the
 * need-wakeup flags; always: every commit and publish rings; poll: no side
 * ever sleeps. Exit 0 pass, 1 fail. */
#include "ipc_test_util.h"

#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>

#define CHUNK (16u * 1024)
#define DISK_SIZE (1ull << 40)

enum mode { MODE_DOORBELL, MODE_ALWAYS, MODE_POLL };

static const struct qcow2_ipc_geometry geom = {
	.sq_entries = 64, .cq_entries = 128, .max_segs = 4, .data_size = 128 * CHUNK,
};

struct spec {
	uint8_t opcode, flags;
	uint16_t nr_segs;
	uint64_t offset, len;
	struct qcow2_ipc_seg segs[4];
	int32_t res;
};

/* Everything about request `tag`, computable by both processes. */
static void spec_of(uint64_t tag, uint64_t seed, struct spec *sp)
{
	uint64_t rs = tag * 0x9e3779b97f4a7c15ull ^ seed;
	unsigned pick = (unsigned)(test_rand(&rs) % 100);

	memset(sp, 0, sizeof(*sp));
	sp->res = tag % 101 == 0 ? -EIO : 0;
	if (pick < 40)
		sp->opcode = QCOW2_IPC_OP_READ;
	else if (pick < 80)
		sp->opcode = QCOW2_IPC_OP_WRITE;
	else if (pick < 85)
		sp->opcode = QCOW2_IPC_OP_FLUSH;
	else if (pick < 95)
		sp->opcode = QCOW2_IPC_OP_WRITE_ZEROES;
	else
		sp->opcode = QCOW2_IPC_OP_DISCARD;
	if (sp->opcode == QCOW2_IPC_OP_FLUSH)
		return;
	sp->offset = 512 * test_rand_range(&rs, 0, (DISK_SIZE >> 9) - 1024);
	unsigned blocks = (unsigned)test_rand_range(&rs, 1, CHUNK / 512);
	sp->len = 512ull * blocks;
	if (sp->opcode == QCOW2_IPC_OP_WRITE_ZEROES)
		sp->flags = test_rand(&rs) & 1 ? QCOW2_IPC_F_UNMAP : 0;
	if (sp->opcode != QCOW2_IPC_OP_READ && sp->opcode != QCOW2_IPC_OP_WRITE)
		return;
	/* Segments: split the blocks, each in the chunk of this tag, in the
	 * data area or the registered region. */
	unsigned nr = (unsigned)test_rand_range(&rs, 1, blocks < 4 ? blocks : 4);
	unsigned left = blocks, at = 0;
	uint32_t chunk = (uint32_t)(tag % geom.cq_entries);
	for (unsigned i = 0; i < nr; i++) {
		unsigned b = i == nr - 1 ? left
					 : (unsigned)test_rand_range(&rs, 1, left - (nr - 1 - i));
		sp->segs[i].region = (uint32_t)(test_rand(&rs) & 1);
		sp->segs[i].off = (uint64_t)chunk * CHUNK + 512ull * at;
		sp->segs[i].len = 512u * b;
		at += b;
		left -= b;
	}
	sp->nr_segs = (uint16_t)nr;
}

static uint64_t payload_seed(uint64_t tag, unsigned seg, int is_read)
{
	return tag * 1000003ull + seg * 7919ull + (is_read ? 0x5555 : 0xaaaa);
}

static bool seg_matches(const void *buf, size_t len, uint64_t seed)
{
	uint8_t tmp[CHUNK];
	test_fill(tmp, len, seed);
	return memcmp(tmp, buf, len) == 0;
}

/* ---- consumer ---------------------------------------------------------------------- */

static int consumer(int sock, uint64_t count, enum mode mode, uint64_t seed)
{
	struct qcow2_ipc_server_opts o = {
		.size = sizeof(o), .disk_size = DISK_SIZE, .block_size = 512, .buf_align = 512,
		.flags = mode == MODE_ALWAYS ? QCOW2_IPC_SERVER_ALWAYS_CALL : 0,
	};
	struct qcow2_ipc_server *s;
	int err = qcow2_ipc_server_accept(sock, &o, &s);
	if (err < 0) {
		fprintf(stderr, "consumer: accept: %s\n", strerror(-err));
		return 1;
	}
	uint64_t rs = seed ^ 0xc0ffee, expect = 1, done = 0;
	struct qcow2_ipc_server_req req[64];
	while (done < count) {
		unsigned n;
		TEST_CHECK(qcow2_ipc_server_take(s, req, (unsigned)test_rand_range(&rs, 1, 64), &n) == 0);
		if (n == 0) {
			if (mode == MODE_POLL)
				continue;
			err = qcow2_ipc_server_wait(s, (unsigned)test_rand_range(&rs, 0, 64), -1);
			TEST_CHECK(err == 0);
			continue;
		}
		for (unsigned i = 0; i < n; i++) {
			struct spec sp;
			uint64_t tag = req[i].tag;
			if (tag != expect) {
				fprintf(stderr, "consumer: got tag %" PRIu64 ", expected %" PRIu64 "\n",
					tag, expect);
				return 1;
			}
			expect++;
			spec_of(tag, seed, &sp);
			TEST_CHECK(req[i].opcode == sp.opcode && req[i].flags == sp.flags);
			TEST_CHECK(req[i].offset == sp.offset && req[i].len == sp.len);
			TEST_CHECK(req[i].nr_iov == sp.nr_segs);
			for (unsigned k = 0; k < req[i].nr_iov; k++) {
				TEST_CHECK(req[i].iov[k].iov_len == sp.segs[k].len);
				if (sp.opcode == QCOW2_IPC_OP_WRITE)
					TEST_CHECK(seg_matches(req[i].iov[k].iov_base, sp.segs[k].len,
							       payload_seed(tag, k, 0)));
				else
					test_fill(req[i].iov[k].iov_base, sp.segs[k].len,
						  payload_seed(tag, k, 1));
			}
			TEST_CHECK(qcow2_ipc_server_complete(s, req[i].id, sp.res) == 0);
			/* Sometimes publish in the middle of a batch. */
			if (test_rand(&rs) % 8 == 0)
				TEST_CHECK(qcow2_ipc_server_publish(s) == 0);
		}
		TEST_CHECK(qcow2_ipc_server_publish(s) == 0);
		done += n;
	}
	struct qcow2_ipc_server_stats st = { .size = sizeof(st) };
	qcow2_ipc_server_get_stats(s, &st);
	TEST_CHECK(st.invalid == 0 && st.taken == count && st.completed == count);
	printf("consumer: %" PRIu64 " requests, %" PRIu64 " calls\n", st.taken, st.calls);
	qcow2_ipc_server_close(s);
	return 0;
}

/* ---- producer ---------------------------------------------------------------------- */

static int producer(struct qcow2_ipc_client *c, int sock, uint8_t *region, uint64_t count,
		    enum mode mode, uint64_t seed)
{
	int err = qcow2_ipc_client_handshake(c, sock);
	if (err < 0) {
		fprintf(stderr, "producer: handshake: %s\n", strerror(-err));
		return 1;
	}
	uint8_t *bases[2] = { qcow2_ipc_client_data(c, NULL), region };
	uint64_t rs = seed ^ 0xfeed, next = 1, expect = 1;
	struct qcow2_ipc_completion comp[64];

	while (expect <= count) {
		unsigned batch = (unsigned)test_rand_range(&rs, 1, 48);
		unsigned queued = 0;
		for (; queued < batch && next <= count; queued++) {
			struct spec sp;
			spec_of(next, seed, &sp);
			struct qcow2_ipc_req r = {
				.opcode = sp.opcode, .flags = sp.flags, .nr_segs = sp.nr_segs,
				.tag = next, .offset = sp.offset, .len = sp.len, .segs = sp.segs,
			};
			err = qcow2_ipc_client_submit(c, &r);
			if (err == -EAGAIN)
				break;
			TEST_CHECK(err == 0);
			/* Only now is the chunk free (its previous request was
			 * reaped); the payload must be in place before commit. */
			if (sp.opcode == QCOW2_IPC_OP_WRITE)
				for (unsigned k = 0; k < sp.nr_segs; k++)
					test_fill(bases[sp.segs[k].region] + sp.segs[k].off,
						  sp.segs[k].len, payload_seed(next, k, 0));
			next++;
		}
		TEST_CHECK(qcow2_ipc_client_commit(c) == 0);
		unsigned n;
		TEST_CHECK(qcow2_ipc_client_reap(c, comp, (unsigned)test_rand_range(&rs, 1, 64), &n) == 0);
		for (unsigned i = 0; i < n; i++) {
			struct spec sp;
			if (comp[i].tag != expect) {
				fprintf(stderr, "producer: completion %" PRIu64 ", expected %" PRIu64 "\n",
					comp[i].tag, expect);
				return 1;
			}
			spec_of(expect, seed, &sp);
			TEST_CHECK(comp[i].res == sp.res);
			if (sp.opcode == QCOW2_IPC_OP_READ)
				for (unsigned k = 0; k < sp.nr_segs; k++)
					TEST_CHECK(seg_matches(bases[sp.segs[k].region] + sp.segs[k].off,
							       sp.segs[k].len, payload_seed(expect, k, 1)));
			expect++;
		}
		/* Idle: nothing reaped and nothing more could be queued. */
		if (n == 0 && (queued == 0 || next > count) && mode != MODE_POLL)
			TEST_CHECK(qcow2_ipc_client_wait(c, (unsigned)test_rand_range(&rs, 0, 64), -1) == 0);
	}
	struct qcow2_ipc_client_stats st = { .size = sizeof(st) };
	qcow2_ipc_client_get_stats(c, &st);
	TEST_CHECK(st.stale == 0 && st.completed == count);
	printf("producer: %" PRIu64 " requests, %" PRIu64 " kicks\n", st.completed, st.kicks);
	return 0;
}

int main(int argc, char **argv)
{
	uint64_t count = 200000, seed = 1;
	enum mode mode = MODE_DOORBELL;
	int opt;

	while ((opt = getopt(argc, argv, "n:m:s:")) != -1) {
		switch (opt) {
		case 'n': count = strtoull(optarg, NULL, 0); break;
		case 's': seed = strtoull(optarg, NULL, 0); break;
		case 'm':
			if (!strcmp(optarg, "doorbell")) mode = MODE_DOORBELL;
			else if (!strcmp(optarg, "always")) mode = MODE_ALWAYS;
			else if (!strcmp(optarg, "poll")) mode = MODE_POLL;
			else goto usage;
			break;
		default:
			goto usage;
		}
	}
	printf("ipc_stress: %" PRIu64 " requests, mode %s, seed %" PRIu64 "\n", count,
	       mode == MODE_DOORBELL ? "doorbell" : mode == MODE_ALWAYS ? "always" : "poll", seed);

	int rfd = test_memfd(geom.cq_entries * CHUNK, F_SEAL_SHRINK | F_SEAL_GROW);
	TEST_CHECK(rfd >= 0);
	uint8_t *region = mmap(NULL, geom.cq_entries * CHUNK, PROT_READ | PROT_WRITE, MAP_SHARED, rfd, 0);
	TEST_CHECK(region != MAP_FAILED);
	struct qcow2_ipc_client_opts co = {
		.size = sizeof(co), .geometry = geom, .nr_regions = 1, .region_fds = &rfd,
		.flags = mode == MODE_ALWAYS ? QCOW2_IPC_CLIENT_ALWAYS_KICK : 0,
	};
	struct qcow2_ipc_client *c;
	TEST_CHECK(qcow2_ipc_client_new(&co, &c) == 0);
	int sv[2];
	TEST_CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0);

	fflush(stdout);
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	pid_t pid = fork();
	TEST_CHECK(pid >= 0);
	if (pid == 0) {
		close(sv[0]);
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		/* The client object is the parent's; the child only serves. */
		int r = consumer(sv[1], count, mode, seed);
		fflush(stdout);
		_exit(r);
	}
	close(sv[1]);
	int ret = producer(c, sv[0], region, count, mode, seed);
	int status;
	if (ret != 0)
		kill(pid, SIGKILL);
	TEST_CHECK(waitpid(pid, &status, 0) == pid);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		fprintf(stderr, "consumer failed (status %#x)\n", status);
		ret = 1;
	}
	double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	printf("%s in %.2f s (%.0f requests/s, informational)\n", ret ? "FAIL" : "PASS", secs,
	       (double)count / secs);
	qcow2_ipc_client_free(c);
	munmap(region, geom.cq_entries * CHUNK);
	close(rfd);
	close(sv[0]);
	return ret;
usage:
	fprintf(stderr, "usage: ipc_stress [-n COUNT] [-m doorbell|always|poll] [-s SEED]\n");
	return 2;
}
