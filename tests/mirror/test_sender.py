"""mirror/sender.py: the bounded queue, the token bucket, admission and the pump, the last with
replay's real Sender and a real HTTP server on loopback."""

import asyncio
from dataclasses import dataclass

from aiohttp import web

from shadowtap.mirror.sender import Admission, DropOldestQueue, Outcome, Pending, Pump, TokenBucket
from shadowtap.records import Exchange, Request
from shadowtap.replay.client import Sender
from shadowtap.replay.policy import Policy, Target


def test_drop_oldest_keeps_the_newest_and_counts():
    q: DropOldestQueue[int] = DropOldestQueue(3)
    dropped = [q.put(i) for i in range(10)]
    assert dropped == [[], [], [], [0], [1], [2], [3], [4], [5], [6]]
    assert q.dropped == 7 and len(q) == 3
    assert [q.pop() for _ in range(4)] == [7, 8, 9, None]


def test_drop_oldest_also_bounds_bytes_and_keeps_the_newest():
    q: DropOldestQueue[bytes] = DropOldestQueue(100, max_bytes=10, size=len)
    assert q.put(b"aaaa") == [] and q.put(b"bbbb") == []
    assert q.put(b"cccccc") == [b"aaaa"]  # 14 bytes > 10: the oldest goes
    assert q.bytes == 10
    assert q.put(b"x" * 50) == [b"bbbb", b"cccccc"]  # as many as needed; alone over the bound, kept
    assert q.bytes == 50 and q.pop() == b"x" * 50 and q.bytes == 0


def test_token_bucket_rate_and_burst():
    b = TokenBucket(100.0, burst=10)
    assert sum(b.take(0.0) for _ in range(50)) == 10  # the burst, then nothing
    # one second later: 100 more tokens, capped at the burst
    assert sum(b.take(1.0) for _ in range(50)) == 10
    # steady arrivals at 1000/s for 2 s: about 100/s pass
    passed = sum(b.take(2.0 + i / 1000) for i in range(2000))
    assert 195 <= passed <= 215


@dataclass(frozen=True)
class _Event:
    exchange_id: str
    request: Request


def _event(i: int, method: str = "GET") -> _Event:
    req = Request(ts=1.0, end_ts=1.5, version="HTTP/1.1", headers=(), method=method, target=f"/{i}")
    return _Event(f"id{i}", req)


def test_admission_counts_every_outcome_and_tracks_admitted_ids():
    async def main():
        q: DropOldestQueue[Pending] = DropOldestQueue(2)

        def decide(ev):
            if ev.request.method != "GET":
                return None, (Outcome.SKIPPED, "unsafe_method")
            return ev.request.target, None

        adm = Admission(q, decide, clock=lambda: 100.0)
        assert adm.offer(_event(1, "POST")) is Outcome.SKIPPED
        for i in range(2, 6):
            assert adm.offer(_event(i)) is Outcome.QUEUED
        assert (
            adm.seen == 5
            and adm.counts[Outcome.QUEUED] == 4
            and adm.skip_reasons == {"unsafe_method": 1}
        )
        assert q.dropped == 2
        # ids 2 and 3 were dropped before their exchange came: no result will come for them
        assert [adm.take_admitted(f"id{i}") for i in range(1, 6)] == [
            False,
            False,
            False,
            True,
            True,
        ]
        assert adm.take_admitted("id5") is False  # once only
        item = q.pop()
        assert item.outgoing == "/4" and item.wire_ts == 1.5

        limited = Admission(
            DropOldestQueue(100), decide, rate_limit=TokenBucket(10, burst=3), clock=lambda: 5.0
        )
        outcomes = [limited.offer(_event(i)) for i in range(10)]
        assert outcomes.count(Outcome.QUEUED) == 3 and outcomes.count(Outcome.RATE_LIMITED) == 7

    asyncio.run(main())


def test_pump_keeps_the_concurrency_limit_against_a_real_server_and_drains():
    """The pump feeds replay's Sender (callback-driven) from the queue: never more than
    ``concurrency`` requests at the server at once, every result delivered, nothing left."""

    async def main():
        state = {"now": 0, "max": 0}

        async def handler(request):
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
            await asyncio.sleep(0.02)
            state["now"] -= 1
            return web.Response(text=request.path)

        app = web.Application()
        app.router.add_get("/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        target = Target.parse(f"http://127.0.0.1:{port}")
        sender = Sender(target, concurrency=3, per_connection=False, timeout=5)
        await sender.start()
        policy = Policy(target=target)
        results = []

        def submit(item, on_done):
            sender.submit(item.outgoing, scheduled=item.wire_ts, copy=0, on_result=on_done)

        pump = Pump(DropOldestQueue(1000), submit, results.append, concurrency=3)
        for i in range(30):
            ex = Exchange(
                id=f"id{i}",
                client="10.0.0.1:1",
                server="10.0.0.2:2",
                index=i,
                request=Request(
                    ts=1, end_ts=1, version="HTTP/1.1", headers=(), method="GET", target=f"/p{i}"
                ),
                response=None,
            )
            pump.offer(Pending(ex.id, policy.decide(ex), 1.0))
            assert pump.in_flight <= 3
        assert await pump.drain(timeout=10)
        sender.close()
        await runner.cleanup()
        assert sorted(r.response.body.decode() for r in results) == sorted(
            f"/p{i}" for i in range(30)
        )
        assert state["max"] == 3 and pump.sent == 30 and pump.abandoned == 0

    asyncio.run(main())


def test_pump_drain_timeout_abandons_and_counts():
    async def main():
        pending_callbacks = []

        def submit(item, on_done):  # a shadow that never answers
            pending_callbacks.append(on_done)

        pump = Pump(DropOldestQueue(100), submit, lambda r: None, concurrency=2)
        for i in range(10):
            pump.offer(Pending(f"id{i}", i, 0.0))
        assert pump.in_flight == 2 and len(pump.queue) == 8
        assert not await pump.drain(timeout=0.1)
        assert pump.abandoned == 10 and pump.in_flight == 0
        pending_callbacks[0]("late")  # a result after the end is ignored
        assert pump.sent == 0

    asyncio.run(main())
