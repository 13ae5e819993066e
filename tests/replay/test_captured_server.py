"""The one "is this the captured server" check (replay/captured_server.py), on real sockets: the
captured server is a real aiohttp server on 127.0.0.1:PORT, and every spelling of this host that
got past the old checks (issue 12 item 2) is refused by replay and by the mirror before a request
reaches it. Bounded: each command fails before its first request (timeouts of 60 s at most)."""

from __future__ import annotations

import asyncio
import multiprocessing
import socket

import pytest

from shadowtap.errors import TargetError
from shadowtap.replay.captured_server import (
    Endpoint,
    OwnPorts,
    ServerCheck,
    ThisHost,
    normalise,
    same_server,
)
from shadowtap.replay.client import Sender
from shadowtap.replay.policy import ReplayRefused, Target
from tests.support.proc import shadowtap

from .conftest import make_exchange, write_jsonl

SPELLINGS = [
    "http://0.0.0.0:{port}",
    "http://[::ffff:127.0.0.1]:{port}",
    "http://0:{port}",
    "http://[::ffff:7f00:1]:{port}",
]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_replay_refuses_every_spelling_of_the_captured_server(spelling, aio_target, tmp_path):
    port = aio_target.port
    inp = write_jsonl(
        tmp_path / "in.jsonl",
        [make_exchange(server=f"127.0.0.1:{port}", target=f"/r{i}") for i in range(3)],
    )
    for extra in ((), ("--no-check",)):
        proc = shadowtap("replay", inp, "--target", spelling.format(port=port), *extra)
        assert proc.returncode == 5, proc.stderr
        assert "the server this traffic was captured from" in proc.stderr, proc.stderr
    assert aio_target.seen == []  # not one request reached it


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_mirror_refuses_every_spelling_of_the_primary(spelling, aio_target):
    port = aio_target.port
    proc = shadowtap(
        "mirror",
        "--iface",
        "lo",
        "--port",
        str(port),
        "--shadow",
        spelling.format(port=port),
        "--duration",
        "1",
    )
    assert proc.returncode == 5, proc.stderr
    assert "the primary itself" in proc.stderr, proc.stderr
    assert aio_target.seen == []


def test_the_real_peer_is_checked_before_a_byte_is_sent(aio_target):
    """Resolution said nothing about this host (no target endpoint at all); the connection's
    peer is the captured server: the connect hook refuses it, and every later connection."""
    captured = Endpoint.of("127.0.0.1", aio_target.port)
    assert captured is not None

    def refusal(target: Endpoint, server: Endpoint) -> TargetError:
        return ReplayRefused(f"{target} is {server}")

    check = ServerCheck((), refusal, host=ThisHost(), servers=[captured])

    async def run() -> None:
        sender = Sender(
            Target.parse(f"http://[::ffff:127.0.0.1]:{aio_target.port}"),
            on_connect=check.on_connect,
        )
        await sender.start()
        with pytest.raises(ReplayRefused):
            await sender.check_reachable()
        assert sender.refused is not None
        with pytest.raises(ReplayRefused):  # sticky: no second try
            await sender.check_reachable()
        sender.close()

    asyncio.run(run())
    assert aio_target.seen == []


def test_normalised_addresses_and_this_host():
    host = ThisHost(frozenset({normalise("192.0.2.10")}))  # type: ignore[arg-type]
    assert str(normalise("::ffff:7f00:1")) == "127.0.0.1"
    assert str(normalise("[fe80::1%eth0]")) == "fe80::1"
    assert normalise("shadow.example") is None
    lo = Endpoint.of("127.0.0.1", 80)
    assert lo is not None
    for other in ("0.0.0.0", "::", "::1", "127.0.0.9", "::ffff:127.0.0.1", "192.0.2.10"):
        ep = Endpoint.of(other, 80)
        assert ep is not None and same_server(lo, ep, host), other
        assert not same_server(lo, Endpoint(ep.ip, 81), host)
    remote = Endpoint.of("192.0.2.11", 80)
    assert remote is not None and not same_server(lo, remote, host)
    assert same_server(remote, Endpoint.of("::ffff:192.0.2.11", 80), host)  # type: ignore[arg-type]
    assert ThisHost.discover().has(normalise("127.0.0.1"))  # type: ignore[arg-type]


def _seen_in_child(own: OwnPorts, client: str, out: multiprocessing.queues.SimpleQueue) -> None:
    out.put(client in own)


def test_own_ports_are_seen_by_a_forked_capture(aio_target):
    """The mirror's own copies are known by their local ports, marked by the parent after the
    fork and read by the capture child."""
    own = OwnPorts(ThisHost())
    ctx = multiprocessing.get_context("fork")
    with socket.create_connection(("127.0.0.1", aio_target.port), timeout=5) as sock:
        local_port = sock.getsockname()[1]
        mine = f"127.0.0.1:{local_port}"
        assert mine not in own
        own.on_connect(sock)
        assert mine in own and f"[::ffff:127.0.0.1]:{local_port}" in own
        assert f"127.0.0.1:{local_port + 1 if local_port < 65535 else 1}" not in own
        assert f"192.0.2.99:{local_port}" not in own  # not this host: someone else's client
        out = ctx.SimpleQueue()
        child = ctx.Process(target=_seen_in_child, args=(own, mine, out))
        child.start()
        child.join(30)
        assert child.exitcode == 0 and out.get() is True
