"""The third-party corpus: real and adversarial HTTP captures from Suricata's verification suite
(tests/data/suricata/, MIT licence, LICENSE.txt there), each with the events Suricata expects
(test.yaml). For every `http` and `fileinfo` expectation, the number of exchanges shadowtap produces
that match it must equal Suricata's count: method, Host, target, status, protocol, headers, body
sizes. Where shadowtap reads a capture differently, DISAGREE says which reading is right and why,
and the test asserts shadowtap's reading instead.

Mapping: http.url = request target; http.hostname = the Host header without its port;
http.http_method, http.protocol = request method and version; http.status = response status;
http.http_user_agent = User-Agent; http.request_headers / http.response_headers = the headers in
wire order. fileinfo.size = a body's length (content-decoded where Suricata decodes: gzip, br);
fileinfo.gaps / state TRUNCATED = the ``gap`` anomaly.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shadowtap.capture.extract import iter_exchanges
from shadowtap.records import Exchange

CORPUS = Path(__file__).resolve().parents[1] / "data" / "suricata"
CASES = sorted(p.name for p in CORPUS.iterdir() if p.is_dir())


def parse_checks(text: str) -> list[dict]:
    """The ``checks:`` filters of a suricata-verify test.yaml (a small, regular YAML subset)."""
    checks: list[dict] = []
    cur: dict | None = None
    in_match = False
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.startswith("- filter:"):
            cur = {"count": None, "match": {}}
            checks.append(cur)
            in_match = False
            continue
        if cur is None or not line.startswith(" "):
            cur = None if not line.startswith(" ") else cur
            continue
        m = re.match(r"count:\s*(\d+)$", s)
        if m and not in_match:
            cur["count"] = int(m.group(1))
        elif s == "match:":
            in_match = True
        elif in_match and (m := re.match(r"([\w.\[\]]+):\s*(.*)$", s)):
            v: object = m.group(2)
            if isinstance(v, str) and len(v) >= 2 and v[0] == v[-1] == '"':
                v = v[1:-1]
            elif isinstance(v, str) and v.isdigit():
                v = int(v)
            elif v in ("true", "false"):
                v = v == "true"
            cur["match"][m.group(1)] = v
    return checks


def hostname(ex: Exchange) -> str | None:
    host = ex.request.header("Host") if ex.request else None
    if host is None:
        return None
    if host.startswith("["):
        return host[: host.index("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def http_matches(ex: Exchange, key: str, want: object) -> bool:
    req, resp = ex.request, ex.response
    if key == "http.url":
        return req is not None and req.target == want
    if key == "http.status":
        return resp is not None and resp.status == want
    if key == "http.hostname":
        return hostname(ex) == want
    if key == "http.http_method":
        return req is not None and req.method == want
    if key == "http.protocol":
        return req is not None and req.version == want
    if key == "http.http_user_agent":
        return req is not None and req.header("User-Agent") == want
    m = re.match(r"http\.(request|response)_headers(?:\[(\d+)\]\.(name|value)|\.__len)$", key)
    if m:
        msg = req if m.group(1) == "request" else resp
        if msg is None:
            return False
        if m.group(2) is None:
            return len(msg.headers) == want
        i = int(m.group(2))
        return i < len(msg.headers) and msg.headers[i][0 if m.group(3) == "name" else 1] == want
    raise KeyError(key)


def file_matches(ex: Exchange, key: str, want: object) -> bool:
    msgs = [m for m in (ex.request, ex.response) if m is not None and m.body_len]
    if key == "fileinfo.size":
        return any(want in (m.body_len, m.decoded_len) for m in msgs)
    if key in ("fileinfo.gaps", "fileinfo.state"):
        gap = "gap" in ex.anomalies
        return gap == want if key == "fileinfo.gaps" else gap == (want == "TRUNCATED")
    if key == "fileinfo.filename":
        disposition = (ex.response.header("Content-Disposition") or "") if ex.response else ""
        return ex.request is not None and (
            ex.request.target.split("?")[0].endswith(str(want)) or str(want) in disposition
        )
    raise KeyError(key)


# Checks shadowtap reads differently from Suricata, keyed (case, index of the check among the
# case's http/fileinfo checks): the reason, and the count shadowtap's reading gives.
DISAGREE: dict[tuple[str, int], tuple[str, int]] = {
    ("http-gap-simple", 3): (
        (
            "/1 and /3 declare Content-Length: 12 and are followed by 14 bytes (the body and a "
            "stray "
            "CRLF). RFC 9112 6.3: the body is the 12 declared bytes; Suricata's file counts the "
            "CRLF. "
            "shadowtap: two bodies of 12, none of 14."
        ),
        0,
    ),
    ("http-gap-double", 3): (
        "as http-gap-simple: Content-Length 12 + a stray CRLF; the body is 12 bytes",
        0,
    ),
    ("http-gap-whole-body", 3): (
        "as http-gap-simple: Content-Length 12 + a stray CRLF; the body is 12 bytes",
        0,
    ),
    ("http-multiple100", 0): (
        (
            "the 34293 bytes are the file inside the request's multipart/form-data body; shadowtap "
            "records "
            "HTTP bodies (34498 bytes) and does not take MIME parts apart"
        ),
        0,
    ),
    ("http-range-file", 0): (
        (
            "Suricata joins the 15 Range responses into one 146515-byte file; shadowtap records "
            "each 206 "
            "response (their body lengths add up to 146515: checked below)"
        ),
        0,
    ),
    ("http-range-multiflows", 0): (
        (
            "Suricata joins Range responses across flows into one file; shadowtap records each 206 "
            "response (checked below)"
        ),
        0,
    ),
}

UNSUPPORTED_KEYS = {
    "http.status_string",  # Suricata 8's status class ("2XX"): not a field of the wire
    "fileinfo.sha256",  # the hash of a truncated file (of nothing: e3b0...); not recorded
}


@pytest.mark.parametrize("case", CASES)
def test_corpus_case(case):
    pcap = next(p for p in (CORPUS / case).iterdir() if p.suffix in (".pcap", ".pcapng"))
    exchanges = list(iter_exchanges([str(pcap)], keep_secrets=True))
    checks = [
        c
        for c in parse_checks((CORPUS / case / "test.yaml").read_text())
        if c["match"].get("event_type") in ("http", "fileinfo")
    ]
    for i, check in enumerate(checks):
        keys = {k: v for k, v in check["match"].items() if k != "event_type"}
        if set(keys) & UNSUPPORTED_KEYS:
            keys = {k: v for k, v in keys.items() if k not in UNSUPPORTED_KEYS}
        if check["match"]["event_type"] == "http":
            got = sum(all(http_matches(e, k, v) for k, v in keys.items()) for e in exchanges)
        else:
            got = sum(
                all(file_matches(e, k, v) for k, v in keys.items()) for e in exchanges if keys
            )
            if not keys:  # a count of files: bodies shadowtap saw (responses with a body)
                continue
        want = check["count"] if check["count"] is not None else 1
        if (case, i) in DISAGREE:
            reason, ours = DISAGREE[(case, i)]
            assert got == ours, f"{case} check {i}: {reason}"
        else:
            assert got == want, f"{case} check {i} {keys}: Suricata {want}, shadowtap {got}"


def test_corpus_range_responses_add_up_to_the_file():
    for case, size in (("http-range-file", 146515), ("http-range-multiflows", 37323)):
        pcap = CORPUS / case / "input.pcap"
        parts = [
            e.response
            for e in iter_exchanges([str(pcap)])
            if e.response and e.response.status == 206
        ]
        covered: set[int] = set()
        for p in parts:  # Content-Range: bytes START-END/TOTAL; ranges overlap and repeat
            start, end = map(
                int, re.match(r"bytes (\d+)-(\d+)/", p.header("Content-Range")).groups()
            )
            assert end - start + 1 == p.body_len
            covered.update(range(start, end + 1))
        assert covered == set(range(size)), case


def test_corpus_gap_beyond_body_third_response():
    """Suricata logs /2 and /3 without a status. The capture loses 127 bytes (the end of /1's
    answer and all of /2's); then, after GET /3, the server sends `HTTP/1.0 200 OK ...
    Content-Length: 12 ... Hello People` in a segment of its own: the answer to /3. shadowtap
    resynchronises at that segment's start (a message boundary) and pairs it with /3 (a request
    sent before it; /2's answer is the one lost), marking it ``resync``; Suricata, which only
    resynchronises at line starts here, does not. /2 stays unanswered, marked ``gap``."""
    pcap = CORPUS / "http-gap-beyond-body" / "input.pcap"
    got = {e.request.target: e for e in iter_exchanges([str(pcap)])}
    assert got["/3"].response.status == 200 and got["/3"].response.body == b"Hello People"
    assert "resync" in got["/3"].anomalies
    assert got["/2"].response is None and "gap" in got["/2"].anomalies
    assert got["/1"].response.body_len == 12 and "gap" in got["/1"].anomalies


def test_corpus_not_http_request_still_records_the_answer():
    """http-not09-file: the client sends binary (TLS-like) bytes to port 80 and nginx answers
    400 with a 166-byte page. Suricata logs that page as a file; shadowtap records a response-only
    exchange marked ``parse_error`` (the request did not parse), and counts the stream
    ``not_http``."""
    pcap = CORPUS / "http-not09-file" / "input.pcap"
    got = list(iter_exchanges([str(pcap)]))
    assert [(e.request, e.response.status, e.response.body_len) for e in got] == [(None, 400, 166)]
    assert "parse_error" in got[0].anomalies
