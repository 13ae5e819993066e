"""The HTML report: one self-contained file (inline CSS and SVG, no script from anywhere, no
network): the verdict, per-endpoint latency distributions of primary and shadow (SVG plots drawn
here), difference rates by field, the numeric drift and label agreement of model outputs, what
was treated as noise and why, and side-by-side samples of differing responses (secrets redacted
when the samples were taken). Written 0600: samples hold pieces of captured traffic."""

from __future__ import annotations

import math
from html import escape
from typing import Any

import orjson

from shadowtap.compare.report import EndpointReport, Report
from shadowtap.jsonl import create_private

_PRIMARY, _SHADOW = "#0969da", "#e16f24"
_ENDPOINT_CARDS = 60  # endpoints shown in detail (ranked by divergence); the table lists all

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;\
color:#1f2328;background:#f6f8fa}
main{max-width:1200px;margin:0 auto;padding:16px 24px}
h1{font-size:20px;margin:8px 0} h2{font-size:17px;margin:24px 0 8px;border-bottom:1px solid #d0d7de}
h3{font-size:15px;margin:16px 0 6px}
.verdict{color:#fff;padding:14px 18px;border-radius:8px;font-size:22px;font-weight:700}
.verdict small{font-size:14px;font-weight:400;opacity:.9;margin-left:12px}
table{border-collapse:collapse;width:100%;background:#fff;margin:6px 0}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eaeef2} td.num{text-align:right;font-variant-numeric:tabular-nums}
.bar{background:#eaeef2;width:160px;height:10px;display:inline-block;vertical-align:middle}
.bar span{display:block;height:10px;background:#cf222e}
.noise .bar span{background:#8c959f}
.card{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:10px 14px;margin:10px 0}
.side{display:grid;grid-template-columns:1fr 1fr;gap:8px}
pre{background:#f6f8fa;border:1px solid #d0d7de;padding:6px;max-height:320px;overflow:auto;\
white-space:pre-wrap;word-break:break-all;margin:2px 0;font-size:12px}
.Pass{color:#1a7f37}.High,.Low{color:#cf222e;font-weight:600}.Nodata{color:#8c959f}
.muted{color:#656d76} ul{margin:4px 0}
"""


def _f(v: Any, spec: str = ".2f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, spec)


def _pct(v: Any) -> str:
    return "-" if v is None else f"{v:.2%}"


def latency_svg(primary: list[float], shadow: list[float], title: str) -> str:
    """Two empirical CDFs (from percentile points 0..100) on one plot; log x axis when the
    latencies span more than a factor of 20."""
    w, h, ml, mr, mt, mb = 640, 220, 48, 16, 24, 34
    pts = [x for x in primary + shadow if x is not None and math.isfinite(x)]
    if not pts:
        return (
            f'<svg width="{w}" height="40" role="img"><text x="4" y="24">{escape(title)}: '
            "no latencies</text></svg>"
        )
    lo, hi = max(min(pts), 1e-3), max(max(pts), 1e-3)
    log = hi / lo > 20
    if hi == lo:
        hi = lo * 1.1 + 1e-3

    def sx(v: float) -> float:
        v = max(v, 1e-3)
        frac = (math.log(v / lo) / math.log(hi / lo)) if log else (v - lo) / (hi - lo)
        return ml + frac * (w - ml - mr)

    def sy(q: float) -> float:
        return mt + (1 - q / 100) * (h - mt - mb)

    parts = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" '
            f'aria-label="{escape(title)}" class="latency">'
        ),
        f'<text x="{ml}" y="14" font-size="12" font-weight="600">{escape(title)}</text>',
        f'<rect x="{ml}" y="{mt}" width="{w - ml - mr}" height="{h - mt - mb}" fill="#fff" '
        'stroke="#d0d7de"/>',
    ]
    for q in (0, 50, 90, 100):
        y = sy(q)
        parts.append(
            f'<line x1="{ml}" x2="{w - mr}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eaeef2"/>'
            f'<text x="{ml - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">'
            f"p{q}</text>"
        )
    ticks = (
        [lo * (hi / lo) ** (i / 4) for i in range(5)]
        if log
        else [lo + (hi - lo) * i / 4 for i in range(5)]
    )
    for t in ticks:
        x = sx(t)
        parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{h - mb}" y2="{h - mb + 4}" '
            'stroke="#656d76"/>'
            f'<text x="{x:.1f}" y="{h - mb + 15}" font-size="10" text-anchor="middle">'
            f"{t:.3g}</text>"
        )
    parts.append(
        f'<text x="{(w + ml) / 2:.0f}" y="{h - 4}" font-size="10" text-anchor="middle">'
        f"latency ms{' (log scale)' if log else ''}</text>"
    )
    qs = list(range(0, 101, 2))
    for vals, colour, name, dy in (
        (primary, _PRIMARY, "primary", 0),
        (shadow, _SHADOW, "shadow", 14),
    ):
        if vals:
            path = " ".join(
                f"{sx(v):.1f},{sy(q):.1f}" for v, q in zip(vals, qs) if math.isfinite(v)
            )
            parts.append(
                f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>'
            )
        parts.append(
            f'<rect x="{w - mr - 80}" y="{mt + 8 + dy}" width="10" height="10" '
            f'fill="{colour}"/>'
            f'<text x="{w - mr - 66}" y="{mt + 17 + dy}" font-size="11">{name}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _bar(rate: float) -> str:
    return f'<span class="bar"><span style="width:{min(100.0, rate * 100):.1f}%"></span></span>'


def _val(v: Any) -> str:
    if isinstance(v, str):
        return escape(v)
    return escape(orjson.dumps(v).decode())


def _endpoint_html(e: EndpointReport) -> str:
    lat = e.latency
    t = lat.test
    err = e.errors
    out = [
        f'<div class="card endpoint"><h3>{escape(e.endpoint)}</h3>',
        f"<p>{e.pairs} pairs, {e.compared} compared, {e.identical} identical; divergence "
        f"{_pct(e.divergence)}; errors primary {_pct(err.primary_rate)} / shadow "
        f"{_pct(err.shadow_rate)}"
        + (
            "; <b>new failure modes</b>: "
            f"{escape(', '.join(f'{k} x{n}' for k, n in err.new_failures.items()))}"
            if err.new_failures
            else ""
        )
        + (
            "; recoveries (the shadow answers where the primary failed): "
            f"{escape(', '.join(f'{k} x{n}' for k, n in err.recoveries.items()))}"
            if err.recoveries
            else ""
        )
        + "</p>",
    ]
    title = (
        f"p50 {_f(lat.primary.p50, '.1f')} / {_f(lat.shadow.p50, '.1f')} ms, "
        f"p90 {_f(lat.primary.p90, '.1f')} / {_f(lat.shadow.p90, '.1f')}, "
        f"p99 {_f(lat.primary.p99, '.1f')} / {_f(lat.shadow.p99, '.1f')} (primary / shadow)"
    )
    out.append(latency_svg(lat.primary.cdf, lat.shadow.cdf, title))
    if t:
        out.append(
            f'<p class="muted">median ratio x{_f(t.median_ratio)}, Mann-Whitney U one-sided '
            f"p={_f(t.p_value, '.3g')}</p>"
        )
    mism = [p for p in e.status.pairs if p.primary != p.shadow]
    if mism:
        out.append(
            "<p>status changes: "
            + escape(", ".join(f"{p.primary} -> {p.shadow} x{p.count}" for p in mism))
            + "</p>"
        )
    if e.fields:
        out.append(
            '<table class="fields"><tr><th>field</th><th>kinds</th><th>diff rate</th>'
            "<th></th><th>baseline</th><th>type</th><th>treated as</th></tr>"
        )
        for f in e.fields:
            kinds = ", ".join(f"{k} {n}" for k, n in f.kinds.items())
            treated = (
                f"noise: {escape(f.noise)}"
                if f.noise
                else ("new field (not failing)" if f.only_extra else "<b>difference</b>")
            )
            if f.renamed_to is not None:
                treated += f"<br>renamed to <code>{escape(f.renamed_to)}</code>?"
            elif f.renamed_from is not None:
                treated += f"<br>renamed from <code>{escape(f.renamed_from)}</code>?"
            if f.agreement is not None:
                treated += f"<br>agreement {_pct(f.agreement)}; flips: " + escape(
                    ", ".join(f"{x.primary!r} -> {x.shadow!r} x{x.count}" for x in f.flips[:5])
                )
            out.append(
                f'<tr class="{"noise" if f.noise else "diff"}">'
                f"<td><code>{escape(f.path)}</code></td>"
                f'<td>{escape(kinds)}</td><td class="num">{_pct(f.rate)}</td>'
                f'<td>{_bar(f.rate)}</td><td class="num">{_pct(f.baseline_rate)}</td>'
                f"<td>{escape(f.type)}</td><td>{treated}</td></tr>"
            )
        out.append("</table>")
    if e.numeric:
        out.append(
            '<table class="numeric"><tr><th>numeric field</th><th>n</th>'
            "<th>mean primary</th><th>mean shadow</th><th>shift (std)</th><th>KS D</th>"
            "<th>KS p</th><th>PSI</th></tr>"
        )
        for m in e.numeric:
            out.append(
                f'<tr><td><code>{escape(m.path)}</code></td><td class="num">{m.n}</td>'
                f'<td class="num">{_f(m.mean_primary, ".4g")}</td>'
                f'<td class="num">{_f(m.mean_shadow, ".4g")}</td>'
                f'<td class="num">{_f(m.mean_shift, "+.3f")}</td>'
                f'<td class="num">{_f(m.ks_d, ".3f")}</td>'
                f'<td class="num">{_f(m.ks_p, ".3g")}</td>'
                f'<td class="num">{_f(m.psi, ".3f")}</td></tr>'
            )
        out.append("</table>")
    for f in e.fields:
        if f.noise or not f.samples:
            continue
        out.append(
            f'<details class="samples"><summary>samples of <code>{escape(f.path)}</code> '
            f"({len(f.samples)})</summary>"
        )
        for smp in f.samples:
            out.append(
                f'<p><code>{escape(smp.request)}</code> <span class="muted">exchange '
                f"{escape(smp.exchange_id)}, {escape(smp.kind)}</span>: "
                f"<code>{_val(smp.primary)}</code> &rarr; "
                f"<code>{_val(smp.shadow)}</code></p>"
                f'<div class="side"><div><b>primary</b><pre>{escape(smp.primary_body)}</pre>'
                f"</div><div><b>shadow</b><pre>{escape(smp.shadow_body)}</pre></div></div>"
            )
        out.append("</details>")
    if e.genai is not None:
        from shadowtap.compare.genai import genai_html

        out.append(genai_html(e.genai))
    if e.tensors is not None:
        from shadowtap.compare.tensors import tensors_html

        out.append(tensors_html(e.tensors))
    out.append("</div>")
    return "".join(out)


def render_html(report: Report) -> str:
    v = report.verdict
    s = report.summary
    body = [
        (
            '<h1>shadowtap compare</h1><div class="verdict" id="verdict" '
            f'data-verdict="{v.result}" '
            f'style="background:{v.result.html_colour}">Verdict: {v.result.upper()}<small>score '
            f"{v.score:.1f} (pass &ge; {v.pass_score:g}, marginal &ge; {v.marginal_score:g}), "
            f"exit code {v.exit_code}</small></div>"
        ),
        f"<p>{s.pairs} pairs, {s.compared} compared, {s.identical} identical, {s.endpoints} "
        f"endpoints, {s.unmatched_exchanges} exchanges without a result, {s.unmatched_results} "
        "results without an exchange"
        + (
            f", {s.with_baseline} with a baseline"
            if s.baseline
            else ", no baseline (noise self-detected)"
        )
        + (f", {s.input_errors} malformed input lines" if s.input_errors else "")
        + "</p>",
    ]
    if v.reasons:
        body.append(
            "<h2>Why</h2><ul>" + "".join(f"<li>{escape(r)}</li>" for r in v.reasons[:50]) + "</ul>"
        )
    body.append(
        "<h2>Score by group</h2><table><tr><th>group</th><th>weight</th><th>metrics</th>"
        "<th>passed</th><th>score</th></tr>"
    )
    for g, d in v.groups.items():
        body.append(
            f'<tr><td>{escape(g)}</td><td class="num">{d.weight:g}</td>'
            f'<td class="num">{d.metrics}</td><td class="num">{d.passed}</td>'
            f'<td class="num">{d.score:.1f}</td></tr>'
        )
    body.append("</table>")
    body.append(
        "<h2>Endpoints, ranked by divergence</h2><table><tr><th>endpoint</th><th>pairs</th>"
        "<th>divergence</th><th>errors p / s</th><th>p50 ms p / s</th><th>p99 ms p / s</th>"
        "</tr>"
    )
    for e in report.endpoints:
        lat = e.latency
        body.append(
            f'<tr><td>{escape(e.endpoint)}</td><td class="num">{e.pairs}</td>'
            f'<td class="num">{_pct(e.divergence)}</td>'
            f'<td class="num">{_pct(e.errors.primary_rate)} / '
            f"{_pct(e.errors.shadow_rate)}</td>"
            f'<td class="num">{_f(lat.primary.p50, ".1f")} / '
            f"{_f(lat.shadow.p50, '.1f')}</td>"
            f'<td class="num">{_f(lat.primary.p99, ".1f")} / '
            f"{_f(lat.shadow.p99, '.1f')}</td>"
            "</tr>"
        )
    body.append("</table>")
    body.extend(_endpoint_html(e) for e in report.endpoints[:_ENDPOINT_CARDS])
    if len(report.endpoints) > _ENDPOINT_CARDS:
        body.append(
            f'<p class="muted">{len(report.endpoints) - _ENDPOINT_CARDS} more endpoints: '
            "in the table above and in the JSON report.</p>"
        )
    body.append("<h2>Treated as noise</h2>")
    if report.noise:
        body.append(
            "<table><tr><th>endpoint</th><th>field</th><th>rate</th><th>why</th></tr>"
            + "".join(
                f"<tr><td>{escape(n.endpoint)}</td><td><code>{escape(n.path)}</code>"
                f'</td><td class="num">{_pct(n.rate)}</td><td>{escape(n.reason)}</td>'
                "</tr>"
                for n in report.noise
            )
            + "</table>"
        )
    else:
        body.append("<p>No field was treated as noise.</p>")
    body.append(
        "<p>Headers ignored by default (noisy): <code>"
        + escape(", ".join(report.noisy_headers))
        + "</code></p>"
    )
    body.append(
        '<h2>All metrics</h2><table class="metrics"><tr><th>group</th><th>endpoint</th>'
        "<th>field</th><th>metric</th><th>value</th><th>threshold</th><th>result</th>"
        "<th>detail</th></tr>"
    )
    for m in v.metrics:
        body.append(
            f"<tr><td>{escape(m.group)}</td><td>{escape(m.endpoint)}</td>"
            f"<td>{escape(m.path or '')}</td><td>{escape(m.name)}</td>"
            f'<td class="num">{_f(m.value, ".4g")}</td>'
            f'<td class="num">{_f(m.threshold, ".4g")}</td>'
            f'<td class="{m.result}">{m.result}{" (critical)" if m.critical else ""}</td>'
            f"<td>{escape(m.detail)}</td></tr>"
        )
    body.append("</table>")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">"
        f"<title>shadowtap compare: {v.result}</title><style>{_CSS}</style></head><body><main>"
        + "".join(body)
        + "</main></body></html>\n"
    )


def write_html(report: Report, path: str) -> None:
    with create_private(path) as f:
        f.write(render_html(report).encode("utf-8"))
