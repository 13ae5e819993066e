import random
import re

from shadowtap.mirror.stats import (
    EndpointLine,
    Histogram,
    MirrorSnapshot,
    log_line,
    prometheus_text,
)


def test_histogram_quantiles_within_bucket_error():
    rng = random.Random(7)
    values = [rng.lognormvariate(-5, 1) for _ in range(20000)]
    h = Histogram()
    for v in values:
        h.observe(v)
    values.sort()
    for q in (0.5, 0.9, 0.99):
        exact = values[int(q * len(values)) - 1]
        est = h.quantile(q)
        assert abs(est - exact) / exact < 0.25, (q, est, exact)
    assert h.count == 20000 and abs(h.sum - sum(values)) < 1e-6
    assert Histogram().quantile(0.5) is None


def _snapshot() -> MirrorSnapshot:
    lag, pl, sl = Histogram(), Histogram(), Histogram()
    for v in (0.001, 0.002, 0.003):
        lag.observe(v)
        pl.observe(v * 10)
        sl.observe(v * 20)
    return MirrorSnapshot(
        elapsed=12.0,
        seen=100,
        queued=90,
        mirrored=88,
        dropped=2,
        rate_limited=0,
        skipped={"unsafe_method": 10},
        queue_depth=0,
        queue_max=1000,
        in_flight=0,
        shadow_errors={"timeout": 1},
        shadow_5xx=3,
        primary_5xx=0,
        exchanges=100,
        pairs=88,
        unpaired=0,
        capture_drops=0,
        lag=lag,
        primary_latency=pl,
        shadow_latency=sl,
        verdict="fail",
        divergence=0.25,
        endpoints=(EndpointLine("GET /x/{id}", 88, 0.25),),
        rate=8.0,
    )


def test_prometheus_text_is_well_formed_and_cumulative():
    text = prometheus_text(_snapshot())
    sample = re.compile(
        r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_]+="[^"]*"(,[a-zA-Z_]+="[^"]*")*\})? '
        r"(-?[0-9.e+-]+|NaN|\+Inf)$"
    )
    declared = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            declared.add(line.split()[2])
            continue
        if line.startswith("#"):
            continue
        assert sample.match(line), line
        name = line.split("{")[0].split(" ")[0]
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in declared or base in declared, line
    assert "shadowtap_mirror_requests_seen_total 100" in text
    assert 'shadowtap_mirror_requests_dropped_total{reason="queue_full"} 2' in text
    assert 'shadowtap_mirror_verdict{verdict="fail"} 1' in text
    buckets = [
        int(m.group(1))
        for m in re.finditer(r'shadowtap_mirror_lag_seconds_bucket\{le="[^"]+"\} (\d+)', text)
    ]
    assert buckets == sorted(buckets) and buckets[-1] == 3
    assert "shadowtap_mirror_lag_seconds_count 3" in text


def test_log_line_carries_the_figures():
    line = log_line(_snapshot())
    assert (
        "seen=100" in line
        and "dropped=2" in line
        and "verdict=fail" in line
        and "divergence=25.0%" in line
    )


def test_dashboard_shows_every_figure():
    from rich.console import Console

    from shadowtap.mirror.stats import dashboard

    console = Console(record=True, width=120, force_terminal=True)
    console.print(dashboard(_snapshot()))
    text = console.export_text()
    for needle in (
        "verdict so far: fail",
        "requests seen",
        "100 (8/s)",
        "dropped (queue full)",
        "queue depth",
        "0/1000",
        "mirror lag p50/p99",
        "shadow errors",
        "timeout 1",
        "most divergent endpoints",
        "GET /x/{id}",
        "25.0%",
        "primary",
        "shadow",
    ):
        assert needle in text, needle
