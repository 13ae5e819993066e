"""The ``shadowtap mirror`` stage: a live capture, replay's sender and the comparison, together.

Two processes (both halves are CPU-bound Python; one process would share one GIL and one core):
  - the capture process (mirror/capture_child.py, forked before anything else starts) runs
    capture/live.py's loop and the Extractor. For each request complete on the wire it decides
    (Policy, sampling, rate limit) and sends the prepared request over a pipe at once; for each
    exchange rebuilt, the exchange. It never blocks (non-blocking pipe, bounded outbox).
  - this process runs an event loop: it reads the pipe into the bounded drop-oldest queue
    (mirror/sender.py), whose workers send to the shadow (replay/client.py's Sender); pairs each
    shadow Result with the primary's Exchange (mirror/pairing.py); feeds the pairs to the
    streaming comparison (compare/, through mirror/comparison.py); writes the run directory;
    refreshes the dashboard or the log line; serves ``--metrics``.

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
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from shadowtap.mirror import comparison as mirror_compare
from shadowtap.replay.client import TlsOptions
from shadowtap.replay.captured_server import Endpoint, OwnPorts, ServerCheck, ThisHost
from shadowtap.mirror.pairing import Pair, Pairer
from shadowtap.mirror.sender import DropOldestQueue, Outcome, Pending, Pump
from shadowtap.mirror.capture_child import CaptureFigures
from shadowtap.mirror.stats import (
    EndpointLine,
    Histogram,
    MirrorSnapshot,
    dashboard,
    log_line,
    prometheus_text,
)
from shadowtap.replay.policy import Policy, ReplayRefused
from shadowtap import console
from shadowtap.compare.report import Verdict
from shadowtap.errors import (
    EXIT_OK,
    EXIT_VERDICT_ERROR,
    InputError,
    ShadowtapError,
    TargetError,
)
from shadowtap.jsonl import JsonlWriter, check_directory, create_private
from shadowtap.priority import lower_priority
from shadowtap.records import Exchange, Result, parse_endpoint
from shadowtap.redact import Redactor

SWITCH_INTERVAL = 0.0005  # seconds: see MirrorRun.run
MAX_QUEUE_BYTES = 256 << 20  # requests waiting for the shadow, at most, whatever --queue says


@dataclass(frozen=True, slots=True)
class MirrorConfig:
    iface: str
    ports: tuple[int, ...]
    policy: Policy  # target = the shadow; sample_percent 100 when sampling is per request
    backend: str = "auto"  # ebpf | pcap | tls | auto
    percent: float = 100.0  # per-request sampling (Istio's mirrorPercentage) when sample_per_request
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


@dataclass(slots=True)
class _Figures:
    """The event loop's counters (the capture process's come in CaptureFigures)."""

    started: float = field(default_factory=time.monotonic)
    exchanges: int = 0
    results: int = 0
    primary_5xx: int = 0
    shadow_5xx: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    lag: Histogram = field(default_factory=Histogram)
    primary_latency: Histogram = field(default_factory=Histogram)
    shadow_latency: Histogram = field(default_factory=Histogram)
    discarded_at_end: int = 0  # queued requests not sent when the drain timed out


def _child_entry(child_main: Callable[..., None], wfd: int, stop_r: int, rfd: int, stop_w: int,
                 *args: Any) -> None:
    os.close(rfd)  # the parent's ends
    os.close(stop_w)
    child_main(wfd, stop_r, *args)


def _rebuild_error(name: str, message: str, hint: str | None, exit_code: int) -> ShadowtapError:
    """The capture process's error, as the same class of the hierarchy (by name)."""
    from shadowtap import errors

    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, ShadowtapError)):
        err = ShadowtapError(f"the capture failed: {name}: {message}", hint=hint)
        err.exit_code = exit_code if exit_code else 1
        return err
    err = ShadowtapError.__new__(cls)
    ShadowtapError.__init__(err, message, hint=hint)
    return err


def _resolve(host: str, port: int) -> frozenset[tuple[str, int]]:
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise TargetError(f"cannot resolve the shadow host {host!r}: {exc.strerror}") from exc
    return frozenset((addr[0], addr[1]) for *_x, addr in infos)


def _refuse_primary(cfg: MirrorConfig, shadow_eps: frozenset[tuple[str, int]],
                    host: ThisHost) -> ServerCheck:
    """Refuse a shadow that is the primary (this host, on a mirrored port: replay's one check,
    replay/captured_server.py, with the primary as the captured server); the check returned
    confirms it on each connection's real peer (``on_connect``)."""
    def refusal(shadow: Endpoint, primary: Endpoint) -> ReplayRefused:
        return ReplayRefused(
            f"the shadow {cfg.policy.target.url} is {shadow}, an address of this host on a port "
            "being mirrored: that is the primary itself, and mirroring into it doubles its load "
            "(and mirrors its own copies)",
            hint="point --shadow at the shadow, or pass --force if this is really intended")

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
    """One mirror run. ``run()`` returns the exit status; everything else is internal state."""

    def __init__(self, cfg: MirrorConfig) -> None:
        self.cfg = cfg
        self.redactor = None if cfg.keep_secrets else Redactor.default()
        self.fig = _Figures()
        self.pairer = Pairer(capacity=max(4 * cfg.queue, 10_000), ttl=2 * cfg.timeout + 10.0)
        self.stop = asyncio.Event()
        self.abort = asyncio.Event()
        self.stop_reason = "end"
        self.capture_error: BaseException | None = None
        self.primary_check: ServerCheck | None = None  # run(): the shadow is not the primary
        self.own_ports: OwnPorts | None = None  # run(): our connections' local ports
        self.capture_figures = CaptureFigures()
        self.send_failures = 0
        self.queue: DropOldestQueue[Pending] | None = None
        self.pump: Pump | None = None
        self.child: Any = None
        self._data_fd = -1
        self._stop_fd: int | None = None
        self.comparison: Any = None
        self._view: tuple[str | None, float | None, list[tuple[str, int, float]]] = (None, None, [])
        self._view_at = -1e9
        self._last_seen = (time.monotonic(), 0)
        self._rate = 0.0
        self._writers: dict[str, JsonlWriter] = {}
        self._notes: list[str] = []
        # Sinks (shadowtap/lake): on_exchange/on_result as records are admitted, on_pair as pairs
        # are made, close at the end. The Parquet writer blocks the loop for a file write every
        # 20,000 pairs or 60 s; the NATS sink publishes from its own thread.
        self._sinks: list[Any] = []

    # ---------------------------------------------------------------- loop side
    def _on_result(self, res: Result) -> None:
        f = self.fig
        f.results += 1
        f.lag.observe(max(0.0, res.sent - res.scheduled))
        if res.error is not None:
            f.errors[res.error.kind] += 1
        elif res.response is not None:
            if res.response.status >= 500:
                f.shadow_5xx += 1
            if res.total_ms is not None:
                f.shadow_latency.observe(res.total_ms / 1000)
        if self.redactor is not None and res.response is not None:
            redacted = self.redactor.message(res.response)
            if redacted is not res.response:  # the same object when no secret header is there
                res = dataclasses.replace(res, response=redacted)
        for sink in self._sinks:
            sink.on_result(res)
        pair = self.pairer.add_result(res, time.monotonic())
        if pair is not None:
            self._on_pair(pair)

    def _on_exchange(self, ex: Exchange, admitted: bool) -> None:
        f = self.fig
        f.exchanges += 1
        if ex.response is not None:
            if ex.response.status >= 500:
                f.primary_5xx += 1
            if ex.total_ms is not None:
                f.primary_latency.observe(ex.total_ms / 1000)
        if not admitted:
            return
        if self.redactor is not None:
            ex = self.redactor.exchange(ex)
        for sink in self._sinks:
            sink.on_exchange(ex)
        pair = self.pairer.add_exchange(ex, time.monotonic())
        if pair is not None:
            self._on_pair(pair)

    def _on_pair(self, pair: Pair) -> None:
        if self._writers:
            self._writers["exchanges"].write(pair.exchange.to_json())
            self._writers["results"].write(pair.result.to_json())
        for sink in self._sinks:
            sink.on_pair(pair)
        if self.comparison is not None:
            self._compare_add(pair)

    # ---------------------------------------------------------------- comparison
    def _compare_add(self, pair: Pair) -> None:
        try:
            mirror_compare.add(self.comparison, pair.exchange, pair.result)
        except Exception as exc:  # noqa: BLE001 - a comparison bug must not stop the mirror
            self._note(f"comparison failed on {pair.exchange.id}: {type(exc).__name__}: {exc}")

    def _compare_view(self) -> tuple[str | None, float | None, list[tuple[str, int, float]]]:
        """The comparison's verdict so far, at most once a second (a snapshot costs
        O(endpoints x fields) and holds the comparison's lock)."""
        now = time.monotonic()
        if self.comparison is not None and now - self._view_at >= 1.0:
            self._view_at = now
            try:
                self._view = mirror_compare.view(mirror_compare.snapshot(self.comparison))
            except Exception as exc:  # noqa: BLE001
                self._note(f"comparison snapshot failed: {type(exc).__name__}: {exc}")
        return self._view

    def _note(self, text: str) -> None:
        if text not in self._notes and len(self._notes) < 5:
            self._notes.append(text)
            console.warn(text)

    # ---------------------------------------------------------------- figures
    def snapshot(self) -> MirrorSnapshot:
        f = self.fig
        c = self.capture_figures
        queue = self.queue
        verdict, divergence, endpoints = self._compare_view()
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
            in_flight=self.pump.in_flight if self.pump is not None else 0,
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

    def _update_rate(self, seen: int) -> None:
        now = time.monotonic()
        t0, n0 = self._last_seen
        if now - t0 >= 1.0:
            self._rate = (seen - n0) / (now - t0)
            self._last_seen = (now, seen)

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
        self.comparison = mirror_compare.open_comparison(cfg.compare_config, cfg.ignore)
        mirror_compare.view(mirror_compare.snapshot(self.comparison))
        # Everything alive now (modules, scipy, the config) lives as long as the run: out of the
        # cyclic GC's sight, so a full collection walks only what the traffic makes (a full
        # collection over the imports alone took ~100 ms here: a lag spike each time). Frozen
        # before the fork, the child's copy-on-write pages stay shared too.
        gc.collect()
        gc.freeze()
        lower_priority(cfg.nice, cfg.sched_idle)  # inherited by the capture process (forked next)
        # The policy's own refusal compares the target with each captured server; in the mirror
        # the shadow's address there is our own traffic (skipped, counted), checked just above.
        policy = dataclasses.replace(cfg.policy, servers=None, force=True)
        self._start_child(policy, self.own_ports)  # fork before any thread or event loop exists
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
            self._reap_child()

    def _start_child(self, policy: Policy, own: OwnPorts) -> None:
        import multiprocessing

        from shadowtap.mirror.capture_child import child_main

        rfd, wfd = os.pipe()
        stop_r, stop_w = os.pipe()
        ctx = multiprocessing.get_context("fork")
        self.child = ctx.Process(target=_child_entry, name="shadowtap-mirror-capture",
                                 args=(child_main, wfd, stop_r, rfd, stop_w, self.cfg, policy, own))
        self.child.start()
        os.close(wfd)
        os.close(stop_r)
        self._data_fd, self._stop_fd = rfd, stop_w

    def _stop_child(self) -> None:
        if self._stop_fd is not None:
            try:
                os.write(self._stop_fd, b"x")
            except OSError:
                pass

    def _reap_child(self) -> None:
        if self._stop_fd is not None:
            os.close(self._stop_fd)  # EOF on the stop pipe also ends the child
            self._stop_fd = None
        child = self.child
        if child is not None:
            child.join(30)
            if child.is_alive():  # its capture loop is stuck: SIGTERM runs its cleanup
                child.terminate()
                child.join(10)
            if child.is_alive():
                child.kill()
                child.join()

    async def _main(self) -> int:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        from shadowtap.replay.client import Sender
        from shadowtap.replay.grpc_client import GrpcSender, Router
        from shadowtap.mirror.capture_child import EXC, REQ, STARTED, STATS, Decoder, decode

        http = Sender(cfg.policy.target, concurrency=cfg.concurrency, per_connection=False,
                      timeout=cfg.timeout, connect_timeout=cfg.connect_timeout,
                      max_body=cfg.max_body, on_connect=self._on_connect, tls=cfg.tls)
        # gRPC calls go to grpcio (replay/grpc_client.py), the rest to the HTTP/1.x sender.
        sender = Router(http, GrpcSender(cfg.policy.target, concurrency=cfg.concurrency,
                                         timeout=cfg.timeout, connect_timeout=cfg.connect_timeout,
                                         max_body=cfg.max_body))
        await sender.start()

        async def check_shadow() -> None:
            try:
                await sender.check_reachable()
            except ReplayRefused:
                pass  # the run stops (_on_connect)
            except TargetError as exc:
                # A shadow that is down is a shadow result (errors, counted), not a reason to stop.
                self._note(f"{exc.message}; going on: its failures count as shadow errors")

        checking = asyncio.ensure_future(check_shadow())  # meanwhile the frames are read
        # Bounded in count (--queue) and in bytes: a request's body may be up to --max-body.
        queue: DropOldestQueue[Pending] = DropOldestQueue(cfg.queue, max_bytes=MAX_QUEUE_BYTES,
                                                          size=lambda p: len(p.outgoing.wire))
        self.queue = queue
        dropped_ids: OrderedDict[str, None] = OrderedDict()  # dropped here: no result will come

        def submit(item: Pending, on_done: Callable[[Result], None]) -> None:
            sender.submit(item.outgoing, scheduled=item.wire_ts, copy=0, on_result=on_done)

        pump = Pump(queue, submit, self._on_result, concurrency=cfg.concurrency)
        self.pump = pump
        capture_done = loop.create_future()
        decoder = Decoder()

        def on_frame(t: tuple[Any, ...]) -> None:
            kind, obj = decode(t)
            if kind == REQ:
                for old in pump.offer(obj):
                    dropped_ids[old.exchange_id] = None
                    if len(dropped_ids) > 100_000:
                        dropped_ids.popitem(last=False)
            elif kind == EXC:
                ex, admitted = obj
                if admitted and dropped_ids:
                    admitted = dropped_ids.pop(ex.id, 0) is not None
                self._on_exchange(ex, admitted)
            elif kind == STATS:
                self.capture_figures = obj
            elif kind == STARTED:
                describe, reason = obj
                # (tests and scripts wait for this line: the hooks are attached from here on)
                console.info(f"mirror: capturing {cfg.iface} port {','.join(map(str, cfg.ports))} to "
                             f"{cfg.policy.target.url}: {describe} ({reason})")
            else:
                self.capture_error = _rebuild_error(*obj)

        class Reader(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                for t in decoder.feed(data):
                    on_frame(t)

            def connection_lost(self, exc: Exception | None) -> None:
                if not capture_done.done():
                    capture_done.set_result(None)
                run.stop.set()

        run = self
        transport, _ = await loop.connect_read_pipe(Reader, os.fdopen(self._data_fd, "rb", buffering=0))
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._signal, sig)
        metrics_runner = None
        live = None
        exit_code = EXIT_VERDICT_ERROR
        try:
            self._open_run_dir()
            self._open_sinks()
            if cfg.metrics:
                metrics_runner = await self._serve_metrics(self.snapshot)
            show = cfg.dashboard if cfg.dashboard is not None else console.interactive()
            if show:
                from rich.live import Live

                live = Live(dashboard(self.snapshot()), console=console.err, refresh_per_second=2,
                            transient=False)
                live.start()
            deadline = loop.time() + cfg.duration if cfg.duration else None
            last_log = loop.time()
            while not self.stop.is_set():
                timeout = 1.0 if deadline is None else max(0.0, min(1.0, deadline - loop.time()))
                try:
                    await asyncio.wait_for(self.stop.wait(), timeout)
                except asyncio.TimeoutError:
                    pass
                if deadline is not None and loop.time() >= deadline and not self.stop.is_set():
                    self.stop_reason = "duration"
                    self.stop.set()
                self.pairer.expire(time.monotonic())
                self._update_rate(self.capture_figures.seen)
                if live is not None:
                    live.update(dashboard(self.snapshot()))
                elif loop.time() - last_log >= cfg.log_interval:
                    last_log = loop.time()
                    console.info(log_line(self.snapshot()))
            # ---- ending: the capture first (hooks detached, the Extractor's last exchanges out,
            # its final figures), then the requests still queued or in flight, then the reports.
            self._stop_child()
            try:
                await asyncio.wait_for(asyncio.shield(capture_done), timeout=30)
            except asyncio.TimeoutError:
                self._note("the capture process did not finish in 30 s; stopping it")
            if not self.capture_figures.final and self.capture_error is None:
                code = None
                if self.child is not None:
                    self.child.join(2)
                    code = self.child.exitcode
                self.capture_error = ShadowtapError(
                    f"the capture process did not end cleanly (exit status {code}); the report covers "
                    "what was mirrored until then")
            drain = cfg.drain_timeout if cfg.drain_timeout is not None else min(cfg.timeout, 10.0)
            draining = asyncio.ensure_future(pump.drain(drain))
            aborting = asyncio.ensure_future(self.abort.wait())
            await asyncio.wait([draining, aborting], return_when=asyncio.FIRST_COMPLETED)
            aborting.cancel()
            if not draining.done():
                pump.stop()
                await draining
            self.fig.discarded_at_end = pump.abandoned
            self.send_failures = pump.failures
            if pump.last_failure:
                self._note(f"{pump.failures} requests failed in the mirror: {pump.last_failure}")
            for _ in self.pairer.flush():
                pass  # counted by the Pairer as evicted
            exit_code = EXIT_OK
        finally:
            self._stop_child()
            transport.close()
            if live is not None:
                live.update(dashboard(self.snapshot()))
                live.stop()
                if not console.err.is_terminal:
                    console.info("")  # the last frame ends without a newline off a terminal
            sender.close()
            await sender.aclose()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            if metrics_runner is not None:
                await metrics_runner.cleanup()
            self._close_writers()
            pump.stop()
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

    def _open_run_dir(self) -> None:
        d = self.cfg.run_dir
        if not d:
            return
        self._check_run_dir()
        self._writers["exchanges"] = JsonlWriter(os.path.join(d, "exchanges.jsonl"))
        self._writers["results"] = JsonlWriter(os.path.join(d, "results.jsonl"))

    def _close_writers(self) -> None:
        for w in self._writers.values():
            w.close()
        sinks, self._sinks = self._sinks, []
        for sink in sinks:
            try:
                sink.close()
            except Exception as exc:  # noqa: BLE001 - the other outputs still close
                self._note(f"closing a sink failed: {type(exc).__name__}: {exc}")
            if hasattr(sink, "acked"):
                from shadowtap.lake.nats import sink_summary

                console.info(sink_summary(sink))

    def _open_sinks(self) -> None:
        cfg = self.cfg
        if cfg.parquet:
            from shadowtap.lake.writer import LakeWriter

            compare_cfg = self.comparison.config if self.comparison is not None else None
            self._sinks.append(LakeWriter(cfg.parquet, config=compare_cfg, rows_per_file=20_000,
                                          flush_interval=60.0))
        if cfg.sink:
            from shadowtap.lake.nats import open_sink

            self._sinks.append(open_sink(cfg.sink, cfg.sink_spool))

    async def _serve_metrics(self, snap: Callable[[], MirrorSnapshot]) -> Any:
        from aiohttp import web

        host, port = _parse_metrics_addr(self.cfg.metrics or "")

        async def metrics(_request: web.Request) -> web.Response:
            return web.Response(text=prometheus_text(snap()), content_type="text/plain",
                                charset="utf-8", headers={"X-Content-Type-Options": "nosniff"})

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/", metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise InputError(f"cannot serve metrics on {host}:{port}: {exc.strerror}",
                             field="metrics") from exc
        addrs = [s.getsockname() for s in (site._server.sockets if site._server else ())]  # type: ignore[union-attr]
        if addrs:
            console.info(f"metrics: http://{format_addr(addrs[0])}/metrics")
        return runner

    def _finish(self, s: MirrorSnapshot) -> str | None:
        """The final reports (printed, and in the run directory) and the mirror's own summary
        (mirror.json). Returns the verdict."""
        mirror_compare.set_unmatched(self.comparison, self.pairer.evicted_exchanges, self.pairer.evicted_results)
        report = mirror_compare.snapshot(self.comparison)
        _, divergence, _ = mirror_compare.view(report)
        verdict, why = coverage_verdict(report.verdict.result, s.queued, s.pairs,
                                        self.cfg.min_coverage)
        if why is not None:
            report = report.overruled(Verdict.ERROR, why)
        s = dataclasses.replace(s, verdict=verdict, divergence=divergence)
        d = self.cfg.run_dir
        summary = mirror_summary(s, self)
        if d:
            with create_private(os.path.join(d, "mirror.json")) as fh:
                fh.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
        rows = [
            ("stopped by", self.stop_reason), ("requests seen", s.seen), ("mirrored", s.mirrored),
            ("dropped (queue full)", s.dropped), ("rate-limited", s.rate_limited),
            ("skipped", ", ".join(f"{k} {v}" for k, v in sorted(s.skipped.items())) or 0),
            ("shadow errors", ", ".join(f"{k} {v}" for k, v in sorted(s.shadow_errors.items())) or 0),
            ("pairs compared", s.pairs), ("unpaired", s.unpaired),
            ("mirror lag p50/p99", f"{_ms(s.lag.quantile(0.5))} / {_ms(s.lag.quantile(0.99))}"),
            ("capture drops", s.capture_drops),
        ]
        if self.fig.discarded_at_end:
            rows.append(("not sent at the end (drain timed out)", self.fig.discarded_at_end))
        console.table("mirror", ("", "value"), rows, to_stderr=True)
        for problem in mirror_compare.write_reports(report, d):
            console.warn(problem)
        if d:
            console.info(f"run directory: {d} (exchanges.jsonl, results.jsonl, report.txt, "
                         "report.json, report.html, mirror.json)")
        return verdict


def coverage_verdict(verdict: str | None, queued: int, pairs: int, min_coverage: float) -> tuple[str | None, str | None]:
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
    return "error", (f"only {pairs} of the {queued} requests queued for the shadow were compared "
                     f"({coverage:.0%} < {min_coverage:.0%}): the rest were dropped or never answered, "
                     "so the comparison does not represent the traffic (a slow shadow, or raise --queue "
                     "/ --concurrency)")


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
        "not_sent_at_end": run.fig.discarded_at_end,
        "send_failures": run.send_failures,
        "exchanges_lost": run.capture_figures.outbox_dropped_exchanges,
        "capture_drops": s.capture_drops,
        "lag_ms": {"p50": q(s.lag, 0.5), "p99": q(s.lag, 0.99), "count": s.lag.count},
        "primary_latency_ms": {"p50": q(s.primary_latency, 0.5), "p99": q(s.primary_latency, 0.99)},
        "shadow_latency_ms": {"p50": q(s.shadow_latency, 0.5), "p99": q(s.shadow_latency, 0.99)},
        "divergence": s.divergence,
    }
