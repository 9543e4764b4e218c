/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * qcow2-bench: a load generator for qcow2d, through libqcow2-client, with
 * fio's vocabulary. Each job is a queue driven by a thread of its own over
 * its own slice of the disk; results are IOPS, bandwidth, latency
 * percentiles and the CPU time of the client and of the service.
 *
 * --verify: every written block starts with a header (magic, offset,
 * generation, run id) and the rest is a stream derived from it, so that a
 * read can tell a block that landed elsewhere (offset), a stale one
 * (generation: the bench knows the last acknowledged one of each block it
 * wrote) or a damaged one (the stream). Blocks with a write in flight are
 * neither read nor written again until it completes (their content is
 * undecided). --verify-state carries the generations from a write run to a
 * later read run.
 *
 * A service restart may lose writes that completed but that no flush
 * covered yet (like a disk's volatile cache), never a write a completed
 * flush covered: with --fsync N each job flushes after every N writes and
 * remembers, per block, the last generation a completed flush covered.
 * After a reconnection a block written since then may read back as that
 * generation or any later one it acknowledged (or zeros if none was
 * flushed), until it is written again.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "cli_units.h"
#include "qcow2-client.h"

#define VERIFY_MAGIC 0x48434e4542433251ull /* "Q2CBENCH" */
#define HIST_SUB 32                        /* buckets per power of two */
#define HIST_N (64 * HIST_SUB)

enum pattern { RW_READ, RW_WRITE, RW_RANDREAD, RW_RANDWRITE, RW_RANDRW };
static const char *const pattern_names[] = {
	"read", "write", "randread", "randwrite", "randrw",
};

struct opts {
	const char *socket, *image, *state_file;
	enum pattern rw;
	unsigned rwmixread;       /* percent reads in randrw */
	uint64_t bs, size, offset, number_ios;
	double runtime;
	unsigned iodepth, numjobs;
	unsigned fsync;           /* a flush after every N writes (0: none) */
	bool zero_copy, verify, json, by_path;
	uint64_t seed;
};

/* The verify header at the start of each block. */
struct vhdr {
	uint64_t magic, offset, gen, run;
};

struct op_result {
	uint64_t ios, bytes, errors, total_ns;
	uint64_t hist[HIST_N];
};

struct slot {
	void *buf;
	uint64_t block;           /* index in the job's slice */
	uint64_t gen;             /* a write's generation */
	uint64_t start_ns;
	unsigned era;             /* reconnections when it was issued */
	bool write, busy;
};

struct job {
	unsigned id;
	struct q2c_queue *q;
	pthread_t thread;
	uint64_t first, nblocks;  /* its slice: blocks of opts.bs */
	uint64_t *gen;            /* --verify: last acknowledged generation;
				   * 0 never written, UINT64_MAX unknown */
	uint64_t *durable;        /* --verify: the last one a flush covered */
	uint8_t *busy;            /* --verify: a request on it is in flight */
	uint8_t *uncertain;       /* --verify: since a restart, gen or older */
	/* --verify with --fsync: blocks written since the last flush was
	 * issued (stamp: epoch + 1 when listed), and what the flush in
	 * flight covers (block, generation) */
	uint32_t *stamp, epoch;
	uint64_t *dirty, ndirty, *covered, ncovered;
	struct slot flush;
	bool flush_busy;
	uint64_t writes_since_flush;
	uint64_t next_seq, rng, next_gen, issued, done;
	struct slot *slots;
	struct op_result res[3];  /* read, write, flush */
	uint64_t verified, verify_errors;
	char first_error[512];
	int fatal;                /* a call failed: the job stopped */
};

static struct opts o = {
	.rw = RW_RANDREAD, .rwmixread = 50, .bs = 4096, .iodepth = 32,
	.numjobs = 1, .seed = 1,
};
static struct q2c *handle;
static uint64_t run_id, disk_size, deadline_ns;
static struct job *jobs;
/* Reconnecting after the service restarted: jobs park until it is done. */
static pthread_mutex_t rc_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t rc_cond = PTHREAD_COND_INITIALIZER;
static unsigned rc_parked, rc_active, rc_generation, reconnects;
/* Reconnections so far: a request issued before the last one may have
 * been completed by the service that died (its acknowledgement proves
 * nothing about what survived). Changes only while every job is parked. */
static unsigned era;
static int rc_error;

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* ---- latency histogram: HIST_SUB buckets per power of two of ns ---------- */

static unsigned hist_bucket(uint64_t ns)
{
	unsigned msb, sub;

	if (ns < HIST_SUB)
		return (unsigned)ns;
	msb = 63u - (unsigned)__builtin_clzll(ns);
	sub = (unsigned)(ns >> (msb - 5)) & (HIST_SUB - 1);
	return (msb - 4) * HIST_SUB + sub;
}

static double hist_value(unsigned b)
{
	unsigned msb, sub;

	if (b < HIST_SUB)
		return b;
	msb = b / HIST_SUB + 4;
	sub = b % HIST_SUB;
	/* the middle of the bucket */
	return ((double)(HIST_SUB + sub) + 0.5) * (double)(1ull << (msb - 5));
}

static double percentile_us(const uint64_t *hist, uint64_t n, double p)
{
	uint64_t want = (uint64_t)(p / 100.0 * (double)n), seen = 0;

	for (unsigned b = 0; b < HIST_N; b++) {
		seen += hist[b];
		if (seen > want)
			return hist_value(b) / 1000.0;
	}
	return 0;
}

/* ---- verify --------------------------------------------------------------- */

static void fill_block(void *buf, uint64_t offset, uint64_t gen)
{
	struct vhdr h = { VERIFY_MAGIC, offset, gen, run_id };
	uint64_t s = offset ^ (gen * 0x2545f4914f6cdd1dull) ^ run_id;
	uint8_t *p = buf;

	memcpy(p, &h, sizeof(h));
	for (uint64_t i = sizeof(h); i + 8 <= o.bs; i += 8) {
		uint64_t v = splitmix(&s);
		memcpy(p + i, &v, 8);
	}
}

static bool all_zero(const uint8_t *p, uint64_t n)
{
	for (uint64_t i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
}

/* Check a block read at offset: its generation must be in [lo, hi]
 * (lo 0: zeros will do too; hi UINT64_MAX: a write to it failed, any
 * block of ours for that offset will do). */
static bool check_block(struct job *j, const void *buf, uint64_t offset,
			uint64_t lo, uint64_t hi)
{
	struct vhdr h;
	uint64_t s;
	const uint8_t *p = buf;
	const char *why = NULL;

	memcpy(&h, p, sizeof(h));
	if (lo == 0 && all_zero(p, o.bs))
		return true;
	if (h.magic != VERIFY_MAGIC)
		why = "not a block this bench wrote";
	else if (h.offset != offset)
		why = "a block written for another offset";
	else if (hi != UINT64_MAX && (h.gen < lo || h.gen > hi))
		why = h.gen < lo ? (lo == hi ? "stale (an older generation)" :
				    "older than the last flush covered") :
				   "a generation never acknowledged";
	if (!why) {
		s = h.offset ^ (h.gen * 0x2545f4914f6cdd1dull) ^ h.run;
		for (uint64_t i = sizeof(h); i + 8 <= o.bs; i += 8) {
			uint64_t v = splitmix(&s);
			if (memcmp(p + i, &v, 8)) {
				why = "damaged (its contents do not match its header)";
				break;
			}
		}
	}
	if (!why)
		return true;
	if (!j->verify_errors++)
		snprintf(j->first_error, sizeof(j->first_error),
			 "verify: block at offset %" PRIu64 " is %s (magic 0x%016" PRIx64
			 ", offset %" PRIu64 ", generation %" PRIu64 ", expected %" PRIu64
			 "%s)", offset, why, h.magic, h.offset, h.gen, hi,
			 lo != hi ? " or back to the last flushed one" : "");
	return false;
}

/* ---- the jobs ----------------------------------------------------------- */

static bool is_random(void)
{
	return o.rw >= RW_RANDREAD;
}

/* The next block for a request, or UINT64_MAX when every candidate is busy
 * (verify: a request on it is in flight). */
static uint64_t pick_block(struct job *j)
{
	uint64_t b;

	if (is_random())
		b = splitmix(&j->rng) % j->nblocks;
	else
		b = j->next_seq++ % j->nblocks;
	if (!o.verify)
		return b;
	for (uint64_t tries = 0; tries < j->nblocks && tries < 64; tries++) {
		uint64_t c = (b + tries) % j->nblocks;
		if (!j->busy[c])
			return c;
	}
	return UINT64_MAX;
}

static bool job_more(const struct job *j)
{
	if (o.number_ios)
		return j->issued < o.number_ios;
	return now_ns() < deadline_ns;
}

static bool pick_write(struct job *j)
{
	switch (o.rw) {
	case RW_WRITE: case RW_RANDWRITE: return true;
	case RW_RANDRW: return splitmix(&j->rng) % 100 >= o.rwmixread;
	default: return false;
	}
}

static bool issue(struct job *j, struct slot *s)
{
	uint64_t b = pick_block(j), off;

	if (b == UINT64_MAX)
		return false;
	s->block = b;
	s->write = pick_write(j);
	s->busy = true;
	off = (j->first + b) * o.bs;
	if (o.verify)
		j->busy[b] = 1;
	if (s->write) {
		s->gen = ++j->next_gen;
		if (o.verify)
			fill_block(s->buf, off, s->gen);
	}
	j->issued++;
	s->era = era;
	s->start_ns = now_ns();
	if (s->write)
		q2cq_write(j->q, off, s->buf, o.bs, s, 0);
	else
		q2cq_read(j->q, off, s->buf, o.bs, s, 0);
	return true;
}

/* A write to block b was acknowledged: list it for the next flush. */
static void note_written(struct job *j, uint64_t b)
{
	if (!j->dirty || j->stamp[b] == j->epoch + 1)
		return;
	j->stamp[b] = j->epoch + 1;
	j->dirty[j->ndirty++] = b;
}

/* --fsync: a flush covers what was acknowledged before it is issued. */
static void issue_flush(struct job *j)
{
	if (o.verify) {
		for (uint64_t i = 0; i < j->ndirty; i++) {
			uint64_t b = j->dirty[i];
			j->covered[2 * i] = b;
			j->covered[2 * i + 1] = j->gen[b];
		}
		j->ncovered = j->ndirty;
		j->ndirty = 0;
		j->epoch++;
	}
	j->writes_since_flush = 0;
	j->flush_busy = true;
	j->flush.era = era;
	j->flush.start_ns = now_ns();
	q2cq_flush(j->q, &j->flush, 0);
}

static void flush_done(struct job *j, const struct q2c_completion *c)
{
	struct op_result *r = &j->res[2];
	uint64_t ns = now_ns() - j->flush.start_ns;

	r->ios++;
	r->total_ns += ns;
	r->hist[hist_bucket(ns)]++;
	j->flush_busy = false;
	if (c->ret < 0) {
		r->errors++;
		if (!j->first_error[0])
			snprintf(j->first_error, sizeof(j->first_error),
				 "flush failed: %s", c->error_msg ? c->error_msg :
				 strerror(-c->ret));
	}
	/* Issued before a reconnection: the service that answered may not be
	 * the one that had the writes it covers. */
	for (uint64_t i = 0; o.verify && j->flush.era == era && i < j->ncovered; i++) {
		uint64_t b = j->covered[2 * i], g = j->covered[2 * i + 1];
		if (c->ret < 0)
			note_written(j, b); /* for the next flush */
		else if (g != UINT64_MAX && g > j->durable[b])
			j->durable[b] = g;
	}
	j->ncovered = 0;
}

/* After a restart: writes no completed flush covered may be gone, and no
 * later flush can bring them back. */
static void mark_uncertain(struct job *j)
{
	for (uint64_t b = 0; o.verify && b < j->nblocks; b++)
		if (j->gen[b] && j->gen[b] != UINT64_MAX && j->gen[b] != j->durable[b])
			j->uncertain[b] = 1;
	j->ndirty = 0;
	j->epoch++; /* (unlists them all) */
}

static void complete(struct job *j, const struct q2c_completion *c)
{
	struct slot *s = c->user_data;
	struct op_result *r;
	uint64_t off, ns;

	if (s == &j->flush) {
		flush_done(j, c);
		return;
	}
	r = &j->res[s->write];
	off = (j->first + s->block) * o.bs;
	ns = now_ns() - s->start_ns;
	r->ios++;
	r->total_ns += ns;
	r->hist[hist_bucket(ns)]++;
	j->done++;
	s->busy = false;
	if (c->ret < 0) {
		r->errors++;
		if (!j->first_error[0])
			snprintf(j->first_error, sizeof(j->first_error),
				 "%s at offset %" PRIu64 " failed: %s", s->write ?
				 "write" : "read", off, c->error_msg ? c->error_msg :
				 strerror(-c->ret));
		if (o.verify && s->write) {
			j->gen[s->block] = UINT64_MAX;
			j->uncertain[s->block] = 0;
		}
	} else {
		r->bytes += o.bs;
		if (s->write)
			j->writes_since_flush++;
		if (o.verify && s->write && s->era == era) {
			j->gen[s->block] = s->gen;
			j->uncertain[s->block] = 0;
			note_written(j, s->block);
		} else if (o.verify && s->write) {
			/* maybe acknowledged by the service that died */
			j->gen[s->block] = s->gen;
			j->uncertain[s->block] = 1;
		} else if (o.verify && j->gen[s->block]) {
			/* (a block this run never wrote, and no --verify-state
			 * knows: what was there before, unchecked) */
			uint64_t b = s->block, hi = j->gen[b];
			j->verified++;
			check_block(j, s->buf, off, j->uncertain[b] ? j->durable[b] : hi,
				    hi);
		}
	}
	if (o.verify)
		j->busy[s->block] = 0;
}

/* q2c_reconnect() until the service is back with the image, for at most
 * 60 s: until then it fails with -ECONNREFUSED (nobody listens), -ENOENT
 * or -EBUSY (the image is not open again yet, or is being opened) or
 * -ECONNRESET (the dying service's socket took the connection, then
 * closed). */
static int reconnect_retrying(void)
{
	uint64_t give_up = now_ns() + 60000000000ull;
	int ret;

	while ((ret = q2c_reconnect(handle)) == -ECONNREFUSED || ret == -ENOENT ||
	       ret == -EBUSY || ret == -ECONNRESET || ret == -EPIPE) {
		if (now_ns() > give_up)
			break;
		usleep(50000);
	}
	if (ret == 0) {
		reconnects++;
		era++;
	}
	return ret;
}

/* After -ECONNRESET: park until every running job has, then one of them
 * reconnects (no queue is in use then) and all go on. */
static int job_reconnect(void)
{
	unsigned gen;
	int ret;

	pthread_mutex_lock(&rc_lock);
	gen = rc_generation;
	rc_parked++;
	if (rc_parked == rc_active) {
		rc_error = reconnect_retrying();
		rc_parked = 0;
		rc_generation++;
		pthread_cond_broadcast(&rc_cond);
	} else {
		while (gen == rc_generation)
			pthread_cond_wait(&rc_cond, &rc_lock);
	}
	ret = rc_error;
	pthread_mutex_unlock(&rc_lock);
	return ret;
}

static void job_leave(void)
{
	pthread_mutex_lock(&rc_lock);
	rc_active--;
	if (rc_active && rc_parked == rc_active) {
		/* the others wait for this one: reconnect for them */
		rc_error = reconnect_retrying();
		rc_parked = 0;
		rc_generation++;
		pthread_cond_broadcast(&rc_cond);
	}
	pthread_mutex_unlock(&rc_lock);
}

static void *job_run(void *arg)
{
	struct job *j = arg;
	struct q2c_completion *cpl = calloc(o.iodepth + 1, sizeof(*cpl));
	unsigned inflight = 0;

	if (!cpl) {
		j->fatal = -ENOMEM;
		goto out;
	}
	for (;;) {
		int n;

		for (unsigned i = 0; i < o.iodepth && job_more(j); i++)
			if (!j->slots[i].busy && issue(j, &j->slots[i]))
				inflight++;
		if (o.fsync && !j->flush_busy && j->writes_since_flush >= o.fsync) {
			issue_flush(j);
			inflight++;
		}
		if (!inflight)
			break;
		n = q2cq_do_io(j->q, cpl, 1, (int)o.iodepth + 1, NULL);
		if (n == -ECONNRESET) {
			n = job_reconnect();
			if (n == 0) {
				mark_uncertain(j);
				continue;
			}
		}
		if (n < 0) {
			j->fatal = n;
			snprintf(j->first_error, sizeof(j->first_error),
				 "queue %u: %s", j->id, q2c_get_error_msg());
			break;
		}
		for (int i = 0; i < n; i++)
			complete(j, &cpl[i]);
		inflight -= (unsigned)n;
	}
out:
	free(cpl);
	job_leave();
	return NULL;
}

/* ---- the service's CPU time --------------------------------------------- */

static pid_t service_pid(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct ucred cred;
	socklen_t len = sizeof(cred);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	pid_t pid = 0;

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
	    getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0)
		pid = cred.pid;
	if (fd >= 0)
		close(fd);
	return pid;
}

/* utime + stime of pid in seconds, or -1. */
static double proc_cpu(pid_t pid)
{
	char path[64], buf[1024], *p;
	unsigned long long ut, st;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	f = fopen(path, "r");
	if (!f)
		return -1;
	p = fgets(buf, sizeof(buf), f);
	fclose(f);
	if (!p || !(p = strrchr(buf, ')')))
		return -1;
	/* after ") ": state is field 3; utime and stime are 14 and 15 */
	if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
		   &ut, &st) != 2)
		return -1;
	return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static double self_cpu(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
	       (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* ---- --verify-state ---------------------------------------------------- */

struct state_hdr {
	uint64_t magic, bs, offset, blocks;
};

static int state_save(const char *file, uint64_t blocks)
{
	struct state_hdr h = { VERIFY_MAGIC, o.bs, o.offset, blocks };
	FILE *f = fopen(file, "wb");
	bool ok = f && fwrite(&h, sizeof(h), 1, f) == 1;

	for (unsigned i = 0; ok && i < o.numjobs; i++)
		ok = fwrite(jobs[i].gen, sizeof(uint64_t), jobs[i].nblocks, f) ==
		     jobs[i].nblocks;
	if (f && fclose(f) != 0)
		ok = false;
	if (!ok)
		fprintf(stderr, "qcow2-bench: --verify-state %s: cannot write it: %s\n",
			file, strerror(errno));
	return ok ? 0 : -EIO;
}

static int state_load(const char *file, uint64_t blocks)
{
	struct state_hdr h;
	FILE *f = fopen(file, "rb");
	bool ok;

	if (!f && errno == ENOENT)
		return 0; /* the first run: it will be written */
	ok = f && fread(&h, sizeof(h), 1, f) == 1;
	if (ok && (h.magic != VERIFY_MAGIC || h.bs != o.bs || h.offset != o.offset ||
		   h.blocks != blocks)) {
		fprintf(stderr, "qcow2-bench: --verify-state %s was written with another "
			"--bs, --offset, --size or --numjobs\n", file);
		fclose(f);
		return -EINVAL;
	}
	for (unsigned i = 0; ok && i < o.numjobs; i++)
		ok = fread(jobs[i].gen, sizeof(uint64_t), jobs[i].nblocks, f) ==
		     jobs[i].nblocks;
	if (f)
		fclose(f);
	if (!ok) {
		fprintf(stderr, "qcow2-bench: --verify-state %s: cannot read it\n", file);
		return -EIO;
	}
	/* generations continue after the loaded ones */
	for (unsigned i = 0; i < o.numjobs; i++)
		for (uint64_t b = 0; b < jobs[i].nblocks; b++)
			if (jobs[i].gen[b] != UINT64_MAX &&
			    jobs[i].gen[b] >= jobs[i].next_gen)
				jobs[i].next_gen = jobs[i].gen[b];
	return 0;
}

/* ---- output ------------------------------------------------------------- */

static void merge(struct op_result *sum, const struct op_result *r)
{
	sum->ios += r->ios;
	sum->bytes += r->bytes;
	sum->errors += r->errors;
	sum->total_ns += r->total_ns;
	for (unsigned b = 0; b < HIST_N; b++)
		sum->hist[b] += r->hist[b];
}

static json_t *op_json(const struct op_result *r, double secs)
{
	return json_pack("{s:I, s:I, s:I, s:f, s:f, s:{s:f, s:f, s:f, s:f}}",
			 "ios", (json_int_t)r->ios, "bytes", (json_int_t)r->bytes,
			 "errors", (json_int_t)r->errors,
			 "iops", (double)r->ios / secs,
			 "bw_bytes", (double)r->bytes / secs,
			 "lat_us", "p50", percentile_us(r->hist, r->ios, 50),
			 "p99", percentile_us(r->hist, r->ios, 99),
			 "p99.9", percentile_us(r->hist, r->ios, 99.9),
			 "mean", r->ios ? (double)r->total_ns / (double)r->ios / 1000.0 : 0.0);
}

static void op_text(const char *name, const struct op_result *r, double secs)
{
	char bw[32];

	cli_human_size((uint64_t)((double)r->bytes / secs), bw, sizeof(bw));
	printf("  %-5s IOPS %.0f, %s/s, latency p50 %.1f us, p99 %.1f us, "
	       "p99.9 %.1f us (%" PRIu64 " IOs, %" PRIu64 " errors)\n", name,
	       (double)r->ios / secs, bw, percentile_us(r->hist, r->ios, 50),
	       percentile_us(r->hist, r->ios, 99),
	       percentile_us(r->hist, r->ios, 99.9), r->ios, r->errors);
}

/* ---- options -------------------------------------------------------------- */

static const char usage_text[] =
"Usage: qcow2-bench [--socket PATH] [OPTIONS] IMAGE\n"
"\n"
"Drive IO through qcow2d with libqcow2-client and report IOPS, bandwidth,\n"
"latency percentiles and the CPU time of the client and of the service.\n"
"IMAGE is the name of an image open in qcow2d, or a path (it contains a\n"
"'/'), which qcow2d opens for the run and closes after it.\n"
"\n"
"Options (fio's names):\n"
"  --rw MODE             read, write, randread (default), randwrite, randrw\n"
"  --rwmixread PERCENT   reads in randrw (default 50)\n"
"  --bs SIZE             bytes per request (default 4k)\n"
"  --iodepth N           requests in flight per job (default 32)\n"
"  --numjobs N           jobs: one queue and one thread each, each over its\n"
"                        own slice of the range (default 1)\n"
"  --offset SIZE         where the range starts (default 0)\n"
"  --size SIZE           bytes of the range (default: to the end of the disk)\n"
"  --runtime SECONDS     run this long (default 10)\n"
"  --number-ios N        or this many requests per job\n"
"  --fsync N             flush after every N writes (per job; default 0:\n"
"                        never)\n"
"  --zero-copy           buffers in memory shared with qcow2d (a mapped\n"
"                        region); default: ordinary buffers, copied through\n"
"                        each queue's data area\n"
"  --verify              write blocks that carry their offset and a\n"
"                        generation; check every block read (misplaced,\n"
"                        stale or damaged blocks are errors)\n"
"  --verify-state FILE   with --verify: load the blocks' generations from\n"
"                        FILE if it exists, save them there at the end (a\n"
"                        write run, then a read run that checks it)\n"
"  --seed N              random offsets' seed (default 1)\n"
"  --socket PATH         qcow2d's control socket (default: $QCOW2D_SOCKET,\n"
"                        else /run/qcow2d/qcow2d.sock as root, else\n"
"                        $XDG_RUNTIME_DIR/qcow2d.sock)\n"
"  --output-format FMT   normal (default) or json\n"
"  -h, --help            this text\n"
"\n"
"If qcow2d is restarted during the run, the jobs reconnect and carry on\n"
"(requests in flight are resubmitted by the service; it is retried for up\n"
"to 60 s while qcow2d is not back); the count of reconnections is\n"
"reported. Writes no completed flush covered may be lost with a qcow2d\n"
"that dies, as with a disk's cache: --verify then accepts, for those\n"
"blocks only, the last flushed generation or a later one it wrote, and\n"
"still fails on anything older than what a completed flush covered.\n"
"\n"
"Exit status: 0 success; 1 a request failed, a block did not verify or\n"
"qcow2d could not be used; 2 usage error.\n";

static int parse_opts(int argc, char **argv)
{
	enum { O_RW = 256, O_MIX, O_BS, O_DEPTH, O_JOBS, O_OFFSET, O_SIZE,
	       O_RUNTIME, O_NIOS, O_ZC, O_VERIFY, O_VSTATE, O_SEED, O_SOCKET,
	       O_FORMAT, O_FSYNC };
	static const struct option lo[] = {
		{ "rw", required_argument, 0, O_RW },
		{ "rwmixread", required_argument, 0, O_MIX },
		{ "bs", required_argument, 0, O_BS },
		{ "iodepth", required_argument, 0, O_DEPTH },
		{ "numjobs", required_argument, 0, O_JOBS },
		{ "offset", required_argument, 0, O_OFFSET },
		{ "size", required_argument, 0, O_SIZE },
		{ "runtime", required_argument, 0, O_RUNTIME },
		{ "number-ios", required_argument, 0, O_NIOS },
		{ "zero-copy", no_argument, 0, O_ZC },
		{ "fsync", required_argument, 0, O_FSYNC },
		{ "verify", no_argument, 0, O_VERIFY },
		{ "verify-state", required_argument, 0, O_VSTATE },
		{ "seed", required_argument, 0, O_SEED },
		{ "socket", required_argument, 0, O_SOCKET },
		{ "output-format", required_argument, 0, O_FORMAT },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	int c;
	uint64_t v;

	while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
		switch (c) {
		case O_RW: {
			unsigned i;
			for (i = 0; i < 5 && strcmp(optarg, pattern_names[i]); i++)
				;
			if (i == 5) {
				fprintf(stderr, "qcow2-bench: --rw: read, write, randread, "
					"randwrite or randrw, got '%s'\n", optarg);
				return 2;
			}
			o.rw = (enum pattern)i;
			break;
		}
		case O_MIX: case O_BS: case O_DEPTH: case O_JOBS: case O_OFFSET:
		case O_SIZE: case O_NIOS: case O_SEED: case O_FSYNC:
			if (cli_parse_size(optarg, &v) < 0) {
				fprintf(stderr, "qcow2-bench: invalid number '%s'\n", optarg);
				return 2;
			}
			if ((c == O_MIX && v > 100) || (c == O_DEPTH && (!v || v > 4096)) ||
			    (c == O_JOBS && (!v || v > 64)) || (c == O_BS && !v) ||
			    (c == O_FSYNC && v > UINT32_MAX)) {
				fprintf(stderr, "qcow2-bench: %s out of range\n", optarg);
				return 2;
			}
			if (c == O_MIX) o.rwmixread = (unsigned)v;
			else if (c == O_BS) o.bs = v;
			else if (c == O_DEPTH) o.iodepth = (unsigned)v;
			else if (c == O_JOBS) o.numjobs = (unsigned)v;
			else if (c == O_OFFSET) o.offset = v;
			else if (c == O_SIZE) o.size = v;
			else if (c == O_NIOS) o.number_ios = v;
			else if (c == O_FSYNC) o.fsync = (unsigned)v;
			else o.seed = v;
			break;
		case O_RUNTIME: {
			char *end;
			o.runtime = strtod(optarg, &end);
			if (*end || !(o.runtime > 0)) {
				fprintf(stderr, "qcow2-bench: --runtime: seconds > 0, "
					"got '%s'\n", optarg);
				return 2;
			}
			break;
		}
		case O_ZC: o.zero_copy = true; break;
		case O_VERIFY: o.verify = true; break;
		case O_VSTATE: o.state_file = optarg; break;
		case O_SOCKET: o.socket = optarg; break;
		case O_FORMAT:
			if (strcmp(optarg, "json") && strcmp(optarg, "normal")) {
				fprintf(stderr, "qcow2-bench: --output-format: normal or "
					"json, got '%s'\n", optarg);
				return 2;
			}
			o.json = !strcmp(optarg, "json");
			break;
		case 'h':
			fputs(usage_text, stdout);
			return 0;
		default:
			fputs("Try 'qcow2-bench --help'.\n", stderr);
			return 2;
		}
	}
	if (optind != argc - 1) {
		fputs(usage_text, stderr);
		return 2;
	}
	if (o.state_file && !o.verify) {
		fprintf(stderr, "qcow2-bench: --verify-state needs --verify\n");
		return 2;
	}
	if (o.verify && o.bs < sizeof(struct vhdr)) {
		fprintf(stderr, "qcow2-bench: --verify needs --bs of at least 32\n");
		return 2;
	}
	if (!o.runtime && !o.number_ios)
		o.runtime = 10;
	o.image = argv[optind];
	o.by_path = strchr(o.image, '/') != NULL;
	return -1;
}

/* ---- main ------------------------------------------------------------------ */

static int fail(const char *what)
{
	fprintf(stderr, "qcow2-bench: %s: %s\n", what, q2c_get_error_msg());
	return 1;
}

int main(int argc, char **argv)
{
	struct q2c_mem_region region = { 0 };
	struct op_result sum[3] = { 0 };
	char *sock = NULL, *name = NULL;
	uint64_t per_job, t0, total_blocks = 0, errors = 0, verified = 0,
		 verify_errors = 0, bytes;
	double secs, cpu0, cpu1, scpu0 = -1, scpu1 = -1;
	int ret, align = 1, status = 0;
	bool ro;
	pid_t spid, spid0;

	ret = parse_opts(argc, argv);
	if (ret >= 0)
		return ret;
	ro = o.rw == RW_READ || o.rw == RW_RANDREAD;
	run_id = (uint64_t)getpid() << 32 ^ now_ns();
	if (q2c_create(&handle) < 0)
		return fail("cannot create a client");
	if ((o.socket && q2c_set_str(handle, "socket", o.socket) < 0) ||
	    q2c_set_str(handle, o.by_path ? "path" : "name", o.image) < 0 ||
	    (o.by_path && ro && q2c_set_bool(handle, "read-only", true) < 0))
		return fail("bad settings");
	if (q2c_connect(handle) < 0)
		return fail(o.image);
	if (q2c_get_uint64(handle, "capacity", &disk_size) < 0 ||
	    q2c_get_int(handle, "request-alignment", &align) < 0 ||
	    q2c_get_str(handle, "socket", &sock) < 0 ||
	    q2c_get_str(handle, "image-name", &name) < 0) {
		status = fail("reading the image's properties");
		goto out;
	}
	if (!o.size)
		o.size = disk_size > o.offset ? disk_size - o.offset : 0;
	if (o.bs % (uint64_t)align || o.offset % (uint64_t)align ||
	    o.offset + o.size > disk_size || o.size / o.numjobs < o.bs) {
		fprintf(stderr, "qcow2-bench: --bs and --offset must be multiples of %d "
			"and the range (%" PRIu64 " bytes at %" PRIu64 ") inside the "
			"disk (%" PRIu64 " bytes) with a block per job\n", align, o.size,
			o.offset, disk_size);
		status = 2;
		goto out;
	}
	if (q2c_set_int(handle, "num-queues", (int)o.numjobs) < 0)
		{ status = fail("--numjobs"); goto out; }
	{
		int entries = 1;
		while (entries < (int)o.iodepth)
			entries <<= 1;
		if (q2c_set_int(handle, "num-entries", entries) < 0)
			{ status = fail("--iodepth"); goto out; }
	}
	if (!o.zero_copy && q2c_set_int(handle, "data-area-size",
					(int)(o.iodepth * o.bs > (4u << 20) ?
					      o.iodepth * o.bs : (4u << 20))) < 0)
		{ status = fail("the data area"); goto out; }
	jobs = calloc(o.numjobs, sizeof(*jobs));
	if (!jobs)
		{ status = fail("out of memory"); goto out; }
	per_job = o.size / o.numjobs / o.bs;
	if (o.zero_copy) {
		uint64_t ra = 4096, len;
		q2c_get_uint64(handle, "mem-region-alignment", &ra);
		len = (o.numjobs * o.iodepth * o.bs + ra - 1) / ra * ra;
		if (q2c_alloc_mem_region(handle, &region, len) < 0 ||
		    q2c_map_mem_region(handle, &region) < 0)
			{ status = fail("--zero-copy"); goto out; }
	}
	for (unsigned i = 0; i < o.numjobs; i++) {
		struct job *j = &jobs[i];

		j->id = i;
		j->first = o.offset / o.bs + i * per_job;
		j->nblocks = per_job;
		j->rng = o.seed * 0x9e3779b97f4a7c15ull + i;
		j->slots = calloc(o.iodepth, sizeof(*j->slots));
		if (o.verify) {
			j->gen = calloc(per_job, sizeof(*j->gen));
			j->durable = calloc(per_job, sizeof(*j->durable));
			j->busy = calloc(per_job, 1);
			j->uncertain = calloc(per_job, 1);
		}
		if (o.verify && o.fsync) {
			j->stamp = calloc(per_job, sizeof(*j->stamp));
			j->dirty = calloc(per_job, sizeof(*j->dirty));
			j->covered = calloc(per_job, 2 * sizeof(*j->covered));
		}
		if (!j->slots || (o.verify && (!j->gen || !j->durable || !j->busy ||
					      !j->uncertain)) ||
		    (o.verify && o.fsync && (!j->stamp || !j->dirty || !j->covered)))
			{ status = fail("out of memory"); goto out; }
		for (unsigned k = 0; k < o.iodepth; k++) {
			if (o.zero_copy)
				j->slots[k].buf = (char *)region.addr +
						  ((uint64_t)i * o.iodepth + k) * o.bs;
			else if (posix_memalign(&j->slots[k].buf, 4096, o.bs))
				{ status = fail("out of memory"); goto out; }
		}
		total_blocks += per_job;
	}
	if (o.state_file && state_load(o.state_file, total_blocks) < 0)
		{ status = 1; goto out; }
	if (q2c_start(handle) < 0)
		{ status = fail("attaching the queues"); goto out; }
	for (unsigned i = 0; i < o.numjobs; i++)
		jobs[i].q = q2c_get_queue(handle, (int)i);
	spid0 = spid = service_pid(sock);
	scpu0 = spid ? proc_cpu(spid) : -1;
	cpu0 = self_cpu();
	t0 = now_ns();
	deadline_ns = t0 + (uint64_t)(o.runtime * 1e9);
	rc_active = o.numjobs;
	for (unsigned i = 0; i < o.numjobs; i++)
		if (pthread_create(&jobs[i].thread, NULL, job_run, &jobs[i]) != 0) {
			fprintf(stderr, "qcow2-bench: cannot start a thread\n");
			exit(1); /* the jobs already running use the handle */
		}
	for (unsigned i = 0; i < o.numjobs; i++)
		pthread_join(jobs[i].thread, NULL);
	secs = (double)(now_ns() - t0) / 1e9;
	cpu1 = self_cpu();
	/* the service's own process after a restart: whatever answers now */
	spid = service_pid(sock);
	scpu1 = spid && spid == spid0 && scpu0 >= 0 && !reconnects ? proc_cpu(spid) : -1;

	for (unsigned i = 0; i < o.numjobs; i++) {
		struct job *j = &jobs[i];
		merge(&sum[0], &j->res[0]);
		merge(&sum[1], &j->res[1]);
		merge(&sum[2], &j->res[2]);
		verified += j->verified;
		verify_errors += j->verify_errors;
		errors += j->res[0].errors + j->res[1].errors + j->res[2].errors +
			  (j->fatal ? 1 : 0);
		if (j->first_error[0])
			fprintf(stderr, "qcow2-bench: job %u: %s\n", i, j->first_error);
	}
	if (o.state_file && state_save(o.state_file, total_blocks) < 0)
		status = 1;
	if (errors || verify_errors)
		status = 1;
	bytes = sum[0].bytes + sum[1].bytes;
	if (o.json) {
		json_t *r = json_pack(
			"{s:s, s:s, s:I, s:i, s:i, s:b, s:b, s:f, s:o, s:o, s:o, "
			"s:{s:f, s:f, s:f, s:f}, s:{s:I, s:I}, s:i, s:I}",
			"image", name, "rw", pattern_names[o.rw], "bs", (json_int_t)o.bs,
			"iodepth", (int)o.iodepth, "numjobs", (int)o.numjobs,
			"zero_copy", o.zero_copy, "verify", o.verify, "seconds", secs,
			"read", op_json(&sum[0], secs), "write", op_json(&sum[1], secs),
			"flush", op_json(&sum[2], secs),
			"cpu", "client_seconds", cpu1 - cpu0,
			"service_seconds", scpu1 >= 0 ? scpu1 - scpu0 : -1.0,
			"client_seconds_per_gib", bytes ? (cpu1 - cpu0) / ((double)bytes /
							      (1 << 30)) : 0.0,
			"service_seconds_per_gib", bytes && scpu1 >= 0 ?
				(scpu1 - scpu0) / ((double)bytes / (1 << 30)) : -1.0,
			"verified", "blocks", (json_int_t)verified, "errors",
			(json_int_t)verify_errors, "reconnects", (int)reconnects,
			"errors", (json_int_t)errors);
		json_dumpf(r, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
		printf("\n");
		json_decref(r);
	} else {
		char bs[32];

		cli_human_size(o.bs, bs, sizeof(bs));
		printf("qcow2-bench: %s, bs %s, iodepth %u, %u job(s), %s buffers%s, "
		       "image %s, %.2f s\n", pattern_names[o.rw], bs, o.iodepth,
		       o.numjobs, o.zero_copy ? "zero-copy" : "copied",
		       o.verify ? ", verify" : "", name, secs);
		if (sum[0].ios)
			op_text("read", &sum[0], secs);
		if (sum[1].ios)
			op_text("write", &sum[1], secs);
		if (sum[2].ios)
			op_text("flush", &sum[2], secs);
		printf("  cpu   client %.2f s", cpu1 - cpu0);
		if (scpu1 >= 0)
			printf(", service %.2f s", scpu1 - scpu0);
		if (bytes)
			printf(" (per GiB: client %.2f s%s", (cpu1 - cpu0) /
			       ((double)bytes / (1 << 30)), scpu1 >= 0 ? "" : ")\n");
		if (bytes && scpu1 >= 0)
			printf(", service %.2f s)\n", (scpu1 - scpu0) /
			       ((double)bytes / (1 << 30)));
		else if (!bytes)
			printf("\n");
		if (o.verify)
			printf("  verify %" PRIu64 " blocks read and checked, %" PRIu64
			       " bad\n", verified, verify_errors);
		if (reconnects)
			printf("  the service restarted: %u reconnection(s)\n", reconnects);
	}
out:
	q2c_destroy(&handle);
	for (unsigned i = 0; jobs && i < o.numjobs; i++) {
		for (unsigned k = 0; jobs[i].slots && !o.zero_copy && k < o.iodepth; k++)
			free(jobs[i].slots[k].buf);
		free(jobs[i].slots);
		free(jobs[i].gen);
		free(jobs[i].durable);
		free(jobs[i].busy);
		free(jobs[i].uncertain);
		free(jobs[i].stamp);
		free(jobs[i].dirty);
		free(jobs[i].covered);
	}
	free(jobs);
	if (region.addr)
		q2c_free_mem_region(NULL, &region);
	free(sock);
	free(name);
	return status;
}
