#!/usr/bin/env bash
# Issue 16's scale benchmark: compare on the lake at growing sizes, three engines on the same
# lake: one process, local --jobs 2, Spark local[2]. For each: wall time, peak RSS of the largest
# process (max_MB) and of all its processes together (sum_MB), CPU (user + sys) and CPU per pair,
# over the command and every process it started,
# Spark's JVM and Python workers included (benchlib.py reaped: a child subreaper waits for all of
# them), and the verdicts (they must agree).
# The lake is made directly as Parquet (tests/support/pairs.py write_lake: 100,000 generated
# pairs, then copies of their files with unique ids), in a private temporary directory removed
# at the end; nothing is committed.
# Usage: scripts/bench_lake_scale.sh   (env: BENCH_SIZES="100000 1000000 3000000"
#   BENCH_ENGINES="one jobs2 spark", BENCH_TIMEOUT=1800 seconds per command)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
SIZES=${BENCH_SIZES:-100000 1000000 3000000}
ENGINES=${BENCH_ENGINES:-one jobs2 spark}
WORK=$(mktemp -d /tmp/bench-lake-scale.XXXXXX)
chmod 700 "$WORK"
trap 'rm -rf "$WORK"' EXIT

echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cpus, load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-10s %-15s %9s %10s %9s %9s %9s %11s %s\n' pairs engine wall_s pairs/s max_MB sum_MB cpu_s \
  cpu_us/pair verdict
for n in $SIZES; do
  lake="$WORK/lake-$n"
  "$PY" -c "from tests.support.pairs import write_lake; write_lake('$lake', $n)"
  for engine in $ENGINES; do
    case $engine in
      one) args=(--jobs 1) ;;
      jobs2) args=(--jobs 2) ;;
      spark) command -v java >/dev/null || continue; args=(--engine spark --spark-master 'local[2]') ;;
    esac
    read -r secs kb kbsum cpu < <("$PY" scripts/benchlib.py reaped "${BENCH_TIMEOUT:-1800}" \
      .venv/bin/shadowtap compare "$lake" -q --json "$WORK/$engine.json" "${args[@]}" \
      2>"$WORK/$engine.err")
    "$PY" - "$n" "$engine" "$secs" "$kb" "$kbsum" "$cpu" "$WORK/$engine.json" <<'PY'
import json, sys
n, engine, secs, kb, kbsum, cpu = int(sys.argv[1]), sys.argv[2], *map(float, sys.argv[3:7])
try:
    rep = json.load(open(sys.argv[7]))
    verdict = f"{rep['verdict']['result']} ({rep['summary']['pairs']} pairs)"
except (OSError, ValueError):
    verdict = "NO REPORT (timeout or failure)"
print(f"{n:<10} {engine:<15} {secs:9.1f} {n / secs:10,.0f} {kb / 1024:9.0f} {kbsum / 1024:9.0f} {cpu:9.1f} "
      f"{cpu / n * 1e6:11.1f} {verdict}")
PY
    rm -f "$WORK/$engine.json"
  done
  rm -rf "$lake"
done
echo "# end $(date -u '+%H:%M UTC'), load $(cut -d' ' -f1-3 /proc/loadavg)"
