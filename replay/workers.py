"""``replay --workers N``: one replay spread over N sender processes (shadowtap/procs.py children,
their messages records of shadowtap/codec.py).

Ownership: every worker reads the whole JSONL input and sends the exchanges of the captured
connections it owns: ``owner(line, n)``, the crc32 of the line's ``client>server`` (found in the
raw bytes; the line parsed only when they are not where extract writes them), modulo N. A
connection's requests therefore stay on one process, in order, on one target connection. A line
another worker owns is not decoded: it goes through the schedule as a ``Foreign`` placeholder
holding its time only (parsed for recorded timing, not under ``--rate``), so every worker
computes the same schedule (t_0, the ``--rate`` slots, the ``--loop`` shifts); under ``--speed
max`` they play no part and are skipped.

One clock: the parent makes the ``Clock`` (monotonic -> epoch) before forking, every worker
inherits it; each worker resolves the target, connects once, decodes its share under
``--preload``, then says ``Ready``; the parent sends every worker the same start instant
(``Go``), so request i is due at start + (t_i − t_0)/k in every process. Lags are kept per
worker (``Lags``: a histogram, constant memory) and merged; the summary shows both.

Results: each worker writes its part file (in a private 0700 folder beside the results file):
one line per result, ``<completion instant on the shared clock>\\t<the result's JSON>``, in the
order its answers came. The parent merges the parts by that instant (``heapq.merge``: streaming,
O(N) memory) into the results file, which is therefore in the order the answers came back
across all workers, as one process writes it (docs/results-format.md). The parts are removed
after the merge.

Failures: a worker's error comes back as the same ShadowtapError (procs: what and in which
worker; a bug with its file and line); the others are stopped, the results already written by
every worker are merged, the summary printed, then the error raised. Ctrl-C (or SIGTERM) in the
parent sends every worker ``Stop``: each stops scheduling and waits for its requests in flight
(a second Ctrl-C: gives up on them), then the parts are merged as above.

Cost: the parent does nothing while the workers send (it waits on their channels); the merge
after the run costs ~1 µs a result. Each worker reads every line (~0.6 µs a line it does not own
under ``--speed max``, +1-2 µs for the time of one under recorded timing).
"""

from __future__ import annotations

import contextlib
import heapq
import os
import shutil
import signal
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import IO, Any

import orjson

from shadowtap import console
from shadowtap.codec import ErrorRecord, error_record
from shadowtap.errors import InputError, ShadowtapError
from shadowtap.jsonl import JsonlWriter, create_private, read_jsonl
from shadowtap.procs import Child, ChildContext, Stop, codec_for, spawn
from shadowtap.records import Exchange
from shadowtap.replay.client import Clock

# Imported by the parent before forking (the workers inherit them).
from shadowtap.replay.run import (
    MAX_WARNINGS,
    Foreign,
    Item,
    Lags,
    ReplayConfig,
    ReplaySummary,
    _counting,
    _Progress,
    _replay,
    _run_loop,
    _unredacting,
    print_summary,
)

HEAD_START = 0.05  # s between Go and the start instant: every worker is woken before slot 0


# ------------------------------------------------------------------------------- ownership
_CONN = b'"conn":{"client":"'
_SERVER = b'","server":"'


def connection_key(line: bytes) -> bytes | None:
    """``client>server`` of a JSONL exchange line (UTF-8), or None when the line has none. Read
    from the raw bytes where shadowtap writes them (``"conn":{"client":"…","server":"…"}``, no
    escapes); otherwise the line is parsed (the same key for the same strings). Pure."""
    i = line.find(_CONN)
    if i >= 0:
        a = i + len(_CONN)
        b = line.find(_SERVER, a)
        if b >= 0:
            c = line.find(b'"', b + len(_SERVER))
            if c >= 0 and line.find(b"\\", a, c) < 0:
                return line[a:b] + b">" + line[b + len(_SERVER) : c]
    try:
        conn = orjson.loads(line)["conn"]
        return f"{conn['client']}>{conn['server']}".encode()
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None


def owner(line: bytes, workers: int) -> int:
    """The worker (0..workers-1) that sends ``line``'s exchange: by its connection, so one
    connection's requests stay on one worker; a line without a connection (malformed: its
    warning printed once) goes to worker 0. Pure."""
    key = connection_key(line)
    return 0 if key is None else zlib.crc32(key) % workers


def line_time(line: bytes) -> float | None:
    """The time of a JSONL exchange line (its request's, else its response's), None when it has
    none: another worker's line, for the schedule. Pure."""
    try:
        d = orjson.loads(line)
        msg = d.get("request") or d.get("response")
        ts = msg["ts"]
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return None
    return float(ts) if isinstance(ts, (int, float)) and not isinstance(ts, bool) else None


_UNTIMED = Foreign(0.0)  # --rate: another worker's line holds a slot, no time


def shard_source(
    cfg: ReplayConfig, index: int, workers: int, summary: ReplaySummary
) -> Callable[[], Iterable[Item]]:
    """Passes over the JSONL input for worker ``index`` of ``workers``: its exchanges decoded (as
    ``open_source`` decodes them), the others as ``Foreign`` placeholders."""

    def on_error(err: InputError) -> None:
        summary.malformed += 1
        if summary.malformed <= MAX_WARNINGS:
            console.warn(f"{err.message} (skipped)")

    timed = cfg.timing.speed is not None and cfg.timing.rate is None

    def other(line: bytes) -> Foreign | None:
        if not line.strip():
            return None
        if not timed:
            return _UNTIMED
        ts = line_time(line)
        return None if ts is None else Foreign(ts)

    def mine(line: bytes) -> bool:
        return owner(line, workers) == index

    def shard_pass() -> Iterable[Item]:
        # --speed max: other workers' lines play no part in the schedule (no offsets, no slots
        # to count): they are not even placeholders.
        untimed = cfg.timing.speed is None and cfg.timing.rate is None
        return read_jsonl(
            cfg.input,
            Exchange.sendable_from_line,
            on_error,
            mine,
            None if untimed else other,
            lines=True,
        )

    return shard_pass


def worker_count(cfg: ReplayConfig) -> int:
    """How many sender processes: ``cfg.workers``, or (None) the CPUs this process may use. A
    capture, stdin or a nats:// stream is read by one process: more is an InputError when asked
    for, 1 by default."""
    from shadowtap.capture.pcapfile import sniff_path

    asked = cfg.workers
    if asked is not None and asked < 1:
        raise InputError(f"must be >= 1, not {asked}", field="workers")
    if asked == 1:
        return 1
    shardable = cfg.input != "-" and not cfg.input.startswith("nats://")
    if shardable:
        shardable = sniff_path(cfg.input) is None
    if not shardable:
        if asked is None:
            return 1
        raise InputError(
            "more than one worker needs a JSONL file as the input (not a capture, stdin or a "
            "stream): extract a capture first (shadowtap extract)",
            field="workers",
        )
    if asked is None:
        try:
            asked = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # pragma: no cover - not Linux
            asked = os.cpu_count() or 1
        return max(1, min(asked, cfg.concurrency))
    if asked > cfg.concurrency:  # each worker has at least one request in flight
        console.warn(
            f"--workers {asked} with --concurrency {cfg.concurrency}: {cfg.concurrency} workers "
            "(each needs a request in flight of its own)"
        )
        return cfg.concurrency
    return asked


# ------------------------------------------------------------------------------- messages
@dataclass(frozen=True, slots=True)
class Ready:
    """Worker -> parent: the target resolved and reached, the input preloaded if asked."""

    worker: int


@dataclass(frozen=True, slots=True)
class Go:
    """Parent -> workers: the start instant (``time.monotonic()``, one clock for all)."""

    start: float


@dataclass(frozen=True, slots=True)
class WorkerReport:
    """A worker's summary, for the parent to merge (the Exited value)."""

    worker: int
    exchanges: int
    malformed: int
    skipped: dict[str, int]
    submitted: int
    sent: int
    ok: int
    errors: dict[str, int]
    statuses: dict[str, int]
    lag_counts: bytes  # Lags.counts (int64)
    lag_n: int
    lag_max: float
    elapsed: float
    cpu: float
    interrupted: bool
    redacted: int
    substituted: int
    damaged: ErrorRecord | None = None  # the input's damage (InputError), after what was sent


@dataclass(frozen=True, slots=True)
class Tick:
    """Worker -> parent every half second, when the parent shows a progress bar."""

    worker: int
    sent: int
    errors: dict[str, int]
    skipped: dict[str, int]
    outstanding: int
    lag_bins: dict[int, int]  # the lags since the last Tick: histogram bin -> count
    lag_n: int
    lag_max: float


CODEC = codec_for([Ready, Go, Tick, WorkerReport])
TICK = 0.5  # s between two Ticks


class Shard:
    """What ``_replay`` gets in a worker: the parent's clock, its start instant and its Stops."""

    def __init__(self, ctx: ChildContext, index: int, clock: Clock, ticks: bool) -> None:
        self.ctx = ctx
        self.index = index
        self.clock = clock
        self.ticks = ticks  # send Ticks (the parent shows progress)
        self._go: Any = None  # asyncio.Future[float] while waiting for Go
        self._on_stop: Callable[[], None] = lambda: None

    def watch(self, loop: Any, on_stop: Callable[[], None]) -> None:
        """Every Stop from the parent (or its end: EOF) calls ``on_stop``; Go ends ``ready``."""
        self._on_stop = on_stop
        channel = self.ctx.channel

        def readable() -> None:
            try:
                while channel.poll(0):
                    msg = channel.recv()
                    if isinstance(msg, Go):
                        if self._go is not None and not self._go.done():
                            self._go.set_result(msg.start)
                    elif isinstance(msg, Stop):
                        self._stop()
            except (EOFError, OSError):
                loop.remove_reader(channel.fileno())
                self._stop()

        loop.add_reader(channel.fileno(), readable)

    def report(self, summary: ReplaySummary, outstanding: Callable[[], int]) -> None:
        """Send a Tick every TICK seconds from the running loop (when ``ticks``)."""
        if not self.ticks:
            return
        import asyncio

        loop = asyncio.get_running_loop()
        last = summary.lags.snapshot()
        last_n = 0

        def tick() -> None:
            nonlocal last, last_n
            lags = summary.lags
            grown = lags.since(last)
            with contextlib.suppress(OSError, ValueError):
                self.ctx.channel.send(
                    Tick(
                        self.index,
                        summary.sent,
                        dict(summary.errors),
                        dict(summary.skipped),
                        outstanding(),
                        grown,
                        lags.n - last_n,
                        lags.max,
                    )
                )
            last, last_n = lags.snapshot(), lags.n
            loop.call_later(TICK, tick)

        loop.call_later(TICK, tick)

    def _stop(self) -> None:
        if self._go is not None and not self._go.done():
            self._go.set_result(None)
        self._on_stop()

    async def ready(self, stop: Any) -> float:
        """Say Ready, wait for Go; its start instant (now when stopped before it)."""
        import asyncio

        self._go = asyncio.get_running_loop().create_future()
        self.ctx.channel.send(Ready(self.index))
        start = await self._go
        return time.monotonic() if start is None or stop.is_set() else float(start)


class PartWriter:
    """A worker's part of the results: ``<completion instant>\\t<JSON>\\n`` lines, 0600. The
    instant is the answer's end (``response.end_ts``), else (an error) the clock's now: both
    non-decreasing in the order one process completes its requests."""

    def __init__(self, path: str, clock: Clock) -> None:
        self._f: IO[bytes] = create_private(path)
        self._now = clock.now

    def write(self, obj: dict[str, Any]) -> None:
        resp = obj["response"]
        done = resp["end_ts"] if resp is not None else self._now()
        self._f.write(b"%018.7f\t" % done + orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE))

    def close(self) -> None:
        self._f.close()


def _worker(
    ctx: ChildContext,
    cfg: ReplayConfig,
    index: int,
    workers: int,
    clock: Clock,
    part: str | None,
    ticks: bool,
) -> WorkerReport:
    summary = ReplaySummary()
    damaged: list[InputError] = []
    source = _counting(
        _unredacting(shard_source(cfg, index, workers, summary), cfg, summary), summary, damaged
    )
    writer = PartWriter(part, clock) if part is not None else None
    try:
        _run_loop(_replay(cfg, source, writer, summary, Shard(ctx, index, clock, ticks)))
    finally:
        if writer is not None:
            writer.close()
    lags = summary.lags
    return WorkerReport(
        worker=index,
        exchanges=summary.exchanges,
        malformed=summary.malformed,
        skipped=dict(summary.skipped),
        submitted=summary.submitted,
        sent=summary.sent,
        ok=summary.ok,
        errors=dict(summary.errors),
        statuses=dict(summary.statuses),
        lag_counts=lags.counts.tobytes(),
        lag_n=lags.n,
        lag_max=lags.max,
        elapsed=summary.elapsed,
        cpu=summary.cpu,
        interrupted=summary.interrupted,
        redacted=summary.redacted,
        substituted=summary.substituted,
        damaged=error_record(damaged[0]) if damaged else None,
    )


# ------------------------------------------------------------------------------- the parent
def _share(total: int, workers: int, index: int) -> int:
    """Worker ``index``'s part of ``total`` (concurrency), at least 1."""
    return max(1, total // workers + (1 if index < total % workers else 0))


def _parts(folder: str, workers: int) -> list[str]:
    return [os.path.join(folder, f"part{i}.jsonl") for i in range(workers)]


KEY = 18  # bytes of a part line's key: the instant as %018.7f (fixed width until 2286)


def _open_parts(paths: Iterable[str]) -> list[IO[bytes]]:
    out: list[IO[bytes]] = []
    for path in paths:
        try:
            out.append(open(path, "rb"))  # noqa: SIM115 - closed by merge_parts
        except FileNotFoundError:  # the worker failed before it wrote anything
            pass
    return out


def merge_parts(paths: Iterable[str], out: JsonlWriter) -> int:
    """The parts' results into ``out`` in the order of their completion instants (each part is in
    that order already): streaming, O(parts) memory. The keys have a fixed width, so the lines
    themselves compare in their instants' order (no key function, no float parsing: ~1 µs a
    line). A torn last line (a killed worker) is left out. Returns the number of lines."""
    files = _open_parts(paths)
    n = 0
    write = out.write_line
    try:
        for line in heapq.merge(*files):
            if line[-1:] == b"\n" and line[KEY : KEY + 1] == b"\t":
                write(line[KEY + 1 :])
                n += 1
    finally:
        for f in files:
            f.close()
    return n


class _Run:
    """The parent's view of the workers while they run."""

    def __init__(self) -> None:
        self.children: list[Child] = []
        self.reports: dict[int, WorkerReport] = {}
        self.errors: list[ShadowtapError] = []
        self.ready: set[int] = set()
        self.done: set[int] = set()
        self.stops = 0  # Ctrl-C / SIGTERM received (the signal handler counts)
        self._forwarded = 0
        # The progress bar's numbers: the workers' last Ticks, their lags merged as they come.
        self.live = ReplaySummary()
        self.ticks: dict[int, Tick] = {}
        self.progress: Any = None  # run._Progress, ticked from ``pump``
        self._shown = 0.0

    def on_tick(self, t: Tick) -> None:
        self.ticks[t.worker] = t
        live = self.live
        live.sent = sum(x.sent for x in self.ticks.values())
        live.errors = Counter()
        live.skipped = Counter()
        for x in self.ticks.values():
            live.errors.update(x.errors)
            live.skipped.update(x.skipped)
        lags = live.lags
        for b, c in t.lag_bins.items():
            lags.counts[b] += c
        lags.n += t.lag_n
        lags.max = max(lags.max, t.lag_max)

    def outstanding(self) -> int:
        return sum(t.outstanding for t in self.ticks.values())

    def fail(self, err: ShadowtapError) -> None:
        self.errors.append(err)
        self.stops = max(self.stops, 1)  # the others stop; every result written is kept

    def stop_all(self) -> None:
        for child in self.children:
            if child.exited is None:
                child.stop()

    def pump(self, until: Callable[[], bool], wait: float = 0.05) -> None:
        """Take the workers' messages until ``until()``: Ready, reports, errors, deaths; every
        Ctrl-C forwarded to the workers still running as a Stop."""
        from multiprocessing.connection import wait as wait_any

        while not until():
            while self._forwarded < self.stops:
                self._forwarded += 1
                self.stop_all()
            waiting = [c.channel.conn for i, c in enumerate(self.children) if i not in self.done]
            with contextlib.suppress(InterruptedError):
                wait_any(waiting, wait)
            if self.progress is not None and time.monotonic() - self._shown >= TICK:
                self._shown = time.monotonic()
                self.progress.tick()
            for i, child in enumerate(self.children):
                if i in self.done:
                    continue
                while (msg := child.take(0)) is not None and child.exited is None:
                    if isinstance(msg, Tick):
                        self.on_tick(msg)
                    elif isinstance(msg, Ready):
                        self.ready.add(i)
                if child.exited is None and not child.is_alive():
                    child.take(0)  # an Exited sent just before the end
                    if child.exited is None:
                        self.done.add(i)
                        self.fail(child.died())
                        continue
                if child.exited is not None:
                    self.done.add(i)
                    try:
                        report = child.result(0)
                    except ShadowtapError as exc:
                        self.fail(exc)
                        continue
                    if isinstance(report, WorkerReport):
                        self.reports[i] = report


def run_workers(cfg: ReplayConfig) -> tuple[ReplaySummary, InputError | None]:
    """The replay over ``cfg.workers`` processes; the merged summary (printed) and the input's
    damage, if any. A worker's error is raised after the merge and the summary."""
    n = int(cfg.workers or 1)
    clock = Clock()  # before the fork: one clock for every worker
    writer = JsonlWriter(cfg.output) if cfg.output else None  # a refusal now, not after the run
    folder = None
    if writer is not None:
        out_dir = os.path.dirname(os.path.abspath(str(cfg.output))) if cfg.output != "-" else None
        folder = tempfile.mkdtemp(prefix=".shadowtap-replay-", dir=out_dir)  # 0700
    parts = _parts(folder, n) if folder else [None] * n
    run = _Run()
    show = cfg.progress if cfg.progress is not None else console.interactive()

    def on_signal(_signum: int, _frame: Any) -> None:
        run.stops += 1

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    summary = ReplaySummary()
    began = 0.0
    try:
        for i in range(n):
            wcfg = replace(
                cfg,
                concurrency=_share(cfg.concurrency, n, i),
                progress=False,
                json_summary=False,
                output=None,
            )
            run.children.append(
                spawn(
                    _worker,
                    wcfg,
                    i,
                    n,
                    clock,
                    parts[i],
                    show,
                    name=f"replay worker {i + 1} of {n}",
                    codec=CODEC,
                    die_with_parent=signal.SIGKILL,
                )
            )
        run.pump(lambda: len(run.ready | run.done) == n or run.stops > 0)
        if len(run.ready) == n and not run.stops:
            began = time.monotonic()
            start = began + (HEAD_START if cfg.timing.timed else 0.0)
            for child in run.children:
                with contextlib.suppress(OSError, ValueError):
                    child.send(Go(start))
            if show:
                run.live.started = began
                run.progress = _Progress(
                    run.live, run.outstanding, None, cfg.timing.duration, timer=False
                )
        run.pump(lambda: len(run.done) == n)
    finally:
        if run.progress is not None:
            if len(run.reports) == n:  # the final figures, not the last Ticks'
                run.live.sent = sum(r.sent for r in run.reports.values())
            run.progress.close()
        run.stop_all()  # (none left on the normal path)
        for child in run.children:
            child.reap(5)
        for s, handler in old.items():
            signal.signal(s, handler)
        if began:
            summary.elapsed = time.monotonic() - began
        try:
            if writer is not None:
                merge_parts([p for p in parts if p is not None], writer)
        finally:
            if writer is not None:
                writer.close()
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
    damaged = _merge(summary, run.reports.values())
    summary.interrupted = summary.interrupted or (run.stops > 0 and not run.errors)
    if began:
        summary.started = began
        reports = sorted(run.reports.values(), key=lambda r: r.worker)
        print_summary(cfg, summary, per_worker=[_worker_row(r) for r in reports])
    if run.errors:
        raise run.errors[0]
    return summary, damaged


def _worker_row(r: WorkerReport) -> dict[str, Any]:
    lags = Lags()
    lags.merge(r.lag_counts, r.lag_n, r.lag_max)
    lag = lags.percentiles()
    return {
        "worker": r.worker + 1,
        "exchanges": r.exchanges,
        "sent": r.sent,
        "elapsed_s": r.elapsed,
        "cpu_s": r.cpu,
        "lag_ms": {"p50": lag[0], "p99": lag[1], "max": lag[2]} if lag else None,
    }


def _merge(summary: ReplaySummary, reports: Iterable[WorkerReport]) -> InputError | None:
    damaged: InputError | None = None
    for r in reports:
        summary.exchanges += r.exchanges
        summary.malformed += r.malformed
        summary.skipped.update(r.skipped)
        summary.submitted += r.submitted
        summary.sent += r.sent
        summary.ok += r.ok
        summary.errors.update(r.errors)
        summary.statuses.update(r.statuses)
        summary.lags.merge(r.lag_counts, r.lag_n, r.lag_max)
        summary.cpu += r.cpu
        summary.interrupted |= r.interrupted
        summary.redacted += r.redacted
        summary.substituted += r.substituted
        if r.damaged is not None and damaged is None:
            err = r.damaged.rebuild()
            damaged = err if isinstance(err, InputError) else None
    return damaged
