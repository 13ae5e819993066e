"""The Sender against real servers, one request at a time from a running loop (as the mirror uses
it) and in batches."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

from shadowtap.errors import TargetError
from shadowtap.records import Result
from shadowtap.replay.client import Sender
from shadowtap.replay.policy import Policy, Prepared, Target

from .conftest import make_exchange


def prep(
    target_url: str,
    path: str,
    method: str = "GET",
    index: int = 0,
    client: str = "10.1.0.1:40000",
    **kw,
) -> Prepared:
    d = Policy(Target.parse(target_url), allow_unsafe=True).decide(
        make_exchange(target=path, method=method, index=index, client=client, **kw)
    )
    assert isinstance(d, Prepared)
    return d


def run(coro):
    return asyncio.run(coro)


def test_one_request_at_a_time_gives_captured_shaped_responses(aio_target, nginx):
    async def go() -> list[Result]:
        out = []
        for url, path, method in (
            (aio_target.url, "/hello?x=1", "GET"),
            (aio_target.url, "/gzip", "GET"),
            (aio_target.url, "/chunked", "GET"),
            (nginx.url, "/", "HEAD"),
            (nginx.url, "/", "GET"),
            (nginx.url, "/status/x", "GET"),
            (aio_target.url, "/post", "POST"),
        ):
            sender = Sender(Target.parse(url), concurrency=2)
            await sender.start()
            kw = {"body": b"12345"} if method == "POST" else {}
            out.append(await sender.send(prep(url, path, method, **kw)))
            # The next request of the captured connection goes on the kept-alive connection.
            out.append(await sender.send(prep(url, path, method, index=1, **kw)))
            assert sender.stats().connections_opened == 1
            sender.close()
        return out

    results = run(go())
    assert all(r.error is None for r in results), [r.error for r in results]
    hello, gz, chunked, head, ngx, missing, post = results[0::2]
    assert hello.response.status == 200 and b'"path": "/hello?x=1"' in hello.response.body
    assert hello.target == f"{aio_target.url}/hello?x=1"
    assert gz.response.header("content-encoding") == "gzip"
    assert gz.response.body_len == len(gz.response.body) < 1000 and gz.response.decoded_len == 1000
    assert (
        chunked.response.body == b"one,two,three"
        and chunked.response.header("transfer-encoding") == "chunked"
    )
    assert (
        head.response.status == 200
        and head.response.body == b""
        and head.response.header("content-length") == "17"
    )
    assert ngx.response.body == b"hello from nginx\n" and ngx.response.reason == "OK"
    assert missing.response.status == 404
    assert b'"len": 5' in post.response.body
    for r in results:
        assert r.ttfb_ms is not None and 0 <= r.ttfb_ms <= r.total_ms
        assert r.sent <= r.response.ts <= r.response.end_ts
        assert Result.from_json(r.to_json()) == r


def test_max_body_cuts_the_kept_body_but_counts_every_byte(aio_target):
    async def go() -> Result:
        sender = Sender(Target.parse(aio_target.url), max_body=4)
        await sender.start()
        r = await sender.send(prep(aio_target.url, "/chunked"))
        sender.close()
        return r

    r = run(go())
    assert r.response.body == b"one," and r.response.body_len == 13 and r.response.body_truncated
    assert r.response.decoded_len is None


def test_errors_are_classified(aio_target):
    closed_port = _closed_port()

    async def go() -> dict[str, Result]:
        out = {}
        sender = Sender(Target.parse(aio_target.url), timeout=0.5)
        await sender.start()
        out["stall"] = await sender.send(prep(aio_target.url, "/stall"))
        out["reset"] = await sender.send(prep(aio_target.url, "/reset"))
        out["ok_after"] = await sender.send(prep(aio_target.url, "/fine"))
        refused = Sender(Target.parse(f"http://127.0.0.1:{closed_port}"))
        await refused.start()
        out["refused"] = await refused.send(prep(aio_target.url, "/x"))
        with pytest.raises(TargetError, match="cannot connect"):
            await refused.check_reachable()
        sender.close()
        return out

    got = run(go())
    assert got["stall"].error.kind == "timeout" and got["stall"].response is None
    assert got["reset"].error.kind == "reset"
    assert got["refused"].error.kind == "refused"
    assert got["ok_after"].error is None and got["ok_after"].response.status == 200


def test_garbage_answer_is_a_protocol_error():
    r = _send_to_one_shot_server(b"this is not http\r\n\r\n")
    assert r.error.kind == "protocol"


def test_body_delimited_by_the_end_of_the_connection():
    # HTTP/1.0-style answer without Content-Length: the body ends with the connection.
    r = _send_to_one_shot_server(b"HTTP/1.0 200 OK\r\nX-A: 1\r\n\r\nuntil the end")
    assert (
        r.error is None and r.response.body == b"until the end" and r.response.version == "HTTP/1.0"
    )


def test_per_connection_lanes_keep_order_and_pool_mode_spreads(aio_target):
    lanes = {
        f"10.1.0.{c}:4000{c}": [
            prep(aio_target.url, f"/c{c}/{i}", index=i, client=f"10.1.0.{c}:4000{c}")
            for i in range(6)
        ]
        for c in range(3)
    }

    async def go(per_connection: bool, concurrency: int) -> list[Result]:
        sender = Sender(
            Target.parse(aio_target.url), concurrency=concurrency, per_connection=per_connection
        )
        await sender.start()
        results: list[Result] = []
        for i in range(6):
            for c in lanes:
                sender.submit(
                    lanes[c][i], scheduled=sender.clock.now(), copy=0, on_result=results.append
                )
        await sender.drain()
        sender.close()
        return results

    aio_target.seen.clear()
    results = run(go(True, 8))
    assert len(results) == 18 and all(r.error is None for r in results)
    by_port: dict[int, list[str]] = {}
    for s in aio_target.seen:
        by_port.setdefault(s.peer_port, []).append(s.path)
    assert sorted(by_port.values()) == [[f"/c{c}/{i}" for i in range(6)] for c in range(3)]

    # Pool mode, one connection: every request on it, in submission order, lanes ignored.
    aio_target.seen.clear()
    assert len(run(go(False, 1))) == 18
    assert len({s.peer_port for s in aio_target.seen}) == 1
    assert [s.path for s in aio_target.seen] == [f"/c{c}/{i}" for i in range(6) for c in range(3)]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _send_to_one_shot_server(answer: bytes) -> Result:
    """The result of one GET / to a _one_shot_server answering ``answer``."""
    srv, port = _one_shot_server(answer)

    async def go() -> Result:
        sender = Sender(Target.parse(f"http://127.0.0.1:{port}"))
        await sender.start()
        return await sender.send(prep(f"http://127.0.0.1:{port}", "/"))

    r = run(go())
    srv.join(timeout=5)
    return r


def _one_shot_server(answer: bytes, close: bool = True):
    """A raw TCP server on loopback that reads one request and writes ``answer``."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4)
    port = lsock.getsockname()[1]

    def serve() -> None:
        lsock.settimeout(10)
        conn, _ = lsock.accept()
        # The Sender's reachability probe is not used here: the first connection carries the
        # request.
        conn.settimeout(10)
        _read_head(conn)
        conn.sendall(answer)
        if close:
            conn.close()
        lsock.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t, port


def _read_head(conn: socket.socket) -> bytes:
    """What ``conn`` sends up to the end of a request head (or until it closes)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_reused_connection_closed_before_answering_is_retried_once_on_a_new_one():
    """The keep-alive race: the target closes the kept-alive connection as the next request
    arrives. The request goes again, once, on a fresh connection."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4)
    lsock.settimeout(10)
    port = lsock.getsockname()[1]
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    seen: list[tuple[int, bytes]] = []

    def serve() -> None:
        c1, _ = lsock.accept()
        seen.append((1, _read_head(c1).split(b"\r\n")[0]))
        c1.sendall(ok)
        seen.append((1, _read_head(c1).split(b"\r\n")[0]))
        c1.close()  # closes instead of answering the second request
        c2, _ = lsock.accept()
        seen.append((2, _read_head(c2).split(b"\r\n")[0]))
        c2.sendall(ok)
        c2.close()
        lsock.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    url = f"http://127.0.0.1:{port}"

    async def go() -> tuple[list[Result], int]:
        sender = Sender(Target.parse(url))
        await sender.start()
        out = [
            await sender.send(prep(url, "/one", index=0)),
            await sender.send(prep(url, "/two", index=1)),
        ]
        retries = sender.stats().retries
        sender.close()
        return out, retries

    results, retries = run(go())
    t.join(timeout=5)
    assert [r.error for r in results] == [None, None] and retries == 1
    assert seen == [(1, b"GET /one HTTP/1.1"), (1, b"GET /two HTTP/1.1"), (2, b"GET /two HTTP/1.1")]


def test_a_new_captured_connection_on_the_same_endpoints_gets_a_new_target_connection(aio_target):
    client = "10.1.0.9:40009"
    seq = [
        prep(aio_target.url, f"/n{k}", index=i, client=client) for k, i in enumerate((0, 1, 0, 1))
    ]

    async def go() -> None:
        sender = Sender(Target.parse(aio_target.url))
        await sender.start()
        for p in seq:
            await sender.send(p)
        sender.close()

    run(go())
    ports = [s.peer_port for s in aio_target.seen]
    assert ports[0] == ports[1] != ports[2] == ports[3]


def test_record_field_order():
    """The client builds Response and Result positionally (hot path): their field order is
    pinned."""
    import dataclasses

    from shadowtap.records import Response

    assert [f.name for f in dataclasses.fields(Response)][:10] == [
        "ts",
        "end_ts",
        "version",
        "headers",
        "body",
        "body_len",
        "body_truncated",
        "decoded_len",
        "status",
        "reason",
    ]
    assert [f.name for f in dataclasses.fields(Result)][:9] == [
        "exchange_id",
        "target",
        "scheduled",
        "sent",
        "response",
        "ttfb_ms",
        "total_ms",
        "error",
        "copy",
    ]
