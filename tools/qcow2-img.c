/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* qcow2-img: offline image tool; dispatches to one file per command. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "commands.h"

static const struct {
	const char *name;
	int (*fn)(int, char **);
	const char *what;
} commands[] = {
	{ "create", cmd_create, "create a qcow2 image (qemu-img's options)" },
	{ "resize", cmd_resize, "grow an image's virtual disk" },
	{ "check", cmd_check, "verify the metadata; repair leaks and refcounts" },
	{ "dump", cmd_dump, "print a metadata structure, field by field" },
	{ "stats", cmd_stats, "metadata statistics: allocation, fragmentation" },
	{ "info", cmd_info, "describe an image and its backing chain" },
	{ "map", cmd_map, "show where every guest range reads from" },
	{ "convert", cmd_convert, "copy an image's contents to a raw file" },
	{ "bench", cmd_bench, "measure the engine: IOPS and latency" },
};

static void usage(FILE *f)
{
	fprintf(f, "Usage: qcow2-img COMMAND [OPTIONS] ARGS\n\n"
		   "Offline tool for qcow2 images, built on libqcow2.\n\nCommands:\n");
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].what);
	fprintf(f, "\n'qcow2-img COMMAND --help' describes a command.\n"
		   "Exit status: 0 success, 1 error, 2 usage error.\n");
}

int main(int argc, char **argv)
{
	cli_prog = "qcow2-img";
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") ||
	    !strcmp(argv[1], "help")) {
		usage(stdout);
		return 0;
	}
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		if (!strcmp(argv[1], commands[i].name))
			return commands[i].fn(argc - 1, argv + 1);
	}
	fprintf(stderr, "qcow2-img: unknown command '%s'\n\n", argv[1]);
	usage(stderr);
	return 2;
}
