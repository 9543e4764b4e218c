/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* The subcommands of qcow2-img; each returns the process exit status. */
#ifndef QCOW2_TOOLS_COMMANDS_H
#define QCOW2_TOOLS_COMMANDS_H

int cmd_info(int argc, char **argv);
int cmd_map(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_create(int argc, char **argv);
int cmd_resize(int argc, char **argv);
int cmd_check(int argc, char **argv);
int cmd_dump(int argc, char **argv);
int cmd_stats(int argc, char **argv);

#endif
