"""The SSE parser against the WHATWG rules: crafted streams, and properties (any chunking gives the
same events; a plain reference reading of the spec agrees) over generated streams."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shadowtap.wire.sse import Event, SseParser, parse_sse


def events(body: bytes) -> list[tuple[str, str, str]]:
    return [(e.type, e.data, e.id) for e in parse_sse(body).events]


def test_blank_line_ends_an_event_and_data_lines_join():
    body = b"data: first\ndata:second\ndata:  two spaces\n\ndata: next\n\n"
    assert events(body) == [("message", "first\nsecond\n two spaces", ""), ("message", "next", "")]


def test_comments_event_id_retry_and_unknown_fields():
    body = (
        b": keep-alive\nevent: delta\nid: 7\nretry: 3000\nfoo: bar\ndata: x\n\n"
        b"retry: soon\ndata: y\n\n"
    )
    s = parse_sse(body)
    assert [(e.type, e.data, e.id, e.retry) for e in s.events] == [
        ("delta", "x", "7", 3000),
        ("message", "y", "7", 3000),
    ]  # the id and retry persist
    assert s.comments == 1 and s.unknown_fields == 1 and not s.pending


def test_line_ends_cr_lf_crlf_and_no_colon_field():
    assert events(b"data\r\rdata: a\r\n\r\ndata: b\n\n") == [
        ("message", "", ""),
        ("message", "a", ""),
        ("message", "b", ""),
    ]


def test_event_without_data_dispatches_nothing_and_id_with_nul_is_ignored():
    assert events(b"event: x\n\nid: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n") == [
        ("message", "a", "1"),
        ("message", "b", "1"),
    ]


def test_bom_and_invalid_utf8():
    assert events(b"\xef\xbb\xbfdata: \xff ok\n\n") == [("message", "\ufffd ok", "")]


def test_cut_stream_discards_the_unfinished_event():
    s = parse_sse(b"data: done\n\ndata: half")
    assert [e.data for e in s.events] == ["done"] and s.pending
    assert not parse_sse(b"data: done\n\n").pending


def test_cr_at_a_chunk_end_then_lf():
    p = SseParser()
    out = p.feed(b"data: a\r", 1.0) + p.feed(b"\n\r", 2.0) + p.feed(b"\ndata: b\n\n", 3.0)
    assert [(e.data, e.ts) for e in out] == [("a", 2.0), ("b", 3.0)]


def test_event_times_come_from_the_chunk_that_ended_them():
    body = b"data: a\n\ndata: b\n\ndata: c\n\n"
    s = parse_sse(body, ((5, 1.0), (12, 2.0), (len(body), 3.0)))
    assert [(e.data, e.ts) for e in s.events] == [("a", 2.0), ("b", 3.0), ("c", 3.0)]


def test_oversized_event_is_cut_not_kept_whole():
    big = b"data: " + b"x" * 5000 + b"\n\n"
    s = parse_sse(big, max_event=1000)
    assert s.oversized == 1 and len(s.events[0].data) <= 1000


def test_many_events_in_small_chunks_is_linear():
    body = b"".join(b'data: {"n": %d}\n\n' % i for i in range(100_000))
    chunks = tuple((min(i + 1448, len(body)), float(i)) for i in range(0, len(body), 1448))
    s = parse_sse(body, chunks)
    assert len(s.events) == 100_000 and s.events[-1].data == '{"n": 99999}'


# ---------------------------------------------------------------------------- properties

_value = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=12
)
_line = st.one_of(
    st.tuples(
        st.sampled_from(["data", "event", "id", "retry", "x", ""]),
        st.sampled_from([":", ": ", ":  ", ""]),
        _value,
    ).map(lambda t: t[0] + t[1] + t[2] if t[0] or t[1] else t[2]),
    st.just(""),
    _value.map(lambda v: ":" + v),
)
_eol = st.sampled_from(["\n", "\r", "\r\n"])


@st.composite
def streams(draw):
    lines = draw(st.lists(st.tuples(_line, _eol), max_size=30))
    text = "".join(line + eol for line, eol in lines)
    if draw(st.booleans()):
        text += draw(_value)  # an unterminated tail
    return text.encode("utf-8")


def reference(text: str) -> list[tuple[str, str, str, int | None]]:
    """The spec's algorithm read literally: split into lines, then the field rules."""
    text = text.removeprefix("\ufeff")
    lines, cur, i = [], "", 0
    while i < len(text):
        c = text[i]
        if c in "\r\n":
            lines.append(cur)
            cur = ""
            if c == "\r" and text[i + 1 : i + 2] == "\n":
                i += 1
        else:
            cur += c
        i += 1
    out, data, etype, last_id, retry = [], "", "", "", None
    for line in lines:
        if line == "":
            if data:
                out.append((etype or "message", data[:-1], last_id, retry))
            data, etype = "", ""
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data += value + "\n"
            elif name == "event":
                etype = value
            elif name == "id" and "\0" not in value:
                last_id = value
            elif name == "retry" and value.isascii() and value.isdigit():
                retry = int(value)
    return out


@settings(max_examples=300, deadline=None)
@given(streams(), st.lists(st.integers(0, 400), max_size=12))
def test_any_chunking_gives_the_reference_events(body, cuts):
    whole = [(e.type, e.data, e.id, e.retry) for e in parse_sse(body).events]
    assert whole == reference(body.decode("utf-8"))
    bounds = sorted({min(c, len(body)) for c in cuts} | {len(body)})
    p = SseParser()
    got, start = [], 0
    for end in bounds:
        got += p.feed(body[start:end], float(end))
        start = end
    assert [(e.type, e.data, e.id, e.retry) for e in got] == whole
    assert all(isinstance(e, Event) for e in got)


@settings(max_examples=300, deadline=None)
@given(streams(), st.lists(st.integers(0, 400), max_size=12))
def test_whole_body_pass_equals_feeding_the_chunks(body, cuts):
    """parse_sse reads an LF-only body in one pass (split on blank lines): the same events, times,
    pending state and counts as the incremental parser fed the same chunks."""
    body = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    bounds = sorted({min(c, len(body)) for c in cuts} | {len(body)})
    chunks = tuple((end, float(i)) for i, end in enumerate(bounds))
    s = parse_sse(body, chunks)
    p = SseParser()
    got, start = [], 0
    for end, ts in chunks:
        got += p.feed(body[start:end], ts)
        start = end
    assert [(e.data, e.type, e.id, e.retry, e.ts) for e in got] == list(s.records)
    assert (s.comments, s.unknown_fields, s.oversized) == (
        p.comments,
        p.unknown_fields,
        p.oversized,
    )
    assert s.pending == p.close()
