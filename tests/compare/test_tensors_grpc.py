"""KServe v2 gRPC answers with ``raw_output_contents`` end to end: a KServe-v2-shaped proto
compiled here with grpcio-tools, real grpcio servers (v1 and shadows), the calls captured through
a relay and parsed by the HTTP/2 layer, replayed by ``shadowtap replay`` to each shadow, and
compared by ``shadowtap compare --proto-descriptor``."""

from __future__ import annotations

import importlib
import importlib.util
import json
import subprocess
import sys
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import orjson
import pytest

from shadowtap.errors import EXIT_OK, EXIT_VERDICT_FAIL
from tests.support.prereq import require

PROTO = """
syntax = "proto3";
package inference;

message InferTensorContents {
  repeated bool bool_contents = 1;
  repeated int32 int_contents = 2;
  repeated int64 int64_contents = 3;
  repeated uint32 uint_contents = 4;
  repeated uint64 uint64_contents = 5;
  repeated float fp32_contents = 6;
  repeated double fp64_contents = 7;
  repeated bytes bytes_contents = 8;
}
message ModelInferRequest {
  message InferInputTensor {
    string name = 1;
    string datatype = 2;
    repeated int64 shape = 3;
    InferTensorContents contents = 5;
  }
  string model_name = 1;
  string model_version = 2;
  string id = 3;
  repeated InferInputTensor inputs = 5;
}
message ModelInferResponse {
  message InferOutputTensor {
    string name = 1;
    string datatype = 2;
    repeated int64 shape = 3;
    InferTensorContents contents = 5;
  }
  string model_name = 1;
  string model_version = 2;
  string id = 3;
  repeated InferOutputTensor outputs = 5;
  repeated bytes raw_output_contents = 6;
}
service GRPCInferenceService {
  rpc ModelInfer(ModelInferRequest) returns (ModelInferResponse);
}
"""
CALLS = 40
CLASSES = 10


@pytest.fixture(scope="module")
def kserve(tmp_path_factory):
    require(
        importlib.util.find_spec("grpc_tools") is not None, "grpcio-tools compiles the test's proto"
    )
    from tests.support.grpc_lab import compile_protos

    return compile_protos(tmp_path_factory.mktemp("kserve"), PROTO, "kservev2")


def probs(x: float, version: str) -> np.ndarray:
    rng = np.random.default_rng(int(x * 1000))
    p = rng.random(CLASSES).astype("<f4")
    if version == "shift":
        p = p + np.float32(0.004)
    elif version == "flip" and int(x) % 4 == 0:  # the top class moves for a quarter of inputs
        hi, lo = int(np.argmax(p)), int(np.argmin(p))
        p[hi], p[lo] = p[lo], p[hi]
    elif version == "shape":
        p = np.append(p, np.float32(0.0))
    return p


def serve(pb2, pb2_grpc, version: str):
    class Servicer(pb2_grpc.GRPCInferenceServiceServicer):
        def ModelInfer(self, request, context):
            x = request.inputs[0].contents.fp32_contents[0]
            p = probs(x, version)
            out = pb2.ModelInferResponse(model_name="resnet", model_version="1", id=request.id)
            out.outputs.add(name="probs", datatype="FP32", shape=[1, len(p)])
            out.outputs.add(name="label", datatype="INT64", shape=[1])
            out.raw_output_contents.append(p.astype("<f4").tobytes())
            label = np.argmax(probs(x, "v1" if version == "shift" else version))
            out.raw_output_contents.append(np.array([label], dtype="<i8").tobytes())
            return out

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


@pytest.fixture(scope="module")
def captured(kserve, tmp_path_factory):
    from tests.support.grpc_lab import Relay
    from tests.wire.exchanges import exchanges

    pb2, pb2_grpc, _ = kserve
    server, port = serve(pb2, pb2_grpc, "v1")
    relay = Relay(("127.0.0.1", port))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{relay.port}") as ch:
            stub = pb2_grpc.GRPCInferenceServiceStub(ch)
            for i in range(CALLS):
                req = pb2.ModelInferRequest(model_name="resnet", id=f"r{i}")
                t = req.inputs.add(name="x", datatype="FP32", shape=[1, 1])
                t.contents.fp32_contents.append(float(i))
                stub.ModelInfer(req)
    finally:
        relay.close()
        server.stop(0)
    exs = exchanges(relay.log)
    assert len(exs) == CALLS
    path = tmp_path_factory.mktemp("cap") / "exchanges.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e.to_json()) + b"\n" for e in exs))
    return path


def replay_and_compare(kserve, captured: Path, version: str, tmp_path: Path, config: str = ""):
    """Replay the captured calls to a ``version`` server, compare; (process, report, tensors)."""
    pb2, pb2_grpc, desc = kserve
    server, port = serve(pb2, pb2_grpc, version)
    out = tmp_path / f"results-{version}.jsonl"
    try:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "shadowtap",
                "replay",
                str(captured),
                "-t",
                f"http://127.0.0.1:{port}",
                "-o",
                str(out),
                "--allow-unsafe",
                "--speed",
                "max",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        server.stop(0)
    assert r.returncode == 0, r.stderr
    report = tmp_path / f"report-{version}.json"
    args = [
        sys.executable,
        "-m",
        "shadowtap",
        "compare",
        str(captured),
        str(out),
        "--json",
        str(report),
        "--proto-descriptor",
        str(desc),
    ]
    # the replayed calls' latency (a fresh channel's) is not what these tests judge
    cfg = tmp_path / "compare.toml"
    cfg.write_text("[latency]\nmin_samples = 1000000\n" + config)
    args += ["--config", str(cfg)]
    c = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert "Traceback" not in c.stderr, c.stderr
    rep = json.loads(report.read_text())
    (ep,) = rep["endpoints"]
    return c, rep, ep["tensors"]


TOML = """
[[tensors.models]]
model = "^resnet$"
atol = 0.01
rtol = 0.0
"""


def failed(rep) -> set[tuple[str, str]]:
    return {(m["name"], m["path"]) for m in rep["verdict"]["metrics"] if m["failed"]}


def test_identical_model_passes(kserve, captured, tmp_path):
    c, rep, t = replay_and_compare(kserve, captured, "v1", tmp_path)
    assert c.returncode == EXIT_OK, c.stdout + c.stderr
    outs = {o["name"]: o for o in t["outputs"]}
    assert outs["probs"]["compared"] == CALLS and outs["probs"]["max_abs"]["max"] == 0.0
    assert outs["probs"]["classification"]["top1_agreement"] == 1.0
    assert t["models"] == ["resnet"] and not t["anomalies"]


def test_shifted_scores_within_tolerance_pass(kserve, captured, tmp_path):
    c, rep, t = replay_and_compare(kserve, captured, "shift", tmp_path, TOML)
    assert c.returncode == EXIT_OK, c.stdout + c.stderr
    probs_out = next(o for o in t["outputs"] if o["name"] == "probs")
    assert probs_out["breaches"] == 0 and 0.003 < probs_out["max_abs"]["p50"] < 0.005
    # the raw buffers are no field differences: the tensor comparison carries them
    assert not any(
        f["path"].startswith("body.raw_output_contents") for f in rep["endpoints"][0]["fields"]
    )


def test_flipped_top1_fails_naming_the_tensor(kserve, captured, tmp_path):
    c, rep, t = replay_and_compare(kserve, captured, "flip", tmp_path, TOML)
    assert c.returncode == EXIT_VERDICT_FAIL, c.stdout + c.stderr
    assert ("top-1 agreement", "tensors.probs") in failed(rep)
    probs_out = next(o for o in t["outputs"] if o["name"] == "probs")
    assert probs_out["classification"]["top1_flips"] == CALLS // 4


def test_shape_change_fails(kserve, captured, tmp_path):
    c, rep, _t = replay_and_compare(kserve, captured, "shape", tmp_path)
    assert c.returncode == EXIT_VERDICT_FAIL, c.stdout + c.stderr
    assert ("tensor shape", "tensors.probs") in failed(rep)
