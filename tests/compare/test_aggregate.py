"""The streaming aggregator: snapshots at any time, bounded memory, thread safety."""

import threading

from shadowtap.compare.aggregate import OTHER_ENDPOINTS, OTHER_FIELDS, Comparison
from shadowtap.compare.config import CompareConfig, LimitsConfig


def test_snapshot_any_time_and_incremental(craft):
    c = Comparison()
    assert c.snapshot().verdict.result == "error"
    for i in range(50):
        c.add(
            craft.exchange(i, craft.response({"a": 1})), craft.result(i, craft.response({"a": 1}))
        )
    first = c.snapshot()
    assert first.summary.pairs == 50 and first.verdict.result == "pass"
    for i in range(50, 100):
        c.add(
            craft.exchange(i, craft.response({"a": 1})), craft.result(i, craft.response({"a": 2}))
        )
    second = c.snapshot()
    assert second.summary.pairs == 100
    assert craft.field(second, "body.a").rate == 0.5
    assert second.verdict.result == "fail"


def test_memory_is_bounded_by_the_limits(craft):
    lim = LimitsConfig(
        latency_sample=100, value_sample=50, samples_per_field=2, max_fields=20, max_endpoints=10
    )
    c = Comparison(CompareConfig(limits=lim))
    for i in range(3000):
        body_p = {f"f{i % 40}": i, "x": 1}
        body_s = {f"f{i % 40}": i + 1, "x": 2}
        ex = craft.exchange(
            i, craft.response(body_p), target=f"/e{i % 15}/list", latency_ms=float(i % 50)
        )
        c.add(ex, craft.result(i, craft.response(body_s), latency_ms=float(i % 50)))
    assert len(c._endpoints) <= 10 + 1
    assert OTHER_ENDPOINTS in c._endpoints
    for agg in c._endpoints.values():
        assert len(agg.lat_primary.items) <= 100 and len(agg.values.items) <= 50
        assert len(agg.fields) <= 20 + 1  # + (other fields)
        assert all(len(f.samples) <= 2 for f in agg.fields.values())
    assert any(OTHER_FIELDS in a.fields for a in c._endpoints.values())
    rep = c.snapshot()
    assert rep.summary.pairs == 3000
    assert sum(e.pairs for e in rep.endpoints) == 3000


def test_add_and_snapshot_from_two_threads(craft):
    c = Comparison()
    stop = threading.Event()
    snaps = []

    def reader():
        while not stop.is_set():
            snaps.append(c.snapshot().summary.pairs)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(2000):
            c.add(
                craft.exchange(i, craft.response({"a": i})),
                craft.result(i, craft.response({"a": i})),
            )
    finally:
        stop.set()
        t.join()
    assert snaps == sorted(snaps)  # every snapshot saw a consistent, growing count
    assert c.snapshot().summary.pairs == 2000


def test_missing_sides_are_counted_not_compared(craft):
    c = Comparison()
    c.add(craft.exchange(0, None), craft.result(0, craft.response({"a": 1})))
    c.add(craft.exchange(1, craft.response({"a": 1})), craft.result(1, None, error="reset"))
    rep = c.snapshot()
    ep = rep.endpoints
    assert rep.summary.pairs == 2 and rep.summary.compared == 0
    outcomes = {k: v for e in ep for k, v in e.errors.shadow_outcomes.items()}
    assert outcomes == {"ok": 1, "reset": 1}


def test_samples_are_redacted(craft):
    c = Comparison()
    for i in range(5):
        p = craft.response(
            {"user": "u", "password": "hunter2", "n": 1}, headers=(("Authorization", "Bearer abc"),)
        )
        s = craft.response(
            {"user": "u", "password": "hunter3", "n": 2}, headers=(("Authorization", "Bearer xyz"),)
        )
        ex = craft.exchange(i, p, target="/login?api_key=SECRETKEY&x=1")
        c.add(ex, craft.result(i, s))
    rep = c.snapshot()
    text = repr(rep)
    for secret in ("hunter2", "hunter3", "SECRETKEY", "Bearer abc"):
        assert secret not in text
    f = craft.field(rep, "body.password")
    assert f.samples[0].primary == "[redacted]"
    assert craft.field(rep, "body.n").samples[0].request == "GET /login?api_key=[redacted]&x=1"


def test_live_snapshots_stay_within_a_budget_and_fresh_is_complete(craft):
    import random

    from shadowtap.compare.config import EndpointConfig

    rng = random.Random(1)
    cfg = CompareConfig(
        limits=LimitsConfig(snapshot_budget_ms=0.0), endpoints=EndpointConfig(max_distinct=100)
    )
    c = Comparison(cfg)
    for i in range(1200):
        p = {"s": rng.random(), "t": rng.random()}
        ex = craft.exchange(i, craft.response(p), target=f"/ep{i % 12}/x", latency_ms=rng.random())
        c.add(
            ex,
            craft.result(
                i, craft.response({"s": p["s"] + 0.5, "t": p["t"]}), latency_ms=rng.random()
            ),
        )
    live = c.snapshot()  # a zero budget: the first endpoint computed, the rest counts only
    assert live.summary.pairs == 1200 and len(live.endpoints) == 12
    with_stats = [e for e in live.endpoints if e.numeric]
    assert 1 <= len(with_stats) < 12
    again = c.snapshot()  # the stalest ones get their turn
    assert len([e for e in again.endpoints if e.numeric]) > len(with_stats)
    final = c.snapshot(fresh=True)
    assert all(e.numeric and e.latency.test for e in final.endpoints)
    assert final.verdict.result == "fail"


def test_an_error_page_is_not_compared_field_by_field(craft):
    c = Comparison()
    for i in range(20):
        s = (
            craft.response({"error": "boom"}, status=502)
            if i == 3
            else craft.response({"a": 1, "b": 2})
        )
        c.add(craft.exchange(i, craft.response({"a": 1, "b": 2})), craft.result(i, s))
    rep = c.snapshot()
    assert [f.path for f in rep.endpoints[0].fields] == ["status"]
    assert rep.endpoints[0].errors.new_failures == {"5xx": 1}


def test_absurd_bodies_do_not_stop_the_comparison(craft):
    c = Comparison()
    bodies = [
        b"[" * 900 + b"1" + b"]" * 900,
        b'{"a": ' * 300 + b"1" + b"}" * 300,
        b"\xff\xfe" * 10,
        b'{"n": 123456789012345678901234567890}',
        b'{"x": NaN}',
    ]
    for i, raw in enumerate(bodies):
        p = craft.response(raw=raw)
        s = craft.response(raw=raw.replace(b"1", b"2"))
        c.add(craft.exchange(i, p), craft.result(i, s))
    rep = c.snapshot()
    assert rep.summary.compared == 5
    # the deep array, the deep object and the big number differ (the others have no "1")
    assert sum(f.diff_pairs for e in rep.endpoints for f in e.fields) == 3


def test_the_shadow_fixing_errors_is_a_recovery_not_a_regression(craft):
    c = Comparison()
    for i in range(100):
        p = (
            craft.response({"error": "boom"}, status=500)
            if i % 4 == 0
            else craft.response({"a": 1})
        )
        c.add(craft.exchange(i, p), craft.result(i, craft.response({"a": 1})))
    rep = c.snapshot()
    ep = rep.endpoints[0]
    assert ep.errors.recoveries == {"5xx": 25} and ep.errors.new_failures == {}
    assert ep.fields == []
    [err] = [m for m in rep.verdict.metrics if m.name == "error rate"]
    assert err.result == "Low" and not err.failed
    assert rep.verdict.result == "pass"


def test_repeated_identical_pairs_are_compared_once_with_the_same_report(craft):
    """The memo of identical pairs changes no figure: the same pairs with it emptied before
    every pair (each compared in full) give the same report, the sampled leaf statistics too."""
    pairs = []
    for i in range(600):
        # a field that differs in some pairs and is absent from some identical ones: its rate
        # rests on the sampled bodies (the leaf statistics' presence of the path)
        primary = {"a": 1} if i % 2 else {"b": i % 3}
        shadow = {"a": 2} if i % 7 == 0 else primary
        date = (("Date", "x"),)
        pairs.append(
            (
                craft.exchange(
                    i, craft.response(primary, headers=date), target="/items", latency_ms=float(i)
                ),
                craft.result(i, craft.response(shadow, headers=date)),
            )
        )
    cfg = CompareConfig(limits=LimitsConfig(value_sample=200, latency_sample=7))
    memo, full = Comparison(cfg), Comparison(cfg)
    for ex, res in pairs:
        memo.add(ex, res)
        full._identical.clear()
        full.add(ex, res)
    assert 0 < len(memo._identical) <= 4  # a key a distinct identical pair
    a, b = memo.snapshot(fresh=True).to_json(), full.snapshot(fresh=True).to_json()
    a.pop("generated"), b.pop("generated")
    assert a == b
    assert a["summary"].pairs == 600
