#!/usr/bin/env bash
# Benchmark of the comparison core (compare.aggregate.Comparison.add: status, headers, bodies,
# noise bookkeeping, latency and value reservoirs) against a plain deepdiff loop over the same
# pairs, in the same run, on one core.
# Pairs: ~1 KB JSON bodies (the size a typical API answers), realistic headers (Date and
# X-Request-Id differ on every pair), 1% of the pairs with a differing field. The peer parses both
# bodies and runs DeepDiff on them, the least a deepdiff-based comparison must do.
# Usage: scripts/bench_compare.sh   (env: BENCH_PAIRS=50000 BENCH_PEER_PAIRS=3000)
# Goal (issue 5): >= 20k pairs/s on one core.
# The generative case (issue 13: ~1 KB LLM answers, half streamed as 50 SSE events, text metrics
# on) is scripts/bench_llm.sh; BENCH_GENAI=1 runs it after this one.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
pin=()
if command -v taskset >/dev/null; then pin=(taskset -c 0); fi
"${pin[@]}" "$PY" - <<'PY'
import json
import os
import platform
import random
import time
import uuid

import orjson
from deepdiff import DeepDiff

from shadowtap.compare.aggregate import Comparison
from shadowtap.compare.report_json import dumps
from shadowtap.records import Exchange, Request, Response, Result

N = int(os.environ.get("BENCH_PAIRS", "50000"))
M = min(N, int(os.environ.get("BENCH_PEER_PAIRS", "3000")))
rng = random.Random(42)
T0 = time.time()


def body(i):
    return {
        "id": i, "user": {"id": 1000 + i % 97, "name": f"user {i % 97}", "tier": ["free", "pro"][i % 2]},
        "items": [{"sku": f"SKU-{(i + k) % 500:04d}", "name": f"article {(i + k) % 500}", "qty": k + 1,
                   "price": round(3.5 * (k + 1), 2), "tags": ["a", "b", "c"][: 1 + k % 3]} for k in range(9)],
        "prediction": {"label": ["cat", "dog", "bird"][i % 3], "score": round(rng.random(), 6)},
        "pagination": {"page": 1 + i % 10, "per_page": 6, "total": 60},
        "links": {"self": f"/v1/orders/{i}", "next": f"/v1/orders/{i + 1}"},
        "note": "delivered to the front desk between nine and five",
    }


pairs = []
for i in range(N):
    ts = T0 + i * 0.001
    b = body(i)
    pb = orjson.dumps(b)
    if i % 100 == 7:  # 1% differ
        b["items"][2]["price"] += 1.0
    sb = orjson.dumps(b)

    def resp(data, t):
        return Response(ts=t, end_ts=t, version="1.1", status=200, reason="OK", body=data, body_len=len(data),
                        headers=(("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                                 ("Date", time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(t))),
                                 ("X-Request-Id", uuid.UUID(int=rng.getrandbits(128)).hex),
                                 ("Cache-Control", "no-store")))

    req = Request(ts=ts, end_ts=ts, version="1.1", headers=(("Host", "api"),), method="GET",
                  target=f"/v1/orders/{i}")
    ex = Exchange(id=f"{i:08x}", client="10.0.0.1:1", server="10.0.0.2:80", index=0, request=req,
                  response=resp(pb, ts), total_ms=rng.gauss(20, 2))
    res = Result(exchange_id=ex.id, target="http://shadow/", scheduled=ts, sent=ts, response=resp(sb, ts + 1),
                 total_ms=rng.gauss(20, 2))
    pairs.append((ex, res))
avg = sum(len(e.response.body) for e, _ in pairs) / N

c = Comparison()
t = time.perf_counter()
for ex, res in pairs:
    c.add(ex, res)
rep = orjson.loads(dumps(c.snapshot()))  # the JSON report (the same schema before and after typing)
ours = N / (time.perf_counter() - t)
assert abs(1 - rep["summary"]["identical"] / N - 0.01) < 0.002, rep["summary"]

differing = 0
t = time.perf_counter()
for ex, res in pairs[:M]:
    d = DeepDiff(json.loads(ex.response.body), json.loads(res.response.body))
    if ex.response.status != res.response.status or d:
        differing += 1
peer = M / (time.perf_counter() - t)
assert differing == sum(1 for i in range(M) if i % 100 == 7)

print(f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}")
print(f"pairs: {N} (deepdiff: first {M}), body {avg:.0f} bytes, 1% differing; verdict {rep['verdict']['result']}")
print(f"shadowtap compare: {ours:,.0f} pairs/s")
print(f"deepdiff loop:     {peer:,.0f} pairs/s")
print(f"ratio: {ours / peer:.1f}x; goal >= 20,000 pairs/s: {'met' if ours >= 20_000 else 'NOT met'}")
PY

# Memory: pairs generated on the fly (nothing kept by the generator) over 300 endpoints and 40
# fields each, 5% differing; the peak RSS must stay flat once the reservoirs are full (500 pairs
# per endpoint, i.e. after 150k pairs): bounded aggregates.
"${pin[@]}" "$PY" - <<'PY'
import os
import resource
import time

import orjson

from shadowtap.compare.aggregate import Comparison
from shadowtap.compare.config import CompareConfig, EndpointConfig
from shadowtap.compare.report_json import dumps
from shadowtap.records import Exchange, Request, Response, Result

N = int(os.environ.get("BENCH_STREAM_PAIRS", "400000"))
c = Comparison(CompareConfig(endpoints=EndpointConfig(max_distinct=1000)))
T0 = time.time()


def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


marks = {}
t = time.perf_counter()
for i in range(N):
    ts = T0 + i * 0.001
    body = {f"f{k}": (i * k) % 1000 for k in range(40)}
    pb = orjson.dumps(body)
    if i % 20 == 0:
        body[f"f{i % 40}"] = -1
    sb = orjson.dumps(body)
    req = Request(ts=ts, end_ts=ts, version="1.1", headers=(), method="GET", target=f"/svc{i % 300}/list")
    ex = Exchange(id=str(i), client="a:1", server="b:2", index=0, request=req, total_ms=float(i % 97),
                  response=Response(ts=ts, end_ts=ts, version="1.1", headers=(("Content-Type", "application/json"),),
                                    body=pb, body_len=len(pb), status=200))
    res = Result(exchange_id=str(i), target="t", scheduled=ts, sent=ts, total_ms=float(i % 89),
                 response=Response(ts=ts, end_ts=ts, version="1.1", headers=(("Content-Type", "application/json"),),
                                   body=sb, body_len=len(sb), status=200))
    c.add(ex, res)
    if i + 1 in (N // 4, N // 2, N):
        marks[i + 1] = rss_mb()
rate = N / (time.perf_counter() - t)
t = time.perf_counter()
snap = c.snapshot(fresh=True)
snap_ms = (time.perf_counter() - t) * 1000
t = time.perf_counter()
text = dumps(snap)
json_ms = (time.perf_counter() - t) * 1000
rep = orjson.loads(text)
print(f"streaming {N} pairs over {rep['summary']['endpoints']} endpoints: {rate:,.0f} pairs/s; "
      "peak RSS " + ", ".join(f"{v:.0f} MB after {k:,}" for k, v in marks.items())
      + f", {rss_mb():.0f} MB after the final snapshot")
# The report of 300 endpoints x 40 fields: the final snapshot (statistics, verdict) and its JSON.
print(f"final snapshot: {snap_ms:,.0f} ms; its JSON ({len(text) / 1e6:.1f} MB): {json_ms:,.0f} ms")
PY
if [ "${BENCH_GENAI:-0}" = 1 ]; then
  scripts/bench_llm.sh
fi
