"""Reassembly of generative answers: OpenAI chat/completions streams and bodies, Ollama NDJSON,
generic SSE, and the bad inputs of issue 13 (cut streams, non-JSON data, errors, not SSE)."""

from __future__ import annotations

import re

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowtap.wire.genai import Api, parse_generation, timing


def _from_sse_without(flag: str, body: bytes, chunks, target: str):
    """``genai._from_sse`` with one of its fast ways (``_TYPED``, ``_VECTOR``) turned off."""
    import shadowtap.wire.genai as genai

    setattr(genai, flag, False)
    try:
        return genai._from_sse(body, chunks, target)
    finally:
        setattr(genai, flag, True)


SSE = "text/event-stream"


def chunk(i: int, delta: dict, finish: str | None = None, index: int = 0) -> bytes:
    obj = {
        "id": f"chatcmpl-{i}",
        "object": "chat.completion.chunk",
        "created": 1796149490 + i,
        "model": "m",
        "system_fingerprint": f"fp_{i}",
        "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def openai_stream(words: list[str], *, usage: bool = True, done: bool = True) -> bytes:
    parts = [chunk(0, {"role": "assistant", "content": ""})]
    parts += [chunk(i + 1, {"content": w}) for i, w in enumerate(words)]
    parts.append(chunk(99, {}, "stop"))
    if usage:
        parts.append(
            b'data: {"object":"chat.completion.chunk","choices":[],"usage":'
            b'{"prompt_tokens":5,"completion_tokens":%d,"total_tokens":%d}}\n\n'
            % (len(words), len(words) + 5)
        )
    if done:
        parts.append(b"data: [DONE]\n\n")
    return b"".join(parts)


def test_openai_chat_stream_reassembled():
    body = openai_stream(["Hel", "lo", " world"])
    g = parse_generation(body, SSE, "/v1/chat/completions")
    assert g is not None and g.api is Api.OPENAI_CHAT and g.streamed and g.done
    assert g.text == "Hello world" and g.finish_reason == "stop"
    assert g.usage == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    assert g.content_events == 3 and g.anomalies == ()
    assert g.output_tokens() == (3, False)


def test_stream_and_body_give_the_same_message():
    body = orjson.dumps(
        {
            "id": "x",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello world"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
        }
    )
    plain = parse_generation(body, "application/json", "/v1/chat/completions")
    streamed = parse_generation(openai_stream(["Hello", " world"]), SSE, "/v1/chat/completions")
    assert plain is not None and streamed is not None
    assert plain.message() == streamed.message()


def test_choices_by_index_and_tool_call_fragments():
    parts = [
        chunk(1, {"content": "a"}, index=1),
        chunk(2, {"content": "b"}, index=0),
        chunk(
            3,
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            },
        ),
        chunk(4, {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        chunk(5, {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        chunk(6, {}, "tool_calls"),
        chunk(7, {}, "stop", index=1),
        b"data: [DONE]\n\n",
    ]
    g = parse_generation(b"".join(parts), SSE, "/v1/chat/completions")
    assert [c.content for c in g.choices] == ["b", "a"]
    tc = g.choices[0].tool_calls[0]
    assert (tc.id, tc.name, tc.parsed, tc.valid) == (
        "call_1",
        "get_weather",
        {"city": "Paris"},
        True,
    )
    assert g.choices[0].finish_reason == "tool_calls" and g.choices[1].finish_reason == "stop"


def test_mid_stream_error_is_a_failure():
    body = (
        chunk(1, {"content": "partial"})
        + b'data: {"error": {"message": "overloaded", "code": 503}}\n\n'
    )
    g = parse_generation(body, SSE, "/v1/chat/completions")
    assert g.error == {"message": "overloaded", "code": 503}
    assert "stream_error" in g.anomalies and g.text == "partial"


@pytest.mark.parametrize(
    "body",
    [
        openai_stream(["a", "b"], done=False)[: -len(b'data: {"obj')],  # cut mid-event
        b"".join(chunk(i, {"content": "x"}) for i in range(3)),  # no [DONE], no finish
    ],
)
def test_cut_streams(body):
    g = parse_generation(body, SSE, "/v1/chat/completions")
    assert "stream_cut" in g.anomalies and g.text.startswith("x") or g.text == "ab"


def test_non_json_data_comments_retry_and_generic_sse():
    body = b': ping\nretry: 100\ndata: hello\n\nevent: score\ndata: {"v": 1}\n\n'
    g = parse_generation(body, SSE, "/events")
    assert g.api is Api.SSE and g.events == 2 and "stream_not_json" in g.anomalies
    assert [e["data"] for e in g.sse_events] == ["hello", {"v": 1}]


def test_claims_event_stream_and_is_not():
    g = parse_generation(b'{"answer": 42}', SSE, "/v1/chat/completions")
    assert g.api is Api.SSE and "not_event_stream" in g.anomalies


def test_ollama_ndjson_chat_stream_with_times():
    lines = [
        {
            "model": "llama3",
            "created_at": "2026-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": "Hi"},
            "done": False,
        },
        {
            "model": "llama3",
            "created_at": "2026-01-01T00:00:01Z",
            "message": {"role": "assistant", "content": " there"},
            "done": False,
        },
        {
            "model": "llama3",
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "eval_count": 2,
            "prompt_eval_count": 7,
        },
    ]
    raw = [orjson.dumps(x) + b"\n" for x in lines]
    body = b"".join(raw)
    chunks = ((len(raw[0]), 10.1), (len(raw[0]) + len(raw[1]), 10.2), (len(body), 10.3))
    g = parse_generation(body, "application/x-ndjson", "/api/chat", chunks=chunks)
    assert g.api is Api.OLLAMA_CHAT and g.text == "Hi there" and g.done
    assert g.usage == {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
    assert g.content_times == (10.1, 10.2)
    t = timing(g, 10.0, 10.3)
    assert t.ttft == pytest.approx(100.0) and t.itl == (pytest.approx(100.0),)
    assert t.tokens == 2 and not t.tokens_approx and t.tpot == pytest.approx(200.0)


def test_timing_from_sse_chunks_and_approximate_tokens():
    parts = [chunk(0, {"role": "assistant", "content": ""})] + [
        chunk(i, {"content": "w"}) for i in range(1, 5)
    ]
    parts.append(b"data: [DONE]\n\n")
    ends, total = [], 0
    for p in parts:
        total += len(p)
        ends.append(total)
    chunks = tuple((e, 100.0 + 0.05 * i) for i, e in enumerate(ends))
    g = parse_generation(b"".join(parts), SSE, "/v1/chat/completions", chunks=chunks)
    t = timing(g, 99.9, 100.25)
    # the first event is a role-only delta: not content; the first content came at 100.05
    assert t.ttft == pytest.approx(150.0) and len(t.itl) == 3 and t.tokens_approx and t.tokens == 4
    assert (
        timing(parse_generation(b"".join(parts), SSE, "/v1/chat/completions"), 99.9, 100.25) is None
    )


def test_embeddings_and_non_generative_bodies():
    emb = orjson.dumps(
        {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
            "model": "e",
        }
    )
    g = parse_generation(emb, "application/json", "/v1/embeddings")
    assert g.api is Api.OPENAI_EMBEDDING and g.embeddings == ((0.1, 0.2),)
    assert parse_generation(b'{"price": 3}', "application/json", "/v1/products/1") is None
    assert parse_generation(b"<html>", "text/html", "/") is None


def test_truncated_body_marked():
    g = parse_generation(openai_stream(["a"])[:40], SSE, "/v1/chat/completions", truncated=True)
    assert "body_truncated" in g.anomalies


def test_records_schema_2_chunks_round_trip_and_v1_migrates():
    from shadowtap.records import Exchange, Response, Result

    resp = Response(
        1.0, 2.0, "HTTP/1.1", (("Content-Type", SSE),), b"data: x\n\n", 9, status=200, reason="OK"
    )
    ex = Exchange("a", "1.1.1.1:1", "2.2.2.2:80", 0, None, resp, chunks=((9, 1.5),))
    d = ex.to_json()
    assert d["schema"] == 2 and d["chunks"] == [[9, 1.5]]
    assert Exchange.from_json(d) == ex
    old = {**d, "schema": 1}
    del old["chunks"]
    assert Exchange.from_json(old).chunks == ()
    r = Result("a", "http://x/", 1.0, 1.0, resp, chunks=((9, 1.6),))
    assert Result.from_json(r.to_json()) == r
    assert Result.from_json({**r.to_json(), "schema": 1}).chunks == ((9, 1.6),)
    with pytest.raises(ValueError, match="schema"):
        Result.from_json({**r.to_json(), "schema": 99})
    with pytest.raises(ValueError, match="chunks"):
        Result.from_json({**r.to_json(), "chunks": [5]})


def test_the_extractor_times_each_piece_of_a_streamed_response():
    """A chunked text/event-stream answer fed in pieces at known times (the Extractor's in-order
    stream input, what packets give after reassembly): the exchange's chunks say when each piece
    arrived, and the generation's TTFT and gaps come from them."""
    from shadowtap.capture.extractor import Extractor

    events = (
        [chunk(0, {"role": "assistant", "content": ""})]
        + [chunk(i, {"content": w}) for i, w in enumerate(["Hel", "lo", "!"], 1)]
        + [chunk(9, {}, "stop"), b"data: [DONE]\n\n"]
    )

    def chunked(b: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(b), b)

    req = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\n\r\n{}"
    )
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    ext = Extractor()
    c, s = ("10.0.0.1", 5000), ("10.0.0.2", 8000)
    out = ext.feed_stream(10.0, c, s, True, req)
    out += ext.feed_stream(10.01, c, s, False, head + chunked(events[0]))
    for k, ev in enumerate(events[1:], 1):  # one event a read, 20 ms apart, the first at +100 ms
        piece = chunked(ev) + (b"0\r\n\r\n" if k == len(events) - 1 else b"")
        out += ext.feed_stream(10.08 + 0.02 * k, c, s, False, piece)
    out += ext.end_stream(11.0, c, s)
    [ex] = out
    assert [round(t, 2) for _, t in ex.chunks] == [10.01, 10.1, 10.12, 10.14, 10.16, 10.18]
    assert ex.chunks[-1][0] == len(ex.response.body)
    g = parse_generation(ex.response.body, SSE, "/v1/chat/completions", chunks=ex.chunks)
    t = timing(g, ex.request.end_ts, ex.response.end_ts)
    assert g.text == "Hello!" and t.ttft == pytest.approx(100.0)
    assert t.itl == (pytest.approx(20.0), pytest.approx(20.0))


# ------------------------------------------- OpenAI chunks decoded as structs or as dicts

_text = st.text(st.sampled_from([*'ab }{,:"\\\n', "é", "😀"]), max_size=5)
_odd_choice = st.sampled_from(
    [
        {"index": 0, "delta": None, "finish_reason": None},
        {"index": 0, "delta": "x"},  # a delta that is no object: the dict way
        {"delta": {"content": "no index"}},
        {"index": None, "delta": {"content": "null index"}},
        {"index": 1, "delta": {"content": "second choice"}},
        {"index": 0, "text": "completion text", "finish_reason": "length"},
        {"index": 0, "delta": {"refusal": "I can't"}},
        {
            "index": 0,
            "delta": {"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f"}}]},
        },
        {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}},
        {"index": 0, "delta": {"content": 5}},
    ]
)
_odd_event = st.one_of(
    _odd_choice.map(lambda c: {"object": "chat.completion.chunk", "choices": [c]}),
    st.sampled_from(
        [
            {"choices": [], "usage": {"completion_tokens": 3}},
            {"choices": None, "usage": "none"},
            {"error": {"message": "overloaded"}},
            {"error": None, "choices": [{"index": 0, "delta": {"content": "e"}}]},
            {"choices": "not a list"},
            {"choices": [1, 2]},
            {"model": "other", "choices": [{"index": 0, "delta": {"content": "m"}}]},
            [1, 2],
        ]
    ),
)


@st.composite
def chat_streams(draw):
    """OpenAI chat streams, some bent: pieces with braces, quotes and newlines, odd chunks (tool
    calls, refusals, errors, usage, choices of other shapes), raw events, ``event: error``,
    [DONE] or not, and any chunking."""
    events = [chunk(0, {"role": "assistant", "content": ""})]
    for i in range(draw(st.integers(0, 8))):
        if draw(st.booleans()):
            events.append(chunk(i, {"content": draw(_text)}))
        else:
            events.append(b"data: " + orjson.dumps(draw(_odd_event)) + b"\n\n")
    events.append(chunk(99, {}, "stop"))
    if draw(st.booleans()):
        events.insert(1, draw(st.sampled_from([b"data: not json\n\n", b": ping\n\n"])))
    if draw(st.booleans()):
        events.insert(1, b'event: error\ndata: {"message": "typed error"}\n\n')
    if draw(st.booleans()):
        events.append(b"data: [DONE]\n\n")
    body = b"".join(events)
    cuts = draw(st.lists(st.integers(0, len(body)), max_size=6))
    return body, tuple((end, float(i)) for i, end in enumerate(sorted({*cuts, len(body)})))


@settings(max_examples=300, deadline=None)
@given(chat_streams())
def test_typed_chunks_and_dicts_give_the_same_generation(stream):
    """OpenAI chunks decoded as msgspec structs (the fast way) and as orjson dicts (the general
    way) give the same Generation, whatever the chunks hold."""
    import shadowtap.wire.genai as genai

    body, chunks = stream
    typed = genai._from_sse(body, chunks, "/v1/chat/completions")
    plain = _from_sse_without("_TYPED", body, chunks, "/v1/chat/completions")
    assert typed == plain


def test_a_choice_index_that_is_no_integer_is_its_position():
    """``"index": null`` (or a string) next to integer indexes: the choice's position, as for a
    JSON body's choices (sorting the choices raised TypeError)."""
    body = (
        chunk(0, {"content": "a"}) + b'data: {"object": "chat.completion.chunk", "choices": '
        b'[{"index": null, "delta": {"content": "b"}}]}\n\n'
        + b'data: {"object": "chat.completion.chunk", "choices": '
        b'[{"index": "1", "delta": {"content": "c"}}]}\n\n' + chunk(1, {}, "stop")
    )
    g = parse_generation(body, SSE, "/v1/chat/completions")
    assert g is not None and g.text == "abc" and g.finish_reason == "stop"


def test_the_usual_stream_is_folded_without_the_sse_parser():
    """The usual OpenAI stream takes the one-pass reading; one with a comment, CR line ends or a
    cut last event does not (the SSE parser reads those, with their anomalies)."""
    from shadowtap.wire.genai import _openai_stream

    body = openai_stream(["a", "b"])
    fast = _openai_stream(body, ((10, 1.0), (len(body), 2.0)), "/v1/chat/completions")
    assert fast is not None and fast[1] == 6 and fast[2] == 2.0 and fast[0].done
    for other in (b": ping\n\n" + body, body.replace(b"\n", b"\r\n"), body[:-1]):
        assert _openai_stream(other, (), "/v1/chat/completions") is None


# The usual stream read with no Python per event (_usual_stream) against the event-by-event way:
# streams of the usual shape, then bent so as to fail each of its checks in turn.
_piece = st.one_of(
    st.text(st.sampled_from([*'ab }{,:"\\/\n\t', "é", "😀", "\x00"]), max_size=6),
    st.none(),
)
_bends = {
    "cr": lambda b, i: b.replace(b"\n\n", b"\r\n\r\n", 1),
    "cr inside": lambda b, i: _at_event(b, i, lambda e: e.replace(b'"choices":', b'"choices":\r')),
    "lf inside": lambda b, i: _at_event(b, i, lambda e: e.replace(b'"choices":', b'"choices":\n')),
    "comment first": lambda b, i: b": ping\n\n" + b,
    "no space": lambda b, i: b.replace(b"data: ", b"data:", 1),
    "two spaces": lambda b, i: _at_event(b, i, lambda e: e.replace(b"data: ", b"data:  ", 1)),
    "cut": lambda b, i: b[: max(1, len(b) - 1 - i % 7)],
    "second line": lambda b, i: _at_event(
        b,
        i,
        lambda e: (
            [b"id: 7\n", b": c\n", b"event: error\n", b"retry: 5\n", b"data: {}\n"][i % 5] + e
        ),
    ),
    "line after": lambda b, i: _at_event(
        b, i, lambda e: e[:-1] + [b"id: 7\n", b"data: {}\n", b"x\n"][i % 3]
    ),
    "two values": lambda b, i: _at_event(b, i, lambda e: e[:-2] + b" " + e[6:]),
    "empty data": lambda b, i: _at_event(b, i, lambda e: b"data: \n\n" + e),
    "done inside": lambda b, i: _at_event(b, i, lambda e: b"data: [DONE]\n\n" + e),
    "not json": lambda b, i: _at_event(b, i, lambda e: b"data: {not json\n\n" + e),
    "blank line": lambda b, i: _at_event(b, i, lambda e: b"\n" + e),
    "trailing space": lambda b, i: _at_event(b, i, lambda e: e[:-2] + b" \n\n"),
    "first without object": lambda b, i: b'data: {"x":1,"choices":[{"delta":{}}]}\n\n' + b,
    "first ollama": lambda b, i: (
        b'data: {"done":false,"model":"m","choices":[{"delta":{"content":"x"}}]}\n\n' + b
    ),
    "usage tail error": lambda b, i: b.replace(
        b'"usage":{', b'"error":{"message":"late"},"usage":{', 1
    ),
}


def _at_event(body: bytes, i: int, bend) -> bytes:
    events = [e + b"\n\n" for e in body.split(b"\n\n")[:-1]]
    if not events:
        return body
    k = i % len(events)
    events[k] = bend(events[k])
    return b"".join(events) + body[len(b"".join(body.split(b"\n\n")[:-1])) + 2 * len(events) :]


@st.composite
def usual_streams(draw):
    """A usual OpenAI chat stream (role chunk, content chunks, finish chunk, maybe the usage
    chunk and [DONE]), with odd pieces (escapes, newlines, NUL, null content, models that vary),
    any chunking; bent by zero or more of ``_bends`` (and odd chunks of other shapes)."""
    events = [chunk(0, {"role": "assistant", "content": ""})]
    for i in range(draw(st.integers(0, 6))):
        ev = orjson.loads(chunk(i + 1, {"content": draw(_piece)})[6:])
        ev["model"] = draw(st.sampled_from(["m", "m", "", None, "other"]))
        events.append(b"data: " + orjson.dumps(ev) + b"\n\n")
    events.append(chunk(99, {}, draw(st.sampled_from(["stop", "length", "", None]))))
    if draw(st.booleans()):
        events.append(
            b'data: {"object":"chat.completion.chunk","choices":[],"usage":'
            b'{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}}\n\n'
        )
    if draw(st.booleans()):
        events.append(b"data: [DONE]\n\n")
    body = b"".join(events)
    bends = draw(st.lists(st.sampled_from(sorted(_bends)), max_size=2))
    for name in bends:
        body = _bends[name](body, draw(st.integers(0, 50)))
    if draw(st.integers(0, 5)) == 0:
        at = draw(st.integers(0, len(events) - 1))
        odd = b"data: " + orjson.dumps(draw(_odd_event)) + b"\n\n"
        body = _at_event(body, at, lambda e: odd + e)
        bends.append("odd chunk")
    if draw(st.integers(0, 3)) == 0:  # a write an event: each event a chunk of its own
        cuts = sorted({m.end() for m in re.finditer(b"\n\n", body)} | {len(body)})
    else:
        cuts = sorted({*draw(st.lists(st.integers(0, len(body) + 5), max_size=8)), len(body)})
    chunks = [(end, float(i)) for i, end in enumerate(cuts)]
    if draw(st.integers(0, 9)) == 0:
        chunks.reverse()  # ends out of order (a hand-made record)
        bends.append("unsorted chunks")
    if draw(st.booleans()):
        chunks = []
    return body, tuple(chunks), bends


@settings(max_examples=1500, deadline=None)
@given(usual_streams())
def test_the_usual_stream_read_at_once_is_the_stream_read_event_by_event(stream):
    """Whatever the stream, _usual_stream (when it takes it) and the event-by-event fold give the
    same Generation; the usual shape unbent is always taken."""
    import shadowtap.wire.genai as genai

    body, chunks, bends = stream
    for target in ("/v1/chat/completions", "/x"):
        usual = genai._usual_stream(body, chunks, target)
        if not bends and target != "/x":
            assert usual is not None
        slow = _from_sse_without("_VECTOR", body, chunks, target)
        assert genai._from_sse(body, chunks, target) == slow
        if usual is not None:
            assert usual == slow


@pytest.mark.parametrize("name", sorted(_bends))
def test_each_bend_leaves_the_usual_way_or_gives_the_same(name):
    """Each bend of a usual stream, alone: _usual_stream declines it, or (where the bend changes
    no meaning: a space after the JSON, no ``object``) gives what the event-by-event way does."""
    import shadowtap.wire.genai as genai

    body = openai_stream(["Hel", 'lo "', "\\ wörld"])
    taken = 0
    for i in range(12):
        bent = _bends[name](body, i)
        if bent == body:
            continue  # nothing to bend there (the [DONE] event)
        chunks = tuple((end, float(end)) for end in range(0, len(bent) + 40, 37))
        usual = genai._usual_stream(bent, chunks, "/v1/chat/completions")
        slow = _from_sse_without("_VECTOR", bent, chunks, "/v1/chat/completions")
        if name in ("trailing space", "first without object"):  # the same meaning
            assert usual is None or usual == slow
            taken += usual is not None
        else:
            assert usual is None, (name, i)
    assert taken or name not in ("trailing space", "first without object")
