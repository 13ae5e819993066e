"""Replay's side of the broker: several processes share a run's stream as one group, each
captured connection's exchanges in one process and in order; a slow consumer holds its
partitions (nothing redelivered to the other, nothing lost)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from shadowtap.lake.nats import NatsSink
from shadowtap.records import Exchange, Request, Response
from tests.support.natsd import NatsServer

MEMBER = r"""
import json, sys, time
from shadowtap.lake.nats import GroupConsumer
url, out, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
c = GroupConsumer(url, "replayers", idle_timeout=4.0, expect_members=2, batch=16)
with open(out, "w") as f:
    for ex, host in c:
        f.write(json.dumps([ex.id, ex.client, ex.index, host]) + "\n")
        if delay:
            time.sleep(delay)  # a slow consumer
c.close()
"""


def _exchange(conn: int, i: int) -> Exchange:
    ts = 1764160000.0 + conn + i / 1000
    req = Request(
        ts=ts,
        end_ts=ts,
        version="1.1",
        headers=(("Host", "svc"),),
        method="GET",
        target=f"/c/{conn}/{i}",
    )
    resp = Response(ts=ts, end_ts=ts + 0.001, version="1.1", headers=(), status=200)
    return Exchange(
        id=f"c{conn:03d}-{i:04d}",
        client=f"10.0.0.{conn}:40000",
        server="10.0.1.1:80",
        index=i,
        request=req,
        response=resp,
    )


def test_two_replay_members_share_the_stream_per_connection_in_order(tmp_path) -> None:
    conns, per_conn = 24, 40
    with NatsServer(str(tmp_path / "js")) as srv:
        url = f"{srv.url}/fleet"
        sink = NatsSink(url, str(tmp_path / "spool"), host="agent-a")
        for i in range(per_conn):  # interleaved, as a capture sees concurrent connections
            for c in range(conns):
                sink.on_exchange(_exchange(c, i))
        sink.close()
        assert sink.acked == conns * per_conn
        outs = [tmp_path / "m1.jsonl", tmp_path / "m2.jsonl"]
        procs = [
            subprocess.Popen([sys.executable, "-c", MEMBER, url, str(out), delay])
            for out, delay in zip(outs, ("0", "0.002"))
        ]  # the second one slow
        for p in procs:
            assert p.wait(180) == 0
    got = [[json.loads(line) for line in out.read_text().splitlines()] for out in outs]
    ids = [r[0] for g in got for r in g]
    assert sorted(ids) == sorted(f"c{c:03d}-{i:04d}" for c in range(conns) for i in range(per_conn))
    assert len(ids) == len(set(ids))  # each once
    assert all(got)  # both members worked
    for g in got:
        assert {r[3] for r in g} == {"agent-a"}
    where = {}
    for k, g in enumerate(got):
        indices: dict[str, list[int]] = {}
        for _, client, index, _ in g:
            indices.setdefault(client, []).append(index)
            where.setdefault(client, set()).add(k)
        for client, seq in indices.items():
            assert seq == sorted(seq), client  # in capture order
    assert all(len(v) == 1 for v in where.values())  # one process per connection


def test_replay_reads_the_stream(tmp_path) -> None:
    """`shadowtap replay nats://.../SUBJECT?idle=2`: every exchange of the run's stream sent to a
    real HTTP server, one result each."""
    from tests.support.natsd import free_port

    port = free_port()
    web = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with NatsServer(str(tmp_path / "js")) as srv:
            sink = NatsSink(f"{srv.url}/r1", str(tmp_path / "spool"), host="a")
            for i in range(30):
                sink.on_exchange(_exchange(i % 3, i))
            sink.close()
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "shadowtap",
                    "replay",
                    f"{srv.url}/r1?idle=2",
                    "-t",
                    f"http://127.0.0.1:{port}",
                    "-o",
                    str(tmp_path / "res.jsonl"),
                    "--speed",
                    "max",
                ],
                check=False,
                capture_output=True,
                text=True,
                timeout=180,
            )
    finally:
        web.kill()
        web.wait()
    assert out.returncode == 0, out.stderr
    results = [json.loads(line) for line in (tmp_path / "res.jsonl").read_text().splitlines()]
    assert sorted(r["exchange_id"] for r in results) == sorted(
        _exchange(i % 3, i).id for i in range(30)
    )
    assert all(r["response"]["status"] == 404 for r in results)  # http.server answered each


def test_a_member_working_past_ack_wait_keeps_its_batch(tmp_path) -> None:
    """Messages are batches, so a fetch can take a member longer than ack_wait (here 2 s against
    ~5 s): each record comes once, in order, and the pass ends (idle_timeout after the last
    record; an empty fetch no longer restarts that clock)."""
    from shadowtap.lake.nats import GroupConsumer

    with NatsServer(str(tmp_path / "js")) as srv:
        url = f"{srv.url}/slow"
        sink = NatsSink(url, str(tmp_path / "spool"), host="a", partitions=1)
        for i in range(100):
            sink.on_exchange(_exchange(1, i))
        sink.close()
        consumer = GroupConsumer(url, "g", idle_timeout=4.0, ack_wait=2.0, partitions=1)
        ids = []
        for ex, _ in consumer:
            ids.append(ex.id)
            time.sleep(0.05)  # 100 records: ~5 s, past ack_wait
        consumer.close()
    assert ids == [f"c001-{i:04d}" for i in range(100)]
