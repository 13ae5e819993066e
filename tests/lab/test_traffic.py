"""The traffic generator: only lab addresses, a reproducible mix, bounded runs against the real
demo service on loopback."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from shadowtap.lab import traffic

LAB = Path(__file__).resolve().parents[2] / "scripts" / "lab"


@pytest.mark.parametrize(
    "url",
    [
        "http://8.8.8.8:80",
        "http://example.com:8080",
        "https://127.0.0.1:1",
        "http://10.251.0.1:8080",
        "http://[2001:db8::1]:80",
        "ftp://127.0.0.1/",
    ],
)
def test_refuses_targets_outside_the_lab(url):
    with pytest.raises(ValueError):
        traffic.check_target(url)
    proc = subprocess.run(
        [sys.executable, str(LAB / "traffic.py"), "--target", url, "--count", "1"],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and "traffic: error" in proc.stderr


@pytest.mark.parametrize(
    "url", ["http://10.250.70.2:8080", "http://127.0.0.1:9", "http://localhost:9", "http://[::1]:9"]
)
def test_accepts_lab_and_loopback(url):
    assert traffic.check_target(url).startswith("http://")


def test_allow_network_admits_only_private_networks():
    allowed = (traffic._private_network("192.168.56.0/24"),)
    assert traffic.check_target("http://192.168.56.20:8080", allowed) == "http://192.168.56.20:8080"
    with pytest.raises(ValueError):
        traffic.check_target("http://192.168.57.20:8080", allowed)
    for bad in ("8.8.8.0/24", "10.0.0.0/8", "nonsense"):
        with pytest.raises(ValueError):
            traffic._private_network(bad)


def test_mix_is_reproducible_and_realistic():
    rng1, rng2 = random.Random(9), random.Random(9)
    seq1 = [traffic.plan_request(rng1, 0.2) for _ in range(3000)]
    seq2 = [traffic.plan_request(rng2, 0.2) for _ in range(3000)]
    assert seq1 == seq2
    counts = Counter(p.endpoint for p in seq1)
    total = sum(traffic.MIX.values())
    for name, weight in traffic.MIX.items():
        assert abs(counts[name] / 3000 - weight / total) < 0.03, (name, counts)
    assert 0.15 < sum(p.new_connection for p in seq1) / 3000 < 0.25
    rng = random.Random(1)
    assert all(
        p.endpoint != "order"
        for p in (traffic.plan_request(rng, 0.2, orders=False) for _ in range(500))
    )


def expected_poisson_count(seed: int, rate: float, duration: float) -> int:
    gaps, offset, n = random.Random(seed + 1), 0.0, 0
    while offset < duration:
        n += 1
        offset += gaps.expovariate(rate)
    return n


def test_poisson_arrivals_are_bursty_with_the_right_mean():
    rng = random.Random(5)
    gaps = [rng.expovariate(50) for _ in range(5000)]
    assert abs(sum(gaps) / len(gaps) - 1 / 50) < 0.002
    assert expected_poisson_count(1, 60, 12) != 720  # not the fixed pace...
    assert abs(expected_poisson_count(1, 60, 12) - 720) < 4 * 720**0.5  # ...but about the rate


def test_bounded_run_against_the_service(tmp_path):
    ready = tmp_path / "ready"
    svc = subprocess.Popen(
        [sys.executable, str(LAB / "demo_service.py"), "--port", "0", "--ready-file", str(ready)],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert svc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        port = json.loads(ready.read_text())["port"]
        summary = asyncio.run(
            traffic.run(f"http://127.0.0.1:{port}", rate=200, count=120, duration=20, seed=4)
        )
        assert summary.sent == 120 and summary.failures == 0
        assert sum(summary.statuses.values()) == 120 + summary.grpc_calls
        assert summary.new_connections > 0
        statuses = {k.split()[1] for k in summary.statuses}
        assert statuses <= {"200", "201", "404", "OK"}  # OK: the gRPC calls, on the same port
        assert summary.statuses["infer OK"] == summary.grpc_calls > 0
        # duration bound: a huge count still stops after about the duration
        t0 = time.monotonic()
        summary = asyncio.run(
            traffic.run(
                f"http://127.0.0.1:{port}",
                rate=50,
                count=10**6,
                duration=1.0,
                seed=4,
                arrivals="uniform",
            )
        )
        assert time.monotonic() - t0 < 15 and summary.sent == 50
        # poisson arrivals (the default): as many as the seeded exponential intervals fit
        summary = asyncio.run(
            traffic.run(f"http://127.0.0.1:{port}", rate=100, count=10**6, duration=1.0, seed=4)
        )
        assert summary.sent == expected_poisson_count(4, 100, 1.0) and summary.failures == 0
        # the command line prints a JSON summary
        proc = subprocess.run(
            [
                sys.executable,
                str(LAB / "traffic.py"),
                "--target",
                f"http://127.0.0.1:{port}",
                "--count",
                "30",
                "--rate",
                "300",
                "--seed",
                "2",
                "--json",
                "--no-orders",
            ],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        data = json.loads(proc.stdout)
        assert (
            data["sent"] == 30
            and data["seed"] == 2
            and not any(k.startswith("order") for k in data["statuses"])
        )
    finally:
        svc.terminate()
        svc.wait(10)
