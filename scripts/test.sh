#!/usr/bin/env bash
# The test command of the project.
#
#   ./scripts/test.sh           install missing Debian packages, build
#                               build-test (debugoptimized) and build-asan
#                               (ASan + UBSan), run every suite in both; then
#                               build-tsan (clang, ThreadSanitizer) runs the
#                               service's suite over a TSan qcow2d, and
#                               build-fuzz (clang, libFuzzer, ASan + UBSan)
#                               runs the fuzz targets over their seeds and a
#                               bounded number of mutations (suite fuzz only)
#   ./scripts/test.sh --quick   the fast tier: build-test only, every
#                               suite but the slow ones (crash: simulated
#                               power loss; faults: IO error sweeps)
#
# The last line of output is always "N passed, N failed, N skipped" (all
# builds summed; FAIL, TIMEOUT, ERROR and UNEXPECTEDPASS count as failed, and
# so does a build that fails to configure or compile, or a meson test run that
# produces no results). The exit status is 0 only if nothing failed.
set -uo pipefail

usage() {
	sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
}

quick=0
for arg in "$@"; do
	case $arg in
	--quick) quick=1 ;;
	-h | --help)
		usage
		exit 0
		;;
	*)
		echo "test.sh: unknown argument: $arg" >&2
		usage >&2
		exit 2
		;;
	esac
done

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
root=$(qcow2d_root)
cd "$root" || exit 2

# Failures that are not meson test results (deps, configure, build, no log).
extra_failures=0
extra_notes=()

section "dependencies"
if ! ensure_deps; then
	echo "test.sh: installing dependencies failed; continuing with what is there" >&2
	extra_failures=$((extra_failures + 1))
	extra_notes+=("dependency installation failed")
fi

builds=(build-test)
((quick)) || builds+=(build-asan build-tsan build-fuzz)

setup_args() {
	case $1 in
	build-test) echo "--buildtype=debugoptimized -Dwerror=true" ;;
	build-asan) echo "-Db_sanitize=address,undefined -Db_lundef=false --buildtype=debug -Dwerror=true" ;;
	build-tsan) echo "-Db_sanitize=thread -Db_lundef=false --buildtype=debugoptimized -Dwerror=true" ;;
	# -Dfuzz=true adds -fsanitize=fuzzer-no-link,address,undefined itself.
	build-fuzz) echo "-Dfuzz=true --buildtype=debugoptimized -Dwerror=true" ;;
	esac
}

# What ninja builds: everything, except in build-fuzz (its only suite is
# fuzz): the fuzz targets and what they link; and in build-tsan (its only
# suite is service): the service, the tools its tests drive, and the client
# library's tests (two queues on two threads through libqcow2-client).
build_targets() {
	[[ $1 == build-fuzz ]] && tests/fuzz/run.sh --list | sed 's|^|tests/fuzz/fuzz-|'
	[[ $1 == build-tsan ]] && echo service/qcow2d tests/queue/queue_io \
		tools/qcow2ctl tools/qcow2-img tests/client/client_io
	return 0
}

# build-fuzz and build-tsan are clang builds (CC matters to their first
# configure only).
configure() {
	# shellcheck disable=SC2046
	if [[ $1 == build-fuzz || $1 == build-tsan ]]; then
		CC=clang meson_setup "$1" $(setup_args "$1")
	else
		meson_setup "$1" $(setup_args "$1")
	fi
}

ran_builds=()
for b in "${builds[@]}"; do
	section "configure $b"
	if ! configure "$b"; then
		extra_failures=$((extra_failures + 1))
		extra_notes+=("$b: meson setup failed")
		continue
	fi
	section "build $b"
	# shellcheck disable=SC2046
	if ! ninja -C "$b" -j2 $(build_targets "$b"); then
		extra_failures=$((extra_failures + 1))
		extra_notes+=("$b: build failed")
		continue
	fi
	ran_builds+=("$b")
done

for b in "${ran_builds[@]}"; do
	section "test $b"
	rm -f "$b/meson-logs/testlog.json"
	if [[ $b == build-asan ]]; then
		# Sanitizer reports must fail the test: abort on the first error
		# (a signal, never a plain exit status 1 that a test could accept).
		ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:halt_on_error=1:print_summary=1 \
			UBSAN_OPTIONS=halt_on_error=1:abort_on_error=1:print_stacktrace=1:print_summary=1 \
			meson test -C "$b" --print-errorlogs --num-processes 2
	elif [[ $b == build-tsan ]]; then
		# Only the service suite; a data race report fails qcow2d's exit
		# status, which the tests check.
		TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
			meson test -C "$b" --suite service --no-rebuild --print-errorlogs --num-processes 2
	elif [[ $b == build-fuzz ]]; then
		# Only the fuzz suite (tests/fuzz/run.sh --test: the seeds, then
		# bounded mutations); built above, so no rebuild of the rest.
		meson test -C "$b" --suite fuzz --no-rebuild --print-errorlogs --num-processes 2
	elif ((quick)); then
		meson test -C "$b" --no-suite crash --no-suite faults \
			--print-errorlogs --num-processes 2
	else
		meson test -C "$b" --print-errorlogs --num-processes 2
	fi
	echo "meson test -C $b: exit status $?"
	if [[ ! -s $b/meson-logs/testlog.json ]]; then
		extra_failures=$((extra_failures + 1))
		extra_notes+=("$b: meson test produced no results (see output above)")
	fi
done

section "summary"
logs=()
for b in "${ran_builds[@]}"; do
	[[ -s $b/meson-logs/testlog.json ]] && logs+=("$b")
done

python3 - "$extra_failures" "${#extra_notes[@]}" "${extra_notes[@]}" "${logs[@]}" <<'EOF'
import json
import sys

extra = int(sys.argv[1])
nnotes = int(sys.argv[2])
notes = sys.argv[3:3 + nnotes]
builds = sys.argv[3 + nnotes:]

FAILED = {"FAIL", "TIMEOUT", "ERROR", "UNEXPECTEDPASS"}
PASSED = {"OK", "EXPECTEDFAIL"}
SKIPPED = {"SKIP"}

tot = {"pass": 0, "fail": 0, "skip": 0}
failures = []
for b in builds:
    per_suite = {}
    with open(f"{b}/meson-logs/testlog.json") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            t = json.loads(line)
            # meson 1.0 names tests "project:suite / name" and has no
            # "suite" key; newer versions may add one.
            name = t.get("name", "?")
            suites = t.get("suite") or ([name.split(" / ", 1)[0]] if " / " in name else ["(none)"])
            suite = ",".join(s.split(":", 1)[-1] for s in suites)
            res = t.get("result", "ERROR")
            c = per_suite.setdefault(suite, {"pass": 0, "fail": 0, "skip": 0})
            if res in PASSED:
                k = "pass"
            elif res in SKIPPED:
                k = "skip"
            else:
                k = "fail"
                failures.append(f"{b}: {name} [{res}]")
            c[k] += 1
            tot[k] += 1
    if not per_suite:
        extra += 1
        notes.append(f"{b}: no tests were registered")
    print(f"{b}:")
    print(f"  {'suite':<16} {'passed':>7} {'failed':>7} {'skipped':>8}")
    for s in sorted(per_suite):
        c = per_suite[s]
        print(f"  {s:<16} {c['pass']:>7} {c['fail']:>7} {c['skip']:>8}")

if failures:
    print("failed tests:")
    for f in failures:
        print("  " + f)
if notes:
    print("other failures:")
    for n in notes:
        print("  " + n)
fail = tot["fail"] + extra
print(f"{tot['pass']} passed, {fail} failed, {tot['skip']} skipped")
sys.exit(1 if fail else 0)
EOF
rc=$?
if ((rc > 1)); then
	echo "test.sh: summarising the results failed (status $rc)" >&2
	echo "0 passed, $((extra_failures + 1)) failed, 0 skipped"
	exit 1
fi
exit "$rc"
