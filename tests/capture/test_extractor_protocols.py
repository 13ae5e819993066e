"""capture/extractor.py as the place protocols plug into: a protocol picked per connection by its
first bytes (YES / NO / MORE), and in-order plaintext streams (``feed_stream``/``end_stream``)
giving the same records as the same bytes reassembled from frames."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as hs

from shadowtap.capture.extractor import DEFAULT_PROTOCOLS, Extractor
from shadowtap.records import Exchange, Request, Response
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


# -- HTTP/1.1 Upgrade: h2c (RFC 7540 section 3.2): the connection handed over to HTTP/2 ----------


def _h2c_upgrade(*, before: bytes = b"", after: bytes = b"", headers: bytes = b""):
    """An ``Upgrade: h2c`` conversation written by h2's own client and server connection objects
    (their upgrade API): ``(from_client, bytes)`` writes in wire order. ``before``: an HTTP/1.1
    exchange (request + response) on the connection first; ``headers``: extra request header
    lines. The 101 head and the server's first HTTP/2 frames (SETTINGS, stream 1's answer) are
    one write: the handover point is inside a segment. Then the client's preface and a second
    request (stream 3) as HTTP/2, and ``after`` (client bytes) last."""
    import h2.config
    import h2.connection

    c = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    s = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    settings = c.initiate_upgrade_connection()
    preface = c.data_to_send()
    s.initiate_upgrade_connection(settings)
    writes = []
    if before:
        req, resp = before.split(b"|")
        writes += [(True, req), (False, resp)]
    writes.append(
        (
            True,
            b"GET /up?x=1 HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: " + settings + b"\r\n" + headers + b"\r\n",
        )
    )
    s.send_headers(1, [(b":status", b"200"), (b"content-type", b"text/plain")])
    s.send_data(1, b"upgraded", end_stream=True)
    h2_out = s.data_to_send()
    writes.append(
        (
            False,
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
            + h2_out,
        )
    )
    c.receive_data(h2_out)
    s.receive_data(preface)
    sid = c.get_next_available_stream_id()
    c.send_headers(
        sid,
        [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"svc"), (b":path", b"/two")],
        end_stream=True,
    )
    second = c.data_to_send()
    writes.append((True, preface + second))
    s.receive_data(second)
    s.send_headers(sid, [(b":status", b"404")], end_stream=True)
    writes.append((False, s.data_to_send()))
    if after:
        writes.append((True, after))
    return writes


def _feed_streams(writes, splits=None, **kwargs):
    """The writes fed as in-order plaintext (``feed_stream``), each cut at ``splits`` offsets."""
    kwargs.setdefault("keep_secrets", True)
    ex = Extractor(**kwargs)
    c, s = ("10.0.0.1", 40000), ("10.0.0.2", 80)
    out, ts = [], 100.0
    for k, (from_client, data) in enumerate(writes):
        cuts = sorted({0, len(data), *((splits or {}).get(k, ()))})
        for a, b in zip(cuts, cuts[1:]):
            ts += 0.001
            out += ex.feed_stream(ts, c, s, from_client, data[a:b])
    out += ex.end_stream(ts + 1, c, s)
    out += ex.finish()
    return out, ex


def test_h2c_upgrade_hands_the_connection_to_http2(flow, extract_frames):
    writes = _h2c_upgrade()
    out, ex = _feed_streams(writes)
    one, two = out
    # Stream 1 is the upgraded request, as sent (HTTP/1.1), with its answer as HTTP/2.
    assert (one.index, one.request.version, one.request.method, one.request.target) == (
        0,
        "HTTP/1.1",
        "GET",
        "/up?x=1",
    )
    assert one.request.header("upgrade") == "h2c"
    assert (one.response.version, one.response.status, one.response.body) == (
        "HTTP/2",
        200,
        b"upgraded",
    )
    assert one.h2.stream_id == 1 and one.h2.outcome == "complete" and one.anomalies == ()
    assert (two.index, two.request.target, two.response.status, two.h2.stream_id) == (
        1,
        "/two",
        404,
        3,
    )
    assert ex.stats.anomalies == {} and ex.stats.exchanges == 2
    # The same bytes as TCP frames (reassembly, the general path) give the same records.
    f = flow().handshake()
    for from_client, data in writes:
        f = f.c(data) if from_client else f.s(data)
    from_frames, _ = extract_frames(f.fin().frames)
    assert [(e.index, e.request.target, e.response.status) for e in from_frames] == [
        (0, "/up?x=1", 200),
        (1, "/two", 404),
    ]


@settings(max_examples=60, deadline=None)
@given(hs.data())
def test_h2c_upgrade_any_split_same_exchanges(data):
    """Any cut of any write (the 101 head, the handover point, the preface) gives the records
    the whole writes give."""
    writes = _h2c_upgrade(before=REQ + b"|" + RESP)
    whole, _ = _feed_streams(writes)
    splits = {
        k: data.draw(hs.lists(hs.integers(1, max(1, len(d) - 1)), max_size=4), label=f"cuts{k}")
        for k, (_, d) in enumerate(writes)
    }
    cut, ex = _feed_streams(writes, splits)
    strip = [
        {k: v for k, v in o.items() if k not in ("chunks",)} for o in map(Exchange.to_json, cut)
    ]
    want = [
        {k: v for k, v in o.items() if k not in ("chunks",)} for o in map(Exchange.to_json, whole)
    ]

    def untimed(objs):
        for o in objs:
            o.pop("ttfb_ms", None), o.pop("total_ms", None)
            for side in ("request", "response"):
                if o.get(side):
                    o[side].pop("ts"), o[side].pop("end_ts")
        return objs

    assert untimed(strip) == untimed(want)
    assert [e.index for e in cut] == [0, 1, 2] and ex.stats.anomalies == {}


def test_h2c_upgrade_after_http1_exchanges_keeps_positions():
    out, _ = _feed_streams(_h2c_upgrade(before=REQ + b"|" + RESP))
    assert [(e.index, e.request.version, e.response.version) for e in out] == [
        (0, "HTTP/1.1", "HTTP/1.1"),
        (1, "HTTP/1.1", "HTTP/2"),
        (2, "HTTP/2", "HTTP/2"),
    ]
    assert len({e.id for e in out}) == 3


def test_h2c_upgrade_request_secret_is_redacted_on_stream_one(tmp_path, monkeypatch):
    monkeypatch.setenv("SHADOWTAP_KEY_FILE", str(tmp_path / "k"))
    out, _ = _feed_streams(
        _h2c_upgrade(headers=b"Authorization: Bearer s3cr3t-token\r\n"), keep_secrets=False
    )
    auth = out[0].request.header("authorization")
    assert auth is not None and "s3cr3t" not in auth


def test_h2c_upgrade_announces_the_request_once():
    seen = []
    writes = _h2c_upgrade()
    ex = Extractor(keep_secrets=True, on_request=seen.append)
    c, s = ("10.0.0.1", 40000), ("10.0.0.2", 80)
    out = []
    for k, (from_client, data) in enumerate(writes):
        out += ex.feed_stream(1.0 + k, c, s, from_client, data)
    out += ex.finish()
    assert [(r.index, r.request.target) for r in seen] == [(0, "/up?x=1"), (1, "/two")]
    assert [r.exchange_id for r in seen] == [e.id for e in out]


def test_upgrade_not_taken_stays_http1():
    up = (
        b"GET /ws HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"
    )
    # Refused (the server answers 200): HTTP/1.x goes on, the next request too.
    out, ex = _feed_streams([(True, up), (False, RESP), (True, REQ), (False, RESP)])
    assert [(e.request.target, e.response.status, e.response.version) for e in out] == [
        ("/ws", 200, "HTTP/1.1"),
        ("/one", 200, "HTTP/1.1"),
    ]
    # A 101 to another protocol (websocket) is a tunnel, not parsed.
    ws = up.replace(b"h2c", b"websocket")
    sw = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    out, ex = _feed_streams([(True, ws), (False, sw + b"\x81\x05hello"), (True, b"\x81\x85xxxx")])
    assert [(e.response.status, e.anomalies) for e in out] == [(101, ("tunnel",))]
    # h2c answered but not offered by the request: a tunnel.
    out, _ = _feed_streams([(True, ws), (False, sw.replace(b"websocket", b"h2c"))])
    assert [(e.response.status, e.anomalies) for e in out] == [(101, ("tunnel",))]
    # An Extractor without HTTP/2 keeps the tunnel for h2c too.
    writes = _h2c_upgrade()
    out, _ = _feed_streams(writes, protocols=(http1.PROTOCOL,))
    assert [(e.response.status, e.anomalies) for e in out] == [(101, ("tunnel",))]


def test_h2c_upgrade_bad_settings_header_is_counted():
    writes = _h2c_upgrade()
    req = writes[0][1]
    start = req.index(b"HTTP2-Settings: ") + len(b"HTTP2-Settings: ")
    end = req.index(b"\r\n", start)
    writes[0] = (True, req[:start] + b"!!not base64!!" + req[end:])
    out, ex = _feed_streams(writes)
    assert [(e.request.target, e.response.status) for e in out] == [("/up?x=1", 200), ("/two", 404)]
    assert ex.stats.anomalies == {"h2_bad_upgrade_settings": 1}


@settings(max_examples=80, deadline=None)
@given(hs.binary(max_size=200), hs.binary(max_size=200), hs.lists(hs.integers(1, 300), max_size=4))
def test_h2c_upgrade_followed_by_garbage_loses_nothing_else(server_junk, client_junk, cuts):
    """Whatever follows the 101 (not HTTP/2 at all), no exception escapes and the upgraded
    request is still written, with what could be read of its answer."""
    up = _h2c_upgrade()[0][1]
    sw = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    writes = [(True, up), (False, sw + server_junk), (True, client_junk)]
    out, _ = _feed_streams(writes, {1: cuts, 2: cuts})
    assert [e.request.target for e in out if e.request is not None][:1] == ["/up?x=1"]
    assert out[0].h2 is not None and out[0].h2.stream_id == 1
