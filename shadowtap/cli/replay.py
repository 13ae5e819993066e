"""``shadowtap replay``: captured traffic to a shadow, at the recorded rate, scaled, or as load."""

from __future__ import annotations

from typing import Annotated

import typer

from shadowtap.cli import app
from shadowtap.cli import options as opt


@app.command(no_args_is_help=True)
def replay(
    input: Annotated[
        str,
        typer.Argument(
            help="Exchanges JSONL (.gz ok, '-' stdin) or a pcap/pcapng, extracted on the fly."
        ),
    ],
    target: Annotated[
        str,
        typer.Option(
            "--target",
            "-t",
            help="Where to send: http://host:port, optionally with a path prefix (https too).",
        ),
    ],
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            help="Results JSONL (docs/results-format.md); '-' stdout, .gz compressed.",
        ),
    ] = None,
    speed: Annotated[
        str,
        typer.Option(help="Recorded timing scaled by this factor (2 = twice as fast), or 'max'."),
    ] = "1",
    rate: Annotated[
        float | None,
        typer.Option(help="Send at this fixed rate (requests/s) whatever the recorded timing."),
    ] = None,
    amplify: Annotated[int, typer.Option(help="Send each request N times.", min=1)] = 1,
    loop: Annotated[
        int, typer.Option(help="Replay the input N times (0: until --duration).", min=0)
    ] = 1,
    duration: Annotated[
        float | None,
        typer.Option(help="Stop after S seconds of schedule (of run time at --speed max)."),
    ] = None,
    concurrency: opt.Concurrency = 64,
    pool: Annotated[
        bool,
        typer.Option(
            "--pool",
            help="Independent requests over a pool of connections, instead of one target "
            "connection per captured connection, in order.",
        ),
    ] = False,
    preload: Annotated[
        bool,
        typer.Option(
            "--preload",
            help="Decode and decide the whole input before the clock starts (load tests: the rate "
            "is not bounded by input decoding; about 1 KB of memory an exchange).",
        ),
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            "-w",
            help="Sender processes, each owning whole captured connections (their order kept), "
            "one clock, one results file; default: the CPUs available (JSONL file input; 1 for a "
            "capture or stdin).",
            min=1,
        ),
    ] = None,
    timeout: opt.Timeout = 10.0,
    connect_timeout: opt.ConnectTimeout = 5.0,
    ca: opt.Ca = None,
    insecure: opt.Insecure = False,
    max_body: Annotated[
        int, typer.Option(help="Bytes of each response body kept in the results.")
    ] = 1 << 20,
    keep_host: opt.KeepHost = False,
    host_suffix: opt.HostSuffix = None,
    set_header: opt.SetHeader = None,
    drop_header: opt.DropHeader = None,
    rewrite: opt.Rewrite = None,
    method: opt.Method = None,
    path: opt.PathFilter = None,
    header: opt.HeaderFilter = None,
    sample: Annotated[
        float,
        typer.Option(
            help="Percent of requests to replay, chosen consistently by --sample-key.",
            min=0,
            max=100,
        ),
    ] = 100.0,
    sample_key: Annotated[
        str, typer.Option(help="'client' (address) or 'header:NAME' (e.g. header:X-User-Id).")
    ] = "client",
    allow: opt.Allow = None,
    allow_unsafe: opt.AllowUnsafe = False,
    idempotency_key: opt.IdempotencyKey = True,
    force: Annotated[
        bool,
        typer.Option("--force", help="Replay even into the server the traffic was captured from."),
    ] = False,
    port: Annotated[
        list[int] | None,
        typer.Option("--port", "-p", help=f"pcap input: HTTP server port. {opt.MORE}"),
    ] = None,
    bpf_filter: Annotated[
        str | None, typer.Option("--filter", help="pcap input: BPF filter.")
    ] = None,
    keep_secrets: Annotated[
        bool,
        typer.Option(
            "--keep-secrets",
            help="Do not redact secrets: in a pcap input, and in the results (the shadow's "
            "Set-Cookie, tokens).",
        ),
    ] = False,
    redacted: Annotated[
        str,
        typer.Option(
            "--redacted",
            help="Requests holding redacted placeholders (read back from a redacted capture): "
            "'skip' (counted, warned) or 'send' as they are.",
        ),
    ] = "skip",
    substitute: Annotated[
        list[str] | None,
        typer.Option(
            "--substitute",
            help="NAME=VALUE: a placeholder of this header, query parameter or form/JSON field is "
            "replaced by VALUE (e.g. a test credential). Repeatable.",
        ),
    ] = None,
    progress: Annotated[
        bool | None,
        typer.Option("--progress/--no-progress", help="Progress line (default: on a terminal)."),
    ] = None,
    json_summary: Annotated[
        bool, typer.Option("--json", help="Also print the summary as one JSON object on stdout.")
    ] = False,
    check: Annotated[
        bool, typer.Option("--check/--no-check", help="Connect to the target once before starting.")
    ] = True,
) -> None:
    """Replay captured HTTP requests to a shadow target and record its answers."""
    from shadowtap.errors import EXIT_INTERRUPTED, InputError
    from shadowtap.replay.policy import Target, policy_from_options
    from shadowtap.replay.run import ReplayConfig, run_replay
    from shadowtap.replay.schedule import Timing

    if speed.strip().lower() == "max":
        speed_value: float | None = None
    else:
        try:
            speed_value = float(speed)
        except ValueError:
            raise InputError(
                f"speed must be a number or 'max', not {speed!r}", where="--speed"
            ) from None
    try:
        timing = Timing(speed=speed_value, rate=rate, amplify=amplify, loop=loop, duration=duration)
    except ValueError as exc:
        raise InputError(str(exc), where="timing options") from exc
    policy = policy_from_options(
        Target.parse(target),
        keep_host=keep_host,
        host_suffix=host_suffix,
        set_header=set_header or (),
        drop_header=drop_header or (),
        rewrite=rewrite or (),
        method=method or (),
        path=path,
        header=header or (),
        sample_percent=sample,
        sample_key=sample_key,
        allow=allow or (),
        allow_unsafe=allow_unsafe,
        idempotency_key=idempotency_key,
        force=force,
    )
    cfg = ReplayConfig(
        tls=opt.tls_options(ca, insecure, "target"),
        input=input,
        policy=policy,
        timing=timing,
        output=output,
        concurrency=concurrency,
        per_connection=not pool,
        timeout=timeout,
        connect_timeout=connect_timeout,
        max_body=max_body,
        check_target=check,
        preload=preload,
        workers=workers,
        ports=tuple(port or ()),
        bpf_filter=bpf_filter,
        keep_secrets=keep_secrets,
        progress=progress,
        json_summary=json_summary,
        redacted=redacted,
        substitute=_pairs(substitute or ()),
    )
    summary = run_replay(cfg)
    if summary.interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)


def _pairs(values: list[str] | tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    from shadowtap.errors import InputError

    out = []
    for v in values:
        name, sep, value = v.partition("=")
        if not sep or not name.strip():
            raise InputError(f"{v!r} is not NAME=VALUE", where="--substitute")
        out.append((name.strip(), value))
    return tuple(out)
