"""The mirror on an h2c primary: nghttp's requests, multiplexed on one HTTP/2 connection to an nginx
primary (``listen ... http2``), captured off loopback (libpcap) and sent to an nginx h2c shadow
over HTTP/2 (replay/h2_client.py through the Router, as replay does); the shadow's access log says
they arrived as HTTP/2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.support.nginx import start_nginx
from tests.support.prereq import require_root, require_tool
from tests.support.proc import Proc, text_of, wait_for

from ..replay.conftest import free_port

LOG = "log_format h2 '$server_protocol $uri';"
LOCATIONS = 'access_log {dir}/access.log h2; location / { return 200 "hello $uri\\n"; }'


@pytest.mark.root
def test_mirror_sends_http2_requests_over_http2(tmp_path):
    require_root()
    require_tool("nghttp")
    ports = {"primary": free_port(), "shadow": free_port()}
    servers = []
    for name, port in ports.items():
        (tmp_path / name).mkdir()
        servers.append(
            start_nginx(
                tmp_path / name, "127.0.0.1", port, locations=LOCATIONS, http_extra=LOG, http2=True
            )
        )
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "shadowtap", "mirror", "--iface", "lo", "--backend", "pcap"]
    argv += ["-p", str(ports["primary"]), "--shadow", f"http://127.0.0.1:{ports['shadow']}"]
    argv += ["--run-dir", str(run), "--no-dashboard", "--log-interval", "1"]
    proc = Proc(argv, tmp_path, "mirror", env=dict(os.environ))
    try:
        wait_for(
            lambda: "mirror: capturing" in proc.err(), 180, "the mirror to attach", proc=proc.p
        )
        urls = [f"http://127.0.0.1:{ports['primary']}/m{i}" for i in range(4)]
        subprocess.run(["nghttp", "-n", *urls], check=True, timeout=30)
        wait_for(lambda: "pairs=4" in proc.err(), 60, "four pairs", proc=proc.p)
        assert proc.stop(signal.SIGTERM) == 0
    finally:
        if proc.p.poll() is None:
            proc.stop(signal.SIGKILL)
        for s in servers:
            s.stop()
    results = [json.loads(x) for x in text_of(run / "results.jsonl").splitlines() if x.strip()]
    assert sorted(r["target"].rsplit("/", 1)[1] for r in results) == [f"m{i}" for i in range(4)]
    for r in results:
        assert r["error"] is None and r["response"]["status"] == 200
        assert r["response"]["version"] == "HTTP/2"
    shadow_log = (tmp_path / "shadow" / "access.log").read_text().split()
    assert sorted(zip(shadow_log[::2], shadow_log[1::2])) == [
        ("HTTP/2.0", f"/m{i}") for i in range(4)
    ]
    assert json.loads((run / "mirror.json").read_text())["verdict"] == "pass"
