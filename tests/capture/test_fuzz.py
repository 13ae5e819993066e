"""Fuzz targets, one per parser of the wire layer and the capture formats (hypothesis, a fixed
budget of examples each so CI time is bounded): arbitrary bytes never raise anything but the
documented error, and every bound holds."""

from __future__ import annotations

import zlib

import brotli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shadowtap.capture.extractor import Extractor
from shadowtap.capture.pcapfile import read_packets
from shadowtap.errors import InputError
from shadowtap.wire.content import DEFAULT_LIMITS, Status, decode
from shadowtap.wire.frames import SUPPORTED_LINKTYPES
from shadowtap.wire.frames import decode as decode_frame
from shadowtap.wire.http1 import Conversation, Event
from shadowtap.wire.tcp import Reassembler

BUDGET = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Bytes that look like HTTP often enough to reach deep states.
_HTTP_BITS = [
    b"GET / HTTP/1.1\r\n",
    b"HTTP/1.1 200 OK\r\n",
    b"Content-Length: 5\r\n",
    b"\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"5\r\nhello\r\n",
    b"0\r\n\r\n",
    b"Host: a\r\n",
    b"Content-Encoding: gzip\r\n",
    b"\n",
    b" ",
    b"HTTP/1.0 101 X\r\nUpgrade: y\r\n\r\n",
]
http_bytes = st.lists(
    st.one_of(st.sampled_from(_HTTP_BITS), st.binary(max_size=20)), max_size=30
).map(b"".join)


@BUDGET
@given(
    st.lists(
        st.tuples(st.booleans(), st.one_of(http_bytes, st.integers(1, 50), st.none())), max_size=20
    ),
    st.booleans(),
)
def test_fuzz_http1_conversation(steps, midstream):
    conv = Conversation(max_body=64, max_head=256, midstream=midstream, max_open=4)
    ts = 1.0
    opened, done = set(), set()
    for from_client, item in steps:
        ts += 0.01
        if isinstance(item, bytes):
            (conv.feed_client if from_client else conv.feed_server)(ts, item)
        elif isinstance(item, int):
            conv.gap(from_client, ts, item)
        else:
            conv.end(from_client, ts)
        assert len(conv.queue) <= 5  # max_open, plus the one being opened
    conv.close(ts + 1)
    for ev, txn in conv.events:
        (opened if ev == Event.OPENED else done if ev == Event.DONE else set()).add(id(txn))
        if ev == Event.DONE and txn.response is not None:
            assert len(txn.response.body) <= 64
    assert opened <= done  # everything opened is finished once the connection is closed


@BUDGET
@given(st.sampled_from(sorted(SUPPORTED_LINKTYPES) + [999]), st.binary(max_size=120))
def test_fuzz_frame_decoding(linktype, frame):
    seg = decode_frame(linktype, frame)
    assert seg is None or len(seg.payload) <= len(frame)


@BUDGET
@given(
    st.lists(
        st.tuples(
            st.booleans(), st.integers(0, 2**32 - 1), st.integers(0, 0x3F), st.binary(max_size=40)
        ),
        max_size=40,
    )
)
def test_fuzz_tcp_reassembly(segments):
    from shadowtap.wire.frames import Segment

    r = Reassembler(max_held_bytes=100, idle_timeout=5.0)
    ts = 0.0
    for from_client, seq, flags, payload in segments:
        ts += 0.1
        a, b = (b"\x0a\x00\x00\x01", 40000), (b"\x0a\x00\x00\x02", 80)
        src, dst = (a, b) if from_client else (b, a)
        r.feed(ts, Segment(src[0], src[1], dst[0], dst[1], seq, 0, flags, payload))
    r.finish()
    for conn in r.conns.values():
        assert conn.c2s.held_bytes <= 100 + 40 and conn.s2c.held_bytes <= 100 + 40


@BUDGET
@given(
    st.sampled_from(
        ["gzip", "deflate", "br", "gzip, br", "identity", "x-gzip", "zstd", "gzip, gzip"]
    ),
    st.one_of(
        st.binary(max_size=200),
        st.binary(max_size=2000).map(zlib.compress),
        st.binary(max_size=2000).map(brotli.compress),
    ),
    st.booleans(),
)
def test_fuzz_content_decoder(coding, body, keep):
    out = decode(body, coding, keep=keep)
    assert out.status in Status
    assert (out.length is None) == (out.status is not Status.OK)
    if out.length is not None:
        assert out.length <= DEFAULT_LIMITS.cap(len(body))


@BUDGET
@given(st.binary(max_size=300), st.sampled_from([b"\xd4\xc3\xb2\xa1", b"\x0a\x0d\x0d\x0a", b""]))
def test_fuzz_pcap_reader(tmp_path_factory, data, magic):
    path = tmp_path_factory.mktemp("fz") / "f.pcap"
    path.write_bytes(magic + data)
    try:
        for ts, linktype, frame in read_packets(str(path)):
            assert isinstance(frame, bytes)
    except InputError:
        pass  # damage is reported with its place, never anything else


@BUDGET
@given(st.lists(st.tuples(st.booleans(), http_bytes), max_size=15))
def test_fuzz_extractor_streams(chunks):
    ex = Extractor(keep_secrets=True, max_body=64)
    out = []
    ts = 1.0
    for from_client, data in chunks:
        ts += 0.01
        out += ex.feed_stream(ts, ("192.0.2.1", 1000), ("192.0.2.2", 80), from_client, data)
    out += ex.finish()
    assert ex.stats.open_connections == 0 and ex.stats.held_exchanges == 0
    for e in out:
        assert e.request is not None or e.response is not None
