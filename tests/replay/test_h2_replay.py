"""Plain HTTP/2 (non-gRPC) replayed over HTTP/2: nghttp (nghttp2's client; curl 7.88 cannot
reuse an h2c connection) against an nginx h2c primary, relayed and read by the passive parser,
then ``shadowtap replay`` to an nginx shadow: h2c with prior knowledge for ``http://``, ALPN h2
over TLS for ``https://``. The shadow's access log says what arrived (``$server_protocol``, the
connection and its request number)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import orjson
import pytest

from shadowtap.records import Exchange, Result
from tests.support.grpc_lab import Relay
from tests.support.nginx import make_cert, start_nginx
from tests.support.prereq import require_tool
from tests.wire.exchanges import exchanges

from .conftest import free_port, shadowtap_replay

LOCATIONS = """
        location /echo { add_header X-Tenant "$http_x_tenant"; return 200 "echo $request_uri\\n"; }
        location /post { return 201 "stored $content_length\\n"; }
        location /missing { return 404 "missing\\n"; }
        location / { return 200 "hello\\n"; }
"""
# The shadow logs one line a request: protocol, connection number, request number on it, path.
LOG = "log_format h2 '$server_protocol $connection $connection_requests $request_method $uri';"
SHADOW_LOCATIONS = "access_log {dir}/access.log h2;" + LOCATIONS


def h2c_traffic(url: str, work: Path) -> None:
    """Two connections of nghttp's (an HTTP/2 client multiplexing its requests on one): three
    GETs on one, a POST on the other."""
    gets = [f"{url}/echo?a=1", f"{url}/missing", f"{url}/other"]
    subprocess.run(["nghttp", "-n", "-H", "x-tenant: acme", *gets], check=True, timeout=30)
    (work / "form").write_bytes(b"x=12345")
    post = ["nghttp", "-n", "-d", str(work / "form"), f"{url}/post"]
    subprocess.run(post, check=True, timeout=30)


@pytest.fixture(scope="module")
def captured(tmp_path_factory) -> tuple[Path, list[Exchange]]:
    require_tool("nghttp")
    d = tmp_path_factory.mktemp("primary")
    port = free_port()
    primary = start_nginx(d, "127.0.0.1", port, locations=LOCATIONS, http2=True)
    relay = Relay(("127.0.0.1", port))
    try:
        h2c_traffic(f"http://127.0.0.1:{relay.port}", d)
    finally:
        relay.close()
        primary.stop()
    exs: list[Exchange] = []
    for i, log in enumerate(relay.by_conn):
        exs += exchanges(log, client=f"127.0.0.1:{40000 + i}", server="127.0.0.1:50080")
    assert [e.request.version for e in exs] == ["HTTP/2"] * 4
    assert all(e.grpc is None for e in exs)
    path = tmp_path_factory.mktemp("cap") / "exchanges.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e.to_json()) + b"\n" for e in exs))
    return path, exs


def results(out: Path) -> dict[str, Result]:
    rows = [Result.from_json(orjson.loads(x)) for x in out.read_bytes().splitlines()]
    return {r.exchange_id: r for r in rows}


def access_log(d: Path) -> list[list[str]]:
    return [line.split() for line in (d / "access.log").read_text().splitlines()]


def check_same_answers(exs: list[Exchange], got: dict[str, Result]) -> None:
    assert len(got) == len(exs)
    for ex in exs:
        r = got[ex.id]
        assert r.error is None and r.response is not None, r
        assert r.response.version == "HTTP/2"
        assert r.response.status == ex.response.status
        assert r.response.body == ex.response.body
        assert r.response.headers[0] == (":status", str(ex.response.status))
        assert r.ttfb_ms is not None and r.total_ms is not None and r.total_ms >= r.ttfb_ms
    echo = next(ex for ex in exs if ex.request.target == "/echo?a=1")
    assert ("x-tenant", "acme") in got[echo.id].response.headers  # the request's header arrived


def check_connections(log: list[list[str]], exs: list[Exchange]) -> None:
    """Every request over HTTP/2, each captured connection's on its own target connection, in
    the captured order."""
    assert [row[0] for row in log] == ["HTTP/2.0"] * len(exs)
    by_conn: dict[str, list[tuple[int, str]]] = {}
    for _proto, conn, n, _method, uri in log:
        by_conn.setdefault(conn, []).append((int(n), uri))
    assert sorted(len(v) for v in by_conn.values()) == [1, 3]
    for reqs in by_conn.values():
        reqs.sort()
        assert [n for n, _ in reqs] == list(range(1, len(reqs) + 1))
        paths = [uri for _, uri in reqs]
        assert paths in (["/echo", "/missing", "/other"], ["/post"])


def test_h2c_target_gets_http2_with_prior_knowledge(captured, tmp_path):
    path, exs = captured
    d = tmp_path / "shadow"
    d.mkdir()
    port = free_port()
    shadow = start_nginx(
        d, "127.0.0.1", port, locations=SHADOW_LOCATIONS, http_extra=LOG, http2=True
    )
    try:
        p = shadowtap_replay(path, f"http://127.0.0.1:{port}", tmp_path / "r.jsonl")
    finally:
        shadow.stop()
    assert p.returncode == 0, p.stderr
    check_same_answers(exs, results(tmp_path / "r.jsonl"))
    check_connections(access_log(d), exs)


def test_https_target_gets_http2_by_alpn(captured, tmp_path):
    require_tool("openssl")
    path, exs = captured
    d = tmp_path / "shadow"
    d.mkdir()
    cert, key = make_cert(d)
    port = free_port()
    shadow = start_nginx(
        d,
        "127.0.0.1",
        port,
        locations=SHADOW_LOCATIONS,
        http_extra=LOG,
        cert=cert,
        key=key,
        http2=True,
    )
    try:
        p = shadowtap_replay(
            path, f"https://localhost:{port}", tmp_path / "r.jsonl", "--ca", str(cert)
        )
    finally:
        shadow.stop()
    assert p.returncode == 0, p.stderr
    got = results(tmp_path / "r.jsonl")
    check_same_answers(exs, got)
    check_connections(access_log(d), exs)
    # one TLS handshake a target connection, reported with the first request sent on it
    assert sum(r.tls_handshake_ms is not None for r in got.values()) == 2


def test_https_target_without_h2_is_a_protocol_error_per_request(captured, tmp_path):
    """A target that does not agree to h2 by ALPN: each request's Result says so; nothing is
    sent over HTTP/1.1 instead (it would not be the captured protocol)."""
    path, exs = captured
    d = tmp_path / "shadow"
    d.mkdir()
    cert, key = make_cert(d)
    port = free_port()
    kw = {"locations": SHADOW_LOCATIONS, "http_extra": LOG, "cert": cert, "key": key}
    shadow = start_nginx(d, "127.0.0.1", port, **kw)  # TLS, HTTP/1.1 only
    try:
        shadowtap_replay(path, f"https://localhost:{port}", tmp_path / "r.jsonl", "--ca", str(cert))
    finally:
        shadow.stop()
    got = results(tmp_path / "r.jsonl")
    assert len(got) == len(exs)
    for r in got.values():
        assert r.response is None and r.error is not None and r.error.kind == "protocol"
        assert "ALPN" in r.error.message
    assert not (d / "access.log").exists() or not access_log(d)
