#!/bin/bash
# SPDX-License-Identifier: MIT OR Apache-2.0
# service/qcow2d.service passes `systemd-analyze verify` (with ExecStart
# pointed at the built qcow2d) and scores SAFE or OK in `systemd-analyze
# security --offline=yes`; so does it with the drop-in its comment gives
# for --metrics-listen (the "#     " lines) appended, which must open the
# network; the example config is one qcow2d accepts.
# verify.sh SRCDIR QCOW2D
set -u
src=$1 qcow2d=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail=0

sed "s|^ExecStart=/usr/sbin/qcow2d|ExecStart=$qcow2d|" "$src/service/qcow2d.service" \
	> "$work/qcow2d.service"
if out=$(systemd-analyze verify "$work/qcow2d.service" 2>&1); then
	echo "ok   systemd-analyze verify"
else
	echo "FAIL systemd-analyze verify:"; echo "$out"; fail=1
fi
sec=$(systemd-analyze security --offline=yes "$work/qcow2d.service" 2>&1)
level=$(printf '%s\n' "$sec" | sed -n 's/.*Overall exposure level for qcow2d.service: \([0-9.]*\) \([A-Z]*\).*/\1 \2/p')
case $level in
*" SAFE" | *" OK") echo "ok   systemd-analyze security: $level" ;;
*) echo "FAIL systemd-analyze security: '${level:-no level}'"; printf '%s\n' "$sec" | tail -20; fail=1 ;;
esac

# the drop-in the unit's comment gives for --metrics-listen, appended (a
# second [Service] section: later settings win, address families add up)
dropin=$(sed -n 's/^#     //p' "$src/service/qcow2d.service")
if [[ $dropin != "[Service]"* ]] || ! grep -qx 'PrivateNetwork=no' <<<"$dropin"; then
	echo "FAIL the unit's comment gives no drop-in for --metrics-listen:"
	echo "$dropin"; fail=1
else
	mkdir "$work/metrics"
	{ cat "$work/qcow2d.service"; echo; echo "$dropin"; } > "$work/metrics/qcow2d.service"
	if out=$(systemd-analyze verify "$work/metrics/qcow2d.service" 2>&1); then
		echo "ok   systemd-analyze verify, with the metrics drop-in"
	else
		echo "FAIL systemd-analyze verify, with the metrics drop-in:"; echo "$out"; fail=1
	fi
	sec=$(systemd-analyze security --offline=yes "$work/metrics/qcow2d.service" 2>&1)
	level=$(printf '%s\n' "$sec" | sed -n 's/.*Overall exposure level for qcow2d.service: \([0-9.]*\) \([A-Z]*\).*/\1 \2/p')
	case $level in
	*" SAFE" | *" OK") echo "ok   systemd-analyze security, with the metrics drop-in: $level" ;;
	*) echo "FAIL systemd-analyze security, with the metrics drop-in: '${level:-no level}'"; printf '%s\n' "$sec" | tail -20; fail=1 ;;
	esac
	if printf '%s\n' "$sec" | grep -q '✓ PrivateNetwork='; then
		echo "FAIL the metrics drop-in leaves the network closed:"; printf '%s\n' "$sec" | grep -i network; fail=1
	fi
fi

# the example config: every setting known, every image entry valid (the
# images themselves do not exist here: a check, not a start)
sed -e "s|/run/qcow2d/qcow2d.sock|$work/s.sock|" -e "s|/var/lib/qcow2d/base|$work|" \
	"$src/service/qcow2d.example.json" > "$work/cfg.json"
"$qcow2d" --config "$work/cfg.json" --log-level warn > "$work/log" 2>&1 &
pid=$!
for _ in $(seq 100); do [[ -S $work/s.sock ]] && break; sleep 0.05; done
if [[ -S $work/s.sock ]]; then
	echo "ok   qcow2d starts with the example config"
else
	echo "FAIL qcow2d did not start with the example config:"; cat "$work/log"; fail=1
fi
kill -TERM "$pid" 2>/dev/null
wait "$pid"
rc=$?
if ((rc != 0)); then
	echo "FAIL qcow2d exited $rc after SIGTERM"; cat "$work/log"; fail=1
fi
exit $fail
