"""shadowtap/wire/tcp.py: segments in, ordered streams with gaps out."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shadowtap.wire.frames import decode
from shadowtap.wire.tcp import Kind, Reassembler

ACK, PSH, SYN, FIN, RST = 0x10, 0x08, 0x02, 0x01, 0x04


def streams(frames, **kwargs):
    """Feed frames; returns ([{"c": [...], "s": [...], "conn": Connection}, ...] in order of first
    event, reassembler). Adjacent data chunks are joined; a gap is ("gap", n); END is "end"."""
    r = Reassembler(**kwargs)
    order: list = []
    conns: list[dict] = []

    def take(events):
        for ev in events:
            if ev.conn not in order:
                order.append(ev.conn)
                conns.append({"c": [], "s": [], "conn": ev.conn})
            side = conns[order.index(ev.conn)]["c" if ev.from_client else "s"]
            if ev.kind == Kind.DATA:
                if side and isinstance(side[-1], bytes):
                    side[-1] += ev.value
                else:
                    side.append(ev.value)
            elif ev.kind == Kind.GAP:
                side.append(("gap", ev.value))
            else:
                side.append("end")

    for ts, lt, fr in frames:
        take(r.feed(ts, decode(lt, fr)))
    take(r.finish())
    return conns, r


REQ = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def test_in_order_with_fin(flow):
    f = flow().handshake().c(REQ).s(RESP).fin()
    conns, r = streams(f.frames)
    assert conns[0]["c"] == [REQ, "end"]
    assert conns[0]["s"] == [RESP, "end"]
    conn = conns[0]["conn"]
    assert (conn.client, conn.server, conn.midstream) == ("10.0.0.1:40000", "10.0.0.2:80", False)
    assert r.connections_seen == 1


def test_out_of_order_and_retransmissions(flow):
    f = flow(mss=7).handshake().c(REQ * 3).fin()
    hs, data, tail = f.frames[:3], f.frames[3:-3], f.frames[-3:]
    conns, _ = streams(hs + list(reversed(data)) + data[2:5] + tail)
    assert conns[0]["c"] == [REQ * 3, "end"]


def test_overlapping_segments_and_conflicting_retransmission(flow):
    f = flow().handshake()
    base = f.c_next
    frames = f.frames + [
        f.frame(True, base, b"AAAABBBB"),
        f.frame(True, base + 4, b"BBBBCCCC"),  # overlaps the first: same bytes, new tail
        f.frame(True, base + 2, b"XX"),  # a retransmission with different bytes
    ]
    conns, _ = streams(frames)
    assert conns[0]["c"][0] == b"AAAABBBBCCCC"  # the first copy wins
    assert conns[0]["conn"].c2s.conflicts == 1


def test_duplicate_syn_is_ignored(flow):
    f = flow().handshake()
    frames = f.frames[:1] + f.frames[:1] + f.frames[1:]
    f2 = flow()
    f2.frames = frames
    f2.c_next, f2.s_next = f.c_next, f.s_next
    f2.c(REQ)
    conns, r = streams(f2.frames)
    assert r.connections_seen == 1
    assert conns[0]["c"][0] == REQ


def test_sequence_wraparound(flow):
    f = flow(c_isn=0xFFFFFFF0, s_isn=0xFFFFFFFE, mss=5).handshake().c(REQ).s(RESP).fin()
    conns, _ = streams(f.frames)
    assert conns[0]["c"] == [REQ, "end"]
    assert conns[0]["s"] == [RESP, "end"]


def test_wraparound_out_of_order(flow):
    f = flow(c_isn=0xFFFFFFF8, mss=4).handshake().c(REQ)
    hs, data = f.frames[:3], f.frames[3:]
    rnd = random.Random(7)
    rnd.shuffle(data)
    conns, _ = streams(hs + data)
    assert conns[0]["c"] == [REQ, "end"]


def test_midstream_join_direction_by_content(flow):
    f = flow(client=("10.0.0.1", 80), server=("10.0.0.2", 40000))  # odd ports: content decides
    f.c(REQ).s(RESP)
    conns, _ = streams(f.frames)
    conn = conns[0]["conn"]
    assert conn.midstream
    assert conn.client == "10.0.0.1:80"
    assert conns[0]["c"][0] == REQ


def test_midstream_direction_by_server_ports(flow):
    f = flow()
    f.s(RESP)  # the server speaks first in the capture
    conns, _ = streams(f.frames, server_ports={80})
    assert conns[0]["conn"].server == "10.0.0.2:80"
    assert conns[0]["s"][0] == RESP


def test_rst_ends_both_directions(flow):
    f = flow().handshake().c(REQ).rst(from_client=False)
    conns, _ = streams(f.frames)
    assert conns[0]["c"] == [REQ, "end"]
    assert conns[0]["s"] == ["end"]


def test_port_reuse_by_a_new_connection(flow):
    f1 = flow().handshake().c(REQ).s(RESP).fin()
    f2 = (
        flow(c_isn=777777, s_isn=999999, ts=f1.ts + 0.5)
        .handshake()
        .c(b"GET /b HTTP/1.1\r\n\r\n")
        .fin()
    )
    conns, r = streams(f1.frames + f2.frames)
    assert r.connections_seen == 2
    assert conns[0]["c"] == [REQ, "end"]
    assert conns[1]["c"] == [b"GET /b HTTP/1.1\r\n\r\n", "end"]
    assert conns[1]["conn"].start_ts > conns[0]["conn"].start_ts


def test_lost_segment_becomes_a_gap_when_the_peer_acks_past_it(flow):
    f = flow(mss=10).handshake().c(REQ)
    hs, data = f.frames[:3], f.frames[3:]
    lost = data.pop(1)  # bytes 10..19 never captured
    ack = f.frame(False, f.s_next, b"", flags=ACK, ack=f.c_next)  # the server got everything
    conns, _ = streams(hs + data + [ack])
    assert conns[0]["c"][:3] == [REQ[:10], ("gap", 10), REQ[20:]]
    assert lost  # (the dropped frame)


def test_gap_at_end_of_input(flow):
    f = flow(mss=10).handshake().c(REQ)
    hs, data = f.frames[:3], f.frames[3:]
    del data[0]
    conns, _ = streams(hs + data)
    assert conns[0]["c"] == [("gap", 10), REQ[10:], "end"]


def test_held_bytes_cap_forces_a_gap(flow):
    f = flow(mss=100).handshake().c(b"x" * 1000)
    hs, data = f.frames[:3], f.frames[3:]
    del data[0]
    conns, _ = streams(hs + data, max_held_bytes=300)
    first = conns[0]["c"]
    assert first[0] == ("gap", 100)
    assert first[1] == b"x" * 900


def test_idle_eviction_and_connection_cap(flow):
    a = flow().handshake().c(REQ)
    b = flow(client=("10.0.0.3", 40001), ts=a.ts + 500).handshake().c(REQ)
    conns, r = streams(a.frames + b.frames, idle_timeout=60)
    assert conns[0]["c"] == [REQ, "end"]  # evicted: ended before b's events
    assert r.evicted == 1
    c = flow(client=("10.0.0.4", 40002)).handshake()
    conns, r = streams(a.frames + c.frames, max_connections=1)
    assert r.evicted == 1 and conns[0]["c"] == [REQ, "end"]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_any_split_reorder_duplication_gives_the_same_stream(flow, data):
    payload = data.draw(st.binary(min_size=1, max_size=300))
    isn = data.draw(st.sampled_from([1000, 0xFFFFFF00, 0x7FFFFFF0]))
    mss = data.draw(st.integers(min_value=1, max_value=64))
    f = flow(mss=mss, c_isn=isn).handshake().c(payload)
    hs, segs = f.frames[:3], f.frames[3:]
    order = data.draw(st.permutations(segs))
    dups = data.draw(st.lists(st.sampled_from(segs), max_size=5))
    conns, _ = streams(hs + list(order) + dups)
    assert conns[0]["c"] == [payload, "end"]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.booleans(),  # from the client
            st.integers(min_value=0, max_value=2**32 - 1),  # seq
            st.integers(min_value=0, max_value=2**32 - 1),  # ack
            st.integers(min_value=0, max_value=0x3F),  # flags
            st.binary(max_size=40),
        ),
        max_size=30,
    )
)
def test_random_segments_never_raise_through_reassembly_and_parsing(segments):
    from shadowtap.capture.extractor import Extractor
    from shadowtap.wire.frames import Segment

    ex = Extractor(keep_secrets=True, max_held_bytes=64)
    c, s = b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02"
    for i, (from_client, seq, ack, flags, payload) in enumerate(segments):
        seg = (
            Segment(c, 40000, s, 80, seq, ack, flags, payload)
            if from_client
            else Segment(s, 80, c, 40000, seq, ack, flags, payload)
        )
        events = ex.reassembler.feed(1.0 + i * 0.01, seg)
        ex._dispatch(events)
    out = ex.finish()
    assert all(e.index >= 0 for e in out)


def _lanes_agree(segments):
    """Feed ``(ts, Segment)``s to a reassembler through ``feed`` alone and to another through
    ``feed_in_order`` first (``feed`` when it declines), as the Extractor does: the same events
    (one DATA event for each segment the in-order lane took) and the same state."""
    a, b = Reassembler(max_held_bytes=64), Reassembler(max_held_bytes=64)
    ev_a, ev_b = [], []
    for ts, seg in segments:
        ev_a += [(e.conn.key, e.from_client, e.kind, e.ts, e.value) for e in a.feed(ts, seg)]
        found = b.feed_in_order(ts, seg)
        if found is None:
            ev_b += [(e.conn.key, e.from_client, e.kind, e.ts, e.value) for e in b.feed(ts, seg)]
        elif seg.payload:
            ev_b.append((found[0].key, found[1], Kind.DATA, ts, seg.payload))
    ev_a += [(e.conn.key, e.from_client, e.kind, e.ts, e.value) for e in a.finish()]
    ev_b += [(e.conn.key, e.from_client, e.kind, e.ts, e.value) for e in b.finish()]
    assert ev_a == ev_b
    assert (a.now, a.connections_seen, a.evicted) == (b.now, b.connections_seen, b.evicted)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.booleans(),  # from the client
            st.sampled_from(
                [0, 1, 2, 5, 1000, 2**32 - 3]
            ),  # seq (few values: in-order hits are likely)
            st.sampled_from(
                [0x10, 0x18, 0x18, 0x18, 0x02, 0x12, 0x11, 0x04]
            ),  # ACK, PSH|ACK, SYN, SYN|ACK, FIN|ACK, RST
            st.binary(max_size=6),
            st.floats(min_value=0.0, max_value=0.9),  # time step: sweeps fall between some segments
        ),
        max_size=40,
    )
)
def test_in_order_lane_agrees_with_feed_on_random_segments(segments):
    from shadowtap.wire.frames import Segment

    c, s = b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02"
    ts = 1.0
    feed = []
    for from_client, seq, flags, payload, step in segments:
        ts += step
        feed.append(
            (
                ts,
                Segment(c, 40000, s, 80, seq, 0, flags, payload)
                if from_client
                else Segment(s, 80, c, 40000, seq, 0, flags, payload),
            )
        )
    _lanes_agree(feed)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_in_order_lane_agrees_with_feed_on_conversations(flow, data):
    mss = data.draw(st.integers(min_value=1, max_value=64))
    f = flow(mss=mss, step=0.3).handshake().c(REQ * 2).s(RESP * 2).c(REQ).fin()
    frames = list(f.frames)
    rnd = random.Random(data.draw(st.integers(min_value=0, max_value=2**32)))
    for _ in range(data.draw(st.integers(min_value=0, max_value=6))):  # some swaps and duplicates
        i, j = rnd.randrange(len(frames)), rnd.randrange(len(frames))
        frames[i], frames[j] = frames[j], frames[i]
        frames.insert(rnd.randrange(len(frames)), frames[rnd.randrange(len(frames))])
    _lanes_agree([(1.0 + k * 0.3, decode(lt, fr)) for k, (_, lt, fr) in enumerate(frames)])


def test_in_order_lane_declines_after_the_connection_closed(flow):
    """Bytes in sequence after an RST are a straggler: neither lane delivers them."""
    f = flow().handshake().c(REQ)
    rst = f.frame(True, f.c_next, flags=RST)
    late = f.frame(True, f.c_next, b"more")
    frames = [(ts, decode(lt, fr)) for ts, lt, fr in [*f.frames, rst, late]]
    _lanes_agree(frames)
    r = Reassembler()
    for ts, seg in frames[:-1]:
        r.feed(ts, seg)
    assert r.feed_in_order(*frames[-1]) is None
