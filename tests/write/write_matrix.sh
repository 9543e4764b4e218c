#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# Write matrix: an image made by qemu-img gets a seeded random workload from
# random_io (mirrored into a raw model); then qemu-img is the judge:
#   - qemu-img check: no corruption and no leak (the image was closed cleanly);
#   - qemu-img compare against the model: identical;
#   - the reverse direction: qemu-io writes more into the image we wrote, and
#     our reads (qcow2-img convert) equal qemu-img's.
# Snapshot case: after the workload, qemu-img snapshot -a restores the old
# contents exactly.
#
#   write_matrix.sh CASE | --list
# Environment: RANDOM_IO (required), QCOW2_IMG (optional), QCOW2_TEST_WORKDIR.
# Exit 0 pass, 1 fail, 77 skip.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
cases=$here/write_cases.txt
list() { grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' "$cases" | cut -d'|' -f1 | tr -d ' '; }
if [[ ${1:-} == --list ]]; then list; exit 0; fi
case_name=${1:?usage: write_matrix.sh CASE}
line=$(grep -v '^[[:space:]]*#' "$cases" | awk -F'|' -v c="$case_name" '{n=$1; gsub(/ /,"",n); if (n==c) print}')
[[ -n $line ]] || { echo "write_matrix.sh: unknown case $case_name" >&2; exit 1; }
opts=$(echo "$line" | cut -d'|' -f2 | xargs)
backing=$(echo "$line" | cut -d'|' -f3 | xargs)
args=$(echo "$line" | cut -d'|' -f4 | xargs)

for t in qemu-img qemu-io; do
	command -v $t >/dev/null || { echo "SKIP: $t not installed"; exit 77; }
done
: "${RANDOM_IO:?RANDOM_IO must name the random_io driver}"
work=${QCOW2_TEST_WORKDIR:-$PWD/write-work}/$case_name
rm -rf "$work"
mkdir -p "$work"
cd "$work"
fail() { echo "FAIL: $*" >&2; echo "(work directory kept: $work)" >&2; exit 1; }

size=32M
if [[ $args =~ --disk[[:space:]]+([0-9]+[kMG]?) ]]; then
	size=${BASH_REMATCH[1]}
	args=${args/--disk ${size}/}
fi
expect_evictions=
if [[ $args == *--expect-evictions* ]]; then
	expect_evictions=1
	args=${args//--expect-evictions/}
fi

make_backing() {
	case $backing in
	none) return ;;
	raw|short)
		qemu-img create -q -f raw base.raw $([[ $backing == short ]] && echo 20M || echo $size)
		qemu-io -f raw -c 'write -P 0x5a 0 8M' -c 'write -P 0x6b 12M 4M' base.raw >/dev/null
		if [[ $backing == raw ]]; then bfile=base.raw bfmt=raw; return; fi
		qemu-img convert -q -O qcow2 base.raw base.qcow2
		bfile=base.qcow2 bfmt=qcow2 ;;
	qcow2)
		qemu-img create -q -f qcow2 base.qcow2 $size
		qemu-io -c 'write -P 0x5a 0 8M' -c 'write -z 9M 1M' -c 'write -P 0x6b 12M 4M' base.qcow2 >/dev/null
		bfile=base.qcow2 bfmt=qcow2 ;;
	zlib|zstd)
		qemu-img create -q -f raw base.raw $size
		qemu-io -f raw -c 'write -P 0x5a 0 8M' -c 'write -P 0x6b 12M 4M' base.raw >/dev/null
		head -c 2M /dev/urandom | dd of=base.raw bs=1M seek=20 conv=notrunc status=none
		qemu-img convert -q -c -O qcow2 -o compression_type=$backing base.raw base.qcow2
		bfile=base.qcow2 bfmt=qcow2 ;;
	esac
}

bfile= bfmt=
make_backing
case $opts in
compressed)
	qemu-img create -q -f raw src.raw $size
	qemu-io -f raw -c 'write -P 0x33 0 16M' src.raw >/dev/null
	head -c 4M /dev/urandom | dd of=src.raw bs=1M seek=20 conv=notrunc status=none
	qemu-img convert -q -c -O qcow2 src.raw img.qcow2 ;;
snapshot)
	qemu-img create -q -f qcow2 img.qcow2 $size
	qemu-io -c "write -P 0x21 0 $size" img.qcow2 >/dev/null
	qemu-img snapshot -c s1 img.qcow2 ;;
*)
	if [[ -n $bfile ]]; then
		qemu-img create -q -f qcow2 -o "$opts" -b "$bfile" -F "$bfmt" img.qcow2 $size
	else
		qemu-img create -q -f qcow2 -o "$opts" img.qcow2 $size
	fi ;;
esac
qemu-img convert -q -O raw img.qcow2 model.raw
cp model.raw before.raw

echo "+ random_io $args img.qcow2 model.raw"
# shellcheck disable=SC2086
RANDOM_IO_EXPECT_EVICTIONS=$expect_evictions "$RANDOM_IO" --seed 7 $args img.qcow2 model.raw ||
	fail "random_io failed"

echo "+ qemu-img check"
if ! qemu-img check img.qcow2 > check.txt 2>&1; then
	cat check.txt
	fail "qemu-img check is not clean after a clean close"
fi
echo "+ qemu-img compare img.qcow2 model.raw"
qemu-img compare -q -f qcow2 -F raw img.qcow2 model.raw || fail "image differs from the model"

if [[ $opts == snapshot ]]; then
	echo "+ qemu-img snapshot -a s1: the old contents must come back"
	qemu-img snapshot -a s1 img.qcow2
	qemu-img compare -q -f qcow2 -F raw img.qcow2 before.raw || fail "snapshot s1 does not restore its contents"
	qemu-img check img.qcow2 >/dev/null || fail "check after snapshot -a"
fi

echo "+ reverse: qemu-io writes into our image, our reads must equal qemu-img's"
qemu-io -c 'write -P 0x77 4M 192k' -c 'write -z 5M 64k' -c 'discard 6M 256k' img.qcow2 >/dev/null
qemu-img convert -q -O raw img.qcow2 ref.raw
if [[ -n ${QCOW2_IMG:-} && -x ${QCOW2_IMG:-} ]]; then
	"$QCOW2_IMG" convert -O raw img.qcow2 ours.raw || fail "qcow2-img convert failed"
	cmp -s ours.raw ref.raw || fail "qcow2-img convert differs from qemu-img convert"
fi
qemu-img check img.qcow2 >/dev/null || fail "check after qemu-io writes"
rm -rf "$work"
echo "ok $case_name"
