/* SPDX-License-Identifier: MIT OR Apache-2.0 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "create_opts.h"

static int parse_bool(const char *key, const char *v, bool *out)
{
	if (!strcmp(v, "on") || !strcmp(v, "true") || !strcmp(v, "yes")) {
		*out = true;
		return 0;
	}
	if (!strcmp(v, "off") || !strcmp(v, "false") || !strcmp(v, "no")) {
		*out = false;
		return 0;
	}
	fprintf(stderr, "%s: %s: expected on or off, not '%s'\n", cli_prog, key, v);
	return -EINVAL;
}

static int parse_u32_size(const char *key, const char *v, uint32_t *out)
{
	uint64_t x;

	if (cli_parse_size(v, &x) < 0 || x > UINT32_MAX) {
		fprintf(stderr, "%s: %s: bad value '%s'\n", cli_prog, key, v);
		return -EINVAL;
	}
	*out = (uint32_t)x;
	return 0;
}

/* Option values are copied (the list is split in place); the copies live
 * until create_opts_release(). */
static char **kept;
static size_t nkept;

static char *keep(const char *v)
{
	char *s = strdup(v);
	char **k = realloc(kept, (nkept + 1) * sizeof(*kept));

	if (!s || !k) {
		fprintf(stderr, "%s: out of memory\n", cli_prog);
		exit(1);
	}
	kept = k;
	kept[nkept++] = s;
	return s;
}

void create_opts_release(void)
{
	for (size_t i = 0; i < nkept; i++)
		free(kept[i]);
	free(kept);
	kept = NULL;
	nkept = 0;
}

static int one(char *kv, struct qcow2_create_opts *o, bool *size_set)
{
	char *v = strchr(kv, '=');
	const char *k = kv;

	if (!v) {
		fprintf(stderr, "%s: -o %s: expected key=value\n", cli_prog, kv);
		return -EINVAL;
	}
	*v++ = '\0';
	if (!strcmp(k, "size")) {
		if (cli_parse_size(v, &o->size) < 0) {
			fprintf(stderr, "%s: size: bad value '%s'\n", cli_prog, v);
			return -EINVAL;
		}
		*size_set = true;
	} else if (!strcmp(k, "compat")) {
		if (!strcmp(v, "0.10") || !strcmp(v, "v2"))
			o->version = 2;
		else if (!strcmp(v, "1.1") || !strcmp(v, "v3"))
			o->version = 3;
		else {
			fprintf(stderr, "%s: compat: expected 0.10 or 1.1, not '%s'\n",
				cli_prog, v);
			return -EINVAL;
		}
	} else if (!strcmp(k, "cluster_size")) {
		return parse_u32_size(k, v, &o->cluster_size);
	} else if (!strcmp(k, "refcount_bits")) {
		return parse_u32_size(k, v, &o->refcount_bits);
	} else if (!strcmp(k, "extended_l2")) {
		return parse_bool(k, v, &o->extended_l2);
	} else if (!strcmp(k, "lazy_refcounts")) {
		return parse_bool(k, v, &o->lazy_refcounts);
	} else if (!strcmp(k, "data_file_raw")) {
		return parse_bool(k, v, &o->data_file_raw);
	} else if (!strcmp(k, "compression_type")) {
		if (!strcmp(v, "zlib"))
			o->compression_type = QCOW2_COMPRESSION_ZLIB;
		else if (!strcmp(v, "zstd"))
			o->compression_type = QCOW2_COMPRESSION_ZSTD;
		else {
			fprintf(stderr, "%s: compression_type: expected zlib or zstd, "
				"not '%s'\n", cli_prog, v);
			return -EINVAL;
		}
	} else if (!strcmp(k, "backing_file")) {
		o->backing_file = keep(v);
	} else if (!strcmp(k, "backing_fmt")) {
		o->backing_format = keep(v);
	} else if (!strcmp(k, "data_file")) {
		o->data_file = keep(v);
	} else if (!strcmp(k, "preallocation")) {
		static const char *const modes[] = { "off", "metadata", "falloc", "full" };
		size_t i;
		for (i = 0; i < 4; i++)
			if (!strcmp(v, modes[i]))
				break;
		if (i == 4) {
			fprintf(stderr, "%s: preallocation: expected off, metadata, "
				"falloc or full, not '%s'\n", cli_prog, v);
			return -EINVAL;
		}
		o->preallocation = (enum qcow2_prealloc)i;
	} else {
		fprintf(stderr, "%s: -o: unknown option '%s' (see --help)\n",
			cli_prog, k);
		return -EINVAL;
	}
	return 0;
}

int create_opts_parse(const char *list, struct qcow2_create_opts *o,
		      bool *size_set)
{
	char *copy = strdup(list), *save = NULL;
	int ret = 0;

	if (!copy)
		return -ENOMEM;
	for (char *kv = strtok_r(copy, ",", &save); kv && !ret;
	     kv = strtok_r(NULL, ",", &save))
		ret = one(kv, o, size_set);
	free(copy);
	return ret;
}

void create_opts_print(const char *path, const struct qcow2_create_opts *o)
{
	static const char *const modes[] = { "off", "metadata", "falloc", "full" };

	printf("Formatting '%s', fmt=qcow2 cluster_size=%u extended_l2=%s",
	       path, o->cluster_size ? o->cluster_size : 65536,
	       o->extended_l2 ? "on" : "off");
	if (o->preallocation)
		printf(" preallocation=%s", modes[o->preallocation]);
	printf(" compression_type=%s size=%" PRIu64,
	       o->compression_type == QCOW2_COMPRESSION_ZSTD ? "zstd" : "zlib",
	       (o->size + 511) / 512 * 512);
	if (o->version == 2)
		printf(" compat=0.10");
	if (o->backing_file)
		printf(" backing_file=%s", o->backing_file);
	if (o->backing_format)
		printf(" backing_fmt=%s", o->backing_format);
	if (o->data_file)
		printf(" data_file=%s data_file_raw=%s", o->data_file,
		       o->data_file_raw ? "on" : "off");
	printf(" lazy_refcounts=%s refcount_bits=%u\n",
	       o->lazy_refcounts ? "on" : "off",
	       o->refcount_bits ? o->refcount_bits : 16);
}

void create_opts_progress(void *opaque, uint64_t done, uint64_t total)
{
	cli_progress(*(bool *)opaque, done, total);
}
