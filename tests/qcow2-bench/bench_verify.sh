#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# qcow2-bench against a real qcow2d:
#   1. a write run with --verify --verify-state, then a read run that checks
#      every block against the saved generations (exit 0, blocks checked);
#   2. a block changed behind the bench's back (qemu-io, image closed in
#      qcow2d) makes the read run fail (exit 1) and name the block;
#   3. qcow2d killed (SIGKILL) mid-run and started again on the same socket
#      and --state-file: the bench (randrw, two jobs, a flush every 64
#      writes, verify) reconnects and ends with exit 0, no IO or verify
#      error (every write a completed flush covered reads back; one no
#      flush covered may read as the last flushed one), and says it
#      reconnected; qemu-img check then finds no corruption (leaks
#      allowed: a kill).
#
#   bench_verify.sh QCOW2D QCOW2CTL QCOW2_BENCH WORKDIR
# Exit status: 0 pass, 1 fail, 77 skip.
set -uo pipefail

[[ $# == 4 ]] || { echo "usage: $0 QCOW2D QCOW2CTL QCOW2_BENCH WORKDIR" >&2; exit 2; }
qcow2d=$1 ctl=$2 bench=$3 work=$4
command -v qemu-img >/dev/null && command -v qemu-io >/dev/null ||
	{ echo "SKIP: qemu-img/qemu-io not found (install qemu-utils)"; exit 77; }
rm -rf "$work"
mkdir -p "$work"
sockdir=$(mktemp -d /tmp/qcow2-bench-test.XXXXXX)
sock=$sockdir/q.sock state=$work/state.json img=$work/disk.qcow2 vs=$work/verify.state
svc_pid=
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
cleanup() {
	[[ -n $svc_pid ]] && kill -KILL "$svc_pid" 2>/dev/null && wait "$svc_pid" 2>/dev/null
	rm -rf "$sockdir"
}
trap cleanup EXIT

start_svc() {
	"$qcow2d" --socket "$sock" --workers 2 --state-file "$state" --log-level ${QCOW2D_LOG_LEVEL:-warn} \
		>>"$work/qcow2d.log" 2>&1 &
	svc_pid=$!
	for _ in $(seq 500); do
		"$ctl" --socket "$sock" version >/dev/null 2>&1 && return 0
		sleep 0.01
	done
	fail "qcow2d did not start"
	return 1
}
stop_svc() {
	kill -TERM "$svc_pid"
	wait "$svc_pid" || fail "qcow2d exited $? after SIGTERM"
	svc_pid=
}

qemu-img create -q -f qcow2 "$img" 256M
start_svc || exit 1
"$ctl" --socket "$sock" open "$img" --name disk >/dev/null || fail "qcow2ctl open"

# 1. write, then read against the saved generations
"$bench" --socket "$sock" --rw write --bs 16k --size 64M --number-ios 4096 \
	--verify --verify-state "$vs" disk >"$work/w.out" 2>&1 || { fail "write run"; cat "$work/w.out"; }
"$bench" --socket "$sock" --rw read --bs 16k --size 64M --number-ios 4096 \
	--verify --verify-state "$vs" --output-format=json disk >"$work/r.json" 2>"$work/r.err" ||
	{ fail "read run"; cat "$work/r.json" "$work/r.err"; }
/usr/bin/python3 - "$work/r.json" <<'PY' || fail "read run's figures"
import json, sys
j = json.load(open(sys.argv[1]))
assert j["verified"]["blocks"] == 4096 and j["verified"]["errors"] == 0, j["verified"]
assert j["read"]["ios"] == 4096 and j["errors"] == 0, j
assert j["cpu"]["service_seconds"] >= 0, j["cpu"]
PY
echo "ok: a write run, then a read run that checks every block against it"

# 2. a block changed behind the bench's back is caught
"$ctl" --socket "$sock" close disk >/dev/null || fail "qcow2ctl close"
qemu-io -f qcow2 -c "write -P 0x55 $((16 * 1024 * 5)) 16k" "$img" >/dev/null || fail "qemu-io write"
"$ctl" --socket "$sock" open "$img" --name disk >/dev/null || fail "qcow2ctl open again"
if "$bench" --socket "$sock" --rw read --bs 16k --size 64M --number-ios 4096 \
	--verify --verify-state "$vs" disk >"$work/bad.out" 2>&1; then
	fail "a damaged block went unnoticed"
elif ! grep -q "verify: block at offset 81920 is not a block this bench wrote" "$work/bad.out"; then
	fail "the damaged block is not named:"; cat "$work/bad.out"
else
	echo "ok: a block changed behind the bench's back fails the run and is named"
fi

# 3. qcow2d killed and started again mid-run
"$bench" --socket "$sock" --rw randrw --bs 4k --size 64M --numjobs 2 --runtime 6 \
	--fsync 64 --verify disk >"$work/rs.out" 2>&1 &
bench_pid=$!
sleep 2
kill -KILL "$svc_pid"
wait "$svc_pid" 2>/dev/null
svc_pid=
start_svc
wait "$bench_pid"
rc=$?
if ((rc != 0)); then
	fail "qcow2-bench exited $rc across the restart:"; cat "$work/rs.out"
elif ! grep -q "reconnection" "$work/rs.out" || ! grep -q "verify .* 0 bad" "$work/rs.out"; then
	fail "no reconnection or bad blocks reported:"; cat "$work/rs.out"
else
	echo "ok: qcow2d killed and restarted mid-run: the bench reconnects, no error"
fi
stop_svc
qemu-img check "$img" >"$work/check.out" 2>&1
rc=$?
if ((rc != 0 && rc != 3)); then
	fail "qemu-img check: exit $rc"; cat "$work/check.out"
fi

if ((fails)); then
	echo "FAILED: $fails (kept: $work)"
	tail -n 30 "$work/qcow2d.log"
	exit 1
fi
rm -rf "$work"
echo "PASS"
