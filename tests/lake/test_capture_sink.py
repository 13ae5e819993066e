"""`shadowtap capture --sink nats://...`: a real capture (libpcap on loopback, nginx) publishes
every exchange it writes to a real JetStream, with the agent's host name."""

from __future__ import annotations

import asyncio
import random
import signal
import socket
import subprocess

import pytest

import tests.support.live_lab as lab
from tests.lake.test_nats_sink import _stream_records
from tests.support.natsd import NatsServer


@pytest.mark.root
def test_capture_publishes_what_it_writes(tmp_path, monkeypatch) -> None:
    lab.require_root()
    lab.require_tool("nginx")
    monkeypatch.setenv("SHADOWTAP_KEY_FILE", str(tmp_path / "redact.key"))
    port = random.randrange(20000, 60000)
    nginx = lab.start_nginx(tmp_path, "127.0.0.1", port, None)
    url = f"http://127.0.0.1:{port}"
    with NatsServer(str(tmp_path / "js")) as srv:
        try:
            agent = lab.start_agent(
                "lo",
                port,
                "pcap",
                tmp_path,
                "--sink",
                f"{srv.url}/run1",
                "--sink-spool",
                str(tmp_path / "sink"),
                ns=None,
            )
            for i in range(40):
                subprocess.run(
                    ["curl", "-sS", "-o", "/dev/null", f"{url}/item/{i}"], check=True, timeout=10
                )
            lab.wait_for(
                lambda: lab.text_of(tmp_path / "agent.jsonl").count("\n") >= 40,
                60,
                "the exchanges",
                proc=agent.p,
            )
            agent.p.send_signal(signal.SIGTERM)
            assert agent.p.wait(120) == 0, agent.err()
        finally:
            nginx.stop()
        recs = asyncio.run(_stream_records(srv.url))
    written = lab.loads(lab.jsonl_lines(tmp_path / "agent.jsonl"))
    assert sorted(r[2]["id"] for r in recs) == sorted(w["id"] for w in written)
    assert [r[2] for r in recs if r[2]["id"] == written[5]["id"]] == [written[5]]  # same record
    assert {r[1]["Shadowtap-Host"] for r in recs} == {socket.gethostname()}
    assert f"{len(written)} acknowledged, 0 dropped, 0 spooled" in agent.err(), agent.err()
