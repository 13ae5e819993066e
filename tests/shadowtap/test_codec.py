"""shadowtap/codec.py: records and errors across a process boundary, generated from the fields."""

import dataclasses
import enum
import marshal
from collections import Counter
from typing import Any

import pytest

from shadowtap.codec import Codec, ErrorRecord, FrameReader, error_record, frame
from shadowtap.errors import InputError, PrerequisiteError, ShadowtapError
from shadowtap.records import (
    Exchange,
    GrpcCall,
    GrpcMessage,
    H2Stream,
    Request,
    Response,
    Result,
    ResultError,
)


def _exchange() -> Exchange:
    req = Request(
        ts=1.0,
        end_ts=1.5,
        version="HTTP/2",
        headers=(("Host", "a"), ("X", "1")),
        body=b"\x00body",
        body_len=9,
        body_truncated=True,
        decoded_len=20,
        method="POST",
        target="/p.Svc/Call",
    )
    resp = Response(
        ts=2.0,
        end_ts=2.5,
        version="HTTP/2",
        headers=(("grpc-status", "0"),),
        status=200,
        reason="OK",
    )
    return Exchange(
        id="ab12",
        client="10.0.0.1:5000",
        server="10.0.0.2:80",
        index=3,
        request=req,
        response=resp,
        anomalies=("gap", "midstream"),
        ttfb_ms=0.5,
        total_ms=1.5,
        h2=H2Stream(stream_id=5, outcome="reset", error_code=8, request_trailers=1),
        grpc=GrpcCall(
            "p.Svc",
            "Call",
            (GrpcMessage(b"\x08\x01", 2),),
            (GrpcMessage(b"\x10", 1, compressed=True),),
            1,
            1,
            0,
            "ok",
        ),
        chunks=((0, 2.0), (31, 2.25)),
    )


def test_every_field_of_an_exchange_round_trips() -> None:
    codec = Codec([Exchange, Result])
    ex = _exchange()
    # every field is set away from its default: one forgotten by the codec would come back default
    for f in dataclasses.fields(Exchange):
        if f.default is not dataclasses.MISSING:
            assert getattr(ex, f.name) != f.default, f.name
    assert codec.loads(codec.dumps(ex)) == ex
    res = Result(
        exchange_id="ab12",
        target="http://s/",
        scheduled=1.0,
        sent=1.1,
        response=ex.response,
        ttfb_ms=1.0,
        total_ms=2.0,
        error=ResultError("timeout", "slow"),
        copy=2,
        extra={"a": [1, 2]},
    )
    assert codec.loads(codec.dumps(res)) == res


def test_a_field_added_to_a_record_round_trips_with_no_change_to_the_codec() -> None:
    """What a new record field does to the mirror: it travels, as every other field does."""

    class Kind(enum.Enum):
        A = "a"
        B = "b"

    base = [(f.name, f.type, f) for f in dataclasses.fields(Exchange)]
    NewExchange = dataclasses.make_dataclass(
        "NewExchange",
        [(n, t, f) for n, t, f in base]
        + [
            ("kind", Kind, dataclasses.field(default=Kind.A)),
            ("tags", dict[str, int], dataclasses.field(default_factory=dict)),
            ("spare", Response | None, dataclasses.field(default=None)),
        ],
        frozen=True,
        slots=True,
        namespace={"__module__": Exchange.__module__},
    )
    codec = Codec([NewExchange])
    ex = _exchange()
    new = NewExchange(
        **{f.name: getattr(ex, f.name) for f in dataclasses.fields(Exchange)},
        kind=Kind.B,
        tags=Counter(x=2),
        spare=ex.response,
    )
    back = codec.loads(codec.dumps(new))
    assert back == new
    assert back.kind is Kind.B and back.tags == {"x": 2} and back.spare == ex.response


def test_any_fields_carry_records_and_plain_values() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Holder:
        what: Any
        n: int = 0

    codec = Codec([Holder, Request])
    req = _exchange().request
    assert codec.loads(codec.dumps(Holder(req, 1))) == Holder(req, 1)
    assert codec.loads(codec.dumps(Holder((1, "a"), 2))) == Holder((1, "a"), 2)


@pytest.mark.parametrize(
    "exc",
    [
        InputError("bad record", where="x.pcap at byte 12", hint="re-capture"),
        InputError("not a URL", field="target"),
        PrerequisiteError("no bcc", hint="apt install python3-bpfcc"),
        ShadowtapError("plain"),
    ],
)
def test_errors_come_back_as_the_same_class(exc: ShadowtapError) -> None:
    codec = Codec([ErrorRecord])
    back = codec.loads(codec.dumps(error_record(exc))).rebuild()
    assert type(back) is type(exc)
    assert (back.message, back.hint, back.exit_code, str(back)) == (
        exc.message,
        exc.hint,
        exc.exit_code,
        str(exc),
    )
    assert getattr(back, "where", None) == getattr(exc, "where", None)
    assert getattr(back, "field", None) == getattr(exc, "field", None)


def test_a_bug_says_which_process_and_where() -> None:
    try:
        {}["missing"]
    except KeyError as exc:
        rec = error_record(exc, "the extractor process")
    err = rec.rebuild()
    assert type(err) is ShadowtapError and err.exit_code == 1
    assert err.message.startswith("the extractor process failed: KeyError: 'missing' at ")
    assert "test_codec.py" in err.message


def test_frames_are_multiprocessings_and_split_anywhere() -> None:
    import multiprocessing

    codec = Codec([Exchange])
    ex = _exchange()
    data = b"".join(frame(codec.dumps(ex)) for _ in range(3))
    reader = FrameReader()
    out = []
    for i in range(len(data)):
        out += reader.feed(data[i : i + 1])
    assert [codec.loads(p) for p in out] == [ex, ex, ex]
    a, b = multiprocessing.Pipe(duplex=False)
    b.send_bytes(codec.dumps(ex))
    assert codec.loads(a.recv_bytes()) == ex
    assert marshal.loads(out[0])[0] == 1  # the first class registered has tag 1
