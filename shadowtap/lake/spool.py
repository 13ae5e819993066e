"""The agent's disk buffer for the broker: records that could not be published (the broker away,
or publishing behind) wait here, in order, and are resent first.

Segment files ``seg-NNNNNNNNNN.bin`` (0600, in a 0700 directory) of length-prefixed records:
``u32 length | u16 id length | u8 kind | id | payload``. Appends go to the newest segment (a new
one every ``segment_bytes``); reads take from the oldest, and a segment is deleted once every
record in it was acknowledged. Past ``max_bytes`` the oldest segment is dropped whole and its
records counted in ``dropped`` (drop-oldest: the newest traffic is the one worth keeping).
A spool record may stand for several (the broker sink's batches): ``weigh(id)`` says how many,
and ``dropped`` and ``weight`` count those.
Segments left by a previous run are read first, so an agent restarted with its spool resends
what it had not published (the broker drops the duplicates by their ids).

Not thread-safe: the sink serialises calls. Cost: one buffered write per record; reads are
sequential.
"""

from __future__ import annotations

import os
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

_HEAD = struct.Struct(">IHB")


@dataclass(slots=True)
class Segment:
    path: str
    records: int
    size: int
    weight: int = 0


class DiskSpool:
    def __init__(
        self,
        directory: str,
        *,
        max_bytes: int = 1 << 30,
        segment_bytes: int = 8 << 20,
        weigh: Callable[[str], int] | None = None,
    ) -> None:
        self.directory = directory
        self.weigh = weigh or (lambda _ident: 1)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.dropped = 0  # records dropped (oldest first) past max_bytes, by weight
        self.spooled = 0  # records ever written here
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._segments: deque[Segment] = deque()
        self._next = 0
        for name in sorted(os.listdir(directory)):
            if name.startswith("seg-") and name.endswith(".bin"):
                path = os.path.join(directory, name)
                self._next = max(self._next, int(name[4:14]) + 1)
                records, weight = self._count(path)
                if records:
                    self._segments.append(Segment(path, records, os.path.getsize(path), weight))
                else:
                    os.remove(path)
        self._out: IO[bytes] | None = None  # the file being appended to (the newest segment)
        self._in: IO[bytes] | None = None  # the file being read (the oldest segment)
        self._read_pos = 0  # bytes of the oldest segment acknowledged
        self._read_done = 0  # records of the oldest segment acknowledged
        self._read_weight = 0  # and their weight

    def _count(self, path: str) -> tuple[int, int]:
        """(records, weight) of a segment file."""
        n = weight = 0
        with open(path, "rb") as f:
            while True:
                head = f.read(_HEAD.size)
                if len(head) < _HEAD.size:
                    return n, weight  # a torn last record (a crash mid-write) is not counted
                length, id_len, _ = _HEAD.unpack(head)
                body = f.read(length - _HEAD.size)
                if len(body) < length - _HEAD.size:
                    return n, weight
                n += 1
                weight += self.weigh(body[:id_len].decode())

    @property
    def records(self) -> int:
        """Records waiting (not yet acknowledged)."""
        return sum(s.records for s in self._segments) - self._read_done

    @property
    def weight(self) -> int:
        """What the waiting records stand for (``weigh``; = ``records`` by default)."""
        return sum(s.weight for s in self._segments) - self._read_weight

    @property
    def size(self) -> int:
        """Bytes on disk."""
        return sum(s.size for s in self._segments)

    def __bool__(self) -> bool:
        return self.records > 0

    def append(self, kind: int, msg_id: str, payload: bytes) -> None:
        ident = msg_id.encode()
        head = _HEAD.pack(_HEAD.size + len(ident) + len(payload), len(ident), kind)
        record = head + ident + payload
        if self._out is None or self._segments[-1].size + len(record) > self.segment_bytes:
            self._roll()
        assert self._out is not None
        self._out.write(record)
        seg = self._segments[-1]
        seg.records += 1
        seg.size += len(record)
        seg.weight += self.weigh(msg_id)
        self.spooled += 1
        while self.size > self.max_bytes and len(self._segments) > 1:
            self._drop_oldest()

    def _roll(self) -> None:
        if self._out is not None:
            self._out.close()
        path = os.path.join(self.directory, f"seg-{self._next:010d}.bin")
        self._next += 1
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._out = os.fdopen(fd, "wb", buffering=1 << 16)
        self._segments.append(Segment(path, 0, 0))

    def _drop_oldest(self) -> None:
        self.dropped += self._segments[0].weight - self._read_weight
        self._remove_oldest()

    def _remove_oldest(self) -> None:
        seg = self._segments.popleft()
        if not self._segments and self._out is not None:  # it was being written: start afresh
            self._out.close()
            self._out = None
        self._close_in()
        os.remove(seg.path)

    def _close_in(self) -> None:
        if self._in is not None:
            self._in.close()
        self._in = None
        self._read_pos = 0
        self._read_done = 0
        self._read_weight = 0

    def peek(self, n: int) -> list[tuple[int, str, bytes]]:
        """Up to ``n`` of the oldest waiting records, from one segment, in order (not removed:
        ``ack`` removes them once the broker has them)."""
        if not self._segments or self._segments[0].records == self._read_done:
            return []
        if self._out is not None and len(self._segments) == 1:
            self._out.flush()  # reading the segment being written
        if self._in is None:
            self._in = open(self._segments[0].path, "rb")  # noqa: SIM115 - closed in _close_in
        f = self._in
        f.seek(self._read_pos)
        out = []
        left = self._segments[0].records - self._read_done
        for _ in range(min(n, left)):
            length, id_len, kind = _HEAD.unpack(f.read(_HEAD.size))
            body = f.read(length - _HEAD.size)
            out.append((kind, body[:id_len].decode(), body[id_len:]))
        return out

    def ack(self, records: list[tuple[int, str, bytes]]) -> None:
        """The first ``len(records)`` of the last peek are acknowledged: forget them."""
        self._read_pos += sum(_HEAD.size + len(i.encode()) + len(p) for _, i, p in records)
        self._read_done += len(records)
        self._read_weight += sum(self.weigh(i) for _, i, _ in records)
        if self._read_done >= self._segments[0].records:
            self._remove_oldest()

    def close(self) -> None:
        """Flush and close; waiting records stay on disk for the next run."""
        if self._out is not None:
            self._out.close()
            self._out = None
        if self._in is not None:
            self._in.close()
            self._in = None
        if self._read_done and self._segments:
            # rewrite the oldest segment without its acknowledged head, so it is not resent
            seg = self._segments[0]
            with open(seg.path, "rb") as f:
                f.seek(self._read_pos)
                rest = f.read()
            tmp = seg.path + ".tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(rest)
            os.replace(tmp, seg.path)
            seg.records -= self._read_done
            seg.weight -= self._read_weight
            seg.size = len(rest)
            self._read_pos = self._read_done = self._read_weight = 0
