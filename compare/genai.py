"""Comparison of generative AI answers (OpenAI-style chat/completions/embeddings, Ollama): pairs are
compared as their reassembled messages (``shadowtap.wire.genai``), never as raw SSE text, and the
answers' texts by how far apart they are, not by equality.

Per pair (``GenAiComparer.pair``):
- the structural differences that are real: tool calls (name, arguments as parsed JSON: paths
  ``body.choices[].tool_calls[].arguments.city``), the error object; not the ids, creation times,
  fingerprints, chunk boundaries or usage counts of either side (noise by construction: usage is
  measured as a numeric shift, ``usage`` in the report);
- text metrics of the first choice's content: character edit similarity (rapidfuzz's normalised
  Indel ratio), token edit similarity (Levenshtein over word tokens), ROUGE-L F1 (longest common
  subsequence of word tokens, rapidfuzz's LCSseq: Unicode word tokens, so non-English text counts,
  unlike rouge-score which keeps [a-z0-9] only), chrF (sacrebleu, on a sample: see ``chrf_sample``),
  length ratio, and the semantic similarity (cosine of static embeddings: wordllama's model, shipped
  in its wheel, loaded with downloads impossible; or a user's embedder, ``genai.embedder``);
- a class: ``error`` (the shadow's answer carries an error the primary's did not), ``refusal``
  (the shadow refuses where the primary answered: ``genai.refusal_phrases`` near the start of the
  answer, or OpenAI's ``refusal`` field), ``truncated`` (``finish_reason: length`` or a cut
  stream on the shadow only), ``empty``, ``invalid_json`` (the request asked for JSON output and
  the shadow's answer does not parse), ``tool_call`` (names or arguments changed), else
  ``identical`` (same text after whitespace folding), ``equivalent`` (similarity >=
  ``genai.equivalent``) or ``changed``.

Per endpoint (``GenAgg``): class counts, each side's rate of refusals, truncations, empty and
invalid-JSON answers and errors (tested like error rates in the verdict), similarity
distributions, generation latency of each side (TTFT, inter-token gaps, time per output token,
tokens/s) compared with Mann-Whitney, usage token counts of each side (mean shift), finish
reasons, model names, embeddings' cosine similarity and dimension changes, and the worst pairs
side by side. Memory per endpoint is bounded by reservoirs and a fixed number of worst pairs.

Cost per pair: parsing both answers (O(bytes)); identical texts stop there; differing ones add
the rapidfuzz metrics (~25 us for 1 KB texts) and one embedding call for both texts (~40 us a pair
once the words are known; scripts/bench_llm.sh measures it).
"""

from __future__ import annotations

import heapq
import importlib
import math
import re
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import orjson
from rapidfuzz import fuzz
from rapidfuzz.distance import LCSseq, Levenshtein

from shadowtap.compare.config import GenAiConfig
from shadowtap.compare.decode import decode_body
from shadowtap.compare.diff import Body, BodyType, Difference, Kind, Prepared, diff_json
from shadowtap.compare.samples import redact_text
from shadowtap.compare.stats import Reservoir, latency_shift, percentiles
from shadowtap.errors import PrerequisiteError
from shadowtap.frozen import fast_init
from shadowtap.records import Exchange, Result
from shadowtap.wire.genai import (
    UNPARSED,
    Api,
    Choice,
    Generation,
    is_stream_type,
    parse_generation,
    timing,
)

CLASSES = (
    "identical",
    "equivalent",
    "changed",
    "refusal",
    "truncated",
    "empty",
    "invalid_json",
    "tool_call",
    "error",
)
# Conditions counted on each side: the verdict tests the shadow's rate against the primary's.
FLAGS = ("refusal", "truncated", "empty", "invalid_json", "error")
_WORST = 5
_CDF = tuple(range(0, 101, 5))
_WORD = re.compile(r"\w+", re.UNICODE)
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'"})


# ----------------------------------------------------------------------------- embedders

Embedder = Callable[[Sequence[str]], Any]  # texts -> 2-D array of vectors (any norm)

_embedder_lock = threading.Lock()
_embedders: dict[str, Embedder | None] = {}


_WORD_ROWS_MAX = 32_768  # words whose summed vector is kept (32 MB of float32 at most)
_TEXT_CACHE_MAX = 4096  # texts whose vector is kept (repeated answers: the same prompt again)


def wordllama_embedder() -> Embedder:
    """wordllama's l2_supercat model (256 dimensions) from the files inside its wheel. Downloads
    are impossible here: the weights and tokenizer are opened by path, never resolved through
    ``WordLlama.load`` (whose lookup misses the wheel's tokenizer directory and would fetch it).

    The vectors are wordllama's own (the mean of the token embeddings, normalised), computed
    faster. wordllama is a bag of tokens and its tokenizer splits on spaces before its BPE
    (SentencePiece's Metaspace), so for whitespace-folded text (what the comparison embeds) a
    text's sum of token vectors is the sum over its words of each word's sum: each word is
    tokenized and summed once per process (a row of a float32 matrix, ``_WORD_ROWS_MAX`` words,
    cleared when full), and a text costs O(words) dict lookups, its share of one gather of the
    batch's rows and one BLAS dot. A text seen lately (``_TEXT_CACHE_MAX``) costs a dict lookup.
    tests/compare/test_genai.py checks the vectors against ``WordLlamaInference.embed`` (cosine
    > 0.999)."""
    from pathlib import Path

    import numpy as np
    import wordllama  # type: ignore[import-untyped]
    from safetensors import safe_open
    from wordllama import WordLlama  # type: ignore[import-untyped]

    root = Path(wordllama.__file__).parent
    tokenizer = WordLlama.load_tokenizer(
        root / "tokenizers" / "l2_supercat_tokenizer_config.json", hf_model_id=None
    )
    with safe_open(str(root / "weights" / "l2_supercat_256.safetensors"), framework="np") as f:
        weights = f.get_tensor("embedding.weight")
    dim = weights.shape[1]
    state: dict[str, Any] = {"m": np.zeros((1024, dim), dtype=np.float32)}
    rows: dict[str, int] = {}
    texts: dict[str, Any] = {}
    ones = np.ones(0, dtype=np.float32)
    dot = np.dot  # (the same BLAS calls and bits as @ for these shapes, without its dispatch)

    def row(word: str) -> int:
        r = rows.get(word)
        if r is None:
            r = rows[word] = len(rows)
            m = state["m"]
            if r >= len(m):  # grow by doubling
                state["m"] = m = np.concatenate([m, np.zeros_like(m)])
            ids = tokenizer.encode(word, add_special_tokens=False).ids
            m[r] = weights[ids].astype(np.float32).sum(axis=0) if ids else 0.0
        return r

    def embed(batch: Sequence[str]) -> list[Any]:
        nonlocal ones
        out: list[Any] = [texts.get(t) for t in batch]
        todo = [i for i, v in enumerate(out) if v is None]
        if not todo:
            return out
        bounds = [0]
        every: list[str] = []
        for i in todo:
            every += batch[i].split()
            bounds.append(len(every))
        if len(rows) + len(every) > _WORD_ROWS_MAX:
            rows.clear()  # room for every word of this batch: its rows stay valid while it runs
        try:  # one C call for the rows of every word (known words: the common case)
            idx = itemgetter(*every)(rows) if len(every) > 1 else [rows[w] for w in every]
        except KeyError:
            idx = [row(w) for w in every]
        m = state["m"].take(np.array(idx, dtype=np.intp), axis=0)
        if len(ones) < len(every):
            ones = np.ones(max(len(every), 2 * len(ones)), dtype=np.float32)
        for k, i in enumerate(todo):
            a, b = bounds[k], bounds[k + 1]
            v = dot(ones[: b - a], m[a:b])  # the sum of the words' rows (sgemv)
            n = float(np.sqrt(dot(v, v)))
            v = v / n if n else v
            out[i] = v
            if len(texts) >= _TEXT_CACHE_MAX:
                del texts[next(iter(texts))]  # the oldest
            texts[batch[i]] = v
        return out

    return embed


def load_embedder(spec: str) -> Embedder | None:
    """``wordllama`` (default), ``none``, or ``module:callable`` returning an embedder (a function
    from a list of texts to a 2-D array). Loaded once per process; None when disabled. wordllama
    comes with the ``llm`` extra (scripts/setup.sh installs it); without it, a clear error."""
    with _embedder_lock:
        if spec in _embedders:
            return _embedders[spec]
        emb: Embedder | None
        if spec in ("", "none"):
            emb = None
        elif spec == "wordllama":
            try:
                emb = wordllama_embedder()
            except ImportError as exc:
                raise PrerequisiteError(
                    f'genai.embedder = "wordllama" needs the wordllama package ({exc})',
                    hint='pip install "shadowtap[llm]", or set genai.embedder = "none"',
                ) from exc
        else:
            module, _, name = spec.partition(":")
            emb = getattr(importlib.import_module(module), name or "embedder")()
        _embedders[spec] = emb
        return emb


def _cosine(a: Any, b: Any) -> float:
    import numpy as np

    a, b = np.asarray(a), np.asarray(b)
    # np.dot, not @: the same BLAS call and bits for vectors, without matmul's dispatch
    aa, bb = float(np.dot(a, a)), float(np.dot(b, b))
    if aa == 0 or bb == 0:
        return 1.0 if aa == bb else 0.0
    return float(np.dot(a, b)) / math.sqrt(aa * bb)


# ------------------------------------------------------------------------------ metrics


@fast_init
@dataclass(frozen=True, slots=True)
class TextMetrics:
    edit: float  # character edit similarity, 0..1
    token_edit: float  # word-level Levenshtein similarity, 0..1
    rouge_l: float  # ROUGE-L F1 over word tokens
    length_ratio: float  # len(shadow) / len(primary)
    semantic: float | None  # cosine of the embeddings; None without an embedder
    chrf: float | None = None  # chrF / 100, on sampled pairs only

    @property
    def similarity(self) -> float:
        """The headline similarity: semantic when an embedder runs, else ROUGE-L."""
        return self.semantic if self.semantic is not None else self.rouge_l


# ASCII text: lowercased, every byte outside [a-z0-9_] a space; then bytes.split() gives the
# tokens of _WORD.findall(text.lower()) (``\w`` on ASCII is [A-Za-z0-9_]) at a fifth of the cost.
_ASCII_WORDS = bytes(
    c + 32 if 65 <= c <= 90 else c if (48 <= c <= 57 or 97 <= c <= 122 or c == 95) else 32
    for c in range(256)
)


def _words(text: str) -> list[Any]:
    """The word tokens of ``text``, lowercased (Unicode words; bytes for ASCII text)."""
    if text.isascii():
        return text.encode("ascii").translate(_ASCII_WORDS).split()
    return _WORD.findall(text.lower())


def text_metrics(p: str, s: str, embedder: Embedder | None, chrf: bool) -> TextMetrics:
    """The metrics of two differing texts: rapidfuzz (microseconds for 1 KB texts) and the
    embedding of both texts in one call of the embedder."""
    pt, st = _words(p), _words(s)
    lcs = LCSseq.similarity(pt, st) if pt and st else 0
    rouge = 0.0 if not lcs else 2 * lcs / (len(pt) + len(st))  # F1 of P=lcs/|s| and R=lcs/|p|
    semantic = None
    if embedder is not None:
        vecs = embedder([p, s])
        semantic = max(-1.0, min(1.0, _cosine(vecs[0], vecs[1])))
    score = None
    if chrf:
        import sacrebleu

        score = sacrebleu.sentence_chrf(s, [p]).score / 100.0
    return TextMetrics(
        fuzz.ratio(p, s) / 100.0,
        Levenshtein.normalized_similarity(pt, st),
        rouge,
        len(s) / len(p) if p else (1.0 if not s else math.inf),
        semantic,
        score,
    )


# ------------------------------------------------------------------------ pair and sides


def _norm(text: str) -> str:
    """Whitespace folded: runs of whitespace (str.isspace, as ``\\s``) become one space.
    ASCII text whose only whitespace is single inner spaces (printable ASCII holds no other)
    is its own folding: four C scans instead of a split and a join (1.6 vs 4.5 us a 1 KB
    answer)."""
    if (
        text.isascii()
        and text.isprintable()
        and "  " not in text
        and text[:1] != " "
        and text[-1:] != " "
    ):
        return text
    return " ".join(text.split())


def _wants_json(request_body: Any) -> bool:
    if not isinstance(request_body, dict):
        return False
    rf = request_body.get("response_format")
    if isinstance(rf, dict) and rf.get("type") in ("json_object", "json_schema"):
        return True
    return request_body.get("format") == "json" or isinstance(request_body.get("format"), dict)


def _is_json(text: str) -> bool:
    t = text.strip()
    if t.startswith("```"):  # a fenced block: the JSON inside it
        t = t.strip("`").removeprefix("json").strip()
    try:
        orjson.loads(t)
        return True
    except orjson.JSONDecodeError:
        return False


@fast_init
@dataclass(frozen=True, slots=True)
class Side:
    """What one side's answer is, beyond its text."""

    gen: Generation
    flags: frozenset[str]


def _any_of(phrases: Sequence[str]) -> str:
    """A regex that finds any of ``phrases`` where the plain alternation would (``search``
    answers alike), with their common prefixes factored out (a trie): sre then tries one
    branch a character instead of every phrase (the 20 default phrases over a 200-character
    head: 1.2 vs 3.2 us)."""
    trie: dict[str, Any] = {}
    for phrase in phrases:
        node = trie
        for ch in phrase:
            node = node.setdefault(ch, {})
        node[""] = {}

    def branch(node: dict[str, Any]) -> str:
        out = ""
        while "" not in node:  # where a phrase ends, longer ones find nothing more
            if len(node) > 1:
                alts = (re.escape(ch) + branch(sub) for ch, sub in sorted(node.items()))
                return out + "(?:" + "|".join(alts) + ")"
            ((ch, node),) = node.items()
            out += re.escape(ch)
        return out

    return branch(trie)


class GenAiComparer:
    """Parses and judges the generative pairs of a comparison. Stateless apart from its config
    and embedder; one per Comparison."""

    def __init__(self, cfg: GenAiConfig) -> None:
        self.cfg = cfg
        self.phrases = tuple(p.lower().translate(_APOSTROPHES) for p in cfg.refusal_phrases)
        # one scan of an answer's head for every phrase (a substring test a phrase cost 4x more)
        self._refusal = re.compile(_any_of(self.phrases)) if self.phrases else None
        self._embedder: Embedder | None = None
        self._embedder_loaded = False

    @property
    def embedder(self) -> Embedder | None:
        if not self._embedder_loaded:
            self._embedder = load_embedder(self.cfg.embedder)
            self._embedder_loaded = True
        return self._embedder

    def refuses(self, gen: Generation) -> bool:
        if any(c.refusal for c in gen.choices):
            return True
        if self._refusal is None:
            return False
        head = gen.text[: self.cfg.refusal_window].lower()
        if "\u2019" in head or "\u2018" in head:
            head = head.translate(_APOSTROPHES)
        return self._refusal.search(head) is not None

    def generation(
        self,
        resp: Any,
        target: str,
        chunks: tuple[tuple[int, float], ...],
        prepared: Callable[[], Body] | None = None,
    ) -> Generation | None:
        """``prepared``: the answer's Body (decoded, its JSON parsed) shared with the rest of the
        pair's comparison; a stream's body is decoded here (never read as one JSON or text)."""
        ct = resp.header("content-type")
        if prepared is None or is_stream_type(ct):
            dec = decode_body(resp.body, resp.header("content-encoding"))
            body, error, parsed = dec.body, dec.error, UNPARSED
        else:
            b = prepared()
            body, error = b.raw, b.decode_error
            parsed = b.value if b.type is BodyType.JSON else UNPARSED
        if error is not None:
            chunks = ()  # offsets are those of the coded body: no timing
        return parse_generation(
            body, ct, target, chunks=chunks, truncated=resp.body_truncated, parsed=parsed
        )

    def side(self, gen: Generation, wants_json: bool) -> Side:
        flags = set()
        if gen.api is Api.OPENAI_EMBEDDING or gen.api is Api.SSE:
            if gen.error is not None or "stream_error" in gen.anomalies:
                flags.add("error")
            return Side(gen, frozenset(flags))
        if gen.error is not None:
            flags.add("error")
        if self.refuses(gen):
            flags.add("refusal")
        if (
            gen.finish_reason == "length"
            or "stream_cut" in gen.anomalies
            or "body_truncated" in gen.anomalies
        ):
            flags.add("truncated")
        if not gen.text.strip() and not any(c.tool_calls for c in gen.choices):
            flags.add("empty")
        if wants_json and gen.text.strip() and not _is_json(gen.text):
            flags.add("invalid_json")
        return Side(gen, frozenset(flags))

    def _text_field_pair(self, ex: Exchange, res: Result, prepared: Prepared) -> GenPair | None:
        """A JSON answer with a text at one of ``genai.text_fields`` on both sides: that text
        judged like a generative answer's (the caller diffs the other fields as usual)."""
        found = []
        for body in (prepared.primary, prepared.shadow):
            if body.type is BodyType.JSON:
                found.append(body.value)
                continue
            if body.raw[:1] not in (b"{", b"["):
                return None
            try:
                found.append(orjson.loads(body.raw))
            except orjson.JSONDecodeError:
                return None
        for path in self.cfg.text_fields:
            pt, st = _at(found[0], path), _at(found[1], path)
            if isinstance(pt, str) and isinstance(st, str):
                break
        else:
            return None
        pg = Generation(Api.TEXT_FIELD, False, (Choice(0, pt),))
        sg = Generation(Api.TEXT_FIELD, False, (Choice(0, st),))
        ps, ss = self.side(pg, False), self.side(sg, False)
        a, b = _norm(pt), _norm(st)
        metrics = text_metrics(a, b, self.embedder, chrf=False) if a != b and a and b else None
        new = ss.flags - ps.flags
        cls = next((f for f in ("refusal", "empty") if f in new), None) or (
            "identical"
            if a == b
            else "equivalent"
            if metrics is not None and metrics.similarity >= self.cfg.equivalent
            else "changed"
        )
        return GenPair(ps, ss, cls, metrics, [], None, None, text_path=path)

    def pair(self, ex: Exchange, res: Result, prepared: Prepared | None = None) -> GenPair | None:
        """The pair judged as generative answers, or None when neither side is one.
        ``prepared``: the pair's bodies, shared with the caller's diff when it is not one."""
        req, p, s = ex.request, ex.response, res.response
        if req is None or p is None or s is None:
            return None
        cfg = self.cfg
        target = req.target
        if cfg.paths and not any(re.search(x, target) for x in cfg.paths):
            return None
        if prepared is None:
            prepared = Prepared(p, s)
        pg = self.generation(p, target, ex.chunks, lambda: prepared.primary)
        if pg is None:
            return self._text_field_pair(ex, res, prepared) if cfg.text_fields else None
        sg = self.generation(s, target, res.chunks, lambda: prepared.shadow)
        if sg is None:  # the shadow's answer is not one: compared as usual (a type change)
            return None
        if "not_event_stream" in pg.anomalies or "not_event_stream" in sg.anomalies:
            # Claims text/event-stream and holds no event: compared as the bytes it is (the
            # usual diff shows its body).
            return None
        try:
            rbody = orjson.loads(req.body) if req.body[:1] == b"{" else None
        except orjson.JSONDecodeError:
            rbody = None
        wants = _wants_json(rbody)
        ps, ss = self.side(pg, wants), self.side(sg, wants)
        diffs: list[Difference] = []
        if pg.api is not sg.api:
            diffs.append(Difference("body.api", Kind.VALUE, pg.api.value, sg.api.value))
        metrics = None
        cls: str
        emb_cos: list[float] = []
        dims = None
        if pg.api is Api.SSE or sg.api is Api.SSE:
            # A generic event stream: its events' data compared as JSON values, in order
            # (``body.events[].x`` paths: noise detection judges them like any field).
            diff_json(
                [e["data"] for e in pg.sse_events],
                [e["data"] for e in sg.sse_events],
                "body.events",
                diffs,
                _exact,
            )
            cls = "identical" if not diffs else "changed"
            if "error" in ss.flags - ps.flags:
                cls = "error"
        elif pg.api is Api.OPENAI_EMBEDDING:
            for a, b in zip(pg.embeddings, sg.embeddings):
                if len(a) != len(b):
                    dims = (len(a), len(b))
                else:
                    emb_cos.append(_cosine(a, b))
            if len(pg.embeddings) != len(sg.embeddings):
                diffs.append(
                    Difference("body.data", Kind.SIZE, len(pg.embeddings), len(sg.embeddings))
                )
            if dims:
                diffs.append(Difference("body.data[].embedding", Kind.SIZE, dims[0], dims[1]))
            worst = min(emb_cos, default=1.0)
            cls = (
                "identical"
                if worst >= 1.0 - 1e-9 and not dims
                else "equivalent"
                if worst >= cfg.embedding_equivalent and not dims
                else "changed"
            )
            if "error" in ss.flags - ps.flags:
                cls = "error"
        else:
            if any(c.tool_calls for c in pg.choices) or any(c.tool_calls for c in sg.choices):
                pm, sm = pg.message(), sg.message()
                for pc, sc in zip(pm["choices"], sm["choices"]):
                    diff_json(
                        pc["tool_calls"],
                        sc["tool_calls"],
                        "body.choices[].tool_calls",
                        diffs,
                        _exact,
                    )
            if len(pg.choices) != len(sg.choices):
                diffs.append(
                    Difference("body.choices", Kind.SIZE, len(pg.choices), len(sg.choices))
                )
            if (pg.error is None) != (sg.error is None):
                diffs.append(
                    Difference(
                        "body.error",
                        Kind.EXTRA if pg.error is None else Kind.MISSING,
                        pg.error,
                        sg.error,
                    )
                )
            pt, st = _norm(pg.text), _norm(sg.text)
            tool_change = any(d.path.startswith("body.choices[].tool_calls") for d in diffs)
            new = ss.flags - ps.flags
            if pt != st and pt and st:
                metrics = text_metrics(pt, st, self.embedder, chrf=False)
            for name in ("error", "refusal", "truncated", "empty", "invalid_json"):
                if name in new:
                    cls = name
                    break
            else:
                if tool_change:
                    cls = "tool_call"
                elif pt == st:
                    cls = "identical"
                elif metrics is not None and metrics.similarity >= cfg.equivalent:
                    cls = "equivalent"
                else:
                    cls = "changed"
        pt_ = timing(pg, req.end_ts, p.end_ts)
        st_ = timing(sg, res.sent, s.end_ts)
        return GenPair(ps, ss, cls, metrics, diffs, pt_, st_, tuple(emb_cos), dims)


def _exact(path: str) -> tuple[float, float]:
    return 0.0, 1e-9


@fast_init
@dataclass(frozen=True, slots=True)
class GenPair:
    primary: Side
    shadow: Side
    cls: str
    metrics: TextMetrics | None
    differences: list[Difference]
    primary_timing: Any
    shadow_timing: Any
    embedding_cosines: tuple[float, ...] = ()
    dims: tuple[int, int] | None = None
    text_path: str | None = None  # genai.text_fields: the other fields are diffed as usual


def _at(value: Any, path: str) -> Any:
    """The value at a report-style path (``body.a.b``, ``body.items[].text``: the first element),
    or None."""
    for part in path.removeprefix("body").strip(".").split("."):
        if not part:
            continue
        name, arrays = part.rstrip("[]"), (len(part) - len(part.rstrip("[]"))) // 2
        if name:
            if not isinstance(value, dict):
                return None
            value = value.get(name)
        for _ in range(arrays):
            if not isinstance(value, list) or not value:
                return None
            value = value[0]
    return value


# ------------------------------------------------------------------------------ aggregate


def _excerpt(text: str, limit: int) -> str:
    text = redact_text(text)
    return (
        text if len(text) <= limit else text[:limit] + f" ... ({len(text) - limit} more characters)"
    )


class GenAgg:
    """The generative side of one endpoint's aggregate."""

    def __init__(self, k: int, seed: int) -> None:
        self.pairs = 0
        self.classes: Counter[str] = Counter()
        self.flags_primary: Counter[str] = Counter()
        self.flags_shadow: Counter[str] = Counter()
        self.apis: Counter[str] = Counter()
        self.streamed: Counter[str] = Counter()  # "primary"/"shadow": streamed answers
        self.anomalies_primary: Counter[str] = Counter()
        self.anomalies_shadow: Counter[str] = Counter()
        self.finish: Counter[tuple[Any, Any]] = Counter()
        self.models: Counter[tuple[Any, Any]] = Counter()
        self.similarity = Reservoir(k, seed, typecode="d")
        self.metric_sums: Counter[str] = Counter()  # sums of floats (a Counter adds them too)
        self.metric_n = 0
        self.res: dict[str, Reservoir] = {
            name: Reservoir(k, seed + i + 1, typecode="d")
            for i, name in enumerate(
                (
                    "ttft_p",
                    "ttft_s",
                    "itl_p",
                    "itl_s",
                    "tpot_p",
                    "tpot_s",
                    "tps_p",
                    "tps_s",
                    "tokens_p",
                    "tokens_s",
                    "cos",
                )
            )
        }
        self.tokens_approx = 0
        self.dim_changes: Counter[tuple[int, int]] = Counter()
        self._worst: list[tuple[float, int, tuple[Any, ...]]] = []  # a max-heap by -similarity
        self._n = 0

    def add(self, ex: Exchange, gp: GenPair, limit: int) -> None:
        self.pairs += 1
        self.classes[gp.cls] += 1
        pg, sg = gp.primary.gen, gp.shadow.gen
        self.apis[pg.api.value] += 1
        if gp.primary.flags:  # (an empty update costs a Counter.update call all the same)
            self.flags_primary.update(gp.primary.flags)
        if gp.shadow.flags:
            self.flags_shadow.update(gp.shadow.flags)
        if pg.anomalies:
            self.anomalies_primary.update(pg.anomalies)
        if sg.anomalies:
            self.anomalies_shadow.update(sg.anomalies)
        if pg.streamed:
            self.streamed["primary"] += 1
        if sg.streamed:
            self.streamed["shadow"] += 1
        pf, sf = pg.finish_reason, sg.finish_reason
        if len(self.finish) < 64 or (pf, sf) in self.finish:
            self.finish[(pf, sf)] += 1
        if len(self.models) < 64 or (pg.model, sg.model) in self.models:
            self.models[(pg.model, sg.model)] += 1
        r = self.res
        if gp.primary_timing is not None:
            self._timing(gp.primary_timing, r["ttft_p"], r["itl_p"], r["tpot_p"], r["tps_p"])
        if gp.shadow_timing is not None:
            self._timing(gp.shadow_timing, r["ttft_s"], r["itl_s"], r["tpot_s"], r["tps_s"])
        n, _approx = pg.output_tokens()
        if n is not None:
            r["tokens_p"].add(float(n))
        n, _approx = sg.output_tokens()
        if n is not None:
            r["tokens_s"].add(float(n))
        if gp.embedding_cosines:
            r["cos"].extend(gp.embedding_cosines)
        if gp.dims:
            self.dim_changes[gp.dims] += 1
        m = gp.metrics
        if gp.cls == "identical":
            sim = 1.0
        elif m is not None:
            sim = m.similarity
            self.metric_n += 1
            sums = self.metric_sums
            sums["edit"] += m.edit  # type: ignore[assignment]
            sums["token_edit"] += m.token_edit  # type: ignore[assignment]
            sums["rouge_l"] += m.rouge_l  # type: ignore[assignment]
            if math.isfinite(m.length_ratio):
                sums["length_ratio"] += m.length_ratio  # type: ignore[assignment]
            if m.semantic is not None:
                sums["semantic"] += m.semantic  # type: ignore[assignment]
        elif gp.embedding_cosines:
            sim = min(gp.embedding_cosines)
        else:
            sim = 0.0 if pg.text.strip() != sg.text.strip() else 1.0
        self.similarity.add(sim)
        if gp.cls not in ("identical", "equivalent"):
            self._n += 1
            # refusals and errors rank first (+10), then the least similar changes
            bad = -sim if gp.cls == "changed" else -sim + 10.0
            if len(self._worst) < _WORST:
                heapq.heappush(self._worst, (bad, self._n, self._sample(ex, gp, sim, limit)))
            elif bad > self._worst[0][0]:
                heapq.heapreplace(self._worst, (bad, self._n, self._sample(ex, gp, sim, limit)))

    def _timing(
        self, t: Any, ttft: Reservoir, itl: Reservoir, tpot: Reservoir, tps: Reservoir
    ) -> None:
        ttft.add(t.ttft)
        itl.extend(t.itl[:: max(1, len(t.itl) // 16)])  # ~16 gaps a pair at most
        if t.tpot is not None:
            tpot.add(t.tpot)
        if t.tokens_per_s is not None:
            tps.add(t.tokens_per_s)
        self.tokens_approx += t.tokens_approx

    @staticmethod
    def _sample(ex: Exchange, gp: GenPair, sim: float, limit: int) -> tuple[Any, ...]:
        """What a worst pair shows, as taken: redacted and cut when a report shows it
        (``_shown``), for the few pairs still among the worst then (a redaction of a 1 KB
        answer costs ~0.3 ms, and a pair can enter the worst and leave again)."""
        req = ex.request
        m = gp.metrics
        return (
            ex.id,
            f"{req.method} {req.target}" if req is not None else None,
            gp.cls,
            sim,
            None
            if m is None
            else {
                "edit": m.edit,
                "token_edit": m.token_edit,
                "rouge_l": m.rouge_l,
                "semantic": m.semantic,
                "length_ratio": m.length_ratio if math.isfinite(m.length_ratio) else None,
            },
            gp.primary.gen.text,
            gp.shadow.gen.text,
            gp.primary.gen.finish_reason,
            gp.shadow.gen.finish_reason,
            sorted(gp.shadow.flags),
            limit,
        )

    @staticmethod
    def _shown(sample: tuple[Any, ...]) -> dict[str, Any]:
        eid, request, cls, sim, metrics, primary, shadow, pf, sf, flags, limit = sample
        return {
            "exchange_id": eid,
            "request": redact_text(request) if request is not None else "?",
            "class": cls,
            "similarity": sim,
            "metrics": metrics,
            "primary": _excerpt(primary, limit),
            "shadow": _excerpt(shadow, limit),
            "primary_finish": pf,
            "shadow_finish": sf,
            "shadow_flags": flags,
        }

    def merge(self, o: GenAgg) -> None:
        self.pairs += o.pairs
        for mine, theirs in (
            (self.classes, o.classes),
            (self.flags_primary, o.flags_primary),
            (self.flags_shadow, o.flags_shadow),
            (self.apis, o.apis),
            (self.streamed, o.streamed),
            (self.anomalies_primary, o.anomalies_primary),
            (self.anomalies_shadow, o.anomalies_shadow),
            (self.finish, o.finish),
            (self.models, o.models),
            (self.metric_sums, o.metric_sums),
            (self.dim_changes, o.dim_changes),
        ):
            mine.update(theirs)  # type: ignore[attr-defined,arg-type]
        self.metric_n += o.metric_n
        self.tokens_approx += o.tokens_approx
        self.similarity.merge(o.similarity)
        for k, r in self.res.items():
            r.merge(o.res[k])
        # The other's ordinals follow ours (as if its pairs came after): (bad, n) stays unique, so
        # the heap never compares two samples (dicts: a TypeError with --jobs/Spark on a tie).
        offset = self._n
        self._n += o._n
        for bad, n, sample in o._worst:
            item = (bad, n + offset, sample)
            if len(self._worst) < _WORST:
                heapq.heappush(self._worst, item)
            elif item[0] > self._worst[0][0]:
                heapq.heapreplace(self._worst, item)

    def report(self, cfg: GenAiConfig) -> dict[str, Any]:
        n = self.pairs
        r = self.res

        def dist(res: Reservoir) -> dict[str, Any]:
            vals = list(res.items)
            p50, p90, p99 = percentiles(vals)
            return {
                "n": res.count,
                "p50": p50,
                "p90": p90,
                "p99": p99,
                "mean": sum(vals) / len(vals) if vals else None,
                "cdf": percentiles(vals, _CDF) if vals else [],
            }

        def shift(a: str, b: str) -> dict[str, Any] | None:
            pa, sa = r[a].items, r[b].items
            if len(pa) < 2 or len(sa) < 2:
                return None
            t = latency_shift(pa, sa)
            return {
                "p_value": t.p_value,
                "median_ratio": t.effect,
                "primary_median": t.primary_median,
                "shadow_median": t.shadow_median,
            }

        means = {k: v / self.metric_n for k, v in self.metric_sums.items()} if self.metric_n else {}
        latency = {}
        for name in ("ttft", "itl", "tpot", "tps"):
            latency[name] = {
                "primary": dist(r[name + "_p"]),
                "shadow": dist(r[name + "_s"]),
                "test": shift(name + "_p", name + "_s"),
            }
        tp, ts = r["tokens_p"].items, r["tokens_s"].items
        return {
            "pairs": n,
            "apis": dict(self.apis),
            "streamed": {"primary": self.streamed["primary"], "shadow": self.streamed["shadow"]},
            "classes": {c: self.classes.get(c, 0) for c in CLASSES},
            "class_rates": {c: self.classes.get(c, 0) / n if n else 0.0 for c in CLASSES},
            "flags": {
                f: {"primary": self.flags_primary.get(f, 0), "shadow": self.flags_shadow.get(f, 0)}
                for f in FLAGS
            },
            "anomalies": {
                "primary": dict(self.anomalies_primary),
                "shadow": dict(self.anomalies_shadow),
            },
            "similarity": {
                **dist(self.similarity),
                "measure": "semantic" if "semantic" in means else "rouge_l",
                "floor": cfg.similarity_floor,
                "equivalent": cfg.equivalent,
            },
            "text_metrics_mean": means,  # over pairs whose texts differ
            "latency": latency,
            "tokens_approximate": self.tokens_approx,
            "usage": {
                "completion_tokens_mean_primary": sum(tp) / len(tp) if tp else None,
                "completion_tokens_mean_shadow": sum(ts) / len(ts) if ts else None,
            },
            "finish_reasons": [
                {"primary": a, "shadow": b, "count": c} for (a, b), c in self.finish.most_common(10)
            ],
            "models": [
                {"primary": a, "shadow": b, "count": c} for (a, b), c in self.models.most_common(5)
            ],
            "embeddings": {
                "cosine": dist(r["cos"]),
                "dimension_changes": [
                    {"primary": a, "shadow": b, "count": c}
                    for (a, b), c in self.dim_changes.most_common(5)
                ],
            },
            "worst": [
                self._shown(s) for _k, _n, s in sorted(self._worst, key=lambda x: (-x[0], x[1]))
            ],
        }


# -------------------------------------------------------------------------------- verdict

_FLAG_NAMES = {
    "refusal": "refusals",
    "truncated": "truncated answers",
    "empty": "empty answers",
    "invalid_json": "invalid JSON where JSON was asked",
    "error": "errors in answers",
}


def genai_metrics(ep: Any, cfg: Any) -> list[Any]:
    """The verdict's metrics of one endpoint's generative answers (group ``genai``; TTFT in group
    ``latency``): each condition's rate on the shadow against the primary's (one-sided Fisher
    test, like error rates), the median similarity against ``genai.similarity_floor``, the time
    to first token (Mann-Whitney, like latency), the usage token shift (reported, never failing)."""
    from shadowtap.compare.report import Group
    from shadowtap.compare.stats import error_rate_increase
    from shadowtap.compare.verdict import HIGH, LOW, NODATA, PASS, _metric

    g = ep.genai
    gc = cfg.genai
    name = ep.endpoint
    n = g["pairs"]
    out: list[Any] = []  # Metric records (compare/report.py)
    for flag in FLAGS:
        pc, sc = g["flags"][flag]["primary"], g["flags"][flag]["shadow"]
        if pc == 0 and sc == 0:
            continue
        p_val = error_rate_increase(pc, n, sc, n)
        increase = (sc - pc) / n
        failed = p_val < gc.alpha and increase >= gc.min_increase
        detail = (
            f"{_FLAG_NAMES[flag]}: shadow {sc}/{n} ({sc / n:.1%}) vs primary {pc}/{n} "
            f"({pc / n:.1%}), Fisher p={p_val:.3g}"
        )
        if flag == "refusal" and g["classes"]["refusal"]:
            detail += f"; the shadow refused {g['classes']['refusal']} prompts the primary answered"
        out.append(
            _metric(
                f"{flag} rate",
                Group.GENAI,
                name,
                sc / n,
                pc / n,
                HIGH if failed else PASS,
                failed,
                flag in gc.critical,
                detail,
                f"genai.{flag}",
            )
        )
    sim = g["similarity"]
    texts = n - g["classes"]["identical"]
    if sim["n"] and any(api not in ("openai.embedding", "sse") for api in g["apis"]):
        med = sim["p50"]
        failed = med < gc.similarity_floor
        counts = ", ".join(f"{c} {g['classes'][c]}" for c in CLASSES if g["classes"][c])
        out.append(
            _metric(
                "answer similarity",
                Group.GENAI,
                name,
                med,
                gc.similarity_floor,
                LOW if failed else PASS,
                failed,
                False,
                f"median {sim['measure']} similarity {med:.3f} over {n} answers "
                f"({texts} not identical); classes: {counts}",
                "genai.similarity",
            )
        )
    lc = cfg.latency
    t = g["latency"]["ttft"]
    test = t["test"]
    nmin = min(t["primary"]["n"], t["shadow"]["n"])
    if nmin:
        if test is None or nmin < lc.min_samples:
            out.append(
                _metric(
                    "time to first token",
                    Group.LATENCY,
                    name,
                    None,
                    gc.ttft_effect,
                    NODATA,
                    False,
                    False,
                    f"fewer than {lc.min_samples} timed streams on a side",
                    "genai.ttft",
                )
            )
        else:
            ratio = test["median_ratio"]
            delta = test["shadow_median"] - test["primary_median"]
            detail = (
                f"median TTFT {test['shadow_median']:.1f} ms vs {test['primary_median']:.1f} ms "
                f"(x{ratio:.2f}, Mann-Whitney p={test['p_value']:.3g}, {nmin} streams)"
            )
            failed = (
                test["p_value"] < lc.alpha and ratio > gc.ttft_effect and delta > gc.ttft_min_ms
            )
            result = (
                HIGH
                if failed
                else (LOW if ratio * gc.ttft_effect < 1 and -delta > gc.ttft_min_ms else PASS)
            )
            out.append(
                _metric(
                    "time to first token",
                    Group.LATENCY,
                    name,
                    ratio,
                    gc.ttft_effect,
                    result,
                    failed,
                    Group.LATENCY in cfg.verdict.critical,
                    detail,
                    "genai.ttft",
                )
            )
    u = g["usage"]
    if (
        u["completion_tokens_mean_primary"] is not None
        and u["completion_tokens_mean_shadow"] is not None
    ):
        out.append(
            _metric(
                "output tokens",
                Group.GENAI,
                name,
                u["completion_tokens_mean_shadow"],
                u["completion_tokens_mean_primary"],
                PASS,
                False,
                False,
                f"mean completion tokens {u['completion_tokens_mean_primary']:.1f} -> "
                f"{u['completion_tokens_mean_shadow']:.1f} (a numeric shift, reported)",
                "genai.usage",
            )
        )
    return out


# -------------------------------------------------------------------------------- reports


def _ms(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.1f}"


def terminal_rows(g: dict[str, Any]) -> list[list[Any]]:
    """The generative section of an endpoint for the terminal report: rows of (what, primary,
    shadow, note)."""
    n = g["pairs"]
    rows: list[list[Any]] = [
        [
            "answers (streamed)",
            f"{n} ({g['streamed']['primary']})",
            f"{n} ({g['streamed']['shadow']})",
            ", ".join(g["apis"]),
        ]
    ]
    cls = ", ".join(f"{c} {g['classes'][c]}" for c in CLASSES if g["classes"][c])
    rows.append(["classes", "", "", cls])
    for flag in FLAGS:
        f = g["flags"][flag]
        if f["primary"] or f["shadow"]:
            rows.append([flag, f"{f['primary'] / n:.1%}", f"{f['shadow'] / n:.1%}", ""])
    sim = g["similarity"]
    rows.append(
        [
            f"similarity ({sim['measure']})",
            "",
            f"p50 {sim['p50']:.3f}" if sim["n"] else "-",
            f"floor {sim['floor']:g}, equivalent >= {sim['equivalent']:g}",
        ]
    )
    for name, label in (
        ("ttft", "time to first token ms"),
        ("itl", "inter-token gap ms"),
        ("tpot", "time per output token ms"),
        ("tps", "tokens/s"),
    ):
        lat = g["latency"][name]
        if lat["primary"]["n"] or lat["shadow"]["n"]:
            t = lat["test"]
            rows.append(
                [
                    label + " p50/p90",
                    f"{_ms(lat['primary']['p50'])} / {_ms(lat['primary']['p90'])}",
                    f"{_ms(lat['shadow']['p50'])} / {_ms(lat['shadow']['p90'])}",
                    f"x{t['median_ratio']:.2f}, p={t['p_value']:.2g}" if t else "",
                ]
            )
    u = g["usage"]
    if u["completion_tokens_mean_primary"] is not None:
        rows.append(
            [
                "completion tokens (mean)",
                _ms(u["completion_tokens_mean_primary"]),
                _ms(u["completion_tokens_mean_shadow"]),
                "usage: a numeric shift, never a flip",
            ]
        )
    for m in g["models"][:2]:
        rows.append(["model", m["primary"], m["shadow"], f"x{m['count']}"])
    emb = g["embeddings"]["cosine"]
    if emb["n"]:
        rows.append(["embedding cosine p50/p10", "", f"{emb['p50']:.4f} / {emb['cdf'][2]:.4f}", ""])
    return rows


def genai_html(g: dict[str, Any]) -> str:
    """The generative section of an endpoint's card: classes, rates, similarity and TTFT
    distributions (SVG), the worst pairs side by side."""
    from html import escape

    from shadowtap.compare.report_html import latency_svg

    out = [
        (
            '<h4>Generative answers</h4><table class="genai"><tr><th></th><th>primary</th>'
            "<th>shadow</th><th></th></tr>"
        )
    ]
    for row in terminal_rows(g):
        out.append("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>")
    out.append("</table>")
    t = g["latency"]["ttft"]
    if t["primary"]["cdf"] or t["shadow"]["cdf"]:
        out.append(latency_svg(t["primary"]["cdf"], t["shadow"]["cdf"], "time to first token (ms)"))
    sim = g["similarity"]
    if sim["cdf"]:
        pts = ", ".join(f"{q}%: {v:.3f}" for q, v in zip(_CDF[::2], sim["cdf"][::2]))
        out.append(
            f'<p class="muted">similarity ({escape(sim["measure"])}) percentiles: {escape(pts)}</p>'
        )
    if g["worst"]:
        out.append(f"<details open><summary>worst pairs ({len(g['worst'])})</summary>")
        for w in g["worst"]:
            out.append(
                f'<p><code>{escape(w["request"])}</code> <span class="muted">exchange '
                f"{escape(w['exchange_id'])}</span>: <b>{escape(w['class'])}</b>, similarity "
                f"{w['similarity']:.3f}, finish {escape(str(w['primary_finish']))} &rarr; "
                f'{escape(str(w["shadow_finish"]))}</p><div class="side">'
                f"<div><b>primary</b><pre>{escape(w['primary'])}</pre></div>"
                f"<div><b>shadow</b><pre>{escape(w['shadow'])}</pre></div></div>"
            )
        out.append("</details>")
    return "".join(out)
