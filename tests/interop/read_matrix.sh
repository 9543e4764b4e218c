#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# Interop READ matrix: images written by qemu-img/qemu-io must read back
# through qcow2-img / qcow2-io exactly as qemu-img reads them.
#
#   read_matrix.sh CASE      run one case (see read_cases.txt)
#   read_matrix.sh --list    print the case names
#   read_matrix.sh           run every case, one after the other
#
# Environment:
#   QCOW2_IMG, QCOW2_IO      the tools under test (required)
#   QCOW2_TEST_WORKDIR       where case directories go (default ./interop-work);
#                            a case's directory is removed when it passes and
#                            kept for inspection when it fails (always kept
#                            with QCOW2_TEST_KEEP=1)
#   QEMU_IMG, QEMU_IO        the reference tools (default: from PATH)
#
# Exit status: 0 pass, 1 fail, 77 skip (a reference tool is missing, or
# io_uring is unavailable on this kernel: then the sync modes still run and
# a failure there is still a failure).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
cases_file=$here/read_cases.txt
qtest=$here/qtest.py

list_cases() {
	grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' "$cases_file"
}

if (($# == 0)); then
	rc=0
	for c in $(list_cases); do
		echo "==== $c"
		"$0" "$c" || { r=$?; echo "==== $c: exit $r"; [[ $r == 77 ]] || rc=1; }
	done
	exit "$rc"
fi
if [[ $1 == --list ]]; then
	list_cases
	exit 0
fi

case_name=$1
if ! list_cases | grep -qxF -- "$case_name"; then
	echo "read_matrix.sh: unknown case '$case_name' (not in $cases_file)" >&2
	exit 1
fi

skip() {
	echo "SKIP: $*"
	exit 77
}
die() {
	echo "FAIL: $*" >&2
	exit 1
}

QEMU_IMG=${QEMU_IMG:-qemu-img}
QEMU_IO=${QEMU_IO:-qemu-io}
for t in "$QEMU_IMG" "$QEMU_IO" cmp python3; do
	command -v "$t" >/dev/null 2>&1 || skip "$t not found: install qemu-utils / diffutils / python3"
done
[[ -n ${QCOW2_IMG:-} && -x ${QCOW2_IMG:-} ]] || die "QCOW2_IMG is not set to an executable (got '${QCOW2_IMG:-}')"
[[ -n ${QCOW2_IO:-} && -x ${QCOW2_IO:-} ]] || die "QCOW2_IO is not set to an executable (got '${QCOW2_IO:-}')"
QCOW2_IMG=$(realpath "$QCOW2_IMG")
QCOW2_IO=$(realpath "$QCOW2_IO")

base=${QCOW2_TEST_WORKDIR:-$PWD/interop-work}
mkdir -p "$base"
base=$(cd "$base" && pwd -P)
W=$base/$case_name
rm -rf "$W"
mkdir -p "$W"
cd "$W"

SAN_RE='ERROR: [A-Za-z]*Sanitizer|runtime error:|SUMMARY: [A-Za-z]*Sanitizer'

KiB=1024
MiB=$((1024 * 1024))

# ---- helpers -----------------------------------------------------------

# Run a setup command; its output goes to setup.log; abort the case on failure.
run() {
	echo "+ $*" >>setup.log
	if ! "$@" >>setup.log 2>&1; then
		echo "setup command failed: $*" >&2
		tail -n 20 setup.log >&2
		die "could not build the test image (a qemu-img/qemu-io problem, not the engine)"
	fi
}

# qio IMG CMD...: run qemu-io commands on IMG (format qcow2).
qio() {
	local img=$1 a=()
	shift
	local c
	for c in "$@"; do a+=(-c "$c"); done
	run "$QEMU_IO" -f qcow2 "${a[@]}" "$img"
}

# create IMG SIZE OPTS [qemu-img create args...]
create() {
	local img=$1 size=$2 opts=$3
	shift 3
	run "$QEMU_IMG" create -f qcow2 -o "$opts" "$@" "$img" "$size"
}

hdr() { python3 "$qtest" header "$1" "$2"; }

# expect DESCRIPTION COMMAND...: a check that the case exercises what it names.
expect() {
	local what=$1
	shift
	if ! "$@"; then
		die "the test image does not have what this case needs: $what"
	fi
	echo "ok: $what"
}

qemu_map() { "$QEMU_IMG" map --output=json "$@" >"$W/qemu-map.json"; }
map_has() { # map_has IMG PYTHON_EXPR_OVER_m
	qemu_map "$1"
	python3 "$qtest" check-map "$W/qemu-map.json" "$2"
}
compressed_clusters() {
	"$QEMU_IMG" check --output=json "$1" 2>/dev/null |
		python3 -c 'import json,sys; print(json.load(sys.stdin).get("compressed-clusters", 0))'
}
bit_set() { (($(hdr "$1" "$2") & (1 << $3))); }

# The standard workload for an image of cluster size CL and size SIZE: data
# in the first cluster, a 4k write inside a cluster, an unaligned write, a
# write across a cluster boundary, zero writes (aligned, unaligned, on
# unwritten space), discards and an overwrite after discard, writes at the end
# of the disk. Sets CHECKS (qcow2-io "read -P" ranges, 4k aligned).
std_workload() {
	local img=$1 cl=$2 size=$3
	local u=$((cl > 65536 ? cl : 65536))
	local first=$((cl > 8192 ? cl : 8192))
	((size >= 24 * u + 128 * KiB)) || die "internal: disk too small for the standard workload"
	qio "$img" \
		"write -P 0x11 0 $first" \
		"write -P 0x22 $((3 * u + u / 4)) 4096" \
		"write -P 0x23 $((3 * u + u / 2 + 123)) 1000" \
		"write -P 0x33 $((5 * u - 3072)) 8192" \
		"write -P 0x55 $((8 * u)) $((4 * u))" \
		"write -z $((9 * u)) $u" \
		"write -z $((11 * u - 4096)) 8192" \
		"write -z $((20 * u)) $((2 * u))" \
		"write -P 0x66 $((13 * u)) $((4 * u))" \
		"discard $((14 * u)) $u" \
		"discard $((16 * u + 4096)) 8192" \
		"write -P 0x77 $((14 * u + 512)) 1024" \
		"write -P 0x44 $((size - 65536 - 4096)) 65536" \
		"write -P 0x45 $((size - 512)) 512"
	CHECKS+=(
		"0x11 0 8192"
		"0x55 $((8 * u)) 65536"
		"0x00 $((9 * u)) 65536"
		"0x66 $((13 * u)) 65536"
		"0x44 $((size - 65536 - 4096)) 65536"
	)
}

# ---- the cases -----------------------------------------------------------

IMG=top.qcow2
CHECKS=()

build_case() {
	local cl size
	case $case_name in
	cluster-*)
		cl=${case_name#cluster-}
		cl=${cl/k/*KiB}
		cl=${cl/M/*MiB}
		cl=$((cl))
		size=$((32 * MiB))
		((cl == MiB)) && size=$((64 * MiB))
		((cl == 2 * MiB)) && size=$((128 * MiB))
		create $IMG "$size" "cluster_size=$cl"
		expect "cluster_bits matches" test "$((1 << $(hdr $IMG cluster_bits)))" -eq "$cl"
		std_workload $IMG "$cl" "$size"
		;;
	odd-size)
		# A virtual size that is not a multiple of the cluster size.
		size=$((33 * MiB + 1536))
		create $IMG "$size" cluster_size=65536
		qio $IMG "write -P 0x11 0 64k" "write -P 0x12 $((33 * MiB - 4096)) 5632" \
			"write -P 0x13 $((size - 1000)) 1000" "write -z $((16 * MiB)) 64k"
		CHECKS+=("0x11 0 65536" "0x12 $((33 * MiB - 4096)) 4096")
		;;
	refcount-*)
		create $IMG 32M "cluster_size=65536,refcount_bits=${case_name#refcount-}"
		expect "refcount_order" test "$((1 << $(hdr $IMG refcount_order)))" -eq "${case_name#refcount-}"
		std_workload $IMG 65536 $((32 * MiB))
		;;
	compat-0.10)
		create $IMG 32M "cluster_size=65536,compat=0.10"
		expect "version 2 header" test "$(hdr $IMG version)" -eq 2
		std_workload $IMG 65536 $((32 * MiB))
		;;
	lazy-refcounts)
		create $IMG 32M "cluster_size=65536,lazy_refcounts=on"
		expect "lazy refcounts bit" bit_set $IMG compatible_features 0
		std_workload $IMG 65536 $((32 * MiB))
		expect "clean after close" test "$(($(hdr $IMG incompatible_features) & 1))" -eq 0
		;;
	dirty)
		# qemu-io killed by SIGKILL with lazy refcounts leaves the dirty bit
		# set and the refcounts stale (qemu iotest 039 does the same).
		create $IMG 32M "cluster_size=65536,lazy_refcounts=on"
		std_workload $IMG 65536 $((32 * MiB))
		echo "+ qemu-io ... sigraise 9" >>setup.log
		set +e
		"$QEMU_IO" -f qcow2 -c "write -P 0x99 $((2 * MiB)) 1M" -c "write -P 0x9a $((30 * MiB + 512)) 4096" \
			-c "sigraise 9" $IMG >>setup.log 2>&1
		set -e
		expect "dirty bit set" bit_set $IMG incompatible_features 0
		CHECKS+=("0x99 $((2 * MiB)) 65536")
		;;
	extl2-*)
		cl=${case_name#extl2-}
		cl=${cl/k/*KiB}
		cl=${cl/M/*MiB}
		cl=$((cl))
		size=$((32 * MiB))
		((cl == 2 * MiB)) && size=$((128 * MiB))
		local u=$((cl > 65536 ? cl : 65536)) sc=$((cl / 32))
		local c0=$((23 * u)) c1=$((24 * u))
		create base.qcow2 "$size" cluster_size=65536
		qio base.qcow2 "write -P 0xbb 0 $((26 * u))"
		create $IMG "$size" "cluster_size=$cl,extended_l2=on" -b base.qcow2 -F qcow2
		expect "extended L2 bit" bit_set $IMG incompatible_features 4
		std_workload $IMG "$cl" "$size"
		qio $IMG \
			"write -P 0x81 $((c0 + sc)) $sc" \
			"write -P 0x82 $((c0 + 4 * sc + 100)) 700" \
			"write -P 0x83 $((c0 + 8 * sc)) $((3 * sc))" \
			"write -z $((c0 + 10 * sc)) $sc" \
			"write -z $((c0 + 20 * sc)) $((2 * sc))" \
			"write -P 0x84 $((c1 + 30 * sc)) $((2 * sc))" \
			"write -z $((c1 + 2 * sc)) $sc" \
			"write -z $((c1 + 5 * sc + 100)) 700" \
			"discard $((c1 + 30 * sc)) $sc"
		expect "subcluster-sized extents at $c0" map_has $IMG \
			"any(e['start'] >= $c0 and e['start'] < $c0 + $cl and e['length'] < $cl and e['depth'] == 0 and e['data'] for e in m)"
		expect "backing data inside a partly allocated cluster" map_has $IMG \
			"any(e['start'] >= $c0 and e['start'] < $c0 + $cl and e['depth'] == 1 for e in m)"
		CHECKS+=(
			"0x83 $((c0 + 8 * sc)) 4096"
			"0xbb $((c0 + 12 * sc)) 4096"
			"0x00 $((c0 + 20 * sc)) 4096"
		)
		;;
	compress-*)
		local ct=${case_name#compress-}
		cl=65536
		size=$((32 * MiB))
		case $ct in
		zlib-512) cl=512 size=$((4 * MiB)) ;;
		zstd-2M) cl=$((2 * MiB)) size=$((96 * MiB)) ;;
		esac
		ct=${ct%%-*}
		run python3 "$qtest" gen-compress-src src.raw "$size" "$cl"
		run "$QEMU_IMG" convert -c -f raw -O qcow2 -o "compression_type=$ct,cluster_size=$cl" src.raw $IMG
		expect "compressed clusters present" test "$(compressed_clusters $IMG)" -gt 4
		if [[ $ct == zstd ]]; then
			expect "zstd compression type" test "$(hdr $IMG compression_type)" -eq 1
		fi
		# Overwrite part of a compressed cluster, zero one, discard one.
		qio $IMG "write -P 0x99 $((8 * cl + cl / 2)) $((cl / 4))" \
			"write -z $((16 * cl)) $cl" "discard $((24 * cl)) $cl" \
			"write -P 0x9b $((size / 2)) 8192"
		expect "compressed clusters still present" test "$(compressed_clusters $IMG)" -gt 4
		CHECKS+=("0x9b $((size / 2)) 8192")
		if ((cl >= 8192)); then
			# reads of compressed clusters: kinds 0 (byte 0x08) and 7 (0x77)
			CHECKS+=("0x08 $((8 * cl)) 4096" "0x77 $((7 * cl)) 4096")
		fi
		MAP_COMPRESSED=1
		;;
	compressed-backing)
		run python3 "$qtest" gen-compress-src src.raw $((16 * MiB)) 65536
		run "$QEMU_IMG" convert -c -f raw -O qcow2 -o cluster_size=65536 src.raw base.qcow2
		expect "compressed clusters in the backing file" test "$(compressed_clusters base.qcow2)" -gt 4
		create $IMG 16M cluster_size=65536 -b base.qcow2 -F qcow2
		qio $IMG "write -P 0x91 $((8 * 65536 + 1000)) 3000" "write -z $((16 * 65536)) 65536" \
			"discard $((24 * 65536)) 65536" "write -P 0x92 $((33 * 65536 - 2048)) 4096"
		CHECKS+=("0x77 $((7 * 65536)) 4096" "0x00 $((16 * 65536)) 65536")
		;;
	chain-3)
		create base.qcow2 32M cluster_size=65536
		qio base.qcow2 "write -P 0xa1 0 16M" "write -P 0xa2 20M 4M"
		create mid.qcow2 32M cluster_size=16384 -b base.qcow2 -F qcow2
		qio mid.qcow2 "write -P 0xb1 1M 64k" "write -P 0xb2 $((2 * MiB + 1000)) 5000" \
			"write -z 3M 256k" "discard 4M 128k" "write -P 0xb3 $((20 * MiB + 65536)) 4096"
		create $IMG 32M cluster_size=131072 -b mid.qcow2 -F qcow2
		qio $IMG "write -P 0xc1 $((MiB + 32 * KiB)) 64k" "write -z 2M 4k" "discard 5M 1M" \
			"write -P 0xc2 $((3 * MiB + 4096)) 4096" "write -P 0xc3 31M 1M"
		expect "three images deep" test "$("$QEMU_IMG" info --backing-chain $IMG | grep -c '^image:')" -eq 3
		CHECKS+=("0xa1 8M 65536" "0x00 $((3 * MiB + 128 * KiB)) 65536" "0xb3 $((20 * MiB + 65536)) 4096" "0xc3 31M 65536")
		;;
	raw-base)
		run python3 "$qtest" gen-raw base.raw $((16 * MiB)) 7
		create $IMG 16M cluster_size=65536 -b base.raw -F raw
		qio $IMG "write -P 0x21 $((MiB + 512)) 3000" "write -z 2M 64k" "discard 3M 128k" \
			"write -P 0x22 $((4 * MiB - 4096)) 8192" "write -P 0x23 15M 1M"
		CHECKS+=("0x01 0 65536" "0x23 15M 65536")
		;;
	backing-short)
		size=$((10 * MiB + 512))
		create base.qcow2 "$size" cluster_size=65536
		qio base.qcow2 "write -P 0xd1 $((10 * MiB - 65536)) $((65536 + 512))"
		create $IMG 32M cluster_size=65536 -b base.qcow2 -F qcow2
		qio $IMG "write -P 0xd2 $((10 * MiB + 4096)) 4096" "write -P 0xd3 20M 64k"
		expect "backing file shorter than the overlay" test "$(hdr base.qcow2 size)" -lt "$(hdr $IMG size)"
		CHECKS+=("0xd1 $((10 * MiB - 65536)) 65536" "0x00 $((10 * MiB + 65536)) 65536" "0x00 12M 4096")
		;;
	backing-short-raw)
		python3 -c 'import sys; open(sys.argv[1], "wb").write(b"\xe1" * int(sys.argv[2]))' \
			base.raw $((5 * MiB + 1000))
		create $IMG 16M cluster_size=65536 -b base.raw -F raw
		qio $IMG "write -P 0xe2 8M 64k"
		CHECKS+=("0xe1 0 65536" "0x00 6M 65536" "0xe2 8M 65536")
		;;
	data-file | data-file-raw)
		local extra=
		[[ $case_name == data-file-raw ]] && extra=,data_file_raw=on
		# qemu resolves a relative data file name against its own cwd, so
		# record an absolute one.
		create $IMG 32M "cluster_size=65536,data_file=$W/top.data$extra"
		expect "external data file bit" bit_set $IMG incompatible_features 2
		if [[ -n $extra ]]; then
			expect "raw external data bit" bit_set $IMG autoclear_features 1
		fi
		std_workload $IMG 65536 $((32 * MiB))
		;;
	zero-clusters)
		create base.qcow2 16M cluster_size=65536
		qio base.qcow2 "write -P 0xbb 0 16M"
		create $IMG 16M cluster_size=65536 -b base.qcow2 -F qcow2
		qio $IMG "write -P 0x5a 0 4M" "write -z 1M 1M" "write -z -u 2M 1M" \
			"write -z 6M 1M" "write -z -u 8M 512k" "write -z $((10 * MiB + 4096)) 8192"
		expect "zero clusters with a host offset" map_has $IMG \
			"any(e['zero'] and not e['data'] and 'offset' in e and e['depth'] == 0 for e in m)"
		expect "zero clusters without a host offset" map_has $IMG \
			"any(e['zero'] and not e['data'] and 'offset' not in e and e['depth'] == 0 for e in m)"
		CHECKS+=("0x5a 0 65536" "0x00 1M 65536" "0x00 6M 65536" "0xbb 12M 65536")
		;;
	prealloc-metadata | prealloc-falloc)
		create $IMG 32M "cluster_size=65536,preallocation=${case_name#prealloc-}"
		expect "preallocated clusters" map_has $IMG "all('offset' in e for e in m)"
		std_workload $IMG 65536 $((32 * MiB))
		;;
	snapshots)
		create $IMG 32M cluster_size=65536
		std_workload $IMG 65536 $((32 * MiB))
		run "$QEMU_IMG" snapshot -c s1 $IMG
		qio $IMG "write -P 0x91 4096 4096" "write -z 512k 128k" "discard 832k 64k" "write -P 0x92 10M 1M"
		run "$QEMU_IMG" snapshot -c s2 $IMG
		qio $IMG "write -P 0x93 $((10 * MiB + 1000)) 70000" "write -P 0x94 0 4096"
		expect "two internal snapshots" test "$(hdr $IMG nb_snapshots)" -eq 2
		CHECKS=("0x94 0 4096" "0x91 4096 4096" "0x11 8192 4096" "0x92 $((11 * MiB - 65536)) 65536")
		;;
	raw-file)
		# A raw image (qcow2-img convert -f raw) whose size is not a
		# multiple of 512: the last read ends inside a sector.
		IMG=src.raw
		FORMAT=raw
		run python3 "$qtest" gen-raw src.raw $((16 * MiB + 1000)) 3
		CHECKS+=("0x01 0 65536" "0x1d 262144 65536")
		;;
	random-*)
		cl=${case_name#random-}
		cl=${cl/k/*KiB}
		cl=$((cl))
		size=$((32 * MiB))
		create $IMG "$size" "cluster_size=$cl"
		local ops=()
		mapfile -t ops < <(python3 "$qtest" gen-random-ops "$size" 200 "$cl")
		((${#ops[@]} == 200)) || die "internal: random ops generator"
		qio $IMG "${ops[@]}" "write -P 0x5e 16M 64k"
		CHECKS+=("0x5e 16M 65536")
		;;
	*)
		die "internal: no recipe for case '$case_name'"
		;;
	esac
}

MAP_COMPRESSED=0
FORMAT=qcow2
build_case
echo "images built; qemu-img info of $IMG:"
"$QEMU_IMG" info -f "$FORMAT" --backing-chain $IMG | sed 's/^/  /'

# ---- the comparison --------------------------------------------------------

fmt=
[[ $FORMAT == raw ]] && fmt="-f raw"
# (A raw file's disk is its size rounded up to 512 bytes, for qemu-img and
# for us.)
echo "+ qemu-img convert -O raw $IMG ref.raw"
"$QEMU_IMG" convert -f "$FORMAT" -O raw $IMG ref.raw || die "qemu-img convert failed"
vsize=$(stat -c %s ref.raw)

io_uring_ok=1
if command -v fio >/dev/null 2>&1; then
	if ! fio --name=probe --ioengine=io_uring --filename="$W/probe" --size=4k --rw=read \
		--direct=0 >/dev/null 2>&1; then
		io_uring_ok=0
		echo "NOTE: io_uring is unavailable here; io_uring modes are not run"
	fi
	rm -f "$W/probe"
fi

failures=()

# tool LOGNAME CMD...: run a tool from $base (so image paths are relative
# and backing names must be resolved against the image's directory); checks
# for sanitizer reports. Returns the tool's exit status.
tool() {
	local log=$1
	shift
	local rc=0
	(cd "$base" && "$@") >"$W/$log.out" 2>"$W/$log.err" || rc=$?
	if grep -qE "$SAN_RE" "$W/$log.err"; then
		echo "sanitizer report from: $*"
		sed 's/^/  | /' "$W/$log.err" | head -n 60
		return 200
	fi
	return "$rc"
}

show() { # show LOG
	sed 's/^/  | /' "$W/$1.err" | head -n 30
	sed 's/^/  > /' "$W/$1.out" | head -n 10
}

rel=$case_name/$IMG
# {io_uring,sync} x {none (O_DIRECT), writeback}, plus io_uring with the
# smallest L2 cache (a few 512-byte slices: every request waits for slice
# loads and evictions while up to 16 reads are in flight).
modes=()
((io_uring_ok)) && modes+=(io_uring:none io_uring:writeback)
modes+=(sync:none sync:writeback)
((io_uring_ok)) && modes+=(io_uring:none:tiny-l2-cache)

for mode in "${modes[@]}"; do
	IFS=: read -r io cache variant <<<"$mode"
	m="-i $io -t $cache"
	[[ $variant == tiny-l2-cache ]] && m+=" --l2-cache 1024 --l2-slice 512"
	rc=0
	# shellcheck disable=SC2086
	tool convert "$QCOW2_IMG" convert $m $fmt -O raw "$rel" "$case_name/out.raw" || rc=$?
	if ((rc != 0)); then
		echo "FAIL [$mode] qcow2-img convert $m $fmt -O raw $rel out.raw: exit $rc"
		show convert
		failures+=("$mode: convert exit $rc")
	elif [[ ! -f out.raw ]]; then
		echo "FAIL [$mode] qcow2-img convert $m $fmt -O raw $rel out.raw: exit 0 but no output file"
		failures+=("$mode: convert wrote no file")
	elif ! cmp -s ref.raw out.raw; then
		echo "FAIL [$mode] qcow2-img convert $m $fmt -O raw $rel out.raw: output differs from the reference"
		python3 "$qtest" diff ref.raw out.raw || true
		failures+=("$mode: convert output differs")
		# keep the first wrong output for inspection
		compgen -G 'out-*.raw' >/dev/null || cp out.raw "out-$io-$cache.raw"
	else
		echo "ok   [$mode] convert ${fmt:+$fmt }matches the reference ($vsize bytes)"
	fi
	rm -f out.raw

	cmds=()
	for c in "${CHECKS[@]}"; do
		cmds+=(-c "read -P $c")
	done
	rc=0
	# shellcheck disable=SC2086
	tool io "$QCOW2_IO" $m $fmt "${cmds[@]}" "$rel" || rc=$?
	if ((rc != 0)); then
		echo "FAIL [$mode] qcow2-io $m $fmt ${cmds[*]} $rel: exit $rc"
		show io
		failures+=("$mode: qcow2-io read -P exit $rc")
	else
		echo "ok   [$mode] qcow2-io read -P (${#CHECKS[@]} ranges)"
	fi
done

# A wrong pattern must be reported (exit 1): otherwise the checks above prove
# nothing.
check_wrong_pattern() {
	local first=${CHECKS[0]} rc=0
	local pat=${first%% *} off_len=${first#* }
	local badpat
	badpat=$(printf '0x%02x' $(((pat + 1) & 0xff)))
	# shellcheck disable=SC2086
	tool io-neg "$QCOW2_IO" -i sync -t writeback $fmt -c "read -P $badpat $off_len" "$rel" || rc=$?
	if ((rc != 1)); then
		echo "FAIL qcow2-io -c 'read -P $badpat $off_len' $rel (wrong pattern): exit $rc, expected 1"
		show io-neg
		failures+=("qcow2-io: wrong pattern not detected (exit $rc)")
	else
		echo "ok   qcow2-io detects a wrong pattern (exit 1)"
	fi
}

# info and map must work and print valid JSON; the map must cover the disk.
check_info_map() {
	local rc=0
	# shellcheck disable=SC2086
	tool info "$QCOW2_IMG" info --json $fmt "$rel" || rc=$?
	if ((rc != 0)); then
		echo "FAIL qcow2-img info --json $rel: exit $rc"
		show info
		failures+=("info --json exit $rc")
	elif ! python3 "$qtest" check-json "$W/info.out"; then
		echo "FAIL qcow2-img info --json $rel: bad JSON"
		failures+=("info --json: bad JSON")
	# shellcheck disable=SC2086
	elif ! (cd "$base" && qemu-img info --output=json $fmt "$rel") >"$W/qinfo.json" 2>/dev/null; then
		echo "FAIL qemu-img info --output=json $rel failed"
		failures+=("qemu-img info failed")
	elif ! python3 "$qtest" superset "$W/qinfo.json" "$W/info.out"; then
		echo "FAIL qcow2-img info --json $rel is not a superset of qemu-img info --output=json"
		failures+=("info --json: not qemu-img's shape")
	else
		echo "ok   qcow2-img info --json (a superset of qemu-img info --output=json)"
	fi
	rc=0
	# shellcheck disable=SC2086
	tool map "$QCOW2_IMG" map --json $fmt "$rel" || rc=$?
	local mapargs=(--map "$vsize")
	((MAP_COMPRESSED)) && mapargs+=(--compressed)
	if ((rc != 0)); then
		echo "FAIL qcow2-img map --json $rel: exit $rc"
		show map
		failures+=("map --json exit $rc")
	elif ! python3 "$qtest" check-json "$W/map.out" "${mapargs[@]}"; then
		echo "FAIL qcow2-img map --json $rel: ${mapargs[*]}"
		failures+=("map --json: ${mapargs[*]}")
	else
		echo "ok   qcow2-img map --json (${mapargs[*]})"
		# The same ranges as qemu-img map, flag for flag (qemu-img 7 has
		# no "compressed" key; holes in the host file read as zeros).
		# shellcheck disable=SC2086
		(cd "$base" && "$QEMU_IMG" map --output=json $fmt "$rel") >"$W/qmap.out" 2>&1
		if python3 - "$W/map.out" "$W/qmap.out" <<'PY'
import json, sys
def norm(path):
    return [{k: v for k, v in e.items() if k != "compressed"}
            for e in json.load(open(path))]
ours, ref = norm(sys.argv[1]), norm(sys.argv[2])
if ours != ref:
    for i, (a, b) in enumerate(zip(ours, ref)):
        if a != b:
            print(f"entry {i}: ours {a}\n         qemu-img {b}")
            break
    print(f"{len(ours)} entries, qemu-img {len(ref)}")
    sys.exit(1)
PY
		then
			echo "ok   qcow2-img map --json equals qemu-img map --output=json"
		else
			echo "FAIL qcow2-img map --json $rel differs from qemu-img map"
			failures+=("map differs from qemu-img map")
		fi
	fi
}

# qcow2-img check must count what qemu-img check counts (qcow2 images).
check_counts() {
	local rc=0 qrc=0
	[[ -z $fmt ]] || return 0
	tool check "$QCOW2_IMG" check --json "$rel" || rc=$?
	(cd "$base" && "$QEMU_IMG" check --output=json "$rel") >"$W/qcheck.out" 2>&1 || qrc=$?
	if ((rc != qrc)) && ! ((rc == 0 && qrc == 0)); then
		echo "FAIL qcow2-img check $rel: exit $rc, qemu-img check exit $qrc"
		show check
		failures+=("check exit $rc (qemu-img $qrc)")
		return
	fi
	if python3 - "$W/check.out" "$W/qcheck.out" <<'PY'
import json, sys
ours = json.load(open(sys.argv[1]))
t = open(sys.argv[2]).read()
ref = json.loads(t[t.index("{"):])
keys = ["corruptions", "leaks", "check-errors", "allocated-clusters",
        "fragmented-clusters", "compressed-clusters", "image-end-offset",
        "total-clusters"]
bad = [f"{k}: ours {ours.get(k, 0)}, qemu-img {ref.get(k, 0)}"
       for k in keys if ours.get(k, 0) != ref.get(k, 0)]
# qemu-img's JSON shape: each of its keys, with its value, in ours
bad += [f"{k}: qemu-img {v!r}, ours {ours.get(k, '(missing)')!r}"
        for k, v in ref.items() if k != "filename" and ours.get(k) != v]
if bad:
    print("\n".join(bad))
    sys.exit(1)
PY
	then
		echo "ok   qcow2-img check --json: the counts of qemu-img check"
	else
		echo "FAIL qcow2-img check --json $rel: counts differ from qemu-img check"
		failures+=("check counts")
	fi
}

check_wrong_pattern
check_info_map
check_counts

if ((${#failures[@]})); then
	echo
	echo "FAILED: $case_name (work directory kept: $W)"
	printf '  %s\n' "${failures[@]}"
	exit 1
fi
cd "$base"
[[ ${QCOW2_TEST_KEEP:-0} == 1 ]] || rm -rf "$W"
if ((!io_uring_ok)); then
	skip "$case_name: sync modes pass; io_uring modes not run (io_uring unavailable)"
fi
echo "PASS: $case_name"
