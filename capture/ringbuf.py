"""A direct reader of a BPF ring buffer (BPF_MAP_TYPE_RINGBUF): the map mmapped into this process
and its records walked in Python, in batches, with no callback a record (bcc's ring_buffer_poll
calls a ctypes callback for each record: about half the capture process's CPU at high rates).
Used by both BPF sources (capture/ebpf.py, capture/tls.py); bcc only compiles the program and
gives the map's fd.

The kernel's layout (kernel/bpf/ringbuf.c, libbpf's ringbuf.c reads it the same way):

- offset 0, one page, mapped read-write: ``consumer_pos`` (u64), which user space advances;
- offset one page: the producer page (``producer_pos``, u64) then the data area of ``max_entries``
  bytes (a power of two), mapped read-only; the kernel maps the data area twice in a row, so a
  record that wraps around the end is contiguous in this mapping.
- a record: an 8-byte header (u32 ``len`` with BUSY_BIT while reserved and not yet committed,
  DISCARD_BIT when discarded; u32 page offset, unused here), then ``len`` bytes, the whole rounded
  up to 8 bytes. Positions only grow; a position's place in the data area is ``pos & mask``.

Memory ordering: the kernel publishes with store-release (the header's len at commit, after the
record's bytes; producer_pos at reserve, after the header with its BUSY_BIT) and reads
consumer_pos with load-acquire. Here every read of producer_pos, of a header and the store of
consumer_pos is a single aligned load/store (a memoryview item of format Q or I: CPython copies it
with an 8/4-byte memcpy, one mov); on x86-64 (TSO) an aligned load is an acquire and an aligned
store a release, and loads are not reordered with older loads: a record's bytes, copied after its
header was seen committed, are the committed ones; the consumer_pos store comes after the copy.
Weaker CPUs (arm64) would need barriers Python cannot issue: capture/doctor.ringbuf_supported
answers False there, and the sources use the perf buffer.
"""

from __future__ import annotations

import mmap
import os
import select
from collections.abc import Callable, Sequence

from shadowtap.errors import PrerequisiteError

HDR_SIZE = 8
BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
_LEN_MASK = ~(BUSY_BIT | DISCARD_BIT) & 0xFFFFFFFF

Span = tuple[int, int]  # (offset of a record's bytes in the data area, its length)
Handler = Callable[[memoryview, list[Span]], None]  # a batch: the data area, its records' spans


def walk(
    words: Sequence[int], mask: int, cons: int, prod: int, limit: int
) -> tuple[int, list[Span]]:
    """The committed records from ``cons`` up to ``prod`` (at most ``limit`` kept; discarded ones
    skipped): (the position after the last one walked, their spans in the data area).
    ``words``: the data area as u32s (``pos & mask`` is a byte offset into it, 8-byte aligned).
    Stops at the first record still BUSY (reserved, not committed): records are consumed in
    order, and the ones after it wait for it. Pure: no I/O."""
    spans: list[Span] = []
    pos = cons
    while pos < prod and len(spans) < limit:
        hdr = words[(pos & mask) >> 2]
        if hdr & BUSY_BIT:
            break
        size = hdr & _LEN_MASK
        if not hdr & DISCARD_BIT:
            spans.append(((pos & mask) + HDR_SIZE, size))
        pos += (size + HDR_SIZE + 7) & ~7
    return pos, spans


def max_entries(map_fd: int) -> int:
    """The data area's size in bytes: the map's max_entries, from /proc/self/fdinfo."""
    with open(f"/proc/self/fdinfo/{map_fd}") as f:
        for line in f:
            if line.startswith("max_entries:"):
                return int(line.split()[1])
    raise PrerequisiteError(f"fd {map_fd} is not a BPF map (no max_entries in its fdinfo)")


class RingReader:
    """The consumer of one ring buffer map (``map_fd``: duplicated, the caller keeps its own)."""

    def __init__(self, map_fd: int) -> None:
        if os.uname().machine != "x86_64":  # see the module docstring (memory ordering)
            raise PrerequisiteError(
                "the direct ring buffer reader needs x86-64", hint="use the perf buffer"
            )
        self._fd = os.dup(map_fd)
        size = max_entries(self._fd)
        page = mmap.PAGESIZE
        rw, ro = mmap.PROT_READ | mmap.PROT_WRITE, mmap.PROT_READ
        self._cons_map = mmap.mmap(self._fd, page, mmap.MAP_SHARED, rw, offset=0)
        self._prod_map = mmap.mmap(self._fd, page + 2 * size, mmap.MAP_SHARED, ro, offset=page)
        cons_mv, prod_mv = memoryview(self._cons_map), memoryview(self._prod_map)
        self._cons = cons_mv[:8].cast("Q")
        self._prod = prod_mv[:8].cast("Q")
        self._data = prod_mv[page:]
        self._words = self._data.cast("I")
        self._views = [self._words, self._data, self._prod, self._cons, prod_mv, cons_mv]
        self._mask = size - 1
        self._epoll = select.epoll()
        self._epoll.register(self._fd, select.EPOLLIN)  # ready while records are there

    def wait(self, timeout_ms: int) -> bool:
        """Sleep until the kernel signals records (it may batch its wake-ups) or the timeout."""
        try:
            return bool(self._epoll.poll(timeout_ms / 1000, 1))
        except InterruptedError:
            return False

    def consume(self, limit: int, handle: Handler) -> int:
        """Hand the committed records there (``limit`` at most) to ``handle`` in one call: the
        data area (read-only, valid during the call: copy what is kept) and each record's span in
        it. Then they are consumed (the kernel may reuse their space). Returns their number.
        (One copy of the whole batch instead was slower: the records are fixed-size structs,
        mostly padding, and a large fresh buffer costs a page fault per 4 KiB.)"""
        cons = self._cons[0]
        new, spans = walk(self._words, self._mask, cons, self._prod[0], limit)
        if new == cons:
            return 0
        if spans:
            handle(self._data, spans)
        self._cons[0] = new  # one aligned 8-byte store: a release on x86-64
        return len(spans)

    def take(
        self, timeout_ms: int, handle: Handler, *, immediate: bool, batch_poll_ms: int, limit: int
    ) -> None:
        """A source's read: ``immediate`` (the kernel wakes us a record): wait, then consume.
        Else (batched wake-ups) take what is there; if nothing, sleep a short poll (a forced
        wake-up ends it early) and take what came meanwhile."""
        if immediate:
            self.wait(timeout_ms)
            self.consume(limit, handle)
        elif not self.consume(limit, handle) and timeout_ms:
            self.wait(min(timeout_ms, batch_poll_ms))
            self.consume(limit, handle)

    def close(self) -> None:
        """Unmap and close. Idempotent."""
        if self._fd < 0:
            return
        for v in self._views:
            v.release()
        self._views = []
        self._cons_map.close()
        self._prod_map.close()
        self._epoll.close()
        os.close(self._fd)
        self._fd = -1
