"""The typed fast path of ``line_decoder`` against the dict path (orjson + ``from_json``): the same
record, or the same error (type and message), for every line: generated records with odd values
(wrong types, NaN/inf, numbers out of range, negative counts, missing and unknown fields,
unicode, base64 bodies, older schemas), and the lines of a real exchange and result."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowtap import records
from shadowtap.records import (
    Exchange,
    GrpcCall,
    GrpcMessage,
    H2Stream,
    Request,
    Response,
    Result,
    ResultError,
    json_object,
    line_decoder,
)

# Raw JSON tokens orjson cannot write: NaN/inf (refused by both parsers) and numbers out of range.
_TOKENS = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "18446744073709551616",
    "9223372036854775808",
    "-9223372036854775809",
    "1e19",
    "2.0",
    "-0.0",
]
_MARK = "\x00tok"


def outcome(decode: Any, line: bytes) -> tuple[Any, ...]:
    try:
        return ("ok", decode(line))
    except Exception as exc:  # noqa: BLE001 - the test compares whatever is raised
        return ("error", type(exc), str(exc))


def same_on_both_paths(line: bytes) -> None:
    for from_json in (Exchange.from_json, Result.from_json):
        fast = outcome(line_decoder(from_json), line)
        slow = outcome(lambda b, f=from_json: f(json_object(b)), line)  # type: ignore[misc]
        assert fast == slow, line


odd = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),  # what orjson writes
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.sampled_from([_MARK + t for t in _TOKENS]),
    st.lists(st.integers(0, 9), max_size=2),
    st.dictionaries(st.sampled_from(["kind", "message", "a"]), st.text(max_size=3), max_size=2),
)


def usual_or(usual: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a value the field takes, sometimes anything (``odd``)."""
    return st.one_of(usual, usual, usual, odd)


text = st.text(max_size=12)  # unicode, surrogates left out by hypothesis' default alphabet
times = st.one_of(st.floats(1e9, 2e9), st.integers(0, 2**40))
counts = st.integers(0, 2**20)


@st.composite
def message(draw: st.DrawFn, request: bool) -> dict[str, Any]:
    base64 = draw(st.booleans())
    body = draw(st.binary(max_size=16)) if base64 else draw(text).encode()
    m: dict[str, Any] = {
        "ts": draw(usual_or(times)),
        "end_ts": draw(usual_or(times)),
        "version": draw(usual_or(st.sampled_from(["HTTP/1.1", "HTTP/2"]))),
        "headers": draw(usual_or(st.lists(st.tuples(text, text).map(list), max_size=3))),
        "body": draw(usual_or(st.just(records._encode_body(body)[0]))),
        "body_encoding": draw(usual_or(st.just("base64" if base64 else "utf8"))),
        "body_len": draw(usual_or(counts)),
        "body_truncated": draw(usual_or(st.booleans())),
        "decoded_len": draw(usual_or(st.one_of(st.none(), counts))),
    }
    if request:
        m |= {"method": draw(usual_or(st.just("POST"))), "target": draw(usual_or(text))}
    else:
        m |= {"status": draw(usual_or(st.integers(-5, 1100))), "reason": draw(usual_or(text))}
    return draw(mangled(m))


@st.composite
def mangled(draw: st.DrawFn, d: dict[str, Any]) -> dict[str, Any]:
    """``d`` with some fields left out and some unknown ones added."""
    for key in draw(st.lists(st.sampled_from(sorted(d)), max_size=2)):
        d.pop(key, None)
    for key in draw(st.lists(st.sampled_from(["zz", "extra_field", "ünï"]), max_size=2)):
        d[key] = draw(odd)
    return d


chunks = usual_or(st.lists(st.tuples(st.integers(-10, 2**20), times).map(list), max_size=3))
schemas = st.one_of(st.just(2), st.just(2), st.just(2), st.sampled_from([1, 3, 0, None, "2", 2.0]))


@st.composite
def exchange_line(draw: st.DrawFn) -> bytes:
    d: dict[str, Any] = {
        "schema": draw(schemas),
        "id": draw(usual_or(text)),
        "conn": draw(usual_or(st.fixed_dictionaries({"client": text, "server": text}))),
        "index": draw(usual_or(counts)),
        "request": draw(st.one_of(st.none(), message(True))),
        "response": draw(st.one_of(st.none(), message(False))),
        "ttfb_ms": draw(usual_or(st.one_of(st.none(), times))),
        "total_ms": draw(usual_or(st.one_of(st.none(), times))),
        "anomalies": draw(usual_or(st.lists(text, max_size=2))),
        "chunks": draw(chunks),
    }
    if draw(st.booleans()):
        d["h2"] = draw(
            usual_or(
                st.fixed_dictionaries(
                    {
                        "stream_id": st.integers(-1, 9),
                        "outcome": st.sampled_from(["complete", "reset", "x"]),
                    }
                )
            )
        )
    if draw(st.booleans()):
        d["grpc"] = draw(
            usual_or(st.just(GrpcCall("s", "m", (GrpcMessage(b"\xff", 1),)).to_json()))
        )
    return dump(draw(mangled(d)))


@st.composite
def result_line(draw: st.DrawFn) -> bytes:
    d: dict[str, Any] = {
        "schema": draw(schemas),
        "exchange_id": draw(usual_or(text)),
        "copy": draw(usual_or(st.one_of(st.none(), counts))),
        "target": draw(usual_or(text)),
        "scheduled": draw(usual_or(times)),
        "sent": draw(usual_or(times)),
        "response": draw(st.one_of(st.none(), message(False))),
        "ttfb_ms": draw(usual_or(st.one_of(st.none(), times))),
        "total_ms": draw(usual_or(st.one_of(st.none(), times))),
        "error": draw(
            usual_or(
                st.one_of(
                    st.none(),
                    st.fixed_dictionaries(
                        {"kind": st.sampled_from(["timeout", "reset", "bogus"]), "message": text}
                    ),
                )
            )
        ),
        "chunks": draw(chunks),
        "tls_handshake_ms": draw(usual_or(st.one_of(st.none(), times))),
    }
    if draw(st.booleans()):
        d["extra"] = draw(usual_or(st.dictionaries(text, odd, max_size=2)))
    return dump(draw(mangled(d)))


def dump(d: dict[str, Any]) -> bytes:
    """The line of ``d``, with the raw tokens put in where ``_MARK`` strings stand."""
    line = orjson.dumps(d)
    for t in _TOKENS:
        line = line.replace(orjson.dumps(_MARK + t), t.encode())
    return line + b"\n"


@settings(max_examples=600, deadline=None)
@given(exchange_line())
def test_exchange_lines_decode_alike_on_both_paths(line):
    same_on_both_paths(line)


@settings(max_examples=600, deadline=None)
@given(result_line())
def test_result_lines_decode_alike_on_both_paths(line):
    same_on_both_paths(line)


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"\n",
        b"[]",
        b"null",
        b"{",
        b'{"schema":2}',
        b"\xef\xbb\xbf{}",
        b'{"a":"\\ud800"}',
        b'{"a":"\xff"}',
        b"{} {}",
    ],
)
def test_odd_lines_decode_alike_on_both_paths(line):
    same_on_both_paths(line)


def usual_pair() -> tuple[Exchange, Result]:
    body = b'data: {"choices":[{"delta":{"content":"h\xc3\xa9"}}]}\n\ndata: [DONE]\n\n'
    req = Request(
        1.0,
        1.5,
        "HTTP/1.1",
        (("Host", "a"),),
        b'{"model":"m"}',
        13,
        method="POST",
        target="/v1/chat/completions",
    )
    resp = Response(
        2.0,
        3.0,
        "HTTP/1.1",
        (("Content-Type", "text/event-stream"),),
        body,
        len(body),
        status=200,
        reason="OK",
    )
    ex = Exchange(
        "id1",
        "10.0.0.1:1",
        "10.0.0.2:80",
        0,
        req,
        resp,
        ("gap",),
        500.0,
        2000.0,
        H2Stream(1),
        None,
        ((10, 2.5), (len(body), 3.0)),
    )
    res = Result(
        "id1",
        "http://s/",
        1.0,
        1.1,
        resp,
        1.0,
        2.0,
        ResultError("timeout", "x"),
        1,
        {"k": [1, "v"]},
        GrpcCall("s", "m"),
        ((len(body), 3.0),),
        4.5,
    )
    return ex, res


def test_the_usual_records_take_the_fast_path(monkeypatch):
    """A record as capture and replay write it is decoded without the dict path."""
    ex, res = usual_pair()
    lines = [orjson.dumps(r.to_json()) for r in (ex, res)]

    def refused(line: bytes) -> dict[str, Any]:
        raise AssertionError("took the dict path")

    monkeypatch.setattr(records, "json_object", refused)
    assert line_decoder(Exchange.from_json)(lines[0]) == ex
    assert line_decoder(Result.from_json)(lines[1]) == res


def test_schema_1_lines_are_migrated():
    ex, res = usual_pair()
    for decode, r in ((Exchange.from_json, ex), (Result.from_json, res)):
        d = r.to_json() | {"schema": 1}
        d.pop("h2", None)
        d.pop("grpc", None)
        got = line_decoder(decode)(orjson.dumps(d))
        assert got == decode(r.to_json() | {"schema": 2, "h2": None, "grpc": None})
