"""``shadowtap mirror``: live shadow deployment, every request copied off the wire to the shadow."""

from __future__ import annotations

from typing import Annotated

import typer

from shadowtap.cli import app

_MORE = "Repeatable."


@app.command(no_args_is_help=True)
def mirror(
    iface: Annotated[str, typer.Option("--iface", "-i", help="The primary's network interface to capture on.")],
    port: Annotated[list[int], typer.Option("--port", "-p", help=f"The primary's HTTP port. {_MORE}")],
    shadow: Annotated[str, typer.Option("--shadow", "-s", help="The shadow: http://host:port, optionally with a path prefix (https too).")],
    backend: Annotated[str, typer.Option(help="Capture backend: ebpf, pcap or auto.")] = "auto",
    percent: Annotated[float, typer.Option(help="Percent of requests mirrored (Istio's mirrorPercentage).", min=0, max=100)] = 100.0,
    sample_key: Annotated[str, typer.Option(help="How --percent chooses: 'request' (each request on its own), 'client' (address) or 'header:NAME' (all of one user's requests in or out).")] = "request",
    rate_limit: Annotated[float | None, typer.Option(help="At most this many requests/s to the shadow; the excess is dropped and counted.")] = None,
    queue: Annotated[int, typer.Option(help="Requests waiting for the shadow at most; when full the oldest is dropped and counted.", min=1)] = 10_000,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", help="Requests in flight to the shadow at most.", min=1)] = 64,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the shadow's complete answer.")] = 10.0,
    connect_timeout: Annotated[float, typer.Option(help="Seconds to wait for a connection to the shadow.")] = 5.0,
    allow: Annotated[list[str] | None, typer.Option("--allow", help=f"'METHOD /path' route mirrored though unsafe (e.g. 'POST /v1/predict'; * wildcards). {_MORE}")] = None,
    allow_unsafe: Annotated[bool, typer.Option("--allow-unsafe", help="Mirror every method, not only GET/HEAD/OPTIONS and --allow routes.")] = False,
    idempotency_key: Annotated[bool, typer.Option("--idempotency-key/--no-idempotency-key", help="Add Idempotency-Key (stable per captured exchange) to unsafe requests sent by --allow-unsafe.")] = True,
    keep_host: Annotated[bool, typer.Option("--keep-host", help="Send the captured Host header instead of the shadow's.")] = False,
    host_suffix: Annotated[str | None, typer.Option(help="Captured Host with this suffix added to its name (Istio: -shadow).")] = None,
    set_header: Annotated[list[str] | None, typer.Option("--set-header", help=f"'Name: value' to set (replaces). {_MORE}")] = None,
    drop_header: Annotated[list[str] | None, typer.Option("--drop-header", help=f"Header name to remove. {_MORE}")] = None,
    rewrite: Annotated[list[str] | None, typer.Option("--rewrite", help=f"'REGEX=>REPLACEMENT' applied to the request target. {_MORE}")] = None,
    method: Annotated[list[str] | None, typer.Option("--method", help=f"Mirror only these methods (GET,HEAD). {_MORE}")] = None,
    path: Annotated[str | None, typer.Option("--path", help="Mirror only request targets matching this regex.")] = None,
    header: Annotated[list[str] | None, typer.Option("--header", help=f"Mirror only requests with header NAME, or NAME=REGEX matching. {_MORE}")] = None,
    metrics: Annotated[str | None, typer.Option(help="Serve Prometheus metrics on ADDR:PORT (/metrics).")] = None,
    run_dir: Annotated[str | None, typer.Option("--run-dir", help="Keep exchanges.jsonl, results.jsonl, the final reports and mirror.json here (0600 files).")] = None,
    duration: Annotated[float | None, typer.Option(help="Stop after S seconds (else Ctrl-C or SIGTERM).")] = None,
    config: Annotated[str | None, typer.Option("--config", help="Comparison rules file (as for compare --config).")] = None,
    ignore: Annotated[list[str] | None, typer.Option("--ignore", help=f"Comparison rule (as for compare --ignore). {_MORE}")] = None,
    keep_secrets: Annotated[bool, typer.Option("--keep-secrets", help="Do not redact secret headers in the files and reports (the shadow always gets them as sent).")] = False,
    max_body: Annotated[int, typer.Option(help="Bytes of each body kept (request, and both responses).")] = 1 << 20,
    bpf_filter: Annotated[str | None, typer.Option("--filter", help="Extra BPF filter on the captured packets.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Mirror even when the shadow is an address of this host on a mirrored port (the primary itself).")] = False,
    dashboard: Annotated[bool | None, typer.Option("--dashboard/--no-dashboard", help="Live dashboard (default: on a terminal; else a log line every --log-interval).")] = None,
    log_interval: Annotated[float, typer.Option(help="Seconds between log lines without a dashboard.")] = 5.0,
    nice: Annotated[int, typer.Option(help="Niceness added to the mirror's processes, so the primary's server gets the CPU first when it is short (0: none).", min=0, max=19)] = 10,
    sched_idle: Annotated[bool, typer.Option("--sched-idle/--no-sched-idle", help="Run the mirror under SCHED_IDLE: only on CPU time nothing else wants, so it never delays the primary's server (it lags and drops instead).")] = True,
    min_coverage: Annotated[float, typer.Option(help="Share of the requests queued for the shadow that must be compared; below it a pass becomes 'error' (cannot judge).", min=0, max=1)] = 0.9,
) -> None:
    """Mirror the primary's live traffic to a shadow, compare the answers as they come; the verdict
    is the exit status (0 pass, 10 marginal, 11 fail, 12 error)."""
    from replay.mirror_run import MirrorConfig, MirrorRun
    from replay.policy import (
        Policy,
        Route,
        Target,
        compile_regex,
        parse_header_filters,
        parse_header_pairs,
        parse_methods,
        parse_rewrites,
    )
    from shadowtap.errors import InputError

    if backend not in ("ebpf", "pcap", "auto"):
        raise InputError(f"backend must be ebpf, pcap or auto, not {backend!r}", where="--backend")
    if rate_limit is not None and rate_limit <= 0:
        raise InputError("rate limit must be > 0", where="--rate-limit")
    per_request = sample_key == "request"
    try:
        target = Target.parse(shadow)
    except InputError as exc:  # replay's parser names its own option
        raise InputError(exc.message.removeprefix("--target: "), where="--shadow") from None
    policy = Policy(
        target=target,
        keep_host=keep_host,
        host_suffix=host_suffix,
        set_headers=parse_header_pairs(set_header or [], "--set-header"),
        drop_headers=frozenset(h.strip().lower() for h in drop_header or []),
        url_rewrites=parse_rewrites(rewrite or []),
        methods=parse_methods(method or []),
        path_pattern=compile_regex(path, "--path") if path else None,
        header_filters=parse_header_filters(header or []),
        sample_percent=100.0 if per_request else percent,
        sample_key="client" if per_request else sample_key,
        allow=tuple(Route.parse(r) for r in allow or []),
        allow_unsafe=allow_unsafe,
        idempotency_key=idempotency_key,
        force=force,
    )
    cfg = MirrorConfig(
        iface=iface, ports=tuple(port), policy=policy, backend=backend, percent=percent,
        sample_per_request=per_request, rate_limit=rate_limit, queue=queue, concurrency=concurrency,
        timeout=timeout, connect_timeout=connect_timeout, max_body=max_body, metrics=metrics,
        run_dir=run_dir, duration=duration, keep_secrets=keep_secrets, force=force,
        compare_config=config, ignore=tuple(ignore or ()), dashboard=dashboard,
        log_interval=log_interval, bpf_filter=bpf_filter, min_coverage=min_coverage, nice=nice, sched_idle=sched_idle,
    )
    code = MirrorRun(cfg).run()
    if code:
        raise typer.Exit(code)
