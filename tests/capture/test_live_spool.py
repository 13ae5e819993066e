"""The decoupled capture: the reader spools the frames (capture/spool.py), an extractor process
turns them into exchanges.

The spool on its own (real files, real pipes): what the reader wrote is what the extractor reads,
record for record and float for float, as a pcap reader would, across segments, while it is being
written; a bound drops and counts. Then `shadowtap capture` against the real kernel: a real nginx
in a namespace, real clients, the extractor process held still with SIGSTOP (a burst it cannot
follow, made certain): nothing is lost, the JSONL is byte for byte `extract` of the run's pcap,
the hooks go at the stop before the backlog is extracted, the spool goes at the end; the
extractor's death is a clear error; the spool's bound drops and counts.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import tests.support.live_lab as lab
from shadowtap.capture import spool
from shadowtap.capture.live import PcapWriter
from shadowtap.capture.pcapfile import read_packets


def _frames(n: int, seed: int = 3) -> list[tuple[int, bytes, int]]:
    rnd = random.Random(seed)
    ts = 1_764_000_000_000_000
    out = []
    for i in range(n):
        ts += rnd.randrange(0, 3000)
        size = rnd.choice([54, 66, 200, 1514, 3000, 9000])
        out.append((ts, bytes([i % 251]) * size, size + (100 if i % 97 == 0 else 0)))
    return out


def _pair(tmp_path: Path, max_bytes: int, segment_bytes: int = 64 << 10):
    ctx = multiprocessing.get_context("fork")
    shared = spool.new_shared(ctx)
    r, w = ctx.Pipe(duplex=False)
    d = spool.make_dir(str(tmp_path))
    writer = spool.SpoolWriter(d, 1, w, shared, max_bytes=max_bytes, segment_bytes=segment_bytes)
    return d, writer, spool.SpoolReader(d, r, shared), shared


def test_spool_gives_the_records_a_pcap_reader_gives(tmp_path):
    frames = _frames(3000)
    d, writer, reader, shared = _pair(tmp_path, 1 << 30)
    assert os.stat(d).st_mode & 0o777 == 0o700
    got: list = []
    tail = threading.Thread(target=lambda: got.extend(f for b in reader.batches() for f in b))
    tail.start()  # reading while the segments are written
    modes = set()
    for i in range(0, len(frames), 37):
        writer.write(frames[i : i + 37])
        seg = spool.segment_path(d, writer.n)
        if os.path.exists(seg):
            modes.add(os.stat(seg).st_mode & 0o777)
    writer.end()
    tail.join(30)
    assert not tail.is_alive()
    assert writer.n >= 3  # several segments, each deleted once read
    assert modes == {0o600}
    assert os.listdir(d) == []
    assert shared[spool.FREED] == shared[spool.WRITTEN] == shared[spool.CONSUMED]
    pcap = PcapWriter(str(tmp_path / "same.pcap"), 1)
    for f in frames:
        pcap.write(*f)
    pcap.close()
    assert got == list(read_packets(str(tmp_path / "same.pcap")))  # same floats, same bytes
    assert writer.dropped == 0


def test_spool_bound_drops_and_counts(tmp_path):
    frames = _frames(2000)
    _d, writer, reader, shared = _pair(tmp_path, 256 << 10, segment_bytes=32 << 10)
    for i in range(0, len(frames), 50):
        writer.write(frames[i : i + 50])  # nobody reads: the bound is reached
    assert writer.dropped > 0
    assert shared[spool.WRITTEN] <= 256 << 10
    kept = len(frames) - writer.dropped
    writer.end()
    got = [f for b in reader.batches() for f in b]
    assert len(got) == kept
    assert [g[2] for g in got] == [f[1] for f in frames[:kept]]  # a hole at the end, not a sieve


def test_reader_death_ends_the_tail(tmp_path):
    """EOF on the control pipe (the reader died): what was written is read, then the tail ends."""
    frames = _frames(500)
    _d, writer, reader, _shared = _pair(tmp_path, 1 << 30)
    writer.write(frames)
    writer.control.close()  # no seal, no end: as after a kill -9
    got = [f for b in reader.batches() for f in b]
    assert reader.orphaned and len(got) == len(frames)


# -- against the real kernel ---------------------------------------------------------------------


@pytest.fixture
def veth(topology, tmp_path, monkeypatch):
    """(client, server, server interface, port, url), nginx up on the server; one redaction key."""
    lab.require_root()
    lab.require_tool("nginx")
    monkeypatch.setenv("SHADOWTAP_KEY_FILE", str(tmp_path / "redact.key"))
    topo = topology()
    client, server = topo.host("c"), topo.host("s")
    _, server_if = topo.link(client, server, "10.250.6.1", "10.250.6.2")
    port = random.randrange(20000, 60000)
    nginx = lab.start_nginx(tmp_path, "10.250.6.2", port, server.ns)
    url = f"http://10.250.6.2:{port}"
    yield client, server, server_if, port, url
    nginx.stop()


def extractor_pid(agent: lab.Proc) -> int:
    kids = Path(f"/proc/{agent.pid}/task/{agent.pid}/children").read_text().split()
    assert len(kids) == 1, kids
    return int(kids[0])


def start(
    tmp_path: Path, iface: str, port: int, backend: str, ns: str, *extra: str
) -> tuple[lab.Proc, Path]:
    spool_parent = tmp_path / "spool"
    spool_parent.mkdir(exist_ok=True)
    agent = lab.start_agent(
        iface, port, backend, tmp_path, "--spool-dir", str(spool_parent), *extra, ns=ns
    )
    return agent, spool_parent


def spooled_bytes(spool_parent: Path) -> int:
    return sum(f.stat().st_size for d in spool_parent.iterdir() for f in d.iterdir())


@pytest.mark.root
@pytest.mark.parametrize("backend", ["ebpf", "pcap"])
def test_burst_the_extractor_cannot_follow_loses_nothing(veth, tmp_path, backend):
    """The extractor is held still (SIGSTOP) through a burst and the stop: the hooks go at the
    stop, the backlog is extracted after, and the JSONL is byte for byte `extract` of the pcap."""
    if backend == "ebpf":
        lab.require_bcc()
    client, server, iface, port, url = veth
    agent, spool_parent = start(tmp_path, iface, port, backend, server.ns)
    child = extractor_pid(agent)
    os.kill(child, signal.SIGSTOP)
    try:
        n = 2000
        client.run([lab.require_tool("hey"), "-n", str(n), "-c", "8", f"{url}/burst"], timeout=120)
        for i in range(5):
            client.run(["curl", "-sS", "-o", "/dev/null", f"{url}/big?{i}"])
        n += 5
        # The reader kept going: the frames wait in the spool, none in the JSONL yet.
        lab.wait_for(
            lambda: spooled_bytes(spool_parent) > 1_000_000,
            30,
            "the spool to hold the burst",
            proc=agent.p,
        )
        assert lab.jsonl_lines(tmp_path / "agent.jsonl") == []
        agent.p.send_signal(signal.SIGTERM)
        if backend == "ebpf":  # stopped: the hooks are gone while the backlog still waits
            lab.wait_for(
                lambda: lab.tc_filters(iface, server.ns).strip() == "",
                30,
                "the hooks to be detached",
            )
        agent.wait_stderr("extracting the spooled backlog", 30)
        assert agent.p.poll() is None
    finally:
        os.kill(child, signal.SIGCONT)
    assert agent.p.wait(120) == 0, agent.err()
    lines = lab.jsonl_lines(tmp_path / "agent.jsonl")
    assert len(lines) == n, agent.err()
    again = tmp_path / "extract.jsonl"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "shadowtap",
            "extract",
            str(tmp_path / "agent.pcap"),
            "-p",
            str(port),
            "-o",
            str(again),
        ],
        check=True,
        capture_output=True,
        cwd=lab.REPO,
    )
    assert again.read_bytes() == (tmp_path / "agent.jsonl").read_bytes()
    assert "spool drops\t0" in agent.err() and "ring buffer drops\t0" in agent.err(), agent.err()
    assert list(spool_parent.iterdir()) == []
    assert lab.tc_filters(iface, server.ns).strip() == ""


@pytest.mark.root
def test_extractor_death_is_a_clear_error(veth, tmp_path):
    lab.require_bcc()
    client, server, iface, port, url = veth
    agent, spool_parent = start(tmp_path, iface, port, "ebpf", server.ns)
    client.run(["curl", "-sS", "-o", "/dev/null", f"{url}/before"])
    lab.wait_for(
        lambda: "/before" in lab.text_of(tmp_path / "agent.jsonl"), 30, "the exchange", proc=agent.p
    )
    os.kill(extractor_pid(agent), signal.SIGKILL)
    lab.wait_for(lambda: agent.p.poll() is not None, 30, "the agent to stop")
    err = agent.err()
    assert agent.p.returncode == 1, err
    assert (
        "shadowtap: error: the extractor process died (killed by SIGKILL) after 1 exchanges" in err
    ), err
    assert "Traceback" not in err
    assert lab.tc_filters(iface, server.ns).strip() == ""
    assert list(spool_parent.iterdir()) == []
    assert len(lab.jsonl_lines(tmp_path / "agent.jsonl")) == 1


@pytest.mark.root
def test_reader_killed_the_extractor_finishes_and_removes_the_spool(veth, tmp_path):
    client, server, iface, port, url = veth
    agent, spool_parent = start(tmp_path, iface, port, "pcap", server.ns)
    child = extractor_pid(agent)
    os.kill(child, signal.SIGSTOP)
    try:
        client.run(["curl", "-sS", "-o", "/dev/null", f"{url}/one", f"{url}/two"])
        lab.wait_for(lambda: spooled_bytes(spool_parent) > 0, 30, "the spool", proc=agent.p)
        lab.wait_for(
            lambda: (
                b"/two"
                in b"".join(f.read_bytes() for d in spool_parent.iterdir() for f in d.iterdir())
            ),
            30,
            "the second request spooled",
            proc=agent.p,
        )
        agent.p.send_signal(signal.SIGKILL)
        agent.p.wait(30)
    finally:
        os.kill(child, signal.SIGCONT)
    lab.wait_for(
        lambda: (
            not Path(f"/proc/{child}").exists()
            or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]
        ),
        30,
        "the extractor to end",
    )
    assert [
        o["request"]["target"] for o in lab.loads(lab.jsonl_lines(tmp_path / "agent.jsonl"))
    ] == ["/one", "/two"]
    assert list(spool_parent.iterdir()) == []


@pytest.mark.root
def test_spool_bound_drops_are_counted(veth, tmp_path):
    client, server, iface, port, url = veth
    agent, spool_parent = start(tmp_path, iface, port, "pcap", server.ns, "--spool-max", "1")
    child = extractor_pid(agent)
    os.kill(child, signal.SIGSTOP)
    try:
        for i in range(12):  # ~4 MB of responses against a 1 MB spool nobody reads
            client.run(["curl", "-sS", "-o", "/dev/null", f"{url}/big?{i}"])
        lab.wait_for(
            lambda: b"/big?11" in (tmp_path / "agent.pcap").read_bytes(),
            30,
            "the pcap",
            proc=agent.p,
        )
        assert (
            spooled_bytes(spool_parent) <= 1_000_000 + 24 * 10
        )  # the bound, and segments' file headers
        agent.p.send_signal(signal.SIGTERM)
    finally:
        os.kill(child, signal.SIGCONT)
    assert agent.p.wait(60) == 0, agent.err()
    err = agent.err()
    drops = int(err.split("spool drops\t")[1].split()[0].replace(",", ""))
    assert drops > 0, err
    assert "captured but not spooled for extraction (the spool reached --spool-max)" in err
    # the pcap has every exchange; the exchanges file those spooled before the bound
    assert len(lab.extract_pcap([tmp_path / "agent.pcap"], port)) == 12
    assert len(lab.jsonl_lines(tmp_path / "agent.jsonl")) < 12
    assert list(spool_parent.iterdir()) == []


@pytest.mark.root
def test_second_ctrl_c_abandons_the_backlog(veth, tmp_path):
    """Ctrl-C stops the capture and the backlog is extracted; a second Ctrl-C gives it up: exit 130
    soon, the exchanges written so far whole, no hook, no spool."""
    client, server, iface, port, url = veth
    agent, spool_parent = start(tmp_path, iface, port, "pcap", server.ns)
    child = extractor_pid(agent)
    os.kill(child, signal.SIGSTOP)
    try:
        # A backlog the extractor needs ~1 s for: the abort surely reaches it before it is through.
        client.run([lab.require_tool("hey"), "-n", "20000", "-c", "8", f"{url}/burst"], timeout=120)
        lab.wait_for(
            lambda: spooled_bytes(spool_parent) > 500_000,
            30,
            "the spool to hold the burst",
            proc=agent.p,
        )
        agent.p.send_signal(signal.SIGINT)
        agent.wait_stderr("extracting the spooled backlog", 30)
        agent.p.send_signal(signal.SIGINT)
    finally:
        os.kill(child, signal.SIGCONT)
    assert agent.p.wait(30) == 130, agent.err()
    assert "Traceback" not in agent.err()
    lines = lab.jsonl_lines(tmp_path / "agent.jsonl")
    assert len(lines) < 20000
    assert all(o["request"]["target"] == "/burst" for o in lab.loads(lines))  # whole lines only
    assert list(spool_parent.iterdir()) == []
