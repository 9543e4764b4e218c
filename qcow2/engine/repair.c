/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * qcow2_check(): the offline checker (offline/check.c), and when asked to
 * repair, a refcount rebuild through the engine (an open with
 * QCOW2_OPEN_REPAIR: crash-safe, see refcount_rebuild.c), then a second
 * check that tells what was fixed.
 */
#include <errno.h>

#include "engine/engine.h"
#include "offline/offline.h"

/* Rebuild the refcounts through the engine (crash-safe, see
 * refcount_rebuild.c). */
static int rebuild(const char *path, struct qcow2_error *err)
{
	struct qcow2_ctx_opts co = { .backend = QCOW2_BACKEND_SYNC };
	struct qcow2_open_opts oo = {
		.flags = QCOW2_OPEN_RDWR | QCOW2_OPEN_BUFFERED |
			 QCOW2_OPEN_NO_BACKING | QCOW2_OPEN_REPAIR,
	};
	struct qcow2_ctx *ctx;
	struct qcow2_image *img;
	int ret = qcow2_ctx_new(&co, &ctx);

	if (ret < 0)
		return ret;
	ret = qcow2_open(ctx, path, &oo, &img, err);
	if (ret == 0)
		ret = qcow2_close(img, err);
	qcow2_ctx_free(ctx);
	return ret;
}

int qcow2_check(const char *path, const struct qcow2_check_opts *opts,
		struct qcow2_check_result *res, struct qcow2_error *err)
{
	struct qcow2_check_result before;
	int ret;

	if (!path || !res || !err || (opts && !RESERVED_ZERO(opts)) ||
	    (opts && opts->force_share && opts->repair != QCOW2_CHECK_NO_REPAIR))
		return -EINVAL;
	err->msg[0] = '\0';
	ret = check_once(path, opts, opts ? opts->stats : NULL, res, err);
	if (ret < 0 || !opts || opts->repair == QCOW2_CHECK_NO_REPAIR)
		return ret;
	if (!res->leaks && !res->corruptions &&
	    !(opts->repair == QCOW2_CHECK_REPAIR_ALL && res->marked_corrupt))
		return 0;
	/* Leaks only, or (all) refcounts too low as well: a rebuild fixes
	 * both. Other corruptions make the rebuild refuse, with a message. */
	if (opts->repair == QCOW2_CHECK_REPAIR_LEAKS && res->corruptions)
		return 0;
	before = *res;
	ret = rebuild(path, err);
	if (ret < 0)
		return ret;
	ret = check_once(path, NULL, NULL, res, err);
	if (ret < 0)
		return ret;
	res->leaks_fixed = before.leaks > res->leaks ? before.leaks - res->leaks : 0;
	res->corruptions_fixed = before.corruptions > res->corruptions ?
				 before.corruptions - res->corruptions : 0;
	return 0;
}
