# SPDX-License-Identifier: MIT OR Apache-2.0
# shellcheck shell=bash
# Helpers shared by the benchmark scripts. Source it.

# require_tools TOOL...: every tool must be runnable.
require_tools() {
	local t
	for t in "$@"; do
		command -v "$t" >/dev/null 2>&1 || {
			echo "${0##*/}: $t not found (build first: meson setup build && ninja -C build)" >&2
			exit 1
		}
	done
}

# median VALUE...: the median, as an integer.
median() {
	python3 -c 'import sys,statistics; print(int(statistics.median(float(x) for x in sys.argv[1:])))' "$@"
}

# ratio A B: A/B with two decimals.
ratio() {
	python3 -c "print(f'{$1/$2:.2f}')"
}

# measure COMMAND...: run it $runs times; print the median of its outputs.
measure() {
	local vals=() v
	for _ in $(seq "$runs"); do
		v=$("$@")
		vals+=("$v")
	done
	median "${vals[@]}"
}

# interleave CASE...: run the functions case_CASE once per round, for
# $runs rounds, the cases in turn within each round (the disk's speed
# drifts over minutes: every case sees the same drift); set RESULT[CASE] to
# the median of its outputs. RESULT must be declared: declare -A RESULT.
interleave() {
	local -A vals=()
	local c r
	for r in $(seq "$runs"); do
		for c in "$@"; do
			vals[$c]+=" $("case_$c")"
		done
		echo "   round $r/$runs done" >&2
	done
	for c in "$@"; do
		# shellcheck disable=SC2086
		RESULT[$c]=$(median ${vals[$c]})
	done
}

# machine_line: what the figures were measured on.
machine_line() {
	echo "== machine: $(nproc) cores, $(uname -r), $(findmnt -n -o FSTYPE -T "$1") on $(findmnt -n -o SOURCE -T "$1")"
}
