#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# Every public header (libqcow2's, ipc's, libqcow2-client's) stands alone
# and can be included from C (C11, -Wall -Wextra -Werror, nothing else
# before it) and from C++ (its extern "C" guards), and no name in them is
# both a function and a struct. ipc/include/qcow2_ipc.h is C only for
# now: its ring layout uses C11 _Atomic, which C++ cannot name.
#
#   headers.sh SOURCE_ROOT
# Exit 0 pass, 1 fail, 77 a compiler is missing.
set -euo pipefail
root=${1:?usage: headers.sh SOURCE_ROOT}
for t in gcc g++; do
	command -v "$t" >/dev/null 2>&1 || { echo "SKIP: $t is not installed"; exit 77; }
done
cd "$root"
err=$(mktemp)
trap 'rm -f "$err"' EXIT
rc=0
for h in qcow2/include/*.h ipc/include/*.h client/include/*.h; do
	name=$(basename "$h")
	if ! echo "#include \"$name\"" | gcc -std=c11 -Wall -Wextra -Werror -fsyntax-only \
		-I qcow2/include -I ipc/include -I client/include -x c - 2>"$err"; then
		echo "FAIL: $h does not compile alone as C11:"; cat "$err"; rc=1
	fi
	if [[ $h == ipc/* ]]; then
		echo "ok   $h (C only)"
		continue
	fi
	if ! echo "#include \"$name\"" | g++ -std=c++17 -Wall -Wextra -Werror -fsyntax-only \
		-I qcow2/include -I ipc/include -I client/include -x c++ - 2>"$err"; then
		echo "FAIL: $h does not compile as C++:"; cat "$err"; rc=1
	fi
	grep -q 'extern "C"' "$h" || { echo "FAIL: $h has no extern \"C\" guard"; rc=1; }
	echo "ok   $h"
done
# No name is both a function and a struct tag (qcow2_ipc_layout was both):
# in C they do not clash, but a reader and other languages' bindings trip.
for h in qcow2/include/*.h ipc/include/*.h client/include/*.h; do
	both=$(comm -12 <(grep -oE 'struct [a-z0-9_]+' "$h" | awk '{print $2}' | sort -u) \
		<(grep -oE '\b[a-z0-9_]+\(' "$h" | tr -d '(' | sort -u))
	if [[ -n $both ]]; then
		echo "FAIL: $h names both a function and a struct: $both"; rc=1
	fi
done
exit "$rc"
