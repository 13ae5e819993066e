"""The stage behind ``shadowtap compare``: stream the files through the joiner into a
Comparison, then write the reports. Returns the verdict's exit code."""

from __future__ import annotations

from collections.abc import Sequence

from compare.aggregate import Comparison
from compare.config import NoiseRule, load_config
from compare.join import Joiner, join
from shadowtap import console
from shadowtap.errors import InputError
from shadowtap.jsonl import read_jsonl
from shadowtap.records import Exchange, Result


def run_compare(
    exchanges: str,
    results: str,
    *,
    baseline: str | None = None,
    ignore: Sequence[str] = (),
    config: str | None = None,
    html: str | None = None,
    json_out: str | None = None,
    quiet: bool = False,
) -> int:
    cfg = load_config(config).with_ignore(tuple(NoiseRule.parse(r) for r in ignore))
    comparison = Comparison(cfg, baseline=baseline is not None)

    def on_error(err: InputError) -> None:
        if len(comparison.input_errors) < 20:
            console.warn(f"{err} (line skipped)")
        comparison.input_errors.append(str(err))

    joiner = Joiner(baseline=baseline is not None)
    triples = join(
        read_jsonl(exchanges, Exchange.from_json, on_error),
        read_jsonl(results, Result.from_json, on_error),
        read_jsonl(baseline, Result.from_json, on_error) if baseline else None,
        joiner,
    )
    for ex, res, base in triples:
        comparison.add(ex, res, base)
    comparison.unmatched_exchanges = joiner.unmatched_exchanges
    comparison.unmatched_results = joiner.unmatched_results
    report = comparison.snapshot(fresh=True)
    if json_out:
        from compare.report_json import write_json

        write_json(report, json_out)
    if html:
        from compare.report_html import write_html

        write_html(report, html)
    if not quiet:
        from compare.report_terminal import render

        render(report)
    return int(report["verdict"]["exit_code"])
