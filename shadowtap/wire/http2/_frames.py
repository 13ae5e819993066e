"""HTTP/2 frames out of one direction's reassembled bytes (python-hyper's ``hyperframe`` parses
each frame; this module only finds where frames begin).

A ``FrameReader`` buffers at most one frame (9 + 2^24-1 bytes, the format's own bound) plus the
bytes of one segment; feeding is O(bytes). When the capture joined the connection mid-way, or
bytes were lost in a gap, the reader does not know where the next frame begins: it looks for a
run of ``_SYNC_CHAIN`` consecutive plausible frame headers (known type, flags valid for that
type, stream id valid for that type, a length the type allows) and starts there. Up to
``_SYNC_WINDOW`` bytes are searched; beyond that, the oldest are dropped (counted).
"""

from __future__ import annotations

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


class FrameReader:
    """Frames of one direction. ``feed`` returns ``(first-byte ts, frame or error text, stream id,
    length)`` items; an error item (text) names a frame hyperframe refused: its bytes are skipped
    (the length is known), the reader stays in step."""

    __slots__ = (
        "_buf",
        "_start_ts",
        "broken",
        "dropped",
        "max_frame",
        "max_frame_known",
        "preface",
        "synced",
    )

    def __init__(self, *, expect_preface: bool, synced: bool) -> None:
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

    def feed(
        self, ts: float, data: bytes, *, final: bool = False
    ) -> list[tuple[float, Frame | str, int, int]]:
        if self.broken is not None:
            return []
        buf = self._buf
        if not buf:
            self._start_ts = ts
        buf += data
        out: list[tuple[float, Frame | str, int, int]] = []
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
        try:
            while n - pos >= 9:
                length = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
                end = pos + 9 + length
                if end > n:
                    break
                if buf[pos + 3] in _UNRECORDED:
                    pos = end  # PRIORITY, PING, WINDOW_UPDATE: nothing to record, not parsed
                    start_ts = ts
                    continue
                sid = int.from_bytes(buf[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
                try:
                    frame, _ = Frame.parse_frame_header(view[pos : pos + 9])
                    frame.parse_body(view[pos + 9 : end])
                    out.append((start_ts, frame, sid, length))
                except (HyperframeError, ValueError) as exc:
                    out.append((start_ts, f"{type(exc).__name__}: {exc}", sid, length))
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
