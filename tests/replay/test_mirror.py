"""replay/mirror.py: the bounded queue, the token bucket, admission and the workers, with a real
producer thread and a real HTTP server on loopback."""

import asyncio
import threading
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from replay.mirror import Admission, DropOldestQueue, Outcome, Pending, TokenBucket, Workers
from shadowtap.records import Request


def test_drop_oldest_keeps_the_newest_and_counts():
    async def main():
        q: DropOldestQueue[int] = DropOldestQueue(3, asyncio.get_running_loop())
        dropped = [q.put(i) for i in range(10)]
        assert dropped == [None, None, None, 0, 1, 2, 3, 4, 5, 6]
        assert q.dropped == 7 and len(q) == 3
        assert [await q.get() for _ in range(3)] == [7, 8, 9]
        q.close()
        assert await q.get() is None

    asyncio.run(main())


def test_producer_thread_never_blocks_and_nothing_is_lost_or_duplicated():
    """A thread puts 50k items while the loop consumes slowly: the producer finishes without
    waiting, and what was consumed plus what was dropped is exactly what was put."""
    n, cap = 50_000, 100

    async def main():
        loop = asyncio.get_running_loop()
        q: DropOldestQueue[int] = DropOldestQueue(cap, loop)
        got: list[int] = []
        done = threading.Event()

        def produce():
            for i in range(n):
                q.put(i)
                assert len(q) <= cap
            done.set()

        async def consume():
            while True:
                item = await q.get()
                if item is None:
                    return
                got.append(item)
                if len(got) % 100 == 0:
                    await asyncio.sleep(0.001)  # a slow consumer

        task = asyncio.ensure_future(consume())
        t = threading.Thread(target=produce)
        t.start()
        while not done.is_set():
            await asyncio.sleep(0.005)
        t.join()
        q.close()
        await task
        assert len(got) + q.dropped == n
        assert got == sorted(got) and len(set(got)) == len(got)  # FIFO, no duplicates
        assert got[-1] == n - 1  # the newest always survives
        assert q.dropped > 0

    asyncio.run(main())


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
        q: DropOldestQueue[Pending] = DropOldestQueue(2, asyncio.get_running_loop())

        def decide(ev):
            if ev.request.method != "GET":
                return None, (Outcome.SKIPPED, "unsafe_method")
            return ev.request.target, None

        adm = Admission(q, decide, clock=lambda: 100.0)
        assert adm.offer(_event(1, "POST")) is Outcome.SKIPPED
        for i in range(2, 6):
            assert adm.offer(_event(i)) is Outcome.QUEUED
        assert adm.seen == 5 and adm.counts[Outcome.QUEUED] == 4 and adm.skip_reasons == {"unsafe_method": 1}
        assert q.dropped == 2
        # ids 2 and 3 were dropped before their exchange came: no result will come for them
        assert [adm.take_admitted(f"id{i}") for i in range(1, 6)] == [False, False, False, True, True]
        assert adm.take_admitted("id5") is False  # once only
        item = await q.get()
        assert item.outgoing == "/4" and item.wire_ts == 1.5 and item.admitted == 100.0

        limited = Admission(DropOldestQueue(100, asyncio.get_running_loop()), decide,
                            rate_limit=TokenBucket(10, burst=3), clock=lambda: 5.0)
        outcomes = [limited.offer(_event(i)) for i in range(10)]
        assert outcomes.count(Outcome.QUEUED) == 3 and outcomes.count(Outcome.RATE_LIMITED) == 7

    asyncio.run(main())


def test_workers_respect_the_concurrency_limit_against_a_real_server():
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
        results: list[str] = []
        async with aiohttp.ClientSession() as session:

            async def send(path, scheduled):
                async with session.get(f"http://127.0.0.1:{port}{path}") as r:
                    return await r.text()

            q: DropOldestQueue[Pending] = DropOldestQueue(1000, asyncio.get_running_loop())
            w = Workers(q, send, results.append, concurrency=3)
            w.start()
            for i in range(30):
                q.put(Pending(f"id{i}", f"/p{i}", 0.0, 0.0))
            assert await w.drain(timeout=10)
        await runner.cleanup()
        assert sorted(results) == sorted(f"/p{i}" for i in range(30))
        assert state["max"] == 3 and w.sent == 30 and w.in_flight == 0

    asyncio.run(main())


def test_workers_stop_discards_queue_and_cancels_in_flight():
    async def main():
        started = asyncio.Event()

        async def send(outgoing, scheduled):
            started.set()
            await asyncio.sleep(3600)

        q: DropOldestQueue[Pending] = DropOldestQueue(100, asyncio.get_running_loop())
        w = Workers(q, send, lambda r: None, concurrency=2)
        w.start()
        for i in range(10):
            q.put(Pending(f"id{i}", i, 0.0, 0.0))
        await started.wait()
        assert not await asyncio.wait_for(w.drain(timeout=0.2), 5)  # in flight never finishes
        w2 = Workers(DropOldestQueue(100, asyncio.get_running_loop()), send, lambda r: None, concurrency=1)
        w2.start()
        for i in range(5):
            w2.queue.put(Pending(f"id{i}", i, 0.0, 0.0))
        await asyncio.sleep(0.01)
        assert await asyncio.wait_for(w2.stop(), 5) == 5  # one in flight, four queued

    asyncio.run(main())
