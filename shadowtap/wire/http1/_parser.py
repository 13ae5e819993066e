"""Sans-I/O HTTP/1.x parsing and request/response pairing for one TCP connection.

``Conversation`` takes the two ordered byte streams of a connection (``data``, ``gap``, ``end`` per
direction, from shadowtap.wire.tcp) and appends ``(Event, Transaction)`` pairs to ``events``:
``OPENED`` when a transaction begins (the first byte of a request, or a response with no request to
answer), ``REQUEST`` when its request is complete on the wire, ``DONE`` when it is finished. It
never
reads a file or a socket.

Each direction is a state machine whose states map to handler methods through a table
(``_HANDLERS``). The parser keeps wire fidelity: header names and values are the wire bytes
(latin-1), in wire order and case; the target is the wire target. Framing follows RFC 9112 section
6:
Transfer-Encoding chunked, else Content-Length, else (responses) until close; no body for responses
to HEAD, 1xx, 204, 304; interim 1xx responses are skipped; 101 and 2xx-to-CONNECT turn the
connection into a tunnel (the exchange is recorded, the tunnel is not parsed), except a ``101`` to
an Upgrade another protocol takes over (``upgrades``, "h2c"): the connection is then handed over
at the byte after the ``101`` head (``Event.SWITCH``, ``shadowtap.wire.protocol.Switch``).

Gaps: a gap inside a body of known length (Content-Length, a chunk) is counted into the body and the
message goes on (``gap`` anomaly, ``body_truncated``); a gap anywhere else ends the message at the
gap and the direction resynchronises at the next request or status line: two messages are never
glued together. Memory per direction: the unparsed buffer is at most ``max_head`` bytes plus one
segment; body bytes beyond ``max_body`` are counted, not kept.

Cost: a segment that is exactly one plain message (CRLF head, plain header lines, Content-Length
body, nothing unusual) takes a one-step lane (``_RequestSide.fast``, ``_ResponseSide.fast``): one
decode of the head, its header block read once and remembered (``_headers.block_memo``: a block
seen before is one lookup), the records built at once, ~3 us a message here.
Everything else goes through the state machine; the property tests check both read any
segmentation of a conversation alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shadowtap.records import Request, Response
from shadowtap.wire.anomalies import Anomaly
from shadowtap.wire.content import decode
from shadowtap.wire.genai import is_stream_type
from shadowtap.wire.http1._headers import (
    _content_length,
    _framing,
    _parse_header_text,
    _parse_headers,
    _read_block,
    _values,
    block_memo,
)
from shadowtap.wire.http1._messages import (
    _EVENT_DONE,
    _EVENT_OPENED,
    _EVENT_REQUEST,
    _STATE_BODY_CLOSE,
    _STATE_BODY_LENGTH,
    _STATE_CHUNK_DATA,
    _STATE_CHUNK_END,
    _STATE_CHUNK_SIZE,
    _STATE_DEAD,
    _STATE_HEAD,
    _STATE_SYNC,
    _STATE_TRAILERS,
    _STATE_TUNNEL,
    _STATE_WAIT,
    _SYNC_AFTER_NL,
    _SYNC_AT,
    _SYNC_GIVE_UP,
    _SYNC_KEEP,
    _TCHAR,
    State,
    Transaction,
    _Msg,
    _timed,
)
from shadowtap.wire.protocol import Event, ParserSettings, Sniff, Switch

_EVENT_SWITCH = Event.SWITCH


class _Side:
    """One direction's parser: the buffer, the state and the message being parsed."""

    __slots__ = (
        "boundary",
        "buf",
        "chunked",
        "conv",
        "head_ts",
        "is_request",
        "lost",
        "msg",
        "pos",
        "remaining",
        "scanned",
        "seg_start",
        "state",
        "txn",
    )

    def __init__(self, conv: Conversation, is_request: bool, state: State) -> None:
        self.conv = conv
        self.is_request = is_request
        self.state = state
        self.buf = b""
        self.pos = 0
        self.msg: _Msg | None = None
        self.remaining = 0
        self.chunked = False
        self.head_ts = 0.0
        # Message boundaries lost: "midstream" (joined without the start), "resync" (after a gap),
        # "" (after a parse error); the next message found notes it (except ""); None: in step.
        self.lost: str | None = Anomaly.MIDSTREAM if state == _STATE_SYNC else None
        self.boundary = (
            self.lost is not None
        )  # the next byte follows a gap: a message may start right there
        self.scanned = 0
        self.seg_start = 0  # where the last data fed begins in ``buf``
        self.txn: Transaction | None = None

    def feed(self, ts: float, data: bytes) -> None:
        st = self.state
        if st == _STATE_DEAD or st == _STATE_TUNNEL:
            return
        if self.pos >= len(self.buf):
            if st == _STATE_HEAD and self.txn is None and self.lost is None and self.fast(ts, data):
                return
            self.buf = data
            self.pos = 0
            self.head_ts = ts
            self.seg_start = 0
        else:
            self.seg_start = len(self.buf) - self.pos
            self.buf = self.buf[self.pos :] + data
            self.pos = 0
        self.run(ts)

    def fast(self, ts: float, data: bytes) -> bool:
        """Take ``data`` whole when it is exactly one plain message; False (nothing done) else."""
        return False

    def run(self, ts: float) -> None:
        handlers = self.conv.handlers_req if self.is_request else self.conv.handlers_resp
        # A handler returns True when it made progress; with no bytes left no handler can.
        while handlers[self.state](self, ts) and self.pos < len(self.buf):
            pass
        if self.pos >= len(self.buf):
            self.buf = b""
            self.pos = 0
        elif self.pos > 65536:
            self.buf = self.buf[self.pos :]
            self.pos = 0

    # -- body states (shared) ---------------------------------------------------------------------

    def _take_body(self, data: bytes) -> None:
        msg = self.msg
        assert msg is not None
        n = len(data)
        msg.body_len += n
        room = self.conv.max_body - msg.kept
        if room > 0:
            piece = data if n <= room else data[:room]
            # One buffer a body: the first piece as it came (no copy for a one-piece body), then
            # a bytearray that grows amortised O(1) (tiny chunks cost their bytes, not an
            # object each: issue 12 item 7).
            parts = msg.parts
            if not parts:
                parts.append(piece)
            elif type(parts[0]) is bytearray:
                parts[0] += piece
            else:
                parts[0] = bytearray(parts[0]) + piece
            msg.kept += len(piece)
        if n > room:
            msg.truncated = True

    def _skip_blank_lines(self) -> bool:
        """Skip CR and LF before a message head (RFC 9112 2.2 allows empty lines there); True when
        bytes of the head follow."""
        buf = self.buf
        pos = self.pos
        n = len(buf)
        while pos < n and buf[pos] in (13, 10):
            pos += 1
        self.pos = pos
        return pos < n

    def st_body_length(self, ts: float) -> bool:
        avail = len(self.buf) - self.pos
        if avail <= 0:
            return False
        n = min(avail, self.remaining)
        self._take_body(self.buf[self.pos : self.pos + n] if n != len(self.buf) else self.buf)
        if self.msg is not None and self.msg.chunks is not None:
            _timed(self.msg, ts)
        self.pos += n
        self.remaining -= n
        if self.remaining == 0:
            self.complete(ts)
            return True
        return False

    def st_chunk_size(self, ts: float) -> bool:
        le = self.buf.find(b"\n", self.pos)
        if le < 0:
            if len(self.buf) - self.pos > 4096:
                self.fail(ts, Anomaly.CHUNK_FRAMING)
                return True
            return False
        line = self.buf[self.pos : le].split(b";", 1)[0].strip(b" \t\r")
        try:
            size = int(line, 16)
            if not line or line[:1] in (b"-", b"+") or b"_" in line:
                raise ValueError
        except ValueError:
            self.fail(ts, Anomaly.CHUNK_FRAMING)
            return True
        self.pos = le + 1
        if size == 0:
            self.state = _STATE_TRAILERS
        else:
            self.remaining = size
            self.state = _STATE_CHUNK_DATA
        return True

    def st_chunk_data(self, ts: float) -> bool:
        avail = len(self.buf) - self.pos
        if avail <= 0:
            return False
        n = min(avail, self.remaining)
        self._take_body(self.buf[self.pos : self.pos + n])
        if self.msg is not None and self.msg.chunks is not None:
            _timed(self.msg, ts)
        self.pos += n
        self.remaining -= n
        if self.remaining == 0:
            self.state = _STATE_CHUNK_END
            return True
        return False

    def st_chunk_end(self, ts: float) -> bool:
        buf, pos = self.buf, self.pos
        if buf.startswith(b"\r\n", pos):
            self.pos = pos + 2
        elif buf.startswith(b"\n", pos):
            self.pos = pos + 1
        elif len(buf) - pos < 2 and buf[pos:] in (b"", b"\r"):
            return False
        else:
            assert self.msg is not None
            self.msg.anomalies.append(Anomaly.CHUNK_FRAMING)
        self.state = _STATE_CHUNK_SIZE
        return True

    def st_trailers(self, ts: float) -> bool:
        buf, pos = self.buf, self.pos
        if buf.startswith(b"\r\n", pos) or buf.startswith(b"\n", pos):
            self.pos = pos + (2 if buf[pos] == 13 else 1)
            self.complete(ts)
            return True
        end = buf.find(b"\n\r\n", pos)
        end2 = buf.find(b"\n\n", pos)
        if end < 0 and end2 < 0:
            if len(buf) - pos > self.conv.max_head:
                self.fail(ts, Anomaly.HEAD_TOO_LARGE)
                return True
            return False
        if end < 0 or (0 <= end2 < end):
            hend, nxt = end2, end2 + 2
        else:
            hend, nxt = end, end + 3
        msg = self.msg
        assert msg is not None
        conv = self.conv
        trailers, _lowered, secret = _parse_headers(buf[pos:hend], msg, conv.watch, conv.blocks)
        msg.headers = msg.headers + trailers
        if secret:
            msg.secret = True
        self.pos = nxt
        self.complete(ts)
        return True

    def st_body_close(self, ts: float) -> bool:
        if self.pos < len(self.buf):
            self._take_body(self.buf[self.pos :] if self.pos else self.buf)
            self.pos = len(self.buf)
            assert self.msg is not None
            self.msg.end_ts = ts
            if self.msg.chunks is not None:
                _timed(self.msg, ts)
        return False

    def st_idle(self, ts: float) -> bool:
        return False

    def st_sync(self, ts: float) -> bool:
        buf, pos = self.buf, self.pos
        if pos >= len(buf):
            return False
        # A message may start right after a gap, at a line start, or where a segment starts (senders
        # write a message with one send; a lost message's tail then ends at a segment end).
        at = _SYNC_AT[self.is_request]
        if self.boundary and at.match(buf, pos) is not None:
            start = pos
        else:
            m = _SYNC_AFTER_NL[self.is_request].search(buf, pos)
            start = m.start() + 1 if m is not None else -1
            seg = self.seg_start
            if (
                pos <= seg < len(buf)
                and (start < 0 or seg < start)
                and at.match(buf, seg) is not None
            ):
                start = seg
        self.boundary = False
        if start < 0:
            self.scanned += len(buf) - pos
            if self.scanned > _SYNC_GIVE_UP:
                self.conv.not_http(self)
                return False
            self.pos = max(pos, len(buf) - _SYNC_KEEP)
            return False
        self.scanned = 0
        self.pos = start
        if start >= self.seg_start:
            self.head_ts = ts  # the message begins in the data fed last
        self.state = _STATE_HEAD
        return True

    def _partial_head(self, ts: float) -> None:
        """The stream ended inside a head: parse the lines that did arrive, as if the empty line
        had followed, and mark the message ``truncated``."""
        conv = self.conv
        marker = conv.completed
        buf = self.buf
        self.buf = buf + (
            b"\r\n" if buf.endswith(b"\r\n") else b"\n" if buf.endswith(b"\n") else b"\r\n\r\n"
        )
        self.run(ts)
        msg = self.msg
        if msg is not None:
            msg.truncated = True
            msg.anomalies.append(Anomaly.TRUNCATED)
            self.msg = None
            conv.parse_failed(self, ts, Anomaly.TRUNCATED, msg)
        elif conv.completed is not marker and conv.completed is not None:
            conv.completed.note(Anomaly.TRUNCATED)
        else:
            conv.parse_failed(self, ts, Anomaly.TRUNCATED, None)

    # -- messages ---------------------------------------------------------------------------------

    def start_body(self, ts: float, length: int | None) -> None:
        """After a head: chunked, ``length`` bytes, or (None) until the connection closes."""
        if self.chunked:
            self.state = _STATE_CHUNK_SIZE
        elif length is None:
            self.state = _STATE_BODY_CLOSE
        elif length > 0:
            self.remaining = length
            self.state = _STATE_BODY_LENGTH
        else:
            self.complete(ts)

    def complete(self, ts: float) -> None:
        msg = self.msg
        assert msg is not None
        if self.state != _STATE_BODY_CLOSE:  # a close-delimited body ended with its last data
            msg.end_ts = ts
        self.msg = None
        self.state = _STATE_HEAD
        if self.pos < len(self.buf):
            self.head_ts = ts
        self.conv.message_done(self, msg)

    def fail(self, ts: float, anomaly: str) -> None:
        """The stream does not parse here: end the current message (if any) and resynchronise."""
        msg = self.msg
        self.conv.parse_failed(self, ts, anomaly, msg)
        self.msg = None
        if self.state not in (_STATE_DEAD, _STATE_TUNNEL):
            self.state = _STATE_SYNC
            self.lost = ""
            self.boundary = False
            # Skip at least one byte so the search does not find the same place again.
            self.pos = min(len(self.buf), self.pos + 1)

    def gap(self, ts: float, n: int) -> None:
        st = self.state
        if st in (_STATE_DEAD, _STATE_TUNNEL):
            return
        msg = self.msg
        unparsed = len(self.buf) - self.pos
        if msg is not None and unparsed == 0:
            if st in (_STATE_BODY_LENGTH, _STATE_CHUNK_DATA) and n <= self.remaining:
                msg.body_len += n
                msg.truncated = True
                if Anomaly.GAP not in msg.anomalies:
                    msg.anomalies.append(Anomaly.GAP)
                self.remaining -= n
                if self.remaining == 0:
                    if st == _STATE_BODY_LENGTH:
                        self.complete(ts)
                    else:
                        self.state = _STATE_CHUNK_END
                return
            if st == _STATE_BODY_CLOSE:
                msg.body_len += n
                msg.truncated = True
                if Anomaly.GAP not in msg.anomalies:
                    msg.anomalies.append(Anomaly.GAP)
                return
            if st == _STATE_BODY_LENGTH:
                # The message ended inside the gap; what follows it is unknown.
                msg.body_len += self.remaining
                msg.truncated = True
                msg.anomalies.append(Anomaly.GAP)
                self.remaining = 0
                self.complete(ts)
                msg = None
        # The gap cuts through a head or framing: end what was being parsed, resynchronise.
        self.buf = b""
        self.pos = 0
        if msg is not None:
            msg.truncated = True
            if Anomaly.GAP not in msg.anomalies:
                msg.anomalies.append(Anomaly.GAP)
            self.conv.parse_failed(self, ts, Anomaly.GAP, msg)
            self.msg = None
        elif self.state == _STATE_HEAD and unparsed:
            self.conv.parse_failed(self, ts, Anomaly.GAP, None)
        if self.state == _STATE_WAIT:
            return
        self.state = _STATE_SYNC
        self.lost = Anomaly.RESYNC
        self.boundary = True

    def end(self, ts: float) -> None:
        """No more bytes in this direction."""
        st = self.state
        msg = self.msg
        if st == _STATE_BODY_CLOSE and msg is not None:
            self.complete(ts)
        elif msg is not None:
            msg.truncated = True
            msg.anomalies.append(Anomaly.TRUNCATED)
            self.msg = None
            self.conv.parse_failed(self, ts, Anomaly.TRUNCATED, msg)
        elif st == _STATE_HEAD and self.pos < len(self.buf):
            self._partial_head(ts)
        self.state = _STATE_DEAD
        self.buf = b""
        self.pos = 0


class _RequestSide(_Side):
    __slots__ = ()

    def fast(self, ts: float, data: bytes) -> bool:
        """The common case in one step: ``data`` (the start of a message, nothing buffered) is
        exactly one request with a CRLF head, ``METHOD SP target SP HTTP/x.y``, plain header lines,
        no Transfer-Encoding, Upgrade, CONNECT or Content-Encoding, and all its Content-Length body.
        Builds what the state machine would build, or returns False having changed nothing (the
        general path then parses it: the property tests check both agree on any segmentation)."""
        e = data.find(b"\r\n\r\n")
        if e < 0:
            return False
        text = data[:e].decode("latin-1")
        line, _, block = text.partition("\r\n")
        parts = line.split(" ")
        if (
            len(parts) != 3
            or not parts[0].isalpha()
            or not parts[0].isupper()
            or not parts[0].isascii()
            or len(parts[0]) > 32
            or not parts[1]
            or parts[2][:5] != "HTTP/"
            or "\n" in line
            or parts[0] == "CONNECT"
        ):
            return False
        conv = self.conv
        if block:
            plain = conv.blocks.get(block) or _read_block(block, conv.watch, conv.blocks)
            if plain is None:
                return False
            headers, _lowered, coded, upgrade, length, secret = plain
            if coded or upgrade or length == -2:
                return False
            if length < 0:
                length = 0
        else:
            headers, length, secret = (), 0, False
        if len(data) - e - 4 != length or length > conv.max_body:
            return False
        txn = Transaction(ts)
        txn.index = conv.take_index()
        txn.method = parts[0]
        txn.request = Request(
            ts,
            ts,
            parts[2],
            headers,
            data[e + 4 :] if length else b"",
            length,
            False,
            length,
            parts[0],
            parts[1],
        )
        txn.req_end_ts = ts
        txn.req_done = True
        if secret:
            txn.secret = True
        conv.seen_message = True
        conv.completed = txn
        conv.queue.append(txn)
        conv.events.append((_EVENT_OPENED, txn))
        conv.events.append((_EVENT_REQUEST, txn))
        if len(conv.queue) > conv.max_open:
            conv._shed()
        return True

    def st_head(self, ts: float) -> bool:
        if not self._skip_blank_lines():
            return False
        buf = self.buf
        pos = self.pos
        n = len(buf)
        conv = self.conv
        if self.txn is None:
            self.txn = conv.open_request(self.head_ts if self.head_ts else ts, self)
        # Fast path: a CRLF head, ``METHOD SP target SP HTTP/x.y``: one decode, no bytes copies
        # beyond it. Anything else takes the general path below.
        e1 = buf.find(b"\r\n\r\n", pos)
        if e1 >= 0 and buf.find(b"\n\n", pos, e1) < 0:
            text = buf[pos:e1].decode("latin-1")
            line, _, block = text.partition("\r\n")
            parts = line.split(" ")
            if (
                len(parts) == 3
                and parts[0].isalpha()
                and parts[0].isupper()
                and parts[0].isascii()
                and len(parts[0]) <= 32
                and parts[1]
                and parts[2][:5] == "HTTP/"
                and "\n" not in line
            ):
                txn = self.txn
                msg = _Msg(txn.ts)
                if txn.index < 0:
                    txn.index = conv.take_index()
                msg.start1 = txn.method = parts[0]
                msg.start2 = parts[1]
                msg.version = parts[2]
                if block:
                    headers, lowered, secret = _parse_header_text(
                        block, msg, conv.watch, conv.blocks
                    )
                    if secret:
                        msg.secret = True
                else:
                    headers, lowered = (), ""
                msg.headers = headers
                self.msg = msg
                self.pos = e1 + 4
                return self._request_framing(ts, msg, headers, lowered)
        le = buf.find(b"\n", pos)
        if le < 0:
            if n - pos > conv.max_head:
                self.fail(ts, Anomaly.HEAD_TOO_LARGE)
                return True
            if n - pos >= 1 and buf[pos] not in _TCHAR:
                self.fail(ts, Anomaly.PARSE_ERROR)
                return True
            return False
        rline = buf[pos : le - 1] if le > pos and buf[le - 1] == 13 else buf[pos:le]
        tokens = rline.split()
        if (
            len(tokens) < 2
            or len(tokens[0]) > 32
            or not (tokens[0].isalpha() or all(c in _TCHAR for c in tokens[0]))
        ):
            self.fail(ts, Anomaly.PARSE_ERROR)
            return True
        msg = _Msg(self.txn.ts)
        if self.txn.index < 0:
            self.txn.index = conv.take_index()
        msg.start1 = tokens[0].decode("latin-1")
        last = tokens[-1]
        if len(tokens) >= 3 and last.startswith(b"HTTP/"):
            msg.version = last.decode("latin-1")
            sp1 = rline.find(tokens[1], len(tokens[0]))
            msg.start2 = rline[sp1 : rline.rfind(last)].rstrip(b" \t").decode("latin-1")
            if not tokens[0].isupper() or len(tokens) > 3 or rline.count(b" ") != 2:
                # Seen in the wild and recorded as read (other analyzers do): a lower-case method,
                # extra spaces or tabs, spaces inside the target.
                msg.anomalies.append(Anomaly.ODD_REQUEST_LINE)
        elif len(tokens) == 2 and last.startswith(b"HTTP/"):
            # No target (``OPTIONS HTTP/1.1``, ``GET  HTTP/1.1``): recorded with an empty one, so
            # the response that follows (often a 400) still pairs with it.
            msg.version = last.decode("latin-1")
            msg.start2 = ""
            msg.anomalies.append(Anomaly.ODD_REQUEST_LINE)
        elif len(tokens) == 2 and not last.startswith(b"HTTP/"):
            # A request rline without a protocol: HTTP/0.9 (``GET /path``), and the response will be
            # the raw body. Header lines that arrived with it are kept (servers that answer 0.9
            # style still get them; Suricata logs them too).
            msg.version = "HTTP/0.9"
            msg.start2 = tokens[1].decode("latin-1")
            msg.anomalies.append(Anomaly.HTTP09)
            self.txn.http09 = True
            self.txn.method = msg.start1
            if le + 1 >= n or buf[le + 1] in (13, 10):
                self.pos = le + 1
                if buf.startswith(b"\r\n", le + 1) or buf.startswith(b"\n", le + 1):
                    self.pos = le + (3 if buf[le + 1] == 13 else 2)
                self.msg = msg
                self.complete(ts)
                self.state = _STATE_DEAD  # an HTTP/0.9 connection carries one request
                return False
        else:
            self.fail(ts, Anomaly.PARSE_ERROR)
            return True
        # The head ends at the first empty rline.
        e1 = buf.find(b"\r\n\r\n", le - 1)
        e2 = buf.find(b"\n\n", le, e1 + 2 if e1 >= 0 else n)
        if e2 >= 0 and (e1 < 0 or e2 < e1 + 2):
            hend, nxt = e2, e2 + 2
            if e2 > 0 and buf[e2 - 1] != 13:
                msg.anomalies.append(Anomaly.BARE_LF)
        elif e1 >= 0:
            hend, nxt = e1, e1 + 4
        elif (
            rline
            and le + 1 < n
            and buf[le + 1] in (13, 10)
            and buf.startswith(b"\n", le + 1 + (buf[le + 1] == 13))
        ):
            hend, nxt = le, le + 2 + (buf[le + 1] == 13)
        else:
            if n - pos > conv.max_head:
                self.fail(ts, Anomaly.HEAD_TOO_LARGE)
                return True
            return False
        if hend <= le:
            headers = ()
            lowered = ""
        else:
            headers, lowered, secret = _parse_headers(
                buf[le + 1 : hend], msg, conv.watch, conv.blocks
            )
            if secret:
                msg.secret = True
        msg.headers = headers
        self.msg = msg
        self.pos = nxt
        self.txn.method = msg.start1
        if self.txn.http09:
            self.complete(ts)
            self.state = _STATE_DEAD
            return False
        return self._request_framing(ts, msg, headers, lowered)

    def _request_framing(
        self, ts: float, msg: _Msg, headers: tuple[tuple[str, str], ...], lowered: str
    ) -> bool:
        # Framing (RFC 9112 6.3): chunked as final coding, else Content-Length, else no body.
        te, cls = _framing(headers, lowered, msg)
        upgrade = "upgrade" in lowered and bool(_values(headers, "upgrade"))
        length: int | None = 0
        self.chunked = False
        if te is not None:
            if te.rsplit(",", 1)[-1].strip().lower() == "chunked":
                self.chunked = True
            else:
                msg.anomalies.append(Anomaly.BAD_TRANSFER_ENCODING)
            if cls:
                msg.anomalies.append(Anomaly.TE_AND_CL)
        elif cls:
            length = _content_length(cls, msg) or 0
        if upgrade or msg.start1.upper() == "CONNECT":
            self.txn.upgrade = True  # type: ignore[union-attr]  # open since st_head
        self.start_body(ts, length)
        return True

    def after_message(self) -> None:
        txn = self.txn
        self.txn = None
        if txn is not None and txn.upgrade:
            self.state = (
                _STATE_WAIT  # the next bytes may be the tunnel: hold them until the response
            )
            self.conv.waiting = txn


class _ResponseSide(_Side):
    __slots__ = ()

    def fast(self, ts: float, data: bytes) -> bool:
        """The common case in one step: ``data`` (nothing buffered) is exactly one final response
        (2xx-5xx but 204/304) with a CRLF head, plain header lines, no Transfer-Encoding or
        Content-Encoding, and all its Content-Length body, answering a complete request that is
        not HEAD, CONNECT, an Upgrade or HTTP/0.9. Else False, nothing changed (see
        _RequestSide.fast)."""
        if data[:5] != b"HTTP/":
            return False
        conv = self.conv
        q = conv.queue
        if not q or conv.waiting is not None:
            return False
        txn = q[0]
        if (
            txn.request is None
            or txn.resp_done
            or txn.response is not None
            or txn.after_gap
            or txn.upgrade
            or txn.http09
            or txn.ts > ts
            or txn.method == "HEAD"
        ):
            return False
        e = data.find(b"\r\n\r\n")
        if e < 0:
            return False
        text = data[:e].decode("latin-1")
        line, _, block = text.partition("\r\n")
        parts = line.split(" ", 2)
        code = parts[1] if len(parts) > 1 else ""
        if len(code) != 3 or not code.isdigit() or not code.isascii() or "\n" in line:
            return False
        status = int(code)
        if status < 200 or status == 204 or status == 304:
            return False
        if not block:
            return False
        plain = conv.blocks.get(block) or _read_block(block, conv.watch, conv.blocks)
        if plain is None:
            return False
        headers, _lowered, coded, _upgrade, length, secret = plain
        if coded or length < 0:
            return False
        if len(data) - e - 4 != length or length > conv.max_body:
            return False
        txn.response = Response(
            ts,
            ts,
            parts[0],
            headers,
            data[e + 4 :] if length else b"",
            length,
            False,
            length,
            status,
            parts[2].strip() if len(parts) > 2 else "",
        )
        txn.resp_done = True
        if secret:
            txn.secret = True
        conv.seen_message = True
        conv.completed = txn
        conv._finish_answered()
        return True

    def st_head(self, ts: float) -> bool:
        if not self._skip_blank_lines():
            return False
        buf = self.buf
        pos = self.pos
        n = len(buf)
        conv = self.conv
        txn = conv.answering()
        if txn is not None and txn.http09 and not buf.startswith(b"HTTP/", pos):
            # The answer to an HTTP/0.9 request: no status line, the body runs until close.
            msg = _Msg(self.head_ts if self.head_ts else ts)
            msg.version = "HTTP/0.9"
            msg.start1 = "0"
            self.msg = msg
            self.txn = txn
            conv.response_started(self, txn, msg)
            self.state = _STATE_BODY_CLOSE
            return True
        if not buf.startswith(b"HTTP/", pos):
            if n - pos < 5 and b"HTTP/".startswith(buf[pos:]):
                return False
            self.fail(ts, Anomaly.PARSE_ERROR)
            return True
        e1 = buf.find(b"\r\n\r\n", pos)
        if e1 >= 0 and buf.find(b"\n\n", pos, e1) < 0:
            # Fast path: a CRLF head with ``HTTP/x.y SP ddd[ SP reason]``: one decode.
            text = buf[pos:e1].decode("latin-1")
            line, _, block = text.partition("\r\n")
            parts = line.split(" ", 2)
            code = parts[1] if len(parts) > 1 else ""
            if len(code) == 3 and code.isdigit() and code.isascii():
                msg = _Msg(self.head_ts if self.head_ts else ts)
                msg.version = parts[0]
                msg.start1 = code
                msg.start2 = parts[2].strip() if len(parts) > 2 else ""
                if block:
                    headers, lowered, secret = _parse_header_text(
                        block, msg, conv.watch, conv.blocks
                    )
                    if secret:
                        msg.secret = True
                else:
                    headers, lowered = (), ""
                msg.headers = headers
                self.pos = e1 + 4
                return self._response_framing(ts, txn, msg, int(code), headers, lowered)
        e2 = buf.find(b"\n\n", pos, e1 + 2 if e1 >= 0 else n)
        bare = False
        if e2 >= 0 and (e1 < 0 or e2 < e1 + 2):
            hend, nxt = e2, e2 + 2
            bare = e2 > 0 and buf[e2 - 1] != 13
        elif e1 >= 0:
            hend, nxt = e1, e1 + 4
        else:
            if n - pos > conv.max_head:
                self.fail(ts, Anomaly.HEAD_TOO_LARGE)
                return True
            return False
        le = buf.find(b"\n", pos, hend)
        if le < 0:
            le = hend
        words = buf[pos : le - 1 if buf[le - 1] == 13 else le].split(None, 2)
        if len(words) < 2 or len(words[1]) != 3 or not words[1].isdigit():
            self.fail(ts, Anomaly.PARSE_ERROR)
            return True
        status = int(words[1])
        msg = _Msg(self.head_ts if self.head_ts else ts)
        if bare:
            msg.anomalies.append(Anomaly.BARE_LF)
        msg.version = words[0].decode("latin-1")
        msg.start1 = words[1].decode("ascii")
        msg.start2 = words[2].decode("latin-1").strip() if len(words) > 2 else ""
        if le < hend:
            headers, lowered, secret = _parse_headers(
                buf[le + 1 : hend], msg, conv.watch, conv.blocks
            )
            if secret:
                msg.secret = True
        else:
            headers, lowered = (), ""
        msg.headers = headers
        self.pos = nxt
        return self._response_framing(ts, txn, msg, status, headers, lowered)

    def _response_framing(
        self,
        ts: float,
        txn: Transaction | None,
        msg: _Msg,
        status: int,
        headers: tuple[tuple[str, str], ...],
        lowered: str,
    ) -> bool:
        conv = self.conv
        if 100 <= status < 200 and status != 101:
            conv.interim += 1
            self.head_ts = ts
            return True  # interim response (100 Continue, 103 Early Hints): not the final answer
        self.msg = msg
        txn = conv.response_started(self, txn, msg)
        self.txn = txn
        te, cls = _framing(headers, lowered, msg)
        if is_stream_type(lowered):  # SSE or NDJSON: each piece's arrival time is kept
            msg.chunks = []
        method = txn.method.upper()
        self.chunked = False
        if status == 101 and conv.upgrades:
            token = conv.switch_token(txn, headers)
            if token is not None:
                conv.waiting = None  # the bytes held after the request go to the next protocol
                self.complete(ts)
                conv.switch(txn, token)
                return False
        if status == 101 or (method == "CONNECT" and 200 <= status < 300):
            txn.note(Anomaly.TUNNEL)
            self.complete(ts)
            conv.tunnel()
            return False
        if method == "HEAD" or status in (204, 304):
            self.complete(ts)
            return True
        length: int | None = None
        if te is not None:
            if te.rsplit(",", 1)[-1].strip().lower() == "chunked":
                self.chunked = True
            if cls:
                msg.anomalies.append(Anomaly.TE_AND_CL)
        elif cls:
            length = _content_length(cls, msg)
        self.start_body(ts, length)
        return True

    def after_message(self) -> None:
        self.txn = None


_COMMON = {
    State.BODY_LENGTH: _Side.st_body_length,
    State.CHUNK_SIZE: _Side.st_chunk_size,
    State.CHUNK_DATA: _Side.st_chunk_data,
    State.CHUNK_END: _Side.st_chunk_end,
    State.TRAILERS: _Side.st_trailers,
    State.BODY_CLOSE: _Side.st_body_close,
    State.WAIT: _Side.st_idle,
    State.TUNNEL: _Side.st_idle,
    State.SYNC: _Side.st_sync,
    State.DEAD: _Side.st_idle,
}
# State -> handler, one table per direction, indexed by the State value.
_HANDLERS_REQ: list[Callable[[Any, float], bool]] = [
    ({State.HEAD: _RequestSide.st_head} | _COMMON)[s] for s in State
]
_HANDLERS_RESP: list[Callable[[Any, float], bool]] = [
    ({State.HEAD: _ResponseSide.st_head} | _COMMON)[s] for s in State
]


class Conversation:
    """HTTP/1.x on one connection: two direction parsers and the pairing of their messages.

    Pairing is first-in first-out (HTTP/1.1 pipelining answers in order). A response with no
    request waiting becomes a response-only transaction. After a gap that lost the boundaries of
    requests, a response is not paired with a request that ended after the response began."""

    handlers_req = _HANDLERS_REQ
    handlers_resp = _HANDLERS_RESP

    def __init__(
        self,
        *,
        max_body: int = 1 << 20,
        max_head: int = 64 << 10,
        midstream: bool = False,
        watch: tuple[str, ...] = (),
        max_open: int = 100,
        upgrades: tuple[str, ...] = (),
    ) -> None:
        self.max_open = max_open
        self.upgrades = upgrades  # Upgrade tokens handed to another protocol (Event.SWITCH)
        self.skipped = (
            0  # unanswered requests finished past max_open: the next responses are theirs
        )
        self.max_body = max_body
        self.watch = (
            watch  # lower-case names looked for in each lower-cased head: Transaction.secret
        )
        self.blocks = block_memo(watch)  # header blocks read for these names (_headers.py)
        self.max_head = max_head
        start = _STATE_SYNC if midstream else _STATE_HEAD
        self.client = _RequestSide(self, True, start)
        self.server = _ResponseSide(self, False, start)
        # The Extractor's per-segment entry points (shadowtap.wire.protocol.Conversation).
        self.feed_client = self.client.feed
        self.feed_server = self.server.feed
        # Opened, not yet finished, in request order. A list (a few entries at most, pipelining
        # aside): a deque costs ~600 bytes per connection.
        self.queue: list[Transaction] = []
        self.events: list[tuple[Event, Transaction]] = []
        self.waiting: Transaction | None = None
        self.interim = 0
        self.anomalies: list[str] = []  # conditions with no transaction to carry them (stats only)
        self.midstream = midstream
        self.seen_message = False
        self.next_index = 0
        self.completed: Transaction | None = None  # the last transaction a message completed
        self.not_http_seen = False
        self.client_failed = False  # request bytes did not parse: a response-only answer notes it

    @property
    def pending(self) -> bool:
        """An exchange is open (begun and not finished)."""
        return bool(self.queue) or self.client.txn is not None

    def current(self) -> Transaction | None:
        return self.server.txn or self.client.txn or (self.queue[-1] if self.queue else None)

    def take_index(self) -> int:
        i = self.next_index
        self.next_index += 1
        return i

    # -- inputs -----------------------------------------------------------------------------------

    def data(self, from_client: bool, ts: float, data: bytes) -> None:
        (self.client if from_client else self.server).feed(ts, data)

    def gap(self, from_client: bool, ts: float, n: int) -> None:
        side = self.client if from_client else self.server
        side.gap(ts, n)
        if from_client and side.state == _STATE_SYNC:
            self._void_partial(side)

    def end(self, from_client: bool, ts: float) -> None:
        side = self.client if from_client else self.server
        side.end(ts)
        if from_client:
            self._void_partial(side)
            if self.waiting is not None:
                self.waiting = None
        if self.client.state == _STATE_DEAD and self.server.state == _STATE_DEAD:
            self.close(ts)

    def close(self, ts: float) -> None:
        """Connection gone: every open transaction is finished as it stands."""
        for side in (self.client, self.server):
            if side.state != _STATE_DEAD:
                side.end(ts)
        self._void_partial(self.client)
        self.completed = None
        while self.queue:
            txn = self.queue.pop(0)
            if txn.request is None and not txn.void and txn.response is None:
                txn.void = True
            self._finish(txn)

    # -- callbacks from the sides ------------------------------------------------------------------

    def open_request(self, ts: float, side: _Side) -> Transaction:
        txn = Transaction(ts)
        if side.lost is not None:
            txn.after_gap = True
            if side.lost:
                txn.note(side.lost)
            side.lost = None
        self.queue.append(txn)
        self.events.append((_EVENT_OPENED, txn))
        if len(self.queue) > self.max_open:
            self._shed()
        return txn

    def _shed(self) -> None:
        """Too many exchanges open on this connection (pipelined requests nobody answers): the
        oldest unanswered request whose response has not begun is finished as it stands
        (``open_limit``); the response that comes for it later is recorded alone (responses come
        in request order, so the next ``skipped`` responses answer shed requests)."""
        busy = (self.client.txn, self.server.txn)
        for i, old in enumerate(self.queue):
            if (
                old.request is not None
                and old.response is None
                and not old.resp_done
                and old not in busy
            ):
                del self.queue[i]
                old.note(Anomaly.OPEN_LIMIT)
                self.skipped += 1
                self._finish(old)
                return

    def _void_partial(self, side: _Side) -> None:
        """A request that never got past its first bytes is no transaction."""
        txn = side.txn
        if txn is not None and txn.request is None and side.msg is None:
            side.txn = None
            txn.void = True
            if txn in self.queue:
                self.queue.remove(txn)
            self._finish(txn)

    def answering(self) -> Transaction | None:
        """The transaction the next response answers, if any (without taking it)."""
        for txn in self.queue:
            if txn.resp_done or txn.response is not None:
                continue
            return txn
        return None

    def response_started(self, side: _Side, txn: Transaction | None, msg: _Msg) -> Transaction:
        lost = side.lost
        side.lost = None
        shed = False
        if self.skipped and lost is None:
            self.skipped -= 1  # this response answers a request shed past max_open
            txn = None
            shed = True
        if lost is not None and txn is not None:
            # Responses were lost in a gap: answer the last request that began before this response.
            cands = [t for t in self.queue if not t.resp_done and t.ts <= msg.ts]
            if cands and cands[-1] is not txn:
                while self.queue and self.queue[0] is not cands[-1]:
                    old = self.queue.pop(0)
                    old.note(Anomaly.GAP)
                    self._finish(old)
                txn = cands[-1]
        if txn is not None and (
            txn.ts > msg.ts  # a response never begins before its request
            or txn.after_gap
            and txn.req_end_ts is not None
            and txn.req_end_ts > msg.ts
        ):
            txn = None  # the request this answers was lost (mid-stream join, gap)
        if txn is None:
            txn = Transaction(msg.ts)
            txn.req_done = True
            txn.index = self.take_index()
            self._insert_response_only(txn)
            self.events.append((_EVENT_OPENED, txn))
            if self.client_failed:
                self.client_failed = False
                txn.note(Anomaly.PARSE_ERROR)
            if shed:
                txn.note(Anomaly.OPEN_LIMIT)
        if lost:
            txn.note(lost)
        txn.response = None
        return txn

    def _insert_response_only(self, txn: Transaction) -> None:
        # Before every transaction not yet answered: it is answered now, in order.
        for i, t in enumerate(self.queue):
            if not t.resp_done:
                self.queue.insert(i, txn)
                return
        self.queue.append(txn)

    def message_done(self, side: _Side, msg: _Msg) -> None:
        self.seen_message = True
        self.completed = side.txn
        if side.is_request:
            txn = side.txn
            assert txn is not None
            parts = msg.parts
            # Positional (cheaper than keywords): ts, end_ts, version, headers, body, body_len,
            # body_truncated, decoded_len, method, target.
            txn.request = Request(
                msg.ts,
                max(msg.ts, msg.end_ts),
                msg.version,
                msg.headers,
                _body(parts),
                msg.body_len,
                msg.truncated,
                msg.body_len if msg.encodings is None and not msg.truncated else self._decoded(msg),
                msg.start1,
                msg.start2,
            )
            txn.req_end_ts = txn.request.end_ts
            txn.req_done = True
            if msg.secret:
                txn.secret = True
            for a in msg.anomalies:
                txn.note(a)
            self.events.append((_EVENT_REQUEST, txn))
            side.after_message()  # type: ignore[attr-defined]
            if txn.resp_done:
                self._finish_answered()
        else:
            txn = side.txn
            assert txn is not None
            parts = msg.parts
            txn.response = Response(
                msg.ts,
                max(msg.ts, msg.end_ts),
                msg.version,
                msg.headers,
                _body(parts),
                msg.body_len,
                msg.truncated,
                msg.body_len if msg.encodings is None and not msg.truncated else self._decoded(msg),
                int(msg.start1),
                msg.start2,
            )
            txn.resp_done = True
            if msg.chunks:
                txn.chunks = tuple(msg.chunks)
            if msg.secret:
                txn.secret = True
            for a in msg.anomalies:
                txn.note(a)
            side.after_message()  # type: ignore[attr-defined]
            if self.waiting is txn and Anomaly.TUNNEL not in txn.anomalies:
                self.waiting = None
                self.client.state = _STATE_HEAD
                self.client.run(msg.end_ts)
            self._finish_answered()

    def _finish_answered(self) -> None:
        """Finish answered transactions from the front of the queue (their requests are done)."""
        q = self.queue
        while q and q[0].resp_done and (q[0].req_done or q[0].request is not None):
            self._finish(q.pop(0))

    def parse_failed(self, side: _Side, ts: float, anomaly: str, msg: _Msg | None) -> None:
        """``side`` lost its footing at ``ts``; ``msg`` (when not None) is the message cut short."""
        txn = side.txn
        if msg is None:
            if side.is_request:
                self.client_failed = True
            if txn is not None and side.is_request and txn.request is None:
                self._void_partial(side)
            if not self.seen_message and not self.midstream and anomaly == Anomaly.PARSE_ERROR:
                self.not_http(side)
                return
            self.anomalies.append(anomaly)
            return
        assert txn is not None
        txn.note(anomaly)
        if anomaly != Anomaly.TRUNCATED and anomaly != Anomaly.GAP:
            msg.truncated = True
        self.message_done(side, msg)

    def not_http(self, side: _Side) -> None:
        """This direction does not carry HTTP/1.x: stop parsing it (the other goes on: a server
        may still answer garbage with a 400, worth recording)."""
        if not self.not_http_seen:
            self.not_http_seen = True
            self.anomalies.append(Anomaly.NOT_HTTP)
        side.state = _STATE_DEAD
        side.buf = b""
        side.pos = 0
        if side.is_request:
            self.client_failed = True
            self._void_partial(side)

    def switch_token(self, txn: Transaction, headers: tuple[tuple[str, str], ...]) -> str | None:
        """The protocol a ``101`` answer (``headers``) switches ``txn``'s connection to, when
        another parser takes it over (``upgrades``): the one token of the response's Upgrade,
        offered by the request's, the request complete and its bytes after it held (the client
        side waits for this verdict). Else None (a tunnel, as before)."""
        req = txn.request
        if req is None or self.waiting is not txn:
            return None
        answered = [v.strip().lower() for v in _values(headers, "upgrade")]
        if len(answered) != 1 or answered[0] not in self.upgrades:
            return None
        offered = {t.strip().lower() for v in _values(req.headers, "upgrade") for t in v.split(",")}
        return answered[0] if answered[0] in offered else None

    def switch(self, txn: Transaction, token: str) -> None:
        """Hand the connection over after ``txn`` (its ``101`` head just parsed): the bytes each
        side holds past its handover point (the client's after the request, the server's after
        the ``101`` head) go with the ``Switch``; ``txn`` itself becomes the new protocol's
        first exchange (void here, so it is written once); this parser reads nothing more."""
        client, server = self.client, self.server
        req = txn.request
        assert req is not None
        txn.switch = Switch(
            token,
            req,
            txn.index,
            self.next_index,
            txn.secret,
            tuple(txn.anomalies),
            bytes(client.buf[client.pos :]),
            client.head_ts,
            bytes(server.buf[server.pos :]),
            server.head_ts,
        )
        txn.void = True
        self.events.append((_EVENT_SWITCH, txn))
        self.tunnel()

    def tunnel(self) -> None:
        self.waiting = None
        for s in (self.client, self.server):
            s.state = _STATE_TUNNEL
            s.buf = b""
            s.pos = 0

    # -- output -----------------------------------------------------------------------------------

    def _finish(self, txn: Transaction) -> None:
        if txn.done:
            return
        txn.done = True
        self.events.append((_EVENT_DONE, txn))

    def _decoded(self, msg: _Msg) -> int | None:
        if msg.truncated:
            return None
        if msg.encodings is None:
            return msg.body_len
        parts = msg.parts
        body = parts[0] if parts else b""
        out = decode(body, msg.encodings)  # type: ignore[arg-type]  # any buffer; bounded
        if out.length is None:
            msg.anomalies.append(
                out.anomaly or Anomaly.UNDECODABLE_BODY
            )  # or decode_limit past a bound
        return out.length


def make(settings: ParserSettings, midstream: bool) -> Conversation:
    """A Conversation with the Extractor's limits
    (``shadowtap.wire.protocol.ProtocolSpec.make``)."""
    return Conversation(
        max_body=settings.max_body,
        max_head=settings.max_head,
        midstream=midstream,
        watch=settings.watch,
        max_open=settings.max_open,
        upgrades=settings.upgrades,
    )


def sniff(data: bytes, from_client: bool) -> Sniff:
    """HTTP/1.x takes any connection the protocols before it did not claim: it recognises what is
    not HTTP itself (``not_http``) and resynchronises mid-stream."""
    return Sniff.YES


def _body(parts: list) -> bytes:
    """A message's kept body: its one buffer (``_Side._take_body``) as bytes."""
    if not parts:
        return b""
    body = parts[0]
    return bytes(body) if type(body) is bytearray else body
