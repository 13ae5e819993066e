"""The live mirror's sender side: replay's sender fed live from the capture.

Data path (mirror/run.py wires it):

    capture process                          |  mirror process (event loop)
    on_request(RequestEvent)                 |
      -> Admission.offer(): policy, sampling, |
         rate limit -> frame over the pipe ---> DropOldestQueue.put() -> Pump -> Sender.submit()
                                             |                 Result <- on_result

Invariants:
- Nothing waits on the shadow upstream of the queue: ``put`` is O(1) and never blocks; when the
  queue is full the *oldest* pending request is dropped (the one most likely to be stale by the
  time it could be sent) and counted.
- Memory is bounded: the queue holds at most ``maxlen`` items; at most ``concurrency`` requests are
  in flight; ``Admission`` remembers at most ``max_admitted`` ids awaiting their exchange.
- A request is offered the moment the Extractor has it complete on the wire (``on_request``), not
  after the primary answered. ``Result.scheduled`` is that wire time (the request's last byte), so
  ``Result.lag_ms`` is the mirror lag: wire to shadow.
- The pump is callback-driven (no task per request or per worker): a request goes out in the same
  loop iteration that received it when a slot is free, and each result frees its slot at once.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from shadowtap.frozen import fast_init

T = TypeVar("T")


class DropOldestQueue(Generic[T]):
    """A bounded FIFO: ``put`` never blocks; at capacity (``maxlen`` items, or ``max_bytes`` by
    ``size(item)`` when given) it drops the oldest items, counts them and returns them. O(1)
    amortised per operation. Single-threaded (the mirror's event loop)."""

    def __init__(
        self, maxlen: int, *, max_bytes: int | None = None, size: Callable[[T], int] | None = None
    ) -> None:
        if maxlen < 1:
            raise ValueError("queue length must be >= 1")
        self.maxlen = maxlen
        self.max_bytes = max_bytes if size is not None else None
        self._size = size
        self.bytes = 0
        self.dropped = 0  # items pushed out by newer ones
        self.put_count = 0
        self._items: deque[T] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> list[T]:
        """Append ``item``; returns the items dropped to make room (oldest first). The newest item
        is always kept, even alone over ``max_bytes``."""
        dropped: list[T] = []
        self._items.append(item)
        self.put_count += 1
        if self._size is not None:
            self.bytes += self._size(item)
        while len(self._items) > 1 and (
            len(self._items) > self.maxlen
            or (self.max_bytes is not None and self.bytes > self.max_bytes)
        ):
            old = self._items.popleft()
            dropped.append(old)
            self.dropped += 1
            if self._size is not None:
                self.bytes -= self._size(old)
        return dropped

    def pop(self) -> T | None:
        """The oldest item, or None when empty."""
        if not self._items:
            return None
        item = self._items.popleft()
        if self._size is not None:
            self.bytes -= self._size(item)
        return item

    def clear(self) -> int:
        n = len(self._items)
        self._items.clear()
        self.bytes = 0
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


@fast_init
@dataclass(frozen=True, slots=True)
class Pending:
    """One request waiting for a worker. ``outgoing`` is whatever the policy prepared (opaque here:
    the sender knows it); ``wire_ts`` the request's last byte on the wire (epoch seconds). What
    crosses the pipe for every request: no field that the mirror's process does not read."""

    exchange_id: str
    outgoing: Any
    wire_ts: float


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
        self.queue = queue  # anything with DropOldestQueue's put(item) -> dropped items
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
        if self._bucket is not None and not self._bucket.take(self._clock()):
            self.counts[Outcome.RATE_LIMITED] += 1
            return Outcome.RATE_LIMITED
        item = Pending(event.exchange_id, outgoing, event.request.end_ts)
        self._admitted[event.exchange_id] = None
        if len(self._admitted) > self._max_admitted:
            self._admitted.popitem(last=False)
        for old in self.queue.put(item):
            self._admitted.pop(old.exchange_id, None)
        self.counts[Outcome.QUEUED] += 1
        return Outcome.QUEUED

    def take_admitted(self, exchange_id: str) -> bool:
        """True once for an id that was queued and not dropped before its exchange arrived."""
        try:
            del self._admitted[exchange_id]
        except KeyError:
            return False
        return True


# submit(item, on_done): send ``item`` and call ``on_done(result)`` once it is done; never raises
# for a target failure (errors are Results) and never blocks (replay/client.py's Sender.submit).
Submit = Callable[[Pending, Callable[[Any], None]], None]


class Pump:
    """Takes Pending items off the queue and submits them, at most ``concurrency`` in flight.
    Each result goes to ``on_result``. Loop thread only; O(1) per request."""

    def __init__(
        self,
        queue: DropOldestQueue[Pending],
        submit: Submit,
        on_result: Callable[[Any], None],
        *,
        concurrency: int,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.queue = queue
        self._submit = submit
        self._on_result = on_result
        self.concurrency = concurrency
        self.in_flight = 0
        self.sent = 0
        self.failures = (
            0  # submit or on_result raised (a bug, not a target error): counted, goes on
        )
        self.last_failure: str | None = None
        self.abandoned = 0  # queued or in flight when the pump was stopped
        self.closed = False
        self._idle: asyncio.Event | None = None

    def offer(self, item: Pending) -> list[Pending]:
        """Queue ``item`` (dropping the oldest when full: returned) and send what slots allow."""
        dropped = self.queue.put(item)
        self._fill()
        return dropped

    def _fill(self) -> None:
        while self.in_flight < self.concurrency and not self.closed:
            item = self.queue.pop()
            if item is None:
                break
            self.in_flight += 1
            try:
                self._submit(item, self._done)
            except Exception as exc:  # noqa: BLE001 - one bad request must not stop the mirror
                self.in_flight -= 1
                self._failed(exc)
        if self._idle is not None and self.in_flight == 0 and not len(self.queue):
            self._idle.set()

    def _done(self, result: Any) -> None:
        if self.closed:
            return  # abandoned: already counted
        self.in_flight -= 1
        self.sent += 1
        try:
            self._on_result(result)
        except Exception as exc:  # noqa: BLE001
            self._failed(exc)
        self._fill()

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        self.last_failure = f"{type(exc).__name__}: {exc}"

    async def drain(self, timeout: float) -> bool:
        """Let what is queued and in flight finish for at most ``timeout`` seconds, then stop
        (``abandoned`` counts what was left). True when everything finished in time."""
        self._idle = asyncio.Event()
        self._fill()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        done = self.in_flight == 0 and not len(self.queue)
        self.stop()
        return done

    def stop(self) -> int:
        """Stop now: what is queued or in flight is abandoned (counted; late results ignored)."""
        if self.closed:
            return 0
        n = self.queue.clear() + self.in_flight
        self.abandoned += n
        self.in_flight = 0
        self.closed = True
        return n


MAX_QUEUE_BYTES = 256 << 20  # requests waiting for the shadow, at most, whatever --queue says


class ShadowFeed:
    """The mirror process's sending half: the bounded drop-oldest queue (``queue`` requests,
    MAX_QUEUE_BYTES), the Pump and replay's Sender (a pool of keep-alive connections to the
    shadow). Each Result goes to ``on_result``. It also remembers (at most 100,000) the ids it
    dropped, so an exchange whose request was dropped here is not held for a result that will
    never come (``still_admitted``)."""

    def __init__(
        self,
        target: Any,
        on_result: Callable[[Any], None],
        *,
        queue: int,
        concurrency: int,
        timeout: float,
        connect_timeout: float,
        max_body: int,
        on_connect: Callable[[Any], None] | None = None,
        tls: Any = None,
    ) -> None:
        from shadowtap.replay.client import Sender
        from shadowtap.replay.grpc_client import Router

        http = Sender(
            target,
            concurrency=concurrency,
            per_connection=False,
            timeout=timeout,
            connect_timeout=connect_timeout,
            max_body=max_body,
            on_connect=on_connect,  # each connection, before a byte is sent (mirror/run.py)
            tls=tls,  # an https shadow: replay/client.py's TlsOptions
        )
        # gRPC calls to grpcio, other HTTP/2 requests to h2, the rest to the HTTP/1.x sender
        # (replay/grpc_client.py's Router: one set of bounds and TLS options for the three).
        self.sender = Router(http)
        # Bounded in count (--queue) and in bytes: a request's body may be up to --max-body.
        self.queue: DropOldestQueue[Pending] = DropOldestQueue(
            queue, max_bytes=MAX_QUEUE_BYTES, size=lambda p: len(p.outgoing.wire)
        )
        submit_one = self.sender.submit

        def submit(item: Pending, on_done: Callable[[Any], None]) -> None:
            submit_one(item.outgoing, scheduled=item.wire_ts, copy=0, on_result=on_done)

        self.pump = Pump(self.queue, submit, on_result, concurrency=concurrency)
        self._dropped: OrderedDict[str, None] = OrderedDict()

    async def start(self) -> None:
        await self.sender.start()

    async def check(self, note: Callable[[str], None]) -> None:
        """Whether the shadow answers; a shadow that is down is a shadow result (errors, counted),
        not a reason to stop: noted. A shadow refused as the primary stops the run elsewhere
        (the ``on_connect`` check)."""
        from shadowtap.errors import TargetError
        from shadowtap.replay.policy import ReplayRefused

        try:
            await self.sender.check_reachable()
        except ReplayRefused:
            pass
        except TargetError as exc:
            note(f"{exc.message}; going on: its failures count as shadow errors")

    def offer(self, item: Pending) -> None:
        dropped = self._dropped
        for old in self.pump.offer(item):
            dropped[old.exchange_id] = None
            if len(dropped) > 100_000:
                dropped.popitem(last=False)

    def still_admitted(self, exchange_id: str, admitted: bool) -> bool:
        """``admitted`` (the capture's word), unless this process dropped the request since."""
        if admitted and self._dropped:
            return self._dropped.pop(exchange_id, 0) is not None
        return admitted

    async def drain(self, timeout: float, abort: asyncio.Event) -> None:
        """What is queued and in flight gets ``timeout`` seconds, or until ``abort`` is set."""
        draining = asyncio.ensure_future(self.pump.drain(timeout))
        aborting = asyncio.ensure_future(abort.wait())
        await asyncio.wait([draining, aborting], return_when=asyncio.FIRST_COMPLETED)
        aborting.cancel()
        if not draining.done():
            self.pump.stop()
            await draining

    async def close(self) -> None:
        self.sender.close()
        await self.sender.aclose()
        self.pump.stop()
