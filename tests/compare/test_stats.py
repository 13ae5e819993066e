import random

import pytest

from shadowtap.compare.stats import (
    Reservoir,
    drift,
    error_rate_increase,
    latency_shift,
    percentiles,
    psi,
)


def test_reservoir_is_bounded_and_uniform():
    r = Reservoir(1000, seed=1)
    for i in range(100_000):
        r.add(i)
    assert len(r.items) == 1000 and r.count == 100_000
    mean = sum(r.items) / len(r.items)
    assert 45_000 < mean < 55_000  # a sample of the whole stream, not of its start


def test_reservoir_merge_keeps_bound_and_count():
    a, b = Reservoir(100, 1), Reservoir(100, 2)
    for i in range(1000):
        a.add(0)
    for i in range(3000):
        b.add(1)
    a.merge(b)
    assert len(a.items) == 100 and a.count == 4000
    assert 65 <= sum(a.items) <= 85  # about 3/4 from b


def test_percentiles():
    assert percentiles(list(range(1, 101)), (50, 90)) == pytest.approx([50.5, 90.1])


def test_latency_shift():
    rng = random.Random(1)
    p = [rng.gauss(20, 2) for _ in range(300)]
    same = latency_shift(p, [rng.gauss(20, 2) for _ in range(300)])
    slow = latency_shift(p, [rng.gauss(30, 2) for _ in range(300)])
    assert same.p_value > 0.01 and 0.95 < same.effect < 1.05
    assert slow.p_value < 1e-10 and 1.4 < slow.effect < 1.6
    assert latency_shift([5.0] * 10, [5.0] * 10).p_value == 1.0


def test_error_rate_increase():
    assert error_rate_increase(0, 1000, 30, 1000) < 1e-6
    assert error_rate_increase(30, 1000, 30, 1000) > 0.4
    assert error_rate_increase(0, 100_000, 600, 100_000) < 1e-10  # the z-test branch
    assert error_rate_increase(0, 0, 1, 1) == 1.0


def test_psi_and_drift():
    rng = random.Random(2)
    a = [rng.random() for _ in range(2000)]
    assert psi(a, a) < 1e-9
    assert psi(a, [x * 0.5 for x in a]) > 0.5
    assert psi([0, 1] * 100, [0, 1] * 100) < 1e-9  # few distinct values: they are the bins
    d = drift(a, [x + 0.2 for x in a])
    assert d.ks_d > 0.15 and d.ks_p < 1e-10 and d.mean_shift > 0.5
    same = drift(a, list(a))
    assert (same.ks_d, same.ks_p, same.mean_shift) == (0.0, 1.0, 0.0)
