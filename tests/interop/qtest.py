#!/usr/bin/env python3
# SPDX-License-Identifier: MIT OR Apache-2.0
"""Helpers for the interop tests (stdlib only).

  qtest.py header IMG FIELD               print a qcow2 header field (decimal)
  qtest.py gen-compress-src OUT SIZE CL   raw file mixing compressible, partly
                                          compressible, random and zero clusters
  qtest.py gen-raw OUT SIZE SEED          raw file of per-64k-block patterns
  qtest.py gen-random-ops SIZE N SEED [ALIGN]
                                          qemu-io commands, one per line; with
                                          ALIGN, offsets and lengths are
                                          multiples of ALIGN
  qtest.py diff REF OUT                   describe where two raw files differ
  qtest.py check-map QEMU_MAP_JSON EXPR   evaluate EXPR over qemu-img map
                                          extents (list "m"); exit 1 if false
  qtest.py check-json FILE [--map SIZE] [--compressed]
                                          FILE is valid JSON; with --map, the
                                          extents cover [0, SIZE) contiguously;
                                          with --compressed, some extent has
                                          "compressed": true
  qtest.py superset THEIRS OURS           every key of the JSON in THEIRS is in
                                          OURS, at the same place, with the same
                                          value (OURS may have more keys)
"""

import json
import os
import random
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from qcow2_layout import HEADER  # noqa: E402



def header(path, field):
    off, fmt = HEADER[field]
    with open(path, "rb") as f:
        f.seek(off)
        data = f.read(struct.calcsize(fmt))
    print(struct.unpack(fmt, data)[0])


def gen_compress_src(out, size, cl):
    """Cluster i gets a kind chosen by i % 8, so every kind occurs."""
    rnd = random.Random(12345)
    with open(out, "wb") as f:
        for i in range(size // cl):
            kind = i % 8
            if kind == 0:  # one byte value: compresses to almost nothing
                buf = bytes([i & 0xFF or 0x5A]) * cl
            elif kind == 1:  # half random, half zero: about 50 %
                buf = rnd.randbytes(cl // 2) + bytes(cl // 2)
            elif kind == 2:  # random: qemu stores it uncompressed
                buf = rnd.randbytes(cl)
            elif kind == 3:  # zeros: convert leaves it unallocated
                buf = bytes(cl)
            elif kind == 4:  # text
                line = ("qcow2d cluster %d\n" % i).encode()
                buf = (line * (cl // len(line) + 1))[:cl]
            elif kind == 5:  # 3/4 random: big compressed payloads that
                # often cross a host cluster boundary
                q = cl * 3 // 4
                buf = rnd.randbytes(q) + bytes([0xC5]) * (cl - q)
            elif kind == 6:  # 16-symbol alphabet
                buf = bytes(0x40 | (b & 0x0F) for b in rnd.randbytes(cl))
            else:  # pattern with a random sector inside
                buf = bytearray([0x77]) * cl
                n = min(512, cl // 2)
                buf[cl // 2:cl // 2 + n] = rnd.randbytes(n)
                buf = bytes(buf)
            f.write(buf)
        rest = size % cl
        if rest:
            f.write(bytes([0x3C]) * rest)


def gen_raw(out, size, seed):
    rnd = random.Random(seed)
    blk = 65536
    with open(out, "wb") as f:
        for i in range(size // blk):
            kind = i % 4
            if kind == 0:
                f.write(bytes([(i * 7 + 1) & 0xFF]) * blk)
            elif kind == 1:
                f.write(rnd.randbytes(blk))
            elif kind == 2:
                f.write(bytes(blk))
            else:
                f.write(bytes([0xE0 | (i & 0xF)]) * (blk // 2) + rnd.randbytes(blk // 2))
        rest = size % blk
        if rest:
            f.write(bytes([0xE1]) * rest)


def gen_random_ops(size, n, seed, align=1):
    rnd = random.Random(seed)
    if align > 1:
        for _ in range(n):
            r = rnd.random()
            nb = size // align
            ln = rnd.choice([1, rnd.randint(1, 8), rnd.randint(1, max(1, 65536 // align)),
                             rnd.randint(1, max(1, 300000 // align))])
            ln = min(ln, nb)
            off = rnd.randint(0, nb - ln)
            off, ln = off * align, ln * align
            if r < 0.8:
                print("write -P 0x%02x %d %d" % (rnd.randint(1, 255), off, ln))
            elif r < 0.9:
                print("write -z%s %d %d" % (" -u" if rnd.random() < 0.5 else "", off, ln))
            else:
                print("discard %d %d" % (off, ln))
        return
    for _ in range(n):
        r = rnd.random()
        ln = rnd.choice([rnd.randint(1, 4096), rnd.randint(1, 65536),
                         rnd.randint(1, 300000), 512 * rnd.randint(1, 256)])
        ln = min(ln, size)
        off = rnd.randint(0, size - ln)
        if rnd.random() < 0.3:  # many writes sector aligned
            off -= off % 512
        if r < 0.8:
            print("write -P 0x%02x %d %d" % (rnd.randint(1, 255), off, ln))
        elif r < 0.9:
            print("write -z%s %d %d" % (" -u" if rnd.random() < 0.5 else "", off, ln))
        else:
            off -= off % 512
            ln = max(512, ln - ln % 512)
            ln = min(ln, size - off)
            print("discard %d %d" % (off, ln))


def diff(ref, out):
    """Print the differing 512-byte-sector ranges (first 12)."""
    sec = 512
    ranges = []
    with open(ref, "rb") as a, open(out, "rb") as b:
        la = a.seek(0, 2)
        lb = b.seek(0, 2)
        a.seek(0)
        b.seek(0)
        if la != lb:
            print("  sizes differ: reference %d bytes, qcow2-img %d bytes" % (la, lb))
        pos = 0
        cur = None
        chunk = 1 << 20
        while True:
            x = a.read(chunk)
            y = b.read(chunk)
            if not x and not y:
                break
            if x != y:
                for s in range(0, max(len(x), len(y)), sec):
                    xs, ys = x[s:s + sec], y[s:s + sec]
                    if xs != ys:
                        o = pos + s
                        if cur and cur[1] == o:
                            cur[1] = o + sec
                        else:
                            i = next((k for k in range(min(len(xs), len(ys)))
                                      if xs[k] != ys[k]), min(len(xs), len(ys)))
                            cur = [o, o + sec, o + i, xs[i:i + 16], ys[i:i + 16]]
                            ranges.append(cur)
            pos += max(len(x), len(y))
    total = sum(r[1] - r[0] for r in ranges)
    print("  %d differing range(s), %d bytes in differing sectors" % (len(ranges), total))
    for r in ranges[:12]:
        print("  sectors [%#x, %#x) len %#x; first difference at %#x: reference %s qcow2-img %s" %
              (r[0], r[1], r[1] - r[0], r[2], r[3].hex(), r[4].hex()))
    if len(ranges) > 12:
        print("  ...")


def check_map(path, expr):
    with open(path) as f:
        m = json.load(f)
    ok = eval(expr, {"m": m, "any": any, "all": all, "len": len, "sum": sum})
    sys.exit(0 if ok else 1)


def check_json(path, args):
    with open(path) as f:
        text = f.read()
    try:
        doc = json.loads(text)
    except ValueError as e:
        print("  not valid JSON: %s" % e)
        print("  output was: %s" % text[:400])
        sys.exit(1)
    if "--map" in args:
        size = int(args[args.index("--map") + 1])
        exts = doc
        if isinstance(doc, dict):  # tolerate {"extents": [...]}
            exts = doc.get("extents", doc.get("map"))
        if not isinstance(exts, list):
            print("  map JSON is not a list of extents")
            sys.exit(1)
        pos = 0
        for e in sorted(exts, key=lambda e: e.get("start", -1)):
            if "start" not in e or "length" not in e:
                print("  extent without start/length: %s" % e)
                sys.exit(1)
            if e["start"] != pos:
                print("  map not contiguous at %#x (next extent starts at %#x)" % (pos, e["start"]))
                sys.exit(1)
            pos = e["start"] + e["length"]
        if pos != size:
            print("  map covers [0, %#x), virtual size is %#x" % (pos, size))
            sys.exit(1)
        if "--compressed" in args and not any(e.get("compressed") for e in exts):
            print("  no extent has \"compressed\": true")
            sys.exit(1)


def superset(theirs_path, ours_path):
    with open(theirs_path) as f:
        theirs = json.load(f)
    with open(ours_path) as f:
        ours = json.load(f)
    problems = []

    def walk(t, o, where):
        if isinstance(t, dict):
            if not isinstance(o, dict):
                problems.append("%s: an object in qemu-img's JSON, %r in ours" % (where, o))
                return
            for k, v in t.items():
                if k not in o:
                    problems.append("%s/%s: missing (qemu-img: %r)" % (where, k, v))
                else:
                    walk(v, o[k], where + "/" + k)
        elif isinstance(t, list):
            if not isinstance(o, list) or len(o) != len(t):
                problems.append("%s: qemu-img has %d items, ours %r" % (where, len(t), o))
                return
            for i, (a, b) in enumerate(zip(t, o)):
                walk(a, b, "%s[%d]" % (where, i))
        elif t != o:
            problems.append("%s: qemu-img %r, ours %r" % (where, t, o))

    walk(theirs, ours, "")
    for p in problems[:20]:
        print("  " + p)
    sys.exit(1 if problems else 0)


def main():
    a = sys.argv[1:]
    if not a:
        print(__doc__)
        sys.exit(2)
    cmd = a[0]
    if cmd == "header":
        header(a[1], a[2])
    elif cmd == "gen-compress-src":
        gen_compress_src(a[1], int(a[2]), int(a[3]))
    elif cmd == "gen-raw":
        gen_raw(a[1], int(a[2]), int(a[3]))
    elif cmd == "gen-random-ops":
        gen_random_ops(int(a[1]), int(a[2]), int(a[3]), int(a[4]) if len(a) > 4 else 1)
    elif cmd == "diff":
        diff(a[1], a[2])
    elif cmd == "check-map":
        check_map(a[1], a[2])
    elif cmd == "check-json":
        check_json(a[1], a[2:])
    elif cmd == "superset":
        superset(a[1], a[2])
    else:
        print(__doc__)
        sys.exit(2)


if __name__ == "__main__":
    main()
