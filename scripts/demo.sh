#!/usr/bin/env bash
# The main job: build everything, then the service end to end:
#   a sample image (qemu-img), qcow2d on a temporary socket, qcow2ctl open,
#   qcow2-bench through libqcow2-client (writes with verify, then reads that
#   check every block against them), qcow2ctl stats with the metadata-flush
#   statistics, qcow2ctl close, a clean stop (SIGTERM), qemu-img check;
# then a tour of the engine and the offline tools: qcow2-img info / map /
#   convert (compared with qemu-img convert) / bench, writes through qcow2-io
#   judged by qemu-img, qcow2-img check, create / convert -O qcow2 -c /
#   resize judged by qemu-img, and qcow2ctl's other commands (list, info,
#   flush, check, metrics, events) on a backing chain.
# Ends with one line: "demo: all steps succeeded" or what failed.
#
#   ./scripts/demo.sh            everything (installs missing Debian packages)
#   DEMO_DIR=/some/dir ./scripts/demo.sh
#
# The images live in ./demo-work unless DEMO_DIR is set (not committed).
set -uo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
root=$(qcow2d_root)
cd "$root" || exit 2

failed=()
step_failed() {
	echo "!! $*" >&2
	failed+=("$*")
}

section "dependencies"
ensure_deps || { echo "demo: installing dependencies failed" >&2; exit 1; }

section "build (build/)"
if [[ ! -f build/meson-private/coredata.dat ]]; then
	meson_setup build --buildtype=debugoptimized || exit 1
fi
ninja -C build -j2 || { echo "demo: build failed" >&2; exit 1; }
img_tool=$root/build/tools/qcow2-img
io_tool=$root/build/tools/qcow2-io
svc_tool=$root/build/service/qcow2d
ctl_tool=$root/build/tools/qcow2ctl
bench_tool=$root/build/tools/qcow2-bench
for t in "$img_tool" "$io_tool" "$svc_tool" "$ctl_tool" "$bench_tool"; do
	[[ -x $t ]] || { echo "demo: $t was not built" >&2; exit 1; }
done

demo=${DEMO_DIR:-$root/demo-work}
mkdir -p "$demo"
demo=$(cd "$demo" && pwd -P)
cd "$demo" || exit 2
rm -f base.raw base.qcow2 sample.qcow2 sample-qemu.raw sample-qcow2d.raw map.txt map.json \
	vm.qcow2 vm.verify state.json

sock=$(mktemp -d /tmp/qcow2d-demo.XXXXXX)/qcow2d.sock
ctl() {
	echo "+ qcow2ctl $*"
	"$ctl_tool" --socket "$sock" "$@"
}
start_qcow2d() {
	echo "+ qcow2d --socket $sock --workers 2 --allow-dir $demo --state-file $demo/state.json &"
	"$svc_tool" --socket "$sock" --workers 2 --allow-dir "$demo" \
		--state-file "$demo/state.json" >>qcow2d.log 2>&1 &
	svc_pid=$!
	for _ in $(seq 200); do
		"$ctl_tool" --socket "$sock" version >/dev/null 2>&1 && return 0
		sleep 0.05
	done
	step_failed "qcow2d did not start (see $demo/qcow2d.log)"
	return 1
}
stop_qcow2d() {
	echo "+ kill -TERM $svc_pid   (qcow2d: finish, flush and close every image, exit 0)"
	kill -TERM "$svc_pid"
	wait "$svc_pid" || step_failed "qcow2d did not stop cleanly (see qcow2d.log)"
}

section "the main job: a VM disk served by qcow2d, IO through libqcow2-client"
: >qcow2d.log
echo "+ qemu-img create -f qcow2 vm.qcow2 2G"
qemu-img create -q -f qcow2 vm.qcow2 2G || step_failed "qemu-img create"
if start_qcow2d; then
	ctl open "$demo/vm.qcow2" --name vm || step_failed "qcow2ctl open"
	echo
	echo "+ qcow2-bench --rw randwrite --bs 4k --size 1G --iodepth 32 --numjobs 2 --fsync 256 --runtime 5 --verify --verify-state vm.verify vm"
	echo "  (every block written carries its offset and a generation; the generations are saved)"
	"$bench_tool" --socket "$sock" --rw randwrite --bs 4k --size 1G --iodepth 32 --numjobs 2 \
		--fsync 256 --runtime 5 --verify --verify-state vm.verify vm ||
		step_failed "qcow2-bench write with verify"
	echo
	echo "+ qcow2-bench --rw randread --bs 4k --size 1G --iodepth 32 --numjobs 2 --runtime 5 --zero-copy --verify --verify-state vm.verify vm"
	echo "  (every block read is checked against the generation written last)"
	"$bench_tool" --socket "$sock" --rw randread --bs 4k --size 1G --iodepth 32 --numjobs 2 \
		--runtime 5 --zero-copy --verify --verify-state vm.verify vm ||
		step_failed "qcow2-bench read with verify"
	echo
	ctl stats vm || step_failed "qcow2ctl stats"
	ctl close vm || step_failed "qcow2ctl close"
	stop_qcow2d
	echo "+ qemu-img check vm.qcow2"
	qemu-img check vm.qcow2 || step_failed "qemu-img check after qcow2d"
fi
rm -f vm.verify

section "sample image (qemu-img / qemu-io)"
set -e
echo "+ base.raw: 1 GiB sparse raw with patterns, text and half-random data"
python3 - <<'EOF'
import random
r = random.Random(1)
with open("base.raw", "wb") as f:
    f.truncate(1 << 30)
    for i in range(64):                      # 64 x 64k every 8 MiB
        f.seek(i * (8 << 20))
        kind = i % 3
        if kind == 0:
            f.write(bytes([0x40 + i]) * 65536)
        elif kind == 1:
            line = b"qcow2d demo block %d\n" % i
            f.write((line * 4000)[:65536])
        else:
            f.write(r.randbytes(32768) + bytes(32768))
    f.seek((1 << 30) - 65536)
    f.write(b"\xee" * 65536)                 # the very end of the disk
EOF
echo "+ qemu-img convert -c -O qcow2 base.raw base.qcow2   (compressed backing file)"
qemu-img convert -q -c -f raw -O qcow2 -o cluster_size=65536 base.raw base.qcow2
echo "+ qemu-img create -f qcow2 -o cluster_size=65536 -b base.qcow2 -F qcow2 sample.qcow2 1G"
qemu-img create -q -f qcow2 -o compat=1.1,cluster_size=65536 -b base.qcow2 -F qcow2 sample.qcow2 1G
cmds=(
	"write -P 0xa1 0 1M"
	"write -P 0xa2 $((8 << 20)) 4k"
	"write -P 0xa3 $(((16 << 20) - 2048)) 8k"
	"write -z $((24 << 20)) 256k"
	"write -z -u 32M 64k"
	"discard 40M 128k"
	"write -P 0xa4 100M 16M"
	"write -P 0xa5 $(((1 << 30) - 4096)) 4096"
)
args=()
for c in "${cmds[@]}"; do
	echo "+ qemu-io -c '$c' sample.qcow2"
	args+=(-c "$c")
done
qemu-io -f qcow2 "${args[@]}" sample.qcow2 >/dev/null
set +e
qemu-img info --backing-chain sample.qcow2

section "qcow2-img info sample.qcow2"
"$img_tool" info sample.qcow2 || step_failed "qcow2-img info (exit $?)"
section "qcow2-img info --json sample.qcow2"
"$img_tool" info --json sample.qcow2 || step_failed "qcow2-img info --json (exit $?)"

section "qcow2-img map sample.qcow2"
"$img_tool" map sample.qcow2 >map.txt || step_failed "qcow2-img map (exit $?)"
cut -c1-160 map.txt | head -n 40
section "qcow2-img map --json base.qcow2 (compressed clusters; first 12 extents)"
"$img_tool" map --json base.qcow2 >map.json || step_failed "qcow2-img map --json (exit $?)"
python3 -c '
import json, sys
m = json.load(open(sys.argv[1]))
for e in m[:12]:
    print(json.dumps(e))
print("... %d extents, %d compressed" % (len(m), sum(1 for e in m if e.get("compressed"))))
' map.json || { head -c 2000 map.json; step_failed "qcow2-img map --json: not the expected JSON"; }

section "convert: qcow2-img vs qemu-img"
echo "+ qemu-img convert -O raw sample.qcow2 sample-qemu.raw"
TIMEFORMAT='  %Rs elapsed'
time qemu-img convert -O raw sample.qcow2 sample-qemu.raw || step_failed "qemu-img convert"
for mode in "io_uring none" "sync writeback"; do
	read -r io cache <<<"$mode"
	echo "+ qcow2-img convert -i $io -t $cache -O raw sample.qcow2 sample-qcow2d.raw"
	if ! time "$img_tool" convert -i "$io" -t "$cache" -O raw sample.qcow2 sample-qcow2d.raw; then
		step_failed "qcow2-img convert -i $io -t $cache"
		continue
	fi
	if cmp sample-qemu.raw sample-qcow2d.raw; then
		echo "  identical to qemu-img's output ($(stat -c %s sample-qcow2d.raw) bytes)"
	else
		step_failed "qcow2-img convert -i $io -t $cache: output differs from qemu-img"
	fi
	rm -f sample-qcow2d.raw
done
echo "+ qcow2-io -c 'read -P 0xa4 100M 1M' -c 'read -P 0 24M 256k' sample.qcow2"
"$io_tool" -c "read -P 0xa4 100M 1M" -c "read -P 0 24M 256k" sample.qcow2 ||
	step_failed "qcow2-io read -P"

section "bench: qcow2-img bench -c 20000 sample.qcow2"
"$img_tool" bench -c 20000 sample.qcow2 || step_failed "qcow2-img bench (exit $?)"
section "for reference: qemu-img bench -c 20000 -t none sample.qcow2"
qemu-img bench -c 20000 -t none -f qcow2 sample.qcow2 2>&1 | tail -n 3

section "write path: qcow2-io writes, qemu-img judges"
cp sample.qcow2 written.qcow2
w_cmds=(
	"write -P 0xb1 0 64k"
	"write -P 0xb2 $((500 << 20)) 1M"
	"write -z 100M 2M"
	"discard 200M 4M"
	"flush"
	"read -P 0xb2 $((500 << 20)) 1M"
)
w_args=()
for c in "${w_cmds[@]}"; do
	echo "+ qcow2-io -c '$c' written.qcow2"
	w_args+=(-c "$c")
done
"$io_tool" "${w_args[@]}" written.qcow2 >/dev/null || step_failed "qcow2-io writes"
echo "+ the same commands through qemu-io on another copy, then qemu-img compare"
cp sample.qcow2 written-qemu.qcow2
qemu-io -f qcow2 "${w_args[@]}" written-qemu.qcow2 >/dev/null
if qemu-img compare -q written.qcow2 written-qemu.qcow2; then
	echo "  identical contents"
else
	step_failed "qcow2-io and qemu-io wrote different contents"
fi
echo "+ qemu-img check written.qcow2"
qemu-img check written.qcow2 || step_failed "qemu-img check after our writes"
rm -f written-qemu.qcow2

section "qcow2-img check written.qcow2 (the same counts as qemu-img check)"
"$img_tool" check written.qcow2 || step_failed "qcow2-img check after our writes"

section "qcow2-img create, convert -O qcow2 -c, resize; judged by qemu-img"
"$img_tool" create -o cluster_size=64k,lazy_refcounts=on created.qcow2 256M ||
	step_failed "qcow2-img create"
qemu-img check created.qcow2 || step_failed "qemu-img check of a created image"
echo "+ qcow2-img convert -O qcow2 -c -o compression_type=zstd written.qcow2 compressed.qcow2"
"$img_tool" convert -O qcow2 -c -o compression_type=zstd written.qcow2 compressed.qcow2 ||
	step_failed "qcow2-img convert -O qcow2 -c"
ls -l written.qcow2 compressed.qcow2
qemu-img compare -q written.qcow2 compressed.qcow2 && echo "  identical contents" ||
	step_failed "the compressed copy differs"
echo "+ qcow2-img resize compressed.qcow2 +1G"
"$img_tool" resize compressed.qcow2 +1G || step_failed "qcow2-img resize"
qemu-img check compressed.qcow2 || step_failed "qemu-img check after resize"
qemu-img info compressed.qcow2 | grep -E "virtual size|compression" || true
rm -f created.qcow2

section "qcow2-img stats and dump: what the metadata looks like"
"$img_tool" stats compressed.qcow2 || step_failed "qcow2-img stats"
echo "+ qcow2-img dump compressed.qcow2 l2 0 (the first entries)"
"$img_tool" dump compressed.qcow2 l2 0 >l2-dump.txt || step_failed "qcow2-img dump"
head -n 6 l2-dump.txt
rm -f l2-dump.txt

section "qcow2ctl: the operator's view (a backing chain, events, metrics)"
if start_qcow2d; then
	"$ctl_tool" --socket "$sock" events >events.log 2>&1 &
	ev_pid=$!
	sleep 0.2
	cp written.qcow2 service.qcow2
	ctl open service.qcow2 --name demo || step_failed "qcow2ctl open"
	ctl open sample.qcow2 --read-only || step_failed "qcow2ctl open (read-only, backing chain)"
	ctl list || step_failed "qcow2ctl list"
	ctl info demo || step_failed "qcow2ctl info"
	ctl flush demo || step_failed "qcow2ctl flush"
	ctl check demo || step_failed "qcow2ctl check"
	echo "+ qcow2ctl metrics (the write-back families)"
	"$ctl_tool" --socket "$sock" metrics | grep -E '^qcow2d_image_writebacks_total' ||
		step_failed "qcow2ctl metrics"
	ctl close demo || step_failed "qcow2ctl close"
	ctl close sample.qcow2 || step_failed "qcow2ctl close (read-only)"
	kill -INT "$ev_pid" 2>/dev/null
	wait "$ev_pid"
	echo "+ qcow2ctl events (what a subscriber saw)"
	cat events.log
	stop_qcow2d
	echo "+ qcow2d's log"
	cat qcow2d.log
	echo "+ qemu-img check service.qcow2"
	qemu-img check service.qcow2 || step_failed "qemu-img check after qcow2d"
fi
rm -rf "$(dirname "$sock")"

rm -f sample-qemu.raw base.raw
section "done"
echo "sample images are in $demo"
if ((${#failed[@]})); then
	echo "demo: ${#failed[@]} step(s) failed:"
	printf '  %s\n' "${failed[@]}"
	exit 1
fi
echo "demo: all steps succeeded"
