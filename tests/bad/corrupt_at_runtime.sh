#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# Corruption found while an image is open: the engine marks the image
# corrupt as QEMU does. One damaged L2 entry (guest 0 points at a host
# offset that is not cluster aligned; make_bad.py l2-entry-unaligned) in an
# image with good data at 2M:
#   - the read that finds it fails with a message that says so;
#   - later writes are refused ("writes are refused ... check -r all"),
#     reads elsewhere go on and return the right data, a flush succeeds;
#   - v3, read-write: the header's corrupt bit is on disk afterwards
#     (qemu-img info says "corrupt: true"; neither qemu-io nor qcow2-io
#     will then open it read-write);
#   - v2 (no feature bits), and any image opened read-only: the file is
#     not changed at all.
#
# Environment: QCOW2_IO (required), QCOW2_TEST_WORKDIR, QEMU_IMG, QEMU_IO.
# Exit status: 0 pass, 1 fail, 77 skip.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
QEMU_IMG=${QEMU_IMG:-qemu-img}
QEMU_IO=${QEMU_IO:-qemu-io}
for t in "$QEMU_IMG" "$QEMU_IO" python3; do
	command -v "$t" >/dev/null 2>&1 || { echo "SKIP: $t not found (install qemu-utils)"; exit 77; }
done
[[ -x ${QCOW2_IO:-} ]] || { echo "FAIL: QCOW2_IO is not set to an executable" >&2; exit 1; }
QCOW2_IO=$(realpath "$QCOW2_IO")

W=${QCOW2_TEST_WORKDIR:-$PWD/corrupt-work}/corrupt-at-runtime
rm -rf "$W"
mkdir -p "$W"
cd "$W"

fails=0
fail() {
	echo "FAIL: $*"
	fails=$((fails + 1))
}

# expect_in FILE REGEX WHAT
expect_in() {
	if grep -qE -- "$2" "$1"; then
		echo "ok   $3"
	else
		fail "$3: /$2/ not in $1:"
		sed 's/^/  | /' "$1" | head -n 20
	fi
}

make_image() { # COMPAT OUT
	"$QEMU_IMG" create -q -f qcow2 -o "compat=$1,cluster_size=65536" good.qcow2 64M
	"$QEMU_IO" -f qcow2 -c "write -P 0x11 0 64k" -c "write -P 0x33 2M 64k" good.qcow2 >/dev/null
	python3 "$here/make_bad.py" l2-entry-unaligned good.qcow2 "$2"
	rm -f good.qcow2
}

# The session that finds the corruption: read good data, read the damaged
# cluster, try to write, read good data again, flush.
session() { # IMAGE [qcow2-io options]
	local img=$1
	shift
	"$QCOW2_IO" -f qcow2 "$@" -c "read -P 0x33 2M 64k" -c "read 0 64k" \
		-c "write -P 0x55 4M 64k" -c "read -P 0x33 2M 64k" -c "flush" \
		"$img" >session.out 2>session.err || true
	cat session.out session.err >session.log
}

for compat in 1.1 0.10; do
	echo "==== compat=$compat, read-write"
	make_image $compat bad.qcow2
	sum_before=$(md5sum <bad.qcow2)
	session bad.qcow2
	expect_in session.err "read failed: .*corrupt image: invalid L2 entry" \
		"the read of the damaged cluster fails and says why"
	expect_in session.err "write failed: .*writes are refused: the image was found corrupt.*check -r all" \
		"a later write is refused with what to do"
	if [[ $(grep -c "^read 65536/65536 bytes at offset 2097152" session.out) == 2 ]]; then
		echo "ok   reads of good data go on (before and after)"
	else
		fail "reads of good data: expected two good reads at 2M"
		sed 's/^/  | /' session.log
	fi
	if grep -q "flush failed" session.err; then
		fail "the flush after the corruption failed"
		sed 's/^/  | /' session.err
	else
		echo "ok   the flush succeeds"
	fi
	"$QEMU_IO" -r -f qcow2 -c "read -P 0 4M 64k" bad.qcow2 >qemu-read.log 2>&1 ||
		fail "the refused write reached the image: $(cat qemu-read.log)"
	"$QEMU_IMG" info bad.qcow2 >info.txt
	if [[ $compat == 1.1 ]]; then
		expect_in info.txt "corrupt: true" "qemu-img sees the corrupt bit"
		"$QEMU_IO" -f qcow2 -c "write 2M 4k" bad.qcow2 >qemu-rw.log 2>&1 &&
			fail "qemu-io opened the marked image read-write"
		expect_in qemu-rw.log "corrupt" "qemu-io refuses to write it"
		"$QCOW2_IO" -f qcow2 -c "write 2M 4k" bad.qcow2 >ours-rw.log 2>&1 &&
			fail "qcow2-io opened the marked image read-write"
		expect_in ours-rw.log "marked corrupt.*check -r all" "qcow2-io refuses to write it"
	else
		if [[ $(md5sum <bad.qcow2) == "$sum_before" ]]; then
			echo "ok   a v2 image is not changed (no feature bits to set)"
		else
			fail "the v2 image changed"
		fi
	fi
	rm -f bad.qcow2

	echo "==== compat=$compat, read-only"
	make_image $compat bad.qcow2
	sum_before=$(md5sum <bad.qcow2)
	"$QCOW2_IO" -r -f qcow2 -c "read -P 0x33 2M 64k" -c "read 0 64k" \
		-c "read -P 0x33 2M 64k" bad.qcow2 >session.out 2>session.err || true
	expect_in session.err "read failed: .*corrupt image" "the read of the damaged cluster fails"
	if [[ $(grep -c "^read 65536/65536 bytes at offset 2097152" session.out) == 2 ]]; then
		echo "ok   reads of good data go on"
	else
		fail "read-only: expected two good reads at 2M"
	fi
	if [[ $(md5sum <bad.qcow2) == "$sum_before" ]]; then
		echo "ok   an image opened read-only is not changed"
	else
		fail "the image opened read-only changed"
	fi
	rm -f bad.qcow2
done

if ((fails)); then
	echo "FAILED: $fails checks (work directory kept: $W)"
	exit 1
fi
cd / && rm -rf "$W"
echo "PASS"
