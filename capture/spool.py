"""The spool between `shadowtap capture`'s reader and its extractor process.

The reader (capture/live.py) only reads the source and appends the frames to pcap-format segment
files in a private directory; an extractor child process tails those segments, runs the normal
Extractor on the very same records (same bytes, same microsecond timestamps) and deletes each
segment once it has read it whole. The child may lag behind during a burst and catch up after it:
nothing is lost while the spool has room. Beyond ``max_bytes`` of unconsumed segments, frames are
dropped and counted (``SpoolWriter.dropped``), never silently.

Layout and protocol:
- the directory is made by ``tempfile.mkdtemp`` (0700); segments ``seg-000000.pcap``... are
  created 0600, each a classic pcap (native byte order, microseconds) with its own file header;
- the reader writes each batch with one ``os.write`` (no user-space buffer: visible to the child at
  once) and starts a new segment past ``segment_bytes``;
- over the control channel (parent -> child, shadowtap/procs.py's Channel: records) it sends
  ``Seal(n, size)`` when segment n is complete, ``End(n, size)`` at the end of the capture (n = -1:
  no segment was ever written), or ``Abort()`` to stop at once. EOF on the channel (the reader
  died) means: read what is there, then stop;
- shared counters (``Shared``, one page of shared memory) carry the figures both ways.

Invariant: the child sees exactly the frames the reader appended, in order, complete records only:
a file's size grows only after its bytes are in the page cache, and a record is parsed only once
all its bytes are there.

Costs: the reader pays one ``struct.pack`` a frame and one write syscall a batch; the child one
``read`` of up to 4 MiB at a time, and parses records in memory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from shadowtap.capture.pcapfile import FILE_HEADER, RECORD_HEADER, file_header, record_header
from shadowtap.errors import InputError

SEGMENT_BYTES = 64 << 20  # a segment is sealed past this size (so the spool frees disk as it goes)
DEFAULT_MAX_BYTES = 2 << 30  # the default bound: 2 GiB, or half of the free space if that is less
# The child's wait for more data when it has caught up: a control message (Seal, End, Abort) ends
# it at once, new frames are seen at the next poll. Each poll wakes the child (and its cold caches):
# at 0.05 s that was 20 wake-ups a second beside a service that wants its CPUs; the exchanges reach
# the JSONL up to this much later.
POLL_SECONDS = 0.2
READ_CHUNK = 4 << 20


@dataclass(frozen=True, slots=True)
class Seal:
    """Segment ``n`` is complete: ``size`` bytes."""

    n: int
    size: int


@dataclass(frozen=True, slots=True)
class End:
    """The capture ended; ``n`` is the last segment (-1: none was written), ``size`` its bytes."""

    n: int
    size: int


@dataclass(frozen=True, slots=True)
class Abort:
    """Stop at once: the backlog is abandoned (a second Ctrl-C)."""


# Shared counters (int64; aligned loads and stores are atomic on the machines we run on).
WRITTEN, FREED, CONSUMED, EXCHANGES, OPEN_CONNECTIONS, PACKETS = range(6)
_N_SHARED = 8


def new_shared(ctx: Any) -> Any:
    """Counters shared with a forked child: a RawArray made before the fork."""
    arr = ctx.RawArray("q", _N_SHARED)
    arr[OPEN_CONNECTIONS] = -1
    return arr


def default_max_bytes(directory: str) -> int:
    """2 GiB, or half of the space free in ``directory`` if that is less."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return DEFAULT_MAX_BYTES
    return max(1 << 20, min(DEFAULT_MAX_BYTES, st.f_bavail * st.f_frsize // 2))


def make_dir(parent: str | None) -> str:
    """A private (0700) spool directory under ``parent`` (the temporary directory by default)."""
    where = parent or tempfile.gettempdir()
    try:
        return tempfile.mkdtemp(prefix="shadowtap-spool-", dir=where)
    except OSError as exc:
        raise InputError(
            f"cannot make the spool directory: {exc.strerror or exc}",
            where=where,
            hint="give a writable --spool-dir",
        ) from exc


def segment_path(directory: str, n: int) -> str:
    return os.path.join(directory, f"seg-{n:06d}.pcap")


def remove_dir(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)


class SpoolWriter:
    """The reader's side: appends frames to the segments, seals them, counts what it dropped.

    ``max_bytes`` bounds the bytes written and not yet freed by the child (the disk the spool
    holds); ``segment_bytes`` is at most an eighth of it, so the child frees space as it goes."""

    def __init__(
        self,
        directory: str,
        linktype: int,
        control: Any,
        shared: Any,
        *,
        max_bytes: int,
        segment_bytes: int = SEGMENT_BYTES,
    ) -> None:
        self.directory = directory
        self.linktype = linktype
        self.control = control
        self.shared = shared
        self.max_bytes = max_bytes
        self.segment_bytes = max(64 << 10, min(segment_bytes, max_bytes // 8))
        self.dropped = 0  # frames not spooled: the bound was reached or the disk was full
        self.disk_error: str | None = None  # the first write error, for the summary
        self.n = -1
        self._fd = -1
        self._size = 0
        self._written = 0
        self._ended = False
        self._full = False  # the bound was hit: dropping until the child catches up

    def _open_next(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self.control.send(Seal(self.n, self._size))
        self.n += 1
        path = segment_path(self.directory, self.n)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        hdr = file_header(self.linktype)
        self._write_all(hdr)
        self._size = len(hdr)
        self._written += len(hdr)
        self.shared[WRITTEN] = self._written

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]

    def write(self, frames: list[tuple[int, bytes, int]]) -> None:
        """Append a batch (one write). Frames beyond the bound are dropped and counted."""
        if not frames:
            return
        held = self._written - self.shared[FREED]
        if self._full:
            # Once full, every frame is dropped until the child has freed a quarter of the bound:
            # one hole in the streams, not a sieve of whichever frames happen to fit.
            if held > self.max_bytes * 3 // 4:
                self.dropped += len(frames)
                return
            self._full = False
        if self._fd < 0 or self._size >= self.segment_bytes:
            self._open_next()
        room = self.max_bytes - held
        parts: list[bytes] = []
        size = 0
        kept = 0
        for ts_us, frame, wire_len in frames:
            n = len(frame)
            size += 16 + n
            if size > room:
                size -= 16 + n
                break
            parts.append(record_header(ts_us, n, wire_len))
            parts.append(frame)
            kept += 1
        if kept < len(frames):
            self.dropped += len(frames) - kept
            self._full = True
        if not kept:
            return
        try:
            self._write_all(b"".join(parts))
        except OSError as exc:
            # The disk is full (or failing): the segment is cut back to its last whole record,
            # the batch counted as dropped, and the capture goes on (the -w pcap may still work).
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
                os.lseek(self._fd, self._size, os.SEEK_SET)
            self.dropped += kept
            self.disk_error = self.disk_error or f"{self.directory}: {exc.strerror or exc}"
            return
        self._size += size
        self._written += size
        self.shared[WRITTEN] = self._written

    def end(self) -> None:
        """The last segment is complete: the child reads it to its end and stops."""
        if self._ended:
            return
        self._ended = True
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.control.send(End(self.n, self._size))

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(OSError):
            self.control.send(Abort())

    @property
    def backlog(self) -> int:
        """Bytes written and not yet read by the child."""
        return max(0, self._written - self.shared[CONSUMED])


class SpoolReader:
    """The child's side: ``batches()`` yields the frames of the segments in order, as lists of
    (epoch seconds, link type, frame), deleting each segment once read whole; an empty list after
    each wait for more (every POLL_SECONDS while caught up), so the consumer can flush."""

    def __init__(self, directory: str, control: Any, shared: Any) -> None:
        self.directory = directory
        self.control = control
        self.shared = shared
        self.sizes: dict[int, int] = {}  # sealed segments' sizes
        self.end: int | None = None  # the last segment's number, once known
        self.aborted = False
        self.orphaned = False  # the reader died: read what exists, then stop
        self._consumed = 0
        self._freed = 0

    def _messages(self, timeout: float) -> None:
        """Take the control messages that are there (waiting up to ``timeout`` for the first)."""
        if self.orphaned:
            return
        try:
            ready = self.control.poll(timeout)
            while ready:
                msg = self.control.recv()
                if isinstance(msg, Seal):
                    self.sizes[msg.n] = msg.size
                elif isinstance(msg, End):
                    self.end = msg.n
                    if msg.n >= 0:
                        self.sizes[msg.n] = msg.size
                elif isinstance(msg, Abort):
                    self.aborted = True
                ready = self.control.poll(0)
        except (EOFError, OSError):
            self.orphaned = True

    def batches(self) -> Iterator[list[tuple[float, int, bytes]]]:
        n = 0
        while not self.aborted:
            path = segment_path(self.directory, n)
            try:
                f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below
            except FileNotFoundError:
                self._messages(0)
                if self.aborted or self.orphaned or (self.end is not None and n > self.end):
                    return
                self._messages(POLL_SECONDS)
                yield []
                continue
            try:
                yield from self._segment(f, n, path)
            finally:
                f.close()
            n += 1

    def _segment(self, f: Any, n: int, path: str) -> Iterator[list[tuple[float, int, bytes]]]:
        """The frames of segment ``n`` as they are appended, until it is sealed and read whole
        (then it is deleted) or, the reader having died, until it stops growing."""
        buf = b""  # bytes read and not parsed yet: at most one partial record
        offset = 0  # the file offset of buf[0]
        linktype = -1
        unpack = RECORD_HEADER.unpack_from
        while not self.aborted:
            data = f.read(READ_CHUNK)
            if data:
                buf = buf + data if buf else data
                pos = 0
                if linktype < 0:
                    if len(buf) < FILE_HEADER.size:
                        continue
                    linktype = FILE_HEADER.unpack_from(buf)[6]
                    pos = FILE_HEADER.size
                end = len(buf)
                out = []
                while end - pos >= 16:
                    sec, usec, caplen, _wire = unpack(buf, pos)
                    stop = pos + 16 + caplen
                    if stop > end:
                        break
                    # pcapfile.seconds' rule, inlined (per frame): the same float, bit for bit.
                    out.append((sec + usec * 1e-6, linktype, buf[pos + 16 : stop]))
                    pos = stop
                buf = buf[pos:]
                offset += pos
                self._consumed += pos
                self.shared[CONSUMED] = self._consumed
                if out:
                    yield out
                self._messages(0)  # an abort is seen in a backlog too, not only once caught up
                continue
            # At the end of what is written so far.
            self._messages(0)
            size = self.sizes.get(n)
            if size is not None and offset + len(buf) >= size:
                with contextlib.suppress(OSError):
                    os.unlink(path)  # sealed and read whole: free its disk
                self._freed += size
                self.shared[FREED] = self._freed
                return
            if self.orphaned:
                return  # the reader died: this segment will not grow any more
            self._messages(POLL_SECONDS)
            yield []  # caught up: the consumer gets its turn (to flush its files)
