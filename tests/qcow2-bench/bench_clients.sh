#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# Several client processes on several images through one qcow2d:
#   - three qcow2-bench processes with --verify: two on disjoint halves of
#     image A (two queues each), one on image B; a fourth on image A is
#     killed with SIGKILL mid-run;
#   - the others must end with exit 0 and no bad block, the service must
#     answer and count no client left on either image once all are gone
#     (the killed client's queues freed), and a read run of each writer's
#     range must check every block it wrote (--verify-state);
#   - after a clean stop, qemu-img check finds both images clean.
#
#   bench_clients.sh QCOW2D QCOW2CTL QCOW2_BENCH WORKDIR
# Exit status: 0 pass, 1 fail, 77 skip.
set -uo pipefail

[[ $# == 4 ]] || { echo "usage: $0 QCOW2D QCOW2CTL QCOW2_BENCH WORKDIR" >&2; exit 2; }
qcow2d=$1 ctl=$2 bench=$3 work=$4
command -v qemu-img >/dev/null || { echo "SKIP: qemu-img not found (install qemu-utils)"; exit 77; }
rm -rf "$work"
mkdir -p "$work"
sockdir=$(mktemp -d /tmp/qcow2-bench-clients.XXXXXX)
sock=$sockdir/q.sock
svc_pid=
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
cleanup() {
	[[ -n $svc_pid ]] && kill -KILL "$svc_pid" 2>/dev/null && wait "$svc_pid" 2>/dev/null
	rm -rf "$sockdir"
}
trap cleanup EXIT

qemu-img create -q -f qcow2 "$work/a.qcow2" 256M
qemu-img create -q -f qcow2 "$work/b.qcow2" 128M
"$qcow2d" --socket "$sock" --workers 2 --log-level info >"$work/qcow2d.log" 2>&1 &
svc_pid=$!
for _ in $(seq 500); do "$ctl" --socket "$sock" version >/dev/null 2>&1 && break; sleep 0.01; done
"$ctl" --socket "$sock" open "$work/a.qcow2" --name a >/dev/null || fail "open a"
"$ctl" --socket "$sock" open "$work/b.qcow2" --name b >/dev/null || fail "open b"

# (exec: a background job is the bench itself, so that its PID is the one
# to kill)
b() { exec "$bench" --socket "$sock" "$@"; }
b --rw randrw --numjobs 2 --offset 0 --size 96M --runtime 4 --fsync 128 --verify \
	--verify-state "$work/a1.vs" a >"$work/a1.out" 2>&1 &
p1=$!
b --rw randwrite --numjobs 2 --offset 128M --size 96M --runtime 4 --verify \
	--verify-state "$work/a2.vs" a >"$work/a2.out" 2>&1 &
p2=$!
b --rw randrw --bs 16k --runtime 4 --verify --verify-state "$work/b.vs" b >"$work/b.out" 2>&1 &
p3=$!
b --rw randwrite --offset 224M --size 32M --runtime 30 a >"$work/victim.out" 2>&1 &
victim=$!
sleep 1.5
kill -KILL "$victim"
wait "$victim" 2>/dev/null
for p in p1 p2 p3; do
	wait "${!p}" || fail "client $p exited $?"
done
for f in a1 a2 b; do
	grep -q " 0 bad" "$work/$f.out" || { fail "$f: bad blocks"; cat "$work/$f.out"; }
done
echo "ok: three clients with verify on two images, a fourth killed mid-run"

# the killed client's queues are freed; the service answers
for _ in $(seq 100); do
	"$ctl" --socket "$sock" --json list >"$work/list.json" || fail "qcow2ctl list"
	/usr/bin/python3 -c 'import json,sys; l=json.load(open(sys.argv[1]))["images"]; sys.exit(0 if all(i["clients"] == 0 for i in l) else 1)' \
		"$work/list.json" && break
	sleep 0.1
done
/usr/bin/python3 -c 'import json,sys; l=json.load(open(sys.argv[1]))["images"]; sys.exit(0 if len(l) == 2 and all(i["clients"] == 0 for i in l) else 1)' \
	"$work/list.json" || { fail "clients left attached"; cat "$work/list.json"; }
echo "ok: no client left attached; qcow2d answers"

# every block each writer wrote reads back as it was written last
(b --rw read --numjobs 2 --offset 0 --size 96M --number-ios 12288 --verify \
	--verify-state "$work/a1.vs" a) >"$work/a1r.out" 2>&1 || { fail "read back a1"; cat "$work/a1r.out"; }
(b --rw read --numjobs 2 --offset 128M --size 96M --number-ios 12288 --verify \
	--verify-state "$work/a2.vs" a) >"$work/a2r.out" 2>&1 || { fail "read back a2"; cat "$work/a2r.out"; }
(b --rw read --bs 16k --number-ios 8192 --verify --verify-state "$work/b.vs" b) \
	>"$work/br.out" 2>&1 || { fail "read back b"; cat "$work/br.out"; }
echo "ok: each writer's range reads back as written"

kill -TERM "$svc_pid"
wait "$svc_pid" || fail "qcow2d exited $? after SIGTERM"
svc_pid=
for i in a b; do
	qemu-img check "$work/$i.qcow2" >"$work/check-$i.out" 2>&1 ||
		{ fail "qemu-img check $i"; cat "$work/check-$i.out"; }
done

if ((fails)); then
	echo "FAILED: $fails (kept: $work)"
	tail -n 30 "$work/qcow2d.log"
	exit 1
fi
rm -rf "$work"
echo "PASS"
