"""Shadowing an LLM endpoint end to end, with real components: the lab's OpenAI-compatible server
(version A, scripts/lab/llm_service.py) in a fresh network namespace, 60 chat completions (half
streamed as SSE) sent by a real aiohttp client, captured live on loopback by ``shadowtap capture``
and offline by tcpdump (then ``shadowtap extract``), replayed by ``shadowtap replay`` to version B
(paraphrases 2 prompts in 5, refuses 1 in 5, slower to its first token), compared by
``shadowtap compare``.

Asserted: the verdict names the refusals and the time-to-first-token regression; the ids,
creation times, fingerprints and paraphrases raise nothing; the primary's TTFT comes from packet
times (the exchanges' chunks), the shadow's from the replay client's socket reads.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import orjson
import pytest

import tests.support.live_lab as lab
from shadowtap.lab.llm_service import behaviour, prompts

N = 60


def start_llm(version: int, port: int, workdir: Path, ns: str) -> lab.Proc:
    ready = workdir / f"llm{version}.ready"
    proc = lab.Proc(
        [
            sys.executable,
            "-m",
            "shadowtap.lab.llm_service",
            "--version",
            str(version),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--ready-file",
            str(ready),
        ],
        workdir,
        f"llm{version}",
        ns=ns,
    )
    lab.wait_for(ready.exists, 60, f"llm service v{version}", proc=proc.p)
    return proc


def compare(host, workdir: Path, exchanges: Path, name: str, target: str) -> dict:
    results = workdir / f"{name}.results.jsonl"
    host.run(
        [
            sys.executable,
            "-m",
            "shadowtap",
            "replay",
            str(exchanges),
            "--target",
            target,
            "--allow",
            "POST /v1/chat/completions",
            "-o",
            str(results),
        ],
        timeout=300,
    )
    report = workdir / f"{name}.report.json"
    proc = host.run(
        [
            sys.executable,
            "-m",
            "shadowtap",
            "compare",
            str(exchanges),
            str(results),
            "--json",
            str(report),
            "--html",
            str(workdir / f"{name}.html"),
        ],
        check=False,
        timeout=300,
    )
    assert proc.returncode == 11, proc.stdout + proc.stderr  # fail
    (workdir / f"{name}.txt").write_text(proc.stdout)  # the terminal report, kept for a look
    return json.loads(report.read_text())


def check(rep: dict, exchanges: Path) -> None:
    exs = [orjson.loads(line) for line in exchanges.read_bytes().splitlines() if line.strip()]
    chats = [e for e in exs if e["request"] and e["request"]["target"] == "/v1/chat/completions"]
    assert len(chats) == N
    streamed = [
        e for e in chats if b'"stream":true' in e["request"]["body"].replace(" ", "").encode()
    ]
    assert len(streamed) == N // 2 and all(e.get("chunks") for e in streamed)
    [ep] = [e for e in rep["endpoints"] if e["endpoint"] == "POST /v1/chat/completions"]
    g = ep["genai"]
    ps = prompts(N)
    refusals = sum(behaviour(p, 2) == "refuse" for p in ps)
    paraphrases = sum(behaviour(p, 2) == "paraphrase" for p in ps)
    assert g["classes"]["refusal"] == refusals
    assert g["classes"]["equivalent"] == paraphrases
    assert g["classes"]["identical"] == N - refusals - paraphrases
    assert g["latency"]["ttft"]["primary"]["n"] == N // 2 == g["latency"]["ttft"]["shadow"]["n"]
    # TTFT: 15 ms (A) against 60 ms (B) plus the network's share
    assert g["latency"]["ttft"]["primary"]["p50"] < g["latency"]["ttft"]["shadow"]["p50"] - 30
    assert [f["path"] for f in ep["fields"] if not f["noise"]] == []
    reasons = rep["verdict"]["reasons"]
    assert any(r.startswith("CRITICAL genai") and "refusal rate" in r for r in reasons), reasons
    assert any(r.startswith("CRITICAL latency") and "time to first token" in r for r in reasons), (
        reasons
    )
    assert not any(
        w in r for r in reasons for w in ("created", "body.id", "fingerprint", "similarity")
    )


@pytest.mark.root
@pytest.mark.slow
def test_llm_endpoint_captured_live_and_offline_replayed_and_compared(
    topology, tmp_path, monkeypatch
):
    lab.require_tool("tcpdump")
    monkeypatch.setenv("SHADOWTAP_KEY_FILE", str(tmp_path / "redact.key"))
    host = topology().host("lo")
    port_a = random.randrange(20000, 40000)
    port_b = port_a + 1
    a = start_llm(1, port_a, tmp_path, host.ns)
    b = start_llm(2, port_b, tmp_path, host.ns)
    try:
        agent = lab.start_agent("lo", port_a, "pcap", tmp_path, ns=host.ns)
        tcpdump = lab.start_tcpdump("lo", port_a, tmp_path, host.ns)
        try:
            out = host.run(
                [
                    sys.executable,
                    "-m",
                    "shadowtap.lab.llm_traffic",
                    "--target",
                    f"http://127.0.0.1:{port_a}",
                    "--count",
                    str(N),
                ],
                timeout=120,
            )
            assert f"{N} of {N} answered 200" in out.stdout
            lab.wait_for(
                lambda: len(lab.jsonl_lines(tmp_path / "agent.jsonl")) >= N,
                60,
                "the agent's exchanges",
                proc=agent.p,
            )
        finally:
            agent.stop()
            tcpdump.stop()
        offline = tmp_path / "offline.jsonl"
        host.run(
            [
                sys.executable,
                "-m",
                "shadowtap",
                "extract",
                str(tmp_path / "tcpdump.pcap"),
                "-o",
                str(offline),
            ]
        )
        check(compare(host, tmp_path, offline, "offline", f"http://127.0.0.1:{port_b}"), offline)
        live = tmp_path / "agent.jsonl"
        check(compare(host, tmp_path, live, "live", f"http://127.0.0.1:{port_b}"), live)
    finally:
        a.stop()
        b.stop()
