"""``shadowtap lab``: the one-host lab (shadowtap.lab, from scripts/lab/; also behind
scripts/lab.sh): network namespaces client, primary (demo service v1) and shadow (demo service
v2)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from shadowtap.cli import app


@app.command(no_args_is_help=True)
def lab(
    action: Annotated[str, typer.Argument(help="up, down, status or env.")],
    prefix: Annotated[str, typer.Option(help="Namespace name prefix (or $LAB_PREFIX).")] = (
        os.environ.get("LAB_PREFIX", "stlab")
    ),
    port: Annotated[int, typer.Option(help="The demo services' port.")] = 8080,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Bring the one-host lab up, take it down (also after a crash), show its status, or print its
    addresses as shell variables (env). status exits 1 when the lab is not up."""
    from shadowtap.errors import InputError
    from shadowtap.lab import lab as module

    if action not in module.ACTIONS:
        raise InputError(
            f"unknown action {action!r} (up, down, status, env)", where="shadowtap lab"
        )
    code = module.run(action, module.Lab(prefix=prefix, port=port), as_json=json_out)
    if code:
        raise typer.Exit(code)
