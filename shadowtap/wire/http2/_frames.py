"""HTTP/2 frames out of one direction's reassembled bytes: where frames begin, and what each
carries (python-hyper's ``hyperframe`` parses the control frames).

The frames that carry a stream's bytes, DATA, HEADERS and CONTINUATION (all but a handful of a gRPC
connection's recorded frames), take a fast path written here rather than hyperframe's: the 9-byte
header read with one ``struct`` unpack, the payload or header block fragment sliced out, padding
and priority fields removed, with hyperframe's checks in hyperframe's order and its error texts
(``_payload``). A trade against the design's "maintained libraries": hyperframe builds a frame
object, a ``Flags`` set, padding and priority objects for each frame (1.5-1.8 us a frame here, 0.3
us on this path: 0.15 s of the 20,000-call capture of scripts/bench_extract.sh --grpc, 5 frames a
call). The property tests feed any sequence of frames, valid or not, cut anywhere, through both
paths (``FrameReader(fast=False)`` is hyperframe's) and require the same items. SETTINGS,
RST_STREAM, GOAWAY, PUSH_PROMISE and unknown types are still parsed by hyperframe; PRIORITY, PING
and WINDOW_UPDATE are skipped by length (nothing to record).

A ``FrameReader`` buffers at most one frame (9 + 2^24-1 bytes, the format's own bound) plus the
bytes of one segment; feeding is O(bytes). When the capture joined the connection mid-way, or
bytes were lost in a gap, the reader does not know where the next frame begins: it looks for a
run of ``_SYNC_CHAIN`` consecutive plausible frame headers (known type, flags valid for that
type, stream id valid for that type, a length the type allows) and starts there. Up to
``_SYNC_WINDOW`` bytes are searched; beyond that, the oldest are dropped (counted).
"""

from __future__ import annotations

import struct

from hyperframe.exceptions import HyperframeError
from hyperframe.frame import Frame

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DEFAULT_MAX_FRAME = 16384

_SYNC_CHAIN = 3
# Frame types an observer has nothing to record from (PRIORITY, PING, WINDOW_UPDATE): skipped by
# their length without building a frame object (a third of a gRPC connection's frames).
_UNRECORDED = frozenset((0x2, 0x6, 0x8))
_SYNC_WINDOW = 256 << 10
_SYNC_MAX_LEN = 1 << 20  # the longest frame believed while the receiver's limit is unknown

# type -> (allowed flag bits, stream id rule: 0 none, 1 required, 2 either, fixed length or -1)
_RULES = {
    0x0: (0x09, 1, -1),  # DATA: END_STREAM, PADDED
    0x1: (0x2D, 1, -1),  # HEADERS: END_STREAM, END_HEADERS, PADDED, PRIORITY
    0x2: (0x00, 1, 5),  # PRIORITY
    0x3: (0x00, 1, 4),  # RST_STREAM
    0x4: (0x01, 0, -1),  # SETTINGS (length a multiple of 6)
    0x5: (0x0C, 1, -1),  # PUSH_PROMISE
    0x6: (0x01, 0, 8),  # PING
    0x7: (0x00, 0, -1),  # GOAWAY (>= 8)
    0x8: (0x00, 2, 4),  # WINDOW_UPDATE
    0x9: (0x04, 1, -1),  # CONTINUATION
}


def plausible_header(data: bytes | memoryview, pos: int, max_len: int = DEFAULT_MAX_FRAME) -> int:
    """The length of the frame whose header is at ``pos`` when the header could begin a frame,
    else -1 (needs 9 bytes at ``pos``)."""
    length = (data[pos] << 16) | (data[pos + 1] << 8) | data[pos + 2]
    rule = _RULES.get(data[pos + 3])
    if rule is None or length > max_len:
        return -1
    flag_bits, sid_rule, fixed = rule
    if data[pos + 4] & ~flag_bits & 0xFF:
        return -1
    if data[pos + 5] & 0x80:  # the reserved bit
        return -1
    sid = (data[pos + 5] << 24) | (data[pos + 6] << 16) | (data[pos + 7] << 8) | data[pos + 8]
    if (sid_rule == 1 and sid == 0) or (sid_rule == 0 and sid != 0):
        return -1
    if fixed >= 0 and length != fixed:
        return -1
    ftype = data[pos + 3]
    if ftype == 0x4 and (length % 6 or (data[pos + 4] & 1 and length)):
        return -1
    if ftype == 0x7 and length < 8:
        return -1
    return length


def find_sync(data: bytes, max_len: int = DEFAULT_MAX_FRAME, *, final: bool = False) -> int:
    """The first offset where ``_SYNC_CHAIN`` plausible frame headers follow one another, -1 when
    none can be confirmed yet. A chain that runs exactly to the end of ``data`` confirms too when
    it has at least two headers. A chain whose last frame runs past the end is undecided: later
    offsets are still tried (a bogus header with a long length must not block a real chain
    behind it), and with ``final`` (no more bytes will come) the first undecided one is taken.
    O(len(data) * chain)."""
    n = len(data)
    undecided = -1
    for start in range(max(0, n - 8)):
        pos, found = start, 0
        while found < _SYNC_CHAIN:
            if pos + 9 > n:
                break
            length = plausible_header(data, pos, max_len)
            if length < 0:
                found = -1
                break
            found += 1
            pos += 9 + length
        if found >= _SYNC_CHAIN:
            return start
        if found >= 2 and pos == n:
            return start
        if found > 0 and undecided < 0:
            undecided = start
    return undecided if final else -1


def looks_like_frames(data: bytes) -> bool:
    """Whether a connection side's first bytes (joined mid-way) read as HTTP/2 frames."""
    return find_sync(data[:_SYNC_WINDOW], final=False) >= 0


# What ``FrameReader.feed`` gives per frame: (first-byte ts, type, stream id, length, flags,
# what it carries). What it carries: the payload of a DATA frame or the header block fragment of
# a HEADERS or CONTINUATION frame (``bytes``, padding and priority removed), another frame as
# hyperframe parsed it (``Frame``), or the text of why the frame was refused (``str``). ``flags``:
# the raw flag bits (END_STREAM 0x1, END_HEADERS 0x4, ACK 0x1).
Item = tuple[float, int, int, int, int, "bytes | Frame | str"]

_HEADER = struct.Struct(">HBBBL").unpack_from  # length (16 + 8 bits), type, flags, stream id
_DATA, _HEADERS, _CONTINUATION = 0x0, 0x1, 0x9
_PAYLOAD = frozenset((_DATA, _HEADERS, _CONTINUATION))  # the frames of the fast path
_NAMES = {_DATA: "DataFrame", _HEADERS: "HeadersFrame", _CONTINUATION: "ContinuationFrame"}


def _payload(view: memoryview, pos: int, ftype: int) -> bytes | str:
    """What a DATA, HEADERS or CONTINUATION frame at ``pos`` carries, or why it is refused: the
    checks of hyperframe's ``parse_frame_header`` + ``parse_body`` in their order, with their
    error texts (RFC 9113 6.1, 6.2, 6.10: a stream id; PADDED: a pad length byte, padding
    shorter than what follows it; PRIORITY: its 5 bytes)."""
    length = (view[pos] << 16) | (view[pos + 1] << 8) | view[pos + 2]
    flags = view[pos + 4]
    if not (view[pos + 5] & 0x7F or view[pos + 6] or view[pos + 7] or view[pos + 8]):
        return f"InvalidDataError: Stream ID must be non-zero for {_NAMES[ftype]}"
    start, end = pos + 9, pos + 9 + length
    if ftype == _CONTINUATION:
        return view[start:end].tobytes()
    pad = 0
    if flags & 0x8:  # PADDED
        if not length:
            return "InvalidFrameError: Invalid Padding data"
        pad = view[start]
        start += 1
    size = end - start  # hyperframe's body_len: after the pad length byte
    if ftype == _HEADERS and flags & 0x20:  # PRIORITY
        if size < 5:
            return "InvalidFrameError: Invalid Priority data"
        if pad and pad >= size:
            return "InvalidPaddingError: Padding is too long."
        return view[start + 5 : end - pad].tobytes()
    if pad and pad >= size + (ftype == _DATA):  # DATA counts the pad length byte in
        return "InvalidPaddingError: Padding is too long."
    return view[start : end - pad].tobytes()


class FrameReader:
    """Frames of one direction. ``feed`` returns ``Item``s; an error item (text) names a frame
    that was refused: its bytes are skipped (the length is known), the reader stays in step.
    ``fast=False`` parses every frame with hyperframe (the tests compare both paths)."""

    __slots__ = (
        "_buf",
        "_start_ts",
        "broken",
        "dropped",
        "fast",
        "max_frame",
        "max_frame_known",
        "preface",
        "synced",
    )

    def __init__(self, *, expect_preface: bool, synced: bool, fast: bool = True) -> None:
        self.fast = fast
        self._buf = bytearray()
        self._start_ts: float | None = None
        self.preface = expect_preface  # the client's 24-byte preface comes first
        self.synced = synced  # frame boundaries known
        self.max_frame = DEFAULT_MAX_FRAME  # the receiver's SETTINGS_MAX_FRAME_SIZE
        # Whether that is known: from the connection's start (the default) or a SETTINGS seen.
        # Joined mid-way, the peers may have raised it before: no frame is "too large" then.
        self.max_frame_known = synced
        self.broken: str | None = None  # why this direction is no longer parsed
        self.dropped = 0  # bytes skipped while looking for a frame boundary

    def lose_sync(self) -> None:
        """Bytes were lost: the next frame boundary is unknown."""
        self._buf.clear()
        self._start_ts = None
        self.synced = False
        self.preface = False

    def feed(self, ts: float, data: bytes, *, final: bool = False) -> list[Item]:
        if self.broken is not None:
            return []
        buf = self._buf
        if not buf:
            self._start_ts = ts
        buf += data
        out: list[Item] = []
        if self.preface:
            if len(buf) < len(PREFACE):
                if not PREFACE.startswith(bytes(buf)):
                    self.broken = "no HTTP/2 preface"
                return out
            if not buf.startswith(PREFACE):
                self.broken = "no HTTP/2 preface"
                return out
            del buf[: len(PREFACE)]
            self.preface = False
        if not self.synced:
            at = find_sync(
                bytes(buf[:_SYNC_WINDOW]),
                self.max_frame if self.max_frame_known else _SYNC_MAX_LEN,
                final=final,
            )
            if at < 0:
                if len(buf) > _SYNC_WINDOW:
                    cut = len(buf) - _SYNC_WINDOW
                    del buf[:cut]
                    self.dropped += cut
                return out
            del buf[:at]
            self.dropped += at
            self.synced = True
        pos, n = 0, len(buf)
        start_ts = self._start_ts if self._start_ts is not None else ts
        view = memoryview(buf)
        fast = self.fast
        try:
            while n - pos >= 9:
                hi, lo, ftype, flags, sid = _HEADER(buf, pos)
                length = (hi << 8) | lo
                end = pos + 9 + length
                if end > n:
                    break
                if ftype in _UNRECORDED:
                    pos = end  # PRIORITY, PING, WINDOW_UPDATE: nothing to record, not parsed
                    start_ts = ts
                    continue
                sid &= 0x7FFFFFFF
                if ftype in _PAYLOAD and fast:
                    out.append((start_ts, ftype, sid, length, flags, _payload(view, pos, ftype)))
                else:
                    try:
                        frame, _ = Frame.parse_frame_header(view[pos : pos + 9])
                        frame.parse_body(view[pos + 9 : end])
                        # (DATA, HEADERS, CONTINUATION: what they carry, as on the fast path)
                        got: bytes | Frame | str = (
                            frame.data if ftype in _PAYLOAD else frame  # type: ignore[attr-defined]
                        )
                    except (HyperframeError, ValueError) as exc:
                        got = f"{type(exc).__name__}: {exc}"
                    out.append((start_ts, ftype, sid, length, flags, got))
                pos = end
                start_ts = ts
        finally:
            view.release()
        if pos:
            del buf[:pos]
            self._start_ts = ts if buf else None
        return out

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame held."""
        return len(self._buf)
