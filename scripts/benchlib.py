"""Pieces shared by the live benchmarks (bench_capture.sh, bench_mirror.sh), which run their Python
from the repository's root with ``sys.path.insert(0, "scripts")``."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path


def wait_text(path: Path, needle: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Wait until ``needle`` appears in ``path`` (a process's log): polls, bounded by ``timeout``."""
    end = time.monotonic() + timeout
    while needle not in (path.read_text(errors="replace") if path.exists() else ""):
        if proc.poll() is not None or time.monotonic() > end:
            raise SystemExit(f"bench: {proc.args} did not start: {path.read_text(errors='replace')[-500:]}")
        time.sleep(0.05)


def hey(client, url: str, rate: int, seconds: float, workers: int = 8) -> dict:
    """hey from ``client`` (a shadowtap.netns Host) against ``url`` for ``seconds``, at ``rate``
    requests/s (0: as fast as it goes): sent, ok, rps and latency p50/p99 in ms."""
    workers = max(workers, -(-rate // 800))  # hey's per-worker limiter ticks at most ~1000/s
    argv = ["hey", "-z", f"{seconds}s", "-c", str(workers)]
    if rate:
        argv += ["-q", str(max(1, rate // workers))]
    out = client.run([*argv, url], timeout=seconds + 60).stdout
    ok = sum(int(n) for n in re.findall(r"\[\d+\]\s+(\d+) responses", out))
    errors = sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]\s+Get", out, re.MULTILINE))
    lat = {p: float(v) * 1000 for p, v in re.findall(r"(\d+)% in ([\d.]+) secs", out)}
    return {"sent": ok + errors, "ok": ok, "rps": ok / seconds, "p50": lat.get("50"), "p99": lat.get("99")}
