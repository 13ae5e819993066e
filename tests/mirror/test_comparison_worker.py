"""The mirror's comparison off its event loop (mirror/comparison.py Worker) and its final report.

Regressions found by running scripts/demo.sh: the comparison ran on the loop that stamps the
shadow's answers (every endpoint reported ~60x slower), and the final report came from a live,
time-budgeted snapshot (endpoints with stale counts)."""

from __future__ import annotations

import dataclasses

import orjson

from shadowtap.compare.aggregate import Comparison
from shadowtap.compare.config import CompareConfig
from shadowtap.mirror import comparison as mirror_compare
from shadowtap.records import Exchange, Request, Response, Result

T0 = 1764160000.0


def pair(i: int, path: str) -> tuple[Exchange, Result]:
    ts = T0 + i
    body = orjson.dumps({"id": i})
    resp = Response(
        ts=ts,
        end_ts=ts + 0.01,
        version="1.1",
        headers=(("Content-Type", "application/json"),),
        body=body,
        body_len=len(body),
        status=200,
    )
    req = Request(
        ts=ts,
        end_ts=ts,
        version="1.1",
        headers=(("Host", "svc"),),
        method="GET",
        target=f"{path}?i={i}",
    )
    ex = Exchange(
        id=f"ex{i:06d}",
        client="10.0.0.1:40000",
        server="10.0.0.2:80",
        index=i,
        request=req,
        response=resp,
        total_ms=10.0,
        ttfb_ms=10.0,
    )
    res = Result(
        exchange_id=ex.id,
        target="http://127.0.0.1:1/",
        scheduled=ts,
        sent=ts,
        response=resp,
        total_ms=10.0,
        ttfb_ms=10.0,
    )
    return ex, res


def counts(report) -> dict[str, int]:
    return {e.endpoint: e.pairs for e in report.endpoints}


def test_worker_compares_every_pair_given_before_close():
    c = Comparison(CompareConfig())
    worker = mirror_compare.Worker(c)
    for i in range(300):
        worker.add(*pair(i, "/a" if i % 3 else "/b"))
    verdict, _, _ = worker.view()  # never waits for the thread
    assert verdict is None or isinstance(verdict, str)
    worker.close()
    assert c.pairs == 300
    assert counts(mirror_compare.snapshot(c, final=True)) == {"GET /a": 200, "GET /b": 100}
    assert worker.errors == []
    worker.close()  # idempotent


def test_worker_records_a_failing_pair_and_goes_on():
    c = Comparison(CompareConfig())
    worker = mirror_compare.Worker(c)
    worker.add(None, None)  # type: ignore[arg-type]  - a comparison bug must not stop it
    worker.add(*pair(1, "/a"))
    worker.close()
    assert c.pairs == 1
    assert len(worker.errors) == 1 and "comparison failed" in worker.errors[0]


def test_final_snapshot_recomputes_endpoints_a_live_one_left_stale():
    cfg = CompareConfig()
    cfg = dataclasses.replace(cfg, limits=dataclasses.replace(cfg.limits, snapshot_budget_ms=0.0))
    c = Comparison(cfg)
    for i in range(4):
        c.add(*pair(i, f"/e{i}"))
    mirror_compare.snapshot(c)
    for i in range(4, 40):
        c.add(*pair(i, f"/e{i % 4}"))
    live = counts(mirror_compare.snapshot(c))
    assert sum(live.values()) < 40  # the budget let one endpoint be recomputed
    assert counts(mirror_compare.snapshot(c, final=True)) == {f"GET /e{k}": 10 for k in range(4)}


def test_batches_are_compared_in_order_like_single_pairs():
    one, many = Comparison(CompareConfig()), Comparison(CompareConfig())
    w1, w2 = mirror_compare.Worker(one), mirror_compare.Worker(many)
    pairs = [pair(i, "/a" if i % 3 else "/b") for i in range(100)]
    for p in pairs:
        w1.add(*p)
    w2.add_batch(pairs[:60])
    w2.add_batch([])
    w2.add_batch(pairs[60:])
    w1.close()
    w2.close()
    a, b = mirror_compare.snapshot(one, final=True), mirror_compare.snapshot(many, final=True)
    assert counts(a) == counts(b) == {"GET /a": 66, "GET /b": 34}
    assert a.result == b.result
