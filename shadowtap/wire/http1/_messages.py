"""HTTP/1.x parser records: the direction states, the transaction and the message being parsed."""

from __future__ import annotations

import re
from enum import IntEnum

from shadowtap.records import Request, Response
from shadowtap.wire.protocol import Event
from shadowtap.wire.protocol import Transaction as _BaseTransaction

# Enum members bound once: attribute access on an Enum class costs ~0.3 us.
_EVENT_DONE = Event.DONE
_EVENT_OPENED = Event.OPENED
_EVENT_REQUEST = Event.REQUEST


class State(IntEnum):
    HEAD = 0
    BODY_LENGTH = 1
    CHUNK_SIZE = 2
    CHUNK_DATA = 3
    CHUNK_END = 4
    TRAILERS = 5
    BODY_CLOSE = 6
    WAIT = 7  # request side: a CONNECT/Upgrade request waits for the response's verdict
    TUNNEL = 8
    SYNC = 9
    DEAD = 10


# Enum members bound once: attribute access on an Enum class costs ~0.3 us.
_STATE_BODY_CLOSE = State.BODY_CLOSE
_STATE_BODY_LENGTH = State.BODY_LENGTH
_STATE_CHUNK_DATA = State.CHUNK_DATA
_STATE_CHUNK_END = State.CHUNK_END
_STATE_CHUNK_SIZE = State.CHUNK_SIZE
_STATE_DEAD = State.DEAD
_STATE_HEAD = State.HEAD
_STATE_SYNC = State.SYNC
_STATE_TRAILERS = State.TRAILERS
_STATE_TUNNEL = State.TUNNEL
_STATE_WAIT = State.WAIT


_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_REQ_LINE = (
    rb"[A-Za-z][A-Za-z0-9_.!#$%&'*+^`|~-]{0,31}[ \t]+[^\s]+(?:[ \t]+[^\s]+)*?"
    rb"[ \t]+HTTP/\d\.\d[ \t]*\r?\n"
)
_RESP_LINE = rb"HTTP/\d\.\d[ \t]+\d\d\d"
_SYNC_AT = {True: re.compile(_REQ_LINE), False: re.compile(_RESP_LINE)}
_SYNC_AFTER_NL = {
    True: re.compile(rb"\n(?=" + _REQ_LINE + rb")"),
    False: re.compile(rb"\n(?=" + _RESP_LINE + rb")"),
}
_SYNC_KEEP = 256  # bytes kept after a failed resync search (a message start may straddle segments)
_SYNC_GIVE_UP = 1 << 20  # bytes searched without finding any message: the stream is not HTTP


class Transaction(_BaseTransaction):
    """An HTTP/1.x exchange in the making: the generic fields (``shadowtap.wire.protocol``) and the
    parser's pairing state."""

    __slots__ = (
        "after_gap",
        "http09",
        "method",
        "req_done",
        "req_end_ts",
        "resp_done",
        "upgrade",
    )

    def __init__(self, ts: float) -> None:
        # Every field set here (no super().__init__ call): one is made per exchange.
        self.ts = ts
        self.index = -1
        self.request: Request | None = None
        self.response: Response | None = None
        self.req_done = False
        self.resp_done = False
        self.anomalies: list[str] = []
        self.void = False
        self.done = False
        self.after_gap = False
        self.http09 = False
        self.method = ""
        self.req_end_ts: float | None = None
        self.secret = False  # a watched (secret) header name appears in a head: redact
        self.upgrade = (
            False  # CONNECT or Upgrade: the response may turn the connection into a tunnel
        )
        self.chunks: tuple[tuple[int, float], ...] = ()  # a streamed response's timed pieces


def _timed(msg: _Msg, ts: float) -> None:
    """Note that a streamed body reached ``msg.body_len`` bytes at ``ts``; pieces of one packet
    share an entry. O(1)."""
    chunks = msg.chunks
    assert chunks is not None
    if chunks and chunks[-1][1] == ts:
        chunks[-1] = (msg.body_len, ts)
    else:
        chunks.append((msg.body_len, ts))


class _Msg:
    """A message being parsed."""

    __slots__ = (
        "anomalies",
        "body_len",
        "chunks",
        "encodings",
        "end_ts",
        "headers",
        "kept",
        "parts",
        "secret",
        "start1",
        "start2",
        "truncated",
        "ts",
        "version",
    )

    def __init__(self, ts: float) -> None:
        self.ts = ts
        self.end_ts = ts
        self.version = ""
        self.headers: tuple[tuple[str, str], ...] = ()
        self.parts: list[bytes | bytearray] = []
        self.kept = 0
        self.body_len = 0
        self.truncated = False
        self.start1 = ""  # method or status
        self.start2 = ""  # target or reason
        self.encodings: str | None = None
        self.anomalies: list[str] = []
        self.secret = False  # a header the conversation watches for (secrets to redact) is present
        # A streamed body (text/event-stream, NDJSON): (body length, packet time) per piece, for
        # time to first token (records.Chunks); None for every other body (no cost).
        self.chunks: list[tuple[int, float]] | None = None
