"""Chat completions for the demo LLM endpoint (scripts/lab/llm_service.py): ``--count`` prompts
(the generator's own, so version 2's refusals and paraphrases are known in advance), every other
one streamed (``stream: true`` with ``stream_options.include_usage``), one request at a time over
a keep-alive connection, every answer read to its end.

Usage: llm_traffic.py --target http://127.0.0.1:8001 [--count 60] [--embeddings 0]
Refuses targets outside loopback and the lab's addresses (10.250.0.0/16).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import sys
from urllib.parse import urlsplit

import aiohttp

from shadowtap.lab.llm_service import prompts


def _allowed(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip in ipaddress.ip_network("10.250.0.0/16")


async def drive(target: str, count: int, embeddings: int) -> int:
    """Send the requests; returns how many were answered 200."""
    ok = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        for i, prompt in enumerate(prompts(count)):
            stream = i % 2 == 0
            body: dict[str, object] = {
                "model": "demo",
                "stream": stream,
                "messages": [{"role": "user", "content": prompt}],
            }
            if stream:
                body["stream_options"] = {"include_usage": True}
            async with session.post(target + "/v1/chat/completions", json=body) as resp:
                await resp.read()
                ok += resp.status == 200
        for i in range(embeddings):
            async with session.post(target + "/v1/embeddings", json={"input": f"text {i}"}) as resp:
                await resp.read()
                ok += resp.status == 200
    return ok


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", required=True)
    ap.add_argument("--count", type=int, default=60)
    ap.add_argument("--embeddings", type=int, default=0)
    args = ap.parse_args(argv)
    target = args.target.rstrip("/")
    if not _allowed(target):
        sys.exit(f"refusing target {target}: only loopback and the lab's 10.250.0.0/16")
    ok = asyncio.run(drive(target, args.count, args.embeddings))
    print(f"{ok} of {args.count + args.embeddings} answered 200")
    if ok != args.count + args.embeddings:
        sys.exit(1)


if __name__ == "__main__":
    main()
