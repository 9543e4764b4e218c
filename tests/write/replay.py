#!/usr/bin/env python3
# SPDX-License-Identifier: MIT OR Apache-2.0
"""Crash consistency by simulated power loss.

  replay.py BASE LOG WORKDIR [--points N] [--seed S] [--marks DIR]
            [--snapshot NAME --snapshot-raw FILE] [--final IMAGE]
            [--only K --variant V]

LOG is the fault backend's record of every completed write and fdatasync of a
workload (random_io --backend fault --log LOG) that started from the image
BASE. For crash points spread over the log (always including the records
right before and after each fdatasync), the image is rebuilt as a power loss
after record K could leave it: every write up to the last fdatasync at or
before K, then a subset of the later, unsynced writes:

  none          all unsynced writes lost
  all           all of them landed
  random        a seeded random subset
  every-other   the 1st, 3rd, 5th...
  reordered     a random half, applied in random order (older data may win)
  torn          every unsynced write lands on a random subset of its
                512-byte sectors

Each state is written to WORKDIR/state.qcow2 (beside BASE's backing file,
which WORKDIR must hold when BASE has one) and judged:

  - qemu-img check --output=json: no corruption, no check error (leaks are
    allowed); qemu-img info must open it;
  - with --marks (random_io --marks): the guest contents. Let J be the last
    barrier flush completed before the crash (mark 0: the start). A sector
    no request issued after J (and before the crash) touched must read as
    the model at J; a touched sector may read its value at J, or the data
    of one of those writes for that sector, or zeros when a write-zeroes or
    discard covered it: never anything else (stale or foreign data means a
    mapping reached the disk before its data, or a cluster was reused early);
  - with --snapshot: the internal snapshot reads exactly as FILE;
  - with --final: replaying the whole log rebuilds IMAGE byte for byte (the
    log is complete).

Exit 0 pass, 1 fail: the failing state is kept and the command replaying
exactly that state (--only K --variant V) is printed.
"""
import argparse
import json
import os
import random
import shutil
import struct
import subprocess
import sys

REC = struct.Struct("<IiQQ")
WRITE, FSYNC = 1, 2
SECTOR = 512
VARIANTS = ["none", "all", "random", "every-other", "reordered", "torn"]


class Log:
    def __init__(self, path):
        with open(path, "rb") as f:
            data = f.read()
        self.recs = []      # (type, offset, bytes)
        self.ends = []      # log byte offset after each record
        fds = set()
        pos = 0
        while pos + REC.size <= len(data):
            typ, fd, off, length = REC.unpack_from(data, pos)
            pos += REC.size
            if typ == WRITE:
                if pos + length > len(data):
                    sys.exit(f"replay.py: {path}: record at byte {pos - REC.size} "
                             "is truncated")
                self.recs.append((WRITE, off, data[pos:pos + length]))
                pos += length
                fds.add(fd)
            elif typ == FSYNC:
                self.recs.append((FSYNC, 0, b""))
                fds.add(fd)
            else:
                sys.exit(f"replay.py: {path}: bad record type {typ} at byte "
                         f"{pos - REC.size}")
            self.ends.append(pos)
        if pos != len(data):
            sys.exit(f"replay.py: {path}: {len(data) - pos} trailing bytes")
        if len(fds) > 1:
            # Only the image file is ever written (backing files are read
            # only); several fds would need one BASE each.
            sys.exit(f"replay.py: {path}: records for {len(fds)} files "
                     f"(fds {sorted(fds)}); only one is supported")
        self.syncs = [i for i, r in enumerate(self.recs) if r[0] == FSYNC]

    def records_before(self, nbytes):
        """Number of records completed when the log had nbytes."""
        lo, hi = 0, len(self.ends)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.ends[mid] <= nbytes:
                lo = mid + 1
            else:
                hi = mid
        return lo


def apply(path, writes):
    with open(path, "r+b") as f:
        for off, buf in writes:
            f.seek(off)
            f.write(buf)


def qemu_img(*args):
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True)


DIRTY_STATES = [0]


def is_dirty(path):
    """The dirty bit (incompatible bit 0): lazy refcounts were in use."""
    with open(path, "rb") as f:
        h = f.read(80)
    return len(h) == 80 and struct.unpack(">I", h[4:8])[0] >= 3 and \
        struct.unpack(">Q", h[72:80])[0] & 1


def check_image(path):
    """None when consistent, else a message. A dirty image (lazy refcounts)
    has its refcounts rebuilt first, as any program opening it read-write
    must: its L1/L2 tables must allow that."""
    if is_dirty(path):
        DIRTY_STATES[0] += 1
        ours = os.environ.get("QCOW2_IMG")
        if ours:
            # our own rebuild: opening it read-write (a resize to the same
            # size writes nothing else)
            r = subprocess.run([ours, "resize", "-q", "-t", "writeback", path, "+0"],
                               capture_output=True, text=True)
            what = "qcow2-img resize +0 (our refcount rebuild)"
        else:
            r = qemu_img("check", "-r", "all", "-f", "qcow2", path)
            what = "qemu-img check -r all"
        if r.returncode != 0:
            return (f"dirty image: {what} exit {r.returncode}\n"
                    f"{r.stdout}{r.stderr}")
        if is_dirty(path):
            return f"dirty image: still dirty after {what}"
    r = qemu_img("check", "--output=json", "-f", "qcow2", path)
    text = r.stdout
    try:
        j = json.loads(text[text.index("{"):])
    except ValueError:
        return f"qemu-img check gave no JSON (exit {r.returncode}): {r.stderr.strip()}"
    c, l, e = j.get("corruptions", 0), j.get("leaks", 0), j.get("check-errors", 0)
    if c or e or r.returncode not in (0, 3):
        return (f"qemu-img check: corruptions {c}, leaks {l}, check-errors {e}, "
                f"exit {r.returncode}\n{r.stdout}{r.stderr}")
    r = qemu_img("info", "-f", "qcow2", path)
    if r.returncode != 0:
        return f"qemu-img info cannot open it: {r.stderr.strip()}"
    return None


def to_raw(path, out, snapshot=None):
    args = ["convert", "-f", "qcow2", "-O", "raw"]
    if snapshot:
        args += ["-l", f"snapshot.name={snapshot}"]
    r = qemu_img(*args, path, out)
    if r.returncode != 0:
        return None, f"qemu-img convert failed: {r.stderr.strip()}"
    with open(out, "rb") as f:
        return f.read(), None


# ---- random_io's sector patterns (fill_sector() in random_io.c) -------------

TAILS = [bytes((c + i) & 0xff for i in range(20, SECTOR)) for c in range(256)]


def pattern(req_id, sector, seed32):
    head = b"QWRT" + struct.pack("<IQI", req_id & 0xffffffff, sector, seed32)
    return head + TAILS[(req_id * 7 + sector * 13) & 0xff]


def describe(sec, seed32):
    if sec == bytes(SECTOR):
        return "zeros"
    if sec[:4] == b"QWRT":
        rid, s, sd = struct.unpack_from("<IQI", sec, 4)
        other = "" if sd == seed32 else " of another run"
        ok = "" if sd != seed32 or sec == pattern(rid, s, sd) else " (damaged)"
        return f"data of request #{rid} for sector {s}{other}{ok}"
    return "other data (" + sec[:8].hex(" ") + " ...)"


class Marks:
    """random_io --marks: barrier flushes and the requests between them."""

    def __init__(self, d, log, seed32):
        self.dir = d
        self.seed32 = seed32
        self.marks = []    # (j, records completed at the mark)
        self.touches = []  # (kind, id, off, len, records completed at issue)
        self.models = {}
        with open(os.path.join(d, "marks.txt")) as f:
            for line in f:
                w = line.split()
                if w[0] == "mark":
                    self.marks.append((int(w[1]), log.records_before(int(w[2]))))
                elif w[0] == "touch":
                    self.touches.append((w[1], int(w[2]), int(w[3]), int(w[4]),
                                         log.records_before(int(w[5])),
                                         len(self.marks)))
        if not self.marks:
            sys.exit("replay.py: no mark in marks.txt (random_io without --marks?)")

    def model(self, j):
        if j not in self.models:
            with open(os.path.join(self.dir, f"model-{j}.raw"), "rb") as f:
                self.models[j] = f.read()
        return self.models[j]

    def judge(self, k, got):
        """Crash after record k (records 0..k completed): check contents."""
        # The last mark whose flush had completed: its final record <= k.
        mi = max(i for i, (_, n) in enumerate(self.marks) if n - 1 <= k)
        j = self.marks[mi][0]
        want = self.model(j)
        if len(got) != len(want):
            return f"the disk reads {len(got)} bytes, the model {len(want)}"
        if got == want:
            return None
        # Requests issued after mark J, before the crash.
        cover = {}
        for kind, rid, off, ln, issued_at, marks_before in self.touches:
            if marks_before <= mi or issued_at > k + 1:
                continue
            for s in range(off // SECTOR, (off + ln + SECTOR - 1) // SECTOR):
                cover.setdefault(s, []).append((kind, rid))
        bad = []
        chunk = 1 << 16
        for c in range(0, len(got), chunk):
            if got[c:c + chunk] == want[c:c + chunk]:
                continue
            for s in range(c // SECTOR, min(len(got), c + chunk) // SECTOR):
                g = got[s * SECTOR:(s + 1) * SECTOR]
                if g == want[s * SECTOR:(s + 1) * SECTOR]:
                    continue
                ok = False
                for kind, rid in cover.get(s, []):
                    if kind in ("zero", "discard") and g == bytes(SECTOR):
                        ok = True
                    elif kind == "write" and g == pattern(rid, s, self.seed32):
                        ok = True
                if not ok:
                    bad.append(s)
        if not bad:
            return None
        s = bad[0]
        hist = ", ".join(f"{kd} #{rid}" for kd, rid in cover.get(s, [])) or "none"
        return (f"{len(bad)} sector(s) read what no crash can leave (barrier "
                f"flush mark {j} completed before the crash); first: sector {s} "
                f"(byte {s * SECTOR}) reads {describe(got[s*SECTOR:(s+1)*SECTOR], self.seed32)}, "
                f"the model at mark {j} holds {describe(want[s*SECTOR:(s+1)*SECTOR], self.seed32)}; "
                f"requests touching it since: {hist}")


def variant_writes(name, pending, rng):
    if name == "none":
        return []
    if name == "all":
        return pending
    if name == "random":
        return [w for w in pending if rng.random() < 0.5]
    if name == "every-other":
        return pending[::2]
    if name == "reordered":
        w = pending[:]
        rng.shuffle(w)
        return w[:len(w) // 2]
    if name == "torn":
        out = []
        for off, buf in pending:
            for s in range(0, len(buf), SECTOR):
                if rng.random() < 0.5:
                    out.append((off + s, buf[s:s + SECTOR]))
        return out
    raise ValueError(name)


def pick_points(log, n_points, rng):
    n = len(log.recs)
    around = sorted({p for s in log.syncs for p in (s - 1, s) if 0 <= p < n})
    budget = max(2, n_points * 2 // 3)
    if len(around) > budget:
        # Too many syncs: keep an even spread of them (both sides of each).
        keep = set()
        syncs = log.syncs
        step = len(syncs) / (budget / 2)
        i = 0.0
        while int(i) < len(syncs):
            s = syncs[int(i)]
            keep.update(p for p in (s - 1, s) if 0 <= p < n)
            i += step
        around = sorted(keep)
    points = set(around)
    spread = max(1, n_points - len(points))
    for i in range(spread):
        points.add(min(n - 1, i * n // spread + rng.randrange(max(1, n // spread))))
    points.add(n - 1)
    return sorted(points)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("base")
    ap.add_argument("log")
    ap.add_argument("workdir")
    ap.add_argument("--points", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--marks")
    ap.add_argument("--random-io-seed", type=int, default=0,
                    help="random_io's --seed (identifies its data)")
    ap.add_argument("--snapshot")
    ap.add_argument("--snapshot-raw")
    ap.add_argument("--final")
    ap.add_argument("--only", type=int, help="rebuild and judge one crash point")
    ap.add_argument("--variant", choices=VARIANTS)
    a = ap.parse_args()

    log = Log(a.log)
    n = len(log.recs)
    if n == 0:
        sys.exit("replay.py: empty log")
    marks = Marks(a.marks, log, a.random_io_seed & 0xffffffff) if a.marks else None
    snap_want = None
    if a.snapshot:
        with open(a.snapshot_raw, "rb") as f:
            snap_want = f.read()
    os.makedirs(a.workdir, exist_ok=True)
    state = os.path.join(a.workdir, "state.qcow2")
    raw = os.path.join(a.workdir, "state.raw")

    if a.final:
        shutil.copyfile(a.base, state)
        apply(state, [(r[1], r[2]) for r in log.recs if r[0] == WRITE])
        with open(state, "rb") as f1, open(a.final, "rb") as f2:
            s1, s2 = f1.read(), f2.read()
        if s1 != s2.ljust(len(s1), b"\0") and s1.ljust(len(s2), b"\0") != s2:
            print(f"FAIL: replaying the whole log does not rebuild {a.final}: the log "
                  "misses writes (or the file changed otherwise)")
            return 1

    if a.only is not None:
        points = [a.only]
        variants = [a.variant] if a.variant else VARIANTS
    else:
        points = pick_points(log, a.points, random.Random(a.seed))
        variants = VARIANTS
    print(f"{n} records ({n - len(log.syncs)} writes, {len(log.syncs)} fdatasyncs), "
          f"{len(points)} crash points x {len(variants)} variants"
          + (f", {len(marks.marks)} flush marks" if marks else ""))

    durable = os.path.join(a.workdir, "durable.qcow2")
    shutil.copyfile(a.base, durable)
    applied = -1   # records up to here are applied to `durable`
    checked = 0
    for k in points:
        last_sync = max((s for s in log.syncs if s <= k), default=-1)
        if last_sync < applied:
            shutil.copyfile(a.base, durable)
            applied = -1
        if last_sync > applied:
            apply(durable, [(r[1], r[2]) for r in log.recs[applied + 1:last_sync + 1]
                            if r[0] == WRITE])
            applied = last_sync
        pending = [(r[1], r[2]) for r in log.recs[last_sync + 1:k + 1] if r[0] == WRITE]
        for name in variants:
            if name != "none" and not pending:
                continue
            rng = random.Random(f"{a.seed}/{k}/{name}")
            writes = variant_writes(name, pending, rng)
            shutil.copyfile(durable, state)
            apply(state, writes)
            checked += 1
            why = check_image(state)
            if not why and (marks or snap_want is not None):
                got, why = to_raw(state, raw)
                if not why and marks:
                    why = marks.judge(k, got)
                if not why and snap_want is not None:
                    got, why = to_raw(state, raw, a.snapshot)
                    if not why and got != snap_want:
                        why = f"snapshot {a.snapshot} does not read as {a.snapshot_raw}"
            if why:
                keep = os.path.join(a.workdir, f"crash-at-{k}-{name}.qcow2")
                shutil.copyfile(state, keep)
                cmd = [sys.argv[0], a.base, a.log, a.workdir, "--seed", str(a.seed),
                       "--only", str(k), "--variant", name]
                if a.marks:
                    cmd += ["--marks", a.marks, "--random-io-seed", str(a.random_io_seed)]
                if a.snapshot:
                    cmd += ["--snapshot", a.snapshot, "--snapshot-raw", a.snapshot_raw]
                print(f"FAIL: crash after record {k} of {n} (last fdatasync: record "
                      f"{last_sync}; variant {name}: {len(writes)} of {len(pending)} "
                      f"unsynced writes{' (sector pieces)' if name == 'torn' else ''})\n"
                      f"{why}\nkept {keep}\nreplay: (cd {os.getcwd()} && "
                      f"{' '.join(cmd)})")
                return 1
    for f in (state, raw, durable):
        if os.path.exists(f):
            os.unlink(f)
    if DIRTY_STATES[0]:
        print(f"{DIRTY_STATES[0]} of them dirty (lazy refcounts): refcounts "
              "rebuilt before judging, by "
              + ("our read-write open" if os.environ.get("QCOW2_IMG")
                 else "qemu-img check -r all"))
    print(f"ok: {checked} crash states: no corruption"
          + (", contents as durable as promised" if marks else "")
          + (", snapshot intact" if snap_want is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
