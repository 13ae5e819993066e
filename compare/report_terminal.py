"""The terminal report: the verdict first, then the endpoints ranked by divergence, then their
fields, then what was treated as noise and why. Rich on a terminal, plain tab-separated lines in
a pipe (through shadowtap.console)."""

from __future__ import annotations

import math
from typing import Any

from rich.markup import escape

from shadowtap import console
from shadowtap.compare.report import Report

_ENDPOINTS_SHOWN = 15
_FIELDS_SHOWN = 8


def _ms(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2%}"


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    """console.table, with cells escaped for rich's markup on a terminal (field paths hold
    brackets: ``body.items[]``, values may hold ``[redacted]`` or worse)."""
    if console.out.is_terminal:
        rows = [[escape(str(c)) for c in r] for r in rows]
        title = escape(title)
    console.table(title, columns, rows)


def render(report: Report, *, verbose: bool = False) -> None:
    out = console.out
    v = report.verdict
    s = report.summary
    head = (
        f"verdict: {v.result.upper()}  score {v.score:.1f} "
        f"(pass >= {v.pass_score:g}, marginal >= {v.marginal_score:g})  exit {v.exit_code}"
    )
    if out.is_terminal:
        out.print(f"[{v.result.style}]{head}[/]")
    else:
        out.print(head, markup=False)
    for r in v.reasons[: 20 if not verbose else None]:
        out.print(f"  - {r}", markup=False)
    out.print(
        f"pairs {s.pairs}, compared {s.compared}, identical {s.identical}, endpoints "
        f"{s.endpoints}, unmatched exchanges {s.unmatched_exchanges}, unmatched results "
        f"{s.unmatched_results}"
        + (f", baseline pairs {s.with_baseline}" if s.baseline else "")
        + (f", malformed input lines {s.input_errors}" if s.input_errors else ""),
        markup=False,
    )
    rows = []
    for e in report.endpoints[:_ENDPOINTS_SHOWN]:
        lat = e.latency
        worst = next((f for f in e.fields if not f.noise and not f.only_extra), None)
        new = next((f for f in e.fields if not f.noise and f.only_extra), None)
        changes = ", ".join(
            f"{p.primary}->{p.shadow} x{p.count}" for p in e.status.pairs if p.primary != p.shadow
        )
        rows.append(
            [
                e.endpoint,
                e.pairs,
                _pct(e.divergence),
                changes or "-",
                f"{_pct(e.errors.primary_rate)} / {_pct(e.errors.shadow_rate)}",
                f"{_ms(lat.primary.p50)} / {_ms(lat.shadow.p50)}",
                f"{_ms(lat.primary.p99)} / {_ms(lat.shadow.p99)}",
                f"{worst.path} {_pct(worst.rate)}"
                if worst
                else (f"{new.path} (new field)" if new else "-"),
            ]
        )
    _table(
        "endpoints (ranked by divergence)",
        [
            "endpoint",
            "pairs",
            "divergence",
            "status changes",
            "errors p/s",
            "p50 ms p/s",
            "p99 ms p/s",
            "worst field",
        ],
        rows,
    )
    for e in report.endpoints[:_ENDPOINTS_SHOWN]:
        fields = [f for f in e.fields if not f.noise][:_FIELDS_SHOWN]
        numeric = e.numeric
        if not fields and not numeric:
            continue
        frows = []
        for f in fields:
            extra = ""
            if f.agreement is not None:
                flips = ", ".join(f"{x.primary}->{x.shadow} x{x.count}" for x in f.flips[:3])
                extra = f"agreement {f.agreement:.2%}; {flips}"
            elif f.samples:
                smp = f.samples[0]
                extra = f"e.g. {str(smp.primary)[:40]!s} -> {str(smp.shadow)[:40]!s}"
            frows.append(
                [
                    f.path,
                    ", ".join(f"{k}:{n}" for k, n in f.kinds.items()),
                    _pct(f.rate),
                    _pct(f.baseline_rate),
                    extra,
                ]
            )
        for m in numeric:
            shift = "-" if m.mean_shift is None else f"{m.mean_shift:+.2f} std"
            frows.append(
                [
                    m.path,
                    "numeric",
                    "",
                    "",
                    (
                        f"mean {m.mean_primary:.4g}->{m.mean_shadow:.4g} ({shift}), "
                        f"KS D={m.ks_d:.3f} p={m.ks_p:.2g}, PSI={m.psi:.3f}"
                    ),
                ]
            )
        _table(f"fields of {e.endpoint}", ["field", "kinds", "rate", "baseline", "detail"], frows)
    for e in report.endpoints[:_ENDPOINTS_SHOWN]:
        if e.genai is not None:
            from shadowtap.compare.genai import terminal_rows

            _table(
                f"generative answers of {e.endpoint}",
                ["", "primary", "shadow", "detail"],
                terminal_rows(e.genai),
            )
        if e.tensors is not None:
            from shadowtap.compare.tensors import terminal_rows as tensor_rows

            _table(
                f"output tensors of {e.endpoint}", ["", "value", "detail"], tensor_rows(e.tensors)
            )
    if report.noise:
        _table(
            "treated as noise",
            ["endpoint", "field", "rate", "why"],
            [[n.endpoint, n.path, _pct(n.rate), n.reason] for n in report.noise],
        )
    out.print("headers ignored (noisy): " + ", ".join(report.noisy_headers), markup=False)
