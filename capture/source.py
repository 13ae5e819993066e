"""What a live source (capture/ebpf.py, capture/libpcap.py) gives capture/live.py.

A source is opened on one interface with a port filter applied in the kernel, hands over batches of
whole frames with their link type and capture time, and counts what it lost. It owns kernel
resources (hooks, sockets) that ``close`` releases; ``close`` is idempotent and safe after a failed
``open``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class SourceStats:
    """Counters since the source opened. ``kernel_drops``: packets the kernel matched but dropped
    before the buffer (AF_PACKET's PACKET_STATISTICS); ``buffer_drops``: packets lost because the
    ring/perf buffer was full; ``truncated``: packets handed over cut short (never with the default
    sizes)."""

    packets: int = 0
    bytes: int = 0
    kernel_drops: int = 0
    buffer_drops: int = 0
    truncated: int = 0

    @property
    def drops(self) -> int:
        return self.kernel_drops + self.buffer_drops


# One captured frame: (capture time in whole microseconds since the epoch, the frame's bytes, its
# length on the wire). Microseconds because a pcap keeps no more: the live extractor and a later
# `extract` of the run's pcap must see the very same timestamps.
Frame = tuple[int, bytes, int]


class Source(Protocol):
    name: str  # "ebpf" or "pcap"
    linktype: int  # pcap LINKTYPE_* of the frames

    def open(self) -> None: ...

    def read(self, timeout: float) -> list[Frame]:
        """Frames captured since the last call, oldest first, a bounded batch (a source under a
        sustained load returns so its caller can flush and check for a stop); waits up to
        ``timeout`` seconds when there are none (an empty list then)."""
        ...

    def flush(self) -> list[Frame]:
        """At the end of a capture (after the last ``read``): frames still held back, if any."""
        ...

    def stats(self) -> SourceStats: ...

    def describe(self) -> str:
        """One line for the user: what is attached where, with which buffer."""
        ...

    def close(self) -> None: ...
