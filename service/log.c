/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* Logging: one line per event on stderr, with a level prefix journald and
 * people both read. Any thread may log (stdio locks each line). */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "service.h"

static enum log_level max_level = LOG_INFO;
static const char *const names[] = { "error", "warn", "info", "debug" };

int log_parse_level(const char *s, enum log_level *out)
{
	for (unsigned i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (!strcmp(s, names[i])) {
			*out = (enum log_level)i;
			return 0;
		}
	}
	return -EINVAL;
}

void log_set_level(enum log_level level)
{
	max_level = level;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
	char line[2048];
	va_list ap;

	if (level > max_level)
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	/* one fprintf: lines from different threads do not interleave */
	fprintf(stderr, "%s: %s\n", names[level], line);
}
