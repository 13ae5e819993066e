"""The per-pair diff of a primary response and a shadow response. Pure: no I/O, no state.

Differences are named by a field path in Diffy's manner:

- ``status``; ``header.<lower-case name>`` (repeated values compared as sets);
- ``body`` for the body as a whole (text, binary, or a change of body type); ``body~token`` for
  a text body whose only differences are volatile tokens (dates, UUIDs, hex ids), with the first
  differing pair of tokens as values;
- ``body.a.b`` for JSON fields; array elements fold to ``[]`` (``body.items[].price``); objects
  whose keys all look like ids (numbers, UUIDs, hex) or that hold more than ``FOLD_KEYS`` keys
  (data, not a schema) fold their keys to ``{id}`` (``body.scores.{id}``).

Kinds: ``value`` (same type, other value), ``type`` (other JSON type, or other body type),
``missing`` (only the primary has it), ``extra`` (only the shadow has it), ``size`` (array or body
lengths differ), ``order`` (an array with the same elements in another order).

Cost: equal bytes are detected first (one memcmp), then equal parsed values (one orjson parse per
side), and only then the detailed walk, which is bounded per pair (issue 12 item 8: a hostile or
broken shadow answering 300k-element arrays that differ everywhere must not take compare, or the
live mirror, to seconds and gigabytes a pair): at most ``max_walk`` JSON values visited (an
order check of an array counts its elements) and ``max_differences`` differences kept. A pair cut
short gets one more difference, ``body~cut`` (kind ``size``), saying how far the walk went, so the
report shows which endpoints were not compared in full.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson

from shadowtap.compare.decode import decode_body
from shadowtap.compare.shapes import VOLATILE_TOKEN, is_id_like
from shadowtap.records import Headers, Response

FOLD_KEYS = 64
# Per-pair bounds of the JSON walk (defaults of compare's [limits] max_walk / max_differences).
MAX_WALK = 100_000
MAX_DIFFERENCES = 1000
CUT_PATH = "body~cut"  # the difference that says a pair's walk was cut short
# An HTML/XML/text body whose only differences are volatile tokens (dates, UUIDs, hex ids).
TEXT_TOKEN_PATH = "body~token"
_SNIPPET = 80  # characters of context kept either side of a text difference


class Kind(str, Enum):
    VALUE = "value"
    TYPE = "type"
    MISSING = "missing"
    EXTRA = "extra"
    SIZE = "size"
    ORDER = "order"


@dataclass(frozen=True, slots=True)
class Difference:
    path: str
    kind: Kind
    primary: Any = None  # JSON-able value on the primary's side (None when missing)
    shadow: Any = None


class BodyType(str, Enum):
    EMPTY = "empty"
    JSON = "json"
    HTML = "html"
    XML = "xml"
    TEXT = "text"
    BINARY = "binary"


@dataclass(frozen=True, slots=True)
class Body:
    """A body ready for comparison: its type and its value (parsed JSON, normalised text, or the
    decoded bytes)."""

    type: BodyType
    value: Any
    raw: bytes  # after content decoding
    decode_error: str | None = None


_UNPARSED = object()


# orjson gives these exact types: one dict lookup instead of an isinstance chain (the walk's
# most frequent call).
_JTYPES: dict[type, str] = {
    type(None): "null",
    bool: "boolean",
    int: "number",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
}


def _jtype(v: Any) -> str:
    t = _JTYPES.get(type(v))
    if t is not None:
        return t
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def fold_keys(keys: Any) -> bool:
    """True when an object's keys are data, not schema: more than FOLD_KEYS of them, or all
    id-like. ``keys``: a dict or its keys view."""
    if len(keys) > FOLD_KEYS:
        return True
    for k in keys:  # a loop, not all() over a generator: most objects stop at their first key
        if not is_id_like(k):
            return False
    return len(keys) > 0


# ---------------------------------------------------------------------------------------- JSON

Tolerance = Any  # callable (path) -> (abs, rel)


def _numbers_equal(a: float, b: float, abs_tol: float, rel_tol: float) -> bool:
    return abs(a - b) <= max(abs_tol, rel_tol * max(abs(a), abs(b)))


def _canon(v: Any) -> bytes:
    return orjson.dumps(v, option=orjson.OPT_SORT_KEYS)


class Budget:
    """What is left of one pair's walk: values to visit and differences to keep. ``cut`` is set
    once either runs out; the walk then returns at once from every level."""

    __slots__ = ("cut", "differences", "walk", "walked")

    def __init__(self, walk: int = MAX_WALK, differences: int = MAX_DIFFERENCES) -> None:
        self.walk = walk
        self.differences = differences
        self.walked = 0
        self.cut = False

    def spend(self, n: int = 1) -> bool:
        """Take ``n`` values from the budget; False (and ``cut``) when there were not enough."""
        if self.walk < n:
            self.cut = True
            return False
        self.walk -= n
        self.walked += n
        return True


def diff_json(
    p: Any,
    s: Any,
    path: str,
    out: list[Difference],
    tolerance: Tolerance,
    budget: Budget | None = None,
) -> None:
    """Append the differences between JSON values ``p`` and ``s`` under ``path`` to ``out``, at
    most ``budget``'s (a fresh default Budget when None). O(min(size, budget.walk))."""
    _diff_json(p, s, path, out, tolerance, budget or Budget())


def _add(out: list[Difference], d: Difference, budget: Budget) -> bool:
    if len(out) >= budget.differences:
        budget.cut = True
        return False
    out.append(d)
    return True


def _diff_json(
    p: Any, s: Any, path: str, out: list[Difference], tolerance: Tolerance, budget: Budget
) -> None:
    if budget.cut or not budget.spend():
        return
    t = type(p)
    if t is type(s) and t is not dict and t is not list and p == s:
        return  # equal scalars of one type (most of a pair's fields): no difference
    tp, ts = _jtype(p), _jtype(s)
    if tp != ts:
        _add(out, Difference(path, Kind.TYPE, p, s), budget)
        return
    if tp == "object":
        fold = fold_keys(p.keys()) and fold_keys(s.keys())
        for k, pv in p.items():
            if k in s:
                sv = s[k]
                t = type(pv)
                if t is type(sv) and t is not dict and t is not list and pv == sv:
                    # _diff_json's first lines for an equal scalar, without the call and the
                    # child's path (most fields of a pair are equal)
                    if budget.walk < 1:
                        budget.cut = True
                        return
                    budget.walk -= 1
                    budget.walked += 1
                    continue
                child = f"{path}.{{id}}" if fold else f"{path}.{k}"
                _diff_json(pv, sv, child, out, tolerance, budget)
            elif not _add(
                out,
                Difference(f"{path}.{{id}}" if fold else f"{path}.{k}", Kind.MISSING, pv, None),
                budget,
            ):
                return
            if budget.cut:
                return
        for k, sv in s.items():
            if k not in p and not _add(
                out,
                Difference(f"{path}.{{id}}" if fold else f"{path}.{k}", Kind.EXTRA, None, sv),
                budget,
            ):
                return
        return
    if tp == "array":
        child = path + "[]"
        if len(p) != len(s):
            if not _add(out, Difference(path, Kind.SIZE, len(p), len(s)), budget):
                return
        elif (
            p != s
            and budget.walk >= 2 * len(p)
            and budget.spend(2 * len(p))
            and sorted(map(_canon, p)) == sorted(map(_canon, s))
        ):
            # The order check canonicalises every element: paid from the budget, and skipped
            # (the elementwise walk below goes as far as the budget lets it) when unaffordable.
            _add(out, Difference(path, Kind.ORDER, p, s), budget)
            return
        for pv, sv in zip(p, s):
            _diff_json(pv, sv, child, out, tolerance, budget)
            if budget.cut:
                return
        return
    if tp == "number":
        if p != s:
            abs_tol, rel_tol = tolerance(path)
            if not _numbers_equal(p, s, abs_tol, rel_tol):
                _add(out, Difference(path, Kind.VALUE, p, s), budget)
        return
    if p != s:
        _add(out, Difference(path, Kind.VALUE, p, s), budget)


# ----------------------------------------------------------------------------------- bodies

_WS = re.compile(r"\s+")
_BETWEEN_TAGS = re.compile(r">\s+<")
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_CHARSET = re.compile(r"charset=\"?([\w.:-]+)", re.IGNORECASE)


def _body_type(content_type: str | None, raw: bytes) -> BodyType:
    if not raw:
        return BodyType.EMPTY
    ct = (content_type or "").lower()
    if "json" in ct:
        return BodyType.JSON
    if "html" in ct:
        return BodyType.HTML
    if "xml" in ct:
        return BodyType.XML
    if ct.startswith("text/") or "javascript" in ct or "x-www-form-urlencoded" in ct:
        return BodyType.TEXT
    if not ct:
        head = raw[:64].lstrip()
        if head[:1] in (b"{", b"["):
            return BodyType.JSON
        if head[:1] == b"<":
            html = head[:14].lower().startswith((b"<!doctype html", b"<html"))
            return BodyType.HTML if html else BodyType.XML
        try:
            raw[:1024].decode("utf-8")
            return BodyType.TEXT
        except UnicodeDecodeError:
            return BodyType.BINARY
    return BodyType.BINARY


def _text(raw: bytes, content_type: str | None) -> str:
    m = _CHARSET.search(content_type or "")
    try:
        return raw.decode(m.group(1) if m else "utf-8", "replace")
    except LookupError:
        return raw.decode("utf-8", "replace")


def normalise_text(text: str, markup: bool) -> str:
    """Whitespace runs -> one space; for HTML/XML also comments dropped and whitespace between tags
    removed. Line endings and indentation never count as differences."""
    if markup:
        text = _COMMENT.sub("", text)
        text = _BETWEEN_TAGS.sub("><", text)
    return _WS.sub(" ", text).strip()


def prepare_body(resp: Response) -> Body:
    """Decode and classify ``resp``'s body; parse JSON and normalise text. O(body)."""
    return prepare(resp.body, resp.header("content-type"), resp.header("content-encoding"))


def prepare(body: bytes, content_type: str | None, content_encoding: str | None) -> Body:
    """``prepare_body`` of a body, given its response's Content-Type and Content-Encoding."""
    dec = decode_body(body, content_encoding)
    raw = dec.body
    ct = content_type
    bt = _body_type(ct, raw)
    value: Any
    if bt is BodyType.JSON:
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            bt, value = BodyType.TEXT, normalise_text(_text(raw, ct), False)
    elif bt in (BodyType.HTML, BodyType.XML):
        value = normalise_text(_text(raw, ct), True)
    elif bt is BodyType.TEXT:
        value = normalise_text(_text(raw, ct), False)
    else:
        value = raw
    return Body(bt, value, raw, dec.error)


def _snippets(a: str, b: str) -> tuple[str, str]:
    # The common prefix's length by bisection over slice comparisons (memcmp-speed, O(n log n)
    # bytes compared) instead of a Python loop a character (~0.1 s a megabyte).
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid - 1
    i = lo
    lo = max(0, i - _SNIPPET)
    return a[lo : i + _SNIPPET], b[lo : i + _SNIPPET]


def _digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:16]


def diff_prepared(
    pb: Body, sb: Body, out: list[Difference], tolerance: Tolerance, budget: Budget | None = None
) -> None:
    """Differences between two prepared bodies; a JSON walk cut short by ``budget`` adds the
    ``body~cut`` difference."""
    if pb.type is not sb.type:
        out.append(Difference("body", Kind.TYPE, pb.type.value, sb.type.value))
        return
    if pb.type is BodyType.EMPTY:
        return
    if pb.type is BodyType.JSON:
        try:
            if pb.value == sb.value and _canon(pb.value) == _canon(sb.value):
                return
            found: list[Difference] = []
            budget = budget or Budget()
            _diff_json(pb.value, sb.value, "body", found, tolerance, budget)
            out.extend(found)
            if budget.cut:
                out.append(
                    Difference(
                        CUT_PATH,
                        Kind.SIZE,
                        f"walked {budget.walked} values",
                        f"kept the first {len(found)} differences",
                    )
                )
        except (RecursionError, TypeError):  # nesting too deep (Python stack, orjson: 255 levels)
            out.append(Difference("body", Kind.VALUE, _digest(pb.raw), _digest(sb.raw)))
    elif pb.type is BodyType.BINARY:
        if pb.raw != sb.raw:
            if len(pb.raw) != len(sb.raw):
                out.append(Difference("body", Kind.SIZE, len(pb.raw), len(sb.raw)))
            else:
                out.append(Difference("body", Kind.VALUE, _digest(pb.raw), _digest(sb.raw)))
    elif pb.value != sb.value:
        tokens = _token_difference(pb.value, sb.value)
        if tokens is not None:
            out.append(Difference(TEXT_TOKEN_PATH, Kind.VALUE, *tokens))
        else:
            out.append(Difference("body", Kind.VALUE, *_snippets(pb.value, sb.value)))


def _token_difference(a: str, b: str) -> tuple[str, str] | None:
    """When two texts differ only in volatile tokens (dates, UUIDs, hex ids): the first differing
    pair of tokens, so that noise detection judges them like any field. O(len(a) + len(b))."""
    if VOLATILE_TOKEN.sub("\0", a) != VOLATILE_TOKEN.sub("\0", b):
        return None
    for x, y in zip(VOLATILE_TOKEN.findall(a), VOLATILE_TOKEN.findall(b)):
        if x != y:
            return x, y
    return None


# ---------------------------------------------------------------------------------- headers


def header_map(headers: Headers, ignored: frozenset[str]) -> dict[str, Any]:
    """Lower-case name -> value, or frozenset of values when the header is repeated."""
    m: dict[str, Any] = {}
    for name, value in headers:
        n = name.lower()
        if n in ignored:
            continue
        old = m.get(n)
        if old is None:
            m[n] = value.strip()
        elif isinstance(old, frozenset):
            m[n] = old | {value.strip()}
        else:
            m[n] = frozenset((old, value.strip()))
    return m


def _show(v: Any) -> Any:
    return sorted(v) if isinstance(v, frozenset) else v


def diff_headers(ph: Headers, sh: Headers, ignored: frozenset[str], out: list[Difference]) -> bool:
    """Append the header differences; returns whether Content-Encoding is the same on both sides
    (so the caller need not scan the headers again)."""
    pm, sm = header_map(ph, ignored), header_map(sh, ignored)
    same_encoding = pm.get("content-encoding") == sm.get("content-encoding")
    if pm == sm:
        return same_encoding
    for n, pv in pm.items():
        sv = sm.get(n)
        if sv is None:
            out.append(Difference(f"header.{n}", Kind.MISSING, _show(pv), None))
        elif sv != pv:
            out.append(Difference(f"header.{n}", Kind.VALUE, _show(pv), _show(sv)))
    for n, sv in sm.items():
        if n not in pm:
            out.append(Difference(f"header.{n}", Kind.EXTRA, None, _show(sv)))
    return same_encoding


# ----------------------------------------------------------------------------------- a pair


@dataclass(frozen=True, slots=True)
class PairDiff:
    """The differences of one pair; ``primary_body``/``shadow_body`` are set when the bodies had
    to be prepared (so the caller can reuse the parse), else None (equal bytes)."""

    differences: list[Difference]
    primary_body: Body | None = None
    shadow_body: Body | None = None
    cut: bool = False  # the body walk stopped at the pair's budget (a body~cut difference says so)


class Prepared:
    """A pair's two answers prepared (``prepare_body``: decoding, classification, JSON parsing)
    at most once each, on first use: the generative comparison, the diff, the tensors and the
    leaf statistics of one pair share them (each parsed the answer's JSON on its own: up to three
    parses of a body per pair). The shadow's is the primary's when the bytes, type and coding are
    the same."""

    __slots__ = ("_primary", "_shadow", "p", "s")

    def __init__(self, p: Response, s: Response) -> None:
        self.p, self.s = p, s
        self._primary: Body | None = None
        self._shadow: Body | None = None

    @property
    def primary(self) -> Body:
        if self._primary is None:
            self._primary = prepare_body(self.p)
        return self._primary

    @property
    def shadow(self) -> Body:
        if self._shadow is None:
            p, s = self.p, self.s
            same = (
                p.body == s.body
                and p.header("content-type") == s.header("content-type")
                and p.header("content-encoding") == s.header("content-encoding")
            )
            self._shadow = self.primary if same else prepare_body(s)
        return self._shadow


def diff_bodies(
    p_body: bytes,
    s_body: bytes,
    content_type: str | None,
    content_encoding: str | None,
    tolerance: Tolerance,
    *,
    max_walk: int = MAX_WALK,
    max_differences: int = MAX_DIFFERENCES,
) -> list[Difference]:
    """``diff_responses(p, s, ...).differences`` where both responses have the same status and
    the same headers (so one Content-Type and Content-Encoding): only the bodies can differ.
    No records needed: the lake's columnar export diffs its columns with it."""
    out: list[Difference] = []
    if p_body == s_body:
        return out
    pb = prepare(p_body, content_type, content_encoding)
    sb = prepare(s_body, content_type, content_encoding)
    if pb.raw != sb.raw:
        diff_prepared(pb, sb, out, tolerance, Budget(max_walk, max_differences))
    return out


def diff_responses(
    p: Response,
    s: Response,
    ignored: frozenset[str],
    tolerance: Tolerance,
    *,
    max_walk: int = MAX_WALK,
    max_differences: int = MAX_DIFFERENCES,
    prepared: Prepared | None = None,
) -> PairDiff:
    out: list[Difference] = []
    if p.status != s.status:
        out.append(Difference("status", Kind.VALUE, p.status, s.status))
    same_encoding = True
    if p.headers != s.headers:
        if "content-encoding" in ignored:  # the user ignores it: still needed to decode bodies
            same_encoding = p.header("content-encoding") == s.header("content-encoding")
            diff_headers(p.headers, s.headers, ignored, out)
        else:
            same_encoding = diff_headers(p.headers, s.headers, ignored, out)
    if p.body == s.body and same_encoding:
        return PairDiff(out)
    if prepared is None:
        prepared = Prepared(p, s)
    pb, sb = prepared.primary, prepared.shadow
    budget = Budget(max_walk, max_differences)
    if pb.raw != sb.raw:
        diff_prepared(pb, sb, out, tolerance, budget)
    return PairDiff(out, pb, sb, budget.cut)
