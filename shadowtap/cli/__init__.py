"""The ``shadowtap`` command. Each subcommand lives in its own module of this package, parses its
options and calls one function of a stage (imported lazily, so ``--help`` stays fast). Errors of
the ShadowtapError hierarchy become one clear message on stderr and the error's exit code."""

from __future__ import annotations

import sys

import typer

from shadowtap import __version__
from shadowtap.errors import EXIT_INTERRUPTED, InputError, ShadowtapError

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
    ctx: typer.Context,
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    global _command
    _command = ctx.invoked_subcommand


_command: str | None = None  # the subcommand being run, for flag_for

# The one place where the stages' fields become flags (h11's way: errors are raised about fields
# inside, translated at the edge). A field is its flag with dashes (max_body -> --max-body) unless
# listed here: for every command (None), or for one.
_FLAGS: dict[str | None, dict[str, str]] = {
    None: {"ports": "--port", "bpf_filter": "--filter", "json_summary": "--json"},
    "replay": {"sample_percent": "--sample"},
    "mirror": {"target": "--shadow", "sample_percent": "--percent"},
}


def flag_for(field: str, command: str | None = None) -> str:
    """The command-line flag that sets ``field`` in ``command`` (default: the one being run)."""
    command = command if command is not None else _command
    flag = _FLAGS.get(command, {}).get(field) or _FLAGS[None].get(field)
    return flag or "--" + field.replace("_", "-")


def user_error(exc: ShadowtapError) -> ShadowtapError:
    """The error as the user of the command line sees it: an InputError about a field is placed
    at the field's flag (``target: ...`` -> ``--shadow: ...`` in ``shadowtap mirror``)."""
    if isinstance(exc, InputError) and exc.field is not None and exc.where is None:
        return exc.at(flag_for(exc.field))
    return exc


def reflow(text: str) -> str:
    """A docstring as help paragraphs: the lines of a paragraph joined into one (rich wraps it
    at the terminal's width; a hard break kept from the source would show mid-sentence), the
    paragraphs and the items of a list ("- ...") each on their own."""
    import inspect

    paragraphs = []
    for block in inspect.cleandoc(text).split("\n\n"):
        items: list[str] = []
        for line in block.splitlines():
            line = line.strip()
            if items and not line.startswith(("- ", "* ")):
                items[-1] += " " + line
            else:
                items.append(line)
        paragraphs.append("\n".join(items))
    return "\n\n".join(p for p in paragraphs if p)


# The module of each command (a module adds its command(s) to ``app`` on import).
_MODULES = {
    "extract": "extract",
    "capture": "capture",
    "doctor": "capture",
    "replay": "replay",
    "compare": "compare",
    "export": "export",
    "mirror": "mirror",
    "lab": "lab",
}


def _register(command: str | None = None) -> None:
    """Import the commands' modules: ``command``'s alone when it is known (typer then builds that
    command's options only: ~0.04 s of CPU less for ``shadowtap extract`` than all eight), else
    all of them (``--help``, ``--version``, a mistyped name). Their docstrings become help
    paragraphs here, once (reflow)."""
    import importlib
    import inspect

    module = _MODULES.get(command) if command is not None else None
    for name in (module,) if module is not None else dict.fromkeys(_MODULES.values()):
        try:
            importlib.import_module(f"shadowtap.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"shadowtap.cli.{name}":
                raise
    for info in app.registered_commands:
        doc = info.help or (inspect.getdoc(info.callback) if info.callback else None)
        if doc:
            info.help = reflow(doc)


def main() -> None:
    _register(sys.argv[1] if len(sys.argv) > 1 else None)
    try:
        app()
    except ShadowtapError as raised:
        from shadowtap.console import err

        exc = user_error(raised)
        err.print(f"shadowtap: error: {exc.message}", markup=False)
        if exc.hint:
            err.print(f"  fix: {exc.hint}", markup=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
