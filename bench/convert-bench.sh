#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# convert-bench.sh: qcow2-img convert against qemu-img convert, both with
# their default options (the source's format given with -f), on the same
# files in one run. Cases: a sparse image (the demo's sample: 1 GiB over a
# compressed backing file, with some data), a full image (every cluster
# written, -O raw), a compressed image (-O raw), raw -> qcow2 and qcow2 ->
# qcow2 (the full image). Prints the wall time (median of --runs rounds,
# cases interleaved within each round, the tool that goes first
# alternating), the ratio qemu-img time / our time (>= 1.00: we are at
# least as fast) and each output's allocated size (du).
#
# Before every timed command the previous output is written back (sync) and
# deleted, and the disk gets a second to settle; with --cache cold (the
# default as root) the page cache is dropped too (echo 3 >
# /proc/sys/vm/drop_caches), so both tools read their source from the disk;
# with --cache warm the source is read once beforehand, so both find it in
# the page cache. Then --settle seconds (default 3) pass, so that the
# pages the previous run freed are given back to the host (free page
# reporting) before every run alike.
#
# Usage: bench/convert-bench.sh [--size 1G] [--runs 4] [--cache cold|warm]
#                               [--cases sparse,full,comp,r2q,q2q]
#                               [--settle 3] [--dir DIR] [--keep]
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
size=1G runs=4 dir="$here/bench-work/convert" keep=0 cache= only=sparse,full,comp,r2q,q2q settle=3
while [ $# -gt 0 ]; do
	case "$1" in
	--size) size=$2; shift 2 ;;
	--runs) runs=$2; shift 2 ;;
	--cache) cache=$2; shift 2 ;;
	--cases) only=$2; shift 2 ;;
	--dir) dir=$2; shift 2 ;;
	--settle) settle=$2; shift 2 ;;
	--keep) keep=1; shift ;;
	-h|--help) sed -n '3,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "convert-bench.sh: unknown option $1" >&2; exit 2 ;;
	esac
done
if [[ -z $cache ]]; then
	if [[ $(id -u) == 0 ]]; then cache=cold; else cache=warm; fi
fi
case $cache in
cold) [[ -w /proc/sys/vm/drop_caches ]] || {
	echo "convert-bench.sh: --cache cold needs root (drop_caches); use --cache warm" >&2
	exit 2
} ;;
warm) ;;
*) echo "convert-bench.sh: --cache cold|warm" >&2; exit 2 ;;
esac

qimg=${QCOW2_IMG:-$here/build/tools/qcow2-img}
# shellcheck source=bench/lib.sh
source "$here/bench/lib.sh"
require_tools fio qemu-img qemu-io python3 "$qimg"
qimg=$(realpath "$(command -v "$qimg")")

mkdir -p "$dir"
dir=$(cd "$dir" && pwd -P)
cleanup() {
	rm -f "$dir"/out-*
	[ "$keep" = 1 ] || rm -f "$dir"/base.raw "$dir"/base.qcow2 "$dir"/sample.qcow2 \
		"$dir"/full.raw "$dir"/full.qcow2 "$dir"/comp.raw "$dir"/comp.qcow2
}
trap cleanup EXIT
cd "$dir"

echo "== preparing the images in $dir"
if [[ ! -f sample.qcow2 ]]; then
	echo "   sample.qcow2: the demo's sample (scripts/demo.sh): 1 GiB over a compressed backing file"
	python3 - <<'EOF'
import random
r = random.Random(1)
with open("base.raw", "wb") as f:
    f.truncate(1 << 30)
    for i in range(64):                      # 64 x 64k every 8 MiB
        f.seek(i * (8 << 20))
        kind = i % 3
        if kind == 0:
            f.write(bytes([0x40 + i]) * 65536)
        elif kind == 1:
            line = b"qcow2d demo block %d\n" % i
            f.write((line * 4000)[:65536])
        else:
            f.write(r.randbytes(32768) + bytes(32768))
    f.seek((1 << 30) - 65536)
    f.write(b"\xee" * 65536)                 # the very end of the disk
EOF
	qemu-img convert -q -c -f raw -O qcow2 -o cluster_size=65536 base.raw base.qcow2
	rm -f base.raw
	qemu-img create -q -f qcow2 -o compat=1.1,cluster_size=65536 -b base.qcow2 -F qcow2 \
		sample.qcow2 1G
	qemu-io -f qcow2 -c "write -P 0xa1 0 1M" -c "write -P 0xa2 $((8 << 20)) 4k" \
		-c "write -P 0xa3 $(((16 << 20) - 2048)) 8k" -c "write -z $((24 << 20)) 256k" \
		-c "write -z -u 32M 64k" -c "discard 40M 128k" -c "write -P 0xa4 100M 16M" \
		-c "write -P 0xa5 $(((1 << 30) - 4096)) 4096" sample.qcow2 >/dev/null
fi
if [[ ! -f full.qcow2 ]]; then
	echo "   full.raw, full.qcow2: $size of random data (fio), every cluster written"
	fio --name=fill --filename=full.raw --size="$size" --rw=write --bs=1M --direct=1 \
		--ioengine=io_uring --iodepth=8 --refill_buffers --output=/dev/null
	qemu-img convert -t none -T none -f raw -O qcow2 full.raw full.qcow2
fi
if [[ ! -f comp.qcow2 ]]; then
	echo "   comp.qcow2: $size of data that compresses about 2:1 (fio), qemu-img convert -c"
	fio --name=fill --filename=comp.raw --size="$size" --rw=write --bs=1M --direct=1 \
		--ioengine=io_uring --iodepth=8 --refill_buffers --buffer_compress_percentage=50 \
		--buffer_compress_chunk=4k --output=/dev/null
	qemu-img convert -c -f raw -O qcow2 comp.raw comp.qcow2
	rm -f comp.raw
fi

# prepare SRC...: what comes before every timed command. The previous
# output is written back, then deleted, and the file system is given a
# second for the discards that follow (it is mounted with -o discard on the
# development VM): whatever one output costs the disk after its run, every
# output costs it alike, and before the next run starts. Then, after the
# page cache is dropped (or the source read), $settle more seconds (default
# 3): a VM with free page reporting (the development VM) hands the pages
# just freed back to the host 2 s after they were freed, and a run that
# gets those pages pays the host's faults to have them again. Without the
# wait, a run paid them or not depending on what the run before it had
# freed and when (the same qcow2-img, qcow2 -> qcow2: 0.95 s after one of
# its own runs, 1.60 s right after a qemu-img run; and in the q2q case our
# run always comes right after qemu-img's).
prepare() {
	sync
	rm -f "$dir"/out-*
	sync
	sleep 1
	if [[ $cache == cold ]]; then
		echo 3 >/proc/sys/vm/drop_caches
	else
		cat "$@" >/dev/null
	fi
	sleep "$settle"
}

# timed TOOL FMT SRC...: seconds of one conversion of the source chain
# into out-TOOL (the source's backing file, if any, is named too for
# prepare).
timed() {
	local tool=$1 fmt=$2 src=$3 t0 t1 sfmt=qcow2
	shift 3
	[[ $src == *.raw ]] && sfmt=raw
	prepare "$src" "$@"
	t0=$EPOCHREALTIME
	if [[ $tool == qemu ]]; then
		qemu-img convert -f "$sfmt" -O "$fmt" "$src" "out-$tool"
	else
		"$qimg" convert -f "$sfmt" -O "$fmt" "$src" "out-$tool"
	fi
	t1=$EPOCHREALTIME
	du -k "out-$tool" | cut -f1 >"du-$tool-$fmt-$src"
	python3 -c "print(f'{$t1 - $t0:.3f}')"
}

# check FMT SRC: both tools' outputs have the source's contents.
check() {
	local fmt=$1 src=$2 sfmt=qcow2
	[[ $src == *.raw ]] && sfmt=raw
	qemu-img convert -f "$sfmt" -O "$fmt" "$src" out-qemu
	"$qimg" convert -f "$sfmt" -O "$fmt" "$src" out-ours
	qemu-img compare -q -f "$fmt" -F "$fmt" out-qemu out-ours ||
		{ echo "convert-bench.sh: qcow2-img convert -O $fmt $src differs from qemu-img's" >&2; exit 1; }
	rm -f out-qemu out-ours
}
echo "== checking that both tools write the same contents"
check raw sample.qcow2
check raw full.qcow2
check raw comp.qcow2
check qcow2 full.raw
check qcow2 full.qcow2

case_qemu_sparse() { timed qemu raw sample.qcow2 base.qcow2; }
case_ours_sparse() { timed ours raw sample.qcow2 base.qcow2; }
case_qemu_full() { timed qemu raw full.qcow2; }
case_ours_full() { timed ours raw full.qcow2; }
case_qemu_comp() { timed qemu raw comp.qcow2; }
case_ours_comp() { timed ours raw comp.qcow2; }
case_qemu_r2q() { timed qemu qcow2 full.raw; }
case_ours_r2q() { timed ours qcow2 full.raw; }
case_qemu_q2q() { timed qemu qcow2 full.qcow2; }
case_ours_q2q() { timed ours qcow2 full.qcow2; }

fmedian() {
	python3 -c 'import sys,statistics; print(f"{statistics.median(float(x) for x in sys.argv[1:]):.3f}")' "$@"
}
declare -A VALS=()
machine_line "$dir"
echo "== config: default options of both tools; median of $runs rounds (cases interleaved);" \
	"page cache: $cache; settle ${settle} s; $(qemu-img --version | head -n 1)"
IFS=, read -r -a cases <<<"$only"
for c in "${cases[@]}"; do
	case $c in sparse|full|comp|r2q|q2q) ;;
	*) echo "convert-bench.sh: --cases: unknown case $c (sparse, full, comp, r2q, q2q)" >&2; exit 2 ;;
	esac
done
for r in $(seq "$runs"); do
	for c in "${cases[@]}"; do
		# who goes first alternates from round to round: what one run
		# leaves behind (discards of the file deleted before it, say)
		# falls on both tools alike
		if ((r % 2)); then
			VALS[qemu_$c]+=" $("case_qemu_$c")"
			VALS[ours_$c]+=" $("case_ours_$c")"
		else
			VALS[ours_$c]+=" $("case_ours_$c")"
			VALS[qemu_$c]+=" $("case_qemu_$c")"
		fi
	done
	echo "   round $r/$runs done" >&2
done
for c in "${cases[@]}"; do
	echo "   $c: qemu-img${VALS[qemu_$c]}; qcow2-img${VALS[ours_$c]}" >&2
done

kib() { python3 -c "v=$1; print(f'{v/1024:.1f} MiB')"; }
printf '%-34s %10s %10s %8s %14s %14s\n' case qemu-img qcow2-img ratio "du qemu-img" "du qcow2-img"
row() { # case label fmt src
	local q o
	[[ ,$only, == *,$1,* ]] || return 0
	# shellcheck disable=SC2086
	q=$(fmedian ${VALS[qemu_$1]})
	# shellcheck disable=SC2086
	o=$(fmedian ${VALS[ours_$1]})
	printf '%-34s %9ss %9ss %8s %14s %14s\n' "$2" "$q" "$o" "$(ratio "$q" "$o")" \
		"$(kib "$(cat "du-qemu-$3-$4")")" "$(kib "$(cat "du-ours-$3-$4")")"
}
row sparse "sparse (sample.qcow2) -O raw" raw sample.qcow2
row full "full (full.qcow2) -O raw" raw full.qcow2
row comp "compressed (comp.qcow2) -O raw" raw comp.qcow2
row r2q "raw -> qcow2 (full.raw)" qcow2 full.raw
row q2q "qcow2 -> qcow2 (full.qcow2)" qcow2 full.qcow2
rm -f du-*
echo "(ratio: qemu-img time / qcow2-img time; >= 1.00: qcow2-img is at least as fast)"
