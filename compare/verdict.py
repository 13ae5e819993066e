"""The verdict, in Kayenta's manner: every metric is classed Pass, High, Low (or Nodata), the
metrics of each group (errors, latency, content, model) give the group the share of them that
pass, the groups' weights make a score out of 100, and the score against the pass and marginal
thresholds gives pass / marginal / fail. A failing metric of a critical group (errors and latency
by default), or a field that differs in more than ``content.critical_rate`` of its endpoint's
pairs, fails the run whatever the score. Pure: report parts and config in, verdict out.

Metrics (``direction`` says which way fails):
- errors  (per endpoint and overall, increase fails): shadow error rate (5xx, timeouts, resets,
  no response) vs the primary's, one-sided Fisher test at ``errors.alpha`` and an absolute increase
  of at least ``errors.min_increase``;
- latency (per endpoint and overall, increase fails): one-sided Mann-Whitney U at
  ``latency.alpha``, and the median ratio above ``latency.effect`` and the median difference above
  ``latency.min_ms``;
- content (per endpoint, and per field that is not noise, increase fails): the share of pairs where
  the field differs, above ``content.max_rate``; a field only the shadow has is reported and passes
  unless ``content.extra_fields_fail``;
- model (per categorical field: decrease fails, below ``model.critical_agreement`` fails the run):
  agreement below ``model.min_agreement``; (per numeric field, one "drift" metric) PSI above
  ``model.psi_max``, or KS statistic above ``model.ks_max_d`` with p below ``model.ks_alpha``, or a
  mean shift beyond ``model.mean_shift_max`` primary standard deviations.
"""

from __future__ import annotations

from shadowtap.compare.config import CompareConfig
from shadowtap.compare.report import (
    EndpointReport,
    Group,
    GroupScore,
    Metric,
    MetricResult,
    Side,
    Verdict,
    VerdictReport,
)
from shadowtap.compare.stats import error_rate_increase

PASS, HIGH, LOW = MetricResult.PASS, MetricResult.HIGH, MetricResult.LOW
NODATA = MetricResult.NODATA
OVERALL = "(overall)"


def _metric(
    name: str,
    group: Group,
    endpoint: str,
    value: float | None,
    threshold: float | None,
    result: MetricResult,
    failed: bool,
    critical: bool,
    detail: str,
    path: str | None = None,
) -> Metric:
    return Metric(
        name=name,
        group=group,
        endpoint=endpoint,
        path=path,
        value=value,
        threshold=threshold,
        result=result,
        failed=failed,
        critical=critical and failed,
        detail=detail,
    )


def _errors(endpoint: str, side: Side | EndpointReport, pairs: int, cfg: CompareConfig) -> Metric:
    e = side.errors
    critical = Group.ERRORS in cfg.verdict.critical
    if pairs == 0:
        return _metric(
            "error rate", Group.ERRORS, endpoint, None, None, NODATA, False, False, "no pairs"
        )
    p_val = error_rate_increase(e.primary, pairs, e.shadow, pairs)
    increase = e.shadow_rate - e.primary_rate
    detail = (
        f"shadow {e.shadow_rate:.2%} vs primary {e.primary_rate:.2%} errors (Fisher p={p_val:.3g})"
    )
    if e.new_failures:
        detail += "; new failure modes: " + ", ".join(
            f"{k} x{n}" for k, n in e.new_failures.items()
        )
    failed = p_val < cfg.errors.alpha and increase >= cfg.errors.min_increase
    if failed:
        result = HIGH
    else:  # fewer errors on the shadow, significantly: LOW (the reverse test, only then)
        reverse = error_rate_increase(e.shadow, pairs, e.primary, pairs)
        result = (
            LOW if reverse < cfg.errors.alpha and -increase >= cfg.errors.min_increase else PASS
        )
    return _metric(
        "error rate",
        Group.ERRORS,
        endpoint,
        e.shadow_rate,
        e.primary_rate,
        result,
        failed,
        critical,
        detail,
    )


def _latency(endpoint: str, side: Side | EndpointReport, cfg: CompareConfig) -> Metric:
    lc = cfg.latency
    lat = side.latency
    t = lat.test
    n = min(lat.primary.n, lat.shadow.n)
    if t is None or n < lc.min_samples:
        return _metric(
            "latency",
            Group.LATENCY,
            endpoint,
            None,
            lc.effect,
            NODATA,
            False,
            False,
            f"fewer than {lc.min_samples} latencies on a side",
        )
    ratio = t.median_ratio
    delta = t.shadow_median - t.primary_median
    detail = (
        f"median {t.shadow_median:.2f} ms vs {t.primary_median:.2f} ms "
        f"(x{ratio:.2f}, Mann-Whitney p={t.p_value:.3g})"
    )
    if t.p_value < lc.alpha and ratio > lc.effect and delta > lc.min_ms:
        return _metric(
            "latency",
            Group.LATENCY,
            endpoint,
            ratio,
            lc.effect,
            HIGH,
            True,
            Group.LATENCY in cfg.verdict.critical,
            detail,
        )
    result = LOW if ratio * lc.effect < 1 and -delta > lc.min_ms else PASS
    return _metric(
        "latency", Group.LATENCY, endpoint, ratio, lc.effect, result, False, False, detail
    )


def _fields(ep: EndpointReport, cfg: CompareConfig) -> list[Metric]:
    cc, mc = cfg.content, cfg.model
    name = ep.endpoint
    out = []
    worst = 0.0
    for f in ep.fields:
        if f.noise:
            continue
        rate = f.rate
        if f.only_extra and not cc.extra_fields_fail:
            why = (
                f"the new name of {f.renamed_from}, which carries the regression"
                if f.renamed_from is not None
                else "not failing (content.extra_fields_fail = false)"
            )
            out.append(
                _metric(
                    "new field",
                    Group.CONTENT,
                    name,
                    rate,
                    None,
                    PASS,
                    False,
                    False,
                    f"only the shadow has it ({rate:.2%} of pairs); {why}",
                    f.path,
                )
            )
            continue
        if f.type == "categorical" and f.agreement is not None:
            agr = f.agreement
            flips = ", ".join(f"{x.primary!r}->{x.shadow!r} x{x.count}" for x in f.flips[:3])
            failed = agr < mc.min_agreement
            out.append(
                _metric(
                    "agreement",
                    Group.MODEL,
                    name,
                    agr,
                    mc.min_agreement,
                    LOW if failed else PASS,
                    failed,
                    agr < mc.critical_agreement or Group.MODEL in cfg.verdict.critical,
                    f"{agr:.2%} of pairs agree; top flips: {flips or '-'}",
                    f.path,
                )
            )
            continue
        worst = max(worst, rate)
        failed = rate > cc.max_rate
        critical = rate > cc.critical_rate or Group.CONTENT in cfg.verdict.critical
        kinds = ", ".join(f"{k} x{n}" for k, n in f.kinds.items())
        if f.renamed_to is not None:
            kinds += f" (renamed to {f.renamed_to}?)"
        elif f.renamed_from is not None:
            kinds += f" (renamed from {f.renamed_from}?)"
        base = "" if f.baseline_rate is None else f" (baseline noise {f.baseline_rate:.2%})"
        out.append(
            _metric(
                "field diff rate",
                Group.CONTENT,
                name,
                rate,
                cc.max_rate,
                HIGH if failed else PASS,
                failed,
                critical,
                f"differs in {rate:.2%} of pairs{base}: {kinds}",
                f.path,
            )
        )
    failed = ep.compared > 0 and worst > cc.max_rate
    out.insert(
        0,
        _metric(
            "content diff rate",
            Group.CONTENT,
            name,
            worst,
            cc.max_rate,
            (HIGH if failed else PASS) if ep.compared else NODATA,
            failed,
            False,
            f"worst field beyond noise differs in {worst:.2%} of pairs"
            if ep.compared
            else "no pair with both responses",
        ),
    )
    for m in ep.numeric:
        shift = m.mean_shift
        breaches: list[str] = []
        if m.psi > mc.psi_max:
            breaches.append(f"PSI {m.psi:.3f} > {mc.psi_max:g}")
        if m.ks_d > mc.ks_max_d and m.ks_p < mc.ks_alpha:
            breaches.append(f"KS D {m.ks_d:.3f} > {mc.ks_max_d:g} (p={m.ks_p:.2g})")
        if shift is None or abs(shift) > mc.mean_shift_max:
            breaches.append(
                "mean shift "
                + (
                    "from a constant"
                    if shift is None
                    else f"{shift:+.2f} std beyond {mc.mean_shift_max:g}"
                )
            )
        failed = bool(breaches)
        up = shift is None or shift > 0
        detail = (
            f"mean {m.mean_primary:.4g} -> {m.mean_shadow:.4g}"
            f"{'' if shift is None else f' ({shift:+.2f} std)'}, KS D={m.ks_d:.3f} "
            f"p={m.ks_p:.2g}, PSI={m.psi:.3f} over {m.n} sampled values"
            + (f"; {'; '.join(breaches)}" if breaches else "")
        )
        out.append(
            _metric(
                "drift",
                Group.MODEL,
                name,
                m.psi,
                mc.psi_max,
                (HIGH if up else LOW) if failed else PASS,
                failed,
                Group.MODEL in cfg.verdict.critical,
                detail,
                m.path,
            )
        )
    return out


def judge(
    endpoints: list[EndpointReport], overall: Side, cfg: CompareConfig, *, compared: int
) -> VerdictReport:
    """The verdict over per-endpoint reports and the overall errors/latency."""
    pairs = sum(e.pairs for e in endpoints)
    metrics: list[Metric] = []
    if len(endpoints) > 1:
        metrics.append(_errors(OVERALL, overall, pairs, cfg))
        metrics.append(_latency(OVERALL, overall, cfg))
    for ep in endpoints:
        metrics.append(_errors(ep.endpoint, ep, ep.pairs, cfg))
        metrics.append(_latency(ep.endpoint, ep, cfg))
        metrics.extend(_fields(ep, cfg))
        if ep.genai is not None:
            from shadowtap.compare.genai import genai_metrics

            metrics.extend(genai_metrics(ep, cfg))
        if ep.tensors is not None:
            from shadowtap.compare.tensors import tensor_metrics

            metrics.extend(tensor_metrics(ep, cfg))
    counts: dict[str, list[int]] = {}  # group -> [metrics, passed], in the order first seen
    for m in metrics:
        if m.result is NODATA:
            continue
        c = counts.setdefault(m.group.value, [0, 0])
        c[0] += 1
        c[1] += 0 if m.failed else 1
    total_w = 0.0
    got = 0.0
    groups: dict[str, GroupScore] = {}
    for name, (n, passed) in counts.items():
        w = cfg.verdict.weight(name)
        groups[name] = GroupScore(metrics=n, passed=passed, weight=w, score=100.0 * passed / n)
        total_w += w
        got += w * passed / n
    score = 100.0 * got / total_w if total_w else 0.0
    critical = [m for m in metrics if m.critical]
    failed = [m for m in metrics if m.failed]
    if pairs == 0:
        result = Verdict.ERROR
        reasons = ["no pairs to compare: no exchange had a result"]
    else:
        if critical:
            result = Verdict.FAIL
        elif score >= cfg.verdict.pass_score:
            result = Verdict.PASS
        elif score >= cfg.verdict.marginal_score:
            result = Verdict.MARGINAL
        else:
            result = Verdict.FAIL
        reasons = [
            f"{'CRITICAL ' if m.critical else ''}{m.group}: {m.endpoint}"
            f"{' ' + m.path if m.path else ''}: {m.name} {m.result} - {m.detail}"
            for m in sorted(failed, key=lambda m: not m.critical)
        ]
    return VerdictReport(
        result=result,
        exit_code=result.exit_code,
        score=round(score, 2),
        pass_score=cfg.verdict.pass_score,
        marginal_score=cfg.verdict.marginal_score,
        compared=compared,
        groups=groups,
        reasons=tuple(reasons),
        metrics=tuple(metrics),
    )
