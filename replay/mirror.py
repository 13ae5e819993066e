"""The live mirror's sender side: replay's sender fed live from the capture.

Data path and who runs it:

    capture thread                     |  event loop thread
    on_request(RequestEvent)           |
      -> Admission.offer()             |
         policy / sampling / rate limit|
         -> DropOldestQueue.put() ------> N workers: get() -> send to the shadow -> on_result(Result)

Invariants:
- The capture side never blocks and never waits on the shadow: ``put`` is O(1) under a lock held
  for a few instructions; when the queue is full the *oldest* pending request is dropped (it is the
  one most likely to be stale by the time it could be sent) and counted.
- Memory is bounded: the queue holds at most ``maxlen`` items; at most ``concurrency`` requests are
  in flight; ``Admission`` remembers at most ``max_admitted`` ids awaiting their exchange.
- A request is offered the moment the Extractor has it complete on the wire (``on_request``), not
  after the primary answered. ``Result.scheduled`` is that wire time (the request's last byte), so
  ``Result.lag_ms`` is the mirror lag: wire to shadow.
"""

from __future__ import annotations

import asyncio
import enum
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class DropOldestQueue(Generic[T]):
    """A bounded FIFO between a producer thread and consumers in an asyncio loop.

    ``put`` (any thread) never blocks: at capacity it drops the oldest item and counts it.
    ``get`` (loop thread only) waits for an item. Wake-ups cross threads through
    ``loop.call_soon_threadsafe`` at most once per burst (``_wake_pending``), not once per item.
    """

    def __init__(self, maxlen: int, loop: asyncio.AbstractEventLoop) -> None:
        if maxlen < 1:
            raise ValueError("queue length must be >= 1")
        self.maxlen = maxlen
        self.dropped = 0  # items pushed out by newer ones
        self.put_count = 0
        self._items: deque[T] = deque()
        self._lock = threading.Lock()
        self._loop = loop
        self._wake_pending = False
        self._getters: deque[asyncio.Future[None]] = deque()  # loop thread only
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> T | None:
        """Append ``item``; returns the item dropped to make room, if any."""
        dropped = None
        with self._lock:
            if self._closed:
                return item
            if len(self._items) >= self.maxlen:
                dropped = self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self.put_count += 1
            wake = not self._wake_pending
            self._wake_pending = True
        if wake:
            try:
                self._loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # loop closed: nobody left to wake
                pass
        return dropped

    def _wake(self) -> None:
        with self._lock:
            self._wake_pending = False
            n = len(self._items) if not self._closed else len(self._getters)
        while n > 0 and self._getters:
            fut = self._getters.popleft()
            if not fut.done():
                fut.set_result(None)
                n -= 1

    def get_nowait(self) -> T | None:
        with self._lock:
            return self._items.popleft() if self._items else None

    async def get(self) -> T | None:
        """The oldest item; None once the queue is closed and empty."""
        while True:
            with self._lock:
                if self._items:
                    return self._items.popleft()
                if self._closed:
                    return None
            fut = self._loop.create_future()
            self._getters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut in self._getters:
                    self._getters.remove(fut)
                raise

    def close(self, *, discard: bool = False) -> int:
        """No more puts; getters drain what is left (or nothing, with ``discard``) and then get
        None. Returns how many items were discarded. Loop thread only."""
        with self._lock:
            self._closed = True
            n = len(self._items) if discard else 0
            if discard:
                self._items.clear()
        for fut in self._getters:
            if not fut.done():
                fut.set_result(None)
        self._getters.clear()
        return n


class TokenBucket:
    """``rate`` tokens a second, bursts up to ``burst``. Pure: time is passed in. O(1)."""

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate / 10)  # 100 ms worth
        self._tokens = self.burst
        self._last: float | None = None

    def take(self, now: float) -> bool:
        if self._last is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class Outcome(enum.Enum):
    """What admission did with one request seen on the wire."""

    QUEUED = "queued"
    SKIPPED = "skipped"  # the policy said no (unsafe method, filter, ...)
    SAMPLED_OUT = "sampled_out"  # --percent
    RATE_LIMITED = "rate_limited"  # --rate-limit: dropped, not delayed
    OWN_TRAFFIC = "own_traffic"  # a request to the shadow itself, seen on the captured interface


@dataclass(frozen=True, slots=True)
class Pending:
    """One request waiting for a worker. ``outgoing`` is whatever the policy prepared (opaque here:
    the sender knows it); ``wire_ts`` the request's last byte on the wire (epoch seconds)."""

    exchange_id: str
    outgoing: Any
    wire_ts: float
    admitted: float  # wall clock when queued


# decide(event) -> (outgoing, None) to send, or (None, (Outcome, reason)) to skip. Runs in the
# capture thread, so it must be cheap and must not block.
Decide = Callable[[Any], "tuple[Any, tuple[Outcome, str] | None]"]


class Admission:
    """The capture-thread side: turns each RequestEvent into a queued Pending or a counted skip,
    and remembers which ids were queued so the exchange written later can say whether a shadow
    result is coming (``take_admitted``). Single-threaded: only the capture thread calls it."""

    def __init__(
        self,
        queue: DropOldestQueue[Pending],
        decide: Decide,
        *,
        rate_limit: TokenBucket | None = None,
        max_admitted: int = 200_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.queue = queue
        self._decide = decide
        self._bucket = rate_limit
        self._clock = clock
        self._max_admitted = max_admitted
        self._admitted: OrderedDict[str, None] = OrderedDict()
        self.seen = 0
        self.counts: dict[Outcome, int] = {o: 0 for o in Outcome}
        self.skip_reasons: dict[str, int] = {}

    def offer(self, event: Any) -> Outcome:
        """``event`` is a capture RequestEvent (exchange_id, request, ...)."""
        self.seen += 1
        outgoing, skip = self._decide(event)
        if skip is not None:
            outcome, reason = skip
            self.counts[outcome] += 1
            if outcome is Outcome.SKIPPED:
                self.skip_reasons[reason] = self.skip_reasons.get(reason, 0) + 1
            return outcome
        now = self._clock()
        if self._bucket is not None and not self._bucket.take(now):
            self.counts[Outcome.RATE_LIMITED] += 1
            return Outcome.RATE_LIMITED
        req = event.request
        item = Pending(event.exchange_id, outgoing, req.end_ts, now)
        self._admitted[event.exchange_id] = None
        if len(self._admitted) > self._max_admitted:
            self._admitted.popitem(last=False)
        dropped = self.queue.put(item)
        if dropped is not None:
            self._admitted.pop(dropped.exchange_id, None)
        self.counts[Outcome.QUEUED] += 1
        return Outcome.QUEUED

    def take_admitted(self, exchange_id: str) -> bool:
        """True once for an id that was queued and not dropped before its exchange arrived."""
        try:
            del self._admitted[exchange_id]
        except KeyError:
            return False
        return True


# send(outgoing, scheduled) -> Result. Must never raise for a target failure: errors are Results.
Send = Callable[[Any, float], Awaitable[Any]]


class Workers:
    """``concurrency`` tasks that take Pending items off the queue and send them. Each result goes
    to ``on_result`` (loop thread). In flight: at most ``concurrency`` requests."""

    def __init__(
        self,
        queue: DropOldestQueue[Pending],
        send: Send,
        on_result: Callable[[Any], None],
        *,
        concurrency: int,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.queue = queue
        self._send = send
        self._on_result = on_result
        self.concurrency = concurrency
        self.in_flight = 0
        self.sent = 0
        self.failures = 0  # sender raised (a bug, not a target error): counted, the worker goes on
        self.last_failure: str | None = None
        self.abandoned = 0  # queued or in flight when the workers were stopped
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.ensure_future(self._run()) for _ in range(self.concurrency)]

    async def _run(self) -> None:
        while True:
            item = await self.queue.get()
            if item is None:
                return
            self.in_flight += 1
            try:
                result = await self._send(item.outgoing, item.wire_ts)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - one bad request must not stop the mirror
                self.failures += 1
                self.last_failure = f"{type(exc).__name__}: {exc}"
                continue
            finally:
                self.in_flight -= 1
            self.sent += 1
            self._on_result(result)

    async def drain(self, timeout: float) -> bool:
        """Close the queue, let the workers finish what is queued and in flight for at most
        ``timeout`` seconds, then give up on the rest (``abandoned`` counts it). True when
        everything finished in time."""
        self.queue.close()
        if not self._tasks:
            return True
        _done, pending = await asyncio.wait(self._tasks, timeout=timeout)
        if not pending:
            return True
        await self.stop()
        return False

    async def stop(self) -> int:
        """Stop now: discard what is queued, cancel what is in flight. Returns how many requests
        were abandoned that way (also added to ``abandoned``)."""
        n = self.queue.close(discard=True) + self.in_flight
        self.abandoned += n
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        return n
