"""``shadowtap extract``: pcap/pcapng captures -> JSON Lines of HTTP exchanges."""

from __future__ import annotations

from typing import Annotated

import typer

from shadowtap.cli import app
from shadowtap.cli import options as opt


@app.command()
def extract(
    captures: Annotated[
        list[str],
        typer.Argument(help="pcap or pcapng files (merged by timestamp).", metavar="CAPTURE..."),
    ],
    output: Annotated[
        str, typer.Option("-o", "--output", help="JSONL output file ('-' = stdout, '.gz' = gzip).")
    ] = "-",
    port: Annotated[
        list[int] | None,
        typer.Option(
            "--port",
            "-p",
            help="Only connections on this port (repeatable). Default: HTTP on any port, by "
            "content.",
        ),
    ] = None,
    bpf_filter: Annotated[
        str | None,
        typer.Option(
            "--filter", "-f", help="A BPF filter expression (tcpdump syntax) frames must match."
        ),
    ] = None,
    max_body: opt.ExchangeMaxBody = 1 << 20,
    keep_secrets: opt.ExchangeKeepSecrets = False,
    secret_header: opt.SecretHeader = None,
    idle_timeout: Annotated[
        float,
        typer.Option(
            "--idle-timeout",
            help="Seconds of capture time before an idle connection is evicted.",
            min=0.001,
        ),
    ] = 120.0,
    max_buffer: Annotated[
        int,
        typer.Option(
            "--max-buffer",
            help="Out-of-order bytes held per connection direction before a gap is declared.",
            min=1,
        ),
    ] = 4 << 20,
    max_connections: Annotated[
        int,
        typer.Option(
            "--max-connections",
            help="Connections tracked at once (about 3.5 KB each); the least recently active goes "
            "first.",
            min=1,
        ),
    ] = 50_000,
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs",
            "-j",
            help="Worker processes sharing the connections (0: for captures over 32 MiB, one plus "
            "one per further idle CPU, at most 4; 1: none). The output is byte for byte the "
            "same.",
            min=0,
        ),
    ] = 0,
) -> None:
    """Rebuild the HTTP exchanges (HTTP/1.x, HTTP/2 and gRPC, Server-Sent Events) of CAPTURE
    files into JSON Lines, one exchange a line, in request-time order (format:
    docs/exchange-format.md)."""
    from shadowtap.capture.extract import run_extract

    run_extract(
        captures,
        output,
        ports=port or (),
        bpf_filter=bpf_filter,
        max_body=max_body,
        keep_secrets=keep_secrets,
        idle_timeout=idle_timeout,
        max_held_bytes=max_buffer,
        max_connections=max_connections,
        jobs=jobs,
        secret_headers=tuple(secret_header or ()),
    )
