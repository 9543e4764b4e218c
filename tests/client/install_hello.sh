#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# libqcow2-client as a VMM author gets it: `meson install` into a temporary
# directory, then client/examples/hello.c compiled out of the tree with
# `cc $(pkg-config --cflags --libs qcow2-client)` and run against a real
# qcow2d (LD_LIBRARY_PATH); the in-tree build of hello too. Also checks
# what the installed library is: its soname, and that it exports the
# functions of qcow2-client.h and nothing else (not the ipc library
# linked into it).
#
#   install_hello.sh BUILD_DIR SOURCE_ROOT CC SANITIZE QCOW2D QEMU_IMG WORKDIR HELLO
# Exit 0 pass, 1 fail, 77 skip (no pkg-config).
set -euo pipefail
build=$1 src=$2 cc=$3 sanitize=$4 qcow2d=$5 qemu_img=$6 work=$7 hello_tree=$8
command -v pkg-config >/dev/null 2>&1 || { echo "SKIP: pkg-config is not installed"; exit 77; }

pid=
fail() {
	echo "install_hello: $*" >&2
	[[ -n $pid ]] && kill -KILL "$pid" 2>/dev/null
	exit 1
}

rm -rf "$work"
mkdir -p "$work"
dest=$work/dest
meson install -C "$build" --no-rebuild --quiet --destdir "$dest" >"$work/install.log" 2>&1 ||
	fail "meson install failed: $(cat "$work/install.log")"

pc=$(find "$dest" -name qcow2-client.pc)
[[ -n $pc ]] || fail "no qcow2-client.pc installed"
prefix=$(sed -n 's/^prefix=//p' "$pc")
export PKG_CONFIG_PATH=${pc%/*}
flags=$(pkg-config --define-variable=prefix="$dest$prefix" --cflags --libs qcow2-client) ||
	fail "pkg-config does not know qcow2-client"
[[ -f $dest$prefix/include/qcow2-client.h ]] || fail "the header is not installed"
lib=$(find "$dest" -name 'libqcow2-client.so.0' | head -1)
[[ -n $lib ]] || fail "no libqcow2-client.so.0 installed"
readelf -d "$lib" | grep -q 'SONAME.*\[libqcow2-client\.so\.0\]' || fail "the soname is not libqcow2-client.so.0"

# Only the header's functions, every one of them.
exported=$(nm -D --defined-only "$lib" | awk '$2 == "T" { sub(/@.*/, "", $3); print $3 }' | sort)
declared=$(grep -oE '\bq2cq?_[a-z0-9_]+\(' "$src/client/include/qcow2-client.h" | tr -d '(' | sort -u)
[[ $exported == "$declared" ]] ||
	fail "exports differ from the header: $(diff <(echo "$declared") <(echo "$exported") | grep '^[<>]' | tr '\n' ' ')"

# A sanitized library needs the sanitizer's runtime in the program too.
san=()
[[ $sanitize != none ]] && san=(-fsanitize="$sanitize")
# shellcheck disable=SC2086
"$cc" -std=c11 -Wall -Wextra -Werror "${san[@]}" "$src/client/examples/hello.c" $flags \
	-o "$work/hello" || fail "hello.c does not build against the installed library"

"$qemu_img" create -q -f qcow2 "$work/a.qcow2" 64M
"$qemu_img" create -q -f qcow2 "$work/b.qcow2" 64M
"$qcow2d" --socket "$work/s.sock" --workers 1 --log-level warn &
pid=$!
for _ in $(seq 500); do
	[[ -S $work/s.sock ]] && break
	sleep 0.01
done
LD_LIBRARY_PATH=${lib%/*} "$work/hello" "$work/s.sock" "$work/a.qcow2" >"$work/out" ||
	fail "hello (installed) failed: $(cat "$work/out")"
grep -q '^hello: wrote, read back and flushed 65536 bytes' "$work/out" || fail "hello said: $(cat "$work/out")"
# its last line is the image's statistics, as JSON
tail -1 "$work/out" | python3 -c 'import json, sys; s = json.load(sys.stdin); assert s["ops"]["write"]["requests"] == 1' ||
	fail "hello's stats are not image.stats' JSON"
"$hello_tree" "$work/s.sock" "$work/b.qcow2" >"$work/out2" || fail "hello (in tree) failed: $(cat "$work/out2")"
kill -TERM "$pid"
status=0
wait "$pid" || status=$?
pid=
((status == 0)) || fail "qcow2d exited with status $status"
"$qemu_img" check -q "$work/a.qcow2" || fail "qemu-img check a.qcow2"
"$qemu_img" check -q "$work/b.qcow2" || fail "qemu-img check b.qcow2"
rm -rf "$work"
echo "install_hello: ok"
