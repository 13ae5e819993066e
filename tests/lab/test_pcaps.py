"""The lab captures in pcaps/ (recorded by scripts/lab/record_pcaps.py) hold what pcaps/README.md
says they hold: read back through shadowtap's own extraction, each shows its scenario."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from shadowtap.capture.extract import iter_exchanges

PCAPS = Path(__file__).resolve().parents[2] / "pcaps"
LAB_PCAPS = (
    "lab-keepalive",
    "lab-pipelined",
    "lab-chunked",
    "lab-gzip",
    "lab-post",
    "lab-errors",
    "lab-slow",
    "lab-mix",
)


def _exchanges(name: str):
    return list(iter_exchanges([str(PCAPS / f"{name}.pcap")], keep_secrets=True))


@pytest.mark.parametrize("name", LAB_PCAPS)
def test_small_and_complete(name):
    path = PCAPS / f"{name}.pcap"
    assert path.stat().st_size < 1 << 20
    exchanges = _exchanges(name)
    assert exchanges
    assert all(
        e.request is not None and e.response is not None and not e.anomalies for e in exchanges
    )
    assert f"{name}.pcap" in (PCAPS / "README.md").read_text()


def test_keepalive_one_connection_many_requests():
    ex = _exchanges("lab-keepalive")
    assert len(ex) == 5 and len({e.client for e in ex}) == 1
    assert [e.index for e in ex] == list(range(5))


def test_pipelined_requests_answered_in_order():
    ex = _exchanges("lab-pipelined")
    assert [e.request.target for e in ex] == [
        "/v1/products/1",
        "/v1/products?page=2&per_page=5",
        "/health",
    ]
    assert len({e.client for e in ex}) == 1
    # all three requests were on the wire before the first response
    assert max(e.request.end_ts for e in ex) <= min(e.response.ts for e in ex)


def test_chunked_response_and_request():
    ex = _exchanges("lab-chunked")
    export = next(e for e in ex if e.request.target.startswith("/v1/export"))
    assert export.response.header("Transfer-Encoding") == "chunked"
    assert len(export.response.body.decode().splitlines()) == 200
    post = next(e for e in ex if e.request.method == "POST")
    assert post.request.header("Transfer-Encoding") == "chunked"
    assert json.loads(post.request.body)["features"]["country"] == "US"


def test_gzip_bodies():
    for e in _exchanges("lab-gzip"):
        assert e.response.header("Content-Encoding") == "gzip"
        assert json.loads(gzip.decompress(e.response.body))["request_id"]


def test_posts_with_bodies():
    ex = _exchanges("lab-post")
    assert [(e.request.method, e.request.target, e.response.status) for e in ex] == [
        ("POST", "/v1/predict", 200),
        ("POST", "/v1/orders", 201),
    ]
    assert all(e.request.body_len > 0 for e in ex)


def test_errors():
    assert sorted(e.response.status for e in _exchanges("lab-errors")) == [400, 400, 404, 500]


def test_slow_response():
    (e,) = _exchanges("lab-slow")
    assert e.ttfb_ms >= 500  # the search of 500 results takes 10 ms + 1 ms a result by design


def test_mix():
    ex = _exchanges("lab-mix")
    assert len(ex) == 200
    assert {e.request.method for e in ex} == {"GET", "POST"}
    assert len({e.client for e in ex}) > 10  # new connections beside the keep-alive ones
