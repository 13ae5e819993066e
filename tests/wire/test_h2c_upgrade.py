"""HTTP/1.1 ``Upgrade: h2c`` between real peers: ``curl --http2`` over plain http (it offers the
upgrade) against hypercorn (a server that accepts it: nginx does not), on the loopback of a
namespace, recorded by tcpdump and by shadowtap's own live capture (libpcap backend: the
Extractor is shared by every source, one live path is enough). The exchanges equal what curl sent
and received: the upgraded request is stream 1 (sent as HTTP/1.1, answered as HTTP/2), curl's
next URL on the same connection is stream 3, and a request the server refuses to upgrade (curl
with a body: hypercorn answers 200 over HTTP/1.1) stays HTTP/1.x. Then Suricata's captures of
real h2c upgrades (other servers and clients), read as tshark reads them."""

from __future__ import annotations

import importlib.util
import os
import random
import sys
from pathlib import Path

import pytest

import tests.support.live_lab as lab
from shadowtap.capture.extract import iter_exchanges
from shadowtap.records import Exchange


@pytest.fixture
def key_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SHADOWTAP_KEY_FILE", str(tmp_path / "redact.key"))


def curl_view(stderr: str) -> tuple[list[list[str]], list[list[str]]]:
    """What ``curl -v`` says it sent (one list of lines per request: request line, then the
    header lines) and received (one list per response head: status line, then header lines)."""
    sent: list[list[str]] = []
    got: list[list[str]] = []
    new_request = True
    for line in stderr.splitlines():
        if line.startswith("> "):
            text = line[2:].rstrip()
            if not text:
                new_request = True
                continue
            if new_request:
                sent.append([])
                new_request = False
            sent[-1].append(text)
        elif line.startswith("< "):
            text = line[2:].rstrip()
            if text.startswith("HTTP/"):
                got.append([])
            if text:
                got[-1].append(text)
    return sent, got


def split_header(line: str) -> tuple[str, str]:
    name, _, value = line.partition(":")
    return name, value.strip()


@pytest.mark.root
def test_curl_h2c_upgrade_against_hypercorn(topology, tmp_path, key_file):
    lab.require_tool("tcpdump")
    lab.require_tool("curl")
    lab.require(importlib.util.find_spec("hypercorn") is not None, "hypercorn (the test extra)")
    host = topology().host("lo")
    port = random.randrange(20000, 60000)
    base = f"http://127.0.0.1:{port}"
    server = lab.Proc(
        [sys.executable, "-m", "hypercorn", "tests.support.h2c_app:app", "--bind", base[7:]],
        tmp_path,
        "hypercorn",
        ns=host.ns,
        env=dict(os.environ, PYTHONPATH=str(lab.REPO)),
    )
    bodies = [tmp_path / f"body{k}" for k in range(3)]
    try:
        lab.wait_for(lambda: "Running on" in server.err(), 60, "hypercorn", proc=server.p)
        agent = lab.start_agent("lo", port, "pcap", tmp_path, ns=host.ns)
        tcpdump = lab.start_tcpdump("lo", port, tmp_path, host.ns)
        try:
            up = host.run(
                [
                    "curl", "-sv", "--http2", "-H", "X-Trace: t1",
                    "-o", str(bodies[0]), f"{base}/up?x=1",
                    "-o", str(bodies[1]), f"{base}/two",
                ],
                timeout=60,
            )  # fmt: skip
            refused = host.run(
                ["curl", "-sv", "--http2", "-d", "x=1", "-o", str(bodies[2]), f"{base}/post"],
                timeout=60,
            )
        finally:
            agent.stop()
            tcpdump.stop()
    finally:
        server.stop()
    live = lab.loads(lab.jsonl_lines(tmp_path / "agent.jsonl"))
    offline = lab.extract_pcap([tmp_path / "tcpdump.pcap"], port)
    assert len(offline) == 3, agent.err()[-2000:]
    drop_chunks = [{k: v for k, v in o.items() if k != "chunks"} for o in offline]
    assert lab.keyed([{k: v for k, v in o.items() if k != "chunks"} for o in live]) == lab.keyed(
        drop_chunks
    )
    exs = sorted((Exchange.from_json(o) for o in offline), key=lambda e: (e.request.ts, e.index))
    first, second, post = exs

    sent, got = curl_view(up.stderr)
    # Stream 1: the upgraded request exactly as curl sent it (HTTP/1.1, its header lines in
    # order), the answer as curl received it after the 101 (HTTP/2).
    assert [f"{first.request.method} {first.request.target} {first.request.version}"] + [
        f"{n}: {v}" for n, v in first.request.headers
    ] == sent[0]
    assert first.h2.stream_id == 1 and first.h2.outcome == "complete" and first.anomalies == ()
    assert got[0][0].startswith("HTTP/1.1 101") and got[1][0] == "HTTP/2 200"
    assert first.response.version == "HTTP/2" and first.response.status == 200
    assert [h for h in first.response.headers if h[0] != ":status"] == [
        split_header(line) for line in got[1][1:]
    ]
    assert first.response.body == bodies[0].read_bytes() == b"hello /up?x=1 "
    # Stream 3: curl's second URL on the upgraded connection, as HTTP/2.
    assert (second.client, second.server) == (
        first.client,
        first.server,
    ) and second.index == first.index + 1
    assert (second.h2.stream_id, second.request.version, second.request.target) == (
        3,
        "HTTP/2",
        "/two",
    )
    assert sent[1][0] == "GET /two HTTP/2"
    fields = dict(second.request.headers)
    assert fields[":authority"] == split_header(sent[1][1])[1]
    assert [h for h in second.request.headers if not h[0].startswith(":")] == [
        split_header(line) for line in sent[1][2:]
    ]
    assert [h for h in second.response.headers if h[0] != ":status"] == [
        split_header(line) for line in got[2][1:]
    ]
    assert second.response.body == bodies[1].read_bytes() == b"hello /two "
    # Refused: the server answered the Upgrade request 200 over HTTP/1.1; nothing switched.
    sent, got = curl_view(refused.stderr)
    assert [f"{post.request.method} {post.request.target} {post.request.version}"] + [
        f"{n}: {v}" for n, v in post.request.headers
    ] == sent[0]
    assert ("Upgrade", "h2c") in post.request.headers and post.request.body == b"x=1"
    assert (post.response.version, post.response.status, post.h2) == ("HTTP/1.1", 200, None)
    assert post.response.body == bodies[2].read_bytes() == b"hello /post x=1"
    assert all(o["schema"] == 2 and "tunnel" not in o.get("anomalies", ()) for o in live)


# Captures of real h2c upgrades from Suricata's verification suite (MIT, LICENSE.txt there; the
# upgrade, nghttpx and Go servers, curl clients). The expectations are tshark's reading of the
# same files (an independent dissector): per connection, each stream's :status, content-length
# and content-range; the 101 and the server's SETTINGS share one packet in each.
H2C_CORPUS = Path(__file__).resolve().parents[1] / "data" / "suricata-h2c"


@pytest.mark.parametrize(
    ("case", "want"),
    [
        ("http2-deflate", [("GET", "/", "HTTP/1.1", 1, 200, "30", None)]),
        ("http2-deflate-case", [("GET", "/", "HTTP/1.1", 1, 200, "30", None)]),
        (
            "http2-keywords2",
            [
                ("GET", "/robots.txt", "HTTP/1.1", 1, 200, "62", None),
                ("GET", "/humans.txt", "HTTP/2", 3, 404, "9", None),
            ],
        ),
        (
            "http2-range",  # three connections upgraded, two (the 2nd and 4th) not
            [
                ("GET", "/eicar", "HTTP/1.1", 1, 206, "11", "bytes 0-10/69"),
                ("GET", "/eicar", "HTTP/1.1", None, 206, "11", "bytes 10-20/69"),
                ("GET", "/eicar", "HTTP/1.1", 1, 206, "11", "bytes 20-30/69"),
                ("GET", "/eicar", "HTTP/1.1", None, 206, "11", "bytes 30-40/69"),
                ("GET", "/eicar", "HTTP/1.1", 1, 206, "29", "bytes 40-68/69"),
            ],
        ),
    ],
)
def test_suricata_h2c_captures(case, want):
    [pcap] = (H2C_CORPUS / case).glob("*.pcap")
    got = []
    for ex in iter_exchanges([str(pcap)]):
        assert "tunnel" not in ex.anomalies and ex.response is not None
        resp = ex.response
        got.append(
            (
                ex.request.method,
                ex.request.target,
                ex.request.version,
                ex.h2.stream_id if ex.h2 else None,
                resp.status,
                resp.header("content-length"),
                resp.header("content-range"),
            )
        )
        assert resp.version == ("HTTP/2" if ex.h2 else "HTTP/1.1")
        assert resp.body_len == int(resp.header("content-length")) and not resp.body_truncated
    assert got == want
