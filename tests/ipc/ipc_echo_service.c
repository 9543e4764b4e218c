/* ipc_echo_service: a minimal service for clients written in other languages
 * (tests/ipc/py_client.py), so that PROTOCOL.md is checked by an
 * implementation that shares no code with ours.
 *
 *   ipc_echo_service SOCKFD COUNT
 *
 * Accepts one queue on SOCKFD, serves COUNT requests, exits 0. READ fills byte
 * i of the request with (tag * 3 + i) & 0xff; WRITE completes with 0 if byte i
 * is (tag + i) & 0xff and -EIO otherwise; other valid requests complete with 0;
 * invalid ones with -EINVAL (counted in COUNT). Doorbells are always rung
 * (the client need not fence). */
#include "qcow2_ipc.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: ipc_echo_service SOCKFD COUNT\n");
		return 2;
	}
	int sock = atoi(argv[1]);
	unsigned long count = strtoul(argv[2], NULL, 0);
	struct qcow2_ipc_server_opts o = {
		.size = sizeof(o), .disk_size = 1ull << 30, .block_size = 512,
		.flags = QCOW2_IPC_SERVER_ALWAYS_CALL,
	};
	struct qcow2_ipc_server *s;
	int err = qcow2_ipc_server_accept(sock, &o, &s);
	if (err < 0) {
		fprintf(stderr, "ipc_echo_service: accept: %s\n", strerror(-err));
		return 1;
	}
	unsigned long done = 0;
	while (done < count) {
		struct qcow2_ipc_server_req req[16];
		unsigned n;
		err = qcow2_ipc_server_take(s, req, 16, &n);
		if (err < 0)
			break;
		for (unsigned i = 0; i < n; i++) {
			int32_t res = 0;
			uint64_t at = 0;
			for (unsigned k = 0; k < req[i].nr_iov; k++) {
				uint8_t *p = req[i].iov[k].iov_base;
				for (size_t b = 0; b < req[i].iov[k].iov_len; b++, at++) {
					if (req[i].opcode == QCOW2_IPC_OP_READ)
						p[b] = (uint8_t)(req[i].tag * 3 + at);
					else if (p[b] != (uint8_t)(req[i].tag + at))
						res = -EIO;
				}
			}
			qcow2_ipc_server_complete(s, req[i].id, res);
		}
		err = qcow2_ipc_server_publish(s);
		if (err < 0)
			break;
		struct qcow2_ipc_server_stats st = { .size = sizeof(st) };
		qcow2_ipc_server_get_stats(s, &st);
		done = st.completed;
		if (done < count && n == 0 && (err = qcow2_ipc_server_wait(s, 0, -1)) < 0)
			break;
	}
	if (err < 0)
		fprintf(stderr, "ipc_echo_service: %s\n", strerror(-err));
	qcow2_ipc_server_close(s);
	return err < 0 ? 1 : 0;
}
