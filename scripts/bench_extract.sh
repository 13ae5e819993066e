#!/usr/bin/env bash
# Benchmark of `shadowtap extract` against tshark on the same capture, in the same run.
# Records a capture of real traffic on this machine (nginx on a free loopback port, driven by hey
# with keep-alive, recorded by tcpdump on lo) unless one is given, then times
#   shadowtap extract FILE -o /dev/null
#   tshark -r FILE -Y http.response -T fields -e http.response.code
# and prints exchanges/s for both, the ratio, and shadowtap's peak RSS (GNU time).
# Usage: scripts/bench_extract.sh [CAPTURE]  (env: BENCH_REQUESTS=100000 BENCH_CONNS=8, BENCH_KEEP=copy.pcap)
# Needs root (tcpdump on lo). Goal (issue 2): ratio >= 2, peak RSS < 200 MB.
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

# shadowtap
/usr/bin/time -f "%e %M" -o "$work/st.time" .venv/bin/shadowtap extract "$capture" -o "$work/st.jsonl" 2>"$work/st.err"
st_n=$(wc -l < "$work/st.jsonl")
read -r st_s st_kb < "$work/st.time"
# tshark
/usr/bin/time -f "%e %M" -o "$work/ts.time" tshark -r "$capture" -Y http.response -T fields -e http.response.code >"$work/ts.out" 2>/dev/null
ts_n=$(wc -l < "$work/ts.out")
read -r ts_s ts_kb < "$work/ts.time"

python3 - "$st_n" "$st_s" "$st_kb" "$ts_n" "$ts_s" "$ts_kb" <<'PY'
import sys
st_n, st_s, st_kb, ts_n, ts_s, ts_kb = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
st_rate = st_n / st_s if st_s else float("inf")
ts_rate = ts_n / ts_s if ts_s else float("inf")
print(f"shadowtap extract: {st_n} exchanges in {st_s:.2f} s = {st_rate:,.0f} exchanges/s, peak RSS {st_kb/1024:.0f} MB")
print(f"tshark           : {ts_n} responses in {ts_s:.2f} s = {ts_rate:,.0f} exchanges/s, peak RSS {ts_kb/1024:.0f} MB")
print(f"ratio (shadowtap/tshark exchanges/s): {st_rate/ts_rate:.2f}x  (goal >= 2x; peak RSS goal < 200 MB)")
PY
