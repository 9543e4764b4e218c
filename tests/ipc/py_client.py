#!/usr/bin/env python3
"""A queue client written from ipc/PROTOCOL.md alone (no code shared with the
C library), against tests/ipc/ipc_echo_service: if this passes, the protocol
document is enough to write a compatible client.

    py_client.py ECHO_SERVICE      exit 0 pass, 1 fail, 77 skip

x86 is assumed for memory ordering (stores are not reordered with stores,
loads not with loads); the client rings the kick doorbell on every commit and
the service rings on every publish, so no fence is needed.
"""
import fcntl
import mmap
import os
import select
import socket
import struct
import subprocess
import sys

if sys.version_info < (3, 10) or not hasattr(os, "eventfd") or os.uname().machine != "x86_64":
    print("needs Python >= 3.10 on x86_64")
    sys.exit(77)

PAGE = 4096
SQ, CQ, MAX_SEGS, DATA = 8, 16, 4, 64 * 1024
FIRST_INDEX = 0xFFFFFFF0          # cross the 2^32 wrap during the run
READ, WRITE, FLUSH, WRITE_ZEROES, DISCARD = 1, 2, 3, 4, 5


def align(x):
    return (x + PAGE - 1) // PAGE * PAGE


# Region layout (PROTOCOL.md, "Region layout").
sq_off = PAGE
cq_off = align(sq_off + SQ * 64)
seg_off = align(cq_off + CQ * 24)
inflight_off = align(seg_off + CQ * MAX_SEGS * 16)
data_off = align(inflight_off + CQ * 128)
region_size = data_off + DATA

fd = os.memfd_create("py-queue", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
os.ftruncate(fd, region_size)
fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
m = mmap.mmap(fd, region_size)
# Control page: header, then the four indices, all starting at FIRST_INDEX.
struct.pack_into("<IIIIIIQQ", m, 0, 0x51324951, 1, SQ, CQ, MAX_SEGS, 0, DATA, region_size)
for off in (128, 256, 384, 512):
    struct.pack_into("<I", m, off, FIRST_INDEX)
kick = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
call = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)

requests = []          # (opcode, flags, tag, offset, segs [(off, len)], expected res)
tag = 1000
for i in range(40):
    kind = i % 6
    tag += 1
    if kind in (0, 1):                              # READ, one or two segments
        segs = [(i % 8 * 8192, 1024)] if kind == 0 else [(i % 8 * 8192, 512), (i % 8 * 8192 + 2048, 1536)]
        requests.append((READ, 0, tag, 4096 * i, segs, 0))
    elif kind in (2, 3):                            # WRITE, right and wrong payload
        requests.append((WRITE, 0, tag, 512 * i, [(i % 8 * 8192, 2048)], 0 if kind == 2 else -5))
    elif kind == 4:
        requests.append((WRITE_ZEROES, 1, tag, 0, [], 0) if i % 12 else (FLUSH, 0, tag, 0, [], 0))
    else:                                           # invalid: unknown opcode
        requests.append((9, 0, tag, 0, [], -22))

sock, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
service = subprocess.Popen([sys.argv[1], str(peer.fileno()), str(len(requests))], pass_fds=[peer.fileno()])
peer.close()

# Handshake (PROTOCOL.md, "Handshake").
hello = struct.pack("<IHHIIIIQQI20x", 0x48324951, 1, 1, SQ, CQ, MAX_SEGS, 0, DATA, region_size, 0)
assert len(hello) == 64
socket.send_fds(sock, [hello], [fd, kick, call])
reply = sock.recv(64)
magic, version, _, status = struct.unpack_from("<IHHi", reply)
assert len(reply) == 32 and magic == 0x52324951, reply
assert status == 0 and version == 1, (status, version)


def u32(off):
    return struct.unpack_from("<I", m, off)[0]


sq_tail = cq_head = FIRST_INDEX
slots = {}             # slot -> (gen, tag)
gens = [0] * CQ
free = list(range(CQ))
pending = list(requests)
expected = {r[2]: r for r in requests}
done = {}
failures = 0

while len(done) < len(requests):
    # Submit while the SQ and the slots have room.
    while pending and free and (sq_tail - u32(256)) % 2**32 < SQ:
        op, flags, t, offset, segs, _ = pending.pop(0)
        slot = free.pop()
        gens[slot] = (gens[slot] + 1) % 2**32
        slots[slot] = (gens[slot], t)
        length = sum(ln for _, ln in segs) if op in (READ, WRITE) else (512 if op == WRITE_ZEROES else 0)
        for off, ln in segs:
            if op == WRITE:
                base = sum(l2 for o2, l2 in segs if o2 < off)
                m[data_off + off:data_off + off + ln] = bytes((t + base + b) & 0xFF for b in range(ln))
        inline = (0, 0, 0)
        if len(segs) == 1:
            inline = (segs[0][0], segs[0][1], 0)
        elif len(segs) > 1:
            for k, (off, ln) in enumerate(segs):
                struct.pack_into("<QII", m, seg_off + (slot * MAX_SEGS + k) * 16, off, ln, 0)
        if op == WRITE and expected[t][5] == -5:
            m[data_off + segs[0][0]] ^= 0xFF          # spoil the payload
        struct.pack_into("<BBHIQIIQQQII8x", m, sq_off + (sq_tail % SQ) * 64, op, flags, len(segs),
                         slot, t, gens[slot], 0, offset, length, *inline)
        sq_tail = (sq_tail + 1) % 2**32
    struct.pack_into("<I", m, 128, sq_tail)          # publish (x86: after the entries)
    os.eventfd_write(kick, 1)
    # Wait for the call, then consume completions.
    select.select([call], [], [], 1.0)
    try:
        os.eventfd_read(call)
    except BlockingIOError:
        pass
    if u32(264) != 0:
        print("service marked the queue broken")
        sys.exit(1)
    cq_tail = u32(384)
    while cq_head != cq_tail:
        t, slot, gen, res = struct.unpack_from("<QIIi", m, cq_off + (cq_head % CQ) * 24)
        cq_head = (cq_head + 1) % 2**32
        if slots.get(slot) != (gen, t):
            print(f"stale completion tag {t} slot {slot} gen {gen}")
            failures += 1
            continue
        del slots[slot]
        free.append(slot)
        op, _, _, _, segs, want = expected[t]
        if t in done or res != want:
            print(f"tag {t}: res {res}, expected {want}, seen before: {t in done}")
            failures += 1
        done[t] = res
        if op == READ:
            at = 0
            for off, ln in segs:
                got = bytes(m[data_off + off:data_off + off + ln])
                if got != bytes((t * 3 + at + b) & 0xFF for b in range(ln)):
                    print(f"tag {t}: wrong read data")
                    failures += 1
                at += ln
    struct.pack_into("<I", m, 512, cq_head)

service.wait()
if service.returncode != 0:
    print(f"service exited {service.returncode}")
    failures += 1
print(f"py_client: {len(done)} completions, indices now {sq_tail:#x}, {failures} failures")
sys.exit(1 if failures else 0)
