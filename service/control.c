/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * The control socket (main thread): a unix stream socket, one JSON-RPC
 * request or batch per line. Limits keep one client from harming the
 * others: a line longer than CONTROL_MAX_LINE is answered with an error and
 * the connection closed; at CONTROL_MAX_INFLIGHT unanswered calls the
 * connection is not read until some are answered; a client that lets more
 * than CONTROL_MAX_BACKLOG bytes of replies pile up unread is disconnected.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "service.h"

struct conn {
	uv_pipe_t pipe;
	struct svc *svc;
	struct conn *next;
	unsigned id;
	int pid, uid;
	char *buf;
	size_t len, cap;
	unsigned inflight;          /* calls not yet answered */
	unsigned refs;              /* calls + 1 while the handle is open */
	bool reading, in_process;
	unsigned events;            /* events subscribed to (1 << enum svc_event) */
	bool closing;               /* no more reads or replies */
	bool handle_closing;        /* uv_close() called */
	/* conn_hand_over(): called once, with the socket or an error */
	void (*handover)(void *opaque, int fd);
	void *handover_opaque;
};

struct write_req {
	uv_write_t req;
	char *text;
};

static void conn_process(struct conn *c);
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void conn_unref(struct conn *c)
{
	if (--c->refs == 0) {
		free(c->buf);
		free(c);
	}
}

static void on_closed(uv_handle_t *h)
{
	struct conn *c = h->data;
	struct conn **pp = &c->svc->conns;

	while (*pp && *pp != c)
		pp = &(*pp)->next;
	if (*pp) {
		*pp = c->next;
		c->svc->nconns--;
	}
	log_msg(LOG_DEBUG, "connection %u closed", c->id);
	conn_unref(c);
}

static void handover_end(struct conn *c, int fd)
{
	void (*fn)(void *, int) = c->handover;

	c->handover = NULL;
	if (fn)
		fn(c->handover_opaque, fd);
}

static void conn_close(struct conn *c)
{
	if (c->handle_closing)
		return;
	handover_end(c, -ECONNABORTED);
	c->closing = c->handle_closing = true;
	uv_close((uv_handle_t *)&c->pipe, on_closed);
}

/* The reply is written: the socket goes to whoever asked. */
static void handover_now(struct conn *c)
{
	uv_os_fd_t fd;
	int dup_fd = -1;

	if (uv_fileno((uv_handle_t *)&c->pipe, &fd) == 0)
		dup_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
	handover_end(c, dup_fd >= 0 ? dup_fd : -errno);
	conn_close(c);
}

void conn_hand_over(struct conn *c, void (*fn)(void *opaque, int fd),
		    void *opaque)
{
	c->handover = fn;
	c->handover_opaque = opaque;
	if (c->reading) {
		uv_read_stop((uv_stream_t *)&c->pipe);
		c->reading = false;
	}
	if (c->handle_closing)
		handover_end(c, -ECONNABORTED);
	/* else on_written (after the reply) or conn_process (a client that
	 * sent more before reading the reply) ends it */
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
	struct conn *c = req->data;

	(void)status;
	free(req);
	conn_close(c);
}

/* Close once what is queued has been written. */
static void conn_close_after_writes(struct conn *c)
{
	uv_shutdown_t *req = malloc(sizeof(*req));

	if (c->reading) {
		uv_read_stop((uv_stream_t *)&c->pipe);
		c->reading = false;
	}
	if (!req || uv_shutdown(req, (uv_stream_t *)&c->pipe, on_shutdown) < 0) {
		free(req);
		conn_close(c);
		return;
	}
	req->data = c;
	c->closing = true; /* no more reads or replies; on_shutdown closes */
}

void conn_subscribe(struct conn *c, unsigned mask)
{
	c->events = mask;
}

unsigned conn_subscription(const struct conn *c)
{
	/* (a connection becoming a queue's carries nothing but the
	 * attach reply) */
	return c->closing || c->handover ? 0 : c->events;
}

unsigned conn_inflight(const struct conn *c)
{
	return c->inflight;
}

struct conn *conn_next(struct svc *svc, struct conn *prev)
{
	return prev ? prev->next : svc->conns;
}

void conn_peer(const struct conn *c, int *pid, int *uid)
{
	*pid = c->pid;
	*uid = c->uid;
}

static void on_written(uv_write_t *req, int status)
{
	struct write_req *w = (struct write_req *)req;
	struct conn *c = req->handle->data;

	free(w->text);
	free(w);
	if (c->handover && !c->handle_closing &&
	    uv_stream_get_write_queue_size((uv_stream_t *)&c->pipe) == 0) {
		if (status < 0)
			conn_close(c);
		else
			handover_now(c);
	}
}

void conn_send(struct conn *c, char *text)
{
	struct write_req *w;
	size_t n;
	uv_buf_t buf;

	if (c->closing) {
		free(text);
		return;
	}
	n = strlen(text);
	w = malloc(sizeof(*w));
	if (!w || !(w->text = realloc(text, n + 1))) {
		free(w);
		free(text);
		log_msg(LOG_ERROR, "connection %u: out of memory for a reply; "
			"closing it", c->id);
		conn_close(c);
		return;
	}
	w->text[n] = '\n';
	buf = uv_buf_init(w->text, (unsigned)(n + 1));
	if (uv_write(&w->req, (uv_stream_t *)&c->pipe, &buf, 1, on_written) < 0) {
		free(w->text);
		free(w);
		conn_close(c);
		return;
	}
	if (uv_stream_get_write_queue_size((uv_stream_t *)&c->pipe) >
	    CONTROL_MAX_BACKLOG) {
		log_msg(LOG_WARN, "connection %u (pid %d): more than %u bytes of "
			"replies unread; disconnecting it", c->id, c->pid,
			CONTROL_MAX_BACKLOG);
		conn_close(c);
	}
}

void conn_call_started(struct conn *c)
{
	c->inflight++;
	c->refs++;
}

void conn_call_done(struct conn *c)
{
	c->inflight--;
	if (!c->closing && c->inflight < CONTROL_MAX_INFLIGHT)
		conn_process(c);
	conn_unref(c);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	struct conn *c = h->data;
	size_t want = 65536;

	(void)suggested;
	if (c->cap - c->len < want) {
		size_t cap = c->len + want;
		char *p = realloc(c->buf, cap);
		if (!p) {
			*buf = uv_buf_init(NULL, 0); /* UV_ENOBUFS: closes */
			return;
		}
		c->buf = p;
		c->cap = cap;
	}
	*buf = uv_buf_init(c->buf + c->len, (unsigned)(c->cap - c->len));
}

static bool blank(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r')
			return false;
	return true;
}

static void refuse_long_line(struct conn *c)
{
	char *text;

	log_msg(LOG_WARN, "connection %u (pid %d): a request line longer than "
		"%u bytes; closing it", c->id, c->pid, CONTROL_MAX_LINE);
	if (asprintf(&text, "{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":%d,"
		     "\"message\":\"request line longer than %u bytes; the "
		     "connection is closed\"}}", RPC_INVALID_REQUEST,
		     CONTROL_MAX_LINE) >= 0)
		conn_send(c, text);
	c->svc->counters.errors_total++;
	conn_close_after_writes(c);
}

/* Handle the complete lines read, while the connection may take calls. */
static void conn_process(struct conn *c)
{
	size_t start = 0;

	if (c->in_process)
		return; /* a reply inside a handler: the outer loop goes on */
	c->in_process = true;
	while (!c->closing && c->inflight < CONTROL_MAX_INFLIGHT) {
		char *nl = c->len > start ?
				   memchr(c->buf + start, '\n', c->len - start) :
				   NULL;
		size_t n;

		if (!nl) {
			if (c->len - start > CONTROL_MAX_LINE)
				refuse_long_line(c);
			break;
		}
		n = (size_t)(nl - (c->buf + start));
		if (n > CONTROL_MAX_LINE) {
			refuse_long_line(c);
			break;
		}
		if (!blank(c->buf + start, n))
			rpc_handle_line(c->svc, c, c->buf + start, n);
		start += n + 1;
		if (c->handover) {
			/* The connection becomes a queue's: nothing may follow
			 * the request before the client has read the reply. */
			if (c->len > start) {
				log_msg(LOG_WARN, "connection %u (pid %d): data after "
					"queue.attach before its reply was read; "
					"closing it", c->id, c->pid);
				conn_close(c);
			}
			break;
		}
	}
	if (start) {
		memmove(c->buf, c->buf + start, c->len - start);
		c->len -= start;
	}
	c->in_process = false;
	if (c->closing || c->handover)
		return;
	/* Read while the client may send more; pause at the limit. */
	if (c->inflight < CONTROL_MAX_INFLIGHT && !c->reading) {
		if (uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read) == 0)
			c->reading = true;
	} else if (c->inflight >= CONTROL_MAX_INFLIGHT && c->reading) {
		uv_read_stop((uv_stream_t *)&c->pipe);
		c->reading = false;
	}
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	struct conn *c = s->data;

	(void)buf;
	if (nread < 0) {
		if (nread != UV_EOF)
			log_msg(LOG_DEBUG, "connection %u: %s", c->id,
				uv_strerror((int)nread));
		conn_close(c);
		return;
	}
	c->len += (size_t)nread;
	c->refs++; /* a reply may close it while lines are handled */
	conn_process(c);
	conn_unref(c);
}

static void on_connection(uv_stream_t *server, int status)
{
	struct svc *svc = server->data;
	struct conn *c;
	struct ucred cred;
	socklen_t len = sizeof(cred);
	uv_os_fd_t fd;

	if (status < 0) {
		log_msg(LOG_WARN, "accepting a control connection failed: %s",
			uv_strerror(status));
		return;
	}
	c = calloc(1, sizeof(*c));
	if (!c || uv_pipe_init(svc->loop, &c->pipe, 0) < 0) {
		free(c);
		log_msg(LOG_ERROR, "out of memory accepting a connection");
		return;
	}
	c->svc = svc;
	c->pipe.data = c;
	c->refs = 1;
	c->id = (unsigned)++svc->counters.connections_total;
	c->next = svc->conns;
	svc->conns = c;
	svc->nconns++;
	if (uv_accept(server, (uv_stream_t *)&c->pipe) < 0) {
		conn_close(c);
		return;
	}
	c->pid = c->uid = -1;
	if (uv_fileno((uv_handle_t *)&c->pipe, &fd) == 0 &&
	    getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
		c->pid = cred.pid;
		c->uid = (int)cred.uid;
	}
	if (svc->nconns > CONTROL_MAX_CONNS) {
		svc->counters.connections_refused++;
		log_msg(LOG_WARN, "connection %u from pid %d uid %d refused: "
			"already %u connections", c->id, c->pid, c->uid,
			CONTROL_MAX_CONNS);
		conn_close(c);
		return;
	}
	log_msg(LOG_INFO, "connection %u from pid %d uid %d", c->id, c->pid,
		c->uid);
	conn_process(c); /* starts reading */
}

/* Make the socket's directory (0750) if missing, and clear a stale socket:
 * refuse to take over one a live service answers on. */
static int prepare_path(const char *path)
{
	char *dir = strdup(path), *slash;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct stat st;
	int fd, ret = 0;

	if (!dir)
		return -ENOMEM;
	slash = strrchr(dir, '/');
	if (slash && slash != dir) {
		*slash = '\0';
		if (mkdir(dir, 0750) < 0 && errno != EEXIST) {
			ret = -errno;
			log_msg(LOG_ERROR, "cannot create the socket's directory %s: %s",
				dir, strerror(errno));
		}
	}
	free(dir);
	if (ret < 0)
		return ret;
	if (strlen(path) >= sizeof(sa.sun_path)) {
		log_msg(LOG_ERROR, "socket path %s is too long (at most %zu bytes)",
			path, sizeof(sa.sun_path) - 1);
		return -ENAMETOOLONG;
	}
	if (lstat(path, &st) < 0)
		return 0;
	if (!S_ISSOCK(st.st_mode)) {
		log_msg(LOG_ERROR, "%s exists and is not a socket; remove it or "
			"choose another --socket", path);
		return -EEXIST;
	}
	memcpy(sa.sun_path, path, strlen(path) + 1);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
		close(fd);
		log_msg(LOG_ERROR, "another qcow2d is listening on %s; stop it or "
			"choose another --socket", path);
		return -EADDRINUSE;
	}
	ret = fd < 0 ? -EMFILE : -errno;
	if (fd >= 0)
		close(fd);
	if (ret != -ECONNREFUSED) {
		/* (EACCES, say: a live service's socket we may not use) */
		log_msg(LOG_ERROR, "cannot tell whether a qcow2d listens on %s (%s); "
			"remove it if none does, or choose another --socket", path,
			strerror(-ret));
		return ret;
	}
	unlink(path); /* stale: its service is gone */
	return 0;
}

int control_listen(struct svc *svc)
{
	const char *path = svc->cfg.socket_path;
	int ret = prepare_path(path);
	mode_t old;

	if (ret < 0)
		return ret;
	ret = uv_pipe_init(svc->loop, &svc->listener, 0);
	if (ret < 0)
		return ret;
	svc->listener.data = svc;
	/* 0660 from the start: no moment where others may connect */
	old = umask(0117);
	ret = uv_pipe_bind(&svc->listener, path);
	umask(old);
	if (ret == 0)
		ret = uv_listen((uv_stream_t *)&svc->listener, 128, on_connection);
	if (ret < 0) {
		log_msg(LOG_ERROR, "cannot listen on %s: %s", path, uv_strerror(ret));
		uv_close((uv_handle_t *)&svc->listener, NULL);
		return ret;
	}
	log_msg(LOG_INFO, "listening on %s", path);
	return 0;
}

void control_close_all(struct svc *svc)
{
	if (!uv_is_closing((uv_handle_t *)&svc->listener))
		uv_close((uv_handle_t *)&svc->listener, NULL);
	for (struct conn *c = svc->conns; c; c = c->next)
		conn_close(c);
}
