"""Pairing the shadow's Result with the primary's Exchange in a live mirror, whichever comes first.

The request reaches the shadow before the primary has answered, so either side can arrive first:
the shadow's Result (a fast shadow) or the Exchange rebuilt from the wire (a slow shadow). The
Pairer holds the first of the two until the second comes, then emits the pair.

Bounded: at most ``capacity`` unpaired entries holding at most ``max_bytes`` of bodies; an entry
older than ``ttl`` seconds (or the oldest, when full) is evicted and counted (``evicted_exchanges``,
``evicted_results``). Pure: no I/O, the
caller passes the time. Operations are O(1) amortised (an insertion-ordered dict; eviction pops from
the old end).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from shadowtap.frozen import fast_init
from shadowtap.records import Exchange, Result


@fast_init
@dataclass(frozen=True, slots=True)
class Pair:
    exchange: Exchange
    result: Result


def body_size(rec: Exchange | Result) -> int:
    """Bytes of bodies a record holds (the rest is small and bounded by the headers' limits)."""
    if isinstance(rec, Exchange):
        return (len(rec.request.body) if rec.request is not None else 0) + (
            len(rec.response.body) if rec.response is not None else 0
        )
    return len(rec.response.body) if rec.response is not None else 0


class Pairer:
    def __init__(
        self, *, capacity: int = 100_000, ttl: float = 60.0, max_bytes: int = 256 << 20
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self.ttl = ttl
        self.max_bytes = max_bytes
        self.bytes = 0  # bodies held
        # id -> (arrival time, Exchange or Result, its body_size); insertion order is arrival
        # order. The size is kept so that taking an entry out costs no second look at its bodies.
        self._waiting: OrderedDict[str, tuple[float, Exchange | Result, int]] = OrderedDict()
        self.paired = 0
        self.evicted_exchanges = 0  # exchange waited for a result that never came
        self.evicted_results = 0  # result waited for an exchange that never came

    def __len__(self) -> int:
        return len(self._waiting)

    def add_exchange(self, ex: Exchange, now: float) -> Pair | None:
        """An exchange whose request was sent (or is queued) to the shadow."""
        other = self._waiting.pop(ex.id, None)
        if other is not None:
            self.bytes -= other[2]
            if isinstance(other[1], Result):
                self.paired += 1
                return Pair(ex, other[1])
        self._hold(ex.id, ex, now)
        return None

    def add_result(self, res: Result, now: float) -> Pair | None:
        other = self._waiting.pop(res.exchange_id, None)
        if other is not None:
            self.bytes -= other[2]
            if isinstance(other[1], Exchange):
                self.paired += 1
                return Pair(other[1], res)
        self._hold(res.exchange_id, res, now)
        return None

    def _hold(self, key: str, rec: Exchange | Result, now: float) -> None:
        size = body_size(rec)
        self._waiting[key] = (now, rec, size)
        self.bytes += size
        while len(self._waiting) > 1 and (
            len(self._waiting) > self.capacity or self.bytes > self.max_bytes
        ):
            self._evict_oldest()

    def _evict_oldest(self) -> Exchange | Result:
        _, (_, rec, size) = self._waiting.popitem(last=False)
        self.bytes -= size
        if isinstance(rec, Exchange):
            self.evicted_exchanges += 1
        else:
            self.evicted_results += 1
        return rec

    def expire(self, now: float) -> list[Exchange | Result]:
        """Evict entries older than ``ttl``; returns them (oldest first)."""
        out: list[Exchange | Result] = []
        while self._waiting:
            t = next(iter(self._waiting.values()))[0]
            if now - t <= self.ttl:
                break
            out.append(self._evict_oldest())
        return out

    def flush(self) -> Iterator[Exchange | Result]:
        """Evict everything still waiting (end of the run)."""
        while self._waiting:
            yield self._evict_oldest()
