/* ipc_hostile: a client that attacks the service through the shared region.
 *
 * Phase 1 (step by step, reproducible from the seed): each round attaches a
 * service to a fresh queue, then alternates one hostile action (random bytes
 * in any shared field or table, indices wrapped or moved backwards, entries
 * with buffers outside their region, the client closing its fds and unmapping)
 * with one service step (take, touch every byte of every buffer handed out,
 * complete, publish, sleep protocol). Some rounds end with a re-attach to the
 * scribbled region. Phase 2: a child process scribbles over the region
 * continuously while the service runs.
 *
 * The service must never crash or touch memory outside its mappings (every
 * buffer is checked against the mapped regions and read and written in full;
 * mappings sit between guard pages; ASan watches the rest), must answer only
 * 0 / -EPROTO (and -EAGAIN / -ETIMEDOUT from the sleep calls), and once it
 * reports -EPROTO it must stay broken.
 *
 *   ipc_hostile [-r ROUNDS] [-s SEED]          exit 0 pass, 1 fail */
#include "ipc_test_internal.h"
#include "ring.h"

#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#define REGION_SIZE (256u * 1024)

static const struct qcow2_ipc_geometry geom = {
	.sq_entries = 16, .cq_entries = 32, .max_segs = 8, .data_size = 64 * 1024,
};
static const struct qcow2_ipc_server_opts sopts = {
	.size = sizeof(sopts), .disk_size = 1 << 30, .block_size = 512, .buf_align = 512,
};

struct stats {
	uint64_t rounds, broken, handed_out, invalid, reattach_ok, reattach_refused, steps;
};

struct target {
	struct qcow2_ipc_client *c;     /* NULL once the client "closed" */
	int rfd;
	void *raw;                      /* the client's own view, kept after close */
	uint64_t raw_size, raw_align;
	struct ring_view v;
	struct qcow2_ipc_layout l;
};

static void target_open(struct target *t)
{
	t->rfd = test_memfd(REGION_SIZE, F_SEAL_SHRINK);
	TEST_CHECK(t->rfd >= 0);
	struct qcow2_ipc_client_opts co = {
		.size = sizeof(co), .geometry = geom, .nr_regions = 1, .region_fds = &t->rfd,
	};
	TEST_CHECK(qcow2_ipc_client_new(&co, &t->c) == 0);
	TEST_CHECK(qcow2_ipc_compute_layout(&geom, &t->l) == 0);
	/* A second mapping that outlives the client object. */
	TEST_CHECK(ring_map(qcow2_ipc_client_queue_fd(t->c), t->l.size, &t->raw, &t->raw_align) == 0);
	t->raw_size = t->l.size;
	ring_view_init(&t->v, t->raw, &geom, &t->l);
}

static void target_close(struct target *t)
{
	qcow2_ipc_client_free(t->c);
	t->c = NULL;
	ring_unmap(t->raw, t->raw_size, t->raw_align);
	close(t->rfd);
}

static struct qcow2_ipc_server *attach(struct target *t, int *err)
{
	struct qcow2_ipc_attach att;
	struct qcow2_ipc_server *s = NULL;

	/* After the client closed its fds, re-open from the mapping's memfd
	 * is impossible; reuse the descriptors only while they exist. */
	if (!t->c) {
		*err = -EBADF;
		return NULL;
	}
	TEST_CHECK(test_attach_from_client(t->c, &geom, &t->rfd, 1, &att) == 0);
	*err = qcow2_ipc_server_open(&att, &sopts, &s);
	qcow2_ipc_attach_close(&att);
	return *err == 0 ? s : NULL;
}

static void random_bytes(uint64_t *rs, void *p, size_t len)
{
	test_fill(p, len, test_rand(rs));
}

static void random_field(uint64_t *rs, _Atomic uint32_t *f)
{
	atomic_store(f, (uint32_t)test_rand(rs));
}

/* A well-formed entry, or one spoiled in one field. */
static void plausible_sqe(uint64_t *rs, struct qcow2_ipc_sqe *e)
{
	memset(e, 0, sizeof(*e));
	e->opcode = (uint8_t)test_rand_range(rs, 1, 5);
	e->tag = test_rand(rs);
	e->slot = (uint32_t)(test_rand(rs) % 40);
	e->offset = 512 * test_rand_range(rs, 0, 4096);
	e->len = 512 * test_rand_range(rs, 1, 16);
	if (e->opcode == QCOW2_IPC_OP_READ || e->opcode == QCOW2_IPC_OP_WRITE) {
		e->nr_segs = 1;
		e->seg.region = (uint32_t)test_rand_range(rs, 0, 2);
		e->seg.len = (uint32_t)e->len;
		uint64_t lim = e->seg.region == 1 ? REGION_SIZE : geom.data_size;
		/* Near, at and past the end of the region. */
		e->seg.off = 512 * test_rand_range(rs, 0, (lim + 8192) / 512);
	} else if (e->opcode == QCOW2_IPC_OP_FLUSH) {
		e->offset = e->len = 0;
	}
	switch (test_rand(rs) % 6) {
	case 0: e->seg.off = test_rand(rs); break;
	case 1: e->nr_segs = (uint16_t)test_rand(rs); break;
	case 2: e->len = test_rand(rs); break;
	case 3: e->offset = test_rand(rs); break;
	default: break;
	}
}

static void hostile_action(uint64_t *rs, struct target *t, bool gentle)
{
	struct ring_view *v = &t->v;
	struct qcow2_ipc_ctrl *ctrl = v->ctrl;
	uint32_t head = atomic_load(&ctrl->sq_cons.sq_head);

	/* Weighted: attacks that break the queue at once are rarer, so that
	 * the others get to run against a live service too. */
	static const uint8_t pick[] = {
		0, 1, 3, 4, 11,                                 /* break the queue */
		2, 2, 2, 12, 12, 12,
		5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6,
		7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8,
		9, 9, 9, 9, 9, 9, 9, 9, 10, 10, 10,
		13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13,
		13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13,
	};
	/* Gentle rounds never break the queue on purpose. */
	unsigned first = gentle ? 5 : 0, nr = sizeof(pick);
	switch (pick[first + test_rand(rs) % (nr - first)]) {
	case 0: random_field(rs, &ctrl->sq_prod.sq_tail); break;
	case 1: random_field(rs, &ctrl->cq_cons.cq_head); break;
	case 2: random_field(rs, &ctrl->cq_cons.cq_need_wakeup); break;
	case 3: /* the service's own fields: it must not believe them */
		random_field(rs, &ctrl->sq_cons.sq_head);
		random_field(rs, &ctrl->cq_prod.cq_tail);
		random_field(rs, &ctrl->sq_cons.sq_need_wakeup);
		break;
	case 4: /* wrap: past the ring, or behind the head */
		atomic_store(&ctrl->sq_prod.sq_tail,
			     test_rand(rs) & 1 ? head + geom.sq_entries + 1 + (uint32_t)(test_rand(rs) % 100)
					       : head - 1 - (uint32_t)(test_rand(rs) % 100));
		break;
	case 5: /* garbage entries, published */
	case 6: {
		unsigned n = (unsigned)test_rand_range(rs, 1, geom.sq_entries);
		for (unsigned i = 0; i < n; i++)
			random_bytes(rs, &v->sq[(head + i) & v->sq_mask], sizeof(struct qcow2_ipc_sqe));
		atomic_store(&ctrl->sq_prod.sq_tail, head + n);
		break;
	}
	case 7: /* plausible entries, some pointing outside their region */
	case 8: {
		unsigned n = (unsigned)test_rand_range(rs, 1, geom.sq_entries);
		for (unsigned i = 0; i < n; i++)
			plausible_sqe(rs, &v->sq[(head + i) & v->sq_mask]);
		atomic_store(&ctrl->sq_prod.sq_tail, head + n);
		break;
	}
	case 9: /* vectored entries over a scribbled segment table */
		for (unsigned i = 0; i < 4; i++) {
			struct qcow2_ipc_sqe *e = &v->sq[(head + i) & v->sq_mask];
			plausible_sqe(rs, e);
			e->opcode = QCOW2_IPC_OP_READ;
			e->nr_segs = (uint16_t)test_rand_range(rs, 2, geom.max_segs);
			memset(&e->seg, 0, sizeof(e->seg));
			random_bytes(rs, &v->segs[(size_t)(e->slot % geom.cq_entries) * geom.max_segs],
				     geom.max_segs * sizeof(struct qcow2_ipc_seg));
		}
		atomic_store(&ctrl->sq_prod.sq_tail, head + 4);
		break;
	case 10: /* the tables the service writes */
		random_bytes(rs, v->inflight, geom.cq_entries * sizeof(*v->inflight) / 4);
		random_bytes(rs, v->cq, geom.cq_entries * sizeof(*v->cq));
		break;
	case 11: /* cq_head backwards, or beyond what was published */
		atomic_store(&ctrl->cq_cons.cq_head, atomic_load(&ctrl->cq_cons.cq_head) +
						     (test_rand(rs) & 1 ? 40u : (uint32_t)-40));
		break;
	case 12: /* the client closes its fds and unmaps, mid-flight */
		if (t->c && test_rand(rs) % 4 == 0) {
			qcow2_ipc_client_free(t->c);
			t->c = NULL;
		}
		break;
	default: /* honest traffic through the library */
		if (gentle) {
			/* Mixing raw entries with the library's breaks the
			 * ring; here just consume completions as a client would. */
			atomic_store(&ctrl->cq_cons.cq_head, atomic_load(&ctrl->cq_prod.cq_tail));
		} else if (t->c) {
			struct qcow2_ipc_seg seg = { .off = 4096, .len = 4096, .region = 1 };
			struct qcow2_ipc_req r = { .opcode = QCOW2_IPC_OP_WRITE, .nr_segs = 1,
						   .tag = test_rand(rs), .offset = 0, .segs = &seg };
			if (qcow2_ipc_client_submit(t->c, &r) == 0)
				qcow2_ipc_client_commit(t->c);
			struct qcow2_ipc_completion comp[8];
			unsigned n;
			qcow2_ipc_client_reap(t->c, comp, 8, &n);
		}
		break;
	}
}

/* One service step; returns false once the queue is broken. */
static bool service_step(uint64_t *rs, struct qcow2_ipc_server *s, struct stats *st,
			 uint32_t *held, unsigned *nr_held)
{
	struct qcow2_ipc_server_req req[16];
	unsigned n;
	bool was_broken = qcow2_ipc_server_broken(s) < 0;

	int r = qcow2_ipc_server_take(s, req, (unsigned)test_rand_range(rs, 1, 16), &n);
	TEST_CHECK(r == 0 || r == -EPROTO);
	TEST_CHECK(!was_broken || r == -EPROTO);
	for (unsigned i = 0; r == 0 && i < n; i++) {
		TEST_CHECK(test_req_in_regions(s, &req[i]));
		for (unsigned k = 0; k < req[i].nr_iov; k++) {
			volatile uint8_t *p = req[i].iov[k].iov_base;
			uint8_t x = 0;
			for (size_t b = 0; b < req[i].iov[k].iov_len; b += 64)
				x ^= p[b];
			p[0] = x;
			p[req[i].iov[k].iov_len - 1] = x;
		}
		st->handed_out++;
		if (test_rand(rs) % 4 == 0 && *nr_held < 32) {
			held[(*nr_held)++] = req[i].id;        /* complete later */
			continue;
		}
		int e = qcow2_ipc_server_complete(s, req[i].id, test_rand(rs) & 1 ? 0 : -EIO);
		TEST_CHECK(e == 0 || e == -EPROTO);
	}
	if (*nr_held && test_rand(rs) % 3 == 0) {
		int e = qcow2_ipc_server_complete(s, held[--(*nr_held)], 0);
		TEST_CHECK(e == 0 || e == -EPROTO);
	}
	r = qcow2_ipc_server_publish(s);
	TEST_CHECK(r == 0 || r == -EPROTO);
	switch (test_rand(rs) % 4) {
	case 0:
		r = qcow2_ipc_server_prepare_sleep(s);
		TEST_CHECK(r == 0 || r == -EAGAIN || r == -EPROTO);
		if (r == 0)
			TEST_CHECK(qcow2_ipc_server_woken(s) == 0);
		break;
	case 1:
		r = qcow2_ipc_server_wait(s, 4, 0);
		TEST_CHECK(r == 0 || r == -ETIMEDOUT || r == -EPROTO);
		break;
	default:
		break;
	}
	if (qcow2_ipc_server_broken(s) < 0) {
		/* Broken stays broken, and says so in every call. */
		TEST_CHECK(qcow2_ipc_server_take(s, req, 4, &n) == -EPROTO);
		TEST_CHECK(qcow2_ipc_server_publish(s) == -EPROTO);
		TEST_CHECK(qcow2_ipc_server_complete(s, 0, 0) == -EPROTO);
		return false;
	}
	return true;
}

static void phase_steps(uint64_t seed, unsigned rounds, struct stats *st)
{
	for (unsigned round = 0; round < rounds; round++) {
		uint64_t rs = seed * 1000003 + round;
		struct target t;
		target_open(&t);
		int err;
		struct qcow2_ipc_server *s = attach(&t, &err);
		TEST_CHECK(s);
		uint32_t held[32];
		unsigned nr_held = 0;
		unsigned steps = (unsigned)test_rand_range(&rs, 10, 200);
		bool alive = true, gentle = round % 2;
		for (unsigned i = 0; i < steps && alive; i++) {
			hostile_action(&rs, &t, gentle);
			alive = service_step(&rs, s, st, held, &nr_held);
			st->steps++;
		}
		struct qcow2_ipc_server_stats ss = { .size = sizeof(ss) };
		qcow2_ipc_server_get_stats(s, &ss);
		st->invalid += ss.invalid;
		st->broken += !alive;
		/* The service dies with whatever it held; a new one attaches
		 * to the scribbled region: it refuses or it serves. */
		qcow2_ipc_server_close(s);
		if (test_rand(&rs) % 2 == 0) {
			hostile_action(&rs, &t, gentle);
			s = attach(&t, &err);
			if (s) {
				st->reattach_ok++;
				nr_held = 0;
				for (unsigned i = 0; i < 20 && service_step(&rs, s, st, held, &nr_held); i++)
					hostile_action(&rs, &t, gentle);
				qcow2_ipc_server_close(s);
			} else {
				TEST_CHECK(err == -EPROTO || err == -EINVAL || err == -EBADF);
				st->reattach_refused++;
			}
		}
		target_close(&t);
		st->rounds++;
	}
}

/* A child scribbles over the live region while the service runs. */
static void phase_concurrent(uint64_t seed, unsigned iterations, struct stats *st)
{
	for (unsigned round = 0; round < 8; round++) {
		struct target t;
		target_open(&t);
		int err;
		struct qcow2_ipc_server *s = attach(&t, &err);
		TEST_CHECK(s);
		fflush(stdout);
		pid_t pid = fork();
		TEST_CHECK(pid >= 0);
		if (pid == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			uint64_t rs = seed ^ (0xabcdull + round);
			bool gentle = round % 2;
			for (;;)
				hostile_action(&rs, &t, gentle);
		}
		uint64_t rs = seed + round;
		uint32_t held[32];
		unsigned nr_held = 0;
		unsigned i = 0;
		while (i++ < iterations && service_step(&rs, s, st, held, &nr_held))
			st->steps++;
		kill(pid, SIGKILL);
		int status;
		TEST_CHECK(waitpid(pid, &status, 0) == pid);
		TEST_CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
		st->broken += qcow2_ipc_server_broken(s) < 0;
		qcow2_ipc_server_close(s);
		target_close(&t);
		st->rounds++;
	}
}

int main(int argc, char **argv)
{
	unsigned rounds = 400;
	uint64_t seed = 1;
	int opt;

	while ((opt = getopt(argc, argv, "r:s:")) != -1) {
		switch (opt) {
		case 'r': rounds = (unsigned)strtoul(optarg, NULL, 0); break;
		case 's': seed = strtoull(optarg, NULL, 0); break;
		default:
			fprintf(stderr, "usage: ipc_hostile [-r ROUNDS] [-s SEED]\n");
			return 2;
		}
	}
	struct stats st = { 0 };
	phase_steps(seed, rounds, &st);
	phase_concurrent(seed, rounds * 50, &st);
	printf("ipc_hostile seed %" PRIu64 ": %" PRIu64 " rounds, %" PRIu64 " steps, %" PRIu64
	       " broken, %" PRIu64 " entries refused (-EINVAL), %" PRIu64 " handed out, "
	       "re-attach %" PRIu64 " served / %" PRIu64 " refused\n",
	       seed, st.rounds, st.steps, st.broken, st.invalid, st.handed_out, st.reattach_ok,
	       st.reattach_refused);
	/* The attacks must have landed: protocol errors, refused entries,
	 * and entries that passed validation (and were checked in range). */
	TEST_CHECK(st.broken > 0 && st.invalid > 0 && st.handed_out > 0);
	TEST_CHECK(st.reattach_refused > 0);
	return 0;
}
