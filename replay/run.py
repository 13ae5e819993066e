"""The ``shadowtap replay`` stage: read exchanges (JSONL or a capture extracted on the fly), decide
with the Policy, schedule with ``schedule``, send with the Sender, write one Result line per
request sent, and summarise.

The scheduling loop sleeps until each slot's due time, anchored to the start; it never waits for
answers (except under ``--speed max``, where at most ``2 * concurrency`` requests are
outstanding), so a slow target shows as lag in the results, not as a slower schedule. Results are
written as they come (the writer flushes every second) and the file is closed on every exit path:
on Ctrl-C the loop stops scheduling, waits for the requests in flight (at most the timeout), and
the summary is still printed.
"""

from __future__ import annotations

import asyncio
import signal
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace

from replay.client import Sender
from replay.policy import Policy, Prepared, Skip
from replay.schedule import Timing, schedule
from shadowtap import console
from shadowtap.errors import InputError, TargetError
from shadowtap.jsonl import JsonlWriter, read_jsonl, sniff_is_jsonl
from shadowtap.records import Exchange, Result

# Under recorded timing, a target that falls behind makes requests queue in the Sender; past this
# many the scheduler waits (its lag shows it) instead of growing memory without bound.
MAX_QUEUED = 100_000
MAX_WARNINGS = 10  # malformed-line warnings printed; the rest are counted


@dataclass(frozen=True, slots=True)
class ReplayConfig:
    input: str
    policy: Policy
    timing: Timing = field(default_factory=Timing)
    output: str | None = None  # results JSONL ('-' stdout, .gz compressed); None: no file
    concurrency: int = 64
    per_connection: bool = True
    timeout: float = 10.0
    connect_timeout: float = 5.0
    max_body: int = 1 << 20
    check_target: bool = True  # connect once before starting: unreachable -> TargetError
    # pcap input only:
    ports: tuple[int, ...] = ()
    bpf_filter: str | None = None
    keep_secrets: bool = False
    progress: bool | None = None  # None: on a terminal


@dataclass(slots=True)
class ReplaySummary:
    exchanges: int = 0  # read from the input (every pass)
    malformed: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    submitted: int = 0
    sent: int = 0  # results written
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)  # "2xx", "5xx", ...
    lags_ms: array = field(default_factory=lambda: array("d"))
    started: float = 0.0
    elapsed: float = 0.0
    interrupted: bool = False

    def add(self, result: Result) -> None:
        self.sent += 1
        self.lags_ms.append(result.lag_ms)
        if result.error is not None:
            self.errors[result.error.kind] += 1
        elif result.response is not None:
            self.ok += 1
            self.statuses[f"{result.response.status // 100}xx"] += 1

    def lag_percentiles(self) -> tuple[float, float, float] | None:
        """(p50, p99, max) of the lag in ms, or None before any result."""
        if not self.lags_ms:
            return None
        import numpy as np

        a = np.frombuffer(self.lags_ms, dtype=np.float64)
        p50, p99 = np.percentile(a, [50, 99])
        return float(p50), float(p99), float(a.max())

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed if self.elapsed > 0 else 0.0


def open_source(cfg: ReplayConfig, summary: ReplaySummary) -> Callable[[], Iterable[Exchange]]:
    """A factory of passes over the input: JSONL (malformed lines warned about and counted) or a
    capture extracted on the fly."""
    if sniff_is_jsonl(cfg.input):
        def on_error(err: InputError) -> None:
            summary.malformed += 1
            if summary.malformed <= MAX_WARNINGS:
                console.warn(f"{err.message} (skipped)")

        def jsonl_pass() -> Iterable[Exchange]:
            return read_jsonl(cfg.input, Exchange.from_json, on_error)

        return jsonl_pass

    def pcap_pass() -> Iterable[Exchange]:
        from capture.extract import iter_exchanges

        return iter_exchanges([cfg.input], ports=cfg.ports, bpf_filter=cfg.bpf_filter,
                              max_body=max(cfg.max_body, 1 << 20), keep_secrets=cfg.keep_secrets)

    return pcap_pass


def _counting(source: Callable[[], Iterable[Exchange]], summary: ReplaySummary) -> Callable[[], Iterator[Exchange]]:
    def counted() -> Iterator[Exchange]:
        for ex in source():
            summary.exchanges += 1
            yield ex
    return counted


def run_replay(cfg: ReplayConfig) -> ReplaySummary:
    """Run the replay; print the summary; return it. Raises InputError for an input with no HTTP
    exchange, TargetError for an unreachable target, ReplayRefused for the captured server."""
    summary = ReplaySummary()
    source = _counting(open_source(cfg, summary), summary)
    writer = JsonlWriter(cfg.output) if cfg.output else None
    try:
        _run_loop(_replay(cfg, source, writer, summary))
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        if writer is not None:
            writer.close()
        if summary.started:
            summary.elapsed = summary.elapsed or time.monotonic() - summary.started
            print_summary(cfg, summary)
    if summary.interrupted:
        return summary
    if summary.exchanges == 0:
        what = f" ({summary.malformed} malformed lines)" if summary.malformed else ""
        raise InputError(f"no HTTP exchange to replay{what}", where=cfg.input)
    if summary.sent and summary.ok == 0 and summary.errors.keys() <= {"refused", "timeout"}:
        raise TargetError(f"the target {cfg.policy.target.url} answered none of {summary.sent} requests")
    return summary


def _run_loop(coro: object) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; kept for other platforms
        asyncio.run(coro)  # type: ignore[arg-type]
        return
    uvloop.run(coro)  # type: ignore[arg-type]


async def _replay(cfg: ReplayConfig, source: Callable[[], Iterable[Exchange]],
                  writer: JsonlWriter | None, summary: ReplaySummary) -> None:
    loop = asyncio.get_running_loop()
    sender = Sender(cfg.policy.target, concurrency=cfg.concurrency, per_connection=cfg.per_connection,
                    timeout=cfg.timeout, connect_timeout=cfg.connect_timeout, max_body=cfg.max_body)
    await sender.start()
    if cfg.check_target:
        await sender.check_reachable()
    policy = replace(cfg.policy, target_endpoints=sender.endpoints)
    clock = sender.clock
    timing = cfg.timing
    window = 2 * cfg.concurrency if not timing.timed else MAX_QUEUED
    room = asyncio.Event()
    stop = asyncio.Event()
    first_error: list[BaseException] = []

    def on_result(result: Result) -> None:
        try:
            summary.add(result)
            if writer is not None:
                writer.write(result.to_json())
        except BaseException as exc:  # noqa: BLE001 - a failing writer must stop the run, not vanish
            if not first_error:
                first_error.append(exc)
            stop.set()
        if sender.outstanding < window:
            room.set()

    try:
        loop.add_signal_handler(signal.SIGINT, stop.set)
    except (NotImplementedError, RuntimeError):  # pragma: no cover - not the main thread
        pass
    progress = _Progress(summary, sender) if (cfg.progress if cfg.progress is not None else console.interactive()) else None
    start = time.monotonic() + 0.01  # a head start, so the first slots are not late by set-up
    summary.started = start
    deadline = start + timing.duration if timing.duration is not None else None
    last_ex: Exchange | None = None
    decision: Prepared | Skip | None = None
    unyielded = 0
    try:
        for slot in schedule(source, timing):
            if stop.is_set():
                break
            if slot.exchange is not last_ex:
                last_ex = slot.exchange
                decision = policy.decide(slot.exchange)
                if isinstance(decision, Skip):
                    summary.skipped[decision.reason.value] += 1
            if isinstance(decision, Skip) or decision is None:
                continue
            if sender.outstanding >= window:
                while sender.outstanding >= window and not stop.is_set():
                    room.clear()
                    await room.wait()
                unyielded = 0
            if slot.offset is None:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                scheduled = clock.to_epoch(now)
            else:
                due = start + slot.offset
                delay = due - time.monotonic()
                if delay > 0:
                    await _sleep_until(due, stop)
                    unyielded = 0
                    if stop.is_set():
                        break
                scheduled = clock.to_epoch(due)
            sender.submit(decision, scheduled=scheduled, copy=slot.copy, on_result=on_result)
            summary.submitted += 1
            unyielded += 1
            if unyielded >= 64:  # let answers in when the schedule is behind or unthrottled
                unyielded = 0
                await asyncio.sleep(0)
        if stop.is_set():
            summary.interrupted = not first_error
        try:
            await asyncio.wait_for(_drain_or_stop(sender, stop, summary.interrupted), cfg.timeout + cfg.connect_timeout + 1)
        except asyncio.TimeoutError:
            pass
    finally:
        summary.elapsed = time.monotonic() - start
        sender.close()
        if progress is not None:
            progress.close()
        loop.remove_signal_handler(signal.SIGINT)
    if first_error:
        raise first_error[0]


async def _drain_or_stop(sender: Sender, stop: asyncio.Event, interrupted: bool) -> None:
    """Wait for the requests in flight; a second Ctrl-C (after the first stopped the schedule)
    gives up on them."""
    if not interrupted:
        await sender.drain()
        return
    stop.clear()
    drain = asyncio.ensure_future(sender.drain())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({drain, stopped}, return_when=asyncio.FIRST_COMPLETED)
    drain.cancel()
    stopped.cancel()


async def _sleep_until(due: float, stop: asyncio.Event) -> None:
    """Sleep until monotonic time ``due``. Event-loop timers are coarse (uvloop's are whole
    milliseconds), so the last stretch is spent yielding to the loop, which keeps handling
    answers: the send is late by at most one loop iteration, never early."""
    while True:
        delay = due - time.monotonic()
        if delay <= 0 or stop.is_set():
            return
        if delay > 0.002:
            await asyncio.sleep(delay - 0.0015)
        else:
            await asyncio.sleep(0)


class _Progress:
    """A rich progress line on stderr: requests sent, rate, lag p99 of the last second, errors."""

    def __init__(self, summary: ReplaySummary, sender: Sender) -> None:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.summary = summary
        self.sender = sender
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                                 console=console.err, transient=False)
        self.task_id = self.progress.add_task("replay", total=None)
        self.progress.start()
        self._last_sent = 0
        self._last_time = time.monotonic()
        self._handle = asyncio.get_running_loop().call_later(0.5, self._tick)

    def _tick(self) -> None:
        s = self.summary
        now = time.monotonic()
        recent = s.lags_ms[self._last_sent:]
        rate = (s.sent - self._last_sent) / max(now - self._last_time, 1e-6)
        lag = sorted(recent)[int(len(recent) * 0.99)] if recent else 0.0
        errors = sum(s.errors.values())
        self.progress.update(self.task_id, description=(
            f"sent {s.sent}  {rate:,.0f} req/s  lag p99 {lag:.1f} ms  errors {errors}  "
            f"in flight {self.sender.outstanding}  skipped {sum(s.skipped.values())}"))
        self._last_sent, self._last_time = s.sent, now
        self._handle = asyncio.get_running_loop().call_later(0.5, self._tick)

    def close(self) -> None:
        self._handle.cancel()
        self.progress.stop()


def print_summary(cfg: ReplayConfig, s: ReplaySummary) -> None:
    rows: list[tuple[str, object]] = [
        ("target", cfg.policy.target.url),
        ("exchanges read", s.exchanges),
    ]
    if s.malformed:
        rows.append(("malformed input lines", s.malformed))
    for reason, n in sorted(s.skipped.items()):
        rows.append((f"skipped: {reason}", n))
    rows += [
        ("requests sent", s.sent),
        ("answered", s.ok),
    ]
    for status, n in sorted(s.statuses.items()):
        rows.append((f"  status {status}", n))
    for kind, n in sorted(s.errors.items()):
        rows.append((f"error: {kind}", n))
    rows.append(("elapsed", f"{s.elapsed:.2f} s"))
    rows.append(("rate", f"{s.rate:,.0f} req/s"))
    lag = s.lag_percentiles()
    if lag is not None:
        rows.append(("lag p50 / p99 / max", f"{lag[0]:.3f} / {lag[1]:.3f} / {lag[2]:.3f} ms"))
    if s.interrupted:
        rows.append(("interrupted", "yes (results of the requests answered are written)"))
    if cfg.output:
        rows.append(("results", cfg.output))
    console.table("replay summary", ("what", "value"), rows, to_stderr=True)
