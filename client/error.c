/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* error.c: the message of the calling thread's last failed call. */
#include "client.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* Per thread, so that queues on different threads never see each
 * other's messages (libblkio's rule). */
static _Thread_local char msg[512];

const char *q2c_get_error_msg(void)
{
	return msg;
}

int q2c_verr(int err, const char *fmt, va_list ap)
{
	vsnprintf(msg, sizeof(msg), fmt, ap);
	return err;
}

int q2c_err(int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	q2c_verr(err, fmt, ap);
	va_end(ap);
	return err;
}

const char *q2c_strerror(int err, char *buf, size_t len)
{
	/* The GNU strerror_r: returns a static string or fills buf. */
	return strerror_r(err < 0 ? -err : err, buf, len);
}
