"""https:// targets: the Sender against a real nginx over TLS with a certificate the test makes
(openssl): verification on by default (the unknown CA refused, a --ca file trusted), --insecure
accepting it, the TLS handshake time recorded apart from the request latency, and the session
resumed when a new connection to the target is opened."""

from __future__ import annotations

import asyncio
import random

import pytest

from shadowtap.records import Result
from shadowtap.replay.client import Sender, TlsOptions
from shadowtap.replay.policy import Policy, Prepared, Target
from tests.support.nginx import make_cert, start_nginx
from tests.support.prereq import require_tool

from .conftest import make_exchange


@pytest.fixture(scope="module")
def https_nginx(tmp_path_factory):
    require_tool("openssl")
    d = tmp_path_factory.mktemp("https")
    make_cert(d)
    port = random.randrange(20000, 60000)
    proc = start_nginx(d, "127.0.0.1", port, cert=d / "cert.pem", key=d / "key.pem")
    yield f"https://localhost:{port}", str(d / "cert.pem")
    proc.stop()


def prep(url: str, path: str, index: int = 0, client: str = "10.1.0.1:40000") -> Prepared:
    d = Policy(Target.parse(url), allow_unsafe=True).decide(
        make_exchange(target=path, index=index, client=client)
    )
    assert isinstance(d, Prepared)
    return d


def send_all(
    url: str, tls: TlsOptions | None, preps: list[Prepared], **kw
) -> tuple[list[Result], Sender]:
    async def go():
        s = Sender(Target.parse(url), tls=tls, concurrency=1, **kw)
        await s.start()
        out = [await s.send(p) for p in preps]
        s.close()
        return out, s

    return asyncio.run(go())


def test_verification_on_by_default_refuses_an_unknown_ca(https_nginx):
    url, _ca = https_nginx
    (r,), _ = send_all(url, None, [prep(url, "/v")])
    assert r.response is None and r.error is not None and "certificate" in r.error.message.lower()


def test_ca_file_trusts_the_server_and_handshake_time_is_apart(https_nginx):
    url, ca = https_nginx
    preps = [prep(url, f"/a{i}", index=i) for i in range(3)]
    results, sender = send_all(url, TlsOptions(ca_file=ca), preps)
    assert [r.response.status for r in results] == [200, 200, 200]
    assert results[0].response.body == b"hello /a0\n"
    # one connection (same captured connection): its handshake is reported once, with the first
    assert results[0].tls_handshake_ms is not None and results[0].tls_handshake_ms > 0
    assert [r.tls_handshake_ms for r in results[1:]] == [None, None]
    assert Result.from_json(results[0].to_json()).tls_handshake_ms == results[0].tls_handshake_ms
    assert sender.stats().connections_opened == 1


def test_insecure_accepts_and_new_connections_resume_the_session(https_nginx):
    url, _ca = https_nginx
    preps = [prep(url, f"/c{i}", client=f"10.1.0.{i + 1}:40000") for i in range(3)]  # 3 connections
    results, sender = send_all(url, TlsOptions(insecure=True), preps)
    assert [r.response.status for r in results] == [200, 200, 200]
    assert all(r.tls_handshake_ms is not None for r in results)
    ctx = sender._ssl
    assert ctx is not None and ctx.sessions  # the last session kept for the server name

    async def resumed() -> bool:
        s = Sender(Target.parse(url), tls=TlsOptions(insecure=True))
        s._ssl = ctx  # the same context: its session is offered
        await s.start()
        from shadowtap.replay.client import _Conn

        conn = _Conn(s)
        await s._open(conn)
        reused = conn.transport.get_extra_info("ssl_object").session_reused
        conn.close()
        return reused

    assert asyncio.run(resumed())
