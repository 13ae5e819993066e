"""The eBPF backend's hooks and buffers against the real kernel: hooks gone after SIGTERM, Ctrl-C
and errors; a kill -9'd run's hooks found and replaced by the next run; losses counted (ring buffer
and perf buffer) so that received + lost == matched; the program printed on request."""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import sys
import threading

import pytest

import tests.support.live_lab as lab


@pytest.fixture
def veth(topology, tmp_path):
    """(client host, server host, server interface, port, nginx) with nginx up on the server."""
    lab.require_bcc()
    lab.require_tool("nginx")
    topo = topology()
    client, server = topo.host("c"), topo.host("s")
    _, server_if = topo.link(client, server, "10.250.4.1", "10.250.4.2")
    port = random.randrange(20000, 60000)
    nginx = lab.start_nginx(tmp_path, "10.250.4.2", port, server.ns)
    url = f"http://10.250.4.2:{port}"
    yield client, server, server_if, port, url
    nginx.stop()


def qdiscs(iface: str, ns: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, "tc", "qdisc", "show", "dev", iface],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


@pytest.mark.root
def test_kill9_then_next_run_replaces_the_stale_hook(veth, tmp_path):
    client, server, iface, port, url = veth
    first = lab.start_agent(iface, port, "ebpf", tmp_path, ns=server.ns, name="first")
    shown = lab.tc_filters(iface, server.ns)
    assert f"shadowtap-{first.pid}-" in shown and "direct-action" in shown
    assert shown.count(f"shadowtap-{first.pid}-") == 2  # ingress and egress
    # flushed while running (at least every second): what was captured survives the kill
    client.run(["curl", "-sS", "-o", "/dev/null", f"{url}/before-kill"])
    lab.wait_for(
        lambda: "/before-kill" in lab.text_of(tmp_path / "first.jsonl"),
        30,
        "the flush",
        proc=first.p,
    )
    first.p.send_signal(signal.SIGKILL)
    first.p.wait(30)
    # kill -9 ran no cleanup: the hooks are still there, and still harmless (traffic flows)
    assert f"shadowtap-{first.pid}-" in lab.tc_filters(iface, server.ns)
    client.run(["curl", "-sS", "-o", "/dev/null", f"{url}/during-stale"])

    second = lab.start_agent(iface, port, "ebpf", tmp_path, ns=server.ns, name="second")
    second.wait_stderr("removed a stale shadowtap hook")  # printed just after "capturing:"
    shown = lab.tc_filters(iface, server.ns)
    assert f"shadowtap-{first.pid}-" not in shown
    assert shown.count(f"shadowtap-{second.pid}-") == 2
    client.run(["curl", "-sS", "-o", "/dev/null", f"{url}/after"])
    lab.wait_for(
        lambda: "/after" in lab.text_of(tmp_path / "second.jsonl"),
        30,
        "the exchange",
        proc=second.p,
    )
    assert second.stop(signal.SIGTERM) == 0, second.err()
    assert "shadowtap" not in lab.tc_filters(iface, server.ns)
    assert lab.tc_filters(iface, server.ns).strip() == ""
    assert "clsact" not in qdiscs(
        iface, server.ns
    )  # the killed run's qdisc went with the last hook


@pytest.mark.root
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_signals_detach_and_keep_everything(veth, tmp_path, sig):
    client, server, iface, port, url = veth
    agent = lab.start_agent(iface, port, "ebpf", tmp_path, ns=server.ns)
    client.run(["curl", "-sS", "-o", "/dev/null", f"{url}/one", f"{url}/two"])
    lab.wait_for(
        lambda: "/two" in lab.text_of(tmp_path / "agent.jsonl"), 30, "the exchanges", proc=agent.p
    )
    assert agent.stop(sig) == 0, agent.err()
    assert "capture summary" in agent.err()
    assert lab.tc_filters(iface, server.ns).strip() == ""
    assert len(lab.jsonl_lines(tmp_path / "agent.jsonl")) == 2


@pytest.mark.root
def test_error_after_attach_detaches(veth, tmp_path):
    """The pcap output's file system fills up mid-run: a clear error naming the file, exit code 3,
    the exchanges so far written, and no hook left behind."""
    client, server, iface, port, url = veth
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)], check=True)
    try:
        agent = lab.Proc(
            [
                "sh",
                "-c",
                " ".join(
                    [
                        *lab.agent_argv(iface, port, "ebpf", tmp_path)[:-4],
                        "-w",
                        str(small / "x.pcap"),
                        "-o",
                        str(tmp_path / "agent.jsonl"),
                    ]
                ),
            ],
            tmp_path,
            "agent",
            ns=server.ns,
        )
        agent.wait_stderr("capturing:")
        for i in range(4):
            client.run(["curl", "-sS", "-o", "/dev/null", f"{url}/big?{i}"])
        lab.wait_for(lambda: agent.p.poll() is not None, 30, "the agent to fail")
        assert agent.p.returncode == 3, agent.err()
        assert f"{small / 'x.pcap'}: cannot write: No space left on device" in agent.err()
        assert lab.tc_filters(iface, server.ns).strip() == ""
        for line in lab.jsonl_lines(tmp_path / "agent.jsonl"):
            assert line.startswith(b"{") and line.endswith(b"}")
    finally:
        subprocess.run(["umount", str(small)], check=False)


@pytest.mark.root
def test_unwritable_output_fails_before_attaching(veth, tmp_path):
    _client, server, iface, port, _url = veth
    bad = tmp_path / "no-such-dir" / "x.pcap"
    proc = server.run(
        [
            sys.executable,
            "-m",
            "shadowtap",
            "capture",
            "-i",
            iface,
            "-p",
            str(port),
            "-b",
            "ebpf",
            "-w",
            str(bad),
        ],
        check=False,
        timeout=120,
    )
    assert proc.returncode == 3, proc.stderr
    assert f"{bad}: cannot write: no such directory" in proc.stderr
    assert lab.tc_filters(iface, server.ns).strip() == ""


@pytest.mark.root
@pytest.mark.parametrize("backend", ["ebpf", "pcap"])
def test_interface_going_away_is_a_clear_error(veth, tmp_path, backend):
    client, server, iface, port, url = veth
    agent = lab.start_agent(iface, port, backend, tmp_path, ns=server.ns)
    client.run(["curl", "-sS", "-o", "/dev/null", f"{url}/kept"])
    lab.wait_for(
        lambda: "/kept" in lab.text_of(tmp_path / "agent.jsonl"), 30, "the exchange", proc=agent.p
    )
    server.run(["ip", "link", "del", iface])
    lab.wait_for(lambda: agent.p.poll() is not None, 30, "the agent to stop")
    assert agent.p.returncode == 3, agent.err()
    assert (
        "shadowtap: error:" in agent.err()
        and iface in agent.err()
        and "Traceback" not in agent.err()
    )
    assert len(lab.jsonl_lines(tmp_path / "agent.jsonl")) == 1


def _blast(port: int, nbytes: int) -> None:
    """A TCP transfer of ``nbytes`` over loopback to ``port`` (a sink that discards)."""
    chunk = b"x" * (1 << 16)
    with socket.create_connection(("127.0.0.1", port)) as s:
        sent = 0
        while sent < nbytes:
            s.sendall(chunk)
            sent += len(chunk)


@pytest.mark.root
@pytest.mark.parametrize("ringbuf", [True, False], ids=["ringbuf", "perfbuf"])
def test_losses_are_counted(ringbuf):
    """A 1 MiB buffer not read while 64 MiB cross loopback overflows: every packet the kernel
    matched is either received or counted lost, none silently missing."""
    lab.require_bcc()
    from shadowtap.capture.ebpf import EbpfSource

    sink = socket.socket()
    sink.bind(("127.0.0.1", 0))
    sink.listen()
    port = sink.getsockname()[1]

    def drain() -> None:
        conn, _ = sink.accept()
        with conn:
            while conn.recv(1 << 20):
                pass

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    src = EbpfSource("lo", (port,), buffer_mb=1, ringbuf=ringbuf)
    src.open()
    try:
        _blast(port, 64 << 20)
        reader.join(30)
        received = 0
        while got := src.read(0.2):
            received += len(got)
        received += len(src.flush())
        matched, lost, _truncated, _bytes = src.counters()
        stats = src.stats()
    finally:
        src.close()
        sink.close()
    assert lost > 0, "a 1 MiB buffer left unread cannot hold 64 MiB"
    assert stats.buffer_drops == lost and stats.packets == received
    assert received + lost == matched
    assert received > 0


@pytest.mark.root
def test_hooks_on_loopback_record_egress_only():
    lab.require_bcc()
    from shadowtap.capture.ebpf import EbpfSource

    src = EbpfSource("lo", (9,))
    assert src.loopback and "-DSKIP_INGRESS=1" in src.cflags()
    assert "egress only" in src.describe()


def test_print_bpf_shows_the_program_with_its_settings():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "shadowtap",
            "capture",
            "-i",
            "lo",
            "-p",
            "80",
            "--print-bpf",
            "--perf-buffer",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=lab.REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert "#define USE_RINGBUF 0" in proc.stdout
    assert "#define SKIP_INGRESS 1" in proc.stdout and "#define L2_LEN 14" in proc.stdout
    assert "int shadowtap_egr(struct __sk_buff *skb)" in proc.stdout
    assert "TC_ACT_UNSPEC" in proc.stdout


def test_no_such_interface():
    proc = subprocess.run(
        [sys.executable, "-m", "shadowtap", "capture", "-i", "nosuchif0", "-p", "80", "-b", "ebpf"],
        capture_output=True,
        text=True,
        check=False,
        cwd=lab.REPO,
    )
    assert proc.returncode == 3, proc.stderr
    assert "no such interface: nosuchif0" in proc.stderr
