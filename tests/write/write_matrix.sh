#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# Write matrix: an image made by qemu-img gets a seeded random workload from
# random_io (mirrored into a raw model); then qemu-img is the judge:
#   1. qemu-img check --output=json: 0 corruptions and 0 leaks (clean close);
#   2. qemu-img compare -f qcow2 -F raw IMAGE MODEL: identical;
#   3. snapshot cases: qemu-img snapshot -a s1 restores the old contents;
#   4. reverse direction: qemu-io writes more patterns into the image we
#      wrote; our reads (qcow2-img convert when QCOW2_IMG is set, and
#      random_io --verify-only) must equal qemu-img convert's;
#   5. a second, shorter random_io round on the image qemu-io wrote into,
#      judged again by check (clean) and compare.
#
#   write_matrix.sh CASE | --list
# Cases: write_cases.txt. Environment: RANDOM_IO (required), QCOW2_IMG
# (optional), QCOW2_TEST_WORKDIR (default ./write-work), SEED (default 7).
# Exit 0 pass, 1 fail (the work directory is kept), 77 skip.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
# shellcheck source=tests/write/lib.sh
source "$here/lib.sh"
cases=$here/write_cases.txt
list() { grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' "$cases" | cut -d'|' -f1 | tr -d ' '; }
if [[ ${1:-} == --list ]]; then list; exit 0; fi
case_name=${1:?usage: write_matrix.sh CASE | --list}
line=$(grep -v '^[[:space:]]*#' "$cases" |
	awk -F'|' -v c="$case_name" '{n=$1; gsub(/[ \t]/,"",n); if (n==c) print}')
[[ -n $line ]] || { echo "write_matrix.sh: unknown case $case_name" >&2; exit 1; }
opts=$(echo "$line" | cut -d'|' -f2 | xargs)
backing=$(echo "$line" | cut -d'|' -f3 | xargs)
args=$(echo "$line" | cut -d'|' -f4 | xargs)

need qemu-img qemu-io python3 cmp
need_random_io
seed=${SEED:-7}
work=${QCOW2_TEST_WORKDIR:-$PWD/write-work}/$case_name
rm -rf "$work"
mkdir -p "$work"
cd "$work"
fail() {
	echo "FAIL: $*" >&2
	echo "(work directory kept: $work; seed $seed)" >&2
	exit 1
}
run() { echo "+ $*"; "$@"; }

bytes() { # 32M -> 33554432
	local v=$1
	case $v in
	*k) echo $((${v%k} << 10)) ;; *M) echo $((${v%M} << 20)) ;;
	*G) echo $((${v%G} << 30)) ;; *) echo "$v" ;;
	esac
}
size=$(bytes 32M)
if [[ $args =~ --disk[[:space:]]+([0-9]+[kMG]?) ]]; then
	size=$(bytes "${BASH_REMATCH[1]}")
	args=${args/--disk ${BASH_REMATCH[1]}/}
fi
# offsets as fractions of the disk, 64k-aligned (sizes stay inside it)
at() { echo $((size * $1 / $2 / 65536 * 65536)); }

# ---- image options: keywords out, the rest to -o ----------------------------
make=create create_opts=()
IFS=, read -r -a words <<<"$opts"
for w in "${words[@]}"; do
	case $w in
	compressed) make=compressed ;;
	compressed-zstd) make=compressed ;;
	snapshot) make=snapshot ;;
	-|'') ;;
	*) create_opts+=("$w") ;;
	esac
done
ocreate=$(IFS=,; echo "${create_opts[*]}")

# ---- backing file ------------------------------------------------------------
fill_raw() { # FILE SIZE: patterns, a hole, random bytes
	local f=$1 s=$2
	qemu-img create -q -f raw "$f" "$s"
	qemu-io -f raw -c "write -P 0x5a 0 $((s / 4))" \
		-c "write -P 0x6b $((s * 3 / 8 / 512 * 512)) $((s / 8 / 512 * 512))" "$f" >/dev/null
	python3 -c 'import random, sys; sys.stdout.buffer.write(random.Random(5).randbytes(int(sys.argv[1])))' $((s / 16)) |
		dd of="$f" bs=64k seek=$((s * 5 / 8 / 65536)) conv=notrunc status=none
}
bfile= bfmt=
case $backing in
none) ;;
raw)
	fill_raw base.raw "$size"
	bfile=base.raw bfmt=raw ;;
short-raw)
	fill_raw base.raw $((size / 2 / 512 * 512))
	bfile=base.raw bfmt=raw ;;
qcow2 | short)
	bsize=$size
	[[ $backing == short ]] && bsize=$((size / 2 / 512 * 512))
	qemu-img create -q -f qcow2 base.qcow2 "$bsize"
	qemu-io -c "write -P 0x5a 0 $((bsize / 4 / 512 * 512))" \
		-c "write -z $((bsize * 9 / 32 / 512 * 512)) $((bsize / 32 / 512 * 512))" \
		-c "write -P 0x6b $((bsize * 3 / 8 / 512 * 512)) $((bsize / 8 / 512 * 512))" \
		-c "write -P 0x7c $((bsize * 5 / 8 / 512 * 512 + 1536)) 7680" base.qcow2 >/dev/null
	bfile=base.qcow2 bfmt=qcow2 ;;
zlib | zstd)
	fill_raw base.raw "$size"
	qemu-img convert -q -c -O qcow2 -o compression_type=$backing base.raw base.qcow2
	bfile=base.qcow2 bfmt=qcow2 ;;
chain)
	fill_raw base.raw "$size"
	qemu-img create -q -f qcow2 -b base.raw -F raw mid.qcow2 "$size"
	qemu-io -c "write -P 0x3c $(at 1 8) 1M" -c "write -z $(at 1 16) 256k" \
		-c "discard $(at 5 8) 1M" mid.qcow2 >/dev/null
	bfile=mid.qcow2 bfmt=qcow2 ;;
*) fail "unknown backing kind $backing" ;;
esac

# ---- the image ----------------------------------------------------------------
oflag=()
[[ -n $ocreate ]] && oflag=(-o "$ocreate")
case $make in
compressed)
	fill_raw src.raw "$size"
	run qemu-img convert -q -c -O qcow2 "${oflag[@]}" src.raw img.qcow2 ;;
snapshot)
	run qemu-img create -q -f qcow2 "${oflag[@]}" img.qcow2 "$size"
	qemu-io -c "write -P 0x21 0 $size" -c "write -z $(at 1 4) 1M" \
		-c "write -P 0x55 $(at 1 2) 1M" img.qcow2 >/dev/null
	run qemu-img snapshot -c s1 img.qcow2
	qemu-img convert -q -l snapshot.name=s1 -O raw img.qcow2 s1.raw
	# The active layer moves on before we write: some clusters shared, some not.
	qemu-io -c "write -P 0x22 0 1M" -c "discard $(at 3 4) 1M" img.qcow2 >/dev/null ;;
create)
	if [[ -n $bfile ]]; then
		run qemu-img create -q -f qcow2 "${oflag[@]}" -b "$bfile" -F "$bfmt" img.qcow2 "$size"
	else
		run qemu-img create -q -f qcow2 "${oflag[@]}" img.qcow2 "$size"
	fi ;;
esac
qemu-img convert -q -O raw img.qcow2 model.raw

# ---- 1, 2: our workload, judged by qemu-img --------------------------------------
rc=0
# shellcheck disable=SC2086
run "$RANDOM_IO" --seed "$seed" $args img.qcow2 model.raw >random_io.out 2>&1 || rc=$?
cat random_io.out
asan_report random_io.out && fail "sanitizer report from random_io"
[[ $rc == 0 ]] || fail "random_io exited $rc"

echo "+ qemu-img check (clean close: no corruption, no leak)"
qcheck img.qcow2 clean || fail "qemu-img check is not clean after a clean close"
run qemu-img compare -q -f qcow2 -F raw img.qcow2 model.raw || fail "the image differs from the model"
qemu-img info img.qcow2 | grep -q 'corrupt: true' && fail "image marked corrupt"

# ---- 3: snapshots ------------------------------------------------------------------
if [[ $make == snapshot ]]; then
	run qemu-img convert -q -l snapshot.name=s1 -O raw img.qcow2 s1-after.raw
	cmp s1-after.raw s1.raw || fail "snapshot s1 reads differently after our workload"
	run qemu-img snapshot -a s1 img.qcow2
	run qemu-img compare -q -f qcow2 -F raw img.qcow2 s1.raw ||
		fail "qemu-img snapshot -a s1 does not restore its contents"
	qcheck img.qcow2 clean || fail "check after snapshot -a"
fi

# ---- 4: reverse: qemu-io writes, our reads must equal qemu-img's --------------------
echo "+ reverse: qemu-io writes into our image"
qemu-io -c "write -P 0x77 $(at 1 8) 192k" \
	-c "write -P 0x78 $(($(at 1 3) + 512)) 3584" \
	-c "write -z $(at 5 32) 64k" \
	-c "discard $(at 6 32) 256k" \
	-c "write -P 0x79 $((size / 512 * 512 - 4096)) 4096" img.qcow2 >/dev/null ||
	fail "qemu-io could not write into our image"
qemu-img convert -q -O raw img.qcow2 ref.raw
if [[ -n ${QCOW2_IMG:-} && -x ${QCOW2_IMG:-} ]]; then
	run "$QCOW2_IMG" convert -O raw img.qcow2 ours.raw || fail "qcow2-img convert failed"
	cmp ours.raw ref.raw || fail "qcow2-img convert differs from qemu-img convert"
else
	echo "(QCOW2_IMG not set: reading back with random_io --verify-only only)"
fi
run "$RANDOM_IO" --verify-only img.qcow2 ref.raw || fail "our reads differ from qemu-img's"
qcheck img.qcow2 clean || fail "check after qemu-io writes"

# ---- 5: our writes over qemu's, judged again ------------------------------------------
if [[ $args != *--sequential* ]]; then
	ops=$(sed -n 's/.*--ops \([0-9]*\).*/\1/p' <<<"$args")
	if [[ -n $ops ]]; then
		args2=${args/--ops $ops/--ops $(((ops + 1) / 2))}
	else
		args2="$args --ops 250"
	fi
	args2=${args2//--expect-evictions/}
	rc=0
	# shellcheck disable=SC2086
	run "$RANDOM_IO" --seed $((seed + 1000)) $args2 img.qcow2 ref.raw \
		>random_io2.out 2>&1 || rc=$?
	cat random_io2.out
	asan_report random_io2.out && fail "sanitizer report from random_io (second round)"
	[[ $rc == 0 ]] || fail "random_io (second round) exited $rc"
	qcheck img.qcow2 clean || fail "check after the second round"
	run qemu-img compare -q -f qcow2 -F raw img.qcow2 ref.raw || fail "second round: image differs from the model"
fi
cd /
rm -rf "$work"
echo "ok $case_name"
