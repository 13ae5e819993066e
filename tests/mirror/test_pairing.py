from shadowtap.mirror.pairing import Pairer
from shadowtap.records import Exchange, Request, Response, Result


def _ex(i: str) -> Exchange:
    req = Request(
        ts=1.0, end_ts=1.0, version="HTTP/1.1", headers=(("Host", "a"),), method="GET", target="/"
    )
    resp = Response(ts=1.1, end_ts=1.2, version="HTTP/1.1", headers=(), status=200, reason="OK")
    return Exchange(
        id=i, client="10.0.0.1:1000", server="10.0.0.2:80", index=0, request=req, response=resp
    )


def _res(i: str) -> Result:
    resp = Response(ts=2.0, end_ts=2.1, version="HTTP/1.1", headers=(), status=200, reason="OK")
    return Result(exchange_id=i, target="http://s/", scheduled=1.0, sent=1.001, response=resp)


def test_pairs_whichever_side_comes_first():
    p = Pairer()
    assert p.add_exchange(_ex("a"), 0.0) is None
    pair = p.add_result(_res("a"), 0.1)
    assert pair is not None and pair.exchange.id == "a" and pair.result.exchange_id == "a"
    assert p.add_result(_res("b"), 0.2) is None
    pair = p.add_exchange(_ex("b"), 0.3)
    assert pair is not None and pair.exchange.id == "b"
    assert len(p) == 0 and p.paired == 2


def test_capacity_evicts_oldest_and_counts_by_side():
    p = Pairer(capacity=2)
    p.add_exchange(_ex("a"), 0.0)
    p.add_result(_res("b"), 0.0)
    p.add_exchange(_ex("c"), 0.0)  # evicts "a" (an exchange)
    p.add_exchange(_ex("d"), 0.0)  # evicts "b" (a result)
    assert len(p) == 2
    assert (p.evicted_exchanges, p.evicted_results) == (1, 1)
    assert p.add_result(_res("a"), 0.0) is None  # "a" is gone: the result waits alone


def test_expire_by_age_then_flush():
    p = Pairer(ttl=5.0)
    p.add_exchange(_ex("old"), 0.0)
    p.add_exchange(_ex("new"), 4.0)
    gone = p.expire(6.0)
    assert [g.id for g in gone] == ["old"]
    assert [g.id for g in p.flush()] == ["new"]
    assert p.evicted_exchanges == 2 and len(p) == 0


def test_bytes_bound_evicts_oldest():
    big = Response(
        ts=1.1,
        end_ts=1.2,
        version="HTTP/1.1",
        headers=(),
        body=b"x" * 600,
        body_len=600,
        status=200,
        reason="OK",
    )
    p = Pairer(max_bytes=1000)
    p.add_result(Result(exchange_id="a", target="t", scheduled=1, sent=1, response=big), 0.0)
    p.add_result(Result(exchange_id="b", target="t", scheduled=1, sent=1, response=big), 0.0)
    assert len(p) == 1 and p.evicted_results == 1 and p.bytes == 600
    assert p.add_exchange(_ex("b"), 0.0) is not None and p.bytes == 0
