"""`shadowtap mirror --sink nats://... --parquet DIR`: the live mirror (namespaces, real servers,
libpcap) publishes its exchanges and results to a real JetStream in the primary's namespace and
writes its pairs to a Parquet lake; both hold what the run directory holds."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from shadowtap.lake.writer import read_lake
from tests.mirror.test_run import PY, _lines, _mirrorable, lab  # noqa: F401 - the fixture
from tests.support.natsd import free_port
from tests.support.prereq import require_tool

DUMP = r"""
import asyncio, json, sys, socket, time
import nats
from shadowtap.lake.nats import records_of
port, subject, stream = int(sys.argv[1]), sys.argv[2], sys.argv[3]
async def main():
    nc = await nats.connect(f"nats://127.0.0.1:{port}")
    js = nc.jetstream()
    info = await js.stream_info(stream)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        m = await js.get_msg(stream, seq)
        out.extend([m.subject, dict(m.headers or {}), json.loads(r)] for r in records_of(m.data))
    await nc.close()
    print(json.dumps(out))
asyncio.run(main())
"""
WAIT = r"""
import socket, sys, time
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.2).close(); sys.exit(0)
    except OSError:
        time.sleep(0.05)
sys.exit(1)
"""


def test_mirror_publishes_and_writes_the_lake(lab, tmp_path) -> None:  # noqa: F811
    nats_server = require_tool("nats-server")
    port = free_port()
    broker = lab.primary.popen(
        [nats_server, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(tmp_path / "js")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    lab.procs.append(broker)  # ended by PID with the lab
    lab.primary.run([PY, "-c", WAIT, str(port)], timeout=30)
    lab.serve(lab.primary, "v1", "primary")
    lab.serve(lab.shadow, "v2", "shadow")
    run, lake = tmp_path / "run", tmp_path / "lake"
    proc = lab.mirror(
        "pcap",
        run,
        "--sink",
        f"nats://127.0.0.1:{port}/mirror1",
        "--sink-spool",
        str(tmp_path / "spool"),
        "--parquet",
        str(lake),
        "--allow",
        "POST /v1/predict",
    )
    rows = lab.drive(60, "client")
    try:
        lab.wait_metric("shadowtap_mirror_pairs_total", len(_mirrorable(rows)))
    except AssertionError as exc:
        raise AssertionError((tmp_path / "mirror-run.err").read_text()[-3000:]) from exc
    rc, err = lab.stop(proc, signal.SIGINT)
    assert rc in (0, 10, 11), err
    exchanges = {e["id"]: e for e in _lines(run / "exchanges.jsonl")}
    results = _lines(run / "results.jsonl")
    assert exchanges and len(results) == len(exchanges)
    # the lake: the run's pairs, every one
    pairs = list(read_lake(str(lake)))
    assert sorted(ex.id for ex, _, _ in pairs) == sorted(exchanges)
    assert {ex.id: ex.to_json() for ex, _, _ in pairs} == exchanges
    # the broker: every exchange admitted and every result, with the agent's host name
    dump = lab.primary.run(
        [sys.executable, "-c", DUMP, str(port), "mirror1", "SHADOWTAP_MIRROR1"], timeout=60
    )
    msgs = json.loads(dump.stdout)
    xs = {m[2]["id"]: m[2] for m in msgs if m[1]["Shadowtap-Kind"] == "x"}
    rs = [m[2] for m in msgs if m[1]["Shadowtap-Kind"] == "r"]
    assert set(exchanges) <= set(xs) and all(xs[i] == exchanges[i] for i in exchanges)
    assert sorted((r["exchange_id"], r["copy"]) for r in rs) == sorted(
        (r["exchange_id"], r["copy"]) for r in results
    )
    log = (tmp_path / "mirror-run.err").read_text()
    assert f"{len(xs) + len(rs)} acknowledged, 0 dropped, 0 spooled" in log, log[-3000:]
