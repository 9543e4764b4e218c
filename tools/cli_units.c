/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* Sizes on the command line and in output; no libqcow2 here, so that
 * qcow2ctl (which speaks JSON to qcow2d) links it alone. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "cli_units.h"

int cli_parse_size(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;
	unsigned shift = 0;

	if (!s || !*s || *s == '-')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 0);
	if (errno || end == s)
		return -EINVAL;
	switch (*end) {
	case '\0': break;
	case 'b': case 'B': shift = 0; end++; break;
	case 'k': case 'K': shift = 10; end++; break;
	case 'm': case 'M': shift = 20; end++; break;
	case 'g': case 'G': shift = 30; end++; break;
	case 't': case 'T': shift = 40; end++; break;
	default: return -EINVAL;
	}
	if (*end == 'i' || *end == 'B')
		end++;
	if (*end == 'B')
		end++;
	if (*end)
		return -EINVAL;
	if (shift && v > (UINT64_MAX >> shift))
		return -ERANGE;
	*out = (uint64_t)v << shift;
	return 0;
}

void cli_human_size(uint64_t v, char *buf, int len)
{
	static const char *units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };
	int u = 0;
	double d = (double)v;

	while (d >= 1024 && u < 6) {
		d /= 1024;
		u++;
	}
	if (u == 0)
		snprintf(buf, (size_t)len, "%" PRIu64 " B", v);
	else if (d == (double)(uint64_t)d)
		snprintf(buf, (size_t)len, "%" PRIu64 " %s", (uint64_t)d, units[u]);
	else if (d >= 999.5)
		/* %.3g would print 1023.9 as "1.02e+03" */
		snprintf(buf, (size_t)len, "%.0f %s", d, units[u]);
	else
		snprintf(buf, (size_t)len, "%.3g %s", d, units[u]);
}
