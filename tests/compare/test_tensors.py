"""Output tensors compared through ``shadowtap compare`` (real files, the CLI): KServe v2 REST and
TF Serving pairs, and the pure parser's named anomalies for bad input."""

from __future__ import annotations

import base64
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np

from shadowtap.compare.config import TensorConfig
from shadowtap.compare.tensors import compare_tensors, parse_tensors
from shadowtap.errors import EXIT_OK, EXIT_VERDICT_FAIL
from shadowtap.jsonl import JsonlWriter

SHADOWTAP = str(Path(sys.executable).with_name("shadowtap"))
N = 60
CLASSES = 10


def scores(i: int) -> list[float]:
    rng = random.Random(i)
    return [round(rng.random(), 4) for _ in range(CLASSES)]


def kserve(vals: list[float], shape: list[int] | None = None, datatype: str = "FP32") -> dict:
    return {
        "model_name": "resnet",
        "model_version": "1",
        "id": "x",
        "outputs": [
            {"name": "probs", "shape": shape or [1, CLASSES], "datatype": datatype, "data": vals}
        ],
    }


def flip(vals: list[float]) -> list[float]:
    """The top-1 class moved: the best and the worst score swapped."""
    out = list(vals)
    hi, lo = int(np.argmax(out)), int(np.argmin(out))
    out[hi], out[lo] = out[lo], out[hi]
    return out


def write(craft, tmp_path: Path, primary, shadow, target: str, name: str) -> tuple[str, str]:
    ex, res = tmp_path / f"{name}-ex.jsonl", tmp_path / f"{name}-res.jsonl"
    with JsonlWriter(str(ex)) as we, JsonlWriter(str(res)) as wr:
        for i in range(N):
            we.write(
                craft.exchange(
                    i, craft.response(primary(i)), method="POST", target=target
                ).to_json()
            )
            wr.write(craft.result(i, craft.response(shadow(i))).to_json())
    return str(ex), str(res)


def compare(tmp_path: Path, ex: str, res: str, config: str | None = None):
    out = tmp_path / "report.json"
    args = [SHADOWTAP, "compare", ex, res, "--json", str(out)]
    if config is not None:
        cfg = tmp_path / "compare.toml"
        cfg.write_text(config)
        args += ["--config", str(cfg)]
    p = subprocess.run(args, check=False, capture_output=True, text=True, timeout=120)
    rep = json.loads(out.read_text()) if out.exists() else None
    return p, rep


def tensors_of(rep) -> dict:
    (ep,) = rep["endpoints"]
    return ep["tensors"]


def failed(rep) -> list[dict]:
    return [m for m in rep["verdict"]["metrics"] if m["failed"]]


KSERVE = "/v2/models/resnet/infer"
TOML = """
[tensors.defaults]
atol = 0.01
rtol = 0.0
[[tensors.models]]
model = "^resnet$"
atol = 0.01
rtol = 0.0
min_top1_agreement = 0.95
"""


def test_identical_kserve_model_passes(craft, tmp_path):
    ex, res = write(
        craft, tmp_path, lambda i: kserve(scores(i)), lambda i: kserve(scores(i)), KSERVE, "same"
    )
    p, rep = compare(tmp_path, ex, res)
    assert p.returncode == EXIT_OK, p.stdout + p.stderr
    (out,) = tensors_of(rep)["outputs"]
    assert out["name"] == "probs" and out["compared"] == N and out["breaches"] == 0
    assert out["classification"]["top1_agreement"] == 1.0
    assert "output tensors of" in p.stdout and "output probs" in p.stdout


def test_shifted_scores_within_tolerance_pass(craft, tmp_path):
    ex, res = write(
        craft,
        tmp_path,
        lambda i: kserve(scores(i)),
        lambda i: kserve([round(v + 0.004, 4) for v in scores(i)]),
        KSERVE,
        "shift",
    )
    p, rep = compare(tmp_path, ex, res, TOML)
    assert p.returncode == EXIT_OK, p.stdout + p.stderr
    (out,) = tensors_of(rep)["outputs"]
    assert out["breaches"] == 0
    assert 0.003 < out["max_abs"]["p50"] < 0.005 and out["cosine"]["p50"] > 0.99
    # the values are no content differences of their own: the tensor comparison carries them
    fields = rep["endpoints"][0]["fields"]
    assert not any(f["path"].startswith("body.outputs[].data") for f in fields)


def test_flipped_top1_beyond_threshold_fails_naming_tensor_and_metric(craft, tmp_path):
    ex, res = write(
        craft,
        tmp_path,
        lambda i: kserve(scores(i)),
        lambda i: kserve(flip(scores(i)) if i % 5 == 0 else scores(i)),
        KSERVE,
        "flip",
    )
    p, rep = compare(tmp_path, ex, res, TOML)
    assert p.returncode == EXIT_VERDICT_FAIL, p.stdout + p.stderr
    names = {(m["name"], m["path"]) for m in failed(rep)}
    assert ("top-1 agreement", "tensors.probs") in names
    (out,) = tensors_of(rep)["outputs"]
    assert out["classification"]["top1_flips"] == N // 5
    assert any("top-1 agreement" in r and "tensors.probs" in r for r in rep["verdict"]["reasons"])


def test_shape_change_fails(craft, tmp_path):
    ex, res = write(
        craft,
        tmp_path,
        lambda i: kserve(scores(i)),
        lambda i: kserve(scores(i) + [0.0], shape=[1, CLASSES + 1]),
        KSERVE,
        "shape",
    )
    p, rep = compare(tmp_path, ex, res)
    assert p.returncode == EXIT_VERDICT_FAIL, p.stdout + p.stderr
    (crit,) = [m for m in failed(rep) if m["critical"] and m["group"] == "tensors"]
    assert crit["name"] == "tensor shape" and crit["path"] == "tensors.probs"
    assert "[1, 10] -> [1, 11]" in crit["detail"]


def test_tf_serving_predictions(craft, tmp_path):
    tgt = "/v1/models/iris:predict"

    def prim(i):
        return {"predictions": [scores(i)[:3], scores(i + 1000)[:3]]}

    ex, res = write(craft, tmp_path, prim, prim, tgt, "tfsame")
    p, rep = compare(tmp_path, ex, res)
    assert p.returncode == EXIT_OK, p.stdout + p.stderr
    t = tensors_of(rep)
    assert t["apis"] == ["tfserving"] and t["models"] == ["iris"]
    (out,) = t["outputs"]
    assert out["name"] == "predictions" and out["classification"]["rows"] == 2 * N

    def flipped(i):
        return {"predictions": [flip(scores(i)[:3]), scores(i + 1000)[:3]]}

    ex, res = write(craft, tmp_path, prim, flipped, tgt, "tfflip")
    p, rep = compare(tmp_path, ex, res)
    assert p.returncode == EXIT_VERDICT_FAIL, p.stdout + p.stderr
    assert ("top-1 agreement", "tensors.predictions") in {
        (m["name"], m["path"]) for m in failed(rep)
    }


def test_tf_serving_columnar_outputs_shape_change(craft, tmp_path):
    ex, res = write(
        craft,
        tmp_path,
        lambda i: {"outputs": {"score": [[0.5, 0.5]]}},
        lambda i: {"outputs": {"score": [[0.5, 0.5, 0.0]]}},
        "/v1/models/m:predict",
        "tfcol",
    )
    p, rep = compare(tmp_path, ex, res)
    assert p.returncode == EXIT_VERDICT_FAIL
    assert ("tensor shape", "tensors.score") in {(m["name"], m["path"]) for m in failed(rep)}


def test_nan_on_the_shadow_is_a_named_anomaly(craft, tmp_path):
    bad = b'{"outputs":[{"name":"probs","shape":[1,2],"datatype":"FP32","data":[NaN,0.5]}]}'
    ex, res = tmp_path / "nan-ex.jsonl", tmp_path / "nan-res.jsonl"
    with JsonlWriter(str(ex)) as we, JsonlWriter(str(res)) as wr:
        for i in range(N):
            we.write(
                craft.exchange(
                    i,
                    craft.response(kserve([0.5, 0.5], shape=[1, 2])),
                    method="POST",
                    target=KSERVE,
                ).to_json()
            )
            wr.write(craft.result(i, craft.response(raw=bad)).to_json())
    p, rep = compare(tmp_path, str(ex), str(res))
    assert "Traceback" not in p.stderr and p.returncode == EXIT_VERDICT_FAIL, p.stderr
    # NaN is no strict JSON: read leniently, the anomaly is named, on the shadow only
    kinds = {(a["output"], a["kind"]): a for a in tensors_of(rep)["anomalies"]}
    assert kinds[("probs", "nan")]["shadow"] == N and kinds[("probs", "nan")]["primary"] == 0
    assert ("tensor anomaly", "tensors.probs") in {(m["name"], m["path"]) for m in failed(rep)}


def test_bad_input_named_anomalies_never_exceptions():
    cfg = TensorConfig()
    short = parse_tensors(kserve([1.0, 2.0], shape=[1, 3]))
    assert short is not None and [a.kind for a in short.anomalies] == ["length_mismatch"]
    unknown = parse_tensors(kserve([1.0, 2.0], shape=[1, 2], datatype="FP8"))
    assert unknown is not None and unknown.anomalies[0].kind == "unknown_datatype"
    nan = parse_tensors(kserve([float("nan"), 2.0], shape=[1, 2]))
    assert nan is not None and nan.anomalies[0].kind == "nan" and "probs" in nan.tensors
    ragged = parse_tensors({"predictions": [[1.0, 2.0], [3.0]]})
    assert ragged is not None and ragged.anomalies[0].kind == "ragged"
    words = parse_tensors({"predictions": ["cat", "dog"]})
    assert words is not None and words.anomalies[0].kind == "non_numeric"
    raw = {
        "outputs": [{"name": "probs", "datatype": "FP32", "shape": ["1", "3"]}],
        "raw_output_contents": [base64.b64encode(b"\x00" * 8).decode()],
    }
    bad_raw = parse_tensors(raw)
    assert bad_raw is not None and bad_raw.anomalies[0].kind == "length_mismatch"
    good = parse_tensors(kserve([1.0, 2.0], shape=[1, 2]))
    assert good is not None
    # the primary's NaN against the shadow's number: a breach, no exception
    tp = compare_tensors(nan, good, cfg)
    assert tp.outputs[0].breach and tp.primary_anomalies[0].kind == "nan"
    # a missing output on the shadow is a change of its own
    tp = compare_tensors(good, short, cfg)
    assert tp.outputs == ()  # the shadow's output is an anomaly, reported as such


def test_raw_output_contents_decoded_by_datatype_and_shape():
    cfg = TensorConfig()
    vals = np.arange(6, dtype="<f4").reshape(2, 3)
    for dt, npdt in (
        ("FP32", "<f4"),
        ("FP16", "<f2"),
        ("FP64", "<f8"),
        ("INT8", "i1"),
        ("INT64", "<i8"),
        ("UINT16", "<u2"),
        ("BOOL", "?"),
    ):
        buf = vals.astype(npdt).tobytes()
        tree = {
            "model_name": "m",
            "outputs": [{"name": "y", "datatype": dt, "shape": ["2", "3"]}],
            "raw_output_contents": [base64.b64encode(buf).decode()],
        }
        parsed = parse_tensors(tree)
        assert parsed is not None and not parsed.anomalies, dt
        t = parsed.tensors["y"]
        assert t.shape == (2, 3) and t.datatype == dt
        assert np.array_equal(t.values, vals.astype(npdt).astype(np.float64))
        assert compare_tensors(parsed, parsed, cfg).outputs[0].max_abs == 0.0


def test_merged_comparisons_and_html_keep_the_tensors(craft):
    """Two Comparisons (as the process/Spark engines make them) merged after a pickle round trip
    count every pair's tensors; the HTML card shows the section."""
    import pickle

    from shadowtap.compare.aggregate import Comparison
    from shadowtap.compare.report_html import render_html

    def feed(c, lo, hi):
        for i in range(lo, hi):
            c.add(
                craft.exchange(i, craft.response(kserve(scores(i))), method="POST", target=KSERVE),
                craft.result(i, craft.response(kserve(flip(scores(i)) if i % 2 else scores(i)))),
            )

    a, b = Comparison(), Comparison()
    feed(a, 0, 20)
    feed(b, 20, 40)
    a.merge(pickle.loads(pickle.dumps(b)))
    rep = a.snapshot(fresh=True)
    (out,) = rep.endpoints[0].tensors["outputs"]
    assert out["pairs"] == 40 and out["classification"]["top1_flips"] == 20
    assert rep.endpoints[0].identical == 20
    assert "Output tensors" in render_html(rep) and "output probs" in render_html(rep)


def test_tf_rows_keep_their_non_tensor_fields(craft):
    """TF Serving rows of objects: the number columns are tensors, a label string stays a field
    whose flips the content comparison reports."""

    def row(i, label):
        return {"predictions": [{"score": scores(i)[:3], "label": label}]}

    rep = craft.run(
        40,
        lambda i: (
            craft.exchange(
                i, craft.response(row(i, "cat")), method="POST", target="/v1/models/pets:predict"
            ),
            craft.result(i, craft.response(row(i, "dog" if i % 2 else "cat"))),
        ),
    )
    t = rep.endpoints[0].tensors
    assert [o["name"] for o in t["outputs"]] == ["score"] and t["models"] == ["pets"]
    assert t["anomalies"] == []
    paths = {f.path for f in rep.endpoints[0].fields}
    assert "body.predictions[].label" in paths and "body.predictions[].score[]" not in paths


def test_the_quick_no_to_tensors_only_where_parsing_would_say_no_too():
    """compare/aggregate.py skips parsing a body for tensors when its bytes cannot hold a tensor
    answer; every doubt (a JSON escape, a NUL of UTF-16 JSON, a Content-Encoding) parses."""
    import json

    from shadowtap.compare.aggregate import _no_tensor_keys
    from shadowtap.compare.tensors import lenient_json, parse_tensors
    from shadowtap.records import Response

    def resp(body: bytes, *headers: tuple[str, str]) -> Response:
        return Response(
            ts=1.0,
            end_ts=1.0,
            version="HTTP/1.1",
            headers=headers,
            body=body,
            body_len=len(body),
            status=200,
        )

    kserve = {"outputs": [{"name": "y", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
    escaped = json.dumps(kserve).replace('"outputs"', '"\\u006futputs"').encode()
    assert parse_tensors(lenient_json(escaped)) is not None
    utf16 = json.dumps({"predictions": [[1.0]]}).encode("utf-16")
    assert parse_tensors(lenient_json(utf16)) is not None
    for body, quick_no in (
        (b'{"path": "/bench", "ok": true}', True),
        (b"", True),
        (json.dumps(kserve).encode(), False),
        (b'{"predictions": [[0.5]]}', False),
        (escaped, False),
        (utf16, False),
    ):
        assert _no_tensor_keys(resp(body)) is quick_no, body
    assert not _no_tensor_keys(resp(b"\x1f\x8b...", ("Content-Encoding", "gzip")))
