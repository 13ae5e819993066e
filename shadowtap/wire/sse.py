"""Server-Sent Events (``text/event-stream``), parsed by the WHATWG HTML rules ("9.2.6 Interpreting
an event stream"). Sans-I/O: bytes and their arrival times in, events out.

The rules, as implemented here:
- the stream is UTF-8 (invalid bytes replaced), a leading byte order mark is dropped;
- lines end with CRLF, LF or CR; a CR at the end of one chunk followed by an LF at the start of
  the next is one line end (chunk boundaries never change the events);
- a blank line dispatches the event being built; with no ``data`` field seen it dispatches nothing;
- a line starting with ``:`` is a comment; ``name:value`` sets a field, one space after the colon
  is dropped (only one); a line without a colon is a field with an empty value;
- ``data`` lines append their value and a newline to the data buffer (several join with ``\\n``,
  the last newline is removed at dispatch; kept here as a list of values joined at dispatch);
  ``event`` sets the type (``message`` when empty);
  ``id`` sets the last event id unless the value holds NUL (it persists across events);
  ``retry`` is kept when all ASCII digits; any other field is ignored;
- at the end of the stream, an event not ended by a blank line is discarded (``pending`` says so).

Cost: O(bytes) per feed; a line split over many chunks is buffered once per chunk (a bytearray
append), never re-scanned, so a 10 MB event in 1500-byte chunks stays linear. Memory: the current
line plus the event being built, each bounded by ``max_event`` (beyond it, the event is cut and
``oversized`` counts it).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Event", "SseParser", "SseStream", "parse_sse"]

DEFAULT_MAX_EVENT = 16 << 20


@dataclass(frozen=True, slots=True)
class Event:
    """One dispatched event. ``ts``: arrival time (epoch seconds) of the chunk holding the blank
    line that ended it, None when the caller gave no times. ``retry``: the last ``retry`` value
    seen before it (ms), None when none was."""

    data: str
    type: str = "message"
    id: str = ""
    retry: int | None = None
    ts: float | None = None


@dataclass(frozen=True, slots=True)
class SseStream:
    """A whole stream parsed: its events, whether it ended mid-event (``pending``: bytes of an
    undispatched event or line at the end), comment lines and lines of unknown fields counted."""

    events: tuple[Event, ...]
    pending: bool
    comments: int
    unknown_fields: int
    oversized: int


class SseParser:
    """Incremental parser. ``feed(chunk, ts)`` returns the events the chunk completed;
    ``close()`` says whether an event was left unfinished."""

    __slots__ = (
        "_data",
        "_data_len",
        "_has_data",
        "_id",
        "_line",
        "_max",
        "_retry",
        "_skip_lf",
        "_started",
        "_type",
        "comments",
        "oversized",
        "unknown_fields",
    )

    def __init__(self, max_event: int = DEFAULT_MAX_EVENT) -> None:
        self._max = max_event
        self._line = bytearray()  # an unterminated line carried over from the previous chunk
        self._skip_lf = False  # the previous chunk ended with CR: an LF now is part of that end
        self._started = False  # the BOM check is done
        self._data: list[str] = []
        self._data_len = 0
        self._has_data = False
        self._type = ""
        self._id = ""  # the last event id: persists across events (WHATWG)
        self._retry: int | None = None
        self.comments = 0
        self.unknown_fields = 0
        self.oversized = 0

    @property
    def pending(self) -> bool:
        """Bytes of a line or fields of an event not dispatched yet."""
        return bool(self._line) or self._has_data or bool(self._type)

    def feed(self, chunk: bytes, ts: float | None = None) -> list[Event]:
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if not chunk:
            return []
        end = max(chunk.rfind(b"\n"), chunk.rfind(b"\r"))
        if end < 0:  # no line end: the line goes on
            if len(self._line) < self._max:
                self._line += chunk[: self._max - len(self._line)]
            return []
        if chunk[end] == 13 and end == len(chunk) - 1:  # a CR last: maybe the first half of CRLF
            self._skip_lf = True
        if self._line:
            self._line += chunk[: end + 1]
            complete = bytes(self._line)
            self._line = bytearray()
        else:
            complete = chunk[: end + 1]
        rest = chunk[end + 1 :]
        if rest:
            self._line += rest[: self._max]
        # bytes.splitlines splits on \n, \r and \r\n only; a terminator is last, so no empty tail
        return self._lines(complete.splitlines(), ts)

    def _lines(self, lines: list[bytes], ts: float | None) -> list[Event]:
        out: list[Event] = []
        if not self._started and lines:  # the stream's first line: a byte order mark is dropped
            self._started = True
            if lines[0].startswith(b"\xef\xbb\xbf"):
                lines[0] = lines[0][3:]
        data = self._data  # the values of this event's data lines, joined by "\n" at dispatch
        for raw in lines:
            if not raw:
                if self._has_data:
                    text = data[0] if len(data) == 1 else "\n".join(data)
                    out.append(Event(text, self._type or "message", self._id, self._retry, ts))
                    data = self._data = []
                    self._data_len = 0
                    self._has_data = False
                self._type = ""
                continue
            if raw.startswith(b"data:"):  # the common line first: no partition, no decode of "data"
                value = raw[6:] if raw[5:6] == b" " else raw[5:]
                self._data_value(value.decode("utf-8", "replace"))
                continue
            line = raw.decode("utf-8", "replace")
            if line[0] == ":":
                self.comments += 1
                continue
            name, colon, text = line.partition(":")
            if colon and text[:1] == " ":
                text = text[1:]
            if name == "data":  # "data" alone: an empty data line
                self._data_value(text)
            elif name == "event":
                self._type = text
            elif name == "id":
                if "\0" not in text:
                    self._id = text
            elif name == "retry":
                if text.isascii() and text.isdigit():
                    self._retry = int(text)
            else:
                self.unknown_fields += 1
        return out

    def _data_value(self, value: str) -> None:
        self._has_data = True
        if self._data_len + len(value) >= self._max:
            if self._data_len < self._max:
                self.oversized += 1
                self._data.append(value[: self._max - self._data_len])
            self._data_len = self._max
        else:
            self._data.append(value)
            self._data_len += len(value) + 1

    def close(self) -> bool:
        """End of stream: True when an event (or a line) was left unfinished; it is discarded."""
        pending = self.pending
        self._line = bytearray()
        self._data, self._data_len, self._has_data, self._type = [], 0, False, ""
        return pending


def parse_sse(
    body: bytes, chunks: tuple[tuple[int, float], ...] = (), max_event: int = DEFAULT_MAX_EVENT
) -> SseStream:
    """Parse a whole ``body``. ``chunks``: (end offset in the body, arrival time) of each piece
    as it came off the wire, in order; the events get the time of the piece that ended them.
    Without chunks, events have no time. Bytes past the last chunk's offset get its time."""
    p = SseParser(max_event)
    events: list[Event] = []
    start = 0
    for end, ts in chunks:
        if end > start:
            events.extend(p.feed(body[start:end], ts))
            start = end
    if start < len(body):
        events.extend(p.feed(body[start:], chunks[-1][1] if chunks else None))
    pending = p.close()
    return SseStream(tuple(events), pending, p.comments, p.unknown_fields, p.oversized)
