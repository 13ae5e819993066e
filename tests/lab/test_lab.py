"""The one-host lab for real: ``up`` creates the namespaces, links and services, they answer from
the client namespace, ``status`` tells, ``down`` removes everything, also what a crashed or
half-finished ``up`` left behind. Each test uses its own prefix and run directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from shadowtap.lab import lab as labmod
from tests.support.prereq import require_root, require_tool

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "scripts" / "lab"


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def lab(tmp_path):
    require_root()
    require_tool("ip")
    require_tool("curl")
    lab = labmod.Lab(prefix=f"stl{uuid.uuid4().hex[:6]}", run_dir=tmp_path / "run")
    yield lab
    labmod.down(lab)


def _curl(ns: str, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, "curl", "-sS", "--max-time", "5", *args, url],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


def test_up_status_down(lab):
    state = labmod.up(lab)
    names = {lab.ns(r) for r in ("client", "primary", "shadow")}
    assert names <= _namespaces()
    assert state["hosts"]["primary"]["interfaces"] == {
        "to-client": "10.250.70.2",
        "to-shadow": "10.250.71.1",
    }
    env = lab.env()

    # the services answer from the client: v1 in the primary, v2 in the shadow
    r = _curl(lab.ns("client"), env["LAB_PRIMARY_URL"] + "/v1/products/3")
    assert r.returncode == 0, r.stderr
    assert "price" in json.loads(r.stdout)
    r = _curl(lab.ns("client"), env["LAB_SHADOW_URL_FROM_CLIENT"] + "/v1/products/3")
    assert "unit_price" in json.loads(r.stdout)
    # the primary reaches the shadow over its own link (the mirror's path)
    r = _curl(lab.ns("primary"), env["LAB_SHADOW_URL"] + "/health")
    assert json.loads(r.stdout)["status"] == "ok"
    # the lab's addresses exist only inside its namespaces
    root_addrs = subprocess.run(
        ["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True
    ).stdout
    assert "10.250.70.2" not in root_addrs and "10.250.71.2" not in root_addrs

    st = labmod.status(lab)
    assert st["state"] == "up"
    assert (
        st["services"]["primary"]["health"] == "200" and st["services"]["shadow"]["health"] == "200"
    )
    pids = [st["services"][r]["pid"] for r in ("primary", "shadow")]
    assert all(_alive(p) for p in pids)
    for role in ("primary", "shadow"):
        assert int((lab.dir / f"{role}.pid").read_text()) == st["services"][role]["pid"]

    report = labmod.down(lab)
    assert set(report.namespaces) == names
    assert not names & _namespaces()
    assert not any(_alive(p) for p in pids)
    assert not lab.dir.exists()
    assert labmod.status(lab)["state"] == "down"
    assert labmod.down(lab).empty()  # a second down finds nothing and is fine


def test_traffic_from_the_client_uses_keepalive_and_new_connections(lab, tmp_path):
    require_tool("tcpdump")
    labmod.up(lab)
    env = lab.env()
    pcap = tmp_path / "syn.pcap"
    dump = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            lab.ns("primary"),
            "tcpdump",
            "-i",
            "to-client",
            "-U",
            "-n",
            "--immediate-mode",
            "-w",
            str(pcap),
            "tcp[tcpflags] & tcp-syn != 0 and tcp[tcpflags] & tcp-ack == 0",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert "listening" in dump.stderr.readline()
        proc = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                lab.ns("client"),
                sys.executable,
                str(LAB / "traffic.py"),
                "--target",
                env["LAB_PRIMARY_URL"],
                "--count",
                "100",
                "--rate",
                "200",
                "--seed",
                "1",
                "--concurrency",
                "4",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        summary = json.loads(proc.stdout)
        assert summary["sent"] == 100 and summary["failures"] == 0

        def syns() -> list[str]:
            read = subprocess.run(
                ["tcpdump", "-n", "-r", str(pcap)], capture_output=True, text=True, check=False
            )
            return [line for line in read.stdout.splitlines() if "Flags [S]" in line]

        deadline = (
            time.monotonic() + 10
        )  # tcpdump writes each packet as it comes (-U, immediate mode)
        while len(syns()) < summary["new_connections"] and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        dump.terminate()
        dump.wait(10)
    syns = syns()
    # every new-connection request opens one; the keep-alive ones share at most 4 (the
    # concurrency); the gRPC calls share one more (their channel's HTTP/2 connection)
    most = summary["new_connections"] + 4 + (summary["grpc_calls"] > 0)
    assert summary["new_connections"] <= len(syns) <= most, (
        len(syns),
        summary,
    )
    assert len(syns) < summary["sent"]


def test_up_twice_replaces_the_first_lab(lab):
    first = labmod.up(lab)
    second = labmod.up(lab)
    old = [first["services"][r]["pid"] for r in ("primary", "shadow")]
    new = [second["services"][r]["pid"] for r in ("primary", "shadow")]
    assert not set(old) & set(new)
    assert not any(_alive(p) for p in old) and all(_alive(p) for p in new)
    assert labmod.status(lab)["state"] == "up"


def test_down_cleans_a_crashed_half_finished_up(lab):
    """What a SIGKILLed ``up`` leaves: one namespace with a service and no PID file, a veth pair
    still in the root namespace, a run directory with the state."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    tag = f"{dead.pid % 100000}x2"
    lab.dir.mkdir(parents=True)
    (lab.dir / "state.json").write_text(
        json.dumps({"prefix": lab.prefix, "creator_pid": dead.pid, "phase": "starting"})
    )
    ns = lab.ns("primary")
    subprocess.run(["ip", "netns", "add", ns], check=True)
    subprocess.run(
        ["ip", "link", "add", f"sta{tag}", "type", "veth", "peer", "name", f"stb{tag}"], check=True
    )
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        svc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns,
                sys.executable,
                str(LAB / "demo_service.py"),
                "--port",
                "0",
                "--host",
                "127.0.0.1",
                "--name",
                ns,
            ],
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while svc.pid not in [
            int(x)
            for x in subprocess.run(
                ["ip", "netns", "pids", ns], capture_output=True, text=True, check=False
            ).stdout.split()
        ]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert labmod.status(lab, probe=False)["state"] == "partial"

        report = labmod.down(lab)
        assert svc.wait(10) is not None
        assert any(str(svc.pid) in s for s in report.stopped)
        assert ns in report.namespaces and ns not in _namespaces()
        assert report.links == [f"sta{tag}"]  # its peer goes with it
        for name in (f"sta{tag}", f"stb{tag}"):
            shown = subprocess.run(
                ["ip", "link", "show", "dev", name], capture_output=True, check=False
            )
            assert shown.returncode != 0
        assert not lab.dir.exists()
    finally:
        subprocess.run(["ip", "link", "del", f"sta{tag}"], capture_output=True, check=False)


def test_down_leaves_processes_that_are_not_ours(lab):
    labmod.up(lab)
    other = subprocess.Popen(["ip", "netns", "exec", lab.ns("client"), "sleep", "60"])
    try:
        time.sleep(0.2)  # let ip netns exec enter the namespace (checked just below)
        assert other.pid in [
            int(x)
            for x in subprocess.run(
                ["ip", "netns", "pids", lab.ns("client")],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.split()
        ]
        report = labmod.down(lab)
        assert any(str(other.pid) in s for s in report.left_running)
        assert other.poll() is None  # still running: down stops only the lab's own processes
    finally:
        other.kill()
        other.wait()


def test_lab_sh_wrapper(tmp_path):
    require_root()
    require_tool("ip")
    prefix = f"stl{uuid.uuid4().hex[:6]}"
    env = dict(os.environ, LAB_PREFIX=prefix)

    def lab_sh(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(ROOT / "scripts" / "lab.sh"), *args, "--run-dir", str(tmp_path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    try:
        up = lab_sh("up", timeout=120)
        assert up.returncode == 0, up.stderr
        st = lab_sh("status", "--json")
        assert st.returncode == 0 and json.loads(st.stdout)["state"] == "up"
    finally:
        down = lab_sh("down")
    assert down.returncode == 0, down.stderr
    assert not {f"{prefix}-client", f"{prefix}-primary", f"{prefix}-shadow"} & _namespaces()
    st = lab_sh("status")
    assert st.returncode == 1 and "down" in st.stdout


def test_shadowtap_lab_command():
    require_root()
    require_tool("ip")
    prefix = f"stl{uuid.uuid4().hex[:6]}"

    def st(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "shadowtap", "lab", *args, "--prefix", prefix],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=ROOT,
        )

    try:
        assert st("up").returncode == 0
        status = st("status", "--json")
        assert status.returncode == 0 and json.loads(status.stdout)["state"] == "up"
        env = dict(line.split("=", 1) for line in st("env").stdout.splitlines())
        assert env["LAB_PRIMARY_NS"] == f"{prefix}-primary" and env["LAB_PRIMARY_IF"] == "to-client"
    finally:
        down = st("down")
    assert down.returncode == 0 and "removed namespaces" in down.stdout
    assert st("status").returncode == 1
    bad = st("sideways")
    assert bad.returncode == 3 and "unknown action" in bad.stderr
