#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# Image locking against QEMU's: one process holds an image open (qemu-io,
# or our qcow2-io, with its `sleep` command), and the other side's tools
# must respect it: a writer excludes everyone, readers exclude writers,
# two readers share, and -U reads anyway. A refused open changes nothing.
#
#   locking.sh CASE | --list
# Environment: QCOW2_IMG, QCOW2_IO (required), QCOW2_TEST_WORKDIR.
# Exit 0 pass, 1 fail (work directory kept), 77 skip.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
# shellcheck source=tests/write/lib.sh
source "$here/../write/lib.sh"

# name | holder | what it holds
cases() {
	cat <<'EOF'
qemu-writer   | qemu-io | rw
qemu-reader   | qemu-io | ro
ours-writer   | ours    | rw
ours-reader   | ours    | ro
EOF
}
if [[ ${1:-} == --list ]]; then cases | cut -d'|' -f1 | tr -d ' '; exit 0; fi
case_name=${1:?usage: locking.sh CASE | --list}
line=$(case_line "$case_name")
holder=$(echo "$line" | cut -d'|' -f2 | xargs)
mode=$(echo "$line" | cut -d'|' -f3 | xargs)
need qemu-img qemu-io python3
[[ -x ${QCOW2_IMG:-} && -x ${QCOW2_IO:-} ]] || { echo "FAIL: QCOW2_IMG and QCOW2_IO must name the tools"; exit 1; }

work=${QCOW2_TEST_WORKDIR:-$PWD/locking-work}/locking-$case_name
rm -rf "$work"
mkdir -p "$work"
cd "$work"
SAN_RE='ERROR: [A-Za-z]*Sanitizer|runtime error:|SUMMARY: [A-Za-z]*Sanitizer'

qemu-img create -q -f qcow2 img.qcow2 16M
qemu-io -c 'write -P 0x11 0 128k' img.qcow2 >/dev/null

# The holder keeps the image open until it is killed.
pid=
cleanup() { [[ -n $pid ]] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT
if [[ $holder == qemu-io ]]; then
	ro=()
	[[ $mode == ro ]] && ro=(-r)
	# qemu-io reads commands from its stdin: a fifo kept open holds it.
	mkfifo hold.fifo
	qemu-io "${ro[@]}" -f qcow2 img.qcow2 <hold.fifo >holder.out 2>&1 &
	pid=$!
	exec 3>hold.fifo
else
	cmds=(-c 'sleep 600000')
	[[ $mode == rw ]] && cmds=(-c 'write -P 0x22 64k 4k' -c 'flush' "${cmds[@]}")
	"$QCOW2_IO" "${cmds[@]}" img.qcow2 >holder.out 2>&1 &
	pid=$!
fi
# Wait until the holder has the image open: byte 100 (QEMU's "consistent
# read" permission byte) is then locked by another open file description.
held() {
	python3 - "$1" <<'PY'
import fcntl, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
fl = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 100, 1, 0)
t = struct.unpack("hhqqi4x", fcntl.fcntl(fd, fcntl.F_OFD_GETLK, fl))[0]
sys.exit(0 if t != fcntl.F_UNLCK else 1)
PY
}
for _ in $(seq 1 300); do
	kill -0 "$pid" 2>/dev/null || { cat holder.out; fail "the holder exited"; }
	held img.qcow2 && break
	sleep 0.1
done
held img.qcow2 || fail "the holder never locked the image"
sum=$(md5sum <img.qcow2)

# expect STATUS NAME CMD...: run CMD, want exit STATUS (0 or 1); a refusal
# must say why (a lock).
expect() {
	local want=$1 name=$2 rc=0
	shift 2
	"$@" >"$name.out" 2>"$name.err" || rc=$?
	grep -qE "$SAN_RE" "$name.err" && { cat "$name.err"; fail "$name: sanitizer report"; }
	if ((want == 0 && rc != 0)); then
		cat "$name.err"
		fail "$name: exit $rc, expected success"
	fi
	if ((want != 0)); then
		((rc != 0)) || fail "$name: succeeded while the image is held ($mode by $holder)"
		grep -qiE 'lock' "$name.err" || { cat "$name.err"; fail "$name: the message does not say it is a lock"; }
	fi
	echo "ok $name (exit $rc)"
}

# Writing: never while someone else holds the image.
expect 1 ours-write "$QCOW2_IO" -c 'write -P 0x33 0 4k' img.qcow2
expect 1 ours-resize "$QCOW2_IMG" resize img.qcow2 +1M
expect 1 ours-repair "$QCOW2_IMG" check -r all img.qcow2
if [[ $holder == ours ]]; then
	expect 1 qemu-write qemu-io -c 'write -P 0x33 0 4k' img.qcow2
fi
if [[ $mode == rw ]]; then
	# Reading what a writer holds: refused, unless forced.
	expect 1 ours-info "$QCOW2_IMG" info img.qcow2
	expect 1 ours-read "$QCOW2_IO" -r -c 'read 0 4k' img.qcow2
	expect 1 ours-check "$QCOW2_IMG" check img.qcow2
	expect 1 ours-dump "$QCOW2_IMG" dump img.qcow2
	expect 1 ours-stats "$QCOW2_IMG" stats img.qcow2
	[[ $holder == ours ]] && expect 1 qemu-info qemu-img info img.qcow2
	expect 0 ours-info-U "$QCOW2_IMG" info -U img.qcow2
	expect 0 ours-read-U "$QCOW2_IO" -U -c 'read -P 0x11 0 4k' img.qcow2
	expect 0 ours-dump-U "$QCOW2_IMG" dump -U img.qcow2 l1
	expect 0 ours-stats-U "$QCOW2_IMG" stats -U img.qcow2
	expect 0 ours-check-U "$QCOW2_IMG" check -U img.qcow2
	[[ $holder == ours ]] && expect 0 qemu-info-U qemu-img info -U img.qcow2
	# -U is for reading only.
	rc=0
	"$QCOW2_IO" -U -c 'write 0 4k' img.qcow2 >/dev/null 2>&1 || rc=$?
	((rc != 0)) || fail "qcow2-io -U wrote"
else
	# Readers share.
	expect 0 ours-info "$QCOW2_IMG" info img.qcow2
	expect 0 ours-read "$QCOW2_IO" -r -c 'read -P 0x11 0 4k' img.qcow2
	expect 0 ours-check "$QCOW2_IMG" check img.qcow2
	expect 0 ours-stats "$QCOW2_IMG" stats img.qcow2
	[[ $holder == ours ]] && expect 0 qemu-read qemu-io -r -c 'read -P 0x11 0 4k' img.qcow2
fi
[[ $(md5sum <img.qcow2) == "$sum" ]] || fail "a refused open changed the image"

# Released: once the holder is gone, everyone may write again.
if [[ $holder == qemu-io ]]; then
	exec 3>&-
	wait "$pid" || true
else
	kill "$pid"
	wait "$pid" 2>/dev/null || true
fi
pid=
expect 0 ours-write-after "$QCOW2_IO" -c 'write -P 0x44 0 4k' img.qcow2
expect 0 qemu-check-after qemu-img check img.qcow2
cd /
rm -rf "$work"
echo "ok locking-$case_name"
