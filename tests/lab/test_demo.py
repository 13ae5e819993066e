"""scripts/demo.sh end to end, non-interactively, with a short duration: the lab comes up, the
mirror copies the client's traffic off the primary's interface to the shadow, the report's verdict
is FAIL for exactly the deliberate regressions of version 2, the noise is told apart, the harmless
new field is reported without failing, orders are never mirrored, and the lab is gone afterwards.

The expected counts (label flips, 500s, renamed fields) are recomputed from what the mirror
captured, with the demo service's own deterministic functions."""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

import tests.support.prereq as _ct
from shadowtap.lab import demo_service as demo
from shadowtap.lab import traffic as traffic_mod

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "scripts" / "lab"


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie lingers until init reaps it)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat_line.rsplit(")", 1)[1].split()[0] != "Z"


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    _ct.require_root()
    for tool in ("ip", "tc"):
        _ct.require_tool(tool)
    out = tmp_path_factory.mktemp("demo") / "out"
    prefix = f"std{uuid.uuid4().hex[:6]}"
    env = dict(
        os.environ,
        DEMO_DURATION="12",
        DEMO_RATE="60",
        DEMO_SEED="1",
        DEMO_OUT=str(out),
        DEMO_PREFIX=prefix,
        DEMO_DASHBOARD="off",
    )
    proc = subprocess.run(
        [str(ROOT / "scripts" / "demo.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    yield {"proc": proc, "out": out, "prefix": prefix}
    subprocess.run(
        [sys.executable, str(LAB / "lab.py"), "down", "--prefix", prefix],
        capture_output=True,
        check=False,
    )


@pytest.fixture(scope="module")
def report(run):
    proc = run["proc"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads((run["out"] / "mirror" / "report.json").read_text())


def _failed(report, endpoint, path=None, name=None):
    return [
        m
        for m in report["verdict"]["metrics"]
        if m["failed"]
        and m["endpoint"] == endpoint
        and (path is None or m["path"] == path)
        and (name is None or m["name"] == name)
    ]


def _field(report, endpoint, path):
    ep = next(e for e in report["endpoints"] if e["endpoint"] == endpoint)
    return next(f for f in ep["fields"] if f["path"] == path)


def test_demo_completes_and_says_where_the_files_are(run, report):
    proc, out = run["proc"], run["out"]
    assert "verdict: FAIL" in proc.stdout  # the report, printed
    assert f"files in {out}" in proc.stderr and "report.html" in proc.stderr
    html = out / "mirror" / "report.html"
    assert html.stat().st_size > 10_000 and "<html" in html.read_text()[:2000].lower()
    for name in ("exchanges.jsonl", "results.jsonl", "report.json", "report.html"):
        assert stat.S_IMODE((out / "mirror" / name).stat().st_mode) == 0o600  # captured traffic
    traffic = json.loads((out / "traffic.json").read_text())
    # poisson arrivals at 60/s for 12 s, from the seed: the generator's own exponential intervals
    gaps, offset, expected = random.Random(1 + 1), 0.0, 0
    while offset < 12:
        expected += 1
        offset += gaps.expovariate(60)
    assert traffic["sent"] == expected and traffic["failures"] == 0
    # and the gRPC calls of the seed's own stream (scripts/lab/traffic.py, GRPC_SHARE)
    grpc_rng, expected_grpc = random.Random(1 + 2), 0
    for _ in range(expected):
        if grpc_rng.random() < traffic_mod.GRPC_SHARE:
            expected_grpc += 1
            traffic_mod.plan_grpc(grpc_rng)
    assert traffic["grpc_calls"] == expected_grpc > 0
    assert traffic["statuses"]["infer OK"] == expected_grpc


def test_lab_is_down_afterwards(run, report):
    names = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True
    ).stdout
    assert run["prefix"] not in names
    assert not (Path("/run/shadowtap-lab") / run["prefix"]).exists()


def test_verdict_fails_for_the_deliberate_regressions(run, report):
    assert report["verdict"]["result"] == "fail"
    exchanges = {e["id"]: e for e in _jsonl(run["out"] / "mirror" / "exchanges.jsonl")}
    results = {r["exchange_id"]: r for r in _jsonl(run["out"] / "mirror" / "results.jsonl")}
    paired = [exchanges[i] for i in results if i in exchanges]

    # the slow endpoint
    assert _failed(report, "GET /v1/search", name="latency")
    # the renamed field: price missing on every product found, unit_price only in the shadow
    found = [
        e
        for e in paired
        if e["request"]["target"].startswith("/v1/products/") and e["response"]["status"] == 200
    ]
    assert _failed(report, "GET /v1/products/{id}", "body.price")
    assert _field(report, "GET /v1/products/{id}", "body.price")["kinds"] == {"missing": len(found)}
    unit_price = _field(report, "GET /v1/products/{id}", "body.unit_price")
    assert unit_price["kinds"] == {"extra": len(found)}
    assert unit_price.get("renamed_from") == "body.price"  # the comparison saw the rename
    # the 500s: exactly the pages version 2 fails on
    pages = [
        int(parse_qs(urlsplit(e["request"]["target"]).query)["page"][0])
        for e in paired
        if urlsplit(e["request"]["target"]).path == "/v1/products"
    ]
    expected_500 = sum(demo.products_page_fails(p, 2) for p in pages)
    assert expected_500 > 0
    assert report["summary"]["errors"]["new_failures"] == {"5xx": expected_500}
    assert _failed(report, "GET /v1/products", "status")
    # the label flips: exactly the inputs near the threshold
    flips = 0
    for e in paired:
        if e["request"]["target"] == "/v1/predict":
            features = demo.validate_features(json.loads(e["request"]["body"])["features"])
            flips += demo.predict(features, 1)[1] != demo.predict(features, 2)[1]
    assert flips > 0
    label = _field(report, "POST /v1/predict", "body.label")
    assert label["kinds"] == {"value": flips} and label["flips"][0]["primary"] == "approve"
    assert _failed(report, "POST /v1/predict", "body.label")


def test_score_shift_measured_not_failing(report):
    ep = next(e for e in report["endpoints"] if e["endpoint"] == "POST /v1/predict")
    score = next(n for n in ep["numeric"] if n["path"] == "body.score")
    assert 0.01 < score["mean_shadow"] - score["mean_primary"] < 0.04
    assert not _failed(report, "POST /v1/predict", "body.score")


def test_harmless_field_reported_not_failing(report):
    new = [
        m
        for m in report["verdict"]["metrics"]
        if m["endpoint"] == "GET /v1/categories" and m["path"] == "body.cache_ttl_s"
    ]
    assert new and not any(m["failed"] for m in new)
    # Nothing about its content fails. Its latency is not this test's subject: the primary is
    # timed on the wire, the shadow from the mirror's client, and on a loaded host (load 15 on 2
    # cores) that gap alone can pass demo-compare.toml's 20 ms floor.
    assert not [m for m in _failed(report, "GET /v1/categories") if m["group"] != "latency"]
    assert _field(report, "GET /v1/categories", "body.cache_ttl_s")["only_extra"]


def test_noise_told_apart(report):
    noise = {(n["endpoint"], n["path"]): n["reason"] for n in report["noise"]}
    assert "uuid" in noise[("GET /v1/products", "body.request_id")]
    assert "timestamp" in noise[("GET /v1/products", "body.generated_at")]
    assert "timestamp" in noise[("POST /v1/predict", "body.scored_at")]
    assert "order" in noise[("GET /v1/products/{id}", "body.tags")]
    assert "server timing" in noise[("GET /v1/search", "body.took_ms")]  # the demo's own rule
    assert "x-request-id" in report["noisy_headers"]
    # none of them is a failing metric
    for endpoint, path in noise:
        assert not _failed(report, endpoint, path)


def test_orders_never_mirrored(run, report):
    results = _jsonl(run["out"] / "mirror" / "results.jsonl")
    assert not [r for r in results if urlsplit(r["target"]).path == "/v1/orders"]
    assert [
        r for r in results if urlsplit(r["target"]).path == "/v1/predict"
    ]  # allowed: side-effect free
    # every order the client created was seen on the wire and skipped as unsafe
    orders = json.loads((run["out"] / "traffic.json").read_text())["statuses"]["order 201"]
    mirror = json.loads((run["out"] / "mirror" / "mirror.json").read_text())
    assert orders > 0 and mirror["skipped"] == {"unsafe_method": orders}


def test_ctrl_c_takes_the_lab_down(tmp_path):
    """Ctrl-C on a terminal: SIGINT to the whole foreground process group, mid-traffic."""
    _ct.require_root()
    _ct.require_tool("ip")
    out = tmp_path / "out"
    prefix = f"std{uuid.uuid4().hex[:6]}"
    env = dict(
        os.environ,
        DEMO_DURATION="300",
        DEMO_OUT=str(out),
        DEMO_PREFIX=prefix,
        DEMO_DASHBOARD="off",
        DEMO_SETUP="0",
    )
    proc = subprocess.Popen(
        [str(ROOT / "scripts" / "demo.sh")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
    )
    lab_pids: list[int] = []
    try:
        deadline = time.monotonic() + 300
        results = out / "mirror" / "results.jsonl"
        while not (
            results.exists() and results.stat().st_size > 0
        ):  # lab, mirror and traffic at work
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        for role in ("client", "primary", "shadow"):
            pids = subprocess.run(
                ["ip", "netns", "pids", f"{prefix}-{role}"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.split()
            lab_pids += [int(p) for p in pids]
        assert len(lab_pids) >= 4  # two services, the mirror, the traffic generator
        os.killpg(proc.pid, signal.SIGINT)
        _stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        subprocess.run(
            [sys.executable, str(LAB / "lab.py"), "down", "--prefix", prefix],
            capture_output=True,
            check=False,
        )
    assert proc.returncode == 130, stderr[-3000:]
    assert "lab down" in stderr
    assert (
        prefix
        not in subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, check=True
        ).stdout
    )
    assert not [p for p in lab_pids if _running(p)]
    # the mirror stopped cleanly: its report of what it saw is there
    assert json.loads((out / "mirror" / "report.json").read_text())["summary"]["pairs"] > 0


def test_llm_answers_compared_as_messages(report):
    """POST /v1/chat/completions (scripts/lab/llm_service.py): version 2's refusals are counted as
    such, its paraphrases as equivalent, and no field of the raw answers (ids, created) differs."""
    ep = next(e for e in report["endpoints"] if e["endpoint"] == "POST /v1/chat/completions")
    g = ep["genai"]
    assert g["classes"]["refusal"] > 0 and g["classes"]["equivalent"] > 0
    assert g["streamed"]["primary"] > 0
    assert not [f for f in ep["fields"] if not f["noise"]]


def test_grpc_model_compared_as_tensors(run, report):
    """The gRPC ModelInfer (scripts/lab/grpc_model.py, h2c on the REST port), mirrored with grpcio
    and compared with the model's descriptor: the top-1 flips are exactly the inputs version 2
    flips (recomputed from the captured request messages), the scores' shift is measured within
    tolerance, and the flips fail the run."""
    from shadowtap.lab import grpc_model
    from shadowtap.records import Exchange

    endpoint = f"POST {grpc_model.METHOD}"
    exchanges = {e["id"]: e for e in _jsonl(run["out"] / "mirror" / "exchanges.jsonl")}
    results = {r["exchange_id"]: r for r in _jsonl(run["out"] / "mirror" / "results.jsonl")}
    calls = [
        Exchange.from_json(exchanges[i])
        for i in results
        if i in exchanges and exchanges[i]["request"]["target"] == grpc_model.METHOD
    ]
    assert calls
    for ex in calls:
        r = results[ex.id]
        assert r["error"] is None and r["grpc"]["status"] == 0, r
        assert ex.request.version == r["response"]["version"] == "HTTP/2"
    rows = [
        grpc_model.input_row(
            grpc_model.ModelInferRequest.FromString(ex.grpc.request_messages[0].data)
        )
        for ex in calls
    ]
    flips = sum(grpc_model.top1(row, 1) != grpc_model.top1(row, 2) for row in rows)
    ep = next(e for e in report["endpoints"] if e["endpoint"] == endpoint)
    (out,) = ep["tensors"]["outputs"]
    assert out["name"] == "probabilities" and out["model"] == "risk"
    assert out["classification"]["rows"] == len(rows)
    assert out["classification"]["top1_flips"] == flips
    assert 0 < out["max_abs"]["max"] <= 0.06 and out["breaches"] == 0  # shifted, within tolerance
    # What fails is the flips; the latency (wire-timed primary vs client-timed shadow) depends on
    # the host's load and is not this test's subject (as for GET /v1/categories).
    top1 = [m for m in _failed(report, endpoint) if m["group"] != "latency"]
    assert bool(top1) == (flips > 0)
    assert all(m["group"] == "tensors" for m in top1)
    assert "model version" in next(
        n["reason"]
        for n in report["noise"]
        if (n["endpoint"], n["path"]) == (endpoint, "body.model_version")
    )  # demo-compare.toml's rule
    # the report names the fields (the descriptor), and the tensors are no field differences
    assert not [f for f in ep["fields"] if not f["noise"] and "outputs" in f["path"]]
