"""The comparison report as typed, frozen records: what ``Comparison.snapshot()`` returns, what the
terminal and HTML reports and the live mirror read, and what ``--json`` writes (schema in
docs/compare.md). The verdicts, their exit codes and their colours are defined here, once.

The JSON is these records as they are: each record's fields, in the order declared, become the
keys of its object (orjson serializes them natively), except the few keys the schema writes only
when they apply (``Record._OPTIONAL``: a field's ``agreement``, ``renamed_to``, ``renamed_from``,
the summary's ``interrupted``), left out when None. So the field order below IS the schema's key
order: reorder a field and the bytes of every report change.

Light on purpose (no numpy, no scipy): the mirror's dashboard imports the verdicts from here.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from shadowtap.errors import EXIT_OK, EXIT_VERDICT_ERROR, EXIT_VERDICT_FAIL, EXIT_VERDICT_MARGINAL

REPORT_SCHEMA = 1


class Verdict(StrEnum):
    """The run's verdict; its value is what the reports print and the JSON holds."""

    PASS = "pass"
    MARGINAL = "marginal"
    FAIL = "fail"
    ERROR = "error"  # nothing to judge (no pairs), or the mirror could not judge fairly

    @property
    def exit_code(self) -> int:
        return _EXIT_CODES[self]

    @property
    def style(self) -> str:
        """rich style on a terminal (the compare report and the mirror's dashboard)."""
        return _COLOURS[self][0]

    @property
    def html_colour(self) -> str:
        return _COLOURS[self][1]


# The verdict -> exit status map (docs/cli.md lists it) and the verdict colours: here only.
_EXIT_CODES = {
    Verdict.PASS: EXIT_OK,
    Verdict.MARGINAL: EXIT_VERDICT_MARGINAL,
    Verdict.FAIL: EXIT_VERDICT_FAIL,
    Verdict.ERROR: EXIT_VERDICT_ERROR,
}
_COLOURS = {
    Verdict.PASS: ("bold green", "#1a7f37"),
    Verdict.MARGINAL: ("bold yellow", "#b08800"),
    Verdict.FAIL: ("bold red", "#cf222e"),
    Verdict.ERROR: ("bold magenta", "#8250df"),
}


class MetricResult(StrEnum):
    """A metric's class, in Kayenta's manner (the value is the report's spelling)."""

    PASS = "Pass"
    HIGH = "High"
    LOW = "Low"
    NODATA = "Nodata"


class Group(StrEnum):
    """The verdict's metric groups (``[verdict] weights`` and ``critical`` name them)."""

    ERRORS = "errors"
    LATENCY = "latency"
    CONTENT = "content"
    MODEL = "model"
    GENAI = "genai"  # generative answers: refusal/truncation rates, similarity (compare/genai.py)
    TENSORS = "tensors"  # model servers' output tensors: shape, error, top-1 (compare/tensors.py)


class Record:
    """Base of the report's records: ``to_json()`` is the record as the JSON report writes it."""

    __slots__ = ()
    _OPTIONAL: ClassVar[frozenset[str]] = frozenset()  # keys written only when not None

    def to_json(self) -> dict[str, Any]:
        """This record's JSON object (nested records stay records: ``report_json`` or
        :func:`as_json` turn them into objects). Cost: one C-level attrgetter call and a dict."""
        names, values = _access(type(self))
        if not self._OPTIONAL:
            return dict(zip(names, values(self)))
        omit = self._OPTIONAL
        return {n: v for n, v in zip(names, values(self)) if v is not None or n not in omit}


_ACCESS: dict[type, tuple[tuple[str, ...], Callable[[Any], tuple[Any, ...]]]] = {}


def _access(cls: type) -> tuple[tuple[str, ...], Callable[[Any], tuple[Any, ...]]]:
    """A record class's field names, in order, and a getter of all their values at once."""
    access = _ACCESS.get(cls)
    if access is None:
        names = tuple(f.name for f in dataclasses.fields(cls))
        get = operator.attrgetter(*names)
        access = _ACCESS[cls] = (names, get if len(names) > 1 else lambda o: (get(o),))
    return access


def as_json(value: Any) -> Any:
    """A report (or any part of it) as plain JSON values: dicts, lists, str, numbers, None."""
    if isinstance(value, Record):
        return {k: as_json(v) for k, v in value.to_json().items()}
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_json(v) for v in value]
    if isinstance(value, StrEnum):
        return value.value
    return value


# ------------------------------------------------------------------------------------ verdict


@dataclass(frozen=True, slots=True)
class Metric(Record):
    name: str
    group: Group
    endpoint: str
    path: str | None
    value: float | None
    threshold: float | None
    result: MetricResult
    failed: bool
    critical: bool  # failed, and in a critical group (or past a critical rate): fails the run
    detail: str


@dataclass(frozen=True, slots=True)
class GroupScore(Record):
    metrics: int
    passed: int
    weight: float
    score: float  # 100 x passed / metrics


@dataclass(frozen=True, slots=True)
class VerdictReport(Record):
    result: Verdict
    exit_code: int
    score: float
    pass_score: float
    marginal_score: float
    compared: int
    groups: dict[str, GroupScore]
    reasons: tuple[str, ...]
    metrics: tuple[Metric, ...]

    def overruled(self, result: Verdict, why: str) -> VerdictReport:
        """The same verdict turned into ``result`` for a reason the comparison cannot see (the
        mirror's coverage rule), the reason first."""
        return dataclasses.replace(
            self, result=result, exit_code=result.exit_code, reasons=(why, *self.reasons)
        )


# ------------------------------------------------------------------------- errors and latency


@dataclass(frozen=True, slots=True)
class Errors(Record):
    primary: int
    shadow: int
    primary_rate: float
    shadow_rate: float
    primary_outcomes: dict[str, int]
    shadow_outcomes: dict[str, int]
    new_failures: dict[str, int]  # shadow outcome -> pairs where the primary was ok
    recoveries: dict[str, int]  # primary outcome -> pairs where the shadow was ok


@dataclass(frozen=True, slots=True)
class LatencySide(Record):
    n: int  # latencies seen (the percentiles come from a bounded sample of them)
    p50: float
    p90: float
    p99: float
    cdf: list[float]  # percentiles 0, 2, ..., 100; empty without latencies


@dataclass(frozen=True, slots=True)
class LatencyTest(Record):
    p_value: float  # one-sided Mann-Whitney U: shadow slower
    median_ratio: float
    primary_median: float
    shadow_median: float


@dataclass(frozen=True, slots=True)
class Latency(Record):
    primary: LatencySide
    shadow: LatencySide
    test: LatencyTest | None  # None: too few latencies, or not computed yet (a live snapshot)


@dataclass(frozen=True, slots=True)
class Side(Record):
    """Errors and latency of an aggregate (an endpoint, or all of them)."""

    errors: Errors
    latency: Latency


# ---------------------------------------------------------------------------------- endpoints


@dataclass(frozen=True, slots=True)
class Sample(Record):
    exchange_id: str
    request: str  # "METHOD target", redacted
    kind: str
    primary: Any
    shadow: Any
    primary_body: str
    shadow_body: str


@dataclass(frozen=True, slots=True)
class Flip(Record):
    primary: Any
    shadow: Any
    count: int


@dataclass(frozen=True, slots=True)
class FieldReport(Record):
    """One field's differences on one endpoint."""

    _OPTIONAL: ClassVar[frozenset[str]] = frozenset({"agreement", "renamed_to", "renamed_from"})

    path: str
    kinds: dict[str, int]  # difference kind -> count, most common first
    diff_pairs: int
    rate: float  # share of the endpoint's compared pairs where it differs
    baseline_rate: float | None
    noise: str | None  # why it is treated as noise; None: a real difference
    type: str  # numeric, categorical, other
    only_extra: bool  # only the shadow has it
    flips: list[Flip]
    samples: list[Sample]
    agreement: float | None = None  # categorical fields only
    renamed_to: str | None = None
    renamed_from: str | None = None


@dataclass(frozen=True, slots=True)
class Drift(Record):
    """A numeric field's distribution, primary against shadow."""

    path: str
    n: int
    mean_primary: float
    mean_shadow: float
    std_primary: float
    mean_shift: float | None  # in primary standard deviations; None from a constant
    ks_d: float
    ks_p: float
    psi: float


@dataclass(frozen=True, slots=True)
class StatusPair(Record):
    primary: int
    shadow: int
    count: int


@dataclass(frozen=True, slots=True)
class Status(Record):
    pairs: list[StatusPair]
    mismatch_rate: float


@dataclass(frozen=True, slots=True)
class EndpointReport(Record):
    endpoint: str
    pairs: int
    compared: int
    identical: int
    baseline_compared: int
    divergence: float
    status: Status
    errors: Errors
    latency: Latency
    fields: list[FieldReport]
    numeric: list[Drift]
    # compare/genai.py's section (a JSON object, docs/compare.md), only for endpoints that answered
    # generatively: other reports keep their bytes.
    genai: dict[str, Any] | None = None
    # compare/tensors.py's section, only for endpoints whose answers carried output tensors
    tensors: dict[str, Any] | None = None
    _OPTIONAL: ClassVar[frozenset[str]] = frozenset({"genai", "tensors"})


@dataclass(frozen=True, slots=True)
class NoiseEntry(Record):
    endpoint: str
    path: str
    reason: str
    rate: float


# ------------------------------------------------------------------------------------- report


@dataclass(frozen=True, slots=True)
class Summary(Record):
    _OPTIONAL: ClassVar[frozenset[str]] = frozenset({"interrupted"})

    pairs: int
    compared: int
    identical: int
    with_baseline: int
    baseline: bool
    endpoints: int
    unmatched_exchanges: int
    unmatched_results: int
    input_errors: int
    input_error_examples: list[str]
    errors: Errors
    latency: Latency
    interrupted: bool | None = None  # compare only: Ctrl-C, the verdict covers part of the input


@dataclass(frozen=True, slots=True)
class Report(Record):
    schema: int
    generated: float
    verdict: VerdictReport
    summary: Summary
    noisy_headers: list[str]
    noise: list[NoiseEntry]
    endpoints: list[EndpointReport]
    config: dict[str, Any] = field(default_factory=dict)  # the configuration used, as TOML's JSON

    @property
    def result(self) -> Verdict | None:
        """The verdict so far; None before the first pair (``error`` means "nothing to judge"
        only at the end)."""
        return self.verdict.result if self.summary.pairs else None

    def interrupted(self) -> Report:
        summary = dataclasses.replace(self.summary, interrupted=True)
        return dataclasses.replace(self, summary=summary)

    def finished(self) -> Report:
        """The report of a run that read its input to the end (``summary.interrupted`` false)."""
        summary = dataclasses.replace(self.summary, interrupted=False)
        return dataclasses.replace(self, summary=summary)

    def overruled(self, result: Verdict, why: str) -> Report:
        return dataclasses.replace(self, verdict=self.verdict.overruled(result, why))
