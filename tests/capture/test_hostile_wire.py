"""Hostile traffic against the wire layer (issue 12 items 1, 5, 6, 7): crafted pcaps (scapy) through
`shadowtap extract` and the Extractor; each bound holds and says so with an anomaly."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib

import brotli
import orjson
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from shadowtap.capture.extract import iter_exchanges
from shadowtap.capture.extractor import Extractor
from shadowtap.wire.content import DEFAULT_LIMITS, Status, decode


def tcp_conversation(
    messages,
    *,
    client=("10.1.0.1", 40000),
    server=("10.1.0.2", 8080),
    t0=1000.0,
    step=0.001,
    mss=1400,
):
    """The packets of one TCP connection: handshake, ``messages`` ((from_client, bytes), in order,
    cut at ``mss``), FINs. scapy builds them (an encoder independent of ours)."""
    (cip, cport), (sip, sport) = client, server
    seq = {True: 1000, False: 5000}
    pkts = []
    t = t0

    def add(from_client, flags, payload=b""):
        nonlocal t
        src, dst = ((cip, cport), (sip, sport)) if from_client else ((sip, sport), (cip, cport))
        p = (
            Ether()
            / IP(src=src[0], dst=dst[0])
            / TCP(
                sport=src[1],
                dport=dst[1],
                flags=flags,
                seq=seq[from_client],
                ack=seq[not from_client],
            )
            / payload
        )
        p.time = t
        t += step
        pkts.append(p)
        seq[from_client] += len(payload) + (1 if flags in ("S", "SA", "FA") else 0)

    add(True, "S")
    add(False, "SA")
    add(True, "A")
    for from_client, data in messages:
        for i in range(0, len(data), mss):
            add(from_client, "PA", data[i : i + mss])
    add(True, "FA")
    add(False, "FA")
    return pkts


def extract(tmp_path, pkts, name="hostile.pcap"):
    path = str(tmp_path / name)
    wrpcap(path, pkts)
    return list(iter_exchanges([path]))


REQ = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def response(body: bytes, coding: str) -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Encoding: {coding}\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


# -- item 1: decompression bombs --


def test_brotli_and_stacked_gzip_bombs_stop_at_the_bound(tmp_path):
    zeros = b"\0" * (32 << 20)
    br = brotli.compress(zeros, quality=5)
    gz2 = gzip.compress(gzip.compress(zeros, 9), 9)
    legit = gzip.compress(b'{"k": "v"}' * 1000)
    pkts = tcp_conversation(
        [
            (True, REQ),
            (False, response(br, "br")),
            (True, REQ),
            (False, response(gz2, "gzip, gzip")),
            (True, REQ),
            (False, response(legit, "gzip")),
        ]
    )
    bomb1, bomb2, ok = extract(tmp_path, pkts)
    for ex in (bomb1, bomb2):
        assert ex.response.decoded_len is None and "decode_limit" in ex.anomalies
        assert ex.response.body_len == len(
            ex.response.body
        )  # the coded bytes are kept as they came
    assert ok.response.decoded_len == 10_000 and ok.anomalies == ()


def test_content_decoder_bounds_output_and_codings():
    zeros = b"\0" * (8 << 20)
    for coding, data in (
        ("br", brotli.compress(zeros, quality=5)),
        ("gzip", gzip.compress(zeros)),
        ("deflate", zlib.compress(zeros)),
    ):
        out = decode(data, coding, keep=True)
        assert out.status is Status.LIMIT and out.length is None, coding
        assert len(out.body) <= DEFAULT_LIMITS.cap(len(data))  # what was kept stays under the cap
    assert decode(b"x", "gzip, gzip, gzip, gzip, gzip").status is Status.LIMIT
    small = (
        b"hello " * 5000
    )  # 30 KB: a ratio well above 1000 is still decoded under the 1 MiB floor
    assert decode(gzip.compress(small), "gzip").length == len(small)
    assert decode(b"\x1f\x8b garbage", "gzip").anomaly == "undecodable_body"


# -- item 7: tiny chunks --


def test_tiny_chunks_accumulate_in_one_buffer(flow, extract_frames):
    body = bytes(range(256)) * 800  # 200 KB in 2-byte chunks: 100,000 chunks
    chunked = (
        b"".join(b"2\r\n" + body[i : i + 2] + b"\r\n" for i in range(0, len(body), 2))
        + b"0\r\n\r\n"
    )
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    f = flow(mss=1400).handshake().c(REQ).s(head + chunked).fin()
    frames = f.frames
    tracemalloc.start()
    try:
        out, _ = extract_frames(frames, max_body=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out[0].response.body == body and out[0].response.body_len == len(body)
    # One bytes object per chunk cost ~20x the bytes (4+ MB here); one buffer costs ~2x.
    assert peak < 6 * len(body), peak


def _jsonl(exchanges):
    return [orjson.dumps(e.to_json()) for e in exchanges]


def test_extractor_limits_are_validated():
    ex = Extractor()
    assert ex.settings.max_body == 1 << 20


# -- item 5: one stalled exchange --


def _stalled_and_busy(flow, n=200, step=0.3):
    """Connection A sends a request at t=100 that is never answered (a long poll); connection B
    then completes ``n`` exchanges, ``step`` seconds of capture time apart."""
    a = flow(client=("10.0.0.1", 41000), ts=100.0).handshake().c(REQ)
    b = flow(client=("10.0.0.3", 42000), ts=100.5, step=step).handshake()
    for i in range(n):
        b.c(REQ).s(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + bytes([i % 256]) * 1000)
    return sorted(a.frames + b.frames, key=lambda f: f[0])


def _fed(frames, **kw):
    ex = Extractor(keep_secrets=True, **kw)
    before_finish = []
    for ts, lt, fr in frames:
        before_finish += ex.feed(ts, lt, fr)
    return before_finish, ex.finish(), ex


def test_a_stalled_exchange_holds_later_ones_for_max_hold_seconds_only(flow):
    frames = _stalled_and_busy(flow)  # B runs for ~120 s of capture time
    out, rest, ex = _fed(frames)  # default max_hold_seconds=30
    assert len(out) >= 150  # written while the capture runs, not all at the end
    everything = out + rest
    at = [i for i, e in enumerate(everything) if e.client == "10.0.0.1:41000"]
    assert len(at) == 1 and at[0] >= 150  # after the exchanges that began later (A went idle)
    stalled = everything[at[0]]
    assert "late" in stalled.anomalies and stalled.response is None
    assert ex.stats.held_exchanges == 0


def test_a_stalled_exchange_holds_at_most_max_hold_bytes(flow):
    frames = _stalled_and_busy(flow, n=100, step=0.01)  # 1 s in all: the age bound is not reached
    out, _, ex = _fed(frames, max_hold_bytes=20_000)
    assert len(out) >= 75  # ~20 exchanges of 1 KB held at most
    held_max = 0
    ex2 = Extractor(keep_secrets=True, max_hold_bytes=20_000)
    for ts, lt, fr in frames:
        ex2.feed(ts, lt, fr)
        held_max = max(held_max, ex2._held_bytes)
    assert held_max <= 20_000 + 1000


# -- item 6: pipelined unanswered requests, headers per head --


def test_pipelined_unanswered_requests_are_capped_per_connection(flow, extract_frames):
    n = 500
    reqs = b"".join(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(n))
    resps = b"".join(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n%03d" % (i % 1000) for i in range(n)
    )
    f = flow(mss=1400).handshake().c(reqs)
    tracked = Extractor(keep_secrets=True, max_open=100)
    peak_open = 0
    for ts, lt, fr in f.frames:
        tracked.feed(ts, lt, fr)
        conv = next(iter(tracked.reassembler.conns.values())).app
        if conv is not None:  # made at the first data
            peak_open = max(peak_open, len(conv.queue))
    assert peak_open <= 101
    f.s(resps).fin()
    out, ex = extract_frames(f.frames, max_open=100)
    paired = [e for e in out if e.request is not None and e.response is not None]
    shed = [e for e in out if e.request is not None and e.response is None]
    alone = [e for e in out if e.request is None]
    assert len(shed) == len(alone) == n - 100 and len(paired) == 100
    assert all("open_limit" in e.anomalies for e in shed + alone)
    # The kept requests get their own answers: /400 ... /499 with bodies 400 ... 499.
    assert [(e.request.target, e.response.body) for e in paired][:2] == [
        ("/400", b"400"),
        ("/401", b"401"),
    ]


def test_headers_per_head_are_capped(flow, extract_frames):
    head = b"GET / HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(1000)) + b"\r\n"
    f = flow().handshake().c(head).s(b"HTTP/1.1 204 No Content\r\n\r\n").fin()
    out, _ = extract_frames(f.frames)
    assert len(out) == 1 and len(out[0].request.headers) == 256
    assert "too_many_headers" in out[0].anomalies and out[0].response.status == 204
