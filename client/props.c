/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * props.c: properties, one table: name, type, and when each may be set
 * or read. The getters and setters below switch on the entry.
 */
#include "client.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum ptype { T_BOOL, T_INT, T_U64, T_STR };
static const char *const type_name[] = { "bool", "int", "uint64", "str" };

/* When: SETUP may be set before q2c_connect(); CONFIG between connect
 * and start; INFO is read-only and known from connect on. */
enum pwhen { SETUP, CONFIG, INFO };

enum pid {
	P_SOCKET, P_PATH, P_NAME, P_READ_ONLY, P_NUM_QUEUES, P_NUM_ENTRIES, P_DATA_AREA,
	P_CAPACITY, P_REQ_ALIGN, P_BUF_ALIGN, P_OPT_BUF_ALIGN, P_MAX_TRANSFER,
	P_MAX_SEGMENTS, P_MAX_QUEUES, P_MEM_ALIGN, P_NEEDS_MEM, P_IMAGE_NAME, P_STATS,
};

static const struct prop {
	const char *name;
	enum pid id;
	enum ptype type;
	enum pwhen when;
} props[] = {
	{ "socket", P_SOCKET, T_STR, SETUP },
	{ "path", P_PATH, T_STR, SETUP },
	{ "name", P_NAME, T_STR, SETUP },
	{ "read-only", P_READ_ONLY, T_BOOL, SETUP },
	{ "num-queues", P_NUM_QUEUES, T_INT, CONFIG },
	{ "num-entries", P_NUM_ENTRIES, T_INT, CONFIG },
	{ "data-area-size", P_DATA_AREA, T_INT, CONFIG },
	{ "capacity", P_CAPACITY, T_U64, INFO },
	{ "request-alignment", P_REQ_ALIGN, T_INT, INFO },
	{ "buf-alignment", P_BUF_ALIGN, T_INT, INFO },
	{ "optimal-buf-alignment", P_OPT_BUF_ALIGN, T_INT, INFO },
	{ "max-transfer", P_MAX_TRANSFER, T_INT, INFO },
	{ "max-segments", P_MAX_SEGMENTS, T_INT, INFO },
	{ "max-queues", P_MAX_QUEUES, T_INT, INFO },
	{ "mem-region-alignment", P_MEM_ALIGN, T_U64, INFO },
	{ "needs-mem-regions", P_NEEDS_MEM, T_BOOL, INFO },
	{ "image-name", P_IMAGE_NAME, T_STR, INFO },
	{ "stats", P_STATS, T_STR, INFO },
};

union pval {
	bool b;
	int i;
	uint64_t u;
	const char *s;
};

/* The entry for name and type, checked for a get (set false) or a set. */
static int lookup(struct q2c *b, const char *name, enum ptype type, bool set,
		  const struct prop **out)
{
	const struct prop *p = NULL;

	if (!b || !name)
		return q2c_err(-EINVAL, "no handle or no property name");
	for (size_t i = 0; i < sizeof(props) / sizeof(props[0]); i++)
		if (!strcmp(props[i].name, name))
			p = &props[i];
	if (!p)
		return q2c_err(-ENOENT, "unknown property \"%s\"", name);
	if (p->type != type)
		return q2c_err(-ENOTTY, "property \"%s\" is a %s, not a %s", name,
			       type_name[p->type], type_name[type]);
	if (set) {
		if (p->when == INFO)
			return q2c_err(-EACCES, "property \"%s\" is read-only", name);
		if (p->when == SETUP && b->state != Q2C_CREATED)
			return q2c_err(-EACCES, "property \"%s\" is set before q2c_connect()",
				       name);
		if (p->when == CONFIG && b->state != Q2C_CONNECTED)
			return q2c_err(-EACCES, "property \"%s\" is set after q2c_connect() "
				       "and before q2c_start()", name);
	} else if (p->when == INFO && b->state == Q2C_CREATED) {
		return q2c_err(-EACCES, "property \"%s\" is known after q2c_connect()", name);
	}
	*out = p;
	return 0;
}

static int get_stats(struct q2c *b, char **out)
{
	json_t *r;
	int ret = handle_call(b, "image.stats", json_pack("{s:s}", "name", b->image), &r);

	if (ret < 0)
		return ret;
	*out = json_dumps(r, JSON_COMPACT);
	json_decref(r);
	return *out ? 0 : q2c_err(-ENOMEM, "out of memory");
}

static int get(struct q2c *b, const char *name, enum ptype type, union pval *v, char **str)
{
	const struct prop *p;
	int ret = lookup(b, name, type, false, &p);
	const char *s = NULL;

	if (ret < 0)
		return ret;
	switch (p->id) {
	case P_SOCKET:
		if (b->socket)
			s = b->socket;
		else
			return rpc_default_socket(str);
		break;
	case P_PATH: s = b->path ? b->path : ""; break;
	case P_NAME: s = b->name ? b->name : ""; break;
	case P_IMAGE_NAME: s = b->image; break;
	case P_STATS: return get_stats(b, str);
	case P_READ_ONLY:
		v->b = b->state == Q2C_CREATED ? b->want_read_only : b->rules.read_only;
		break;
	case P_NUM_QUEUES: v->i = b->num_queues; break;
	case P_NUM_ENTRIES: v->i = b->num_entries; break;
	case P_DATA_AREA: v->i = b->data_area_size; break;
	case P_CAPACITY: v->u = b->rules.capacity; break;
	case P_REQ_ALIGN: v->i = (int)b->rules.block_size; break;
	case P_BUF_ALIGN: v->i = (int)b->rules.buf_align; break;
	case P_OPT_BUF_ALIGN: v->i = (int)b->rules.mem_align; break;
	case P_MAX_TRANSFER: v->i = (int)b->rules.max_io; break;
	case P_MAX_SEGMENTS: v->i = Q2C_MAX_SEGS; break;
	case P_MAX_QUEUES: v->i = Q2C_MAX_QUEUES; break;
	case P_MEM_ALIGN: v->u = 4096; break;
	case P_NEEDS_MEM: v->b = false; break;
	}
	if (type == T_STR) {
		*str = strdup(s);
		if (!*str)
			return q2c_err(-ENOMEM, "out of memory");
	}
	return 0;
}

static int set_str(char **field, const char *value)
{
	char *s = NULL;

	if (value && *value && !(s = strdup(value)))
		return q2c_err(-ENOMEM, "out of memory");
	free(*field);
	*field = s;
	return 0;
}

static int set(struct q2c *b, const char *name, enum ptype type, union pval v)
{
	const struct prop *p;
	int ret = lookup(b, name, type, true, &p);

	if (ret < 0)
		return ret;
	switch (p->id) {
	case P_SOCKET: return set_str(&b->socket, v.s);
	case P_PATH: return set_str(&b->path, v.s);
	case P_NAME:
		/* qcow2d's pattern for names: refuse here what it would refuse. */
		if (v.s && (strlen(v.s) > 64 || strspn(v.s, "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
						       "abcdefghijklmnopqrstuvwxyz0123456789._-") !=
						       strlen(v.s)))
			return q2c_err(-EINVAL, "an image name is 1 to 64 of A-Z a-z 0-9 . _ -");
		return set_str(&b->name, v.s);
	case P_READ_ONLY: b->want_read_only = v.b; return 0;
	case P_NUM_QUEUES:
		if (v.i < 1 || v.i > Q2C_MAX_QUEUES)
			return q2c_err(-EINVAL, "num-queues is 1 to %d", Q2C_MAX_QUEUES);
		b->num_queues = v.i;
		return 0;
	case P_NUM_ENTRIES:
		if (v.i < 1 || v.i > (int)QCOW2_IPC_MAX_ENTRIES || (v.i & (v.i - 1)))
			return q2c_err(-EINVAL, "num-entries is a power of two, 1 to %u",
				       QCOW2_IPC_MAX_ENTRIES);
		b->num_entries = v.i;
		return 0;
	case P_DATA_AREA:
		if (v.i < 0 || v.i % 4096)
			return q2c_err(-EINVAL, "data-area-size is a multiple of 4096");
		b->data_area_size = v.i;
		return 0;
	default:
		return q2c_err(-EACCES, "property \"%s\" is read-only", name);
	}
}

int q2c_get_bool(struct q2c *b, const char *name, bool *value)
{
	int saved = errno;
	union pval v = { 0 };
	int ret = get(b, name, T_BOOL, &v, NULL);

	if (ret == 0)
		*value = v.b;
	errno = saved;
	return ret;
}

int q2c_get_int(struct q2c *b, const char *name, int *value)
{
	int saved = errno;
	union pval v = { 0 };
	int ret = get(b, name, T_INT, &v, NULL);

	if (ret == 0)
		*value = v.i;
	errno = saved;
	return ret;
}

int q2c_get_uint64(struct q2c *b, const char *name, uint64_t *value)
{
	int saved = errno;
	union pval v = { 0 };
	int ret = get(b, name, T_U64, &v, NULL);

	if (ret == 0)
		*value = v.u;
	errno = saved;
	return ret;
}

int q2c_get_str(struct q2c *b, const char *name, char **value)
{
	int saved = errno;
	union pval v = { 0 };
	int ret = get(b, name, T_STR, &v, value);

	errno = saved;
	return ret;
}

int q2c_set_bool(struct q2c *b, const char *name, bool value)
{
	int saved = errno;
	int ret = set(b, name, T_BOOL, (union pval){ .b = value });

	errno = saved;
	return ret;
}

int q2c_set_int(struct q2c *b, const char *name, int value)
{
	int saved = errno;
	int ret = set(b, name, T_INT, (union pval){ .i = value });

	errno = saved;
	return ret;
}

int q2c_set_uint64(struct q2c *b, const char *name, uint64_t value)
{
	int saved = errno;
	int ret = set(b, name, T_U64, (union pval){ .u = value });

	errno = saved;
	return ret;
}

int q2c_set_str(struct q2c *b, const char *name, const char *value)
{
	int saved = errno;
	int ret = set(b, name, T_STR, (union pval){ .s = value });

	errno = saved;
	return ret;
}
