import gzip

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shadowtap.compare.config import DEFAULT_NOISY_HEADERS
from shadowtap.compare.diff import Kind, diff_bodies, diff_json, diff_responses, normalise_text

IGN = frozenset(DEFAULT_NOISY_HEADERS)


def exact(path):
    return (0.0, 0.0)


def jdiff(p, s, tol=exact):
    out = []
    diff_json(p, s, "body", out, tol)
    return [(d.path, d.kind) for d in out]


def test_value_type_missing_extra():
    assert jdiff({"a": 1}, {"a": 2}) == [("body.a", Kind.VALUE)]
    assert jdiff({"a": "x"}, {"a": "y"}) == [("body.a", Kind.VALUE)]
    assert jdiff({"a": 1}, {"a": "1"}) == [("body.a", Kind.TYPE)]
    assert jdiff({"a": True}, {"a": 1}) == [("body.a", Kind.TYPE)]
    assert jdiff({"a": None}, {"a": 0}) == [("body.a", Kind.TYPE)]
    assert jdiff({"a": 1, "b": 2}, {"a": 1}) == [("body.b", Kind.MISSING)]
    assert jdiff({"a": 1}, {"a": 1, "c": 3}) == [("body.c", Kind.EXTRA)]


def test_renamed_field_is_missing_plus_extra():
    assert jdiff({"user_id": 7}, {"userId": 7}) == [
        ("body.user_id", Kind.MISSING),
        ("body.userId", Kind.EXTRA),
    ]


def test_size_and_order():
    assert jdiff({"l": [1, 2]}, {"l": [1, 2, 3]}) == [("body.l", Kind.SIZE)]
    assert jdiff({"l": [1, 2, 3]}, {"l": [3, 1, 2]}) == [("body.l", Kind.ORDER)]
    assert jdiff({"l": [{"a": 1}, {"b": 2}]}, {"l": [{"b": 2}, {"a": 1}]}) == [
        ("body.l", Kind.ORDER)
    ]
    # same length, other elements: elementwise, not order
    assert jdiff({"l": [1, 2]}, {"l": [1, 5]}) == [("body.l[]", Kind.VALUE)]


def test_array_indices_fold():
    p = {"items": [{"price": 1, "sku": "a"}, {"price": 2, "sku": "b"}, {"price": 3, "sku": "c"}]}
    s = {"items": [{"price": 1, "sku": "a"}, {"price": 9, "sku": "b"}, {"price": 8, "sku": "x"}]}
    assert sorted(set(jdiff(p, s))) == [
        ("body.items[].price", Kind.VALUE),
        ("body.items[].sku", Kind.VALUE),
    ]


def test_id_keyed_objects_fold():
    p = {"users": {"123": {"n": 1}, "456": {"n": 2}}}
    s = {"users": {"123": {"n": 1}, "456": {"n": 3}, "789": {"n": 4}}}
    assert jdiff(p, s) == [("body.users.{id}.n", Kind.VALUE), ("body.users.{id}", Kind.EXTRA)]
    uuid_keys = {"550e8400-e29b-41d4-a716-446655440000": 1}
    assert jdiff({"m": uuid_keys}, {"m": {"550e8400-e29b-41d4-a716-446655440000": 2}}) == [
        ("body.m.{id}", Kind.VALUE)
    ]
    # ordinary schema keys are not folded
    assert jdiff({"m": {"name": 1}}, {"m": {"name": 2}}) == [("body.m.name", Kind.VALUE)]


def test_numeric_tolerance():
    assert jdiff({"s": 0.5}, {"s": 0.5000001}, lambda p: (0.0, 1e-3)) == []
    assert jdiff({"s": 0.5}, {"s": 0.6}, lambda p: (0.0, 1e-3)) == [("body.s", Kind.VALUE)]
    assert jdiff({"s": 10}, {"s": 10.04}, lambda p: (0.05, 0.0)) == []
    assert jdiff({"n": 1}, {"n": 1.0}) == []  # same number, other spelling


def R(craft, body=None, **kw):
    return craft.response(body, **kw)


def test_fast_path_equal_bytes_skips_parsing(craft):
    p = R(craft, {"a": 1})
    pair = diff_responses(p, R(craft, {"a": 1}), IGN, exact)
    assert pair.differences == [] and pair.primary_body is None


def test_fast_path_equal_values_other_spelling(craft):
    p = R(craft, raw=b'{"a": 1, "b": [1, 2]}')
    s = R(craft, raw=b'{\n  "b": [1,2],\n  "a": 1\n}')
    pair = diff_responses(p, s, IGN, exact)
    assert pair.differences == [] and pair.primary_body is not None


def test_status_and_headers(craft):
    p = R(
        craft,
        {},
        headers=(
            ("X-Feature", "a"),
            ("Vary", "Accept"),
            ("Vary", "Origin"),
            ("Date", "Mon, 01 Jan 2024 00:00:00 GMT"),
            ("X-Request-Id", "1"),
            ("X-Gone", "1"),
        ),
    )
    s = R(
        craft,
        {},
        status=404,
        headers=(
            ("x-feature", "b"),
            ("VARY", "Origin"),
            ("vary", "Accept"),
            ("Date", "Tue, 02 Jan 2024 00:00:00 GMT"),
            ("X-Request-Id", "2"),
            ("X-New", "1"),
        ),
    )
    got = {(d.path, d.kind) for d in diff_responses(p, s, IGN, exact).differences}
    # header names are case-insensitive, repeated values a set, Date/X-Request-Id ignored
    assert got == {
        ("status", Kind.VALUE),
        ("header.x-feature", Kind.VALUE),
        ("header.x-gone", Kind.MISSING),
        ("header.x-new", Kind.EXTRA),
    }


def test_noisy_header_list_is_overridable(craft):
    p = R(craft, {}, headers=(("ETag", '"1"'),))
    s = R(craft, {}, headers=(("ETag", '"2"'),))
    assert diff_responses(p, s, IGN, exact).differences == []
    got = diff_responses(p, s, IGN - {"etag"}, exact).differences
    assert [(d.path, d.kind) for d in got] == [("header.etag", Kind.VALUE)]


def test_content_decoding_before_comparison(craft):
    body = orjson.dumps({"a": 1, "b": "x" * 100})
    p = R(craft, raw=gzip.compress(body), headers=(("Content-Encoding", "gzip"),))
    s = R(craft, raw=body)
    diffs = diff_responses(p, s, IGN, exact).differences
    # the bodies are equal after decoding; only the Content-Encoding header differs
    assert [(d.path, d.kind) for d in diffs] == [("header.content-encoding", Kind.MISSING)]


def test_html_normalised(craft):
    p = R(
        craft,
        raw=b"<html>\n  <body>\n    <p>Hello   world</p><!-- build 1 -->\n  </body>\n</html>",
        content_type="text/html; charset=utf-8",
    )
    s = R(
        craft,
        raw=b"<html><body><p>Hello world</p><!-- build 2 --></body></html>",
        content_type="text/html; charset=utf-8",
    )
    assert diff_responses(p, s, IGN, exact).differences == []
    s2 = R(
        craft,
        raw=b"<html><body><p>Hello there</p></body></html>",
        content_type="text/html; charset=utf-8",
    )
    d = diff_responses(p, s2, IGN, exact).differences
    assert [(x.path, x.kind) for x in d] == [("body", Kind.VALUE)]
    assert "world" in d[0].primary and "there" in d[0].shadow


def test_xml_and_text(craft):
    p = R(craft, raw=b"<a>\n <b>1</b>\n</a>", content_type="application/xml")
    s = R(craft, raw=b"<a><b>1</b></a>", content_type="application/xml")
    assert diff_responses(p, s, IGN, exact).differences == []
    assert normalise_text("a \r\n b\n", False) == "a b"
    t1 = R(craft, raw=b"line one\r\nline two\r\n", content_type="text/plain")
    t2 = R(craft, raw=b"line one\nline 2\n", content_type="text/plain")
    assert [(d.path, d.kind) for d in diff_responses(t1, t2, IGN, exact).differences] == [
        ("body", Kind.VALUE)
    ]


def test_binary_by_length_and_hash(craft):
    p = R(craft, raw=b"\x00\xff" * 10, content_type="application/octet-stream")
    s = R(craft, raw=b"\x00\xfe" * 10, content_type="application/octet-stream")
    d = diff_responses(p, s, IGN, exact).differences
    assert [(x.path, x.kind) for x in d] == [("body", Kind.VALUE)] and len(d[0].primary) == 16
    s2 = R(craft, raw=b"\x00\xff" * 11, content_type="application/octet-stream")
    d = diff_responses(p, s2, IGN, exact).differences
    assert [(x.path, x.kind, x.primary, x.shadow) for x in d] == [("body", Kind.SIZE, 20, 22)]


def test_body_type_change(craft):
    p = R(craft, {"ok": True})
    s = R(craft, raw=b"<html><body>502 Bad Gateway</body></html>", content_type="text/html")
    d = diff_responses(p, s, IGN, exact).differences
    assert ("body", Kind.TYPE, "json", "html") in [(x.path, x.kind, x.primary, x.shadow) for x in d]
    e = diff_responses(p, R(craft, raw=b"", content_type=None), IGN, exact).differences
    assert ("body", Kind.TYPE) in [(x.path, x.kind) for x in e]


def test_json_sniffed_without_content_type(craft):
    p = R(craft, raw=b'{"a": 1}', content_type=None)
    s = R(craft, raw=b'{"a": 2}', content_type=None)
    assert [(d.path, d.kind) for d in diff_responses(p, s, IGN, exact).differences] == [
        ("body.a", Kind.VALUE)
    ]


def test_text_differing_only_in_volatile_tokens(craft):
    html = "<html><body><p>Generated {} for request {}</p><p>{}</p></body></html>"

    def page(stamp: str, uuid_tail: str, word: str):
        raw = html.format(stamp, f"550e8400-e29b-41d4-a716-44665544000{uuid_tail}", word)
        return R(craft, raw=raw.encode(), content_type="text/html")

    p = page("2025-11-26T10:00:00Z", "0", "hi")
    s = page("2025-11-26T10:00:05Z", "1", "hi")
    d = diff_responses(p, s, IGN, exact).differences
    assert [(x.path, x.kind, x.primary, x.shadow) for x in d] == [
        ("body~token", Kind.VALUE, "2025-11-26T10:00:00Z", "2025-11-26T10:00:05Z")
    ]
    s2 = page("2025-11-26T10:00:05Z", "1", "ho")
    assert [x.path for x in diff_responses(p, s2, IGN, exact).differences] == ["body"]


def test_html_pages_with_timestamps_are_noise(craft):
    def make(i):
        page = "<html><body><h1>Catalogue</h1><footer>rendered {}</footer></body></html>"
        p = craft.response(
            raw=page.format(craft.iso(craft.T0 + i)).encode(), content_type="text/html"
        )
        s = craft.response(
            raw=page.format(craft.iso(craft.T0 + i + 0.3)).encode(), content_type="text/html"
        )
        return craft.exchange(i, p), craft.result(i, s)

    rep = craft.run(50, make)
    assert rep.verdict.result == "pass"
    assert [n.path for n in rep.noise] == ["body~token"]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values, json_values)
def test_json_diff_properties(p, s):
    same: list = []
    diff_json(p, p, "body", same, exact)
    assert same == []
    out: list = []
    diff_json(p, s, "body", out, exact)
    assert all(d.path.startswith("body") and isinstance(d.kind, Kind) for d in out)
    if orjson.dumps(p, option=orjson.OPT_SORT_KEYS) != orjson.dumps(s, option=orjson.OPT_SORT_KEYS):
        # different values: at least one difference, unless only number spelling (1 vs 1.0) differs
        assert out or p == s


def test_absurdly_deep_json_is_compared_as_a_whole(craft):
    deep_p = b"[" * 900 + b"1" + b"]" * 900
    deep_s = b"[" * 900 + b"2" + b"]" * 900
    d = diff_responses(R(craft, raw=deep_p), R(craft, raw=deep_s), IGN, exact).differences
    assert [x.path for x in d] in (["body"], ["body" + "[]" * 900])


def test_large_maps_fold():
    p = {"m": {f"word{i}": i for i in range(100)}}
    s = {"m": {f"word{i}": i + (i == 5) for i in range(100)}}
    assert jdiff(p, s) == [("body.m.{id}", Kind.VALUE)]


CTS = [
    None,
    "application/json",
    "text/html; charset=latin-1",
    "text/plain; charset=nope",
    "application/xml",
    "application/octet-stream",
    "image/png",
]
CES = [None, "gzip", "deflate", "br", "gzip, br", "identity", "compress"]


# craft is a stateless class: sharing it across examples is safe
@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.binary(max_size=200),
    st.binary(max_size=200),
    st.sampled_from(CTS),
    st.sampled_from(CTS),
    st.sampled_from(CES),
    st.sampled_from(CES),
)
def test_any_bytes_any_headers_never_raise(craft, pb, sb, pct, sct, pce, sce):
    ph = (("Content-Encoding", pce),) if pce else ()
    sh = (("Content-Encoding", sce),) if sce else ()
    p = R(craft, raw=pb, content_type=pct, headers=ph)
    s = R(craft, raw=sb, content_type=sct, headers=sh)
    diffs = diff_responses(p, s, IGN, exact).differences
    if pb == sb and pct == sct and pce == sce:
        assert diffs == []
    assert diff_responses(p, p, IGN, exact).differences == []


def test_wide_diffs_are_cut_at_the_pair_budget():
    """Issue 12 item 8: 300k-element arrays that differ everywhere cost a bounded walk, and the
    pair says it was cut."""
    from shadowtap.compare.diff import CUT_PATH, Budget

    p = list(range(300_000))
    s = [x + 1 for x in p]
    out = []
    budget = Budget(walk=1000, differences=50)
    diff_json({"a": p}, {"a": s}, "body", out, exact, budget)
    assert len(out) == 50 and budget.cut and all(d.path == "body.a[]" for d in out)
    # through diff_responses: the cut is a difference of its own
    from shadowtap.records import Response

    def resp(v):
        body = orjson.dumps(v)
        return Response(
            0.0,
            0.0,
            "HTTP/1.1",
            (("Content-Type", "application/json"),),
            body,
            len(body),
            status=200,
        )

    pair = diff_responses(
        resp({"a": p}), resp({"a": s}), IGN, exact, max_walk=5000, max_differences=100
    )
    assert pair.cut
    assert [d.path for d in pair.differences].count("body.a[]") == 100
    assert pair.differences[-1].path == CUT_PATH and pair.differences[-1].kind is Kind.SIZE
    # A budget large enough walks all: no cut
    pair = diff_responses(resp({"a": [1, 2, 3]}), resp({"a": [1, 2, 4]}), IGN, exact)
    assert not pair.cut and [d.path for d in pair.differences] == ["body.a[]"]
    # An affordable order check still finds a reordering; an unaffordable one walks elementwise
    assert jdiff({"l": [1, 2, 3]}, {"l": [3, 2, 1]}) == [("body.l", Kind.ORDER)]
    out = []
    diff_json({"l": [1, 2, 3]}, {"l": [3, 2, 1]}, "body", out, exact, Budget(walk=6))
    assert [(d.path, d.kind) for d in out] == [("body.l[]", Kind.VALUE)] * 2


def test_text_difference_snippets_find_the_first_difference():
    from shadowtap.compare.diff import _snippets

    a = "x" * 1_000_000 + "A" + "tail"
    b = "x" * 1_000_000 + "B" + "tail"
    pa, pb = _snippets(a, b)
    assert pa.endswith("Atail") and pb.endswith("Btail") and len(pa) == 80 + 5
    assert _snippets("abc", "abc") == ("abc", "abc")
    assert _snippets("", "x") == ("", "x")


def test_diff_bodies_is_diff_responses_for_the_same_head(craft):
    """diff_bodies (the lake's export: no records) finds what diff_responses finds when both
    responses have the same status and headers: JSON, tolerance, text, markup, binary, a change
    of body type, gzip, and equal bytes."""
    gz = (("Content-Encoding", "gzip"),)
    cases = [
        (R(craft, {"a": 1, "b": [1, 2]}), R(craft, {"a": 2, "b": [2, 1], "c": None})),
        (R(craft, {"s": 0.5}), R(craft, {"s": 0.5000001})),
        (
            R(craft, raw=b"hello  world", content_type="text/plain"),
            R(craft, raw=b"hello there", content_type="text/plain"),
        ),
        (
            R(craft, raw=b"<p>a</p>", content_type="text/html"),
            R(craft, raw=b"<p> b </p>", content_type="text/html"),
        ),
        (
            R(craft, raw=b"\x00\xff", content_type=None),
            R(craft, raw=b"\x00\xfe\x01", content_type=None),
        ),
        (R(craft, {"a": 1}), R(craft, raw=b"not json")),
        (
            R(craft, raw=gzip.compress(b'{"a": 1}'), headers=gz),
            R(craft, raw=gzip.compress(b'{"a": 2}'), headers=gz),
        ),
        (R(craft, {"a": 1}), R(craft, {"a": 1})),
    ]
    for p, s in cases:
        assert p.status == s.status and p.headers == s.headers
        ct, ce = p.header("content-type"), p.header("content-encoding")
        for tol in (exact, lambda path: (0.0, 1e-3)):
            want = diff_responses(p, s, IGN, tol).differences
            assert diff_bodies(p.body, s.body, ct, ce, tol) == want, (p.body, s.body)
