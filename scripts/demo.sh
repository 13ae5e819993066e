#!/usr/bin/env bash
# The main job: shadow deployment, live, on this host. As root on Debian/Ubuntu:
#
#   scripts/demo.sh
#
# 1. installs what it needs (scripts/setup.sh: apt packages, kernel headers, .venv);
# 2. brings the one-host lab up (scripts/lab/lab.py): namespaces client, primary (demo service v1)
#    and shadow (demo service v2, with deliberate regressions), each serving REST and, on the same
#    port, a gRPC model (KServe v2 ModelInfer, scripts/lab/grpc_model.py);
# 3. runs `shadowtap mirror` inside the primary on its client-facing interface (eBPF backend,
#    libpcap when eBPF cannot run), mirroring to the shadow, with the live dashboard;
# 4. drives the traffic generator from the client for DEMO_DURATION seconds;
# 5. prints the report and the verdict, keeps report.html/.json/.txt and the JSONL files;
# 6. tears the lab down, also on failure or Ctrl-C, and says where the files are.
#
# Knobs (environment): DEMO_DURATION (seconds of traffic, 30), DEMO_RATE (requests/s, 40),
# DEMO_SEED (the traffic's seed, 1: the same requests every run), DEMO_BACKEND (auto|ebpf|pcap),
# DEMO_OUT (output directory, out/demo-<time>), DEMO_PREFIX (lab namespaces prefix, stdemo),
# DEMO_DASHBOARD (auto|on|off), DEMO_SETUP (0 skips scripts/setup.sh).
# Exit status: 0 when the run completed with a report (whatever its verdict; the demo's shadow
# is meant to fail), else the failing step's status.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=${DEMO_DURATION:-30}
RATE=${DEMO_RATE:-40}
SEED=${DEMO_SEED:-1}
BACKEND=${DEMO_BACKEND:-auto}
PREFIX=${DEMO_PREFIX:-stdemo}
OUT=${DEMO_OUT:-out/demo-$(date -u +%Y%m%d-%H%M%S)}
DASHBOARD=${DEMO_DASHBOARD:-auto}

DEMO_NAME=demo
# shellcheck source=scripts/lab/demo_start.sh
. scripts/lab/demo_start.sh

mirror_pid= traffic_pid=
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [ -n "$traffic_pid" ] && kill -TERM "$traffic_pid" 2>/dev/null || true
  if [ -n "$mirror_pid" ] && kill -0 "$mirror_pid" 2>/dev/null; then
    kill -TERM "$mirror_pid" 2>/dev/null || true   # the mirror stops cleanly: hooks detached, report written
    wait "$mirror_pid" 2>/dev/null || true
  fi
  if [ "$rc" -ne 0 ] && [ -s "$OUT/mirror/report.html" ]; then
    echo "demo: the report of what was mirrored so far: $OUT/report.txt, $OUT/mirror/report.html" >&2
  fi
  say "lab down"
  "${LAB[@]}" down >&2 || true
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "demo: interrupted" >&2; exit 130' INT TERM

say "lab up (namespaces $PREFIX-client, $PREFIX-primary, $PREFIX-shadow)"
"${LAB[@]}" up >&2
eval "$("${LAB[@]}" env)"

say "mirror: $LAB_PRIMARY_NS:$LAB_PRIMARY_IF port $LAB_PORT -> $LAB_SHADOW_URL (backend $BACKEND)"
dash=()
case "$DASHBOARD" in
  on) dash=(--dashboard) ;;
  off) dash=(--no-dashboard) ;;
esac
# POST /v1/predict, /v1/chat/completions and the gRPC ModelInfer are side-effect free: mirrored.
# POST /v1/orders creates orders: never mirrored (only GET/HEAD/OPTIONS and --allow routes are).
# The gRPC model's FileDescriptorSet names its fields and lets compare read its output tensors.
"$PY" -m shadowtap.lab.grpc_model descriptor "$OUT/model.desc"
ip netns exec "$LAB_PRIMARY_NS" "$ST" mirror \
  --iface "$LAB_PRIMARY_IF" --port "$LAB_PORT" --shadow "$LAB_SHADOW_URL" --backend "$BACKEND" \
  --allow 'POST /v1/predict' --allow 'POST /v1/chat/completions' \
  --allow 'POST /inference.GRPCInferenceService/ModelInfer' --proto-descriptor "$OUT/model.desc" \
  --config "$ROOT/scripts/lab/demo-compare.toml" \
  --duration $((DURATION + 300)) --run-dir "$OUT/mirror" --log-interval 5 "${dash[@]}" \
  > "$OUT/report.txt" &
mirror_pid=$!

# Traffic starts once the capture is attached: a TC filter (eBPF) or a packet socket (libpcap)
# in the primary's namespace. Bounded: after 120 s the traffic starts anyway.
attached() {
  ip netns exec "$LAB_PRIMARY_NS" tc filter show dev "$LAB_PRIMARY_IF" ingress 2>/dev/null | grep -q bpf \
    || [ "$(ip netns exec "$LAB_PRIMARY_NS" sh -c 'wc -l < /proc/net/packet')" -gt 1 ]
}
for _ in $(seq 1200); do
  attached && break
  kill -0 "$mirror_pid" 2>/dev/null || break
  sleep 0.1
done
if ! kill -0 "$mirror_pid" 2>/dev/null; then
  rc=0; wait "$mirror_pid" || rc=$?; mirror_pid=
  echo "demo: shadowtap mirror exited before capturing (status $rc); see above" >&2
  exit "$(( rc == 0 ? 1 : rc ))"
fi

ip netns exec "$LAB_CLIENT_NS" "$PY" "$ROOT/scripts/lab/traffic.py" --target "$LAB_PRIMARY_URL" \
  --rate "$RATE" --duration "$DURATION" --seed "$SEED" --json > "$OUT/traffic.json" 2> "$OUT/traffic.err" &
traffic_pid=$!
traffic_rc=0; wait "$traffic_pid" || traffic_rc=$?; traffic_pid=
sleep 1  # the last answers reach the capture before it stops

kill -TERM "$mirror_pid"
verdict_rc=0; wait "$mirror_pid" || verdict_rc=$?; mirror_pid=

say "report"
cat "$OUT/report.txt"
case "$verdict_rc" in
  0) verdict=PASS ;; 10) verdict=MARGINAL ;; 11) verdict=FAIL ;; 12) verdict=ERROR ;;
  *) echo "demo: shadowtap mirror failed (status $verdict_rc)" >&2; exit "$verdict_rc" ;;
esac
[ "$traffic_rc" -le 1 ] || echo "demo: warning: the traffic generator exited with $traffic_rc (see $OUT/traffic.err)" >&2

say "verdict: $verdict (the shadow runs version 2 with deliberate regressions: a FAIL is the expected outcome)"
cat >&2 <<EOF
files in $OUT:
  report.txt                 the report above
  mirror/report.html         the HTML report (open it in a browser)
  mirror/report.json         the report for machines
  mirror/exchanges.jsonl     what the primary was asked and answered (captured off the wire)
  mirror/results.jsonl       what the shadow answered
  model.desc                 the gRPC model's FileDescriptorSet (compare --proto-descriptor)
  traffic.json               what the traffic generator sent
EOF
