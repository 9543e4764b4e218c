#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# Hostile images: make_bad.py damages a good qemu-img image; then qcow2-img
# info, info --json, map --json, convert -O raw (sync and io_uring) and
# qcow2-io read of the affected range must each either succeed or fail with
# exit status 1 and a message on stderr: never a signal, never another exit
# status, never a sanitizer report, never a hang (60 s per command).
# Cases that MUST be rejected (make_bad.py --describe: MUST_REJECT=1) must
# fail with exit 1 and a message matching MSG_RE in every command
# (REJECT_SCOPE=all), or in every command that reads guest data
# (REJECT_SCOPE=data: backing chain problems; info and map may still show the
# image's own header).
#
#   bad_images.sh CASE     run one case (make_bad.py --list)
#   bad_images.sh          run every case
#
# Environment: QCOW2_IMG, QCOW2_IO (required), QCOW2_TEST_WORKDIR (default
# ./bad-work; a case's directory is removed when it passes), QEMU_IMG, QEMU_IO.
# Exit status: 0 pass, 1 fail, 77 skip.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
make_bad=$here/make_bad.py

if (($# == 0)); then
	rc=0
	for c in $(python3 "$make_bad" --list); do
		echo "==== $c"
		"$0" "$c" || { r=$?; echo "==== $c: exit $r"; [[ $r == 77 ]] || rc=1; }
	done
	exit "$rc"
fi
case_name=$1

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
for t in "$QEMU_IMG" "$QEMU_IO" python3 timeout; do
	command -v "$t" >/dev/null 2>&1 || skip "$t not found: install qemu-utils / python3 / coreutils"
done
[[ -n ${QCOW2_IMG:-} && -x ${QCOW2_IMG:-} ]] || die "QCOW2_IMG is not set to an executable (got '${QCOW2_IMG:-}')"
[[ -n ${QCOW2_IO:-} && -x ${QCOW2_IO:-} ]] || die "QCOW2_IO is not set to an executable (got '${QCOW2_IO:-}')"
QCOW2_IMG=$(realpath "$QCOW2_IMG")
QCOW2_IO=$(realpath "$QCOW2_IO")

BASE='' MUST_REJECT='' REJECT_SCOPE='' MSG_RE='' READ='' DESC=''
desc=$(python3 "$make_bad" --describe "$case_name") || die "unknown case '$case_name'"
eval "$desc"

base=${QCOW2_TEST_WORKDIR:-$PWD/bad-work}
mkdir -p "$base"
base=$(cd "$base" && pwd -P)
W=$base/$case_name
rm -rf "$W"
mkdir -p "$W"
cd "$W"

run() {
	echo "+ $*" >>setup.log
	if ! "$@" >>setup.log 2>&1; then
		echo "setup command failed: $*" >&2
		tail -n 20 setup.log >&2
		die "could not build the good image (a qemu-img/qemu-io problem, not the engine)"
	fi
}

# ---- the good image ----------------------------------------------------------

case $BASE in
std | zstd)
	ct=zlib
	[[ $BASE == zstd ]] && ct=zstd
	python3 -c 'import random,sys; r=random.Random(5); open(sys.argv[1],"wb").write(r.randbytes(32768)+bytes(32768))' half.bin
	run "$QEMU_IMG" create -f qcow2 -o "cluster_size=65536,compression_type=$ct" good.qcow2 64M
	run "$QEMU_IO" -f qcow2 -c "write -P 0x11 0 64k" -c "write -c -s half.bin 1M 64k" \
		-c "write -P 0x33 2M 64k" -c "write -P 0x44 40M 64k" good.qcow2
	;;
c512)
	run "$QEMU_IMG" create -f qcow2 -o cluster_size=512 good.qcow2 4M
	run "$QEMU_IO" -f qcow2 -c "write -P 0x11 0 64k" -c "write -P 0x22 1M 4k" -c "write -P 0x33 3M 4k" good.qcow2
	;;
extl2)
	run "$QEMU_IMG" create -f qcow2 -o cluster_size=65536,extended_l2=on good.qcow2 64M
	run "$QEMU_IO" -f qcow2 -c "write -P 0x11 0 64k" -c "write -P 0x12 $((2 * 1024 * 1024 + 2048)) 2048" good.qcow2
	;;
*) die "internal: unknown base image kind '$BASE'" ;;
esac
run "$QEMU_IMG" check good.qcow2
run python3 "$make_bad" "$case_name" good.qcow2 bad.qcow2

echo "case:        $case_name"
echo "damage:      $DESC"
echo "must reject: $( ((MUST_REJECT)) && echo "yes ($REJECT_SCOPE), with a message matching /$MSG_RE/" || echo no)"
echo "qemu-img info says:"
"$QEMU_IMG" info bad.qcow2 2>&1 | head -n 4 | sed 's/^/  | /' || true
echo

# ---- the commands --------------------------------------------------------------

SAN_RE='ERROR: [A-Za-z]*Sanitizer|runtime error:|SUMMARY: [A-Za-z]*Sanitizer|WARNING: [A-Za-z]*Sanitizer'
failures=()
read_off=${READ%% *}
read_len=${READ##* }
rel=$case_name/bad.qcow2

# check NAME KIND CMD...: run from $base with the image path relative. KIND
# is "data" for commands that read guest data, "meta" for info and map,
# "offline" for dump and stats: they read only the image's own metadata
# (not its data file or backing chain), so they may accept what the engine
# rejects, but must not crash or fail silently.
check() {
	local name=$1 kind=$2
	shift 2
	local reject=$MUST_REJECT
	[[ $REJECT_SCOPE == data && $kind == meta ]] && reject=0
	[[ $kind == offline ]] && reject=0
	local rc=0 err
	(cd "$base" && timeout -k 5 30 "$@") >"$W/$name.out" 2>"$W/$name.err" || rc=$?
	err=$W/$name.err
	local what="$*"
	what=${what//$QCOW2_IMG/qcow2-img}
	what=${what//$QCOW2_IO/qcow2-io}
	if grep -qE "$SAN_RE" "$err"; then
		echo "FAIL $what: sanitizer report (exit $rc)"
		sed 's/^/  | /' "$err" | head -n 80
		failures+=("$name: sanitizer report")
		return
	fi
	if ((rc == 124 || rc == 137)); then
		echo "FAIL $what: hung (killed after 30 s)"
		failures+=("$name: hang")
		return
	fi
	if ((rc != 0 && rc != 1)); then
		echo "FAIL $what: exit status $rc (a crash or an unexpected status)"
		sed 's/^/  | /' "$err" | head -n 40
		failures+=("$name: exit $rc")
		return
	fi
	if ((rc == 1)) && [[ ! -s $err ]]; then
		echo "FAIL $what: exit 1 with nothing on stderr; stdout was:"
		sed 's/^/  > /' "$W/$name.out" | head -n 10
		failures+=("$name: exit 1, no message on stderr")
		return
	fi
	if ((reject)); then
		if ((rc != 1)); then
			echo "FAIL $what: accepted an image that must be rejected (exit 0)"
			sed 's/^/  > /' "$W/$name.out" | head -n 10
			failures+=("$name: not rejected")
			return
		fi
		if ! grep -qiE -- "$MSG_RE" "$err"; then
			echo "FAIL $what: message does not mention /$MSG_RE/:"
			sed 's/^/  | /' "$err" | head -n 10
			failures+=("$name: message")
			return
		fi
		if [[ $what == qcow2-img* ]] && ! grep -q '^qcow2-img: ' "$err"; then
			echo "FAIL $what: message is not in the form 'qcow2-img: PATH: ...':"
			sed 's/^/  | /' "$err" | head -n 10
			failures+=("$name: message form")
			return
		fi
		echo "ok   $what: rejected: $(head -n 1 "$err")"
		return
	fi
	if ((rc == 1)); then
		echo "ok   $what: exit 1: $(head -n 1 "$err")"
	elif ((MUST_REJECT)); then
		echo "ok   $what: exit 0 (allowed for this command)"
		sed 's/^/  > /' "$W/$name.out" | head -n 20
	elif [[ $kind == data ]]; then
		echo "ok   $what: exit 0 (NOTE: read the damaged image without an error)"
	else
		echo "ok   $what: exit 0"
	fi
}

# -f qcow2: the images are damaged qcow2 images (without it, one whose magic
# is gone would be probed as raw, as qemu-img probes it).
check info meta "$QCOW2_IMG" info -f qcow2 "$rel"
check info-json meta "$QCOW2_IMG" info -f qcow2 --json "$rel"
check map-json meta "$QCOW2_IMG" map -f qcow2 --json "$rel"
check dump-header offline "$QCOW2_IMG" dump --json "$rel" header
check dump-l2 offline "$QCOW2_IMG" dump "$rel" l2
check dump-snapshots offline "$QCOW2_IMG" dump --json "$rel" snapshots
check dump-cluster offline "$QCOW2_IMG" dump --json "$rel" cluster 0
check stats offline "$QCOW2_IMG" stats --json "$rel"
check convert-sync data "$QCOW2_IMG" convert -f qcow2 -i sync -t writeback -O raw "$rel" "$case_name/out.raw"
check convert-uring data "$QCOW2_IMG" convert -f qcow2 -i io_uring -t none -O raw "$rel" "$case_name/out.raw"
check read-sync data "$QCOW2_IO" -f qcow2 -i sync -t writeback -c "read $read_off $read_len" "$rel"
check read-uring data "$QCOW2_IO" -f qcow2 -i io_uring -t none -c "read $read_off $read_len" "$rel"

if ((${#failures[@]})); then
	echo
	echo "FAILED: $case_name (work directory kept: $W)"
	printf '  %s\n' "${failures[@]}"
	exit 1
fi
cd "$base"
rm -rf "$W"
echo "PASS: $case_name"
