#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# IO error injection, SQLite style: one short workload (fixed seed) is run
# again and again with the Nth write/fdatasync (or read) failing with EIO or
# ENOSPC, for N = 1 .. M (M: operations the workload has; sampled with a
# step when M > 40). Each run must:
#   - surface exactly the injected errno on some request (random_io
#     --expect-failure: any other error fails), without hanging or crashing
#     (no signal, no sanitizer report);
#   - leave an image qemu-img check finds without corruption (leaks are
#     allowed) and qemu-img info opens;
#   - leave an image we can open again and write: a short clean random_io run
#     on it passes, and then check and compare agree.
#
#   faults.sh CASE | --list
# Environment: RANDOM_IO (required), QCOW2_TEST_WORKDIR, MAX_RUNS (default
# 40). Exit 0 pass, 1 fail (work directory kept, failing command printed),
# 77 skip.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
# shellcheck source=tests/write/lib.sh
source "$here/lib.sh"

# name: errno | fail-ops | image | extra random_io options
cases() {
	cat <<'EOF'
EIO             | EIO    | w,f   | backing-4k | 
ENOSPC          | ENOSPC | w,f   | backing-4k | 
EIO-64k         | EIO    | w,f   | plain-64k  | --depth 8
ENOSPC-persist  | ENOSPC | w,f   | plain-64k  | --fail-persist
EIO-persist     | EIO    | w,f   | backing-4k | --fail-persist
EIO-tiny-cache  | EIO    | w,f   | backing-4k | --fail-persist --l2-cache 4096
READ-EIO        | EIO    | r     | backing-4k | 
READ-EIO-persist| EIO    | r     | compressed | --fail-persist
ALL-EIO-persist | EIO    | r,w,f | backing-4k | --fail-persist --l2-cache 4096
EOF
}
if [[ ${1:-} == --list ]]; then cases | cut -d'|' -f1 | tr -d ' '; exit 0; fi
case_name=${1:?usage: faults.sh CASE | --list}
line=$(case_line "$case_name")
errno=$(echo "$line" | cut -d'|' -f2 | xargs)
fops=$(echo "$line" | cut -d'|' -f3 | xargs)
image=$(echo "$line" | cut -d'|' -f4 | xargs)
read -r -a extra <<<"$(echo "$line" | cut -d'|' -f5)"
need qemu-img qemu-io python3
need_random_io
max_runs=${MAX_RUNS:-40}

work=${QCOW2_TEST_WORKDIR:-$PWD/fault-work}/faults-$case_name
rm -rf "$work"
mkdir -p "$work"
cd "$work"

case $image in
backing-4k)
	qemu-img create -q -f qcow2 base.qcow2 8M
	qemu-io -c 'write -P 0x5a 0 3M' -c 'write -P 0x6b 5M 1M' base.qcow2 >/dev/null
	qemu-img create -q -f qcow2 -o cluster_size=4k -b base.qcow2 -F qcow2 fresh.qcow2 8M ;;
plain-64k)
	qemu-img create -q -f qcow2 fresh.qcow2 8M ;;
compressed)
	qemu-img create -q -f raw src.raw 8M
	qemu-io -f raw -c 'write -P 0x33 0 6M' src.raw >/dev/null
	qemu-img convert -q -c -O qcow2 -o cluster_size=16k src.raw fresh.qcow2 ;;
esac
qemu-img convert -q -O raw fresh.qcow2 fresh.raw

workload=(--backend fault --ops 60 --depth 4 --max-len 64k --seed 5 "${extra[@]}")

# one N: returns random_io's exit status; output in run.out
attempt() {
	cp fresh.qcow2 img.qcow2
	cp fresh.raw model.raw
	local rc=0
	"$RANDOM_IO" "${workload[@]}" --fail-at "$1" --fail-errno "$errno" \
		--fail-ops "$fops" --expect-failure img.qcow2 model.raw >run.out 2>&1 || rc=$?
	return $rc
}
cmdline() {
	echo "(cd $work && cp fresh.qcow2 img.qcow2 && cp fresh.raw model.raw &&" \
		"$RANDOM_IO ${workload[*]} --fail-at $1 --fail-errno $errno --fail-ops $fops" \
		"--expect-failure img.qcow2 model.raw)"
}

# M: the last operation the workload reaches (exit 3: not reached).
reached() {
	local rc=0
	attempt "$1" || rc=$?
	[[ $rc != 3 ]]
}
hi=1
while reached "$hi"; do
	hi=$((hi * 2))
	((hi < 1000000)) || fail "the injected failure is reached at every N: no end"
done
lo=$((hi / 2)) # reached (or 0)
while ((hi - lo > 1)); do
	mid=$(((lo + hi) / 2))
	if reached "$mid"; then lo=$mid; else hi=$mid; fi
done
m=$lo
((m > 0)) || fail "the workload never reaches the operations to fail ($fops)"
step=$(((m + max_runs - 1) / max_runs))
points=$( (seq 1 $((m < 8 ? m : 8)); seq 1 "$step" "$m"; echo "$m") | sort -n | uniq)
echo "$errno on operation N of ($fops) for N in 1..$m (step $step; $(wc -w <<<"$points") runs)"

runs=0 hits=0
for n in $points; do
	rc=0
	attempt "$n" || rc=$?
	if asan_report run.out; then
		cat run.out
		fail "sanitizer report with $errno at operation $n: $(cmdline "$n")"
	fi
	if ((rc != 0)); then
		cat run.out
		if ((rc > 128)); then
			fail "random_io died of signal $((rc - 128)) with $errno at operation $n: $(cmdline "$n")"
		fi
		fail "random_io exited $rc with $errno at operation $n: $(cmdline "$n")"
	fi
	grep -q 'surfaced' run.out && hits=$((hits + 1))
	if ! qcheck img.qcow2 consistent >check.out; then
		cat run.out check.out
		fail "corruption after $errno at operation $n: $(cmdline "$n")"
	fi
	qemu-img info img.qcow2 >/dev/null || fail "qemu-img info cannot open the image after $errno at $n"
	# The image left behind must be usable: a clean run on it.
	qemu-img convert -q -O raw img.qcow2 after.raw
	rc=0
	"$RANDOM_IO" --backend sync --ops 30 --depth 4 --max-len 64k --seed $((n + 100)) \
		img.qcow2 after.raw >recover.out 2>&1 || rc=$?
	if ((rc != 0)) || asan_report recover.out; then
		cat run.out recover.out
		fail "after $errno at operation $n, a clean workload on the image fails: $(cmdline "$n"), then" \
			"qemu-img convert -O raw img.qcow2 after.raw && $RANDOM_IO --backend sync --ops 30 --depth 4" \
			"--max-len 64k --seed $((n + 100)) img.qcow2 after.raw"
	fi
	qcheck img.qcow2 consistent >check.out || {
		cat check.out
		fail "corruption after the recovery run ($errno at operation $n)"
	}
	qemu-img compare -q -f qcow2 -F raw img.qcow2 after.raw ||
		fail "after the recovery run ($errno at $n) the image differs from the model"
	runs=$((runs + 1))
done
cd /
rm -rf "$work"
echo "ok: $runs runs with $errno injected at operation N of ($fops), all surfaced ($hits during requests);" \
	"no corruption, image usable after"
