/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * rpc.c: JSON-RPC 2.0 on qcow2d's control socket, one call at a time per
 * connection: a request line, then its reply line. The reply is read up
 * to its newline and never past it, because after queue.attach's reply
 * the same socket carries the ipc handshake.
 */
#include "client.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* Far above any reply qcow2d sends (rpc.discover's document is the
 * largest): a bound on what a broken peer makes us buffer. */
#define RPC_MAX_LINE (64u << 20)

int rpc_default_socket(char **path)
{
	const char *env = getenv("QCOW2D_SOCKET"), *xdg = getenv("XDG_RUNTIME_DIR");

	/* The same rules, in the same order, as qcow2d's and qcow2ctl's. */
	if (env && *env)
		*path = strdup(env);
	else if (geteuid() == 0)
		*path = strdup("/run/qcow2d/qcow2d.sock");
	else if (xdg && *xdg) {
		if (asprintf(path, "%s/qcow2d.sock", xdg) < 0)
			*path = NULL;
	} else {
		return q2c_err(-ENOENT, "no qcow2d socket: set the \"socket\" property, "
			       "or QCOW2D_SOCKET (or XDG_RUNTIME_DIR)");
	}
	return *path ? 0 : q2c_err(-ENOMEM, "out of memory");
}

int rpc_connect(const char *path, int *out)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char eb[128];
	int fd, err;

	if (strlen(path) >= sizeof(sa.sun_path))
		return q2c_err(-ENAMETOOLONG, "socket path %s is too long (at most %zu bytes)",
			       path, sizeof(sa.sun_path) - 1);
	memcpy(sa.sun_path, path, strlen(path) + 1);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return q2c_err(-errno, "cannot create a socket: %s",
			       q2c_strerror(errno, eb, sizeof(eb)));
	while (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		if (errno == EINTR)
			continue;
		err = errno;
		close(fd);
		return q2c_err(-err, "cannot connect to qcow2d at %s: %s", path,
			       q2c_strerror(err, eb, sizeof(eb)));
	}
	*out = fd;
	return 0;
}

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int wait_fd(int fd, short events, int64_t deadline)
{
	char eb[128];

	for (;;) {
		struct pollfd p = { .fd = fd, .events = events };
		int64_t left = deadline - now_ms();
		int n;

		if (left <= 0)
			return q2c_err(-ETIMEDOUT, "qcow2d did not answer in time");
		n = poll(&p, 1, left > INT32_MAX ? INT32_MAX : (int)left);
		if (n > 0)
			return 0;
		if (n < 0 && errno != EINTR)
			return q2c_err(-errno, "waiting for qcow2d: %s",
				       q2c_strerror(errno, eb, sizeof(eb)));
	}
}

static int send_all(int fd, const char *buf, size_t len, int64_t deadline)
{
	char eb[128];

	while (len) {
		ssize_t n = send(fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n > 0) {
			buf += n;
			len -= (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN) {
			int err = wait_fd(fd, POLLOUT, deadline);
			if (err < 0)
				return err;
			continue;
		}
		if (n < 0 && (errno == EPIPE || errno == ECONNRESET))
			return q2c_err(-ECONNRESET, "qcow2d closed the connection");
		return q2c_err(n < 0 ? -errno : -EIO, "sending to qcow2d: %s",
			       q2c_strerror(n < 0 ? errno : EIO, eb, sizeof(eb)));
	}
	return 0;
}

/* Reads one line (without its newline) into a malloc'd string: peeks at
 * what has arrived, then takes exactly up to the newline. */
static int read_line(int fd, char **out, int64_t deadline)
{
	char *line = NULL, eb[128];
	size_t len = 0, cap = 0;

	for (;;) {
		if (cap - len < 4096) {
			size_t ncap = cap ? cap * 2 : 8192;
			char *p;
			if (ncap > RPC_MAX_LINE + 4096) {
				free(line);
				return q2c_err(-EPROTO, "qcow2d's reply is longer than %u bytes",
					       RPC_MAX_LINE);
			}
			p = realloc(line, ncap);
			if (!p) {
				free(line);
				return q2c_err(-ENOMEM, "out of memory");
			}
			line = p;
			cap = ncap;
		}
		ssize_t n = recv(fd, line + len, cap - len - 1, MSG_PEEK | MSG_DONTWAIT);
		if (n == 0) {
			free(line);
			return q2c_err(-ECONNRESET, "qcow2d closed the connection");
		}
		if (n < 0) {
			int err = errno;
			if (err == EINTR)
				continue;
			if (err == EAGAIN) {
				int ret = wait_fd(fd, POLLIN, deadline);
				if (ret == 0)
					continue;
				free(line);
				return ret;
			}
			free(line);
			if (err == ECONNRESET)
				return q2c_err(-ECONNRESET, "qcow2d closed the connection");
			return q2c_err(-err, "reading from qcow2d: %s",
				       q2c_strerror(err, eb, sizeof(eb)));
		}
		char *nl = memchr(line + len, '\n', (size_t)n);
		size_t take = nl ? (size_t)(nl - (line + len)) + 1 : (size_t)n;
		ssize_t got = recv(fd, line + len, take, MSG_DONTWAIT);
		if (got != (ssize_t)take) {
			free(line);
			return q2c_err(-EIO, "reading from qcow2d: a short read of what was there");
		}
		len += take;
		if (nl) {
			line[len - 1] = '\0';
			*out = line;
			return 0;
		}
	}
}

/* The errno an error reply stands for. */
static int reply_errno(json_t *error)
{
	json_t *data = json_object_get(error, "data");
	json_int_t e = json_integer_value(json_object_get(data, "errno"));
	const char *cls = json_string_value(json_object_get(data, "class"));
	json_int_t code = json_integer_value(json_object_get(error, "code"));

	if (e > 0 && e < 4096)
		return -(int)e;
	if (cls && !strcmp(cls, "ShuttingDown"))
		return -ESHUTDOWN;
	if (code == -32602 || code == -32600)
		return -EINVAL;
	if (code == -32601)
		return -ENOSYS;
	return -EPROTO;
}

int rpc_call(int fd, const char *method, json_t *params, int timeout_ms, json_t **result)
{
	static _Atomic unsigned next_id;
	int64_t deadline = now_ms() + timeout_ms;
	unsigned id = ++next_id;
	json_t *req, *reply = NULL, *res, *error;
	json_error_t jerr;
	char *text = NULL, *line = NULL;
	int err;

	*result = NULL;
	req = json_pack("{s:s, s:I, s:s, s:o}", "jsonrpc", "2.0", "id", (json_int_t)id,
			"method", method, "params", params ? params : json_object());
	if (!req || !(text = json_dumps(req, JSON_COMPACT))) {
		json_decref(req);
		return q2c_err(-ENOMEM, "out of memory");
	}
	json_decref(req);
	size_t n = strlen(text);
	char *t = realloc(text, n + 2);
	if (!t) {
		free(text);
		return q2c_err(-ENOMEM, "out of memory");
	}
	text = t;
	text[n] = '\n';
	text[n + 1] = '\0';
	err = send_all(fd, text, n + 1, deadline);
	free(text);
	if (err < 0)
		return err;
	err = read_line(fd, &line, deadline);
	if (err < 0)
		return err;
	reply = json_loads(line, 0, &jerr);
	if (!reply || json_integer_value(json_object_get(reply, "id")) != (json_int_t)id) {
		err = q2c_err(-EPROTO, "qcow2d's reply to %s is not one: %.200s", method, line);
		goto out;
	}
	error = json_object_get(reply, "error");
	res = json_object_get(reply, "result");
	if (error) {
		const char *msg = json_string_value(json_object_get(error, "message"));
		const char *cls = json_string_value(json_object_get(
			json_object_get(error, "data"), "class"));
		err = q2c_err(reply_errno(error), "qcow2d: %s: %s%s%s%s", method,
			      msg ? msg : "failed", cls ? " [" : "", cls ? cls : "",
			      cls ? "]" : "");
		goto out;
	}
	if (!res) {
		err = q2c_err(-EPROTO, "qcow2d's reply to %s has no result", method);
		goto out;
	}
	*result = json_incref(res);
	err = 0;
out:
	json_decref(reply);
	free(line);
	return err;
}
