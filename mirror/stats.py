"""The live mirror's figures: histograms, one snapshot type, and its three renderings (the rich
dashboard, a plain log line, Prometheus text exposition). Pure: no I/O, no clock.

Histograms have fixed log-spaced buckets (factor 1.25 from 50 µs to 120 s: 67 buckets), so memory
is constant whatever the run's length; quantiles are interpolated inside a bucket (error under
the bucket's 25% width). The same buckets are exposed to Prometheus as ``_bucket{le=...}``.
"""

from __future__ import annotations

import math
from bisect import bisect_left as _bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field

from shadowtap.compare.report import Verdict


def _log_bounds(lo: float, hi: float, factor: float) -> tuple[float, ...]:
    out = []
    b = lo
    while b < hi * factor:
        out.append(float(f"{b:.6g}"))
        b *= factor
    return tuple(out)


DEFAULT_BOUNDS = _log_bounds(50e-6, 120.0, 1.25)


class Histogram:
    """Counts of observations (seconds) in fixed buckets; O(log buckets) per observation."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = DEFAULT_BOUNDS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # last: above the highest bound (+Inf)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        if not value > 0.0:  # NaN is skipped, a negative value counts as 0
            if value != value:
                return
            value = 0.0
        self.counts[_bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def quantile(self, q: float) -> float | None:
        """The q-quantile (0..1), interpolated linearly inside its bucket; None when empty."""
        if self.count == 0:
            return None
        rank = q * self.count
        seen = 0
        for i, c in enumerate(self.counts):
            if c and seen + c >= rank:
                lo = self.bounds[i - 1] if i > 0 else 0.0
                hi = self.bounds[i] if i < len(self.bounds) else self.bounds[-1]
                return lo + (hi - lo) * max(0.0, rank - seen) / c
            seen += c
        return self.bounds[-1]

    def prometheus(self, name: str, help_text: str) -> list[str]:
        lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        cum = 0
        for b, c in zip(self.bounds, self.counts):
            cum += c
            lines.append(f'{name}_bucket{{le="{b:g}"}} {cum}')
        lines.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        lines.append(f"{name}_sum {self.sum:.6f}")
        lines.append(f"{name}_count {self.count}")
        return lines


@dataclass(frozen=True, slots=True)
class EndpointLine:
    endpoint: str
    count: int
    divergence: float  # compare's divergence of this endpoint (0..1)


@dataclass(frozen=True, slots=True)
class MirrorSnapshot:
    """Everything the dashboard, the log line and the metrics endpoint show, at one instant."""

    elapsed: float
    seen: int  # requests seen complete on the wire
    queued: int  # admitted to the queue
    mirrored: int  # results back from the shadow (responses and errors)
    dropped: int  # pushed out of the full queue
    rate_limited: int
    skipped: dict[str, int]  # reason -> count (policy, sampling, own traffic)
    queue_depth: int
    queue_max: int
    in_flight: int
    shadow_errors: dict[str, int]  # error kind -> count (timeout, refused, reset, ...)
    shadow_5xx: int
    primary_5xx: int
    exchanges: int  # exchanges rebuilt from the wire
    pairs: int  # shadow results paired with the primary's exchange
    unpaired: int  # evicted unpaired (result or exchange never came)
    capture_drops: int  # lost in capture (kernel, ring buffer), when the source reports it
    lag: Histogram
    primary_latency: Histogram
    shadow_latency: Histogram
    verdict: str | None = None
    divergence: float | None = None  # compare's endpoint divergences, weighted by pairs (0..1)
    endpoints: tuple[EndpointLine, ...] = ()
    rate: float = 0.0  # requests seen per second, recent
    notes: tuple[str, ...] = field(default=())


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.1f}%"


def log_line(s: MirrorSnapshot) -> str:
    """One greppable line: what a non-terminal run prints every few seconds."""
    errors = sum(s.shadow_errors.values())
    return (
        f"mirror t={s.elapsed:.0f}s seen={s.seen} rate={s.rate:.0f}/s mirrored={s.mirrored} "
        f"dropped={s.dropped} rate_limited={s.rate_limited} skipped={sum(s.skipped.values())} "
        f"queue={s.queue_depth}/{s.queue_max} in_flight={s.in_flight} "
        f"lag_p50={_ms(s.lag.quantile(0.5))} lag_p99={_ms(s.lag.quantile(0.99))} "
        f"shadow_errors={errors} pairs={s.pairs} divergence={_pct(s.divergence)} "
        f"verdict={s.verdict or '-'}"
    ).replace(" ms", "ms")


def dashboard(s: MirrorSnapshot):  # -> rich renderable
    """The rich Live dashboard."""
    from rich.console import Group, RenderableType
    from rich.table import Table
    from rich.text import Text

    verdict_style = Verdict(s.verdict).style if s.verdict in tuple(Verdict) else "bold"
    head = Text.assemble(
        ("shadowtap mirror ", "bold"),
        (f"{s.elapsed:.0f}s  ", ""),
        ("verdict so far: ", ""),
        (s.verdict or "-", verdict_style),
        (f"   divergence: {_pct(s.divergence)}", ""),
    )
    traffic = Table(
        title="traffic", title_justify="left", show_header=False, box=None, pad_edge=False
    )
    traffic.add_column(style="dim")
    traffic.add_column(justify="right")
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(s.skipped.items()) if v) or "0"
    for k, v in (
        ("requests seen", f"{s.seen} ({s.rate:.0f}/s)"),
        ("mirrored", str(s.mirrored)),
        ("dropped (queue full)", str(s.dropped)),
        ("rate-limited", str(s.rate_limited)),
        ("skipped", skipped),
        ("queue depth", f"{s.queue_depth}/{s.queue_max}  in flight {s.in_flight}"),
        ("mirror lag p50/p99", f"{_ms(s.lag.quantile(0.5))} / {_ms(s.lag.quantile(0.99))}"),
        (
            "shadow errors",
            ", ".join(f"{k} {v}" for k, v in sorted(s.shadow_errors.items()) if v) or "0",
        ),
        ("5xx primary/shadow", f"{s.primary_5xx} / {s.shadow_5xx}"),
        ("pairs compared", f"{s.pairs}  unpaired {s.unpaired}"),
        ("capture drops", str(s.capture_drops)),
    ):
        traffic.add_row(k, v)
    lat = Table(title="latency", title_justify="left", box=None, pad_edge=False)
    lat.add_column("")
    lat.add_column("p50", justify="right")
    lat.add_column("p99", justify="right")
    for name, h in (("primary", s.primary_latency), ("shadow", s.shadow_latency)):
        lat.add_row(name, _ms(h.quantile(0.5)), _ms(h.quantile(0.99)))
    eps = Table(title="most divergent endpoints", title_justify="left", box=None, pad_edge=False)
    eps.add_column("endpoint")
    eps.add_column("pairs", justify="right")
    eps.add_column("divergence", justify="right")
    for e in s.endpoints[:8]:
        eps.add_row(e.endpoint, str(e.count), _pct(e.divergence))
    parts: list[RenderableType] = [head, traffic, lat, eps]
    parts.extend(Text(n, style="yellow") for n in s.notes)
    return Group(*parts)


_VERDICTS = tuple(v.value for v in Verdict)


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus_text(s: MirrorSnapshot) -> str:
    """Prometheus text exposition format 0.0.4."""
    p = "shadowtap_mirror_"
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {p}{name} {help_text}")
        lines.append(f"# TYPE {p}{name} {kind}")
        for labels, v in samples:
            val = f"{v:.6f}" if isinstance(v, float) and not float(v).is_integer() else f"{int(v)}"
            if isinstance(v, float) and math.isnan(v):
                val = "NaN"
            lines.append(f"{p}{name}{labels} {val}")

    metric("requests_seen_total", "counter", "Requests seen complete on the wire.", [("", s.seen)])
    metric(
        "requests_queued_total",
        "counter",
        "Requests admitted to the mirror queue.",
        [("", s.queued)],
    )
    metric(
        "requests_mirrored_total",
        "counter",
        "Requests sent to the shadow that came back (response or error).",
        [("", s.mirrored)],
    )
    metric(
        "requests_dropped_total",
        "counter",
        "Requests not mirrored for lack of capacity.",
        [('{reason="queue_full"}', s.dropped), ('{reason="rate_limit"}', s.rate_limited)],
    )
    metric(
        "requests_skipped_total",
        "counter",
        "Requests not mirrored by rule.",
        [(f'{{reason="{_esc(k)}"}}', v) for k, v in sorted(s.skipped.items())]
        or [('{reason="none"}', 0)],
    )
    metric(
        "shadow_errors_total",
        "counter",
        "Shadow requests that failed, by kind.",
        [(f'{{kind="{_esc(k)}"}}', v) for k, v in sorted(s.shadow_errors.items())]
        or [('{kind="none"}', 0)],
    )
    metric(
        "responses_5xx_total",
        "counter",
        "5xx responses by side.",
        [('{side="primary"}', s.primary_5xx), ('{side="shadow"}', s.shadow_5xx)],
    )
    metric("exchanges_total", "counter", "Exchanges rebuilt from the wire.", [("", s.exchanges)])
    metric(
        "pairs_total",
        "counter",
        "Shadow results paired with the primary's exchange.",
        [("", s.pairs)],
    )
    metric(
        "unpaired_total", "counter", "Results or exchanges evicted unpaired.", [("", s.unpaired)]
    )
    metric(
        "capture_drops_total", "counter", "Packets lost by the capture.", [("", s.capture_drops)]
    )
    metric(
        "queue_depth", "gauge", "Requests waiting to be sent to the shadow.", [("", s.queue_depth)]
    )
    metric("queue_capacity", "gauge", "The queue's bound.", [("", s.queue_max)])
    metric("in_flight", "gauge", "Requests in flight to the shadow.", [("", s.in_flight)])
    metric(
        "divergence_ratio",
        "gauge",
        "Compare's endpoint divergences (error-rate increase or "
        "share of pairs with a field differing beyond noise), weighted by pairs.",
        [("", float("nan") if s.divergence is None else float(s.divergence))],
    )
    metric(
        "verdict",
        "gauge",
        "The comparison's verdict so far (1 on the current one).",
        [(f'{{verdict="{v}"}}', 1 if (s.verdict or "").lower() == v else 0) for v in _VERDICTS],
    )
    lines += s.lag.prometheus(
        p + "lag_seconds", "From the request's last byte on the wire to its send to the shadow."
    )
    lines += s.primary_latency.prometheus(
        p + "primary_latency_seconds",
        "The primary's response "
        "time as seen on the wire (first request byte to last "
        "response byte).",
    )
    lines += s.shadow_latency.prometheus(
        p + "shadow_latency_seconds", "The shadow's response time."
    )
    return "\n".join(lines) + "\n"
