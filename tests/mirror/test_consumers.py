"""mirror/consumers.py: the one hook interface of the mirror's consumers."""

import asyncio

import pytest

from shadowtap.mirror.consumers import Consumers, Counters, Pairing
from shadowtap.mirror.pairing import Pairer
from shadowtap.records import Exchange, Request, Response, Result
from shadowtap.redact import Redactor


def _exchange(xid: str = "a1", status: int = 200) -> Exchange:
    req = Request(ts=1.0, end_ts=1.0, version="HTTP/1.1", headers=(("Authorization", "Bearer x"),))
    resp = Response(
        ts=1.001, end_ts=1.002, version="HTTP/1.1", headers=(), status=status, reason="OK"
    )
    return Exchange(
        id=xid,
        client="10.0.0.1:5000",
        server="10.0.0.2:80",
        index=0,
        request=req,
        response=resp,
        total_ms=2.0,
    )


def _result(xid: str = "a1") -> Result:
    resp = Response(
        ts=2.0, end_ts=2.001, version="HTTP/1.1", headers=(("Set-Cookie", "s=1"),), status=200
    )
    return Result(
        exchange_id=xid,
        target="http://shadow/",
        scheduled=1.0,
        sent=1.001,
        response=resp,
        total_ms=1.0,
    )


class Sink:
    """Implements three hooks only (the lake's sinks' shape): the others are never looked for."""

    def __init__(self) -> None:
        self.pairs: list = []
        self.exchanges: list = []
        self.closed = False

    def on_exchange(self, ex) -> None:
        self.exchanges.append(ex.id)

    def on_pair(self, pair) -> None:
        self.pairs.append(pair)

    async def close(self) -> None:
        self.closed = True


def test_a_sink_gets_redacted_pairs_and_is_closed() -> None:
    counters, sink = Counters(), Sink()
    pairing = Pairing(Pairer(), emit=lambda _p: None)
    hub = Consumers([counters, pairing, sink], Redactor(b"k" * 32))
    pairing.emit = hub.pair
    asyncio.run(hub.start())
    hub.result(_result("a1"))  # the shadow first: held
    hub.exchange(_exchange("a1", 503), admitted=True)
    hub.exchange(_exchange("b2"), admitted=False)  # counted, never paired
    asyncio.run(hub.close())
    assert sink.closed
    assert [p.exchange.id for p in sink.pairs] == ["a1"]
    assert sink.exchanges == ["a1"]  # admitted ones only
    pair = sink.pairs[0]
    assert pair.exchange.request.header("authorization").startswith("redacted:")
    assert pair.result.response.header("set-cookie").startswith("redacted:")
    assert (counters.exchanges, counters.results, counters.primary_5xx) == (2, 1, 1)


def test_a_misspelt_hook_is_refused() -> None:
    class Typo:
        def on_pairs(self, pair) -> None: ...

    with pytest.raises(TypeError, match="on_pairs is not a mirror hook"):
        Consumers([Typo()])


def test_close_runs_every_hook_and_says_what_failed() -> None:
    order = []

    class Fails:
        def close(self) -> None:
            order.append("fails")
            raise OSError("disk full")

    class After:
        def close(self) -> None:
            order.append("after")

    failed = asyncio.run(Consumers([Fails(), After()]).close())
    assert order == ["fails", "after"]
    assert failed == ["closing Fails failed: OSError: disk full"]


def test_run_directory_writes_pairs_in_batches_and_everything_by_close(tmp_path) -> None:
    import orjson

    from shadowtap.mirror.consumers import RunDirectory
    from shadowtap.mirror.pairing import Pair

    run = RunDirectory(str(tmp_path))
    run.start()
    for i in range(5):
        run.on_pair(Pair(_exchange(f"x{i}"), _result(f"x{i}")))
    run.tick(0.0)  # a tick writes what was gathered (the writer flushes within a second)
    run.on_pair(Pair(_exchange("x5"), _result("x5")))
    run.close()
    exchanges = [orjson.loads(x) for x in (tmp_path / "exchanges.jsonl").read_bytes().splitlines()]
    results = [orjson.loads(x) for x in (tmp_path / "results.jsonl").read_bytes().splitlines()]
    assert [e["id"] for e in exchanges] == [f"x{i}" for i in range(6)]
    assert [r["exchange_id"] for r in results] == [f"x{i}" for i in range(6)]
    assert exchanges[0] == _exchange("x0").to_json()
