/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * Image locking, compatible with QEMU's (block/file-posix.c): open file
 * description (OFD) byte-range locks, so that QEMU and qcow2d never both
 * write an image, nor read one the other is writing.
 *
 * Byte 100 + i is read-locked by every opener that holds permission i; byte
 * 200 + i by every opener that does not let others take permission i. The
 * permissions: 0 consistent read, 1 write, 2 write unchanged, 3 resize. An
 * image's metadata must not change under its user, so every opener (as
 * QEMU does for a format's file) refuses to share write and resize; a
 * writer holds all four. A conflict is another open file description's
 * lock on a byte we test: 200 + i for a permission we take, 100 + i for
 * one we do not share. Locks are taken first and tested after, as QEMU
 * does, so two racing openers cannot both succeed.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>

#include "io/io.h"

#define LOCK_PERM_BASE 100
#define LOCK_SHARED_BASE 200

enum { PERM_CONSISTENT_READ, PERM_WRITE, PERM_WRITE_UNCHANGED, PERM_RESIZE,
       PERM_COUNT };

static const char *perm_names[PERM_COUNT] = {
	"consistent read", "write", "write unchanged", "resize",
};

static int lock_byte(int fd, off_t off, short type, int cmd, short *seen)
{
	struct flock fl = {
		.l_type = type, .l_whence = SEEK_SET, .l_start = off, .l_len = 1,
	};

	if (fcntl(fd, cmd, &fl) < 0)
		return -errno;
	if (seen)
		*seen = fl.l_type;
	return 0;
}

/* Release every byte we may hold. Closing the fd would too, but only once
 * every reference to the open file is gone: io_uring may keep one a little
 * past the last completion, and the image must be free when close returns. */
void file_unlock(int fd)
{
	struct flock fl = {
		.l_type = F_UNLCK, .l_whence = SEEK_SET,
		.l_start = LOCK_PERM_BASE, .l_len = LOCK_SHARED_BASE + PERM_COUNT -
						     LOCK_PERM_BASE,
	};

	(void)fcntl(fd, F_OFD_SETLK, &fl);
}

int file_lock(int fd, bool rdwr, char *err, size_t errlen)
{
	unsigned perm = 1u << PERM_CONSISTENT_READ;
	unsigned unshared = 1u << PERM_WRITE | 1u << PERM_RESIZE;
	int ret = 0;

	if (rdwr)
		perm |= 1u << PERM_WRITE | 1u << PERM_WRITE_UNCHANGED |
			1u << PERM_RESIZE;
	for (int i = 0; i < PERM_COUNT && ret == 0; i++) {
		if (perm & (1u << i))
			ret = lock_byte(fd, LOCK_PERM_BASE + i, F_RDLCK, F_OFD_SETLK,
					NULL);
		if (ret == 0 && (unshared & (1u << i)))
			ret = lock_byte(fd, LOCK_SHARED_BASE + i, F_RDLCK,
					F_OFD_SETLK, NULL);
	}
	if (ret == -EINVAL || ret == -ENOTSUP || ret == -ENOLCK) {
		/* A file system without OFD locks: QEMU's locking=auto goes on
		 * without them too. */
		file_unlock(fd);
		return 0;
	}
	for (int i = 0; i < PERM_COUNT && ret == 0; i++) {
		short seen = F_UNLCK;

		if (perm & (1u << i)) {
			ret = lock_byte(fd, LOCK_SHARED_BASE + i, F_WRLCK,
					F_OFD_GETLK, &seen);
			if (ret == 0 && seen != F_UNLCK) {
				snprintf(err, errlen, "cannot get the \"%s\" lock: the "
					 "image is in use by another process (QEMU, "
					 "qcow2d...) that does not share it",
					 perm_names[i]);
				ret = -EBUSY;
			}
		}
		if (ret == 0 && (unshared & (1u << i))) {
			ret = lock_byte(fd, LOCK_PERM_BASE + i, F_WRLCK, F_OFD_GETLK,
					&seen);
			if (ret == 0 && seen != F_UNLCK) {
				snprintf(err, errlen, "cannot get the shared \"%s\" "
					 "lock: another process (QEMU, qcow2d...) has the "
					 "image open for writing; to read it anyway, force "
					 "sharing (-U)", perm_names[i]);
				ret = -EBUSY;
			}
		}
	}
	if (ret < 0) {
		if (ret != -EBUSY)
			snprintf(err, errlen, "cannot lock the image: %s",
				 strerror(-ret));
		file_unlock(fd);
	}
	return ret;
}
