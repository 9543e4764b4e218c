/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * qcow2-io: run qemu-io style commands against an image through libqcow2,
 * so the same command script can be replayed against qemu-io and against
 * us. Commands: read, write (-z zeroes), discard, flush, sleep.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

#define MAX_ARGS 16

struct io_state {
	struct qcow2_ctx *ctx;
	struct qcow2_image *img;
	struct qcow2_info info;
	bool failed;
};

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void report(const char *verb, uint64_t len, uint64_t off, double secs)
{
	char h[32];

	cli_human_size(len, h, sizeof(h));
	printf("%s %" PRIu64 "/%" PRIu64 " bytes at offset %" PRIu64 "\n", verb, len,
	       len, off);
	printf("%s, 1 ops; %.4f sec (%.3f MiB/sec and %.1f ops/sec)\n", h, secs,
	       secs > 0 ? (double)len / (1 << 20) / secs : 0.0,
	       secs > 0 ? 1.0 / secs : 0.0);
}

static int parse_pattern(const char *s, int *out)
{
	char *end;
	long v = strtol(s, &end, 0);

	if (*end || v < 0 || v > 255)
		return -EINVAL;
	*out = (int)v;
	return 0;
}

static void hexdump(const uint8_t *p, uint64_t off, uint64_t len)
{
	for (uint64_t i = 0; i < len; i += 16) {
		printf("%08" PRIx64 ":  ", off + i);
		for (uint64_t j = 0; j < 16; j++)
			printf(j < len - i ? "%02x " : "   ", j < len - i ? p[i + j] : 0);
		printf(" ");
		for (uint64_t j = 0; j < 16 && j < len - i; j++)
			putchar(p[i + j] >= 32 && p[i + j] < 127 ? p[i + j] : '.');
		printf("\n");
	}
}

static int fail(struct io_state *st, const char *cmd, int ret)
{
	const char *why = st->img ? qcow2_last_error(st->img) : "";

	fprintf(stderr, "qcow2-io: %s failed: %s%s%s\n", cmd, strerror(-ret),
		why[0] ? ": " : "", why);
	st->failed = true;
	return 1;
}

/* Returns 0 ok, 1 command failed, 2 usage error. */
static int run_command(struct io_state *st, int argc, char **argv)
{
	const char *cmd = argv[0];
	int pattern = -1, opt;
	bool zero = false, unmap = false, quiet = false, verbose = false;
	uint64_t off, len;
	uint8_t *buf = NULL;
	double t0;
	int ret;

	optind = 0; /* a full reset of glibc's getopt state between commands */
	while ((opt = getopt(argc, argv, "+P:zuqvC")) != -1) {
		switch (opt) {
		case 'P':
			if (parse_pattern(optarg, &pattern) < 0) {
				fprintf(stderr, "qcow2-io: %s: invalid pattern '%s'\n", cmd, optarg);
				return 2;
			}
			break;
		case 'z': zero = true; break;
		case 'u': unmap = true; break;
		case 'q': quiet = true; break;
		case 'v': verbose = true; break;
		case 'C': break; /* qemu-io's statistics flag: accepted */
		default:
			fprintf(stderr, "qcow2-io: %s: unknown option\n", cmd);
			return 2;
		}
	}
	if (!strcmp(cmd, "sleep")) { /* qemu-io's: milliseconds */
		struct timespec ts;
		char *end;
		unsigned long ms;

		ms = optind == argc - 1 ? strtoul(argv[optind], &end, 10) : 0;
		if (optind != argc - 1 || *end || ms > 86400000ul) {
			fprintf(stderr, "qcow2-io: sleep takes MILLISECONDS\n");
			return 2;
		}
		ts.tv_sec = (time_t)(ms / 1000);
		ts.tv_nsec = (long)(ms % 1000) * 1000000L;
		while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
			;
		return 0;
	}
	if (!strcmp(cmd, "flush")) {
		if (optind != argc) {
			fprintf(stderr, "qcow2-io: flush takes no arguments\n");
			return 2;
		}
		ret = qcow2_fsync(st->img);
		return ret < 0 ? fail(st, cmd, ret) : 0;
	}
	if (optind != argc - 2 || cli_parse_size(argv[optind], &off) < 0 ||
	    cli_parse_size(argv[optind + 1], &len) < 0) {
		fprintf(stderr, "qcow2-io: %s: expected OFFSET LENGTH\n", cmd);
		return 2;
	}
	if (len > (1ull << 31)) {
		fprintf(stderr, "qcow2-io: %s: length %" PRIu64 " is too large\n", cmd, len);
		return 2;
	}
	if (off > st->info.virtual_size || len > st->info.virtual_size - off) {
		fprintf(stderr, "qcow2-io: %s: %" PRIu64 " bytes at offset %" PRIu64
			" end past the end of the disk (%" PRIu64 " bytes)\n", cmd, len,
			off, st->info.virtual_size);
		return 1;
	}
	/* The engine takes whole blocks (a request may end at an unaligned end
	 * of the disk); qemu-io would read-modify-write, we say so instead. */
	if ((!strcmp(cmd, "read") || (!strcmp(cmd, "write") && !zero)) &&
	    (off % st->info.block_size ||
	     (len % st->info.block_size && off + len != st->info.virtual_size))) {
		fprintf(stderr, "qcow2-io: %s: offset %" PRIu64 " and length %" PRIu64
			" must be multiples of the image's %u-byte block size (its "
			"request alignment)\n", cmd, off, len, st->info.block_size);
		return 1;
	}
	t0 = now_s();
	if (!strcmp(cmd, "discard")) {
		ret = qcow2_pdiscard(st->img, off, len);
		if (ret < 0)
			return fail(st, cmd, ret);
		if (!quiet)
			report("discard", len, off, now_s() - t0);
		return 0;
	}
	if (!strcmp(cmd, "write") && zero) {
		ret = qcow2_pwrite_zeroes(st->img, off, len, unmap ? QCOW2_ZERO_UNMAP : 0);
		if (ret < 0)
			return fail(st, cmd, ret);
		if (!quiet)
			report("wrote", len, off, now_s() - t0);
		return 0;
	}
	if (posix_memalign((void **)&buf, 4096, len ? len : 1)) {
		fprintf(stderr, "qcow2-io: out of memory\n");
		return 1;
	}
	if (!strcmp(cmd, "write")) {
		memset(buf, pattern >= 0 ? pattern : 0xcd, len);
		ret = qcow2_pwrite(st->img, buf, len, off);
		free(buf);
		if (ret < 0)
			return fail(st, cmd, ret);
		if (!quiet)
			report("wrote", len, off, now_s() - t0);
		return 0;
	}
	if (!strcmp(cmd, "read")) {
		ret = qcow2_pread(st->img, buf, len, off);
		if (ret < 0) {
			free(buf);
			return fail(st, cmd, ret);
		}
		if (pattern >= 0) {
			for (uint64_t i = 0; i < len; i++) {
				if (buf[i] != pattern) {
					uint64_t j = i;
					while (j < len && buf[j] != pattern)
						j++;
					printf("Pattern verification failed at offset %" PRIu64
					       ", %" PRIu64 " bytes\n", off + i, j - i);
					st->failed = true;
					break;
				}
			}
		}
		if (verbose)
			hexdump(buf, off, len);
		free(buf);
		if (!quiet)
			report("read", len, off, now_s() - t0);
		return st->failed ? 1 : 0;
	}
	free(buf);
	fprintf(stderr, "qcow2-io: unknown command '%s'\n", cmd);
	return 2;
}

static int split(char *line, char **argv)
{
	int n = 0;

	for (char *tok = strtok(line, " \t\n"); tok && n < MAX_ARGS;
	     tok = strtok(NULL, " \t\n"))
		argv[n++] = tok;
	return n;
}

static bool mutates(const char *line)
{
	while (*line == ' ' || *line == '\t')
		line++;
	return !strncmp(line, "write", 5) || !strncmp(line, "discard", 7) ||
	       !strncmp(line, "flush", 5);
}

static const char *usage_text =
	"Usage: qcow2-io [OPTIONS] [-c COMMAND]... IMAGE\n"
	"\n"
	"Run commands against IMAGE through libqcow2, with qemu-io's syntax, in\n"
	"order; without -c, read commands from standard input (one per line;\n"
	"blank lines and lines starting with # are skipped). The image is opened\n"
	"read-write when a command writes, else read-only.\n"
	"\n"
	"Commands:\n"
	"  read [-P PATTERN] [-q] [-v] OFFSET LENGTH    read; -P verifies every\n"
	"                                 byte equals PATTERN; -v hexdumps\n"
	"  write [-P PATTERN] [-q] OFFSET LENGTH        write PATTERN (default 0xcd)\n"
	"  write -z [-u] [-q] OFFSET LENGTH             write zeroes (-u: unmap)\n"
	"  discard [-q] OFFSET LENGTH                   discard whole clusters\n"
	"  flush                                        make everything durable\n"
	"  sleep MILLISECONDS                           wait, with the image open\n"
	"OFFSET and LENGTH take k, M, G, T suffixes.\n"
	"\n"
	"Options:\n"
	"  -c, --cmd COMMAND             a command (repeatable)\n"
	"  -r, --read-only               never open read-write\n"
	CLI_COMMON_HELP
	"  -h, --help                    this text\n"
	"\n"
	"Exit status: 0 every command succeeded (and every -P matched), 1 a command\n"
	"failed or a pattern did not match, 2 usage error.\n";

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "cmd", required_argument, 0, 'c' },
		{ "read-only", no_argument, 0, 'r' },
		{ "help", no_argument, 0, 'h' },
		CLI_COMMON_LONGOPTS,
		{ 0, 0, 0, 0 },
	};
	struct cli_open o = { 0 };
	struct io_state st = { 0 };
	char **cmds = calloc((size_t)argc, sizeof(*cmds));
	int ncmds = 0, opt, status = 0;
	bool read_only = false, rw = false;
	const char *path;

	cli_prog = "qcow2-io";
	if (!cmds)
		return 1;
	while ((opt = getopt_long(argc, argv, "+hc:ri:t:f:U", longopts, NULL)) != -1) {
		int r = cli_common_opt(&o, opt, optarg);
		if (r < 0)
			return 2;
		if (r)
			continue;
		switch (opt) {
		case 'c':
			cmds[ncmds++] = optarg;
			rw |= mutates(optarg);
			break;
		case 'r':
			read_only = true;
			break;
		case 'h':
			fputs(usage_text, stdout);
			free(cmds);
			return 0;
		default:
			fputs(usage_text, stderr);
			free(cmds);
			return 2;
		}
	}
	if (optind != argc - 1) {
		fputs(usage_text, stderr);
		free(cmds);
		return 2;
	}
	path = argv[optind];
	/* Commands from stdin: read them all first, to know if we write. */
	char *lines = NULL;
	char **stdin_cmds = NULL;
	int nstdin = 0;
	if (!ncmds) {
		size_t cap = 0, len = 0;
		char buf[4096];
		while (fgets(buf, sizeof(buf), stdin)) {
			size_t l = strlen(buf);
			if (len + l + 1 > cap) {
				char *more;
				cap = (len + l + 1) * 2;
				more = realloc(lines, cap);
				if (!more) {
					fprintf(stderr, "qcow2-io: out of memory\n");
					status = 1;
					goto out;
				}
				lines = more;
			}
			memcpy(lines + len, buf, l + 1);
			len += l + 1;
			nstdin++;
		}
		stdin_cmds = calloc((size_t)nstdin + 1, sizeof(*stdin_cmds));
		if (!stdin_cmds) {
			fprintf(stderr, "qcow2-io: out of memory\n");
			status = 1;
			goto out;
		}
		for (int i = 0, pos = 0; i < nstdin; i++) {
			stdin_cmds[i] = lines + pos;
			rw |= mutates(stdin_cmds[i]);
			pos += (int)strlen(lines + pos) + 1;
		}
	}
	o.rdwr = rw && !read_only;
	if (cli_open_image(&o, path, &st.ctx, &st.img) < 0) {
		status = 1;
		goto out;
	}
	qcow2_get_info(st.img, &st.info);
	for (int i = 0; i < (ncmds ? ncmds : nstdin); i++) {
		char line[4096], *av[MAX_ARGS];
		const char *src = ncmds ? cmds[i] : stdin_cmds[i];
		int ac, r;

		snprintf(line, sizeof(line), "%s", src);
		ac = split(line, av);
		if (ac == 0 || av[0][0] == '#')
			continue;
		r = run_command(&st, ac, av);
		if (r == 2) {
			status = 2;
			break;
		}
		if (r)
			status = 1;
	}
	if (cli_close_image(st.ctx, st.img) < 0 && status == 0)
		status = 1;
out:
	free(stdin_cmds);
	free(lines);
	free(cmds);
	return status;
}
