#!/usr/bin/env bash
# Benchmark of the comparison of generative answers (compare/genai.py through
# compare.aggregate.Comparison.add: both answers reassembled from their SSE streams or JSON
# bodies, text metrics, classes, generation latency) against two peers on the same pairs, in the
# same run, on one core:
#   - deepdiff on the raw bodies (each SSE stream's data events parsed, then DeepDiff of the two
#     event lists; JSON bodies parsed and diffed): what a generic JSON differ does with them;
#   - sacrebleu's chrF alone on the two answers' texts (already extracted: the peer gets them free).
# Pairs: ~1 KB answers from the lab's generator (scripts/lab/llm_service.py), half of them streamed
# as 50 SSE events; version 2 paraphrases 2 prompts in 5 and refuses 1 in 5 (so 60% of the pairs
# differ and pay for the text metrics, a semantic embedding of each side included).
# shadowtap runs twice: with the semantic similarity (wordllama) and without (embedder "none":
# ROUGE-L is then the similarity), to show what the embedding costs.
# The generator's answers repeat (of 6,000 answers in 3,000 pairs, 1,652 are distinct): the
# embedder's text cache serves the repeats, as it does for a model's answers to repeated prompts.
# Times are CPU time (user+sys of the process, pinned to one core: the machine is shared) and
# wall time; the pairs are compared as compare/run.py does (procs.batch_gc around the loop).
# Usage: scripts/bench_llm.sh   (env: BENCH_PAIRS=3000 BENCH_PEER_PAIRS=200)
# Goal (issue 13): >= 5,000 pairs/s through compare with text metrics on, one core.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
pin=()
if command -v taskset >/dev/null; then pin=(taskset -c 0); fi
"${pin[@]}" "$PY" - <<'PY'
import os
import platform
import time

import orjson
import sacrebleu
from deepdiff import DeepDiff

from shadowtap.compare.aggregate import Comparison
from shadowtap.compare.config import CompareConfig, GenAiConfig
from shadowtap.lab.llm_service import answer, prompts
from shadowtap.procs import batch_gc
from shadowtap.records import Exchange, Request, Response, Result

N = int(os.environ.get("BENCH_PAIRS", "3000"))
M = min(N, int(os.environ.get("BENCH_PEER_PAIRS", "200")))
T0 = 1_796_149_490.0
PROMPTS = prompts(max(N, 60))


def long_answer(i: int, version: int) -> str:
    """About 1 KB: the answers to five consecutive prompts, as one answer."""
    return " ".join(answer(PROMPTS[(i + k) % len(PROMPTS)], version) if k else answer(PROMPTS[i], version)
                    for k in range(5))[:1024]


def sse(text: str, t: float, created: int) -> tuple[bytes, tuple[tuple[int, float], ...]]:
    pieces = [text[k : k + max(1, len(text) // 50 + 1)] for k in range(0, len(text), len(text) // 50 + 1)]
    head = {"id": f"chatcmpl-{created}", "object": "chat.completion.chunk", "created": created,
            "model": "m", "system_fingerprint": f"fp_{created}"}
    raw, chunks, end = [], [], 0
    for k, piece in enumerate(pieces + [None]):
        delta = {"content": piece} if piece is not None else {}
        ev = {**head, "choices": [{"index": 0, "delta": delta,
                                   "finish_reason": None if piece is not None else "stop"}]}
        raw.append(b"data: " + orjson.dumps(ev) + b"\n\n")
        end += len(raw[-1])
        chunks.append((end, t + 0.02 + 0.001 * k))
    raw.append(b"data: [DONE]\n\n")
    chunks.append((end + len(raw[-1]), chunks[-1][1]))
    return b"".join(raw), tuple(chunks)


def body(text: str, created: int) -> bytes:
    return orjson.dumps({"id": f"chatcmpl-{created}", "object": "chat.completion", "created": created,
                         "model": "m", "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                                    "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 9, "completion_tokens": len(text.split()),
                                   "total_tokens": 9 + len(text.split())}})


pairs, texts = [], []
for i in range(N):
    t = T0 + i * 0.01
    stream = i % 2 == 0
    rb = orjson.dumps({"model": "m", "stream": stream, "messages": [{"role": "user", "content": PROMPTS[i]}]})
    req = Request(t, t, "HTTP/1.1", (("Content-Type", "application/json"),), rb, len(rb), method="POST",
                  target="/v1/chat/completions")
    sides = []
    for version in (1, 2):
        text = long_answer(i, version)
        texts.append(text)
        created = int(t) + version
        if stream:
            b, ch = sse(text, t, created)
            ct = "text/event-stream"
        else:
            b, ch = body(text, created), ()
            ct = "application/json"
        sides.append((Response(t, t + 0.1, "HTTP/1.1", (("Content-Type", ct),), b, len(b), status=200, reason="OK"), ch))
    (p, pch), (s, sch) = sides
    pairs.append((Exchange(f"{i:016x}", "10.0.0.1:1", "10.0.0.2:80", 0, req, p, total_ms=100.0, chunks=pch),
                  Result(f"{i:016x}", "http://s/v1/chat/completions", t, t, s, total_ms=100.0, chunks=sch)))

# An untimed pass first (lexical only, so the embedder's text cache stays empty): whichever
# configuration ran first paid the process's warm-up (allocator, caches), ~50 us a pair.
warm = Comparison(CompareConfig(genai=GenAiConfig(embedder="none")))
for ex, res in pairs[:500]:
    warm.add(ex, res)
ours = {}
for embedder in ("wordllama", "none"):
    cfg = CompareConfig(genai=GenAiConfig(embedder=embedder))
    cmp = Comparison(cfg)
    cmp.add(*pairs[0])  # loads the embedder once (not timed: a one-off cost of ~1 s)
    cmp = Comparison(cfg)
    t, c = time.perf_counter(), time.process_time()
    with batch_gc():  # as compare/run.py reads its pairs
        for ex, res in pairs:
            cmp.add(ex, res)
    rep = cmp.snapshot(fresh=True)
    ours[embedder] = (time.perf_counter() - t, time.process_time() - c)
    g = rep.endpoints[0].genai
    assert g["pairs"] == N, g["pairs"]
    if embedder == "wordllama":
        classes = ", ".join(f"{k} {v}" for k, v in g["classes"].items() if v)


def events(raw: bytes):
    if raw.startswith(b"data:"):
        return [orjson.loads(line[6:]) for line in raw.split(b"\n\n") if line.startswith(b"data: {")]
    return orjson.loads(raw)


t, c = time.perf_counter(), time.process_time()
for ex, res in pairs[:M]:
    DeepDiff(events(ex.response.body), events(res.response.body))
peer = (time.perf_counter() - t, time.process_time() - c)
t, c = time.perf_counter(), time.process_time()
for k in range(M):
    sacrebleu.sentence_chrf(texts[2 * k + 1], [texts[2 * k]])
chrf = (time.perf_counter() - t, time.process_time() - c)


def rates(n: int, wall_cpu: tuple[float, float]) -> tuple[float, float]:
    return n / wall_cpu[0], n / wall_cpu[1]


sem, lex = rates(N, ours["wordllama"]), rates(N, ours["none"])
dd, cf = rates(M, peer), rates(M, chrf)
print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, cpus {os.cpu_count()}, "
      f"load {os.getloadavg()[0]:.1f}, pinned to one core; rates as wall / CPU (user+sys) pairs/s")
print(f"pairs: {N} (~1 KB answers, half streamed as 50 SSE events; classes {classes})")
for label, (w, c) in (("shadowtap compare, semantic similarity (wordllama)", sem),
                      ("shadowtap compare, lexical similarity only (embedder none)", lex),
                      (f"deepdiff on the raw bodies ({M} pairs)", dd),
                      (f"sacrebleu chrF alone ({M} pairs)", cf)):
    print(f"{label}: wall {w:,.0f} pairs/s, CPU {c:,.0f} pairs/s")
for label, (w, c) in (("semantic", sem), ("lexical", lex)):
    print(f"ratio shadowtap({label}) CPU: /deepdiff {c / dd[1]:.1f}x, /chrF alone {c / cf[1]:.1f}x")
print(f"goal >= 5,000 pairs per CPU-second with text metrics on (semantic): "
      f"{'met' if sem[1] >= 5000 else 'not met'}")
PY
