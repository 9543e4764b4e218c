/* ipc_test_internal.h: helpers of the ipc tests that use the library's test
 * entry points (ipc/ipc_testing.h); for tests built with ipc_internal_dep. */
#ifndef IPC_TEST_INTERNAL_H
#define IPC_TEST_INTERNAL_H

#include "ipc_test_util.h"
#include "ipc_testing.h"

/* An attach description made from a client's own fds (dup'ed), as a hello
 * would deliver it: lets tests open a service side without a socket. */
static inline int test_attach_from_client(struct qcow2_ipc_client *c,
					  const struct qcow2_ipc_geometry *g,
					  const int *region_fds, unsigned nr_regions,
					  struct qcow2_ipc_attach *att)
{
	struct qcow2_ipc_layout l;
	int err = qcow2_ipc_compute_layout(g, &l);
	if (err < 0)
		return err;
	memset(att, 0, sizeof(*att));
	att->size = sizeof(*att);
	att->version = QCOW2_IPC_VERSION;
	att->geometry = *g;
	att->region_size = l.size;
	att->queue_fd = fcntl(qcow2_ipc_client_queue_fd(c), F_DUPFD_CLOEXEC, 0);
	att->kick_fd = fcntl(qcow2_ipc_client_kick_fd(c), F_DUPFD_CLOEXEC, 0);
	att->call_fd = fcntl(qcow2_ipc_client_call_fd(c), F_DUPFD_CLOEXEC, 0);
	att->nr_regions = nr_regions;
	for (unsigned i = 0; i < nr_regions; i++)
		att->region_fds[i] = fcntl(region_fds[i], F_DUPFD_CLOEXEC, 0);
	return 0;
}

#endif
