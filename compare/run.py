"""The stage behind ``shadowtap compare``: stream the files through the joiner into a
Comparison, then write the reports. Returns the verdict's exit code."""

from __future__ import annotations

import os
from collections.abc import Sequence

from shadowtap import console
from shadowtap.compare.aggregate import Comparison
from shadowtap.compare.config import NoiseRule, load_config
from shadowtap.compare.join import Joiner, join
from shadowtap.errors import EXIT_INTERRUPTED, InputError
from shadowtap.jsonl import read_jsonl
from shadowtap.records import Exchange, Result


def run_compare(
    exchanges: str,
    results: str | None,
    *,
    baseline: str | None = None,
    ignore: Sequence[str] = (),
    config: str | None = None,
    html: str | None = None,
    json_out: str | None = None,
    quiet: bool = False,
    parquet: str | None = None,
    proto_descriptor: str | None = None,
    jobs: int = 1,
    engine: str = "local",
    spark_master: str = "local[*]",
) -> int:
    """``results`` None: ``exchanges`` is a run directory or a lake. ``jobs`` > 1 or the spark
    engine: the partitioned comparison (compare/partitioned.py), merged; the same report."""
    cfg = load_config(config).with_ignore(tuple(NoiseRule.parse(r) for r in ignore))
    for out in (html, json_out):  # fail before the work, not after it
        if out and out != "-":
            folder = os.path.dirname(os.path.abspath(out))
            if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
                raise InputError("cannot write the report: no such writable directory", where=out)
    schema = None
    if proto_descriptor:  # gRPC messages with their field names (compare/protobuf.py)
        from shadowtap.compare.protobuf import Schema

        schema = Schema(proto_descriptor)
    if results is None or jobs != 1 or engine != "local":
        from shadowtap.compare.partitioned import compare_inputs

        if schema is not None:
            raise InputError(
                "read by the one-process comparison only",
                field="proto_descriptor",
                hint="drop --jobs/--engine, or compare without the descriptor",
            )
        comparison = compare_inputs(
            exchanges,
            results,
            baseline,
            cfg,
            jobs=jobs,
            engine=engine,
            spark_master=spark_master,
            parquet=parquet,
        )
        return _report(comparison, False, quiet=quiet, json_out=json_out, html=html)
    comparison = Comparison(cfg, baseline=baseline is not None, proto_schema=schema)

    def on_error(err: InputError) -> None:
        comparison.input_error_count += 1
        if comparison.input_error_count <= 20:
            console.warn(f"{err} (skipped)")
        if len(comparison.input_errors) < 10:
            comparison.input_errors.append(str(err))

    lake = None
    if parquet:  # the pairs to a Parquet lake too (docs/lake.md)
        from shadowtap.lake.writer import LakeWriter

        lake = LakeWriter(parquet, config=cfg)
    joiner = Joiner(baseline=baseline is not None)
    triples = join(
        read_jsonl(exchanges, Exchange.from_json, on_error),
        read_jsonl(results, Result.from_json, on_error),
        read_jsonl(baseline, Result.from_json, on_error) if baseline else None,
        joiner,
    )
    interrupted = False
    try:
        for ex, res, base in triples:
            comparison.add(ex, res, base)
            if lake is not None:
                lake.add(ex, res)
    except KeyboardInterrupt:
        # Ctrl-C loses nothing: the pairs read so far are reported, and the exit status (130)
        # says the verdict covers part of the input only.
        interrupted = True
        console.warn(f"interrupted: reporting the {comparison.pairs} pairs compared so far")
    else:
        comparison.unmatched_exchanges = joiner.unmatched_exchanges
        comparison.unmatched_results = joiner.unmatched_results
    finally:
        if lake is not None:
            lake.close()
    return _report(comparison, interrupted, quiet=quiet, json_out=json_out, html=html)


def _report(
    comparison: Comparison,
    interrupted: bool,
    *,
    quiet: bool,
    json_out: str | None,
    html: str | None,
) -> int:
    report = comparison.snapshot(fresh=True)
    report = report.interrupted() if interrupted else report.finished()
    if not quiet:
        from shadowtap.compare.report_terminal import render

        render(report)
    if json_out:
        from shadowtap.compare.report_json import write_json

        write_json(report, json_out)
    if html:
        from shadowtap.compare.report_html import write_html

        write_html(report, html)
    return EXIT_INTERRUPTED if interrupted else report.verdict.exit_code
