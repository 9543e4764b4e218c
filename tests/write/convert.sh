#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# qcow2-img convert -O qcow2 [-c], judged by qemu-img. A 32 MiB source
# (patterns, a run of zeros, incompressible random data, compressible text,
# holes; raw, or qcow2 on a backing file) is converted; then
#   1. qemu-img check: clean; with -c, compressed clusters exist (and the
#      random data was stored as is);
#   2. qemu-img compare with the source: identical (qemu reads what we
#      compressed);
#   3. our random_io round overwrites, zeroes and discards over the
#      compressed clusters (freeing shared host clusters), judged again by
#      check (clean: no leaks) and compare.
#
#   convert.sh CASE | --list
# Environment: QCOW2_IMG and RANDOM_IO (required), QCOW2_TEST_WORKDIR.
# Exit 0 pass, 1 fail (work directory kept), 77 skip.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
# shellcheck source=tests/write/lib.sh
source "$here/lib.sh"

# name | source (raw, chain) | convert arguments
cases() {
	cat <<'EOF'
plain          | raw   | -O qcow2
plain-512      | raw   | -O qcow2 -o cluster_size=512
zlib           | raw   | -O qcow2 -c
zstd           | raw   | -O qcow2 -c -o compression_type=zstd
zlib-4k        | raw   | -O qcow2 -c -o cluster_size=4k -T writeback
zlib-2M        | raw   | -O qcow2 -c -o cluster_size=2M -j 1
zlib-512-rc1   | raw   | -O qcow2 -c -o cluster_size=4k,refcount_bits=1
zlib-rc2       | raw   | -O qcow2 -c -o cluster_size=16k,refcount_bits=2
zlib-v2        | raw   | -O qcow2 -c -o compat=0.10
zstd-rc64      | raw   | -O qcow2 -c -o compression_type=zstd,refcount_bits=64,cluster_size=8k
chain-flatten  | chain | -O qcow2 -c -o cluster_size=16k
EOF
}
if [[ ${1:-} == --list ]]; then cases | cut -d'|' -f1 | tr -d ' '; exit 0; fi
case_name=${1:?usage: convert.sh CASE | --list}
line=$(case_line "$case_name")
source_kind=$(echo "$line" | cut -d'|' -f2 | xargs)
read -r -a cargs <<<"$(echo "$line" | cut -d'|' -f3)"
need qemu-img qemu-io python3
need_random_io
[[ -n ${QCOW2_IMG:-} ]] || { echo "SKIP: QCOW2_IMG is not set"; exit 77; }

work=${QCOW2_TEST_WORKDIR:-$PWD/convert-work}/convert-$case_name
rm -rf "$work"
mkdir -p "$work"
cd "$work"

qemu-img create -q -f raw src.raw 32M
qemu-io -f raw -c 'write -P 0x11 0 6M' -c 'write -P 0x00 7M 1M' \
	-c 'write -P 0x33 12M 3M' -c 'write -P 0x44 31M 1M' src.raw >/dev/null
python3 - <<'PY'
import random
random.seed(5)
with open("src.raw", "r+b") as f:
    f.seek(16 << 20)
    f.write(random.randbytes(3 << 20))           # incompressible
    f.seek(20 << 20)
    words = [b"qcow2 ", b"cluster ", b"refcount ", b"backing ", b"zstd "]
    f.write(b"".join(random.choice(words) for _ in range(600000))[:4 << 20])
PY
src=src.raw
sfmt=(-f raw)
if [[ $source_kind == chain ]]; then
	qemu-img convert -q -f raw -O qcow2 src.raw base.qcow2
	qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 32M
	qemu-io -c 'write -P 0x55 2M 1M' -c 'write -z 12M 1M' top.qcow2 >/dev/null
	qemu-io -f raw -c 'write -P 0x55 2M 1M' -c 'write -z 12M 1M' src.raw >/dev/null
	src=top.qcow2
	sfmt=()
fi

run "$QCOW2_IMG" convert "${sfmt[@]}" "${cargs[@]}" "$src" out.qcow2
qcheck out.qcow2 clean || fail "qemu-img check after convert"
qemu-img compare -q -f qcow2 -F raw out.qcow2 src.raw || fail "converted image differs from its source"
compressed=$(qemu-img check --output=json out.qcow2 | python3 -c '
import json, sys; print(json.load(sys.stdin).get("compressed-clusters", 0))')
echo "compressed clusters: $compressed"
if [[ " ${cargs[*]} " == *" -c "* ]]; then
	((compressed > 0)) || fail "convert -c wrote no compressed cluster"
	# random data does not shrink: stored as is, mapped as plain data
	qemu-img map --output=json out.qcow2 | python3 -c '
import json, sys
for e in json.load(sys.stdin):
    if e["start"] <= (17 << 20) < e["start"] + e["length"] and "offset" not in e:
        sys.exit("random data at 17 MiB is not stored as a plain cluster")' ||
		fail "incompressible clusters"
else
	((compressed == 0)) || fail "convert without -c wrote compressed clusters"
fi
cp src.raw model.raw
run "$RANDOM_IO" --ops 400 --max-len 256k --seed 9 out.qcow2 model.raw ||
	fail "random_io over the converted image"
qcheck out.qcow2 clean || fail "qemu-img check after random_io"
qemu-img compare -q -f qcow2 -F raw out.qcow2 model.raw || fail "compare after random_io"
cd /
rm -rf "$work"
echo "ok convert-$case_name"
