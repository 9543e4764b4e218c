/* ipc_restart: the consumer (service) is killed with SIGKILL mid-batch, again
 * and again; each time a new consumer process attaches to the surviving queue
 * through the handshake and takes over from the in-flight table. The producer
 * checks that every request is completed exactly once with the expected
 * result and data, and that no stale completion ever reaches it.
 *
 * Kill points: consumers kill themselves at a seeded point (after a take,
 * between completions, after a publish), and the producer kills the running
 * consumer at seeded moments too.
 *
 *   ipc_restart [-n COUNT] [-k KILLS] [-s SEED]        exit 0 pass, 1 fail */
#include "ipc_test_internal.h"
#include "ring.h"

#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>

#define CHUNK 8192u
#define STOP_TAG UINT64_MAX

static const struct qcow2_ipc_geometry geom = {
	.sq_entries = 32, .cq_entries = 64, .max_segs = 2, .data_size = 64 * CHUNK,
};

struct shared_counters {
	_Atomic uint64_t recovered;     /* summed over all consumers */
	_Atomic uint64_t self_kills;    /* between library calls */
	_Atomic uint64_t lib_kills;     /* inside them (crash points) */
};

struct spec {
	uint8_t opcode;
	uint16_t nr_segs;
	uint32_t seg_len[2];
	uint64_t offset, len;
	int32_t res;
};

static void spec_of(uint64_t tag, struct spec *sp)
{
	memset(sp, 0, sizeof(*sp));
	sp->res = tag % 13 == 0 ? -ENOSPC : 0;
	switch (tag % 5) {
	case 0: sp->opcode = QCOW2_IPC_OP_FLUSH; return;
	case 1: case 2: sp->opcode = QCOW2_IPC_OP_WRITE; break;
	default: sp->opcode = QCOW2_IPC_OP_READ; break;
	}
	unsigned blocks = 1 + (unsigned)((tag * 2654435761u) % (CHUNK / 512));
	sp->offset = (tag % 100000) * 4096;
	sp->len = 512ull * blocks;
	if (blocks > 1 && tag % 3 == 0) {
		sp->nr_segs = 2;
		sp->seg_len[0] = 512u * (blocks / 2);
		sp->seg_len[1] = (uint32_t)sp->len - sp->seg_len[0];
	} else {
		sp->nr_segs = 1;
		sp->seg_len[0] = (uint32_t)sp->len;
	}
}

static uint64_t pseed(uint64_t tag, unsigned seg, int is_read)
{
	return tag * 0x100000001b3ull + seg + (is_read ? 77 : 0);
}

static bool matches(const void *p, size_t len, uint64_t seed)
{
	uint8_t tmp[CHUNK];
	test_fill(tmp, len, seed);
	return memcmp(p, tmp, len) == 0;
}

/* ---- consumer ---------------------------------------------------------------------- */

static uint64_t lib_kill_at, lib_points;
static struct shared_counters *lib_sc;

/* Dies inside the library, at the seeded crash point. */
static void crash_point(const char *where)
{
	(void)where;
	if (lib_kill_at && ++lib_points == lib_kill_at) {
		atomic_fetch_add(&lib_sc->lib_kills, 1);
		raise(SIGKILL);
	}
}

static int consumer(int sock, uint64_t kill_at, uint64_t seed, struct shared_counters *sc)
{
	struct qcow2_ipc_server_opts o = {
		.size = sizeof(o), .disk_size = 1ull << 40, .block_size = 512,
	};
	struct qcow2_ipc_server *s;
	uint64_t ops = 0, rs = seed;

#define MAYBE_DIE()                                                     \
	do {                                                            \
		if (kill_at && ++ops == kill_at) {                      \
			atomic_fetch_add(&sc->self_kills, 1);           \
			raise(SIGKILL);                                 \
		}                                                       \
	} while (0)

	/* Half the consumers that die do so inside the library. */
	if (kill_at && test_rand(&rs) % 2) {
		lib_kill_at = kill_at;
		lib_sc = sc;
		ring_crash_point = crash_point;
		kill_at = 0;
	}
	int err = qcow2_ipc_server_accept(sock, &o, &s);
	if (err < 0) {
		fprintf(stderr, "consumer: accept: %s\n", strerror(-err));
		return 1;
	}
	struct qcow2_ipc_server_stats st = { .size = sizeof(st) };
	qcow2_ipc_server_get_stats(s, &st);
	atomic_fetch_add(&sc->recovered, st.recovered);
	for (;;) {
		struct qcow2_ipc_server_req req[32];
		unsigned n;
		TEST_CHECK(qcow2_ipc_server_take(s, req, (unsigned)test_rand_range(&rs, 1, 32), &n) == 0);
		if (n == 0) {
			TEST_CHECK(qcow2_ipc_server_wait(s, 32, -1) == 0);
			continue;
		}
		MAYBE_DIE();
		bool stop = false;
		for (unsigned i = 0; i < n; i++) {
			struct spec sp;
			if (req[i].tag == STOP_TAG) {
				stop = true;
				TEST_CHECK(qcow2_ipc_server_complete(s, req[i].id, 0) == 0);
				continue;
			}
			spec_of(req[i].tag, &sp);
			TEST_CHECK(req[i].opcode == sp.opcode && req[i].len == sp.len &&
				   req[i].offset == sp.offset && req[i].nr_iov == sp.nr_segs);
			for (unsigned k = 0; k < req[i].nr_iov; k++) {
				TEST_CHECK(req[i].iov[k].iov_len == sp.seg_len[k]);
				if (sp.opcode == QCOW2_IPC_OP_WRITE)
					TEST_CHECK(matches(req[i].iov[k].iov_base, sp.seg_len[k],
							   pseed(req[i].tag, k, 0)));
				else
					test_fill(req[i].iov[k].iov_base, sp.seg_len[k],
						  pseed(req[i].tag, k, 1));
			}
			TEST_CHECK(qcow2_ipc_server_complete(s, req[i].id, sp.res) == 0);
			MAYBE_DIE();
			if (test_rand(&rs) % 4 == 0) {
				TEST_CHECK(qcow2_ipc_server_publish(s) == 0);
				MAYBE_DIE();
			}
		}
		TEST_CHECK(qcow2_ipc_server_publish(s) == 0);
		MAYBE_DIE();
		if (stop)
			break;
	}
	qcow2_ipc_server_close(s);
	return 0;
}

/* ---- producer ---------------------------------------------------------------------- */

struct producer {
	struct qcow2_ipc_client *c;
	uint8_t *data;
	uint64_t seed, rs;
	unsigned kills_left;            /* consumers that will kill themselves */
	struct shared_counters *sc;
	pid_t pid;
	int sock;
	unsigned spawned, external_kills;
};

static void spawn(struct producer *p)
{
	int sv[2];
	TEST_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	uint64_t kill_at = 0;
	if (p->kills_left) {
		p->kills_left--;
		kill_at = test_rand_range(&p->rs, 1, 400);
	}
	uint64_t cseed = test_rand(&p->rs);
	fflush(stdout);
	p->pid = fork();
	TEST_CHECK(p->pid >= 0);
	if (p->pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		close(sv[0]);
		int r = consumer(sv[1], kill_at, cseed, p->sc);
		fflush(stdout);
		_exit(r);
	}
	close(sv[1]);
	p->sock = sv[0];
	p->spawned++;
	TEST_CHECK(qcow2_ipc_client_handshake(p->c, p->sock) == 0);
}

/* With the consumer dead, the region is still: every request the client has
 * outstanding must be in exactly one place (PROTOCOL.md, "Restart"): still
 * in the SQ, owed by the in-flight table, or completed in the CQ. */
static void check_crash_state(struct producer *p)
{
	struct qcow2_ipc_layout l;
	struct ring_view v;
	TEST_CHECK(qcow2_ipc_compute_layout(&geom, &l) == 0);
	ring_view_init(&v, qcow2_ipc_client_ctrl(p->c), &geom, &l);
	struct qcow2_ipc_ctrl *ctrl = v.ctrl;
	uint32_t sq_head = atomic_load(&ctrl->sq_cons.sq_head);
	uint32_t cq_tail = atomic_load(&ctrl->cq_prod.cq_tail);
	unsigned places = (atomic_load(&ctrl->sq_prod.sq_tail) - sq_head) +
			  (cq_tail - atomic_load(&ctrl->cq_cons.cq_head));
	for (unsigned i = 0; i < geom.cq_entries; i++) {
		uint64_t st = atomic_load(&v.inflight[i].state);
		uint32_t pos = (uint32_t)st;
		if (st >> 32 == QCOW2_IPC_INFLIGHT_TAKEN)
			places += (int32_t)(sq_head - pos) > 0;
		else if (st >> 32 == QCOW2_IPC_INFLIGHT_COMPLETING)
			places += (int32_t)(cq_tail - pos) <= 0;
	}
	if (places != qcow2_ipc_client_in_flight(p->c)) {
		fprintf(stderr, "after consumer %u died: %u requests outstanding, %u accounted for\n",
			p->spawned, qcow2_ipc_client_in_flight(p->c), places);
		exit(1);
	}
}

/* The consumer died: it must have been killed, not failed; start the next. */
static void reap_and_respawn(struct producer *p, int status)
{
	if (!(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)) {
		fprintf(stderr, "consumer %u ended with status %#x\n", p->spawned, status);
		exit(1);
	}
	check_crash_state(p);
	close(p->sock);
	spawn(p);
}

int main(int argc, char **argv)
{
	uint64_t count = 200000, seed = 1;
	unsigned kills = 40;
	int opt;

	while ((opt = getopt(argc, argv, "n:k:s:")) != -1) {
		switch (opt) {
		case 'n': count = strtoull(optarg, NULL, 0); break;
		case 'k': kills = (unsigned)strtoul(optarg, NULL, 0); break;
		case 's': seed = strtoull(optarg, NULL, 0); break;
		default:
			fprintf(stderr, "usage: ipc_restart [-n COUNT] [-k KILLS] [-s SEED]\n");
			return 2;
		}
	}
	struct shared_counters *sc = mmap(NULL, sizeof(*sc), PROT_READ | PROT_WRITE,
					  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	TEST_CHECK(sc != MAP_FAILED);
	struct producer p = { .seed = seed, .rs = seed, .kills_left = kills, .sc = sc };
	struct qcow2_ipc_client_opts co = { .size = sizeof(co), .geometry = geom };
	TEST_CHECK(qcow2_ipc_client_new(&co, &p.c) == 0);
	p.data = qcow2_ipc_client_data(p.c, NULL);

	uint8_t *done = calloc(count + 1, 1);
	uint64_t *chunk_of = calloc(count + 1, sizeof(*chunk_of));
	uint32_t free_chunks[64], nr_free = 0;
	for (uint32_t i = 0; i < 64; i++)
		free_chunks[nr_free++] = i;
	TEST_CHECK(done && chunk_of);

	spawn(&p);
	uint64_t next = 1, completed = 0;
	bool stop_sent = false, stopped = false;
	while (!stopped) {
		/* Submit. */
		unsigned batch = (unsigned)test_rand_range(&p.rs, 1, 24);
		for (unsigned i = 0; i < batch && next <= count && nr_free; i++) {
			struct spec sp;
			spec_of(next, &sp);
			uint32_t chunk = free_chunks[nr_free - 1];
			struct qcow2_ipc_seg segs[2];
			uint64_t off = (uint64_t)chunk * CHUNK;
			for (unsigned k = 0; k < sp.nr_segs; k++) {
				segs[k] = (struct qcow2_ipc_seg){ .off = off, .len = sp.seg_len[k] };
				off += sp.seg_len[k];
			}
			struct qcow2_ipc_req r = {
				.opcode = sp.opcode, .nr_segs = sp.opcode == QCOW2_IPC_OP_FLUSH ? 0 : sp.nr_segs,
				.tag = next, .offset = sp.opcode == QCOW2_IPC_OP_FLUSH ? 0 : sp.offset,
				.segs = segs,
			};
			int e = qcow2_ipc_client_submit(p.c, &r);
			if (e == -EAGAIN)
				break;
			TEST_CHECK(e == 0);
			nr_free--;
			chunk_of[next] = chunk;
			if (sp.opcode == QCOW2_IPC_OP_WRITE)
				for (unsigned k = 0; k < sp.nr_segs; k++)
					test_fill(p.data + segs[k].off, segs[k].len, pseed(next, k, 0));
			next++;
		}
		if (completed == count && !stop_sent) {
			struct qcow2_ipc_req r = { .opcode = QCOW2_IPC_OP_FLUSH, .tag = STOP_TAG };
			if (qcow2_ipc_client_submit(p.c, &r) == 0)
				stop_sent = true;
		}
		TEST_CHECK(qcow2_ipc_client_commit(p.c) == 0);

		/* Reap and judge. */
		struct qcow2_ipc_completion comp[64];
		unsigned n;
		TEST_CHECK(qcow2_ipc_client_reap(p.c, comp, 64, &n) == 0);
		for (unsigned i = 0; i < n; i++) {
			uint64_t tag = comp[i].tag;
			if (tag == STOP_TAG) {
				stopped = true;
				continue;
			}
			TEST_CHECK(tag >= 1 && tag < next);
			if (done[tag]) {
				fprintf(stderr, "tag %" PRIu64 " completed twice\n", tag);
				return 1;
			}
			done[tag] = 1;
			completed++;
			struct spec sp;
			spec_of(tag, &sp);
			TEST_CHECK(comp[i].res == sp.res);
			uint64_t off = chunk_of[tag] * CHUNK;
			if (sp.opcode == QCOW2_IPC_OP_READ)
				for (unsigned k = 0; k < sp.nr_segs; k++) {
					TEST_CHECK(matches(p.data + off, sp.seg_len[k], pseed(tag, k, 1)));
					off += sp.seg_len[k];
				}
			free_chunks[nr_free++] = (uint32_t)chunk_of[tag];
		}

		/* The producer's own kills, at seeded moments. */
		if (p.external_kills < kills / 2 && test_rand(&p.rs) % 3000 == 0) {
			kill(p.pid, SIGKILL);
			p.external_kills++;
			int status;
			TEST_CHECK(waitpid(p.pid, &status, 0) == p.pid);
			reap_and_respawn(&p, status);
			continue;
		}
		int status;
		pid_t w = waitpid(p.pid, &status, WNOHANG);
		if (w == p.pid) {
			if (stopped && WIFEXITED(status) && WEXITSTATUS(status) == 0)
				break;
			reap_and_respawn(&p, status);
			continue;
		}
		/* Idle: sleep on the doorbell; the timeout only lets us notice
		 * a consumer that died (it never limits the test). */
		if (n == 0 && !stopped) {
			int e = qcow2_ipc_client_wait(p.c, 64, 10);
			TEST_CHECK(e == 0 || e == -ETIMEDOUT);
		}
	}
	if (stopped) {
		int status;
		TEST_CHECK(waitpid(p.pid, &status, 0) == p.pid || errno == ECHILD);
	}
	for (uint64_t t = 1; t <= count; t++)
		if (!done[t]) {
			fprintf(stderr, "tag %" PRIu64 " never completed\n", t);
			return 1;
		}
	struct qcow2_ipc_client_stats cs = { .size = sizeof(cs) };
	qcow2_ipc_client_get_stats(p.c, &cs);
	printf("ipc_restart seed %" PRIu64 ": %" PRIu64 " requests, %u consumers (%" PRIu64
	       " killed themselves between calls, %" PRIu64 " inside the library, %u killed by the producer), %" PRIu64
	       " requests recovered from the in-flight table, %" PRIu64 " stale completions\n",
	       seed, count, p.spawned, atomic_load(&sc->self_kills), atomic_load(&sc->lib_kills),
	       p.external_kills,
	       atomic_load(&sc->recovered), cs.stale);
	TEST_CHECK(cs.stale == 0);
	TEST_CHECK(atomic_load(&sc->recovered) > 0);
	TEST_CHECK(atomic_load(&sc->self_kills) > 0 && atomic_load(&sc->lib_kills) > 0);
	free(done);
	free(chunk_of);
	close(p.sock);
	qcow2_ipc_client_free(p.c);
	return 0;
}
