#!/usr/bin/env bash
# The demo on the Vagrant lab (see the Vagrantfile), run on the primary VM, as root:
#   vagrant ssh primary -c 'sudo /shadowtap/scripts/lab/vm_demo.sh'
# The client VM sends its traffic to the primary all the time (unit shadowtap-traffic); this runs
# `shadowtap mirror` on the primary's front interface for DEMO_DURATION seconds (30), copying the
# requests to the shadow VM over the back network, with the live dashboard, then prints the report
# and leaves report.html/.json and the JSONL files in DEMO_OUT (/var/tmp/shadowtap-demo-<time>).
set -euo pipefail
[ "$(id -u)" -eq 0 ] || { echo "vm_demo: run as root (sudo)" >&2; exit 4; }
# shellcheck disable=SC1091
. /etc/shadowtap-lab.env
[ "$LAB_ROLE" = primary ] || { echo "vm_demo: run this on the primary VM (this is $LAB_ROLE)" >&2; exit 2; }
iface=$(ip -o -4 addr show | awk -v a="$LAB_PRIMARY_ADDR" '{split($4, x, "/"); if (x[1] == a) print $2}')
[ -n "$iface" ] || { echo "vm_demo: no interface has $LAB_PRIMARY_ADDR" >&2; exit 4; }
OUT=${DEMO_OUT:-/var/tmp/shadowtap-demo-$(date -u +%Y%m%d-%H%M%S)}
rc=0
/shadowtap/.venv/bin/shadowtap mirror --iface "$iface" --port "$LAB_PORT" --shadow "$LAB_SHADOW_URL" \
  --backend "${DEMO_BACKEND:-auto}" --allow 'POST /v1/predict' --allow 'POST /v1/chat/completions' \
  --config /shadowtap/scripts/lab/demo-compare.toml \
  --duration "${DEMO_DURATION:-30}" --run-dir "$OUT" || rc=$?
echo "verdict exit status $rc (11 = fail: the shadow runs version 2 with deliberate regressions)" >&2
echo "files in $OUT: report.html, report.json, report.txt, exchanges.jsonl, results.jsonl" >&2
[ "$rc" -le 12 ] && [ "$rc" -ge 10 ] || [ "$rc" -eq 0 ] || exit "$rc"
