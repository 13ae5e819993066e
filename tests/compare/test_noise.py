"""Noise: self-detected without a baseline, Diffy's method with one, and user rules."""

import random
import secrets
import uuid

from shadowtap.compare.config import CompareConfig, NoiseConfig, NoiseRule
from shadowtap.compare.noise import Volatility, judge_against_baseline

N = 120


def pair(craft, i, p, s, base=None):
    ex = craft.exchange(i, craft.response(p))
    res = craft.result(i, craft.response(s, ts=craft.T0 + i))
    if base is None:
        return ex, res
    return ex, res, craft.result(i, craft.response(base, ts=craft.T0 + i))


def test_volatile_values_are_noise_with_reasons(craft):
    rng = random.Random(1)

    def make(i):
        ts = craft.T0 + i
        common = {"name": "x", "items": [1, 2, 3]}
        p = dict(
            common,
            at=craft.iso(ts),
            rid=str(uuid.uuid4()),
            token="t_" + secrets.token_hex(10),
            seq=1000 + i,
            epoch=int(ts),
            items=rng.sample([1, 2, 3], 3),
        )
        s = dict(
            common,
            at=craft.iso(ts + 0.5),
            rid=str(uuid.uuid4()),
            token="t_" + secrets.token_hex(10),
            seq=5 + i,
            epoch=int(ts) + 5,
            items=rng.sample([1, 2, 3], 3),
        )
        return pair(craft, i, p, s)

    rep = craft.run(N, make)
    reasons = {n.path: n.reason for n in rep.noise}
    assert set(reasons) == {
        "body.at",
        "body.rid",
        "body.token",
        "body.seq",
        "body.epoch",
        "body.items",
    }
    assert "timestamp" in reasons["body.at"]
    assert "uuid" in reasons["body.rid"]
    assert "random id/token" in reasons["body.token"]
    assert "counter" in reasons["body.seq"]
    assert "epoch timestamp" in reasons["body.epoch"]
    assert reasons["body.items"].startswith("order:")
    assert rep.verdict.result == "pass"


def test_epoch_of_a_replay_days_later_is_still_noise(craft):
    later = 30 * 86400

    def make(i):
        ts = craft.T0 + i
        ex = craft.exchange(i, craft.response({"now": int(ts)}))
        res = craft.result(i, craft.response({"now": int(ts + later)}, ts=ts + later))
        return ex, res

    rep = craft.run(N, make)
    assert [n.path for n in rep.noise] == ["body.now"]


def test_constant_change_is_not_noise(craft):
    # a version string changes the same way on every exchange: it does not vary across exchanges
    rep = craft.run(
        N,
        lambda i: pair(
            craft, i, {"version": "2024-01-01T00:00:00Z"}, {"version": "2024-02-01T00:00:00Z"}
        ),
    )
    f = craft.field(rep, "body.version")
    assert f.noise is None and f.rate == 1.0
    assert rep.verdict.result == "fail"


def test_model_scores_are_not_noise(craft):
    rng = random.Random(2)
    rep = craft.run(N, lambda i: pair(craft, i, {"score": rng.random()}, {"score": rng.random()}))
    assert craft.field(rep, "body.score").noise is None


def test_order_can_matter(craft):
    cfg = CompareConfig(noise=NoiseConfig(order_is_noise=False))
    rep = craft.run(N, lambda i: pair(craft, i, {"l": [1, 2]}, {"l": [2, 1]}), cfg)
    f = craft.field(rep, "body.l")
    assert f.noise is None and f.kinds == {"order": N}


def test_user_rules(craft):
    cfg = CompareConfig().with_ignore(
        (NoiseRule.parse("body.build"), NoiseRule.parse("GET /items/*::body.region"))
    )
    rep = craft.run(
        N,
        lambda i: pair(
            craft,
            i,
            {"build": "a", "region": "eu", "other": 1},
            {"build": "b", "region": "us", "other": 2},
        ),
        cfg,
    )
    reasons = {n.path: n.reason for n in rep.noise}
    assert reasons["body.build"].startswith("rule: --ignore body.build")
    assert "GET /items/*::body.region" in reasons["body.region"]
    assert craft.field(rep, "body.other").noise is None
    rule = NoiseRule.parse("POST /x/*::header.x-*")
    assert rule.matches("POST /x/{id}", "header.x-foo") and not rule.matches(
        "GET /x/{id}", "header.x-foo"
    )


def test_baseline_separates_noise_from_regression(craft):
    rng = random.Random(3)

    def make(i):
        # cache_hit flips at random on any instance (noise: the baseline shows it too);
        # discount differs only on the shadow (a regression)
        p = {"cache_hit": rng.random() < 0.5, "discount": 0.1}
        s = {"cache_hit": rng.random() < 0.5, "discount": 0.2 if i % 5 == 0 else 0.1}
        b = {"cache_hit": rng.random() < 0.5, "discount": 0.1}
        return pair(craft, i, p, s, b)

    rep = craft.run(400, make, baseline=True)
    hit = craft.field(rep, "body.cache_hit")
    disc = craft.field(rep, "body.discount")
    assert hit.noise.startswith("within baseline noise") and hit.baseline_rate > 0.3
    assert disc.noise is None and disc.baseline_rate == 0.0 and disc.rate == 0.2
    assert rep.summary.with_baseline == 400


def test_baseline_rule_thresholds():
    cfg = NoiseConfig()
    assert not judge_against_baseline(0.031, 0.03, cfg).regression  # +3% relative < 20%
    assert judge_against_baseline(0.05, 0.03, cfg).regression
    assert not judge_against_baseline(0.0002, 0.0, cfg).regression  # below 0.03% absolute
    assert judge_against_baseline(0.001, 0.0, cfg).regression
    strict = NoiseConfig(relative_threshold=0.01, absolute_threshold=0.0)
    assert judge_against_baseline(0.031, 0.03, strict).regression


def test_volatility_needs_enough_observations():
    v = Volatility()
    for i in range(3):
        v.observe(str(uuid.uuid4()), str(uuid.uuid4()), None, None)
    assert v.verdict(NoiseConfig()) is None
    for i in range(3):
        v.observe(str(uuid.uuid4()), str(uuid.uuid4()), None, None)
    assert "uuid" in v.verdict(NoiseConfig())


def test_values_echoed_from_the_request_are_never_noise(craft):
    # the shadow returns the wrong order id: UUID-shaped and varying, but taken from the request
    def make(i):
        oid = str(uuid.uuid4())
        ex = craft.exchange(
            i, craft.response({"order": oid, "n": i}), target=f"/orders/{oid}/n/{i}"
        )
        return ex, craft.result(i, craft.response({"order": str(uuid.uuid4()), "n": i + 1}))

    rep = craft.run(N, make)
    assert craft.field(rep, "body.order").noise is None
    assert craft.field(rep, "body.n").noise is None
    assert rep.verdict.result == "fail"
