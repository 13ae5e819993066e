"""Generative AI responses (OpenAI-style and Ollama APIs) read as what they mean: the final
message, however it travelled (one JSON body, an SSE stream of chunks, Ollama's NDJSON stream),
and, for streams whose pieces were timed on the wire, when each piece of content arrived.
Sans-I/O and pure: a response's bytes (and chunk times) in, a ``Generation`` out.

Streams are reassembled as the APIs define them:
- OpenAI ``chat.completion.chunk`` (SSE, ``data: [DONE]`` last): ``delta.content`` concatenated per
  choice ``index``; tool calls by their ``index``: the first fragment has ``id`` and
  ``function.name``, the later ones pieces of ``function.arguments``, joined and then parsed as
  JSON; ``finish_reason`` per choice; ``usage`` from the chunk that carries it (``choices`` empty
  or null); ``data: {"error": ...}`` mid-stream is a failure (``error``);
- OpenAI ``text_completion`` streams: ``choices[].text`` the same way;
- Ollama ``/api/chat`` and ``/api/generate`` (NDJSON, one object a line): ``message.content`` or
  ``response`` concatenated, ``done: true`` last with ``done_reason`` and the token counts
  (``eval_count``, ``prompt_eval_count``: normalised to ``usage.completion_tokens`` and
  ``usage.prompt_tokens``);
- any other SSE stream: the event list (``api = sse``), no message.

Anomalies (names in ``Generation.anomalies``): ``stream_cut`` (ended mid-event, or without
``[DONE]``/``done`` and without a finish reason), ``stream_not_json`` (a ``data:`` that is not
JSON), ``stream_error`` (an error event), ``not_event_stream`` (claims ``text/event-stream`` and
holds no event), ``body_truncated`` (cut at ``max_body``).

Cost: O(body). The usual OpenAI chat stream (``_usual_stream``): a handful of C calls over the
whole body, no Python per event; any other stream: one SSE pass, one parse per event (OpenAI
chunks by msgspec into structs of the fields read, the rest skipped; else orjson), a few lookups
per event, string joins at the end.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from dataclasses import dataclass, field, replace
from enum import Enum
from itertools import accumulate, compress, repeat
from operator import add, attrgetter, itemgetter, mul, sub
from typing import Annotated, Any, Literal

import msgspec
import orjson

from shadowtap.frozen import fast_init
from shadowtap.wire.sse import DEFAULT_MAX_EVENT, parse_sse

__all__ = [
    "Api",
    "Choice",
    "Generation",
    "Timing",
    "ToolCall",
    "is_stream_type",
    "parse_generation",
    "timing",
]

_INVALID = object()
UNPARSED: Any = object()  # parse_generation(parsed=...): no JSON parsed by the caller


class Api(str, Enum):
    OPENAI_CHAT = "openai.chat"
    OPENAI_COMPLETION = "openai.completion"
    OPENAI_EMBEDDING = "openai.embedding"
    OLLAMA_CHAT = "ollama.chat"
    OLLAMA_GENERATE = "ollama.generate"
    SSE = "sse"  # a generic event stream: events only
    TEXT_FIELD = "text_field"  # any JSON API whose answer text is at a path the user names


class Anomaly(str, Enum):
    CUT = "stream_cut"
    NOT_JSON = "stream_not_json"
    ERROR = "stream_error"
    NOT_SSE = "not_event_stream"
    TRUNCATED = "body_truncated"


@fast_init
@dataclass(frozen=True, slots=True)
class ToolCall:
    index: int
    id: str | None
    name: str | None
    arguments: str  # as sent (joined fragments); ``parsed`` holds the JSON or None when invalid
    parsed: Any = None
    valid: bool = True


@fast_init
@dataclass(frozen=True, slots=True)
class Choice:
    index: int
    content: str
    finish_reason: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    refusal: str | None = None  # OpenAI's ``refusal`` field (structured outputs)


@fast_init
@dataclass(frozen=True, slots=True)
class Generation:
    """The reassembled answer. ``content_times``: arrival time (epoch s) of each event that carried
    non-empty content, in order (empty without chunk times); ``events``: events (or NDJSON lines)
    in the stream, 0 for a plain JSON body."""

    api: Api
    streamed: bool
    choices: tuple[Choice, ...] = ()
    model: str | None = None
    usage: dict[str, Any] | None = None
    error: Any = None
    done: bool = False
    events: int = 0
    content_events: int = 0
    content_times: tuple[float, ...] = ()
    last_time: float | None = None
    anomalies: tuple[str, ...] = ()
    embeddings: tuple[tuple[float, ...], ...] = ()
    sse_events: tuple[dict[str, Any], ...] = field(default=())  # generic SSE only (bounded)

    @property
    def text(self) -> str:
        """The first choice's content (the answer most clients show)."""
        return self.choices[0].content if self.choices else ""

    @property
    def finish_reason(self) -> str | None:
        return self.choices[0].finish_reason if self.choices else None

    def output_tokens(self) -> tuple[int | None, bool]:
        """(tokens, approximate): from ``usage`` when sent, else the content events counted."""
        u = self.usage or {}
        n = u.get("completion_tokens")
        if isinstance(n, int) and not isinstance(n, bool):
            return n, False
        if self.streamed and self.content_events:
            return self.content_events, True
        return None, True

    def message(self) -> dict[str, Any]:
        """The final message as one JSON value, what a comparison diffs: stream or not, the same
        shape. Volatile fields (ids, creation times, fingerprints) are left out."""
        return {
            "choices": [
                {
                    "index": c.index,
                    "content": c.content,
                    "finish_reason": c.finish_reason,
                    "refusal": c.refusal,
                    "tool_calls": [
                        {"name": t.name, "arguments": t.parsed if t.valid else t.arguments}
                        for t in c.tool_calls
                    ],
                }
                for c in self.choices
            ],
            "error": self.error,
        }


_STREAM_TYPES = (
    "text/event-stream",
    "application/x-ndjson",
    "application/ndjson",
    "application/jsonl",
    "application/json-seq",
)
_STREAM_TYPE = re.compile("|".join(map(re.escape, _STREAM_TYPES)))  # one C scan, not five


def is_stream_type(content_type: str | None) -> bool:
    """A response whose body arrives as a stream of events worth timing piece by piece: its
    Content-Type holds one of ``_STREAM_TYPES`` (case-insensitive)."""
    return _STREAM_TYPE.search((content_type or "").lower()) is not None


# ----------------------------------------------------------------- typed stream chunks


# An OpenAI stream chunk as msgspec decodes it: only the fields the reassembly reads; the others
# (ids, times, fingerprints) skipped in C without making objects. Measured on 50-event streams:
# decoding ~40% cheaper than orjson's dicts, the Python per event a third. Any other shape (a
# delta that is no object, choices that are no list of objects) raises, and that event goes the
# dict way; both ways give the same Generation (tests/shadowtap/test_genai_stream.py).
class _Delta(msgspec.Struct):
    content: Any = None
    refusal: Any = None
    tool_calls: Any = None


class _StreamChoice(msgspec.Struct):
    index: Any = msgspec.UNSET
    delta: _Delta | None | msgspec.UnsetType = msgspec.UNSET
    text: Any = None
    finish_reason: Any = None


class _Chunk(msgspec.Struct):
    model: Any = None
    choices: list[_StreamChoice] | None = None
    usage: Any = None
    error: Any = msgspec.UNSET


_CHUNK = msgspec.json.Decoder(_Chunk)
_TYPED = True  # OpenAI chunks decoded as _Chunk (the tests turn it off to compare both ways)


# The usual chat chunk, and nothing else: one choice, index 0 (or none), a delta of content only
# (a string or null; no refusal, no tool calls), a finish reason that is a string or null, a
# model that is a string or null, no usage (the last event may carry it, and no choice: the
# usage chunk). A stream of these alone is read by ``_usual_stream`` with no Python per event;
# any other value fails the decoding, and the stream goes the event-by-event way. What these
# types take, ``_Chunk`` takes with the same values. ``gc=False``: values decoded from JSON hold
# no cycle, so the collector need not track them (decode_lines of 50 events 15.0 -> 13.5 us).
class _PlainDelta(msgspec.Struct, gc=False):
    content: str | None = None
    refusal: None = None
    tool_calls: None = None


class _PlainChoice(msgspec.Struct, gc=False):
    delta: _PlainDelta
    index: Literal[0] = 0
    finish_reason: str | None = None


class _PlainChunk(msgspec.Struct, gc=False):
    choices: tuple[_PlainChoice]  # exactly one
    model: str | None = None
    usage: None = None


class _PlainLast(msgspec.Struct, gc=False):
    choices: Annotated[list[_PlainChoice], msgspec.Meta(max_length=1)]
    model: str | None = None
    usage: dict[str, Any] | None = None
    error: Any = msgspec.UNSET


_PLAIN = msgspec.json.Decoder(_PlainChunk)
_PLAIN_LAST = msgspec.json.Decoder(_PlainLast)
_VECTOR = True  # the usual stream read by _usual_stream (the tests turn it off to compare)
_SEP = b"\n\ndata: {"  # between two events of the usual stream
_DONE = b"\n\ndata: [DONE]\n\n"
_first = itemgetter(0)
_choices_of = attrgetter("choices")
_content_of = attrgetter("delta.content")
_finish_of = attrgetter("finish_reason")
_model_of = attrgetter("model")


# ------------------------------------------------------------------------------ accumulators


class _ChoiceAcc:
    __slots__ = ("content", "finish", "refusal", "tools")

    def __init__(self) -> None:
        self.content: list[str] = []
        self.refusal: list[str] = []
        self.finish: str | None = None
        self.tools: dict[int, list[Any]] = {}  # index -> [id, name, [argument pieces]]

    def tool(self, tc: dict[str, Any], position: int) -> None:
        idx = tc.get("index", position)
        idx = idx if isinstance(idx, int) else position
        entry = self.tools.get(idx)
        if entry is None:
            entry = self.tools[idx] = [None, None, []]
        if tc.get("id"):
            entry[0] = tc["id"]
        fn = tc.get("function") or {}
        if isinstance(fn, dict):
            if fn.get("name"):
                entry[1] = (
                    fn["name"]
                    if entry[1] is None
                    else entry[1] + ("" if entry[1] == fn["name"] else fn["name"])
                )
            args = fn.get("arguments")
            if isinstance(args, str):
                entry[2].append(args)
            elif args is not None:  # Ollama sends the arguments as an object
                entry[2].append(orjson.dumps(args).decode())

    def fold(self, msg: dict[str, Any]) -> bool:
        """Fold a message or a delta (content, refusal, tool calls) in; True when it carried
        any of them."""
        return self.fold_parts(msg.get("content"), msg.get("refusal"), msg.get("tool_calls"))

    def fold_parts(self, content: Any, refusal: Any, tool_calls: Any) -> bool:
        got = False
        if isinstance(content, str) and content:
            self.content.append(content)
            got = True
        if isinstance(refusal, str) and refusal:
            self.refusal.append(refusal)
            got = True
        for i, tc in enumerate(tool_calls or ()):
            if isinstance(tc, dict):
                self.tool(tc, i)
                got = True
        return got

    def build(self, index: int) -> Choice:
        tools = []
        for i in sorted(self.tools):
            tid, name, pieces = self.tools[i]
            args = "".join(pieces)
            try:
                parsed, valid = (orjson.loads(args) if args else {}), True
            except orjson.JSONDecodeError:
                parsed, valid = None, False
            tools.append(ToolCall(i, tid, name, args, parsed, valid))
        return Choice(
            index, "".join(self.content), self.finish, tuple(tools), "".join(self.refusal) or None
        )


def _choices(accs: dict[int, _ChoiceAcc]) -> tuple[Choice, ...]:
    return tuple(accs[i].build(i) for i in sorted(accs))


def _usage_ollama(obj: dict[str, Any]) -> dict[str, Any] | None:
    if "eval_count" not in obj and "prompt_eval_count" not in obj:
        return None
    u: dict[str, Any] = {}
    if isinstance(obj.get("prompt_eval_count"), int):
        u["prompt_tokens"] = obj["prompt_eval_count"]
    if isinstance(obj.get("eval_count"), int):
        u["completion_tokens"] = obj["eval_count"]
    if len(u) == 2:
        u["total_tokens"] = u["prompt_tokens"] + u["completion_tokens"]
    return u


def _api_of(obj: Any, target: str) -> Api | None:
    """Which API an object (a body or a stream's first piece) belongs to, or None."""
    if not isinstance(obj, dict):
        return None
    kind = obj.get("object")
    if kind in ("chat.completion", "chat.completion.chunk"):
        return Api.OPENAI_CHAT
    if kind == "text_completion":
        return Api.OPENAI_COMPLETION
    if (
        kind == "list"
        and isinstance(obj.get("data"), list)
        and (not obj["data"] or isinstance(obj["data"][0], dict) and "embedding" in obj["data"][0])
    ):
        return Api.OPENAI_EMBEDDING
    if "done" in obj and ("message" in obj or "response" in obj or "model" in obj):
        return Api.OLLAMA_CHAT if "message" in obj or "/api/chat" in target else Api.OLLAMA_GENERATE
    choices = obj.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        c = choices[0]
        if "delta" in c or "message" in c:
            return Api.OPENAI_CHAT
        if "text" in c:
            return Api.OPENAI_COMPLETION
    path = target.split("?", 1)[0]
    if path.endswith("/chat/completions"):
        return Api.OPENAI_CHAT
    if path.endswith("/completions"):
        return Api.OPENAI_COMPLETION
    return None


# -------------------------------------------------------------------------- one JSON body


def _from_body(obj: dict[str, Any], api: Api) -> Generation:
    if api is Api.OPENAI_EMBEDDING:
        vecs = []
        for d in obj.get("data") or ():
            emb = d.get("embedding") if isinstance(d, dict) else None
            if isinstance(emb, list):
                vecs.append(tuple(float(x) for x in emb if isinstance(x, (int, float))))
        return Generation(
            api,
            False,
            model=obj.get("model"),
            usage=obj.get("usage"),
            embeddings=tuple(vecs),
            done=True,
        )
    if api in (Api.OLLAMA_CHAT, Api.OLLAMA_GENERATE):
        acc = _ChoiceAcc()
        _ollama_piece(obj, acc)
        return Generation(
            api,
            False,
            (acc.build(0),),
            obj.get("model"),
            _usage_ollama(obj),
            obj.get("error"),
            bool(obj.get("done")),
        )
    accs: dict[int, _ChoiceAcc] = {}
    for pos, ch in enumerate(obj.get("choices") or ()):
        if not isinstance(ch, dict):
            continue
        idx = ch.get("index", pos)
        acc = accs.setdefault(idx if isinstance(idx, int) else pos, _ChoiceAcc())
        msg = ch.get("message")
        if isinstance(msg, dict):
            acc.fold(msg)
        elif isinstance(ch.get("text"), str):
            acc.content.append(ch["text"])
        acc.finish = ch.get("finish_reason")
    usage = obj.get("usage") if isinstance(obj.get("usage"), dict) else None
    return Generation(api, False, _choices(accs), obj.get("model"), usage, obj.get("error"), True)


def _ollama_piece(obj: dict[str, Any], acc: _ChoiceAcc) -> bool:
    """Fold one Ollama object into ``acc``; True when it carried content."""
    got = False
    msg = obj.get("message")
    if isinstance(msg, dict):
        got = acc.fold(msg)
    elif isinstance(obj.get("response"), str) and obj["response"]:
        acc.content.append(obj["response"])
        got = True
    if obj.get("done"):
        acc.finish = obj.get("done_reason") or "stop"
    return got


# ------------------------------------------------------------------------------- streams


class _Fold:
    """The reassembly of one stream's events, in order: OpenAI chunks decoded as ``_Chunk``
    (``chunk``) or any event as a dict (``obj``); both fold the same way."""

    __slots__ = (
        "accs",
        "api",
        "content_events",
        "content_times",
        "done",
        "error",
        "model",
        "ollama",
        "usage",
    )

    def __init__(self, api: Api | None) -> None:
        self.api = api
        self.accs: dict[int, _ChoiceAcc] = {}
        self.ollama = _ChoiceAcc()
        self.model: Any = None
        self.usage: Any = None
        self.error: Any = None
        self.done = False
        self.content_times: list[float] = []
        self.content_events = 0

    def chunk(self, c: _Chunk, ts: float | None) -> None:
        if c.error is not msgspec.UNSET and not c.choices:
            self.error = c.error
            return
        if self.model is None and c.model:
            self.model = c.model
        if isinstance(c.usage, dict):
            self.usage = c.usage
        got = False
        for pos, sc in enumerate(c.choices or ()):
            idx = sc.index if type(sc.index) is int else pos  # as a JSON body's choices
            acc = self.accs.get(idx) or self.accs.setdefault(idx, _ChoiceAcc())
            d = sc.delta
            if isinstance(d, _Delta):
                if type(d.content) is str and d.refusal is None and d.tool_calls is None:
                    if d.content:  # content alone: the common delta
                        acc.content.append(d.content)
                        got = True
                else:
                    got = acc.fold_parts(d.content, d.refusal, d.tool_calls) or got
            elif isinstance(sc.text, str) and sc.text:
                acc.content.append(sc.text)
                got = True
            if sc.finish_reason:
                acc.finish = sc.finish_reason
        if got:
            self.content_events += 1
            if ts is not None:
                self.content_times.append(ts)

    def obj(self, obj: dict[str, Any], etype: str, ts: float | None) -> None:
        if "error" in obj and not obj.get("choices") or etype == "error":
            self.error = obj.get("error", obj)
            return
        if self.model is None and obj.get("model"):
            self.model = obj["model"]
        if "usage" in obj and isinstance(obj["usage"], dict):
            self.usage = obj["usage"]
        got = False
        if self.api is Api.OLLAMA_CHAT or self.api is Api.OLLAMA_GENERATE:
            got = _ollama_piece(obj, self.ollama)
            self.done = self.done or bool(obj.get("done"))
            self.usage = _usage_ollama(obj) or self.usage
        else:
            for pos, ch in enumerate(obj.get("choices") or ()):
                if type(ch) is not dict:
                    continue
                idx = ch.get("index", pos)
                idx = idx if type(idx) is int else pos  # as a JSON body's choices
                acc = self.accs.get(idx) or self.accs.setdefault(idx, _ChoiceAcc())
                delta = ch.get("delta")
                if type(delta) is dict:
                    got = acc.fold(delta) or got
                elif isinstance(ch.get("text"), str) and ch["text"]:
                    acc.content.append(ch["text"])
                    got = True
                if ch.get("finish_reason"):
                    acc.finish = ch["finish_reason"]
        if got:
            self.content_events += 1
            if ts is not None:
                self.content_times.append(ts)


def _openai_stream(
    body: bytes, chunks: tuple[tuple[int, float], ...], target: str
) -> tuple[_Fold, int, float | None] | None:
    """The common OpenAI stream folded in one pass over the body, without the SSE parser's
    records: every event a single ``data: {...}`` line (LF line ends, one space after the
    colon), maybe ``data: [DONE]``, nothing after the last blank line, each event a chunk of the
    shape ``_Chunk`` takes. Returns (the fold, the events counted, the last event's time), or
    None for anything else: the SSE parser and the dict way read it then, with their anomalies,
    and give the same Generation for what this takes (tests/shadowtap/test_genai_stream.py).
    Each event: a slice, msgspec's decoding from the bytes, the fold; its time from one walk of
    the chunk list (as the SSE parser gives: the chunk holding the \\n of its blank line).
    Measured on 50-event answers: a third cheaper than the SSE parser's records and the fold."""
    if b"\r" in body or len(body) >= DEFAULT_MAX_EVENT or not body.startswith(b"data: {"):
        return None
    blocks = body.split(b"\n\n")
    if blocks.pop():
        return None  # a cut stream, or a last event with no blank line
    try:
        api = _api_of(orjson.loads(blocks[0][6:]), target)
    except orjson.JSONDecodeError:
        return None
    if api is not Api.OPENAI_CHAT and api is not Api.OPENAI_COMPLETION:
        return None
    fold = _Fold(api)
    decode = _CHUNK.decode
    n = len(chunks)
    ci = 0
    last_ts = chunks[-1][1] if n else None
    ts: float | None = None
    pos = 0
    for block in blocks:
        blank = pos + len(block) + 1  # the \n of the blank line ending the event
        pos = blank + 1
        if n:
            while ci < n and chunks[ci][0] <= blank:
                ci += 1
            ts = chunks[ci][1] if ci < n else last_ts
        if not block.startswith(b"data: ") or b"\n" in block:
            return None
        data = block[6:]
        if data == b"[DONE]":
            fold.done = True
            continue
        try:
            fold.chunk(decode(data), ts)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return None
    return fold, len(blocks), ts


def _usual_stream(
    body: bytes, chunks: tuple[tuple[int, float], ...], target: str
) -> Generation | None:
    """The usual OpenAI chat stream read with C calls over the whole body, no Python per event:
    every event a single ``data: {...}`` line (LF line ends, one space after the colon), maybe
    ``data: [DONE]`` last, nothing after the last blank line, every chunk of the shape
    ``_PlainChunk`` takes. The events are split in one call, decoded in one (msgspec's
    ``decode_lines``, after checks that each line holds exactly one event: no other line end
    anywhere, each line starting with ``{``, as many values as lines); their fields gathered
    by ``map``; each event's time by bisection of the chunk ends at the \\n of its blank line
    (what the SSE parser gives). Returns None for anything else: ``_openai_stream`` and then
    the SSE parser read it, and they give the same Generation for what this takes
    (tests/shadowtap/test_genai_stream.py crafts streams that fail each check)."""
    if b"\r" in body or len(body) >= DEFAULT_MAX_EVENT or not body.startswith(b"data: {"):
        return None
    done = body.endswith(_DONE)
    if not done and not body.endswith(b"\n\n"):
        return None
    parts = body[7 : len(body) - (len(_DONE) if done else 2)].split(_SEP)
    if b"\n" in b"".join(parts):  # a line that is no event's single data line
        return None
    *head, tail = parts
    try:
        api = _api_of(orjson.loads(b"{" + parts[0]), target)
        events = _PLAIN.decode_lines(b"{" + b"\n{".join(head)) if head else []
        end = _PLAIN_LAST.decode(b"{" + tail)
    except (orjson.JSONDecodeError, msgspec.ValidationError, msgspec.DecodeError):
        return None
    if len(events) != len(head):
        return None  # a line of several values (never one of none: each starts with {)
    if api is not Api.OPENAI_CHAT and api is not Api.OPENAI_COMPLETION:
        return None
    choices = list(map(_first, map(_choices_of, events)))
    if end.choices:
        choices.append(end.choices[0])
    elif end.error is not msgspec.UNSET:
        return None  # an error event: the event-by-event way says what it is
    contents = list(map(_content_of, choices))
    finish = next(filter(None, reversed(list(map(_finish_of, choices)))), None)
    count = len(parts) + done
    times: tuple[float, ...] = ()
    last: float | None = None
    if chunks:
        ends = [e for e, _ in chunks]
        if ends != sorted(ends):
            return None  # the walk of _openai_stream reads unsorted ends its own way
        at = [t for _, t in chunks]
        at.append(at[-1])  # past the last chunk: its time
        # The byte after the \n of event k's blank line: 9 + the lengths of parts 0..k + 9 (a
        # separator) * k. An event's time is that of the chunk holding that \n: the first
        # chunk that ends past it.
        after = list(map(add, accumulate(map(len, parts)), range(9, 9 * len(parts) + 9, 9)))
        if done:
            after.append(len(body))
        if ends[: len(after)] == after:
            ts = at[: len(after)]  # each event a chunk of its own (a write an event): one compare
        else:
            ts = list(map(at.__getitem__, map(bisect_left, repeat(ends), after)))
        times = tuple(compress(ts, contents))
        last = ts[-1]
        content_events = len(times)
    else:
        content_events = sum(map(bool, contents))
    return Generation(
        api,
        True,
        (Choice(0, "".join(filter(None, contents)), finish),),
        next(filter(None, map(_model_of, events)), None) or end.model or None,
        end.usage,
        None,
        done,
        count,
        content_events,
        times,
        last,
        () if done or finish else (Anomaly.CUT.value,),
    )


def _from_sse(body: bytes, chunks: tuple[tuple[int, float], ...], target: str) -> Generation:
    if _VECTOR and _TYPED:
        usual = _usual_stream(body, chunks, target)
        if usual is not None:
            return usual
    anomalies: list[str] = []
    not_json = 0
    generic: list[dict[str, Any]] = []  # kept while no event said which API: generic SSE
    fast = _openai_stream(body, chunks, target) if _TYPED else None
    if fast is not None:
        return _generation(*fast, anomalies, not_json, generic)
    stream = parse_sse(body, chunks)
    if stream.pending:
        anomalies.append(Anomaly.CUT.value)
    records = stream.records
    if not records:
        if Anomaly.CUT.value not in anomalies or not body.lstrip().startswith(
            (b"data", b":", b"event")
        ):
            anomalies.append(Anomaly.NOT_SSE.value)
            return Generation(Api.SSE, True, anomalies=tuple(anomalies))
        # A stream cut inside its first event: the API the request was for, and no content.
        return Generation(_api_of({}, target) or Api.SSE, True, anomalies=tuple(anomalies))
    fold = _Fold(None)
    typed = False  # the API is OpenAI's chat or completion: events decoded as _Chunk
    # Cost per event: one parse (msgspec's typed one for OpenAI chunks) and the fold.
    for data, etype, _id, _retry, ts in records:
        if data == "[DONE]":
            fold.done = True
            continue
        if typed and etype != "error":
            try:
                fold.chunk(_CHUNK.decode(data), ts)
                continue
            except (msgspec.ValidationError, msgspec.DecodeError):
                pass  # the dict way: invalid JSON, or a shape the struct does not take
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            not_json += 1
            if fold.api is None and len(generic) < 1000:
                generic.append({"type": etype, "data": data[:1000], "ts": ts})
            continue
        if fold.api is None and len(generic) < 1000:
            generic.append(
                {"type": etype, "data": obj if len(data) <= 1000 else data[:1000], "ts": ts}
            )
        if type(obj) is not dict:
            continue
        if fold.api is None:
            fold.api = _api_of(obj, target)
            typed = _TYPED and fold.api in (Api.OPENAI_CHAT, Api.OPENAI_COMPLETION)
        fold.obj(obj, etype, ts)
    count, last = len(records), records[-1][4]
    return _generation(fold, count, last, anomalies, not_json, generic)


def _generation(
    fold: _Fold,
    count: int,
    last: float | None,
    anomalies: list[str],
    not_json: int,
    generic: list[dict[str, Any]],
) -> Generation:
    """A stream's Generation from its fold: ``count`` events, the last one's time, the
    anomalies so far, the events that were no JSON, the generic events (no API known)."""
    if not_json:
        anomalies.append(Anomaly.NOT_JSON.value)
    if fold.error is not None:
        anomalies.append(Anomaly.ERROR.value)
    api = fold.api
    if api is None:
        return Generation(
            Api.SSE,
            True,
            events=count,
            anomalies=tuple(anomalies),
            sse_events=tuple(generic),
            last_time=last,
            done=fold.done,
        )
    choices = (
        (fold.ollama.build(0),)
        if api in (Api.OLLAMA_CHAT, Api.OLLAMA_GENERATE)
        else _choices(fold.accs)
    )
    if (
        not fold.done
        and not any(c.finish_reason for c in choices)
        and Anomaly.CUT.value not in anomalies
    ):
        anomalies.append(Anomaly.CUT.value)
    return Generation(
        api,
        True,
        choices,
        fold.model,
        fold.usage,
        fold.error,
        fold.done,
        count,
        fold.content_events,
        tuple(fold.content_times),
        last,
        tuple(anomalies),
    )


def _from_ndjson(body: bytes, chunks: tuple[tuple[int, float], ...], target: str) -> Generation:
    """Ollama's stream: one JSON object a line; a line's time is that of the chunk ending it."""
    ends = [e for e, _ in chunks]
    times = [t for _, t in chunks]
    acc = _ChoiceAcc()
    api: Api | None = None
    model = usage = error = None
    done = False
    events = content_events = not_json = 0
    content_times: list[float] = []
    pos = 0
    ci = 0
    last: float | None = None
    anomalies: list[str] = []
    n = len(body)
    while pos < n:
        nl = body.find(b"\n", pos)
        if nl < 0:
            line, end, cut = body[pos:], n, True
        else:
            line, end, cut = body[pos:nl], nl + 1, False
        pos = end
        if not line.strip():
            continue
        while ci < len(ends) - 1 and ends[ci] < end:
            ci += 1
        ts = times[ci] if times else None
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            if cut:
                anomalies.append(Anomaly.CUT.value)
            else:
                not_json += 1
            continue
        events += 1
        last = ts
        if not isinstance(obj, dict):
            continue
        if api is None:
            api = _api_of(obj, target) or Api.OLLAMA_GENERATE
        if "error" in obj:
            error = obj["error"]
            continue
        model = model or obj.get("model")
        if _ollama_piece(obj, acc):
            content_events += 1
            if ts is not None:
                content_times.append(ts)
        if obj.get("done"):
            done = True
            usage = _usage_ollama(obj) or usage
    if not_json:
        anomalies.append(Anomaly.NOT_JSON.value)
    if error is not None:
        anomalies.append(Anomaly.ERROR.value)
    if not done and Anomaly.CUT.value not in anomalies:
        anomalies.append(Anomaly.CUT.value)
    return Generation(
        api or Api.OLLAMA_GENERATE,
        True,
        (acc.build(0),),
        model,
        usage,
        error,
        done,
        events,
        content_events,
        tuple(content_times),
        last,
        tuple(anomalies),
    )


def parse_generation(
    body: bytes,
    content_type: str | None,
    target: str = "",
    *,
    chunks: tuple[tuple[int, float], ...] = (),
    truncated: bool = False,
    parsed: Any = UNPARSED,
) -> Generation | None:
    """The generation a response holds, or None when it is not a generative API's answer.

    ``body``: after content decoding; ``target``: the request target (a hint when the body does
    not say which API it is); ``chunks``: (end offset, arrival time) of the body's pieces;
    ``parsed``: the body's JSON when the caller parsed it already (compare shares one parse)."""
    ct = (content_type or "").lower()
    gen: Generation | None
    if "text/event-stream" in ct:
        gen = _from_sse(body, chunks, target)
    elif is_stream_type(ct):
        gen = _from_ndjson(body, chunks, target)
    elif "json" in ct or (not ct and body[:1] == b"{"):
        try:
            obj = orjson.loads(body) if parsed is UNPARSED else parsed
        except orjson.JSONDecodeError:
            nl = body.find(b"\n")
            if 0 < nl < len(body) - 1 and body[:1] == b"{" and "/api/" in target:
                return _from_ndjson(body, chunks, target)  # Ollama streams as application/json
            return None
        api = _api_of(obj, target)
        if api is None:
            return None
        gen = _from_body(obj, api)
    else:
        return None
    if truncated:
        gen = _with_anomaly(gen, Anomaly.TRUNCATED.value)
    return gen


def _with_anomaly(gen: Generation, name: str) -> Generation:
    return gen if name in gen.anomalies else replace(gen, anomalies=(*gen.anomalies, name))


# -------------------------------------------------------------------------------- timing


@fast_init
@dataclass(frozen=True, slots=True)
class Timing:
    """Latency of a generation, in ms (definitions in docs/results-format.md):
    ``ttft``: the request's last byte to the first event with non-empty content;
    ``itl``: the gaps between successive content events; ``total``: the request's last byte to the
    response's last byte; ``tpot``: (total - ttft) / (tokens - 1); ``tokens_per_s``: tokens / the
    decode time (total - ttft) when tokens > 1."""

    ttft: float | None
    total: float | None
    itl: tuple[float, ...]
    tokens: int | None
    tokens_approx: bool
    tpot: float | None
    tokens_per_s: float | None


def timing(gen: Generation, request_end: float | None, response_end: float | None) -> Timing | None:
    """The generation's latency, or None when its content arrival was not timed."""
    if not gen.content_times or request_end is None:
        return None
    times = gen.content_times
    ttft = max(0.0, (times[0] - request_end) * 1000.0)
    end = response_end if response_end is not None else times[-1]
    total = max(ttft, (end - request_end) * 1000.0)
    # max(0.0, (b - a) * 1000.0) for successive a, b: C calls only (50 gaps a stream)
    itl = tuple(map(max, repeat(0.0), map(mul, map(sub, times[1:], times), repeat(1000.0))))
    tokens, approx = gen.output_tokens()
    tpot = tps = None
    if tokens is not None and tokens > 1:
        decode = total - ttft
        tpot = decode / (tokens - 1)
        tps = (tokens - 1) / (decode / 1000.0) if decode > 0 else None
    return Timing(ttft, total, itl, tokens, approx, tpot, tps)
