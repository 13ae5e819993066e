"""Option types shared by the commands that send captured requests to a shadow (``replay`` and
``mirror``): the rewriting, filtering and safety rules of replay's Policy, and the client's bounds;
by the commands that compare (``compare`` and ``mirror``); and by the commands that make exchanges
(``capture`` and ``extract``). One definition each, so the commands spell and explain them
alike."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from shadowtap.replay.client import TlsOptions

MORE = "Repeatable."
# capture and mirror: where the records go besides the files.
Sink = Annotated[
    str | None,
    typer.Option(
        "--sink",
        help="Publish to NATS JetStream too: nats://host:4222/SUBJECT (a stream per SUBJECT, made "
        "if missing; each record acknowledged, with this host's name, or NAME with "
        "?host=NAME; docs/lake.md).",
    ),
]
SinkSpool = Annotated[
    str | None,
    typer.Option(
        "--sink-spool",
        help="The sink's disk buffer while the broker is away (resent in order; the oldest "
        "dropped past 1 GiB, counted). Default: $TMPDIR/shadowtap-sink-UID-STREAM.",
    ),
]

Concurrency = Annotated[
    int,
    typer.Option("--concurrency", "-c", help="Requests in flight to the target at most.", min=1),
]
Timeout = Annotated[float, typer.Option(help="Seconds to wait for the target's complete answer.")]
ConnectTimeout = Annotated[
    float, typer.Option(help="Seconds to wait for a connection to the target.")
]
Ca = Annotated[
    str | None,
    typer.Option(
        "--ca", help="https targets: trust this CA file (PEM) instead of the system's CAs."
    ),
]
Insecure = Annotated[
    bool,
    typer.Option(
        "--insecure",
        help="https targets: do NOT verify the certificate (any server is accepted; "
        "said loudly at start).",
    ),
]


def tls_options(ca: str | None, insecure: bool, whose: str) -> TlsOptions:
    """The client's TLS options of --ca and --insecure; --insecure said at start (on stderr), as
    its help promises. ``whose``: what the command calls its target ("target", "shadow")."""
    from shadowtap.replay.client import TlsOptions

    if insecure:
        from shadowtap.console import warn

        warn(f"--insecure: the {whose}'s TLS certificate is NOT verified (any server is accepted)")
    return TlsOptions(ca, insecure)


KeepHost = Annotated[
    bool, typer.Option("--keep-host", help="Send the captured Host header instead of the target's.")
]
HostSuffix = Annotated[
    str | None,
    typer.Option(help="Captured Host with this suffix added to its name (Istio: -shadow)."),
]
SetHeader = Annotated[
    list[str] | None, typer.Option("--set-header", help=f"'Name: value' to set (replaces). {MORE}")
]
DropHeader = Annotated[
    list[str] | None, typer.Option("--drop-header", help=f"Header name to remove. {MORE}")
]
Rewrite = Annotated[
    list[str] | None,
    typer.Option("--rewrite", help=f"'REGEX=>REPLACEMENT' applied to the request target. {MORE}"),
]
Method = Annotated[
    list[str] | None, typer.Option("--method", help=f"Send only these methods (GET,HEAD). {MORE}")
]
PathFilter = Annotated[
    str | None, typer.Option("--path", help="Send only requests whose target matches this regex.")
]
HeaderFilter = Annotated[
    list[str] | None,
    typer.Option(
        "--header", help=f"Send only requests with header NAME, or NAME=REGEX matching. {MORE}"
    ),
]
Allow = Annotated[
    list[str] | None,
    typer.Option(
        "--allow",
        help="'METHOD /path' route sent though unsafe (e.g. 'POST /v1/predict'; * wildcards). "
        f"{MORE}",
    ),
]
AllowUnsafe = Annotated[
    bool,
    typer.Option(
        "--allow-unsafe", help="Send every method, not only GET/HEAD/OPTIONS and --allow routes."
    ),
]
IdempotencyKey = Annotated[
    bool,
    typer.Option(
        "--idempotency-key/--no-idempotency-key",
        help="Add Idempotency-Key (stable per captured exchange) to unsafe requests sent by "
        "--allow-unsafe.",
    ),
]
BpfFilter = Annotated[
    str | None, typer.Option("--filter", help="BPF filter on the captured packets.")
]

ProtoDescriptor = Annotated[
    str | None,
    typer.Option(
        "--proto-descriptor",
        help="A FileDescriptorSet (protoc --descriptor_set_out, grpcio-tools) for gRPC "
        "messages: fields compared by name (outputs[].fp32_contents), not by number.",
    ),
]

# capture and extract: what an exchange keeps of the captured messages.
ExchangeMaxBody = Annotated[
    int,
    typer.Option(
        "--max-body", help="Body bytes kept per message; body_len still counts them all.", min=0
    ),
]
ExchangeKeepSecrets = Annotated[
    bool,
    typer.Option(
        "--keep-secrets",
        help="Keep secrets (Authorization, Cookie, API keys, tokens in queries and JSON/form "
        "bodies: docs/security.md) instead of keyed hashes.",
    ),
]
SecretHeader = Annotated[
    list[str] | None, typer.Option("--secret-header", help=f"Another header to redact. {MORE}")
]
