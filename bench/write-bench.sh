#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# write-bench.sh: 4 KiB O_DIRECT writes at a given depth, measured in one run:
#   in place   - raw fio randwrite/write (io_uring, on a written raw file of the
#                same file system), qemu-img bench -w and qcow2-img bench -w on
#                the same fully allocated qcow2 image;
#   allocating - qemu-img bench -w and qcow2-img bench -w on empty images of the
#                same options (fresh image per run).
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
trap 'rm -f "$raw" "$img" "$empty"' EXIT

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
echo "== config: 4 KiB writes, depth $depth, $count requests per run, median of $runs runs, O_DIRECT, io_uring"
printf '%-24s %10s %10s %10s %9s %9s\n' case fio-raw qemu-img qcow2-img ours/fio ours/qemu
f=$(measure fio_iops write); q=$(measure qemu_iops "$img"); o_seq=$(measure ours_iops "$img")
printf '%-24s %10s %10s %10s %9s %9s\n' "in-place sequential" "$f" "$q" "$o_seq" "$(ratio "$o_seq" "$f")" "$(ratio "$o_seq" "$q")"
f=$(measure fio_iops randwrite); o_rand=$(measure ours_iops "$img" --random)
printf '%-24s %10s %10s %10s %9s %9s\n' "in-place random" "$f" "n/a" "$o_rand" "$(ratio "$o_rand" "$f")" "n/a"
q=$(measure qemu_alloc); o=$(measure ours_alloc)
printf '%-24s %10s %10s %10s %9s %9s\n' "allocating sequential" "n/a" "$q" "$o" "n/a" "$(ratio "$o" "$q")"
echo "allocating/in-place (sequential): $(ratio "$o" "$o_seq")"
o=$(measure ours_alloc --random)
echo "allocating random: $o IOPS; allocating/in-place (random): $(ratio "$o" "$o_rand")"
