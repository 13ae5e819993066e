"""The passive HTTP/2 parser against a real HTTP/2 client and server (h2's connection objects) and
against frames crafted with hyperframe and hpack."""

from __future__ import annotations

import gzip

from hpack import Encoder
from hyperframe.frame import ContinuationFrame, DataFrame, HeadersFrame, RstStreamFrame
from hypothesis import given, settings
from hypothesis import strategies as hs

from shadowtap.wire.http2 import PREFACE, Conversation, Event, sniff
from tests.wire.h2pair import H2Pair, grpc_frame, run

GET = [
    (":method", "GET"),
    (":scheme", "http"),
    (":authority", "svc:8080"),
    (":path", "/a?x=1"),
    ("user-agent", "t/1"),
    ("x-custom", "v" * 40),
]


def grpc_req(path: str, extra: list[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "model:9000"),
        (":path", path),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        *extra,
    ]


def simple_pair() -> H2Pair:
    p = H2Pair()
    sid = p.request(GET)
    p.respond(sid, [(":status", "200"), ("content-type", "text/plain")], b"hello")
    return p


def test_get_one_exchange():
    _, done = run(simple_pair().log)
    assert len(done) == 1
    st = done[0]
    req, resp = st.request, st.response
    assert (req.method, req.target, req.version) == ("GET", "/a?x=1", "HTTP/2")
    assert ("x-custom", "v" * 40) in req.headers and (":authority", "svc:8080") in req.headers
    assert (resp.status, resp.body, resp.body_len, resp.body_truncated) == (200, b"hello", 5, False)
    assert st.h2.stream_id == 1 and st.h2.outcome == "complete"
    assert st.anomalies == [] and st.grpc is None
    assert req.ts < resp.ts <= resp.end_ts


def test_grpc_unary_with_trailers_and_gzip():
    p = H2Pair()
    msg = b"\x0a\x05hello\x10\x07"
    sid = p.request(
        grpc_req("/inference.GRPCInferenceService/ModelInfer", [("grpc-encoding", "gzip")]),
        grpc_frame(gzip.compress(msg), compressed=True),
    )
    p.respond(
        sid,
        [(":status", "200"), ("content-type", "application/grpc")],
        grpc_frame(b"\x08\x01") + grpc_frame(b"\x08\x02"),
        [("grpc-status", "0"), ("grpc-message", "all%20good")],
    )
    _, [st] = run(p.log)
    call = st.grpc
    assert (call.service, call.method) == ("inference.GRPCInferenceService", "ModelInfer")
    assert [m.data for m in call.request_messages] == [msg]
    assert call.request_messages[0].compressed and not call.request_messages[0].truncated
    assert [m.data for m in call.response_messages] == [b"\x08\x01", b"\x08\x02"]
    assert (call.request_count, call.response_count, call.status, call.message) == (
        1,
        2,
        0,
        "all good",
    )
    assert st.h2.response_trailers == 2 and st.response.headers[-2:] == (
        ("grpc-status", "0"),
        ("grpc-message", "all%20good"),
    )


def test_trailers_only_response():
    p = H2Pair()
    sid = p.request(grpc_req("/pkg.Svc/Missing"), grpc_frame(b""))
    p.respond(
        sid,
        [
            (":status", "200"),
            ("content-type", "application/grpc"),
            ("grpc-status", "12"),
            ("grpc-message", "unimplemented"),
        ],
    )
    _, [st] = run(p.log)
    assert (st.grpc.status, st.grpc.message, st.grpc.response_count) == (12, "unimplemented", 0)
    assert st.grpc.request_count == 1 and st.grpc.request_messages[0].data == b""


def test_interleaved_streams_and_dynamic_table():
    """Three requests open at once, answered out of order; the later heads are mostly indexed
    references to the dynamic table the first one filled."""
    p = H2Pair()
    sids = [p.request(GET[:3] + [(":path", f"/r{i}"), ("x-custom", "v" * 40)]) for i in range(3)]
    assert p.c.encoder.header_table.dynamic_entries  # the encoder did index fields
    for sid in reversed(sids):
        p.respond(sid, [(":status", "200"), ("x-stream", str(sid))], b"b%d" % sid)
    _, done = run(p.log)
    assert [st.request.target for st in done] == ["/r2", "/r1", "/r0"]
    assert [st.index for st in done] == [2, 1, 0]
    assert all(("x-custom", "v" * 40) in st.request.headers for st in done)
    assert all(st.response.body == b"b%d" % st.id for st in done)


def test_continuation_and_padding_crafted():
    enc = Encoder()
    block = enc.encode(GET + [("x-long", "z" * 3000)])
    frames = [HeadersFrame(1, block[:100], flags=["PADDED"], pad_length=7)]
    frames += [
        ContinuationFrame(1, block[100:1100]),
        ContinuationFrame(1, block[1100:], flags=["END_HEADERS"]),
    ]
    frames += [DataFrame(1, b"body", flags=["PADDED", "END_STREAM"], pad_length=20)]
    senc = Encoder()
    resp = [HeadersFrame(1, senc.encode([(":status", "204")]), flags=["END_HEADERS", "END_STREAM"])]
    log = [
        (True, 1.0, PREFACE + b"".join(f.serialize() for f in frames)),
        (False, 2.0, b"".join(f.serialize() for f in resp)),
    ]
    _, [st] = run(log)
    assert ("x-long", "z" * 3000) in st.request.headers and st.request.body == b"body"
    assert st.response.status == 204 and st.anomalies == []


def test_interrupted_header_block_is_named():
    enc = Encoder()
    block = enc.encode(GET)
    frames = [HeadersFrame(1, block[:5]), DataFrame(1, b"x", flags=["END_STREAM"])]
    _, done = run([(True, 1.0, PREFACE + b"".join(f.serialize() for f in frames))])
    conv, _ = run([(True, 1.0, PREFACE + b"".join(f.serialize() for f in frames))])
    assert "h2_header_block_interrupted" in conv.anomalies or any(
        "h2_header_block_interrupted" in st.anomalies for st in done
    )


def test_reset_and_goaway_outcomes():
    p = H2Pair()
    s1 = p.request(grpc_req("/pkg.Svc/Stream"), grpc_frame(b"a"), end=False)
    s3 = p.request(GET)
    s5 = p.request(GET[:3] + [(":path", "/late")])
    p.s.reset_stream(s1, error_code=8)  # CANCEL
    p.respond(s3, [(":status", "200")], b"ok")
    p.s.close_connection(error_code=0, last_stream_id=s3)
    p.flush()
    _, done = run(p.log)
    by = {st.id: st for st in done}
    assert (
        by[s1].h2.outcome == "reset"
        and by[s1].h2.error_code == 8
        and "h2_reset" in by[s1].anomalies
    )
    assert by[s1].grpc.request_count == 1 and by[s1].response is None
    assert by[s3].h2.outcome == "complete"
    assert by[s5].h2.outcome == "refused" and "h2_goaway" in by[s5].anomalies


def test_push_promise_ignored_but_table_kept():
    """A pushed response is not recorded; its PUSH_PROMISE block still feeds the server-to-client
    table, so the next response's indexed fields decode."""
    p = H2Pair()
    sid = p.request(GET)
    p.s.push_stream(
        sid,
        2,
        [
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "svc:8080"),
            (":path", "/pushed"),
            ("x-push", "p" * 30),
        ],
    )
    p.s.send_headers(2, [(":status", "200")], end_stream=True)
    p.respond(sid, [(":status", "200"), ("x-push", "p" * 30)], b"x")
    _, done = run(p.log)
    assert [st.request.target for st in done] == ["/a?x=1"]
    assert (
        "h2_push_ignored" in done[0].anomalies and ("x-push", "p" * 30) in done[0].response.headers
    )


def test_rst_from_client_and_truncated_at_end():
    p = H2Pair()
    s1 = p.request(GET, end=True)
    p.c.reset_stream(s1, error_code=8)
    p.flush()
    s3 = p.request(GET[:3] + [(":path", "/open")])
    _, done = run(p.log)
    by = {st.id: st for st in done}
    assert by[s1].h2.outcome == "reset"
    assert (
        by[s3].h2.outcome == "truncated"
        and "truncated" in by[s3].anomalies
        and by[s3].response is None
    )


@settings(max_examples=60, deadline=None)
@given(hs.lists(hs.integers(min_value=0, max_value=400), max_size=6))
def test_any_split_gives_the_same_streams(cuts):
    p = H2Pair()
    s = p.request(grpc_req("/pkg.Svc/Bidi"), grpc_frame(b"m1") + grpc_frame(b"m2" * 100), end=False)
    p.s.send_headers(s, [(":status", "200"), ("content-type", "application/grpc")])
    p.s.send_data(s, grpc_frame(b"r1"))
    p.c.send_data(s, grpc_frame(b"m3"), end_stream=True)
    p.flush()
    g = p.request(GET)
    p.respond(g, [(":status", "404")], b"no")
    p.s.send_headers(s, [("grpc-status", "0")], end_stream=True)
    p.flush()

    def view(done):
        return [
            (st.id, st.request.to_json(), st.response.to_json(), st.grpc, st.h2, st.anomalies)
            for st in done
        ]

    assert view(run(p.log, splits=cuts)[1]) == view(run(p.log)[1])


# -- joining mid-connection ----------------------------------------------------------------------


def _long_lived() -> H2Pair:
    p = H2Pair()
    for i in range(3):
        s = p.request(
            grpc_req("/pkg.Model/Predict", [("x-model-version", "v2-" + "q" * 20)]),
            grpc_frame(b"req%d" % i),
        )
        p.respond(
            s,
            [(":status", "200"), ("content-type", "application/grpc")],
            grpc_frame(b"resp%d" % i),
            [("grpc-status", "0")],
        )
    return p


def test_midstream_undecodable_fields_are_named_and_grpc_kept():
    p = _long_lived()
    first_len = sum(1 for _ in p.log)
    # A call whose head is all indexed references to entries made before the cut.
    s = p.request(
        grpc_req("/pkg.Model/Predict", [("x-model-version", "v2-" + "q" * 20)]), grpc_frame(b"late")
    )
    p.respond(
        s,
        [(":status", "200"), ("content-type", "application/grpc")],
        grpc_frame(b"answer"),
        [("grpc-status", "0")],
    )
    # A call with a new path: literals, decodable.
    s2 = p.request(grpc_req("/pkg.Model/Other"), grpc_frame(b"o"))
    p.respond(
        s2,
        [(":status", "200"), ("content-type", "application/grpc")],
        grpc_frame(b"oo"),
        [("grpc-status", "3")],
    )
    # The same new path again: now an entry inserted since the capture began, at a known position.
    s3 = p.request(grpc_req("/pkg.Model/Other"), grpc_frame(b"o2"))
    p.respond(
        s3,
        [(":status", "200"), ("content-type", "application/grpc")],
        grpc_frame(b"oo2"),
        [("grpc-status", "0")],
    )
    conv, done = run(p.log[first_len:], midstream=True)
    by = {st.id: st for st in done}
    assert by[s3].request.target == "/pkg.Model/Other" and by[s3].grpc.method == "Other"
    late = by[s]
    assert "h2_headers_undecodable" in late.anomalies and "midstream" in late.anomalies
    assert late.h2.undecoded_fields > 0
    # Never guessed: fields that were references to older entries are absent, not invented.
    assert all(v != "/pkg.Model/Other" for _, v in late.request.headers)
    assert [m.data for m in late.grpc.request_messages] == [b"late"]
    assert [m.data for m in late.grpc.response_messages] == [b"answer"]
    other = by[s2]
    assert other.request.target == "/pkg.Model/Other" and other.grpc.method == "Other"
    # Its trailer's name was an entry from before the capture: the status is unknown, not guessed.
    assert other.grpc.status is None and other.response.headers == ((":status", "200"),)
    assert conv.partly_decoded >= 1


def test_midstream_mid_frame_cut_resyncs():
    p = _long_lived()
    log = p.log
    # Cut the client's bytes 3 bytes into a write and the server's likewise: the first bytes of
    # each direction are the tail of a frame.
    start = 4
    cut = [
        (fc, ts, data[3:] if i < start + 2 else data)
        for i, (fc, ts, data) in enumerate(log)
        if i >= start
    ]
    conv, done = run(cut, midstream=True)
    assert done, conv.anomalies
    assert all(st.grpc is not None for st in done)
    assert any(m.data.startswith(b"resp") for st in done for m in st.grpc.response_messages)


def test_midstream_head_unseen_keeps_grpc_data_only_stream():
    """A streaming call that began before the capture: only its DATA is seen."""
    p = H2Pair()
    s = p.request(grpc_req("/pkg.Svc/Watch"), grpc_frame(b"sub"), end=False)
    p.s.send_headers(s, [(":status", "200"), ("content-type", "application/grpc")])
    p.s.send_data(s, grpc_frame(b"e0"))
    p.flush()
    n = len(p.log)
    p.s.send_data(s, grpc_frame(b"e1") + grpc_frame(b"e2"))
    p.c.end_stream(s)
    p.s.send_headers(s, [("grpc-status", "0")], end_stream=True)
    p.flush()
    _, [st] = run(p.log[n:], midstream=True)
    assert "h2_stream_start_unseen" in st.anomalies and "h2_path_unknown" in st.anomalies
    assert [m.data for m in st.grpc.response_messages] == [b"e1", b"e2"] and st.grpc.status == 0


def test_midstream_non_grpc_without_path_is_counted_not_kept():
    p = H2Pair()
    s = p.request(GET[:3] + [(":path", "/big")], end=True)
    p.s.send_headers(s, [(":status", "200")])
    p.s.send_data(s, b"x" * 100)
    p.flush()
    n = len(p.log)
    p.s.send_data(s, b"y" * 100, end_stream=True)
    p.flush()
    conv, done = run(p.log[n:], midstream=True)
    assert done == [] and conv.dropped_no_path == 1 and "h2_path_unknown" in conv.anomalies


# -- bad input ------------------------------------------------------------------------------------


def test_hpack_index_out_of_range_is_named():
    bad = HeadersFrame(
        1, b"\xff\x7f", flags=["END_HEADERS", "END_STREAM"]
    )  # index 254: no such entry
    good_enc = Encoder()
    good = HeadersFrame(3, good_enc.encode(GET), flags=["END_HEADERS", "END_STREAM"])
    _conv, done = run([(True, 1.0, PREFACE + bad.serialize() + good.serialize())])
    conv2 = Conversation()
    conv2.data(True, 1.0, PREFACE + bad.serialize())
    assert any("h2_hpack_error" in st.anomalies for ev, st in conv2.events)
    # The next block decodes as far as it can without guessing: static and literal fields.
    assert [st.request.method for st in done] == ["GET"]


def test_corrupt_padding_frame_is_named_and_others_survive():
    enc = Encoder()
    head = HeadersFrame(1, enc.encode(GET), flags=["END_HEADERS"])
    bad = bytearray(DataFrame(1, b"abc", flags=["PADDED"], pad_length=2).serialize())
    bad[9] = 200  # pad length beyond the frame
    end = DataFrame(1, b"z", flags=["END_STREAM"])
    senc = Encoder()
    resp = HeadersFrame(1, senc.encode([(":status", "200")]), flags=["END_HEADERS", "END_STREAM"])
    _, [st] = run(
        [
            (True, 1.0, PREFACE + head.serialize() + bytes(bad) + end.serialize()),
            (False, 2.0, resp.serialize()),
        ]
    )
    assert (
        "h2_frame_error" in st.anomalies and st.request.body == b"z" and st.response.status == 200
    )


def test_frame_longer_than_settings_is_named():
    enc = Encoder()
    head = HeadersFrame(1, enc.encode(GET), flags=["END_HEADERS"])
    big = DataFrame(1, b"q" * 20000, flags=["END_STREAM"])
    _, done = run([(True, 1.0, PREFACE + head.serialize() + big.serialize())])
    assert "h2_frame_too_large" in done[0].anomalies and done[0].request.body_len == 20000


def test_grpc_prefix_longer_than_data_and_huge_message_bounded():
    p = H2Pair()
    big = 100 << 20
    s = p.request(grpc_req("/pkg.Svc/Upload"), b"\x00" + big.to_bytes(4, "big") + b"a" * 1000)
    p.c.reset_stream(s, error_code=8)
    p.flush()
    _, [st] = run(p.log, max_body=64)
    m = st.grpc.request_messages[0]
    assert m.length == big and m.truncated and len(m.data) == 64
    assert "grpc_bad_prefix" in st.anomalies and st.request.body_truncated


def test_gap_marks_open_streams():
    p = H2Pair()
    s = p.request(grpc_req("/pkg.Svc/S"), grpc_frame(b"x"), end=False)
    conv = Conversation()
    for fc, ts, data in p.log:
        conv.data(fc, ts, data)
    conv.gap(True, 5.0, 100)
    conv.close(6.0)
    st = next(st for ev, st in conv.events if ev == Event.DONE)
    assert st.id == s and "gap" in st.anomalies and st.request.body_truncated


def test_not_h2_client_bytes():
    conv = Conversation()
    conv.data(True, 1.0, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert conv.anomalies == ["not_h2"] and conv.streams == {}


def test_sniff():
    from shadowtap.wire.protocol import Sniff

    assert sniff(PREFACE + b"\x00", True) is Sniff.YES and sniff(PREFACE[:5], True) is Sniff.MORE
    for text in (
        b"GET / HTTP/1.1\r\n",
        b"HTTP/1.1 200 OK\r\n",
        b"\x16\x03\x01\x02\x00" + b"\x00" * 100,
    ):
        assert sniff(text, True) is Sniff.NO and sniff(text, False) is Sniff.NO
    p = _long_lived()
    server_bytes = b"".join(d for fc, _, d in p.log[4:] if not fc)
    assert sniff(server_bytes, False) is Sniff.YES
    assert sniff(server_bytes[:20], False) is Sniff.MORE  # one header so far


def test_upgrade_h2c_request_is_stream_one():
    from shadowtap.records import Request
    from shadowtap.wire.protocol import Switch

    up = Request(
        ts=1.0,
        end_ts=1.0,
        version="HTTP/1.1",
        headers=(("Host", "x"), ("Upgrade", "h2c")),
        method="GET",
        target="/up",
    )
    conv = Conversation(upgrade=Switch("h2c", up, 0, 1, False, (), b"", 1.0, b"", 1.0))
    senc = Encoder()
    server = (
        b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
        + HeadersFrame(1, senc.encode([(":status", "200")]), flags=["END_HEADERS"]).serialize()
        + DataFrame(1, b"upgraded", flags=["END_STREAM"]).serialize()
    )
    conv.data(True, 2.0, PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    conv.data(False, 2.1, server)
    [st] = [st for ev, st in conv.events if ev == Event.DONE]
    assert (
        st.request.target == "/up"
        and st.response.body == b"upgraded"
        and st.response.version == "HTTP/2"
    )


def test_rst_on_unknown_stream_is_harmless():
    conv, done = run([(True, 1.0, PREFACE + RstStreamFrame(9, error_code=1).serialize())])
    assert done == [] and conv.anomalies == []


def test_watched_header_marks_the_stream_secret():
    p = H2Pair()
    s = p.request(GET + [("authorization", "Bearer x")])
    p.respond(s, [(":status", "200")], b"ok")
    s2 = p.request(GET)
    p.respond(s2, [(":status", "200")], b"ok")
    conv = Conversation(watch=("authorization", "cookie"))
    for fc, ts, data in p.log:
        conv.data(fc, ts, data)
    done = {st.id: st for ev, st in conv.events if ev == Event.DONE}
    assert done[s].secret and not done[s2].secret
