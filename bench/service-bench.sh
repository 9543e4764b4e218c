#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# service-bench.sh: the ring path (qcow2-bench -> libqcow2-client -> qcow2d)
# against raw fio on the image's own bytes and against qemu-storage-daemon
# over NBD, in one run; see bench/service_bench.py --help.
#
# Usage: bench/service-bench.sh [--size 4G] [--runtime 10] [--runs 3]
#            [--dir DIR] [--workloads NAME,...] [--json FILE]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# Debian's python3 (its packages), not another one earlier on PATH.
exec /usr/bin/python3 "$here/service_bench.py" "$@"
