"""The mirror in front of a streaming LLM endpoint: the lab's OpenAI-compatible service (version 1
as the primary, version 2, slower to its first token, as the shadow: scripts/lab/llm_service.py)
in the namespaces of tests/mirror/test_run.py, streamed chat completions from the client's
namespace, ``shadowtap mirror`` (libpcap) in the primary's.

Asserted: the shadow's streamed answers are timed event by event as they come off the socket
(replay's sender, which the mirror uses: one chunk entry per socket read), so the shadow's time to
first token is below its total and its inter-token gaps are not all zero; the primary's come from
packet times. No timing threshold: a stream read in one piece (what an event loop stalled for the
whole stream gives) shows TTFT = total and no gap at all; the comparison's embedder is loaded
before the capture starts (``Comparison.warm``), not on the first pair, when it held the GIL for
~0.3 s at a time and the shadow's first streams arrived in one read.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from shadowtap.records import Exchange, Result
from shadowtap.wire.genai import parse_generation, timing
from tests.mirror.test_run import PORT, PRIMARY, PY, _lines, lab  # noqa: F401 - the fixture

N = 12  # chat completions: even ones streamed
# A token every 10 ms (a fast real model; the lab's default is 1 ms): a stream of ~40 tokens lasts
# ~0.4 s, so the mirror's loop reads it in several pieces even on a loaded machine.
TOKEN_GAP_MS = 10

CLIENT = r"""
import http.client, json, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
conn = http.client.HTTPConnection(host, port, timeout=30)
for i in range(n):
    body = json.dumps({"model": "demo", "stream": i % 2 == 0,
                       "messages": [{"role": "user", "content": f"Tell me about topic {i}"}]})
    conn.request("POST", "/v1/chat/completions", body=body,
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    r.read()
    assert r.status == 200, r.status
conn.close()
"""


def _serve_llm(lab, host, version: int, name: str) -> None:  # noqa: F811
    ready = lab.tmp / f"{name}.ready"
    lab.procs.append(
        host.popen(
            [
                PY,
                "-m",
                "shadowtap.lab.llm_service",
                "--version",
                str(version),
                "--host",
                "0.0.0.0",
                "--port",
                str(PORT),
                "--ready-file",
                str(ready),
                "--token-gap-ms",
                str(TOKEN_GAP_MS),
            ]
        )
    )
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert time.monotonic() < deadline, f"{name} llm service did not start"
        assert lab.procs[-1].poll() is None, f"{name} llm service exited"
        time.sleep(0.05)


def test_mirror_times_the_shadows_stream_event_by_event(lab, tmp_path: Path) -> None:  # noqa: F811
    _serve_llm(lab, lab.primary, 1, "primary")
    _serve_llm(lab, lab.shadow, 2, "shadow")
    run = tmp_path / "run"
    proc = lab.mirror("pcap", run, "--allow", "POST /v1/chat/completions")
    (tmp_path / "llm_client.py").write_text(CLIENT)
    lab.client.run([PY, str(tmp_path / "llm_client.py"), PRIMARY, str(PORT), str(N)], timeout=120)
    try:
        lab.wait_metric("shadowtap_mirror_pairs_total", N)
    except AssertionError as exc:
        raise AssertionError((tmp_path / "mirror-run.err").read_text()[-3000:]) from exc
    rc, err = lab.stop(proc, signal.SIGINT)
    assert rc in (0, 10, 11), err

    exchanges = {e["id"]: Exchange.from_json(e) for e in _lines(run / "exchanges.jsonl")}
    results = [Result.from_json(r) for r in _lines(run / "results.jsonl")]
    assert len(results) == len(exchanges) == N
    streamed = 0
    for res in results:
        ex = exchanges[res.exchange_id]
        assert ex.response is not None and res.response is not None, res.error
        ct = res.response.header("content-type")
        gen = parse_generation(res.response.body, ct, "/v1/chat/completions", chunks=res.chunks)
        assert gen is not None and gen.text
        if not gen.streamed:
            assert not res.chunks
            continue
        streamed += 1
        # the shadow: one chunk per socket read, events timed from them
        assert len(res.chunks) > 1, res.chunks
        t = timing(gen, res.sent, res.response.end_ts)
        assert t is not None and t.ttft is not None and t.total is not None
        assert t.ttft < t.total, (t.ttft, t.total)
        assert max(t.itl) > 0, t.itl
        # the primary: the same from packet times
        assert ex.request is not None
        pgen = parse_generation(ex.response.body, ct, "/v1/chat/completions", chunks=ex.chunks)
        assert pgen is not None and pgen.streamed
        pt = timing(pgen, ex.request.end_ts, ex.response.end_ts)
        assert pt is not None and pt.total is not None and pt.ttft is not None
        assert pt.ttft < pt.total and max(pt.itl) > 0
    assert streamed == N // 2
    # and compare's report of the run directory measured the shadow's TTFT on every stream
    import json

    report = json.loads((run / "report.json").read_text())
    [ep] = [e for e in report["endpoints"] if e["endpoint"] == "POST /v1/chat/completions"]
    ttft = ep["genai"]["latency"]["ttft"]
    assert ttft["shadow"]["n"] == N // 2 == ttft["primary"]["n"]
    assert ep["genai"]["latency"]["itl"]["shadow"]["n"] > 0
