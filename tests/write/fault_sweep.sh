#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# IO errors that the workload survives (issue 11): fault_model runs one
# seeded workload again and again with the Nth operation of one kind (write,
# fdatasync, read, fallocate) failing with EIO or ENOSPC, transiently (only
# that operation) or persistently (every one from the Nth on), and keeps
# going after it. Each run must, besides fault_model's own verdict (every
# read, the image after close and reopen, and crash states rebuilt from the
# write log, against the model of what each sector may hold):
#   - leave an image qemu-img check finds without corruption (leaks are
#     allowed) once our read-write reopen has repaired it;
#   - read, through qemu-img convert -O raw, exactly what our reopen read.
#
# M, the number of operations of the kind, comes from a run without a fault
# (writes and fdatasyncs: its log; reads and fallocates: the last N whose
# persistent fault surfaces). The quick sweep (the test suite) takes
# QUICK_RUNS values of N: for writes, every write of the header, the L1 table
# or the refcount table, then other metadata writes, then a spread; for the
# other kinds the first few and a spread; each N with one of the four
# errno x mode combinations (transient ones first). The full sweep (FULL=1
# or --full) runs every N from 1 to M (FULL_POINTS caps the count with a
# step) with all four combinations.
#
#   fault_sweep.sh CASE [--full] | --list
# CASE is VARIANT-KIND: VARIANT from the table below, KIND one of write,
# fsync, read, fallocate (skipped when the engine has no
# QCOW2_FAULT_FALLOCATE). Environment: FAULT_MODEL (required),
# QCOW2_TEST_WORKDIR, FAULT_SWEEP_DIR (work directory; default a
# directory in /dev/shm when O_DIRECT works there, else QCOW2_TEST_WORKDIR),
# QUICK_RUNS (default 24), FULL, FULL_POINTS, SEED (overrides the case's),
# RUN_TIMEOUT (seconds one run may take before it counts as a hang; 60).
# Exit 0 pass, 1 fail (work directory kept, replay command printed), 77 skip.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
# shellcheck source=tests/write/lib.sh
source "$here/lib.sh"

# variant | qemu-img create -o | fault_model options | kinds of operation
# (compressed-rc1: 1-bit refcounts, so compressed clusters are not packed and
# a freed host cluster soon holds another compressed cluster)
variants() {
	cat <<'EOF'
64k            | cluster_size=64k                   | --seed 11               | write fsync read fallocate
4k-tiny        | cluster_size=4k                    | --seed 12 --l2-cache 4k | write fsync read fallocate
lazy           | cluster_size=16k,lazy_refcounts=on | --seed 13               | write fsync read fallocate
compressed     | cluster_size=16k                   | --seed 14 --compressed  | write fsync read fallocate
compressed-rc1 | cluster_size=16k,refcount_bits=1   | --seed 14 --compressed  | write fsync
EOF
}
cases() {
	local v k kinds
	variants | while IFS='|' read -r v _ _ kinds; do
		v=$(echo "$v" | xargs)
		for k in $kinds; do echo "$v-$k |"; done
	done
}
if [[ ${1:-} == --list ]]; then cases | cut -d'|' -f1 | tr -d ' '; exit 0; fi
case_name=${1:?usage: fault_sweep.sh CASE [--full] | --list}
full=${FULL:-0}
[[ ${2:-} == --full ]] && full=1
case_line "$case_name" >/dev/null
kind=${case_name##*-}
variant=${case_name%-*}
line=$(variants | awk -F'|' -v c="$variant" '{n=$1; gsub(/[ \t]/,"",n); if (n==c) print}')
opts=$(echo "$line" | cut -d'|' -f2 | xargs)
read -r -a args <<<"$(echo "$line" | cut -d'|' -f3)"
if [[ -n ${SEED:-} ]]; then
	for i in "${!args[@]}"; do [[ ${args[$i]} == --seed ]] && args[i+1]=$SEED; done
fi
case $kind in
write) op=w ;; fsync) op=f ;; read) op=r ;; fallocate) op=a ;;
esac
need qemu-img
if [[ -z ${FAULT_MODEL:-} ]]; then
	echo "SKIP: FAULT_MODEL is not set (path of the fault_model program)"
	exit 77
fi
[[ -x $FAULT_MODEL ]] || { echo "FAIL: FAULT_MODEL=$FAULT_MODEL is not executable" >&2; exit 1; }
if [[ $kind == fallocate ]] && ! "$FAULT_MODEL" --features | grep -qx fallocate; then
	echo "SKIP: this engine's fault backend cannot fail fallocates (no QCOW2_FAULT_FALLOCATE)"
	exit 77
fi

# The work directory: tmpfs when it takes O_DIRECT (Linux 6.6 and later),
# which makes the hundreds of runs several times faster than a disk.
base=${FAULT_SWEEP_DIR:-}
if [[ -z $base ]]; then
	tag=$(echo "${QCOW2_TEST_WORKDIR:-$PWD}" | cksum | cut -d' ' -f1)
	shm=/dev/shm/qcow2-fault-sweep-$tag
	if mkdir -p "$shm" 2>/dev/null &&
		dd if=/dev/zero of="$shm/.direct" bs=4096 count=1 oflag=direct status=none 2>/dev/null; then
		base=$shm
	else
		base=${QCOW2_TEST_WORKDIR:-$PWD/fault-work}
	fi
	rm -f "$shm/.direct" 2>/dev/null || true
fi
work=$base/fault-sweep-$case_name
rm -rf "$work"
mkdir -p "$work"
cd "$work"
run qemu-img create -q -f qcow2 -o "$opts" fresh.qcow2 8M

run_timeout=${RUN_TIMEOUT:-60}
cmdline() { echo "(cd $work && $FAULT_MODEL ${args[*]} $* fresh.qcow2 run)"; }

# One run of fault_model with extra options "$@", then qemu's verdicts.
runs=0
attempt() {
	local rc=0
	runs=$((runs + 1))
	timeout -k 5 "$run_timeout" "$FAULT_MODEL" "${args[@]}" "$@" fresh.qcow2 run \
		>run.out 2>&1 || rc=$?
	if asan_report run.out; then
		cat run.out
		fail "sanitizer report: $(cmdline "$@")"
	fi
	if ((rc != 0)); then
		cat run.out
		((rc == 124 || rc == 137)) &&
			fail "fault_model hangs (killed after ${run_timeout}s): $(cmdline "$@")"
		((rc > 128)) && fail "fault_model died of signal $((rc - 128)): $(cmdline "$@")"
		fail "fault_model exited $rc: $(cmdline "$@")"
	fi
	rc=0
	qemu-img check -f qcow2 run/img.qcow2 >check.out 2>&1 || rc=$?
	if ((rc != 0 && rc != 3)); then
		cat run.out check.out
		fail "qemu-img check exits $rc (corruption) after our reopen: $(cmdline "$@")"
	fi
	qemu-img convert -f qcow2 -O raw run/img.qcow2 run/qemu.raw ||
		fail "qemu-img convert cannot read the image: $(cmdline "$@")"
	if ! cmp -s run/ours.raw run/qemu.raw; then
		cmp run/ours.raw run/qemu.raw | head -1 || true
		fail "qemu reads other bytes than our reopen did: $(cmdline "$@")"
	fi
	rm -f run/qemu.raw
}

# Without a fault: the baseline, the counts and the targets.
attempt --cut-check
cp run.out baseline.out
read -r _ _ nwrites _ nfsyncs _ npunches <<<"$(grep '^counts:' baseline.out)"
targets=$(sed -n 's/^targets://p' baseline.out)
targets2=$(sed -n 's/^targets2://p' baseline.out)

# M for reads: the last N whose persistent fault surfaces. Fallocates: the
# hole punches (logged as writes of zeros) and the space reservation ahead of
# allocations (not logged; once or twice in a run).
surfaces() {
	local rc=0
	timeout -k 5 "$run_timeout" "$FAULT_MODEL" "${args[@]}" --probe --fail-at "$1" \
		--fail-ops "$op" --fail-persist fresh.qcow2 run >probe.out 2>&1 || rc=$?
	case $rc in
	0) return 0 ;;
	3) return 1 ;;
	124 | 137)
		cat probe.out
		fail "fault_model hangs (killed after ${run_timeout}s): $(cmdline --probe --fail-at "$1" --fail-ops "$op" --fail-persist)" ;;
	*) cat probe.out; fail "fault_model --probe exited $rc: $(cmdline --probe --fail-at "$1" --fail-ops "$op" --fail-persist)" ;;
	esac
}
case $kind in
write) m=$nwrites ;;
fsync) m=$nfsyncs ;;
fallocate) m=$((npunches + 2)) ;;
*)
	hi=1
	while surfaces "$hi"; do
		hi=$((hi * 2))
		((hi < 1000000)) || fail "the fault surfaces at every N"
	done
	lo=$((hi / 2))
	while ((hi - lo > 1)); do
		mid=$(((lo + hi) / 2))
		if surfaces "$mid"; then lo=$mid; else hi=$mid; fi
	done
	m=$lo ;;
esac
((m > 0)) || fail "the workload performs no $kind operation"

combos=("EIO" "ENOSPC --fail-persist" "ENOSPC" "EIO --fail-persist")
plan=() # "N combo-index" lines
if ((full)); then
	step=1
	if [[ -n ${FULL_POINTS:-} ]] && ((m > FULL_POINTS)); then
		step=$(((m + FULL_POINTS - 1) / FULL_POINTS))
	fi
	for n in $(seq 1 "$step" "$m"); do
		for c in 0 1 2 3; do plan+=("$n $c"); done
	done
else
	budget=${QUICK_RUNS:-24}
	declare -A seen=()
	add() { # N combo
		local n=$1
		((n >= 1 && n <= m && ${#plan[@]} < budget)) || return 0
		[[ -z ${seen[$n]:-} ]] || return 0
		seen[$n]=1
		plan+=("$n $2")
	}
	i=0
	if [[ $kind == write ]]; then
		# every table and header write, transient (a retry must succeed)
		for n in $targets; do add "$n" $((i++ % 2 * 2)); done
		# a third of what is left for other metadata writes
		read -r -a t2 <<<"$targets2"
		if ((${#t2[@]} > 0)); then
			k=$(((budget - ${#plan[@]}) / 3))
			for ((j = 0; j < k; j++)); do
				add "${t2[j * ${#t2[@]} / k]}" $((i++ % 4))
			done
		fi
	else
		for n in 1 2 3; do add "$n" $((i++ % 4)); done
	fi
	left=$((budget - ${#plan[@]}))
	for ((j = 0; j < left; j++)); do
		add $((1 + j * m / (left > 0 ? left : 1) + (m / (left > 0 ? left : 1)) / 2)) $((i++ % 4))
	done
	n=$m
	while ((${#plan[@]} < budget && n >= 1)); do add "$n" $((i++ % 4)); n=$((n - 1)); done
fi
echo "$case_name: $kind faults, M = $m operations; ${#plan[@]} runs," \
	"$( ((full)) && echo full || echo quick) sweep; table and header writes:${targets:- none}"

j=0
for p in "${plan[@]}"; do
	read -r n c <<<"$p"
	read -r -a combo <<<"${combos[$c]}"
	extra=(--fail-at "$n" --fail-ops "$op" --fail-errno "${combo[@]}")
	# qemu-img check of every crash state: every other run with lazy
	# refcounts (a crash leaves dirty images to rebuild), else every third
	if ((j % ($([[ $variant == lazy ]] && echo 2 || echo 3)) == 0)); then
		extra+=(--cut-check)
	fi
	attempt "${extra[@]}"
	j=$((j + 1))
done
cd /
rm -rf "$work"
rmdir "$base" 2>/dev/null || true
echo "ok: $case_name: $runs runs (M = $m), every read, reopen and crash state as the model allows," \
	"no corruption, qemu reads what we read"
