"""Values read from files are checked with the field named (issue 12 item 11): a time that is not a
finite number, a negative length, a status that is no status code."""

from __future__ import annotations

import orjson
import pytest

from shadowtap.errors import InputError
from shadowtap.jsonl import read_jsonl
from shadowtap.records import Exchange, Request, Response, Result, exchange_id


def exchange_json() -> dict:
    req = Request(1.0, 1.0, "HTTP/1.1", (("Host", "a"),), method="GET", target="/")
    resp = Response(1.1, 1.2, "HTTP/1.1", (), b"ok", 2, decoded_len=2, status=200, reason="OK")
    return Exchange(
        exchange_id("c", "s", 1.0, 0), "10.0.0.1:1", "10.0.0.2:80", 0, req, resp
    ).to_json()


@pytest.mark.parametrize(
    ("where", "key", "value", "message"),
    [
        ("request", "ts", "NaN", "request.ts: not a number: 'NaN'"),
        ("request", "ts", float("nan"), "request.ts: not a finite number"),
        ("request", "end_ts", float("inf"), "request.end_ts: not a finite number"),
        ("response", "ts", True, "response.ts: not a number: True"),
        ("request", "body_len", -1, "request.body_len: not a count"),
        ("response", "decoded_len", -3, "response.decoded_len: not a count"),
        ("response", "status", "200", "response.status: not a status code"),
        ("response", "status", 1000, "response.status: not a status code"),
        ("", "ttfb_ms", float("nan"), "ttfb_ms: not a finite number"),
    ],
)
def test_exchange_values_are_checked(tmp_path, where, key, value, message):
    d = exchange_json()
    (d[where] if where else d)[key] = value
    with pytest.raises(
        (ValueError, TypeError)
    ) as e:  # the decoder (NaN and Infinity reach it from Python)
        Exchange.from_json(d)
    assert message in str(e.value)
    if isinstance(value, float):
        return  # JSON has no NaN or Infinity: orjson refuses such a line before decoding
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"\n" + orjson.dumps(d) + b"\n")
    with pytest.raises(InputError) as e2:  # from a file: with the line number
        list(read_jsonl(str(path), Exchange.from_json))
    assert "x.jsonl line 2: malformed record" in str(e2.value) and message in str(e2.value)


def test_result_times_are_checked():
    d = {
        "schema": 1,
        "exchange_id": "x",
        "target": "http://a/",
        "scheduled": "NaN",
        "sent": 1.0,
        "response": None,
        "error": None,
    }
    with pytest.raises(TypeError, match="scheduled: not a number: 'NaN'"):
        Result.from_json(d)
    d["scheduled"] = float("nan")
    with pytest.raises(ValueError, match="scheduled: not a finite number"):
        Result.from_json(d)
    d["scheduled"] = 1.0
    assert Result.from_json(d).scheduled == 1.0


def test_an_exchanges_file_given_as_results_names_the_missing_field(tmp_path):
    """A KeyError used to print as the bare key ("malformed record: 'exchange_id'")."""
    path = tmp_path / "swapped.jsonl"
    path.write_bytes(orjson.dumps(exchange_json()) + b"\n")
    with pytest.raises(InputError) as e:
        list(read_jsonl(str(path), Result.from_json))
    assert "swapped.jsonl line 1: malformed record: missing field 'exchange_id'" in str(e.value)


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ([[9, 1.5], [20, 2]], ((9, 1.5), (20, 2.0))),  # as written; an integral time
        ([[True, "2.5"], [3.0, 4]], ((1, 2.5), (3, 4.0))),  # odd but convertible: as int()/float()
        ([[2**70, 1.0]], ((2**70, 1.0),)),
        ([], ()),
        (None, ()),
    ],
)
def test_chunks_decode_as_int_and_float_pairs(chunks, expected):
    r = Result("a", "http://x/", 1.0, 1.0, None).to_json()
    got = Result.from_json({**r, "chunks": chunks}).chunks
    assert got == expected
    assert all(type(off) is int and type(ts) is float for off, ts in got)


@pytest.mark.parametrize("chunks", [[5], [[1, 2, 3]], [[1]], "ab", [[1, None]], [["x", 1.0]]])
def test_chunks_that_are_no_pairs_are_refused(chunks):
    r = Result("a", "http://x/", 1.0, 1.0, None).to_json()
    with pytest.raises(ValueError, match="chunks: not a list of"):
        Result.from_json({**r, "chunks": chunks})


def _sendable(tmp_path, d: dict | bytes) -> list[Exchange]:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n" + (d if isinstance(d, bytes) else orjson.dumps(d)) + b"\n")
    return list(read_jsonl(str(path), Exchange.sendable_from_line, lines=True))


def test_the_sendable_view_is_the_full_decoders_request(tmp_path):
    """replay's typed decoder of a line (the request, id, connection, h2, grpc) gives what the full
    decoder gives, the response left out; base64 bodies, HTAB in values and schema 1 lines too."""
    d = exchange_json()
    d["request"].update(
        method="POST",
        target="/v1/x?q=1",
        headers=[["Host", "a"], ["X-Tab", "a\tb"], ["Content-Length", "3"]],
        body="/wA=",
        body_encoding="base64",
        body_len=3,
        body_truncated=True,
        decoded_len=None,
    )
    d["h2"] = {"stream_id": 3, "outcome": "complete", "error_code": None}
    full = Exchange.from_json(d)
    for line in (d, {k: v for k, v in {**d, "schema": 1}.items() if k != "h2"}):
        (got,) = _sendable(tmp_path, line)
        assert got.request == full.request and got.request.body == b"\xff\x00"
        assert (got.id, got.client, got.server, got.index) == (
            full.id,
            full.client,
            full.server,
            full.index,
        )
        assert got.response is None
        assert got.h2 == (full.h2 if "h2" in line else None)


def test_a_response_alone_is_decoded_whole(tmp_path):
    d = {**exchange_json(), "request": None}
    (got,) = _sendable(tmp_path, d)
    assert got.request is None and got.response == Exchange.from_json(d).response


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("ts", "NaN", "Expected `float`, got `str` - at `$.request.ts`"),
        ("body_len", -1, "Expected `int` >= 0 - at `$.request.body_len`"),
        ("method", 7, "Expected `str`, got `int` - at `$.request.method`"),
        ("headers", [["Host", 1]], "Expected `str`, got `int` - at `$.request.headers[0][1]`"),
        ("method", "GET /x HTTP/1.1\r\nX:", "request not replayable: method"),
        ("target", "/a b", "request not replayable: target"),
    ],
)
def test_the_sendable_view_checks_what_it_decodes(tmp_path, key, value, message):
    d = exchange_json()
    d["request"][key] = value
    with pytest.raises(InputError) as e:
        _sendable(tmp_path, d)
    assert "in.jsonl line 2: malformed record" in str(e.value) and message in str(e.value)


def test_the_sendable_view_refuses_infinite_times_and_unknown_schemas(tmp_path):
    line = orjson.dumps(exchange_json()).replace(b'"ts":1.0', b'"ts":1e999', 1)
    with pytest.raises(InputError, match=r"Number out of range - at `\$.request.ts`"):
        _sendable(tmp_path, line)
    with pytest.raises(InputError, match=r"not an exchange record of schema 2 \(schema=9\)"):
        _sendable(tmp_path, {**exchange_json(), "schema": 9})


def test_a_results_file_given_as_exchanges_names_the_missing_field(tmp_path):
    r = Result("a", "http://x/", 1.0, 1.0, None).to_json()
    with pytest.raises(InputError) as e:
        _sendable(tmp_path, r)
    assert "missing required field `id`" in str(e.value)
    assert "(is this the right kind of file?)" in str(e.value)


def test_the_clean_heads_memo_never_lets_a_bad_head_through(monkeypatch):
    from shadowtap import records

    monkeypatch.setattr(records, "_CLEAN_HEADS_MAX", 3)
    records._CLEAN_HEADS.clear()
    clean = (("Host", "a"), ("X-Id", "1"))
    assert records.request_line_problem("GET", "/", clean) is None
    assert clean in records._CLEAN_HEADS  # remembered: the next check of it is a lookup
    assert records.request_line_problem("GET", "/", clean) is None
    for bad, what in (
        ((("Host", "a"), ("X-Id", "1\r\nX-Evil: 1")), "holds a control character"),
        ((("Host", "a"), ("X Id", "1")), "is not a token"),
    ):
        assert what in (records.request_line_problem("GET", "/", bad) or "")
        assert bad not in records._CLEAN_HEADS
    # the method and target are checked whatever the head
    assert "is not a token" in (records.request_line_problem("G T", "/", clean) or "")
    assert "holds a space" in (records.request_line_problem("GET", "/a b", clean) or "")
    for i in range(10):  # bounded: emptied when full
        records.request_line_problem("GET", "/", (("Host", f"h{i}"),))
        assert len(records._CLEAN_HEADS) <= 3
