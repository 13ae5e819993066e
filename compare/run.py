"""The stage behind ``shadowtap compare``: stream the files through the joiner into a
Comparison, then write the reports. Returns the verdict's exit code."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Sequence
from itertools import islice
from typing import Any

from shadowtap import console
from shadowtap.compare.aggregate import Comparison
from shadowtap.compare.config import NoiseRule, load_config
from shadowtap.compare.join import Joiner, Triple, join
from shadowtap.errors import EXIT_INTERRUPTED, InputError
from shadowtap.jsonl import read_jsonl
from shadowtap.procs import batch_gc
from shadowtap.records import Exchange, Result

# Pairs are read _BATCH at a time, then compared: reading and comparing in stretches instead of
# alternating a pair at a time spares caches and branch predictors ~15 us a pair of LLM answers
# (scripts/bench_llm.sh's 20,000 pairs, one core: 4.6 -> 4.3 s of CPU); 64 a batch is slower
# again (what a batch reads, ~80 KB a pair, no longer stays in the caches). Memory: 16 pairs.
_BATCH = 16


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
    """``results`` None: ``exchanges`` is a run directory, a lake or a run's stream
    (``nats://host:4222/SUBJECT``: its exchanges and results; a stream as ``results``: its
    results). ``jobs`` > 1 or the spark engine: the partitioned comparison
    (compare/partitioned.py), merged; the same report."""
    if exchanges.startswith("nats://") or (results or "").startswith("nats://"):
        return _compare_stream(
            exchanges,
            results,
            baseline=baseline,
            ignore=ignore,
            config=config,
            html=html,
            json_out=json_out,
            quiet=quiet,
            parquet=parquet,
            proto_descriptor=proto_descriptor,
            jobs=jobs,
            engine=engine,
            spark_master=spark_master,
        )
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
    pending: deque[Triple] = deque()  # pairs read and not yet compared

    def compare_pending() -> None:
        while pending:
            ex, res, base = pending.popleft()
            comparison.add(ex, res, base)
            if lake is not None:
                lake.add(ex, res)

    try:
        # Millions of short-lived acyclic objects (records, parsed bodies): the collector's
        # thresholds raised and the imports frozen out of its walks (procs.batch_gc).
        with batch_gc():
            while True:
                # _BATCH pairs read, then compared (deque.extend keeps what it took when
                # interrupted)
                pending.extend(islice(triples, _BATCH))
                if not pending:
                    break
                compare_pending()
    except KeyboardInterrupt:
        # Ctrl-C loses nothing: the pairs read so far are reported (those of the batch not yet
        # compared too), and the exit status (130) says the verdict covers part of the input only.
        interrupted = True
        compare_pending()
        console.warn(f"interrupted: reporting the {comparison.pairs} pairs compared so far")
    else:
        comparison.unmatched_exchanges = joiner.unmatched_exchanges
        comparison.unmatched_results = joiner.unmatched_results
    finally:
        if lake is not None:
            lake.close()
    return _report(comparison, interrupted, quiet=quiet, json_out=json_out, html=html)


def _compare_stream(exchanges: str, results: str | None, **kw: Any) -> int:
    """``run_compare`` with a run's stream as an input: the stream's records are copied to
    private JSONL files first (streaming, in stream order), then compared like any files, by any
    engine. EXCHANGES a stream and no RESULTS: both from the stream (the mirror publishes both);
    a stream as RESULTS: its results (replay's, or the mirror's), with EXCHANGES from anywhere."""
    import shutil
    import tempfile

    from shadowtap.lake.nats import stream_to_files

    work = tempfile.mkdtemp(prefix="shadowtap-stream-")  # 0700
    try:
        files: dict[str, tuple[str, str, int, int]] = {}
        for url in {u for u in (exchanges, results) if u and u.startswith("nats://")}:
            sub = tempfile.mkdtemp(dir=work)
            files[url] = stream_to_files(url, sub)
            _, _, n_x, n_r = files[url]
            console.info(f"{url}: {n_x} exchanges, {n_r} results")
        if exchanges in files:
            ex_path = files[exchanges][0]
            res_path = files[exchanges][1] if results is None else results
        else:
            ex_path = exchanges
            res_path = results or ""
        if results in files:
            res_path = files[results][1]
        return run_compare(ex_path, res_path, **kw)
    finally:
        shutil.rmtree(work, ignore_errors=True)


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
