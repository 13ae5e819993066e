"""The mirror on an HTTPS primary: `shadowtap mirror --tls` (the TLS capture source) sends the
plaintext requests to an HTTPS shadow, verified with --ca, and again with --insecure. Both sides
are real nginx servers over TLS with a certificate the test makes (openssl), on loopback."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys

import pytest

from tests.support.nginx import make_cert, start_nginx
from tests.support.prereq import require, require_root, require_tool
from tests.support.proc import Proc, text_of, wait_for


@pytest.fixture
def https_pair(tmp_path):
    require_root()
    try:
        import bcc  # noqa: F401
    except ImportError:
        require(False, "bcc (python3-bpfcc)")
    require_tool("openssl")
    require_tool("curl")
    make_cert(tmp_path)
    ports = random.sample(range(20000, 60000), 2)
    procs = []
    for name, port in zip(("primary", "shadow"), ports):
        (tmp_path / name).mkdir()
        procs.append(
            start_nginx(
                tmp_path / name,
                "127.0.0.1",
                port,
                cert=tmp_path / "cert.pem",
                key=tmp_path / "key.pem",
            )
        )
    yield tmp_path, ports[0], ports[1]
    for p in procs:
        p.stop()


@pytest.mark.root
@pytest.mark.parametrize("trust", ["ca", "insecure"])
def test_mirror_tls_primary_to_https_shadow(https_pair, trust):
    d, primary, shadow = https_pair
    run = d / f"run-{trust}"
    extra = ["--ca", str(d / "cert.pem")] if trust == "ca" else ["--insecure"]
    argv = [
        sys.executable,
        "-m",
        "shadowtap",
        "mirror",
        "--tls",
        "-p",
        str(primary),
        "--shadow",
        f"https://127.0.0.1:{shadow}",
        "--run-dir",
        str(run),
        "--no-dashboard",
        "--log-interval",
        "1",
        *extra,
    ]
    proc = Proc(argv, d, f"mirror-{trust}", env=dict(os.environ))
    wait_for(lambda: "mirror: capturing" in proc.err(), 180, "the mirror to attach", proc=proc.p)
    if trust == "insecure":
        assert "NOT verified" in proc.err()
    urls = [f"https://127.0.0.1:{primary}/m{i}" for i in range(6)]
    subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "--cacert", str(d / "cert.pem"), *urls], check=True
    )
    wait_for(lambda: "pairs=6" in proc.err(), 60, "six pairs", proc=proc.p)
    assert proc.stop(signal.SIGTERM) == 0
    s = json.loads((run / "mirror.json").read_text())
    assert s["seen"] == s["queued"] == s["pairs"] == 6 and s["verdict"] == "pass"
    results = [
        json.loads(line) for line in text_of(run / "results.jsonl").splitlines() if line.strip()
    ]
    assert sorted(r["target"].rsplit("/", 1)[1] for r in results) == [f"m{i}" for i in range(6)]
    assert all(r["error"] is None and r["response"]["status"] == 200 for r in results)
    assert any(r.get("tls_handshake_ms") for r in results)  # the shadow connection's handshake
