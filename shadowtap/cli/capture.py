"""``shadowtap capture`` (live HTTP capture off an interface) and ``shadowtap doctor`` (its
prerequisites)."""

from __future__ import annotations

from typing import Annotated

import typer

from shadowtap.cli import app
from shadowtap.cli import options as opt


@app.command(no_args_is_help=True)
def capture(
    iface: Annotated[
        str | None,
        typer.Option(
            "--iface",
            "-i",
            help="Interface to capture on (lo, eth0, a veth...); not with --tls.",
        ),
    ] = None,
    port: Annotated[
        list[int] | None,
        typer.Option(
            "--port",
            "-p",
            help=f"TCP port of the HTTP service, filtered in the kernel. {opt.MORE} Default: every "
            "TCP port.",
        ),
    ] = None,
    backend: Annotated[
        str,
        typer.Option(
            "--backend",
            "-b",
            help="ebpf (TC clsact hooks, ring buffer), pcap (libpcap/AF_PACKET) or auto (ebpf "
            "where possible, else pcap, saying why).",
        ),
    ] = "auto",
    write: Annotated[
        str | None,
        typer.Option(
            "--write",
            "-w",
            help="Also write the raw packets to this pcap (tcpdump/tshark/tcpreplay read it). RAW "
            "AND UNREDACTED: it holds every secret on the wire; created 0600.",
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            help="Exchanges JSONL (the format of `extract`; '-' stdout, .gz compressed; 0600). "
            "Secret headers redacted unless --keep-secrets.",
        ),
    ] = None,
    duration: Annotated[
        float | None, typer.Option("--duration", help="Stop after S seconds.", min=0)
    ] = None,
    count: Annotated[
        int | None,
        typer.Option(
            "--count",
            "-c",
            help="Stop after N exchanges (those in flight are then completed and written too).",
            min=1,
        ),
    ] = None,
    rotate_size: Annotated[
        float | None,
        typer.Option(
            "--rotate-size",
            help="Start a new file (out.1.pcap, out.2.pcap...) when one reaches this many MB "
            "(pcap and JSONL).",
            min=0.001,
        ),
    ] = None,
    keep_secrets: opt.ExchangeKeepSecrets = False,
    secret_header: opt.SecretHeader = None,
    max_body: opt.ExchangeMaxBody = 1 << 20,
    buffer_mb: Annotated[
        int,
        typer.Option(
            "--buffer-mb",
            help="Kernel buffer: the eBPF ring buffer (per CPU for a perf buffer) or the "
            "AF_PACKET ring.",
            min=1,
        ),
    ] = 64,
    perf_buffer: Annotated[
        bool,
        typer.Option(
            "--perf-buffer",
            help="eBPF: use the perf buffer even where the kernel has a ring buffer.",
        ),
    ] = False,
    print_bpf: Annotated[
        bool,
        typer.Option(
            "--print-bpf",
            help="Print the BPF program as it would be compiled for --iface (or --tls), and exit.",
        ),
    ] = False,
    tls: Annotated[
        bool,
        typer.Option(
            "--tls",
            help="Capture the plaintext of HTTPS: uprobes on the TLS library's "
            "SSL_read/SSL_write (OpenSSL 1.1/3, GnuTLS), no keys, no interface. `-b auto` picks it "
            "for a "
            "--port that speaks TLS.",
        ),
    ] = False,
    tls_lib: Annotated[
        list[str] | None,
        typer.Option(
            "--tls-lib",
            help="TLS library (or executable exporting SSL_read/SSL_write) to attach to, "
            "e.g. a "
            f"copy in a container's root. Default: the system's libssl and libgnutls. {opt.MORE}",
        ),
    ] = None,
    pid: Annotated[
        int | None,
        typer.Option(
            "--pid", help="TLS: attach to this process only (the libraries it maps).", min=1
        ),
    ] = None,
    tls_side: Annotated[
        str,
        typer.Option(
            "--tls-side",
            help="TLS: record the connections to --port on this host (server, the "
            "default), "
            "from this host to --port (client), or both.",
        ),
    ] = "server",
    spool_dir: Annotated[
        str | None,
        typer.Option(
            "--spool-dir",
            help="Where the private (0700) spool directory is made: the reader appends the raw "
            "frames there and a separate extractor process (SCHED_IDLE: it only takes CPU "
            "time nothing else wants) turns them into exchanges, catching up after bursts; "
            "removed at the end. Default: $TMPDIR or /tmp. RAW AND UNREDACTED while it "
            "exists, like -w.",
        ),
    ] = None,
    spool_max: Annotated[
        float | None,
        typer.Option(
            "--spool-max",
            help="MB the spool may hold not yet extracted; beyond it packets are dropped from the "
            "extraction and counted (the -w pcap still has them). Default: 2048, or half the "
            "free space of --spool-dir if less.",
            min=1,
        ),
    ] = None,
    sched_idle: Annotated[
        bool,
        typer.Option(
            "--sched-idle/--no-sched-idle",
            help="Run the reader under SCHED_IDLE (the default): only on CPU time nothing else "
            "wants, so the service's tail latency does not see it (primary p99 at 1,000/s "
            "within 5% in docs/benchmarks.md); the kernel buffer (--buffer-mb) absorbs what "
            "it cannot read at once, and if the service saturates the CPUs for long enough "
            "to fill it, packets are dropped (counted). --no-sched-idle: a normal (--nice) "
            "share. The extractor runs SCHED_IDLE either way.",
        ),
    ] = True,
    sink: opt.Sink = None,
    sink_spool: opt.SinkSpool = None,
    nice: Annotated[
        int,
        typer.Option(
            "--nice",
            help="Lower the reader's CPU priority by this much (0-19) so the service it watches "
            "comes first; the kernel buffer (--buffer-mb) absorbs what it cannot read at "
            "once. --nice 0 gives it an equal share when the service saturates the CPUs "
            "(fewer kernel drops, a slower service).",
            min=0,
            max=19,
        ),
    ] = 19,
) -> None:
    """Capture HTTP exchanges live off IFACE, without touching the application.

    eBPF TC hooks or libpcap, the kernel filtering the ports; the same reassembly and parsing as
    `extract`, in a separate idle-priority process fed through a spool on disk, so a burst it
    cannot follow is extracted afterwards instead of dropped. Runs until Ctrl-C/SIGTERM,
    --duration or --count (then the spooled backlog is extracted before it exits); live figures
    on a terminal, a summary at the end.

    --tls reads the plaintext of HTTPS at the TLS library (uprobes), handed on as synthetic TCP
    frames (the -w pcap then decodes as HTTP: tshark -d tcp.port==PORT,http).

    The -w pcap is RAW AND UNREDACTED (a pcap cannot be redacted); the -o exchanges have secret
    headers redacted unless --keep-secrets.

    Needs root (or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN for ebpf; CAP_NET_RAW for pcap):
    `shadowtap doctor` checks everything.
    """
    from shadowtap.capture.live import Backend, CaptureConfig
    from shadowtap.errors import InputError

    try:
        chosen = Backend(backend)
    except ValueError:
        raise InputError(
            f"unknown backend {backend!r} (ebpf, pcap or auto)", where="--backend"
        ) from None
    if tls:
        chosen = Backend.TLS
    if tls_side not in ("server", "client", "both"):
        raise InputError(f"must be server, client or both, not {tls_side!r}", where="--tls-side")
    if print_bpf and chosen is Backend.TLS:
        from shadowtap.capture.tls import TlsSource
        from shadowtap.console import out

        tsrc = TlsSource(tuple(port or ()), ringbuf=False if perf_buffer else None)
        out.print(tsrc.program_text(), markup=False, highlight=False)
        return
    if iface is None and chosen is not Backend.TLS:
        raise InputError("an interface is needed (or --tls)", where="--iface")
    if print_bpf:
        from shadowtap.capture.ebpf import EbpfSource
        from shadowtap.console import out

        src = EbpfSource(
            iface or "",
            tuple(port or ()),
            buffer_mb=buffer_mb,
            ringbuf=False if perf_buffer else None,
        )
        out.print(src.program_text(), markup=False, highlight=False)
        return
    if not write and not output and not sink:
        from shadowtap.console import warn

        warn("neither -w nor -o given: exchanges are counted, not kept")
    config = CaptureConfig(
        iface=iface or "",
        ports=tuple(port or ()),
        backend=chosen,
        pcap_out=write,
        jsonl_out=output,
        tls_libs=tuple(tls_lib or ()),
        tls_pid=pid,
        tls_side=tls_side,
        duration=duration,
        count=count,
        rotate_size=int(rotate_size * 1_000_000) if rotate_size else None,
        buffer_mb=buffer_mb,
        ringbuf=False if perf_buffer else None,
        spool_dir=spool_dir,
        spool_max=int(spool_max * 1_000_000) if spool_max else None,
        sink=sink,
        sink_spool=sink_spool,
    )
    from shadowtap.capture.live import capture as run
    from shadowtap.priority import lower_priority

    lower_priority(nice, sched_idle)
    run(
        config,
        keep_secrets=keep_secrets,
        secret_headers=tuple(secret_header or ()),
        max_body=max_body,
    )


@app.command()
def doctor(
    iface: Annotated[
        str | None, typer.Option("--iface", "-i", help="Also check this interface.")
    ] = None,
) -> None:
    """Check every prerequisite of live capture (privileges and capabilities, bcc, kernel headers,
    clsact, ring buffer, tracefs, libpcap, the interface) and print what is missing with the
    command that fixes it. Exit code 0 when both backends can run, 4 otherwise."""
    from shadowtap.capture.doctor import doctor as run

    code = run(iface)
    if code:
        raise typer.Exit(code)
