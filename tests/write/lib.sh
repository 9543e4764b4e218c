# SPDX-License-Identifier: MIT OR Apache-2.0
# Helpers shared by the write tests (sourced, not run).

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
}

# asan_report FILE: true when FILE holds a sanitizer report.
asan_report() {
	grep -q -e 'ERROR: AddressSanitizer' -e 'ERROR: LeakSanitizer' \
		-e 'runtime error:' -e 'SUMMARY: UndefinedBehaviorSanitizer' "$1"
}
