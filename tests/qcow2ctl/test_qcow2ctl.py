#!/usr/bin/python3
# SPDX-License-Identifier: MIT OR Apache-2.0
"""qcow2ctl against a real qcow2d.

    test_qcow2ctl.py QCOW2D QCOW2CTL QCOW2_IMG

Starts qcow2d on a temporary socket, drives every qcow2ctl command
against it (text and --json output, the service's errors, usage errors,
the default socket, a wrong socket, a peer that never replies, stats
--watch stopped by SIGINT), with real IO from a queue attached as a VMM
attaches one (ipc/PROTOCOL.md), then stops qcow2d with SIGTERM and
expects exit 0. The work directory goes under $QCOW2_TEST_WORKDIR (else
the current directory) and is kept only when a check fails. Exit 0 pass,
1 fail.
"""
import fcntl
import json
import mmap
import struct
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

QCOW2D, QCOW2CTL, QCOW2_IMG = sys.argv[1:4]
failures = []


def check(cond, what, detail=""):
    if cond:
        print(f"ok   {what}")
    else:
        print(f"FAIL {what}" + (f"\n     {detail}" if detail else ""))
        failures.append(what)
    return cond


class Run:
    def __init__(self, p):
        self.rc, self.out, self.err = p.returncode, p.stdout, p.stderr

    @staticmethod
    def of(argv, timeout, **kw):
        """argv's result; a hang is a failed run (rc None), not a crash."""
        try:
            return Run(subprocess.run(argv, capture_output=True, text=True,
                                      timeout=timeout, **kw))
        except subprocess.TimeoutExpired as e:
            r = Run(subprocess.CompletedProcess(argv, None, "", ""))
            r.out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            r.err = f"did not finish within {timeout} s"
            return r

    def __str__(self):
        return f"rc={self.rc}\n--- stdout:\n{self.out}--- stderr:\n{self.err}"

    def json(self):
        try:
            return json.loads(self.out)
        except ValueError:
            return None


def ctl(*args, env=None, cwd=None, timeout=20):
    """qcow2ctl with QCOW2D_SOCKET pointing at the test's qcow2d."""
    e = dict(os.environ)
    e.update(env if env is not None else {"QCOW2D_SOCKET": SOCK})
    e = {k: v for k, v in e.items() if v is not None}
    return Run.of([QCOW2CTL, *args], timeout, env=e, cwd=cwd or WORK)


def ok(r, what):
    return check(r.rc == 0, what, str(r))


def fails(r, rc, what, *needles):
    good = r.rc == rc and all(n in r.err for n in needles)
    return check(good, what, f"want rc={rc} and stderr with {needles}\n{r}")


def wait_socket(path, proc, seconds=10):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(path)
            return True
        except OSError:
            time.sleep(0.05)
        finally:
            s.close()
    return False


def silent_server(path, reply):
    """A socket that takes one connection and answers reply (or nothing)."""
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)

    def serve():
        conn, _ = srv.accept()
        conn.recv(65536)
        if reply is not None:
            conn.sendall(reply)
        time.sleep(2)
        conn.close()
        srv.close()

    threading.Thread(target=serve, daemon=True).start()


class Queue:
    """A client queue on an open image (queue.attach, then the ipc
    handshake, ipc/PROTOCOL.md), one request at a time: enough to make the
    counters move. It stays attached while the object lives."""
    SQ = CQ = 8
    DATA = 64 * 1024
    WRITE, FLUSH = 2, 3

    def __init__(self, name):
        page = 4096
        align = lambda x: (x + page - 1) // page * page  # noqa: E731
        cq_off = align(page + self.SQ * 64)
        seg_off = align(cq_off + self.CQ * 24)
        inflight_off = align(seg_off + self.CQ * 16)
        self.data_off = align(inflight_off + self.CQ * 128)
        size = self.data_off + self.DATA
        self.cq_off = cq_off
        fd = os.memfd_create("qcow2ctl-test", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, size)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
        self.m = mmap.mmap(fd, size)
        struct.pack_into("<IIIIIIQQ", self.m, 0, 0x51324951, 1, self.SQ, self.CQ, 1, 0,
                         self.DATA, size)
        self.kick = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.call = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(SOCK)
        self.sock.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "queue.attach",
                                      "params": {"name": name}}).encode() + b"\n")
        line = b""
        while not line.endswith(b"\n"):
            line += self.sock.recv(1)  # nothing past the reply line is ours
        self.rules = json.loads(line)["result"]
        hello = struct.pack("<IHHIIIIQQI20x", 0x48324951, 1, 1, self.SQ, self.CQ, 1, 0,
                            self.DATA, size, 0)
        socket.send_fds(self.sock, [hello], [fd, self.kick, self.call])
        os.close(fd)
        reply = b""
        while len(reply) < 32:
            reply += self.sock.recv(32 - len(reply))
        magic, _, _, status = struct.unpack_from("<IHHi", reply)
        assert magic == 0x52324951 and status == 0, (hex(magic), status)
        self.index = self.gen = 0

    def request(self, op, offset=0, length=0):
        """One request, waited for; its result (0 or -errno)."""
        self.gen += 1
        seg = (0, length, 0) if op == self.WRITE else (0, 0, 0)
        struct.pack_into("<BBHIQIIQQQII8x", self.m, 4096 + self.index % self.SQ * 64, op, 0,
                         1 if op == self.WRITE else 0, 0, self.gen, self.gen, 0, offset,
                         length, *seg)
        self.index += 1
        struct.pack_into("<I", self.m, 128, self.index)
        struct.pack_into("<I", self.m, 516, 1)  # cq_need_wakeup: we sleep on call
        os.eventfd_write(self.kick, 1)
        end = time.monotonic() + 10
        while struct.unpack_from("<I", self.m, 384)[0] != self.index:
            if time.monotonic() > end:
                raise TimeoutError("no completion from qcow2d")
            select.select([self.call], [], [], 0.1)
            try:
                os.eventfd_read(self.call)
            except BlockingIOError:
                pass
        tag, _, _, res = struct.unpack_from("<QIIi", self.m,
                                            self.cq_off + (self.index - 1) % self.CQ * 24)
        struct.pack_into("<I", self.m, 512, self.index)
        assert tag == self.gen
        return res

    def write(self, block):
        self.m[self.data_off:self.data_off + 4096] = bytes([block & 0xFF]) * 4096
        return self.request(self.WRITE, block * 4096, 4096)

    def close(self):
        self.sock.close()


def table_columns_aligned(lines, header_word):
    """Every row's cell under header_word starts at the header's column."""
    col = lines[0].index(header_word)
    return all(len(l) > col and l[col] != " " and l[col - 1] == " " for l in lines[1:])


def main():
    global WORK, SOCK
    base = os.environ.get("QCOW2_TEST_WORKDIR", os.getcwd())
    os.makedirs(base, exist_ok=True)
    WORK = tempfile.mkdtemp(prefix="qcow2ctl-", dir=base)
    # A short directory for the socket: sun_path holds 107 bytes.
    sockdir = tempfile.mkdtemp(prefix="qcow2ctl-")
    SOCK = os.path.join(sockdir, "qcow2d.sock")
    os.mkdir(os.path.join(WORK, "sub"))
    for args in (["a.qcow2", "64M"], ["b.qcow2", "16M"], ["c.qcow2", "1M"],
                 ["base.qcow2", "1M"], ["-b", "../base.qcow2", "-F", "qcow2", "sub/ov.qcow2"],
                 ["-o", "data_file=ext.raw", "ext.qcow2", "1M"]):
        subprocess.run([QCOW2_IMG, "create", "-q", "-f", "qcow2", *args], cwd=WORK,
                       check=True, capture_output=True)

    # qcow2d finds its socket as qcow2ctl does: $QCOW2D_SOCKET for both.
    log = open(os.path.join(WORK, "qcow2d.log"), "w")
    daemon = subprocess.Popen([QCOW2D, "--workers", "2", "--log-level", "debug"],
                              env=dict(os.environ, QCOW2D_SOCKET=SOCK),
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        if not check(wait_socket(SOCK, daemon), "qcow2d listens on $QCOW2D_SOCKET"):
            return
        run_checks(sockdir)
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                rc = daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                daemon.kill()
                rc = daemon.wait()
            check(rc == 0, "qcow2d stops on SIGTERM with exit status 0", f"rc={rc}")
        else:
            check(False, "qcow2d was still running at the end", f"rc={daemon.returncode}")
        log.close()
    r = ctl("list")
    fails(r, 1, "after qcow2d stopped: list exits 1, naming the socket", SOCK)
    shutil.rmtree(sockdir, ignore_errors=True)
    if failures:
        with open(os.path.join(WORK, "qcow2d.log")) as f:
            print("--- qcow2d log:\n" + f.read())
        print(f"{len(failures)} check(s) failed; work directory kept: {WORK}")
    else:
        shutil.rmtree(WORK, ignore_errors=True)


def run_checks(sockdir):
    a = os.path.join(WORK, "a.qcow2")

    # ---- help and version ---------------------------------------------------
    r = ctl("--help")
    ok(r, "--help exits 0")
    check(all(c in r.out for c in ("Usage: qcow2ctl", "open PATH", "close NAME", "list",
                                   "info NAME", "stats [NAME]", "flush NAME", "version",
                                   "call METHOD", "Exit status")),
          "--help names every command and the exit status", r.out)
    for c in ("open", "close", "list", "info", "stats", "flush", "version", "call"):
        r = ctl(c, "--help")
        check(r.rc == 0 and r.out.startswith(f"Usage: qcow2ctl {c}"),
              f"{c} --help exits 0 with its usage", str(r))
    r = ctl("help", "stats")
    check(r.rc == 0 and r.out.startswith("Usage: qcow2ctl stats"), "help COMMAND", str(r))
    r = ctl("--version", env={"QCOW2D_SOCKET": "/nonexistent/qcow2d.sock"})
    check(r.rc == 0 and re.fullmatch(r"qcow2ctl \S+\n", r.out) is not None,
          "--version prints qcow2ctl's version without connecting", str(r))
    r = ctl("version")
    ok(r, "version exits 0")
    check(re.search(r"^qcow2ctl \S+", r.out, re.M) and
          re.search(r"^qcow2d \S+ \(jansson \S+, libuv \S+\)$", r.out, re.M),
          "version prints qcow2ctl's and qcow2d's versions", r.out)
    j = ctl("--json", "version").json()
    check(j is not None and "qcow2ctl" in j and j.get("service", {}).get("name") == "qcow2d"
          and {"version", "jansson", "libuv"} <= set(j["service"]),
          "version --json: qcow2ctl and service.version's result", str(j))

    # ---- open ---------------------------------------------------------------
    # Relative paths: qcow2ctl makes them absolute from its current directory.
    r = ctl("open", "a.qcow2", "--name", "disk0", "--buffered", "--l2-cache", "256k",
            "--l2-slice", "8k", "--flush-interval", "0", "--worker", "1")
    ok(r, "open with options exits 0")
    check(r.out == f"opened image 'disk0' ({a}) on worker 1, read-write\n",
          "open prints the name, the absolute path, the worker, the mode", r.out)
    r = ctl("--json", "open", "./b.qcow2", "--read-only")
    j = r.json()
    check(r.rc == 0 and j == {"name": "b.qcow2", "path": os.path.join(WORK, "b.qcow2"),
                              "worker": j.get("worker") if j else None, "read_only": True}
          and isinstance(j.get("worker"), int),
          "open --json --read-only: image.open's result, name from the file", str(r))
    r = ctl("open", "a.qcow2", "--name", "again")
    fails(r, 1, "open of an open file: exit 1, the service's message and class",
          "is already open as image 'disk0'", "[AlreadyOpen]")
    r = ctl("open", "c.qcow2", "--name", "disk0")
    fails(r, 1, "open with a taken name: exit 1, AlreadyOpen",
          "an image named 'disk0' is already open", "[AlreadyOpen]")
    r = ctl("open", "missing.qcow2")
    fails(r, 1, "open of a missing file: exit 1, NoSuchFile",
          os.path.join(WORK, "missing.qcow2"), "[NoSuchFile]")
    r = ctl("open", "c.qcow2", "--worker", "7")
    fails(r, 1, "open on a worker qcow2d does not have: exit 1, InvalidParams",
          "worker", "[InvalidParams]")
    # Files an image names: refused outside --allow-dir unless open names
    # them (relative names too: made absolute like PATH).
    r = ctl("open", "sub/ov.qcow2")
    fails(r, 1, "open of an overlay whose backing file is not allowed: PathNotAllowed",
          "backing file", "[PathNotAllowed]")
    r = ctl("open", "sub/ov.qcow2", "--backing", "base.qcow2", "--name", "ov")
    ok(r, "open --backing FILE (relative) allows the backing file")
    r = ctl("info", "ov")
    check(re.search(r"^backing file:\s+\.\./base\.qcow2 \(opened as \S+base\.qcow2\)$",
                    r.out, re.M) is not None, "info shows the backing file", str(r))
    ok(ctl("close", "ov"), "close the overlay")
    fails(ctl("open", "ext.qcow2"), 1, "open of an image with a data file not allowed: "
          "PathNotAllowed", "data file", "[PathNotAllowed]")
    ok(ctl("open", "ext.qcow2", "--data-file", "ext.raw", "--read-only"),
       "open --data-file FILE (relative) uses that data file")
    ok(ctl("close", "ext.qcow2"), "close the image with a data file")
    r = ctl("--json", "open", "c.qcow2", "--worker", "7")
    j = r.json()
    check(r.rc == 1 and j is not None and j.get("code") == -32602 and "message" in j,
          "--json on a service error prints the JSON-RPC error object", str(r))

    # ---- IO: a client queue on disk0 ----------------------------------------
    q = Queue("disk0")
    check(q.rules.get("disk_size") == 64 << 20, "queue.attach to disk0", str(q.rules))
    res = [q.write(i) for i in range(16)] + [q.request(Queue.FLUSH)]
    check(res == [0] * 17, "16 writes of 4 KiB and a flush through the queue", str(res))

    # ---- list ---------------------------------------------------------------
    r = ctl("list")
    ok(r, "list exits 0")
    lines = r.out.splitlines()
    check(len(lines) == 3 and lines[0].split() == ["NAME", "STATE", "MODE", "WORKER",
                                                   "CLIENTS", "PATH"],
          "list: a header and one row per image", r.out)
    rows = {l.split()[0]: l.split() for l in lines[1:]}
    check(rows.get("disk0") == ["disk0", "open", "rw", "1", "1", a] and
          rows.get("b.qcow2", [None] * 3)[1:3] == ["open", "ro"],
          "list rows: state, mode, worker, clients, path", r.out)
    check(table_columns_aligned(lines, "PATH") and table_columns_aligned(lines, "STATE"),
          "list columns are aligned", r.out)
    j = ctl("--json", "list").json()
    check(j is not None and sorted(i["name"] for i in j.get("images", [])) ==
          ["b.qcow2", "disk0"] and all({"name", "path", "state", "worker", "read_only",
                                        "clients"} <= set(i) for i in j["images"]),
          "list --json: image.list's result", str(j))

    # ---- info ---------------------------------------------------------------
    r = ctl("info", "disk0")
    ok(r, "info exits 0")
    want = [r"^name:\s+disk0$", rf"^path:\s+{re.escape(a)}$", r"^format:\s+qcow2, version 3$",
            r"^virtual size:\s+64 MiB \(67108864 bytes\)$", r"^cluster size:\s+64 KiB$",
            r"^access:\s+read-write$", r"^cache mode:\s+writeback \(page cache\)$",
            r"^L2 cache:\s+256 KiB in 8 KiB slices$", r"^write-back interval:\s+off ",
            r"^worker:\s+1$", r"^clients:\s+1$", r"^backing file:\s+none$"]
    missing = [w for w in want if not re.search(w, r.out, re.M)]
    check(not missing, "info: key: value lines with the options open was given",
          f"missing {missing}\n{r.out}")
    cols = {len(re.match(r"[^:]+:\s+", l).group(0)) for l in r.out.splitlines()}
    check(len(cols) == 1, "info: values aligned", r.out)
    r = ctl("info", "b.qcow2")
    check(r.rc == 0 and re.search(r"^access:\s+read-only$", r.out, re.M) and
          re.search(r"^cache mode:\s+none \(O_DIRECT\)$", r.out, re.M),
          "info of the read-only image", str(r))
    j = ctl("--json", "info", "disk0").json()
    check(j is not None and j.get("name") == "disk0" and j.get("virtual_size") == 64 << 20
          and j.get("l2_cache_size") == 256 << 10 and j.get("l2_slice_size") == 8 << 10
          and j.get("flush_interval_ms") == 0 and j.get("direct") is False
          and j.get("read_only") is False and j.get("cluster_size") == 65536,
          "info --json: image.info's result reflects open's options", str(j))
    r = ctl("info", "nope")
    fails(r, 1, "info of an unknown image: exit 1, the service's message and class",
          "no image named 'nope' is open", "[ImageNotFound]")
    check(r.out == "", "info error: nothing on stdout without --json", r.out)

    # ---- flush and stats ----------------------------------------------------
    r = ctl("flush", "disk0")
    check(r.rc == 0 and "flushed image 'disk0'" in r.out, "flush exits 0", str(r))
    j = ctl("--json", "flush", "disk0").json()
    check(j == {"name": "disk0"}, "flush --json: image.flush's result", str(j))
    fails(ctl("flush", "nope"), 1, "flush of an unknown image: exit 1", "[ImageNotFound]")
    # The queue's flush and the two above: three client write-backs.
    r = ctl("stats", "disk0")
    ok(r, "stats NAME exits 0")
    want = [r"^image disk0: counters over ",
            r"^requests\s+COUNT\s+BYTES\s+ERRORS\s+MEAN\s+P99$",
            r"^  read\s+0\s+0 B\s+0\s+-\s+-$",
            r"^  write\s+16\s+64 KiB\s+0\s+\d[\d.]* [µm]?s\s+< \d[\d.]* [µm]?s$",
            r"^  flush\s+1\s+0 B\s+0\s+\d[\d.]* [µm]?s\s+< ",
            r"^  write_zeroes\s+0\s+", r"^  discard\s+0\s+",
            r"^  in the engine: 0 reads \(0 B, 0 errors\), 16 writes \(64 KiB, 0 errors\)$",
            r"^clusters: [1-9]\d* allocated",
            r"^metadata write-backs: 3 \(client 3, timer 0, eviction 0, close 0\), "
            r"0 errors; dirty now: no$",
            r"^    L2 slices\s+[1-9]\d*\s+\d+ KiB$", r"^  fdatasyncs: [1-9]\d*$",
            r"^  latency: 3 write-backs, mean \d[\d.]* [µm]?s, max [1-9][\d.]* [µm]?s "
            r"\(since open\)$",
            r"^    (< |>= )?\d[\d.]* [µm]?s( - \d[\d.]* [µm]?s)?\s+[123]$",
            r"^  L2\s+\d+\s+\d+\s+(\d+\.\d%|-)\s+0\s+\d+\s+\S+ K?i?B\s+256 KiB: 32 x 8 KiB$",
            r"^  refcount\s+\d+\s+\d+\s+"]
    missing = [w for w in want if not re.search(w, r.out, re.M)]
    check(not missing, "stats NAME: requests per op, clusters, write-backs by cause, "
          "tables, fdatasyncs, latency and its buckets, caches", f"missing {missing}\n{r.out}")
    j = ctl("--json", "stats", "disk0", "--reset").json()
    check(j is not None and j.get("name") == "disk0" and
          j.get("flush", {}).get("by_cause", {}).get("client") == 3 and
          j.get("ops", {}).get("write", {}).get("requests") == 16 and
          j["ops"]["write"].get("bytes") == 16 * 4096 and
          sum(j["ops"]["write"]["latency_histogram"]["counts"]) == 16 and
          {"read", "write", "clusters", "flush", "caches", "timer_writebacks", "seconds"} <= set(j),
          "stats NAME --reset --json: image.stats's result, counted before the reset", str(j))
    j2 = ctl("--json", "stats", "disk0").json()
    check(j2 is not None and j2["flush"]["by_cause"]["client"] == 0 and
          j2["flush"]["fdatasyncs"] == 0 and sum(j2["flush"]["latency_histogram"]["counts"]) == 0
          and j2["ops"]["write"]["requests"] == 0 and j2["seconds"] < j["seconds"],
          "after --reset the counters start from zero", str(j2))
    r = ctl("stats")
    ok(r, "stats exits 0")
    want = [r"^service: up \d+ (s|min)", r"^connections: \d+ open, \d+ since start, 0 refused$",
            r"^requests: \d+, \d+ errors$", r"^  METHOD\s+CALLS\s+ERRORS\s+BY CLASS$",
            r"^  image\.open\s+\d+\s+\d+\s+.*AlreadyOpen 2", r"^workers:$",
            r"^  ID\s+IMAGES\s+LOOP ITERATIONS\s+TIMER WRITE-BACKS$", r"^\s+1\s+1\s+\d+\s+\d+$",
            r"^image disk0: counters", r"^image b\.qcow2: counters"]
    missing = [w for w in want if not re.search(w, r.out, re.M)]
    check(not missing, "stats: the service's counters, then every image's",
          f"missing {missing}\n{r.out}")
    j = ctl("--json", "stats").json()
    check(j is not None and set(j) == {"service", "images"} and
          set(j["images"]) == {"disk0", "b.qcow2"} and
          j["service"]["requests"]["by_method"]["image.open"]["errors"].get("AlreadyOpen") == 2
          and {"uptime_seconds", "connections", "workers"} <= set(j["service"]),
          "stats --json: {service, images: {NAME: stats}}", str(j)[:2000])

    # ---- stats --watch ------------------------------------------------------
    # --preserve-status: timeout's status is qcow2ctl's, not 124. -k: a
    # qcow2ctl that ignores SIGINT is killed, and fails the check.
    # --foreground: without it timeout follows SIGINT with a SIGCONT, which
    # can cancel the SIGSTOP of LeakSanitizer's exit-time ptrace attach (ASan
    # build): qcow2ctl then never stops, and LeakSanitizer waits forever.
    watch = ["timeout", "--foreground", "-k", "5", "--preserve-status", "-s", "INT"]
    # Writes go on meanwhile (about 50 a second): the rates must show them.
    stop = threading.Event()

    def writer():
        n = 0
        while not stop.wait(0.02):
            q.write(n % 64)
            n += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        w = Run.of([*watch, "2.5", QCOW2CTL, "--socket", SOCK, "stats", "--watch", "1"], 30)
    finally:
        stop.set()
        t.join()
    frames = w.out.count("qcow2ctl stats at ")
    check(w.rc == 0 and frames >= 2, "stats --watch 1 for 2.5 s: at least two refreshes, "
          "exit 0 on SIGINT", f"{frames} refreshes\n{w}")
    later = w.out.split("rates since the previous refresh", 1)[-1]
    m = re.search(r"^\s+write\s+(\d+\.\d)\s+(\d+\.\d\d)\s+\d[\d.]* [µm]?s$", later, re.M)
    check("\033[" not in w.out and w.out.count("\nIMAGE ") == frames and
          w.out.count("\nWRITE-BACKS/S ") == frames and
          re.search(r"^disk0\s+read\s+\d+\.\d\s+\d+\.\d\d\s+(-|\d[\d.]* [µm]?s)$", w.out, re.M)
          and re.search(r"^b\.qcow2\s+read\s+0\.0\s+0\.00\s+-$", w.out, re.M)
          and re.search(r"^disk0\s+\d+\.\d\s+\d+\.\d\s+0\.0\s+0\.0\s+(yes|no)$", w.out, re.M)
          and "requests/s (besides ours)" in w.out,
          "stats --watch, not a terminal: frames appended, ops and write-backs per image",
          w.out)
    check(m is not None and 1 < float(m.group(1)) < 200 and
          abs(float(m.group(2)) - float(m.group(1)) * 4096 / 1e6) < 0.01,
          "stats --watch: write IOPS and MB/s since the previous refresh", w.out)
    w = Run.of([*watch, "1.2", QCOW2CTL, "--socket", SOCK, "--json", "stats", "disk0",
                "--watch", "0.3", "--reset"], 30)
    lines = w.out.splitlines()
    try:
        objs = [json.loads(l) for l in lines]
    except ValueError:
        objs = []
    check(w.rc == 0 and len(objs) >= 2 and len(objs) == len(lines) and
          all(o.get("name") == "disk0" and o["seconds"] < 1 for o in objs[1:]),
          "stats --json --watch --reset: one compact object per line, each since the last",
          str(w))

    # ---- check, metrics, detach, events --------------------------------------
    r = ctl("check", "disk0")
    check(r.rc == 0 and "image 'disk0': no errors were found" in r.out,
          "check: an online check of a clean image, exit 0", str(r))
    j = ctl("--json", "check", "disk0").json()
    check(j is not None and j.get("corruptions") == 0 and j.get("leaks") == 0 and
          "consistent" in j, "check --json: the raw result", str(j))
    r = ctl("metrics")
    check(r.rc == 0 and r.out.startswith("# TYPE qcow2d_") and r.out.endswith("# EOF\n")
          and 'qcow2d_image_requests_total{image="disk0",op="write"}' in r.out,
          "metrics: OpenMetrics text, per-image families", r.out[:500])
    fails(ctl("detach", "disk0", "999"), 1, "detach of no such queue",
          "no queue 999", "[ImageNotFound]")
    fails(ctl("detach", "disk0", "x"), 2, "detach with a non-numeric queue id", "QUEUE")
    ev = subprocess.Popen([*["timeout", "--foreground", "-k", "5", "--preserve-status",
                             "-s", "INT"], "2.5", QCOW2CTL, "--socket", SOCK, "events"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.7)
    subprocess.run([QCOW2_IMG, "create", "-q", "-f", "qcow2", "ev.qcow2", "1M"], cwd=WORK,
                   check=True, capture_output=True)
    ok(ctl("open", os.path.join(WORK, "ev.qcow2"), "--name", "ev"), "open for events")
    ok(ctl("close", "ev"), "close for events")
    out, err = ev.communicate(timeout=30)
    check(ev.returncode == 0 and
          re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d image\.opened +\{.*\"name\":\"ev\"",
                    out, re.M) and
          re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d image\.closed +\{.*\"ev\"", out, re.M),
          "events: one line per event until SIGINT, exit 0", out + err)

    # ---- call ---------------------------------------------------------------
    r = ctl("call", "image.info", '{"name": "disk0"}')
    j = r.json()
    check(r.rc == 0 and j is not None and j.get("virtual_size") == 64 << 20,
          "call image.info prints the raw result", str(r))
    j = ctl("call", "service.version").json()
    check(j is not None and j.get("name") == "qcow2d", "call without params", str(j))
    r = ctl("call", "image.info", '{"name": "nope"}')
    j = r.json()
    check(r.rc == 1 and j is not None and j.get("data", {}).get("class") == "ImageNotFound"
          and "[ImageNotFound]" in r.err,
          "call: a service error is exit 1, its object on stdout, its message on stderr", str(r))
    fails(ctl("call", "no.such.method"), 1, "call of an unknown method: exit 1",
          "[MethodNotFound]")
    fails(ctl("call", "image.list", '{"bogus": 1}'), 1, "call with a param the method "
          "does not take: exit 1", "unknown param 'bogus'", "[InvalidParams]")

    # ---- usage errors -------------------------------------------------------
    for args, needle in ((["bogus"], "unknown command 'bogus'"),
                         (["open"], "missing PATH"),
                         (["open", "a.qcow2", "--worker", "x"], "--worker"),
                         (["open", "a.qcow2", "--l2-cache", "12Q"], "--l2-cache"),
                         (["open", "a.qcow2", "--name"], "needs a value"),
                         (["close"], "missing NAME"),
                         (["info", "a", "b"], "unexpected argument 'b'"),
                         (["list", "--frob"], "unknown option '--frob'"),
                         (["stats", "--watch", "0"], "--watch"),
                         (["stats", "--watch", "x"], "--watch"),
                         (["call"], "missing METHOD"),
                         (["call", "image.list", "{nope"], "PARAMS is not JSON"),
                         (["call", "image.list", "42"], "PARAMS must be a JSON object"),
                         (["--timeout", "soon", "list"], "--timeout"),
                         (["--frob"], "unknown option")):
        fails(ctl(*args), 2, f"usage error: {' '.join(args)}", needle, "Try 'qcow2ctl")
    r = ctl()
    check(r.rc == 2 and "Usage: qcow2ctl" in r.err, "no command: usage on stderr, exit 2", str(r))

    # ---- sockets ------------------------------------------------------------
    r = ctl("--socket", SOCK, "list", env={"QCOW2D_SOCKET": "/nonexistent/qcow2d.sock"})
    check(r.rc == 0 and "disk0" in r.out, "--socket wins over $QCOW2D_SOCKET", str(r))
    r = ctl("list", "--socket", SOCK, env={"QCOW2D_SOCKET": None})
    check(r.rc == 0 and "disk0" in r.out, "--socket after the command", str(r))
    bad = os.path.join(sockdir, "nobody.sock")
    fails(ctl("--socket", bad, "list"), 1, "a wrong socket: exit 1, the path and what to do",
          f"cannot connect to {bad}", "is qcow2d running?", "--socket")
    if os.geteuid() == 0:
        default = "/run/qcow2d/qcow2d.sock"
        if not os.path.exists(default):
            fails(ctl("list", env={"QCOW2D_SOCKET": None}), 1,
                  "as root without $QCOW2D_SOCKET: qcow2d's default socket is tried",
                  default, "root's default")
    else:
        r = ctl("list", env={"QCOW2D_SOCKET": None, "XDG_RUNTIME_DIR": sockdir})
        check(r.rc == 0 and "disk0" in r.out,
              "as a user without $QCOW2D_SOCKET: $XDG_RUNTIME_DIR/qcow2d.sock", str(r))
    mute = os.path.join(sockdir, "mute.sock")
    silent_server(mute, None)
    t0 = time.monotonic()
    r = ctl("--socket", mute, "--timeout", "0.3", "list")
    fails(r, 1, "--timeout: a peer that never replies fails after the timeout",
          "no reply from qcow2d within 300 ms")
    check(time.monotonic() - t0 < 2, "--timeout does not wait longer", f"{time.monotonic() - t0:.2f} s")
    junk = os.path.join(sockdir, "junk.sock")
    silent_server(junk, b"hello\n")
    fails(ctl("--socket", junk, "list"), 1, "a peer that is not qcow2d: exit 1", "not qcow2d?")

    # ---- close --------------------------------------------------------------
    r = ctl("close", "b.qcow2")
    check(r.rc == 0 and r.out == "closed image 'b.qcow2'\n", "close exits 0", str(r))
    fails(ctl("close", "disk0"), 1, "close with a queue attached: exit 1, Busy",
          "client(s) attached", "[Busy]")
    r = ctl("--json", "close", "disk0", "--force")
    check(r.rc == 0 and r.json() == {"name": "disk0"}, "close --force --json: image.close's "
          "result", str(r))
    fails(ctl("close", "disk0"), 1, "close of a closed image: exit 1", "[ImageNotFound]")
    q.close()
    r = ctl("list")
    check(r.rc == 0 and r.out == "no images are open\n", "list with no images", str(r))
    r = ctl("stats")
    check(r.rc == 0 and "image " not in r.out and "service: up" in r.out,
          "stats with no images: the service's only", str(r))


if __name__ == "__main__":
    main()
    sys.exit(1 if failures else 0)
