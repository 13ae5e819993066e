"""Noise: differences that say nothing about the shadow's version.

Three sources, checked in this order for each (endpoint, field):

1. user rules (``[[noise.rules]]`` in the config, ``--ignore``): the field is noise, by decree;
2. with a baseline (a second instance of the primary's version, Diffy's method): the field is a
   regression only where its difference rate against the primary exceeds the primary-vs-baseline
   rate by both the absolute and the relative threshold; else it is noise ("within baseline noise");
3. without a baseline, self-detection: a field whose differing values have a volatile shape
   (timestamps, UUIDs, random tokens, counters) AND whose primary values vary from one exchange to
   the next is noise; arrays whose only difference is the order of their elements are noise
   (``order_is_noise``).

Every field treated as noise is listed in the report with the reason.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from shadowtap.compare.config import NoiseConfig
from shadowtap.compare.diff import Kind
from shadowtap.compare.shapes import Volatile, volatile_shape

_DISTINCT_CAP = 64  # enough to tell 'varies' from 'a few values'; 64 small ints per field


class Volatility:
    """What the differing values of one field looked like. O(1) per observation, memory bounded
    by ``_DISTINCT_CAP`` hashes."""

    __slots__ = ("_last", "_last_s", "distinct", "echoed", "increasing", "ints", "n", "shapes")

    def __init__(self) -> None:
        self.n = 0
        self.shapes: Counter[Volatile] = Counter()
        self.distinct: set[int] = set()
        self.ints = 0
        self.increasing = 0
        self.echoed = 0  # the primary's value appears in the request target
        self._last: int | None = None
        self._last_s: int | None = None

    def observe(
        self,
        primary: object,
        shadow: object,
        primary_ts: float | None,
        shadow_ts: float | None,
        target: str = "",
    ) -> None:
        """``primary_ts``/``shadow_ts``: when each side answered (a replay can run days after the
        capture, and an epoch timestamp is judged against its own side's time). ``target``: the
        request target; a value echoed from the request is never noise (an id the shadow gets
        wrong looks like a counter or a UUID otherwise)."""
        self.n += 1
        if target and isinstance(primary, (str, int)) and not isinstance(primary, bool):
            text = str(primary)
            if len(text) >= 1 and text in target:
                self.echoed += 1
        ps = volatile_shape(primary, primary_ts)
        if ps is not None and volatile_shape(shadow, shadow_ts) is not None:
            self.shapes[ps] += 1
        if len(self.distinct) < _DISTINCT_CAP:
            try:
                self.distinct.add(hash(primary))
            except TypeError:  # a list or an object: its repr stands for it
                self.distinct.add(hash(repr(primary)))
        if (
            isinstance(primary, int)
            and not isinstance(primary, bool)
            and isinstance(shadow, int)
            and not isinstance(shadow, bool)
        ):
            self.ints += 1
            if (
                self._last is not None
                and self._last_s is not None
                and primary > self._last
                and shadow > self._last_s
            ):
                self.increasing += 1
            self._last, self._last_s = primary, shadow

    def merge(self, other: Volatility) -> None:
        self.n += other.n
        self.shapes.update(other.shapes)
        for h in other.distinct:
            if len(self.distinct) >= _DISTINCT_CAP:
                break
            self.distinct.add(h)
        self.ints += other.ints
        self.increasing += other.increasing
        self.echoed += other.echoed

    def verdict(self, cfg: NoiseConfig) -> str | None:
        """Why this field is noise, or None."""
        if self.n < cfg.min_observations or self.echoed * 2 >= self.n:
            return None
        if self.shapes.get(Volatile.EPOCH, 0) == self.n and len(self.distinct) > 1:
            # Every differing value, on both sides, is an epoch number within two days of its own
            # exchange's time, and the primary's values vary: a clock, noise wherever it appears,
            # even when many exchanges share a second (a generative API's ``created``), which the
            # distinct-values rule below would miss.
            return (
                f"volatile: all {self.n} differing values are epoch timestamps near their "
                "exchange's time"
            )
        distinct = min(1.0, len(self.distinct) / min(self.n, _DISTINCT_CAP))
        if distinct < cfg.distinct_share:
            return None
        if self.shapes:
            shape, count = self.shapes.most_common(1)[0]
            if sum(self.shapes.values()) >= cfg.volatile_share * self.n:
                return (
                    f"volatile: {count}/{self.n} differing values are {shape.value}s and the "
                    f"primary's values vary across exchanges ({distinct:.0%} distinct)"
                )
        if self.ints >= cfg.volatile_share * self.n and self.ints > 1:
            share = self.increasing / (self.ints - 1)
            if share >= cfg.volatile_share:
                return (
                    f"volatile: a counter (both sides' values grew in {share:.0%} of successive "
                    "differing exchanges)"
                )
        return None


@dataclass(frozen=True, slots=True)
class BaselineJudgement:
    regression: bool
    raw_rate: float
    noise_rate: float
    reason: str


def judge_against_baseline(
    raw_rate: float, noise_rate: float, cfg: NoiseConfig
) -> BaselineJudgement:
    """Diffy's rule: regression iff raw - noise > absolute and (raw - noise) / noise > relative."""
    excess = raw_rate - noise_rate
    relative = excess / noise_rate if noise_rate > 0 else (float("inf") if excess > 0 else 0.0)
    regression = excess > cfg.absolute_threshold and relative > cfg.relative_threshold
    reason = (
        f"within baseline noise: differs in {raw_rate:.2%} of pairs vs {noise_rate:.2%} between "
        f"primary and baseline (thresholds: +{cfg.absolute_threshold:.2%} absolute, "
        f"+{cfg.relative_threshold:.0%} relative)"
    )
    return BaselineJudgement(regression, raw_rate, noise_rate, "" if regression else reason)


def noise_reason(
    endpoint: str,
    path: str,
    kinds: Counter[Kind],
    volatility: Volatility,
    cfg: NoiseConfig,
    baseline: BaselineJudgement | None,
    pooled: Volatility | None = None,
) -> str | None:
    """Why a differing field is noise, or None when it is a real difference.

    ``pooled``: the same path's observations on every endpoint together. A field seen differing
    too few times on one endpoint to judge alone (a request id on a rare error body) is noise when
    every one of its values there is volatile and the pooled observations are judged volatile."""
    for rule in cfg.rules:
        if rule.matches(endpoint, path):
            where = rule.endpoint + "::" if rule.endpoint else ""
            return f"rule: {rule.reason} ({where}{rule.path})"
    if cfg.order_is_noise and kinds and set(kinds) == {Kind.ORDER}:
        return "order: same elements in another order (order_is_noise)"
    if baseline is not None:
        return None if baseline.regression else baseline.reason
    reason = volatility.verdict(cfg)
    if (
        reason is None
        and pooled is not None
        and volatility.n < cfg.min_observations
        and volatility.echoed == 0
        and sum(volatility.shapes.values()) == volatility.n
    ):
        pooled_reason = pooled.verdict(cfg)
        if pooled_reason:
            return f"{pooled_reason}; judged on all endpoints together ({volatility.n} here)"
    return reason
