#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# qcow2-img create and resize, judged by qemu-img.
#
# create-* cases: `qcow2-img create -o OPTS` makes an image; then
#   1. qemu-img check: no errors, no leaks; no more blocks allocated than
#      in qemu-img's image made with the same options;
#   2. qemu-img info --output=json reports the options we asked for;
#   3. qemu-img compare: the disk reads zeros (or the backing file);
#   4. preallocated images: every cluster is mapped (qemu-img map);
#   5. qemu-io writes patterns into it, then our random_io round on it,
#      judged by check and compare (both directions on our image).
# resize-* cases: an image made and filled by qemu-img (or by us), stale
#   bytes planted past its end inside the last cluster, is grown by
#   `qcow2-img resize`; check must be clean, the old contents intact and
#   the new area zeros (also where a longer backing file would show), and
#   writes into the new area must land (qemu-io, then compare).
# refuse-* cases: option combinations qemu-img refuses are refused too,
#   with exit status 1 and no file left behind.
#
#   create_resize.sh CASE | --list
# Environment: QCOW2_IMG and RANDOM_IO (required), QCOW2_TEST_WORKDIR.
# Exit 0 pass, 1 fail (work directory kept), 77 skip.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
# shellcheck source=tests/write/lib.sh
source "$here/lib.sh"

# name | options (create: -o list; resize: qemu-img create -o list) | size | extra
cases() {
	cat <<'EOF'
create-default     | -                                            | 64M  |
create-512         | cluster_size=512                             | 8M   |
create-2M          | cluster_size=2M                              | 64M  |
create-v2          | compat=0.10                                  | 64M  |
create-refcount-1  | refcount_bits=1,cluster_size=4k              | 32M  |
create-refcount-64 | refcount_bits=64,cluster_size=4k             | 32M  |
create-extl2       | extended_l2=on                               | 64M  |
create-zstd        | compression_type=zstd                        | 64M  |
create-lazy        | lazy_refcounts=on                            | 64M  |
create-backing     | backing_file=base.qcow2,backing_fmt=qcow2    | 32M  |
create-backing-raw | backing_file=base.raw,backing_fmt=raw,cluster_size=16k | 32M |
create-datafile    | data_file=img.data                           | 32M  |
create-datafile-raw| data_file=img.data,data_file_raw=on          | 32M  |
create-pre-meta    | preallocation=metadata                       | 64M  |
create-pre-meta-512| preallocation=metadata,cluster_size=512,refcount_bits=2 | 4M |
create-pre-falloc  | preallocation=falloc,cluster_size=4k         | 32M  |
create-pre-full    | preallocation=full,refcount_bits=8           | 16M  |
create-pre-extl2-backing | preallocation=metadata,extended_l2=on,backing_file=base.qcow2,backing_fmt=qcow2 | 32M |
create-odd-size    | cluster_size=64k                             | 1048676 |
resize-64k         | cluster_size=64k                             | 3000k | +40M
resize-l1-moves    | cluster_size=512                             | 1M   | 2G
resize-l1-multi    | cluster_size=512,refcount_bits=64            | 1M   | 1G
resize-4k-big      | cluster_size=4k                              | 5M   | 1T
resize-v2          | compat=0.10,cluster_size=4k                  | 3M   | 3G
resize-backing     | cluster_size=64k,backing                     | 1M   | 12M
resize-ours        | cluster_size=16k,ours                        | 1000k | 64M
refuse-v2-extl2    | compat=0.10,extended_l2=on                   | 1M   |
refuse-extl2-4k    | extended_l2=on,cluster_size=4k               | 1M   |
refuse-backing-pre | preallocation=metadata,backing_file=base.qcow2 | 1M |
refuse-raw-no-file | data_file_raw=on                             | 1M   |
refuse-cluster-3k  | cluster_size=3k                              | 1M   |
refuse-v2-refcount | compat=0.10,refcount_bits=8                  | 1M   |
EOF
}
if [[ ${1:-} == --list ]]; then cases | cut -d'|' -f1 | tr -d ' '; exit 0; fi
case_name=${1:?usage: create_resize.sh CASE | --list}
line=$(case_line "$case_name")
opts=$(echo "$line" | cut -d'|' -f2 | xargs)
size=$(echo "$line" | cut -d'|' -f3 | xargs)
extra=$(echo "$line" | cut -d'|' -f4 | xargs)
[[ $opts == - ]] && opts=
need qemu-img qemu-io python3
need_random_io
[[ -n ${QCOW2_IMG:-} ]] || { echo "SKIP: QCOW2_IMG is not set"; exit 77; }

work=${QCOW2_TEST_WORKDIR:-$PWD/create-work}/$case_name
rm -rf "$work"
mkdir -p "$work"
cd "$work"
bytes() { python3 -c '
import sys
v = sys.argv[1]; m = {"k": 10, "M": 20, "G": 30, "T": 40}
print(int(v[:-1]) << m[v[-1]] if v[-1] in m else int(v))' "$1"; }
info() { qemu-img info --output=json "$1" | python3 -c "
import json, sys
j = json.load(sys.stdin); s = j.get('format-specific', {}).get('data', {})
print(eval(sys.argv[1]))" "$2"; }
expect_info() { # image python-expression expected
	local got
	got=$(info "$1" "$2")
	[[ $got == "$3" ]] || fail "qemu-img info: $2 is '$got', expected '$3'"
}

make_backing() {
	qemu-img create -q -f qcow2 base.qcow2 "$1"
	qemu-io -c "write -P 0x5a 0 $(($(bytes "$1") / 2))" base.qcow2 >/dev/null
	qemu-img convert -q -O raw base.qcow2 base.raw
}

case $case_name in
refuse-*)
	[[ $opts == *backing_file=* ]] && make_backing 1M
	rc=0
	"$QCOW2_IMG" create -q -o "$opts" img.qcow2 "$size" 2>err.txt || rc=$?
	cat err.txt
	[[ $rc == 1 ]] || fail "create -o $opts exited $rc, expected 1"
	[[ -s err.txt ]] || fail "no explanation on stderr"
	[[ ! -e img.qcow2 ]] || fail "a refused create left img.qcow2 behind"
	qrc=0
	qemu-img create -q -f qcow2 -o "$opts" q.qcow2 "$size" 2>/dev/null || qrc=$?
	[[ $qrc != 0 ]] || fail "qemu-img accepts -o $opts: we should too"
	echo "ok $case_name"
	exit 0
	;;
create-*)
	[[ $opts == *backing_file=* ]] && make_backing "$size"
	run "$QCOW2_IMG" create -o "$opts" img.qcow2 "$size"
	qcheck img.qcow2 clean || fail "qemu-img check after create"
	# at least as sparse as qemu-img's image (the unused parts of the
	# table clusters stay holes)
	qopts=${opts/data_file=img.data/data_file=q.data}
	qemu-img create -q -f qcow2 ${qopts:+-o "$qopts"} q.qcow2 "$size" >/dev/null
	ours_kib=$(du -k img.qcow2 | cut -f1) theirs_kib=$(du -k q.qcow2 | cut -f1)
	((ours_kib <= theirs_kib)) ||
		fail "new image has $ours_kib KiB allocated, qemu-img's $theirs_kib KiB"
	rm -f q.qcow2 q.data
	vsize=$((($(bytes "$size") + 511) / 512 * 512))
	expect_info img.qcow2 "j['virtual-size']" "$vsize"
	IFS=, read -r -a kv <<<"$opts"
	for x in "${kv[@]}"; do
		k=${x%%=*} v=${x#*=}
		case $k in
		cluster_size) expect_info img.qcow2 "j['cluster-size']" "$(bytes "$v")" ;;
		compat) expect_info img.qcow2 "s['compat']" "$v" ;;
		refcount_bits) expect_info img.qcow2 "s['refcount-bits']" "$v" ;;
		extended_l2) expect_info img.qcow2 "s.get('extended-l2', False)" True ;;
		compression_type) expect_info img.qcow2 "s['compression-type']" "$v" ;;
		lazy_refcounts) expect_info img.qcow2 "s['lazy-refcounts']" True ;;
		backing_file) expect_info img.qcow2 "j['backing-filename']" "$v" ;;
		backing_fmt) expect_info img.qcow2 "j['backing-filename-format']" "$v" ;;
		data_file) expect_info img.qcow2 "s['data-file']" "$v" ;;
		data_file_raw) expect_info img.qcow2 "s['data-file-raw']" True ;;
		esac
	done
	[[ ,$opts, == *,compat=0.10,* ]] || expect_info img.qcow2 "s['compat']" 1.1
	# the disk reads zeros, or the backing file
	if [[ $opts == *backing_file=base.qcow2* ]]; then
		cp base.raw model.raw
		truncate -s "$vsize" model.raw
	elif [[ $opts == *backing_file=base.raw* ]]; then
		cp base.raw model.raw
	else
		truncate -s "$vsize" model.raw
	fi
	qemu-img compare -q -f qcow2 -F raw img.qcow2 model.raw ||
		fail "a new image does not read as its model (zeros or backing)"
	if [[ $opts == *preallocation=* && $opts != *preallocation=off* ]]; then
		unmapped=$(qemu-img map --output=json img.qcow2 | python3 -c '
import json, sys
print(sum(e["length"] for e in json.load(sys.stdin) if not e["data"] or e["depth"]))')
		if [[ $opts == *extended_l2=on* ]]; then
			: # subclusters stay unallocated (reads go to the backing file)
		elif [[ $unmapped != 0 ]]; then
			fail "preallocated image has $unmapped unmapped bytes"
		fi
	fi
	if [[ $opts == *preallocation=full* || $opts == *preallocation=falloc* ]]; then
		alloc=$(stat -c %b img.qcow2)
		((alloc * 512 >= vsize)) || fail "preallocated image uses only $((alloc * 512)) bytes on disk"
	fi
	# qemu-io writes into our image, check
	qemu-io -c "write -P 0x66 0 64k" -c "write -z 128k 64k" img.qcow2 >/dev/null
	qemu-io -f raw -c "write -P 0x66 0 64k" -c "write -z 128k 64k" model.raw >/dev/null
	qcheck img.qcow2 clean || fail "qemu-img check after qemu-io wrote into our image"
	qemu-img compare -q -f qcow2 -F raw img.qcow2 model.raw || fail "qemu-io writes read back wrong"
	if [[ $extra == ro ]]; then
		# Images with external data files or extended L2 are read-only to
		# the engine so far: reading them must work.
		run "$RANDOM_IO" --verify-only img.qcow2 model.raw || fail "our reads differ"
	elif ((vsize >= 1 << 20)); then
		run "$RANDOM_IO" --ops 300 --max-len 128k --seed 3 img.qcow2 model.raw ||
			fail "random_io on our new image"
		qcheck img.qcow2 clean || fail "qemu-img check after random_io"
		qemu-img compare -q -f qcow2 -F raw img.qcow2 model.raw || fail "compare after random_io"
	fi
	;;
resize-*)
	make=qemu backing=0
	IFS=, read -r -a words <<<"$opts"
	copts=()
	for w in "${words[@]}"; do
		case $w in
		ours) make=ours ;;
		backing) backing=1 ;;
		*) copts+=("$w") ;;
		esac
	done
	copt=$(IFS=,; echo "${copts[*]}")
	old=$(bytes "$size")
	if ((backing)); then
		qemu-img create -q -f qcow2 base.qcow2 16M
		qemu-io -c "write -P 0x5a 0 16M" base.qcow2 >/dev/null
		qemu-img create -q -f qcow2 -o "$copt" -b base.qcow2 -F qcow2 img.qcow2 "$size"
	elif [[ $make == ours ]]; then
		"$QCOW2_IMG" create -q -o "$copt" img.qcow2 "$size"
	else
		qemu-img create -q -f qcow2 -o "$copt" img.qcow2 "$size"
	fi
	# fill: the whole disk with a pattern, the last cluster partly
	qemu-io -c "write -P 0x21 0 $old" img.qcow2 >/dev/null
	qemu-img convert -q -O raw img.qcow2 model.raw
	# stale bytes past the end, inside the last (allocated) cluster
	python3 - img.qcow2 "$old" <<'PY'
import struct, sys
path, size = sys.argv[1], int(sys.argv[2])
f = open(path, "r+b")
h = f.read(112)
cb = struct.unpack(">I", h[20:24])[0]
cs = 1 << cb
if size % cs:
    l1off = struct.unpack(">Q", h[40:48])[0]
    entries = cs // 8
    last = (size - 1) // cs
    f.seek(l1off + (last // entries) * 8)
    l2 = struct.unpack(">Q", f.read(8))[0] & 0x00fffffffffffe00
    f.seek(l2 + (last % entries) * 8)
    host = struct.unpack(">Q", f.read(8))[0] & 0x00fffffffffffe00
    if host:
        f.seek(host + size % cs)
        f.write(b"\xee" * (cs - size % cs))
        print(f"planted {cs - size % cs} stale bytes at host {host + size % cs:#x}")
PY
	new=$extra
	if [[ $new == +* ]]; then newb=$((old + $(bytes "${new#+}"))); else newb=$(bytes "$new"); fi
	run "$QCOW2_IMG" resize img.qcow2 "$new"
	expect_info img.qcow2 "j['virtual-size']" "$newb"
	qcheck img.qcow2 clean || fail "qemu-img check after resize"
	truncate -s "$newb" model.raw
	qemu-img compare -q -f qcow2 -F raw img.qcow2 model.raw ||
		fail "after resize, the disk differs from old contents + zeros"
	# writes into the new area: near the old end, and at the new end
	last=$((newb - 65536))
	qemu-io -c "write -P 0x77 $((old / 512 * 512)) 64k" -c "write -P 0x78 $last 64k" \
		img.qcow2 >/dev/null
	qemu-io -f raw -c "write -P 0x77 $((old / 512 * 512)) 64k" -c "write -P 0x78 $last 64k" \
		model.raw >/dev/null
	qcheck img.qcow2 clean || fail "qemu-img check after writes into the new area"
	qemu-img compare -q -f qcow2 -F raw img.qcow2 model.raw || fail "compare after writes"
	# and our own writes across the whole new disk
	if ((newb <= 256 << 20)); then
		run "$RANDOM_IO" --ops 200 --max-len 64k --seed 4 img.qcow2 model.raw ||
			fail "random_io on the resized image"
		qcheck img.qcow2 clean || fail "qemu-img check after random_io"
	fi
	# growing again by nothing, and shrinking, are handled
	run "$QCOW2_IMG" resize -q img.qcow2 "$newb" || fail "resize to the same size"
	rc=0
	"$QCOW2_IMG" resize img.qcow2 "$((newb - 512))" 2>err.txt || rc=$?
	[[ $rc == 1 ]] && grep -q shrink err.txt || fail "shrinking: exit $rc, $(cat err.txt)"
	qcheck img.qcow2 clean || fail "qemu-img check after refused shrink"
	;;
esac
cd /
rm -rf "$work"
echo "ok $case_name"
