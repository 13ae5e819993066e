#!/usr/bin/env bash
# Records the small captures in pcaps/: nginx (nginx-light) on a free loopback port, driven by curl
# (and wrk for keep-alive load), recorded by tcpdump on lo. Needs root (tcpdump). Re-running makes
# new captures (timestamps differ); pcaps/README.md says what each holds.
#   scripts: pcaps/record.sh [OUTDIR]   (default: pcaps/)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-pcaps}
work=$(mktemp -d)
chmod 755 "$work"  # nginx's worker (nobody) reads the files
nginx_pid= tcpdump_pid=
cleanup() {
  [ -n "$tcpdump_pid" ] && kill "$tcpdump_pid" 2>/dev/null || true
  [ -n "$nginx_pid" ] && kill "$nginx_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/www" "$work/logs"
python3 - "$work/www" <<'PY'
import os, sys
root = sys.argv[1]
open(os.path.join(root, "index.html"), "w").write("<html><body>hello from nginx</body></html>\n")
open(os.path.join(root, "big.txt"), "w").write("".join(f"line {i} of a text big enough to be gzip-compressed and chunked\n" for i in range(3000)))
open(os.path.join(root, "data.bin"), "wb").write(bytes(range(256)) * 64)
PY
cat > "$work/nginx.conf" <<NGX
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/logs/error.log;
events { worker_connections 256; }
http {
  access_log off;
  default_type text/plain;
  keepalive_requests 100000;
  server {
    listen 127.0.0.1:$port;
    listen [::1]:$port;
    root $work/www;
    gzip on; gzip_types text/plain; gzip_min_length 100;
    if_modified_since before;
    location = /empty { return 204; }
    location = /post { client_body_buffer_size 1m; return 200 "posted\n"; }
    location = /redirect { return 302 /index.html; }
    location = /ws { return 101; }
  }
}
NGX
nginx -p "$work" -c "$work/nginx.conf" -e "$work/logs/error.log" &
nginx_pid=$!
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done

record() {  # record NAME COMMAND...  (pcapng names are recorded by dumpcap, others by tcpdump)
  local name=$1; shift
  if [[ $name == *.pcapng ]]; then
    dumpcap -q -i lo -f "tcp port $port" -w "$work/$name" 2>/dev/null &
  else
    tcpdump -i lo -U -s 0 -w "$work/$name" "tcp port $port" 2>/dev/null &
  fi
  tcpdump_pid=$!
  sleep 0.5
  "$@" >/dev/null 2>&1 || true
  sleep 0.5
  kill "$tcpdump_pid"; wait "$tcpdump_pid" 2>/dev/null || true; tcpdump_pid=
  cp "$work/$name" "$out/$name"; chmod 0644 "$out/$name"
}
u="http://127.0.0.1:$port"
curl_mix() {
  curl -s "$u/" "$u/big.txt" "$u/data.bin" "$u/missing" "$u/empty" "$u/redirect"
  curl -s --compressed "$u/big.txt"
  curl -s -I "$u/index.html"
  curl -s -X POST --data-binary 'a=1&b=2' -H 'Authorization: Bearer secret-token' -H 'Cookie: sid=abc' "$u/post"
  curl -s -H 'Expect: 100-continue' --data-binary @"$work/www/big.txt" "$u/post"
  curl -s --http1.0 "$u/index.html"
  curl -s -H "If-Modified-Since: $(date -u -R -d '+1 day' | sed 's/+0000/GMT/')" "$u/index.html"
  curl -s -H 'Transfer-Encoding: chunked' --data-binary @"$work/www/index.html" "$u/post"
}
record curl-mix.pcap curl_mix
record hey-keepalive.pcap hey -n 300 -c 3 "$u/index.html"
record curl-ipv6.pcapng curl -s "http://[::1]:$port/" "http://[::1]:$port/big.txt" --compressed
echo "recorded into $out/ (port $port)"
