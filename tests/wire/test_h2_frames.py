"""The frame reader's fast path (DATA, HEADERS and CONTINUATION read without hyperframe objects:
``shadowtap/wire/http2/_frames.py``) against hyperframe's own parsing (``FrameReader(fast=False)``):
any sequence of frame headers and payloads, valid or not (no stream id, pad lengths past the
payload, PRIORITY without its 5 bytes, every flag bit), cut anywhere, gives the same items, error
texts included; and whole conversations give the same exchanges through both."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as hs

from shadowtap.wire.http2 import Conversation, Event
from shadowtap.wire.http2._frames import FrameReader
from tests.wire.h2pair import H2Pair, grpc_frame

# Types the fast path takes (0, 1, 9) and a few it leaves to hyperframe (SETTINGS, RST_STREAM,
# PING, GOAWAY, WINDOW_UPDATE, PRIORITY, PUSH_PROMISE, an unknown extension type).
_TYPES = [0x0, 0x1, 0x9, 0x0, 0x1, 0x9, 0x4, 0x3, 0x6, 0x7, 0x8, 0x2, 0x5, 0xB]


@hs.composite
def raw_frame(draw) -> bytes:
    ftype = draw(hs.sampled_from(_TYPES))
    flags = draw(hs.integers(0, 255))
    sid = draw(hs.sampled_from([0, 1, 3, 0x7FFFFFFF, 0x80000000, 0x80000001]))  # reserved bit too
    payload = draw(hs.binary(max_size=40))
    if payload and draw(hs.booleans()):
        # A pad length near the payload's length, where hyperframe's checks cut.
        pad = max(0, len(payload) - draw(hs.sampled_from([-1, 0, 1, 2, 5, 6, 7])))
        payload = bytes([min(pad, 255)]) + payload[1:]
    size = len(payload)
    return struct.pack(">HBBBL", size >> 8, size & 0xFF, ftype, flags, sid) + payload


def read_all(data: bytes, cuts: list[int], fast: bool):
    """Every item, hyperframe's frame objects as their repr (they do not compare equal)."""
    reader = FrameReader(expect_preface=False, synced=True, fast=fast)
    out, last = [], 0
    for cut in sorted({c % (len(data) + 1) for c in cuts}) + [len(data)]:
        out += reader.feed(1.0, data[last:cut])
        last = cut
    shown = [i if isinstance(i[-1], (bytes, str)) else (*i[:-1], repr(i[-1])) for i in out]
    return shown, reader.pending


@settings(max_examples=300, deadline=None)
@given(hs.lists(raw_frame(), max_size=12), hs.lists(hs.integers(0, 2000), max_size=8))
def test_fast_path_equals_hyperframe_for_any_frames_and_cut(frames, cuts):
    data = b"".join(frames)
    fast, fast_left = read_all(data, cuts, fast=True)
    slow, slow_left = read_all(data, [], fast=False)
    assert fast == slow and fast_left == slow_left == 0
    assert len(fast) == sum(1 for f in frames if f[3] not in (0x2, 0x6, 0x8))


def _grpc_pair() -> H2Pair:
    p = H2Pair()
    for i in range(4):
        s = p.request(
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":authority", "m:1"),
                (":path", "/pkg.M/Infer"),
                ("content-type", "application/grpc"),
                ("x-request-id", str(i)),
            ],
            grpc_frame(b"x" * (i * 5000)),  # up to 15 kB: several DATA frames
        )
        p.respond(
            s,
            [(":status", "200"), ("content-type", "application/grpc")],
            grpc_frame(b"answer%d" % i) * 3,
            [("grpc-status", "0"), ("grpc-message", "ok")],
        )
    return p


def _streams(log, cuts: list[int], fast: bool) -> list:
    conv = Conversation()
    conv.client.reader.fast = conv.server.reader.fast = fast
    done = []
    for from_client, ts, data in log:
        last = 0
        for cut in sorted({c % (len(data) + 1) for c in cuts}) + [len(data)]:
            conv.data(from_client, ts, data[last:cut])
            last = cut
        done += [st for ev, st in conv.events if ev == Event.DONE]
        conv.events.clear()
    conv.close(9e9)
    done += [st for ev, st in conv.events if ev == Event.DONE]
    return [
        (st.index, st.request, st.response, st.grpc, st.h2, tuple(st.anomalies), st.chunks)
        for st in done
    ]


@settings(max_examples=40, deadline=None)
@given(hs.lists(hs.integers(0, 20000), max_size=6))
def test_conversation_same_exchanges_through_both_paths(cuts):
    log = _grpc_pair().log
    fast = _streams(log, cuts, fast=True)
    assert fast == _streams(log, [], fast=False)
    assert len(fast) == 4 and all(g[3].status == 0 and g[3].response_count == 3 for g in fast)


def test_fast_path_equals_hyperframe_at_every_boundary():
    """Exhaustive where the checks cut: each fast-path type with PADDED and PRIORITY on or off,
    payloads of 0 to 9 bytes, every pad length from 0 to 11, stream 0, 1, or 0 with the reserved
    bit set."""
    frames = []
    for ftype in (0x0, 0x1, 0x9):
        for flags in (0x0, 0x1, 0x8, 0x20, 0x28, 0x2D, 0xFF):
            for size in range(10):
                for pad in range(12):
                    for sid in (0, 1, 0x80000000):
                        payload = (bytes([pad]) + bytes(range(1, 10)))[:size]
                        head = struct.pack(">HBBBL", 0, size, ftype, flags, sid)
                        frames.append(head + payload)
    for frame in frames:
        assert read_all(frame, [], fast=True) == read_all(frame, [], fast=False), frame
