"""Pieces shared by the live benchmarks (bench_capture.sh, bench_mirror.sh), which run their Python
from the repository's root with ``sys.path.insert(0, "scripts")``."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path


def wait_text(path: Path, needle: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Wait until ``needle`` appears in ``path`` (a process's log): polls, bounded by
    ``timeout``."""
    end = time.monotonic() + timeout
    while needle not in (path.read_text(errors="replace") if path.exists() else ""):
        if proc.poll() is not None or time.monotonic() > end:
            raise SystemExit(
                f"bench: {proc.args} did not start: {path.read_text(errors='replace')[-500:]}"
            )
        time.sleep(0.05)


def hey(client, url: str, rate: int, seconds: float, workers: int = 8) -> dict:
    """hey from ``client`` (a shadowtap.netns Host) against ``url`` for ``seconds``, at ``rate``
    requests/s (0: as fast as it goes): sent, ok, rps and latency p50/p99 in ms."""
    # hey's per-worker limiter waits for a tick, then sends and waits for the answer; ticks due
    # meanwhile are dropped: a worker gets ~1/(tick + latency), 370/s of an asked 790/s over TLS
    # on a 2-core VM. One worker per 250/s asked keeps the rate asked.
    workers = max(workers, -(-rate // 250))
    argv = ["hey", "-z", f"{seconds}s", "-c", str(workers)]
    if rate:
        argv += ["-q", str(max(1, rate // workers))]
    out = client.run([*argv, url], timeout=seconds + 60).stdout
    ok = sum(int(n) for n in re.findall(r"\[\d+\]\s+(\d+) responses", out))
    errors = sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]\s+Get", out, re.MULTILINE))
    lat = {p: float(v) * 1000 for p, v in re.findall(r"(\d+)% in ([\d.]+) secs", out)}
    return {
        "sent": ok + errors,
        "ok": ok,
        "rps": ok / seconds,
        "p50": lat.get("50"),
        "p99": lat.get("99"),
    }


def wrk_paced(
    client, url: str, rate: int, seconds: float, conns: int = 8, workdir: Path | None = None
) -> dict:
    """wrk from ``client`` at about ``rate`` requests/s: ``conns`` connections, each waiting
    ``conns/rate`` s after a response before its next request (wrk's ``delay()`` hook). Its latency
    percentiles have microsecond resolution (hey's have 0.1 ms, a tenth of a 1 ms p99): rps and
    p50/p90/p99 in ms."""
    script = Path(workdir or "/tmp") / f"wrk-pace-{rate}-{conns}.lua"
    script.write_text(f"function delay() return {conns * 1000.0 / rate:.3f} end\n")
    return wrk(client, url, seconds, conns, "-s", str(script))


def wrk(client, url: str, seconds: float, conns: int = 8, *extra: str) -> dict:
    """wrk -t 1 from ``client`` for ``seconds`` (as fast as it goes unless ``extra`` paces it):
    rps and latency p50/p90/p99 in ms (wrk's --latency percentiles, microsecond resolution)."""
    out = client.run(
        ["wrk", "-t", "1", "-c", str(conns), "-d", f"{seconds:g}s", "--latency", *extra, url],
        timeout=seconds + 60,
    ).stdout
    unit = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    lat = {
        p: float(v) * unit[u]
        for p, v, u in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    }
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return {"rps": rps, "p50": lat.get("50"), "p90": lat.get("90"), "p99": lat.get("99")}


def _tree(root: int) -> dict[int, tuple[float, int]]:
    """CPU seconds (user + sys) and RSS (KB) of ``root``'s descendants, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    page = os.sysconf("SC_PAGE_SIZE") // 1024
    stats: dict[int, tuple[int, float, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after "pid (comm)": state ppid ... utime(12) stime(13) ... rss(22), 0-based from state
        stats[int(entry)] = (
            int(fields[1]),
            (int(fields[11]) + int(fields[12])) / tick,
            int(fields[21]) * page,
        )
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    out: dict[int, tuple[float, int]] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        out[pid] = stats[pid][1:]
        todo.extend(children.get(pid, []))
    return out


def switches(root: int) -> tuple[int, int, float]:
    """Context switches of ``root`` and its descendants, every thread (voluntary: it slept, i.e.
    one wake-up each; involuntary: it was preempted) and their CPU seconds (user + sys), from
    /proc: taken before and after a run, the difference is what a recorder did meanwhile."""
    tick = os.sysconf("SC_CLK_TCK")
    pids = [root, *_tree(root)]
    vol = invol = 0
    cpu = 0.0
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches"):
                            vol += int(line.split()[1])
                        elif line.startswith("nonvoluntary_ctxt_switches"):
                            invol += int(line.split()[1])
            except OSError:
                continue
    return vol, invol, cpu


def reaped(timeout: float, argv: list[str]) -> tuple[float, int, int, float]:
    """Run ``argv`` as a child subreaper (every process it starts, Spark's JVM and its Python
    workers included, stays below this one) and watch the tree from /proc every 0.2 s. Returns
    wall seconds, the peak RSS of the largest process and the peak of the processes' summed RSS
    (KB), and their CPU seconds (user + sys): the larger of the kernel's account of the reaped
    processes and the sum of what /proc last showed of each process. Killed (the whole group)
    past ``timeout`` seconds."""
    import ctypes
    import resource
    import signal
    import threading

    PR_SET_CHILD_SUBREAPER = 36
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    seen: dict[int, float] = {}
    peak = [0, 0]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            tree = _tree(os.getpid())
            for pid, (cpu, _) in tree.items():
                seen[pid] = max(seen.get(pid, 0.0), cpu)
            if tree:
                peak[0] = max(peak[0], max(rss for _, rss in tree.values()))
                peak[1] = max(peak[1], sum(rss for _, rss in tree.values()))
            done.wait(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    wall = time.monotonic() - start
    deadline = time.monotonic() + 60  # orphans (a JVM shutting down) get a minute
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
            time.sleep(0.1)
    done.set()
    watcher.join()
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = max(ru.ru_utime + ru.ru_stime, sum(seen.values()))
    return wall, max(ru.ru_maxrss, peak[0]), peak[1], cpu


if __name__ == "__main__":
    import sys

    if sys.argv[1] == "reaped":  # benchlib.py reaped TIMEOUT CMD...: "wall KB KB-sum cpu"
        print(*reaped(float(sys.argv[2]), sys.argv[3:]))


def best_times(work: str, tool: str, rounds: int) -> tuple[float, float, float]:
    """The best round of ``tool`` from the GNU time files ``WORK/TOOL.R.time`` (``%e %U %S %M``,
    rounds 1..``rounds``): the least wall time, the least CPU time (user + sys), the largest peak
    RSS in MB. The least disturbed round of a shared machine is the truest."""
    runs = [
        tuple(map(float, Path(f"{work}/{tool}.{r}.time").read_text().split()))
        for r in range(1, rounds + 1)
    ]
    return (
        min(r[0] for r in runs),
        min(r[1] + r[2] for r in runs),
        max(r[3] for r in runs) / 1024,
    )
