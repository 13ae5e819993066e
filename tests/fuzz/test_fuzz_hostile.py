"""Fuzz targets (hypothesis) for the parsers and checkers of issue 12's hostile engineer: record
decoding, the send check, the replay client's answer parser under its caps, redaction, compare's
config values, the capture format sniffer and the bounded diff. Each runs a fixed budget
(``FUZZ_EXAMPLES``, default 200 examples a target; the test script and CI use the default), with
no deadline (the shared machine's timing is noisy); a failure prints the minimal input.

Properties, not just "does not crash": decoding raises only ValueError/TypeError/KeyError (what the
JSONL reader turns into a warning with the line number); a request that passes the send check
has exactly its header lines on the wire; the client never holds more than its caps and always
ends a request with a Result; redaction is idempotent and never leaves a secret value; the diff
never visits more than its budget.
"""

from __future__ import annotations

import asyncio
import os

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shadowtap.capture.pcapfile import sniff_format
from shadowtap.compare.config import CompareConfig, _build
from shadowtap.compare.diff import Budget, diff_json
from shadowtap.errors import InputError
from shadowtap.records import Exchange, Request, Result, request_line_problem
from shadowtap.redact import Redactor, SecretRules

BUDGET = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)


def _exchange_dict() -> dict:
    req = Request(1.0, 1.0, "HTTP/1.1", (("Host", "a"),), method="GET", target="/")
    return Exchange("x", "10.0.0.1:1", "10.0.0.2:80", 0, req, None).to_json()


KEYS = (
    "ts",
    "end_ts",
    "version",
    "headers",
    "body",
    "body_encoding",
    "body_len",
    "decoded_len",
    "method",
    "target",
)


@BUDGET
@given(st.dictionaries(st.sampled_from(KEYS), json_values, max_size=4))
def test_record_decoding_raises_only_what_the_reader_reports(changes):
    d = _exchange_dict()
    d["request"].update(changes)
    try:
        ex = Exchange.from_json(d)
    except (ValueError, TypeError, KeyError):
        return
    # what decodes is well-formed: finite times, counts
    assert ex.request is not None and ex.request.body_len >= len(ex.request.body)
    assert ex.request.ts == ex.request.ts and abs(ex.request.ts) != float("inf")


@BUDGET
@given(
    st.dictionaries(
        st.sampled_from(("scheduled", "sent", "ttfb_ms", "total_ms", "copy")),
        json_values,
        max_size=3,
    )
)
def test_result_decoding(changes):
    d = {
        "schema": 1,
        "exchange_id": "x",
        "target": "http://a/",
        "scheduled": 1.0,
        "sent": 1.0,
        "response": None,
        "error": None,
        **changes,
    }
    try:
        Result.from_json(d)
    except (ValueError, TypeError, KeyError):
        pass


token_chars = st.characters(min_codepoint=0, max_codepoint=0x2FF)


@BUDGET
@given(
    st.text(token_chars, max_size=12),
    st.text(token_chars, max_size=30),
    st.lists(
        st.tuples(st.text(token_chars, max_size=10), st.text(token_chars, max_size=20)), max_size=4
    ),
)
def test_a_sendable_request_is_one_request_on_the_wire(method, target, headers):
    if request_line_problem(method, target, tuple(headers)) is not None:
        return
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n"
    wire = head.encode("latin-1", "replace")
    lines = wire.split(b"\r\n")
    assert len(lines) == len(headers) + 3  # request line, the headers, the blank line, ""
    assert b"\n" not in wire.replace(b"\r\n", b"") and b"\r" not in wire.replace(b"\r\n", b"")
    assert lines[0].count(b" ") == 2  # method, target, version: nothing else splits the line


def _run_client(chunks: list[bytes]):
    """Feed an answer's bytes, piece by piece, to one client connection with a job in flight;
    the Result it ends with (or None if it still waits)."""
    from shadowtap.replay.client import ResponseLimits, Sender, _Conn, _Job
    from shadowtap.replay.policy import Policy, Prepared, Target

    class _Transport:
        def write(self, data: bytes) -> None:
            pass

        def abort(self) -> None:
            pass

    async def go():
        target = Target.parse("http://127.0.0.1:9")
        sender = Sender(
            target,
            limits=ResponseLimits(max_head=4096, max_headers=20, max_reason=64, max_interim=3),
        )
        sender.loop = asyncio.get_running_loop()
        ex = _exchange_dict()
        prepared = Policy(target).decide(Exchange.from_json(ex))
        assert isinstance(prepared, Prepared)
        got = []
        conn = _Conn(sender)
        conn.connection_made(_Transport())  # type: ignore[arg-type]
        job = _Job(prepared, 0.0, 0, got.append, None)
        sender._in_flight += 1
        conn.start(job)
        for c in chunks:
            if conn.job is None:
                break
            conn.data_received(c)
            assert len(job.headers) <= 20 and len(job.reason) <= 64
            assert job.head_bytes <= 4096 + len(c) or job.in_final
        if conn.job is not None:
            conn.connection_lost(None)
        return got

    return asyncio.run(go())


answer_pieces = st.lists(
    st.one_of(
        st.sampled_from(
            [
                b"HTTP/1.1 200 OK\r\n",
                b"HTTP/1.1 100 Continue\r\n\r\n",
                b"X-A: b\r\n",
                b"Content-Length: 2\r\n",
                b"\r\n",
                b"ok",
                b"Transfer-Encoding: chunked\r\n",
                b"2\r\nab\r\n0\r\n\r\n",
                b"HTTP/1.1 200 " + b"R" * 100 + b"\r\n",
            ]
        ),
        st.binary(max_size=300),
    ),
    max_size=40,
)


@BUDGET
@given(answer_pieces)
def test_the_client_ends_every_answer_with_a_result_within_its_caps(pieces):
    got = _run_client(pieces)
    assert len(got) == 1
    r = got[0]
    assert (r.response is None) != (r.error is None)
    if r.response is not None:
        assert len(r.response.headers) <= 20 and len(r.response.reason) <= 64


secretish = st.sampled_from(
    [
        "password",
        "api_key",
        "token",
        "completion_tokens",
        "user",
        "apiKey",
        "x",
        "session_id",
        "max_tokens",
    ]
)


@BUDGET
@given(
    st.dictionaries(
        secretish, st.one_of(st.text(max_size=12), st.integers(-(2**53), 2**53)), max_size=5
    ),
    st.lists(
        st.tuples(
            secretish, st.text(st.sampled_from("abcXYZ0123456789-_.~!$*+,:@/%"), max_size=10)
        ),
        max_size=4,
    ),
)
def test_redaction_is_idempotent_and_leaves_no_secret(body, query):
    red = Redactor(b"k" * 32)
    rules = SecretRules()
    raw = orjson.dumps(body)
    target = "/p?" + "&".join(f"{n}={v}" for n, v in query)
    req = Request(
        0.0,
        0.0,
        "HTTP/1.1",
        (("Content-Type", "application/json"), ("X-Api-Key", "k")),
        raw,
        len(raw),
        method="POST",
        target=target,
    )
    once = red.message(req)
    assert red.message(once) == once  # idempotent
    parsed = orjson.loads(once.body)
    for k, v in parsed.items():
        if rules.is_secret_name(k) and isinstance(body[k], str) and body[k]:
            assert v.startswith("redacted:")
        else:
            assert v == body[k]
    for n, v in query:
        if v and rules.is_secret_name(n):
            assert f"{n}={v}&" not in once.target + "&" or v.startswith("redacted:")
    assert dict(once.headers)["X-Api-Key"].startswith("redacted:")


config_sections = st.sampled_from(["verdict", "limits", "noise", "latency", "content", "model"])
config_keys = st.sampled_from(
    [
        "pass_score",
        "marginal_score",
        "max_fields",
        "max_walk",
        "volatile_share",
        "min_ms",
        "max_rate",
        "ks_alpha",
        "latency_sample",
        "weights",
        "x",
    ]
)


@BUDGET
@given(
    st.dictionaries(
        config_sections, st.dictionaries(config_keys, json_values, max_size=3), max_size=3
    )
)
def test_config_values_are_either_valid_or_an_input_error(data):
    try:
        cfg = _build(CompareConfig, data, "fuzz.toml", "")
    except InputError:
        return
    assert 0 <= cfg.verdict.marginal_score <= cfg.verdict.pass_score <= 100
    assert cfg.limits.max_fields >= 0 and cfg.limits.max_walk >= 0


@BUDGET
@given(st.binary(max_size=16))
def test_sniff_is_total(head):
    kind = sniff_format(head)
    assert kind in (None, "pcap", "pcapng")
    if kind == "pcapng":
        assert head[:4] == b"\n\r\r\n" and len(head) >= 12


@BUDGET
@given(json_values, json_values, st.integers(1, 50), st.integers(1, 20))
def test_the_diff_stays_within_its_budget(p, s, walk, differences):
    out: list = []
    budget = Budget(walk=walk, differences=differences)
    diff_json(p, s, "body", out, lambda _path: (0.0, 0.0), budget)
    assert budget.walked <= walk and len(out) <= differences
