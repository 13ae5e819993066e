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


# -- item 1: decompression bombs ------------------------------------------------------------------


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


# -- item 7: tiny chunks ----------------------------------------------------------------------------


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
