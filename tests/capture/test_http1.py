"""shadowtap/wire/http1/: HTTP/1.x parsing and pairing on crafted byte streams (the reassembler's
output)."""

from __future__ import annotations

import gzip
import zlib

import brotli
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowtap.wire.content import decoded_length
from shadowtap.wire.http1 import Conversation, Event
from shadowtap.wire.http1 import _headers as http1


def play(*steps, midstream=False, max_body=1 << 20, split=None):
    """Run steps against a Conversation: ("c", bytes) / ("s", bytes) data, ("cgap", n) / ("sgap", n)
    gaps, "cend" / "send" ends, "close". Returns the finished (non-void) transactions in finishing
    order and the conversation. ``split``: feed data in pieces of this size."""
    conv = Conversation(midstream=midstream, max_body=max_body)
    done = []
    ts = 1.0
    for step in steps:
        ts += 0.001
        if step == "close":
            conv.close(ts)
        elif step in ("cend", "send"):
            conv.end(step == "cend", ts)
        elif step[0] in ("cgap", "sgap"):
            conv.gap(step[0] == "cgap", ts, step[1])
        else:
            data = step[1]
            pieces = [data[i : i + split] for i in range(0, len(data), split)] if split else [data]
            for p in pieces:
                conv.data(step[0] == "c", ts, p)
        for ev, txn in conv.events:
            if ev == Event.DONE and not txn.void:
                done.append(txn)
        conv.events.clear()
    conv.close(ts + 1)
    for ev, txn in conv.events:
        if ev == Event.DONE and not txn.void:
            done.append(txn)
    return done, conv


def summary(txns):
    return [
        (
            t.request.method if t.request else None,
            t.request.target if t.request else None,
            t.response.status if t.response else None,
            t.response.body if t.response else None,
        )
        for t in txns
    ]


def req(target="/", method="GET", extra=b"", version=b"HTTP/1.1"):
    return (
        method.encode()
        + b" "
        + target.encode()
        + b" "
        + version
        + b"\r\nHost: h\r\n"
        + extra
        + b"\r\n"
    )


def resp(body=b"ok", status=200, extra=b""):
    return b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n%s\r\n%s" % (status, len(body), extra, body)


def test_keep_alive_content_length():
    done, _ = play(("c", req("/1")), ("s", resp(b"one")), ("c", req("/2")), ("s", resp(b"two")))
    assert summary(done) == [("GET", "/1", 200, b"one"), ("GET", "/2", 200, b"two")]
    assert [t.index for t in done] == [0, 1]
    r = done[0].request
    assert r.headers == (("Host", "h"),) and r.version == "HTTP/1.1"
    assert done[0].response.reason == "X"


def test_any_segmentation_gives_the_same_result():
    stream_c = req("/1") + req("/2", "POST", b"Content-Length: 3\r\n") + b"abc"
    stream_s = resp(b"one") + resp(b"two")
    want = [("GET", "/1", 200, b"one"), ("POST", "/2", 200, b"two")]
    for split in (1, 2, 3, 7, 100):
        done, _ = play(("c", stream_c), ("s", stream_s), split=split)
        assert summary(done) == want, split


def test_pipelining():
    done, _ = play(
        ("c", req("/1") + req("/2") + req("/3")), ("s", resp(b"a") + resp(b"b") + resp(b"c"))
    )
    assert summary(done) == [
        ("GET", "/1", 200, b"a"),
        ("GET", "/2", 200, b"b"),
        ("GET", "/3", 200, b"c"),
    ]


def test_chunked_with_extensions_and_trailers():
    body = b'4;ext=1\r\nWiki\r\n5 ; name="v"\r\npedia\r\n0\r\nX-Trailer: t\r\n\r\n'
    done, _ = play(
        ("c", req("/")),
        ("s", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body),
        ("c", req("/next")),
        ("s", resp(b"n")),
    )
    r = done[0].response
    assert r.body == b"Wikipedia" and r.body_len == 9
    assert ("X-Trailer", "t") in r.headers  # trailers follow the head's headers
    assert summary(done)[1] == ("GET", "/next", 200, b"n")


def test_chunked_request_body():
    done, _ = play(
        ("c", req("/up", "POST", b"Transfer-Encoding: chunked\r\n") + b"3\r\nabc\r\n0\r\n\r\n"),
        ("s", resp()),
    )
    assert done[0].request.body == b"abc" and done[0].request.body_len == 3


def test_close_delimited_response():
    done, _ = play(
        ("c", req("/", version=b"HTTP/1.0")),
        ("s", b"HTTP/1.0 200 OK\r\n\r\nuntil "),
        ("s", b"close"),
        "send",
    )
    assert done[0].response.body == b"until close"
    assert done[0].anomalies == []


def test_responses_without_body():
    done, _ = play(
        ("c", req("/", "HEAD")),
        ("s", b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"),
        ("c", req("/nc")),
        ("s", b"HTTP/1.1 204 No Content\r\n\r\n"),
        ("c", req("/nm")),
        ("s", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n"),
        ("c", req("/after")),
        ("s", resp(b"last")),
    )
    assert summary(done) == [
        ("HEAD", "/", 200, b""),
        ("GET", "/nc", 204, b""),
        ("GET", "/nm", 304, b""),
        ("GET", "/after", 200, b"last"),
    ]


def test_expect_100_continue_interim_is_not_the_answer():
    done, conv = play(
        ("c", req("/up", "POST", b"Expect: 100-continue\r\nContent-Length: 4\r\n")),
        ("s", b"HTTP/1.1 100 Continue\r\n\r\n"),
        ("c", b"data"),
        ("s", resp(b"stored", 201)),
    )
    assert summary(done) == [("POST", "/up", 201, b"stored")]
    assert done[0].request.body == b"data"
    assert conv.interim == 1


def test_upgrade_records_the_exchange_and_stops_parsing():
    done, _ = play(
        ("c", req("/ws", extra=b"Upgrade: websocket\r\nConnection: Upgrade\r\n")),
        ("s", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello"),
        ("c", b"\x81\x85garbage not http"),
    )
    assert summary(done) == [("GET", "/ws", 101, b"")]
    assert "tunnel" in done[0].anomalies


def test_upgrade_refused_goes_on_parsing():
    done, _ = play(
        ("c", req("/ws", extra=b"Upgrade: h2c\r\n") + req("/2")),
        ("s", resp(b"no upgrade")),
        ("s", resp(b"second")),
    )
    assert summary(done) == [("GET", "/ws", 200, b"no upgrade"), ("GET", "/2", 200, b"second")]


def test_connect_tunnel():
    done, _ = play(
        ("c", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"),
        ("s", b"HTTP/1.1 200 Connection established\r\n\r\n"),
        ("c", b"\x16\x03\x01 tls bytes"),
        ("s", b"\x16\x03\x03 more"),
    )
    assert summary(done) == [("CONNECT", "example.com:443", 200, b"")]
    assert "tunnel" in done[0].anomalies


def test_obs_fold_odd_case_no_host():
    done, _ = play(
        ("c", b"gEt /x HTTP/1.1\r\nX-Long: a\r\n  b\r\ncOnTeNt-LeNgTh: 2\r\n\r\nhi"),
        ("s", b"HTTP/1.1 200 OK\r\ncontent-LENGTH: 1\r\n\r\n!"),
    )
    r = done[0].request
    assert r.method == "gEt" and r.body == b"hi"
    assert r.headers == (("X-Long", "a b"), ("cOnTeNt-LeNgTh", "2"))
    assert r.header("host") is None
    assert "obs_fold" in done[0].anomalies
    assert done[0].response.body == b"!"


def test_http09_simple_request():
    done, _ = play(("c", b"GET /old\r\n"), ("s", b"<html>raw body</html>"), "send")
    r, p = done[0].request, done[0].response
    assert (r.method, r.target, r.version) == ("GET", "/old", "HTTP/0.9")
    assert (p.status, p.version, p.body) == (0, "HTTP/0.9", b"<html>raw body</html>")
    assert "http09" in done[0].anomalies


def test_gap_inside_a_body_is_counted_and_parsing_goes_on():
    body = b"0123456789"
    r = resp(body)
    head = r[: -len(body)]
    done, _ = play(
        ("c", req("/1")),
        ("s", head + body[:3]),
        ("sgap", 4),
        ("s", body[7:]),
        ("c", req("/2")),
        ("s", resp(b"z")),
    )
    p = done[0].response
    assert p.body_len == 10 and p.body == b"012789" and p.body_truncated
    assert "gap" in done[0].anomalies
    assert summary(done)[1] == ("GET", "/2", 200, b"z")


def test_gap_in_a_head_resynchronises_without_gluing():
    done, _ = play(
        ("c", req("/1")),
        ("s", b"HTTP/1.1 200 OK\r\nContent-Le"),
        ("sgap", 30),
        (
            "s",
            b"ngth: 3\r\n\r\nabc",
        ),  # the rest of the lost message: must not be taken as a message
        ("c", req("/2")),
        ("s", resp(b"two")),
    )
    assert summary(done) == [("GET", "/1", None, None), ("GET", "/2", 200, b"two")]
    assert "gap" in done[0].anomalies  # its answer was lost in the gap
    assert "resync" in done[1].anomalies  # found by resynchronising: the pairing is inferred


def test_request_lost_in_a_gap_is_not_paired_with_the_wrong_response():
    done, _ = play(
        ("c", req("/1")),
        ("s", resp(b"one")),
        ("cgap", len(req("/2"))),
        ("s", resp(b"two")),  # answers the lost request
        ("c", req("/3")),
        ("s", resp(b"three")),
    )
    assert summary(done) == [
        ("GET", "/1", 200, b"one"),
        (None, None, 200, b"two"),
        ("GET", "/3", 200, b"three"),
    ]


def test_midstream_join_syncs_at_the_next_request():
    done, _ = play(
        ("c", b"tail of a body\r\n" + req("/next")),
        ("s", b"rest of a response body"),
        ("s", resp(b"ok")),
        midstream=True,
    )
    assert summary(done) == [("GET", "/next", 200, b"ok")]
    assert "midstream" in done[0].anomalies


def test_max_body_cuts_but_counts():
    done, _ = play(("c", req("/")), ("s", resp(b"x" * 100)), max_body=10)
    p = done[0].response
    assert p.body == b"x" * 10 and p.body_len == 100 and p.body_truncated and p.decoded_len is None


def test_truncated_response_at_close():
    done, _ = play(
        ("c", req("/")), ("s", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"), "send"
    )
    assert done[0].response.body == b"abc" and "truncated" in done[0].anomalies


def test_unanswered_request_and_response_without_request():
    done, _ = play(("c", req("/lonely")), "cend", "send")
    assert summary(done) == [("GET", "/lonely", None, None)]
    done, _ = play(("s", resp(b"orphan")), midstream=True)
    assert summary(done) == [(None, None, 200, b"orphan")]


def test_not_http_is_an_anomaly_not_a_crash():
    done, conv = play(
        ("c", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"), ("s", b"\x16\x03\x03\x00\x5a\x02")
    )
    assert done == []
    assert conv.anomalies.count("not_http") == 1


def test_decoded_len():
    text = b"hello world " * 100
    assert decoded_length(gzip.compress(text), "gzip") == len(text)
    assert decoded_length(zlib.compress(text), "deflate") == len(text)
    raw = zlib.compressobj(wbits=-15)
    assert decoded_length(raw.compress(text) + raw.flush(), "deflate") == len(text)  # raw deflate
    assert decoded_length(brotli.compress(text), "br") == len(text)
    assert decoded_length(gzip.compress(gzip.compress(text)), "gzip, gzip") == len(text)
    assert decoded_length(text, "identity") == len(text)
    assert decoded_length(b"not gzip", "gzip") is None
    assert decoded_length(text, "zstd") is None


def test_decoded_len_on_the_wire():
    body = gzip.compress(b"a" * 1000)
    done, _ = play(("c", req("/")), ("s", resp(body, extra=b"Content-Encoding: gzip\r\n")))
    assert done[0].response.body_len == len(body) and done[0].response.decoded_len == 1000


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["c", "s", "cgap", "sgap"]), st.binary(max_size=60)), max_size=12
    ),
    st.booleans(),
)
def test_random_input_never_raises(steps, midstream):
    converted = [(k, len(b) + 1) if k.endswith("gap") else (k, b) for k, b in steps]
    play(*converted, midstream=midstream)


HTTPISH = st.sampled_from(
    [
        b"GET / HTTP/1.1\r\n",
        b"HTTP/1.1 200 OK\r\n",
        b"Content-Length: 5\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"\r\n",
        b"5\r\nhello\r\n",
        b"0\r\n\r\n",
        b"HEAD /x HTTP/1.0\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"Upgrade: x\r\n",
        b"CONNECT a:1 HTTP/1.1\r\n",
        b"HTTP/1.1 101 S\r\n",
        b" fold\r\n",
        b"\n",
        b"GET /0.9\r\n",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["c", "s"]), st.lists(HTTPISH, max_size=8).map(b"".join)),
        max_size=10,
    )
)
def test_random_http_fragments_never_raise(steps):
    play(*steps)


def test_http10_keep_alive():
    done, _ = play(
        ("c", req("/a", extra=b"Connection: keep-alive\r\n", version=b"HTTP/1.0")),
        ("s", b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\na"),
        ("c", req("/b", extra=b"Connection: keep-alive\r\n", version=b"HTTP/1.0")),
        ("s", b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nb"),
    )
    assert summary(done) == [("GET", "/a", 200, b"a"), ("GET", "/b", 200, b"b")]
    assert {t.request.version for t in done} == {"HTTP/1.0"}


def test_header_line_memo_is_bounded_and_gives_what_parsing_gives():
    """Header lines are remembered (traffic repeats them); the memo stays within its bounds and a
    remembered line reads as a fresh one."""
    conv = Conversation()
    long_value = "v" * (http1._LINE_MEMO_WIDTH + 10)
    for i in range(http1._LINE_MEMO_SIZE + 50):
        conv.data(
            True,
            float(i),
            b"GET /%d HTTP/1.1\r\nHost: h\r\nX-N:  %d \r\nX-Long: %s\r\n\r\n"
            % (i, i, long_value.encode()),
        )
        conv.data(False, float(i), b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert len(http1._LINE_MEMO) <= http1._LINE_MEMO_SIZE
    assert not any(len(line) > http1._LINE_MEMO_WIDTH for line in http1._LINE_MEMO)
    reqs = [t.request for ev, t in conv.events if ev == Event.REQUEST]
    assert len(reqs) == http1._LINE_MEMO_SIZE + 50
    assert all(
        r.headers == (("Host", "h"), ("X-N", str(i)), ("X-Long", long_value))
        for i, r in enumerate(reqs)
    )


def test_content_length_of_superscript_digits_is_bad_not_a_crash():
    """Latin-1 has digits ``str.isdigit`` takes and ``int`` refuses (``²``): a Content-Length of
    them is ``bad_content_length`` (the message read without a body), on the one-segment lane and
    the state machine alike."""
    for split in (None, 7):
        done, _ = play(
            ("c", b"POST /a HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n"),
            ("s", b"HTTP/1.1 200 OK\r\nContent-Length: 1,\xb9\r\n\r\nok"),
            split=split,
        )
        assert summary(done) == [("POST", "/a", 200, b"ok")]
        assert "bad_content_length" in done[0].anomalies


HEADER_LINES = st.sampled_from(
    [
        "Host: h",
        "Content-Length: 5",
        "content-length: 12",
        "Content-Length: \xb2",
        "Content-Length: 1, 1",
        "X-Note: content-length",
        "Transfer-Encoding: chunked",
        "Content-Encoding: gzip",
        "Upgrade: h2c",
        "Authorization: Bearer x",
        "X-Fold: a",
        " folded",
        "Bad Line",
        "X-Sp : v",
        "",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(HEADER_LINES, min_size=1, max_size=6), st.sampled_from([(), ("auth", "fold")]))
def test_header_block_memo_gives_what_reading_gives(lines, watch):
    """A remembered block (``block_memo``) reads as a fresh one: the plain fields, the
    lower-cased text, the framing facts the one-segment lanes test and the watched names."""
    text = "\r\n".join(lines)
    memo = http1.block_memo(watch)
    memo.clear()
    http1._BLOCK_SEEN.clear()
    fresh = memo.get(text) or http1._read_block(text, watch, memo)
    again = memo.get(text) or http1._read_block(text, watch, memo)  # the second time: kept
    assert (text in memo) == (fresh is not None)
    assert memo.get(text) == again == fresh
    plain = http1._plain_headers(text)
    if plain is None:
        assert fresh is None
        return
    lowered = text.lower()
    cls = [v for n, v in plain if n.lower() == "content-length"]
    if "content-length" not in lowered:
        length = -1
    elif len(cls) == 1 and cls[0] in ("5", "12"):
        length = int(cls[0])
    else:
        length = -2
    assert fresh == (
        plain,
        lowered,
        "transfer-encoding" in lowered or "content-encoding" in lowered,
        "upgrade" in lowered,
        length,
        any(name in lowered for name in watch),
    )


def test_header_block_memo_is_bounded_and_kept_per_watched_names():
    """Blocks are remembered the second time they are met, up to the memo's bounds; blocks met
    once leave their hash only, within its own bound. A memo serves one set of watched names: a
    block remembered for one set never answers for another."""
    watch = ("x-n",)
    conv = Conversation(watch=watch)
    memo = http1.block_memo(watch)
    assert conv.blocks is memo
    wide = "v" * http1._BLOCK_MEMO_WIDTH
    n = http1._BLOCK_MEMO_SIZE + 50
    order = list(range(n)) * 2 + list(range(n, n + http1._BLOCK_SEEN_SIZE + 50))
    for i in order:
        head = b"GET / HTTP/1.1\r\nHost: h\r\nX-N: %d\r\nX-W: %s\r\n\r\n"
        conv.data(True, float(i), head % (i, wide.encode() if i % 2 else b""))
        conv.data(False, float(i), b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-N: %d\r\n\r\n" % i)
    assert 0 < len(memo) <= http1._BLOCK_MEMO_SIZE
    assert 0 < len(http1._BLOCK_SEEN) <= http1._BLOCK_SEEN_SIZE
    assert not any(len(block) > http1._BLOCK_MEMO_WIDTH for block in memo)
    txns = [t for ev, t in conv.events if ev == Event.DONE]
    assert [dict(t.request.headers)["X-N"] for t in txns] == [str(i) for i in order]
    assert all(t.secret for t in txns)
    # The same blocks, another set of names: read again, not secret.
    other = Conversation()
    assert other.blocks is not memo
    other.data(True, 1.0, b"GET / HTTP/1.1\r\nHost: h\r\nX-N: 0\r\nX-W: \r\n\r\n")
    other.data(False, 1.0, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-N: 0\r\n\r\n")
    assert [t.secret for ev, t in other.events if ev == Event.DONE] == [False]
