"""``shadowtap export``: write the joined pairs of a run (exchanges + results) to a Parquet lake
(Hive-partitioned by date and endpoint; docs/lake.md)."""

from __future__ import annotations

import sys
from importlib.abc import MetaPathFinder
from typing import Annotated

import typer

from shadowtap.cli import app

_INPUTS = (
    "A run directory (exchanges.jsonl + results.jsonl, as the mirror writes), or an "
    "exchanges file and a results file (.gz ok)."
)
_OUT = "The lake directory (created 0700; files 0600). Existing files are kept: runs add to a lake."
_CONFIG = (
    "compare's config (endpoint rules, ignored headers, tolerances) for the endpoint names "
    "and the per-pair diff."
)
_MAX_BODY = "Bytes of each body kept (longer ones are cut and marked body_truncated)."


class _WithoutPandas(MetaPathFinder):
    """pandas as if not installed. pyarrow imports it the first time it converts a Python or
    numpy value, to ask whether that is a pandas object: 0.17 s of CPU (5% of a 200,000-pair
    export) in a process with no use for it. For ``export``'s process only."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "pandas":
            raise ModuleNotFoundError("pandas is not used by shadowtap export", name=name)


@app.command()
def export(
    inputs: Annotated[list[str], typer.Argument(help=_INPUTS)],
    out: Annotated[str, typer.Option("--out", "-o", help=_OUT)],
    host: Annotated[
        str | None,
        typer.Option("--host", help="Host name recorded in each row (default: this machine's)."),
    ] = None,
    config: Annotated[str | None, typer.Option("--config", help=_CONFIG)] = None,
    max_body: Annotated[int, typer.Option("--max-body", min=0, help=_MAX_BODY)] = 65536,
    rows_per_file: Annotated[
        int, typer.Option("--rows-per-file", min=1, help="Rows buffered before files are written.")
    ] = 100_000,
) -> None:
    """Export pairs to a Parquet lake that DuckDB, Spark or pandas read directly."""
    sys.meta_path.insert(0, _WithoutPandas())
    from shadowtap.lake.export import run_export

    raise typer.Exit(
        run_export(
            inputs, out, host=host, config=config, max_body=max_body, rows_per_file=rows_per_file
        )
    )
