#!/usr/bin/env bash
# Benchmark of `shadowtap extract` against tshark on the same capture, in the same run.
# Records a capture of real traffic on this machine (nginx on a free loopback port, driven by hey
# with keep-alive, recorded by tcpdump on lo) unless one is given, then times
#   shadowtap extract FILE -o /dev/null
#   tshark -r FILE -Y http.response -T fields -e http.response.code
# and prints exchanges/s for both, the ratio, and shadowtap's peak RSS (GNU time).
# Usage: scripts/bench_extract.sh [CAPTURE]  (env: BENCH_REQUESTS=100000 BENCH_CONNS=8, BENCH_KEEP=copy.pcap,
#        BENCH_CPU=1 BENCH_ROUNDS=3 BENCH_JOBS=$(nproc), BENCH_SHADOWTAP=command to measure (another build,
#        for a before/after in the same session; default .venv/bin/shadowtap))
# Needs root (tcpdump on lo). Goal (issue 2): ratio >= 2, peak RSS < 200 MB.
# Then the h2c/gRPC case (scripts/bench_extract_grpc.sh) unless BENCH_GRPC=0 or a CAPTURE is given.
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${BENCH_REQUESTS:-100000}
conns=${BENCH_CONNS:-8}
work=$(mktemp -d)
chmod 755 "$work"
nginx_pid= tcpdump_pid=
cleanup() {
  [ -n "$tcpdump_pid" ] && kill "$tcpdump_pid" 2>/dev/null || true
  [ -n "$nginx_pid" ] && kill "$nginx_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

if [ $# -ge 1 ]; then
  capture=$1
else
  capture=$work/bench.pcap
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  mkdir -p "$work/www" "$work/logs"
  python3 -c "import sys; open(sys.argv[1],'w').write('x'*600+'\n')" "$work/www/index.html"
  cat > "$work/nginx.conf" <<NGX
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/logs/error.log;
events { worker_connections 256; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$port; root $work/www; }
}
NGX
  nginx -p "$work" -c "$work/nginx.conf" -e "$work/logs/error.log" &
  nginx_pid=$!
  for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
  tcpdump -i lo -U -s 0 -B 65536 -w "$capture" "tcp port $port" 2>"$work/tcpdump.err" &
  tcpdump_pid=$!
  sleep 1
  hey -n "$requests" -c "$conns" "http://127.0.0.1:$port/index.html" >/dev/null
  sleep 1
  kill "$tcpdump_pid"; wait "$tcpdump_pid" 2>/dev/null || true; tcpdump_pid=
  kill "$nginx_pid"; wait "$nginx_pid" 2>/dev/null || true; nginx_pid=
  grep -h "dropped by kernel" "$work/tcpdump.err" || true
fi

[ -n "${BENCH_KEEP:-}" ] && cp "$capture" "$BENCH_KEEP"
echo "capture: $capture ($(du -h "$capture" | cut -f1), $(capinfos -c -M "$capture" 2>/dev/null | awk -F: '/Number of packets/ {gsub(/ /,"",$2); print $2}') packets)"

# Both pinned to the same core (BENCH_CPU, default 1), alternating, BENCH_ROUNDS times (default 3);
# the best round of each counts (the machine is shared: the least disturbed run is the truest).
# Wall-clock and CPU (user+sys) rates are both printed.
cpu=${BENCH_CPU:-1}
rounds=${BENCH_ROUNDS:-3}
# Then, unpinned, shadowtap with one worker process per CPU (--jobs) against tshark unpinned: what a
# user gets from the whole machine (tshark dissects on one thread).
jobs=${BENCH_JOBS:-$(nproc)}
read -r -a st_cmd <<<"${BENCH_SHADOWTAP:-.venv/bin/shadowtap}"
for r in $(seq "$rounds"); do
  /usr/bin/time -f "%e %U %S %M" -o "$work/st.$r.time" taskset -c "$cpu" \
    "${st_cmd[@]}" extract "$capture" -j 1 -o "$work/st.jsonl" 2>"$work/st.err"
  /usr/bin/time -f "%e %U %S %M" -o "$work/ts.$r.time" taskset -c "$cpu" \
    tshark -r "$capture" -Y http.response -T fields -e http.response.code >"$work/ts.out" 2>/dev/null
  /usr/bin/time -f "%e %U %S %M" -o "$work/stj.$r.time" \
    "${st_cmd[@]}" extract "$capture" -j "$jobs" -o "$work/stj.jsonl" 2>"$work/stj.err"
  /usr/bin/time -f "%e %U %S %M" -o "$work/tsu.$r.time" \
    tshark -r "$capture" -Y http.response -T fields -e http.response.code >"$work/tsu.out" 2>/dev/null
done
cmp -s "$work/st.jsonl" "$work/stj.jsonl" || echo "WARNING: --jobs $jobs output differs from one process's"
# What the default (--jobs 0) picks for this capture right now: 1 + the CPUs the load average
# leaves wholly idle (the load includes this benchmark's own previous runs).
auto=$(.venv/bin/python -c 'import sys; from shadowtap.capture.extract import _auto_jobs, _file_sizes; print(_auto_jobs(_file_sizes(sys.argv[1:])))' "$capture")
st_n=$(wc -l < "$work/st.jsonl")
ts_n=$(wc -l < "$work/ts.out")

python3 - "$work" "$rounds" "$st_n" "$ts_n" "$jobs" "$(cut -d' ' -f1-3 /proc/loadavg)" "$auto" <<'PY'
import sys
work, rounds, st_n, ts_n, jobs, load, auto = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6], sys.argv[7]
def best(tool):
    runs = [tuple(map(float, open(f"{work}/{tool}.{r}.time").read().split())) for r in range(1, rounds + 1)]
    wall = min(r[0] for r in runs)
    cpu = min(r[1] + r[2] for r in runs)
    rss = max(r[3] for r in runs) / 1024
    return wall, cpu, rss
sw, sc, sr = best("st")
tw, tc, tr = best("ts")
print(f"shadowtap extract: {st_n} exchanges; best wall {sw:.2f} s = {st_n/sw:,.0f}/s; best CPU {sc:.2f} s = {st_n/sc:,.0f}/s; peak RSS {sr:.0f} MB")
print(f"tshark           : {ts_n} responses; best wall {tw:.2f} s = {ts_n/tw:,.0f}/s; best CPU {tc:.2f} s = {ts_n/tc:,.0f}/s; peak RSS {tr:.0f} MB")
print(f"ratio shadowtap/tshark (exchanges/s): wall {(st_n/sw)/(ts_n/tw):.2f}x, CPU {(st_n/sc)/(ts_n/tc):.2f}x  (goal >= 2x; peak RSS goal < 200 MB)")
jw, jc, jr = best("stj")
uw, uc, ur = best("tsu")
print(f"unpinned: shadowtap --jobs {jobs}: best wall {jw:.2f} s = {st_n/jw:,.0f}/s (CPU {jc:.2f} s, peak RSS {jr:.0f} MB a process); "
      f"tshark: best wall {uw:.2f} s = {ts_n/uw:,.0f}/s; ratio wall {(st_n/jw)/(ts_n/uw):.2f}x  (load average {load})")
print(f"default --jobs 0 would use {auto} worker process(es) for this capture at the end of the run")
PY

# The h2c/gRPC case (issue 15), same run: a grpcio capture against tshark -Y grpc and tshark
# decoding the protobuf messages (BENCH_GRPC=0 to skip; BENCH_GRPC_CALLS=20000).
if [ "${BENCH_GRPC:-1}" = 1 ] && [ $# -lt 1 ]; then
  echo "--- gRPC (h2c) ---"
  BENCH_CALLS=${BENCH_GRPC_CALLS:-20000} scripts/bench_extract_grpc.sh
fi
