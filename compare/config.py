"""Configuration of a comparison: every threshold, with its documented default (docs/compare.md).

A config file is TOML (``.toml``) or JSON (anything else); its sections mirror the dataclasses
below. Unknown keys are errors naming the file and the key, so a typo never silently keeps a
default. The objects are frozen: one config serves a whole run (and the live mirror).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from shadowtap.errors import InputError

try:  # Python >= 3.11; on 3.10 config files are JSON only
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    tomllib = None  # type: ignore[assignment]

# Headers that differ between any two instances of a service and say nothing about its behaviour.
# Shown in every report; ``[headers] noisy`` replaces the list, ``extra_noisy`` extends it,
# ``compare`` takes names out of it. Names are lower case.
DEFAULT_NOISY_HEADERS: tuple[str, ...] = (
    "date",
    "age",
    "expires",
    "etag",
    "last-modified",
    "server-timing",
    "x-request-id",
    "x-correlation-id",
    "request-id",
    "x-trace-id",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "b3",
    "traceparent",
    "tracestate",
    "x-amzn-trace-id",
    "x-cloud-trace-context",
    "uber-trace-id",
    "x-span-id",
    "x-runtime",
    "x-response-time",
    "server",
    "via",
    "set-cookie",
    "keep-alive",
    "connection",
    "transfer-encoding",
    "content-length",
    "x-served-by",
    "x-cache",
    "x-cache-hits",
    "x-timer",
    "cf-ray",
    "report-to",
    "nel",
    "alt-svc",
)


@dataclass(frozen=True, slots=True)
class HeaderConfig:
    noisy: tuple[str, ...] = DEFAULT_NOISY_HEADERS
    extra_noisy: tuple[str, ...] = ()
    compare: tuple[str, ...] = ()  # names taken out of the noisy list

    def ignored(self) -> frozenset[str]:
        names = {n.lower() for n in self.noisy} | {n.lower() for n in self.extra_noisy}
        return frozenset(names - {n.lower() for n in self.compare})


@dataclass(frozen=True, slots=True)
class NoiseRule:
    """A user rule: fields matching ``path`` (a glob over field paths) on endpoints matching
    ``endpoint`` (a glob over ``METHOD /template``; empty = every endpoint) are noise."""

    path: str
    endpoint: str = ""
    reason: str = "user rule"

    def matches(self, endpoint: str, path: str) -> bool:
        if self.endpoint and not fnmatch.fnmatchcase(endpoint, self.endpoint):
            return False
        return fnmatch.fnmatchcase(path, self.path)

    @classmethod
    def parse(cls, text: str) -> NoiseRule:
        """``PATH_GLOB`` or ``ENDPOINT_GLOB::PATH_GLOB`` (the ``--ignore`` option's syntax)."""
        endpoint, sep, path = text.rpartition("::")
        if not path:
            raise InputError(f"empty path in ignore rule {text!r}", field="ignore")
        return cls(path=path, endpoint=endpoint if sep else "", reason=f"--ignore {text}")


@dataclass(frozen=True, slots=True)
class NoiseConfig:
    rules: tuple[NoiseRule, ...] = ()
    order_is_noise: bool = True  # arrays with the same elements in another order
    # Self-detection (no baseline): a field is noise when it differs in at least min_observations
    # pairs, at least volatile_share of the differing values have a volatile shape (timestamp,
    # UUID, random token, counter) and at least distinct_share of the primary's values are
    # distinct across exchanges (the value varies from one exchange to the next).
    min_observations: int = 5
    volatile_share: float = 0.8
    distinct_share: float = 0.8
    # Baseline (Diffy's method): a field is a regression only where
    #   rate(primary, shadow) - rate(primary, baseline) > absolute_threshold  and
    #   (rate(primary, shadow) - rate(primary, baseline)) / rate(primary, baseline)
    #     > relative_threshold
    relative_threshold: float = 0.20
    absolute_threshold: float = 0.0003


@dataclass(frozen=True, slots=True)
class NumericTolerance:
    path: str  # glob over field paths
    abs: float = 0.0
    rel: float = 0.0


@dataclass(frozen=True, slots=True)
class NumericConfig:
    # Two numbers a, b are equal when |a - b| <= max(abs, rel * max(|a|, |b|)).
    abs: float = 0.0
    rel: float = 1e-9
    paths: tuple[NumericTolerance, ...] = ()

    def tolerance(self, path: str) -> tuple[float, float]:
        for t in self.paths:
            if fnmatch.fnmatchcase(path, t.path):
                return t.abs, t.rel
        return self.abs, self.rel


@dataclass(frozen=True, slots=True)
class EndpointRule:
    """``template`` like ``/users/{name}/posts`` (``{x}`` = one segment, a trailing ``*`` = the
    rest); ``method`` empty = any. The first matching rule names the endpoint."""

    template: str
    method: str = ""

    def compile(self) -> re.Pattern[str]:
        parts = []
        for seg in self.template.strip("/").split("/"):
            if seg == "*":
                parts.append(".*")
            elif seg.startswith("{") and seg.endswith("}"):
                parts.append("[^/]+")
            else:
                parts.append(re.escape(seg))
        return re.compile("/" + "/".join(parts) + "/?")


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    rules: tuple[EndpointRule, ...] = ()
    # A path position with more than max_distinct distinct literal values (under the same
    # method and prefix) is a parameter: /users/alice, /users/bob, ... -> /users/{id}.
    max_distinct: int = 50


@dataclass(frozen=True, slots=True)
class ErrorsConfig:
    alpha: float = 0.01  # Fisher / two-proportion test, one-sided (shadow worse)
    min_increase: float = 0.005  # absolute error-rate increase that matters


@dataclass(frozen=True, slots=True)
class LatencyConfig:
    alpha: float = 0.01  # Mann-Whitney U, one-sided
    effect: float = 1.25  # shadow/primary median ratio tolerated (1.25 = 25% slower)
    min_ms: float = 2.0  # median differences below this many ms never fail
    min_samples: int = 20


@dataclass(frozen=True, slots=True)
class ContentConfig:
    max_rate: float = 0.01  # a field differing (beyond noise) in more pairs than this is High
    critical_rate: float = 0.2  # ... and in more than this, fails the run
    extra_fields_fail: bool = False  # a field only the shadow has: reported, Pass by default


@dataclass(frozen=True, slots=True)
class ModelConfig:
    ks_alpha: float = 0.01
    ks_max_d: float = 0.1  # KS statistic tolerated (with p < ks_alpha)
    psi_max: float = 0.2  # population stability index: < 0.1 stable, > 0.2 shifted
    mean_shift_max: float = 0.25  # |mean(shadow) - mean(primary)| / std(primary)
    min_agreement: float = 0.95  # categorical fields: share of pairs with the same value
    critical_agreement: float = 0.8  # ... below this, the run fails
    categorical_max_values: int = 20  # more distinct values than this: not categorical
    min_samples: int = 30


# Phrases that open a refusal (matched case-insensitively in the first ``refusal_window``
# characters of an answer; curly apostrophes count as straight ones). Replace with
# ``[genai] refusal_phrases = [...]``.
DEFAULT_REFUSAL_PHRASES: tuple[str, ...] = (
    "i'm sorry, but i can't",
    "i am sorry, but i cannot",
    "i'm sorry, i can't",
    "sorry, i can't",
    "i cannot help with",
    "i can't help with",
    "i cannot assist",
    "i can't assist",
    "i'm unable to help",
    "i am unable to help",
    "i'm not able to help",
    "i cannot provide",
    "i can't provide",
    "i won't be able to",
    "i must decline",
    "i cannot comply",
    "i can't comply",
    "as an ai language model, i cannot",
    "i'm not able to provide",
    "i cannot fulfill",
)


@dataclass(frozen=True, slots=True)
class GenAiConfig:
    """Generative AI answers (docs/compare.md, "Generative AI endpoints")."""

    enabled: bool = True
    # regular expressions over request targets; empty = generative answers recognised by content
    paths: tuple[str, ...] = ()
    # JSON field paths (as the report names them: "body.answer", "body.result.text") holding the
    # answer text of APIs not recognised by content: that field is compared by similarity (and
    # refusals), the other fields as usual
    text_fields: tuple[str, ...] = ()
    embedder: str = "wordllama"  # "wordllama", "none", or "module:factory" (a user's embedder)
    equivalent: float = 0.85  # similarity at or above which a changed answer is "equivalent"
    similarity_floor: float = 0.7  # the endpoint's median similarity below this fails
    embedding_equivalent: float = 0.99  # /v1/embeddings: cosine from which vectors are equivalent
    refusal_phrases: tuple[str, ...] = DEFAULT_REFUSAL_PHRASES
    refusal_window: int = 200  # characters at the start of an answer searched for the phrases
    alpha: float = 0.01  # Fisher test of the shadow's refusal/truncation/... rate vs the primary's
    min_increase: float = 0.02  # absolute rate increase that matters
    critical: tuple[str, ...] = ("refusal",)  # conditions whose increase fails the run
    ttft_effect: float = 1.25  # shadow/primary median time-to-first-token ratio tolerated
    ttft_min_ms: float = 5.0  # median TTFT differences below this never fail


@dataclass(frozen=True, slots=True)
class TensorTolerance:
    """Tolerances of a model's output tensors (``[tensors]`` defaults, or one
    ``[[tensors.models]]`` rule: ``model`` and ``output`` are regular expressions over the model's
    name and the output's name, empty = any; the first matching rule wins; keys a rule leaves
    out take the built-in defaults, not the ``[tensors]`` section's)."""

    model: str = ""
    output: str = ""
    atol: float = 1e-4  # an element is within tolerance when |s - p| <= atol + rtol * |p|
    rtol: float = 1e-3
    max_breach_rate: float = 0.01  # share of pairs with an element beyond tolerance that fails
    min_cosine: float = 0.999  # the output's median cosine similarity below this fails
    min_top1_agreement: float = 0.99  # classification outputs: share of rows with the same argmax
    critical_top1_agreement: float = 0.95  # top-1 agreement below this fails the run
    top_k: int = 5
    min_topk_overlap: float = 0.9  # mean |top-k(p) & top-k(s)| / k below this fails


@dataclass(frozen=True, slots=True)
class TensorConfig:
    """Tensor outputs of model servers (docs/compare.md, "Tensor outputs")."""

    enabled: bool = True
    # regular expressions over request targets; empty = tensor answers recognised by content
    paths: tuple[str, ...] = ()
    defaults: TensorTolerance = field(default_factory=TensorTolerance)
    models: tuple[TensorTolerance, ...] = ()
    # conditions whose failure fails the run: "shape" (shape/datatype changes, missing outputs),
    # "anomaly" (NaN/undecodable on the shadow only), "tolerance", "top1", "topk", "cosine"
    critical: tuple[str, ...] = ("shape",)

    def tolerance(self, model: str, output: str) -> TensorTolerance:
        for t in self.models:
            if (not t.model or re.search(t.model, model)) and (
                not t.output or re.search(t.output, output)
            ):
                return t
        return self.defaults


@dataclass(frozen=True, slots=True)
class VerdictConfig:
    pass_score: float = 95.0
    marginal_score: float = 75.0
    weights: tuple[tuple[str, float], ...] = (
        ("errors", 30.0),
        ("latency", 20.0),
        ("content", 35.0),
        ("model", 15.0),
        ("genai", 20.0),
        ("tensors", 20.0),
    )
    critical: tuple[str, ...] = ("errors", "latency")  # groups whose High fails the run

    def weight(self, group: str) -> float:
        return dict(self.weights).get(group, 0.0)


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Bounds on memory: everything kept is per endpoint and bounded by these."""

    latency_sample: int = 2000  # reservoir of latencies per endpoint and side
    value_sample: int = 500  # reservoir of pairs whose leaf values feed KS/PSI/agreement
    samples_per_field: int = 3  # side-by-side samples kept per field
    max_fields: int = 300  # per endpoint; more are counted under "(other fields)"
    max_endpoints: int = 500  # more land in "(other endpoints)"
    max_sample_body: int = 4096  # characters of each body kept in a sample
    sample_bodies: int = 30  # samples per endpoint that keep their bodies (the others: values)
    snapshot_budget_ms: float = 200.0  # time a live snapshot spends recomputing endpoints
    # Per pair: JSON values the diff visits and differences it keeps; past either the walk stops
    # and a ``body~cut`` difference says so (docs/security.md).
    max_walk: int = 100_000
    max_differences: int = 1000


@dataclass(frozen=True, slots=True)
class CompareConfig:
    headers: HeaderConfig = field(default_factory=HeaderConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    numeric: NumericConfig = field(default_factory=NumericConfig)
    endpoints: EndpointConfig = field(default_factory=EndpointConfig)
    errors: ErrorsConfig = field(default_factory=ErrorsConfig)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    content: ContentConfig = field(default_factory=ContentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    genai: GenAiConfig = field(default_factory=GenAiConfig)
    tensors: TensorConfig = field(default_factory=TensorConfig)
    verdict: VerdictConfig = field(default_factory=VerdictConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)

    def with_ignore(self, rules: tuple[NoiseRule, ...]) -> CompareConfig:
        if not rules:
            return self
        noise = dataclasses.replace(self.noise, rules=self.noise.rules + rules)
        return dataclasses.replace(self, noise=noise)

    def to_json(self) -> dict[str, Any]:
        """The effective configuration in the config file's structure."""
        d = dataclasses.asdict(self)
        d["verdict"]["weights"] = dict(self.verdict.weights)
        return d


# Fields whose values are shares or probabilities (0..1) and scores (0..100); every other number
# must be finite and >= 0 (a negative limit or threshold has no meaning; NaN compares false with
# everything, so ``pass_score = nan`` would silently never pass).
_UNIT_FIELDS = frozenset(
    {
        "volatile_share",
        "distinct_share",
        "alpha",
        "min_increase",
        "max_rate",
        "critical_rate",
        "ks_alpha",
        "min_agreement",
        "critical_agreement",
        "max_breach_rate",
        "min_cosine",
        "min_top1_agreement",
        "min_topk_overlap",
        "critical_top1_agreement",
    }
)
_SCORE_FIELDS = frozenset({"pass_score", "marginal_score"})


def _number(value: float, name: str, where: str) -> float:
    """``value`` checked for the field ``name`` (``section.key``): finite, >= 0, and within
    0..1 for shares and 0..100 for scores; InputError naming the field otherwise."""
    if not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, not {value}", where=where)
    if value < 0:
        raise InputError(f"{name} must be >= 0, not {value}", where=where)
    key = name.rpartition(".")[2]
    if key in _UNIT_FIELDS and value > 1:
        raise InputError(f"{name} must be within 0..1, not {value}", where=where)
    if key in _SCORE_FIELDS and value > 100:
        raise InputError(f"{name} must be within 0..100, not {value}", where=where)
    return value


_LIST_ITEM = {
    ("noise", "rules"): NoiseRule,
    ("numeric", "paths"): NumericTolerance,
    ("endpoints", "rules"): EndpointRule,
    ("tensors", "models"): TensorTolerance,
}


def _build(cls: type, data: dict[str, Any], where: str, section: str) -> Any:
    if not isinstance(data, dict):
        raise InputError(f"[{section}] must be a table", where=where)
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise InputError(
                f"unknown key {section + '.' if section else ''}{key} (known: {', '.join(known)})",
                where=where,
            )
        f = known[key]
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = ""  # a required field (a rule's path or template): a string
        item = _LIST_ITEM.get((section, key))
        if item is not None:
            if not isinstance(value, list):
                raise InputError(f"{section}.{key} must be a list of tables", where=where)
            kwargs[key] = tuple(_build(item, v, where, f"{section}.{key}") for v in value)
        elif section == "verdict" and key == "weights":
            if not isinstance(value, dict):
                raise InputError("verdict.weights must be a table of group = weight", where=where)
            kwargs[key] = tuple(
                (
                    str(k),
                    _number(
                        _as_number(v, f"verdict.weights.{k}", where), f"verdict.weights.{k}", where
                    ),
                )
                for k, v in value.items()
            )
        elif dataclasses.is_dataclass(default):
            kwargs[key] = _build(type(default), value, where, key)
        elif isinstance(default, tuple):
            if not isinstance(value, list):
                raise InputError(f"{section}.{key} must be a list", where=where)
            kwargs[key] = tuple(str(v) for v in value)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise InputError(f"{section}.{key} must be true or false", where=where)
            kwargs[key] = value
        elif isinstance(default, (int, float)):
            name = f"{section}.{key}" if section else key
            number = _number(_as_number(value, name, where), name, where)
            if isinstance(default, int) and number != int(number):
                raise InputError(f"{name} must be a whole number, not {value}", where=where)
            kwargs[key] = type(default)(number)
        else:
            kwargs[key] = str(value)
    if cls is VerdictConfig and kwargs.get("marginal_score", _VERDICT.marginal_score) > kwargs.get(
        "pass_score", _VERDICT.pass_score
    ):
        raise InputError("verdict.marginal_score must not be above verdict.pass_score", where=where)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise InputError(f"[{section}]: {exc}", where=where) from exc


_VERDICT = VerdictConfig()


def _as_number(value: Any, name: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{name} must be a number", where=where)
    return float(value)


def load_config(path: str | None) -> CompareConfig:
    """The config in ``path`` (TOML or JSON), defaults for what it leaves out."""
    if path is None:
        return CompareConfig()
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise InputError(f"cannot read config: {exc.strerror}", where=path) from exc
    if path.endswith(".toml") and tomllib is None:
        raise InputError("TOML config needs Python >= 3.11; use JSON", where=path)
    try:
        data = tomllib.loads(raw.decode()) if path.endswith(".toml") else json.loads(raw)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(
            f"not valid {'TOML' if path.endswith('.toml') else 'JSON'}: {exc}", where=path
        ) from exc
    return _build(CompareConfig, data, path, "")
