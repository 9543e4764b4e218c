/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * --metrics-listen ADDR:PORT: GET /metrics over HTTP for a Prometheus
 * scraper, the same text as service.metrics (metrics_gather()).
 *
 * libmicrohttpd runs on the main thread's libuv loop, without threads of
 * its own: started with MHD_USE_EPOLL, its epoll descriptor is watched by a
 * uv_poll_t and its next timeout (MHD_get_timeout) by a uv_timer_t; both
 * call MHD_run(), which never blocks. A scrape starts a gather (a message
 * to every open image's home worker), suspends its connection and returns;
 * the gather's end resumes the connection, and MHD calls the handler again,
 * which queues the answer. The listening socket is made here (bound to the
 * address given and nothing else, with errors that say what to do) and
 * handed to MHD.
 *
 * Limits: METRICS_HTTP_MAX_CONNS connections; one that makes no progress
 * for METRICS_HTTP_TIMEOUT_S seconds is dropped (a suspended one does not
 * time out, but its gather ends as soon as the workers have answered).
 *
 * Stopping: svc_stop closes the listening socket (metrics_http_quiesce);
 * once the images are closed, metrics_http_stop() answers 503 to any
 * request still waiting for a gather (cancelled: its late end touches
 * nothing here), lets the answers already made go out for at most
 * METRICS_HTTP_STOP_MS, then stops MHD (no connection is suspended by
 * then: MHD may not be stopped with one) and closes the handles.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>

#include "service.h"

struct http_req {
	struct metrics_http *h;
	struct MHD_Connection *conn;
	struct http_req *prev, *next;   /* h->waiting, while suspended */
	struct metrics_gather *gather;  /* while it runs */
	char *text;                     /* the gather's text, until answered */
	size_t len;
	int err;
	bool get, head;                 /* HEAD: the same answer, no body */
	bool suspended;
	bool gathered;                  /* the gather has ended */
	bool busy;                      /* counted in h->busy */
	uint64_t start_ns;
};

struct metrics_http {
	struct svc *svc;
	struct MHD_Daemon *d;
	uv_poll_t poll;                 /* MHD's epoll descriptor */
	uv_timer_t timer;               /* MHD's next timeout */
	uv_timer_t grace;               /* the stop's bound */
	unsigned open_handles;
	struct http_req *waiting;       /* suspended until their gather ends */
	unsigned busy;                  /* requests answered (or waiting) whose
					 * answer has not gone out yet */
	bool quiesced, stopping, finished;
	void (*stopped)(struct svc *svc);
	char where[INET6_ADDRSTRLEN + 32]; /* "http://ADDR:PORT/metrics" */
};

/* ---- the address ---------------------------------------------------------- */

int metrics_listen_parse(const char *s, struct sockaddr_storage *ss,
			 socklen_t *sslen, char *msg, size_t msglen)
{
	char host[INET6_ADDRSTRLEN];
	const char *port, *end;
	size_t n;
	unsigned long p = 0;

	memset(ss, 0, sizeof(*ss));
	if (s[0] == '[') {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;

		end = strchr(s, ']');
		if (!end || end[1] != ':')
			goto bad;
		n = (size_t)(end - s - 1);
		port = end + 2;
		if (n == 0 || n >= sizeof(host))
			goto bad;
		memcpy(host, s + 1, n);
		host[n] = '\0';
		if (inet_pton(AF_INET6, host, &sin6->sin6_addr) != 1)
			goto bad;
		sin6->sin6_family = AF_INET6;
		*sslen = sizeof(*sin6);
	} else {
		struct sockaddr_in *sin = (struct sockaddr_in *)ss;

		end = strrchr(s, ':');
		if (!end)
			goto bad;
		n = (size_t)(end - s);
		port = end + 1;
		if (n == 0 || n >= sizeof(host))
			goto bad;
		memcpy(host, s, n);
		host[n] = '\0';
		if (inet_pton(AF_INET, host, &sin->sin_addr) != 1)
			goto bad;
		sin->sin_family = AF_INET;
		*sslen = sizeof(*sin);
	}
	/* digits only: no sign, no blanks, at most 65535 */
	if (!*port || strlen(port) > 5)
		goto bad;
	for (const char *c = port; *c; c++) {
		if (*c < '0' || *c > '9')
			goto bad;
		p = p * 10 + (unsigned long)(*c - '0');
	}
	if (p > 65535)
		goto bad;
	if (ss->ss_family == AF_INET6)
		((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)p);
	else
		((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)p);
	return 0;
bad:
	snprintf(msg, msglen, "expected IPV4:PORT or [IPV6]:PORT, a numeric "
		 "address (no host name) and a port from 0 to 65535 (0: a free "
		 "one, which the log names), e.g. 127.0.0.1:9560 or [::1]:9560; "
		 "got '%s'", s);
	return -EINVAL;
}

/* "A.B.C.D:PORT" or "[IPV6]:PORT". */
static void format_addr(const struct sockaddr *sa, char *buf, size_t len)
{
	char host[INET6_ADDRSTRLEN];

	if (sa && sa->sa_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
		inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
		snprintf(buf, len, "%s:%u", host, ntohs(sin->sin_port));
	} else if (sa && sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
		inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
		snprintf(buf, len, "[%s]:%u", host, ntohs(sin6->sin6_port));
	} else {
		snprintf(buf, len, "?");
	}
}

static void peer(struct MHD_Connection *conn, char *buf, size_t len)
{
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);

	format_addr(ci ? ci->client_addr : NULL, buf, len);
}

/* ---- driving MHD from the loop ------------------------------------------- */

static void http_finish(struct metrics_http *h);

static unsigned connections(struct metrics_http *h)
{
	const union MHD_DaemonInfo *i =
		MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);

	return i ? i->num_connections : 0;
}

static void on_timer(uv_timer_t *t);

/* Run MHD (it never blocks here) and wake up again at its next timeout. */
static void http_run(struct metrics_http *h)
{
	MHD_UNSIGNED_LONG_LONG ms;
	unsigned before, after;

	if (h->finished)
		return;
	/* At its connection limit MHD takes its listening socket out of its
	 * epoll set, and puts it back only at the start of a run: after a run
	 * that closed connections, run again, or nothing would wake us to
	 * accept the next one. */
	do {
		before = connections(h);
		MHD_run(h->d);
		after = connections(h);
	} while (after < before);
	if (h->stopping && h->busy == 0) {
		http_finish(h);
		return;
	}
	if (MHD_get_timeout(h->d, &ms) == MHD_YES)
		uv_timer_start(&h->timer, on_timer, (uint64_t)ms, 0);
	else
		uv_timer_stop(&h->timer);
}

static void on_timer(uv_timer_t *t)
{
	http_run(t->data);
}

static void on_poll(uv_poll_t *p, int status, int events)
{
	(void)events;
	if (status < 0)
		log_msg(LOG_WARN, "metrics: polling the HTTP server: %s",
			uv_strerror(status));
	http_run(p->data);
}

/* Run MHD soon (from the loop, never inside one of its callbacks). */
static void http_kick(struct metrics_http *h)
{
	if (!h->finished)
		uv_timer_start(&h->timer, on_timer, 0, 0);
}

__attribute__((format(printf, 2, 0)))
static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
	char buf[512];
	size_t n;

	(void)cls;
	vsnprintf(buf, sizeof(buf), fmt, ap);
	n = strlen(buf);
	while (n && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
		buf[--n] = '\0';
	log_msg(LOG_WARN, "metrics: libmicrohttpd: %s", buf);
}

/* ---- requests --------------------------------------------------------------- */

static void waiting_remove(struct http_req *r)
{
	if (r->prev)
		r->prev->next = r->next;
	else
		r->h->waiting = r->next;
	if (r->next)
		r->next->prev = r->prev;
	r->prev = r->next = NULL;
	r->suspended = false;
}

static void mark_busy(struct http_req *r)
{
	if (!r->busy) {
		r->busy = true;
		r->h->busy++;
	}
}

static enum MHD_Result queue(struct http_req *r, unsigned status,
			     struct MHD_Response *resp, const char *type,
			     size_t len)
{
	char who[INET6_ADDRSTRLEN + 16];
	enum MHD_Result ret;

	if (!resp) {
		log_msg(LOG_WARN, "metrics: out of memory for an answer; closing "
			"its connection");
		return MHD_NO;
	}
	if (MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type) !=
	    MHD_YES ||
	    (status == MHD_HTTP_METHOD_NOT_ALLOWED &&
	     MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, "GET, HEAD") !=
	     MHD_YES) ||
	    (status == MHD_HTTP_SERVICE_UNAVAILABLE &&
	     MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close") !=
	     MHD_YES)) {
		MHD_destroy_response(resp);
		return MHD_NO;
	}
	ret = MHD_queue_response(r->conn, status, resp);
	MHD_destroy_response(resp);
	if (ret == MHD_YES)
		mark_busy(r);
	peer(r->conn, who, sizeof(who));
	log_msg(LOG_DEBUG, "metrics: %s from %s: %u, %zu bytes in %.1f ms",
		r->get ? "GET" : r->head ? "HEAD" : "a request", who, status, len,
		(double)(now_ns() - r->start_ns) / 1e6);
	return ret;
}

static enum MHD_Result answer_text(struct http_req *r, unsigned status,
				   const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static enum MHD_Result answer_text(struct http_req *r, unsigned status,
				   const char *fmt, ...)
{
	char text[256];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	if (n < 0)
		return MHD_NO;
	if ((size_t)n >= sizeof(text))
		n = (int)sizeof(text) - 1;
	return queue(r, status,
		     MHD_create_response_from_buffer((size_t)n, text,
						     MHD_RESPMEM_MUST_COPY),
		     "text/plain; charset=utf-8", (size_t)n);
}

static enum MHD_Result answer_metrics(struct http_req *r)
{
	struct MHD_Response *resp;
	char *text = r->text;
	size_t len = r->len;

	if (r->err < 0)
		return answer_text(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "qcow2d could "
				   "not write the metrics: %s\n", strerror(-r->err));
	r->text = NULL;
	resp = MHD_create_response_from_buffer_with_free_callback(len, text, free);
	if (!resp)
		free(text);
	return queue(r, MHD_HTTP_OK, resp, METRICS_CONTENT_TYPE, len);
}

static void on_gathered(void *opaque, int err, char *text, size_t len)
{
	struct http_req *r = opaque;

	r->gather = NULL;
	r->gathered = true;
	r->err = err;
	r->text = text;
	r->len = len;
	if (r->suspended) {
		waiting_remove(r);
		MHD_resume_connection(r->conn);
		http_kick(r->h);
	}
	/* (not suspended: it ended inside metrics_gather(), in on_request) */
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn,
				  const char *url, const char *method,
				  const char *version, const char *upload_data,
				  size_t *upload_data_size, void **req_cls)
{
	struct metrics_http *h = cls;
	struct http_req *r = *req_cls;

	(void)version;
	(void)upload_data;
	if (!r) {
		/* The first call: the request's headers are in. */
		r = calloc(1, sizeof(*r));
		if (!r) {
			log_msg(LOG_WARN, "metrics: out of memory for a request; "
				"closing its connection");
			return MHD_NO;
		}
		r->h = h;
		r->conn = conn;
		r->start_ns = now_ns();
		r->get = !strcmp(method, MHD_HTTP_METHOD_GET);
		r->head = !strcmp(method, MHD_HTTP_METHOD_HEAD);
		*req_cls = r;
		if (strcmp(url, "/metrics") != 0)
			return answer_text(r, MHD_HTTP_NOT_FOUND, "Not found: qcow2d "
					   "serves /metrics only.\n");
		if (!r->get && !r->head)
			return answer_text(r, MHD_HTTP_METHOD_NOT_ALLOWED, "Method not "
					   "allowed: /metrics takes GET or HEAD.\n");
		return MHD_YES; /* the last call (after any body) answers */
	}
	if (*upload_data_size) {
		*upload_data_size = 0; /* a GET's body: taken, ignored */
		return MHD_YES;
	}
	if (r->gathered)
		return answer_metrics(r); /* resumed */
	if (h->stopping)
		return answer_text(r, MHD_HTTP_SERVICE_UNAVAILABLE, "qcow2d is "
				   "stopping.\n");
	r->gather = metrics_gather(h->svc, on_gathered, r);
	if (r->gathered)
		return answer_metrics(r); /* ended at once: no image to ask */
	MHD_suspend_connection(conn);
	r->suspended = true;
	r->next = h->waiting;
	if (h->waiting)
		h->waiting->prev = r;
	h->waiting = r;
	mark_busy(r);
	return MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *conn,
			 void **req_cls, enum MHD_RequestTerminationCode toe)
{
	struct metrics_http *h = cls;
	struct http_req *r = *req_cls;

	if (!r)
		return;
	*req_cls = NULL;
	if (r->gather)
		metrics_gather_cancel(r->gather);
	if (r->suspended)
		waiting_remove(r); /* (MHD ends no suspended request) */
	if (r->busy)
		h->busy--;
	if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK &&
	    toe != MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN) {
		char who[INET6_ADDRSTRLEN + 16];

		peer(conn, who, sizeof(who));
		log_msg(LOG_DEBUG, "metrics: a request from %s ended unanswered "
			"or unsent (%s)", who,
			toe == MHD_REQUEST_TERMINATED_TIMEOUT_REACHED ? "timeout" :
			toe == MHD_REQUEST_TERMINATED_CLIENT_ABORT ? "the client went" :
			"an error");
	}
	free(r->text);
	free(r);
}

/* ---- start and stop ------------------------------------------------------- */

static const char *bind_hint(int err)
{
	switch (err) {
	case EADDRINUSE:
		return "another program (or another qcow2d) listens there: stop it "
		       "or choose another port";
	case EADDRNOTAVAIL:
		return "the address is not one of this host's: give one it has "
		       "(127.0.0.1 or [::1] for this host only)";
	case EACCES:
		return "ports below 1024 need CAP_NET_BIND_SERVICE: choose a port "
		       "from 1024 up";
	case EAFNOSUPPORT:
	case EPERM:
		return "the network is closed to qcow2d (under systemd, "
		       "qcow2d.service says what a drop-in must allow)";
	default:
		return "check the address and port";
	}
}

int metrics_http_start(struct svc *svc)
{
	const char *spec = svc->cfg.metrics_listen;
	struct sockaddr_storage ss, bound;
	socklen_t sslen, blen = sizeof(bound);
	char msg[320], addr[INET6_ADDRSTRLEN + 16];
	const union MHD_DaemonInfo *info;
	struct metrics_http *h;
	int fd, one = 1, err;

	if (!spec)
		return 0;
	if (metrics_listen_parse(spec, &ss, &sslen, msg, sizeof(msg)) < 0) {
		log_msg(LOG_ERROR, "--metrics-listen: %s", msg);
		return -EINVAL;
	}
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		err = errno;
		log_msg(LOG_ERROR, "cannot listen for metrics on %s: %s; %s", spec,
			strerror(err), bind_hint(err));
		return -err;
	}
	/* SO_REUSEADDR: a restart need not wait for the last scrape's
	 * TIME_WAIT (a port another socket listens on is still refused);
	 * IPV6_V6ONLY: [::] is IPv6's any address, not IPv4's too. */
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (ss.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&ss, sslen) < 0 ||
	    listen(fd, METRICS_HTTP_MAX_CONNS) < 0 ||
	    getsockname(fd, (struct sockaddr *)&bound, &blen) < 0) {
		err = errno;
		log_msg(LOG_ERROR, "cannot listen for metrics on %s: %s; %s", spec,
			strerror(err), bind_hint(err));
		close(fd);
		return -err;
	}
	h = calloc(1, sizeof(*h));
	if (!h) {
		close(fd);
		log_msg(LOG_ERROR, "out of memory");
		return -ENOMEM;
	}
	h->svc = svc;
	format_addr((struct sockaddr *)&bound, addr, sizeof(addr));
	snprintf(h->where, sizeof(h->where), "http://%s/metrics", addr);
	h->d = MHD_start_daemon(
		MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG |
		(ss.ss_family == AF_INET6 ? MHD_USE_IPv6 : 0),
		0, NULL, NULL, on_request, h,
		MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, h, /* first, or MHD says so */
		MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd,
		MHD_OPTION_CONNECTION_LIMIT, (unsigned)METRICS_HTTP_MAX_CONNS,
		MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)METRICS_HTTP_TIMEOUT_S,
		MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
		MHD_OPTION_END);
	info = h->d ? MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_EPOLL_FD) : NULL;
	if (!info) {
		log_msg(LOG_ERROR, "cannot start the metrics HTTP server on %s "
			"(libmicrohttpd's reason is above)", spec);
		if (h->d)
			MHD_stop_daemon(h->d); /* closes fd */
		else if (fcntl(fd, F_GETFD) >= 0)
			close(fd); /* (MHD closes it on some failures, not all) */
		free(h);
		return -EIO;
	}
	uv_poll_init(svc->loop, &h->poll, info->epoll_fd);
	uv_timer_init(svc->loop, &h->timer);
	uv_timer_init(svc->loop, &h->grace);
	h->poll.data = h->timer.data = h->grace.data = h;
	h->open_handles = 3;
	uv_poll_start(&h->poll, UV_READABLE, on_poll);
	svc->http = h;
	log_msg(LOG_INFO, "metrics: serving %s", h->where);
	http_kick(h);
	return 0;
}

void metrics_http_quiesce(struct svc *svc)
{
	struct metrics_http *h = svc->http;
	MHD_socket fd;

	if (!h || h->quiesced)
		return;
	h->quiesced = true;
	fd = MHD_quiesce_daemon(h->d);
	if (fd != MHD_INVALID_SOCKET)
		close(fd); /* ours again once quiesced */
	log_msg(LOG_DEBUG, "metrics: no longer accepting connections on %s",
		h->where);
}

static void on_handle_closed(uv_handle_t *handle)
{
	struct metrics_http *h = handle->data;

	if (--h->open_handles == 0)
		free(h);
}

/* Stop MHD and close the handles (h is freed once they are closed). */
static void http_finish(struct metrics_http *h)
{
	struct svc *svc = h->svc;
	void (*stopped)(struct svc *svc) = h->stopped;

	h->finished = true;
	/* The poll handle first: MHD_stop_daemon closes the descriptor it
	 * watches. No request is suspended any more (metrics_http_stop). */
	uv_close((uv_handle_t *)&h->poll, on_handle_closed);
	uv_close((uv_handle_t *)&h->timer, on_handle_closed);
	uv_close((uv_handle_t *)&h->grace, on_handle_closed);
	MHD_stop_daemon(h->d); /* ends the requests left: on_completed */
	h->d = NULL;
	svc->http = NULL;
	log_msg(LOG_DEBUG, "metrics: HTTP server stopped");
	if (stopped)
		stopped(svc);
}

static void on_grace(uv_timer_t *t)
{
	struct metrics_http *h = t->data;

	log_msg(LOG_WARN, "metrics: %u answer(s) not sent within %u ms of the "
		"stop; dropping them", h->busy, METRICS_HTTP_STOP_MS);
	http_finish(h);
}

void metrics_http_stop(struct svc *svc, void (*stopped)(struct svc *svc))
{
	struct metrics_http *h = svc->http;
	struct http_req *r;

	if (!h) {
		if (stopped)
			stopped(svc);
		return;
	}
	if (h->stopping)
		return;
	h->stopping = true;
	h->stopped = stopped;
	metrics_http_quiesce(svc);
	/* A request still waiting for its gather gets a 503 (the workers'
	 * answers come before the closes', so none should be waiting); its
	 * gather is cancelled and must not come back here. MHD may not be
	 * stopped with a connection suspended. */
	while ((r = h->waiting)) {
		metrics_gather_cancel(r->gather);
		r->gather = NULL;
		waiting_remove(r);
		MHD_resume_connection(r->conn);
	}
	if (h->busy == 0) {
		http_finish(h);
		return;
	}
	log_msg(LOG_DEBUG, "metrics: stopping: %u answer(s) to send first",
		h->busy);
	uv_timer_start(&h->grace, on_grace, METRICS_HTTP_STOP_MS, 0);
	http_kick(h);
}
