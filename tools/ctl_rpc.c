/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * A blocking JSON-RPC 2.0 client of qcow2d's control socket: one request
 * per line, one reply line per request, in order. Plain socket calls: a
 * command-line tool waits for each reply before it does anything else.
 */
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "ctl.h"

/* Far above any reply qcow2d sends (rpc.discover's document is the
 * largest): a bound on what a broken peer makes us buffer. */
#define CTL_MAX_REPLY (64u << 20)

static void set_msg(struct ctl_conn *c, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void set_msg(struct ctl_conn *c, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(c->msg, sizeof(c->msg), fmt, ap);
	va_end(ap);
}

int ctl_default_socket(char **path, const char **origin)
{
	const char *env = getenv("QCOW2D_SOCKET"), *xdg = getenv("XDG_RUNTIME_DIR");

	/* The same rules, in the same order, as qcow2d's default_socket():
	 * both ends must agree without being told. */
	if (env && *env) {
		*origin = "from $QCOW2D_SOCKET";
		*path = strdup(env);
	} else if (geteuid() == 0) {
		*origin = "root's default";
		*path = strdup("/run/qcow2d/qcow2d.sock");
	} else if (xdg && *xdg) {
		*origin = "from $XDG_RUNTIME_DIR";
		if (asprintf(path, "%s/qcow2d.sock", xdg) < 0)
			*path = NULL;
	} else {
		*origin = NULL;
		*path = NULL;
		return -ENOENT;
	}
	return *path ? 0 : -ENOMEM;
}

int ctl_connect(struct ctl_conn *c, const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd, err;

	c->fd = -1;
	c->len = 0;
	if (strlen(path) >= sizeof(sa.sun_path)) {
		set_msg(c, "socket path %s is too long (at most %zu bytes)", path,
			sizeof(sa.sun_path) - 1);
		return -ENAMETOOLONG;
	}
	memcpy(sa.sun_path, path, strlen(path) + 1);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		err = errno;
		set_msg(c, "cannot create a socket: %s", strerror(err));
		return -err;
	}
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		err = errno;
		set_msg(c, "cannot connect to %s: %s", path, strerror(err));
		close(fd);
		return -err;
	}
	c->fd = fd;
	return 0;
}

void ctl_close(struct ctl_conn *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	free(c->buf);
	c->buf = NULL;
	c->len = c->cap = 0;
}

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait until fd is ready for events, or the deadline (< 0: none). */
static int wait_fd(struct ctl_conn *c, short events, int64_t deadline)
{
	for (;;) {
		struct pollfd p = { .fd = c->fd, .events = events };
		struct timespec ts, *tp = NULL;
		int n;

		if (deadline >= 0) {
			int64_t left = deadline - now_ms();
			if (left <= 0) {
				set_msg(c, "no reply from qcow2d within %d ms (the "
					"request may still complete; --timeout sets the "
					"wait)", c->timeout_ms);
				return -ETIMEDOUT;
			}
			ts.tv_sec = left / 1000;
			ts.tv_nsec = (left % 1000) * 1000000;
			tp = &ts;
		}
		n = ppoll(&p, 1, tp, c->sigmask);
		if (n > 0)
			return 0;
		if (n < 0 && errno == EINTR) {
			/* The caller's stop signal ends the wait; any other
			 * handled signal does not. */
			if (c->stop && *c->stop) {
				set_msg(c, "interrupted");
				return -EINTR;
			}
			continue;
		}
		if (n < 0) {
			int err = errno;
			set_msg(c, "waiting on the control socket: %s", strerror(err));
			return -err;
		}
	}
}

static int send_all(struct ctl_conn *c, const char *p, size_t n,
		    int64_t deadline)
{
	while (n) {
		/* MSG_NOSIGNAL: a service that went away is an error to
		 * report, not a SIGPIPE that kills us silently. */
		ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
		int ret;

		if (w > 0) {
			p += w;
			n -= (size_t)w;
			continue;
		}
		if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			if ((ret = wait_fd(c, POLLOUT, deadline)) < 0)
				return ret;
			continue;
		}
		if (w < 0 && errno == EINTR)
			continue;
		ret = errno;
		set_msg(c, "sending the request: %s%s", strerror(ret),
			ret == EPIPE || ret == ECONNRESET ?
				" (qcow2d closed the connection)" : "");
		return -ret;
	}
	return 0;
}

/* One line from the socket, without its '\n', into *line (malloc'd). */
static int read_line(struct ctl_conn *c, char **line, int64_t deadline)
{
	for (;;) {
		char *nl = c->len ? memchr(c->buf, '\n', c->len) : NULL;
		ssize_t r;
		int ret;

		if (nl) {
			size_t n = (size_t)(nl - c->buf);
			if (!(*line = malloc(n + 1))) {
				set_msg(c, "out of memory");
				return -ENOMEM;
			}
			memcpy(*line, c->buf, n);
			(*line)[n] = '\0';
			/* Keep what follows: a later reply's start. */
			memmove(c->buf, nl + 1, c->len - n - 1);
			c->len -= n + 1;
			return 0;
		}
		if (c->len >= CTL_MAX_REPLY) {
			set_msg(c, "a reply longer than %u bytes: not qcow2d?",
				CTL_MAX_REPLY);
			return -EPROTO;
		}
		if (c->cap - c->len < 65536) {
			size_t cap = c->cap ? c->cap * 2 : 65536;
			char *p = realloc(c->buf, cap);
			if (!p) {
				set_msg(c, "out of memory");
				return -ENOMEM;
			}
			c->buf = p;
			c->cap = cap;
		}
		r = recv(c->fd, c->buf + c->len, c->cap - c->len, MSG_DONTWAIT);
		if (r > 0) {
			c->len += (size_t)r;
			continue;
		}
		if (r == 0) {
			set_msg(c, "qcow2d closed the connection before it replied "
				"(see its log)");
			return -ECONNRESET;
		}
		if (errno == EAGAIN || errno == EWOULDBLOCK) {
			if ((ret = wait_fd(c, POLLIN, deadline)) < 0)
				return ret;
			continue;
		}
		if (errno == EINTR)
			continue;
		ret = errno;
		set_msg(c, "reading the reply: %s", strerror(ret));
		return -ret;
	}
}

int ctl_call(struct ctl_conn *c, const char *method, json_t *params,
	     json_t **result, json_t **error)
{
	int64_t deadline = c->timeout_ms > 0 ? now_ms() + c->timeout_ms : -1;
	unsigned id = ++c->next_id;
	json_t *req, *rep = NULL, *rid, *ver;
	json_error_t jerr;
	char *text, *line = NULL;
	int ret;

	*result = *error = NULL;
	req = json_pack("{s:s, s:I, s:s}", "jsonrpc", "2.0", "id", (json_int_t)id,
			"method", method);
	if (req && params && json_object_set_new(req, "params", params) < 0) {
		json_decref(req);
		req = NULL;
	} else if (!req) {
		json_decref(params);
	}
	text = req ? json_dumps(req, JSON_COMPACT) : NULL;
	json_decref(req);
	if (!text) {
		set_msg(c, "out of memory");
		return -ENOMEM;
	}
	ret = send_all(c, text, strlen(text), deadline);
	if (ret == 0)
		ret = send_all(c, "\n", 1, deadline);
	free(text);
	if (ret < 0)
		return ret;
	ret = read_line(c, &line, deadline);
	if (ret < 0)
		return ret;
	rep = json_loads(line, JSON_REJECT_DUPLICATES, &jerr);
	if (!rep) {
		set_msg(c, "the reply is not JSON (column %d: %s): not qcow2d?",
			jerr.column, jerr.text);
		free(line);
		return -EPROTO;
	}
	free(line);
	rid = json_object_get(rep, "id");
	ver = json_object_get(rep, "jsonrpc");
	*result = json_incref(json_object_get(rep, "result"));
	*error = json_incref(json_object_get(rep, "error"));
	ret = 0;
	if (!json_is_object(rep) || !json_is_string(ver) ||
	    strcmp(json_string_value(ver), "2.0") ||
	    (*result != NULL) == (*error != NULL)) {
		set_msg(c, "the reply is not a JSON-RPC 2.0 response: not qcow2d?");
		ret = -EPROTO;
	} else if (*error && !json_is_object(*error)) {
		set_msg(c, "the reply's error is not an object: not qcow2d?");
		ret = -EPROTO;
	} else if (!(json_is_integer(rid) &&
		     json_integer_value(rid) == (json_int_t)id) &&
		   !(*error && json_is_null(rid))) {
		/* id null: an error about the line itself (it did not parse,
		 * or was too long), which is ours: we send one at a time. */
		set_msg(c, "a reply to another request (id %lld, ours %u): not "
			"qcow2d?", (long long)json_integer_value(rid), id);
		ret = -EPROTO;
	}
	json_decref(rep);
	if (ret < 0) {
		json_decref(*result);
		json_decref(*error);
		*result = *error = NULL;
	}
	return ret;
}

int ctl_read_message(struct ctl_conn *c, json_t **msg)
{
	char *line = NULL;
	json_error_t jerr;
	int ret = read_line(c, &line, -1);

	*msg = NULL;
	if (ret < 0)
		return ret;
	*msg = json_loads(line, JSON_REJECT_DUPLICATES, &jerr);
	free(line);
	if (!*msg) {
		set_msg(c, "a message that is not JSON (column %d: %s): not qcow2d?",
			jerr.column, jerr.text);
		return -EPROTO;
	}
	return 0;
}

const char *ctl_error_class(json_t *error, char *buf, size_t len)
{
	static const struct {
		int code;
		const char *name;
	} codes[] = {
		{ -32700, "ParseError" },     { -32600, "InvalidRequest" },
		{ -32601, "MethodNotFound" }, { -32602, "InvalidParams" },
		{ -32603, "InternalError" },
	};
	json_t *cls = json_object_get(json_object_get(error, "data"), "class");
	json_int_t code = json_integer_value(json_object_get(error, "code"));

	if (json_is_string(cls))
		return json_string_value(cls);
	for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
		if (codes[i].code == code)
			return codes[i].name;
	snprintf(buf, len, "code %lld", (long long)code);
	return buf;
}
