# SPDX-License-Identifier: MIT OR Apache-2.0
"""Helpers of the service tests (tests/service/test_service.py): start and
stop a real qcow2d, talk raw JSON-RPC to it, and check every reply it sends
against the OpenRPC document (schemas/qcow2d.openrpc.json).

Standard library plus jsonschema (Debian's python3-jsonschema, 4.10 on
Debian 12: only /usr/bin/python3 sees it). $refs into components are
resolved by putting the document's components at the root of each schema
that is checked: "#/components/schemas/X" is then a JSON pointer into the
schema itself, which every jsonschema version resolves (no RefResolver,
no referencing registry: the API differs between versions)."""

import json
import os
import select
import signal
import socket
import subprocess
import tempfile
import time

META = "https://json-schema.org/draft/2020-12/schema"
AUTO = object()  # Conn.request(): number the request


class TestFailure(Exception):
    pass


def check(cond, what):
    """Assert cond; what says what was expected (and what was seen)."""
    if not cond:
        raise TestFailure(what)


# ---- the OpenRPC document ---------------------------------------------------


class OpenRpc:
    """The document, with a validator per method result and one for error
    replies."""

    def __init__(self, path):
        # Imported here: listing the cases (meson's configure) needs none.
        try:
            from jsonschema import Draft202012Validator
        except ImportError as e:  # no silent skip: say what is missing
            raise TestFailure("jsonschema is missing (%s): install Debian's "
                              "python3-jsonschema (scripts/test.sh does) and run "
                              "with /usr/bin/python3" % e)
        self.Validator = Draft202012Validator
        with open(path, encoding="utf-8") as f:
            self.doc = json.load(f)
        self.components = self.doc["components"]
        self.methods = {m["name"]: m for m in self.doc["methods"]}
        self.errors = self.components["errors"]
        self.codes = {e["code"]: name for name, e in self.errors.items()}
        self.classes = {name: e["code"] for name, e in self.errors.items()
                        if "data" in e}
        self._ok = {}
        self._method_errors = {}
        for name, m in self.methods.items():
            self._ok[name] = self.validator({
                "type": "object",
                "required": ["jsonrpc", "id", "result"],
                "additionalProperties": False,
                "properties": {
                    "jsonrpc": {"const": "2.0"},
                    "id": {"$ref": "#/components/schemas/Id"},
                    "result": m["result"]["schema"],
                }})
            codes = set()
            for e in m.get("errors", []):
                codes.add(self.resolve(e["$ref"])["code"])
            self._method_errors[name] = codes
        self._err = self.validator({"$ref": "#/components/schemas/ErrorResponse"})

    def validator(self, schema):
        root = dict(schema)
        root["$schema"] = META
        root["components"] = self.components
        self.Validator.check_schema(root)
        return self.Validator(root)

    def resolve(self, ref):
        check(ref.startswith("#/"), "a $ref outside the document: %s" % ref)
        node = self.doc
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            check(isinstance(node, dict) and part in node,
                  "$ref %s does not resolve" % ref)
            node = node[part]
        return node

    def schema(self, name):
        return self.validator({"$ref": "#/components/schemas/" + name})

    def method_error_codes(self, method):
        return self._method_errors[method]

    def check_reply(self, reply, method):
        """reply: one reply object; method: the method of the request it
        answers, or None when the request could not name one."""
        where = json.dumps(reply)[:600]
        check(isinstance(reply, dict), "a reply that is not an object: %s" % where)
        if "result" in reply:
            check(method is not None,
                  "a result for a request that was not a call: %s" % where)
            errs = sorted(self._ok[method].iter_errors(reply), key=str)
            check(not errs, "%s reply does not fit the schema: %s\n  reply: %s"
                  % (method, "; ".join("%s at %s" % (e.message, list(e.absolute_path))
                                       for e in errs[:3]), where))
            return
        errs = sorted(self._err.iter_errors(reply), key=str)
        check(not errs, "error reply does not fit ErrorResponse: %s\n  reply: %s"
              % ("; ".join("%s at %s" % (e.message, list(e.absolute_path))
                           for e in errs[:3]), where))
        code = reply["error"]["code"]
        check(code in self.codes, "error code %d is not in components.errors: %s"
              % (code, where))
        entry = self.errors[self.codes[code]]
        if "data" in entry:
            check(reply["error"]["data"]["class"] == entry["data"]["class"],
                  "code %d with class %s (components.errors says %s)"
                  % (code, reply["error"]["data"]["class"], entry["data"]["class"]))
        if method is not None and code not in (-32700, -32600, -32601):
            check(code in self._method_errors[method],
                  "%s replied error %d (%s), which its 'errors' do not list: %s"
                  % (method, code, self.codes[code], where))


# ---- a connection -----------------------------------------------------------


def connect(path, timeout):
    """A connected socket. A unix socket whose listen backlog is full
    refuses a connect with a timeout (EAGAIN) at once: retry until then."""
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(path)
            return s
        except BlockingIOError:
            s.close()
            check(time.monotonic() < deadline, "connect(%s): the backlog stayed "
                  "full for %.0f s" % (path, timeout))
            time.sleep(0.001)
        except BaseException:
            s.close()
            raise


class Conn:
    """One control connection. Every line read is parsed strictly (UTF-8,
    JSON) and every reply in it is checked against the document."""

    def __init__(self, svc, timeout=20.0):
        self.svc = svc
        self.rpc = svc.rpc
        self.timeout = timeout
        self.sock = connect(svc.socket_path, timeout)
        self.buf = b""
        self.next_id = 1
        self.pending = {}  # id (as JSON text) -> method
        self.replies = 0

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send_raw(self, data):
        self.sock.sendall(data)

    def expect(self, req_id, method):
        """A request sent raw: its reply answers method."""
        self.pending[json.dumps(req_id)] = method

    def request(self, method, params=None, req_id=AUTO, notify=False):
        """The request object; registers its id (the next integer unless
        req_id is given; None: a null id)."""
        r = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            r["params"] = params
        if not notify:
            if req_id is AUTO:
                req_id = self.next_id
                self.next_id += 1
            r["id"] = req_id
            self.pending[json.dumps(req_id)] = method
        return r

    def send(self, obj):
        self.send_raw(json.dumps(obj).encode() + b"\n")

    def read_line(self, timeout=None):
        """The next line (without '\\n'), or None at EOF."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            check(left > 0, "no reply within %.0f s" % (timeout or self.timeout))
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(1 << 20)
            except ConnectionResetError:
                data = b""
            except socket.timeout:
                raise TestFailure("no reply within %.0f s"
                                  % (timeout or self.timeout))
            if not data:
                check(not self.buf, "the connection closed in the middle of a "
                      "line: %r" % self.buf[:200])
                return None
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def recv(self, timeout=None):
        """The next reply line, parsed and checked: a dict, or a list for a
        batch. Fails at EOF."""
        line = self.read_line(timeout)
        check(line is not None, "the connection closed; a reply was expected")
        return self.parse(line)

    def parse(self, line):
        try:
            text = line.decode("utf-8")  # strict: invalid UTF-8 fails
        except UnicodeDecodeError as e:
            raise TestFailure("a reply that is not UTF-8 (%s): %r" % (e, line[:300]))
        try:
            msg = json.loads(text)
        except ValueError as e:
            raise TestFailure("a reply that is not JSON (%s): %r" % (e, text[:300]))
        items = msg if isinstance(msg, list) else [msg]
        check(items, "an empty batch reply")
        for r in items:
            check(isinstance(r, dict) and "id" in r,
                  "a reply without id: %r" % (r,))
            method = self.pending.pop(json.dumps(r["id"]), None)
            self.rpc.check_reply(r, method)
            self.replies += 1
        return msg

    def call(self, method, params=None, timeout=None):
        """Call and return the reply (result or error), checked."""
        req = self.request(method, params)
        self.send(req)
        reply = self.recv(timeout)
        check(isinstance(reply, dict) and reply.get("id") == req["id"],
              "reply to id %r expected, got %s" % (req["id"], json.dumps(reply)[:300]))
        return reply

    def ok(self, method, params=None, timeout=None):
        r = self.call(method, params, timeout)
        check("result" in r, "%s %s failed: %s" % (method, json.dumps(params),
                                                   json.dumps(r.get("error"))))
        return r["result"]

    def fail(self, method, params, cls_or_code, *in_message):
        """Call, expect an error of this class (a name) or code (an int),
        whose message contains each of in_message; return the error."""
        r = self.call(method, params)
        check("error" in r, "%s %s: an error (%s) was expected, got %s"
              % (method, json.dumps(params)[:300], cls_or_code, json.dumps(r)[:300]))
        return check_error(r, cls_or_code, *in_message)


def check_error(reply, cls_or_code, *in_message):
    err = reply["error"]
    if isinstance(cls_or_code, int):
        check(err["code"] == cls_or_code, "error code %d expected, got %s"
              % (cls_or_code, json.dumps(err)))
    else:
        check(err.get("data", {}).get("class") == cls_or_code,
              "error class %s expected, got %s" % (cls_or_code, json.dumps(err)))
    for s in in_message:
        check(s in err["message"], "error message should contain %r: %r"
              % (s, err["message"]))
    return err


# ---- the service --------------------------------------------------------------


class Service:
    """A qcow2d process on a socket of its own; stderr goes to a file."""

    def __init__(self, exe, rpc, workdir, args=(), workers=2, log_level="info",
                 socket_path=None):
        self.exe = exe
        self.rpc = rpc
        self.workdir = workdir
        # A unix socket path has at most 107 bytes: a short directory of
        # its own, not the build tree (or the socket of an earlier one).
        if socket_path:
            self.sockdir = os.path.dirname(socket_path)
            self.socket_path = socket_path
        else:
            self.sockdir = tempfile.mkdtemp(prefix="qcow2d-test-")
            self.socket_path = os.path.join(self.sockdir, "qcow2d.sock")
        n = 1
        while os.path.exists(os.path.join(workdir, "qcow2d-%d.log" % n)):
            n += 1
        self.log_path = os.path.join(workdir, "qcow2d-%d.log" % n)
        self.log = open(self.log_path, "wb")
        self.argv = [exe, "--socket", self.socket_path, "--workers", str(workers),
                     "--log-level", log_level] + list(args)
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise TestFailure("qcow2d exited with status %d at start:\n%s"
                                  % (self.proc.returncode, self.log_text()))
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(self.socket_path)
                s.close()
                break
            except OSError:
                s.close()
            check(time.monotonic() < deadline, "qcow2d did not listen within 30 s")
            time.sleep(0.02)

    def log_text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def conn(self, timeout=20.0):
        return Conn(self, timeout)

    def running(self):
        return self.proc.poll() is None

    def check_alive(self, what):
        """qcow2d runs and answers service.version on a new connection."""
        check(self.running(), "qcow2d died after %s (status %s):\n%s"
              % (what, self.proc.returncode, self.log_text()[-3000:]))
        with self.conn() as c:
            v = c.ok("service.version")
            check(v["name"] == "qcow2d", "service.version after %s: %r" % (what, v))

    def stop(self, allow_log=()):
        """SIGTERM; then it must exit 0 within 60 s, its log end with
        'stopped', and hold no error line (but those matching allow_log)
        and no sanitizer report."""
        check(self.running(), "qcow2d is not running at the stop (status %s):\n%s"
              % (self.proc.returncode, self.log_text()[-3000:]))
        self.proc.send_signal(signal.SIGTERM)
        return self.stopped(allow_log)

    def stopped(self, allow_log=()):
        """After a SIGTERM: the checks of stop()."""
        try:
            rc = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise TestFailure("qcow2d did not stop within 60 s of SIGTERM:\n%s"
                              % self.log_text()[-3000:])
        self.log.close()
        text = self.log_text()
        self.remove_socket()
        check(rc == 0, "qcow2d exited with status %d after SIGTERM:\n%s"
              % (rc, text[-5000:]))
        lines = text.splitlines()
        check(lines and lines[-1] == "info: stopped",
              "the log should end with 'info: stopped':\n%s" % text[-3000:])
        for bad in ("Sanitizer", "runtime error:", "handles left open"):
            check(bad not in text, "%r in qcow2d's log:\n%s" % (bad, text[-5000:]))
        for line in lines:
            if line.startswith("error:") and not any(a in line for a in allow_log):
                raise TestFailure("an error line in qcow2d's log: %s" % line)
        return text

    def remove_socket(self):
        for f in (lambda: os.unlink(self.socket_path), lambda: os.rmdir(self.sockdir)):
            try:
                f()
            except OSError:
                pass

    def kill(self):
        """Clean-up at the end of a case: by PID, never by name."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if not self.log.closed:
            self.log.close()
        self.remove_socket()


# ---- images -------------------------------------------------------------------


def qemu_img(*args):
    p = subprocess.run(["qemu-img"] + list(args), stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    check(p.returncode == 0, "qemu-img %s: status %d: %s"
          % (" ".join(args), p.returncode, p.stdout))
    return p.stdout


def make_image(path, size="64M", *opts):
    qemu_img("create", "-q", "-f", "qcow2", *opts, path, size)
    return path


def qemu_img_check(path):
    """qemu-img check: clean (exit 0, no leaks, no corruption)."""
    p = subprocess.run(["qemu-img", "check", "--output=json", path],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    check(p.returncode == 0, "qemu-img check %s: status %d: %s"
          % (path, p.returncode, p.stdout))
    r = json.loads(p.stdout)
    check(r.get("corruptions", 0) == 0 and r.get("leaks", 0) == 0,
          "qemu-img check %s: %s" % (path, p.stdout))


def wait_readable(sock, timeout):
    r, _, _ = select.select([sock], [], [], timeout)
    return bool(r)
