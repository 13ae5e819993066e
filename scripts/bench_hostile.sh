#!/usr/bin/env bash
# Hostile captures (issue 12): peak memory and time of `shadowtap extract` on each, against
# tshark (the peer) on the same file in the same run. Goal: <= 300 MB and <= 5 s each.
# Then compare's wide JSON diff (item 8): 10 pairs of 300k-element arrays differing everywhere.
#
# Usage: scripts/bench_hostile.sh [OUTDIR]   (captures are built there, default a private tmp dir)
# Each command runs under a 4 GiB address-space limit (prlimit) and a 90 s timeout, so a blow-up
# shows as "killed" (or "timeout") instead of taking the shared machine down.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=$ROOT/.venv/bin/python
ST=$ROOT/.venv/bin/shadowtap
OUT=${1:-$(mktemp -d /tmp/shadowtap-hostile.XXXXXX)}
mkdir -p "$OUT"
chmod 700 "$OUT"
LIMIT=$((4 << 30))

echo "# building the hostile captures in $OUT" >&2
PYTHONPATH=$ROOT "$PY" -m tests.support.hostile_pcaps "$OUT" >&2

# measure NAME CMD...: prints "seconds peak_MB status"
measure() {
    local log
    log=$(mktemp)
    set +e
    /usr/bin/time -f "%e %M" -o "$log" prlimit --as=$LIMIT timeout 90 "$@" >/dev/null 2>&1
    local rc=$?
    set -e
    # /usr/bin/time puts "Command exited with non-zero status N" (or "terminated by signal") first
    read -r secs kib < <(tail -1 "$log")
    rm -f "$log"
    local status=ok
    if [ "$rc" -eq 124 ]; then status=timeout; elif [ "$rc" -ge 128 ]; then status=killed
    elif [ "$rc" -ne 0 ]; then status="exit-$rc"; fi
    printf '%s %d %s' "$secs" $((kib / 1024)) "$status"
}

printf '%-14s %10s | %8s %8s %-8s | %8s %8s %-8s | %s\n' capture size_MB st_s st_MB st tshark_s tshark_MB tshark goal
for cap in "$OUT"/*.pcap; do
    name=$(basename "$cap" .pcap)
    size=$(( $(stat -c %s "$cap") / 1048576 ))
    read -r s_s s_mb s_st <<<"$(measure "$ST" extract "$cap" -o /dev/null --jobs 1)"
    read -r t_s t_mb t_st <<<"$(measure tshark -n -r "$cap" -Y http -T fields -e http.request.method -e http.response.code)"
    goal=met
    if [ "$s_st" != ok ] || [ "$s_mb" -gt 300 ] || awk "BEGIN{exit !($s_s > 5)}"; then goal=NOT-MET; fi
    printf '%-14s %10s | %8s %8s %-8s | %8s %8s %-8s | %s\n' "$name" "$size" "$s_s" "$s_mb" "$s_st" "$t_s" "$t_mb" "$t_st" "$goal"
done

echo
echo "# compare: 10 pairs of 300k-element JSON arrays differing everywhere"
WIDE=$OUT/wide
mkdir -p "$WIDE"
PYTHONPATH=$ROOT "$PY" - "$WIDE" <<'EOF'
import sys
import orjson
from shadowtap.jsonl import JsonlWriter
from shadowtap.records import Exchange, Request, Response, Result, exchange_id
out = sys.argv[1]
pb = orjson.dumps(list(range(300_000)))
sb = orjson.dumps([x + 1 for x in range(300_000)])
h = (("Content-Type", "application/json"),)
with JsonlWriter(out + "/ex.jsonl") as we, JsonlWriter(out + "/res.jsonl") as wr:
    for i in range(10):
        ts = 1.7e9 + i
        req = Request(ts, ts, "HTTP/1.1", (("Host", "a"),), method="GET", target=f"/wide/{i}")
        ex = Exchange(exchange_id("c", "s", ts, i), "10.0.0.1:1", "10.0.0.2:80", i, req,
                      Response(ts, ts + 0.01, "HTTP/1.1", h, pb, len(pb), status=200), ttfb_ms=1, total_ms=10)
        res = Result(ex.id, "http://shadow/wide", ts, ts,
                     Response(ts, ts + 0.01, "HTTP/1.1", h, sb, len(sb), status=200), 1, 10)
        we.write(ex.to_json())
        wr.write(res.to_json())
EOF
read -r c_s c_mb c_st <<<"$(measure "$ST" compare "$WIDE/ex.jsonl" "$WIDE/res.jsonl" -q)"
# The diff stage alone (the process above includes start-up: imports of scipy, reading 40 MB)
PYTHONPATH=$ROOT "$PY" - "$WIDE" <<'EOF'
import resource, sys, time
from shadowtap.compare.aggregate import Comparison
from shadowtap.compare.config import CompareConfig
from shadowtap.jsonl import read_jsonl
from shadowtap.records import Exchange, Result
d = sys.argv[1]
pairs = list(zip(read_jsonl(d + "/ex.jsonl", Exchange.from_json), read_jsonl(d + "/res.jsonl", Result.from_json)))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
c = Comparison(CompareConfig())
t = time.perf_counter()
for ex, res in pairs:
    c.add(ex, res)
el = time.perf_counter() - t
grow = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(f"diff of the 10 pairs in process: {el:.3f} s, peak memory growth {grow:.0f} MB")
EOF
echo "compare command (start-up included): ${c_s} s, ${c_mb} MB, ${c_st} (exit 11 = verdict fail, expected)"
echo "captures left in $OUT"
