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
# End to end: the `shadowtap compare EX RES -q --json OUT` command on BENCH_E2E_PAIRS pairs of the
# same kind written as exchanges/results JSONL files (reading, decoding, the join, the comparison,
# the report), its CPU as a child of this pinned process; the whole command's rate, and the steady
# state's: less the CPU of the same command on the first 1% of the pairs (the fixed start: imports,
# the embedder's load). BENCH_E2E_PAIRS=0 leaves it out.
# Usage: scripts/bench_llm.sh   (env: BENCH_PAIRS=3000 BENCH_PEER_PAIRS=200 BENCH_E2E_PAIRS=20000)
# Goal (issue 13): >= 5,000 pairs/s through compare with text metrics on, one core.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
pin=()
if command -v taskset >/dev/null; then pin=(taskset -c 0); fi
"${pin[@]}" "$PY" - <<'PY'
import os
import platform
import resource
import shutil
import subprocess
import tempfile
import time

import orjson
import sacrebleu
from deepdiff import DeepDiff

from shadowtap.compare.aggregate import Comparison
from shadowtap.compare.config import CompareConfig, GenAiConfig
from shadowtap.errors import EXIT_OK, EXIT_VERDICT_FAIL, EXIT_VERDICT_MARGINAL
from shadowtap.lab.llm_service import answer, prompts
from shadowtap.procs import batch_gc
from shadowtap.records import Exchange, Request, Response, Result

N = int(os.environ.get("BENCH_PAIRS", "3000"))
M = min(N, int(os.environ.get("BENCH_PEER_PAIRS", "200")))
T0 = 1_796_149_490.0
PROMPTS = prompts(max(N, 60))


def long_answer(i: int, version: int, prompts: list[str]) -> str:
    """About 1 KB: the answers to five consecutive prompts, as one answer."""
    return " ".join(answer(prompts[(i + k) % len(prompts)], version) if k else answer(prompts[i], version)
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


def make_pair(i: int, prompts: list[str]) -> tuple[Exchange, Result, str, str]:
    """The i-th pair (streamed when i is even) and its two answers' texts."""
    t = T0 + i * 0.01
    stream = i % 2 == 0
    rb = orjson.dumps({"model": "m", "stream": stream, "messages": [{"role": "user", "content": prompts[i]}]})
    req = Request(t, t, "HTTP/1.1", (("Content-Type", "application/json"),), rb, len(rb), method="POST",
                  target="/v1/chat/completions")
    sides, answers = [], []
    for version in (1, 2):
        text = long_answer(i, version, prompts)
        answers.append(text)
        created = int(t) + version
        if stream:
            b, ch = sse(text, t, created)
            ct = "text/event-stream"
        else:
            b, ch = body(text, created), ()
            ct = "application/json"
        sides.append((Response(t, t + 0.1, "HTTP/1.1", (("Content-Type", ct),), b, len(b), status=200, reason="OK"), ch))
    (p, pch), (s, sch) = sides
    return (Exchange(f"{i:016x}", "10.0.0.1:1", "10.0.0.2:80", 0, req, p, total_ms=100.0, chunks=pch),
            Result(f"{i:016x}", "http://s/v1/chat/completions", t, t, s, total_ms=100.0, chunks=sch),
            answers[0], answers[1])


pairs, texts = [], []
for i in range(N):
    ex, res, tp, ts = make_pair(i, PROMPTS)
    pairs.append((ex, res))
    texts += (tp, ts)

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


def private(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


def e2e() -> tuple[float, float, float, int]:
    """``shadowtap compare EX RES -q --json OUT`` on E pairs written as JSONL files (the records'
    to_json, orjson: what capture and replay write), and on their first 1%: the CPU (user+sys)
    of each command (a child of this pinned process: pinned too) and the wall time of the whole."""
    e_prompts = prompts(max(E, 60))  # the pairs of BENCH_PAIRS=E
    start = max(1, E // 100)
    work = tempfile.mkdtemp(prefix="bench-llm-")  # 0700
    try:
        files = {k: (os.path.join(work, f"ex-{k}.jsonl"), os.path.join(work, f"res-{k}.jsonl"))
                 for k in ("all", "start")}
        outs = [open(f, "wb", opener=private) for k in ("all", "start") for f in files[k]]
        for i in range(E):
            ex, res, _, _ = make_pair(i, e_prompts)
            lines = (orjson.dumps(ex.to_json(), option=orjson.OPT_APPEND_NEWLINE),
                     orjson.dumps(res.to_json(), option=orjson.OPT_APPEND_NEWLINE))
            for f, line in zip(outs[: 4 if i < start else 2], lines * 2):
                f.write(line)
        for f in outs:
            f.close()
        cpu, wall = {}, 0.0
        for k in ("start", "all"):
            out = os.path.join(work, f"report-{k}.json")
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            rc = subprocess.run([".venv/bin/shadowtap", "compare", *files[k], "-q", "--json", out]).returncode
            wall = time.perf_counter() - t
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[k] = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
            assert rc in (EXIT_OK, EXIT_VERDICT_MARGINAL, EXIT_VERDICT_FAIL), rc
            with open(out, "rb") as f:
                n = orjson.loads(f.read())["summary"]["pairs"]
            assert n == (E if k == "all" else start), n
        return cpu["all"], cpu["start"], wall, start
    finally:
        shutil.rmtree(work, ignore_errors=True)


E = int(os.environ.get("BENCH_E2E_PAIRS", "20000"))
if E:
    e2e_cpu, e2e_start, e2e_wall, e2e_small = e2e()


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
if E:
    steady = (E - e2e_small) / (e2e_cpu - e2e_start)
    print(f"shadowtap compare command end to end ({E} pairs as exchanges/results JSONL files, semantic): "
          f"whole command {E / e2e_cpu:,.0f} pairs per CPU-second ({e2e_cpu:.2f} s CPU, wall {e2e_wall:.2f} s)")
    print(f"  steady state (less the same command on the first 1%, {e2e_small} pairs: {e2e_start:.2f} s CPU, "
          f"the fixed start): {steady:,.0f} pairs per CPU-second")
    print(f"goal >= 5,000 pairs per CPU-second end to end, steady state: {'met' if steady >= 5000 else 'not met'}")
PY
