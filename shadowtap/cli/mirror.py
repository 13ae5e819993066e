"""``shadowtap mirror``: live shadow deployment, every request copied off the wire to the shadow."""

from __future__ import annotations

from typing import Annotated

import typer

from shadowtap.cli import app
from shadowtap.cli import options as opt


@app.command(no_args_is_help=True)
def mirror(
    port: Annotated[
        list[int], typer.Option("--port", "-p", help=f"The primary's HTTP port. {opt.MORE}")
    ],
    shadow: Annotated[
        str,
        typer.Option(
            "--shadow",
            "-s",
            help="The shadow: http://host:port, optionally with a path prefix (https too).",
        ),
    ],
    iface: Annotated[
        str,
        typer.Option(
            "--iface", "-i", help="The primary's network interface to capture on (not with --tls)."
        ),
    ] = "",
    backend: Annotated[
        str, typer.Option(help="Capture backend: ebpf, pcap, tls or auto.")
    ] = "auto",
    tls: Annotated[
        bool,
        typer.Option(
            "--tls",
            help="Mirror the plaintext of the primary's HTTPS (capture --tls: uprobes on its "
            "TLS library; no --iface).",
        ),
    ] = False,
    ca: opt.Ca = None,
    insecure: opt.Insecure = False,
    percent: Annotated[
        float,
        typer.Option(
            help="Percent of requests mirrored (Istio's mirrorPercentage).", min=0, max=100
        ),
    ] = 100.0,
    sample_key: Annotated[
        str,
        typer.Option(
            help="How --percent chooses: 'request' (each request "
            "on its own), 'client' (address) or "
            "'header:NAME' (all of one user's requests in or "
            "out)."
        ),
    ] = "request",
    rate_limit: Annotated[
        float | None,
        typer.Option(
            help="At most this many requests/s to the shadow; the excess is dropped and counted."
        ),
    ] = None,
    queue: Annotated[
        int,
        typer.Option(
            help="Requests waiting for the shadow at most; when full "
            "the oldest is dropped and counted.",
            min=1,
        ),
    ] = 10_000,
    concurrency: opt.Concurrency = 64,
    timeout: opt.Timeout = 10.0,
    connect_timeout: opt.ConnectTimeout = 5.0,
    allow: opt.Allow = None,
    allow_unsafe: opt.AllowUnsafe = False,
    idempotency_key: opt.IdempotencyKey = True,
    keep_host: opt.KeepHost = False,
    host_suffix: opt.HostSuffix = None,
    set_header: opt.SetHeader = None,
    drop_header: opt.DropHeader = None,
    rewrite: opt.Rewrite = None,
    method: opt.Method = None,
    path: opt.PathFilter = None,
    header: opt.HeaderFilter = None,
    metrics: Annotated[
        str | None, typer.Option(help="Serve Prometheus metrics on ADDR:PORT (/metrics).")
    ] = None,
    run_dir: Annotated[
        str | None,
        typer.Option(
            "--run-dir",
            help="Keep exchanges.jsonl, results.jsonl, the final reports and mirror.json here "
            "(0600 files).",
        ),
    ] = None,
    sink: opt.Sink = None,
    sink_spool: opt.SinkSpool = None,
    parquet: Annotated[
        str | None,
        typer.Option(
            "--parquet", help="Write the pairs to this Parquet lake directory (docs/lake.md)."
        ),
    ] = None,
    duration: Annotated[
        float | None, typer.Option(help="Stop after S seconds (else Ctrl-C or SIGTERM).")
    ] = None,
    config: Annotated[
        str | None,
        typer.Option("--config", help="Comparison rules file (as for compare --config)."),
    ] = None,
    ignore: Annotated[
        list[str] | None,
        typer.Option("--ignore", help=f"Comparison rule (as for compare --ignore). {opt.MORE}"),
    ] = None,
    proto_descriptor: opt.ProtoDescriptor = None,
    keep_secrets: Annotated[
        bool,
        typer.Option(
            "--keep-secrets",
            help="Do not redact secret headers in the files and reports (the shadow always gets "
            "them as sent).",
        ),
    ] = False,
    max_body: Annotated[
        int, typer.Option(help="Bytes of each body kept (request, and both responses).")
    ] = 1 << 20,
    bpf_filter: opt.BpfFilter = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Mirror even when the shadow is an address of this host on a mirrored port (the "
            "primary itself).",
        ),
    ] = False,
    dashboard: Annotated[
        bool | None,
        typer.Option(
            "--dashboard/--no-dashboard",
            help="Live dashboard (default: on a terminal; else a log line every --log-interval).",
        ),
    ] = None,
    log_interval: Annotated[
        float, typer.Option(help="Seconds between log lines without a dashboard.")
    ] = 5.0,
    nice: Annotated[
        int,
        typer.Option(
            help="Niceness added to the mirror's processes, so the "
            "primary's server gets the CPU first when it is short "
            "(0: none).",
            min=0,
            max=19,
        ),
    ] = 10,
    sched_idle: Annotated[
        bool,
        typer.Option(
            "--sched-idle/--no-sched-idle",
            help="Run the mirror under SCHED_IDLE: only on CPU time nothing else wants, so it "
            "never delays the primary's server (it lags and drops instead).",
        ),
    ] = True,
    min_coverage: Annotated[
        float,
        typer.Option(
            help="Share of the requests queued for the shadow that must be compared; below it a "
            "pass becomes 'error' (cannot judge).",
            min=0,
            max=1,
        ),
    ] = 0.9,
) -> None:
    """Mirror the primary's live traffic to a shadow, compare the answers as they come; the verdict
    is the exit status (0 pass, 10 marginal, 11 fail, 12 error)."""
    from shadowtap.errors import InputError
    from shadowtap.mirror.run import MirrorConfig, MirrorRun
    from shadowtap.replay.policy import Target, policy_from_options

    backend = "tls" if tls else backend
    if backend not in ("ebpf", "pcap", "tls", "auto"):
        raise InputError(
            f"backend must be ebpf, pcap, tls or auto, not {backend!r}", where="--backend"
        )
    if not iface and backend != "tls":
        raise InputError("an interface is needed (or --tls)", where="--iface")
    tls_options = opt.tls_options(ca, insecure, "shadow")
    if rate_limit is not None and rate_limit <= 0:
        raise InputError("rate limit must be > 0", where="--rate-limit")
    per_request = sample_key == "request"
    target = Target.parse(shadow)  # its errors are about "target": --shadow here (flag_for)
    policy = policy_from_options(
        target,
        keep_host=keep_host,
        host_suffix=host_suffix,
        set_header=set_header or (),
        drop_header=drop_header or (),
        rewrite=rewrite or (),
        method=method or (),
        path=path,
        header=header or (),
        sample_percent=100.0 if per_request else percent,
        sample_key="client" if per_request else sample_key,
        allow=allow or (),
        allow_unsafe=allow_unsafe,
        idempotency_key=idempotency_key,
        force=force,
    )
    cfg = MirrorConfig(
        iface=iface,
        ports=tuple(port),
        policy=policy,
        backend=backend,
        percent=percent,
        sample_per_request=per_request,
        rate_limit=rate_limit,
        queue=queue,
        concurrency=concurrency,
        timeout=timeout,
        connect_timeout=connect_timeout,
        max_body=max_body,
        metrics=metrics,
        tls=tls_options,
        run_dir=run_dir,
        sink=sink,
        sink_spool=sink_spool,
        parquet=parquet,
        duration=duration,
        keep_secrets=keep_secrets,
        force=force,
        compare_config=config,
        ignore=tuple(ignore or ()),
        proto_descriptor=proto_descriptor,
        dashboard=dashboard,
        log_interval=log_interval,
        bpf_filter=bpf_filter,
        min_coverage=min_coverage,
        nice=nice,
        sched_idle=sched_idle,
    )
    code = MirrorRun(cfg).run()
    if code:
        raise typer.Exit(code)
