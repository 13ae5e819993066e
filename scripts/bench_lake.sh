#!/usr/bin/env bash
# Benchmarks of issue 16, each against its peer in the same run (ratios printed; this machine's
# absolute figures are noisy):
#   1. export: `shadowtap export` (join, per-pair diff, Parquet) vs DuckDB converting the same two
#      JSONL files to Parquet (no join, no diff): pairs/s, one core each.
#   2. compare on the same files: one process vs --jobs 2 vs --engine spark local[2] (wall time,
#      peak RSS of the largest process; the three reports' verdicts must agree).
#   3. agent -> JetStream: scripts/bench_broker.sh (NatsSink publishing exchanges with
#      acknowledgements to a real nats-server vs writing them to a local JSONL file).
# Pairs come from tests/support/pairs.py (several endpoints, JSON bodies, errors, binary bodies).
# Usage: scripts/bench_lake.sh   (env: BENCH_PAIRS=100000 BENCH_PUBLISH=50000 BENCH_SPARK=1)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
N=${BENCH_PAIRS:-100000}
P=${BENCH_PUBLISH:-50000}
WORK=$(mktemp -d /tmp/bench-lake.XXXXXX)
chmod 700 "$WORK"
NATS_PID=""
cleanup() { [ -n "$NATS_PID" ] && kill "$NATS_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
pin=()
if command -v taskset >/dev/null; then pin=(taskset -c 0); fi

echo "== generating $N pairs"
"$PY" -c "from tests.support.pairs import write_run; write_run('$WORK', $N)"
du -sh "$WORK"/exchanges.jsonl "$WORK"/results.jsonl

timed() {  # label, command...: wall seconds and peak RSS (KB) of the largest process
  local label=$1; shift
  /usr/bin/time -f "%e %M" -o "$WORK/time" "$@" >/dev/null 2>"$WORK/$label.err" || true
  read -r secs kb < <(tail -n 1 "$WORK/time")  # after "Command exited with non-zero status"
  echo "$label $secs $kb"
}

echo "== 1. export (one core each)"
read -r _ t_export rss_export < <(timed export "${pin[@]}" .venv/bin/shadowtap export "$WORK" -o "$WORK/lake")
read -r _ t_duck rss_duck < <(timed duckdb "${pin[@]}" "$PY" -c "
import duckdb
con = duckdb.connect(); con.execute('SET threads TO 1')
for side in ('exchanges', 'results'):
    con.execute(f\"COPY (SELECT * FROM read_json_auto('$WORK/{side}.jsonl', maximum_object_size=67108864)) TO '$WORK/{side}.parquet' (FORMAT parquet)\")
")
"$PY" - "$N" "$t_export" "$t_duck" <<'PY'
import sys
n, te, td = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
print(f"shadowtap export: {n / te:,.0f} pairs/s ({te:.1f} s)   duckdb JSONL->Parquet: "
      f"{n / td:,.0f} pairs/s ({td:.1f} s)   ratio shadowtap/duckdb {td / te:.2f}")
PY

echo "== 2. compare: one process, --jobs 2, spark local[2]"
run_compare() {  # label, extra args
  local label=$1; shift
  timed "$label" .venv/bin/shadowtap compare "$WORK/exchanges.jsonl" "$WORK/results.jsonl" -q \
    --json "$WORK/$label.json" "$@"
}
read -r _ t_one rss_one < <(run_compare one)
read -r _ t_j2 rss_j2 < <(run_compare jobs2 --jobs 2)
t_sp=""; rss_sp=""
if [ "${BENCH_SPARK:-1}" = 1 ] && command -v java >/dev/null; then
  read -r _ t_sp rss_sp < <(run_compare spark --engine spark --spark-master 'local[2]')
fi
"$PY" - "$WORK" "$N" "$t_one" "$rss_one" "$t_j2" "$rss_j2" "$t_sp" "$rss_sp" <<'PY'
import json, sys
work, n = sys.argv[1], int(sys.argv[2])
rows = [("one process", sys.argv[3], sys.argv[4], "one"), ("--jobs 2", sys.argv[5], sys.argv[6], "jobs2")]
if sys.argv[7]:
    rows.append(("spark local[2]", sys.argv[7], sys.argv[8], "spark"))
base = float(sys.argv[3])
verdicts = set()
for name, t, kb, label in rows:
    rep = json.load(open(f"{work}/{label}.json"))
    verdicts.add(rep["verdict"]["result"])
    print(f"{name:15s} {float(t):7.1f} s  {n / float(t):9,.0f} pairs/s  peak RSS {int(kb) / 1024:6.0f} MB"
          f"  speed-up x{base / float(t):.2f}  verdict {rep['verdict']['result']}")
print("verdicts agree" if len(verdicts) == 1 else f"VERDICTS DIFFER: {verdicts}")
PY

echo "== 3. agent -> JetStream ($P exchanges, acknowledged) vs a local JSONL file"
BENCH_PUBLISH=$P scripts/bench_broker.sh
