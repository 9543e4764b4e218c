/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * handle.c: a handle's life. q2c_connect() opens (or finds) the image on
 * the handle's own control connection and learns its rules; q2c_start()
 * attaches the queues, each on a connection of its own; q2c_destroy()
 * detaches them and closes what q2c_connect() opened.
 */
#include "client.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The rules of qcow2d's queues that image.info does not report; each
 * queue.attach reply is checked against them (queue.c). */
#define SERVICE_BUF_ALIGN 1u
#define SERVICE_MAX_IO (8u << 20)

int handle_call(struct q2c *b, const char *method, json_t *params, json_t **result)
{
	int ret;

	pthread_mutex_lock(&b->ctl_lock);
	if (b->ctl < 0) {
		json_decref(params);
		ret = q2c_err(-ECONNRESET, "the connection to qcow2d is gone (q2c_reconnect())");
	} else {
		ret = rpc_call(b->ctl, method, params, Q2C_RPC_TIMEOUT_MS, result);
	}
	pthread_mutex_unlock(&b->ctl_lock);
	return ret;
}

int q2c_create(struct q2c **out)
{
	int saved = errno;
	struct q2c *b = calloc(1, sizeof(*b));

	if (!b) {
		errno = saved;
		return q2c_err(-ENOMEM, "out of memory");
	}
	b->state = Q2C_CREATED;
	b->num_queues = 1;
	b->num_entries = 128;
	b->data_area_size = 4 << 20;
	b->ctl = -1;
	pthread_mutex_init(&b->ctl_lock, NULL);
	*out = b;
	errno = saved;
	return 0;
}

/* image.info's answer: the image's rules. */
static int read_info(struct q2c *b, struct q2c_rules *out)
{
	json_t *r;
	json_int_t size, bs, ma;
	int ret = handle_call(b, "image.info", json_pack("{s:s}", "name", b->image), &r);

	if (ret < 0) {
		if (ret == -ENOENT)
			q2c_err(-ENOENT, "no image named %s is open in qcow2d", b->image);
		return ret;
	}
	size = json_integer_value(json_object_get(r, "virtual_size"));
	bs = json_integer_value(json_object_get(r, "block_size"));
	ma = json_integer_value(json_object_get(r, "mem_align"));
	if (size < 0 || bs <= 0 || bs > (1 << 20) || (bs & (bs - 1)) || ma <= 0 ||
	    ma > (1 << 20)) {
		json_decref(r);
		return q2c_err(-EPROTO, "qcow2d's image.info does not describe a disk");
	}
	out->capacity = (uint64_t)size;
	out->block_size = (uint32_t)bs;
	out->mem_align = (uint32_t)ma;
	out->buf_align = SERVICE_BUF_ALIGN;
	out->max_io = SERVICE_MAX_IO;
	out->read_only = json_is_true(json_object_get(r, "read_only")) || b->want_read_only;
	json_decref(r);
	return 0;
}

static int open_image(struct q2c *b)
{
	static _Atomic unsigned seq;
	char *cwd;
	json_t *r, *params;
	int ret;

	if (b->image) {
		/* reopening (q2c_reconnect()): the same name */
	} else if (!b->name) {
		if (asprintf(&b->image, "q2c-%d-%u", (int)getpid(), ++seq) < 0)
			b->image = NULL;
	} else {
		b->image = strdup(b->name);
	}
	if (!b->image)
		return q2c_err(-ENOMEM, "out of memory");
	/* qcow2d takes absolute paths only (its directory is not ours); a
	 * reopen uses the same one, whatever our directory is now. */
	if (!b->abs_path) {
		if (b->path[0] == '/') {
			b->abs_path = strdup(b->path);
		} else if ((cwd = getcwd(NULL, 0))) {
			if (asprintf(&b->abs_path, "%s/%s", cwd, b->path) < 0)
				b->abs_path = NULL;
			free(cwd);
		}
		if (!b->abs_path)
			return q2c_err(-ENOMEM, "cannot make %s an absolute path", b->path);
	}
	params = json_pack("{s:s, s:s, s:b}", "path", b->abs_path, "name", b->image,
			   "read_only", b->want_read_only);
	ret = handle_call(b, "image.open", params, &r);
	if (ret < 0)
		return ret;
	json_decref(r);
	b->opened = true;
	return 0;
}

static int connect_handle(struct q2c *b)
{
	int ret;

	if (b->state != Q2C_CREATED)
		return q2c_err(-EBUSY, "the handle is connected already");
	if (!b->path && !b->name)
		return q2c_err(-EINVAL, "set \"path\" (open an image) or \"name\" (an image "
			       "qcow2d has open) before q2c_connect()");
	free(b->abs_path);              /* "path" may have changed since a failed try */
	b->abs_path = NULL;
	if (!b->socket && (ret = rpc_default_socket(&b->socket)) < 0)
		return ret;
	ret = rpc_connect(b->socket, &b->ctl);
	if (ret < 0)
		return ret;
	if (b->path) {
		ret = open_image(b);
	} else {
		b->image = strdup(b->name);
		ret = b->image ? 0 : q2c_err(-ENOMEM, "out of memory");
	}
	if (ret == 0)
		ret = read_info(b, &b->rules);
	if (ret < 0) {
		if (b->opened) {
			json_t *r;
			int saved_msg_err = ret;
			char msg[512];
			snprintf(msg, sizeof(msg), "%s", q2c_get_error_msg());
			if (handle_call(b, "image.close", json_pack("{s:s, s:b}", "name",
					b->image, "force", true), &r) == 0)
				json_decref(r);
			b->opened = false;
			ret = q2c_err(saved_msg_err, "%s", msg);
		}
		close(b->ctl);
		b->ctl = -1;
		free(b->image);
		b->image = NULL;
		return ret;
	}
	b->state = Q2C_CONNECTED;
	return 0;
}

int q2c_connect(struct q2c *b)
{
	int saved = errno;
	int ret = b ? connect_handle(b) : q2c_err(-EINVAL, "q2c_connect: no handle");

	errno = saved;
	return ret;
}

static void free_queues(struct q2c *b, int wait_ms)
{
	for (int i = 0; i < b->nr_queues; i++)
		queue_destroy(b->queues[i], wait_ms);
	free(b->queues);
	b->queues = NULL;
	b->nr_queues = 0;
}

static int start_handle(struct q2c *b)
{
	int ret = 0;

	if (b->state != Q2C_CONNECTED)
		return q2c_err(b->state == Q2C_STARTED ? -EBUSY : -EINVAL,
			       b->state == Q2C_STARTED ? "the handle is started already"
						       : "q2c_connect() comes before q2c_start()");
	b->queues = calloc((size_t)b->num_queues, sizeof(*b->queues));
	if (!b->queues)
		return q2c_err(-ENOMEM, "out of memory");
	for (int i = 0; i < b->num_queues && ret == 0; i++) {
		ret = queue_create(b, i, &b->queues[i]);
		if (ret == 0) {
			b->nr_queues++;
			ret = queue_attach(b->queues[i]);
		}
	}
	if (ret < 0) {
		char msg[512];
		snprintf(msg, sizeof(msg), "%s", q2c_get_error_msg());
		free_queues(b, 0);
		return q2c_err(ret, "%s", msg);
	}
	b->state = Q2C_STARTED;
	return 0;
}

int q2c_start(struct q2c *b)
{
	int saved = errno;
	int ret = b ? start_handle(b) : q2c_err(-EINVAL, "q2c_start: no handle");

	errno = saved;
	return ret;
}

struct q2c_queue *q2c_get_queue(struct q2c *b, int index)
{
	if (!b || b->state != Q2C_STARTED || index < 0 || index >= b->nr_queues)
		return NULL;
	return b->queues[index];
}

void q2c_destroy(struct q2c **bp)
{
	int saved = errno;
	struct q2c *b = bp ? *bp : NULL;

	if (!b)
		goto out;
	/* Queues first: the service finishes what they have in flight
	 * before it lets the image close. */
	free_queues(b, Q2C_DESTROY_WAIT_MS);
	if (b->opened && b->ctl >= 0) {
		json_t *r;
		if (handle_call(b, "image.close", json_pack("{s:s, s:b}", "name", b->image,
							    "force", true), &r) == 0)
			json_decref(r);
	}
	if (b->ctl >= 0)
		close(b->ctl);
	for (unsigned i = 0; i < b->nr_regions; i++)
		close(b->regions[i].fd);
	pthread_mutex_destroy(&b->ctl_lock);
	free(b->socket);
	free(b->path);
	free(b->name);
	free(b->image);
	free(b->abs_path);
	free(b);
	*bp = NULL;
out:
	errno = saved;
}

/* image.open again, as q2c_connect() did; an image open under our name
 * already (another caller reopened it) is fine if it is the same file. */
static int reopen_image(struct q2c *b)
{
	json_t *r, *img;
	size_t i;
	int ret = open_image(b);

	if (ret != -EEXIST)
		return ret;
	ret = handle_call(b, "image.list", NULL, &r);
	if (ret < 0)
		return ret;
	ret = q2c_err(-EEXIST, "qcow2d has another image open under the name %s", b->image);
	json_array_foreach(json_object_get(r, "images"), i, img) {
		const char *name = json_string_value(json_object_get(img, "name"));
		const char *path = json_string_value(json_object_get(img, "path"));
		if (name && path && !strcmp(name, b->image) && b->abs_path &&
		    !strcmp(path, b->abs_path))
			ret = 0;
	}
	json_decref(r);
	return ret;
}

static int reconnect_handle(struct q2c *b)
{
	struct q2c_rules now;
	int fd, old, ret;

	if (b->state == Q2C_CREATED)
		return q2c_err(-EINVAL, "q2c_connect() comes before q2c_reconnect()");
	ret = rpc_connect(b->socket, &fd);
	if (ret < 0)
		return ret;
	pthread_mutex_lock(&b->ctl_lock);
	old = b->ctl;
	b->ctl = fd;
	pthread_mutex_unlock(&b->ctl_lock);
	if (old >= 0)
		close(old);
	if (b->opened && (ret = reopen_image(b)) < 0)
		return ret;
	ret = read_info(b, &now);
	if (ret < 0)
		return ret;
	if (now.capacity != b->rules.capacity || now.block_size != b->rules.block_size ||
	    (now.read_only && !b->rules.read_only))
		return q2c_err(-EPROTO, "image %s is not what it was (capacity %llu, block size "
			       "%u, read-only %d)", b->image, (unsigned long long)now.capacity,
			       now.block_size, now.read_only);
	/* Only queues whose service is gone: attaching a live one again
	 * would have two services serve one region. Each keeps its region,
	 * whose in-flight table the new service recovers from. */
	for (int i = 0; i < b->nr_queues; i++) {
		struct q2c_queue *q = b->queues[i];
		if (q->broken || !queue_gone(q))
			continue;
		ret = queue_attach(q);
		if (ret < 0)
			return ret;
	}
	return 0;
}

int q2c_reconnect(struct q2c *b)
{
	int saved = errno;
	int ret = b ? reconnect_handle(b) : q2c_err(-EINVAL, "q2c_reconnect: no handle");

	errno = saved;
	return ret;
}
