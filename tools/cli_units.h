/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* Sizes on the command line and in output (cli_units.c): shared by every
 * tool, qcow2ctl included, without libqcow2. */
#ifndef QCOW2_TOOLS_CLI_UNITS_H
#define QCOW2_TOOLS_CLI_UNITS_H

#include <stdint.h>

/* Parse "4k", "1M", "2G", "512" (binary suffixes k/K M G T). */
int cli_parse_size(const char *s, uint64_t *out);
/* Human-readable size: "64 KiB", "1 GiB", "1.5 MiB". */
void cli_human_size(uint64_t v, char *buf, int len);

#endif
