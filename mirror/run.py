"""The ``shadowtap mirror`` stage: a live capture, replay's sender and the comparison, together.

Two processes (both halves are CPU-bound Python; one process would share one GIL and one core):
  - the capture process (mirror/capture_child.py, forked before anything else starts) runs
    capture/live.py's loop and the Extractor. For each request complete on the wire it decides
    (Policy, sampling, rate limit) and sends the prepared request over a pipe at once; for each
    exchange rebuilt, the exchange. It never blocks (non-blocking pipe, bounded outbox).
  - this process runs an event loop: it reads the pipe into the bounded drop-oldest queue
    (mirror/sender.py, ShadowFeed), whose pump sends to the shadow (replay/client.py's Sender);
    every exchange and result then goes to the consumers (mirror/consumers.py, one hook
    interface): counters, pairing (mirror/pairing.py), the run directory, the streaming comparison
    (compare/, through mirror/comparison.py), ``--metrics``, the dashboard or the log line.

The primary is never in this path: the capture copies packets off the interface; nothing here
writes to the primary's sockets, and nothing the shadow does (slow, down, resets) reaches the
capture except as counted drops.

Ending: ``--duration``, Ctrl-C or SIGTERM set ``stop``. Then the capture process stops (hooks
detached by capture/live.py, the Extractor's last exchanges and its final figures sent), the
queued and in-flight requests get up to ``drain_timeout`` seconds, what stays unpaired is
counted, files are closed, the final reports are written and printed, and the verdict becomes the
exit status.

Redaction: the Extractor keeps secret headers as they were (the shadow needs the real
Authorization); everything written to disk or shown (exchanges, results, reports) passes through
the Redactor first, unless ``keep_secrets``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import ipaddress
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

import orjson

from shadowtap import console
from shadowtap.compare.report import Verdict
from shadowtap.errors import (
    EXIT_OK,
    EXIT_VERDICT_ERROR,
    InputError,
    ShadowtapError,
    TargetError,
)
from shadowtap.jsonl import check_directory, create_private
from shadowtap.mirror import comparison as mirror_compare
from shadowtap.mirror.capture_child import Captured, CaptureFigures, CaptureProcess, Started
from shadowtap.mirror.consumers import (
    Consumers,
    Counters,
    Display,
    LiveComparison,
    MetricsServer,
    Pairing,
    RunDirectory,
)
from shadowtap.mirror.pairing import Pairer
from shadowtap.mirror.sender import Outcome, Pending, ShadowFeed
from shadowtap.mirror.stats import EndpointLine, Histogram, MirrorSnapshot
from shadowtap.priority import lower_priority
from shadowtap.procs import BATCH_GC_THRESHOLD
from shadowtap.records import parse_endpoint
from shadowtap.redact import Redactor
from shadowtap.replay.captured_server import Endpoint, OwnPorts, ServerCheck, ThisHost
from shadowtap.replay.client import TlsOptions
from shadowtap.replay.policy import Policy, ReplayRefused

SWITCH_INTERVAL = 0.0005  # seconds: see MirrorRun.run


@dataclass(frozen=True, slots=True)
class MirrorConfig:
    iface: str
    ports: tuple[int, ...]
    policy: Policy  # target = the shadow; sample_percent 100 when sampling is per request
    backend: str = "auto"  # ebpf | pcap | tls | auto
    # per-request sampling (Istio's mirrorPercentage) when sample_per_request
    percent: float = 100.0
    sample_per_request: bool = True  # else the Policy samples consistently by its key
    rate_limit: float | None = None  # requests/s to the shadow; the excess is dropped and counted
    queue: int = 10_000
    concurrency: int = 64
    timeout: float = 10.0
    connect_timeout: float = 5.0
    tls: TlsOptions | None = None  # https shadow: CA file, or verification off
    max_body: int = 1 << 20
    metrics: str | None = None  # ADDR:PORT
    run_dir: str | None = None
    duration: float | None = None
    keep_secrets: bool = False
    force: bool = False  # mirror even when the shadow looks like the primary itself
    compare_config: str | None = None  # compare's --config FILE
    ignore: tuple[str, ...] = ()  # compare's --ignore rules
    proto_descriptor: str | None = None  # compare's --proto-descriptor (gRPC fields by name)
    dashboard: bool | None = None  # None: on a terminal
    log_interval: float = 5.0
    drain_timeout: float | None = None  # None: min(timeout, 10 s)
    bpf_filter: str | None = None
    min_coverage: float = 0.9  # share of queued requests that must be compared for a verdict
    nice: int = 10  # added to both processes' nice value: the primary's server comes first
    sched_idle: bool = True  # SCHED_IDLE: run only on CPU time nobody else wants
    sink: str | None = None  # nats://host:port/SUBJECT: exchanges and results to JetStream
    sink_spool: str | None = None  # its disk buffer (default: shadowtap/lake/nats.py's)
    parquet: str | None = None  # a lake directory: the pairs as Parquet (docs/lake.md)


def _resolve(host: str, port: int) -> frozenset[tuple[str, int]]:
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise TargetError(f"cannot resolve the shadow host {host!r}: {exc.strerror}") from exc
    return frozenset((str(addr[0]), int(addr[1])) for *_x, addr in infos)


def _refuse_primary(
    cfg: MirrorConfig, shadow_eps: frozenset[tuple[str, int]], host: ThisHost
) -> ServerCheck:
    """Refuse a shadow that is the primary (this host, on a mirrored port: replay's one check,
    replay/captured_server.py, with the primary as the captured server); the check returned
    confirms it on each connection's real peer (``on_connect``)."""

    def refusal(shadow: Endpoint, primary: Endpoint) -> ReplayRefused:
        return ReplayRefused(
            f"the shadow {cfg.policy.target.url} is {shadow}, an address of this host on a port "
            "being mirrored: that is the primary itself, and mirroring into it doubles its load "
            "(and mirrors its own copies)",
            hint="point --shadow at the shadow, or pass --force if this is really intended",
        )

    targets = [e for e in (Endpoint.of(ip, port) for ip, port in shadow_eps) if e is not None]
    check = ServerCheck(targets, refusal, host=host)
    for port in cfg.ports:  # the unspecified address is every address of this host
        check.check_endpoint(Endpoint(ipaddress.ip_address("0.0.0.0"), port))
    return check


def _parse_metrics_addr(text: str) -> tuple[str, int]:
    try:
        host, port = parse_endpoint(text)
        if not 0 <= port <= 65535:
            raise ValueError
    except ValueError:
        raise InputError(f"{text!r} is not ADDR:PORT", field="metrics") from None
    return host.strip("[]") or "127.0.0.1", port


class MirrorRun:
    """One mirror run. ``run()`` returns the exit status.

    The run is a composition: the capture process (mirror/capture_child.py) sends requests and
    exchanges; ``ShadowFeed`` (mirror/sender.py) queues and sends the requests; every exchange and
    result then goes through ``consumers`` (mirror/consumers.py): counters, pairing, the run
    directory, the live comparison, the display, the metrics server. ``consumers()`` lists them;
    a new sink is one more entry there."""

    def __init__(self, cfg: MirrorConfig) -> None:
        self.cfg = cfg
        self.redactor = None if cfg.keep_secrets else Redactor.default()
        self.counters = Counters()
        self.pairer = Pairer(capacity=max(4 * cfg.queue, 10_000), ttl=2 * cfg.timeout + 10.0)
        self.stop = asyncio.Event()
        self.abort = asyncio.Event()
        self.stop_reason = "end"
        self.capture_error: BaseException | None = None
        self.primary_check: ServerCheck | None = None  # run(): the shadow is not the primary
        self.own_ports: OwnPorts | None = None  # run(): our connections' local ports
        self.capture_figures = CaptureFigures()
        self.capture = CaptureProcess()
        self.shadow: ShadowFeed | None = None
        self.comparison: LiveComparison | None = None
        self.send_failures = 0
        self.discarded_at_end = 0  # queued requests not sent when the drain timed out
        self._last_seen = (time.monotonic(), 0)
        self._rate = 0.0
        self._notes: list[str] = []
        self.hub = Consumers([])  # the real one is made in the event loop (_main)

    # ---------------------------------------------------------------- composition
    def consumers(self) -> list[Any]:
        """The run's consumers, in dispatch order (Pairing's pairs reach those after it)."""
        cfg = self.cfg
        assert self.comparison is not None
        out: list[Any] = [self.counters, Pairing(self.pairer, emit=lambda _pair: None)]
        if cfg.run_dir:
            out.append(RunDirectory(cfg.run_dir))
        out.append(self.comparison)
        out.extend(self._sinks())
        if cfg.metrics:
            host, port = _parse_metrics_addr(cfg.metrics)
            out.append(MetricsServer(host, port, self.snapshot))
        show = cfg.dashboard if cfg.dashboard is not None else console.interactive()
        out.append(Display(self.snapshot, dashboard=show, log_interval=cfg.log_interval))
        return out

    def _on_record(self, obj: Any) -> None:
        """One record from the capture process (mirror/capture_child.py)."""
        kind = type(obj)
        if kind is Pending:
            self.shadow.offer(obj)  # type: ignore[union-attr]
        elif kind is Captured:
            ex = obj.exchange
            self.hub.exchange(ex, self.shadow.still_admitted(ex.id, obj.admitted))  # type: ignore[union-attr]
        elif kind is CaptureFigures:
            self.capture_figures = obj
        elif kind is Started:
            cfg = self.cfg
            # (tests and scripts wait for this line: the hooks are attached from here on)
            console.info(
                f"mirror: capturing {cfg.iface} port {','.join(map(str, cfg.ports))} to "
                f"{cfg.policy.target.url}: {obj.describe} ({obj.reason})"
            )

    def _sinks(self) -> list[Any]:
        """The lake's sinks (shadowtap/lake): the pairs as Parquet (``--parquet``; a file write
        on the loop every 20,000 pairs or 60 s), exchanges and results to JetStream (``--sink``;
        published from its own thread)."""
        cfg = self.cfg
        out: list[Any] = []
        if cfg.parquet:
            from shadowtap.lake.writer import LakeWriter

            compare_cfg = self.comparison.comparison.config if self.comparison is not None else None
            out.append(
                LakeWriter(
                    cfg.parquet, config=compare_cfg, rows_per_file=20_000, flush_interval=60.0
                )
            )
        if cfg.sink:
            from shadowtap.lake.nats import open_sink

            out.append(open_sink(cfg.sink, cfg.sink_spool))
        return out

    def _note(self, text: str) -> None:
        if text not in self._notes and len(self._notes) < 5:
            self._notes.append(text)
            console.warn(text)

    # ---------------------------------------------------------------- figures
    def snapshot(self) -> MirrorSnapshot:
        f = self.counters
        c = self.capture_figures
        shadow = self.shadow
        queue = shadow.queue if shadow is not None else None
        verdict, divergence, endpoints = (
            self.comparison.view() if self.comparison else (None, None, [])
        )
        queued = c.count(Outcome.QUEUED)
        verdict, _ = coverage_verdict(verdict, queued, self.pairer.paired, self.cfg.min_coverage)
        skipped = dict(c.skip_reasons)
        for o in (Outcome.SAMPLED_OUT, Outcome.OWN_TRAFFIC):
            if c.count(o):
                skipped[o.value] = c.count(o)
        return MirrorSnapshot(
            elapsed=time.monotonic() - f.started,
            seen=c.seen,
            queued=queued,
            mirrored=f.results,
            dropped=(queue.dropped if queue is not None else 0) + c.outbox_dropped_requests,
            rate_limited=c.count(Outcome.RATE_LIMITED),
            skipped=skipped,
            queue_depth=len(queue) if queue is not None else 0,
            queue_max=self.cfg.queue,
            in_flight=shadow.pump.in_flight if shadow is not None else 0,
            shadow_errors=dict(f.errors),
            shadow_5xx=f.shadow_5xx,
            primary_5xx=f.primary_5xx,
            exchanges=f.exchanges,
            pairs=self.pairer.paired,
            unpaired=self.pairer.evicted_exchanges + self.pairer.evicted_results,
            capture_drops=c.capture_drops,
            lag=f.lag,
            primary_latency=f.primary_latency,
            shadow_latency=f.shadow_latency,
            verdict=verdict,
            divergence=divergence,
            endpoints=tuple(EndpointLine(*e) for e in endpoints),
            rate=self._rate,
            notes=tuple(self._notes),
        )

    def _tick(self, now: float) -> None:
        seen = self.capture_figures.seen
        t0, n0 = self._last_seen
        if now - t0 >= 1.0:
            self._rate = (seen - n0) / (now - t0)
            self._last_seen = (now, seen)
        self.hub.tick(now)

    # ---------------------------------------------------------------- the run
    def run(self) -> int:
        cfg = self.cfg
        if cfg.metrics:
            _parse_metrics_addr(cfg.metrics)  # a bad value fails before anything starts
        shadow_eps = _resolve(cfg.policy.target.host, cfg.policy.target.port)
        host = ThisHost.discover()
        self.primary_check = None if cfg.force else _refuse_primary(cfg, shadow_eps, host)
        # The copies we send, seen by the capture, are known by their local ports (OwnPorts).
        self.own_ports = OwnPorts(host)
        self._check_run_dir()
        # Imports and a first snapshot before the capture starts: compare pulls in scipy (a second
        # or more of CPU), which must not hold up the reading of the capture's frames.
        self.comparison = LiveComparison(
            mirror_compare.open_comparison(cfg.compare_config, cfg.ignore, cfg.proto_descriptor),
            self._note,
        )
        self.comparison.view()
        # Everything alive now (modules, scipy, the config) lives as long as the run: out of the
        # cyclic GC's sight, so a full collection walks only what the traffic makes (a full
        # collection over the imports alone took ~100 ms here: a lag spike each time). Frozen
        # before the fork, the child's copy-on-write pages stay shared too.
        gc.collect()
        gc.freeze()
        # Both processes make hundreds of short-lived acyclic objects a request (records, frames,
        # JSON lines): at the default thresholds (a gen0 collection every 700 allocations) the
        # collector took a quarter of the loop's CPU (scripts/profile_mirror.py: 79 -> 58 us a
        # request). Collections every 50,000 allocations (procs.BATCH_GC_THRESHOLD); the capture
        # process inherits them (and spawn's gc_batch says so again).
        gc.set_threshold(*BATCH_GC_THRESHOLD)
        lower_priority(cfg.nice, cfg.sched_idle)  # inherited by the capture process (forked next)
        # The policy's own refusal compares the target with each captured server; in the mirror
        # the shadow's address there is our own traffic (skipped, counted), checked just above.
        policy = dataclasses.replace(cfg.policy, servers=None, force=True)
        # fork before any thread or event loop exists
        self.capture.start(cfg, policy, self.own_ports)
        # Other threads of this process (rich's refresh thread under the dashboard, the resolver's)
        # may hold the GIL for a whole switch interval while a result waits: 0.5 ms, not 5, bounds
        # that wait.
        previous = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL)
        try:
            try:
                import uvloop
            except ImportError:  # pragma: no cover
                return asyncio.run(self._main())
            return uvloop.run(self._main())
        finally:
            sys.setswitchinterval(previous)
            self.capture.reap()

    async def _main(self) -> int:
        cfg = self.cfg
        self.hub = hub = Consumers(self.consumers(), self.redactor)
        pairing = hub.find(Pairing)
        pairing.emit = hub.pair
        self.shadow = shadow = ShadowFeed(
            cfg.policy.target,
            hub.result,
            queue=cfg.queue,
            concurrency=cfg.concurrency,
            timeout=cfg.timeout,
            connect_timeout=cfg.connect_timeout,
            max_body=cfg.max_body,
            on_connect=self._on_connect,
            tls=cfg.tls,
        )
        await shadow.start()
        checking = asyncio.ensure_future(shadow.check(self._note))  # meanwhile the frames are read
        capture_done = await self.capture.read(self._on_record)
        capture_done.add_done_callback(lambda _f: self.stop.set())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._signal, sig)
        exit_code = EXIT_VERDICT_ERROR
        try:
            await self._start_consumers()
            await self._until_stopped()
            await self._end(capture_done)
            exit_code = EXIT_OK
        finally:
            self.capture.stop()
            self.capture.close_pipe()
            await shadow.close()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            for problem in await hub.close():
                self._note(problem)
            for consumer in hub:
                if hasattr(consumer, "acked"):  # the JetStream sink: what became of what it held
                    from shadowtap.lake.nats import sink_summary

                    console.info(sink_summary(consumer))
            checking.cancel()
        if self.capture_error is not None:
            if self.pairer.paired:
                self._finish(self.snapshot())  # what was compared is not lost
            raise self.capture_error
        verdict = self._finish(self.snapshot())
        if exit_code == EXIT_OK:
            exit_code = Verdict(verdict or Verdict.ERROR).exit_code
        return exit_code

    def _on_connect(self, sock: Any) -> None:
        """Each connection to the shadow, before a byte is sent: its local port is ours (own
        traffic), and its real peer must not be the primary (then the run stops, refused)."""
        if self.own_ports is not None:
            self.own_ports.on_connect(sock)
        if self.primary_check is not None:
            try:
                self.primary_check.on_connect(sock)
            except ReplayRefused as exc:
                self.capture_error = self.capture_error or exc
                self.stop_reason = "refused"
                self.stop.set()
                raise

    async def _start_consumers(self) -> None:
        try:
            await self.hub.start()
        except OSError as exc:  # the metrics server's address
            raise InputError(
                f"cannot serve metrics on {self.cfg.metrics}: {exc.strerror}", field="metrics"
            ) from exc
        server = self.hub.find(MetricsServer)
        if server is not None and server.address is not None:
            console.info(f"metrics: http://{format_addr(server.address)}/metrics")

    async def _until_stopped(self) -> None:
        """Ticks once a second until Ctrl-C, SIGTERM, the capture's end or ``--duration``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.duration if self.cfg.duration else None
        while not self.stop.is_set():
            timeout = 1.0 if deadline is None else max(0.0, min(1.0, deadline - loop.time()))
            try:
                await asyncio.wait_for(self.stop.wait(), timeout)
            except asyncio.TimeoutError:
                pass
            if deadline is not None and loop.time() >= deadline and not self.stop.is_set():
                self.stop_reason = "duration"
                self.stop.set()
            self._tick(time.monotonic())

    async def _end(self, capture_done: Any) -> None:
        """The capture first (hooks detached, the Extractor's last exchanges out, its final
        figures), then the requests still queued or in flight (``drain_timeout``, or until a
        second signal)."""
        assert self.shadow is not None
        self.capture.stop()
        try:
            await asyncio.wait_for(asyncio.shield(capture_done), timeout=30)
        except asyncio.TimeoutError:
            self._note("the capture process did not finish in 30 s; stopping it")
        if capture_done.done():
            self.capture_error = self.capture.outcome()
        if not self.capture_figures.final and self.capture_error is None:
            self.capture_error = ShadowtapError(
                "the capture process did not end cleanly; the report covers what was mirrored "
                "until then"
            )
        cfg = self.cfg
        pump = self.shadow.pump
        await self.shadow.drain(
            cfg.drain_timeout if cfg.drain_timeout is not None else min(cfg.timeout, 10.0),
            self.abort,
        )
        self.discarded_at_end = pump.abandoned
        self.send_failures = pump.failures
        if pump.last_failure:
            self._note(f"{pump.failures} requests failed in the mirror: {pump.last_failure}")

    def _signal(self, sig: signal.Signals) -> None:
        if self.stop.is_set():
            # A second Ctrl-C/SIGTERM while ending: give up on the requests still in flight.
            self.abort.set()
            return
        self.stop_reason = signal.Signals(sig).name
        self.stop.set()

    # ---------------------------------------------------------------- outputs
    def _check_run_dir(self) -> None:
        """Before any hook is attached: the run directory can be made and written."""
        d = self.cfg.run_dir
        if not d:
            return
        try:
            os.makedirs(d, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create the run directory: {exc.strerror}", where=d) from exc
        if not os.access(d, os.W_OK | os.X_OK):
            raise InputError("the run directory is not writable", where=d)
        check_directory(d)  # not one other users can write (they could plant links there)

    def _finish(self, s: MirrorSnapshot) -> str | None:
        """The final reports (printed, and in the run directory) and the mirror's own summary
        (mirror.json). Returns the verdict."""
        assert self.comparison is not None
        self.comparison.close()  # every pair compared (idempotent: the hub closed it already)
        comparison = self.comparison.comparison
        mirror_compare.set_unmatched(
            comparison, self.pairer.evicted_exchanges, self.pairer.evicted_results
        )
        report = mirror_compare.snapshot(comparison, final=True)  # every endpoint recomputed
        _, divergence, _ = mirror_compare.view(report)
        verdict, why = coverage_verdict(
            report.verdict.result, s.queued, s.pairs, self.cfg.min_coverage
        )
        if why is not None:
            report = report.overruled(Verdict.ERROR, why)
        s = dataclasses.replace(s, verdict=verdict, divergence=divergence)
        d = self.cfg.run_dir
        summary = mirror_summary(s, self)
        if d:
            with create_private(os.path.join(d, "mirror.json")) as fh:
                fh.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
        rows = [
            ("stopped by", self.stop_reason),
            ("requests seen", s.seen),
            ("mirrored", s.mirrored),
            ("dropped (queue full)", s.dropped),
            ("rate-limited", s.rate_limited),
            ("skipped", ", ".join(f"{k} {v}" for k, v in sorted(s.skipped.items())) or 0),
            (
                "shadow errors",
                ", ".join(f"{k} {v}" for k, v in sorted(s.shadow_errors.items())) or 0,
            ),
            ("pairs compared", s.pairs),
            ("unpaired", s.unpaired),
            ("mirror lag p50/p99", f"{_ms(s.lag.quantile(0.5))} / {_ms(s.lag.quantile(0.99))}"),
            ("capture drops", s.capture_drops),
        ]
        if self.discarded_at_end:
            rows.append(("not sent at the end (drain timed out)", self.discarded_at_end))
        console.table("mirror", ("", "value"), rows, to_stderr=True)
        for problem in mirror_compare.write_reports(report, d):
            console.warn(problem)
        if d:
            console.info(
                f"run directory: {d} (exchanges.jsonl, results.jsonl, report.txt, "
                "report.json, report.html, mirror.json)"
            )
        return verdict


def coverage_verdict(
    verdict: str | None, queued: int, pairs: int, min_coverage: float
) -> tuple[str | None, str | None]:
    """The comparison judges the pairs it got; the mirror also knows how many it should have got.
    When fewer than ``min_coverage`` of the requests queued for the shadow were compared (dropped
    because the shadow did not keep up, abandoned at the end, never paired), the pairs are not a
    fair sample of the traffic: a would-be pass or marginal becomes ``error`` (cannot judge). A
    fail stays a fail. Returns (verdict, reason or None)."""
    if verdict is None or queued == 0 or verdict in ("fail", "error"):
        return verdict, None
    coverage = pairs / queued
    if coverage >= min_coverage:
        return verdict, None
    return "error", (
        f"only {pairs} of the {queued} requests queued for the shadow were compared "
        f"({coverage:.0%} < {min_coverage:.0%}): the rest were dropped or never answered, "
        "so the comparison does not represent the traffic (a slow shadow, or raise --queue "
        "/ --concurrency)"
    )


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def format_addr(sockaddr: tuple[Any, ...]) -> str:
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def mirror_summary(s: MirrorSnapshot, run: MirrorRun) -> dict[str, Any]:
    """``mirror.json``: the run's counters (the same names as the metrics)."""

    def q(h: Histogram, p: float) -> float | None:
        v = h.quantile(p)
        return None if v is None else round(v * 1000, 3)

    return {
        "verdict": s.verdict,
        "stopped_by": run.stop_reason,
        "elapsed_s": round(s.elapsed, 3),
        "seen": s.seen,
        "queued": s.queued,
        "mirrored": s.mirrored,
        "dropped": s.dropped,
        "rate_limited": s.rate_limited,
        "skipped": s.skipped,
        "shadow_errors": s.shadow_errors,
        "shadow_5xx": s.shadow_5xx,
        "primary_5xx": s.primary_5xx,
        "exchanges": s.exchanges,
        "pairs": s.pairs,
        "unpaired": s.unpaired,
        "not_sent_at_end": run.discarded_at_end,
        "send_failures": run.send_failures,
        "exchanges_lost": run.capture_figures.outbox_dropped_exchanges,
        "capture_drops": s.capture_drops,
        "lag_ms": {"p50": q(s.lag, 0.5), "p99": q(s.lag, 0.99), "count": s.lag.count},
        "primary_latency_ms": {"p50": q(s.primary_latency, 0.5), "p99": q(s.primary_latency, 0.99)},
        "shadow_latency_ms": {"p50": q(s.shadow_latency, 0.5), "p99": q(s.shadow_latency, 0.99)},
        "divergence": s.divergence,
    }
