/* extstruct.h: the library's side of the extensible structs (qcow2_ipc.h,
 * "Extensible structs"): each begins with a uint32_t size the caller sets to
 * the sizeof it was compiled with. */
#ifndef QCOW2_IPC_EXTSTRUCT_H
#define QCOW2_IPC_EXTSTRUCT_H

#include "qcow2_ipc.h"

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define EXT_OFFSETOFEND(type, field) (offsetof(type, field) + sizeof(((type *)0)->field))

/* The size of each struct's first version: the smallest a caller may pass.
 * A field added later goes after these, and these never change. */
#define EXT_CLIENT_OPTS_VER0 EXT_OFFSETOFEND(struct qcow2_ipc_client_opts, first_index)
#define EXT_CLIENT_STATS_VER0 EXT_OFFSETOFEND(struct qcow2_ipc_client_stats, stale)
#define EXT_SERVER_OPTS_VER0 EXT_OFFSETOFEND(struct qcow2_ipc_server_opts, reserved0)
#define EXT_SERVER_STATS_VER0 EXT_OFFSETOFEND(struct qcow2_ipc_server_stats, calls)
#define EXT_ATTACH_VER0 EXT_OFFSETOFEND(struct qcow2_ipc_attach, region_fds)

/* The most a caller may claim (a bound on what is read or written). */
#define EXT_MAX_SIZE 4096u

static_assert(offsetof(struct qcow2_ipc_client_opts, size) == 0, "size first");
static_assert(offsetof(struct qcow2_ipc_client_stats, size) == 0, "size first");
static_assert(offsetof(struct qcow2_ipc_server_opts, size) == 0, "size first");
static_assert(offsetof(struct qcow2_ipc_server_stats, size) == 0, "size first");
static_assert(offsetof(struct qcow2_ipc_attach, size) == 0, "size first");
/* No padding after the last field: a later version's first new field must
 * not land in bytes an older library ignores. */
static_assert(sizeof(struct qcow2_ipc_client_opts) == EXT_CLIENT_OPTS_VER0, "no tail padding");
static_assert(sizeof(struct qcow2_ipc_client_stats) == EXT_CLIENT_STATS_VER0, "no tail padding");
static_assert(sizeof(struct qcow2_ipc_server_opts) == EXT_SERVER_OPTS_VER0, "no tail padding");
static_assert(sizeof(struct qcow2_ipc_server_stats) == EXT_SERVER_STATS_VER0, "no tail padding");
static_assert(sizeof(struct qcow2_ipc_attach) == EXT_ATTACH_VER0, "no tail padding");

static inline uint32_t ext_size(const void *caller)
{
	uint32_t size;
	memcpy(&size, caller, sizeof(size));
	return size;
}

/* Checks a caller's struct the library reads, for a library whose own
 * struct has lib_size bytes: -EINVAL when its size is below the first
 * version's or above EXT_MAX_SIZE, -EOPNOTSUPP when it is longer than ours
 * with a non-zero byte past our end (a field this library does not know,
 * set). */
static inline int ext_check_in(const void *caller, size_t lib_size, size_t ver0)
{
	uint32_t size = ext_size(caller);

	if (size < ver0 || size > EXT_MAX_SIZE)
		return -EINVAL;
	for (size_t i = lib_size; i < size; i++)
		if (((const uint8_t *)caller)[i])
			return -EOPNOTSUPP;
	return 0;
}

/* ext_check_in, then copies the caller's struct into the library's own
 * (lib, of lib_size bytes): a shorter caller's missing fields read as 0. */
static inline int ext_copy_in(void *lib, size_t lib_size, const void *caller, size_t ver0)
{
	int err = ext_check_in(caller, lib_size, ver0);
	if (err < 0)
		return err;
	uint32_t size = ext_size(caller);
	memset(lib, 0, lib_size);
	memcpy(lib, caller, size < lib_size ? size : lib_size);
	return 0;
}

/* Checks a caller's struct the library fills: -EINVAL when its size is out
 * of range; else zeroes what lies past the library's lib_size bytes (fields
 * of a later version, which this library does not fill). */
static inline int ext_prepare_out(void *caller, size_t lib_size, size_t ver0)
{
	uint32_t size = ext_size(caller);

	if (size < ver0 || size > EXT_MAX_SIZE)
		return -EINVAL;
	if (size > lib_size)
		memset((uint8_t *)caller + lib_size, 0, size - lib_size);
	return 0;
}

/* Fills the caller's struct from the library's own (lib, of lib_size
 * bytes) as far as both reach, leaving its size field as the caller set it;
 * -EINVAL when that size is out of range. */
static inline int ext_copy_out(void *caller, const void *lib, size_t lib_size, size_t ver0)
{
	int err = ext_prepare_out(caller, lib_size, ver0);
	if (err < 0)
		return err;
	uint32_t size = ext_size(caller);
	size_t n = size < lib_size ? size : lib_size;
	memcpy((uint8_t *)caller + sizeof(uint32_t), (const uint8_t *)lib + sizeof(uint32_t),
	       n - sizeof(uint32_t));
	return 0;
}

#endif
