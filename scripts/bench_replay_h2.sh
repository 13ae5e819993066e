#!/usr/bin/env bash
# Benchmark of `shadowtap replay` of plain HTTP/2 exchanges (replay/h2_client.py) against one
# nginx h2c listener on loopback, next to h2load (nghttp2's load client, the peer) sending the
# same number of requests over the same number of connections, in one run; and the same
# exchanges captured as HTTP/1.1 replayed to an HTTP/1.1 port of the same nginx (our HTTP/1.x
# client: what HTTP/2 costs us). nginx pinned to core 0, the clients to core 1. Each client's CPU
# (user+sys, GNU time) per request is the figure for a shared machine; requests/s too.
# Usage: scripts/bench_replay_h2.sh   (env: BENCH_CONNECTIONS=32 BENCH_EXCHANGES=50000)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$PWD/.venv/bin/python
ST=$PWD/.venv/bin/shadowtap
C=${BENCH_CONNECTIONS:-32}
N=${BENCH_EXCHANGES:-50000}
for tool in nginx h2load; do
  command -v "$tool" >/dev/null || { echo "bench_replay_h2: $tool is missing (scripts/setup.sh installs it)" >&2; exit 4; }
done

work=$(mktemp -d)
chmod 755 "$work"
nginx_pid=
cleanup() {
  [ -n "$nginx_pid" ] && kill -QUIT "$nginx_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
h2_port=$(free_port)
h1_port=$(free_port)
cat > "$work/nginx.conf" <<NGX
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work; proxy_temp_path $work; fastcgi_temp_path $work;
  uwsgi_temp_path $work; scgi_temp_path $work;
  keepalive_requests 10000000;
  http2_max_concurrent_streams 128;
  server { listen 127.0.0.1:$h2_port http2; location / { return 200 "hello\n"; } }
  server { listen 127.0.0.1:$h1_port; location / { return 200 "hello\n"; } }
}
NGX
srv_pin=() cli_pin=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then srv_pin=(taskset -c 0) cli_pin=(taskset -c 1); fi
"${srv_pin[@]}" nginx -c "$work/nginx.conf" -p "$work" >/dev/null 2>&1 &
nginx_pid=$!
for _ in $(seq 100); do [ -s "$work/nginx.pid" ] && break; sleep 0.05; done

# The input: N exchanges over C captured connections, as HTTP/2 and as HTTP/1.1.
for version in HTTP/2 HTTP/1.1; do
  "$PY" - "$work/ex-${version#HTTP/}.jsonl" "$N" "$C" "$version" <<'PY'
import sys, orjson
from shadowtap.records import Exchange, Request, exchange_id
out, n, c, version = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
t0, idx = 1_700_000_000.0, [0] * c
with open(out, "wb") as f:
    for i in range(n):
        k = i % c
        client, server, ts = f"10.9.0.1:{40000 + k}", "10.9.0.2:80", t0 + i * 1e-5
        req = Request(ts=ts, end_ts=ts, version=version, headers=(("Host", "shop.example"),), method="GET",
                      target=f"/p?{idx[k]}")
        f.write(orjson.dumps(Exchange(id=exchange_id(client, server, t0, idx[k]), client=client, server=server,
                                      index=idx[k], request=req, response=None).to_json()) + b"\n")
        idx[k] += 1
PY
done

timed() {  # timed NAME CMD...: wall seconds and GNU time's user, sys
  local name=$1; shift
  local t0 t1
  t0=$(date +%s.%N)
  /usr/bin/time -f "%U %S" -o "$work/$name.time" "$@" >"$work/$name.out" 2>"$work/$name.err"
  t1=$(date +%s.%N)
  echo "$t0 $t1" > "$work/$name.wall"
}
# h2load: -m 2 streams a connection at most (the replay's 64 in flight over 32 lanes), before
# and after the replays (the machine is shared): the mean is the peer.
timed h2load1 "${cli_pin[@]}" h2load -c "$C" -m 2 -n "$N" "http://127.0.0.1:$h2_port/p"
timed h2 "${cli_pin[@]}" "$ST" replay "$work/ex-2.jsonl" -t "http://127.0.0.1:$h2_port" --speed max \
  -c 64 --preload --no-progress --json -o "$work/r2.jsonl"
timed h1 "${cli_pin[@]}" "$ST" replay "$work/ex-1.1.jsonl" -t "http://127.0.0.1:$h1_port" --speed max \
  -c 64 --preload --no-progress --json -o "$work/r1.jsonl"
timed h2load2 "${cli_pin[@]}" h2load -c "$C" -m 2 -n "$N" "http://127.0.0.1:$h2_port/p"

"$PY" - "$work" "$N" "$C" <<'PY'
import json, os, sys
work, n, c = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def fig(name):
    t0, t1 = map(float, open(f"{work}/{name}.wall").read().split())
    user, sys_ = map(float, open(f"{work}/{name}.time").read().split()[:2])
    return t1 - t0, user + sys_
def ok(name):
    if name.startswith("h2load"):
        text = open(f"{work}/{name}.out").read()
        line = next(l for l in text.splitlines() if l.startswith("status codes:"))
        return int(line.split()[2])
    return json.loads(open(f"{work}/{name}.out").read().splitlines()[-1])["statuses"].get("2xx", 0)
rows = {name: (*fig(name), ok(name)) for name in ("h2load1", "h2", "h1", "h2load2")}
peer_cpu = (rows["h2load1"][1] + rows["h2load2"][1]) / 2
peer_rate = (n / rows["h2load1"][0] + n / rows["h2load2"][0]) / 2
load = os.getloadavg()[0]
print(f"bench_replay_h2: {n} requests over {c} connections, load average {load:.1f}")
for name, label in (("h2", "shadowtap replay, HTTP/2 (h2c)"), ("h1", "shadowtap replay, HTTP/1.1"),
                    ("h2load1", "h2load (before)"), ("h2load2", "h2load (after)")):
    wall, cpu, good = rows[name]
    print(f"  {label:32s} {n / wall:10,.0f} req/s  CPU {cpu:6.2f} s = {cpu / n * 1e6:6.1f} us/request  2xx {good}")
h2_wall, h2_cpu, _ = rows["h2"]
print(f"  ratio h2 replay / h2load: rate {n / h2_wall / peer_rate:.1%}, CPU a request x{h2_cpu / peer_cpu:.1f}")
print(f"  ratio h2 replay / h1 replay: CPU a request x{h2_cpu / rows['h1'][1]:.2f}")
PY
