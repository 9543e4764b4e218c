/* ipc_testing.h: what libqcow2_ipc exports for its own tests only.
 *
 * Private: beside the sources, not in include/, never installed; tests reach
 * it through ipc_internal_dep (the ipc/ directory on the include path). The
 * symbols are compiled into the library like the rest; only their
 * declarations are kept out of qcow2_ipc.h, so that a VMM or the service
 * cannot come to depend on them.
 *
 * Why none of this is public. A peer in another language has two ways in:
 * it implements ipc/PROTOCOL.md over its own mapping of the region (as
 * tests/ipc/py_client.py does, sharing no code with this library), or it
 * binds the functions of qcow2_ipc.h through an FFI. Neither needs the
 * client's raw control page or its fds: qcow2_ipc_client_handshake() passes
 * the fds, submit/commit/reap/wait move the indices, and the structs that
 * render the layout stay public in qcow2_ipc.h for a C peer that maps
 * the region itself. The call eventfd is public (a VMM's own event loop
 * polls it, with qcow2_ipc_client_prepare_sleep/woken); the queue memfd and
 * the kick eventfd are not. validate is the check take()
 * runs on every entry; tests feed it entries without going through a ring.
 */
#ifndef QCOW2_IPC_TESTING_H
#define QCOW2_IPC_TESTING_H

#include "qcow2_ipc.h"

/* The client's mapping of the region: its control page, from which the
 * rest is found with qcow2_ipc_compute_layout(). Lets a test play a hostile or
 * confused client, or check what the library stored. Valid until
 * qcow2_ipc_client_free(). */
struct qcow2_ipc_ctrl *qcow2_ipc_client_ctrl(struct qcow2_ipc_client *c);

/* The client's queue memfd and kick eventfd (client -> service); owned by
 * the client, closed by qcow2_ipc_client_free(). Tests dup them (and the
 * public call fd) to attach a service without a socket, or map a second
 * view of the region. */
int qcow2_ipc_client_queue_fd(const struct qcow2_ipc_client *c);
int qcow2_ipc_client_kick_fd(const struct qcow2_ipc_client *c);

/* Validates one entry (a local copy) against geometry, region sizes and opts;
 * fills req (its iov must hold max_segs). Used by take on every entry. */
int qcow2_ipc_server_validate(struct qcow2_ipc_server *s, const struct qcow2_ipc_sqe *sqe,
			      struct qcow2_ipc_server_req *req);

/* Crash injection for the restart tests: when set, called at each point where
 * a service dying leaves the in-flight table in a distinct state (see
 * ring_maybe_crash in ring.h). */
extern void (*ring_crash_point)(const char *where);

#endif
