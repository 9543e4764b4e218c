#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# IO error injection, SQLite style: for N = 1, 2, ... fail the Nth write or
# fdatasync (or read) with EIO or ENOSPC. The failing request must report
# that errno, the driver must not crash, and the image left behind must
# have no corruption (leaks are allowed).
#
#   faults.sh EIO|ENOSPC|READ-EIO|EIO-TINY-CACHE
# EIO-TINY-CACHE: the failure persists and the L2 cache holds one slice, so
# requests wait for room that dirty, unwritable slices hold: they must fail
# with the error, not wait forever.
# Environment: RANDOM_IO (required), QCOW2_TEST_WORKDIR. Exit 0/1/77.
set -euo pipefail
mode=${1:?usage: faults.sh EIO|ENOSPC|READ-EIO|EIO-TINY-CACHE}
command -v qemu-img >/dev/null || { echo "SKIP: qemu-img not installed"; exit 77; }
: "${RANDOM_IO:?RANDOM_IO must name the random_io driver}"
work=${QCOW2_TEST_WORKDIR:-$PWD/fault-work}/$mode
rm -rf "$work"
mkdir -p "$work"
cd "$work"
extra=()
case $mode in
EIO) errno=EIO ops=w,f ;;
EIO-TINY-CACHE) errno=EIO ops=w,f extra=(--fail-persist --l2-cache 4096) ;;
ENOSPC) errno=ENOSPC ops=w,f ;;
READ-EIO) errno=EIO ops=r ;;
*) echo "faults.sh: unknown mode $mode" >&2; exit 1 ;;
esac
qemu-img create -q -f qcow2 base.qcow2 8M
qemu-io -c 'write -P 0x5a 0 2M' base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o cluster_size=4k -b base.qcow2 -F qcow2 fresh.qcow2 8M
n=0
for at in $(seq 1 3 90); do
	cp fresh.qcow2 img.qcow2
	qemu-img convert -q -O raw img.qcow2 model.raw
	out=$("$RANDOM_IO" --backend fault --fail-at "$at" --fail-errno "$errno" \
		--fail-ops "$ops" --expect-failure --ops 120 --depth 4 --seed "$at" \
		"${extra[@]}" img.qcow2 model.raw 2>&1) || { echo "$out"; echo "FAIL: random_io at $at"; exit 1; }
	if grep -q -e AddressSanitizer -e 'runtime error' <<<"$out"; then
		echo "$out"; echo "FAIL: sanitizer report with failure at $at"; exit 1
	fi
	rc=0
	qemu-img check img.qcow2 > check.txt 2>&1 || rc=$?
	if [[ $rc != 0 && $rc != 3 ]]; then
		cat check.txt
		echo "FAIL: corruption after an injected $errno at operation $at"
		exit 1
	fi
	n=$((n + 1))
done
rm -rf "$work"
echo "ok: $n runs with an injected $errno, no corruption"
