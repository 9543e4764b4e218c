#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# read-bench.sh: 4 KiB O_DIRECT reads of allocated clusters, measured in one
# run for raw fio (io_uring, on a raw file of the same file system),
# qemu-img bench (same qcow2 image) and qcow2-img bench (same qcow2 image).
# Prints IOPS (median of --runs) and our ratios against both references.
#
# Usage: bench/read-bench.sh [--size 1G] [--count 200000] [--depth 32]
#                            [--runs 3] [--dir DIR] [--keep]
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
size=1G count=200000 depth=32 runs=3 dir="$here/bench-work" keep=0
while [ $# -gt 0 ]; do
	case "$1" in
	--size) size=$2; shift 2 ;;
	--count) count=$2; shift 2 ;;
	--depth) depth=$2; shift 2 ;;
	--runs) runs=$2; shift 2 ;;
	--dir) dir=$2; shift 2 ;;
	--keep) keep=1; shift ;;
	-h|--help) sed -n '3,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "read-bench.sh: unknown option $1" >&2; exit 2 ;;
	esac
done

qimg=${QCOW2_IMG:-$here/build/tools/qcow2-img}
# shellcheck source=bench/lib.sh
source "$here/bench/lib.sh"
require_tools fio qemu-img python3 "$qimg"

mkdir -p "$dir"
raw="$dir/raw.img" img="$dir/image.qcow2"
cleanup() { [ "$keep" = 1 ] || rm -f "$raw" "$img"; }
trap cleanup EXIT

echo "== preparing: $size raw file written by fio, converted to qcow2 (64 KiB clusters, every cluster allocated)"
rm -f "$raw" "$img"
fio --name=fill --filename="$raw" --size="$size" --rw=write --bs=1M --direct=1 \
	--ioengine=io_uring --iodepth=8 --refill_buffers --output=/dev/null
# O_DIRECT, like fio's fill: written through the page cache instead, the
# image's blocks land elsewhere (delayed allocation) and random writes to it
# measured 15% slower than to the raw file for reasons of layout alone.
qemu-img convert -t none -T none -O qcow2 "$raw" "$img"


fio_iops() { # rw
	fio --name=ref --filename="$raw" --size="$size" --rw="$1" --bs=4k \
		--iodepth="$depth" --ioengine=io_uring --direct=1 --number_ios="$count" \
		--randrepeat=1 --output-format=json 2>/dev/null |
		python3 -c 'import json,sys; print(json.load(sys.stdin)["jobs"][0]["read"]["iops"])'
}

qemu_iops() {
	local t
	t=$(qemu-img bench -c "$count" -d "$depth" -s 4k -t none -i io_uring -f qcow2 "$img" |
		sed -n 's/^Run completed in \([0-9.]*\) seconds.*/\1/p')
	python3 -c "print($count / $t)"
}

ours_iops() { # extra args
	"$qimg" bench -c "$count" -d "$depth" -s 4k -t none -i io_uring --json "$@" "$img" |
		python3 -c 'import json,sys; print(json.load(sys.stdin)["iops"])'
}


machine_line "$dir"
echo "== config: 4 KiB reads, depth $depth, $count requests per run, median of $runs rounds" \
	"(cases interleaved), O_DIRECT, io_uring"
case_fio_seq() { fio_iops read; }
case_qemu_seq() { qemu_iops; }
case_ours_seq() { ours_iops; }
case_fio_rand() { fio_iops randread; }
case_ours_rand() { ours_iops --random; }
declare -A RESULT
interleave fio_seq qemu_seq ours_seq fio_rand ours_rand
printf '%-12s %12s %12s %12s %10s %10s\n' pattern fio-raw qemu-img qcow2-img ours/fio ours/qemu
printf '%-12s %12s %12s %12s %10s %10s\n' sequential "${RESULT[fio_seq]}" "${RESULT[qemu_seq]}" \
	"${RESULT[ours_seq]}" "$(ratio "${RESULT[ours_seq]}" "${RESULT[fio_seq]}")" \
	"$(ratio "${RESULT[ours_seq]}" "${RESULT[qemu_seq]}")"
printf '%-12s %12s %12s %12s %10s %10s\n' random "${RESULT[fio_rand]}" n/a "${RESULT[ours_rand]}" \
	"$(ratio "${RESULT[ours_rand]}" "${RESULT[fio_rand]}")" n/a
echo "(qemu-img bench has no random mode; its column is n/a there)"
