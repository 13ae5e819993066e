"""The fleet lab for real (issue 16): ``up --fleet 3`` makes three primaries, each with a capture
agent publishing to a nats-server (JetStream) in the lab, and a shadow; bounded traffic to every
primary arrives in the stream under each agent's host name; ``down`` leaves no namespace and no
process behind. Its own prefix and run directory."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections import Counter

import pytest

from shadowtap.lab import fleet
from shadowtap.lab import lab as labmod
from tests.lab.test_lab import _alive, _namespaces
from tests.support.prereq import require_root, require_tool

N = 3
PER_PRIMARY = 15

# Runs in the broker's namespace: each record's host and target from the run's stream.
READ = r"""
import json, sys
from shadowtap.lake.nats import stream_records
print(json.dumps([[kind, host, json.loads(rec)["request"]["target"]]
                  for kind, host, rec in stream_records(sys.argv[1])]))
"""


@pytest.fixture
def lab(tmp_path):
    require_root()
    require_tool("ip")
    require_tool("curl")
    require_tool("nats-server")
    lab = labmod.Lab(prefix=f"stf{uuid.uuid4().hex[:5]}", run_dir=tmp_path / "run")
    yield lab
    labmod.down(lab)


def _records(lab: labmod.Lab, url: str) -> list[list[str]]:
    proc = subprocess.run(
        ["ip", "netns", "exec", lab.ns("broker"), lab.python, "-c", READ, url],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(proc.stdout)


def test_fleet_up_traffic_in_the_stream_by_host_down(lab) -> None:
    state = fleet.up(lab, N)
    pids = list(state["processes"].values())  # type: ignore[union-attr]
    assert len(pids) == 2 * N + 2  # N services, N agents, the shadow, the broker
    assert {lab.ns(r) for r in fleet.roles(N)} <= _namespaces()
    st = fleet.status(lab, N)
    assert st["state"] == "up", st
    env = fleet.env(lab, N)
    for k in range(1, N + 1):  # bounded traffic, spread over the replicas
        url = env[f"LAB_PRIMARY{k}_URL"]
        for i in range(PER_PRIMARY):
            subprocess.run(
                ["ip", "netns", "exec", lab.ns("client"), "curl", "-sS", "-o", "/dev/null",
                 "--max-time", "5", f"{url}/v1/products/{i}?replica={k}"],
                check=True,
                timeout=30,
            )  # fmt: skip
    hosts = [lab.ns(f"primary{k}") for k in range(1, N + 1)]
    deadline = time.monotonic() + 120  # the agents extract at idle priority: bounded wait
    while True:
        recs = _records(lab, env["LAB_STREAM_URL"])
        got = Counter(
            (host, target.rsplit("=", 1)[1]) for _, host, target in recs if "replica=" in target
        )
        if all(got[(h, str(k))] >= PER_PRIMARY for k, h in enumerate(hosts, 1)):
            break
        assert time.monotonic() < deadline, got
        time.sleep(1)
    assert {kind for kind, _, _ in recs} == {"x"}
    # each replica's exchanges, exactly once each, under its own agent's host name and only there
    assert got == Counter({(h, str(k)): PER_PRIMARY for k, h in enumerate(hosts, 1)})

    report = labmod.down(lab)
    assert len(report.stopped) == len(pids)
    assert not {ns for ns in _namespaces() if ns.startswith(lab.prefix + "-")}
    assert not [pid for pid in pids if _alive(pid)]
    assert not lab.dir.exists()
    assert labmod.down(lab).empty()  # twice: nothing left to do
