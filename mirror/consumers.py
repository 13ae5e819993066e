"""The mirror's consumers: what happens to each exchange, result and pair, as small hook objects.

mitmproxy's addons are the model: a consumer is any object that implements only the hooks it
needs, and the mirror calls them in the order the consumers were registered. A new sink (a
Parquet file, a broker) is one class added to the list ``MirrorRun`` builds (``consumers``):

    class PrintSlow:
        def on_pair(self, pair: Pair) -> None:
            if (pair.result.total_ms or 0) > 100:
                print(pair.exchange.id)

The hooks (docs/mirror.md, "Consumers"):
- ``start()``: once, in the event loop, before the first record (may be a coroutine);
- ``on_seen(exchange, admitted)``: every exchange the capture rebuilt; ``admitted`` says whether
  its request went to the shadow (a result is coming);
- ``on_exchange(exchange)``: an exchange whose request went to the shadow (the ones sinks keep);
- ``on_result(result)``: every shadow result;
- ``on_pair(pair)``: an admitted exchange with its shadow result (``Pairing`` makes them);
- ``tick(now)``: about once a second (``now``: time.monotonic());
- ``close()``: once at the end, after the last record, in the order of registration (Pairing
  evicts what never paired before the display shows its last frame); may be a coroutine.

Records reach the hooks already redacted (unless ``--keep-secrets``): a consumer may write them.
Hooks run on the event loop, one record at a time: a hook must not block (a slow sink batches,
or hands its work to a thread) and costs every mirrored request what it spends. Exceptions go up
to the caller (the pump counts them as failures); a consumer whose failure must not stop the
others catches its own (``LiveComparison`` does).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from shadowtap import console
from shadowtap.jsonl import JsonlWriter
from shadowtap.mirror import comparison as mirror_compare
from shadowtap.mirror.pairing import Pair, Pairer, body_size
from shadowtap.mirror.stats import Histogram
from shadowtap.records import Exchange, Result
from shadowtap.redact import Redactor

# Pairs the live comparison gathers before one hand-over to its thread, and the run directory's
# bytes of lines before one write (and at every tick whatever is there): per-pair fixed costs (a
# thread wake-up, a write call) paid once a batch.
BATCH_PAIRS = 256
MAX_BATCH_BYTES = 16 << 20  # bodies of the pairs waiting for the hand-over, at most
BATCH_BYTES = 256 << 10  # the run directory's lines gathered before one write per file
_dumps, _NEWLINE = orjson.dumps, orjson.OPT_APPEND_NEWLINE

HOOKS = ("start", "on_seen", "on_exchange", "on_result", "on_pair", "tick", "close")
View = tuple[str | None, float | None, list[tuple[str, int, float]]]


class Consumers:
    """The registered consumers and, per hook, the bound methods that implement it (looked up
    once: a dispatch costs one call per implementing consumer, nothing for the others).

    A public method whose name starts with ``on_`` and is not a hook is refused at registration
    (a misspelt hook would otherwise never be called)."""

    def __init__(self, consumers: list[Any], redactor: Redactor | None = None) -> None:
        self.consumers = list(consumers)
        self.redactor = redactor
        for c in self.consumers:
            for name in dir(c):
                if name.startswith("on_") and name not in HOOKS:
                    raise TypeError(
                        f"{type(c).__name__}.{name} is not a mirror hook ({', '.join(HOOKS)})"
                    )
        self._hooks: dict[str, list[Callable[..., Any]]] = {
            h: [getattr(c, h) for c in self.consumers if callable(getattr(c, h, None))]
            for h in HOOKS
        }
        self._seen = self._hooks["on_seen"]
        self._exchange = self._hooks["on_exchange"]
        self._result = self._hooks["on_result"]
        self._pair = self._hooks["on_pair"]
        self._tick = self._hooks["tick"]

    def __iter__(self) -> Any:
        return iter(self.consumers)

    def find(self, kind: type) -> Any:
        """The first consumer of class ``kind``, or None."""
        return next((c for c in self.consumers if isinstance(c, kind)), None)

    async def start(self) -> None:
        for hook in self._hooks["start"]:
            await _maybe_await(hook())

    def exchange(self, ex: Exchange, admitted: bool) -> None:
        if self.redactor is not None:
            ex = self.redactor.exchange(ex)
        for hook in self._seen:
            hook(ex, admitted)
        if admitted:
            for hook in self._exchange:
                hook(ex)

    def result(self, res: Result) -> None:
        if self.redactor is not None and res.response is not None:
            redacted = self.redactor.message(res.response)
            if redacted is not res.response:  # the same object when no secret header is there
                res = dataclasses.replace(res, response=redacted)  # type: ignore[arg-type]
        for hook in self._result:
            hook(res)

    def pair(self, pair: Pair) -> None:
        for hook in self._pair:
            hook(pair)

    def tick(self, now: float) -> None:
        for hook in self._tick:
            hook(now)

    async def close(self) -> list[str]:
        """Every ``close`` hook, in order, each even when one before it failed; returns what
        failed (for the run's notes: the other outputs are closed all the same)."""
        failures = []
        for hook in self._hooks["close"]:
            try:
                await _maybe_await(hook())
            except Exception as exc:  # noqa: BLE001 - the others still close
                owner = type(getattr(hook, "__self__", hook)).__name__
                failures.append(f"closing {owner} failed: {type(exc).__name__}: {exc}")
        return failures


async def _maybe_await(value: Any) -> None:
    if inspect.isawaitable(value):
        await value


# ------------------------------------------------------------------------------------ consumers
@dataclass(slots=True)
class Counters:
    """The event loop's figures: exchanges, results, 5xx on both sides, shadow errors by kind,
    mirror lag and both sides' latency (histograms: O(1) a record, fixed memory)."""

    started: float = field(default_factory=time.monotonic)
    exchanges: int = 0
    results: int = 0
    primary_5xx: int = 0
    shadow_5xx: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    lag: Histogram = field(default_factory=Histogram)
    primary_latency: Histogram = field(default_factory=Histogram)
    shadow_latency: Histogram = field(default_factory=Histogram)

    def on_seen(self, ex: Exchange, admitted: bool) -> None:
        self.exchanges += 1
        resp = ex.response
        if resp is not None:
            if resp.status >= 500:
                self.primary_5xx += 1
            if ex.total_ms is not None:
                self.primary_latency.observe(ex.total_ms / 1000)

    def on_result(self, res: Result) -> None:
        self.results += 1
        self.lag.observe(max(0.0, res.sent - res.scheduled))
        if res.error is not None:
            self.errors[res.error.kind] += 1
        elif res.response is not None:
            if res.response.status >= 500:
                self.shadow_5xx += 1
            if res.total_ms is not None:
                self.shadow_latency.observe(res.total_ms / 1000)


class Pairing:
    """The shadow's Result with the primary's admitted Exchange, whichever comes first
    (mirror/pairing.py's Pairer, bounded); each pair goes to ``emit`` (``Consumers.pair``).
    Entries past their ttl are evicted on ``tick``, all that is left at ``close`` (counted)."""

    def __init__(self, pairer: Pairer, emit: Callable[[Pair], None]) -> None:
        self.pairer = pairer
        self.emit = emit

    def on_exchange(self, ex: Exchange) -> None:
        pair = self.pairer.add_exchange(ex, time.monotonic())
        if pair is not None:
            self.emit(pair)

    def on_result(self, res: Result) -> None:
        pair = self.pairer.add_result(res, time.monotonic())
        if pair is not None:
            self.emit(pair)

    def tick(self, now: float) -> None:
        self.pairer.expire(now)

    def close(self) -> None:
        for _ in self.pairer.flush():
            pass  # counted by the Pairer as evicted


class RunDirectory:
    """``exchanges.jsonl`` and ``results.jsonl`` of the pairs, in pairing order (0600). Each pair's
    lines are made at once and written BATCH_BYTES at a time and at every tick (one write call a
    file a batch, not one a line; JsonlWriter flushes at least every second), so a crash loses at
    most the last second's pairs, as before."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.exchanges: JsonlWriter | None = None
        self.results: JsonlWriter | None = None
        self._lines: tuple[list[bytes], list[bytes]] = ([], [])
        self._bytes = 0

    def start(self) -> None:
        self.exchanges = JsonlWriter(os.path.join(self.directory, "exchanges.jsonl"))
        self.results = JsonlWriter(os.path.join(self.directory, "results.jsonl"))

    def on_pair(self, pair: Pair) -> None:
        if self.exchanges is not None:
            ex = _dumps(pair.exchange.to_json(), option=_NEWLINE)
            res = _dumps(pair.result.to_json(), option=_NEWLINE)
            self._lines[0].append(ex)
            self._lines[1].append(res)
            self._bytes += len(ex) + len(res)
            if self._bytes >= BATCH_BYTES:
                self._write()

    def tick(self, _now: float) -> None:
        self._write()

    def _write(self) -> None:
        (exs, ress), self._lines, self._bytes = self._lines, ([], []), 0
        if exs and self.exchanges is not None and self.results is not None:
            self.exchanges.write_lines(exs)
            self.results.write_lines(ress)

    def close(self) -> None:
        self._write()
        for w in (self.exchanges, self.results):
            if w is not None:
                w.close()


class LiveComparison:
    """compare's streaming Comparison fed with every pair (through mirror/comparison.py); ``view``
    is its verdict so far. From ``start`` (in the event loop, after the capture's fork) the pairs
    are compared on a thread of their own (``mirror_compare.Worker``), handed over in batches of
    ``BATCH_PAIRS`` or at each tick, whichever comes first (one wake-up of the thread a batch;
    at most a second's pairs, and at most BATCH_PAIRS, wait on the loop): the loop stamps the
    shadow's answers as it reads them, and a comparison on it (~50 ms per chat answer, a snapshot
    ~0.4 s with a few hundred pairs) delayed those stamps (the demo's shadow measured ~60x slower
    than it was). ``close`` compares every pair given before it returns. Before ``start``, and
    after ``close``, the comparison is used in place. A comparison failure is noted, never
    raised."""

    def __init__(self, comparison: Any, note: Callable[[str], None]) -> None:
        self.comparison = comparison
        self.note = note
        self.worker: mirror_compare.Worker | None = None
        self._batch: list[tuple[Exchange, Result]] = []  # pairs not yet handed to the worker
        self._batch_bytes = 0  # their bodies
        self._view: View = (None, None, [])
        self._view_at = -1e9

    def tick(self, _now: float) -> None:
        self._hand_over()

    def _hand_over(self) -> None:
        if self.worker is not None and self._batch:
            self.worker.add_batch(self._batch)
            self._batch = []
            self._batch_bytes = 0

    def start(self) -> None:
        self.worker = mirror_compare.Worker(self.comparison)  # a thread: never before the fork

    def on_pair(self, pair: Pair) -> None:
        if self.worker is not None:
            batch = self._batch
            batch.append((pair.exchange, pair.result))
            self._batch_bytes += body_size(pair.exchange) + body_size(pair.result)
            if len(batch) >= BATCH_PAIRS or self._batch_bytes >= MAX_BATCH_BYTES:
                self._hand_over()
            return
        try:
            mirror_compare.add(self.comparison, pair.exchange, pair.result)
        except Exception as exc:  # noqa: BLE001 - a comparison bug must not stop the mirror
            self.note(f"comparison failed on {pair.exchange.id}: {type(exc).__name__}: {exc}")

    def view(self) -> View:
        if self.worker is not None:
            self._notes()
            return self.worker.view()  # the thread's last view: never waits
        now = time.monotonic()
        if now - self._view_at >= 1.0:
            self._view_at = now
            try:
                self._view = mirror_compare.view(mirror_compare.snapshot(self.comparison))
            except Exception as exc:  # noqa: BLE001
                self.note(f"comparison snapshot failed: {type(exc).__name__}: {exc}")
        return self._view

    def close(self) -> None:
        """Every pair given compared (joins the thread); the comparison is the caller's again."""
        if self.worker is not None:
            self._hand_over()
            self.worker.close()
            self._notes()
            self._view = self.worker.view()
            self.worker = None

    def _notes(self) -> None:
        assert self.worker is not None
        while self.worker.errors:
            self.note(self.worker.errors.pop(0))


class Display:
    """What a person watching sees: the rich dashboard on a terminal (refreshed every tick), else
    one log line every ``log_interval`` seconds, both of the current ``snapshot()``."""

    def __init__(
        self, snapshot: Callable[[], Any], *, dashboard: bool, log_interval: float
    ) -> None:
        self.snapshot = snapshot
        self.dashboard = dashboard
        self.log_interval = log_interval
        self._live: Any = None
        self._last_log = time.monotonic()

    def start(self) -> None:
        if self.dashboard:
            from rich.live import Live

            from shadowtap.mirror.stats import dashboard

            self._live = Live(
                dashboard(self.snapshot()),
                console=console.err,
                refresh_per_second=2,
                transient=False,
            )
            self._live.start()

    def tick(self, now: float) -> None:
        from shadowtap.mirror.stats import dashboard, log_line

        if self._live is not None:
            self._live.update(dashboard(self.snapshot()))
        elif now - self._last_log >= self.log_interval:
            self._last_log = now
            console.info(log_line(self.snapshot()))

    def close(self) -> None:
        from shadowtap.mirror.stats import dashboard

        if self._live is not None:
            self._live.update(dashboard(self.snapshot()))
            self._live.stop()
            if not console.err.is_terminal:
                console.info("")  # the last frame ends without a newline off a terminal


class MetricsServer:
    """Prometheus text of the current snapshot at ``/metrics`` (and ``/``), served by the event
    loop (aiohttp). ``start`` raises ``OSError`` when the address cannot be bound."""

    def __init__(self, host: str, port: int, snapshot: Callable[[], Any]) -> None:
        self.host = host
        self.port = port
        self.snapshot = snapshot
        self.address: tuple[Any, ...] | None = None
        self._runner: Any = None

    async def start(self) -> None:
        from aiohttp import web

        from shadowtap.mirror.stats import prometheus_text

        async def metrics(_request: web.Request) -> web.Response:
            return web.Response(
                text=prometheus_text(self.snapshot()),
                content_type="text/plain",
                charset="utf-8",
                headers={"X-Content-Type-Options": "nosniff"},
            )

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/", metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        addrs = [s.getsockname() for s in (site._server.sockets if site._server else ())]  # type: ignore[union-attr,attr-defined]
        self.address = addrs[0] if addrs else None

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
