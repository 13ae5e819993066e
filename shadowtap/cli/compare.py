"""``shadowtap compare``: diff the shadow's results against the primary's exchanges and give a
verdict; the exit status is the verdict (0 pass, 10 marginal, 11 fail, 12 error)."""

from __future__ import annotations

from typing import Annotated

import typer

from shadowtap.cli import app
from shadowtap.cli import options as opt

_EXCHANGES = (
    "Exchanges JSONL (the primary's requests and responses; .gz ok, - = stdin), or a "
    "run directory, or a Parquet lake, or a run's stream nats://host:4222/SUBJECT (docs/lake.md)."
)
_RESULTS = (
    "Results JSONL from `shadowtap replay` (the shadow's responses), or a run's stream "
    "(its results). Omitted: EXCHANGES is a run directory, a Parquet lake or a stream."
)
_PARQUET = "Also write the joined pairs to this Parquet lake directory (docs/lake.md)."
_JOBS = (
    "Compare in N local processes (partitions by exchange id, merged; 0 = one per CPU). "
    "The report is the one-process report."
)
_ENGINE = (
    "local (processes on this host) or spark (the same per-partition comparison on "
    "Apache Spark, merged on the driver)."
)
_MASTER = "Spark master URL for --engine spark (local[*], spark://host:7077, yarn, k8s://...)."


@app.command()
def compare(
    exchanges: Annotated[str, typer.Argument(help=_EXCHANGES)],
    results: Annotated[str | None, typer.Argument(help=_RESULTS)] = None,
    baseline: Annotated[
        str | None,
        typer.Option(
            "--baseline",
            help="Results of a second instance of the primary's version: differences it shows too "
            "are noise (Diffy's method).",
        ),
    ] = None,
    ignore: Annotated[
        list[str] | None,
        typer.Option(
            "--ignore",
            help="A field to treat as noise: PATH_GLOB or 'ENDPOINT_GLOB::PATH_GLOB' (e.g. "
            "'body.meta.*', 'GET /users/*::body.etag'). Repeatable.",
        ),
    ] = None,
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            help="Config file (TOML or JSON): thresholds, noise rules, tolerances, endpoint "
            "rules. See docs/compare.md.",
        ),
    ] = None,
    html: Annotated[
        str | None, typer.Option("--html", help="Write a self-contained HTML report here.")
    ] = None,
    json_out: Annotated[
        str | None, typer.Option("--json", help="Write the JSON report here (- = stdout).")
    ] = None,
    parquet: Annotated[str | None, typer.Option("--parquet", help=_PARQUET)] = None,
    proto_descriptor: opt.ProtoDescriptor = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=0, help=_JOBS)] = 1,
    engine: Annotated[str, typer.Option("--engine", help=_ENGINE)] = "local",
    spark_master: Annotated[str, typer.Option("--spark-master", help=_MASTER)] = "local[*]",
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet", "-q", help="No terminal report; the exit status still carries the verdict."
        ),
    ] = False,
) -> None:
    """Compare the shadow's responses with the primary's: content, status, errors, latency.

    Exit status: 0 pass, 10 marginal, 11 fail, 12 error (nothing to compare); 3 unreadable input."""
    from shadowtap.compare.run import run_compare

    code = run_compare(
        exchanges,
        results,
        baseline=baseline,
        ignore=ignore or (),
        config=config,
        html=html,
        json_out=json_out,
        quiet=quiet or json_out == "-",
        parquet=parquet,
        proto_descriptor=proto_descriptor,
        jobs=jobs,
        engine=engine,
        spark_master=spark_master,
    )
    raise typer.Exit(code)
