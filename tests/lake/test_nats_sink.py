"""The agent's JetStream sink against a real nats-server: acknowledged records, host names in
headers, a broker killed and restarted mid-run (nothing acknowledged lost, the spool resent in
order), the broker away from the start, drop-oldest past the spool's bound, every drop counted."""

from __future__ import annotations

import asyncio
import random
import time

import orjson
import pytest

from shadowtap.lake.nats import NatsSink, parse_sink, records_of, stream_name
from shadowtap.lake.spool import DiskSpool
from tests.support.natsd import NatsServer, free_port
from tests.support.pairs import make_pair

SUBJECT = "run1"


def _exchanges(n: int, start: int = 0):  # noqa: ANN202
    rng = random.Random(start)
    return [make_pair(i, rng)[0] for i in range(start, start + n)]


async def _stream_records(url: str) -> list[tuple[str, dict, dict]]:
    """Every record of the run's stream, in stream order: (subject, its message's headers,
    record)."""
    out = []
    for subject, heads, data in await _messages(url):
        lines = records_of(data)
        assert heads["Shadowtap-Records"] == str(len(lines))
        out.extend((subject, heads, orjson.loads(line)) for line in lines)
    return out


async def _messages(url: str) -> list[tuple[str, dict, bytes]]:
    import nats

    nc = await nats.connect(url)
    js = nc.jetstream()
    info = await js.stream_info(stream_name(SUBJECT))
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(stream_name(SUBJECT), seq)
        out.append((msg.subject, dict(msg.headers or {}), msg.data))
    await nc.close()
    return out


def _records(url: str) -> list[tuple[str, dict, dict]]:
    return asyncio.run(_stream_records(url))


def _in_order_per_subject(records: list[tuple[str, dict, dict]]) -> bool:
    last: dict[str, int] = {}
    for subject, _, rec in records:
        i = int(rec["id"][2:])
        if i <= last.get(subject, -1):
            return False
        last[subject] = i
    return True


def test_parse_sink() -> None:
    u = parse_sink("nats://10.0.0.1:4222/shadow.run-7")
    assert (u.server, u.subject, u.stream) == (
        "nats://10.0.0.1:4222",
        "shadow.run-7",
        "SHADOWTAP_SHADOW_RUN_7",
    )
    with pytest.raises(Exception, match="sink"):
        parse_sink("http://x/y")


def test_publishes_with_acks_and_host(tmp_path) -> None:
    with NatsServer(str(tmp_path / "js")) as srv:
        sink = NatsSink(f"{srv.url}/{SUBJECT}", str(tmp_path / "spool"), host="agent-7")
        for ex in _exchanges(3000):
            sink.on_exchange(ex)
        sink.close()
        assert sink.acked == 3000 and sink.dropped == 0 and sink.waiting == 0
        recs = _records(srv.url)
    assert sorted(r[2]["id"] for r in recs) == sorted(ex.id for ex in _exchanges(3000))
    assert all(h["Shadowtap-Host"] == "agent-7" and h["Shadowtap-Kind"] == "x" for _, h, _ in recs)
    assert _in_order_per_subject(recs)


def test_broker_killed_and_restarted_mid_run(tmp_path) -> None:
    port = free_port()
    srv = NatsServer(str(tmp_path / "js"), port).start()
    sink = NatsSink(f"{srv.url}/{SUBJECT}", str(tmp_path / "spool"), host="a1")
    try:
        first = _exchanges(2000)
        for ex in first:
            sink.on_exchange(ex)
        for _ in range(400):  # until some of it is acknowledged (bounded: 20 s)
            if sink.acked >= 500:
                break
            time.sleep(0.05)
        acked_before = sink.acked
        assert acked_before >= 500
        srv.kill()  # mid-run
        for ex in _exchanges(3000, start=2000):
            sink.on_exchange(ex)
        srv = NatsServer(str(tmp_path / "js"), port).start()  # same store, same port
        sink.close()  # drains: reconnects, resends the spool in order
    finally:
        srv.kill()
    assert sink.dropped == 0 and sink.waiting == 0
    srv = NatsServer(str(tmp_path / "js"), port).start()
    try:
        recs = _records(srv.url)
    finally:
        srv.kill()
    ids = [r[2]["id"] for r in recs]
    assert len(ids) == len(set(ids)) == 5000  # nothing lost, no duplicate stored (Nats-Msg-Id)
    assert _in_order_per_subject(recs)


def test_broker_away_from_the_start(tmp_path) -> None:
    port = free_port()
    sink = NatsSink(
        f"nats://127.0.0.1:{port}/{SUBJECT}", str(tmp_path / "spool"), host="a1", drain_timeout=30
    )
    for ex in _exchanges(1000):
        sink.on_exchange(ex)
    with NatsServer(str(tmp_path / "js"), port):
        sink.close()
        assert sink.acked == 1000 and sink.waiting == 0
        assert len(_records(f"nats://127.0.0.1:{port}")) == 1000


def test_spool_drops_oldest_past_its_bound_and_counts(tmp_path) -> None:
    spool = DiskSpool(str(tmp_path / "s"), max_bytes=50_000, segment_bytes=10_000)
    for i in range(1000):
        spool.append(0, f"id{i}", b"x" * 100)
    assert spool.dropped > 0 and spool.records + spool.dropped == 1000
    assert spool.size <= 50_000 + 10_000
    first = spool.peek(1)[0]
    assert first[1] == f"id{spool.dropped}"  # the oldest kept is the one after the last dropped
    spool.close()
    again = DiskSpool(str(tmp_path / "s"))  # a restarted agent finds what was waiting
    assert again.records == 1000 - spool.dropped
    got = []
    while again:
        batch = again.peek(64)
        got += [r[1] for r in batch]
        again.ack(batch)
    assert got == [f"id{i}" for i in range(spool.dropped, 1000)]


def test_batches_keep_each_record_and_its_order(tmp_path) -> None:
    """Many records to one partition travel as a few messages; each record is whole, in order,
    and a message's id is its first record's and its count (the consumer contract)."""
    exchanges = _exchanges(1000)
    with NatsServer(str(tmp_path / "js")) as srv:
        sink = NatsSink(f"{srv.url}/{SUBJECT}", str(tmp_path / "spool"), host="h", partitions=1)
        for ex in exchanges:
            sink.on_exchange(ex)
        sink.close()
        assert sink.acked == 1000
        msgs = asyncio.run(_messages(srv.url))
    assert 4 <= len(msgs) < 1000  # batched: at most 256 a message
    got = []
    for subject, heads, data in msgs:
        recs = [orjson.loads(line) for line in records_of(data)]
        assert subject == f"{SUBJECT}.x.0" and heads["Shadowtap-Records"] == str(len(recs))
        assert heads["Nats-Msg-Id"] == f"x-{recs[0]['id']}+{len(recs)}"
        got += recs
    assert got == [ex.to_json() for ex in exchanges]  # every field, in capture order


def test_spool_counts_batches_by_their_records(tmp_path) -> None:
    from shadowtap.lake.nats import batch_weight

    spool = DiskSpool(
        str(tmp_path / "s"), max_bytes=30_000, segment_bytes=10_000, weigh=batch_weight
    )
    for i in range(100):
        spool.append(0, f"0:10:x-{i}+10", b"y" * 1000)
    assert spool.dropped % 10 == 0 and spool.dropped > 0
    assert spool.weight == 10 * spool.records and spool.weight + spool.dropped == 1000
    spool.append(0, "3:x-old", b"{}")  # a spool of the one-record version: a batch of one
    assert spool.weight == 10 * (spool.records - 1) + 1
    batch = spool.peek(2)
    spool.ack(batch[:1])  # one batch acknowledged
    waiting = spool.weight
    spool.close()
    again = DiskSpool(str(tmp_path / "s"), weigh=batch_weight)  # a restarted agent's count
    assert again.weight == waiting and again.records == spool.records
