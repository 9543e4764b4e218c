#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# write-bench.sh: 4 KiB O_DIRECT writes at a given depth, measured in one run:
#   in place   - raw fio randwrite/write (io_uring, on a written raw file of the
#                same file system), qemu-img bench -w and qcow2-img bench -w on
#                the same fully allocated qcow2 image;
#   allocating - qemu-img bench -w and qcow2-img bench -w on empty images of the
#                same options (fresh image per run), and as the reference
#                fio writing into fresh space (a file fallocate()d but never
#                written: what the file system charges for first writes).
# Prints IOPS (median of --runs) and the ratios the write path aims at.
#
# Usage: bench/write-bench.sh [--size 1G] [--count 100000] [--depth 32]
#                             [--runs 3] [--dir DIR]
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
size=1G count=100000 depth=32 runs=3 dir="$here/bench-work"
while [ $# -gt 0 ]; do
	case "$1" in
	--size) size=$2; shift 2 ;;
	--count) count=$2; shift 2 ;;
	--depth) depth=$2; shift 2 ;;
	--runs) runs=$2; shift 2 ;;
	--dir) dir=$2; shift 2 ;;
	-h|--help) sed -n '3,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "write-bench.sh: unknown option $1" >&2; exit 2 ;;
	esac
done

qimg=${QCOW2_IMG:-$here/build/tools/qcow2-img}
# shellcheck source=bench/lib.sh
source "$here/bench/lib.sh"
require_tools fio qemu-img python3 "$qimg"
mkdir -p "$dir"
raw="$dir/wraw.img" img="$dir/wimage.qcow2" empty="$dir/wempty.qcow2"
trap 'rm -f "$raw" "$img" "$empty" "$dir/wunwritten.raw"' EXIT

echo "== preparing: $size raw file written by fio, converted to qcow2 (64 KiB clusters, all allocated)"
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
		python3 -c 'import json,sys; print(json.load(sys.stdin)["jobs"][0]["write"]["iops"])'
}
qemu_iops() { # image
	local t
	t=$(qemu-img bench -w -c "$count" -d "$depth" -s 4k -t none -i io_uring -f qcow2 "$1" |
		sed -n 's/^Run completed in \([0-9.]*\) seconds.*/\1/p')
	python3 -c "print($count / $t)"
}
ours_iops() { # image [extra]
	local image=$1
	shift
	"$qimg" bench -w -c "$count" -d "$depth" -s 4k -t none -i io_uring --json "$@" "$image" |
		python3 -c 'import json,sys; print(json.load(sys.stdin)["iops"])'
}
fresh() { rm -f "$empty"; qemu-img create -q -f qcow2 -o cluster_size=65536 "$empty" "$size"; }
qemu_alloc() { fresh; qemu_iops "$empty"; }
ours_alloc() { fresh; ours_iops "$empty" "$@"; }


machine_line "$dir"
echo "== config: 4 KiB writes, depth $depth, $count requests per run, median of $runs rounds" \
	"(cases interleaved), O_DIRECT, io_uring"
case_fio_seq() { fio_iops write; }
case_qemu_seq() { qemu_iops "$img"; }
case_ours_seq() { ours_iops "$img"; }
case_fio_rand() { fio_iops randwrite; }
case_ours_rand() { ours_iops "$img" --random; }
# The file system's own price for writing into fresh space: fio into a file
# whose blocks are reserved (fallocate) but never written, like the space
# the engine reserves ahead of its allocations.
fio_unwritten() { # rw
	rm -f "$dir/wunwritten.raw"
	fio --name=ref --filename="$dir/wunwritten.raw" --size="$size" --fallocate=native \
		--rw="$1" --bs=4k --iodepth="$depth" --ioengine=io_uring --direct=1 \
		--number_ios="$count" --randrepeat=1 --output-format=json 2>/dev/null |
		python3 -c 'import json,sys; print(json.load(sys.stdin)["jobs"][0]["write"]["iops"])'
	rm -f "$dir/wunwritten.raw"
}
case_fio_fresh() { fio_unwritten write; }
case_fio_fresh_rand() { fio_unwritten randwrite; }
case_qemu_alloc() { qemu_alloc; }
case_ours_alloc() { ours_alloc; }
case_ours_alloc_rand() { ours_alloc --random; }
declare -A RESULT
interleave fio_seq qemu_seq ours_seq fio_rand ours_rand fio_fresh qemu_alloc ours_alloc \
	fio_fresh_rand ours_alloc_rand
printf '%-24s %10s %10s %10s %9s %9s\n' case fio-raw qemu-img qcow2-img ours/fio ours/qemu
printf '%-24s %10s %10s %10s %9s %9s\n' "in-place sequential" "${RESULT[fio_seq]}" \
	"${RESULT[qemu_seq]}" "${RESULT[ours_seq]}" "$(ratio "${RESULT[ours_seq]}" "${RESULT[fio_seq]}")" \
	"$(ratio "${RESULT[ours_seq]}" "${RESULT[qemu_seq]}")"
printf '%-24s %10s %10s %10s %9s %9s\n' "in-place random" "${RESULT[fio_rand]}" "n/a" \
	"${RESULT[ours_rand]}" "$(ratio "${RESULT[ours_rand]}" "${RESULT[fio_rand]}")" "n/a"
printf '%-24s %10s %10s %10s %9s %9s\n' "allocating sequential" "${RESULT[fio_fresh]}" \
	"${RESULT[qemu_alloc]}" "${RESULT[ours_alloc]}" \
	"$(ratio "${RESULT[ours_alloc]}" "${RESULT[fio_fresh]}")" \
	"$(ratio "${RESULT[ours_alloc]}" "${RESULT[qemu_alloc]}")"
printf '%-24s %10s %10s %10s %9s %9s\n' "allocating random" "${RESULT[fio_fresh_rand]}" "n/a" \
	"${RESULT[ours_alloc_rand]}" "$(ratio "${RESULT[ours_alloc_rand]}" "${RESULT[fio_fresh_rand]}")" "n/a"
echo "(allocating: fio-raw is fio writing into fresh space, reserved with fallocate but never written)"
echo "allocating/in-place: sequential $(ratio "${RESULT[ours_alloc]}" "${RESULT[ours_seq]}")," \
	"random $(ratio "${RESULT[ours_alloc_rand]}" "${RESULT[ours_rand]}")"
