#!/usr/bin/env bash
# Benchmark of `shadowtap replay` against one nginx on loopback, in one run:
#  1. throughput: replay ~100k exchanges at --speed max next to wrk with the same number of
#     connections (wrk -t1: one thread, like the one replay process; wrk is run before and after
#     the replays and averaged, the machine being shared; nginx pinned to core 0, both clients to
#     core 1). The exchanges are real: wrk's own
#     traffic to the same nginx (another port of it), recorded with tcpdump and extracted with
#     `shadowtap extract` (without root: synthesized exchanges of the same shape).
#  2. timing: replay at the recorded timing of Poisson arrivals at 1k and 5k requests/s for
#     BENCH_TIMED_SECONDS (default 60) each: lag p50/p99/max and drift (the lag's median in the
#     first and the last tenth of the run; the last request's lag). The peer here is a naive
#     scheduler, the fault the anchored schedule avoids (GoReplay's, tcpreplay's before 4.5.3):
#     the same requests over aiohttp, sleeping the recorded gap between consecutive requests
#     (the first 20 s of the schedule).
# Usage: scripts/bench_replay.sh   (env: BENCH_CONNECTIONS=32 BENCH_EXCHANGES=100000
#        BENCH_TIMED_SECONDS=60 BENCH_WRK_SECONDS=10)
# Short mode (~1.5 min, for a quiet-machine check of the lag goals):
#        BENCH_TIMED_SECONDS=20 BENCH_WRK_SECONDS=5 scripts/bench_replay.sh
# BENCH_BEFORE=/path/to/another/shadowtap: that build's streaming replay too, in the same run
# (before/after a change; one process on the clients' core, the options every build has).
# Throughput is reported end to end too (command start to end, the results file complete, by
# date around the command; CPU user+sys and peak RSS by GNU time): one worker pinned like wrk,
# and the default (--workers = the CPUs available) unpinned. The timed replays use the default.
# Goals (issue 4, 17): end to end >= 50% of wrk -t1's requests/s (issue 17; the sending phase
# alone >= 30%, issue 4); lag p99 <= 2 ms at 1k/s and <= 5 ms at 5k/s; no drift.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$PWD/.venv/bin/python
ST=$PWD/.venv/bin/shadowtap
C=${BENCH_CONNECTIONS:-32}
N=${BENCH_EXCHANGES:-100000}
T=${BENCH_TIMED_SECONDS:-60}
W=${BENCH_WRK_SECONDS:-10}
command -v wrk >/dev/null || { echo "bench_replay: wrk is missing (scripts/setup.sh installs it)" >&2; exit 4; }
command -v nginx >/dev/null || { echo "bench_replay: nginx is missing (scripts/setup.sh installs it)" >&2; exit 4; }

work=$(mktemp -d)
chmod 755 "$work"
nginx_pid= tcpdump_pid=
cleanup() {
  [ -n "$tcpdump_pid" ] && kill "$tcpdump_pid" 2>/dev/null || true
  [ -n "$nginx_pid" ] && kill -QUIT "$nginx_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rec_port=$(free_port)
port=$(free_port)
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
  server { listen 127.0.0.1:$rec_port; listen 127.0.0.1:$port; location / { return 200 "hello\n"; } }
}
NGX
# nginx on one core, the clients (wrk, shadowtap) on the other: both clients get the same core.
srv_pin=() cli_pin=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then srv_pin=(taskset -c 0) cli_pin=(taskset -c 1); fi
"${srv_pin[@]}" nginx -c "$work/nginx.conf" -p "$work" >/dev/null 2>&1 &
nginx_pid=$!
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$port/" >/dev/null 2>&1 && break
  sleep 0.05
done

wrk_rps() {
  "${cli_pin[@]}" wrk -t1 -c"$C" -d"${1}s" "http://127.0.0.1:$port/" | awk '/^Requests\/sec/ {print $2}'
}

# 1. The input: wrk's traffic to the recording port, captured and extracted.
source_kind=recorded
if [ "$(id -u)" = 0 ] && command -v tcpdump >/dev/null; then
  tcpdump -i lo -B 131072 -s 0 -w "$work/wrk.pcap" "tcp port $rec_port" 2>"$work/tcpdump.err" &
  tcpdump_pid=$!
  sleep 1
  wrk -t1 -c"$C" -d3s "http://127.0.0.1:$rec_port/" >/dev/null
  sleep 0.5
  kill -INT "$tcpdump_pid"; wait "$tcpdump_pid" || true; tcpdump_pid=
  "$ST" extract "$work/wrk.pcap" -o "$work/all.jsonl" 2>/dev/null
  head -n "$N" "$work/all.jsonl" > "$work/ex.jsonl"
else
  source_kind=synthesized
  "$PY" - "$work/ex.jsonl" "$N" "$C" "$rec_port" <<'PY'
import sys, orjson
from shadowtap.records import Exchange, Request, Response, exchange_id
out, n, c, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
t0, idx = 1_700_000_000.0, [0] * c
with open(out, "wb") as f:
    for i in range(n):
        k = i % c
        client, server, ts = f"127.0.0.1:{40000 + k}", f"127.0.0.1:{port}", t0 + i * 1e-5
        req = Request(ts=ts, end_ts=ts, version="HTTP/1.1", headers=(("Host", f"127.0.0.1:{port}"),), method="GET", target="/")
        resp = Response(ts=ts, end_ts=ts, version="HTTP/1.1", headers=(("Content-Length", "6"),), body=b"hello\n", body_len=6,
                        decoded_len=6, status=200, reason="OK")
        f.write(orjson.dumps(Exchange(id=exchange_id(client, server, t0, idx[k]), client=client, server=server,
                                      index=idx[k], request=req, response=resp).to_json()) + b"\n")
        idx[k] += 1
PY
fi
n_ex=$(wc -l < "$work/ex.jsonl")

# End to end: from the command's start to its end (the results file complete), as a user times a
# load test; /usr/bin/time gives the CPU of the command and its children (user+sys) and peak RSS.
timed() {  # timed NAME CMD...: runs CMD, writes NAME.wall (seconds) and NAME.time (GNU time)
  local name=$1; shift
  local t0 t1
  t0=$(date +%s.%N)
  /usr/bin/time -f "%U %S %M" -o "$work/$name.time" "$@" >"$work/$name.json" 2>"$work/$name.err"
  t1=$(date +%s.%N)
  echo "$t0 $t1" > "$work/$name.wall"
}
wrk1=$(wrk_rps "$W")
if [ -n "${BENCH_BEFORE:-}" ]; then  # another build (before a change), one process like it had
  timed before "${cli_pin[@]}" "$BENCH_BEFORE" replay "$work/ex.jsonl" -t "http://127.0.0.1:$port" --speed max \
    -c "$C" --no-progress --json -o "$work/before.jsonl"
fi
# One process on the clients' core (the sending phase alone with --preload, then streaming), then
# the default: --workers = the CPUs available (2 here), not pinned, streaming input.
timed max "${cli_pin[@]}" "$ST" replay "$work/ex.jsonl" -t "http://127.0.0.1:$port" --speed max -c "$C" --preload \
  --workers 1 --no-progress --json -o "$work/max.jsonl"
timed max_stream1 "${cli_pin[@]}" "$ST" replay "$work/ex.jsonl" -t "http://127.0.0.1:$port" --speed max -c "$C" \
  --workers 1 --no-progress --json -o "$work/max_stream1.jsonl"
timed max_stream "$ST" replay "$work/ex.jsonl" -t "http://127.0.0.1:$port" --speed max -c "$C" \
  --no-progress --json -o "$work/max_stream.jsonl"
wrk2=$(wrk_rps "$W")
# The ceiling of a Python asyncio client here: uvloop protocols on the same connections sending one
# fixed request each time the previous answer is complete (no input, no records, no results file),
# on the clients' core. What replay costs above it is its own per-request work.
"${cli_pin[@]}" "$PY" - "$port" "$C" "$N" > "$work/floor.txt" <<'PY'
import asyncio, sys, time, uvloop
port, conns, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
req, left = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode(), [n]
class Bare(asyncio.Protocol):
    def __init__(self, done):
        self.done, self.buf = done, b""
    def connection_made(self, transport):
        self.t = transport
        transport.write(req)
    def data_received(self, data):
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")  # nginx's "hello\n": 6 bytes of body
        if end >= 0 and len(self.buf) >= end + 10:
            self.buf = b""
            left[0] -= 1
            if left[0] > 0:
                self.t.write(req)
            elif not self.done.done():
                self.done.set_result(None)
async def main():
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    for _ in range(conns):
        await loop.create_connection(lambda: Bare(done), "127.0.0.1", port)
    t0, c0 = time.perf_counter(), time.process_time()
    await done
    print(f"{n / (time.perf_counter() - t0):.0f} {(time.process_time() - c0) / n * 1e6:.2f}")
uvloop.run(main())
PY

# 2. Recorded timing at 1k/s and 5k/s (Poisson arrivals over C connections).
for rate in 1000 5000; do
  "$PY" - "$work/t$rate.jsonl" "$rate" "$T" "$C" "$rec_port" <<'PY'
import random, sys, orjson
from shadowtap.records import Exchange, Request, Response, exchange_id
out, rate, secs, c, port = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
rng, t0, t, idx = random.Random(7), 1_700_000_000.0, 0.0, [0] * c
with open(out, "wb") as f:
    while t < secs:
        k = rng.randrange(c)
        client, server, ts = f"127.0.0.1:{40000 + k}", f"127.0.0.1:{port}", t0 + t
        req = Request(ts=ts, end_ts=ts, version="HTTP/1.1", headers=(("Host", f"127.0.0.1:{port}"),), method="GET",
                      target=f"/t?{idx[k]}")
        f.write(orjson.dumps(Exchange(id=exchange_id(client, server, t0, idx[k]), client=client, server=server,
                                      index=idx[k], request=req, response=None).to_json()) + b"\n")
        idx[k] += 1
        t += rng.expovariate(rate)
PY
  # Context for the lag: how late a bare process sleeping 1 ms at a time wakes up meanwhile (the
  # machine's own scheduling stalls, which no client can hide).
  "$PY" - "$T" > "$work/stall$rate.txt" <<'PY' &
import sys, time
lat, end = [], time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    t = time.monotonic()
    time.sleep(0.001)
    lat.append((time.monotonic() - t - 0.001) * 1000)
lat.sort()
print(f"{lat[len(lat) // 2]:.3f} {lat[int(len(lat) * 0.99)]:.3f} {lat[-1]:.3f} {sum(x > 5 for x in lat)}")
PY
  probe_pid=$!
  "$ST" replay "$work/t$rate.jsonl" -t "http://127.0.0.1:$port" -c "$C" --no-progress -o "$work/r$rate.jsonl" \
    --json >"$work/r$rate.json" 2>/dev/null
  wait "$probe_pid"
  # The peer: sleep the recorded gap between consecutive requests (aiohttp, uvloop), no anchor.
  "$PY" - "$work/t$rate.jsonl" "http://127.0.0.1:$port" "$C" > "$work/naive$rate.txt" <<'PY'
import asyncio, sys, time
import aiohttp, orjson, uvloop
path, base, c = sys.argv[1], sys.argv[2], int(sys.argv[3])
reqs = [(d["request"]["ts"], d["request"]["target"]) for d in map(orjson.loads, open(path, "rb"))]
reqs = [r for r in reqs if r[0] - reqs[0][0] < 20]  # its drift shows in 20 s of schedule
async def main():
    lags = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=c)) as s:
        async def one(target):
            async with s.get(base + target) as r:
                await r.read()
        tasks, start, prev = [], time.monotonic(), reqs[0][0]
        for ts, target in reqs:
            await asyncio.sleep(ts - prev)
            prev = ts
            lags.append((time.monotonic() - (start + ts - reqs[0][0])) * 1000)
            tasks.append(asyncio.ensure_future(one(target)))
        await asyncio.gather(*tasks)
    n = len(lags)
    s = sorted(lags)
    tenth = max(1, n // 10)
    first, last = sorted(lags[:tenth])[tenth // 2], sorted(lags[-tenth:])[tenth // 2]
    print(f"{s[n // 2]:.3f} {s[int(n * 0.99)]:.3f} {s[-1]:.3f} {first:.3f} {last:.3f} {lags[-1]:.3f}")
uvloop.run(main())
PY
done

"$PY" - "$work" "$source_kind" "$n_ex" "$C" "$T" "$wrk1" "$wrk2" <<'PY'
import os, platform, sys, orjson
work, kind, n_ex, c, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
wrk1, wrk2 = float(sys.argv[6]), float(sys.argv[7])
wrk = (wrk1 + wrk2) / 2
pre = orjson.loads(open(f"{work}/max.json", "rb").read())
stream = orjson.loads(open(f"{work}/max_stream.json", "rb").read())
st, st_stream = pre["rate"], stream["rate"]
sent, ok = pre["sent"], pre["statuses"].get("2xx", 0)
print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, Python {platform.python_version()}, load average "
      f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; "
      f"input: {n_ex} {kind} exchanges, {c} connections")
print(f"wrk -t1 -c{c}: {wrk1:,.0f} and {wrk2:,.0f} req/s (mean {wrk:,.0f})")
print(f"shadowtap replay --speed max --preload: {st:,.0f} req/s ({sent} sent, {ok} 2xx, client CPU "
      f"{100 * pre['cpu_s'] / pre['elapsed_s']:.0f}% of elapsed) = {100 * st / wrk:.1f}% of wrk (goal >= 30%)")
print(f"shadowtap replay --speed max (streaming input, default workers): {st_stream:,.0f} req/s = "
      f"{100 * st_stream / wrk:.1f}% of wrk (sending phase)")
floor_rps, floor_us = map(float, open(f"{work}/floor.txt").read().split())
print(f"a bare uvloop client (fixed request, no records; the ceiling of Python asyncio here): {floor_rps:,.0f} req/s "
      f"= {100 * floor_rps / wrk:.1f}% of wrk, {floor_us:.1f} us CPU a request")
runs = [("before", "streaming, the BENCH_BEFORE build, 1 process on core 1")] if os.path.exists(f"{work}/before.wall") else []
for name, what in (*runs, ("max", "--preload, 1 worker on core 1"), ("max_stream1", "streaming, 1 worker on core 1"),
                   ("max_stream", f"streaming, {len(stream.get('workers', [])) or 1} workers, not pinned")):
    t0, t1 = map(float, open(f"{work}/{name}.wall").read().split())
    user, sys_, rss = open(f"{work}/{name}.time").read().split()[-3:]
    lines = sum(1 for _ in open(f"{work}/{name}.jsonl", "rb"))
    e2e = lines / (t1 - t0)
    cpu = float(user) + float(sys_)
    print(f"  end to end ({what}): {lines} results in {t1 - t0:.2f} s = {e2e:,.0f} req/s = "
          f"{100 * e2e / wrk:.1f}% of wrk (goal >= 50%); CPU user+sys {cpu:.2f} s ({user} + {sys_}; "
          f"{cpu / max(1, lines) * 1e6:.1f} us a request), peak RSS {int(rss) // 1024} MiB")
for rate, goal in ((1000, 2.0), (5000, 5.0)):
    rs = [orjson.loads(line) for line in open(f"{work}/r{rate}.jsonl", "rb")]
    rs.sort(key=lambda r: r["scheduled"])
    lags = [(r["sent"] - r["scheduled"]) * 1000 for r in rs]
    n = len(lags)
    s = sorted(lags)
    tenth = max(1, n // 10)
    first, last = sorted(lags[:tenth])[tenth // 2], sorted(lags[-tenth:])[tenth // 2]
    errors = sum(1 for r in rs if r["error"])
    rsum = orjson.loads(open(f"{work}/r{rate}.json", "rb").read())
    cpu = 100 * rsum["cpu_s"] / rsum["elapsed_s"]
    span = rs[-1]["scheduled"] - rs[0]["scheduled"]
    print(f"recorded timing {rate}/s for {span:.0f} s: {n} sent, {errors} errors, client CPU {cpu:.0f}%; lag p50 {s[n // 2]:.3f} "
          f"p99 {s[int(n * 0.99)]:.3f} max {s[-1]:.3f} ms (goal p99 <= {goal:g}); drift: lag p50 first tenth "
          f"{first:.3f}, last tenth {last:.3f}, last request {lags[-1]:.3f} ms")
    for w in rsum.get("workers", []):
        wl = w["lag_ms"] or {"p50": 0, "p99": 0, "max": 0}
        print(f"  worker {w['worker']}: {w['sent']} sent, lag p50 {wl['p50']:.3f} p99 {wl['p99']:.3f} "
              f"max {wl['max']:.3f} ms (its own histogram)")
    sp50, sp99, smax, sn = open(f"{work}/stall{rate}.txt").read().split()
    print(f"  meanwhile a bare process sleeping 1 ms woke late by p50 {sp50} p99 {sp99} max {smax} ms "
          f"({sn} stalls over 5 ms)")
    p50, p99, mx, f1, l1, last_lag = open(f"{work}/naive{rate}.txt").read().split()
    print(f"  peer (sleep between records, aiohttp, first 20 s): lag p50 {p50} p99 {p99} max {mx} ms; first tenth {f1}, "
          f"last tenth {l1}, last request {last_lag} ms")
PY
