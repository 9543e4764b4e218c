/* handshake.h: private message transport of the attach handshake. */
#ifndef QCOW2_IPC_HANDSHAKE_H
#define QCOW2_IPC_HANDSHAKE_H

#include <stddef.h>
#include <stdint.h>

/* Sends len bytes with nfds fds attached (SCM_RIGHTS, with the first byte). */
int handshake_send(int sock, const void *buf, size_t len, const int *fds, unsigned nfds);
/* Receives exactly len bytes and at most maxfds fds (closed again on error).
 * A seqpacket message of another length is -EPROTO. */
int handshake_recv(int sock, void *buf, size_t len, int *fds, unsigned maxfds, unsigned *nfds);
/* 0 when fd is an eventfd. */
int handshake_check_eventfd(int fd);
/* 0 when fd is a memfd sealed against shrinking; its size in *size. */
int handshake_check_memfd(int fd, uint64_t *size);

#endif
