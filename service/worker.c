/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * Worker threads. Each runs a libuv loop with its own engine context (its
 * own io_uring): the loop polls the context's event fd, hands queued IO to
 * the kernel before it blocks (a prepare handle), and runs the messages
 * posted to its mailbox. The images whose home it is are touched by this
 * thread only, so the engine needs no locks.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "service.h"

static void on_ctx_event(uv_poll_t *p, int status, int events)
{
	struct worker *w = p->data;
	int ret;

	(void)events;
	if (status < 0) {
		log_msg(LOG_ERROR, "worker %u: polling the IO context failed: %s",
			w->id, uv_strerror(status));
		return;
	}
	ret = qcow2_ctx_process(w->ctx, false);
	if (ret < 0)
		log_msg(LOG_ERROR, "worker %u: processing IO completions failed: %s",
			w->id, strerror(-ret));
}

static void on_prepare(uv_prepare_t *p)
{
	struct worker *w = p->data;
	int ret;

	atomic_fetch_add_explicit(&w->stats.loop_iterations, 1,
				  memory_order_relaxed);
	atomic_store_explicit(&w->stats.idle_ns, uv_metrics_idle_time(&w->loop),
			      memory_order_relaxed);
	worker_publish_queues(w);
	ret = qcow2_ctx_submit(w->ctx);
	if (ret < 0)
		log_msg(LOG_ERROR, "worker %u: submitting IO failed: %s", w->id,
			strerror(-ret));
}

static void close_each(uv_handle_t *h, void *arg)
{
	(void)arg;
	if (!uv_is_closing(h))
		uv_close(h, NULL);
}

static void worker_main(void *arg)
{
	struct worker *w = arg;
	int ret, efd;

	ret = uv_loop_init(&w->loop);
	if (ret < 0)
		goto fail;
	/* time asleep, for the busy ratio in service.stats */
	uv_loop_configure(&w->loop, UV_METRICS_IDLE_TIME);
	ret = qcow2_ctx_new(NULL, &w->ctx);
	if (ret < 0) {
		uv_loop_close(&w->loop);
		goto fail;
	}
	efd = qcow2_ctx_event_fd(w->ctx);
	if (efd < 0) {
		ret = efd;
		goto fail_ctx;
	}
	w->ctx_poll.data = w;
	w->submit.data = w;
	if ((ret = uv_poll_init(&w->loop, &w->ctx_poll, efd)) < 0 ||
	    (ret = uv_poll_start(&w->ctx_poll, UV_READABLE, on_ctx_event)) < 0 ||
	    (ret = uv_prepare_init(&w->loop, &w->submit)) < 0 ||
	    (ret = uv_prepare_start(&w->submit, on_prepare)) < 0 ||
	    (ret = mailbox_init(&w->mb, &w->loop)) < 0)
		goto fail_ctx;
	w->start_error = 0;
	uv_sem_post(&w->ready);
	uv_run(&w->loop, UV_RUN_DEFAULT);
	/* The stop message closed every handle. */
	uv_loop_close(&w->loop);
	qcow2_ctx_free(w->ctx);
	return;
fail_ctx:
	qcow2_ctx_free(w->ctx);
	w->ctx = NULL;
	uv_walk(&w->loop, close_each, NULL);
	uv_run(&w->loop, UV_RUN_DEFAULT);
	uv_loop_close(&w->loop);
fail:
	w->start_error = ret;
	uv_sem_post(&w->ready);
}

int workers_start(struct svc *svc, unsigned n)
{
	svc->workers = calloc(n, sizeof(*svc->workers));
	if (!svc->workers)
		return -ENOMEM;
	for (unsigned i = 0; i < n; i++) {
		struct worker *w = &svc->workers[i];
		int ret;

		w->id = i;
		w->svc = svc;
		w->stats.start_ns = now_ns();
		uv_sem_init(&w->ready, 0);
		ret = uv_thread_create(&w->thread, worker_main, w);
		if (ret == 0) {
			uv_sem_wait(&w->ready);
			ret = w->start_error;
			if (ret < 0)
				uv_thread_join(&w->thread);
		}
		uv_sem_destroy(&w->ready);
		if (ret < 0) {
			log_msg(LOG_ERROR, "cannot start worker %u: %s%s", i,
				strerror(-ret), ret == -EPERM || ret == -ENOSYS ?
				" (io_uring is not available to this process)" : "");
			svc->nworkers = i;
			workers_stop(svc);
			return ret;
		}
		svc->nworkers = i + 1;
	}
	return 0;
}

static void worker_stop_here(struct msg *m)
{
	struct worker *w = (struct worker *)((char *)m - offsetof(struct worker, stop));

	uv_poll_stop(&w->ctx_poll);
	uv_close((uv_handle_t *)&w->ctx_poll, NULL);
	uv_close((uv_handle_t *)&w->submit, NULL);
	mailbox_close(&w->mb);
}

void workers_stop(struct svc *svc)
{
	for (unsigned i = 0; i < svc->nworkers; i++) {
		struct worker *w = &svc->workers[i];

		w->stop.fn = worker_stop_here;
		mailbox_post(&w->mb, &w->stop);
	}
	for (unsigned i = 0; i < svc->nworkers; i++)
		uv_thread_join(&svc->workers[i].thread);
	free(svc->workers);
	svc->workers = NULL;
	svc->nworkers = 0;
}
