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

A whole body (``parse_sse``) with LF line ends only (what every LLM server sends) is read in one
pass: split on blank lines (``\n\n``) in C, each event's time found by walking the chunk list
once; a block of one ``data:`` line (the common event) costs a slice and a decode, any other block
goes through the incremental parser's line rules. The events are the same as feeding the chunks
one by one (tests/shadowtap/test_sse.py checks it on generated streams); it was ~5x cheaper on
50-event OpenAI streams. ``SseStream.records`` holds the events as plain tuples (a frozen
dataclass per event cost a third of the parse); ``events`` builds the ``Event`` records on demand.
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


Record = tuple[str, str, str, int | None, float | None]  # an Event's fields, in its order


@dataclass(frozen=True, slots=True)
class SseStream:
    """A whole stream parsed: its events (``records``: (data, type, id, retry, ts) tuples, in
    order), whether it ended mid-event (``pending``: bytes of an undispatched event or line at the
    end), comment lines and lines of unknown fields counted."""

    records: tuple[Record, ...]
    pending: bool
    comments: int
    unknown_fields: int
    oversized: int

    @property
    def events(self) -> tuple[Event, ...]:
        return tuple([Event(*r) for r in self.records])


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
        out: list[Record] = []
        self._feed(chunk, ts, out)
        return [Event(*r) for r in out]

    def _feed(self, chunk: bytes, ts: float | None, out: list[Record]) -> None:
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if not chunk:
            return
        end = max(chunk.rfind(b"\n"), chunk.rfind(b"\r"))
        if end < 0:  # no line end: the line goes on
            if len(self._line) < self._max:
                self._line += chunk[: self._max - len(self._line)]
            return
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
        self._lines(complete.splitlines(), ts, out)

    def _lines(self, lines: list[bytes], ts: float | None, out: list[Record]) -> None:
        """Complete lines (terminators removed; an empty one is a blank line) through the field
        rules; dispatched events appended to ``out``."""
        if not self._started and lines:  # the stream's first line: a byte order mark is dropped
            self._started = True
            if lines[0].startswith(b"\xef\xbb\xbf"):
                lines[0] = lines[0][3:]
        data = self._data  # the values of this event's data lines, joined by "\n" at dispatch
        for raw in lines:
            if not raw:
                if self._has_data:
                    text = data[0] if len(data) == 1 else "\n".join(data)
                    out.append((text, self._type or "message", self._id, self._retry, ts))
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
    out: list[Record] = []
    if b"\r" not in body and not body.startswith(b"\xef\xbb\xbf"):
        _whole_lf(p, body, chunks, out)
    else:
        start = 0
        for end, ts in chunks:
            if end > start:
                p._feed(body[start:end], ts, out)
                start = end
        if start < len(body):
            p._feed(body[start:], chunks[-1][1] if chunks else None, out)
    pending = p.close()
    return SseStream(tuple(out), pending, p.comments, p.unknown_fields, p.oversized)


def _whole_lf(
    p: SseParser, body: bytes, chunks: tuple[tuple[int, float], ...], out: list[Record]
) -> None:
    """``body`` (LF line ends only, no BOM) in one pass: blocks between blank lines. A block
    followed by ``\n\n`` is its lines, then a blank line (the dispatch); its event's time is that
    of the chunk holding the dispatching ``\n``. The text after the last ``\n\n`` has no blank
    line: its complete lines are read, its unterminated one left in the parser (``pending``)."""
    blocks = body.split(b"\n\n")
    tail = blocks.pop()
    p._started = True
    n = len(chunks)
    ci = 0
    last_ts = chunks[-1][1] if n else None
    pos = 0  # offset of the current block
    ts: float | None = None
    mx = p._max
    for block in blocks:
        blank = pos + len(block) + 1  # the dispatching blank line's \n
        pos = blank + 1
        if n:
            while ci < n and chunks[ci][0] <= blank:
                ci += 1
            ts = chunks[ci][1] if ci < n else last_ts
        # One data line: the event (the common case). Every block ends with a dispatch, so no
        # field of an earlier event is pending here.
        if block.startswith(b"data:") and b"\n" not in block and len(block) < mx:
            value = block[6:] if block[5:6] == b" " else block[5:]
            out.append((value.decode("utf-8", "replace"), "message", p._id, p._retry, ts))
            continue
        lines = block.split(b"\n")
        lines.append(b"")
        p._lines(lines, ts, out)
    if tail:
        lines = tail.split(b"\n")
        rest = lines.pop()  # unterminated (b"" when the tail ends with \n)
        p._lines(lines, last_ts, out)
        if rest:
            p._line += rest[:mx]
