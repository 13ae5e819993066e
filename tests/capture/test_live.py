"""Live capture end to end: a real nginx in one namespace, real clients (curl, a Python client, hey)
in another, `shadowtap capture` on the server's veth with each backend while tcpdump records the
same traffic at the same time.

Asserted: the exchanges captured live equal (all but timestamps) `extract` of tcpdump's pcap; the
JSONL written live is byte for byte `extract` of the pcap written by the same run; files are 0600;
the hooks are gone afterwards. Loopback too (every packet passes both TC hooks there).
"""

from __future__ import annotations

import contextlib
import random
import stat
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import tests.support.live_lab as lab
from tests.support.proc import Proc

PY_CLIENT = r"""
import http.client, sys
addr, port = sys.argv[1], int(sys.argv[2])
c = http.client.HTTPConnection(addr, port, timeout=10)
for i in range(8):
    auth = {"Authorization": f"Bearer token-{i}", "X-Seq": str(i)}
    c.request("GET", f"/py/{i}?q={i}", headers=auth)
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
def chunks():
    for i in range(5):
        yield (b"chunk-%d " % i) * 300
c.request("POST", "/post/chunked", body=chunks(), headers={"Content-Type": "text/plain"})
r = c.getresponse(); r.read(); assert r.status == 201, r.status
c.request("GET", "/big")
r = c.getresponse(); body = r.read(); assert len(body) > 300000, len(body)
c.close()
"""
PY_REQUESTS = 10
HEY_REQUESTS = 160  # a multiple of -c 4: hey sends n/c per worker


@pytest.fixture
def key_file(tmp_path, monkeypatch):
    # The agent (a subprocess) and this process's `extract` must redact with the same key.
    monkeypatch.setenv("SHADOWTAP_KEY_FILE", str(tmp_path / "redact.key"))


def drive(run, addr: str, port: int, workdir: Path) -> tuple[int, str]:
    """Real clients against nginx; returns (requests made, the marker path sent last)."""
    base = f"http://{addr}:{port}"
    n = 0
    # curl: keep-alive over three URLs, secrets in headers, a 200 KB upload, a 330 KB download.
    run(
        [
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-H",
            "Authorization: Bearer abc",
            "-H",
            "Cookie: sid=42",
            f"{base}/a",
            f"{base}/b?x=1",
            f"{base}/c",
        ]
    )
    n += 3
    upload = workdir / "upload.bin"
    upload.write_bytes(bytes(random.Random(7).randrange(256) for _ in range(200_000)))
    run(["curl", "-sS", "-o", "/dev/null", "--data-binary", f"@{upload}", f"{base}/post/binary"])
    run(["curl", "-sS", "-o", "/dev/null", f"{base}/big"])
    n += 2
    script = workdir / "client.py"
    script.write_text(PY_CLIENT)
    run([sys.executable, str(script), addr, str(port)])
    n += PY_REQUESTS
    hey = lab.require_tool("hey")
    run([hey, "-n", str(HEY_REQUESTS), "-c", "4", f"{base}/hey"])
    n += HEY_REQUESTS
    marker = f"/marker-{uuid.uuid4().hex}"
    run(["curl", "-sS", "-o", "/dev/null", f"{base}{marker}"])
    return n + 1, marker


def check_run(
    workdir: Path, agent, tcpdump, port: int, expected: int, marker: str, iface: str, ns: str
):
    jsonl = workdir / "agent.jsonl"
    # Wait (bounded) until both recorders hold the last exchange: the agent flushes every second.
    lab.wait_for(
        lambda: marker in lab.text_of(jsonl),
        30,
        "the marker exchange in the agent's JSONL",
        proc=agent.p,
    )
    lab.wait_for(
        lambda: marker.encode() in (workdir / "tcpdump.pcap").read_bytes(),
        30,
        "the marker request in tcpdump's pcap",
        proc=tcpdump.p,
    )
    assert agent.stop() == 0, agent.err()
    assert tcpdump.stop() == 0, tcpdump.err()

    live = lab.jsonl_lines(jsonl)
    # 1. byte for byte what `extract` gives of the pcap this run wrote
    again = workdir / "extract.jsonl"
    lab.Proc(
        [
            sys.executable,
            "-m",
            "shadowtap",
            "extract",
            str(workdir / "agent.pcap"),
            "-p",
            str(port),
            "-o",
            str(again),
        ],
        workdir,
        "extract",
    ).p.wait(120)
    assert again.read_bytes() == jsonl.read_bytes()
    # 2. what tcpdump saw at the same time gives the same exchanges, all but timestamps
    theirs = lab.extract_pcap([workdir / "tcpdump.pcap"], port)
    ours = lab.loads(live)
    assert len(ours) == expected, agent.err()
    assert len(theirs) == expected
    assert lab.keyed(ours) == lab.keyed(theirs)
    # secrets redacted in the exchanges file; the pcap is raw
    text = jsonl.read_text()
    assert "Bearer abc" not in text and "sid=42" not in text and "s3cret" not in text
    assert "redacted:" in text
    assert b"Bearer abc" in (workdir / "agent.pcap").read_bytes()
    assert not any(o["anomalies"] for o in ours), [o["anomalies"] for o in ours if o["anomalies"]]
    # private files, readable by tcpdump and tshark
    for name in ("agent.jsonl", "agent.pcap"):
        assert stat.S_IMODE((workdir / name).stat().st_mode) == 0o600
    tshark = lab.require_tool("tshark")
    out = lab.Proc(
        [
            tshark,
            "-r",
            str(workdir / "agent.pcap"),
            "-Y",
            "http.request",
            "-T",
            "fields",
            "-e",
            "http.request.uri",
        ],
        workdir,
        "tshark",
    )
    assert out.p.wait(120) == 0, out.err()
    assert marker in out.out()
    tcpcapinfo = lab.require_tool("tcpcapinfo")  # tcpreplay's own pcap reader
    info = lab.Proc([tcpcapinfo, str(workdir / "agent.pcap")], workdir, "tcpcapinfo")
    assert info.p.wait(120) == 0, info.err()
    assert "Packet" in info.out() and "error" not in info.out().lower()
    assert "drops\t0" in agent.err() or "kernel drops\t0" in agent.err(), agent.err()
    # nothing left attached
    assert "shadowtap" not in lab.tc_filters(iface, ns)


@contextlib.contextmanager
def agent_and_tcpdump(
    workdir: Path, addr: str, port: int, ns: str | None, iface: str, backend: str, *agent_args: str
) -> Iterator[tuple[Proc, Proc]]:
    """nginx on ``addr:port`` in ``ns``, and the capture agent (``backend``, ``agent_args``) and
    tcpdump on ``iface``; all three stopped on the way out."""
    lab.require_tool("nginx")
    lab.require_tool("tcpdump")
    nginx = lab.start_nginx(workdir, addr, port, ns)
    try:
        agent = lab.start_agent(iface, port, backend, workdir, *agent_args, ns=ns)
        tcpdump = lab.start_tcpdump(iface, port, workdir, ns)
        try:
            yield agent, tcpdump
        finally:
            agent.stop()
            tcpdump.stop()
    finally:
        nginx.stop()


def payload_bytes(path: Path) -> int:
    from shadowtap.capture.pcapfile import read_packets
    from shadowtap.wire.frames import decode

    total = 0
    for _ts, linktype, frame in read_packets(str(path)):
        seg = decode(linktype, frame)
        total += len(seg.payload) if seg else 0
    return total


BACKENDS = [
    pytest.param(("ebpf",), id="ebpf-ringbuf"),
    pytest.param(("ebpf", "--perf-buffer"), id="ebpf-perfbuf"),
    pytest.param(("pcap",), id="pcap"),
]


@pytest.mark.root
@pytest.mark.parametrize("backend", BACKENDS)
def test_veth_capture_matches_tcpdump_and_own_pcap(topology, tmp_path, key_file, backend):
    lab.require_tool("curl")
    topo = topology()
    client, server = topo.host("client"), topo.host("server")
    _, server_if = topo.link(client, server, "10.250.3.1", "10.250.3.2")
    port = random.randrange(20000, 60000)
    with agent_and_tcpdump(tmp_path, "10.250.3.2", port, server.ns, server_if, *backend) as procs:
        agent, tcpdump = procs
        expected, marker = drive(client.run, "10.250.3.2", port, tmp_path)
        check_run(tmp_path, agent, tcpdump, port, expected, marker, server_if, server.ns)
        assert f"backend: {backend[0]} backend requested" in agent.err()


@pytest.mark.root
@pytest.mark.parametrize("backend", ["ebpf", "pcap"])
def test_loopback_capture_records_each_packet_once(topology, tmp_path, key_file, backend):
    topo = topology()
    host = topo.host("lo")
    port = random.randrange(20000, 60000)
    with agent_and_tcpdump(tmp_path, "127.0.0.1", port, host.ns, "lo", backend) as procs:
        agent, tcpdump = procs
        expected, marker = drive(host.run, "127.0.0.1", port, tmp_path)
        check_run(tmp_path, agent, tcpdump, port, expected, marker, "lo", host.ns)
        # once: as many TCP payload bytes as tcpdump recorded, not twice as many.
        # (Packets do not compare one to one: TC egress sees GSO super-packets that the tap
        # sees segmented.)
        assert payload_bytes(tmp_path / "agent.pcap") == payload_bytes(tmp_path / "tcpdump.pcap")


@pytest.mark.root
def test_rotation_count_and_outputs(topology, tmp_path, key_file):
    """--rotate-size splits both outputs; --count stops the run; the pieces together are still what
    `extract` gives of the pcaps."""
    lab.require_tool("nginx")
    topo = topology()
    host = topo.host("rot")
    port = random.randrange(20000, 60000)
    nginx = lab.start_nginx(tmp_path, "127.0.0.1", port, host.ns)
    try:
        agent = lab.start_agent(
            "lo", port, "pcap", tmp_path, "--rotate-size", "0.2", "--count", "60", ns=host.ns
        )
        for i in range(20):
            host.run(["curl", "-sS", "-o", "/dev/null", f"http://127.0.0.1:{port}/big?i={i}"])
        host.run([lab.require_tool("hey"), "-n", "60", "-c", "2", f"http://127.0.0.1:{port}/r"])
        assert agent.p.wait(60) == 0, agent.err()  # --count ended it
    finally:
        nginx.stop()
    pcaps = sorted(tmp_path.glob("agent*.pcap"))
    jsonls = sorted(tmp_path.glob("agent*.jsonl"))
    assert len(pcaps) > 3 and len(jsonls) >= 2, (pcaps, jsonls)
    for f in pcaps + jsonls:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert (tmp_path / "agent.1.pcap").exists() and (tmp_path / "agent.1.jsonl").exists()
    lines = []
    for f in [tmp_path / "agent.jsonl"] + [
        tmp_path / f"agent.{i}.jsonl" for i in range(1, len(jsonls))
    ]:
        lines += lab.jsonl_lines(f)
    assert len(lines) >= 60
    whole = lab.extract_pcap(pcaps, port)
    assert lab.loads(lines) == whole


@pytest.mark.root
def test_keep_secrets_stores_them_as_captured(topology, tmp_path, key_file):
    lab.require_tool("nginx")
    topo = topology()
    host = topo.host("ks")
    port = random.randrange(20000, 60000)
    nginx = lab.start_nginx(tmp_path, "127.0.0.1", port, host.ns)
    try:
        agent = lab.start_agent(
            "lo", port, "auto", tmp_path, "--keep-secrets", "--count", "1", ns=host.ns
        )
        host.run(
            [
                "curl",
                "-sS",
                "-o",
                "/dev/null",
                "-H",
                "Authorization: Bearer abc",
                f"http://127.0.0.1:{port}/k",
            ]
        )
        assert agent.p.wait(60) == 0, agent.err()
    finally:
        nginx.stop()
    text = (tmp_path / "agent.jsonl").read_text()
    assert "Bearer abc" in text and "session=s3cret-/k" in text and "redacted:" not in text
    assert "backend: auto: eBPF" in agent.err()
