#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# Static analysis of the product code (qcow2/, ipc/, tools/, and service/
# and client/ as they grow) with cppcheck: the "warning" and "portability"
# checks (null dereferences after a check, leaks on realloc, uninitialised
# or out-of-bounds use, format mismatches, ...), no style checks. Every
# finding fails the test; a false positive is silenced where it stands with
# a "// cppcheck-suppress ID" comment that says why.
#
#   cppcheck.sh SOURCE_ROOT
# Exit 0 clean, 1 findings, 77 cppcheck missing.
set -euo pipefail
root=${1:?usage: cppcheck.sh SOURCE_ROOT}
command -v cppcheck >/dev/null 2>&1 || { echo "SKIP: cppcheck is not installed"; exit 77; }
cd "$root"
dirs=()
for d in qcow2 ipc tools service client; do
	[[ -d $d ]] && dirs+=("$d")
done
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
exec cppcheck -q --enable=warning,portability --error-exitcode=1 --inline-suppr \
	--std=c11 -D_GNU_SOURCE --include="$here/cppcheck_macros.h" \
	-I qcow2/include -I qcow2 -I ipc/include -I ipc -I client/include -I client -I tools \
	"${dirs[@]}"
