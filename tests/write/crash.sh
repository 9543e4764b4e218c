#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# Crash consistency by simulated power loss. A workload runs through the
# fault backend, which logs every write and fdatasync; replay.py rebuilds the
# image as a power loss at ~40 points of the log would leave it (synced writes
# kept; unsynced ones lost, partly applied, reordered or torn) and judges
# every state: qemu-img check finds no corruption (leaks are allowed),
# qemu-img info opens it, data made durable by a completed flush is intact and
# no sector reads data it never held (replay.py explains), internal snapshots
# are untouched. The image after the clean close must be clean and equal the
# model, and replaying the whole log must rebuild it.
#
#   crash.sh CASE | --list
# Environment: RANDOM_IO (required), QCOW2_TEST_WORKDIR, SEED (random_io's
# seed; default per case), POINTS (crash points, default 40).
# Exit 0 pass, 1 fail (the work directory and failing state are kept, and the
# replay command printed), 77 skip.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
# shellcheck source=tests/write/lib.sh
source "$here/lib.sh"

# name: qemu-img create options | backing | random_io options
cases() {
	cat <<'EOF'
64k         | cluster_size=64k            | none     | --seed 11
4k          | cluster_size=4k             | none     | --seed 12
backing     | cluster_size=64k            | qcow2    | --seed 13
backing-4k  | cluster_size=4k             | qcow2    | --seed 14 --max-len 64k
tiny-cache  | cluster_size=4k             | none     | --seed 15 --l2-cache 4096 --expect-evictions
v2          | compat=0.10,cluster_size=4k | none     | --seed 16
refcount-1  | refcount_bits=1,cluster_size=16k | none | --seed 17
snapshot    | cluster_size=16k            | snapshot | --seed 18
growth      | cluster_size=512            | none     | --seed 19 --max-len 512k --no-meta --ops 150 --buffered
extl2       | extended_l2=on,cluster_size=16k | qcow2 | --seed 21
extl2-64k   | extended_l2=on              | none     | --seed 22 --max-len 32k
lazy        | lazy_refcounts=on,cluster_size=16k | none | --seed 23
lazy-backing | lazy_refcounts=on          | qcow2    | --seed 24
EOF
}
if [[ ${1:-} == --list ]]; then cases | cut -d'|' -f1 | tr -d ' '; exit 0; fi
case_name=${1:?usage: crash.sh CASE | --list}
line=$(case_line "$case_name")
opts=$(echo "$line" | cut -d'|' -f2 | xargs)
backing=$(echo "$line" | cut -d'|' -f3 | xargs)
args=$(echo "$line" | cut -d'|' -f4 | xargs)
need qemu-img qemu-io python3
need_random_io
if [[ -n ${SEED:-} ]]; then args=$(sed "s/--seed [0-9]*/--seed $SEED/" <<<"$args"); fi
seed=$(sed -n 's/.*--seed \([0-9]*\).*/\1/p' <<<"$args")
[[ $args == *--ops* ]] || args="$args --ops 300"
[[ $args == *--max-len* ]] || args="$args --max-len 128k"

work=${QCOW2_TEST_WORKDIR:-$PWD/crash-work}/crash-$case_name
rm -rf "$work"
mkdir -p "$work/marks"
cd "$work"

size=16M
snap=()
case $backing in
none)
	run qemu-img create -q -f qcow2 -o "$opts" img.qcow2 $size ;;
qcow2)
	qemu-img create -q -f qcow2 base.qcow2 $size
	qemu-io -c 'write -P 0x5a 0 6M' -c 'write -z 7M 1M' -c 'write -P 0x6b 9M 3M' \
		base.qcow2 >/dev/null
	run qemu-img create -q -f qcow2 -o "$opts" -b base.qcow2 -F qcow2 img.qcow2 $size ;;
snapshot)
	run qemu-img create -q -f qcow2 -o "$opts" img.qcow2 $size
	qemu-io -c "write -P 0x21 0 $size" img.qcow2 >/dev/null
	run qemu-img snapshot -c s1 img.qcow2
	qemu-img convert -q -l snapshot.name=s1 -O raw img.qcow2 s1.raw
	qemu-io -c 'write -P 0x22 0 1M' img.qcow2 >/dev/null
	snap=(--snapshot s1 --snapshot-raw s1.raw) ;;
esac
cp img.qcow2 base-state.qcow2
qemu-img convert -q -O raw img.qcow2 model.raw

rc=0
# shellcheck disable=SC2086
run "$RANDOM_IO" --backend fault --log writes.log --marks marks --depth 4 $args \
	img.qcow2 model.raw >random_io.out 2>&1 || rc=$?
cat random_io.out
asan_report random_io.out && fail "sanitizer report from random_io"
[[ $rc == 0 ]] || fail "random_io exited $rc"
echo "+ the image after a clean close"
qcheck img.qcow2 clean || fail "qemu-img check is not clean after a clean close"
qemu-img compare -q -f qcow2 -F raw img.qcow2 model.raw || fail "the image differs from the model"

# States are rebuilt here, beside the backing file they name.
run python3 "$here/replay.py" base-state.qcow2 writes.log . --points "${POINTS:-40}" \
	--marks marks --random-io-seed "$seed" --final img.qcow2 "${snap[@]}" ||
	fail "a crash state is inconsistent (see above)"
cd /
rm -rf "$work"
echo "ok crash-$case_name"
