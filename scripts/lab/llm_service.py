"""The lab's demo LLM endpoint: an OpenAI-compatible API (``POST /v1/chat/completions``, streamed
as Server-Sent Events or not; ``POST /v1/embeddings``) answering from a deterministic small text
generator: no model weights, the same answer for the same prompt in every process.

Version 1 is the primary's model; version 2 the shadow's, with deliberate changes, each decided
by the prompt alone (a stable hash), so tests can assert the exact regressions:

| version 2 change                                   | which prompts                    |
| -------------------------------------------------- | -------------------------------- |
| refuses ("I'm sorry, but I can't help with that.") | one prompt in five (hash % 5 == 0) |
| paraphrases the answer (same facts, other words)   | two in five (hash % 5 in (1, 2)) |
| slower to the first token (60 ms instead of 15 ms) | every streamed answer            |
| embeddings: slightly different vectors             | every input (cosine ~0.99)        |

Noise in both versions (never a regression): ``id`` (``chatcmpl-<random>``), ``created`` (epoch
seconds), ``system_fingerprint``, the model name (``demo-llm-1`` / ``demo-llm-2``) and the chunk
boundaries of a stream. ``stream_options.include_usage`` adds the usage chunk (``choices: []``).

Usage: llm_service.py --version 1|2 [--host 127.0.0.1] [--port 0] [--ready-file F]
[--token-gap-ms 1] (a real model streams a token every 10-50 ms; 1 keeps the tests short)
(or ``add_routes(app, version)`` on another aiohttp application: the demo service does that).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import time
import uuid

from aiohttp import web

TTFT_S = {1: 0.015, 2: 0.060}  # delay before the first token of a streamed answer
TOKEN_GAP_S = 0.001  # between tokens
REFUSAL = "I'm sorry, but I can't help with that request."

_TOPICS = (
    "Paris",
    "photosynthesis",
    "the Moon",
    "volcanoes",
    "honey bees",
    "the Nile",
    "glaciers",
    "the printing press",
    "tides",
    "coral reefs",
    "Mount Everest",
    "the Roman Empire",
)
_FACTS = {
    "Paris": (
        "is the capital of France",
        "sits on the river Seine",
        "is known for its museums and cafes",
    ),
    "photosynthesis": (
        "turns light into chemical energy",
        "happens in the leaves of plants",
        "releases oxygen into the air",
    ),
    "the Moon": (
        "orbits the Earth about once a month",
        "causes most of the ocean tides",
        "was first visited by astronauts in 1969",
    ),
    "volcanoes": (
        "form where molten rock reaches the surface",
        "can build new islands",
        "often sit on the edges of tectonic plates",
    ),
    "honey bees": (
        "live in large colonies",
        "pollinate many food crops",
        "make honey from flower nectar",
    ),
    "the Nile": (
        "is one of the longest rivers in the world",
        "flows north into the Mediterranean Sea",
        "fed the farms of ancient Egypt",
    ),
    "glaciers": (
        "are slow rivers of ice",
        "carve deep valleys over time",
        "hold much of the world's fresh water",
    ),
    "the printing press": (
        "was developed by Gutenberg around 1440",
        "made books far cheaper",
        "helped spread literacy across Europe",
    ),
    "tides": (
        "are raised by the pull of the Moon and the Sun",
        "rise and fall twice a day on most coasts",
        "are strongest at new and full moon",
    ),
    "coral reefs": (
        "are built by tiny animals called polyps",
        "shelter a quarter of marine species",
        "grow in warm and shallow seas",
    ),
    "Mount Everest": (
        "is the highest mountain above sea level",
        "stands on the border of Nepal and China",
        "was first climbed in 1953",
    ),
    "the Roman Empire": (
        "was centred on the city of Rome",
        "built roads across Europe",
        "lasted in the east until 1453",
    ),
}
# Version 2's wording: the same facts, other words (a paraphrase, not a new answer).
_SYNONYMS = {
    "is": "remains",
    "known": "famous",
    "large": "big",
    "many": "numerous",
    "slow": "sluggish",
    "cheaper": "less expensive",
    "deep": "steep",
    "first": "initially",
    "tiny": "very small",
    "warm": "tropical",
    "highest": "tallest",
    "built": "constructed",
    "form": "appear",
    "often": "usually",
    "helped": "assisted",
    "turns": "converts",
    "makes": "produces",
}


def prompts(n: int) -> list[str]:
    """``n`` distinct user prompts (the tests' and the demo traffic's)."""
    styles = (
        "Tell me about {t}.",
        "What should I know about {t}?",
        "Give me three facts about {t}.",
        "Explain {t} briefly.",
        "Write a short note on {t}.",
    )
    return [
        styles[(i // len(_TOPICS)) % len(styles)].format(t=_TOPICS[i % len(_TOPICS)])
        + (f" (#{i // (len(_TOPICS) * len(styles))})" if i >= len(_TOPICS) * len(styles) else "")
        for i in range(n)
    ]


def prompt_hash(prompt: str) -> int:
    return int.from_bytes(hashlib.blake2b(prompt.encode(), digest_size=8).digest(), "big")


def behaviour(prompt: str, version: int) -> str:
    """``answer``, ``refuse`` or ``paraphrase``: what a version does with a prompt."""
    if version == 1:
        return "answer"
    h = prompt_hash(prompt) % 5
    return "refuse" if h == 0 else "paraphrase" if h in (1, 2) else "answer"


def answer(prompt: str, version: int) -> str:
    """The deterministic answer of a version to a prompt."""
    what = behaviour(prompt, version)
    if what == "refuse":
        return REFUSAL
    topic = next(
        (t for t in _TOPICS if t.lower() in prompt.lower()),
        _TOPICS[prompt_hash(prompt) % len(_TOPICS)],
    )
    facts = _FACTS[topic]
    name = topic[0].upper() + topic[1:]
    text = (
        f"{name} {facts[0]}. It also {facts[1]}, and it {facts[2]}. "
        f"In short, {topic} is a good subject to read more about."
    )
    if what == "paraphrase":
        words = text.split(" ")
        text = " ".join(_SYNONYMS.get(w, w) for w in words)
        text = text.replace("In short,", "To sum up,")
    return text


def tokens(text: str) -> list[str]:
    """The answer cut in streamed pieces: a word and the space before it."""
    words = text.split(" ")
    return [words[0]] + [" " + w for w in words[1:]]


def embedding(text: str, version: int, dim: int = 64) -> list[float]:
    h = hashlib.blake2b(text.encode(), digest_size=dim).digest()
    v = [(b - 127.5) / 127.5 for b in h]
    if version == 2:  # a retrained embedder: each component nudged, cosine ~0.99
        v = [x + 0.1 * math.sin(i + x) for i, x in enumerate(v)]
    norm = math.sqrt(sum(x * x for x in v)) or 1.0
    return [round(x / norm, 6) for x in v]


class LlmService:
    def __init__(self, version: int, token_gap: float = TOKEN_GAP_S) -> None:
        self.version = version
        self.token_gap = token_gap
        self.model = f"demo-llm-{version}"
        self.fingerprint = f"fp_{uuid.uuid4().hex[:10]}"  # per process: noise

    def _head(self) -> dict[str, object]:
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "created": int(time.time()),
            "model": self.model,
            "system_fingerprint": self.fingerprint,
        }

    async def chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
            messages = body["messages"]
            prompt = str(messages[-1]["content"])
        except (ValueError, KeyError, IndexError, TypeError):
            return web.json_response(
                {"error": {"message": "messages required", "type": "invalid_request_error"}},
                status=400,
            )
        text = answer(prompt, self.version)
        pieces = tokens(text)
        usage = {
            "prompt_tokens": len(prompt.split()),
            "completion_tokens": len(pieces),
            "total_tokens": len(prompt.split()) + len(pieces),
        }
        head = self._head()
        if not body.get("stream"):
            await asyncio.sleep(TTFT_S[self.version] + self.token_gap * len(pieces))
            return web.json_response(
                {
                    **head,
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                }
            )
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)

        async def event(choices: list[dict[str, object]], **extra: object) -> None:
            obj = {**head, "object": "chat.completion.chunk", "choices": choices, **extra}
            await resp.write(b"data: " + json.dumps(obj).encode() + b"\n\n")

        await event(
            [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
        )
        await asyncio.sleep(TTFT_S[self.version])
        for i, piece in enumerate(pieces):
            if i:
                await asyncio.sleep(self.token_gap)
            await event([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
        await event([{"index": 0, "delta": {}, "finish_reason": "stop"}])
        if (body.get("stream_options") or {}).get("include_usage"):
            await event([], usage=usage)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def embeddings(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            inputs = body["input"]
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": {"message": "input required"}}, status=400)
        inputs = [inputs] if isinstance(inputs, str) else [str(x) for x in inputs]
        return web.json_response(
            {
                "object": "list",
                "model": self.model,
                "data": [
                    {"object": "embedding", "index": i, "embedding": embedding(x, self.version)}
                    for i, x in enumerate(inputs)
                ],
                "usage": {
                    "prompt_tokens": sum(len(x.split()) for x in inputs),
                    "total_tokens": sum(len(x.split()) for x in inputs),
                },
            }
        )


def add_routes(app: web.Application, version: int, token_gap: float = TOKEN_GAP_S) -> None:
    svc = LlmService(version, token_gap)
    app.router.add_post("/v1/chat/completions", svc.chat)
    app.router.add_post("/v1/embeddings", svc.embeddings)


def _write_ready(path: str, data: dict[str, object]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


async def serve(
    version: int, host: str, port: int, ready_file: str | None, token_gap: float = TOKEN_GAP_S
) -> None:
    app = web.Application()
    add_routes(app, version, token_gap)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    if ready_file:
        _write_ready(ready_file, {"pid": os.getpid(), "port": bound})
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--version", type=int, choices=(1, 2), required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--ready-file")
    ap.add_argument(
        "--token-gap-ms", type=float, default=TOKEN_GAP_S * 1000, help="between streamed tokens"
    )
    args = ap.parse_args(argv)
    try:
        asyncio.run(
            serve(args.version, args.host, args.port, args.ready_file, args.token_gap_ms / 1000)
        )
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
