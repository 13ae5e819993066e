"""The TLS source's framing (capture/tls_frames.py): chunks with stream offsets in, TCP frames out,
checked by feeding them to the real Extractor and by decoding them with the project's decoder."""

from __future__ import annotations

import socket

from shadowtap.capture.extractor import Extractor
from shadowtap.capture.tls_frames import C_ISN, MAX_SEGMENT, S_ISN, Chunk, Framer, segment
from shadowtap.wire.frames import LINKTYPE_RAW, decode

CLIENT = (socket.inet_aton("10.1.0.1"), 40000)
SERVER = (socket.inet_aton("10.1.0.2"), 443)


def chunk(to_server: bool, offset: int, data: bytes, ts: int = 1_700_000_000_000_000) -> Chunk:
    return Chunk(ts, 42, CLIENT, SERVER, to_server, offset, data)


def exchanges(frames) -> list:
    ex = Extractor(ports=(443,))
    out = []
    for ts, f, _ in frames:
        out += ex.feed(ts / 1e6, LINKTYPE_RAW, f)
    return out + ex.finish()


def test_open_data_close_make_one_exchange_with_real_endpoints():
    fr = Framer()
    fr.open(7, CLIENT, SERVER)
    req = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
    frames = fr.data(7, chunk(True, 0, req)) + fr.data(7, chunk(False, 0, resp))
    frames += fr.close(7, 1_700_000_000_100_000, len(req), len(resp))
    segs = [decode(LINKTYPE_RAW, f) for _, f, _ in frames]
    assert [s.flags & 0x13 for s in segs[:3]] == [0x02, 0x12, 0x10]  # SYN, SYN-ACK, ACK
    assert segs[3].seq == C_ISN + 1 and segs[4].seq == S_ISN + 1
    assert segs[-2].flags & 0x01 and segs[-1].flags & 0x01  # both FINs
    assert len(fr) == 0
    (ex,) = exchanges(frames)
    assert (ex.client, ex.server) == ("10.1.0.1:40000", "10.1.0.2:443")
    assert ex.request.target == "/a" and ex.response.status == 200 and ex.response.body == b"hi"
    assert ex.anomalies == ()


def test_large_chunk_is_split_and_a_lost_piece_is_a_gap_at_its_place():
    fr = Framer()
    fr.open(1, CLIENT, SERVER)
    body = bytes(range(256)) * 300  # 76,800 bytes
    head = b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    frames = fr.data(1, chunk(True, 0, head + body))
    assert all(len(f) - 40 <= MAX_SEGMENT for _, f, _ in frames[3:])
    frames += fr.data(1, chunk(False, 0, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"))
    (ex,) = exchanges(frames)
    assert ex.request.body == body and ex.response.status == 201
    # the same with the middle of the body lost: the stream is not shifted, a gap is reported
    fr2 = Framer()
    fr2.open(1, CLIENT, SERVER)
    data = head + body
    frames = fr2.data(1, chunk(True, 0, data[:20000])) + fr2.data(
        1, chunk(True, 40000, data[40000:])
    )
    frames += fr2.data(1, chunk(False, 0, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"))
    frames += fr2.close(1, 1_700_000_001_000_000, len(data), 44)
    (ex,) = exchanges(frames)
    assert "gap" in ex.anomalies


def test_connection_seen_only_midway_has_no_handshake_and_v6_works():
    c6 = (socket.inet_pton(socket.AF_INET6, "fd00::1"), 50000)
    s6 = (socket.inet_pton(socket.AF_INET6, "fd00::2"), 443)
    fr = Framer()
    frames = fr.data(3, Chunk(1, 1, c6, s6, True, 500, b"GET /late HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert len(frames) == 1 and not decode(LINKTYPE_RAW, frames[0][1]).flags & 0x02
    frames += fr.data(3, Chunk(2, 1, c6, s6, False, 900, b"HTTP/1.1 204 No Content\r\n\r\n"))
    (ex,) = exchanges(frames)
    assert (
        ex.server == "[fd00::2]:443" and ex.request.target == "/late" and ex.response.status == 204
    )


def test_chunks_through_feed_stream_give_the_same_exchanges_as_the_frames():
    """The Extractor's in-order stream entry (feed_stream) and the synthetic frames agree."""
    import socket as _s

    req = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbye"
    chunks = [chunk(True, 0, req[:20]), chunk(True, 20, req[20:]), chunk(False, 0, resp)]
    fr = Framer()
    fr.open(9, CLIENT, SERVER)
    frames = [f for c in chunks for f in fr.data(9, c)] + fr.close(
        9, 1_700_000_000_500_000, len(req), len(resp)
    )
    ex = Extractor(ports=(443,))
    streamed = []
    cl, sv = (_s.inet_ntoa(CLIENT[0]), CLIENT[1]), (_s.inet_ntoa(SERVER[0]), SERVER[1])
    for c in chunks:
        streamed += ex.feed_stream(c.ts_us / 1e6, cl, sv, c.to_server, c.data)
    streamed += ex.end_stream(1_700_000_000.5, cl, sv) + ex.finish()
    (a,) = exchanges(frames)
    (b,) = streamed
    assert (a.client, a.server, a.request, a.response.status, a.response.body) == (
        b.client,
        b.server,
        b.request,
        b.response.status,
        b.response.body,
    )


def test_ipv4_header_checksums_verify():
    """The checksum is computed incrementally (a cached sum per address pair plus the length):
    each header must still sum to zero by RFC 1071 (dpkt's own checksum routine)."""
    import random

    import dpkt

    rng = random.Random(14)
    for _ in range(500):
        src = (rng.randbytes(4), rng.randrange(65536))
        dst = (rng.randbytes(4), rng.randrange(65536))
        payload = b"x" * rng.randrange(20000)
        frame = segment(src, dst, rng.randrange(1 << 32), rng.randrange(1 << 32), 0x18, payload)
        assert dpkt.in_cksum(frame[:20]) == 0
        ip = dpkt.ip.IP(frame)
        assert (ip.src, ip.dst, ip.len, ip.data.sport) == (src[0], dst[0], len(frame), src[1])
