#!/usr/bin/env python3
# SPDX-License-Identifier: MIT OR Apache-2.0
"""qcow2-img dump and stats, judged by an independent reading of the image.

dump_stats.py CASE | --list. Each case makes an image with qemu-img and
qemu-io (data, zero and compressed clusters, snapshots, bitmaps, backing
files, extended L2, refcount widths, leaks, free clusters), then:
  - parses it here, from the spec, with no code shared with qcow2-img;
  - compares every 'qcow2-img dump --json' structure with that parse, and
    with qemu-img info / map where they say the same thing;
  - compares 'qcow2-img stats --json' with figures computed here.
Environment: QCOW2_IMG (required), QCOW2_TEST_WORKDIR, QCOW2_TEST_KEEP=1
(keep the work directory). Exit 0 pass, 1 fail,
77 skip.
"""
import json
import os
import shutil
import struct
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from qcow2_layout import HEADER  # noqa: E402

OFF = 0x00FFFFFFFFFFFE00

# name: (qemu-img create options, size, qemu-io commands, extra steps)
CASES = {
    "rich": ("cluster_size=65536", "64M", [
        "write -P 0x11 0 192k", "write -P 0x22 1M 64k", "write -c -P 0x33 4M 64k",
        "write -c -P 0x34 4160k 64k", "write -z 6M 128k", "write -P 0x44 8M 4k",
        "write -P 0x55 64k 4k", "write -P 0x66 32M 64k", "write -P 0x77 33M 64k",
        "write -P 0x78 32832k 64k",
    ], ["snapshot", "bitmap", "post-snapshot-write"]),
    "backing": ("cluster_size=4096,refcount_bits=1", "8M", [
        "write -P 0x11 0 64k", "write -z 64k 8k", "write -P 0x12 1M 12k",
    ], ["backing"]),
    "extl2": ("cluster_size=65536,extended_l2=on", "16M", [
        "write -P 0x11 0 4k", "write -P 0x12 8k 2k", "write -z 64k 64k",
        "write -z 136k 4k", "write -P 0x13 1M 64k", "write -c -P 0x14 2M 64k",
    ], []),
    "v2-512": ("compat=0.10,cluster_size=512", "4M", [
        "write -P 0x11 0 8k", "write -P 0x12 1M 1k", "write -P 0x13 3M 2k",
    ], []),
    "zstd-free-leak": ("compression_type=zstd,refcount_bits=64,cluster_size=16384", "16M", [
        "write -P 0x11 0 256k", "write -c -P 0x22 1M 64k", "discard 64k 64k",
    ], ["leak"]),
}


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


def run(*cmd, ok=(0,)):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode not in ok:
        fail(f"{' '.join(cmd)}: exit {p.returncode}\n{p.stdout}{p.stderr}")
    for pat in ("Sanitizer", "runtime error:"):
        if pat in p.stderr:
            fail(f"{' '.join(cmd)}: sanitizer report\n{p.stderr}")
    return p.stdout


class Parsed:
    """The image read from the spec."""

    def __init__(self, path):
        self.data = open(path, "rb").read()
        self.h = {k: struct.unpack_from(f, self.data, o)[0] for k, (o, f) in HEADER.items()
                  if o + struct.calcsize(f) <= len(self.data)}
        if self.h["version"] == 2:  # the fields from byte 72 on are v3's
            self.h = {k: v for k, v in self.h.items() if HEADER[k][0] < 72}
            self.h.update(refcount_order=4, incompatible_features=0)
        self.cb = self.h["cluster_bits"]
        self.cs = 1 << self.cb
        self.extl2 = bool(self.h["incompatible_features"] & 16)
        self.l2e = 16 if self.extl2 else 8
        self.n_l2 = self.cs // self.l2e
        self.nclusters = (len(self.data) + self.cs - 1) // self.cs
        self.role = {}  # cluster -> "meta" | "data" | "snapdata"

    def u64(self, off):
        if off + 8 > len(self.data):
            return 0
        return struct.unpack_from(">Q", self.data, off)[0]

    def table(self, off, n):
        return [self.u64(off + 8 * i) for i in range(n)]

    def mark(self, off, length, role):
        for c in range(off // self.cs, (off + length + self.cs - 1) // self.cs):
            if role == "meta" or self.role.get(c) != "meta":
                if role == "snapdata" and c in self.role:
                    continue
                self.role[c] = role

    def l2(self, off):
        out = []
        for i in range(self.n_l2):
            e = self.u64(off + i * self.l2e)
            bm = self.u64(off + i * self.l2e + 8) if self.extl2 else 0
            out.append((e, bm))
        return out

    def classify(self, e, bm):
        if e & (1 << 62):
            x = 62 - (self.cb - 8)
            host = e & ((1 << x) - 1)
            nb = (e >> x) & ((1 << (self.cb - 8)) - 1)
            return "compressed", host, (nb + 1) * 512 - (host & 511)
        off = e & OFF
        if not self.extl2:
            if e & 1:
                return "zero", off, 0
            return ("data" if off else "unallocated"), off, 0
        alloc, zero = bm & 0xFFFFFFFF, bm >> 32
        if alloc:
            return "data", off, 0
        if zero == 0xFFFFFFFF:
            return "zero", off, 0
        return "unallocated", off, 0

    def refcounts(self):
        order = self.h["refcount_order"]
        bits = 1 << order
        per = self.cs * 8 // bits
        rt = self.table(self.h["refcount_table_offset"],
                        self.h["refcount_table_clusters"] * self.cs // 8)
        rc = [0] * self.nclusters
        blocks = 0
        for b, off in enumerate(rt):
            off &= ~511
            if not off:
                continue
            blocks += 1
            self.mark(off, self.cs, "meta")
            blk = self.data[off:off + self.cs]
            for i in range(per):
                c = b * per + i
                if c >= self.nclusters:
                    break
                bitpos = i * bits
                if bits >= 8:
                    v = int.from_bytes(blk[bitpos // 8:bitpos // 8 + bits // 8], "big")
                else:
                    v = (blk[bitpos // 8] >> (bitpos % 8)) & ((1 << bits) - 1)
                rc[c] = v
        self.mark(self.h["refcount_table_offset"], self.h["refcount_table_clusters"] * self.cs, "meta")
        return rc, blocks

    def snapshots(self):
        out, pos = [], self.h["snapshots_offset"]
        for _ in range(self.h["nb_snapshots"]):
            l1_off, l1_size, id_len, name_len = struct.unpack_from(">QIHH", self.data, pos)
            extra = struct.unpack_from(">I", self.data, pos + 36)[0]
            ident = self.data[pos + 40 + extra:pos + 40 + extra + id_len].decode()
            name = self.data[pos + 40 + extra + id_len:pos + 40 + extra + id_len + name_len].decode()
            out.append({"entry_offset": pos, "l1_table_offset": l1_off, "l1_size": l1_size,
                        "id": ident, "name": name, "extra_data_size": extra})
            pos += (40 + extra + id_len + name_len + 7) & ~7
        if out:
            self.mark(self.h["snapshots_offset"], pos - self.h["snapshots_offset"], "meta")
        return out

    def extensions(self):
        """[(type, data offset, length)] of the header extensions."""
        out = []
        pos = self.h["header_length"] if self.h["version"] == 3 else 72
        while pos + 8 <= self.cs:
            t, length = struct.unpack_from(">II", self.data, pos)
            if t == 0:
                break
            out.append((t, pos + 8, length))
            pos += 8 + ((length + 7) & ~7)
        return out

    def bitmaps(self):
        """(directory offset, entries) from the bitmaps extension."""
        pos = self.h.get("header_length", 72) if self.h["version"] == 3 else 72
        while pos + 8 <= self.cs:
            t, length = struct.unpack_from(">II", self.data, pos)
            if t == 0:
                break
            if t == 0x23852875:
                nb, _, dsize, doff = struct.unpack_from(">IIQQ", self.data, pos + 8)
                out, p = [], doff
                for _ in range(nb):
                    toff, tsize, flags, typ, gran, nlen, extra = struct.unpack_from(">QIIBBHI", self.data, p)
                    name = self.data[p + 24 + extra:p + 24 + extra + nlen].decode()
                    out.append({"name": name, "table_offset": toff, "table_size": tsize,
                                "flags": flags, "type": typ, "granularity_bits": gran})
                    p += (24 + extra + nlen + 7) & ~7
                return doff, dsize, out
            pos += 8 + ((length + 7) & ~7)
        return 0, 0, []


def expected_stats(p):
    g_total = (p.h["size"] + p.cs - 1) // p.cs
    s = {"data": 0, "zero": 0, "compressed": 0, "unallocated": 0}
    cbytes = 0
    extents = adjacent = split = 0
    prev = None
    l2_tables = used = 0
    p.mark(0, p.cs, "meta")
    l1 = p.table(p.h["l1_table_offset"], p.h["l1_size"])
    p.mark(p.h["l1_table_offset"], p.h["l1_size"] * 8, "meta")
    for i, l1e in enumerate(l1):
        l2off = l1e & OFF
        if not l2off:
            continue
        l2_tables += 1
        p.mark(l2off, p.cs, "meta")
        for j, (e, bm) in enumerate(p.l2(l2off)):
            kind, host, clen = p.classify(e, bm)
            if kind != "unallocated":
                used += 1
            if kind in ("data", "compressed"):
                p.mark(host, clen if kind == "compressed" else p.cs, "data")
            g = i * p.n_l2 + j
            if g >= g_total:
                continue
            if kind == "compressed":
                cbytes += clen
            if kind != "unallocated":
                s[kind] += 1
            if kind == "data":
                if prev and g == prev[0] + 1:
                    adjacent += 1
                    if host != prev[1] + p.cs:
                        split += 1
                        extents += 1
                else:
                    extents += 1
                prev = (g, host)
    s["unallocated"] = g_total - s["data"] - s["zero"] - s["compressed"]
    for snap in p.snapshots():
        p.mark(snap["l1_table_offset"], snap["l1_size"] * 8, "meta")
        for l1e in p.table(snap["l1_table_offset"], snap["l1_size"]):
            if l1e & OFF:
                p.mark(l1e & OFF, p.cs, "meta")
                for e, bm in p.l2(l1e & OFF):
                    kind, host, clen = p.classify(e, bm)
                    if kind == "data":
                        p.mark(host, p.cs, "snapdata")
                    elif kind == "compressed":
                        p.mark(host, clen, "snapdata")
    doff, dsize, bms = p.bitmaps()
    if bms and p.h.get("autoclear_features", 0) & 1:
        p.mark(doff, dsize, "meta")
        for b in bms:
            p.mark(b["table_offset"], b["table_size"] * 8, "meta")
            for e in p.table(b["table_offset"], b["table_size"]):
                if e & OFF:
                    p.mark(e & OFF, p.cs, "meta")
    rc, blocks = p.refcounts()
    buckets = {"0": 0, "1": 0, "2": 0, "3": 0, "4-7": 0, "8-15": 0, "16+": 0}
    for v in rc:
        k = str(v) if v < 4 else "4-7" if v < 8 else "8-15" if v < 16 else "16+"
        buckets[k] += 1
    referenced = set(p.role)
    free = sum(1 for c in range(p.nclusters) if rc[c] == 0 and c not in referenced)
    return {
        "guest-clusters": dict(total=g_total, invalid=0, **s),
        "compressed-host-bytes": cbytes,
        "fragmentation": {"extents": extents, "guest-adjacent-pairs": adjacent,
                          "split-pairs": split},
        "l2": {"tables": l2_tables, "entries": l2_tables * p.n_l2, "entries-used": used},
        "refcounts": {"blocks": blocks, "clusters-by-refcount": buckets},
        "metadata-clusters": sum(1 for r in p.role.values() if r == "meta"),
        "file": {"size": len(p.data), "clusters": p.nclusters,
                 "snapshot-only-clusters": sum(1 for r in p.role.values() if r == "snapdata"),
                 "free-clusters": free},
    }


def subset_equal(want, got, where=""):
    for k, v in want.items():
        if isinstance(v, dict):
            subset_equal(v, got.get(k, {}), f"{where}{k}.")
        elif got.get(k) != v:
            fail(f"stats {where}{k}: qcow2-img says {got.get(k)}, the image says {v}")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--list":
        print("\n".join(CASES))
        return
    case = sys.argv[1]
    opts, size, cmds, extra = CASES[case]
    for t in ("qemu-img", "qemu-io"):
        if not shutil.which(t):
            print(f"SKIP: {t} not found: install qemu-utils")
            sys.exit(77)
    q = os.environ.get("QCOW2_IMG")
    if not q or not os.access(q, os.X_OK):
        fail("QCOW2_IMG must name qcow2-img")
    work = os.path.join(os.environ.get("QCOW2_TEST_WORKDIR", os.getcwd() + "/check-work"),
                        "dump-" + case)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    os.chdir(work)
    img = "img.qcow2"
    if "backing" in extra:
        run("qemu-img", "create", "-q", "-f", "qcow2", "-o", opts, "base.qcow2", size)
        run("qemu-io", "-c", "write -P 0x99 0 1M", "base.qcow2")
        run("qemu-img", "create", "-q", "-f", "qcow2", "-o", opts, "-b", "base.qcow2",
            "-F", "qcow2", img)
    else:
        run("qemu-img", "create", "-q", "-f", "qcow2", "-o", opts, img, size)
    if "bitmap" in extra:
        run("qemu-img", "bitmap", "--add", "-g", "128k", img, "dirty0")
    args = ["qemu-io"]
    for c in cmds:
        args += ["-c", c]
    run(*args, img)
    if "snapshot" in extra:
        run("qemu-img", "snapshot", "-c", "first", img)
    if "post-snapshot-write" in extra:
        run("qemu-io", "-c", "write -P 0x88 0 64k", "-c", "write -P 0x89 40M 64k", img)
    if "leak" in extra:
        # An orphan cluster: refcount 1, no reference.
        with open(img, "r+b") as f:
            p = Parsed(img)
            end = (len(p.data) + p.cs - 1) // p.cs * p.cs
            rc, _ = p.refcounts()
            order = p.h["refcount_order"]
            assert order == 6
            per = p.cs // 8
            c = end // p.cs
            rt = p.u64(p.h["refcount_table_offset"] + (c // per) * 8) & ~511
            assert rt, "the refcount block for the appended cluster is missing"
            f.seek(rt + (c % per) * 8)
            f.write(struct.pack(">Q", 1))
            f.truncate(end + p.cs)

    p = Parsed(img)
    info = json.loads(run("qemu-img", "info", "--output=json", img))
    check = json.loads(run("qemu-img", "check", "--output=json", img, ok=(0, 3)))

    def dump(*what):
        return json.loads(run(q, "dump", "--json", img, *what))

    # header: every field the spec places in it
    hd = dump("header")
    for k, v in p.h.items():
        if k == "magic":
            continue
        got = hd.get(k)
        if k == "compression_type":
            got = {"zlib": 0, "zstd": 1}[got]
        elif k.endswith("features"):
            got = int(got, 16)
        if got != v:
            fail(f"dump header {k}: {got}, the image says {v}")
    if hd["size"] != info["virtual-size"] or (1 << hd["cluster_bits"]) != info["cluster-size"]:
        fail("dump header disagrees with qemu-img info")
    # text form works too
    if "l1_table_offset" not in run(q, "dump", img, "header"):
        fail("dump header (text) lacks the fields")

    # extensions: qemu-img writes a feature table; backing format, bitmaps
    ext = dump("extensions")
    if [(e["type"], e["data_offset"], e["length"]) for e in ext] != p.extensions():
        fail(f"dump extensions {ext}, the image has {p.extensions()}")
    if "backing" in extra:
        bf = [e for e in ext if e["name"] == "backing file format"]
        if not bf or bf[0]["backing_format"] != "qcow2":
            fail(f"dump extensions: backing format missing: {ext}")
        if hd.get("backing_file") != "base.qcow2":
            fail(f"dump header backing_file: {hd.get('backing_file')}")

    # l1 and l2: every entry, and each data cluster where qemu-img map says
    l1 = p.table(p.h["l1_table_offset"], p.h["l1_size"])
    dl1 = {e["index"]: e for e in dump("l1")}
    for i, e in enumerate(l1):
        if e and (i not in dl1 or int(dl1[i]["raw"], 16) != e or dl1[i]["l2_offset"] != e & OFF
                  or dl1[i]["copied"] != bool(e >> 63)):
            fail(f"dump l1 entry {i}: {dl1.get(i)}, the image has 0x{e:x}")
    if len(dl1) != sum(1 for e in l1 if e):
        fail("dump l1 lists empty entries without --all")
    host_of = {}
    for t in dump("l2"):
        want = p.l2(t["offset"])
        listed = 0
        for e in t["entries"]:
            raw, bm = want[e["index"]]
            kind, host, clen = p.classify(raw, bm)
            listed += 1
            if int(e["raw"], 16) != raw or e["type"] != kind or e["host_offset"] != host:
                fail(f"dump l2 {t['l1_index']}/{e['index']}: {e}, the image has 0x{raw:x} ({kind} 0x{host:x})")
            if p.extl2 and int(e["subcluster_bitmap"], 16) != bm:
                fail(f"dump l2 bitmap {e}")
            if kind == "compressed" and e["compressed_length"] != clen:
                fail(f"dump l2 compressed length {e}")
            if kind == "data":
                host_of[e["guest_offset"]] = host
        if listed != sum(1 for r, b in want if r or b):
            fail(f"dump l2 table {t['l1_index']}: {listed} entries listed")
    one = dump("l2", "0")
    if len(one) != 1 or one[0]["l1_index"] != 0:
        fail("dump l2 0 does not give L1 entry 0's table")
    for m in json.loads(run("qemu-img", "map", "--output=json", img)):
        if m.get("data") and m["depth"] == 0 and "offset" in m:
            for o in range(0, m["length"], p.cs):
                g = (m["start"] + o) // p.cs * p.cs
                if host_of.get(g) != (m["offset"] + o) // p.cs * p.cs:
                    fail(f"guest 0x{g:x}: dump l2 says 0x{host_of.get(g, 0):x}, "
                         f"qemu-img map 0x{m['offset'] + o:x}")

    # refcounts
    rc, blocks = p.refcounts()
    rt = [e for e in dump("refcount-table")]
    if len(rt) != blocks:
        fail(f"dump refcount-table: {len(rt)} entries, the image has {blocks} blocks")
    for e in rt:
        blk = dump("refcount-block", str(e["index"]))
        per = blk["entries"]
        c = e["index"] * per
        for r in blk["runs"]:
            for k in range(r["clusters"]):
                if c < p.nclusters and rc[c] != r["refcount"]:
                    fail(f"dump refcount-block: cluster {c} has {r['refcount']}, the image {rc[c]}")
                c += 1
        if c != (e["index"] + 1) * per:
            fail("dump refcount-block runs do not cover the block")

    # snapshots, against our parse and qemu-img info
    ds = dump("snapshots")
    qs = info.get("snapshots", [])
    if [(s["id"], s["name"]) for s in ds] != [(s["id"], s["name"]) for s in qs]:
        fail(f"dump snapshots {ds} vs qemu-img info {qs}")
    for d, s, w in zip(ds, qs, p.snapshots()):
        if (d["date_sec"], d["date_nsec"], d["vm_state_size"]) != \
           (s["date-sec"], s["date-nsec"], s["vm-state-size"]) or \
           d["l1_table_offset"] != w["l1_table_offset"] or d["l1_size"] != w["l1_size"]:
            fail(f"dump snapshots entry {d} vs {s} / {w}")

    # bitmaps
    db = dump("bitmaps")
    qb = info["format-specific"]["data"].get("bitmaps", [])
    if [(b["name"], 1 << b["granularity_bits"]) for b in db["bitmaps"]] != \
       [(b["name"], b["granularity"]) for b in qb]:
        fail(f"dump bitmaps {db} vs qemu-img info {qb}")
    for d, b in zip(db["bitmaps"], qb):
        flags = [f.replace("_", "-") for f in d["flag_names"]]
        if sorted(flags) != sorted(b["flags"]):
            fail(f"dump bitmaps flags {d['flag_names']} vs {b['flags']}")

    # cluster: a data cluster's references and refcount
    if host_of:
        g, host = sorted(host_of.items())[0]
        dc = dump("cluster", hex(host))
        if dc["refcount"] != rc[host // p.cs]:
            fail(f"dump cluster refcount {dc['refcount']}, the image {rc[host // p.cs]}")
        refs = [r["referenced_by"] for r in dc["referenced_by"]]
        if not any(f"guest offset 0x{g:x}" in r and "active" in r for r in refs):
            fail(f"dump cluster 0x{host:x}: {refs} lacks guest 0x{g:x}")
        if "snapshot" in extra and dc["references"] != dc["refcount"]:
            fail(f"dump cluster: {dc['references']} references, refcount {dc['refcount']}")
    hdr = dump("cluster", "0")
    if [r["referenced_by"] for r in hdr["referenced_by"]] != ["header"]:
        fail(f"dump cluster 0: {hdr}")

    # stats
    st = json.loads(run(q, "stats", "--json", img))
    want = expected_stats(Parsed(img))
    subset_equal(want, st)
    if st["file"]["leaked-clusters"] != check.get("leaks", 0):
        fail(f"stats leaked {st['file']['leaked-clusters']}, qemu-img check {check.get('leaks', 0)}")
    if "leak" in extra and not st["file"]["leaked-clusters"]:
        fail("the leak was not counted")
    alloc = st["guest-clusters"]["data"] + st["guest-clusters"]["compressed"]
    if not p.extl2 and alloc + st["guest-clusters"]["zero"] < check["allocated-clusters"] - 0:
        fail(f"stats: {alloc} allocated, qemu-img check {check['allocated-clusters']}")
    if st["guest-clusters"]["compressed"] != check.get("compressed-clusters", 0):
        fail("stats compressed clusters differ from qemu-img check")
    if "l2 tables" not in run(q, "stats", img).lower():
        fail("stats (text) lacks its figures")
    for k, v in (("rich", "snapshot-only-clusters"), ("zstd-free-leak", "free-clusters")):
        if case == k and not st["file"][v]:
            fail(f"case {k} should have {v}")
    if not os.environ.get("QCOW2_TEST_KEEP"):  # keep the work for a look
        shutil.rmtree(work)
    print(f"ok dump-stats-{case}")


if __name__ == "__main__":
    main()
