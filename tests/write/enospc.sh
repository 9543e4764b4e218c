#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# A real full file system, not an injected error: the image lives on a small
# tmpfs, and a random workload (data writes that allocate, flushes) runs
# until a request fails with ENOSPC. Then:
#   1. the failure surfaced as ENOSPC on a request (random_io
#      --expect-failure without --fail-at), with no crash and no hang;
#   2. qemu-img check finds no corruption (leaks allowed), on the full
#      file system;
#   3. once there is room again (the image copied to a larger file system),
#      it opens read-write and a clean workload on it passes, judged by
#      check and compare.
#
#   enospc.sh CASE | --list
# Needs root (to mount tmpfs): skipped otherwise, with the reason.
# Environment: RANDOM_IO (required), QCOW2_TEST_WORKDIR.
# Exit 0 pass, 1 fail (work directory kept), 77 skip.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
# shellcheck source=tests/write/lib.sh
source "$here/lib.sh"

# name | tmpfs size | qemu-img create -o | random_io options
cases() {
	cat <<'EOF'
full-64k     | 6M | cluster_size=64k                 | --ops 3000 --max-len 256k --depth 8
full-4k      | 3M | cluster_size=4k                  | --ops 3000 --max-len 64k --depth 4 --backend sync
full-backing | 4M | cluster_size=16k,backing         | --ops 3000 --max-len 128k --depth 8
full-compressed | 5M | cluster_size=64k,compressed   | --ops 3000 --max-len 128k --depth 4
EOF
}
if [[ ${1:-} == --list ]]; then cases | cut -d'|' -f1 | tr -d ' '; exit 0; fi
case_name=${1:?usage: enospc.sh CASE | --list}
line=$(case_line "$case_name")
fs_size=$(echo "$line" | cut -d'|' -f2 | xargs)
opts=$(echo "$line" | cut -d'|' -f3 | xargs)
read -r -a args <<<"$(echo "$line" | cut -d'|' -f4)"
need qemu-img qemu-io python3 mount umount
need_random_io
if [[ $(id -u) != 0 ]]; then
	echo "SKIP: mounting a small tmpfs needs root"
	exit 77
fi

work=${QCOW2_TEST_WORKDIR:-$PWD/enospc-work}/enospc-$case_name
mnt=$work/mnt
if mountpoint -q "$mnt" 2>/dev/null; then umount "$mnt"; fi
rm -rf "$work"
mkdir -p "$mnt"
cd "$work"
if ! mount -t tmpfs -o "size=$fs_size" tmpfs "$mnt" 2>mount.err; then
	echo "SKIP: cannot mount tmpfs: $(cat mount.err)"
	exit 77
fi
trap 'umount "$mnt" 2>/dev/null || true' EXIT

copts=() backing=0 compressed=0
IFS=, read -r -a words <<<"$opts"
for w in "${words[@]}"; do
	case $w in
	backing) backing=1 ;;
	compressed) compressed=1 ;;
	*) copts+=("$w") ;;
	esac
done
copt=$(IFS=,; echo "${copts[*]}")
# The backing file and the model stay off the small file system.
if ((backing)); then
	qemu-img create -q -f qcow2 base.qcow2 64M
	qemu-io -c 'write -P 0x5a 0 32M' base.qcow2 >/dev/null
	qemu-img create -q -f qcow2 -o "$copt" -b "$work/base.qcow2" -F qcow2 "$mnt/img.qcow2" 64M
elif ((compressed)); then
	qemu-img create -q -f raw src.raw 64M
	qemu-io -f raw -c 'write -P 0x33 0 48M' src.raw >/dev/null
	qemu-img convert -q -c -O qcow2 -o "$copt" src.raw "$mnt/img.qcow2"
else
	qemu-img create -q -f qcow2 -o "$copt" "$mnt/img.qcow2" 64M
fi
qemu-img convert -q -O raw "$mnt/img.qcow2" model.raw
df -h "$mnt" | tail -1

rc=0
run "$RANDOM_IO" --buffered --no-meta --seed 31 "${args[@]}" --fail-errno ENOSPC \
	--expect-failure "$mnt/img.qcow2" model.raw >run.out 2>&1 || rc=$?
cat run.out
asan_report run.out && fail "sanitizer report"
((rc < 128)) || fail "random_io died of signal $((rc - 128))"
((rc != 3)) || fail "the file system never filled up: make the case's tmpfs smaller"
((rc == 0)) || fail "random_io exited $rc (expected a request to fail with ENOSPC)"
grep -q 'surfaced' run.out || fail "ENOSPC did not surface on a request"
df -h "$mnt" | tail -1
qcheck "$mnt/img.qcow2" consistent || fail "corruption after ENOSPC"
qemu-img info "$mnt/img.qcow2" >/dev/null || fail "qemu-img info cannot open the image"

# Room again: the image must be usable.
cp "$mnt/img.qcow2" img.qcow2
qemu-img convert -q -O raw img.qcow2 after.raw
run "$RANDOM_IO" --ops 200 --max-len 128k --seed 32 img.qcow2 after.raw >recover.out 2>&1 || {
	cat recover.out
	fail "after ENOSPC, a clean workload on the image (with room) fails"
}
qcheck img.qcow2 consistent || fail "corruption after the recovery run"
qemu-img compare -q -f qcow2 -F raw img.qcow2 after.raw || fail "compare after the recovery run"
cd /
umount "$mnt"
trap - EXIT
rm -rf "$work"
echo "ok enospc-$case_name"
