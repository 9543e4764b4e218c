#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# Crash consistency: run a workload through the fault backend, logging every
# write and fdatasync, then rebuild the image as a power loss at many points
# would leave it (replay.py); qemu-img check must find no corruption in any.
#
#   crash.sh CASE     cases: 64k, 4k, backing, tiny-cache, snapshot
# Environment: RANDOM_IO (required), QCOW2_TEST_WORKDIR. Exit 0/1/77.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
case_name=${1:?usage: crash.sh CASE}
command -v qemu-img >/dev/null || { echo "SKIP: qemu-img not installed"; exit 77; }
: "${RANDOM_IO:?RANDOM_IO must name the random_io driver}"
work=${QCOW2_TEST_WORKDIR:-$PWD/crash-work}/$case_name
rm -rf "$work"
mkdir -p "$work"
cd "$work"

args="--ops 300 --depth 4 --seed 11"
case $case_name in
64k) qemu-img create -q -f qcow2 img.qcow2 16M ;;
4k) qemu-img create -q -f qcow2 -o cluster_size=4k img.qcow2 16M; args="$args --seed 12" ;;
backing)
	qemu-img create -q -f qcow2 base.qcow2 16M
	qemu-io -c 'write -P 0x5a 0 8M' base.qcow2 >/dev/null
	qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 img.qcow2 16M ;;
tiny-cache)
	qemu-img create -q -f qcow2 -o cluster_size=4k img.qcow2 16M
	args="$args --l2-cache 4096 --seed 13" ;;
snapshot)
	qemu-img create -q -f qcow2 img.qcow2 16M
	qemu-io -c 'write -P 0x21 0 16M' img.qcow2 >/dev/null
	qemu-img snapshot -c s1 img.qcow2 ;;
*) echo "crash.sh: unknown case $case_name" >&2; exit 1 ;;
esac
cp img.qcow2 base-state.qcow2
qemu-img convert -q -O raw img.qcow2 model.raw
# shellcheck disable=SC2086
"$RANDOM_IO" --backend fault --log writes.log $args img.qcow2 model.raw
# States are rebuilt here, beside the backing file they name.
python3 "$here/replay.py" base-state.qcow2 writes.log . --points 40
rm -rf "$work"
