"""The ``shadowtap`` command. Each subcommand lives in its own module of this package, parses its
options and calls one function of a stage (imported lazily, so ``--help`` stays fast). Errors of
the ShadowtapError hierarchy become one clear message on stderr and the error's exit code."""

from __future__ import annotations

import sys

import typer

from shadowtap import __version__
from shadowtap.errors import EXIT_INTERRUPTED, ShadowtapError

app = typer.Typer(
    name="shadowtap",
    help="Shadow deployment from the wire: capture HTTP traffic (eBPF or libpcap), replay it to a "
    "shadow, compare the answers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"shadowtap {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    pass


def _register() -> None:
    # Each module adds its command(s) to ``app`` on import.
    import importlib

    for name in ("extract", "capture", "replay", "compare", "export", "mirror", "lab"):
        try:
            importlib.import_module(f"shadowtap.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"shadowtap.cli.{name}":
                raise


def main() -> None:
    _register()
    try:
        app()
    except ShadowtapError as exc:
        from shadowtap.console import err

        err.print(f"shadowtap: error: {exc.message}", markup=False)
        if exc.hint:
            err.print(f"  fix: {exc.hint}", markup=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
