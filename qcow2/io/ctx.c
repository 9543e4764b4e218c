/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* The IO context: one backend, driven by one thread. */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <unistd.h>

#include "io/io.h"
#include "io/qcow2_fault.h"

static int ctx_new(const struct qcow2_ctx_opts *opts,
		   const struct qcow2_fault_opts *fault, struct qcow2_ctx **out)
{
	struct qcow2_ctx *ctx;
	enum qcow2_backend backend = opts ? opts->backend : QCOW2_BACKEND_IO_URING;
	unsigned depth = opts && opts->queue_depth ? opts->queue_depth : 256;
	int ret;

	if (depth > 32768 || (opts && !RESERVED_ZERO(opts)))
		return -EINVAL;
	ctx = calloc(1, sizeof(*ctx));
	if (!ctx)
		return -ENOMEM;
	if (fault)
		ret = io_sync_new(fault, &ctx->be);
	else if (backend == QCOW2_BACKEND_IO_URING)
		ret = io_uring_backend_new(depth, &ctx->be);
	else if (backend == QCOW2_BACKEND_SYNC)
		ret = io_sync_new(NULL, &ctx->be);
	else
		ret = -EINVAL;
	if (ret < 0) {
		free(ctx);
		return ret;
	}
	ctx->backend = fault ? QCOW2_BACKEND_SYNC : backend;
	ctx->deferred_tail = &ctx->deferred_head;
	ctx->efd = -1;
	*out = ctx;
	return 0;
}

int qcow2_ctx_new(const struct qcow2_ctx_opts *opts, struct qcow2_ctx **out)
{
	return ctx_new(opts, NULL, out);
}

int qcow2_ctx_new_fault(const struct qcow2_ctx_opts *opts,
			const struct qcow2_fault_opts *fault,
			struct qcow2_ctx **out)
{
	return fault ? ctx_new(opts, fault, out) : -EINVAL;
}

void qcow2_ctx_free(struct qcow2_ctx *ctx)
{
	if (!ctx)
		return;
	ctx->be->ops->destroy(ctx->be);
	free(ctx);
}

int qcow2_ctx_event_fd(struct qcow2_ctx *ctx)
{
	int fd = ctx->be->ops->event_fd(ctx->be);

	if (fd >= 0)
		ctx->efd = fd;
	return fd;
}

int qcow2_ctx_submit(struct qcow2_ctx *ctx)
{
	return ctx->be->ops->submit(ctx->be);
}

void ctx_defer(struct qcow2_ctx *ctx, struct ctx_deferred *d)
{
	bool was_empty = ctx->deferred_head == NULL;

	d->next = NULL;
	*ctx->deferred_tail = d;
	ctx->deferred_tail = &d->next;
	ctx->ndeferred++;
	/* Wake a loop that waits on the eventfd: there is work to process.
	 * Whenever the list was empty, not when the count was 0: a callback
	 * run from a taken list, with others of it still to run, adds to an
	 * empty list that no later signal would announce. */
	if (was_empty && ctx->efd >= 0) {
		uint64_t one = 1;
		if (write(ctx->efd, &one, sizeof(one)) < 0) {
			/* counter full: the loop is already awake */
		}
	}
}

static int run_deferred(struct qcow2_ctx *ctx)
{
	struct ctx_deferred *list = ctx->deferred_head;
	int n = 0;

	/* Take the list: callbacks may defer more work for the next round. */
	ctx->deferred_head = NULL;
	ctx->deferred_tail = &ctx->deferred_head;
	while (list) {
		struct ctx_deferred *d = list;
		list = d->next;
		ctx->ndeferred--;
		d->run(d);
		n++;
	}
	return n;
}

int qcow2_ctx_process(struct qcow2_ctx *ctx, bool wait)
{
	int ret = ctx->be->ops->submit(ctx->be);
	int n;

	if (ret < 0)
		return ret;
	n = ctx->be->ops->reap(ctx->be, wait && ctx->ndeferred == 0);
	if (n < 0)
		return n;
	n += run_deferred(ctx);
	ret = ctx->be->ops->submit(ctx->be);
	return ret < 0 ? ret : n;
}

int qcow2_ctx_run(struct qcow2_ctx *ctx)
{
	while (ctx->be->inflight > 0 || ctx->ndeferred > 0) {
		int ret = qcow2_ctx_process(ctx, true);
		if (ret < 0)
			return ret;
	}
	return 0;
}

unsigned qcow2_ctx_inflight(const struct qcow2_ctx *ctx)
{
	return ctx->be->inflight + ctx->ndeferred;
}

void ctx_queue(struct qcow2_ctx *ctx, struct io_op *op)
{
	ctx->be->ops->queue(ctx->be, op);
}
