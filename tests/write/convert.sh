#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# qcow2-img convert -O qcow2 [-c], judged by qemu-img. A 32 MiB source
# (patterns, a run of zeros, incompressible random data, compressible text,
# holes; raw, or qcow2 on a backing file, or a sparse chain: a qcow2 image
# over a qcow2 image over a shorter raw file, with zero clusters, zeros
# written as data, compressed clusters and holes; or, long, the raw file
# grown to 100 MiB with more data, so that several reader threads (-j) each
# read their own 32 MiB segments) is converted; then
#   1. qemu-img check: clean; with -c, compressed clusters exist (and the
#      random data was stored as is);
#   2. qemu-img compare with the source: identical (qemu reads what we
#      compressed);
#   3. our random_io round overwrites, zeroes and discards over the
#      compressed clusters (freeing shared host clusters), judged again by
#      check (clean: no leaks) and compare.
# -O raw: the output must equal qemu-img convert -O raw's byte for byte,
# and be at least as sparse: no 4 KiB block allocated where qemu-img's
# output has a hole (with -S 0, every block allocated, as qemu-img's).
# truncated: the long source as a qcow2 image cut short, so that reading
# its last clusters fails (-S 0: no block status, which would fail first):
# convert must exit 1 with a read error that names the source and the
# offset, and not hang.
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
sparse-raw     | sparse | -O raw
sparse-raw-S0  | sparse | -O raw -S 0 -m 3 -j 1 -T writeback
sparse-raw-S64k| sparse | -O raw -S 64k -m 2 -j 3 -T none
sparse-qcow2   | sparse | -O qcow2 -m 16 -W -T none
sparse-qcow2-S0| sparse | -O qcow2 -S 0 -o cluster_size=4k
readers-3      | long  | -O qcow2 -j 3 -m 5
readers-W-sync | long  | -O qcow2 -j 2 -m 3 -W -S 0 -i sync
readers-zstd   | long  | -O qcow2 -c -o compression_type=zstd -m 16
read-error     | truncated | -O qcow2 -S 0 -j 2
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
if [[ $source_kind == long || $source_kind == truncated ]]; then
	qemu-img resize -q -f raw src.raw 100M
	qemu-io -f raw -c 'write -P 0x71 33M 5M' -c 'write -P 0x00 40M 2M' \
		-c 'write -P 0x72 63M 2M' -c 'write -P 0x73 70M 20M' -c 'write -P 0x74 99M 1M' \
		src.raw >/dev/null
fi
if [[ $source_kind == truncated ]]; then
	qemu-img convert -q -f raw -O qcow2 src.raw trunc.qcow2
	truncate -s -8M trunc.qcow2   # its last 8 MiB of clusters
	set +e
	"$QCOW2_IMG" convert -f qcow2 "${cargs[@]}" trunc.qcow2 out.qcow2 2>err.txt
	rc=$?
	set -e
	cat err.txt
	((rc == 1)) || fail "convert of a truncated source: exit $rc, expected 1"
	grep -qE '^qcow2-img: trunc\.qcow2: read error at offset [0-9]+: ' err.txt ||
		fail "no read error naming the source and the offset"
	cd /
	rm -rf "$work"
	echo "ok convert-$case_name"
	exit 0
fi
if [[ $source_kind == chain ]]; then
	qemu-img convert -q -f raw -O qcow2 src.raw base.qcow2
	qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 32M
	qemu-io -c 'write -P 0x55 2M 1M' -c 'write -z 12M 1M' top.qcow2 >/dev/null
	qemu-io -f raw -c 'write -P 0x55 2M 1M' -c 'write -z 12M 1M' src.raw >/dev/null
	src=top.qcow2
	sfmt=()
elif [[ $source_kind == sparse ]]; then
	# raw base (20M, shorter than the disk) <- mid.qcow2 (24M) <- top.qcow2
	head -c 20M src.raw >base.raw
	qemu-img create -q -f qcow2 -o cluster_size=64k -b base.raw -F raw mid.qcow2 24M
	qemu-io -c 'write -z 1M 1M' -c 'write -P 0x00 3M 512k' -c 'write -c -P 0x66 5M 64k' \
		-c 'write -P 0x67 22M 1M' -c 'write -z -u 16M 128k' mid.qcow2 >/dev/null
	qemu-img create -q -f qcow2 -o cluster_size=64k -b mid.qcow2 -F qcow2 top.qcow2 32M
	qemu-io -c 'write -P 0x55 2M 4k' -c 'write -P 0x00 7M 64k' -c 'write -z 12M 1M' \
		-c 'write -P 0x56 26M 8k' -c 'discard 31M 1M' top.qcow2 >/dev/null
	qemu-img convert -f qcow2 -O raw top.qcow2 src.raw  # the model
	src=top.qcow2
	sfmt=()
fi

if [[ " ${cargs[*]} " == *" -O raw "* ]]; then
	run "$QCOW2_IMG" convert "${sfmt[@]}" "${cargs[@]}" "$src" out.raw
	sparse=()
	for ((i = 0; i + 1 < ${#cargs[@]}; i++)); do
		[[ ${cargs[i]} == -S ]] && sparse=(-S "${cargs[i + 1]}")
	done
	qemu-img convert "${sparse[@]}" "${sfmt[@]}" -O raw "$src" ref.raw
	cmp out.raw ref.raw || fail "qcow2-img convert -O raw differs from qemu-img convert -O raw"
	python3 - out.raw ref.raw <<'PY' || fail "the output is less sparse than qemu-img's"
import os, sys
def blocks(path):
    """The 4 KiB blocks of path that hold data (SEEK_DATA/SEEK_HOLE)."""
    fd = os.open(path, os.O_RDONLY)
    size, off, out = os.fstat(fd).st_size, 0, set()
    while off < size:
        try:
            d = os.lseek(fd, off, os.SEEK_DATA)
        except OSError:
            break
        h = os.lseek(fd, d, os.SEEK_HOLE)
        out.update(range(d // 4096, (h + 4095) // 4096))
        off = h
    return out
ours, ref = blocks(sys.argv[1]), blocks(sys.argv[2])
extra = sorted(ours - ref)
print(f"allocated 4 KiB blocks: ours {len(ours)}, qemu-img {len(ref)}")
if extra:
    sys.exit(f"blocks allocated in ours, holes in qemu-img's: {extra[:10]}")
PY
	cd /
	rm -rf "$work"
	echo "ok convert-$case_name"
	exit 0
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
