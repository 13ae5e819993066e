"""The ``shadowtap replay`` stage: read exchanges (JSONL or a capture extracted on the fly), decide
with the Policy, schedule with ``schedule``, send with the Sender, write one Result line per
request sent, and summarise.

The scheduling loop sleeps until each slot's due time, anchored to the start; it never waits for
answers (except under ``--speed max``, where at most ``2 * concurrency`` requests are
outstanding), so a slow target shows as lag in the results, not as a slower schedule. Results are
written as they come (the writer flushes every second) and the file is closed on every exit path:
on Ctrl-C (or SIGTERM) the loop stops scheduling, waits for the requests in flight (at most the
timeout; a second Ctrl-C stops waiting), and the summary is still printed.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from shadowtap import console
from shadowtap.errors import InputError, TargetError
from shadowtap.jsonl import JsonlWriter, read_jsonl
from shadowtap.records import Exchange, Result
from shadowtap.redact import Redactor, placeholders, substitute
from shadowtap.replay.client import Sender, TlsOptions
from shadowtap.replay.grpc_client import Router
from shadowtap.replay.policy import Policy, Prepared, Skip, SkipReason
from shadowtap.replay.schedule import Timing, schedule

if TYPE_CHECKING:
    from shadowtap.replay.workers import PartWriter, Shard

# Under recorded timing, a target that falls behind makes requests queue in the Sender; past this
# many the scheduler waits (its lag shows it) instead of growing memory without bound.
MAX_QUEUED = 100_000
MAX_WARNINGS = 10  # malformed-line warnings printed; the rest are counted
_STATUS_CLASS = {k: f"{k}xx" for k in range(1, 6)}


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
    tls: TlsOptions | None = None  # https targets: CA file, or verification off
    max_body: int = 1 << 20
    check_target: bool = True  # connect once before starting: unreachable -> TargetError
    # Decode and decide the whole input before the clock starts: the send rate of a load test is
    # then not bounded by input decoding (~15 us an exchange), at the cost of memory O(input).
    preload: bool = False
    # pcap input only:
    ports: tuple[int, ...] = ()
    bpf_filter: str | None = None
    keep_secrets: bool = False  # pcap input not redacted, and results not redacted either
    # Requests holding redacted placeholders: "skip" them (counted, warned about) or "send" them
    # as they are; ``substitute`` (lower-case name -> value) replaces a placeholder of that header,
    # query parameter, form or JSON field first.
    redacted: str = "skip"
    substitute: tuple[tuple[str, str], ...] = ()
    progress: bool | None = None  # None: on a terminal
    json_summary: bool = False  # the summary as one JSON object on stdout too
    # Sender processes (replay/workers.py), each owning whole captured connections; None: the
    # CPUs this process may run on for a JSONL file, 1 for other inputs.
    workers: int | None = 1


@dataclass(frozen=True, slots=True)
class Planned:
    """An input exchange reduced to what the schedule and the sender need: its time and the
    Policy's decision (the exchange itself is not kept, so a preloaded input stays small). None:
    an exchange another worker sends (``Foreign``): it holds its place in the schedule only."""

    ts: float
    decision: Prepared | Skip | None


@dataclass(frozen=True, slots=True)
class Foreign:
    """An input line of a connection another worker owns (replay/workers.py): only its time, so
    that every worker computes the one schedule (t_0, the --rate slots, the --loop shifts).
    Not counted, not decided, never sent here."""

    ts: float


Item = Exchange | Foreign  # what a pass over the input carries


class Lags:
    """The lags (ms) of a run's results in constant memory: the exact count and maximum, and a
    log histogram (bins 0.5% wide from 1 µs to ~11 days; lags under 1 µs, negative ones
    included, in bin 0). Percentiles are exact to the bin (0.5%). Memory: ~5,000 counts (40 KB),
    whatever the run's length; cost ~0.2 µs a lag (one log). No numpy: its import was a tenth
    of a second of every replay's start (and of each worker's). Workers' Lags merge by adding
    counts (``merge``)."""

    LO = 1e-3  # ms: bin 1's lower bound
    FACTOR = 1.005
    BINS = 5000
    _SCALE = 1.0 / math.log(FACTOR)
    _TOP = LO * FACTOR ** (BINS - 2)  # the last bin's lower bound (infinity goes there too)
    __slots__ = ("counts", "max", "n")

    def __init__(self) -> None:
        self.counts = array("q", bytes(8 * self.BINS))
        self.max = -math.inf
        self.n = 0

    def add(self, lag_ms: float) -> None:
        self.n += 1
        if lag_ms > self.max:
            self.max = lag_ms
        if lag_ms >= self.LO:  # NaN is not: bin 0
            if lag_ms < self._TOP:
                self.counts[int(math.log(lag_ms / self.LO) * self._SCALE) + 1] += 1
            else:
                self.counts[self.BINS - 1] += 1
        else:
            self.counts[0] += 1

    def merge(self, counts: bytes, n: int, max_ms: float) -> None:
        """Add another Lags' ``counts.tobytes()``, count and maximum."""
        other = array("q")
        other.frombytes(counts)
        mine = self.counts
        for i, c in enumerate(other):
            if c:
                mine[i] += c
        self.n += n
        self.max = max(self.max, max_ms)

    def snapshot(self) -> array[int]:
        """A copy of the counts (for the lags since that moment: ``since``)."""
        return array("q", self.counts)

    def since(self, snapshot: array[int]) -> dict[int, int]:
        """The bins that grew since ``snapshot``: {bin: lags added}."""
        return {i: c - s for i, (c, s) in enumerate(zip(self.counts, snapshot)) if c != s}

    def quantile(self, q: float, bins: dict[int, int] | None = None) -> float:
        """The ``q`` quantile (0..1) of the lags in ``bins`` ({bin: count}, from ``since``;
        default: all the lags), in ms: the upper bound of its bin, at most the maximum; 0.0 for
        bin 0 or no lag."""
        pairs = sorted(bins.items()) if bins is not None else enumerate(self.counts)
        items = [(i, c) for i, c in pairs if c]
        total = sum(c for _, c in items)
        if total == 0:
            return 0.0
        rank = max(1, math.ceil(q * total))
        seen = 0
        for i, c in items:
            seen += c
            if seen >= rank:
                return 0.0 if i == 0 else min(self.LO * self.FACTOR**i, self.max)
        raise AssertionError("unreachable: rank <= total")

    def percentiles(self) -> tuple[float, float, float] | None:
        """(p50, p99, max) in ms, or None before any lag."""
        if self.n == 0:
            return None
        return self.quantile(0.5), self.quantile(0.99), self.max


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
    lags: Lags = field(default_factory=Lags)
    started: float = 0.0
    elapsed: float = 0.0
    cpu: float = (
        0.0  # CPU seconds this process spent while sending (near elapsed: the client is the limit)
    )
    interrupted: bool = False
    redacted: int = 0  # requests read holding redacted placeholders (skipped unless "send")
    substituted: int = 0  # requests whose placeholders --substitute replaced
    # Set by the input pass for the exchange it has just yielded (the passes are chained
    # generators: the planner reads it before pulling the next), so memory stays O(1).
    skip_redacted: bool = False

    def add(self, result: Result) -> None:
        self.sent += 1
        self.lags.add(result.lag_ms)
        if result.error is not None:
            self.errors[result.error.kind] += 1
        elif result.response is not None:
            self.ok += 1
            self.statuses[_STATUS_CLASS.get(result.response.status // 100, "other")] += 1

    def lag_percentiles(self) -> tuple[float, float, float] | None:
        """(p50, p99, max) of the lag in ms, or None before any result."""
        return self.lags.percentiles()

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed if self.elapsed > 0 else 0.0

    def to_json(self) -> dict[str, object]:
        lag = self.lag_percentiles()
        return {
            "exchanges": self.exchanges,
            "malformed": self.malformed,
            "skipped": dict(self.skipped),
            "sent": self.sent,
            "answered": self.ok,
            "statuses": dict(self.statuses),
            "errors": dict(self.errors),
            "elapsed_s": self.elapsed,
            "rate": self.rate,
            "cpu_s": self.cpu,
            "lag_ms": {"p50": lag[0], "p99": lag[1], "max": lag[2]} if lag else None,
            "interrupted": self.interrupted,
        }


def open_source(cfg: ReplayConfig, summary: ReplaySummary) -> Callable[[], Iterable[Exchange]]:
    """A factory of passes over the input: a capture (pcap/pcapng by their full magic,
    ``pcapfile.sniff_format``) extracted on the fly, else JSONL (malformed lines, and requests
    that cannot be sent as one request, warned about with their line number and counted)."""
    from shadowtap.capture.pcapfile import sniff_path

    if cfg.input.startswith("nats://"):  # a run's stream, shared by a group (docs/lake.md)
        from shadowtap.lake.nats import consumer_pass

        return consumer_pass(cfg.input)
    if sniff_path(cfg.input) is None:

        def on_error(err: InputError) -> None:
            summary.malformed += 1
            if summary.malformed <= MAX_WARNINGS:
                console.warn(f"{err.message} (skipped)")

        def jsonl_pass() -> Iterable[Exchange]:
            return read_jsonl(cfg.input, Exchange.sendable_from_line, on_error, lines=True)

        return jsonl_pass

    def pcap_pass() -> Iterable[Exchange]:
        from shadowtap.capture.extract import iter_exchanges

        return iter_exchanges(
            [cfg.input],
            ports=cfg.ports,
            bpf_filter=cfg.bpf_filter,
            max_body=max(cfg.max_body, 1 << 20),
            keep_secrets=cfg.keep_secrets,
        )

    return pcap_pass


def _unredacting(
    source: Callable[[], Iterable[Item]], cfg: ReplayConfig, summary: ReplaySummary
) -> Callable[[], Iterator[Item]]:
    """Passes over the input with redacted placeholders dealt with by rule: substituted where
    ``cfg.substitute`` names them, then (``redacted="skip"``) requests that still hold one are
    marked for skipping (``summary.redacted``, a warning on the first). A placeholder in a header
    the policy drops or sets does not count: it is never sent."""
    values = {n.lower(): v for n, v in cfg.substitute}
    from shadowtap.capture.pcapfile import sniff_path

    capture = not cfg.input.startswith("nats://") and sniff_path(cfg.input) is not None
    from shadowtap.replay.policy import _HOP_BY_HOP  # headers the Policy never forwards

    replaced = (
        cfg.policy.drop_headers | {n.lower() for n, _ in cfg.policy.set_headers} | _HOP_BY_HOP
    )

    def unredacted() -> Iterator[Item]:
        for ex in source():
            summary.skip_redacted = False
            if isinstance(ex, Foreign):
                yield ex
                continue
            req = ex.request
            # memmem-speed tests first: the placeholder's prefix anywhere in the request
            if req is not None and (
                b"redacted:" in req.body
                or "redacted:" in req.target
                or "redacted:" in "\t".join([v for _, v in req.headers])
            ):
                new = substitute(req, values)
                if new is not req:
                    ex = replace(ex, request=new)
                    summary.substituted += 1
                where = [
                    w
                    for w in placeholders(new)
                    if not (w.startswith("header ") and w[7:].lower() in replaced)
                ]
                if where and cfg.redacted == "skip":
                    summary.redacted += 1
                    summary.skip_redacted = True
                    if summary.redacted == 1:
                        hint = "; from a capture, --keep-secrets sends the captured ones"
                        console.warn(
                            f"requests carry redacted secrets ({', '.join(where)}; exchange "
                            f"{ex.id}): skipped, the shadow would answer the placeholders with "
                            "401s; give it credentials with --substitute NAME=VALUE or "
                            "--set-header, or send them as they are with --redacted send"
                            + (hint if capture else "")
                        )
            yield ex

    return unredacted


def _counting(
    source: Callable[[], Iterable[Item]], summary: ReplaySummary, damaged: list[InputError]
) -> Callable[[], Iterator[Item]]:
    """Counts the exchanges read. A damaged input (a truncated capture) ends the pass where the
    damage is, kept in ``damaged``: the exchanges read before it are still sent (the scheduler
    reads ahead, so an error raised through it lost them), and the error is raised after the run."""

    def counted() -> Iterator[Item]:
        try:
            for ex in source():
                if not isinstance(ex, Foreign):
                    summary.exchanges += 1
                yield ex
        except InputError as exc:
            if not damaged:
                damaged.append(exc)

    return counted


def run_replay(cfg: ReplayConfig) -> ReplaySummary:
    """Run the replay; print the summary; return it. Raises InputError for an input with no HTTP
    exchange, TargetError for an unreachable target, ReplayRefused for the captured server."""
    if cfg.json_summary and cfg.output == "-":
        raise InputError(
            "the results go to stdout (-o -): the JSON summary cannot too", field="json_summary"
        )
    if cfg.redacted not in ("skip", "send"):
        raise InputError(f"must be 'skip' or 'send', not {cfg.redacted!r}", field="redacted")
    from shadowtap.replay.workers import worker_count

    workers = worker_count(cfg)
    if workers > 1:
        from shadowtap.replay.workers import run_workers

        return check_outcome(cfg, *run_workers(replace(cfg, workers=workers)))
    summary = ReplaySummary()
    damaged: list[InputError] = []
    source = _counting(_unredacting(open_source(cfg, summary), cfg, summary), summary, damaged)
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
    return check_outcome(cfg, summary, damaged[0] if damaged else None)


def check_outcome(
    cfg: ReplayConfig, summary: ReplaySummary, damaged: InputError | None
) -> ReplaySummary:
    """After the summary is printed: the run's failure as an error (a damaged input, no exchange
    at all, a target that answered nothing), or the summary."""
    if summary.interrupted:
        return summary
    if damaged is not None:
        raise damaged  # after the summary of what was sent from before the damage
    if summary.exchanges == 0:
        what = f" ({summary.malformed} malformed lines)" if summary.malformed else ""
        raise InputError(f"no HTTP exchange to replay{what}", where=cfg.input)
    if summary.sent and summary.ok == 0 and summary.errors.keys() <= {"refused", "timeout"}:
        raise TargetError(
            f"the target {cfg.policy.target.url} answered none of {summary.sent} requests"
        )
    return summary


def _run_loop(coro: object) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; kept for other platforms
        asyncio.run(coro)  # type: ignore[arg-type]
        return
    uvloop.run(coro)  # type: ignore[arg-type]


async def _replay(
    cfg: ReplayConfig,
    source: Callable[[], Iterable[Item]],
    writer: JsonlWriter | PartWriter | None,
    summary: ReplaySummary,
    shard: Shard | None = None,
) -> None:
    """The run in one process; ``shard``: this process is one of ``--workers`` (its clock, the
    start instant and Stop come from the parent: replay/workers.py)."""
    loop = asyncio.get_running_loop()
    http = Sender(
        cfg.policy.target,
        concurrency=cfg.concurrency,
        per_connection=cfg.per_connection,
        timeout=cfg.timeout,
        connect_timeout=cfg.connect_timeout,
        max_body=cfg.max_body,
        tls=cfg.tls,
        clock=shard.clock if shard is not None else None,
    )
    # gRPC calls to grpcio, other HTTP/2 requests to h2, the rest to the HTTP/1.x sender
    # (replay/grpc_client.py's Router: one set of bounds and TLS options for the three).
    sender = Router(http)
    await sender.start()
    # The refusal to replay into the captured server: the target's resolved endpoints, confirmed
    # on each connection's real peer (the check connection's, then every other's).
    policy = cfg.policy.with_server_check(sender.endpoints)
    if policy.servers is not None and not policy.force:
        http.on_connect = policy.servers.on_connect  # (grpcio's connections are its own)
    if cfg.check_target:
        await sender.check_reachable()
    clock = sender.clock
    timing = cfg.timing
    window = 2 * cfg.concurrency if not timing.timed else MAX_QUEUED
    # Once the window is full the scheduler sleeps until it is a quarter empty: one wake-up then
    # submits many requests, instead of a wake-up (a task step, ~5 us) a request.
    low_water = window - max(1, window // 4)
    room = asyncio.Event()  # cleared while the scheduler waits for the window to empty
    room.set()
    stop = asyncio.Event()
    first_error: list[BaseException] = []

    redactor = None if cfg.keep_secrets else Redactor.default()  # the shadow's Set-Cookie, tokens

    def on_result(result: Result) -> None:
        if http.refused is not None and not first_error:  # a peer is the captured server
            first_error.append(http.refused)
            stop.set()
            waker.wake()
        try:
            summary.add(result)
            if writer is not None:
                shown = redactor.result(result) if redactor is not None else result
                writer.write(shown.to_json())
        except BaseException as exc:  # noqa: BLE001 - a failing writer must stop the run, not vanish
            if not first_error:
                first_error.append(exc)
            stop.set()
            waker.wake()
        # (submitted - sent: the requests outstanding, without asking every sender of the Router)
        if not room.is_set() and summary.submitted - summary.sent <= low_water:
            room.set()

    waker = _Waker(loop)

    def on_sigint() -> None:
        stop.set()
        waker.wake()

    signals = () if shard is not None else (signal.SIGINT, signal.SIGTERM)
    for signum in signals:  # Ctrl-C, and `timeout`/service managers (a worker: its parent's Stop)
        try:
            loop.add_signal_handler(signum, on_sigint)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - not the main thread
            pass
    if shard is not None:
        shard.watch(loop, on_sigint)
    plans = _plan(source, policy, summary)
    total: float | None = None  # of the progress bar: requests (preloaded input) or seconds
    if cfg.preload:
        preloaded = list(plans())
        plans = lambda: iter(preloaded)  # noqa: E731 - the same callable's shape as _plan's
        if timing.loop:
            total = (
                sum(isinstance(p.decision, Prepared) for p in preloaded)
                * timing.amplify
                * timing.loop
            )
    show = cfg.progress if cfg.progress is not None else console.interactive()
    progress = (
        _Progress(
            summary,
            lambda: sender.outstanding,
            total,
            timing.duration if total is None else None,
        )
        if show
        else None
    )
    if shard is not None:
        shard.report(summary, lambda: sender.outstanding)
    if shard is not None:  # every worker starts at the parent's one instant
        start = await shard.ready(stop)
        began = min(start, time.monotonic())
    else:
        began = time.monotonic()
        start = began + (
            0.01 if timing.timed else 0.0
        )  # a head start: slot 0 is not late by set-up
    summary.started = began
    cpu0 = time.process_time()
    deadline = start + timing.duration if timing.duration is not None else None
    unyielded = 0
    try:
        for slot in schedule(plans, timing):
            if stop.is_set():
                break
            decision = slot.item.decision
            if decision is None or isinstance(decision, Skip):
                continue
            if summary.submitted - summary.sent >= window:
                while summary.submitted - summary.sent > low_water and not stop.is_set():
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
                    await waker.sleep_until(due)
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
            await asyncio.wait_for(
                _drain_or_stop(sender, stop, summary.interrupted),
                cfg.timeout + cfg.connect_timeout + 1,
            )
        except asyncio.TimeoutError:
            pass
    finally:
        summary.elapsed = time.monotonic() - began
        summary.cpu = time.process_time() - cpu0
        sender.close()
        await sender.aclose()
        waker.close()
        if progress is not None:
            progress.close()
        for signum in signals:
            loop.remove_signal_handler(signum)
    if first_error:
        raise first_error[0]


def _plan(
    source: Callable[[], Iterable[Item]], policy: Policy, summary: ReplaySummary
) -> Callable[[], Iterator[Planned]]:
    """Passes of planned requests: each exchange decided once a pass (copies share it), skips
    counted by reason."""

    def planned() -> Iterator[Planned]:
        decide = policy.decide
        skipped = summary.skipped
        for ex in source():
            if isinstance(ex, Foreign):
                yield Planned(ex.ts, None)
                continue
            if summary.skip_redacted:
                skipped[SkipReason.REDACTED.value] += 1
                yield Planned(ex.ts, Skip(SkipReason.REDACTED))
                continue
            decision = decide(ex)
            if isinstance(decision, Skip):
                skipped[decision.reason.value] += 1
            yield Planned(ex.ts, decision)

    return planned


async def _drain_or_stop(sender: Sender | Router, stop: asyncio.Event, interrupted: bool) -> None:
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


class _Waker:
    """Sleeps until an instant of ``time.monotonic()``, never returning early, precise to tens of
    microseconds without spinning: a Linux timerfd on CLOCK_MONOTONIC (the clock of
    ``time.monotonic``) armed at the absolute due time and watched by the event loop. Event-loop
    timers cannot do this: uvloop's count whole milliseconds from a cached loop time (they wake up
    to ~1 ms early or late), asyncio's round up to the next millisecond. Where timerfd is missing,
    falls back to a loop timer plus yielding until due. ``wake()`` ends a sleep at once (Ctrl-C).
    Cost: one timerfd_settime and one read a sleep."""

    _CLOCK_MONOTONIC = 1
    _TFD_NONBLOCK_CLOEXEC = 0o4000 | 0o2000000
    _TFD_TIMER_ABSTIME = 1

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._waiter: asyncio.Future[None] | None = None
        self._woken = False
        self._fd = -1
        try:
            import ctypes

            class _Timespec(ctypes.Structure):
                _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

            class _Itimerspec(ctypes.Structure):
                _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]

            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.timerfd_create(self._CLOCK_MONOTONIC, self._TFD_NONBLOCK_CLOEXEC)
            if fd < 0:
                return
            self._spec = _Itimerspec()
            self._spec_ref = ctypes.byref(self._spec)
            self._settime = libc.timerfd_settime
            loop.add_reader(fd, self._fired)
            self._fd = fd
        except (OSError, AttributeError, NotImplementedError):
            self._fd = -1

    async def sleep_until(self, due: float) -> None:
        if self._fd < 0:
            await self._fallback(due)
            return
        sec = int(due)
        self._spec.it_value.tv_sec = sec
        self._spec.it_value.tv_nsec = max(1, int((due - sec) * 1e9))
        self._waiter = self.loop.create_future()
        if self._settime(self._fd, self._TFD_TIMER_ABSTIME, self._spec_ref, None) != 0:
            self._waiter = None
            await self._fallback(due)
            return
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _fired(self) -> None:
        try:
            os.read(self._fd, 8)
        except BlockingIOError:
            return
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def wake(self) -> None:
        self._woken = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _fallback(self, due: float) -> None:
        self._woken = False
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        while time.monotonic() < due and not self._woken:
            await asyncio.sleep(0)

    def close(self) -> None:
        if self._fd >= 0:
            self.loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1


class _Progress:
    """A rich progress bar on stderr: requests sent, rate and lag p99 of the last half second,
    errors. The bar fills by requests when their number is known (a preloaded input), by time
    under ``--duration``; else it is a spinner."""

    def __init__(
        self,
        summary: ReplaySummary,
        outstanding: Callable[[], int],
        total: float | None,
        duration: float | None,
        *,
        timer: bool = True,
    ) -> None:
        """``outstanding``: the requests in flight now; ``timer``: ticks every half second on
        the running loop (else the caller calls ``tick``: the parent of --workers)."""
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.summary = summary
        self.outstanding = outstanding
        self.timer = timer
        self.total = total
        self.duration = duration
        self.progress = Progress(
            SpinnerColumn(),
            BarColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console.err,
            transient=False,
        )
        self.task_id = self.progress.add_task("replay", total=total or duration)
        self.progress.start()
        self._last_sent = 0
        self._last_counts = summary.lags.snapshot()
        self._last_time = time.monotonic()
        self._handle: asyncio.TimerHandle | None = (
            asyncio.get_running_loop().call_later(0.5, self.tick) if timer else None
        )

    def tick(self) -> None:
        s = self.summary
        now = time.monotonic()
        rate = (s.sent - self._last_sent) / max(now - self._last_time, 1e-6)
        lag = s.lags.quantile(0.99, s.lags.since(self._last_counts))
        self._last_counts = s.lags.snapshot()
        errors = sum(s.errors.values())
        completed = s.sent if self.total else (now - s.started if self.duration else None)
        self.progress.update(
            self.task_id,
            completed=completed,
            description=(
                f"sent {s.sent:,}  {rate:,.0f} req/s  lag p99 {lag:.1f} ms  errors {errors}  "
                f"in flight {self.outstanding()}  skipped {sum(s.skipped.values())}"
            ),
        )
        self._last_sent, self._last_time = s.sent, now
        if self.timer:
            self._handle = asyncio.get_running_loop().call_later(0.5, self.tick)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self.timer = False
        self.tick()
        self.progress.stop()


def print_summary(
    cfg: ReplayConfig, s: ReplaySummary, per_worker: Sequence[dict[str, Any]] = ()
) -> None:
    """The summary table on stderr (and the JSON object on stdout under ``--json``); with
    ``--workers``, a row per worker (requests sent, lag) and ``workers`` in the JSON."""
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
    if s.elapsed > 0:
        rows.append(("client CPU", f"{s.cpu:.2f} s ({100 * s.cpu / s.elapsed:.0f}% of elapsed)"))
    lag = s.lag_percentiles()
    if lag is not None:
        rows.append(("lag p50 / p99 / max", f"{lag[0]:.3f} / {lag[1]:.3f} / {lag[2]:.3f} ms"))
    for w in per_worker:
        text = f"{w['sent']} sent, CPU {w['cpu_s']:.2f} s"
        if w["lag_ms"] is not None:
            p50, p99, mx = w["lag_ms"]["p50"], w["lag_ms"]["p99"], w["lag_ms"]["max"]
            text += f", lag p50 / p99 / max {p50:.3f} / {p99:.3f} / {mx:.3f} ms"
        rows.append((f"worker {w['worker']}", text))
    if s.interrupted:
        rows.append(("interrupted", "yes (results of the requests answered are written)"))
    if cfg.output:
        rows.append(("results", cfg.output))
    console.table("replay summary", ("what", "value"), rows, to_stderr=True)
    if cfg.json_summary:
        import orjson

        sys.stdout.buffer.write(
            orjson.dumps(
                {
                    "target": cfg.policy.target.url,
                    **s.to_json(),
                    **({"workers": list(per_worker)} if per_worker else {}),
                }
            )
            + b"\n"
        )
        sys.stdout.flush()
