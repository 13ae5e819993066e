"""Real targets for the replay tests, on loopback with ephemeral ports: an aiohttp app (in a thread
with its own loop) that records what arrives, and nginx. Plus builders of exchange records."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import orjson
import pytest
from aiohttp import web

from shadowtap.records import Exchange, Request, Response, exchange_id
from tests.support.nginx import start_nginx


@dataclass(frozen=True)
class Seen:
    """One request as the target saw it."""

    arrived: float  # time.monotonic()
    method: str
    path: str  # path and query
    headers: tuple[tuple[str, str], ...]
    body: bytes
    peer_port: int  # the client's port: one per target connection

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None


class AioTarget:
    """The aiohttp target. Paths: /stall (never answers), /reset (aborts the connection),
    /gzip (gzip-encoded body), /chunked (chunked body), anything else: 200 with a JSON echo."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.seen.append(
            Seen(
                time.monotonic(),
                request.method,
                request.path_qs,
                tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers),
                body,
                peer[1] if peer else -1,
            )
        )
        if request.path.startswith("/stall"):
            await asyncio.sleep(3600)
        if request.path.startswith("/reset"):
            assert request.transport is not None
            request.transport.abort()
            await asyncio.sleep(0.05)
            raise ConnectionResetError("aborted on purpose")
        if request.path.startswith("/gzip"):
            return web.Response(
                body=gzip.compress(b"a" * 1000),
                headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"},
            )
        if request.path.startswith("/chunked"):
            resp = web.StreamResponse()
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for part in (b"one,", b"two,", b"three"):
                await resp.write(part)
            await resp.write_eof()
            return resp
        return web.json_response(
            {"method": request.method, "path": request.path_qs, "len": len(body)}
        )

    def close(self) -> None:
        fut = asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop)
        with contextlib.suppress(Exception):  # a stalled handler may linger; the loop stops anyway
            fut.result(timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


@pytest.fixture
def aio_target():
    t = AioTarget()
    yield t
    t.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


REPLAY_LOCATIONS = """
        location /status/ { return 404 "missing\\n"; }
        location / { return 200 "hello from nginx\\n"; }
"""


@pytest.fixture
def nginx(tmp_path):
    """nginx on a free loopback port: ``hello from nginx`` for every path but /status/ (404)."""
    root = tmp_path / "nginx"
    root.mkdir()
    port = free_port()
    proc = start_nginx(root, "127.0.0.1", port, locations=REPLAY_LOCATIONS)
    proc.port, proc.url = port, f"http://127.0.0.1:{port}"
    yield proc
    proc.stop()


T0 = 1_700_000_000.0


def make_exchange(
    *,
    t: float = 0.0,
    method: str = "GET",
    target: str = "/",
    client: str = "10.1.0.1:40000",
    server: str = "10.2.0.1:80",
    index: int = 0,
    headers: tuple[tuple[str, str], ...] = (),
    body: bytes = b"",
    body_truncated: bool = False,
    host: str = "shop.example",
) -> Exchange:
    """An exchange as extraction writes it: ``t`` seconds after T0, with a 200 response."""
    hdrs = (("Host", host), *headers)
    if body:
        hdrs = (*hdrs, ("Content-Length", str(len(body))))
    ts = T0 + t
    req = Request(
        ts=ts,
        end_ts=ts,
        version="HTTP/1.1",
        headers=hdrs,
        body=body,
        body_len=len(body) + (100 if body_truncated else 0),
        body_truncated=body_truncated,
        method=method,
        target=target,
    )
    resp = Response(
        ts=ts + 0.001,
        end_ts=ts + 0.002,
        version="HTTP/1.1",
        headers=(("Content-Length", "2"),),
        body=b"ok",
        body_len=2,
        decoded_len=2,
        status=200,
        reason="OK",
    )
    return Exchange(
        id=exchange_id(client, server, T0, index),
        client=client,
        server=server,
        index=index,
        request=req,
        response=resp,
        ttfb_ms=1.0,
        total_ms=2.0,
    )


def write_jsonl(path, exchanges, extra_lines: dict[int, bytes] | None = None) -> str:
    """Write exchanges as JSONL; ``extra_lines`` inserts raw lines before the given positions."""
    extra_lines = extra_lines or {}
    with open(path, "wb") as f:
        for i, ex in enumerate(exchanges):
            if i in extra_lines:
                f.write(extra_lines[i] + b"\n")
            f.write(orjson.dumps(ex.to_json()) + b"\n")
    return str(path)


def read_results(path) -> list[dict]:
    with open(path, "rb") as f:
        return [orjson.loads(line) for line in f if line.strip()]


def shadowtap_replay(path, url: str, out, *extra: str) -> subprocess.CompletedProcess[str]:
    """``shadowtap replay`` of ``path`` to ``url`` (results to ``out``) at --speed max, unsafe
    methods allowed; ``extra`` options after them."""
    argv = ["replay", str(path), "-t", url, "-o", str(out), "--allow-unsafe", "--speed", "max"]
    return subprocess.run(
        [sys.executable, "-m", "shadowtap", *argv, *extra],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
