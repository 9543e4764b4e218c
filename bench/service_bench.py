#!/usr/bin/python3
# SPDX-License-Identifier: MIT OR Apache-2.0
"""service-bench: the ring path measured against raw fio and
qemu-storage-daemon, in one run, on the same file system.

For each workload, in turn within each round (median of --runs rounds):
  raw    fio (io_uring, O_DIRECT) over the very bytes that hold the image's
         data: the image is preallocated (preallocation=full), so its data
         lies in a few large extents of the file; fio runs on the largest
         one, at its host offset. (Allocating writes: fio on a fresh,
         fallocate()d file, what a first write costs the file system.)
  qcow2d qcow2-bench through libqcow2-client and qcow2d (one worker).
  engine qcow2-img bench on the same image (no service), for reference.
  qsd    qemu-storage-daemon (file: aio=io_uring, cache.direct=on; qcow2),
         exported over NBD on a unix socket, driven by fio's nbd engine.
Prints IOPS, p50/p99 latency, CPU seconds per GiB (client + server), and
the ratios to raw and to qemu-storage-daemon.

Usage: bench/service-bench.sh [--size 4G] [--runtime 10] [--runs 3]
           [--dir DIR] [--workloads NAME,...] [--json FILE]
"""
import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BUILD = os.environ.get("QCOW2_BUILD", os.path.join(ROOT, "build"))
QCOW2D = os.path.join(BUILD, "service", "qcow2d")
QBENCH = os.path.join(BUILD, "tools", "qcow2-bench")
QIMG = os.path.join(BUILD, "tools", "qcow2-img")

# name: (fio rw, bs, iodepth, image kind)
WORKLOADS = {
    "randread-4k-qd1": ("randread", "4k", 1, "full"),
    "randread-4k-qd32": ("randread", "4k", 32, "full"),
    "randwrite-4k-qd1": ("randwrite", "4k", 1, "full"),
    "randwrite-4k-qd32": ("randwrite", "4k", 32, "full"),
    "randwrite-4k-qd32-empty": ("randwrite", "4k", 32, "empty"),
    "read-1m-qd8": ("read", "1M", 8, "full"),
    "write-1m-qd8": ("write", "1M", 8, "full"),
}


def run(cmd, **kw):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    if p.returncode != 0:
        raise RuntimeError("%s: exit %d\n%s%s" % (" ".join(cmd), p.returncode, p.stdout[-2000:],
                                                   p.stderr[-2000:]))
    return p.stdout


def proc_cpu(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def size_bytes(s):
    mult = {"k": 1 << 10, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    return int(s[:-1]) * mult[s[-1]] if s[-1] in mult else int(s)


def fio(args, runtime, extra_cpu_pid=None):
    """Run fio; returns (iops, p50 us, p99 us, cpu seconds, bytes)."""
    cpu0 = proc_cpu(extra_cpu_pid) if extra_cpu_pid else 0
    out = run(["fio", "--output-format=json", "--time_based", "--runtime=%d" % runtime,
               "--name=bench", "--direct=1", "--randrepeat=1", "--norandommap"] + args)
    cpu1 = proc_cpu(extra_cpu_pid) if extra_cpu_pid else 0
    j = json.loads(out[out.index("{"):])["jobs"][0]
    side = j["write"] if j["write"]["io_bytes"] else j["read"]
    pct = side["clat_ns"].get("percentile", {})
    secs = j["job_runtime"] / 1000.0
    cpu = (j["usr_cpu"] + j["sys_cpu"]) / 100.0 * secs + (cpu1 - cpu0)
    return (side["iops"], pct.get("50.000000", 0) / 1000.0, pct.get("99.000000", 0) / 1000.0,
            cpu, side["io_bytes"])


class Qcow2d:
    def __init__(self, workdir):
        self.sock = os.path.join(tempfile.mkdtemp(prefix="svcbench-"), "q.sock")
        self.log = open(os.path.join(workdir, "qcow2d.log"), "ab")
        self.proc = subprocess.Popen([QCOW2D, "--socket", self.sock, "--workers", "1",
                                      "--log-level", "warn"], stdout=self.log, stderr=self.log)
        for _ in range(500):
            try:
                s = socket.socket(socket.AF_UNIX)
                s.connect(self.sock)
                s.close()
                return
            except OSError:
                time.sleep(0.01)
        raise RuntimeError("qcow2d did not start")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)
        self.log.close()


class Qsd:
    def __init__(self, image, workdir):
        self.sock = os.path.join(tempfile.mkdtemp(prefix="svcbench-"), "nbd.sock")
        self.log = open(os.path.join(workdir, "qsd.log"), "ab")
        self.proc = subprocess.Popen([
            "qemu-storage-daemon",
            "--blockdev", "driver=file,node-name=file,filename=%s,aio=io_uring,"
                          "cache.direct=on" % image,
            "--blockdev", "driver=qcow2,node-name=disk,file=file",
            "--nbd-server", "addr.type=unix,addr.path=%s" % self.sock,
            "--export", "type=nbd,id=exp,node-name=disk,name=disk,writable=on"],
            stdout=self.log, stderr=self.log)
        for _ in range(500):
            if os.path.exists(self.sock):
                return
            time.sleep(0.01)
        raise RuntimeError("qemu-storage-daemon did not start")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)
        self.log.close()


def largest_extent(image):
    """(host offset, length) of the largest run of data in the image."""
    m = json.loads(run(["qemu-img", "map", "--output=json", image]))
    best = max((e for e in m if e.get("data") and "offset" in e), key=lambda e: e["length"])
    return best["offset"], best["length"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="4G")
    ap.add_argument("--runtime", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default=os.path.join(ROOT, "bench-work"))
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--json", help="also write the results as JSON here")
    a = ap.parse_args()
    names = a.workloads.split(",")
    for n in names:
        if n not in WORKLOADS:
            sys.exit("service-bench: unknown workload %s (%s)" % (n, ", ".join(WORKLOADS)))
    for t in (QCOW2D, QBENCH, QIMG):
        if not os.access(t, os.X_OK):
            sys.exit("service-bench: %s not built (meson setup build --buildtype=release "
                     "&& ninja -C build)" % t)
    os.makedirs(a.dir, exist_ok=True)
    full = os.path.join(a.dir, "svc-full.qcow2")
    empty = os.path.join(a.dir, "svc-empty.qcow2")
    fresh = os.path.join(a.dir, "svc-fresh.raw")
    size = size_bytes(a.size)
    fs = run(["findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", a.dir]).strip()
    print("== machine: %d cores, %s, %s" % (os.cpu_count(), os.uname().release, fs))
    print("== preparing: %s qcow2 image, preallocation=full (its data in large extents)"
          % a.size, flush=True)
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
         "cluster_size=65536,preallocation=full", full, a.size])
    host_off, host_len = largest_extent(full)
    span = min(host_len, size) // (1 << 20) * (1 << 20)
    print("== raw reference: fio on %s at host offset %d, %d MiB (the image's largest extent)"
          % (os.path.basename(full), host_off, span >> 20), flush=True)

    def case_raw(rw, bs, qd, kind):
        if kind == "empty":
            if os.path.exists(fresh):
                os.unlink(fresh)
            run(["fallocate", "-l", a.size, fresh])
            r = fio(["--filename=" + fresh, "--rw=" + rw, "--bs=" + bs, "--iodepth=%d" % qd,
                     "--ioengine=io_uring", "--size=" + a.size], a.runtime)
            os.unlink(fresh)
            return r
        return fio(["--filename=" + full, "--offset=%d" % host_off, "--size=%d" % span,
                    "--rw=" + rw, "--bs=" + bs, "--iodepth=%d" % qd, "--ioengine=io_uring"],
                   a.runtime)

    def image_for(kind):
        if kind == "empty":
            run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=65536",
                 empty, a.size])
            return empty
        return full

    def case_qcow2d(rw, bs, qd, kind):
        img = image_for(kind)
        svc = Qcow2d(a.dir)
        try:
            out = run([QBENCH, "--socket", svc.sock, "--rw", rw, "--bs", bs, "--iodepth",
                       str(qd), "--runtime", str(a.runtime), "--zero-copy",
                       "--output-format=json", img])
        finally:
            svc.stop()
        j = json.loads(out)
        side = j["write"] if j["write"]["ios"] else j["read"]
        cpu = j["cpu"]["client_seconds"] + max(j["cpu"]["service_seconds"], 0)
        return (side["iops"], side["lat_us"]["p50"], side["lat_us"]["p99"], cpu,
                side["bytes"])

    def case_engine(rw, bs, qd, kind):
        if rw not in ("randread", "randwrite", "read", "write"):
            return None
        img = image_for(kind)
        n = (20000 if qd == 1 else 100000) if bs == "4k" else 2000
        out = run([QIMG, "bench", "--json", "-c", str(n), "-d", str(qd), "-s", bs] +
                  (["--random"] if rw.startswith("rand") else []) +
                  (["-w"] if "write" in rw else []) + [img])
        j = json.loads(out)
        return (j["iops"], j["lat-us-p50"], j["lat-us-p99"], None, None)

    def case_qsd(rw, bs, qd, kind):
        img = image_for(kind)
        qsd = Qsd(img, a.dir)
        try:
            r = fio(["--ioengine=nbd", "--uri=nbd+unix:///disk?socket=" + qsd.sock,
                     "--rw=" + rw, "--bs=" + bs, "--iodepth=%d" % qd, "--size=" + a.size],
                    a.runtime, extra_cpu_pid=qsd.proc.pid)
        finally:
            qsd.stop()
        return r

    systems = (("raw", case_raw), ("qcow2d", case_qcow2d), ("engine", case_engine),
               ("qsd", case_qsd))
    results = {}
    for n in names:
        rw, bs, qd, kind = WORKLOADS[n]
        vals = {s: [] for s, _ in systems}
        for r in range(a.runs):
            for s, fn in systems:
                v = fn(rw, bs, qd, kind)
                if v:
                    vals[s].append(v)
            print("   %s: round %d/%d done" % (n, r + 1, a.runs), flush=True)
        res = {}
        for s, v in vals.items():
            if not v:
                continue
            med = lambda i: statistics.median(x[i] for x in v) if v[0][i] is not None else None
            iops, p50, p99, cpu, nbytes = med(0), med(1), med(2), med(3), med(4)
            res[s] = {"iops": iops, "p50_us": p50, "p99_us": p99,
                      "cpu_s_per_gib": cpu / (nbytes / (1 << 30)) if cpu and nbytes else None}
        results[n] = res
    for f in (full, empty):
        if os.path.exists(f):
            os.unlink(f)

    print()
    print("%-24s %-7s %9s %9s %9s %10s %8s %8s" % ("workload", "system", "IOPS", "p50 us",
                                                  "p99 us", "CPU s/GiB", "vs raw", "vs qsd"))
    for n, res in results.items():
        for s in ("raw", "qcow2d", "engine", "qsd"):
            if s not in res:
                continue
            r = res[s]
            vs = lambda ref: ("%.2f" % (r["iops"] / res[ref]["iops"])
                              if ref in res and res[ref]["iops"] else "")
            print("%-24s %-7s %9.0f %9.1f %9.1f %10s %8s %8s" % (
                n, s, r["iops"], r["p50_us"], r["p99_us"],
                "%.2f" % r["cpu_s_per_gib"] if r["cpu_s_per_gib"] else "",
                vs("raw") if s != "raw" else "", vs("qsd") if s != "qsd" else ""))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
