#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# Run a libFuzzer target of tests/fuzz.
#
#   tests/fuzz/run.sh [-B BUILD] TARGET [SECONDS]
#        a fuzzing session of SECONDS (default 600) on one core. BUILD
#        (default build-fuzz at the top of the tree) is configured with
#        CC=clang -Dfuzz=true and built first when needed. The corpus grows
#        in BUILD/tests/fuzz/session/TARGET/corpus (kept between sessions;
#        the committed seeds in tests/fuzz/corpus/TARGET are read, never
#        written); crashes, leaks, timeouts and out-of-memory inputs land in
#        BUILD/tests/fuzz/session/TARGET/artifacts/. Extra libFuzzer options
#        go in FUZZ_ARGS (e.g. FUZZ_ARGS='-jobs=2 -workers=2').
#   tests/fuzz/run.sh --list
#        the targets: header, image, l2_entry
#   tests/fuzz/run.sh --test TARGET EXE SEEDS WORK
#        what meson test runs (suite fuzz): every seed once, then a bounded
#        number of mutations with a fixed random seed; fails on any crash,
#        sanitizer report, leak, timeout or out-of-memory. WORK is wiped
#        first and removed when the run passes.
#
# A crash found by a session: minimise it, and commit it as a seed named
# after the bug (it is then run by every meson test):
#   BUILD/tests/fuzz/fuzz-TARGET -minimize_crash=1 -runs=20000 \
#       -exact_artifact_path=tests/fuzz/corpus/TARGET/WHAT-IT-WAS ARTIFACT
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
root=$(cd "$here/../.." && pwd -P)
targets=(header image l2_entry)

usage() {
	sed -n '4,28p' "$0" | sed 's/^# \{0,1\}//'
}

# Per target: the largest input libFuzzer makes (-max_len) and the number
# of mutations meson test runs: 10-15 s each on a quiet core of the
# development VM (ASan + UBSan), 15-45 s when other jobs share its two
# cores; -max_total_time=120 caps a run that is slower still.
max_len() {
	case $1 in
	header) echo 4096 ;;
	image) echo 131072 ;;
	l2_entry) echo 4096 ;;
	esac
}
test_runs() {
	case $1 in
	header) echo 500000 ;;
	image) echo 10000 ;;
	l2_entry) echo 100000 ;;
	esac
}

known_target() {
	local t
	for t in "${targets[@]}"; do
		[[ $t == "$1" ]] && return 0
	done
	echo "run.sh: unknown target '$1' (targets: ${targets[*]})" >&2
	return 1
}

# Options common to both modes: sanitizer reports abort; exit status 1 for
# every kind of failure (libFuzzer's default 77 would read as "skipped" to
# meson).
common_opts() {
	echo "-max_len=$(max_len "$1") -timeout=20 -rss_limit_mb=2048" \
		"-error_exitcode=1 -timeout_exitcode=1 -print_final_stats=1"
}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}

run_test() {
	local target=$1 exe=$2 seeds=$3 work=$4 rc
	known_target "$target" || return 1
	[[ -x $exe ]] || { echo "run.sh: $exe is not an executable" >&2; return 1; }
	[[ -d $seeds ]] || { echo "run.sh: no seed directory $seeds" >&2; return 1; }
	rm -rf "$work"
	mkdir -p "$work/corpus" "$work/artifacts" || return 1
	echo "fuzz-$target: $(find "$seeds" -type f | wc -l) seeds, then $(test_runs "$target") runs"
	# New inputs go to the first directory (scratch), never to the seeds.
	# shellcheck disable=SC2046
	"$exe" $(common_opts "$target") -runs="$(test_runs "$target")" -seed=1 \
		-max_total_time=120 -artifact_prefix="$work/artifacts/" \
		"$work/corpus" "$seeds" >"$work/log" 2>&1
	rc=$?
	if ((rc != 0)) || grep -qE 'ERROR: (libFuzzer|[A-Za-z]*Sanitizer)|runtime error:' "$work/log"; then
		echo "FAIL: fuzz-$target exited with status $rc; the end of its log ($work/log):"
		tail -n 60 "$work/log"
		echo "artifacts (the inputs that failed): $work/artifacts/"
		ls -l "$work/artifacts/"
		return 1
	fi
	grep -E '^(Done|stat::)|INITED|DONE' "$work/log"
	rm -rf "$work"
	return 0
}

run_session() {
	local build=$1 target=$2 secs=$3 exe work rc
	known_target "$target" || return 2
	if [[ ! -f $build/meson-private/coredata.dat ]]; then
		CC=clang meson setup "$build" -Dfuzz=true || return 1
	fi
	ninja -C "$build" -j1 "tests/fuzz/fuzz-$target" || return 1
	exe=$build/tests/fuzz/fuzz-$target
	work=$build/tests/fuzz/session/$target
	mkdir -p "$work/corpus" "$work/artifacts" || return 1
	echo "fuzz-$target for $secs s; corpus $work/corpus, artifacts $work/artifacts/"
	# shellcheck disable=SC2046,SC2086
	"$exe" $(common_opts "$target") -max_total_time="$secs" \
		-artifact_prefix="$work/artifacts/" ${FUZZ_ARGS:-} \
		"$work/corpus" "$root/tests/fuzz/corpus/$target"
	rc=$?
	if [[ -n $(ls -A "$work/artifacts") ]]; then
		echo "artifacts:"
		ls -l "$work/artifacts/"
		echo "reproduce: $exe ARTIFACT; minimise and keep as a regression seed:"
		echo "  $exe -minimize_crash=1 -runs=20000 \\"
		echo "    -exact_artifact_path=$root/tests/fuzz/corpus/$target/WHAT-IT-WAS ARTIFACT"
	fi
	return "$rc"
}

build=$root/build-fuzz
case ${1:-} in
--list)
	printf '%s\n' "${targets[@]}"
	exit 0
	;;
--test)
	(($# == 5)) || { usage >&2; exit 2; }
	run_test "$2" "$3" "$4" "$5"
	exit $?
	;;
-h | --help)
	usage
	exit 0
	;;
-B)
	(($# >= 2)) || { usage >&2; exit 2; }
	build=$2
	shift 2
	;;
esac
(($# == 1 || $# == 2)) || { usage >&2; exit 2; }
secs=${2:-600}
[[ $secs =~ ^[0-9]+$ ]] || { echo "run.sh: SECONDS must be a number" >&2; exit 2; }
run_session "$build" "$1" "$secs"
