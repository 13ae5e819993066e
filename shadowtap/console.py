"""The one output sink: rich on a terminal, plain lines otherwise; diagnostics on stderr.

Commands print results through ``out`` (stdout) and progress, warnings and errors through ``err``
(stderr). ``table`` renders a titled two-or-more column table as a rich table on a terminal and as
``name: value`` / tab-separated lines elsewhere, so logs and pipes stay greppable.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def interactive() -> bool:
    """True when stderr is a terminal: progress bars and live dashboards go there."""
    return err.is_terminal


def table(
    title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], *, to_stderr: bool = False
) -> None:
    console = err if to_stderr else out
    if console.is_terminal:
        t = Table(title=title, title_justify="left")
        for c in columns:
            t.add_column(c)
        for r in rows:
            t.add_row(*(str(x) for x in r))
        console.print(t)
    else:
        stream = sys.stderr if to_stderr else sys.stdout
        stream.write(f"# {title}\n")
        for r in rows:
            stream.write("\t".join(str(x) for x in r) + "\n")
        stream.flush()


def warn(message: str) -> None:
    err.print(
        f"[yellow]warning:[/yellow] {message}" if err.is_terminal else f"warning: {message}",
        markup=err.is_terminal,
    )


def info(message: str) -> None:
    if err.is_terminal:
        err.print(message, markup=False)
    else:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
