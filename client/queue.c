/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * queue.c: a queue's life (attach through qcow2d, detach), q2cq_do_io()
 * and its wait, and the completion fd.
 *
 * Waiting spins on the CQ a little, then sleeps in poll() on the call
 * eventfd and on the queue's connection: the service never writes on that
 * connection after the handshake, so its becoming readable means the
 * service hung up (it stopped, died, or detached the queue): -ECONNRESET.
 *
 * The completion fd is the call eventfd. While it is enabled, the queue
 * leaves q2cq_do_io() with cq_need_wakeup set (the ipc sleep protocol:
 * set, fence, look again), so the service rings it on each publish; if
 * completions are already there, or some were not handed back, the queue
 * rings it itself so that the caller's loop comes back for them.
 */
#include "client.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int queue_create(struct q2c *b, int index, struct q2c_queue **out)
{
	struct qcow2_ipc_client_opts co = { .size = sizeof(co) };
	int fds[Q2C_MAX_REGIONS];
	struct q2c_queue *q;
	char eb[128];
	int ret;

	q = calloc(1, sizeof(*q));
	if (!q)
		return q2c_err(-ENOMEM, "out of memory");
	q->b = b;
	q->index = index;
	q->sock = -1;
	q->num_entries = (unsigned)b->num_entries;
	q->max_segs = Q2C_MAX_SEGS;
	q->rules = b->rules;
	q->fd_enabled = true;
	q->slots = calloc(q->num_entries, sizeof(*q->slots));
	q->slot_iov = calloc((size_t)q->num_entries * q->max_segs, sizeof(*q->slot_iov));
	q->cpl = calloc(q->num_entries, sizeof(*q->cpl));
	if (!q->slots || !q->slot_iov || !q->cpl) {
		ret = q2c_err(-ENOMEM, "out of memory");
		goto fail;
	}
	for (unsigned i = q->num_entries; i-- > 0;) {
		q->slots[i].next = q->free_list;
		q->free_list = &q->slots[i];
	}
	co.geometry.sq_entries = q->num_entries;
	co.geometry.cq_entries = q->num_entries;
	co.geometry.max_segs = q->max_segs;
	co.geometry.data_size = (uint64_t)b->data_area_size;
	co.nr_regions = region_memfds(b, fds);
	co.region_fds = fds;
	ret = qcow2_ipc_client_new(&co, &q->ipc);
	if (ret < 0) {
		q2c_err(ret, "queue %d: cannot create its shared memory: %s", index,
			q2c_strerror(ret, eb, sizeof(eb)));
		goto fail;
	}
	q->data = qcow2_ipc_client_data(q->ipc, &q->data_size);
	if (bounce_init(&q->bounce, q->data_size) < 0) {
		ret = q2c_err(-ENOMEM, "out of memory");
		goto fail;
	}
	*out = q;
	return 0;
fail:
	queue_destroy(q, 0);
	return ret;
}

static int set_timeouts(int fd, int ms)
{
	struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };

	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0)
		return -errno;
	return 0;
}

/* The queue's rules from queue.attach's reply. Requests are checked
 * against what q2c_connect() announced; the service's may not be
 * stricter, or a request we let through would fail there. */
static int check_rules(struct q2c_queue *q, json_t *r)
{
	const struct q2c_rules *a = &q->b->rules;
	json_int_t size = json_integer_value(json_object_get(r, "disk_size"));
	json_int_t bs = json_integer_value(json_object_get(r, "block_size"));
	json_int_t ba = json_integer_value(json_object_get(r, "buf_align"));
	json_int_t max = json_integer_value(json_object_get(r, "max_io_bytes"));
	json_int_t ver = json_integer_value(json_object_get(r, "protocol_version"));

	if (ver != QCOW2_IPC_VERSION)
		return q2c_err(-EPROTONOSUPPORT, "queue %d: qcow2d speaks queue protocol %lld, "
			       "we speak %u", q->index, (long long)ver, QCOW2_IPC_VERSION);
	if ((uint64_t)size != a->capacity || (uint64_t)bs != a->block_size || ba < 1 ||
	    (uint64_t)ba > a->buf_align || max < 1 || (uint64_t)max < a->max_io)
		return q2c_err(-EPROTO, "queue %d: qcow2d's rules (disk_size %lld, block_size "
			       "%lld, buf_align %lld, max_io_bytes %lld) differ from the "
			       "image's properties", q->index, (long long)size, (long long)bs,
			       (long long)ba, (long long)max);
	if (json_is_true(json_object_get(r, "read_only")))
		q->rules.read_only = true;
	return 0;
}

/* Sets cq_need_wakeup so that the service rings the completion fd, or
 * rings it now if there is something to come back for already. */
static void arm_fd(struct q2c_queue *q)
{
	int ret = qcow2_ipc_client_prepare_sleep(q->ipc);

	if (ret == -EAGAIN || (ret == 0 && q->done.n)) {
		uint64_t one = 1;
		if (write(qcow2_ipc_client_call_fd(q->ipc), &one, sizeof(one)) < 0) {
			/* EAGAIN: the counter is full, so it is readable. */
		}
	}
}

int queue_attach(struct q2c_queue *q)
{
	struct q2c *b = q->b;
	char eb[128];
	json_t *r;
	int ret;

	if (q->sock >= 0) {
		close(q->sock);
		q->sock = -1;
	}
	ret = rpc_connect(b->socket, &q->sock);
	if (ret < 0)
		return ret;
	ret = rpc_call(q->sock, "queue.attach", json_pack("{s:s}", "name", b->image),
		       Q2C_ATTACH_TIMEOUT_MS, &r);
	if (ret < 0)
		goto fail;
	ret = check_rules(q, r);
	json_decref(r);
	if (ret < 0)
		goto fail;
	/* The hello and its reply go over this socket, blocking: bound them. */
	if ((ret = set_timeouts(q->sock, Q2C_ATTACH_TIMEOUT_MS)) < 0 ||
	    (ret = qcow2_ipc_client_handshake(q->ipc, q->sock)) < 0) {
		q2c_err(ret, "queue %d: the handshake with qcow2d failed: %s", q->index,
			q2c_strerror(ret, eb, sizeof(eb)));
		goto fail;
	}
	q->dead = false;
	if (q->fd_enabled)
		arm_fd(q);
	return 0;
fail:
	close(q->sock);
	q->sock = -1;
	return ret;
}

/* The service hung up on the queue's connection (or wrote on it, which it
 * never does): 0 while it is there, -ECONNRESET, -EPROTO. */
static int check_conn(struct q2c_queue *q)
{
	char c;
	ssize_t n;

	if (q->sock < 0)
		return -ECONNRESET;
	n = recv(q->sock, &c, 1, MSG_PEEK | MSG_DONTWAIT);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return 0;
	if (n > 0) {
		q->broken = true;
		return q2c_err(-EPROTO, "queue %d: qcow2d sent data on the queue's "
			       "connection", q->index);
	}
	q->dead = true;
	return q2c_err(-ECONNRESET, "queue %d: qcow2d hung up (it stopped, or the queue "
		       "was detached): q2c_reconnect() attaches again", q->index);
}

bool queue_gone(struct q2c_queue *q)
{
	return q->dead || check_conn(q) == -ECONNRESET;
}

static void ts_now(struct timespec *t)
{
	clock_gettime(CLOCK_MONOTONIC, t);
}

/* a - b, or 0 when b is later */
static struct timespec ts_left(const struct timespec *a, const struct timespec *b)
{
	struct timespec d = { a->tv_sec - b->tv_sec, a->tv_nsec - b->tv_nsec };

	if (d.tv_nsec < 0) {
		d.tv_nsec += 1000000000;
		d.tv_sec--;
	}
	if (d.tv_sec < 0)
		d = (struct timespec){ 0, 0 };
	return d;
}

/* Waits for a completion until deadline (NULL: none): 0 when something was
 * reaped or may be, -ETIME, -ECONNRESET, -EPROTO. */
static int queue_wait(struct q2c_queue *q, const struct timespec *deadline)
{
	struct pollfd p[2] = {
		{ .fd = qcow2_ipc_client_call_fd(q->ipc), .events = POLLIN },
		{ .fd = q->sock, .events = POLLIN | POLLRDHUP },
	};
	struct timespec now, left;
	char eb[128];
	int ret, n;

	for (unsigned i = 0; i < Q2C_SPIN; i++) {
		ret = req_reap(q);
		if (ret != 0)
			return ret < 0 ? ret : 0;
		cpu_relax();
	}
	ret = qcow2_ipc_client_prepare_sleep(q->ipc);
	if (ret == -EAGAIN)
		return 0;
	if (ret < 0) {
		q->broken = true;
		return q2c_err(ret, "queue %d: qcow2d found the queue broken", q->index);
	}
	if (deadline) {
		ts_now(&now);
		left = ts_left(deadline, &now);
	}
	do
		n = ppoll(p, 2, deadline ? &left : NULL, NULL);
	while (n < 0 && errno == EINTR && !deadline);
	/* A signal with a deadline: the caller looks at the time again. */
	ret = n < 0 && errno != EINTR ? -errno : 0;
	if (qcow2_ipc_client_woken(q->ipc) < 0) {
		q->broken = true;
		return q2c_err(-EPROTO, "queue %d: qcow2d found the queue broken", q->index);
	}
	if (ret < 0)
		return q2c_err(ret, "queue %d: poll: %s", q->index,
			       q2c_strerror(ret, eb, sizeof(eb)));
	if (n > 0 && p[1].revents && (ret = check_conn(q)) < 0)
		return ret;
	return n == 0 ? -ETIME : 0;
}

/* Hands back up to max completions; their messages are copied where they
 * stay until the next call. */
static int hand_back(struct q2c_queue *q, struct q2c_completion *out, int max)
{
	int n = 0;
	size_t need = 0, at = 0;
	struct q2c_req *r = q->done.head;

	for (int i = 0; i < max && r; i++, r = r->next)
		if (r->msg)
			need += strlen(r->msg) + 1;
	if (need > q->msgs_cap) {
		char *m = realloc(q->msgs, need);
		if (m) {
			q->msgs = m;
			q->msgs_cap = need;
		}
	}
	while (n < max && (r = req_list_pop(&q->done))) {
		struct q2c_completion *c = &out[n++];
		memset(c, 0, sizeof(*c));
		c->user_data = r->user_data;
		c->ret = r->ret;
		if (r->msg) {
			size_t len = strlen(r->msg) + 1;
			if (at + len <= q->msgs_cap) {
				memcpy(q->msgs + at, r->msg, len);
				c->error_msg = q->msgs + at;
				at += len;
			} else {
				c->error_msg = "(no memory for the message)";
			}
		}
		req_release(q, r);
	}
	return n;
}

static int do_io(struct q2c_queue *q, struct q2c_completion *completions, int min, int max,
		 struct timespec *timeout)
{
	struct timespec deadline, now;
	unsigned outstanding;
	int ret = 0;

	if (min < 0 || max < min || (max > 0 && !completions))
		return q2c_err(-EINVAL, "q2cq_do_io: min_completions %d, max_completions %d%s",
			       min, max, max > 0 && !completions ? ", no array" : "");
	if (timeout && (timeout->tv_sec < 0 || timeout->tv_nsec < 0 ||
			timeout->tv_nsec >= 1000000000))
		return q2c_err(-EINVAL, "q2cq_do_io: a bad timeout");
	if (q->broken)
		return q2c_err(-EPROTO, "queue %d is broken", q->index);
	if (q->dead)
		return q2c_err(-ECONNRESET, "queue %d: qcow2d is gone (q2c_reconnect())",
			       q->index);
	if (q->lost) {
		unsigned lost = q->lost;
		q->lost = 0;
		return q2c_err(-ENOMEM, "queue %d: %u requests were dropped for lack of memory",
			       q->index, lost);
	}
	outstanding = q->pending.n + q->in_flight + q->done.n;
	if ((unsigned)min > outstanding)
		return q2c_err(-EINVAL, "q2cq_do_io: min_completions %d is more than the %u "
			       "requests outstanding", min, outstanding);
	if (timeout) {
		ts_now(&deadline);
		deadline.tv_sec += timeout->tv_sec;
		deadline.tv_nsec += timeout->tv_nsec;
		if (deadline.tv_nsec >= 1000000000) {
			deadline.tv_nsec -= 1000000000;
			deadline.tv_sec++;
		}
	}
	for (;;) {
		int reaped;
		if ((ret = req_submit_pending(q)) < 0)
			break;
		if ((reaped = ret = req_reap(q)) < 0)
			break;
		/* FUA writes that completed became flushes: send them now,
		 * whatever the caller does next. */
		if (reaped && q->pending.n && (ret = req_submit_pending(q)) < 0)
			break;
		ret = 0;
		if (q->done.n >= (unsigned)min) {
			/* Nothing for a while with requests in flight: look
			 * for a hang-up now and then (one syscall). */
			if (!reaped && !q->done.n && q->in_flight && ++q->idle_calls % 1024 == 0)
				ret = check_conn(q);
			break;
		}
		if (timeout) {
			ts_now(&now);
			struct timespec left = ts_left(&deadline, &now);
			if (left.tv_sec == 0 && left.tv_nsec == 0) {
				ret = q2c_err(-ETIME, "q2cq_do_io: the timeout passed with %u of "
					      "%d completions", q->done.n, min);
				break;
			}
		}
		ret = queue_wait(q, timeout ? &deadline : NULL);
		if (ret == -ETIME)
			ret = q2c_err(-ETIME, "q2cq_do_io: the timeout passed with %u of %d "
				      "completions", q->done.n, min);
		if (ret < 0)
			break;
	}
	if (ret == 0) {
		q->idle_calls = 0;
		ret = hand_back(q, completions, max);
	}
	if (timeout) {
		ts_now(&now);
		*timeout = ts_left(&deadline, &now);
	}
	if (q->fd_enabled && !q->broken && !q->dead)
		arm_fd(q);
	return ret;
}

int q2cq_do_io(struct q2c_queue *q, struct q2c_completion *completions, int min_completions,
	       int max_completions, struct timespec *timeout)
{
	int saved = errno;
	int ret = q ? do_io(q, completions, min_completions, max_completions, timeout)
		    : q2c_err(-EINVAL, "q2cq_do_io: no queue");

	errno = saved;
	return ret;
}

int q2cq_get_completion_fd(struct q2c_queue *q)
{
	return q ? qcow2_ipc_client_call_fd(q->ipc) : -EINVAL;
}

void q2cq_set_completion_fd_enabled(struct q2c_queue *q, bool enable)
{
	int saved = errno;

	if (!q || q->fd_enabled == enable)
		goto out;
	q->fd_enabled = enable;
	if (enable)
		arm_fd(q);
	else
		qcow2_ipc_client_woken(q->ipc);     /* clears cq_need_wakeup */
out:
	errno = saved;
}

void queue_destroy(struct q2c_queue *q, int wait_ms)
{
	struct timespec deadline;
	struct q2c_req *r;

	if (!q)
		return;
	/* What is in flight may still read or write the caller's memory:
	 * wait for it (bounded), copying nothing out. */
	q->abandon = true;
	if (q->ipc && q->sock >= 0 && !q->dead && !q->broken && q->in_flight && wait_ms > 0) {
		ts_now(&deadline);
		deadline.tv_sec += wait_ms / 1000;
		deadline.tv_nsec += (wait_ms % 1000) * 1000000L;
		if (deadline.tv_nsec >= 1000000000) {
			deadline.tv_nsec -= 1000000000;
			deadline.tv_sec++;
		}
		while (q->in_flight && queue_wait(q, &deadline) == 0)
			;
	}
	if (q->sock >= 0)
		close(q->sock);
	qcow2_ipc_client_free(q->ipc);
	bounce_fini(&q->bounce);
	while ((r = q->overflow)) {
		q->overflow = r->ov_next;
		if (r->iov != &r->iov1)
			free(r->iov);
		free(r);
	}
	free(q->slots);
	free(q->slot_iov);
	free(q->cpl);
	free(q->msgs);
	free(q);
}
