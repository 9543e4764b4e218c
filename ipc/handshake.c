/* handshake.c: the attach handshake over a connected AF_UNIX socket. The
 * client sends a hello with the queue's fds (SCM_RIGHTS); the service checks
 * every byte and every fd before it maps anything, then replies. */
#include "extstruct.h"
#include "handshake.h"
#include "qcow2_ipc.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_FDS (3u + QCOW2_IPC_MAX_REGIONS)

int handshake_send(int sock, const void *buf, size_t len, const int *fds, unsigned nfds)
{
	union {
		char buf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
		struct cmsghdr align;
	} cbuf;
	const char *p = buf;
	size_t done = 0;

	if (nfds > MAX_FDS)
		return -EINVAL;
	memset(&cbuf, 0, sizeof(cbuf));
	while (done < len) {
		struct iovec iov = { .iov_base = (void *)(p + done), .iov_len = len - done };
		struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
		if (done == 0 && nfds > 0) {
			msg.msg_control = cbuf.buf;
			msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
			struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
			c->cmsg_level = SOL_SOCKET;
			c->cmsg_type = SCM_RIGHTS;
			c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
			memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
		}
		ssize_t n = sendmsg(sock, &msg, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		done += (size_t)n;
	}
	return 0;
}

static void close_fds(int *fds, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		close(fds[i]);
}

/* Collects SCM_RIGHTS fds from msg into fds; anything else is an error (the
 * fds are still collected so that they get closed). */
static int take_fds(struct msghdr *msg, int *fds, unsigned maxfds, unsigned *nfds)
{
	int err = 0;

	if (msg->msg_flags & MSG_CTRUNC)
		err = -EPROTO;          /* more fds than we accept: the rest are gone */
	for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c; c = CMSG_NXTHDR(msg, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) {
			err = -EPROTO;
			continue;
		}
		unsigned n = (unsigned)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
		for (unsigned i = 0; i < n; i++) {
			int fd;
			memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
			if (*nfds < maxfds)
				fds[(*nfds)++] = fd;
			else {
				close(fd);
				err = -EPROTO;
			}
		}
	}
	return err;
}

int handshake_recv(int sock, void *buf, size_t len, int *fds, unsigned maxfds, unsigned *nfds)
{
	union {
		char buf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
		struct cmsghdr align;
	} cbuf;
	int type = 0;
	socklen_t tlen = sizeof(type);
	char *p = buf;
	size_t done = 0;
	int err = 0;

	*nfds = 0;
	if (maxfds > MAX_FDS)
		return -EINVAL;
	if (getsockopt(sock, SOL_SOCKET, SO_TYPE, &type, &tlen) < 0)
		return -errno;
	if (type != SOCK_STREAM && type != SOCK_SEQPACKET)
		return -ENOTSOCK;
	while (done < len) {
		/* One spare byte shows a seqpacket message that is too long. */
		char spare;
		struct iovec iov[2] = {
			{ .iov_base = p + done, .iov_len = len - done },
			{ .iov_base = &spare, .iov_len = 1 },
		};
		struct msghdr msg = {
			.msg_iov = iov,
			.msg_iovlen = type == SOCK_SEQPACKET ? 2 : 1,
			.msg_control = cbuf.buf,
			.msg_controllen = sizeof(cbuf.buf),
		};
		ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			err = -errno;
			break;
		}
		int e = take_fds(&msg, fds, maxfds, nfds);
		if (e < 0 && err == 0)
			err = e;
		if (n == 0) {
			err = done == 0 ? -ECONNRESET : -EPROTO;
			break;
		}
		if (type == SOCK_SEQPACKET) {
			if ((size_t)n != len || (msg.msg_flags & MSG_TRUNC))
				err = -EPROTO;
			break;
		}
		done += (size_t)n;
	}
	if (err < 0) {
		close_fds(fds, *nfds);
		*nfds = 0;
	}
	return err;
}

int handshake_check_eventfd(int fd)
{
	char path[64], target[64];
	struct stat st;

	if (fstat(fd, &st) < 0)
		return -errno;
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(path, target, sizeof(target) - 1);
	if (n < 0)
		return -errno;
	target[n] = 0;
	return strcmp(target, "anon_inode:[eventfd]") == 0 ? 0 : -EINVAL;
}

int handshake_check_memfd(int fd, uint64_t *size)
{
	struct stat st;

	if (fstat(fd, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode) || st.st_size <= 0)
		return -EINVAL;
	/* Only memfds (and hugetlbfs/shmem files made sealable) answer this;
	 * without F_SEAL_SHRINK the client could truncate the file under our
	 * mapping and make us fault with SIGBUS. */
	int seals = fcntl(fd, F_GET_SEALS);
	if (seals < 0)
		return errno == EINVAL ? -EINVAL : -errno;
	if (!(seals & F_SEAL_SHRINK))
		return -EPERM;
	/* Both sides write the region. */
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0)
		return -errno;
	if ((fl & O_ACCMODE) != O_RDWR || (seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE)))
		return -EACCES;
	*size = (uint64_t)st.st_size;
	return 0;
}

int qcow2_ipc_server_recv_hello(int sock, struct qcow2_ipc_attach *att)
{
	struct qcow2_ipc_hello h;
	int fds[MAX_FDS];
	unsigned nfds = 0;
	struct qcow2_ipc_layout l;

	int err = ext_prepare_out(att, sizeof(*att), EXT_ATTACH_VER0);
	if (err < 0)
		return err;
	att->reserved0 = 0;
	att->queue_fd = att->kick_fd = att->call_fd = -1;
	att->nr_regions = 0;
	err = handshake_recv(sock, &h, sizeof(h), fds, MAX_FDS, &nfds);
	if (err < 0)
		return err;

	if (h.magic != QCOW2_IPC_HELLO_MAGIC || h.flags != 0)
		err = -EPROTO;
	for (unsigned i = 0; i < sizeof(h.reserved) / sizeof(h.reserved[0]); i++)
		if (h.reserved[i] != 0)
			err = -EPROTO;
	if (err == 0 && (h.version_min > h.version_max || h.version_min > QCOW2_IPC_VERSION ||
			 h.version_max < QCOW2_IPC_VERSION))
		err = -EPROTONOSUPPORT;
	if (err == 0 && h.nr_regions > QCOW2_IPC_MAX_REGIONS)
		err = -EINVAL;
	if (err == 0 && nfds != 3 + h.nr_regions)
		err = -EPROTO;
	struct qcow2_ipc_geometry g = {
		.sq_entries = h.sq_entries,
		.cq_entries = h.cq_entries,
		.max_segs = h.max_segs,
		.data_size = h.data_size,
	};
	if (err == 0 && (qcow2_ipc_compute_layout(&g, &l) < 0 || l.size != h.region_size))
		err = -EINVAL;
	if (err < 0) {
		close_fds(fds, nfds);
		return err;
	}
	att->version = QCOW2_IPC_VERSION;
	att->geometry = g;
	att->region_size = h.region_size;
	att->queue_fd = fds[0];
	att->kick_fd = fds[1];
	att->call_fd = fds[2];
	att->nr_regions = h.nr_regions;
	for (unsigned i = 0; i < h.nr_regions; i++)
		att->region_fds[i] = fds[3 + i];
	return 0;
}

int qcow2_ipc_server_send_reply(int sock, uint16_t version, int32_t status)
{
	struct qcow2_ipc_reply r;

	memset(&r, 0, sizeof(r));
	r.magic = QCOW2_IPC_REPLY_MAGIC;
	r.version = version;
	r.status = status;
	return handshake_send(sock, &r, sizeof(r), NULL, 0);
}

void qcow2_ipc_attach_close(struct qcow2_ipc_attach *att)
{
	int *fds[] = { &att->queue_fd, &att->kick_fd, &att->call_fd };

	for (unsigned i = 0; i < 3; i++) {
		if (*fds[i] >= 0)
			close(*fds[i]);
		*fds[i] = -1;
	}
	for (unsigned i = 0; i < att->nr_regions && i < QCOW2_IPC_MAX_REGIONS; i++)
		if (att->region_fds[i] >= 0)
			close(att->region_fds[i]);
	att->nr_regions = 0;
}
