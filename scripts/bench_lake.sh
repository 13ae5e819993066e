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
# Usage: scripts/bench_lake.sh   (env: BENCH_PAIRS=100000 BENCH_PUBLISH=50000 BENCH_SPARK=1
#   BENCH_ONLY="1 2 3": the parts to run)
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

timed() {  # label, command...: wall seconds, peak RSS (KB) of the largest process, CPU seconds
  local label=$1; shift  # (user + sys of the command and every child it waited for)
  /usr/bin/time -f "%e %M %U %S" -o "$WORK/time" "$@" >/dev/null 2>"$WORK/$label.err" || true
  read -r secs kb user sys < <(tail -n 1 "$WORK/time")  # after "exited with non-zero status"
  echo "$label $secs $kb $(awk "BEGIN {print $user + $sys}")"
}

only() { case " ${BENCH_ONLY:-1 2 3} " in *" $1 "*) return 0;; esac; return 1; }

if only 1; then
echo "== 1. export (one core each; pairs per CPU second, the process's user + sys)"
read -r _ w_export rss_export t_export < <(timed export "${pin[@]}" .venv/bin/shadowtap export "$WORK" -o "$WORK/lake")
grep -q "reading record by record" "$WORK/export.err" && echo "(export took the record path)"
read -r _ w_duck rss_duck t_duck < <(timed duckdb "${pin[@]}" "$PY" -c "
import duckdb
con = duckdb.connect(); con.execute('SET threads TO 1')
for side in ('exchanges', 'results'):
    con.execute(f\"COPY (SELECT * FROM read_json_auto('$WORK/{side}.jsonl', maximum_object_size=67108864)) TO '$WORK/{side}.parquet' (FORMAT parquet)\")
")
"$PY" - "$N" "$t_export" "$t_duck" "$w_export" "$w_duck" "$rss_export" "$rss_duck" <<'PY'
import sys
n, te, td, we, wd = int(sys.argv[1]), *map(float, sys.argv[2:6])
me, md = int(sys.argv[6]) / 1024, int(sys.argv[7]) / 1024
print(f"shadowtap export: {n / te:,.0f} pairs/s of CPU ({te:.2f} s CPU, {we:.1f} s wall, "
      f"{me:.0f} MB)   duckdb JSONL->Parquet: {n / td:,.0f} pairs/s of CPU ({td:.2f} s CPU, "
      f"{wd:.1f} s wall, {md:.0f} MB)   ratio shadowtap/duckdb {td / te:.2f}   goal 50,000: "
      f"{'met' if n / te >= 50000 else 'NOT met'}")
PY
fi

if only 2; then
echo "== 2. compare: one process, --jobs 2, spark local[2]"
run_compare() {  # label, extra args
  local label=$1; shift
  timed "$label" .venv/bin/shadowtap compare "$WORK/exchanges.jsonl" "$WORK/results.jsonl" -q \
    --json "$WORK/$label.json" "$@"
}
read -r _ t_one rss_one c_one < <(run_compare one)
read -r _ t_j2 rss_j2 c_j2 < <(run_compare jobs2 --jobs 2)
t_sp=""; rss_sp=""; c_sp=""
if [ "${BENCH_SPARK:-1}" = 1 ] && command -v java >/dev/null; then
  read -r _ t_sp rss_sp c_sp < <(run_compare spark --engine spark --spark-master 'local[2]')
fi
"$PY" - "$WORK" "$N" "$t_one" "$rss_one" "$c_one" "$t_j2" "$rss_j2" "$c_j2" "$t_sp" "$rss_sp" "$c_sp" <<'PY'
import json, sys
work, n = sys.argv[1], int(sys.argv[2])
rows = [("one process", *sys.argv[3:6], "one"), ("--jobs 2", *sys.argv[6:9], "jobs2")]
if sys.argv[9]:
    rows.append(("spark local[2]", *sys.argv[9:12], "spark"))
base = float(sys.argv[3])
verdicts = set()
for name, t, kb, cpu, label in rows:
    rep = json.load(open(f"{work}/{label}.json"))
    verdicts.add(rep["verdict"]["result"])
    print(f"{name:15s} {float(t):7.1f} s wall  {n / float(t):9,.0f} pairs/s  peak RSS "
          f"{int(kb) / 1024:6.0f} MB  speed-up x{base / float(t):.2f}  CPU {float(cpu):6.1f} s = "
          f"{float(cpu) / n * 1e6:5.0f} us/pair  verdict {rep['verdict']['result']}")
print("verdicts agree" if len(verdicts) == 1 else f"VERDICTS DIFFER: {verdicts}")
PY
fi

only 3 || exit 0
echo "== 3. agent -> JetStream ($P exchanges, acknowledged) vs a local JSONL file"
BENCH_PUBLISH=$P scripts/bench_broker.sh
