#!/usr/bin/env bash
# Shadow deployment across a fleet, on this host (issue 16). As root on Debian/Ubuntu:
#
#   scripts/demo_fleet.sh
#
# 1. installs what it needs (scripts/setup.sh: apt packages incl. nats-server, .venv with the
#    lake and nats extras);
# 2. brings the fleet lab up (scripts/lab/fleet.py): three primaries (demo service v1), each with
#    a capture agent (`shadowtap capture --sink nats://...?host=<its namespace>`) publishing to one
#    nats-server (JetStream) in the broker's namespace, and one shadow (demo service v2);
# 3. spreads the traffic generator's requests over the three primaries for DEMO_DURATION seconds;
# 4. replays the run's stream to the shadow with two `shadowtap replay nats://...` processes
#    sharing the work (one group: each captured connection in one process, in order);
# 5. splits the stream and the results by agent host and exports the pairs to a Parquet lake
#    (`shadowtap export --host`), one lake for the fleet;
# 6. prints the fleet-wide report from the lake (`shadowtap compare LAKE`) and one DuckDB query
#    (pairs, differing pairs and shadow errors per host);
# 7. tears the fleet down, also on failure or Ctrl-C. Run it again: same steps, a new output dir.
#
# Knobs (environment): DEMO_DURATION (seconds of traffic, 20), DEMO_RATE (requests/s over the
# fleet, 30), DEMO_SEED (1), DEMO_FLEET (primaries, 3), DEMO_BACKEND (the agents' capture
# backend: pcap, ebpf, auto; pcap), DEMO_OUT (out/fleet-<time>), DEMO_PREFIX (stfleet),
# DEMO_SETUP (0 skips scripts/setup.sh).
# Exit status: 0 when the run completed with a report (whatever its verdict: the demo's shadow is
# meant to fail), else the failing step's status.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=${DEMO_DURATION:-20}
RATE=${DEMO_RATE:-30}
SEED=${DEMO_SEED:-1}
FLEET=${DEMO_FLEET:-3}
BACKEND=${DEMO_BACKEND:-pcap}
PREFIX=${DEMO_PREFIX:-stfleet}
OUT=${DEMO_OUT:-out/fleet-$(date -u +%Y%m%d-%H%M%S)}

DEMO_NAME=demo_fleet
# shellcheck source=scripts/lab/demo_start.sh
. scripts/lab/demo_start.sh
CONFIG=$ROOT/scripts/lab/demo-compare.toml

pids=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  say "fleet down"
  "${LAB[@]}" down >&2 || true
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "demo_fleet: interrupted" >&2; exit 130' INT TERM

say "fleet up: $FLEET primaries with capture agents ($BACKEND), a broker (nats-server -js), a shadow"
"${LAB[@]}" up --fleet "$FLEET" --backend "$BACKEND" --subject fleet >&2
eval "$("${LAB[@]}" env)"

say "traffic: $RATE requests/s for $DURATION s, spread over $LAB_PRIMARY_URLS"
per=$("$PY" -c "print(max(1.0, $RATE / $FLEET))")
k=0
for url in $LAB_PRIMARY_URLS; do
  k=$((k + 1))
  ip netns exec "$LAB_CLIENT_NS" "$PY" "$ROOT/scripts/lab/traffic.py" --target "$url" \
    --rate "$per" --duration "$DURATION" --seed "$((SEED * 100 + k))" --json \
    > "$OUT/traffic-$k.json" 2> "$OUT/traffic-$k.err" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || true; done
pids=()
sent=$("$PY" -c "
import json, sys
print(sum(d['sent'] - d['failures'] for d in map(lambda f: json.load(open(f)), sys.argv[1:])))" "$OUT"/traffic-*.json)

# The agents extract at idle priority and publish as they go: wait (bounded) until the stream
# holds what the generators sent (health probes of the lab's own checks come on top).
say "waiting for the agents to publish $sent exchanges"
count() {
  ip netns exec "$LAB_BROKER_NS" "$PY" -c "
import sys
from shadowtap.lake.nats import stream_records
print(sum(1 for k, _, _ in stream_records(sys.argv[1]) if k == 'x'))" "$LAB_STREAM_URL"
}
for _ in $(seq 120); do
  [ "$(count)" -ge "$sent" ] && break
  sleep 1
done
echo "the stream holds $(count) exchanges" >&2

say "replay: two consumers of $LAB_STREAM_URL (group demo) -> the shadow $LAB_SHADOW_URL"
for m in 1 2; do
  # POST /v1/predict and /v1/chat/completions are side-effect free; POST /v1/orders is not sent.
  ip netns exec "$LAB_BROKER_NS" "$ST" replay "$LAB_STREAM_URL?group=demo&members=2&idle=5" \
    -t "$LAB_SHADOW_URL" -o "$OUT/results-$m.jsonl" --speed max \
    --allow 'POST /v1/predict' --allow 'POST /v1/chat/completions' --json \
    > "$OUT/replay-$m.json" 2> "$OUT/replay-$m.err" &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
pids=()
if [ "$rc" -ne 0 ]; then
  echo "demo_fleet: a replay consumer failed (status $rc):" >&2
  cat "$OUT"/replay-*.err >&2
  exit "$rc"
fi
for m in 1 2; do
  echo "consumer $m: $(grep -c . "$OUT/results-$m.jsonl" || true) results" >&2
done

say "lake: the pairs by agent host -> $OUT/lake"
ip netns exec "$LAB_BROKER_NS" "$PY" -m shadowtap.lab.fleet split "$LAB_STREAM_URL" "$OUT/split" \
  "$OUT"/results-1.jsonl "$OUT"/results-2.jsonl > "$OUT/split.json"
for host in $LAB_AGENT_HOSTS; do
  [ -s "$OUT/split/results-$host.jsonl" ] || continue
  "$ST" export "$OUT/split/exchanges-$host.jsonl" "$OUT/split/results-$host.jsonl" \
    --host "$host" --config "$CONFIG" -o "$OUT/lake"
done

say "fleet-wide report from the lake (shadowtap compare $OUT/lake)"
verdict_rc=0
"$ST" compare "$OUT/lake" --config "$CONFIG" --json "$OUT/report.json" > "$OUT/report.txt" \
  || verdict_rc=$?
cat "$OUT/report.txt"
case "$verdict_rc" in
  0) verdict=PASS ;; 10) verdict=MARGINAL ;; 11) verdict=FAIL ;; 12) verdict=ERROR ;;
  *) echo "demo_fleet: shadowtap compare failed (status $verdict_rc)" >&2; exit "$verdict_rc" ;;
esac

say "per host (DuckDB on the lake)"
"$PY" - "$OUT/lake" <<'PY'
import sys
import duckdb
lake = sys.argv[1]
print(duckdb.sql(f"""
    SELECT host, count(*) AS pairs, count(*) FILTER (WHERE shadow_status <> primary_status) AS status_changed,
           count(*) FILTER (WHERE shadow_error_kind IS NOT NULL) AS shadow_errors,
           round(median(primary_ms), 2) AS primary_p50_ms, round(median(shadow_ms), 2) AS shadow_p50_ms
    FROM read_parquet('{lake}/**/*.parquet', hive_partitioning = true)
    GROUP BY host ORDER BY host"""))
PY

say "verdict: $verdict (the shadow runs version 2 with deliberate regressions: a FAIL is the expected outcome)"
cat >&2 <<EOF
files in $OUT:
  report.txt, report.json    the fleet-wide report from the lake
  lake/                      the pairs as Parquet (date=/endpoint=/ partitions, a host column)
  split/                     the run's exchanges and results by agent host (JSONL)
  results-1.jsonl, -2.jsonl  what each replay consumer got from the shadow
  traffic-*.json             what the traffic generators sent
EOF
