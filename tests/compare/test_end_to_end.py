"""compare on real traffic: pcaps/lab-mix.pcap (recorded from the lab's demo service) extracted
by ``shadowtap extract``, replayed by ``shadowtap replay`` to real demo services on loopback
(version 1 = the primary's version, version 2 = the shadow with deliberate regressions), then
``shadowtap compare``. Version 1 must pass (only timestamps, request ids and tag order differ);
version 2 must fail for its regressions, with and without a baseline."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PCAP = ROOT / "pcaps" / "lab-mix.pcap"
DEMO_RULES = ROOT / "scripts" / "lab" / "demo-compare.toml"


def shadowtap(*args, timeout=300):
    return subprocess.run(
        [str(BIN / "shadowtap"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    """Demo service v1 and v2 on ephemeral loopback ports; stopped by PID afterwards."""
    d = tmp_path_factory.mktemp("demo")
    procs, ports = [], {}
    try:
        for version in (1, 2):
            ready = d / f"v{version}.ready"
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        str(ROOT / "scripts" / "lab" / "demo_service.py"),
                        "--version",
                        str(version),
                        "--host",
                        "127.0.0.1",
                        "--port",
                        "0",
                        "--ready-file",
                        str(ready),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            deadline = time.monotonic() + 30
            while not (ready.exists() and ready.read_text().strip()):
                assert time.monotonic() < deadline and procs[-1].poll() is None, (
                    "demo service did not start"
                )
                time.sleep(0.05)
            ports[version] = json.loads(ready.read_text())["port"]
        yield ports
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.kill(p.pid, signal.SIGKILL)
                    p.wait()


@pytest.fixture(scope="module")
def runs(services, tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    exchanges = d / "exchanges.jsonl"
    p = shadowtap("extract", str(PCAP), "-o", str(exchanges))
    assert p.returncode == 0, p.stderr
    out = {"exchanges": str(exchanges), "dir": d}
    for name, version in (("v1", 1), ("baseline", 1), ("v2", 2)):
        res = d / f"{name}.jsonl"
        p = shadowtap(
            "replay",
            str(exchanges),
            "--target",
            f"http://127.0.0.1:{services[version]}",
            "-o",
            str(res),
            "--speed",
            "max",
            "--concurrency",
            "4",
            "--allow",
            "POST /v1/predict",
        )
        assert p.returncode == 0, p.stderr
        out[name] = str(res)
    return out


def compare(runs, results, *extra):
    report = runs["dir"] / f"report-{len(list(runs['dir'].iterdir()))}.json"
    p = shadowtap("compare", runs["exchanges"], results, "--json", str(report), *extra)
    return p, json.loads(report.read_text())


def failed(rep):
    return {(m["name"], m["endpoint"], m["path"]) for m in rep["verdict"]["metrics"] if m["failed"]}


def test_same_version_passes(runs, tmp_path):
    # The capture predates a change of the service's /health body; latency is not like for like
    # between the lab's recording and a local replay at full speed.
    cfg = tmp_path / "c.toml"
    rules = DEMO_RULES.read_text()
    assert "\nmin_ms = 20.0\n" in rules  # the demo's [latency] floor, made laxer here
    cfg.write_text(rules.replace("\nmin_ms = 20.0\n", "\nmin_ms = 50.0\neffect = 5.0\n", 1))
    p, rep = compare(runs, runs["v1"], "--config", str(cfg))
    assert p.returncode == 0, p.stdout
    assert rep["verdict"]["result"] == "pass" and not failed(rep)
    noise = {(n["endpoint"], n["path"]): n["reason"] for n in rep["noise"]}
    assert "uuid" in noise[("GET /v1/products", "body.request_id")]
    assert "timestamp" in noise[("GET /v1/products", "body.generated_at")]
    assert noise[("GET /v1/products/{id}", "body.tags")].startswith("order:")
    assert noise[("GET /v1/search", "body.took_ms")].startswith("rule: server timing")


def test_new_version_fails_for_its_regressions(runs):
    p, rep = compare(runs, runs["v2"], "--config", str(DEMO_RULES))
    assert p.returncode == 11 and p.stdout.startswith("verdict: FAIL")
    f = failed(rep)
    assert ("field diff rate", "GET /v1/products/{id}", "body.price") in f  # renamed to unit_price
    assert ("latency", "GET /v1/search", None) in f  # twice as slow
    by_path = {(e["endpoint"], x["path"]): x for e in rep["endpoints"] for x in e["fields"]}
    new = by_path[("GET /v1/categories", "body.cache_ttl_s")]
    assert new["only_extra"] and ("new field", "GET /v1/categories", "body.cache_ttl_s") not in f
    label = by_path[("POST /v1/predict", "body.label")]
    assert label["type"] == "categorical" and 0.8 < label["agreement"] < 1.0 and label["flips"]
    predict = next(e for e in rep["endpoints"] if e["endpoint"] == "POST /v1/predict")
    assert [m["path"] for m in predict["numeric"]] == ["body.score"]
    products = next(e for e in rep["endpoints"] if e["endpoint"] == "GET /v1/products")
    assert products["errors"]["new_failures"].get("5xx", 0) >= 1


def test_new_version_against_a_baseline(runs):
    p, rep = compare(runs, runs["v2"], "--baseline", runs["baseline"], "--config", str(DEMO_RULES))
    assert p.returncode == 11
    assert rep["summary"]["with_baseline"] > 150
    reasons = {(n["endpoint"], n["path"]): n["reason"] for n in rep["noise"]}
    assert reasons[("GET /v1/products", "body.request_id")].startswith("within baseline noise")
    assert ("field diff rate", "GET /v1/products/{id}", "body.price") in failed(rep)
