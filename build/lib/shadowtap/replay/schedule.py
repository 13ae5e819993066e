"""When each request is sent: a pure function from captured timestamps to offsets from the start.

Recorded timing at ``--speed k``: copy ``i`` is due at ``(t_i - t_0) / k`` seconds after the start.
Offsets are anchored to the start (never to the previous send), so a late send does not push the
ones after it: scheduling error does not accumulate over a long run. ``--rate r`` ignores the
recorded timing and spaces slots ``1/r`` apart (again anchored: slot ``n`` at ``n / r``).
``--speed max`` has no timing at all: offsets are ``None`` and the runner sends as fast as the
target and ``--concurrency`` allow.

``--amplify N`` sends each exchange N times (the copies share the exchange's offset under recorded
timing, each takes its own slot under ``--rate``); ``--loop N`` replays the whole input N times
(0: until ``--duration``), each pass shifted by the previous passes' span plus one mean
inter-arrival gap, so passes do not overlap. ``--duration S`` ends the schedule at offset S.

No I/O: the input is an iterable (a factory of iterables for looping) of anything with a ``ts``
(an Exchange, or the runner's planned request) and the output an iterator of ``Slot``; memory is
O(1) in the input size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


class Timed(Protocol):
    @property
    def ts(self) -> float: ...


T = TypeVar("T", bound=Timed)


@dataclass(frozen=True, slots=True)
class Timing:
    """How to space the slots. ``speed`` None means ``max``; ``rate`` overrides ``speed``."""

    speed: float | None = 1.0
    rate: float | None = None
    amplify: int = 1
    loop: int = 1  # passes over the input; 0 = until ``duration``
    duration: float | None = None  # seconds of schedule (or of run time, for ``max``)

    def __post_init__(self) -> None:
        if self.speed is not None and not (self.speed > 0 and math.isfinite(self.speed)):
            raise ValueError(f"speed must be a positive number or max, not {self.speed}")
        if self.rate is not None and not (self.rate > 0 and math.isfinite(self.rate)):
            raise ValueError(f"rate must be a positive number, not {self.rate}")
        if self.amplify < 1:
            raise ValueError(f"amplify must be >= 1, not {self.amplify}")
        if self.loop < 0:
            raise ValueError(f"loop must be >= 0, not {self.loop}")
        if self.loop == 0 and self.duration is None:
            raise ValueError("loop 0 (forever) needs a duration")
        if self.duration is not None and not self.duration > 0:
            raise ValueError(f"duration must be > 0, not {self.duration}")

    @property
    def timed(self) -> bool:
        return self.rate is not None or self.speed is not None


@dataclass(frozen=True, slots=True)
class Slot(Generic[T]):
    """One request to send: ``item``'s, copy number ``copy``, due ``offset`` seconds after the
    start (None: as soon as possible). ``copy`` = pass * amplify + amplified copy."""

    item: T
    copy: int
    offset: float | None


def schedule(source: Callable[[], Iterable[T]], timing: Timing) -> Iterator[Slot[T]]:
    """The slots for every item ``source()`` yields, in input order, over every pass.

    ``source`` is called once per pass. An input out of time order is scheduled as recorded: an
    item earlier than its predecessor gets an earlier offset, which the runner sends late (its
    lag shows it). An empty pass ends the schedule (looping an empty input would spin)."""
    n_slot = 0  # slots emitted so far (the --rate clock)
    shift = 0.0  # offset of this pass's t_0, in schedule seconds
    pass_no = 0
    while timing.loop == 0 or pass_no < timing.loop:
        t0: float | None = None
        t_last = 0.0
        count = 0
        for ex in source():
            if t0 is None:
                t0 = ex.ts
            t_last = ex.ts
            count += 1
            recorded = shift + (ex.ts - t0) / timing.speed if timing.speed is not None else None
            for a in range(timing.amplify):
                if timing.rate is not None:
                    offset: float | None = n_slot / timing.rate
                else:
                    offset = recorded
                if offset is not None and timing.duration is not None and offset >= timing.duration:
                    return
                n_slot += 1
                yield Slot(ex, pass_no * timing.amplify + a, offset)
        if count == 0 or t0 is None:
            return
        if timing.speed is not None and timing.rate is None:
            span = (t_last - t0) / timing.speed
            gap = span / (count - 1) if count > 1 else 1.0 / timing.speed
            shift += span + gap
        pass_no += 1
