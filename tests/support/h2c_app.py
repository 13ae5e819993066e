"""The ASGI application the ``Upgrade: h2c`` tests serve with hypercorn (a real server built on
python-hyper's h11 and h2 that accepts h2c upgrades: nginx does not, RFC 9113 dropped the
mechanism, clients such as ``curl --http2`` over plain http still send it).

``hypercorn tests.support.h2c_app:app --bind 127.0.0.1:PORT``. Every request is answered 200 with
``x-proto`` (the HTTP version the server spoke), ``x-target`` and a body naming the target and the
request body it read."""

from __future__ import annotations

from typing import Any


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    target = scope["raw_path"] + (b"?" + scope["query_string"] if scope["query_string"] else b"")
    out = b"hello " + target + b" " + body
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"x-proto", scope["http_version"].encode()),
                (b"x-target", target),
            ],
        }
    )
    await send({"type": "http.response.body", "body": out})
