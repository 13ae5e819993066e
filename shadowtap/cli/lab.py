"""``shadowtap lab``: the one-host lab (shadowtap.lab, from scripts/lab/; also behind
scripts/lab.sh): network namespaces client, primary (demo service v1) and shadow (demo service
v2); with ``--fleet N`` N primaries with capture agents, a broker and a shadow."""

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
    fleet: Annotated[
        int,
        typer.Option(
            help="up: N primaries, each with a capture agent publishing to a nats-server "
            "(JetStream) in the lab, and a shadow (scripts/lab/fleet.py).",
            min=0,
        ),
    ] = 0,
    backend: Annotated[str, typer.Option(help="The fleet agents' capture backend.")] = "pcap",
    subject: Annotated[str, typer.Option(help="The fleet agents' NATS subject.")] = "fleet",
) -> None:
    """Bring the one-host lab up, take it down (also after a crash), show its status, or print its
    addresses as shell variables (env). status exits 1 when the lab is not up."""
    from shadowtap.errors import InputError
    from shadowtap.lab import lab as module

    if action not in module.ACTIONS:
        raise InputError(
            f"unknown action {action!r} (up, down, status, env)", where="shadowtap lab"
        )
    code = module.run(
        action,
        module.Lab(prefix=prefix, port=port),
        as_json=json_out,
        fleet=fleet,
        fleet_options={"backend": backend, "subject": subject} if action == "up" else None,
    )
    if code:
        raise typer.Exit(code)
