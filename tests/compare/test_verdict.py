"""Verdicts on crafted runs: the ones that must fail, the one that must pass, and the ML cases."""

import random
import uuid

from shadowtap.compare.config import CompareConfig, LatencyConfig, NumericConfig, NumericTolerance
from shadowtap.errors import EXIT_OK, EXIT_VERDICT_ERROR, EXIT_VERDICT_FAIL

N = 200


def item(i, rng):
    return {
        "id": i,
        "name": f"item {i}",
        "price": round(10 + i % 7 * 1.5, 2),
        "tags": ["a", "b"],
        "stock": {"warehouse": "w1", "count": i % 5},
    }


def healthy(
    craft,
    i,
    rng,
    shadow_body=None,
    shadow_status=200,
    shadow_latency=None,
    error=None,
    primary_body=None,
):
    body = primary_body if primary_body is not None else item(i, rng)
    p = craft.response(body, headers=(("X-Request-Id", uuid.uuid4().hex),))
    sbody = shadow_body if shadow_body is not None else body
    s = craft.response(sbody, status=shadow_status, headers=(("X-Request-Id", uuid.uuid4().hex),))
    lat = rng.gauss(20, 3)
    return (
        craft.exchange(i, p, latency_ms=lat),
        craft.result(
            i,
            None if error else s,
            latency_ms=shadow_latency(lat) if shadow_latency else rng.gauss(20, 3),
            error=error,
        ),
    )


def metrics_failed(rep):
    return [(m.group, m.name, m.path, m.critical) for m in rep.verdict.metrics if m.failed]


def test_must_pass_only_timestamps_and_request_ids_differ(craft):
    rng = random.Random(1)

    def make(i):
        ts = craft.T0 + i
        base = item(i, rng)
        p = dict(
            base,
            generated_at=craft.iso(ts + 0.003),
            request_id=str(uuid.uuid4()),
            served_ms=ts * 1000,
        )
        s = dict(
            base,
            generated_at=craft.iso(ts + 0.011),
            request_id=str(uuid.uuid4()),
            served_ms=ts * 1000 + 3000,
        )
        return healthy(craft, i, rng, shadow_body=s, primary_body=p)

    rep = craft.run(N, make)
    v = rep.verdict
    assert (v.result, v.exit_code) == ("pass", EXIT_OK), v.reasons
    assert v.score == 100.0
    noise = {n.path: n.reason for n in rep.noise}
    assert set(noise) == {"body.generated_at", "body.request_id", "body.served_ms"}
    assert "timestamp" in noise["body.generated_at"] and "uuid" in noise["body.request_id"]
    assert "epoch timestamp" in noise["body.served_ms"]
    assert "x-request-id" in rep.noisy_headers and "date" in rep.noisy_headers


def test_must_fail_injected_5xx(craft):
    rng = random.Random(2)

    def make(i):
        if i % 10 == 3:
            return healthy(craft, i, rng, shadow_body={"error": "internal"}, shadow_status=503)
        return healthy(craft, i, rng)

    rep = craft.run(N, make)
    v = rep.verdict
    assert (v.result, v.exit_code) == ("fail", EXIT_VERDICT_FAIL)
    assert ("errors", "error rate", None, True) in metrics_failed(rep)
    ep = rep.endpoints[0]
    assert ep.errors.new_failures == {"5xx": 20} and ep.errors.shadow_rate == 0.1
    assert any("CRITICAL errors" in r for r in v.reasons)


def test_must_fail_transport_errors(craft):
    rng = random.Random(3)
    rep = craft.run(N, lambda i: healthy(craft, i, rng, error="timeout" if i % 8 == 0 else None))
    assert rep.verdict.result == "fail"
    assert rep.endpoints[0].errors.new_failures == {"timeout": 25}


def test_must_fail_doubled_latency(craft):
    rng = random.Random(4)
    rep = craft.run(N, lambda i: healthy(craft, i, rng, shadow_latency=lambda lat: 2 * lat))
    v = rep.verdict
    assert v.result == "fail"
    assert ("latency", "latency", None, True) in metrics_failed(rep)
    test = rep.endpoints[0].latency.test
    assert 1.8 < test.median_ratio < 2.2 and test.p_value < 1e-6
    # the same run passes when the user tolerates 3x
    cfg = CompareConfig(latency=LatencyConfig(effect=3.0))
    rng = random.Random(4)
    rep = craft.run(N, lambda i: healthy(craft, i, rng, shadow_latency=lambda lat: 2 * lat), cfg)
    assert rep.verdict.result == "pass", rep.verdict.reasons


def test_same_latency_distribution_passes(craft):
    rng = random.Random(5)
    rep = craft.run(N, lambda i: healthy(craft, i, rng))
    assert rep.verdict.result == "pass"
    assert rep.endpoints[0].identical == N


def test_must_fail_renamed_field(craft):
    rng = random.Random(6)

    def make(i):
        s = item(i, rng)
        s["title"] = s.pop("name")
        return healthy(craft, i, rng, shadow_body=s)

    rep = craft.run(N, make)
    assert rep.verdict.result == "fail"
    failed = metrics_failed(rep)
    assert ("content", "field diff rate", "body.name", True) in failed
    title = craft.field(rep, "body.title")
    assert title.renamed_from == "body.name" and not title.noise
    assert ("content", "field diff rate", "body.title", True) not in failed  # one regression, once
    assert craft.field(rep, "body.name").renamed_to == "body.title"
    assert any("renamed to body.title" in r for r in rep.verdict.reasons)


def test_harmless_new_field_is_reported_but_passes(craft):
    rng = random.Random(7)
    rep = craft.run(
        N, lambda i: healthy(craft, i, rng, shadow_body=dict(item(i, rng), currency="EUR"))
    )
    assert rep.verdict.result == "pass", rep.verdict.reasons
    f = craft.field(rep, "body.currency")
    assert f.only_extra and f.rate == 1.0 and f.kinds == {"extra": N}
    # ... and fails when the config says new fields fail
    cfg = CompareConfig.__new__(CompareConfig)
    import dataclasses

    from shadowtap.compare.config import ContentConfig

    cfg = dataclasses.replace(CompareConfig(), content=ContentConfig(extra_fields_fail=True))
    rng = random.Random(7)
    rep = craft.run(
        N, lambda i: healthy(craft, i, rng, shadow_body=dict(item(i, rng), currency="EUR")), cfg
    )
    assert rep.verdict.result == "fail"


def test_value_change_on_some_pairs_is_not_a_pass(craft):
    rng = random.Random(8)

    def make(i):
        s = item(i, rng)
        if i % 20 == 0:
            s["name"] = "changed"
        return healthy(craft, i, rng, shadow_body=s)

    rep = craft.run(N, make)
    f = craft.field(rep, "body.name")
    assert f.rate == 0.05 and f.noise is None
    assert f.samples and f.samples[0].shadow == "changed"
    assert rep.verdict.result in ("marginal", "fail")


def test_no_pairs_is_an_error(craft):
    rep = craft.run(0, None)
    assert (rep.verdict.result, rep.verdict.exit_code) == ("error", EXIT_VERDICT_ERROR)


# --------------------------------------------------------------------------- model outputs


def model_run(craft, n, shift, flip_every, tolerance=None, seed=9):
    rng = random.Random(seed)
    labels = ["cat", "dog", "bird"]

    def make(i):
        score = rng.betavariate(2, 5)
        label = labels[i % 3]
        p = {"prediction": {"label": label, "score": round(score, 6)}, "model": "v1"}
        slabel = labels[(i + 1) % 3] if flip_every and i % flip_every == 0 else label
        s = {
            "prediction": {"label": slabel, "score": round(score + shift + rng.gauss(0, 0.002), 6)},
            "model": "v1",
        }
        return healthy(craft, i, rng, shadow_body=s, primary_body=p)

    cfg = (
        CompareConfig(
            numeric=NumericConfig(paths=(NumericTolerance("body.prediction.score", abs=tolerance),))
        )
        if tolerance is not None
        else None
    )
    return craft.run(n, make, cfg)


def test_model_small_shift_and_few_flips_pass_and_are_measured(craft):
    rep = model_run(craft, 400, shift=0.003, flip_every=40, tolerance=0.02)
    assert rep.verdict.result == "pass", rep.verdict.reasons
    ep = rep.endpoints[0]
    [num] = [m for m in ep.numeric if m.path == "body.prediction.score"]
    assert 0 < num.mean_shadow - num.mean_primary < 0.01
    assert num.psi < 0.1 and num.ks_d < 0.1
    label = craft.field(rep, "body.prediction.label")
    assert label.type == "categorical" and abs(label.agreement - 0.975) < 0.01
    assert label.flips[0].count >= 3 and label.noise is None
    assert craft.field(rep, "body.prediction.score") is None  # within tolerance: no difference


def test_model_large_shift_fails_on_drift(craft):
    rep = model_run(craft, 400, shift=0.15, flip_every=0, tolerance=0.5)
    names = {(m.name, m.path) for m in rep.verdict.metrics if m.failed}
    assert ("drift", "body.prediction.score") in names
    [m] = [m for m in rep.verdict.metrics if m.name == "drift"]
    assert "PSI" in m.detail and "KS D" in m.detail and "mean shift" in m.detail
    assert rep.verdict.result != "pass"


def test_model_many_label_flips_fail_agreement(craft):
    rep = model_run(craft, 400, shift=0.0, flip_every=4, tolerance=0.02)
    failed = [m for m in rep.verdict.metrics if m.failed]
    assert [(m.name, m.path) for m in failed] == [("agreement", "body.prediction.label")]
    assert abs(failed[0].value - 0.75) < 0.01
    assert rep.verdict.result != "pass"


def test_model_score_without_tolerance_counts_as_difference(craft):
    rep = model_run(craft, 200, shift=0.003, flip_every=0)
    f = craft.field(rep, "body.prediction.score")
    assert f is not None and f.rate > 0.9 and f.noise is None  # a score is not noise
