#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# Regenerate the seed corpora of the fuzz targets (tests/fuzz/corpus/):
#
#   image/qemu-*     small images made by qemu-img/qemu-io, one per variant:
#                    v2/v3, cluster sizes 512 B to 16 KiB, refcount widths 1
#                    to 64, extended L2, zlib and zstd compressed clusters,
#                    zero clusters, discards, backing file names (qcow2, raw),
#                    an external data file (raw or not), internal snapshots,
#                    persistent bitmaps, lazy refcounts (clean and dirty),
#                    preallocation, a large sparse disk, an odd disk size
#   image/bad-*      hostile images from tests/bad/make_bad.py (its cases that
#                    damage more than the header), on small base images with
#                    the layout make_bad.py expects
#   header/*         the first 4 KiB (or cluster) of every image above, of every
#                    make_bad.py case, and of images with 32 KiB to 2 MiB
#                    clusters (too big to be image seeds)
#   l2_entry/*       the first L2 table of each image seed, in that target's
#                    input format, and hand-made entries of every kind
#
# Seeds named regress-* are inputs that once crashed (kept as regression
# tests; never touched here). The generated seeds are committed, so neither
# the tests nor CI run this script; run it after changing it, or make_bad.py,
# and commit the result. Needs qemu-img, qemu-io and python3.
#
#   tests/fuzz/make_corpus.sh [OUTDIR]      default: tests/fuzz/corpus
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
out=${1:-$here/corpus}
make_bad=$here/../bad/make_bad.py
for t in qemu-img qemu-io python3; do
	command -v "$t" >/dev/null || { echo "make_corpus.sh: $t not found" >&2; exit 1; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out/image" "$out/header" "$out/l2_entry"
# Remove what this script made last time (regress-* stay).
find "$out" -type f \( -name 'qemu-*' -o -name 'bad-*' -o -name 'synth-*' \) -delete

q() {
	"$@" >>"$work/log" 2>&1 || {
		echo "make_corpus.sh: failed: $*" >&2
		tail -n 5 "$work/log" >&2
		exit 1
	}
}

# img NAME SIZE OPTIONS [QEMU-IO COMMANDS...]: a qcow2 image made by
# qemu-img create -o OPTIONS and written by qemu-io, in $work/img/NAME.
mkdir -p "$work/img" "$work/big"
img() {
	local name=$1 size=$2 opts=$3
	shift 3
	local args=()
	for c in "$@"; do
		args+=(-c "$c")
	done
	q qemu-img create -f qcow2 -o "$opts" "$work/img/$name" "$size"
	if (($#)); then
		q qemu-io -f qcow2 "${args[@]}" "$work/img/$name"
	fi
}

w='write -P 0x11 0 4k'
w2='write -P 0x22 600k 3k'
# A cluster's worth of half-random data (compresses to about half).
python3 -c 'import random,sys; r=random.Random(7); open(sys.argv[1],"wb").write(r.randbytes(2048)+bytes(2048))' "$work/half.bin"

img v2-c512 1M compat=0.10,cluster_size=512 "$w" "$w2" 'write -z 8k 4k'
img v3-c512 1M cluster_size=512 "$w" "$w2"
img v3-c1k 2M cluster_size=1k "$w" "$w2" 'write -P 0x33 1536k 1k'
img v3-c2k 2M cluster_size=2k "$w" "$w2"
img v3-c4k 4M cluster_size=4k "$w" "$w2"
img v3-c4k-1g-sparse 1G cluster_size=4k 'write -P 0x55 1020m 4k'
img v3-c1k-odd-size 1049088 cluster_size=1k 'write -P 0x66 1048576 512'
for rb in 1 2 4 8 32 64; do
	img "v3-c1k-refcount-$rb" 1M "cluster_size=1k,refcount_bits=$rb" "$w" "$w2" 'write -z 64k 2k'
done
img v2-c1k-refcount-16-zeros 1M compat=0.10,cluster_size=1k "$w" 'write -z 1k 1k' 'discard 2k 1k'
img v3-c1k-zeros-discard 1M cluster_size=1k "$w" 'write -z 0 2k' 'write -z -u 64k 4k' 'discard 3k 1k'
img v3-c16k-extl2 1M cluster_size=16k,extended_l2=on 'write -P 0x11 0 2k' \
	'write -P 0x12 5632 1k' 'write -z 8k 1k'
img v3-c512-zlib 1M cluster_size=512 "write -c -s $work/half.bin 0 4k" 'write -c -P 0x77 8k 512'
img v3-c4k-zlib 1M cluster_size=4k "write -c -s $work/half.bin 0 4k" 'write -c -P 0x77 8k 4k' "$w2"
img v3-c4k-zstd 1M cluster_size=4k,compression_type=zstd "write -c -s $work/half.bin 0 4k" 'write -c -P 0x77 8k 4k'
img v3-c1k-lazy 1M cluster_size=1k,lazy_refcounts=on "$w" "$w2"
img v3-c1k-prealloc-metadata 16k cluster_size=1k,preallocation=metadata
img v3-c1k-data-file 1M "cluster_size=1k,data_file=$work/img/data.raw" "$w"
img v3-c1k-data-file-raw 1M "cluster_size=1k,data_file=$work/img/data2.raw,data_file_raw=on" "$w"
rm -f "$work/img/data.raw" "$work/img/data2.raw"
q qemu-img create -f qcow2 -o cluster_size=1k "$work/base.qcow2" 1M
q qemu-img create -f raw "$work/base.raw" 1M
img v3-c1k-backing-qcow2 1M "cluster_size=1k,backing_file=$work/base.qcow2,backing_fmt=qcow2" "$w"
img v3-c1k-backing-raw 1M "cluster_size=1k,backing_file=$work/base.raw,backing_fmt=raw" "$w"
img v2-c1k-backing-qcow2 1M "compat=0.10,cluster_size=1k,backing_file=$work/base.qcow2,backing_fmt=qcow2" "$w"
img v3-c1k-snapshots 1M cluster_size=1k "$w"
q qemu-img snapshot -c first "$work/img/v3-c1k-snapshots"
q qemu-io -f qcow2 -c 'write -P 0x21 0 2k' -c "$w2" "$work/img/v3-c1k-snapshots"
q qemu-img snapshot -c second "$work/img/v3-c1k-snapshots"
q qemu-io -f qcow2 -c 'discard 0 1k' "$work/img/v3-c1k-snapshots"
img v3-c1k-bitmaps 1M cluster_size=1k
q qemu-img bitmap --add "$work/img/v3-c1k-bitmaps" b0
q qemu-img bitmap --add -g 64k "$work/img/v3-c1k-bitmaps" b1
q qemu-io -f qcow2 -c "$w" -c "$w2" "$work/img/v3-c1k-bitmaps"
# Dirty (as a crash with lazy refcounts leaves it): the refcount of the
# last write was never written.
cp "$work/img/v3-c1k-lazy" "$work/img/v3-c1k-lazy-dirty"
python3 - "$work/img/v3-c1k-lazy-dirty" <<'EOF'
import struct, sys
with open(sys.argv[1], "r+b") as f:
    f.seek(72)
    v = struct.unpack(">Q", f.read(8))[0]
    f.seek(72)
    f.write(struct.pack(">Q", v | 1))
EOF

# Bigger clusters: headers only.
for cs in 32k 64k 128k 256k 512k 1M 2M; do
	q qemu-img create -f qcow2 -o "cluster_size=$cs" "$work/big/v3-c$cs" 64M
	q qemu-io -f qcow2 -c 'write -P 0x11 0 4k' "$work/big/v3-c$cs"
done
q qemu-img create -f qcow2 -o cluster_size=64k,extended_l2=on,compression_type=zstd \
	"$work/big/v3-c64k-extl2-zstd" 64M
q qemu-img create -f qcow2 -o "compat=0.10,backing_file=$work/base.qcow2,backing_fmt=qcow2" \
	"$work/big/v2-c64k-backing" 64M
img v3-c8k 2M cluster_size=8k "$w"
img v3-c16k 1M cluster_size=16k 'write -P 0x11 0 2k'
img v3-c16k-extl2-backing 1M "cluster_size=16k,extended_l2=on,backing_file=$work/base.qcow2,backing_fmt=qcow2" \
	'write -P 0x13 512 1k'
mv "$work/img/v3-c8k" "$work/img/v3-c16k" "$work/img/v3-c16k-extl2-backing" "$work/big/"

# ---- make_bad.py cases, on small versions of its base images --------------------
# std: v3, 1 KiB clusters, 48 MiB; data at 0, 2M and 40M, a compressed
# cluster at 1M; zstd: the same, zstd compressed; for compressed-truncated,
# 2 KiB clusters, so that the compressed stream spans several sectors. c512: 512-byte clusters,
# 4 MiB; data at 0, 1M and 3M. extl2: 16 KiB clusters, extended L2; data at
# 0. truncated-data needs 64 KiB clusters: skipped.
mkdir -p "$work/bad" "$work/bad2k" "$work/bad64"
base() {
	local path=$1 opts=$2 size=$3
	shift 3
	q qemu-img create -f qcow2 -o "$opts" "$path" "$size"
	local args=()
	for c in "$@"; do
		args+=(-c "$c")
	done
	q qemu-io -f qcow2 "${args[@]}" "$path"
}
for n in 1 2; do
	python3 -c 'import random,sys; n=int(sys.argv[2]); r=random.Random(5); open(sys.argv[1],"wb").write(r.randbytes(512*n)+bytes(512*n))' \
		"$work/half$n.bin" "$n"
done
for ct in zlib zstd; do
	b=std
	[[ $ct == zstd ]] && b=zstd
	base "$work/bad/$b" "cluster_size=1k,compression_type=$ct" 48M 'write -P 0x11 0 1k' \
		"write -c -s $work/half1.bin 1M 1k" 'write -P 0x33 2M 1k' 'write -P 0x44 40M 1k'
	base "$work/bad2k/$b" "cluster_size=2k,compression_type=$ct" 48M 'write -P 0x11 0 2k' \
		"write -c -s $work/half2.bin 1M 2k" 'write -P 0x33 2M 2k' 'write -P 0x44 40M 2k'
done
base "$work/bad/c512" cluster_size=512 4M 'write -P 0x11 0 4k' 'write -P 0x22 1M 4k' 'write -P 0x33 3M 4k'
base "$work/bad/extl2" cluster_size=16k,extended_l2=on 1M 'write -P 0x11 0 2k'
# The cases that only patch the header get make_bad.py's own std and zstd
# bases (64 KiB clusters: qemu-img writes a feature table there), of which
# the header seeds keep only the first 4 KiB.
python3 -c 'import random,sys; r=random.Random(5); open(sys.argv[1],"wb").write(r.randbytes(32768)+bytes(32768))' "$work/half64k.bin"
for ct in zlib zstd; do
	b=std
	[[ $ct == zstd ]] && b=zstd
	base "$work/bad64/$b" "cluster_size=65536,compression_type=$ct" 64M 'write -P 0x11 0 64k' \
		"write -c -s $work/half64k.bin 1M 64k" 'write -P 0x33 2M 64k' 'write -P 0x44 40M 64k'
done
cp "$work/bad/c512" "$work/bad/extl2" "$work/bad2k/"
cp "$work/bad/c512" "$work/bad/extl2" "$work/bad64/"

# Cases that only patch the header fields or extensions are header seeds;
# the others (tables, entries, compressed clusters, truncation, backing
# chains) are image seeds too.
header_only='^(bad-magic|version-|header-length-|cluster-bits-|encrypted-|incompat-|refcount-order-|compression-type-|data-file-no-name|ext-length-|size-huge|snapshot-table-bogus|refcount-table-bogus|l1-unaligned|l1-too-big|l1-size-max|backing-name-|backing-offset-|extl2-cluster-bits-)'
skipped=()
for c in $(python3 "$make_bad" --list); do
	eval "$(python3 "$make_bad" --describe "$c")"
	# shellcheck disable=SC2154 # BASE comes from the eval
	b=$work/bad/$BASE
	[[ $c == compressed-truncated ]] && b=$work/bad2k/$BASE
	[[ $c =~ $header_only ]] && b=$work/bad64/$BASE
	mkdir -p "$work/case"
	if ! python3 "$make_bad" "$c" "$b" "$work/case/bad.qcow2" >>"$work/log" 2>&1; then
		skipped+=("$c")
		rm -rf "$work/case"
		continue
	fi
	if [[ $c =~ $header_only ]]; then
		cp "$work/case/bad.qcow2" "$work/big/bad-$c"
	else
		cp "$work/case/bad.qcow2" "$work/img/bad-$c"
	fi
	rm -rf "$work/case"
done
((${#skipped[@]} == 0)) || echo "make_corpus.sh: make_bad.py cases skipped (layout): ${skipped[*]}" >&2

# ---- into the corpus -------------------------------------------------------------
python3 - "$work" "$out" <<'EOF'
import hashlib, os, struct, sys

work, out = sys.argv[1:3]
seen = {"header": set(), "image": set(), "l2_entry": set()}


def put(target, name, data):
    h = hashlib.sha1(data).hexdigest()
    if h in seen[target]:
        return
    seen[target].add(h)
    with open(os.path.join(out, target, name), "wb") as f:
        f.write(data)


def l2_seed(data):
    """The first L2 table, as fuzz_l2_entry input: cluster_bits - 9,
    flags (extended L2, data file, refcount order), entries."""
    if len(data) < 104 or data[:4] != b"QFI\xfb":
        return None
    ver, = struct.unpack(">I", data[4:8])
    cb, = struct.unpack(">I", data[20:24])
    l1_size, l1_off = struct.unpack(">IQ", data[36:48])
    incompat = struct.unpack(">Q", data[72:80])[0] if ver >= 3 else 0
    order = struct.unpack(">I", data[96:100])[0] if ver >= 3 else 4
    if not 9 <= cb <= 21 or order > 6:
        return None
    extl2 = bool(incompat & 16)
    flags = int(extl2) | (2 if incompat & 4 else 0) | (order << 2)
    esz = 16 if extl2 else 8
    for i in range(l1_size):
        raw = data[l1_off + 8 * i:l1_off + 8 * i + 8]
        if len(raw) < 8:
            break
        e, = struct.unpack(">Q", raw)
        l2 = e & 0x00FFFFFFFFFFFE00
        if l2 and l2 + (1 << cb) <= len(data):
            t = data[l2:l2 + (1 << cb)]
            # Keep up to the last used entry (4 KiB at most).
            n = len(t) // esz
            while n and t[(n - 1) * esz:n * esz] == bytes(esz):
                n -= 1
            return bytes([cb - 9, flags]) + t[:min(n * esz, 4094 // esz * esz)]
    return None


for d, targets in (("img", ("image", "header")), ("big", ("header",))):
    for name in sorted(os.listdir(os.path.join(work, d))):
        data = open(os.path.join(work, d, name), "rb").read()
        if not name.startswith("bad-"):
            name = "qemu-" + name
        if "image" in targets:
            if len(data) > 131072:
                sys.exit("make_corpus.sh: %s is %d bytes, more than the image "
                         "target's max_len" % (name, len(data)))
            put("image", name, data)
            s = l2_seed(data)
            if s:
                put("l2_entry", name, s)
        # The parser reads the first cluster at most.
        cb = struct.unpack(">I", data[20:24])[0] if len(data) >= 24 else 12
        put("header", name, data[:1 << cb if 9 <= cb < 12 else 4096])

# Hand-made entries: every kind, for every cluster size.
C, Z, COPIED = 1 << 62, 1, 1 << 63
for cb in range(9, 22):
    x = 62 - (cb - 8)
    ents = [0, Z, COPIED | (5 << cb), (5 << cb) | Z, (5 << cb) + 512,
            C | (3 << x) | 0x1234, C | (((1 << (cb - 8)) - 1) << x) | ((1 << x) - 1),
            C | COPIED | 512, (0x7F << 56) | (7 << cb)]
    body = b"".join(struct.pack(">Q", e) for e in ents)
    for order in (0, 4, 6):
        put("l2_entry", "synth-c%d-order%d" % (cb, order),
            bytes([cb - 9, order << 2]) + body)
    put("l2_entry", "synth-c%d-data-file" % cb, bytes([cb - 9, 2 | (4 << 2)]) + body)
    if cb >= 14:
        bms = [0, 1, 1 << 32, (1 << 32) | 1, 0xFFFFFFFF, 0xFFFFFFFF << 32,
               0x0000FFFF_FFFF0000, 0x8000000180000000]
        ext = b"".join(struct.pack(">QQ", e, b) for e in ents for b in bms)
        put("l2_entry", "synth-c%d-extl2" % cb, bytes([cb - 9, 1 | (4 << 2)]) + ext[:4094 // 16 * 16])
EOF
for t in header image l2_entry; do
	printf '%-9s %4d seeds, %5d KiB\n' "$t" "$(find "$out/$t" -type f | wc -l)" \
		"$(du -sk --apparent-size "$out/$t" | cut -f1)"
done
