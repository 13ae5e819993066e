"""Statistics for the verdict: bounded reservoirs, percentiles, and the tests that tell a real
shift from chance. Pure functions over sequences of numbers; scipy does the distributions.

- latency: one-sided Mann-Whitney U (is the shadow slower?) plus an effect size (median ratio);
- error rates: one-sided Fisher exact test (two-proportion z-test above 100k pairs, where Fisher's
  cost grows and the normal approximation is excellent);
- numeric model outputs: two-sample Kolmogorov-Smirnov, population stability index, mean shift in
  units of the primary's standard deviation.
"""

from __future__ import annotations

import math
import random
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as st  # type: ignore[import-untyped]


class Reservoir:
    """A uniform random sample of at most ``k`` items of a stream (Vitter's algorithm R).
    add is O(1); memory O(k). Seeded, so the same input gives the same report."""

    __slots__ = ("_rng", "count", "items", "k")

    def __init__(self, k: int, seed: int = 0, typecode: str | None = None) -> None:
        self.k = k
        self.count = 0
        # typecode "d": floats in an array (8 bytes each instead of a float object and a slot)
        self.items: Any = array(typecode) if typecode else []
        self._rng = random.Random(seed)

    def wants(self) -> int:
        """Counts one more item and returns the slot it goes to, or -1 when it is not sampled.
        Lets a caller skip the cost of building an item that would be dropped."""
        self.count += 1
        if len(self.items) < self.k:
            return len(self.items)
        j = int(self._rng.random() * self.count)  # uniform in [0, count): randrange's cost, halved
        return j if j < self.k else -1

    def put(self, slot: int, item: Any) -> None:
        if slot == len(self.items):
            self.items.append(item)
        else:
            self.items[slot] = item

    def add(self, item: Any) -> None:
        """``wants`` then ``put``, in one call (the same draws: a few calls a pair add up)."""
        self.count += 1
        items = self.items
        if len(items) < self.k:
            items.append(item)
            return
        j = int(self._rng.random() * self.count)
        if j < self.k:
            items[j] = item

    def extend(self, items: Sequence[Any]) -> None:
        """``add`` of each item, in one call (the same sample, the same random draws)."""
        k, out = self.k, self.items
        rnd = self._rng.random
        n = self.count
        for item in items:
            n += 1
            if len(out) < k:
                out.append(item)
            else:
                j = int(rnd() * n)
                if j < k:
                    out[j] = item
        self.count = n

    def merge(self, other: Reservoir) -> None:
        """Fold ``other`` in: the result approximates a uniform sample of both streams."""
        total = self.count + other.count
        if total == 0:
            return
        if len(self.items) + len(other.items) <= self.k:
            self.items.extend(other.items)
        else:
            n_self = min(len(self.items), round(self.k * self.count / total))
            n_other = min(len(other.items), self.k - n_self)
            merged = self._rng.sample(list(self.items), n_self) + self._rng.sample(
                list(other.items), n_other
            )
            self.items = (
                array(self.items.typecode, merged) if isinstance(self.items, array) else merged
            )
        self.count = total


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 90, 99)) -> list[float]:
    if not values:
        return [math.nan for _ in qs]
    return [float(x) for x in np.percentile(np.asarray(values, dtype=float), qs)]


@dataclass(frozen=True, slots=True)
class ShiftTest:
    p_value: float
    effect: float  # shadow median / primary median
    primary_median: float
    shadow_median: float


def latency_shift(primary: Sequence[float], shadow: Sequence[float]) -> ShiftTest:
    """One-sided Mann-Whitney U: is the shadow's latency stochastically greater?"""
    pm = float(np.median(primary))
    sm = float(np.median(shadow))
    if min(primary) == max(primary) == min(shadow) == max(shadow):
        p = 1.0
    else:
        p = float(st.mannwhitneyu(shadow, primary, alternative="greater").pvalue)
    effect = sm / pm if pm > 0 else (math.inf if sm > 0 else 1.0)
    return ShiftTest(p, effect, pm, sm)


def error_rate_increase(p_err: int, p_n: int, s_err: int, s_n: int) -> float:
    """p-value of "the shadow's error rate is higher than the primary's" (one-sided)."""
    if p_n == 0 or s_n == 0 or s_err * p_n <= p_err * s_n:
        return 1.0  # not higher: no test needed (its p-value would be >= 0.5)
    if p_n + s_n <= 100_000:
        return float(
            st.fisher_exact(
                [[s_err, s_n - s_err], [p_err, p_n - p_err]], alternative="greater"
            ).pvalue
        )
    p1, p2 = s_err / s_n, p_err / p_n
    pooled = (s_err + p_err) / (s_n + p_n)
    se = math.sqrt(pooled * (1 - pooled) * (1 / s_n + 1 / p_n))
    if se == 0:
        return 1.0 if p1 <= p2 else 0.0
    return float(st.norm.sf((p1 - p2) / se))


def psi(
    expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray, bins: int = 10
) -> float:
    """Population stability index of ``actual`` against ``expected``, on the expected's quantiles
    (or its distinct values when it has fewer than ``bins``). 0 = same distribution; > 0.1 a
    moderate shift; > 0.2 a significant one (the industry's rule of thumb). Bins hold about 20
    expected values at least (small samples get fewer bins: PSI over near-empty bins is noise)."""
    e = np.asarray(expected, dtype=float)
    a = np.asarray(actual, dtype=float)
    bins = max(2, min(bins, len(e) // 20))
    uniq = np.unique(e)
    if len(uniq) <= bins:
        edges = np.concatenate(([-np.inf], (uniq[:-1] + uniq[1:]) / 2, [np.inf]))
    else:
        inner = np.unique(np.quantile(e, np.linspace(0, 1, bins + 1)[1:-1]))
        edges = np.concatenate(([-np.inf], inner, [np.inf]))
    ef = np.histogram(e, edges)[0] / len(e)
    af = np.histogram(a, edges)[0] / len(a)
    eps = 1e-4
    ef = np.clip(ef, eps, None)
    af = np.clip(af, eps, None)
    return float(np.sum((af - ef) * np.log(af / ef)))


@dataclass(frozen=True, slots=True)
class Drift:
    n_primary: int
    n_shadow: int
    mean_primary: float
    mean_shadow: float
    std_primary: float
    # (mean shadow - mean primary) / std primary (0 when std is 0 and means equal)
    mean_shift: float
    ks_d: float
    ks_p: float
    psi: float


def drift(primary: Sequence[float], shadow: Sequence[float]) -> Drift:
    p = np.asarray(primary, dtype=float)
    s = np.asarray(shadow, dtype=float)
    mp, ms, sd = float(p.mean()), float(s.mean()), float(p.std())
    if sd > 0:
        shift = (ms - mp) / sd
    else:
        shift = 0.0 if ms == mp else math.copysign(math.inf, ms - mp)
    if np.array_equal(np.sort(p), np.sort(s)):
        d, pv = 0.0, 1.0
    else:
        r = st.ks_2samp(p, s, method="asymp" if len(p) * len(s) > 10_000 else "auto")
        d, pv = float(r.statistic), float(r.pvalue)
    return Drift(len(p), len(s), mp, ms, sd, shift, d, pv, psi(p, s))
