"""The streaming comparison: ``Comparison.add(exchange, result, baseline=None)`` one pair at a
time, ``Comparison.snapshot()`` -> the report (a JSON-able dict, schema in docs/compare.md) with
its verdict, at any time. ``shadowtap compare`` feeds it from files; the live mirror feeds it as
results arrive and calls snapshot() every second.

Memory is per endpoint and bounded by ``[limits]``: reservoirs of latencies and of leaf values,
counters per field, a few samples per field. Nothing grows with the number of exchanges, so ten
million pairs fit as easily as ten thousand. Cost per pair: equal responses (the common case) cost
a status compare, a header compare and one bytes compare; differing ones a parse and a walk.
add() and snapshot() may be called from different threads (one lock).
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from shadowtap.compare import verdict as verdict_mod
from shadowtap.compare.config import CompareConfig
from shadowtap.compare.diff import (
    Body,
    BodyType,
    Difference,
    Kind,
    PairDiff,
    Prepared,
    diff_headers,
    diff_responses,
    fold_keys,
)
from shadowtap.compare.endpoints import Templater
from shadowtap.compare.genai import GenAgg, GenAiComparer
from shadowtap.compare.noise import Volatility, judge_against_baseline, noise_reason
from shadowtap.compare.protobuf import Schema, diff_grpc
from shadowtap.compare.report import (
    REPORT_SCHEMA,
    Drift,
    EndpointReport,
    Errors,
    FieldReport,
    Flip,
    Latency,
    LatencySide,
    LatencyTest,
    NoiseEntry,
    Report,
    Sample,
    Side,
    Status,
    StatusPair,
    Summary,
)
from shadowtap.compare.samples import body_excerpt, redact_field, redact_text
from shadowtap.compare.stats import Reservoir, drift, latency_shift, percentiles
from shadowtap.compare.tensors import (
    TensorAgg,
    compare_tensors,
    differs,
    lenient_json,
    parse_tensors,
)
from shadowtap.records import Exchange, Response, Result

OTHER_FIELDS = "(other fields)"
OTHER_ENDPOINTS = "(other endpoints)"
_LEAVES_MAX = 64  # leaf values kept per body in the value sample
_FLIPS_MAX = 32  # distinct (primary -> shadow) value pairs counted per field (the first seen)
_SHAPES_MAX = 10_000  # distinct response shapes (tuples of leaf paths) shared between slots
_CDF_POINTS = tuple(range(0, 101, 2))

OK = "ok"


# gRPC statuses that are the server's failure (UNKNOWN, DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE,
# DATA_LOSS): counted with 5xx; the others (NOT_FOUND, INVALID_ARGUMENT, ...) are answers.
_GRPC_SERVER_ERRORS = frozenset((2, 4, 13, 14, 15))


def _outcome_primary(ex: Exchange) -> str:
    if ex.response is None:
        return "no response"
    if ex.grpc is not None and ex.grpc.status in _GRPC_SERVER_ERRORS:
        return "5xx"
    return "5xx" if ex.response.status >= 500 else OK


def _outcome_shadow(r: Result) -> str:
    if r.error is not None:
        return r.error.kind
    if r.response is None:
        return "no response"
    if r.grpc is not None and r.grpc.status in _GRPC_SERVER_ERRORS:
        return "5xx"
    return "5xx" if r.response.status >= 500 else OK


def _leaves(v: Any, path: str, paths: list[str], values: list[Any]) -> None:
    """Scalar leaves of a JSON value with their folded paths (numbers, bools, short strings), at
    most _LEAVES_MAX. O(size of the value); scalars are handled without a call each."""
    items: Iterable[tuple[Any, Any]]
    if isinstance(v, dict):
        fold = fold_keys(v)
        items = v.items()
    elif isinstance(v, list):
        fold = False
        items = ((None, x) for x in v)
    else:
        if v is not None and not (isinstance(v, str) and len(v) > 64) and len(paths) < _LEAVES_MAX:
            paths.append(path)
            values.append(v)
        return
    inner = path + "[]" if isinstance(v, list) else f"{path}.{{id}}" if fold else None
    for k, x in items:
        child = inner if inner is not None else f"{path}.{k}"
        if isinstance(x, (dict, list)):
            _leaves(x, child, paths, values)
        elif x is not None and not (isinstance(x, str) and len(x) > 64):
            if len(paths) >= _LEAVES_MAX:
                return
            paths.append(child)
            values.append(x)


def _renames(fields: list[FieldReport]) -> list[FieldReport]:
    """Mark a field only the primary has and a field only the shadow has, under the same parent,
    holding the same value in the same exchange, as a rename (``renamed_to``/``renamed_from``)."""
    missing = [f for f in fields if set(f.kinds) == {"missing"} and f.samples]
    extra = [f for f in fields if set(f.kinds) == {"extra"} and f.samples]
    renamed: dict[str, tuple[str | None, str | None]] = {}  # path -> (renamed_to, renamed_from)
    for m in missing:
        parent = m.path.rsplit(".", 1)[0]
        sm = m.samples[0]
        for x in extra:
            if x.path.rsplit(".", 1)[0] != parent or x.path in renamed:
                continue
            same = [s for s in x.samples if s.exchange_id == sm.exchange_id]
            if same and same[0].shadow == sm.primary:
                renamed[m.path] = (x.path, None)
                renamed[x.path] = (None, m.path)  # the missing half carries the regression
                break
    if not renamed:
        return fields
    return [
        f
        if f.path not in renamed
        else dataclasses.replace(f, renamed_to=renamed[f.path][0], renamed_from=renamed[f.path][1])
        for f in fields
    ]


class FieldAgg:
    """What one field's differences looked like on one endpoint."""

    __slots__ = ("baseline_pairs", "diff_pairs", "flips", "kinds", "samples", "volatility")

    def __init__(self) -> None:
        self.diff_pairs = 0  # pairs where primary and shadow differ at this path
        self.baseline_pairs = 0  # pairs where primary and baseline differ at this path
        self.kinds: Counter[Kind] = Counter()
        self.volatility = Volatility()
        self.flips: Counter[tuple[Any, Any]] = Counter()
        self.samples: list[Sample] = []

    def merge(self, o: FieldAgg, max_samples: int) -> None:
        self.diff_pairs += o.diff_pairs
        self.baseline_pairs += o.baseline_pairs
        self.kinds.update(o.kinds)
        self.volatility.merge(o.volatility)
        self.flips.update(o.flips)
        self.samples = (self.samples + o.samples)[:max_samples]


class EndpointAgg:
    """Aggregates of one endpoint (or of all of them: the overall latency and errors)."""

    def __init__(self, cfg: CompareConfig, seed: int) -> None:
        lim = cfg.limits
        self.pairs = 0
        self.compared = 0  # pairs where both sides answered, so content was compared
        self.identical = 0  # compared pairs with no difference at all (noise included)
        self.baseline_compared = 0
        self.primary_outcomes: Counter[str] = Counter()
        self.shadow_outcomes: Counter[str] = Counter()
        self.new_failures: Counter[str] = Counter()  # shadow outcome where the primary was ok
        self.recoveries: Counter[str] = Counter()  # primary outcome where the shadow was ok
        self.status_pairs: Counter[tuple[int, int]] = Counter()
        self.lat_primary = Reservoir(lim.latency_sample, seed, typecode="d")
        self.lat_shadow = Reservoir(lim.latency_sample, seed + 1, typecode="d")
        self.values = Reservoir(lim.value_sample, seed + 2)  # (primary leaves, shadow leaves)
        self.fields: dict[str, FieldAgg] = {}
        self.sample_bodies = 0  # samples of this endpoint that kept their bodies
        self.genai: GenAgg | None = None  # generative answers (compare/genai.py), when any
        self.tensors: TensorAgg | None = None  # output tensors (compare/tensors.py), when any

    def merge(self, o: EndpointAgg, max_samples: int) -> None:
        self.pairs += o.pairs
        self.compared += o.compared
        self.identical += o.identical
        self.baseline_compared += o.baseline_compared
        self.sample_bodies += o.sample_bodies
        self.primary_outcomes.update(o.primary_outcomes)
        self.shadow_outcomes.update(o.shadow_outcomes)
        self.new_failures.update(o.new_failures)
        self.recoveries.update(o.recoveries)
        self.status_pairs.update(o.status_pairs)
        self.lat_primary.merge(o.lat_primary)
        self.lat_shadow.merge(o.lat_shadow)
        self.values.merge(o.values)
        if o.genai is not None:
            if self.genai is None:
                self.genai = o.genai
            else:
                self.genai.merge(o.genai)
        if o.tensors is not None:
            if self.tensors is None:
                self.tensors = o.tensors
            else:
                self.tensors.merge(o.tensors)
        for path, f in o.fields.items():
            mine = self.fields.get(path)
            if mine is None:
                self.fields[path] = f
            else:
                mine.merge(f, max_samples)


def _no_tensor_keys(resp: Any) -> bool:
    """True when ``resp``'s body cannot be a tensor answer (compare/tensors.py's
    ``parse_tensors`` wants a top-level ``outputs`` or ``predictions``): an uncoded body whose
    bytes hold neither name, no JSON escape (``\\u`` could spell one) and no NUL (UTF-16/32 JSON,
    which the lenient reader accepts). A few ``in`` scans (C) where parsing both bodies costs
    microseconds a pair; any doubt parses, as before."""
    body = resp.body
    return (
        b"outputs" not in body
        and b"predictions" not in body
        and b"\\u" not in body
        and b"\x00" not in body
        and resp.header("content-encoding") is None
    )


# The memo of identical pairs (Comparison._add): at most this many keys, each of bodies of at most
# IDENTICAL_BODY bytes together (heads are bounded by the capture's limits): at most ~16 MiB.
IDENTICAL_MEMO = 1024
IDENTICAL_BODY = 16 << 10


class Comparison:
    """The streaming aggregator behind ``shadowtap compare`` and the live mirror."""

    def __init__(
        self,
        config: CompareConfig | None = None,
        *,
        baseline: bool = False,
        proto_schema: Schema | None = None,
    ) -> None:
        self.config = config or CompareConfig()
        self.proto_schema = proto_schema  # gRPC messages with field names (compare/protobuf.py)
        self.has_baseline = baseline
        self._ignored_headers = self.config.headers.ignored()
        self._templater = Templater(self.config.endpoints)
        self._genai = GenAiComparer(self.config.genai) if self.config.genai.enabled else None
        self._endpoints: dict[str, EndpointAgg] = {}
        self._overall = EndpointAgg(self.config, seed=1)
        self._tolerances: dict[str, tuple[float, float]] = {}
        self._max_walk = self.config.limits.max_walk  # per-pair diff bounds (compare/diff.py)
        self._max_differences = self.config.limits.max_differences
        self._lock = threading.Lock()
        # the keys of pairs found identical -> their leaf statistics' item (see _add)
        self._identical: dict[tuple[Any, ...], tuple[Any, ...] | None] = {}
        # endpoint name -> ((pairs, baseline pairs) it was computed at, its report, when)
        self._cache: dict[str, tuple[tuple[int, int], EndpointReport, float]] = {}
        self._pooled: dict[str, Volatility] = {}
        self._shapes: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._seed = 100
        self.started = time.time()
        # Join bookkeeping reported by the shell that feeds us (files or the mirror).
        self.unmatched_exchanges = 0
        self.unmatched_results = 0
        self.input_error_count = 0
        self.input_errors: list[str] = []  # the first few, as examples

    # ----------------------------------------------------------------------------- feeding

    def _tolerance(self, path: str) -> tuple[float, float]:
        t = self._tolerances.get(path)
        if t is None:
            if len(self._tolerances) > 10_000:
                self._tolerances.clear()
            t = self._tolerances[path] = self.config.numeric.tolerance(path)
        return t

    def _endpoint(self, ex: Exchange) -> EndpointAgg:
        req = ex.request
        name = (
            self._templater.endpoint(req.method, req.target)
            if req is not None
            else "? (no request)"
        )
        agg = self._endpoints.get(name)
        if agg is None:
            if len(self._endpoints) >= self.config.limits.max_endpoints:
                name = OTHER_ENDPOINTS
                agg = self._endpoints.get(name)
            if agg is None:
                self._seed += 7
                agg = self._endpoints[name] = EndpointAgg(self.config, self._seed)
        return agg

    @property
    def pairs(self) -> int:
        return self._overall.pairs

    def warm(self) -> None:
        """Loads now what comparing may need later: the generative comparer's embedder (1-3 s,
        holding the GIL for up to ~0.3 s at a time). The live mirror calls it before its capture
        starts: loaded at the first generative pair, on the comparison's thread, it stalled the
        event loop that stamps the shadow's streamed answers as they arrive."""
        if self._genai is not None:
            _ = self._genai.embedder

    def add(self, exchange: Exchange, result: Result, baseline: Result | None = None) -> None:
        with self._lock:
            self._add(exchange, result, baseline)

    def _add(self, ex: Exchange, res: Result, base: Result | None) -> None:
        agg = self._endpoint(ex)
        po, so = _outcome_primary(ex), _outcome_shadow(res)
        for a in (agg, self._overall):
            a.pairs += 1
            a.primary_outcomes[po] += 1
            a.shadow_outcomes[so] += 1
            if po == OK and so != OK:
                a.new_failures[so] += 1
            elif po != OK and so == OK:
                a.recoveries[po] += 1
            if ex.total_ms is not None and ex.response is not None:
                a.lat_primary.add(ex.total_ms)
            if res.total_ms is not None and res.response is not None:
                a.lat_shadow.add(res.total_ms)
        p, s = ex.response, res.response
        if p is None or s is None:
            return
        agg.compared += 1
        self._overall.compared += 1
        agg.status_pairs[(p.status, s.status)] += 1
        if p.status >= 500 and s.status < 500:
            # The shadow answers where the primary failed: a recovery (errors.recoveries), not a
            # content difference; the primary's error page has no fields to compare.
            return
        # A pair whose request and answers are those of an earlier pair found identical (no
        # difference, no generative answer, no tensors) is identical again: everything below
        # is a pure function of these fields and the config, but for the leaf statistics'
        # sampling draw, made here the same way with the item remembered. Bounded
        # (IDENTICAL_MEMO keys of small bodies, cleared when full); the key costs a hash of the
        # heads and bodies, O(their bytes), where a full comparison parses and walks them.
        key = None
        req = ex.request
        if (
            base is None
            and req is not None
            and ex.h2 is None
            and ex.grpc is None
            and res.grpc is None
            and not ex.chunks
            and not res.chunks
            and len(req.body) + len(p.body) + len(s.body) <= IDENTICAL_BODY
        ):
            key = (
                (req.method, req.target, req.headers, req.body),
                (p.version, p.status, p.reason, p.headers, p.body, p.body_len, p.body_truncated),
                (s.version, s.status, s.reason, s.headers, s.body, s.body_len, s.body_truncated),
            )
            if key in self._identical:
                agg.identical += 1
                self._overall.identical += 1
                slot = agg.values.wants()  # the same draw as a full comparison's
                if slot >= 0:
                    item = self._identical[key]
                    if item is None:  # the key's leaf item, made the first time it is wanted
                        both = Prepared(p, s)
                        item = self._leaf_item(both.primary, both.shadow, ())
                        self._identical[key] = item
                    agg.values.put(slot, item)
                return
        prepared = Prepared(p, s)  # each body decoded and parsed once, whoever needs it first
        gp = None
        if ex.grpc is not None and res.grpc is not None:
            # gRPC: messages field by field, grpc-status as the status (compare/protobuf.py).
            pair = diff_grpc(
                ex.grpc,
                res.grpc,
                self._tolerance,
                self.proto_schema,
                max_walk=self._max_walk,
                max_differences=self._max_differences,
            )
        elif s.status >= 500 and p.status < 500:
            # The shadow failed: its error page says nothing about the primary's fields; the
            # status difference (and the error rate) carry it.
            pair = PairDiff([Difference("status", Kind.VALUE, p.status, s.status)])
        else:
            gp = self._genai.pair(ex, res, prepared) if self._genai is not None else None
            if gp is not None:
                # A generative answer: compared as its reassembled message (compare/genai.py);
                # ids, creation times, chunk boundaries and usage counts are not field differences.
                if agg.genai is None:
                    agg.genai = GenAgg(self.config.limits.latency_sample, self._seed + 3)
                agg.genai.add(ex, gp, self.config.limits.max_sample_body)
                if gp.text_path is not None:  # a named text field: the rest diffed as usual
                    pair = diff_responses(
                        p,
                        s,
                        self._ignored_headers,
                        self._tolerance,
                        max_walk=self._max_walk,
                        max_differences=self._max_differences,
                        prepared=prepared,
                    )
                    pair = PairDiff(
                        [d for d in pair.differences if d.path != gp.text_path],
                        pair.primary_body,
                        pair.shadow_body,
                    )
                else:
                    found: list[Difference] = []
                    if p.status != s.status:
                        found.append(Difference("status", Kind.VALUE, p.status, s.status))
                    if p.headers != s.headers:
                        diff_headers(p.headers, s.headers, self._ignored_headers, found)
                    found.extend(gp.differences)
                    pair = PairDiff(found)
            else:
                pair = diff_responses(
                    p,
                    s,
                    self._ignored_headers,
                    self._tolerance,
                    max_walk=self._max_walk,
                    max_differences=self._max_differences,
                    prepared=prepared,
                )
        tensor_paths, tensors_differ = self._tensors(ex, agg, gp, pair, prepared)
        if tensor_paths:
            # The tensors' values are compared numerically (compare/tensors.py), not field by field.
            pair = PairDiff(
                [d for d in pair.differences if not d.path.startswith(tensor_paths)],
                pair.primary_body,
                pair.shadow_body,
                pair.cut,
            )
        diffs = pair.differences
        # an equivalent generative answer differs, and so do tensors within tolerance
        if not diffs and (gp is None or gp.cls == "identical") and not tensors_differ:
            agg.identical += 1
            self._overall.identical += 1
            if key is not None and gp is None and not tensor_paths:
                if len(self._identical) >= IDENTICAL_MEMO:
                    self._identical.clear()
                self._identical[key] = None
        else:
            self._record(ex, res, agg, diffs, pair.primary_body, pair.shadow_body)
        if base is not None and base.response is not None:
            agg.baseline_compared += 1
            seen: set[str] = set()
            bdiff = (
                diff_grpc(
                    ex.grpc,
                    base.grpc,
                    self._tolerance,
                    self.proto_schema,
                    max_walk=self._max_walk,
                    max_differences=self._max_differences,
                )
                if ex.grpc is not None and base.grpc is not None
                else diff_responses(
                    p,
                    base.response,
                    self._ignored_headers,
                    self._tolerance,
                    max_walk=self._max_walk,
                    max_differences=self._max_differences,
                )
            )
            for d in bdiff.differences:
                if d.path not in seen:
                    seen.add(d.path)
                    self._field(agg, d.path).baseline_pairs += 1
        slot = agg.values.wants()
        if slot >= 0 and gp is not None and gp.text_path is None:
            # no leaf statistics of generative answers' raw bodies
            agg.values.put(slot, ((), (), (), ()))
        elif slot >= 0:
            pb = pair.primary_body or prepared.primary
            sb = pair.shadow_body or prepared.shadow
            agg.values.put(slot, self._leaf_item(pb, sb, tensor_paths))

    def _leaf_item(self, pb: Body, sb: Body, tensor_paths: tuple[str, ...]) -> tuple[Any, ...]:
        """A pair's item of the leaf statistics: (primary paths, values, shadow paths, values)
        of two JSON bodies, empty tuples else."""
        if pb.type is not BodyType.JSON or sb.type is not BodyType.JSON:
            return ((), (), (), ())
        pp: list[str] = []
        pv: list[Any] = []
        sp: list[str] = []
        sv: list[Any] = []
        try:
            _leaves(pb.value, "body", pp, pv)
            if sb is not pb:
                _leaves(sb.value, "body", sp, sv)
        except RecursionError:  # absurdly deep: no leaf statistics for this pair
            pp, pv, sp, sv = [], [], [], []
        if tensor_paths:  # tensor elements are no fields with distributions of their own
            pp, pv = _without(pp, pv, tensor_paths)
            sp, sv = (pp, pv) if sb is pb else _without(sp, sv, tensor_paths)
        # Responses of one endpoint share a few shapes: one tuple of paths per shape, so a
        # slot costs its values only; equal bodies share one walk and one tuple.
        ppaths, pvals = self._shape(pp), tuple(pv)
        if sb is pb:
            return (ppaths, pvals, ppaths, pvals)
        return (ppaths, pvals, self._shape(sp), tuple(sv))

    def _tensors(
        self, ex: Exchange, agg: EndpointAgg, gp: Any, pair: PairDiff, prepared: Prepared
    ) -> tuple[tuple[str, ...], bool]:
        """Compares the pair's output tensors when both answers carry them (compare/tensors.py)
        and returns the paths of the tensors' values (empty: not a tensor answer) and whether
        the tensors differ at all."""
        tc = self.config.tensors
        if not tc.enabled or gp is not None:
            return (), False
        target = ex.request.target if ex.request is not None else ""
        if tc.paths and not any(re.search(x, target) for x in tc.paths):
            return (), False
        if ex.grpc is None and _no_tensor_keys(prepared.p):
            return (), False  # not a tensor answer, known without parsing the bodies
        if ex.grpc is not None:
            pv = pair.primary_body.value if pair.primary_body is not None else None
            sv = pair.shadow_body.value if pair.shadow_body is not None else None
        else:
            pb = pair.primary_body or prepared.primary
            sb = pair.shadow_body or prepared.shadow
            # NaN/Infinity make a body no strict JSON: read leniently, they become anomalies
            pv = pb.value if pb.type is BodyType.JSON else lenient_json(pb.raw)
            sv = sb.value if sb.type is BodyType.JSON else lenient_json(sb.raw)
        pt = parse_tensors(pv, target)
        if pt is None or not pt.tensors:
            return (), False
        st = parse_tensors(sv, target)
        if st is None:  # the shadow answers something else: its fields carry the differences
            return (), False
        if agg.tensors is None:
            agg.tensors = TensorAgg(self.config.limits.latency_sample, self._seed + 5)
        tp = compare_tensors(pt, st, tc)
        agg.tensors.add(tp)
        return pt.prefixes, differs(tp)

    def _shape(self, paths: list[str]) -> tuple[str, ...]:
        key = tuple(paths)
        shared = self._shapes.get(key)
        if shared is None:
            if len(self._shapes) >= _SHAPES_MAX:
                return key
            shared = self._shapes[key] = tuple(sys.intern(p) for p in key)
        return shared

    def _field(self, agg: EndpointAgg, path: str) -> FieldAgg:
        f = agg.fields.get(path)
        if f is None:
            if len(agg.fields) >= self.config.limits.max_fields:
                path = OTHER_FIELDS
                f = agg.fields.get(path)
            if f is None:
                f = agg.fields[path] = FieldAgg()
        return f

    def _record(
        self,
        ex: Exchange,
        res: Result,
        agg: EndpointAgg,
        diffs: list[Difference],
        pb: Body | None,
        sb: Body | None,
    ) -> None:
        now = ex.ts
        target = ex.request.target if ex.request is not None else ""
        shadow_ts = res.response.ts if res.response is not None and res.response.ts else res.sent
        seen: set[str] = set()
        max_samples = self.config.limits.samples_per_field
        bodies: list[tuple[str, str]] = []  # this pair's excerpts, made at most once
        for d in diffs:
            f = self._field(agg, d.path)
            f.kinds[d.kind] += 1
            if d.path not in seen:
                seen.add(d.path)
                f.diff_pairs += 1
                if len(f.samples) < max_samples:
                    f.samples.append(self._sample(ex, res, agg, d, pb, sb, bodies))
            if d.kind is Kind.VALUE or d.kind is Kind.TYPE:
                f.volatility.observe(d.primary, d.shadow, now, shadow_ts, target)
                if (
                    isinstance(d.primary, (str, bool, int))
                    and isinstance(d.shadow, (str, bool, int))
                    and (len(f.flips) < _FLIPS_MAX or (d.primary, d.shadow) in f.flips)
                ):
                    f.flips[(d.primary, d.shadow)] += 1

    def _sample(
        self,
        ex: Exchange,
        res: Result,
        agg: EndpointAgg,
        d: Difference,
        pb: Body | None,
        sb: Body | None,
        bodies: list[tuple[str, str]],
    ) -> Sample:
        """A side-by-side sample. The body excerpts are made once per pair (``bodies`` caches them
        for the pair's other fields) and kept for at most ``limits.sample_bodies`` samples per
        endpoint, which bounds their memory whatever the number of fields."""
        lim = self.config.limits
        req = ex.request
        line = redact_text(f"{req.method} {req.target}") if req is not None else "?"

        def excerpt(b: Body | None, resp: Response | None) -> str:
            if b is not None:
                return body_excerpt(b.raw, b.value, b.type is BodyType.JSON, lim.max_sample_body)
            if resp is None:
                return ""
            return body_excerpt(resp.body, None, False, lim.max_sample_body)

        if not bodies:
            if agg.sample_bodies < lim.sample_bodies:
                agg.sample_bodies += 1
                bodies.append((excerpt(pb, ex.response), excerpt(sb, res.response)))
            else:
                bodies.append(("(body not kept: limits.sample_bodies reached)", ""))
        primary_body, shadow_body = bodies[0]
        return Sample(
            exchange_id=ex.id,
            request=line,
            kind=d.kind.value,
            primary=redact_field(d.path, d.primary),
            shadow=redact_field(d.path, d.shadow),
            primary_body=primary_body,
            shadow_body=shadow_body,
        )

    # ------------------------------------------------------------------------------ merging

    def merge(self, other: Comparison) -> None:
        """Fold in the pairs ``other`` compared (``other`` is consumed: its aggregates are taken
        over, not copied). Comparing A then B in one Comparison and merging a Comparison of A with
        one of B give the same counts, outcomes, status pairs, per-field diff counts and kinds
        exactly; reservoirs (latency, values) merge into a sample of both streams whose size is
        weighted by their counts (the same items while both fit); samples per field are the
        first ones of self, then of other; noise evidence merges its counters (a counter's
        increasing run is not followed across the boundary). The endpoint templates learnt apart
        are united first, so names that fold under the union are merged too.

        The algebra (tests/compare/test_merge.py): merge is associative and commutative on every
        count; with the empty Comparison as identity. Cost: O(endpoints x (fields + reservoirs))."""
        if other is self:
            raise ValueError("cannot merge a Comparison into itself")
        lim = self.config.limits
        with self._lock, other._lock:
            self._templater.merge(other._templater)
            for name, agg in other._endpoints.items():
                if name != OTHER_ENDPOINTS:
                    name = self._templater.retemplate(name)
                mine = self._endpoints.get(name)
                if mine is None and len(self._endpoints) >= lim.max_endpoints:
                    name = OTHER_ENDPOINTS
                    mine = self._endpoints.get(name)
                if mine is None:
                    self._endpoints[name] = agg
                else:
                    mine.merge(agg, lim.samples_per_field)
            self._overall.merge(other._overall, lim.samples_per_field)
            self.has_baseline = self.has_baseline or other.has_baseline
            self.started = min(self.started, other.started)
            self.unmatched_exchanges += other.unmatched_exchanges
            self.unmatched_results += other.unmatched_results
            self.input_error_count += other.input_error_count
            self.input_errors = (self.input_errors + other.input_errors)[:10]
            self._cache.clear()
            other._endpoints = {}

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (for other processes and Spark's executors): no lock, no report cache, no
        memo of identical pairs, no generative comparer."""
        state = self.__dict__.copy()
        del state["_lock"]
        state["_cache"] = {}
        state["_identical"] = {}
        state["_genai"] = None  # a comparer (models, caches): made anew from the config
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        if self.config.genai.enabled:
            self._genai = GenAiComparer(self.config.genai)

    # ---------------------------------------------------------------------------- reporting

    def _fold_endpoints(self) -> None:
        """Merge endpoints whose names fold into a template learnt after they were given out."""
        max_samples = self.config.limits.samples_per_field
        for name in list(self._endpoints):
            if name == OTHER_ENDPOINTS:
                continue
            new = self._templater.retemplate(name)
            if new != name:
                agg = self._endpoints.pop(name)
                target = self._endpoints.get(new)
                if target is None:
                    self._endpoints[new] = agg
                else:
                    target.merge(agg, max_samples)

    def snapshot(self, *, fresh: bool = False) -> Report:
        """The report so far, with its verdict.

        Cost: O(endpoints x (fields + samples + reservoirs)); the statistics of an endpoint with
        many numeric fields take milliseconds. So that a live caller (the mirror, every second)
        never stalls add() for long, endpoints whose pairs changed are recomputed stalest first
        within ``limits.snapshot_budget_ms``; the others keep their previous report until a later
        snapshot. ``fresh=True`` (the final report) recomputes every changed endpoint."""
        with self._lock:
            self._fold_endpoints()
            self._pool_volatility()
            deadline = time.perf_counter() + self.config.limits.snapshot_budget_ms / 1000.0
            order = sorted(self._endpoints.items(), key=lambda kv: self._computed_at(kv[0]))
            endpoints: list[EndpointReport] = []
            computed = 0  # at least one endpoint is recomputed per snapshot, so all get their turn
            for name, a in order:
                key = (a.pairs, a.baseline_compared)
                cached = self._cache.get(name)
                over = not fresh and computed > 0 and time.perf_counter() > deadline
                if cached is not None and (cached[0] == key or over):
                    endpoints.append(cached[1])
                    continue
                if over:  # never computed: the counts now, the statistics at a later snapshot
                    endpoints.append(self._endpoint_report(name, a, statistics=False))
                    continue
                rep = self._endpoint_report(name, a)
                computed += 1
                self._cache[name] = (key, rep, time.perf_counter())
                endpoints.append(rep)
            for gone in set(self._cache) - set(self._endpoints):
                del self._cache[gone]
            overall = self._side_report(self._overall)
        cfg = self.config
        verdict = verdict_mod.judge(endpoints, overall, cfg, compared=self._overall.compared)
        failing = {m.endpoint for m in verdict.metrics if m.failed}
        endpoints.sort(
            key=lambda e: (e.endpoint not in failing, -e.divergence, -e.pairs, e.endpoint)
        )
        noise = [
            NoiseEntry(endpoint=e.endpoint, path=f.path, reason=f.noise, rate=f.rate)
            for e in endpoints
            for f in e.fields
            if f.noise
        ]
        o = self._overall
        return Report(
            schema=REPORT_SCHEMA,
            generated=time.time(),
            verdict=verdict,
            summary=Summary(
                pairs=o.pairs,
                compared=o.compared,
                identical=o.identical,
                with_baseline=sum(a.baseline_compared for a in self._endpoints.values()),
                baseline=self.has_baseline,
                endpoints=len(endpoints),
                unmatched_exchanges=self.unmatched_exchanges,
                unmatched_results=self.unmatched_results,
                input_errors=self.input_error_count,
                input_error_examples=self.input_errors[:10],
                errors=overall.errors,
                latency=overall.latency,
            ),
            noisy_headers=sorted(self._ignored_headers),
            noise=noise,
            endpoints=endpoints,
            config=cfg.to_json(),
        )

    def _computed_at(self, name: str) -> float:
        cached = self._cache.get(name)
        return 0.0 if cached is None else cached[2]

    def _pool_volatility(self) -> None:
        """Pool, per path, the observations of fields seen too few times on one endpoint."""
        need = self.config.noise.min_observations
        small = {
            p
            for a in self._endpoints.values()
            for p, f in a.fields.items()
            if 0 < f.volatility.n < need
        }
        self._pooled = {}
        for a in self._endpoints.values():
            for path in small.intersection(a.fields):
                self._pooled.setdefault(path, Volatility()).merge(a.fields[path].volatility)

    def _side_report(self, a: EndpointAgg, statistics: bool = True) -> Side:
        """Errors and latency of an aggregate (shared by endpoints and the overall summary)."""
        p_err = a.pairs - a.primary_outcomes.get(OK, 0)
        s_err = a.pairs - a.shadow_outcomes.get(OK, 0)
        sides = []
        for res in (a.lat_primary, a.lat_shadow):
            vals = res.items
            p50, p90, p99 = percentiles(vals)
            sides.append(
                LatencySide(
                    n=res.count,
                    p50=p50,
                    p90=p90,
                    p99=p99,
                    cdf=percentiles(vals, _CDF_POINTS) if vals else [],
                )
            )
        test = None
        if statistics and len(a.lat_primary.items) >= 2 and len(a.lat_shadow.items) >= 2:
            t = latency_shift(a.lat_primary.items, a.lat_shadow.items)
            test = LatencyTest(
                p_value=t.p_value,
                median_ratio=t.effect,
                primary_median=t.primary_median,
                shadow_median=t.shadow_median,
            )
        return Side(
            errors=Errors(
                primary=p_err,
                shadow=s_err,
                primary_rate=p_err / a.pairs if a.pairs else 0.0,
                shadow_rate=s_err / a.pairs if a.pairs else 0.0,
                primary_outcomes=dict(a.primary_outcomes),
                shadow_outcomes=dict(a.shadow_outcomes),
                new_failures=dict(a.new_failures),
                recoveries=dict(a.recoveries),
            ),
            latency=Latency(primary=sides[0], shadow=sides[1], test=test),
        )

    def _endpoint_report(
        self, name: str, a: EndpointAgg, statistics: bool = True
    ) -> EndpointReport:
        cfg = self.config
        value_stats = self._value_stats(a) if statistics else {}
        fields: list[FieldReport] = []
        for path, f in a.fields.items():
            if f.diff_pairs == 0:
                continue  # differs only against the baseline
            rate = f.diff_pairs / a.compared if a.compared else 0.0
            judgement = None
            baseline_rate = None
            if self.has_baseline and a.baseline_compared:
                baseline_rate = f.baseline_pairs / a.baseline_compared
                judgement = judge_against_baseline(rate, baseline_rate, cfg.noise)
            reason = noise_reason(
                name, path, f.kinds, f.volatility, cfg.noise, judgement, self._pooled.get(path)
            )
            vs = value_stats.get(path)
            agreement = None
            if vs is not None and vs.type == "categorical":
                observed = max(1.0, a.compared * vs.presence)
                agreement = max(0.0, 1.0 - f.diff_pairs / observed)
            fields.append(
                FieldReport(
                    path=path,
                    kinds={k.value: n for k, n in f.kinds.most_common()},
                    diff_pairs=f.diff_pairs,
                    rate=rate,
                    baseline_rate=baseline_rate,
                    noise=reason,
                    type="other" if vs is None else vs.type,
                    only_extra=set(f.kinds) == {Kind.EXTRA},
                    flips=[
                        Flip(primary=redact_field(path, pv), shadow=redact_field(path, sv), count=n)
                        for (pv, sv), n in f.flips.most_common(10)
                    ],
                    samples=list(f.samples),  # a copy: add() appends to the live list
                    agreement=agreement,
                )
            )
        # Numeric paths drift even when every pair is within tolerance: report them too.
        noisy = {e.path for e in fields if e.noise}
        model = [
            vs.drift
            for path, vs in value_stats.items()
            if vs.type == "numeric" and vs.drift is not None and path not in noisy
        ]
        fields = _renames(fields)
        fields.sort(key=lambda e: (e.noise is not None, -e.rate))
        side = self._side_report(a, statistics)
        regress = [e.rate for e in fields if not e.noise and not e.only_extra]
        err = side.errors
        # Divergence ranks endpoints: the worst of the share of pairs a real difference touches,
        # the error-rate increase and, when significant, the latency slowdown (x2 counts as 1).
        test = side.latency.test
        slowdown = 0.0
        if test and test.p_value < cfg.latency.alpha and math.isfinite(test.median_ratio):
            slowdown = min(1.0, max(0.0, test.median_ratio - 1.0))
        divergence = max([0.0, err.shadow_rate - err.primary_rate, slowdown, *regress])
        mismatched = sum(n for (ps, ss), n in a.status_pairs.items() if ps != ss)
        return EndpointReport(
            endpoint=name,
            pairs=a.pairs,
            compared=a.compared,
            identical=a.identical,
            baseline_compared=a.baseline_compared,
            divergence=divergence,
            status=Status(
                pairs=[
                    StatusPair(primary=ps, shadow=ss, count=n)
                    for (ps, ss), n in a.status_pairs.most_common(20)
                ],
                mismatch_rate=mismatched / a.compared if a.compared else 0.0,
            ),
            errors=side.errors,
            latency=side.latency,
            fields=fields,
            numeric=model,
            genai=a.genai.report(cfg.genai) if a.genai is not None else None,
            tensors=a.tensors.report(cfg.tensors) if a.tensors is not None else None,
        )

    def _value_stats(self, a: EndpointAgg) -> dict[str, _ValueStats]:
        """Per leaf path, from the value sample: its type (numeric, categorical, other), how often
        it is present, and for numeric paths the drift between the two sides."""
        mcfg = self.config.model
        prim: dict[str, list[Any]] = {}
        shad: dict[str, list[Any]] = {}
        present: Counter[str] = Counter()
        differs: set[str] = set()
        for ppaths, pvals, spaths, svals in a.values.items:
            seen: set[str] = set()
            pd: dict[str, list[Any]] = {}
            for path, v in zip(ppaths, pvals):
                prim.setdefault(path, []).append(v)
                pd.setdefault(path, []).append(v)
                seen.add(path)
            present.update(seen)
            sd: dict[str, list[Any]] = {}
            for path, v in zip(spaths, svals):
                shad.setdefault(path, []).append(v)
                sd.setdefault(path, []).append(v)
            for path, vals in pd.items():
                if sd.get(path) != vals:
                    differs.add(path)
        n = len(a.values.items)
        out: dict[str, _ValueStats] = {}
        for path, pv in prim.items():
            sv = shad.get(path, [])
            nums = [x for x in pv if isinstance(x, (int, float)) and not isinstance(x, bool)]
            distinct = len(set(map(repr, pv[:2000])))
            presence = present[path] / n if n else 0.0
            is_float = any(isinstance(x, float) for x in nums)
            found: Drift | None = None
            if len(pv) < mcfg.min_samples:
                kind = "other"  # too few values to tell a label from a free value
            elif len(nums) == len(pv) and (is_float or distinct > mcfg.categorical_max_values):
                kind = "numeric"
                snums = [x for x in sv if isinstance(x, (int, float)) and not isinstance(x, bool)]
                if (
                    path in differs
                    and len(nums) >= mcfg.min_samples
                    and len(snums) >= mcfg.min_samples
                ):
                    d = drift(nums, snums)
                    found = Drift(
                        path=path,
                        n=d.n_primary,
                        mean_primary=d.mean_primary,
                        mean_shadow=d.mean_shadow,
                        std_primary=d.std_primary,
                        mean_shift=d.mean_shift if math.isfinite(d.mean_shift) else None,
                        ks_d=d.ks_d,
                        ks_p=d.ks_p,
                        psi=d.psi,
                    )
            elif distinct <= mcfg.categorical_max_values:
                kind = "categorical"
            else:
                kind = "other"
            out[path] = _ValueStats(kind, presence, found)
        return out


@dataclasses.dataclass(frozen=True, slots=True)
class _ValueStats:
    """A leaf path's values in an endpoint's value sample."""

    type: str  # numeric, categorical, other
    presence: float  # share of sampled pairs whose primary body has the path
    drift: Drift | None  # numeric paths whose values differ between the sides


def _without(
    paths: list[str], values: list[Any], prefixes: tuple[str, ...]
) -> tuple[list[str], list[Any]]:
    keep = [i for i, x in enumerate(paths) if not x.startswith(prefixes)]
    return [paths[i] for i in keep], [values[i] for i in keep]
