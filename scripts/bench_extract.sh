#!/usr/bin/env bash
# Benchmark of `shadowtap extract` against tshark on the same capture, in the same run, for two
# kinds of traffic recorded here by tcpdump on lo (unless a capture is given):
#   HTTP/1.x: nginx on a free loopback port driven by hey with keep-alive; times
#     shadowtap extract FILE -o FILE.jsonl   (pinned, one process; then --jobs, unpinned)
#     tshark -r FILE -Y http.response -T fields -e http.response.code
#   gRPC (h2c): the lab model service and a grpcio load client (9 unary calls in 10, 1
#   server-streaming; scripts/bench_grpc_load.py); times
#     shadowtap extract FILE -o FILE.jsonl   (exchanges with gRPC messages split out)
#     tshark -d tcp.port==PORT,http2 -Y grpc -T fields -e grpc.message_length
#     tshark ... with the .proto loaded and protobuf fields as fields (-e pbf.lab.model.InferResponse.id)
# and prints the rates, the ratios (wall and CPU = user + sys) and shadowtap's peak RSS (GNU time).
# Usage: scripts/bench_extract.sh [CAPTURE]          the HTTP/1.x case, then the gRPC case (not
#                                                    with a CAPTURE; BENCH_GRPC=0 skips it)
#        scripts/bench_extract.sh --grpc [CAPTURE PORT]   the gRPC case alone
# env: BENCH_REQUESTS=100000 BENCH_CONNS=8 (HTTP/1.x), BENCH_GRPC_CALLS=20000 BENCH_GRPC_CONNS=4,
#      BENCH_KEEP=copy.pcap (the HTTP/1.x capture; .grpc.pcap beside it for gRPC), BENCH_CPU=1
#      BENCH_ROUNDS=3 BENCH_JOBS=$(nproc), BENCH_SHADOWTAP=command to measure (another build, for a
#      before/after in the same session; default .venv/bin/shadowtap)
# Needs root (tcpdump on lo). Goals: HTTP/1.x (issue 2) ratio >= 2, peak RSS < 200 MB; gRPC
# (issue 15) >= tshark -Y grpc, >= 2x tshark decoding protobuf.
set -euo pipefail
[ -n "${BENCH_TRACE:-}" ] && set -x
cd "$(dirname "$0")/.."
case_=http
if [ "${1:-}" = --grpc ]; then
  case_=grpc
  shift
fi
work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
py=.venv/bin/python
read -r -a st_cmd <<<"${BENCH_SHADOWTAP:-.venv/bin/shadowtap}"
# shadowtap's modules compiled to bytecode first, as an installed package has them (pip compiles
# at install; this checkout is an editable install, and with PYTHONDONTWRITEBYTECODE set, as on
# the shared machine, every run compiled ~40 modules again: ~0.05 s of CPU a run).
"$py" -m compileall -q shadowtap capture replay compare mirror scripts/lab >/dev/null
# Each tool pinned to the same core (BENCH_CPU, default 1), the tools alternating, BENCH_ROUNDS
# times (default 3); the best round of each counts (scripts/benchlib.py best_times).
cpu=${BENCH_CPU:-1}
rounds=${BENCH_ROUNDS:-3}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# stop PID: end a process this script started, and forget it.
stop() {
  local p keep=()
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  for p in "${pids[@]}"; do [ "$p" != "$1" ] && keep+=("$p"); done
  pids=("${keep[@]}")
}

# record CAPTURE PORT COMMAND...: tcpdump on lo (port PORT) into CAPTURE while COMMAND runs
# (its output to /dev/null).
record() {
  local capture=$1 port=$2 pid
  shift 2
  tcpdump -i lo -U -s 0 -B 65536 -w "$capture" "tcp port $port" 2>"$work/tcpdump.err" &
  pid=$!
  pids+=("$pid")
  sleep 1
  "$@" >/dev/null
  sleep 1
  stop "$pid"
  grep -h "dropped by kernel" "$work/tcpdump.err" || true
}

# timed NAME ROUND COMMAND...: GNU time of COMMAND pinned to $cpu into $work/NAME.ROUND.time.
timed() {
  local name=$1 r=$2
  shift 2
  /usr/bin/time -f "%e %U %S %M" -o "$work/$name.$r.time" taskset -c "$cpu" "$@"
}

http_case() {
  local capture port nginx_pid
  if [ $# -ge 1 ]; then
    capture=$1
  else
    capture=$work/bench.pcap
    port=$(free_port)
    mkdir -p "$work/www" "$work/logs"
    python3 -c "import sys; open(sys.argv[1],'w').write('x'*600+'\n')" "$work/www/index.html"
    cat >"$work/nginx.conf" <<NGX
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
    pids+=("$nginx_pid")
    for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
    record "$capture" "$port" \
      hey -n "${BENCH_REQUESTS:-100000}" -c "${BENCH_CONNS:-8}" "http://127.0.0.1:$port/index.html"
    stop "$nginx_pid"
  fi
  [ -n "${BENCH_KEEP:-}" ] && cp "$capture" "$BENCH_KEEP"
  echo "capture: $capture ($(du -h "$capture" | cut -f1), $(capinfos -c -M "$capture" 2>/dev/null | awk -F: '/Number of packets/ {gsub(/ /,"",$2); print $2}') packets)"

  # Then, unpinned, shadowtap with one worker process per CPU (--jobs) against tshark unpinned:
  # what a user gets from the whole machine (tshark dissects on one thread).
  local jobs=${BENCH_JOBS:-$(nproc)} r
  for r in $(seq "$rounds"); do
    timed st "$r" "${st_cmd[@]}" extract "$capture" -j 1 -o "$work/st.jsonl" 2>"$work/st.err"
    timed ts "$r" tshark -r "$capture" -Y http.response -T fields -e http.response.code >"$work/ts.out" 2>/dev/null
    /usr/bin/time -f "%e %U %S %M" -o "$work/stj.$r.time" \
      "${st_cmd[@]}" extract "$capture" -j "$jobs" -o "$work/stj.jsonl" 2>"$work/stj.err"
    /usr/bin/time -f "%e %U %S %M" -o "$work/tsu.$r.time" \
      tshark -r "$capture" -Y http.response -T fields -e http.response.code >"$work/tsu.out" 2>/dev/null
  done
  cmp -s "$work/st.jsonl" "$work/stj.jsonl" || echo "WARNING: --jobs $jobs output differs from one process's"
  # What the default (--jobs 0) picks for this capture right now: 1 + the CPUs the load average
  # leaves wholly idle (the load includes this benchmark's own previous runs).
  local auto
  auto=$("$py" -c 'import sys; from shadowtap.capture.extract import _auto_jobs, _file_sizes; print(_auto_jobs(_file_sizes(sys.argv[1:])))' "$capture")
  "$py" - "$work" "$rounds" "$(wc -l <"$work/st.jsonl")" "$(wc -l <"$work/ts.out")" "$jobs" "$(cut -d' ' -f1-3 /proc/loadavg)" "$auto" <<'PY'
import sys
sys.path.insert(0, "scripts")
from benchlib import best_times
work, rounds, st_n, ts_n, jobs, load, auto = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6], sys.argv[7]
sw, sc, sr = best_times(work, "st", rounds)
tw, tc, tr = best_times(work, "ts", rounds)
print(f"shadowtap extract: {st_n} exchanges; best wall {sw:.2f} s = {st_n/sw:,.0f}/s; best CPU {sc:.2f} s = {st_n/sc:,.0f}/s; peak RSS {sr:.0f} MB")
print(f"tshark           : {ts_n} responses; best wall {tw:.2f} s = {ts_n/tw:,.0f}/s; best CPU {tc:.2f} s = {ts_n/tc:,.0f}/s; peak RSS {tr:.0f} MB")
print(f"ratio shadowtap/tshark (exchanges/s): wall {(st_n/sw)/(ts_n/tw):.2f}x, CPU {(st_n/sc)/(ts_n/tc):.2f}x  (goal >= 2x; peak RSS goal < 200 MB)")
jw, jc, jr = best_times(work, "stj", rounds)
uw, uc, ur = best_times(work, "tsu", rounds)
print(f"unpinned: shadowtap --jobs {jobs}: best wall {jw:.2f} s = {st_n/jw:,.0f}/s (CPU {jc:.2f} s, peak RSS {jr:.0f} MB a process); "
      f"tshark: best wall {uw:.2f} s = {ts_n/uw:,.0f}/s; ratio wall {(st_n/jw)/(ts_n/uw):.2f}x  (load average {load})")
print(f"default --jobs 0 would use {auto} worker process(es) for this capture at the end of the run")
PY
}

grpc_case() {
  local capture port server_pid r
  "$py" -c 'import sys; sys.path.insert(0, "."); from tests.support.grpc_lab import compile_protos; from pathlib import Path; compile_protos(Path(sys.argv[1]))' "$work/protos"
  if [ $# -ge 2 ]; then
    capture=$1 port=$2
  else
    capture=$work/grpc.pcap
    "$py" scripts/bench_grpc_load.py serve "$work" "$work/port" &
    server_pid=$!
    pids+=("$server_pid")
    for _ in $(seq 100); do [ -s "$work/port" ] && break; sleep 0.1; done
    port=$(cat "$work/port")
    record "$capture" "$port" \
      "$py" scripts/bench_grpc_load.py load "$work" "$port" "${BENCH_GRPC_CALLS:-20000}" "${BENCH_GRPC_CONNS:-4}"
    stop "$server_pid"
  fi
  [ -n "${BENCH_KEEP:-}" ] && cp "$capture" "${BENCH_KEEP%.pcap}.grpc.pcap"
  echo "gRPC capture: $capture ($(du -h "$capture" | cut -f1)), port $port"
  local proto_uat="uat:protobuf_search_paths:\"$work/protos/\",\"TRUE\""
  for r in $(seq "$rounds"); do
    timed st "$r" "${st_cmd[@]}" extract "$capture" -j 1 -o "$work/st.jsonl" 2>"$work/st.err"
    timed ts "$r" tshark -r "$capture" -d "tcp.port==$port,http2" -Y grpc -T fields \
      -e grpc.message_length >"$work/ts.out" 2>/dev/null
    timed tp "$r" tshark -r "$capture" -d "tcp.port==$port,http2" -o "$proto_uat" \
      -o protobuf.preload_protos:TRUE -o protobuf.pbf_as_hf:TRUE \
      -Y grpc -T fields -e pbf.lab.model.InferResponse.id >"$work/tp.out" 2>/dev/null
  done
  "$py" - "$work" "$rounds" "$(wc -l <"$work/st.jsonl")" "$(grep -c '"grpc"' "$work/st.jsonl" || true)" \
    "$(wc -l <"$work/ts.out")" "$(grep -c . "$work/tp.out" || true)" "$(cut -d' ' -f1-3 /proc/loadavg)" <<'PY'
import sys
sys.path.insert(0, "scripts")
from benchlib import best_times
work, rounds, st_n, st_grpc, ts_n, tp_ids, load = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:7]), sys.argv[7]
sw, sc, sr = best_times(work, "st", rounds)
tw, tc, tr = best_times(work, "ts", rounds)
pw, pc, pr = best_times(work, "tp", rounds)
# One call is one exchange for shadowtap and one tshark packet line with gRPC in it or more: the
# rates are of the same file, so the ratio of times is the ratio of calls/s.
print(f"shadowtap extract : {st_n} exchanges ({st_grpc} gRPC calls); best wall {sw:.2f} s = {st_grpc/sw:,.0f} calls/s; CPU {sc:.2f} s; peak RSS {sr:.0f} MB")
print(f"tshark -Y grpc    : {ts_n} packet lines; best wall {tw:.2f} s = {st_grpc/tw:,.0f} calls/s; CPU {tc:.2f} s; peak RSS {tr:.0f} MB")
print(f"tshark + protobuf : {tp_ids} lines with a decoded field; best wall {pw:.2f} s = {st_grpc/pw:,.0f} calls/s; CPU {pc:.2f} s")
print(f"ratio shadowtap/tshark -Y grpc: wall {tw/sw:.2f}x, CPU {tc/sc:.2f}x (goal >= 1x); "
      f"shadowtap/tshark decoding protobuf: wall {pw/sw:.2f}x, CPU {pc/sc:.2f}x (goal >= 2x)  (load average {load})")
PY
}

if [ "$case_" = grpc ]; then
  grpc_case "$@"
else
  http_case "$@"
  # The h2c/gRPC case (issue 15), same run, after the HTTP/1.x one (not for a given capture).
  if [ "${BENCH_GRPC:-1}" = 1 ] && [ $# -lt 1 ]; then
    echo "--- gRPC (h2c) ---"
    grpc_case
  fi
fi
