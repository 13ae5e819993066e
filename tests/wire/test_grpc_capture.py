"""gRPC captured live on loopback: a grpcio server and client (the four call kinds, metadata, an
error status), recorded by tcpdump and by shadowtap's own live capture (eBPF and libpcap
backends); ``shadowtap extract`` of tcpdump's file and the agent's live output give the same
exchanges, and those equal what the client sent and received."""

from __future__ import annotations

import json
import os
import random
import sys

import pytest

import tests.support.live_lab as lab
from shadowtap.records import Exchange


@pytest.fixture
def key_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SHADOWTAP_KEY_FILE", str(tmp_path / "redact.key"))


def calls(objs):
    return sorted(
        (o for o in objs if o.get("grpc")), key=lambda o: (o["conn"]["client"], o["index"])
    )


@pytest.mark.root
@pytest.mark.parametrize("backend", ["ebpf", "pcap"])
def test_grpc_captured_live_equals_tcpdump_and_the_client(topology, tmp_path, key_file, backend):
    lab.require_tool("tcpdump")
    topo = topology()
    host = topo.host("lo")
    port = random.randrange(20000, 60000)
    py = [sys.executable, "-m", "tests.support.grpc_lab"]
    server = lab.Proc(
        [*py, "serve", str(tmp_path), str(port)],
        tmp_path,
        "grpc-server",
        ns=host.ns,
        env=dict(os.environ, PYTHONPATH=str(lab.REPO)),
    )
    try:
        lab.wait_for(lambda: "serving" in server.out(), 60, "grpc server", proc=server.p)
        agent = lab.start_agent("lo", port, backend, tmp_path, ns=host.ns)
        tcpdump = lab.start_tcpdump("lo", port, tmp_path, host.ns)
        try:
            host.run(
                [*py, "traffic", str(tmp_path), f"127.0.0.1:{port}", str(tmp_path / "got.json")],
                timeout=120,
            )
        finally:
            agent.stop()
            tcpdump.stop()
    finally:
        server.stop()
    got = json.loads((tmp_path / "got.json").read_text())
    live = calls(lab.loads(lab.jsonl_lines(tmp_path / "agent.jsonl")))
    offline = calls(lab.extract_pcap([tmp_path / "tcpdump.pcap"], port))
    assert len(live) == len(offline) == 13, agent.err()[-2000:]
    # chunks hold packet times (the agent's and tcpdump's clocks differ): compared apart.
    assert lab.keyed([{k: v for k, v in o.items() if k != "chunks"} for o in live]) == lab.keyed(
        [{k: v for k, v in o.items() if k != "chunks"} for o in offline]
    )
    assert [[c[0] for c in o.get("chunks", [])] for o in live] == [
        [c[0] for c in o.get("chunks", [])] for o in offline
    ]
    exs = [Exchange.from_json(o) for o in offline]
    unary = [e for e in exs if e.grpc.method == "Infer"]
    for (req, resp), ex in zip(got["unary"], unary[:8], strict=True):
        assert ex.grpc.request_messages[0].data.hex() == req
        assert ex.grpc.response_messages[0].data.hex() == resp
        assert ex.grpc.status == 0 and ("x-tenant", "acme") in ex.request.headers
        assert ex.request.version == "HTTP/2" and ex.h2.outcome == "complete"
    assert [unary[9].grpc.status, unary[9].grpc.message] == got["error"]
    [bidi] = [e for e in exs if e.grpc.method == "InferBidi"]
    assert [m.data.hex() for m in bidi.grpc.response_messages] == got["bidi"]
    assert all(o["schema"] == 2 for o in live)
