"""capture/extractor.py as the place protocols plug into: a protocol picked per connection by its
first bytes (YES / NO / MORE), and in-order plaintext streams (``feed_stream``/``end_stream``)
giving the same records as the same bytes reassembled from frames."""

from __future__ import annotations

import orjson

from shadowtap.capture.extractor import DEFAULT_PROTOCOLS, Extractor
from shadowtap.records import Request, Response
from shadowtap.wire import http1
from shadowtap.wire.protocol import Event, ParserSettings, ProtocolSpec, Sniff, Transaction

REQ = b"GET /one HTTP/1.1\r\nHost: svc\r\n\r\n"
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none"


def _lines(exchanges):
    return [orjson.dumps(e.to_json()) for e in exchanges]


def test_public_surface_of_http1():
    assert set(http1.__all__) == {"PROTOCOL", "Conversation", "Event", "Transaction"}
    assert issubclass(http1.Transaction, Transaction)
    assert DEFAULT_PROTOCOLS[-1] is http1.PROTOCOL


def test_a_stream_gives_the_records_its_frames_give(flow, extract_frames):
    f = flow().handshake().c(REQ).s(RESP).c(REQ).s(RESP).fin()
    from_frames, _ = extract_frames(f.frames)
    ex = Extractor(keep_secrets=True)
    client, server = ("10.0.0.1", 40000), ("10.0.0.2", 80)
    # The connection begins at its first instant (the SYN's time), with no data yet.
    out = ex.feed_stream(f.frames[0][0], client, server, True, b"")
    # Frames 3..6 carry REQ, RESP, REQ, RESP (after the handshake; the last 3 are FINs and an ACK).
    data = [(f.frames[k][0], k % 2 == 1, p) for k, p in zip(range(3, 7), (REQ, RESP, REQ, RESP))]
    for ts, from_client, payload in data:
        out += ex.feed_stream(ts, client, server, from_client, payload)
    out += ex.end_stream(f.frames[-1][0], client, server)
    out += ex.finish()
    assert _lines(out) == _lines(from_frames)
    assert ex.stats.connections == 1 and ex.stats.open_connections == 0


def test_end_stream_one_direction_then_finish(flow):
    ex = Extractor(keep_secrets=True)
    c, s = ("192.0.2.1", 5000), ("192.0.2.2", 443)
    assert ex.feed_stream(1.0, c, s, True, REQ[:10]) == []
    assert ex.feed_stream(1.1, c, s, True, REQ[10:]) == []
    assert ex.end_stream(1.2, c, s, from_client=True) == []
    out = ex.feed_stream(1.3, c, s, False, RESP)
    assert [(e.request.target, e.response.status, e.server) for e in out] == [
        ("/one", 200, "192.0.2.2:443")
    ]
    assert ex.finish() == []


class _Ping:
    """A toy protocol: each client line ``PING n`` is a request, each server line ``PONG n`` its
    response (enough to show the plug-in surface)."""

    def __init__(self, settings: ParserSettings, midstream: bool) -> None:
        self.events: list[tuple[Event, Transaction]] = []
        self.anomalies: list[str] = []
        self.open: list[Transaction] = []
        self.n = 0
        self.buf = {True: b"", False: b""}
        self.feed_client = self._client
        self.feed_server = self._server

    @property
    def pending(self) -> bool:
        return bool(self.open)

    def current(self):
        return self.open[0] if self.open else None

    def _lines(self, from_client: bool, data: bytes) -> list[bytes]:
        *lines, self.buf[from_client] = (self.buf[from_client] + data).split(b"\n")
        return lines

    def _client(self, ts: float, data: bytes) -> None:
        for line in self._lines(True, data):
            t = Transaction(ts)
            t.index = self.n
            self.n += 1
            t.request = Request(
                ts, ts, "PING/1", (), line, len(line), False, len(line), "PING", "/"
            )
            self.open.append(t)
            self.events += [(Event.OPENED, t), (Event.REQUEST, t)]

    def _server(self, ts: float, data: bytes) -> None:
        for line in self._lines(False, data):
            t = self.open.pop(0)
            t.response = Response(
                ts, ts, "PING/1", (), line, len(line), False, len(line), 200, "OK"
            )
            t.done = True
            self.events.append((Event.DONE, t))

    def gap(self, from_client: bool, ts: float, n: int) -> None:
        pass

    def end(self, from_client: bool, ts: float) -> None:
        pass

    def close(self, ts: float) -> None:
        for t in self.open:
            t.done = True
            self.events.append((Event.DONE, t))
        self.open = []


def _sniff_ping(data: bytes, from_client: bool) -> Sniff:
    if len(data) < 4:
        return Sniff.MORE if b"PING".startswith(data) else Sniff.NO
    return Sniff.YES if data.startswith(b"PING") else Sniff.NO


PING = ProtocolSpec("ping", _sniff_ping, _Ping)


def test_protocol_picked_by_first_bytes(flow, extract_frames):
    ping = flow(client=("10.0.0.1", 41000), ts=10.0).handshake().c(b"PING 1\n").s(b"PONG 1\n").fin()
    http = flow(client=("10.0.0.3", 42000), ts=20.0).handshake().c(REQ).s(RESP).fin()
    out, ex = extract_frames(ping.frames + http.frames, protocols=(PING, *DEFAULT_PROTOCOLS))
    assert [(e.request.version, e.response.body) for e in out] == [
        ("PING/1", b"PONG 1"),
        ("HTTP/1.1", b"one"),
    ]


def test_sniff_more_holds_the_first_bytes_and_replays_them(flow, extract_frames):
    # "PI" cannot tell yet; "NG 7" decides: the held bytes reach the parser first.
    ping = flow(mss=2).handshake().c(b"PING 7\n").s(b"PONG 7\n").fin()
    out, _ = extract_frames(ping.frames, protocols=(PING, *DEFAULT_PROTOCOLS))
    assert [(e.request.body, e.response.body) for e in out] == [(b"PING 7", b"PONG 7")]
    # HTTP split the same way: "GE" is no PING, HTTP/1.x takes it.
    http = flow(mss=2).handshake().c(REQ).s(RESP).fin()
    out, _ = extract_frames(http.frames, protocols=(PING, *DEFAULT_PROTOCOLS))
    assert [(e.request.target, e.response.status) for e in out] == [("/one", 200)]
    # "PI" then end of stream: HTTP/1.x (the last resort) gets the held bytes.
    short = flow(mss=2).handshake().c(b"PI").fin()
    out, ex = extract_frames(short.frames, protocols=(PING, *DEFAULT_PROTOCOLS))
    assert out == [] and ex.stats.anomalies.get("not_http", 0) <= 1
