#!/usr/bin/env python3
# SPDX-License-Identifier: MIT OR Apache-2.0
"""Crash consistency by simulated power loss.

replay.py BASE LOG WORKDIR [--points N] [--seed S]

LOG is the fault backend's record of every completed write and fdatasync of
a workload that started from the image BASE. For crash points spread over
the log (always including the records around each fdatasync), rebuild the
file as a power loss there could leave it: every write up to the last
fdatasync before the point, then a subset of the later, unsynced ones (none,
all, a seeded random subset, every other one: unsynced writes may be lost or
land out of order). qemu-img check must find no corruption in any of them
(leaks are allowed). Exit 0 pass, 1 fail (the failing state is kept).
"""
import argparse
import os
import random
import shutil
import struct
import subprocess
import sys

REC = struct.Struct("<IiQQ")
WRITE, FSYNC = 1, 2


def parse(log):
    recs = []
    with open(log, "rb") as f:
        data = f.read()
    pos = 0
    while pos + REC.size <= len(data):
        typ, _fd, off, length = REC.unpack_from(data, pos)
        pos += REC.size
        if typ == WRITE:
            recs.append((WRITE, off, data[pos:pos + length]))
            pos += length
        elif typ == FSYNC:
            recs.append((FSYNC, 0, b""))
        else:
            sys.exit(f"replay.py: bad record type {typ} at byte {pos}")
    return recs


def apply(path, writes):
    with open(path, "r+b") as f:
        for off, buf in writes:
            f.seek(off)
            f.write(buf)


def check(path):
    r = subprocess.run(["qemu-img", "check", "-f", "qcow2", path],
                       capture_output=True, text=True)
    # 0 clean, 3 leaks only: both fine. 2 corruption, 1 check failed.
    return r.returncode in (0, 3), r.returncode, r.stdout + r.stderr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("log")
    ap.add_argument("workdir")
    ap.add_argument("--points", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    recs = parse(a.log)
    n = len(recs)
    if n == 0:
        sys.exit("replay.py: empty log")
    rng = random.Random(a.seed)
    syncs = [i for i, r in enumerate(recs) if r[0] == FSYNC]
    points = set()
    for s in syncs:
        points.update(p for p in (s - 1, s, s + 1) if 0 <= p < n)
    if len(points) > a.points:
        points = set(rng.sample(sorted(points), a.points))
    step = max(1, n // max(1, a.points // 2))
    points.update(range(0, n, step))
    points.add(n - 1)
    os.makedirs(a.workdir, exist_ok=True)
    durable = os.path.join(a.workdir, "durable.qcow2")
    state = os.path.join(a.workdir, "state.qcow2")
    shutil.copyfile(a.base, durable)
    applied_sync = -1   # records up to here are applied to `durable`
    checked = 0
    print(f"{n} records, {len(syncs)} fdatasyncs, {len(points)} crash points")
    for k in sorted(points):
        last_sync = max([s for s in syncs if s <= k], default=-1)
        if last_sync > applied_sync:
            apply(durable, [(r[1], r[2]) for r in recs[applied_sync + 1:last_sync + 1]
                            if r[0] == WRITE])
            applied_sync = last_sync
        pending = [(r[1], r[2]) for r in recs[last_sync + 1:k + 1] if r[0] == WRITE]
        variants = {"none": [], "all": pending,
                    "random": [w for w in pending if rng.random() < 0.5],
                    "every-other": pending[::2]}
        if len(pending) > 1:
            shuffled = pending[:]
            rng.shuffle(shuffled)
            variants["reordered-half"] = shuffled[:len(shuffled) // 2]
        for name, writes in variants.items():
            shutil.copyfile(durable, state)
            apply(state, writes)
            ok, rc, out = check(state)
            checked += 1
            if not ok:
                keep = os.path.join(a.workdir, f"corrupt-at-{k}-{name}.qcow2")
                shutil.copyfile(state, keep)
                print(f"FAIL: crash after record {k} ({name}: {len(writes)} of "
                      f"{len(pending)} unsynced writes): qemu-img check exit {rc}\n"
                      f"kept {keep}; replay: {sys.argv[0]} {a.base} {a.log} "
                      f"{a.workdir} --points {a.points} --seed {a.seed}\n{out}")
                return 1
    print(f"ok: {checked} crash states checked, no corruption")
    return 0


if __name__ == "__main__":
    sys.exit(main())
