/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * qcow2d: options and configuration, start-up, signals and the clean stop.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "service.h"

static const char usage_text[] =
"Usage: qcow2d [OPTIONS]\n"
"\n"
"The qcow2 storage service: owns open qcow2 images and serves their IO to\n"
"clients over shared-memory queues; controlled with JSON-RPC 2.0 over a\n"
"unix socket (qcow2ctl is its command-line client).\n"
"\n"
"Options:\n"
"  --socket PATH         control socket (default: $QCOW2D_SOCKET, else\n"
"                        /run/qcow2d/qcow2d.sock as root, else\n"
"                        $XDG_RUNTIME_DIR/qcow2d.sock); created mode 0660, its\n"
"                        directory 0750 if missing\n"
"  --workers N           worker threads, each with its own event loop and\n"
"                        io_uring (default: the number of online CPUs)\n"
"  --allow-dir DIR       backing and data files that an image names are\n"
"                        followed only inside these directories (repeatable),\n"
"                        or when image.open names them exactly ('backing',\n"
"                        'data_file'); an image's own directory is not implied\n"
"  --config FILE         JSON file with the same settings and images to open\n"
"                        at start (see the README); options given here win\n"
"  --flush-interval MS   metadata changed more than MS ago and not yet\n"
"                        written back (by a client flush) is written back\n"
"                        (default 30000; per image: image.open's\n"
"                        flush_interval_ms; 0: only on flush, eviction and\n"
"                        close)\n"
"  --log-level LEVEL     error, warn, info (default) or debug; logs go to\n"
"                        stderr, one line per event\n"
"  --state-file FILE     keep the open images' image.open params in FILE\n"
"                        (an absolute path) and open them again at start:\n"
"                        after a crash, a SIGKILL or a clean stop, the\n"
"                        images come back with their names and options\n"
"  --metrics-listen ADDR:PORT\n"
"                        also serve the OpenMetrics text of service.metrics\n"
"                        over HTTP, GET /metrics, for Prometheus; ADDR is\n"
"                        numeric, IPv4 or [IPv6] (127.0.0.1:9560,\n"
"                        [::1]:9560) and only it is bound; PORT 0 takes a\n"
"                        free port (the log names it). Default: off. No TLS\n"
"                        and no authentication: bind a loopback or otherwise\n"
"                        protected address\n"
"  --version             print the version and exit\n"
"  -h, --help            print this help and exit\n"
"\n"
"SIGTERM or SIGINT stops the service cleanly: it stops accepting, flushes\n"
"and closes every image, lets metrics answers already made go out (at most\n"
"5 s), and exits 0.\n";

uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- configuration ------------------------------------------------------- */

static int add_allow_dir(struct svc_config *cfg, const char *dir)
{
	char real[PATH_MAX], **v;

	if (!realpath(dir, real)) {
		fprintf(stderr, "qcow2d: --allow-dir %s: %s\n", dir, strerror(errno));
		return -errno;
	}
	v = realloc(cfg->allow_dirs, (cfg->n_allow_dirs + 1) * sizeof(*v));
	if (!v || !(v[cfg->n_allow_dirs] = strdup(real))) {
		if (v)
			cfg->allow_dirs = v;
		return -ENOMEM;
	}
	cfg->allow_dirs = v;
	cfg->n_allow_dirs++;
	return 0;
}

static int parse_uint(const char *opt, const char *s, unsigned max,
		      unsigned *out)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || end == s || *end || s[0] == '-' || v > max) {
		fprintf(stderr, "qcow2d: %s: expected an integer from 0 to %u, "
			"got '%s'\n", opt, max, s);
		return -EINVAL;
	}
	*out = (unsigned)v;
	return 0;
}

/* Settings from --config, for those the command line left unset. */
static int load_config(const char *file, struct svc_config *cfg, bool have[6])
{
	json_error_t jerr;
	json_t *j = json_load_file(file, JSON_REJECT_DUPLICATES, &jerr), *v;
	const char *key;
	char msg[512];
	int ret = -EINVAL;

	if (!j) {
		fprintf(stderr, "qcow2d: --config %s: line %d column %d: %s\n", file,
			jerr.line, jerr.column, jerr.text);
		return -EINVAL;
	}
	if (!json_is_object(j)) {
		fprintf(stderr, "qcow2d: --config %s: expected a JSON object\n", file);
		goto out;
	}
	json_object_foreach(j, key, v) {
		if (!strcmp(key, "socket") && json_is_string(v)) {
			if (!have[0] && !(cfg->socket_path = strdup(json_string_value(v))))
				goto out;
		} else if (!strcmp(key, "workers") && json_is_integer(v) &&
			   json_integer_value(v) > 0 &&
			   json_integer_value(v) <= QCOW2D_MAX_WORKERS) {
			if (!have[1])
				cfg->workers = (unsigned)json_integer_value(v);
		} else if (!strcmp(key, "flush_interval_ms") && json_is_integer(v) &&
			   json_integer_value(v) >= 0 &&
			   json_integer_value(v) <= UINT32_MAX) {
			if (!have[2])
				cfg->flush_interval_ms = (unsigned)json_integer_value(v);
		} else if (!strcmp(key, "log_level") && json_is_string(v) &&
			   log_parse_level(json_string_value(v), &cfg->log_level) == 0) {
			(void)have[3]; /* the command line's, if given, is set later */
		} else if (!strcmp(key, "allow_dirs") && json_is_array(v)) {
			size_t i;
			json_t *d;
			json_array_foreach(v, i, d) {
				if (!json_is_string(d)) {
					fprintf(stderr, "qcow2d: --config %s: allow_dirs[%zu]: "
						"expected a string\n", file, i);
					goto out;
				}
				if (add_allow_dir(cfg, json_string_value(d)) < 0)
					goto out;
			}
		} else if (!strcmp(key, "metrics_listen") && json_is_string(v)) {
			struct sockaddr_storage ss;
			socklen_t sslen;

			if (metrics_listen_parse(json_string_value(v), &ss, &sslen, msg,
						 sizeof(msg)) < 0) {
				fprintf(stderr, "qcow2d: --config %s: metrics_listen: %s\n",
					file, msg);
				goto out;
			}
			if (!have[4] &&
			    !(cfg->metrics_listen = strdup(json_string_value(v))))
				goto out;
		} else if (!strcmp(key, "state_file") && json_is_string(v)) {
			if (!have[5] &&
			    !(cfg->state_file = strdup(json_string_value(v))))
				goto out;
		} else if (!strcmp(key, "images")) {
			if (images_check_config(v, msg, sizeof(msg)) < 0) {
				fprintf(stderr, "qcow2d: --config %s: %s\n", file, msg);
				goto out;
			}
			cfg->open_at_start = json_incref(v);
		} else {
			fprintf(stderr, "qcow2d: --config %s: unknown or invalid setting "
				"'%s' (settings: socket, workers, allow_dirs, "
				"flush_interval_ms, log_level, metrics_listen, state_file, "
				"images)\n", file, key);
			goto out;
		}
	}
	ret = 0;
out:
	json_decref(j);
	return ret;
}

/* The record is read now, and its directory must take a new file: a
 * service that could not keep it would lose its images at a restart. */
static int check_state_file(struct svc_config *cfg)
{
	char dir[PATH_MAX], *slash;

	if (cfg->state_file[0] != '/') {
		fprintf(stderr, "qcow2d: state_file: expected an absolute path, "
			"got '%s'\n", cfg->state_file);
		return -EINVAL;
	}
	snprintf(dir, sizeof(dir), "%s", cfg->state_file);
	slash = strrchr(dir, '/');
	if (slash == dir)
		slash[1] = '\0';
	else
		*slash = '\0';
	if (access(dir, W_OK | X_OK) < 0) {
		fprintf(stderr, "qcow2d: --state-file %s: cannot write in %s: %s\n",
			cfg->state_file, dir, strerror(errno));
		return -errno;
	}
	return state_load(cfg->state_file, &cfg->state_images);
}

static int default_socket(struct svc_config *cfg)
{
	const char *env = getenv("QCOW2D_SOCKET"), *xdg = getenv("XDG_RUNTIME_DIR");

	if (env && *env)
		cfg->socket_path = strdup(env);
	else if (geteuid() == 0)
		cfg->socket_path = strdup("/run/qcow2d/qcow2d.sock");
	else if (xdg && *xdg) {
		if (asprintf(&cfg->socket_path, "%s/qcow2d.sock", xdg) < 0)
			cfg->socket_path = NULL;
	} else {
		fprintf(stderr, "qcow2d: no socket path: pass --socket, or set "
			"QCOW2D_SOCKET or XDG_RUNTIME_DIR\n");
		return -EINVAL;
	}
	return cfg->socket_path ? 0 : -ENOMEM;
}

enum { OPT_SOCKET = 256, OPT_WORKERS, OPT_ALLOW_DIR, OPT_CONFIG,
       OPT_FLUSH_INTERVAL, OPT_LOG_LEVEL, OPT_METRICS_LISTEN, OPT_STATE_FILE,
       OPT_VERSION };

static int parse_args(int argc, char **argv, struct svc_config *cfg)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, OPT_SOCKET },
		{ "workers", required_argument, NULL, OPT_WORKERS },
		{ "allow-dir", required_argument, NULL, OPT_ALLOW_DIR },
		{ "config", required_argument, NULL, OPT_CONFIG },
		{ "flush-interval", required_argument, NULL, OPT_FLUSH_INTERVAL },
		{ "log-level", required_argument, NULL, OPT_LOG_LEVEL },
		{ "metrics-listen", required_argument, NULL, OPT_METRICS_LISTEN },
		{ "state-file", required_argument, NULL, OPT_STATE_FILE },
		{ "version", no_argument, NULL, OPT_VERSION },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *config = NULL;
	/* socket, workers, flush interval, log level, metrics listen, state */
	bool have[6] = { false };
	enum log_level level = LOG_INFO;
	int c;

	cfg->flush_interval_ms = QCOW2D_DEFAULT_FLUSH_INTERVAL_MS;
	cfg->log_level = LOG_INFO;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case OPT_SOCKET:
			free(cfg->socket_path);
			cfg->socket_path = strdup(optarg);
			have[0] = true;
			break;
		case OPT_WORKERS:
			if (parse_uint("--workers", optarg, QCOW2D_MAX_WORKERS,
				       &cfg->workers) < 0)
				return 2;
			if (!cfg->workers) {
				fprintf(stderr, "qcow2d: --workers: at least 1\n");
				return 2;
			}
			have[1] = true;
			break;
		case OPT_ALLOW_DIR:
			if (add_allow_dir(cfg, optarg) < 0)
				return 2;
			break;
		case OPT_CONFIG:
			config = optarg;
			break;
		case OPT_FLUSH_INTERVAL:
			if (parse_uint("--flush-interval", optarg, UINT32_MAX,
				       &cfg->flush_interval_ms) < 0)
				return 2;
			have[2] = true;
			break;
		case OPT_LOG_LEVEL:
			if (log_parse_level(optarg, &level) < 0) {
				fprintf(stderr, "qcow2d: --log-level: error, warn, info "
					"or debug, got '%s'\n", optarg);
				return 2;
			}
			have[3] = true;
			break;
		case OPT_METRICS_LISTEN: {
			struct sockaddr_storage ss;
			socklen_t sslen;
			char msg[320];

			if (metrics_listen_parse(optarg, &ss, &sslen, msg,
						 sizeof(msg)) < 0) {
				fprintf(stderr, "qcow2d: --metrics-listen: %s\n", msg);
				return 2;
			}
			free(cfg->metrics_listen);
			cfg->metrics_listen = strdup(optarg);
			have[4] = true;
			break;
		}
		case OPT_STATE_FILE:
			if (optarg[0] != '/') {
				fprintf(stderr, "qcow2d: --state-file: expected an "
					"absolute path, got '%s'\n", optarg);
				return 2;
			}
			free(cfg->state_file);
			cfg->state_file = strdup(optarg);
			have[5] = true;
			break;
		case OPT_VERSION:
			printf("qcow2d %s\n", QCOW2D_VERSION);
			return 0;
		case 'h':
			fputs(usage_text, stdout);
			return 0;
		default:
			fputs("Try 'qcow2d --help'.\n", stderr);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "qcow2d: unexpected argument '%s'\nTry 'qcow2d "
			"--help'.\n", argv[optind]);
		return 2;
	}
	if (config && load_config(config, cfg, have) < 0)
		return 2;
	if (have[3])
		cfg->log_level = level;
	if (!cfg->socket_path && default_socket(cfg) < 0)
		return 2;
	if (cfg->state_file && check_state_file(cfg) < 0)
		return 2;
	if (!cfg->workers) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);
		cfg->workers = n > 0 ? (n > QCOW2D_MAX_WORKERS ? QCOW2D_MAX_WORKERS :
								  (unsigned)n) : 1;
	}
	return -1; /* go on */
}

static void free_config(struct svc_config *cfg)
{
	free(cfg->socket_path);
	for (unsigned i = 0; i < cfg->n_allow_dirs; i++)
		free(cfg->allow_dirs[i]);
	free(cfg->allow_dirs);
	json_decref(cfg->open_at_start);
	free(cfg->metrics_listen);
	free(cfg->state_file);
	json_decref(cfg->state_images);
}

/* ---- start and stop ------------------------------------------------------ */

/* The last step: the HTTP side's answers are out (or it has none). */
static void stopped(struct svc *svc)
{
	uv_close((uv_handle_t *)&svc->sigterm, NULL);
	uv_close((uv_handle_t *)&svc->sigint, NULL);
	mailbox_close(&svc->mb);
	log_msg(LOG_INFO, "stopped");
}

static void all_closed(struct svc *svc)
{
	workers_stop(svc);
	control_close_all(svc);
	metrics_http_stop(svc, stopped);
}

void svc_stop(struct svc *svc)
{
	if (svc->stopping) {
		log_msg(LOG_INFO, "already stopping: waiting for %u image(s) to "
			"close", svc->nimages);
		return;
	}
	svc->stopping = true;
	log_msg(LOG_INFO, "stopping: closing %u image(s)", svc->nimages);
	if (!uv_is_closing((uv_handle_t *)&svc->listener))
		uv_close((uv_handle_t *)&svc->listener, NULL);
	metrics_http_quiesce(svc);
	images_close_all(svc, all_closed);
}

static void on_signal(uv_signal_t *h, int signum)
{
	log_msg(LOG_INFO, "signal %d (%s)", signum, strsignal(signum));
	svc_stop(h->data);
}

/* Many clients and images each hold descriptors: take what we may. */
static void raise_fd_limit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

int main(int argc, char **argv)
{
	struct svc svc = { 0 };
	int ret;

	ret = parse_args(argc, argv, &svc.cfg);
	if (ret >= 0) {
		free_config(&svc.cfg);
		return ret;
	}
	log_set_level(svc.cfg.log_level);
	signal(SIGPIPE, SIG_IGN);
	raise_fd_limit();
	svc.loop = uv_default_loop();
	svc.start_ns = now_ns();
	svc.method_counts = json_object();
	if (!svc.method_counts || mailbox_init(&svc.mb, svc.loop) < 0) {
		log_msg(LOG_ERROR, "out of memory");
		json_decref(svc.method_counts);
		free_config(&svc.cfg);
		return 1;
	}
	/* The control socket last: once it answers, the rest is up. */
	ret = workers_start(&svc, svc.cfg.workers);
	if (ret == 0)
		ret = metrics_http_start(&svc);
	if (ret == 0)
		ret = control_listen(&svc);
	if (ret < 0) {
		metrics_http_stop(&svc, NULL);
		if (svc.nworkers)
			workers_stop(&svc);
		mailbox_close(&svc.mb);
		uv_run(svc.loop, UV_RUN_DEFAULT);
		json_decref(svc.method_counts);
		free_config(&svc.cfg);
		return 1;
	}
	uv_signal_init(svc.loop, &svc.sigterm);
	uv_signal_init(svc.loop, &svc.sigint);
	svc.sigterm.data = svc.sigint.data = &svc;
	uv_signal_start(&svc.sigterm, on_signal, SIGTERM);
	uv_signal_start(&svc.sigint, on_signal, SIGINT);
	log_msg(LOG_INFO, "qcow2d %s: %u worker(s), flush interval %u ms%s",
		QCOW2D_VERSION, svc.nworkers, svc.cfg.flush_interval_ms,
		svc.cfg.n_allow_dirs ? "" : ", no --allow-dir: files named by "
		"images are followed only when image.open names them");
	/* the config's images, then the record's that are not open yet */
	if (svc.cfg.open_at_start)
		images_open_at_start(&svc, svc.cfg.open_at_start, false);
	if (svc.cfg.state_images)
		images_open_at_start(&svc, svc.cfg.state_images, true);
	uv_run(svc.loop, UV_RUN_DEFAULT);
	ret = uv_loop_close(svc.loop);
	if (ret < 0)
		log_msg(LOG_WARN, "handles left open at exit: %s", uv_strerror(ret));
	json_decref(svc.method_counts);
	free_config(&svc.cfg);
	return 0;
}
