"""gRPC message splitting and status, and the records that carry HTTP/2 and gRPC (schema 2 and the
migration of schema 1 lines)."""

from __future__ import annotations

import gzip
import json
import zlib

from hypothesis import given, settings
from hypothesis import strategies as hs

from shadowtap.records import Exchange, GrpcCall, GrpcMessage, H2Stream, Request, Response, Result
from shadowtap.wire.grpc import MessageSplitter, parse_path, status_of
from tests.wire.h2pair import grpc_frame


def split(data: bytes, cuts: list[int], budget: int = 1 << 20) -> MessageSplitter:
    sp = MessageSplitter(budget)
    last = 0
    for c in sorted({c % (len(data) + 1) for c in cuts}) + [len(data)]:
        sp.feed(data[last:c])
        last = c
    sp.finish()
    return sp


@settings(max_examples=100, deadline=None)
@given(hs.lists(hs.binary(max_size=300), max_size=5), hs.lists(hs.integers(0, 2000), max_size=8))
def test_any_split_same_messages(msgs, cuts):
    data = b"".join(grpc_frame(m) for m in msgs)
    sp = split(data, cuts)
    assert sp.count == len(msgs) and [m.data for m in sp.records(None, 1 << 20)] == msgs
    assert not sp.anomalies


def test_budget_bounds_memory_but_counts_all():
    data = b"".join(grpc_frame(b"x" * 100) for _ in range(50))
    sp = split(data, [], budget=250)
    recs = sp.records(None, 250)
    assert sp.count == 50 and sum(len(m.data) for m in recs) == 250
    assert recs[2].truncated and recs[2].length == 100 and len(recs) == 3


def test_compressed_gzip_and_deflate():
    for enc, comp in (("gzip", gzip.compress), ("deflate", zlib.compress)):
        sp = split(grpc_frame(comp(b"payload" * 10), compressed=True), [])
        [m] = sp.records(enc, 1 << 20)
        assert m.data == b"payload" * 10 and m.compressed
    sp = split(grpc_frame(b"\x01\x02", compressed=True), [])
    [m] = sp.records("snappy", 1 << 20)
    assert m.data == b"\x01\x02" and "grpc_undecodable_message" in sp.anomalies


def test_bad_prefix():
    sp = split(b"\x07\x00\x00\x00\x01a", [])
    assert sp.anomalies == ["grpc_bad_prefix"]
    sp = split(b"\x00\x00\x00\x00\x09abc", [])
    [m] = sp.records(None, 100)
    assert m.truncated and m.length == 9 and m.data == b"abc"


def test_path_and_status():
    assert parse_path("/inference.GRPCInferenceService/ModelInfer") == (
        "inference.GRPCInferenceService",
        "ModelInfer",
    )
    assert parse_path("/v2/models/x/infer") is None and parse_path(None) is None
    assert status_of(
        [(":status", "200"), ("grpc-status", "14"), ("grpc-message", "unavailable%3A%20x")]
    ) == (14, "unavailable: x")


def test_records_round_trip_and_schema_1_migration():
    req = Request(
        ts=1.0,
        end_ts=1.1,
        version="HTTP/2",
        headers=((":method", "POST"),),
        body=b"\x00\x00\x00\x00\x01\xff",
        body_len=6,
        method="POST",
        target="/a.B/C",
    )
    resp = Response(
        ts=1.2,
        end_ts=1.3,
        version="HTTP/2",
        headers=((":status", "200"), ("grpc-status", "0")),
        status=200,
    )
    call = GrpcCall(
        "a.B", "C", (GrpcMessage(b"\xff", 1),), (GrpcMessage(b"ok", 2, True, False),), 1, 1, 0, None
    )
    ex = Exchange(
        "0123456789abcdef",
        "1.1.1.1:1",
        "2.2.2.2:2",
        0,
        req,
        resp,
        ("midstream",),
        0.1,
        0.3,
        H2Stream(3, "complete", None, 0, 1, 0),
        call,
    )
    d = json.loads(json.dumps(ex.to_json()))
    assert d["schema"] == 2 and d["grpc"]["request_messages"][0]["encoding"] == "base64"
    assert Exchange.from_json(d) == ex
    old = {k: v for k, v in ex.to_json().items() if k not in ("h2", "grpc")}
    old["schema"] = 1
    back = Exchange.from_json(old)
    assert back.h2 is None and back.grpc is None and back.request == req
    r = Result("0123456789abcdef", "h2c://x/a.B/C", 1.0, 1.0, resp, 1.0, 2.0, grpc=call)
    assert Result.from_json(json.loads(json.dumps(r.to_json()))) == r
    r1 = {k: v for k, v in r.to_json().items() if k != "grpc"}
    r1["schema"] = 1
    assert Result.from_json(r1).grpc is None
    for bad in (99, None, "2", 0):
        try:
            Exchange.from_json({**old, "schema": bad})
        except ValueError as exc:
            assert "schema" in str(exc)
        else:
            raise AssertionError(bad)
