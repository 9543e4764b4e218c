#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# flush-interval-bench.sh: what qcow2d's lazy write-back period costs.
# 4 KiB random writes at a given depth into an empty image (every write
# allocates a cluster and dirties an L2 entry and a refcount), through the
# engine alone (qcow2-img bench -w), with the write-back timer qcow2d runs
# per image at each interval, and without one (0: metadata goes out only
# when a cache is full and at the close). Fresh image per run, cases
# interleaved, median of --runs. Prints IOPS and its ratio to no timer,
# timer write-backs, metadata bytes written per MiB of data, and fdatasyncs.
#
# The interval bounds how long a change to the tables stays only in memory:
# what a crash of the service loses of allocating writes that no flush
# covered (the image stays consistent: leaks at most), and how much a
# client's flush has left to write.
#
# Usage: bench/flush-interval-bench.sh [--intervals "0 5000 1000 250 50 10"]
#            [--count 100000] [--depth 32] [--size 8G] [--runs 3] [--dir DIR]
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
intervals="0 5000 1000 250 50 10" count=100000 depth=32 size=8G runs=3
dir="$here/bench-work"
while [ $# -gt 0 ]; do
	case "$1" in
	--intervals) intervals=$2; shift 2 ;;
	--count) count=$2; shift 2 ;;
	--depth) depth=$2; shift 2 ;;
	--size) size=$2; shift 2 ;;
	--runs) runs=$2; shift 2 ;;
	--dir) dir=$2; shift 2 ;;
	-h|--help) sed -n '3,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "flush-interval-bench.sh: unknown option $1" >&2; exit 2 ;;
	esac
done

qimg=${QCOW2_IMG:-$here/build/tools/qcow2-img}
# shellcheck source=bench/lib.sh
source "$here/bench/lib.sh"
require_tools qemu-img python3 "$qimg"
mkdir -p "$dir"
img="$dir/flush-interval.qcow2"
out="$dir/flush-interval.json"
trap 'rm -f "$img" "$out"' EXIT

machine_line "$dir"
echo "== $count random 4 KiB writes at depth $depth into an empty $size image (64 KiB clusters), $runs rounds"

declare -A RESULT
for i in $intervals; do
	eval "case_$i() { run_one $i; }"
done
# run_one INTERVAL: one run on a fresh image; prints IOPS and keeps the
# write-back figures of the run in $dir/fi-INTERVAL.N.json.
run_one() {
	qemu-img create -q -f qcow2 -o cluster_size=65536 "$img" "$size"
	"$qimg" bench -w --random -c "$count" -d "$depth" -s 4k \
		--writeback-interval "$1" --json "$img" >"$out"
	cp "$out" "$dir/fi-$1.$(date +%s%N).json"
	python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["iops"])' "$out"
}
rm -f "$dir"/fi-*.json
# shellcheck disable=SC2086
interleave $intervals

printf '\n%-14s %9s %9s %14s %18s %11s\n' "interval (ms)" IOPS "vs none" "timer rounds" "metadata KiB/MiB" fdatasyncs
for i in $intervals; do
	# shellcheck disable=SC2086
	read -r rounds meta syncs < <(python3 - "$count" $dir/fi-$i.*.json <<'EOF'
import json, statistics, sys
count = int(sys.argv[1])
runs = [json.load(open(p))["writeback"] for p in sys.argv[2:]]
med = lambda k: statistics.median(r[k] for r in runs)
mib = count * 4096 / 2**20
print(int(med("timer")), f'{med("metadata-bytes") / 1024 / mib:.1f}', int(med("fdatasyncs")))
EOF
)
	printf '%-14s %9s %9s %14s %18s %11s\n' "$i" "${RESULT[$i]}" \
		"$(ratio "${RESULT[$i]}" "${RESULT[${intervals%% *}]}")" "$rounds" "$meta" "$syncs"
done
rm -f "$dir"/fi-*.json
