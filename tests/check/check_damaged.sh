#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# qcow2-img check on damaged images (damage.py patches an image qemu-img
# made, with a persistent bitmap): our verdict must be qemu-img check's
# (exit status, number of corruptions and leaks), under ASan too, never a
# crash. Repairable cases (leaks, refcounts too low, a cluster referenced
# twice, COPIED flags) are then repaired with -r all (or -r leaks where
# only leaks exist): afterwards both tools find the image clean, the guest
# data reads as it did, and the bitmap is still valid. The others we must
# refuse to repair, leaving the file unchanged. Which is which follows
# qemu-img: its -r all, on a copy, must fix the first kind and not the
# second.
#
#   check_damaged.sh CASE | --list
# Environment: QCOW2_IMG (required), QCOW2_TEST_WORKDIR.
# Exit 0 pass, 1 fail (work directory kept), 77 skip.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
# shellcheck source=tests/write/lib.sh
source "$here/../write/lib.sh"

# name | repair: leaks, all, or none (ours refuses; the verdict is checked)
cases() {
	cat <<'EOF'
refcount-too-high   | all
orphan-clusters     | leaks
refcount-too-low    | all
double-reference    | all
copied-missing      | all
marked-corrupt      | all
l2-past-eof         | none
l1-unaligned        | none
l2-over-refblock    | none
truncated           | none
compressed-past-eof | none
EOF
}
if [[ ${1:-} == --list ]]; then cases | cut -d'|' -f1 | tr -d ' '; exit 0; fi
case_name=${1:?usage: check_damaged.sh CASE | --list}
line=$(case_line "$case_name")
repair=$(echo "$line" | cut -d'|' -f2 | xargs)
need qemu-img qemu-io python3
[[ -x ${QCOW2_IMG:-} ]] || { echo "FAIL: QCOW2_IMG must name qcow2-img"; exit 1; }

work=${QCOW2_TEST_WORKDIR:-$PWD/check-work}/damaged-$case_name
rm -rf "$work"
mkdir -p "$work"
cd "$work"
SAN_RE='ERROR: [A-Za-z]*Sanitizer|runtime error:|SUMMARY: [A-Za-z]*Sanitizer'

qemu-img create -q -f qcow2 img.qcow2 16M
# (truncated cuts the file's last cluster: the data at 8 MiB, not the
# bitmap directory qemu-img would put there)
[[ $case_name == truncated ]] || qemu-img bitmap --add img.qcow2 b0
qemu-io -c 'write -P 0x11 0 128k' -c 'write -P 0x22 1M 64k' \
	-c 'write -c -P 0x33 4M 64k' -c 'write -P 0x44 8M 64k' img.qcow2 >/dev/null
qemu-img convert -q -O raw img.qcow2 before.raw
python3 "$here/damage.py" "$case_name" img.qcow2
# What the guest reads once damaged (a double reference changes it): a
# repair must keep exactly that. A truncated file cannot be read.
qemu-img convert -q -O raw img.qcow2 damaged.raw 2>/dev/null || rm -f damaged.raw

# qemu-img's -r all on a copy: the case's class must be qemu-img's.
cp img.qcow2 qemu-copy.qcow2
qrc=0
qemu-img check -q -r all qemu-copy.qcow2 >/dev/null 2>&1 || qrc=$?
if [[ $repair == none ]]; then
	((qrc != 0)) || fail "qemu-img check -r all repairs this case; so must we"
else
	((qrc == 0)) || fail "qemu-img check -r all cannot repair this case (exit $qrc)"
fi
rm -f qemu-copy.qcow2

# verdict KIND: "exit corruptions leaks" of a tool's check
verdict() {
	local rc=0 out
	if [[ $1 == ours ]]; then
		out=$("$QCOW2_IMG" check --json img.qcow2 2>ours.err) || rc=$?
		if grep -qE "$SAN_RE" ours.err; then
			cat ours.err
			fail "sanitizer report from qcow2-img check"
		fi
		((rc < 128)) || fail "qcow2-img check died of signal $((rc - 128))"
	else
		out=$(qemu-img check --output=json img.qcow2 2>/dev/null) || rc=$?
	fi
	python3 -c '
import json, sys
t = sys.argv[2]
try:
    j = json.loads(t[t.index("{"):])
except Exception:
    j = {}
print(sys.argv[1], j.get("corruptions", 0), j.get("leaks", 0))' "$rc" "$out"
}
ours=$(verdict ours)
ref=$(verdict qemu)
echo "qcow2-img check: exit/corruptions/leaks $ours; qemu-img check: $ref"
"$QCOW2_IMG" check img.qcow2 || true
# Both must classify alike: same exit status, corruptions found by both or
# neither; where the damage is to refcounts only, the same counts. (Past a
# damaged table the tools differ: qemu-img reads an unaligned L2 table at
# its odd offset and counts what it finds there; we report the table and
# skip it, so what it mapped shows up as leaks.)
read -r orc oc ol <<<"$ours"
read -r qrc qc ql <<<"$ref"
((orc == qrc)) || fail "exit status: ours $orc, qemu-img $qrc"
(((oc > 0) == (qc > 0))) || fail "corruptions: ours $oc, qemu-img $qc"
if [[ $repair != none ]]; then
	((oc == qc && ol == ql)) || fail "counts: ours $oc/$ol, qemu-img $qc/$ql (corruptions/leaks)"
fi

case $repair in
leaks | all)
	rc=0
	"$QCOW2_IMG" check -r "$repair" img.qcow2 >repair.out 2>&1 || rc=$?
	cat repair.out
	grep -qE "$SAN_RE" repair.out && fail "sanitizer report during the repair"
	((rc == 0)) || fail "qcow2-img check -r $repair exit $rc (expected a clean image)"
	grep -q "repaired" repair.out || fail "the repair does not say what it fixed"
	qrc=0
	qemu-img check img.qcow2 || qrc=$?
	((qrc == 0)) || fail "qemu-img check after our repair: exit $qrc"
	qemu-img compare -q -f qcow2 -F raw img.qcow2 damaged.raw ||
		fail "the guest data changed in the repair"
	qemu-img info --output=json img.qcow2 >info.json
	python3 -c '
import json, sys
b = json.load(open("info.json"))["format-specific"]["data"].get("bitmaps", [])
assert [x["name"] for x in b] == ["b0"], b
assert "in-use" not in b[0]["flags"], b[0]
' || fail "the bitmap did not survive the repair"
	python3 -c '
import json
assert not json.load(open("info.json"))["format-specific"]["data"].get("corrupt")
' || fail "the image is still marked corrupt"
	;;
none)
	# Not repairable by a refcount rebuild: -r all says so and changes
	# nothing.
	sum=$(md5sum <img.qcow2)
	rc=0
	"$QCOW2_IMG" check -r all img.qcow2 >repair.out 2>&1 || rc=$?
	cat repair.out
	grep -qE "$SAN_RE" repair.out && fail "sanitizer report during the repair"
	((rc != 0)) || fail "qcow2-img check -r all claims a clean image"
	[[ $(md5sum <img.qcow2) == "$sum" ]] || fail "a refused repair changed the file"
	;;
esac
cd /
rm -rf "$work"
echo "ok damaged-$case_name"
