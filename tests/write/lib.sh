# SPDX-License-Identifier: MIT OR Apache-2.0
# Helpers shared by the write tests (sourced, not run).

# case_line CASE: the row of the script's `cases` table (fields separated
# by |, the first the case's name) named CASE; exit 1 if there is none.
case_line() {
	local row
	row=$(cases | awk -F'|' -v c="$1" '{n=$1; gsub(/[ \t]/,"",n); if (n==c) print}')
	[[ -n $row ]] || { echo "${0##*/}: unknown case $1" >&2; exit 1; }
	echo "$row"
}

# fail MESSAGE: the test fails; its work directory ($work) is kept.
fail() {
	echo "FAIL: $*" >&2
	echo "(work directory kept: ${work:-?})" >&2
	exit 1
}

# run CMD...: show the command, then run it.
run() { echo "+ $*"; "$@"; }

# need TOOL...: exit 77 (skip) with a message when a tool is missing.
need() {
	local t
	for t in "$@"; do
		command -v "$t" >/dev/null 2>&1 || {
			echo "SKIP: $t is not installed"
			exit 77
		}
	done
}

# need_random_io: RANDOM_IO must name the driver.
need_random_io() {
	if [[ -z ${RANDOM_IO:-} ]]; then
		echo "SKIP: RANDOM_IO is not set (path of the random_io driver)"
		exit 77
	fi
	[[ -x $RANDOM_IO ]] || { echo "FAIL: RANDOM_IO=$RANDOM_IO is not executable" >&2; exit 1; }
}

# qcheck IMAGE clean|consistent: run `qemu-img check --output=json` and judge
# it. clean: no corruption, no leak, no check error (a cleanly closed image);
# consistent: leaks allowed. Prints the verdict; returns 0 or 1.
qcheck() {
	local img=$1 mode=$2 out rc=0
	out=$(qemu-img check --output=json "$img" 2>&1) || rc=$?
	python3 -c '
import json, sys
mode, rc, text = sys.argv[1], int(sys.argv[2]), sys.argv[3]
try:
    j = json.loads(text[text.index("{"):])
except Exception:
    print(f"qemu-img check gave no JSON (exit {rc}): {text.strip()}")
    sys.exit(1)
c, l, e = j.get("corruptions", 0), j.get("leaks", 0), j.get("check-errors", 0)
bad = c or e or rc not in (0, 3) or (mode == "clean" and (l or rc != 0))
print(f"qemu-img check: corruptions {c}, leaks {l}, check-errors {e}, exit {rc}"
      + (" -> FAIL" if bad else ""))
sys.exit(1 if bad else 0)
' "$mode" "$rc" "$out" || { echo "$out"; return 1; }
	[[ -n ${QCOW2_IMG:-} ]] || return 0
	# qcow2-img check must count what qemu-img check counts.
	local ours orc=0
	ours=$("$QCOW2_IMG" check --json "$img" 2>&1) || orc=$?
	python3 -c '
import json, sys
rc, orc, text, otext = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
ref = json.loads(text[text.index("{"):])
try:
    ours = json.loads(otext)
except Exception:
    print(f"qcow2-img check gave no JSON (exit {orc}): {otext.strip()[:500]}")
    sys.exit(1)
keys = ["corruptions", "leaks", "check-errors", "allocated-clusters",
        "fragmented-clusters", "compressed-clusters", "image-end-offset",
        "total-clusters"]
bad = [f"{k}: ours {ours.get(k, 0)}, qemu-img {ref.get(k, 0)}"
       for k in keys if ours.get(k, 0) != ref.get(k, 0)]
if orc != rc:
    bad.append(f"exit status: ours {orc}, qemu-img {rc}")
if bad:
    print("qcow2-img check disagrees with qemu-img check: " + "; ".join(bad))
    sys.exit(1)
' "$rc" "$orc" "$out" "$ours"
}

# asan_report FILE: true when FILE holds a sanitizer report.
asan_report() {
	grep -q -e 'ERROR: AddressSanitizer' -e 'ERROR: LeakSanitizer' \
		-e 'runtime error:' -e 'SUMMARY: UndefinedBehaviorSanitizer' "$1"
}
