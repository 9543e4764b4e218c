/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * hello: the smallest program that does IO through qcow2d with
 * libqcow2-client. It opens an image, writes a pattern, reads it back and
 * compares, flushes, prints the image's statistics and exits 0.
 *
 *   hello SOCKET IMAGE_PATH
 *
 * Build it against an installed library:
 *   cc hello.c $(pkg-config --cflags --libs qcow2-client) -o hello
 */
#include <qcow2-client.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LEN (64 * 1024)

/* Queue one request, then wait for its completion. */
static int wait_one(struct q2c_queue *q, const char *what)
{
	struct q2c_completion c;
	int n = q2cq_do_io(q, &c, 1, 1, NULL);

	if (n != 1) {
		fprintf(stderr, "hello: %s: %s\n", what, q2c_get_error_msg());
		return -1;
	}
	if (c.ret < 0) {
		fprintf(stderr, "hello: %s: %s\n", what, c.error_msg);
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct q2c *b = NULL;
	struct q2c_queue *q;
	uint64_t capacity;
	char *stats = NULL;
	void *out = NULL, *in = NULL;
	int align, ret = 1;

	if (argc != 3) {
		fprintf(stderr, "usage: hello SOCKET IMAGE_PATH\n");
		return 2;
	}
	if (q2c_create(&b) < 0 || q2c_set_str(b, "socket", argv[1]) < 0 ||
	    q2c_set_str(b, "path", argv[2]) < 0 || q2c_connect(b) < 0 ||
	    q2c_get_uint64(b, "capacity", &capacity) < 0 ||
	    q2c_get_int(b, "buf-alignment", &align) < 0 || q2c_start(b) < 0) {
		fprintf(stderr, "hello: %s\n", q2c_get_error_msg());
		goto out;
	}
	if (capacity < LEN) {
		fprintf(stderr, "hello: the image is smaller than %d bytes\n", LEN);
		goto out;
	}
	q = q2c_get_queue(b, 0);
	/* Plain memory: the library copies it through the queue's data area
	 * (a VMM maps its guest RAM with q2c_map_mem_region() instead).
	 * Buffers follow buf-alignment (a power of two; 1 with qcow2d today). */
	if (align < 1 || align > LEN || !(out = aligned_alloc((size_t)align, LEN)) ||
	    !(in = aligned_alloc((size_t)align, LEN))) {
		fprintf(stderr, "hello: out of memory\n");
		goto out;
	}
	for (int i = 0; i < LEN; i++)
		((unsigned char *)out)[i] = (unsigned char)(i * 7 + 1);

	q2cq_write(q, 0, out, LEN, NULL, 0);
	if (wait_one(q, "write") < 0)
		goto out;
	q2cq_read(q, 0, in, LEN, NULL, 0);
	if (wait_one(q, "read") < 0)
		goto out;
	if (memcmp(in, out, LEN)) {
		fprintf(stderr, "hello: the data read back differs from what was written\n");
		goto out;
	}
	q2cq_flush(q, NULL, 0);
	if (wait_one(q, "flush") < 0)
		goto out;
	if (q2c_get_str(b, "stats", &stats) < 0) {
		fprintf(stderr, "hello: %s\n", q2c_get_error_msg());
		goto out;
	}
	printf("hello: wrote, read back and flushed %d bytes of a %llu-byte disk\n", LEN,
	       (unsigned long long)capacity);
	printf("%s\n", stats);
	ret = 0;
out:
	free(stats);
	q2c_destroy(&b);
	free(out);
	free(in);
	return ret;
}
