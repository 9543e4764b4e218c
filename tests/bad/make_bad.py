#!/usr/bin/env python3
# SPDX-License-Identifier: MIT OR Apache-2.0
"""Craft hostile qcow2 images from good ones made by qemu-img (stdlib only).

  make_bad.py --list                 the case names, one per line
  make_bad.py --describe CASE        shell assignments: BASE (which good image
                                     bad_images.sh must make), MUST_REJECT (1
                                     if opening must fail), REJECT_SCOPE (all:
                                     every command; data: commands that read
                                     guest data), MSG_RE (what the error must
                                     mention), READ ("OFF LEN", the affected
                                     range), DESC
  make_bad.py CASE GOOD OUT          copy GOOD to OUT and damage OUT; some
                                     cases write more files next to OUT

Offsets follow the qcow2 specification; header fields are big-endian.
"""

import os
import shlex
import shutil
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from qcow2_layout import HEADER as HDR  # noqa: E402

# ---- image access ------------------------------------------------------


EXT_END = 0
EXT_BACKING_FORMAT = 0xE2792ACA

L2_COPIED = 1 << 63
L2_COMPRESSED = 1 << 62
OFFSET_MASK = 0x00FFFFFFFFFFFE00


class Image:
    def __init__(self, path):
        self.path = path
        self.f = open(path, "r+b")

    def close(self):
        self.f.close()

    def rd(self, off, n):
        self.f.seek(off)
        return self.f.read(n)

    def wr(self, off, data):
        self.f.seek(off)
        self.f.write(data)

    def get(self, field):
        off, fmt = HDR[field]
        return struct.unpack(fmt, self.rd(off, struct.calcsize(fmt)))[0]

    def set(self, field, value):
        off, fmt = HDR[field]
        self.wr(off, struct.pack(fmt, value))

    def u64(self, off):
        return struct.unpack(">Q", self.rd(off, 8))[0]

    def put64(self, off, v):
        self.wr(off, struct.pack(">Q", v))

    @property
    def cluster_bits(self):
        return self.get("cluster_bits")

    @property
    def cluster_size(self):
        return 1 << self.cluster_bits

    @property
    def extl2(self):
        return self.get("version") >= 3 and self.get("incompatible_features") & (1 << 4)

    def l2_entry_size(self):
        return 16 if self.extl2 else 8

    def l1_entry_off(self, guest):
        l2_entries = self.cluster_size // self.l2_entry_size()
        idx = (guest >> self.cluster_bits) // l2_entries
        return self.get("l1_table_offset") + 8 * idx

    def l2_entry_off(self, guest):
        l2_entries = self.cluster_size // self.l2_entry_size()
        l1e = self.u64(self.l1_entry_off(guest))
        l2 = l1e & OFFSET_MASK
        if not l2:
            raise SystemExit("make_bad: no L2 table for guest offset %#x" % guest)
        idx = (guest >> self.cluster_bits) % l2_entries
        return l2 + idx * self.l2_entry_size()

    def compressed_desc(self, guest):
        """(entry offset, entry, x) of the compressed cluster at guest."""
        eo = self.l2_entry_off(guest)
        e = self.u64(eo)
        if not e & L2_COMPRESSED:
            raise SystemExit("make_bad: guest %#x is not a compressed cluster "
                             "(entry %#x): the good image is not what we expect" % (guest, e))
        x = 62 - (self.cluster_bits - 8)
        return eo, e, x

    def header_end(self):
        v = self.get("version")
        return 72 if v == 2 else self.get("header_length")

    def extensions(self):
        """[(type, data)] up to the end marker."""
        off = self.header_end()
        exts = []
        while off + 8 <= self.cluster_size:
            t, n = struct.unpack(">II", self.rd(off, 8))
            if t == EXT_END:
                break
            exts.append((t, self.rd(off + 8, n)))
            off += 8 + ((n + 7) & ~7)
        return exts

    def set_backing(self, name, fmt):
        """Record backing file NAME with format FMT (None: no format ext)."""
        name = name.encode() if isinstance(name, str) else name
        exts = [(t, d) for t, d in self.extensions() if t != EXT_BACKING_FORMAT]
        if fmt is not None:
            exts.insert(0, (EXT_BACKING_FORMAT, fmt.encode()))
        start = self.header_end()
        blob = b""
        for t, d in exts:
            blob += struct.pack(">II", t, len(d)) + d + bytes((8 - len(d) % 8) % 8)
        blob += bytes(8)
        name_off = start + len(blob)
        if name_off + len(name) > self.cluster_size:
            raise SystemExit("make_bad: backing name does not fit in cluster 0")
        self.wr(start, bytes(self.cluster_size - start))
        self.wr(start, blob)
        self.wr(name_off, name)
        self.set("backing_file_offset", name_off)
        self.set("backing_file_size", len(name))


# ---- the cases -----------------------------------------------------------

# Good images (made by bad_images.sh with qemu-img/qemu-io):
#   std    v3, 64k clusters, 64 MiB; data at 0 (0x11), a compressed cluster
#          at 1M (half random, so its stream spans many sectors), data at 2M
#          (0x33) and 40M (0x44)
#   zstd   as std, compression_type=zstd
#   c512   v3, 512-byte clusters, 4 MiB (L1 of 128 entries, two clusters);
#          data at 0, 1M, 3M
#   extl2  v3, 64k clusters, extended L2, 64 MiB; data at 0, subcluster at
#          2M + 2048
CASES = {}


def case(name, base="std", reject=False, msg=None, read="0 65536", desc="",
         scope="all"):
    """reject: opening must fail. scope "all": in every command; scope
    "data": only where guest data is read (convert, qcow2-io read): info and
    map may show the image's own metadata without opening its backing chain."""
    def deco(fn):
        CASES[name] = dict(fn=fn, base=base, reject=reject, msg=msg, read=read,
                           desc=desc, scope=scope)
        return fn
    return deco


# header

@case("bad-magic", reject=True, msg="magic|qcow|format", desc="magic is not QFI\\xfb")
def _(img, out):
    img.wr(0, b"QFI\x00")


@case("version-1", reject=True, msg="version", desc="version 1")
def _(img, out):
    img.set("version", 1)


@case("version-4", reject=True, msg="version", desc="version 4")
def _(img, out):
    img.set("version", 4)


@case("header-length-64", reject=True, msg="header", desc="v3 header_length 64 (< 104)")
def _(img, out):
    img.set("header_length", 64)


@case("header-length-unaligned", desc="header_length 105 (not a multiple of 8)")
def _(img, out):
    img.set("header_length", 105)


@case("header-length-huge", desc="header_length 1 MiB (past cluster 0 and EOF)")
def _(img, out):
    img.set("header_length", 1 << 20)


@case("cluster-bits-8", reject=True, msg="cluster", desc="cluster_bits 8 (< 9)")
def _(img, out):
    img.set("cluster_bits", 8)


@case("cluster-bits-22", reject=True, msg="cluster", desc="cluster_bits 22 (4 MiB clusters)")
def _(img, out):
    img.set("cluster_bits", 22)


@case("cluster-bits-63", reject=True, msg="cluster", desc="cluster_bits 63")
def _(img, out):
    img.set("cluster_bits", 63)


@case("encrypted-aes", reject=True, msg="encrypt", desc="crypt_method 1 (AES)")
def _(img, out):
    img.set("crypt_method", 1)


@case("encrypted-luks", reject=True, msg="encrypt", desc="crypt_method 2 (LUKS), no FDE extension")
def _(img, out):
    img.set("crypt_method", 2)


@case("incompat-bit10", reject=True, msg="incompat|feature", desc="unknown incompatible feature bit 10")
def _(img, out):
    img.set("incompatible_features", img.get("incompatible_features") | (1 << 10))


@case("incompat-bit63", reject=True, msg="incompat|feature", desc="unknown incompatible feature bit 63")
def _(img, out):
    img.set("incompatible_features", img.get("incompatible_features") | (1 << 63))


@case("refcount-order-7", desc="refcount_order 7 (128-bit refcounts; max is 6)")
def _(img, out):
    img.set("refcount_order", 7)


@case("compression-type-unknown", read="1M 65536", reject=True, msg="compress",
      desc="compression type bit set, compression_type 7 (unknown: its clusters cannot be read)")
def _(img, out):
    img.set("incompatible_features", img.get("incompatible_features") | (1 << 3))
    img.wr(104, bytes([7]))


@case("data-file-no-name", reject=True, msg="data",
      desc="external data file bit set, no data file name (guest data is elsewhere)")
def _(img, out):
    img.set("incompatible_features", img.get("incompatible_features") | (1 << 2))


@case("ext-length-huge", desc="first header extension claims 0xfffffff0 bytes")
def _(img, out):
    off = img.header_end()
    t, n = struct.unpack(">II", img.rd(off, 8))
    if t == EXT_END:
        raise SystemExit("make_bad: the good image has no header extension")
    img.wr(off + 4, struct.pack(">I", 0xFFFFFFF0))


@case("size-huge", desc="virtual size 2^62 with the original L1 table")
def _(img, out):
    img.set("size", 1 << 62)


@case("snapshot-table-bogus", desc="65535 snapshots at an offset past EOF")
def _(img, out):
    img.set("nb_snapshots", 0xFFFF)
    img.set("snapshots_offset", 1 << 40)


@case("refcount-table-offset-huge", reject=True, msg="refcount table offset invalid",
      desc="refcount_table_offset 0xffffffffffff0000 (qemu-img: offset invalid)")
def _(img, out):
    img.set("refcount_table_offset", 0xffffffffffff0000)


@case("snapshot-table-offset-huge", reject=True, msg="snapshot table offset invalid",
      desc="one snapshot at 0xffffffffffff0000 (qemu-img: offset invalid)")
def _(img, out):
    img.set("nb_snapshots", 1)
    img.set("snapshots_offset", 0xffffffffffff0000)


@case("refcount-table-bogus", desc="refcount table unaligned and past EOF, 2^31 clusters")
def _(img, out):
    img.set("refcount_table_offset", (1 << 40) + 512)
    img.set("refcount_table_clusters", 1 << 31)


# L1 table

@case("l1-unaligned", reject=True, msg="l1|align", desc="L1 table offset + 512 (not cluster aligned)")
def _(img, out):
    img.set("l1_table_offset", img.get("l1_table_offset") + 512)


@case("l1-beyond-eof", desc="l1_size runs the L1 table past the end of the file")
def _(img, out):
    img.set("l1_size", os.path.getsize(out) // 8 + 65536)


@case("l1-too-big", reject=True, msg="l1", desc="l1_size 4M+1 entries (32 MiB + 8 bytes)")
def _(img, out):
    img.set("l1_size", (32 << 20) // 8 + 1)


@case("l1-size-max", reject=True, msg="l1", desc="l1_size 0xffffffff")
def _(img, out):
    img.set("l1_size", 0xFFFFFFFF)


@case("l1-too-small", desc="l1_size 0 for a 64 MiB disk")
def _(img, out):
    img.set("l1_size", 0)


@case("l2-table-past-eof", desc="L1[0] points to an L2 table at 2^48 (past EOF)")
def _(img, out):
    img.put64(img.l1_entry_off(0), (1 << 48) | L2_COPIED)


@case("l2-table-unaligned", desc="L1[0] = L2 table offset + 512")
def _(img, out):
    o = img.l1_entry_off(0)
    img.put64(o, ((img.u64(o) & OFFSET_MASK) + 512) | L2_COPIED)


@case("l2-table-is-l1", desc="L1[0] points at the L1 table itself")
def _(img, out):
    img.put64(img.l1_entry_off(0), img.get("l1_table_offset") | L2_COPIED)


@case("l2-table-is-header", desc="L1[0] points at cluster 0 (the header)")
def _(img, out):
    # Offset 0 with the COPIED bit: not "unallocated", not a valid table.
    img.put64(img.l1_entry_off(0), L2_COPIED | 0)


@case("l1-reserved-bits", desc="L1[0] with reserved bits 56-62 set")
def _(img, out):
    o = img.l1_entry_off(0)
    img.put64(o, img.u64(o) | (0x7F << 56))


# L2 entries

@case("l2-entry-past-eof", desc="L2 entry of guest 0 points at 2^48 (past EOF)")
def _(img, out):
    img.put64(img.l2_entry_off(0), (1 << 48) | L2_COPIED)


@case("l2-entry-unaligned", desc="L2 entry of guest 0 = host offset + 512")
def _(img, out):
    o = img.l2_entry_off(0)
    e = img.u64(o)
    img.put64(o, ((e & OFFSET_MASK) + 512) | L2_COPIED)


@case("l2-entry-reserved-bits", desc="L2 entry of guest 0 with reserved bits 56-61 set")
def _(img, out):
    o = img.l2_entry_off(0)
    img.put64(o, img.u64(o) | (0x3F << 56))


@case("l2-entry-is-metadata", desc="L2 entry of guest 0 points at the L1 table's cluster")
def _(img, out):
    img.put64(img.l2_entry_off(0), img.get("l1_table_offset") | L2_COPIED)


# compressed clusters (the cluster at guest 1M)

@case("compressed-sectors-huge", read="1M 65536",
      desc="compressed descriptor: maximum additional sector count")
def _(img, out):
    eo, e, x = img.compressed_desc(1 << 20)
    img.put64(eo, e | (((1 << (62 - x)) - 1) << x))


@case("compressed-offset-past-eof", read="1M 65536",
      desc="compressed descriptor: host offset 2^46 (past EOF)")
def _(img, out):
    eo, e, x = img.compressed_desc(1 << 20)
    nsec_field = e & (((1 << (62 - x)) - 1) << x)
    img.put64(eo, L2_COMPRESSED | nsec_field | (1 << 46))


@case("compressed-offset-at-eof", read="1M 65536",
      desc="compressed descriptor: host offset 100 bytes before EOF")
def _(img, out):
    eo, e, x = img.compressed_desc(1 << 20)
    nsec_field = e & (((1 << (62 - x)) - 1) << x)
    img.put64(eo, L2_COMPRESSED | nsec_field | (os.path.getsize(out) - 100))


@case("compressed-garbage", read="1M 65536",
      desc="compressed payload (zlib) overwritten with garbage")
def _(img, out):
    garble_compressed(img)


@case("compressed-garbage-zstd", base="zstd", read="1M 65536",
      desc="compressed payload (zstd) overwritten with garbage")
def _(img, out):
    garble_compressed(img)


@case("compressed-truncated", read="1M 65536",
      desc="compressed descriptor: sector count 0 for a stream of many sectors")
def _(img, out):
    eo, e, x = img.compressed_desc(1 << 20)
    host = e & ((1 << x) - 1)
    nsec = (e >> x) & ((1 << (62 - x)) - 1)
    if nsec < 2:
        raise SystemExit("make_bad: the compressed cluster is too small to truncate")
    img.put64(eo, L2_COMPRESSED | host)  # 0 additional sectors


@case("extl2-alloc-and-zero", base="extl2", read="0 65536",
      desc="extended L2: a standard entry with both allocated and zero bits set for one subcluster")
def _(img, out):
    o = img.l2_entry_off(0)
    img.put64(o + 8, img.u64(o + 8) | 1 | (1 << 32))


@case("extl2-cluster-bits-12", base="extl2",
      desc="extended L2 entries with cluster_bits 12 (must be >= 14)")
def _(img, out):
    img.set("cluster_bits", 12)


def garble_compressed(img):
    eo, e, x = img.compressed_desc(1 << 20)
    host = e & ((1 << x) - 1)
    nsec = (e >> x) & ((1 << (62 - x)) - 1)
    n = 512 * (nsec + 1) - (host & 511)
    img.wr(host, (bytes([0xFF, 0xA5, 0x00, 0x13]) * (n // 4 + 1))[:n])


# backing files

@case("backing-self-loop", reject=True, msg="loop|chain", scope="data",
      desc="the image names itself as its backing file")
def _(img, out):
    img.set_backing(os.path.basename(out), "qcow2")


@case("backing-loop", reject=True, msg="loop|chain", scope="data",
      desc="A backed by B backed by A")
def _(img, out):
    other = os.path.join(os.path.dirname(out), "loop-b.qcow2")
    shutil.copyfile(out, other)
    img.set_backing("loop-b.qcow2", "qcow2")
    b = Image(other)
    b.set_backing(os.path.basename(out), "qcow2")
    b.close()


@case("backing-missing", reject=True, msg="does-not-exist", scope="data",
      desc="the backing file does not exist (reading around it would return wrong data)")
def _(img, out):
    img.set_backing("does-not-exist.qcow2", "qcow2")


@case("backing-name-1024", desc="backing file name of 1024 bytes (max 1023)")
def _(img, out):
    img.set_backing("b" * 1024, "qcow2")


@case("backing-name-huge", desc="backing_file_size 0x7fffffff near the end of cluster 0")
def _(img, out):
    img.set("backing_file_offset", img.cluster_size - 16)
    img.set("backing_file_size", 0x7FFFFFFF)


@case("backing-offset-past-eof", desc="backing_file_offset 2^40")
def _(img, out):
    img.set("backing_file_offset", 1 << 40)
    img.set("backing_file_size", 16)


# file truncation

@case("truncated-l1", base="c512", read="0 65536",
      desc="file cut in the middle of the L1 table (512-byte clusters, L1 of 2 clusters)")
def _(img, out):
    l1 = img.get("l1_table_offset")
    n = img.get("l1_size") * 8
    img.f.truncate(l1 + n // 2 + 4)


@case("truncated-l2", read="2M 65536", desc="file cut in the middle of the first L2 table")
def _(img, out):
    l2 = img.u64(img.l1_entry_off(0)) & OFFSET_MASK
    img.f.truncate(l2 + 8 * 20 + 3)


@case("truncated-data", read="40M 65536", desc="file cut inside the last data cluster")
def _(img, out):
    h = img.u64(img.l2_entry_off(40 << 20)) & OFFSET_MASK
    if h + 4096 > os.path.getsize(out):
        raise SystemExit("make_bad: unexpected layout for truncated-data")
    img.f.truncate(h + 4096)


def main():
    a = sys.argv[1:]
    if a == ["--list"]:
        for n in CASES:
            print(n)
        return
    if len(a) == 2 and a[0] == "--describe":
        c = CASES.get(a[1])
        if c is None:
            raise SystemExit("make_bad: unknown case %s" % a[1])
        print("BASE=%s" % shlex.quote(c["base"]))
        print("MUST_REJECT=%d" % int(c["reject"]))
        print("REJECT_SCOPE=%s" % shlex.quote(c["scope"]))
        print("MSG_RE=%s" % shlex.quote(c["msg"] or ""))
        print("READ=%s" % shlex.quote(c["read"]))
        print("DESC=%s" % shlex.quote(c["desc"]))
        return
    if len(a) == 3 and a[0] in CASES:
        c = CASES[a[0]]
        shutil.copyfile(a[1], a[2])
        img = Image(a[2])
        c["fn"](img, a[2])
        img.close()
        return
    print(__doc__, file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
