"""Output tensors of model servers compared numerically, per output (pure: JSON trees in,
records out; the caller decodes bodies and gRPC messages).

Recognised answers (``parse_tensors``):
- KServe v2 / Triton inference protocol, REST JSON: ``{"model_name", "outputs": [{"name",
  "shape", "datatype", "data"}]}`` (``data`` flat or nested, row-major);
- the same protocol's gRPC ``ModelInferResponse`` as compare/protobuf.py decodes it with a
  schema (``--proto-descriptor``; protobuf's JSON mapping: int64 shapes as strings, bytes as
  base64): ``outputs[].contents.<type>_contents`` or ``raw_output_contents[i]`` (the i-th
  output's little-endian buffer, decoded by datatype and shape with numpy);
- TF Serving ``predict``: ``{"predictions": [...]}`` (row format; rows of objects give one
  tensor per key) or ``{"outputs": ...}`` (columnar: one array, or an object of name -> array).

Per pair and output (``compare_tensors``): shape and datatype changes and missing outputs (a
regression), max absolute and relative error, mean absolute error, cosine similarity, whether an
element lies beyond ``atol + rtol * |primary|``, and for classification outputs (floating
point, last axis of 2 or more classes) argmax (top-1) agreement and top-k overlap per row.
Bad input (data length not matching the shape, unknown datatype, NaN/inf, undecodable buffers,
ragged arrays) becomes a named anomaly of that side and output, never an exception.

Per endpoint (``TensorAgg``): per output, counts and reservoirs of the per-pair metrics; the
verdict reads ``tensor_metrics`` (group ``tensors``). Memory is bounded by the reservoirs.
Cost per pair: O(elements) numpy work; top-k is O(rows * classes) with argpartition.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from shadowtap.compare.config import TensorConfig, TensorTolerance
from shadowtap.compare.stats import Reservoir, percentiles

__all__ = [
    "DTYPES",
    "Anomaly",
    "OutputPair",
    "Parsed",
    "Tensor",
    "TensorAgg",
    "TensorPair",
    "compare_tensors",
    "differs",
    "lenient_json",
    "parse_tensors",
    "tensor_metrics",
    "tensors_html",
    "terminal_rows",
]

# KServe v2 datatypes -> little-endian numpy dtypes (BYTES is compared by equality only).
DTYPES: dict[str, str] = {
    "BOOL": "?",
    "UINT8": "u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}
_CDF = (0, 5, 10, 25, 50, 75, 90, 95, 99, 100)
_KSERVE_PATHS = (
    "body.outputs[].data",
    "body.outputs[].contents",
    "body.outputs[].fp",
    "body.outputs[].int",
    "body.outputs[].uint",
    "body.outputs[].bool",
    "body.outputs[].bytes_contents",
    "body.raw_output_contents",
)
_MODEL_IN_TARGET = re.compile(r"/v[12]/models/([^/:?]+)")


@dataclass(frozen=True, slots=True)
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    values: Any  # numpy array of ``shape`` (float64 for numbers), or a list for BYTES


@dataclass(frozen=True, slots=True)
class Anomaly:
    output: str
    kind: str  # length_mismatch, unknown_datatype, nan, inf, undecodable, ragged, non_numeric
    detail: str


@dataclass(frozen=True, slots=True)
class Parsed:
    api: str  # "kserve.v2" or "tfserving"
    model: str
    tensors: dict[str, Tensor]
    anomalies: tuple[Anomaly, ...]
    # where the tensors' values are in the body, as compare/diff.py names paths: their field
    # differences are carried by the tensor comparison instead (values that are no tensor, a
    # TF Serving row's label string, stay fields)
    prefixes: tuple[str, ...] = ()


def _shape(v: Any) -> tuple[int, ...] | None:
    if not isinstance(v, list):
        return None
    try:
        out = tuple(int(x) for x in v)
    except (TypeError, ValueError):
        return None
    return out if all(x >= 0 for x in out) else None


def _numbers(
    name: str, dt: str, raw: Any, shape: tuple[int, ...] | None, anomalies: list[Anomaly]
) -> Tensor | None:
    """A tensor from JSON values (flat or nested) of a declared (or inferred) shape."""
    if dt == "BYTES":
        flat = raw if isinstance(raw, list) else [raw]
        return Tensor(
            name, dt, shape if shape is not None else (len(flat),), [str(x) for x in flat]
        )
    try:
        arr = np.asarray(raw)
    except ValueError as exc:  # ragged nested lists
        anomalies.append(Anomaly(name, "ragged", f"not a rectangular array: {exc}"[:200]))
        return None
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        anomalies.append(
            Anomaly(
                name, "non_numeric", f"values of {dt or 'an inferred type'} are not all numbers"
            )
        )
        return None
    if shape is None:
        shape = tuple(arr.shape)
    elif arr.size != math.prod(shape):
        anomalies.append(
            Anomaly(
                name,
                "length_mismatch",
                f"{arr.size} values for shape {list(shape)} ({math.prod(shape)} expected)",
            )
        )
        return None
    if not dt:
        dt = "BOOL" if arr.dtype.kind == "b" else ("FP64" if arr.dtype.kind == "f" else "INT64")
    return Tensor(name, dt, shape, arr.astype(np.float64).reshape(shape))


def _raw(
    name: str, dt: str, b64: Any, shape: tuple[int, ...], anomalies: list[Anomaly]
) -> Tensor | None:
    """A tensor from a little-endian buffer (``raw_output_contents``, base64 in the JSON tree)."""
    if dt == "BYTES":  # 4-byte little-endian length before each element
        return Tensor(name, dt, shape, [str(b64)])
    try:
        buf = base64.b64decode(str(b64), validate=True)
    except (binascii.Error, ValueError):
        anomalies.append(Anomaly(name, "undecodable", "raw_output_contents is not base64"))
        return None
    dtype = np.dtype(DTYPES[dt])
    n = math.prod(shape)
    if len(buf) != n * dtype.itemsize:
        anomalies.append(
            Anomaly(
                name,
                "length_mismatch",
                f"{len(buf)} bytes for shape {list(shape)} of {dt} ({n * dtype.itemsize} expected)",
            )
        )
        return None
    arr = np.frombuffer(buf, dtype=dtype).astype(np.float64).reshape(shape)
    return Tensor(name, dt, shape, arr)


def _finite(t: Tensor, anomalies: list[Anomaly]) -> None:
    if isinstance(t.values, np.ndarray) and t.values.size:
        nan = int(np.isnan(t.values).sum())
        inf = int(np.isinf(t.values).sum())
        if nan:
            anomalies.append(Anomaly(t.name, "nan", f"{nan} NaN of {t.values.size} values"))
        if inf:
            anomalies.append(Anomaly(t.name, "inf", f"{inf} infinite of {t.values.size} values"))


def _kserve(body: dict[str, Any], target: str) -> Parsed:
    anomalies: list[Anomaly] = []
    tensors: dict[str, Tensor] = {}
    raws = body.get("raw_output_contents")
    raws = raws if isinstance(raws, list) else []
    for i, out in enumerate(body["outputs"]):
        name = str(out.get("name", f"#{i}"))
        dt = str(out.get("datatype", "")).upper()
        shape = _shape(out.get("shape"))
        if dt not in DTYPES and dt != "BYTES":
            anomalies.append(Anomaly(name, "unknown_datatype", f"datatype {dt or '(none)'!r}"))
            continue
        if shape is None:
            anomalies.append(
                Anomaly(
                    name, "length_mismatch", f"shape {out.get('shape')!r} is not a list of sizes"
                )
            )
            continue
        t: Tensor | None
        if "data" in out:
            t = _numbers(name, dt, out["data"], shape, anomalies)
        elif isinstance(out.get("contents"), dict) and out["contents"]:
            values = next(iter(out["contents"].values()))
            if dt in ("INT64", "UINT64") and isinstance(values, list):  # JSON mapping: strings
                values = [
                    int(v) if isinstance(v, str) and v.lstrip("-").isdigit() else v for v in values
                ]
            t = _numbers(name, dt, values, shape, anomalies)
        elif any(k.endswith("_contents") for k in out):  # contents inlined in the output
            key = next(k for k in out if k.endswith("_contents"))
            t = _numbers(name, dt, out[key], shape, anomalies)
        elif i < len(raws):
            t = _raw(name, dt, raws[i], shape, anomalies)
        elif math.prod(shape) == 0:
            t = Tensor(name, dt, shape, np.zeros(shape))
        else:
            anomalies.append(Anomaly(name, "length_mismatch", f"no data for shape {list(shape)}"))
            continue
        if t is not None:
            _finite(t, anomalies)
            tensors[name] = t
    model = str(body.get("model_name") or _target_model(target))
    return Parsed("kserve.v2", model, tensors, tuple(anomalies), _KSERVE_PATHS)


def _tfserving(body: dict[str, Any], target: str) -> Parsed:
    anomalies: list[Anomaly] = []
    tensors: dict[str, Tensor] = {}
    key = "predictions" if "predictions" in body else "outputs"
    value = body[key]
    columns: dict[str, Any]
    if isinstance(value, dict):
        columns = value
        where = f"body.{key}."
    elif (
        key == "predictions"
        and isinstance(value, list)
        and value
        and all(isinstance(r, dict) for r in value)
    ):
        names = list(value[0])
        columns = {n: [r.get(n) for r in value] for n in names}
        where = "body.predictions[]."
    else:
        columns = {key: value}
        where = ""
    for name, raw in columns.items():
        found: list[Anomaly] = []
        t = _numbers(str(name), "", raw, None, found)
        # a named column of strings (a label next to the scores) is no tensor, nor an anomaly
        anomalies.extend(x for x in found if x.kind != "non_numeric" or len(columns) == 1)
        if t is not None:
            _finite(t, anomalies)
            tensors[str(name)] = t
    prefixes = tuple(f"body.{n}" if not where else f"{where}{n}" for n in tensors)
    return Parsed("tfserving", _target_model(target), tensors, tuple(anomalies), prefixes)


def _target_model(target: str) -> str:
    m = _MODEL_IN_TARGET.search(target)
    return m.group(1) if m else ""


def parse_tensors(body: Any, target: str = "") -> Parsed | None:
    """The output tensors of an answer's JSON tree, or None when it is not a tensor answer."""
    if not isinstance(body, dict):
        return None
    outs = body.get("outputs")
    if (
        isinstance(outs, list)
        and outs
        and all(isinstance(o, dict) for o in outs)
        and all("datatype" in o or "shape" in o for o in outs)
    ):
        return _kserve(body, target)
    if "predictions" in body or (outs is not None and not isinstance(outs, str)):
        return _tfserving(body, target)
    return None


def lenient_json(raw: bytes) -> Any:
    """A body that strict JSON (orjson) refused, read the way Python's json reads it: NaN and
    Infinity allowed, as some model servers write them (their values become ``nan``/``inf``
    anomalies). None when it is not JSON even so."""
    import json

    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


# ----------------------------------------------------------------------------- per pair


@dataclass(frozen=True, slots=True)
class OutputPair:
    name: str
    change: str | None  # "shape", "datatype", "missing", "extra" (a regression), else None
    detail: str
    max_abs: float | None = None
    max_rel: float | None = None
    mae: float | None = None
    cosine: float | None = None
    breach: bool = False  # an element beyond atol + rtol * |primary| (or NaN on one side only)
    rows: int = 0  # classification rows (0: not a classification output)
    top1_agree: int = 0
    topk_overlap: float = 0.0  # sum over rows of |top-k(p) & top-k(s)| / k


@dataclass(frozen=True, slots=True)
class TensorPair:
    api: str
    model: str
    outputs: tuple[OutputPair, ...]
    primary_anomalies: tuple[Anomaly, ...]
    shadow_anomalies: tuple[Anomaly, ...]


def _topk(a: Any, k: int) -> Any:
    return np.argpartition(-a, k - 1, axis=-1)[..., :k]


def _compare(name: str, p: Tensor, s: Tensor, tol: TensorTolerance) -> OutputPair:
    if p.shape != s.shape:
        return OutputPair(name, "shape", f"shape {list(p.shape)} -> {list(s.shape)}")
    if p.datatype != s.datatype:
        return OutputPair(name, "datatype", f"datatype {p.datatype} -> {s.datatype}")
    if not isinstance(p.values, np.ndarray) or not isinstance(s.values, np.ndarray):
        same = p.values == s.values
        return OutputPair(
            name,
            None,
            "",
            0.0 if same else 1.0,
            0.0 if same else 1.0,
            0.0 if same else 1.0,
            1.0 if same else 0.0,
            not same,
        )
    a = p.values.ravel()
    b = s.values.ravel()
    if a.size == 0:
        return OutputPair(name, None, "", 0.0, 0.0, 0.0, 1.0, False)
    fa, fb = np.isfinite(a), np.isfinite(b)
    # NaN where the other side has a number (or NaN vs inf) is a breach; equal non-finite
    # values on both sides are equal.
    odd = bool(np.any(fa != fb) or np.any(~fa & ~fb & ~((a == b) | (np.isnan(a) & np.isnan(b)))))
    both = fa & fb
    x, y = a[both], b[both]
    if x.size:
        err = np.abs(y - x)
        max_abs = float(err.max())
        mae = float(err.mean())
        denom = np.abs(x)
        rel = np.divide(err, denom, out=np.where(err > 0, np.inf, 0.0), where=denom > 0)
        max_rel = float(rel.max())
        breach = odd or bool(np.any(err > tol.atol + tol.rtol * denom))
        nx, ny = float(np.linalg.norm(x)), float(np.linalg.norm(y))
        cosine = (
            float(np.dot(x, y) / (nx * ny)) if nx > 0 and ny > 0 else (1.0 if nx == ny else 0.0)
        )
    else:
        max_abs = max_rel = mae = 0.0
        cosine = 1.0
        breach = odd
    rows = agree = 0
    overlap = 0.0
    classes = p.shape[-1] if p.shape else 0
    if classes >= 2 and p.datatype.startswith("FP") and not odd:
        pm = p.values.reshape(-1, classes)
        sm = s.values.reshape(-1, classes)
        rows = pm.shape[0]
        agree = int(np.sum(np.argmax(pm, axis=-1) == np.argmax(sm, axis=-1)))
        k = min(tol.top_k, classes)
        tp, ts = _topk(pm, k), _topk(sm, k)
        overlap = float(sum(len(set(r1.tolist()) & set(r2.tolist())) / k for r1, r2 in zip(tp, ts)))
    return OutputPair(name, None, "", max_abs, max_rel, mae, cosine, breach, rows, agree, overlap)


def compare_tensors(p: Parsed, s: Parsed, cfg: TensorConfig) -> TensorPair:
    """The per-output comparison of a pair's parsed answers (outputs in the primary's order,
    then the shadow's extra ones)."""
    outs: list[OutputPair] = []
    bad_p = {a.output for a in p.anomalies}
    bad_s = {a.output for a in s.anomalies}
    for name, pt in p.tensors.items():
        st = s.tensors.get(name)
        if st is None:
            if name not in bad_s:
                outs.append(OutputPair(name, "missing", "the shadow's answer lacks this output"))
            continue
        outs.append(_compare(name, pt, st, cfg.tolerance(p.model, name)))
    for name in s.tensors:
        if name not in p.tensors and name not in bad_p:
            outs.append(OutputPair(name, "extra", "only the shadow's answer has this output"))
    return TensorPair(p.api, p.model, tuple(outs), p.anomalies, s.anomalies)


def differs(tp: TensorPair) -> bool:
    """Whether the pair's tensors differ at all (a change, or any element not equal)."""
    return any(o.change is not None or (o.max_abs or 0.0) > 0 or o.breach for o in tp.outputs) or (
        {(a.output, a.kind) for a in tp.primary_anomalies}
        != {(a.output, a.kind) for a in tp.shadow_anomalies}
    )


# ----------------------------------------------------------------------------- per endpoint


class _OutAgg:
    __slots__ = (
        "agree",
        "breaches",
        "changes",
        "compared",
        "max_abs",
        "max_rel",
        "mae",
        "cosine",
        "overlap",
        "pairs",
        "rows",
        "worst_abs",
    )

    def __init__(self, k: int, seed: int) -> None:
        self.pairs = 0  # pairs where both or either side had this output
        self.compared = 0  # pairs with numbers on both sides of the same shape and type
        self.changes: Counter[str] = Counter()  # "shape: [1, 3] -> [1, 4]" -> pairs
        self.breaches = 0
        self.rows = 0
        self.agree = 0
        self.overlap = 0.0
        self.worst_abs = 0.0
        self.max_abs = Reservoir(k, seed, "d")
        self.max_rel = Reservoir(k, seed + 1, "d")
        self.mae = Reservoir(k, seed + 2, "d")
        self.cosine = Reservoir(k, seed + 3, "d")

    def merge(self, o: _OutAgg) -> None:
        self.pairs += o.pairs
        self.compared += o.compared
        self.changes.update(o.changes)
        self.breaches += o.breaches
        self.rows += o.rows
        self.agree += o.agree
        self.overlap += o.overlap
        self.worst_abs = max(self.worst_abs, o.worst_abs)
        for mine, theirs in (
            (self.max_abs, o.max_abs),
            (self.max_rel, o.max_rel),
            (self.mae, o.mae),
            (self.cosine, o.cosine),
        ):
            mine.merge(theirs)


class TensorAgg:
    """One endpoint's tensor comparisons (bounded: reservoirs per output, at most
    ``MAX_OUTPUTS`` outputs)."""

    MAX_OUTPUTS = 64

    def __init__(self, k: int, seed: int) -> None:
        self.k = k
        self.seed = seed
        self.pairs = 0
        self.apis: Counter[str] = Counter()
        self.models: Counter[str] = Counter()
        self.outputs: dict[str, _OutAgg] = {}
        self.output_model: dict[str, str] = {}
        self.anomalies_primary: Counter[tuple[str, str]] = Counter()  # (output, kind) -> pairs
        self.anomalies_shadow: Counter[tuple[str, str]] = Counter()
        self.anomaly_detail: dict[tuple[str, str], str] = {}

    def _out(self, name: str, model: str) -> _OutAgg:
        o = self.outputs.get(name)
        if o is None:
            if len(self.outputs) >= self.MAX_OUTPUTS:
                name = "(other outputs)"
                o = self.outputs.get(name)
            if o is None:
                o = self.outputs[name] = _OutAgg(self.k, self.seed + 4 * len(self.outputs))
                self.output_model[name] = model
        return o

    def add(self, tp: TensorPair) -> None:
        self.pairs += 1
        self.apis[tp.api] += 1
        self.models[tp.model] += 1
        for side, found in (
            (self.anomalies_primary, tp.primary_anomalies),
            (self.anomalies_shadow, tp.shadow_anomalies),
        ):
            for a in {(a.output, a.kind): a for a in found}.values():
                side[(a.output, a.kind)] += 1
                self.anomaly_detail.setdefault((a.output, a.kind), a.detail)
        for op in tp.outputs:
            o = self._out(op.name, tp.model)
            o.pairs += 1
            if op.change is not None:
                o.changes[op.detail if op.change in ("shape", "datatype") else op.change] += 1
                continue
            if op.max_abs is None:
                continue
            o.compared += 1
            o.breaches += op.breach
            o.rows += op.rows
            o.agree += op.top1_agree
            o.overlap += op.topk_overlap
            o.worst_abs = max(o.worst_abs, op.max_abs)
            o.max_abs.add(op.max_abs)
            o.max_rel.add(op.max_rel if op.max_rel is not None else 0.0)
            o.mae.add(op.mae if op.mae is not None else 0.0)
            o.cosine.add(op.cosine if op.cosine is not None else 1.0)

    def merge(self, o: TensorAgg) -> None:
        self.pairs += o.pairs
        self.apis.update(o.apis)
        self.models.update(o.models)
        self.anomalies_primary.update(o.anomalies_primary)
        self.anomalies_shadow.update(o.anomalies_shadow)
        for k, v in o.anomaly_detail.items():
            self.anomaly_detail.setdefault(k, v)
        for name, theirs in o.outputs.items():
            mine = self.outputs.get(name)
            if mine is None:
                self.outputs[name] = theirs
                self.output_model[name] = o.output_model.get(name, "")
            else:
                mine.merge(theirs)

    def report(self, cfg: TensorConfig) -> dict[str, Any]:
        def dist(r: Reservoir) -> dict[str, Any]:
            vals = [v for v in r.items if math.isfinite(v)]
            cdf = percentiles(vals, _CDF) if vals else []
            return {
                "n": r.count,
                "percentiles": list(_CDF),
                "cdf": [round(v, 9) for v in cdf],
                "p50": cdf[4] if cdf else None,
                "max": max(r.items) if len(r.items) else None,
            }

        outputs = []
        for name, o in self.outputs.items():
            model = self.output_model.get(name, "")
            tol = cfg.tolerance(model, name)
            outputs.append(
                {
                    "name": name,
                    "model": model,
                    "pairs": o.pairs,
                    "compared": o.compared,
                    "changes": [{"change": c, "pairs": n} for c, n in o.changes.most_common(5)],
                    "changed_pairs": sum(o.changes.values()),
                    "breaches": o.breaches,
                    "breach_rate": o.breaches / o.compared if o.compared else 0.0,
                    "worst_max_abs": o.worst_abs,
                    "max_abs": dist(o.max_abs),
                    "max_rel": dist(o.max_rel),
                    "mae": dist(o.mae),
                    "cosine": dist(o.cosine),
                    "classification": {
                        "rows": o.rows,
                        "top1_agreement": o.agree / o.rows if o.rows else None,
                        "top1_flips": o.rows - o.agree,
                        "top_k": tol.top_k,
                        "topk_overlap": o.overlap / o.rows if o.rows else None,
                    }
                    if o.rows
                    else None,
                    "tolerance": {
                        "atol": tol.atol,
                        "rtol": tol.rtol,
                        "max_breach_rate": tol.max_breach_rate,
                        "min_cosine": tol.min_cosine,
                        "min_top1_agreement": tol.min_top1_agreement,
                        "critical_top1_agreement": tol.critical_top1_agreement,
                        "min_topk_overlap": tol.min_topk_overlap,
                    },
                }
            )
        keys = sorted(set(self.anomalies_primary) | set(self.anomalies_shadow))
        return {
            "pairs": self.pairs,
            "apis": sorted(self.apis),
            "models": [m for m, _ in self.models.most_common(5)],
            "outputs": outputs,
            "anomalies": [
                {
                    "output": out,
                    "kind": kind,
                    "primary": self.anomalies_primary[(out, kind)],
                    "shadow": self.anomalies_shadow[(out, kind)],
                    "detail": self.anomaly_detail.get((out, kind), ""),
                }
                for out, kind in keys
            ],
        }


# -------------------------------------------------------------------------------- verdict


def tensor_metrics(ep: Any, cfg: Any) -> list[Any]:
    """The verdict's metrics (group ``tensors``) of one endpoint's output tensors, per output:
    shape/datatype changes (any fails), the share of pairs beyond tolerance, the median cosine,
    top-1 agreement and top-k overlap of classification outputs; per anomaly kind: anomalies
    on the shadow beyond the primary's fail."""
    from shadowtap.compare.report import Group
    from shadowtap.compare.verdict import HIGH, LOW, PASS, _metric

    t = ep.tensors
    tc: TensorConfig = cfg.tensors
    name = ep.endpoint
    crit = set(tc.critical) | (
        {"shape", "anomaly", "tolerance", "top1", "topk", "cosine"}
        if Group.TENSORS in cfg.verdict.critical
        else set()
    )
    out: list[Any] = []

    def add(
        metric: str,
        path: str,
        value: float | None,
        threshold: float | None,
        failed: bool,
        low: bool,
        cond: str,
        detail: str,
        critical: bool = False,
    ) -> None:
        out.append(
            _metric(
                metric,
                Group.TENSORS,
                name,
                value,
                threshold,
                (LOW if low else HIGH) if failed else PASS,
                failed,
                critical or cond in crit,
                detail,
                path,
            )
        )

    for o in t["outputs"]:
        path = f"tensors.{o['name']}"
        tol = o["tolerance"]
        n = o["pairs"]
        ch = o["changed_pairs"]
        changes = ", ".join(f"{c['change']} x{c['pairs']}" for c in o["changes"])
        add(
            "tensor shape",
            path,
            ch / n if n else 0.0,
            0.0,
            ch > 0,
            False,
            "shape",
            f"shape/datatype changed in {ch} of {n} pairs" + (f": {changes}" if changes else ""),
        )
        if not o["compared"]:
            continue
        m = o["compared"]
        rate = o["breach_rate"]
        add(
            "tensor tolerance",
            path,
            rate,
            tol["max_breach_rate"],
            rate > tol["max_breach_rate"],
            False,
            "tolerance",
            f"{o['breaches']} of {m} pairs beyond atol {tol['atol']:g} + rtol {tol['rtol']:g}"
            f" x |primary|; max abs error p50 {o['max_abs']['p50']:.3g}, worst "
            f"{o['worst_max_abs']:.3g}; max rel p50 {o['max_rel']['p50']:.3g}; "
            f"MAE p50 {o['mae']['p50']:.3g}",
        )
        cos = o["cosine"]["p50"]
        add(
            "tensor cosine",
            path,
            cos,
            tol["min_cosine"],
            cos < tol["min_cosine"],
            True,
            "cosine",
            f"median cosine similarity {cos:.6f} over {m} pairs "
            f"(lowest sampled {min(o['cosine']['cdf'] or [cos]):.6f})",
        )
        c = o["classification"]
        if c is not None:
            agr = c["top1_agreement"]
            add(
                "top-1 agreement",
                path,
                agr,
                tol["min_top1_agreement"],
                agr < tol["min_top1_agreement"],
                True,
                "top1",
                f"argmax of the last axis agrees in {agr:.2%} of {c['rows']} rows "
                f"({c['top1_flips']} flipped; below {tol['critical_top1_agreement']:g} fails the "
                f"run)",
                agr < tol["critical_top1_agreement"],
            )
            ov = c["topk_overlap"]
            add(
                f"top-{c['top_k']} overlap",
                path,
                ov,
                tol["min_topk_overlap"],
                ov < tol["min_topk_overlap"],
                True,
                "topk",
                f"mean top-{c['top_k']} overlap {ov:.3f} over {c['rows']} rows",
            )
    for a in t["anomalies"]:
        extra = a["shadow"] - a["primary"]
        add(
            "tensor anomaly",
            f"tensors.{a['output']}",
            float(a["shadow"]),
            float(a["primary"]),
            extra > 0,
            False,
            "anomaly",
            f"{a['kind']}: shadow {a['shadow']} vs primary {a['primary']} of {t['pairs']} pairs"
            f" ({a['detail']})",
        )
    return out


# -------------------------------------------------------------------------------- reports


def _g(v: Any, fmt: str = ".3g") -> str:
    return "-" if v is None else format(v, fmt)


def terminal_rows(t: dict[str, Any]) -> list[list[Any]]:
    """Rows of (what, value, note) for the terminal report: one per output, then anomalies."""
    rows: list[list[Any]] = [
        ["tensor answers", str(t["pairs"]), ", ".join(t["apis"] + [m for m in t["models"] if m])]
    ]
    for o in t["outputs"]:
        c = o["classification"]
        parts = [
            f"{o['compared']}/{o['pairs']} compared",
            f"beyond tolerance {o['breaches']}",
            f"max abs p50 {_g(o['max_abs']['p50'])} worst {_g(o['worst_max_abs'])}",
            f"max rel p50 {_g(o['max_rel']['p50'])}",
            f"MAE p50 {_g(o['mae']['p50'])}",
            f"cosine p50 {_g(o['cosine']['p50'], '.6f')}",
        ]
        if c is not None:
            parts.append(
                f"top-1 {c['top1_agreement']:.2%} ({c['top1_flips']} flips of "
                f"{c['rows']} rows), top-{c['top_k']} overlap {c['topk_overlap']:.3f}"
            )
        changes = ", ".join(f"{x['change']} x{x['pairs']}" for x in o["changes"])
        rows.append([f"output {o['name']}", "; ".join(parts), changes])
    for a in t["anomalies"]:
        rows.append(
            [
                f"anomaly {a['output']}: {a['kind']}",
                f"primary {a['primary']}, shadow {a['shadow']}",
                a["detail"],
            ]
        )
    return rows


def tensors_html(t: dict[str, Any]) -> str:
    """The tensor section of an endpoint's card (a table of the terminal rows)."""
    from html import escape

    out = ['<h4>Output tensors</h4><table class="tensors">']
    for row in terminal_rows(t):
        out.append("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>")
    out.append("</table>")
    return "".join(out)
