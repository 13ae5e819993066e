"""Comparison of generative answers: streamed answers compared as their reassembled messages, ids
and timestamps not flagged, paraphrases equivalent, refusals named, tool calls structural, TTFT
measured. The answers come from the lab's demo LLM generator (scripts/lab/llm_service.py)."""

from __future__ import annotations

import re

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowtap.compare.aggregate import Comparison
from shadowtap.compare.config import CompareConfig, GenAiConfig
from shadowtap.compare.genai import GenAiComparer, _any_of, _norm, text_metrics
from shadowtap.lab.llm_service import answer, behaviour, prompts, tokens
from shadowtap.records import Exchange, Request, Response, Result

SSE = "text/event-stream"


def sse_body(
    text: str, model: str, t0: float, ttft: float, gap: float, created: int, usage: bool = True
) -> tuple[bytes, tuple[tuple[int, float], ...]]:
    """An OpenAI stream of ``text`` with a fresh id per chunk, and its chunk times."""
    parts, times = [], []
    head = {
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": f"fp_{created}",
    }
    parts.append(
        {
            **head,
            "id": f"c{created}",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}],
        }
    )
    times.append(t0 + 0.001)
    for i, piece in enumerate(tokens(text)):
        parts.append(
            {**head, "id": f"c{created}", "choices": [{"index": 0, "delta": {"content": piece}}]}
        )
        times.append(t0 + ttft + i * gap)
    parts.append(
        {
            **head,
            "id": f"c{created}",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        }
    )
    times.append(times[-1] + gap)
    if usage:
        n = len(tokens(text))
        parts.append(
            {
                **head,
                "id": f"c{created}",
                "choices": [],
                "usage": {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": n + 5},
            }
        )
        times.append(times[-1])
    raw = [b"data: " + orjson.dumps(p) + b"\n\n" for p in parts] + [b"data: [DONE]\n\n"]
    times.append(times[-1])
    chunks, end = [], 0
    for r, t in zip(raw, times):
        end += len(r)
        chunks.append((end, t))
    return b"".join(raw), tuple(chunks)


def json_body(text: str, model: str, created: int) -> bytes:
    return orjson.dumps(
        {
            "id": f"chatcmpl-{created}",
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": f"fp_{created}",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": 5,
                "completion_tokens": len(text.split()),
                "total_tokens": 5 + len(text.split()),
            },
        }
    )


def pair(i: int, prompt: str, stream: bool, t0: float) -> tuple[Exchange, Result]:
    req_body = orjson.dumps(
        {"model": "m", "stream": stream, "messages": [{"role": "user", "content": prompt}]}
    )
    req = Request(
        t0,
        t0,
        "HTTP/1.1",
        (("Content-Type", "application/json"),),
        req_body,
        len(req_body),
        method="POST",
        target="/v1/chat/completions",
    )
    ct = SSE if stream else "application/json"
    out = []
    for version, ttft, start in ((1, 0.015, t0), (2, 0.060, t0 + 1000.0)):
        text = answer(prompt, version)
        created = int(start) + i
        if stream:
            body, chunks = sse_body(text, f"demo-llm-{version}", start, ttft, 0.001, created)
        else:
            body, chunks = json_body(text, f"demo-llm-{version}", created), ()
        end = chunks[-1][1] if chunks else start + ttft
        resp = Response(
            start + 0.001,
            end,
            "HTTP/1.1",
            (("Content-Type", ct),),
            body,
            len(body),
            status=200,
            reason="OK",
        )
        out.append((resp, chunks, start))
    (p, pch, _), (s, sch, sstart) = out
    ex = Exchange(
        f"x{i}",
        "10.0.0.1:1000",
        "10.0.0.2:80",
        i,
        req,
        p,
        total_ms=(p.end_ts - t0) * 1000,
        chunks=pch,
    )
    res = Result(
        f"x{i}",
        "http://shadow/v1/chat/completions",
        sstart,
        sstart,
        s,
        total_ms=(s.end_ts - sstart) * 1000,
        chunks=sch,
    )
    return ex, res


def test_sixty_completions_name_refusals_and_ttft_and_do_not_cry_wolf():
    cmp = Comparison(CompareConfig())
    ps = prompts(60)
    t0 = 1_796_149_490.0
    for i, pr in enumerate(ps):
        cmp.add(*pair(i, pr, stream=i % 2 == 0, t0=t0 + i))
    rep = cmp.snapshot(fresh=True)
    [ep] = rep.endpoints
    g = ep.genai
    refusals = sum(behaviour(p, 2) == "refuse" for p in ps)
    paraphrases = sum(behaviour(p, 2) == "paraphrase" for p in ps)
    assert g["classes"]["refusal"] == refusals > 0
    assert g["classes"]["equivalent"] == paraphrases
    assert g["classes"]["identical"] == 60 - refusals - paraphrases
    assert g["streamed"] == {"primary": 30, "shadow": 30}
    # no field differences from ids, creation times, fingerprints, models or usage counts
    assert [f.path for f in ep.fields if not f.noise] == []
    t = g["latency"]["ttft"]
    assert t["primary"]["p50"] == pytest.approx(15.0, abs=1) and t["shadow"][
        "p50"
    ] == pytest.approx(60.0, abs=1)
    v = rep.verdict
    assert v.result == "fail"
    critical = [r for r in v.reasons if r.startswith("CRITICAL")]
    assert any("refusal rate" in r for r in critical)
    assert any("time to first token" in r for r in critical)
    assert not any("created" in r or "body.id" in r or "fingerprint" in r for r in v.reasons)
    assert not any("similarity" in r for r in v.reasons)
    worst = g["worst"]
    assert worst and worst[0]["class"] == "refusal" and "sorry" in worst[0]["shadow"]


def test_tool_calls_compared_structurally_and_invalid_json_named():
    comparer = GenAiComparer(GenAiConfig(embedder="none"))

    def ex_res(p_args: str, s_args: str, fmt: bool = False, p_text: str = "", s_text: str = ""):
        req_body = {"messages": [{"role": "user", "content": "x"}]}
        if fmt:
            req_body["response_format"] = {"type": "json_object"}
        rb = orjson.dumps(req_body)
        req = Request(
            1.0, 1.0, "HTTP/1.1", (), rb, len(rb), method="POST", target="/v1/chat/completions"
        )

        def resp(args: str, text: str) -> Response:
            msg = {"role": "assistant", "content": text}
            if args:
                msg["tool_calls"] = [
                    {
                        "id": "call_9",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": args},
                    }
                ]
            b = orjson.dumps(
                {
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "message": msg,
                            "finish_reason": "tool_calls" if args else "stop",
                        }
                    ],
                }
            )
            return Response(
                1.0, 1.1, "HTTP/1.1", (("Content-Type", "application/json"),), b, len(b), status=200
            )

        ex = Exchange("a", "c:1", "s:2", 0, req, resp(p_args, p_text))
        return ex, Result("a", "t", 1.0, 1.0, resp(s_args, s_text))

    same = comparer.pair(*ex_res('{"city": "Paris", "unit": "c"}', '{"unit":"c","city":"Paris"}'))
    assert same.cls == "identical" and same.differences == []
    moved = comparer.pair(*ex_res('{"city": "Paris"}', '{"city": "Lyon"}'))
    assert moved.cls == "tool_call"
    assert [(d.path, d.primary, d.shadow) for d in moved.differences] == [
        ("body.choices[].tool_calls[].arguments.city", "Paris", "Lyon")
    ]
    bad = comparer.pair(*ex_res("", "", fmt=True, p_text='{"a": 1}', s_text="Sure! here: {a: 1}"))
    assert bad.cls == "invalid_json" and "invalid_json" in bad.shadow.flags


def test_text_metrics_rouge_on_non_english_and_refusal_phrases():
    m = text_metrics("Столица Франции — Париж.", "Париж — столица Франции.", None, chrf=True)
    assert m.rouge_l > 0.5 and m.semantic is None and 0 < m.chrf <= 1
    comparer = GenAiComparer(GenAiConfig(embedder="none"))
    from shadowtap.wire.genai import Api, Choice, Generation

    assert comparer.refuses(
        Generation(
            Api.OPENAI_CHAT, False, (Choice(0, "I\u2019m sorry, but I can\u2019t do that."),)
        )
    )
    assert not comparer.refuses(
        Generation(Api.OPENAI_CHAT, False, (Choice(0, "Paris is the capital."),))
    )


def test_embeddings_cosine_and_dimension_changes():
    from shadowtap.lab.llm_service import embedding

    cmp = Comparison(CompareConfig())
    for i in range(5):
        req = Request(
            1.0, 1.0, "HTTP/1.1", (), b'{"input": "x"}', 14, method="POST", target="/v1/embeddings"
        )

        def resp(vec: list[float]) -> Response:
            b = orjson.dumps(
                {
                    "object": "list",
                    "model": "e",
                    "data": [{"object": "embedding", "index": 0, "embedding": vec}],
                }
            )
            return Response(
                1.0, 1.1, "HTTP/1.1", (("Content-Type", "application/json"),), b, len(b), status=200
            )

        sv = embedding(f"t{i}", 2) if i < 4 else embedding(f"t{i}", 2, dim=32)
        cmp.add(
            Exchange(f"e{i}", "c:1", "s:2", i, req, resp(embedding(f"t{i}", 1))),
            Result(f"e{i}", "t", 1.0, 1.0, resp(sv)),
        )
    g = cmp.snapshot(fresh=True).endpoints[0].genai
    assert g["embeddings"]["cosine"]["n"] == 4 and g["embeddings"]["cosine"]["p50"] > 0.95
    assert g["embeddings"]["dimension_changes"] == [{"primary": 64, "shadow": 32, "count": 1}]


def _sse_pair(p_body: bytes, s_body: bytes, target: str = "/events", truncated: bool = False):
    req = Request(1.0, 1.0, "HTTP/1.1", (), b"", 0, method="GET", target=target)

    def resp(b: bytes) -> Response:
        return Response(
            1.0,
            1.1,
            "HTTP/1.1",
            (("Content-Type", "text/event-stream"),),
            b,
            len(b) + (1000 if truncated else 0),
            truncated,
            status=200,
        )

    return Exchange("g", "c:1", "s:2", 0, req, resp(p_body)), Result(
        "g", "t", 1.0, 1.0, resp(s_body)
    )


def test_generic_sse_compared_event_by_event_and_a_false_event_stream_as_bytes():
    comparer = GenAiComparer(GenAiConfig(embedder="none"))
    same = comparer.pair(*_sse_pair(b': hi\ndata: {"v": 1}\n\n', b'data: {"v": 1}\r\n\r\n'))
    assert same.cls == "identical" and same.differences == []
    moved = comparer.pair(*_sse_pair(b'data: {"v": 1}\n\n', b'data: {"v": 2}\n\n'))
    assert moved.cls == "changed"
    assert [(d.path, d.primary, d.shadow) for d in moved.differences] == [("body.events[].v", 1, 2)]
    # claims text/event-stream and is JSON: not a generative pair; the usual diff sees the bodies
    assert comparer.pair(*_sse_pair(b'{"a": 1}', b'{"a": 2}')) is None
    cmp = Comparison(CompareConfig(genai=GenAiConfig(embedder="none")))
    cmp.add(*_sse_pair(b'{"a": 1}', b'{"a": 2}'))
    assert [f.path for f in cmp.snapshot(fresh=True).endpoints[0].fields] == ["body"]


def test_a_ten_megabyte_event_cut_at_max_body_is_truncated_and_compared():
    head = (
        b'data: {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "'
    )
    big = head + b"x" * (1 << 20)  # the body kept: 1 MiB of a 10 MB event, no end
    ok = b"".join(
        [
            head + b'hello"}}]}\n\n',
            b'data: {"object": "chat.completion.chunk", "choices": '
            b'[{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\n',
            b"data: [DONE]\n\n",
        ]
    )
    comparer = GenAiComparer(GenAiConfig(embedder="none"))
    ex, _ = _sse_pair(ok, ok, "/v1/chat/completions")
    _, res = _sse_pair(ok, big, "/v1/chat/completions", truncated=True)
    gp = comparer.pair(ex, res)
    assert gp is not None and "truncated" in gp.shadow.flags and gp.cls == "truncated"
    assert {"stream_cut", "body_truncated"} <= set(gp.shadow.gen.anomalies)


def test_cached_word_embeddings_are_wordllamas_own():
    import numpy as np
    from wordllama.inference import WordLlamaInference

    from shadowtap.compare.genai import _norm, wordllama_embedder

    emb = wordllama_embedder()
    texts = [_norm(answer(p, v)) for p in prompts(12) for v in (1, 2)]
    texts += ["Столица Франции — Париж.", "東京は日本の首都です。", "I'm sorry, but I can't help."]
    ours = emb(texts)
    ours_again = emb(texts)  # from the word cache
    # wordllama's own embed, over the same tokenizer and weights
    from pathlib import Path

    import wordllama
    from safetensors import safe_open
    from wordllama import WordLlama

    root = Path(wordllama.__file__).parent
    tokenizer = WordLlama.load_tokenizer(
        root / "tokenizers" / "l2_supercat_tokenizer_config.json", hf_model_id=None
    )
    with safe_open(str(root / "weights" / "l2_supercat_256.safetensors"), framework="np") as f:
        ref = WordLlamaInference(f.get_tensor("embedding.weight"), tokenizer).embed(
            texts, norm=True
        )
    for a, b, r in zip(ours, ours_again, ref):
        assert float(np.dot(a, r)) > 0.999 and np.array_equal(a, b)


def test_epoch_seconds_are_noise_even_when_many_exchanges_share_a_second():
    """A plain JSON API (not generative) whose bodies carry ``created`` in epoch seconds: sixty
    exchanges in a few seconds share values, yet the field is noise, not a label flip."""
    cmp = Comparison(CompareConfig(genai=GenAiConfig(enabled=False)))
    t0 = 1_796_149_490.0
    for i in range(60):
        t = t0 + i * 0.05
        req = Request(t, t, "HTTP/1.1", (), b"", 0, method="GET", target="/v1/thing")

        def resp(ts: float, created: int) -> Response:
            b = orjson.dumps({"created": created, "name": "x"})
            return Response(
                ts, ts, "HTTP/1.1", (("Content-Type", "application/json"),), b, len(b), status=200
            )

        ex = Exchange(f"t{i}", "c:1", "s:2", i, req, resp(t, int(t)))
        cmp.add(ex, Result(f"t{i}", "u", t + 4, t + 4, resp(t + 4, int(t + 4))))
    rep = cmp.snapshot(fresh=True)
    [f] = rep.endpoints[0].fields
    assert f.path == "body.created" and f.noise and "epoch timestamps" in f.noise
    assert rep.verdict.result == "pass", rep.verdict.reasons


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(max_codepoint=127), max_size=60))
def test_ascii_words_are_the_unicode_word_tokens(text):
    """ASCII text is tokenized by a byte table (a fifth of the regex's cost): the same tokens."""
    from shadowtap.compare.genai import _WORD, _words

    assert [w.decode() for w in _words(text)] == _WORD.findall(text.lower())


def test_word_matrix_embeddings_survive_a_full_cache(monkeypatch):
    """The word rows are cleared when full (before a batch, never in the middle of one), and a
    text's vector then is the same as before."""
    import numpy as np

    import shadowtap.compare.genai as genai

    monkeypatch.setattr(genai, "_WORD_ROWS_MAX", 40)
    monkeypatch.setattr(genai, "_TEXT_CACHE_MAX", 2)
    emb = genai.wordllama_embedder()
    texts = [genai._norm(answer(p, 1)) for p in prompts(6)]
    first = emb(texts[:1])[0]
    for t in texts[1:]:
        emb([t, t + " again"])
    again = emb(texts[:1])[0]
    assert float(np.dot(first, again)) > 0.9999


def test_a_named_text_field_of_any_json_api():
    """``genai.text_fields``: an API not recognised by content (``{"answer": ..., "score": ...}``)
    has its answer compared by similarity and refusal, its other fields diffed as usual."""
    cfg = CompareConfig(genai=GenAiConfig(embedder="none", text_fields=("body.result.answer",)))
    cmp = Comparison(cfg)
    ps = prompts(40)
    for i, pr in enumerate(ps):
        req = Request(1.0 + i, 1.0 + i, "HTTP/1.1", (), b"", 0, method="GET", target=f"/ask?q={i}")

        def resp(version: int) -> Response:
            b = orjson.dumps(
                {
                    "result": {"answer": answer(pr, version), "lang": "en"},
                    "score": 1 if version == 1 else 2,
                }
            )
            return Response(
                1.0 + i,
                1.1 + i,
                "HTTP/1.1",
                (("Content-Type", "application/json"),),
                b,
                len(b),
                status=200,
            )

        cmp.add(
            Exchange(f"q{i}", "c:1", "s:2", i, req, resp(1)),
            Result(f"q{i}", "u", 1.0, 1.0, resp(2)),
        )
    ep = cmp.snapshot(fresh=True).endpoints[0]
    g = ep.genai
    assert g["classes"]["refusal"] == sum(behaviour(p, 2) == "refuse" for p in ps) > 0
    assert g["apis"] == {"text_field": 40}
    assert [f.path for f in ep.fields] == ["body.score"]  # the answer is not a field difference


def test_merged_parts_with_equal_worst_answers_do_not_compare_samples():
    """compare --jobs (and Spark) merge partial comparisons: two parts whose worst answers tie on
    (dissimilarity, ordinal) made the heap compare the samples (dicts): a TypeError (seen on the
    demo's run directory with --jobs 2)."""
    t0 = 1_796_149_490.0
    ps = prompts(60)
    parts = []
    for _ in range(2):
        c = Comparison(CompareConfig())
        for i, pr in enumerate(ps):
            c.add(*pair(i, pr, stream=i % 2 == 0, t0=t0 + i))
        parts.append(c)
    aggs = [next(iter(c._endpoints.values())).genai for c in parts]
    for k, agg in enumerate(aggs):  # a tie the heap must not break by comparing the samples
        # (as GenAgg._sample takes them: equal up to the metrics, a dict)
        sample = (
            "x",
            "POST /v1",
            "refusal",
            0.0,
            {"edit": 0.5},
            f"part{k}",
            "",
            None,
            None,
            [],
            99,
        )
        agg._worst = [(10.0, 1, sample)]
    parts[0].merge(parts[1])
    [merged] = parts[0].snapshot(fresh=True).endpoints
    assert [w["primary"] for w in merged.genai["worst"]] == ["part0", "part1"]


@pytest.mark.parametrize("same", [False, True])
def test_each_answer_body_is_parsed_once_per_pair(monkeypatch, same):
    """The generative probe, the diff, the tensors and the leaf statistics share one parse of
    each answer's JSON (compare/diff.py's Prepared): a plain JSON API pair parses its primary's
    body once, and the shadow's once more only when its bytes differ."""
    seen: list[bytes] = []
    real = orjson.loads

    def counting(data):
        seen.append(bytes(data) if not isinstance(data, str) else data.encode())
        return real(data)

    cmp = Comparison(CompareConfig())
    pb = orjson.dumps({"items": [{"id": 1, "price": 1.5}], "total": 1})
    sb = pb if same else orjson.dumps({"items": [{"id": 1, "price": 2.5}], "total": 1})
    req = Request(1.0, 1.0, "HTTP/1.1", (), b"", 0, method="GET", target="/v1/items")
    ct = (("Content-Type", "application/json"),)
    p = Response(1.0, 1.1, "HTTP/1.1", ct, pb, len(pb), status=200)
    s = Response(2.0, 2.1, "HTTP/1.1", ct, sb, len(sb), status=200)
    monkeypatch.setattr(orjson, "loads", counting)
    cmp.add(Exchange("e1", "c:1", "s:2", 0, req, p), Result("e1", "u", 2.0, 2.0, s))
    assert seen.count(pb) == 1 and seen.count(sb) == 1  # the same bytes: one parse in all
    assert len([x for x in seen if x in (pb, sb)]) == (1 if same else 2)


_letters = st.text(st.sampled_from(list("ab c.'\\(|*")), max_size=6)


@settings(max_examples=1500, deadline=None)
@given(st.lists(_letters, max_size=6), st.text(st.sampled_from(list("ab c.'\\(|*")), max_size=30))
def test_the_refusal_regex_finds_a_phrase_where_the_plain_alternation_does(phrases, text):
    """The factored regex (a trie of the phrases) and the plain alternation find a phrase in the
    same texts: prefixes shared, one phrase the prefix of another, regex characters, ''."""
    if not phrases:
        return
    plain = re.compile("|".join(re.escape(p) for p in phrases))
    assert (re.compile(_any_of(phrases)).search(text) is None) == (plain.search(text) is None)


@settings(max_examples=1500, deadline=None)
@given(
    st.text(
        st.sampled_from(
            [*"ab .", " ", "\t", "\n", "\x1c", "\x85", "\xa0", "\u3000", "é", "\x00", "\x7f"]
        ),
        max_size=12,
    )
)
def test_whitespace_folding_shortcut_is_the_split_and_join(text):
    assert _norm(text) == " ".join(text.split())
