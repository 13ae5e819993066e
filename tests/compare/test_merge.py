"""The comparison's merge algebra: comparing A+B in one Comparison equals comparing A and B apart
and merging, exactly for every count, statistically for the samples, with the same verdict.
Property tests (hypothesis) over generated pairs and split points."""

from __future__ import annotations

import itertools
import pickle
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shadowtap.compare.aggregate import Comparison
from shadowtap.compare.config import CompareConfig, LimitsConfig
from shadowtap.compare.report import as_json
from tests.support.pairs import counts, essence, make_pair

_SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_PAIRS = [make_pair(i, random.Random(i)) for i in range(400)]


def _compare(pairs, config=None) -> Comparison:
    c = Comparison(config)
    for ex, res in pairs:
        c.add(ex, res)
    return c


def _split(n: int, cuts: list[int]) -> list[tuple[int, int]]:
    points = sorted({0, n, *(min(c, n) for c in cuts)})
    return list(itertools.pairwise(points))


@_SETTINGS
@given(n=st.integers(0, 400), cuts=st.lists(st.integers(0, 400), max_size=4))
def test_merge_of_parts_counts_as_the_whole(n: int, cuts: list[int]) -> None:
    pairs = _PAIRS[:n]
    whole = _compare(pairs)
    merged = Comparison()
    for a, b in _split(n, cuts):
        merged.merge(_compare(pairs[a:b]))
    assert counts(merged) == counts(whole)


@_SETTINGS
@given(n=st.integers(0, 300), cut=st.integers(0, 300), order=st.permutations([0, 1, 2]))
def test_merge_is_associative_and_commutative_on_counts(n: int, cut: int, order: list[int]) -> None:
    pairs = _PAIRS[:n]
    k = min(cut, n)
    parts = [pairs[: k // 2], pairs[k // 2 : k], pairs[k:]]
    left = _compare(parts[0])
    left.merge(_compare(parts[1]))
    left.merge(_compare(parts[2]))  # (A+B)+C
    right = _compare(parts[order[0]])
    bc = _compare(parts[order[1]])
    bc.merge(_compare(parts[order[2]]))
    right.merge(bc)  # a permutation, grouped the other way
    assert counts(left) == counts(right)


def test_empty_is_the_identity() -> None:
    whole = _compare(_PAIRS[:100])
    expected = counts(_compare(_PAIRS[:100]))
    whole.merge(Comparison())
    assert counts(whole) == expected
    empty = Comparison()
    empty.merge(_compare(_PAIRS[:100]))
    assert counts(empty) == expected


def test_same_report_and_verdict_when_samples_fit() -> None:
    """While the reservoirs hold every item, the merged report is the whole one, statistics too."""
    whole = as_json(_compare(_PAIRS).snapshot(fresh=True))
    merged = Comparison()
    for a, b in _split(400, [90, 250, 333]):
        part = pickle.loads(pickle.dumps(_compare(_PAIRS[a:b])))  # as it crosses processes
        merged.merge(part)
    report = as_json(merged.snapshot(fresh=True))
    assert essence(report) == essence(whole)
    for e_whole, e_merged in zip(whole["endpoints"], report["endpoints"]):
        for side in ("primary", "shadow"):  # the same items: the same percentiles
            assert e_whole["latency"][side]["cdf"] == e_merged["latency"][side]["cdf"]
        assert e_whole["latency"]["test"] == e_merged["latency"]["test"]
        assert e_whole["divergence"] == e_merged["divergence"]


def test_samples_statistically_when_reservoirs_overflow() -> None:
    """Reservoirs of 50 over 400 pairs: the merged sample is a sample of both parts in
    proportion, its percentiles close to the one-process sample's, the verdict the same."""
    cfg = CompareConfig(limits=LimitsConfig(latency_sample=50, value_sample=50))
    whole_c = _compare(_PAIRS, cfg)
    merged = Comparison(cfg)
    for a, b in _split(400, [100, 300]):
        merged.merge(_compare(_PAIRS[a:b], cfg))
    assert counts(merged) == counts(whole_c)
    o = merged._overall
    assert len(o.lat_shadow.items) == 50 and o.lat_shadow.count == whole_c._overall.lat_shadow.count
    whole, report = as_json(whole_c.snapshot(fresh=True)), as_json(merged.snapshot(fresh=True))
    assert report["verdict"]["result"] == whole["verdict"]["result"]
    true = sorted(r.total_ms for _, r in _PAIRS if r.total_ms is not None)
    true_p50 = true[len(true) // 2]
    for rep in (whole, report):  # both samples estimate the same median, within sampling error
        assert abs(rep["summary"]["latency"]["shadow"]["p50"] - true_p50) < 0.5 * true_p50
