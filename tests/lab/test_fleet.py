"""The fleet lab for real (issue 16): ``up --fleet 3`` makes three primaries, each with a capture
agent publishing to a nats-server (JetStream) in the lab, and a shadow; bounded traffic to every
primary arrives in the stream under each agent's host name; ``down`` leaves no namespace and no
process behind. Its own prefix and run directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from shadowtap.lab import fleet
from shadowtap.lab import lab as labmod
from tests.lab.test_lab import _alive, _namespaces
from tests.support.prereq import require_root, require_tool

ROOT = Path(__file__).resolve().parents[2]
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


def test_demo_fleet_end_to_end(tmp_path) -> None:
    """scripts/demo_fleet.sh with a short run: the fleet's pairs reach one lake with each agent's
    host, two replay consumers shared the stream, the report comes from the lake, and the fleet
    is gone afterwards."""
    require_root()
    require_tool("nats-server")
    import duckdb

    out, prefix = tmp_path / "out", f"stg{uuid.uuid4().hex[:5]}"
    env = dict(
        os.environ,
        DEMO_DURATION="6",
        DEMO_RATE="30",
        DEMO_OUT=str(out),
        DEMO_PREFIX=prefix,
        DEMO_SETUP="0",  # the tests run from the set-up checkout
    )
    proc = subprocess.run(
        [str(ROOT / "scripts" / "demo_fleet.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        report = json.loads((out / "report.json").read_text())
        assert report["verdict"]["result"] == "fail"  # version 2's deliberate regressions
        results = [
            sum(1 for line in (out / f"results-{m}.jsonl").open() if line.strip()) for m in (1, 2)
        ]
        assert all(results), results  # both consumers did a share
        rows = duckdb.sql(
            f"SELECT host, count(*) FROM read_parquet('{out}/lake/**/*.parquet', "
            "hive_partitioning = true) GROUP BY host ORDER BY host"
        ).fetchall()
        assert [h for h, _ in rows] == [f"{prefix}-primary{k}" for k in range(1, N + 1)]
        assert sum(n for _, n in rows) == report["summary"]["pairs"] == sum(results)
        assert "per host (DuckDB on the lake)" in proc.stderr
    finally:
        subprocess.run(
            [sys.executable, str(ROOT / "scripts/lab/lab.py"), "down", "--prefix", prefix],
            capture_output=True,
            check=False,
        )
    assert not {ns for ns in _namespaces() if ns.startswith(prefix + "-")}


def test_down_after_a_killed_up(lab) -> None:
    """``up --fleet 2`` SIGKILLed while it starts the processes: ``down`` still stops every one
    (by PID file, or found in the lab's namespaces) and removes the namespaces."""
    up = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts/lab/lab.py"), "up", "--fleet", "2", "--prefix",
         lab.prefix, "--run-dir", str(lab.run_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (lab.dir / "primary1.pid").exists():  # the broker is up, the services starting
        assert up.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    up.kill()
    up.wait()
    started = [
        int(line)
        for ns in _namespaces()
        if ns.startswith(lab.prefix + "-")
        for line in subprocess.run(
            ["ip", "netns", "pids", ns], capture_output=True, text=True, check=True
        ).stdout.split()
    ]
    assert started  # the crash left processes behind
    report = labmod.down(lab)
    assert report.stopped and not report.left_running
    assert not [pid for pid in started if _alive(pid)]
    assert not {ns for ns in _namespaces() if ns.startswith(lab.prefix + "-")}
    assert not lab.dir.exists()
