/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* A mailbox: how work crosses threads. Any thread posts a message; the
 * owner's loop runs it (uv_async_send coalesces wake-ups, so a drain takes
 * everything queued). */
#include "service.h"

static void mailbox_drain(uv_async_t *a)
{
	struct mailbox *mb = a->data;
	struct msg *list;

	pthread_mutex_lock(&mb->lock);
	list = mb->head;
	mb->head = mb->tail = NULL;
	pthread_mutex_unlock(&mb->lock);
	while (list) {
		struct msg *m = list;
		list = m->next;
		m->next = NULL;
		m->fn(m);
	}
}

int mailbox_init(struct mailbox *mb, uv_loop_t *loop)
{
	int ret = uv_async_init(loop, &mb->async, mailbox_drain);

	if (ret < 0)
		return ret;
	mb->async.data = mb;
	mb->head = mb->tail = NULL;
	pthread_mutex_init(&mb->lock, NULL);
	return 0;
}

void mailbox_post(struct mailbox *mb, struct msg *m)
{
	m->next = NULL;
	pthread_mutex_lock(&mb->lock);
	if (mb->tail)
		mb->tail->next = m;
	else
		mb->head = m;
	mb->tail = m;
	pthread_mutex_unlock(&mb->lock);
	uv_async_send(&mb->async);
}

static void mailbox_closed(uv_handle_t *h)
{
	struct mailbox *mb = h->data;

	pthread_mutex_destroy(&mb->lock);
}

void mailbox_close(struct mailbox *mb)
{
	mailbox_drain(&mb->async);
	uv_close((uv_handle_t *)&mb->async, mailbox_closed);
}
