/* ipc-bench: requests per second through one queue against a null consumer
 * thread (takes, completes, publishes; touches no data), for batch sizes 1, 8
 * and 32; and the QD1 round-trip latency (submit one request, wait for its
 * completion) with doorbells and with busy polling on both sides.
 *
 *   ipc-bench [-n COUNT] [-l LAT_COUNT] [-q CQ_ENTRIES] [--pin] [--spin N]
 *
 * -q sets the CQ size (a power of two, 2..4096; the SQ is half of it), which
 * bounds the requests in flight.
 * --pin puts the producer on CPU 0 and the consumer on CPU 1. --spin is how
 * many polls a side makes before it sleeps on its doorbell in the doorbell
 * modes (0 = sleep at once). */
#include "qcow2_ipc.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#define STOP_TAG UINT64_MAX

static struct qcow2_ipc_geometry geom = {
	.sq_entries = 128, .cq_entries = 256, .max_segs = 1, .data_size = 1 << 20,
};

static bool pin;

static void pin_to(int cpu)
{
	if (!pin)
		return;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	sched_setaffinity(0, sizeof(set), &set);
}

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void die(const char *what, int err)
{
	fprintf(stderr, "ipc-bench: %s: %s\n", what, strerror(-err));
	exit(1);
}

struct consumer_arg {
	int sock;
	unsigned spin;          /* UINT32_MAX: never sleep */
};

static void *null_consumer(void *p)
{
	struct consumer_arg *a = p;
	struct qcow2_ipc_server_opts o = {
		.size = sizeof(o), .disk_size = 1ull << 40, .block_size = 512,
	};
	struct qcow2_ipc_server *s;
	struct qcow2_ipc_server_req req[64];
	bool stop = false;

	pin_to(1);
	int err = qcow2_ipc_server_accept(a->sock, &o, &s);
	if (err < 0)
		die("accept", err);
	while (!stop) {
		unsigned n;
		err = qcow2_ipc_server_take(s, req, 64, &n);
		if (err < 0)
			die("take", err);
		for (unsigned i = 0; i < n; i++) {
			stop |= req[i].tag == STOP_TAG;
			qcow2_ipc_server_complete(s, req[i].id, 0);
		}
		if (n) {
			qcow2_ipc_server_publish(s);
		} else if (a->spin != UINT32_MAX) {
			err = qcow2_ipc_server_wait(s, a->spin, -1);
			if (err < 0)
				die("wait", err);
		}
	}
	qcow2_ipc_server_close(s);
	return NULL;
}

struct queue {
	struct qcow2_ipc_client *c;
	pthread_t thread;
	struct consumer_arg arg;
	int sv[2];
};

static void queue_start(struct queue *q, unsigned consumer_spin)
{
	struct qcow2_ipc_client_opts co = { .size = sizeof(co), .geometry = geom };
	int err = qcow2_ipc_client_new(&co, &q->c);
	if (err < 0)
		die("client", err);
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, q->sv) < 0)
		die("socketpair", -errno);
	q->arg = (struct consumer_arg){ .sock = q->sv[1], .spin = consumer_spin };
	pthread_create(&q->thread, NULL, null_consumer, &q->arg);
	err = qcow2_ipc_client_handshake(q->c, q->sv[0]);
	if (err < 0)
		die("handshake", err);
}

static void queue_stop(struct queue *q)
{
	struct qcow2_ipc_req r = { .opcode = QCOW2_IPC_OP_FLUSH, .tag = STOP_TAG };
	struct qcow2_ipc_completion comp[64];
	unsigned n;
	while (qcow2_ipc_client_submit(q->c, &r) == -EAGAIN) {
		qcow2_ipc_client_wait(q->c, 0, -1);
		qcow2_ipc_client_reap(q->c, comp, 64, &n);
	}
	qcow2_ipc_client_commit(q->c);
	pthread_join(q->thread, NULL);
	close(q->sv[0]);
	close(q->sv[1]);
	qcow2_ipc_client_free(q->c);
}

/* Batches of `batch` 4 KiB reads, as many in flight as the CQ allows. */
static void throughput(unsigned batch, uint64_t count, unsigned spin, double *mreqs,
		       double *kicks_per_req)
{
	struct queue q;
	struct qcow2_ipc_seg seg = { .off = 0, .len = 4096 };
	struct qcow2_ipc_req r = { .opcode = QCOW2_IPC_OP_READ, .nr_segs = 1, .segs = &seg };
	struct qcow2_ipc_completion comp[512];
	uint64_t submitted = 0, completed = 0;

	queue_start(&q, spin);
	double t0 = now();
	while (completed < count) {
		if (submitted < count &&
		    qcow2_ipc_client_in_flight(q.c) + batch <= geom.cq_entries) {
			for (unsigned i = 0; i < batch; i++) {
				r.tag = submitted;
				seg.off = (r.tag & 255) * 4096;   /* 1 MiB data area */
				if (qcow2_ipc_client_submit(q.c, &r) < 0)
					break;          /* SQ full */
				submitted++;
			}
			qcow2_ipc_client_commit(q.c);
		}
		unsigned n;
		qcow2_ipc_client_reap(q.c, comp, 512, &n);
		completed += n;
		if (n == 0 && (submitted == count ||
			       qcow2_ipc_client_in_flight(q.c) + batch > geom.cq_entries))
			qcow2_ipc_client_wait(q.c, spin, -1);
	}
	double t1 = now();
	struct qcow2_ipc_client_stats st = { .size = sizeof(st) };
	qcow2_ipc_client_get_stats(q.c, &st);
	queue_stop(&q);
	*mreqs = (double)count / (t1 - t0) / 1e6;
	*kicks_per_req = (double)st.kicks / (double)count;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* QD1: one request, wait for it, repeat. spin UINT32_MAX: both sides poll. */
static void latency(uint64_t count, unsigned spin, double *p50, double *p99)
{
	struct queue q;
	struct qcow2_ipc_req r = { .opcode = QCOW2_IPC_OP_FLUSH };
	struct qcow2_ipc_completion comp;
	double *lat = malloc(count * sizeof(*lat));

	queue_start(&q, spin);
	for (uint64_t i = 0; i < count + 1000; i++) {  /* the first 1000 warm up */
		double t0 = now();
		r.tag = i;
		qcow2_ipc_client_submit(q.c, &r);
		qcow2_ipc_client_commit(q.c);
		unsigned n = 0;
		for (;;) {
			qcow2_ipc_client_reap(q.c, &comp, 1, &n);
			if (n)
				break;
			if (spin != UINT32_MAX)
				qcow2_ipc_client_wait(q.c, spin, -1);
		}
		if (i >= 1000)
			lat[i - 1000] = (now() - t0) * 1e6;
	}
	queue_stop(&q);
	qsort(lat, count, sizeof(*lat), cmp_double);
	*p50 = lat[count / 2];
	*p99 = lat[count * 99 / 100];
	free(lat);
}

/* The floor under any doorbell: two threads bouncing a count through two
 * blocking eventfds, no ring at all. */
struct pingpong {
	int to_peer, from_peer;
	uint64_t count;
};

static void *pong(void *p)
{
	struct pingpong *pp = p;
	uint64_t v;
	pin_to(1);
	for (uint64_t i = 0; i < pp->count; i++) {
		if (read(pp->to_peer, &v, 8) != 8 || write(pp->from_peer, &v, 8) != 8)
			die("pong", -errno);
	}
	return NULL;
}

static void eventfd_floor(uint64_t count, double *p50, double *p99)
{
	struct pingpong pp = { eventfd(0, EFD_CLOEXEC), eventfd(0, EFD_CLOEXEC), count + 1000 };
	double *lat = malloc(count * sizeof(*lat));
	pthread_t t;
	uint64_t one = 1, v;

	pthread_create(&t, NULL, pong, &pp);
	for (uint64_t i = 0; i < count + 1000; i++) {
		double t0 = now();
		if (write(pp.to_peer, &one, 8) != 8 || read(pp.from_peer, &v, 8) != 8)
			die("ping", -errno);
		if (i >= 1000)
			lat[i - 1000] = (now() - t0) * 1e6;
	}
	pthread_join(t, NULL);
	close(pp.to_peer);
	close(pp.from_peer);
	qsort(lat, count, sizeof(*lat), cmp_double);
	*p50 = lat[count / 2];
	*p99 = lat[count * 99 / 100];
	free(lat);
}

int main(int argc, char **argv)
{
	uint64_t count = 5000000, lat_count = 200000;
	unsigned spin = 0;
	static const struct option longopts[] = {
		{ "pin", no_argument, NULL, 'p' },
		{ "spin", required_argument, NULL, 'S' },
		{ 0 },
	};
	int opt;

	while ((opt = getopt_long(argc, argv, "n:l:q:", longopts, NULL)) != -1) {
		switch (opt) {
		case 'q':
			geom.cq_entries = (uint32_t)strtoul(optarg, NULL, 0);
			geom.sq_entries = geom.cq_entries / 2;
			break;
		case 'n': count = strtoull(optarg, NULL, 0); break;
		case 'l': lat_count = strtoull(optarg, NULL, 0); break;
		case 'p': pin = true; break;
		case 'S': spin = (unsigned)strtoul(optarg, NULL, 0); break;
		default:
			fprintf(stderr, "usage: ipc-bench [-n COUNT] [-l LAT_COUNT] [-q CQ_ENTRIES] "
					"[--pin] [--spin N]\n");
			return 2;
		}
	}
	struct qcow2_ipc_layout l;
	if (lat_count == 0 || count == 0 || geom.sq_entries < 1 || qcow2_ipc_compute_layout(&geom, &l) < 0) {
		fprintf(stderr, "ipc-bench: bad -n, -l or -q\n");
		return 2;
	}
	struct utsname u;
	uname(&u);
	printf("ipc-bench: %ld CPUs online, kernel %s, %s; null consumer thread%s\n",
	       sysconf(_SC_NPROCESSORS_ONLN), u.release, u.machine, pin ? ", pinned 0/1" : "");
	printf("queue: sq %u, cq %u entries; 4 KiB reads (throughput), flushes (latency); "
	       "doorbell spin %u\n\n", geom.sq_entries, geom.cq_entries, spin);
	pin_to(0);

	printf("| batch | M requests/s | doorbells per request |\n| ---: | ---: | ---: |\n");
	unsigned batches[] = { 1, 8, 32 };
	for (unsigned i = 0; i < 3; i++) {
		double m, k;
		throughput(batches[i], count, spin, &m, &k);
		printf("| %u | %.2f | %.4f |\n", batches[i], m, k);
		fflush(stdout);
	}
	printf("\n| QD1 round trip | p50 us | p99 us |\n| --- | ---: | ---: |\n");
	double p50, p99;
	latency(lat_count, spin, &p50, &p99);
	printf("| doorbells (spin %u) | %.2f | %.2f |\n", spin, p50, p99);
	fflush(stdout);
	latency(lat_count, UINT32_MAX, &p50, &p99);
	printf("| busy polling | %.2f | %.2f |\n", p50, p99);
	eventfd_floor(lat_count, &p50, &p99);
	printf("| floor: eventfd ping-pong, no ring | %.2f | %.2f |\n", p50, p99);
	return 0;
}
