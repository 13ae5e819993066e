"""replay/h2_client.py against real peers, through the replay's Router: request and answer bodies
larger than HTTP/2's initial flow-control window (hypercorn echoes the body), a GOAWAY after two
streams (nginx ``keepalive_requests 2``: the streams it did not process go again on a new
connection), a target that never answers (timeout, the stream cancelled), nothing listening."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shadowtap.records import Result
from shadowtap.replay.client import Sender
from shadowtap.replay.grpc_client import GrpcSender, Router
from shadowtap.replay.policy import Policy, Prepared, Target
from tests.support.nginx import start_nginx
from tests.support.prereq import require

from .conftest import free_port, make_exchange

ROOT = Path(__file__).resolve().parents[2]


def h2_prepared(url: str, n: int, *, method: str = "GET", body: bytes = b"") -> list[Prepared]:
    """``n`` requests captured as HTTP/2 on one connection, ready for ``url``."""
    out = []
    for i in range(n):
        ex = make_exchange(t=i * 0.001, method=method, target=f"/r{i}", index=i, body=body)
        assert ex.request is not None
        ex = dataclasses.replace(ex, request=dataclasses.replace(ex.request, version="HTTP/2"))
        p = Policy(Target.parse(url), allow_unsafe=True).decide(ex)
        assert isinstance(p, Prepared) and p.http2
        out.append(p)
    return out


def send(url: str, preps: list[Prepared], **kw) -> tuple[list[Result], Router]:
    async def go() -> tuple[list[Result], Router]:
        target = Target.parse(url)
        router = Router(Sender(target, **kw), GrpcSender(target))
        await router.start()
        got: list[Result] = []
        for p in preps:
            router.submit(p, scheduled=router.clock.now(), copy=0, on_result=got.append)
        await asyncio.wait_for(router.drain(), 30)
        router.close()
        await router.aclose()
        return got, router

    return asyncio.run(go())


@pytest.fixture
def hypercorn():
    require(importlib.util.find_spec("hypercorn") is not None, "hypercorn (the test extra)")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hypercorn", "tests.support.h2c_app:app", "-b", f"127.0.0.1:{port}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_bodies_beyond_the_flow_control_window(hypercorn):
    body = bytes(range(256)) * 8192  # 2 MiB: 32 times the initial 64 KiB window, both ways
    (r,) = send(hypercorn, h2_prepared(hypercorn, 1, method="POST", body=body), max_body=4 << 20)[0]
    assert r.error is None and r.response is not None, r
    assert r.response.version == "HTTP/2" and r.response.status == 200
    assert ("x-proto", "2") in r.response.headers  # the server spoke HTTP/2
    assert r.response.body == b"hello /r0 " + body and not r.response.body_truncated


def test_answer_kept_up_to_max_body(hypercorn):
    body = b"x" * 100_000
    (r,) = send(hypercorn, h2_prepared(hypercorn, 1, method="POST", body=body), max_body=1000)[0]
    assert r.response is not None and len(r.response.body) == 1000
    assert r.response.body_len == len(b"hello /r0 ") + len(body) and r.response.body_truncated


def test_goaway_streams_go_again_on_a_new_connection(tmp_path):
    port = free_port()
    log = "log_format c '$server_protocol $connection $uri';"
    locations = "keepalive_requests 2; access_log {dir}/access.log c; location / { return 200 ok; }"
    nginx = start_nginx(
        tmp_path, "127.0.0.1", port, locations=locations, http_extra=log, http2=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        results, router = send(url, h2_prepared(url, 7))
    finally:
        nginx.stop()
    assert sorted(r.target for r in results) == sorted(f"{url}/r{i}" for i in range(7))
    assert all(r.error is None and r.response.status == 200 for r in results), results
    rows = [line.split() for line in (tmp_path / "access.log").read_text().splitlines()]
    assert sorted(uri for _p, _c, uri in rows) == sorted(f"/r{i}" for i in range(7))
    assert {p for p, _c, _u in rows} == {"HTTP/2.0"}
    assert len({c for _p, c, _u in rows}) >= 4  # two streams a connection
    assert router.stats().retries >= 1  # streams sent past the GOAWAY went again


def test_silent_target_times_out_and_nothing_listening_is_refused():
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (the kernel does), never reads
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        t0 = time.monotonic()
        results, _ = send(url, h2_prepared(url, 2), timeout=0.5)
        assert time.monotonic() - t0 < 10
    assert [r.error.kind for r in results] == ["timeout", "timeout"]
    assert all(r.response is None for r in results)
    url = f"http://127.0.0.1:{free_port()}"
    results, _ = send(url, h2_prepared(url, 2), connect_timeout=2)
    assert [r.error.kind for r in results] == ["refused", "refused"]
