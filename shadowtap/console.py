"""The one output sink: rich on a terminal, plain lines otherwise; diagnostics on stderr.

Commands print results through ``out`` (stdout) and progress, warnings and errors through ``err``
(stderr). ``table`` renders a titled two-or-more column table as a rich table on a terminal and as
``name: value`` / tab-separated lines elsewhere, so logs and pipes stay greppable.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    out: Console
    err: Console


def __getattr__(name: str) -> Any:
    """``out`` and ``err``, made on first use: importing rich costs ~0.05 s of CPU, which a
    command writing plain lines to a pipe or a file (``extract`` in a script) never needs."""
    if name not in ("out", "err"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from rich.console import Console

    g = globals()
    if "out" not in g:
        g["out"] = Console(highlight=False, soft_wrap=True)
        g["err"] = Console(stderr=True, highlight=False, soft_wrap=True)
    return g[name]


def _terminal(to_stderr: bool) -> bool:
    """rich's judgement (``Console.is_terminal``) of stderr or stdout. Before the console is made,
    rich is not asked when it could only say no: to a stream that is no tty when neither
    TTY_COMPATIBLE=1 nor FORCE_COLOR is set."""
    env = os.environ
    if (
        ("err" if to_stderr else "out") not in globals()
        and env.get("TTY_COMPATIBLE") != "1"
        and "FORCE_COLOR" not in env
    ):
        try:
            if not (sys.stderr if to_stderr else sys.stdout).isatty():
                return False
        except (AttributeError, ValueError):  # no isatty, or closed: rich says no too
            return False
    return bool(_console(to_stderr).is_terminal)


def _console(to_stderr: bool) -> Console:
    # (``out``/``err`` by name inside this module would not go through ``__getattr__``)
    return __getattr__("err" if to_stderr else "out")  # type: ignore[no-any-return]


def interactive() -> bool:
    """True when stderr is a terminal: progress bars and live dashboards go there."""
    return _terminal(True)


def table(
    title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], *, to_stderr: bool = False
) -> None:
    if _terminal(to_stderr):
        from rich.table import Table

        console = _console(to_stderr)
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
    err = _console(True)
    err.print(
        f"[yellow]warning:[/yellow] {message}" if err.is_terminal else f"warning: {message}",
        markup=err.is_terminal,
    )


def info(message: str) -> None:
    if _terminal(True):
        _console(True).print(message, markup=False)
    else:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
