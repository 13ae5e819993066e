"""One HTTP/2 connection observed passively: frames of both directions in, one transaction per
stream out (sans-I/O; see the package docstring for what is and is not decoded).

The interface is the HTTP/1.x parser's (``Conversation.client.feed(ts, data)``, ``.server``,
``gap``, ``end``, ``close``, the ``events`` list of ``(Event, Stream)`` and the ``anomalies``
list the pipeline drains), so the extractor drives both the same way; ``Stream`` carries the
attributes the pipeline reads off a transaction (``ts``, ``index``, ``request``, ``response``,
``anomalies``, ``done``, ``void``...).

Memory: per open stream, the kept body bytes of each side (``max_body`` each) and the gRPC
messages split from them (bounded by the same budget); streams open at once are bounded by
``max_streams`` (beyond it the oldest is finished as ``truncated``). Frames are buffered one at a
time per direction (``_frames``).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from enum import Enum

from hyperframe.exceptions import HyperframeError
from hyperframe.frame import (
    Frame,
    GoAwayFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
)

from shadowtap.records import GrpcCall, H2Stream, Request, Response
from shadowtap.wire import grpc as _grpc
from shadowtap.wire.http2._frames import (
    _CONTINUATION,
    _DATA,
    _HEADERS,
    PREFACE,
    FrameReader,
    looks_like_frames,
    plausible_header,
)
from shadowtap.wire.http2._hpack import HeaderDecoder

# Events (shadowtap.wire.protocol): OPENED at a stream's first frame (the Extractor orders it
# from there), REQUEST when the client ended the stream, DONE when the stream is over.
from shadowtap.wire.protocol import Event, ParserSettings, Sniff, Switch, Transaction

__all__ = ["Anomaly", "Conversation", "Event", "Outcome", "Stream", "make", "sniff", "upgraded"]


class Outcome(str, Enum):
    COMPLETE = "complete"
    RESET = "reset"
    REFUSED = "refused"
    TRUNCATED = "truncated"


class Anomaly(str, Enum):
    """Names written in an exchange's ``anomalies`` (and counted per connection when no stream
    carries them)."""

    MIDSTREAM = "midstream"  # joined the connection after it began
    GAP = "gap"  # bytes of this stream lost by the capture
    TRUNCATED = "truncated"  # the connection or capture ended inside the stream
    STREAM_START_UNSEEN = "h2_stream_start_unseen"  # the stream began before the capture
    HEADERS_UNDECODABLE = "h2_headers_undecodable"  # fields referenced unknown HPACK entries
    PATH_UNKNOWN = "h2_path_unknown"  # no :path (kept for its gRPC messages, or counted)
    HPACK_ERROR = "h2_hpack_error"  # a header block did not decode (index out of range, Huffman)
    FRAME_ERROR = "h2_frame_error"  # a frame hyperframe refused (bad padding, bad length)
    FRAME_TOO_LARGE = "h2_frame_too_large"  # longer than the receiver's SETTINGS_MAX_FRAME_SIZE
    HEADER_BLOCK_INTERRUPTED = "h2_header_block_interrupted"  # CONTINUATION sequence broken
    RESET = "h2_reset"  # RST_STREAM
    REFUSED = "h2_goaway"  # above a GOAWAY's last stream id
    PUSH_IGNORED = "h2_push_ignored"  # a PUSH_PROMISE (pushed streams are not recorded)
    NOT_H2 = "not_h2"  # (connection) the client did not send the preface
    BAD_UPGRADE_SETTINGS = "h2_bad_upgrade_settings"  # (connection) HTTP2-Settings unreadable
    SYNC_SKIPPED = "h2_sync_skipped"  # (connection) bytes skipped to find a frame boundary


_H2 = "HTTP/2"
_MAX_CHUNKS = 1024


class _Side:
    """One message (request or response) of a stream in the making."""

    __slots__ = (
        "data",
        "data_len",
        "end_ts",
        "ended",
        "fields",
        "head",
        "lost",
        "splitter",
        "trailers",
        "ts",
    )

    def __init__(self, budget: int) -> None:
        self.ts: float | None = None
        self.end_ts: float | None = None
        self.head = False  # the head (non-interim HEADERS) was decoded or at least seen
        self.fields: tuple[tuple[str, str], ...] = ()  # the head's (the decoder's tuple, shared)
        self.trailers: list[tuple[str, str]] = []
        self.data = bytearray()
        self.data_len = 0
        self.ended = False  # END_STREAM seen
        self.lost = False  # bytes lost in a gap
        self.splitter = _grpc.MessageSplitter(budget)

    def touch(self, start: float, end: float) -> None:
        if self.ts is None:
            self.ts = start
        self.end_ts = end if self.end_ts is None or end > self.end_ts else self.end_ts

    def pseudo(self, name: str) -> str | None:
        for n, v in self.fields:
            if n == name:
                return v
        return None

    def header(self, name: str) -> str | None:
        """A field by its lower-case name (HTTP/2 field names are lower case on the wire)."""
        for n, v in self.fields:
            if n == name:
                return v
        return None


class Stream(Transaction):
    """One stream in the making (mutable; the Extractor turns it into a frozen Exchange): a
    ``wire.protocol.Transaction`` with the stream's parser state, its ``h2`` outcome and its
    ``grpc`` call (set when the stream is done)."""

    __slots__ = ("error_code", "grpc", "h2", "id", "outcome", "pieces", "req", "resp", "undecoded")

    def __init__(self, sid: int, ts: float, budget: int) -> None:
        super().__init__(ts)
        self.id = sid
        self.req = _Side(budget)
        self.resp = _Side(budget)
        self.h2: H2Stream | None = None
        self.grpc: GrpcCall | None = None
        # The response's DATA arrival: (body bytes so far, capture time), at most _MAX_CHUNKS;
        # ``chunks`` when the stream is done (records.Exchange.chunks: a streamed answer's timing).
        self.pieces: list[tuple[int, float]] = []
        self.outcome = Outcome.COMPLETE
        self.error_code: int | None = None
        self.undecoded = 0


class _Direction:
    """The frames of one direction and their HPACK state."""

    __slots__ = ("_block", "conv", "decoder", "from_client", "reader")

    def __init__(
        self, conv: Conversation, from_client: bool, known_start: bool, preface: bool
    ) -> None:
        self.conv = conv
        self.from_client = from_client
        self.reader = FrameReader(expect_preface=preface, synced=known_start)
        self.decoder = HeaderDecoder(known_start=known_start, watch=conv.watch)
        # An open header block: [stream id, fragments, end_stream, first ts, is push promise]
        self._block: list | None = None

    def feed(self, ts: float, data: bytes) -> None:
        reader = self.reader
        if (
            reader.preface
            and reader.pending == 0  # the direction's very first bytes: no preface begun
            and self.conv.streams_seen == 0
            and data[:1] != b"P"
            and looks_like_frames(data)
        ):
            # No preface but frames: the connection's start was not what the capture saw.
            self.conv.joined_late()
        on_frame = self.conv.on_frame
        for start_ts, ftype, sid, length, flags, frame in reader.feed(ts, data):
            on_frame(self, start_ts, ts, ftype, sid, length, flags, frame)
        if reader.broken is not None and not self.conv.not_h2:
            self.conv.not_h2 = True
            self.conv.anomalies.append(Anomaly.NOT_H2.value)
        if reader.dropped:
            self.conv.anomalies.append(Anomaly.SYNC_SKIPPED.value)
            reader.dropped = 0


class Conversation:
    """A passive HTTP/2 connection (see the module docstring).

    ``midstream``: the capture did not see the connection begin (no preface expected, frame
    boundaries and the HPACK tables unknown). ``upgrade``: the switch of an HTTP/1.1
    ``Upgrade: h2c`` answered ``101`` (``wire.protocol.Switch``): its request is stream 1's, its
    held bytes are fed first, and the bytes fed next are those after them (the client's begin
    with the preface, the server's with SETTINGS).
    ``max_body``: body bytes (and gRPC message bytes) kept per message."""

    def __init__(
        self,
        *,
        max_body: int = 1 << 20,
        midstream: bool = False,
        upgrade: Switch | None = None,
        max_streams: int = 10_000,
        watch: tuple[str, ...] = (),
    ) -> None:
        self.max_body = max_body
        self.max_streams = max_streams
        self.midstream = midstream
        self.events: list[tuple[Event, Transaction]] = []
        self.anomalies: list[str] = []
        self.streams: dict[int, Stream] = {}
        self.watch = frozenset(watch)
        self.client = _Direction(self, True, not midstream, not midstream)
        self.server = _Direction(self, False, not midstream, False)
        # The Extractor's entry points (shadowtap.wire.protocol.Conversation): bound once.
        self.feed_client: Callable[[float, bytes], None] = self.client.feed
        self.feed_server: Callable[[float, bytes], None] = self.server.feed
        self._current: Stream | None = None
        self.not_h2 = False
        self._index = 0
        self._max_opened = 0  # highest client stream id opened by HEADERS seen
        self._first_opened = 0  # lowest such id (below it: streams begun before the capture)
        self._closed_early: set[int] = set()  # such streams already finished
        self._goaway: int | None = None
        # Counters for the extraction summary.
        self.streams_seen = 0
        self.partly_decoded = 0
        self.dropped_no_path = 0
        if upgrade is not None:
            self._upgraded(upgrade)

    def _upgraded(self, sw: Switch) -> None:
        """The connection continues an HTTP/1.1 ``Upgrade: h2c`` (RFC 7540 section 3.2): the
        upgraded request is stream 1's (half closed by the client, its response comes as HTTP/2),
        at the request's position on the connection; the request's ``HTTP2-Settings`` are the
        client's SETTINGS; then the bytes each side sent after the handover point."""
        req = sw.request
        self._index = sw.index
        st = self._open(1, req.ts)
        self._index = max(self._index, sw.next_index)
        side = st.req
        side.ts, side.end_ts, side.head, side.ended = req.ts, req.end_ts, True, True
        side.fields = ((":method", req.method), (":path", req.target)) + tuple(
            [(n.lower(), v) for n, v in req.headers]
        )
        side.data += req.body
        side.data_len = req.body_len
        side.splitter.feed(req.body)
        # The request as it was sent (HTTP/1.1); it was announced (Event.REQUEST) by HTTP/1.x.
        st.request = req
        st.secret = sw.secret
        for a in sw.anomalies:
            st.note(a)
        self._max_opened = self._first_opened = 1
        settings = side.header("http2-settings")
        if settings is not None:
            self._client_settings(settings)
        feeds = [(sw.client_ts, True, sw.client), (sw.server_ts, False, sw.server)]
        for ts, from_client, data in sorted(feeds, key=lambda f: (f[0], not f[1])):
            if data:
                (self.client if from_client else self.server).feed(ts, data)

    def _client_settings(self, value: str) -> None:
        """The ``HTTP2-Settings`` header (a SETTINGS payload, base64url without padding): what
        the server may send the client, as a SETTINGS frame of the client would say."""
        try:
            raw = base64.urlsafe_b64decode(value.strip() + "=" * (-len(value.strip()) % 4))
            frame = SettingsFrame(0)
            frame.parse_body(memoryview(raw))
        except (ValueError, HyperframeError):
            self.anomalies.append(Anomaly.BAD_UPGRADE_SETTINGS.value)
            return
        self._apply_settings(frame.settings, self.server)

    # -- the pipeline's interface ---------------------------------------------------------------

    def data(self, from_client: bool, ts: float, data: bytes) -> None:
        (self.client if from_client else self.server).feed(ts, data)

    def joined_late(self) -> None:
        """Frames without the preface: treat the connection as joined mid-way."""
        self.midstream = True
        for d in (self.client, self.server):
            d.reader.preface = False
            d.reader.synced = False
            d.decoder.lose_state()

    def take_index(self) -> int:
        i = self._index
        self._index += 1
        return i

    @property
    def queue(self) -> list[Stream]:
        """Streams not finished yet (the pipeline closes them when the connection closes)."""
        return list(self.streams.values())

    @property
    def pending(self) -> bool:
        return bool(self.streams)

    def current(self) -> Stream | None:
        """The stream whose frame came last (a retransmission conflict is noted on it)."""
        st = self._current
        return st if st is not None and not st.done else None

    def gap(self, from_client: bool, ts: float, n: int) -> None:
        """``n`` bytes of one direction were lost: its frame boundaries and HPACK state are
        unknown from here; every stream open in that direction lost bytes."""
        d = self.client if from_client else self.server
        d.reader.lose_sync()
        d.decoder.lose_state()
        d._block = None
        for st in self.streams.values():
            side = st.req if from_client else st.resp
            if not side.ended:
                side.lost = True
                side.splitter.lose()
                st.note(Anomaly.GAP.value)

    def end(self, from_client: bool, ts: float) -> None:
        d = self.client if from_client else self.server
        # A chain that ran to the end of input confirms frame boundaries (a short capture).
        if not d.reader.synced and d.reader.pending:
            for item in d.reader.feed(ts, b"", final=True):
                self.on_frame(d, item[0], ts, *item[1:])

    def close(self, ts: float) -> None:
        """Both directions ended: every open stream finishes as it stands."""
        for st in list(self.streams.values()):
            st.outcome = Outcome.TRUNCATED
            st.note(Anomaly.TRUNCATED.value)
            self._finish(st)

    # -- frames ---------------------------------------------------------------------------------

    def _open(self, sid: int, ts: float) -> Stream:
        st = Stream(sid, ts, self.max_body)
        st.index = self.take_index()
        self.streams[sid] = st
        self.streams_seen += 1
        if self.midstream:
            st.note(Anomaly.MIDSTREAM.value)
        self.events.append((Event.OPENED, st))
        if len(self.streams) > self.max_streams:
            oldest = next(iter(self.streams.values()))
            oldest.outcome = Outcome.TRUNCATED
            oldest.note(Anomaly.TRUNCATED.value)
            self._finish(oldest)
        return st

    def _stream(self, sid: int, ts: float, opening: bool) -> Stream | None:
        """The stream ``sid`` (client-initiated, odd), opened when a request HEADERS opens it or
        when the capture joined after it began; None for a stream already finished."""
        st = self.streams.get(sid)
        if st is not None:
            return st
        if sid % 2 == 0:
            return None  # server push: not recorded
        if opening and sid > self._max_opened:
            self._max_opened = sid
            if not self._first_opened:
                self._first_opened = sid
            return self._open(sid, ts)
        if (
            (self.midstream or not self._first_opened)
            and sid not in self._closed_early
            and (not self._first_opened or sid < self._first_opened)
        ):
            st = self._open(sid, ts)
            st.note(Anomaly.STREAM_START_UNSEEN.value)
            return st
        return None

    def on_frame(
        self,
        d: _Direction,
        start_ts: float,
        ts: float,
        ftype: int,
        sid: int,
        length: int,
        flags: int,
        frame: bytes | Frame | str,
    ) -> None:
        """One frame (``_frames.Item``): a DATA payload or a HEADERS/CONTINUATION block fragment
        (``bytes``), another frame (hyperframe's), or the text of a refused one (``str``);
        ``flags`` the raw flag bits (END_STREAM 0x1, END_HEADERS 0x4, ACK 0x1)."""
        st = self.streams.get(sid) if sid else None
        if st is not None:
            self._current = st
        reader = d.reader
        if length > reader.max_frame and reader.max_frame_known and type(frame) is not str:
            if st is not None:
                st.note(Anomaly.FRAME_TOO_LARGE.value)
            else:
                self.anomalies.append(Anomaly.FRAME_TOO_LARGE.value)
        block = d._block
        if block is not None and not (
            ftype == _CONTINUATION and sid == block[0] and type(frame) is bytes
        ):
            # A header block must be followed by its CONTINUATION frames and nothing else.
            st = self.streams.get(block[0])
            if st is not None:
                st.note(Anomaly.HEADER_BLOCK_INTERRUPTED.value)
            else:
                self.anomalies.append(Anomaly.HEADER_BLOCK_INTERRUPTED.value)
            d._block = None
            d.decoder.lose_state()  # the block's table insertions are unknown
        if type(frame) is str:
            if st is not None:
                st.note(Anomaly.FRAME_ERROR.value)
            else:
                self.anomalies.append(Anomaly.FRAME_ERROR.value)
            return
        if ftype == _DATA:
            if st is None:
                st = self._stream(sid, start_ts, False)
                if st is None:
                    return
            side = st.req if d.from_client else st.resp
            if side.ts is None:  # side.touch(start_ts, ts), inline: a DATA frame is the most common
                side.ts = start_ts
            if side.end_ts is None or ts > side.end_ts:
                side.end_ts = ts
            chunk: bytes = frame  # type: ignore[assignment]
            if chunk:
                side.data_len += len(chunk)
                if not d.from_client and len(st.pieces) < _MAX_CHUNKS:
                    st.pieces.append((side.data_len, ts))
                room = self.max_body - len(side.data)
                if room > 0:
                    side.data += chunk[:room]
                if not side.lost:
                    side.splitter.feed(chunk)
            if flags & 0x1:  # END_STREAM
                self._end_side(st, d.from_client)
        elif ftype == _HEADERS:
            d._block = [sid, [frame], flags & 0x1, start_ts, False]
            if flags & 0x4:  # END_HEADERS
                self._header_block(d, ts)
        elif ftype == _CONTINUATION:
            if d._block is None:
                return  # its HEADERS was not seen (joined or lost): nothing to decode it with
            d._block[1].append(frame)
            if flags & 0x4:
                self._header_block(d, ts)
        elif isinstance(frame, PushPromiseFrame):
            # Decoded for its HPACK table insertions, then ignored.
            d._block = [sid, [frame.data], False, start_ts, True]
            if flags & 0x4:
                self._header_block(d, ts)
        elif isinstance(frame, SettingsFrame):
            if flags & 0x1:
                return
            self._apply_settings(frame.settings, self.server if d.from_client else self.client)
        elif isinstance(frame, RstStreamFrame):
            if st is not None:
                st.outcome = Outcome.RESET
                st.error_code = frame.error_code
                st.note(Anomaly.RESET.value)
                self._finish(st)
        elif isinstance(frame, GoAwayFrame) and not d.from_client:
            self._goaway = frame.last_stream_id
            for st in [s for s in self.streams.values() if s.id > frame.last_stream_id]:
                st.outcome = Outcome.REFUSED
                st.error_code = frame.error_code
                st.note(Anomaly.REFUSED.value)
                self._finish(st)
        # PRIORITY, PING, WINDOW_UPDATE, unknown extension frames: nothing to record.

    @staticmethod
    def _apply_settings(s: dict[int, int], other: _Direction) -> None:
        """A peer's SETTINGS bound what the *other* direction may send it."""
        if SettingsFrame.HEADER_TABLE_SIZE in s:
            other.decoder.set_table_limit(s[SettingsFrame.HEADER_TABLE_SIZE])
        if SettingsFrame.MAX_FRAME_SIZE in s:
            other.reader.max_frame = s[SettingsFrame.MAX_FRAME_SIZE]
            other.reader.max_frame_known = True

    def _header_block(self, d: _Direction, ts: float) -> None:
        sid, fragments, end_stream, start_ts, push = d._block  # type: ignore[misc]
        d._block = None
        decoded = d.decoder.decode(b"".join(fragments))
        if push:
            st = self.streams.get(sid)
            if st is not None:
                st.note(Anomaly.PUSH_IGNORED.value)
            else:
                self.anomalies.append(Anomaly.PUSH_IGNORED.value)
            return
        fields = decoded.fields
        secret = decoded.secret
        # A client's header block on a new stream id opens it; a server's never does.
        st = self._stream(sid, start_ts, d.from_client)
        if st is None:
            return
        if secret:
            st.secret = True
        if decoded.error is not None:
            st.note(Anomaly.HPACK_ERROR.value)
        if decoded.unknown or (d.decoder.passive and decoded.error is None and not fields):
            st.undecoded += decoded.unknown
            st.note(Anomaly.HEADERS_UNDECODABLE.value)
        side = st.req if d.from_client else st.resp
        side.touch(start_ts, ts)
        if not side.head:
            status = None if d.from_client else _status(fields)
            if status is not None and 100 <= status < 200 and status != 101:
                pass  # interim response (100 Continue, 103 Early Hints): not the answer
            else:
                side.head = True
                side.fields = fields
        else:
            side.trailers.extend(fields)
        if end_stream:
            self._end_side(st, d.from_client)

    def _end_side(self, st: Stream, from_client: bool) -> None:
        side = st.req if from_client else st.resp
        if side.ended:
            return
        side.ended = True
        if from_client:
            self.events.append((Event.REQUEST, st))
            st.request = self._request(st)
        if st.req.ended and st.resp.ended:
            self._finish(st)

    def _finish(self, st: Stream) -> None:
        if st.done:
            return
        if self.streams.pop(st.id, None) is None:
            return
        if self._first_opened and st.id < self._first_opened:
            self._closed_early.add(st.id)
        st.done = True
        self._build(st)
        self.events.append((Event.DONE, st))

    # -- records --------------------------------------------------------------------------------

    def _message_common(
        self, st: Stream, side: _Side
    ) -> tuple[float, float, str, tuple[tuple[str, str], ...], bytes, int, bool, int | None]:
        """The fields a Request and a Response share, in their order (``records.Message``)."""
        body = bytes(side.data)
        truncated = side.data_len > len(body) or side.lost or (not side.ended)
        decoded_len: int | None = None
        if not truncated:
            decoded_len = _decoded_len(body, side.header("content-encoding"))
        ts = side.ts if side.ts is not None else st.ts
        end = side.end_ts if side.end_ts is not None else ts
        headers = side.fields + tuple(side.trailers) if side.trailers else side.fields
        return (ts, end, _H2, headers, body, side.data_len, truncated, decoded_len)

    def _request(self, st: Stream) -> Request | None:
        side = st.req
        if side.ts is None:
            return None
        method = side.pseudo(":method") or ""
        target = side.pseudo(":path")
        if target is None and method == "CONNECT":
            target = side.pseudo(":authority")
        return Request(*self._message_common(st, side), method, target or "")

    def _build(self, st: Stream) -> None:
        st.chunks = tuple(st.pieces)
        if st.request is None or not st.req.ended:
            st.request = self._request(st)
        resp = st.resp
        if resp.ts is not None:
            status = _status(resp.fields) or 0
            st.response = Response(*self._message_common(st, resp), status, "")
        path = st.req.pseudo(":path")
        req_type, resp_type = st.req.header("content-type"), resp.header("content-type")
        is_grpc = _grpc.is_grpc_content_type(req_type) or _grpc.is_grpc_content_type(resp_type)
        if path is None:
            st.note(Anomaly.PATH_UNKNOWN.value)
        if (
            not is_grpc
            and (path is None or st.undecoded)
            and (req_type is None and resp_type is None)
        ):
            # The content type was not decodable (or not seen): gRPC messages carry no HPACK
            # state, so the call is recognised by its bytes reading as whole gRPC messages.
            is_grpc = _looks_grpc(st)
        if st.undecoded or st.anomalies.count(Anomaly.HEADERS_UNDECODABLE.value):
            self.partly_decoded += 1
        if is_grpc:
            st.req.splitter.finish()
            resp.splitter.finish()
            names = _grpc.parse_path(path) or ("", "")
            grpc_status, message = _grpc.status_of(
                resp.fields + tuple(resp.trailers) if resp.trailers else resp.fields
            )
            st.grpc = GrpcCall(
                names[0],
                names[1],
                st.req.splitter.records(st.req.header("grpc-encoding"), self.max_body),
                resp.splitter.records(resp.header("grpc-encoding"), self.max_body),
                st.req.splitter.count,
                resp.splitter.count,
                grpc_status,
                message,
            )
            for a in st.req.splitter.anomalies + resp.splitter.anomalies:
                st.note(a)
        elif path is None:
            st.void = True
            self.dropped_no_path += 1
            self.anomalies.append(Anomaly.PATH_UNKNOWN.value)
        if st.request is None and st.response is None:
            st.void = True
        st.h2 = H2Stream(
            st.id,
            st.outcome.value,
            st.error_code,
            len(st.req.trailers),
            len(resp.trailers),
            st.undecoded,
        )


def _status(fields: tuple[tuple[str, str], ...]) -> int | None:
    for n, v in fields:
        if n == ":status":
            try:
                return int(v)
            except ValueError:
                return None
    return None


def _looks_grpc(st: Stream) -> bool:
    """Both sides' kept DATA split into whole gRPC messages, at least one."""
    sides = [s for s in (st.req, st.resp) if s.data_len]
    if not sides:
        return False
    for s in sides:
        sp = s.splitter
        if sp.lost or sp.count == 0 or sp.anomalies or sp._need > 0 or sp._head:
            return False
    return True


def _decoded_len(body: bytes, coding: str | None) -> int | None:
    """The body's length after its Content-Encoding (gzip, deflate; identity or none: as is)."""
    if coding is None or coding.strip().lower() in ("", "identity"):
        return len(body)
    got = _grpc.decompress(body, coding.strip().lower(), 64 << 20)
    if got is None or got[1]:
        return None
    return len(got[0])


def make(settings: ParserSettings, midstream: bool) -> Conversation:
    """A Conversation with the Extractor's limits (``wire.protocol.ProtocolSpec.make``)."""
    return Conversation(
        max_body=settings.max_body, midstream=midstream, watch=tuple(settings.watch)
    )


def upgraded(settings: ParserSettings, switch: Switch) -> Conversation:
    """The parser of a connection an HTTP/1.1 ``Upgrade: h2c`` handed over
    (``wire.protocol.ProtocolSpec.upgrade``): stream 1 is the upgraded request, the switch's
    held bytes already fed."""
    return Conversation(max_body=settings.max_body, watch=tuple(settings.watch), upgrade=switch)


def sniff(data: bytes, from_client: bool) -> Sniff:
    """HTTP/2 from a connection's first bytes (``shadowtap.wire.protocol.ProtocolSpec.sniff``):
    the client's preface (MORE while the bytes are a prefix of it), or two plausible frame
    headers in a row from the first byte (a capture that joined the connection mid-way, or the
    server's SETTINGS seen before the client's preface). O(1): only offset 0 is tried, so a
    mid-way join whose first captured byte is inside a frame goes to HTTP/1.x (``not_http``).
    HTTP/1.x never passes: an ASCII first byte reads as a frame length above 4 MiB."""
    if not data:
        return Sniff.MORE
    if from_client:
        n = min(len(data), len(PREFACE))
        if data[:n] == PREFACE[:n]:
            return Sniff.YES if n == len(PREFACE) else Sniff.MORE
    pos = found = 0
    while found < 2 and pos + 9 <= len(data):
        length = plausible_header(data, pos, _SNIFF_MAX_LEN)
        if length < 0:
            return Sniff.NO
        found += 1
        pos += 9 + length
    return Sniff.YES if found >= 2 else Sniff.MORE


_SNIFF_MAX_LEN = 1 << 20
