#!/usr/bin/env python3
# SPDX-License-Identifier: MIT OR Apache-2.0
"""Damage a qcow2 image made by qemu-img in one precise way, for the check
tests: damage.py KIND IMAGE. The image must have data at guest offsets 0 and
1 MiB (64 KiB clusters, 16-bit refcounts) and a compressed cluster at 4 MiB.
Prints what it did."""
import struct
import sys

sys.path.insert(0, __import__("os").path.join(__import__("os").path.dirname(__file__), ".."))
from qcow2_layout import HEADER  # noqa: E402

OFF_MASK = 0x00FFFFFFFFFFFE00


class Image:
    def __init__(self, path):
        self.f = open(path, "r+b")
        self.cs = 1 << self.hdr("cluster_bits")

    def hdr(self, name):
        off, fmt = HEADER[name]
        self.f.seek(off)
        return struct.unpack(fmt, self.f.read(struct.calcsize(fmt)))[0]

    def u64(self, off, value=None):
        self.f.seek(off)
        if value is None:
            return struct.unpack(">Q", self.f.read(8))[0]
        self.f.write(struct.pack(">Q", value))
        return value

    def l1_entry(self, guest):
        per = self.cs // 8
        return self.hdr("l1_table_offset") + (guest // self.cs // per) * 8

    def l2_entry(self, guest):
        per = self.cs // 8
        l2 = self.u64(self.l1_entry(guest)) & OFF_MASK
        return l2 + (guest // self.cs % per) * 8

    def refcount_slot(self, host):
        """Byte offset of the 16-bit refcount of the cluster at host."""
        per = self.cs // 2
        c = host // self.cs
        block = self.u64(self.hdr("refcount_table_offset") + (c // per) * 8) & OFF_MASK
        return block + (c % per) * 2

    def refcount(self, host, value=None):
        off = self.refcount_slot(host)
        self.f.seek(off)
        if value is None:
            return struct.unpack(">H", self.f.read(2))[0]
        self.f.write(struct.pack(">H", value))
        return value


def main():
    kind, path = sys.argv[1], sys.argv[2]
    img = Image(path)
    e0 = img.u64(img.l2_entry(0))
    d0 = e0 & OFF_MASK
    if kind == "refcount-too-high":
        img.refcount(d0, img.refcount(d0) + 1)
        print(f"refcount of data cluster 0x{d0:x} raised by one (a leak)")
    elif kind == "refcount-too-low":
        img.refcount(d0, 0)
        print(f"refcount of data cluster 0x{d0:x} set to 0")
    elif kind == "orphan-clusters":
        size = img.f.seek(0, 2)
        for i in range(3):
            img.refcount(size + i * img.cs, 1)
        img.f.truncate(size + 3 * img.cs)
        print("three clusters appended with refcount 1 and no reference")
    elif kind == "double-reference":
        img.u64(img.l2_entry(1 << 20), e0)
        print(f"the L2 entry of 1 MiB now points at cluster 0x{d0:x}, as 0's does")
    elif kind == "copied-missing":
        img.u64(img.l2_entry(0), e0 & ~(1 << 63))
        print(f"the COPIED flag of the L2 entry of 0 (cluster 0x{d0:x}) cleared")
    elif kind == "marked-corrupt":
        img.refcount(d0, 0)
        img.f.seek(72)
        bits = struct.unpack(">Q", img.f.read(8))[0]
        img.f.seek(72)
        img.f.write(struct.pack(">Q", bits | 2))
        print(f"refcount of data cluster 0x{d0:x} set to 0, corrupt bit set")
    elif kind == "l2-past-eof":
        img.u64(img.l2_entry(1 << 20), (1 << 63) | (1 << 40))
        print("the L2 entry of 1 MiB points 1 TiB into the file")
    elif kind == "l1-unaligned":
        e = img.u64(img.l1_entry(0))
        img.u64(img.l1_entry(0), e + 512)
        print("L1 entry 0 points 512 bytes into its L2 table")
    elif kind == "l2-over-refblock":
        rb = img.u64(img.hdr("refcount_table_offset")) & OFF_MASK
        img.u64(img.l1_entry(0), rb | (1 << 63))
        print(f"L1 entry 0 points at the refcount block at 0x{rb:x}")
    elif kind == "truncated":
        size = img.f.seek(0, 2)
        img.f.truncate(size - img.cs)
        print(f"the file is cut by one cluster (to 0x{size - img.cs:x})")
    elif kind == "compressed-past-eof":
        e = img.u64(img.l2_entry(4 << 20))
        assert e & (1 << 62), "no compressed cluster at 4 MiB"
        x = 62 - (img.hdr("cluster_bits") - 8)
        nb = (e >> x) & ((1 << (img.hdr("cluster_bits") - 8)) - 1)
        img.u64(img.l2_entry(4 << 20), (1 << 62) | (nb << x) | (1 << 36))
        print("the compressed cluster at 4 MiB points 64 GiB into the file")
    else:
        sys.exit(f"damage.py: unknown kind {kind}")


if __name__ == "__main__":
    main()
