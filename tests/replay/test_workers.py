"""``shadowtap replay --workers N``: the real command against real targets on loopback, plus the
pure parts (connection ownership, the merge of the parts, the lag histogram)."""

from __future__ import annotations

import io
import os
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import orjson
import pytest

from shadowtap.records import Result
from shadowtap.replay.run import Lags
from shadowtap.replay.workers import connection_key, merge_parts, owner

from .conftest import make_exchange, read_results, write_jsonl
from .test_run import replay, summary_value


def _line(ex) -> bytes:
    return orjson.dumps(ex.to_json())


def _clients_by_owner(workers: int, per_owner: int, server: str = "10.2.0.1:80") -> list[list[str]]:
    """Client endpoints whose connections (to ``server``) belong to each worker."""
    out: list[list[str]] = [[] for _ in range(workers)]
    port = 40000
    while min(len(o) for o in out) < per_owner:
        client = f"10.1.0.9:{port}"
        w = owner(_line(make_exchange(client=client, server=server)), workers)
        if len(out[w]) < per_owner:
            out[w].append(client)
        port += 1
    return out


def test_connection_key_from_the_raw_line_and_from_a_parse_agree():
    ex = make_exchange(client="10.1.0.1:40000", server="10.2.0.1:80")
    raw = _line(ex)
    assert connection_key(raw) == b"10.1.0.1:40000>10.2.0.1:80"
    spaced = orjson.dumps(ex.to_json(), option=orjson.OPT_INDENT_2).replace(b"\n", b" ")
    assert connection_key(spaced) == connection_key(raw)  # parsed: the same key
    assert connection_key(b"not json") is None and owner(b"not json", 4) == 0
    assert {owner(raw, 3)} == {owner(spaced, 3)}


def test_merge_orders_the_parts_by_completion_and_drops_a_torn_line(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"

    def key(t: float) -> bytes:
        return b"%018.7f\t" % t

    a.write_bytes(key(9.5) + b'{"n":1}\n' + key(1e9) + b'{"n":3}\n')
    b.write_bytes(key(10.0) + b'{"n":2}\n' + key(1.7e9) + b'{"n":4}\n' + key(1.8e9) + b'{"n"')
    out = io.BytesIO()

    class Sink:
        def write_line(self, line: bytes) -> None:
            out.write(line)

    assert merge_parts([str(a), str(b), str(tmp_path / "missing")], Sink()) == 4  # type: ignore[arg-type]
    assert [orjson.loads(x)["n"] for x in out.getvalue().splitlines()] == [1, 2, 3, 4]


def test_lag_histogram_percentiles_within_half_a_percent():
    rng = np.random.default_rng(7)
    lags = np.concatenate([rng.exponential(0.05, 150_000), rng.exponential(20.0, 1_000), [-0.01]])
    h = Lags()
    for x in lags:
        h.add(float(x))
    p50, p99, mx = h.percentiles()  # type: ignore[misc]
    assert mx == lags.max()
    for got, q in ((p50, 50), (p99, 99)):
        exact = float(np.percentile(lags, q))
        assert exact * 0.99 <= got <= exact * 1.01
    before = h.snapshot()
    other = Lags()
    for x in (1.0, 1.0, 300.0):
        other.add(x)
    h.merge(other.counts.tobytes(), other.n, other.max)
    assert h.n == len(lags) + 3 and sum(h.counts) == h.n
    grown = h.since(before)  # what a progress tick shows: the lags of the last interval
    assert sum(grown.values()) == 3 and len(grown) == 2
    assert 0.995 <= h.quantile(0.5, grown) <= 1.005 and h.quantile(1.0, grown) == 300.0


def test_lag_histogram_edges():
    h = Lags()
    assert h.percentiles() is None and h.quantile(0.5) == 0.0
    for x in (-5.0, 0.0, 0.0009, float("nan")):  # under 1 us, negative and NaN: bin 0
        h.add(x)
    assert h.counts[0] == 4 and h.quantile(0.99) == 0.0
    h.add(float("inf"))  # the last bin, the maximum kept
    h.add(1e12)
    assert h.counts[Lags.BINS - 1] == 2 and h.max == float("inf")
    assert h.quantile(1.0) == Lags.LO * Lags.FACTOR ** (Lags.BINS - 1)


def test_workers_keep_each_connection_in_order_and_merge_every_result(tmp_path, aio_target):
    owners = _clients_by_owner(3, 4)
    clients = [c for group in owners for c in group]
    exs = [
        make_exchange(t=i * 0.001 + k * 0.0001, target=f"/c{k}/{i}", index=i, client=client)
        for i in range(10)
        for k, client in enumerate(clients)
    ]
    inp = write_jsonl(tmp_path / "in.jsonl", exs)
    out = tmp_path / "res.jsonl"
    p = replay(inp, "-t", aio_target.url, "--speed", "max", "-c", "6", "-w", "3", "-o", str(out))
    assert p.returncode == 0, p.stderr
    # Each captured connection: one target connection, its requests in their order.
    by_port: dict[int, list[str]] = {}
    for s in aio_target.seen:
        by_port.setdefault(s.peer_port, []).append(s.path)
    expected = [[f"/c{k}/{i}" for i in range(10)] for k in range(len(clients))]
    assert sorted(by_port.values()) == sorted(expected)
    # Every result once, in the order the answers came back across the workers.
    results = [Result.from_json(d) for d in read_results(out)]
    assert sorted(r.exchange_id for r in results) == sorted(ex.id for ex in exs)
    ends = [r.response.end_ts for r in results if r.response is not None]
    assert len(ends) == len(exs) and ends == sorted(ends)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert [f for f in os.listdir(tmp_path) if f.startswith(".shadowtap")] == []  # parts gone
    # Per worker lines, and their sums are the totals.
    sent = [int(summary_value(p.stderr, f"worker {w}").split()[0]) for w in (1, 2, 3)]
    assert sent == [40, 40, 40] and int(summary_value(p.stderr, "requests sent")) == 120


def test_recorded_timing_is_one_schedule_across_workers(tmp_path, aio_target):
    """Anchored timing with the parent's one clock and start: request i is due at
    start + (t_i - t_0)/k whichever worker sends it."""
    owners = _clients_by_owner(2, 2)
    times = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    clients = [owners[i % 2][(i // 2) % 2] for i in range(len(times))]
    index: dict[str, int] = {}
    exs = []
    for i, (t, client) in enumerate(zip(times, clients, strict=True)):
        exs.append(make_exchange(t=t, target=f"/t{i}", client=client, index=index.get(client, 0)))
        index[client] = index.get(client, 0) + 1
    inp = write_jsonl(tmp_path / "in.jsonl", exs)
    out = tmp_path / "res.jsonl"
    p = replay(
        inp, "-t", aio_target.url, "-o", str(out), "--speed", "2", "-w", "2", "--json", "--progress"
    )
    assert p.returncode == 0, p.stderr
    results = {r.target.rsplit("/", 1)[1]: r for r in map(Result.from_json, read_results(out))}
    s0 = results["t0"].scheduled
    for i, t in enumerate(times):
        r = results[f"t{i}"]
        assert r.scheduled - s0 == pytest.approx(t / 2, abs=1e-6)
        assert r.sent >= r.scheduled and r.response is not None and r.response.status == 200
    assert "sent 8" in p.stderr  # the progress line, from the workers' Ticks and reports
    summary = orjson.loads(p.stdout)
    assert [w["sent"] for w in summary["workers"]] == [4, 4]
    assert all(w["lag_ms"]["max"] >= 0 for w in summary["workers"]) and summary["lag_ms"]


def test_a_failing_worker_is_reported_and_the_results_written_are_kept(tmp_path, aio_target):
    """Worker 2 finds a connection to the captured server (the target itself) after three
    requests of its own; worker 1's requests, all due before, are kept in the results."""
    captured = f"127.0.0.1:{aio_target.port}"
    (w1,) = _clients_by_owner(2, 1)[0]
    (w2,) = _clients_by_owner(2, 1, server=captured)[1]
    (w2_ok,) = [c for c in _clients_by_owner(2, 3)[1] if c != w2][:1]
    exs = [make_exchange(t=i * 0.05, target=f"/a{i}", client=w1, index=i) for i in range(3)]
    exs += [make_exchange(t=i * 0.05, target=f"/b{i}", client=w2_ok, index=i) for i in range(3)]
    exs.append(make_exchange(t=2.0, target="/refused", client=w2, server=captured))
    inp = write_jsonl(tmp_path / "in.jsonl", sorted(exs, key=lambda e: e.ts))
    out = tmp_path / "res.jsonl"
    p = replay(inp, "-t", aio_target.url, "-o", str(out), "-w", "2")
    assert p.returncode == 5, p.stderr
    assert "captured from" in p.stderr and "--force" in p.stderr
    results = read_results(out)  # every line complete and valid
    targets = {Result.from_json(d).target.rsplit("/", 1)[1] for d in results}
    assert {"a0", "a1", "a2"} <= targets and "refused" not in targets
    assert "/refused" not in [s.path for s in aio_target.seen]
    assert [f for f in os.listdir(tmp_path) if f.startswith(".shadowtap")] == []


def _endless_two_workers(tmp_path, aio_target, act) -> tuple[subprocess.Popen[str], str, str]:
    """A --rate 100 endless replay over two workers (one connection each); once each worker
    has sent five requests, ``act(proc)``; then the command's end: (proc, stderr, results path)."""
    owners = _clients_by_owner(2, 1)
    exs = [make_exchange(target=f"/w{w}", client=owners[w][0]) for w in (0, 1)]
    inp = write_jsonl(tmp_path / "in.jsonl", exs)
    out = str(tmp_path / "res.jsonl")
    args = [inp, "-t", aio_target.url, "-o", out, "-w", "2", "--rate", "100", "--loop", "0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "shadowtap", "replay", *args, "--duration", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while (
            time.monotonic() < deadline
            and min(sum(s.path == f"/w{w}" for s in aio_target.seen) for w in (0, 1)) < 5
        ):
            time.sleep(0.05)
        act(proc)
        _stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc, stderr, out


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_with_workers_leaves_a_valid_partial_results_file(tmp_path, aio_target, signum):
    # the signal to the parent only: it stops its workers
    proc, stderr, out = _endless_two_workers(tmp_path, aio_target, lambda p: p.send_signal(signum))
    assert proc.returncode == 130, stderr
    results = [Result.from_json(d) for d in read_results(out)]  # every line complete and valid
    assert len(results) == int(summary_value(stderr, "requests sent"))
    assert {r.target.rsplit("/", 1)[1] for r in results} == {"w0", "w1"}
    assert all(r.response is not None and r.response.status == 200 for r in results)
    assert summary_value(stderr, "interrupted").startswith("yes")
    assert [f for f in os.listdir(tmp_path) if f.startswith(".shadowtap")] == []


def test_workers_need_a_jsonl_file(tmp_path, aio_target):
    inp = write_jsonl(tmp_path / "in.jsonl", [make_exchange()])

    def from_stdin(*extra: str) -> subprocess.CompletedProcess[str]:
        with open(inp, "rb") as f:
            return subprocess.run(
                [sys.executable, "-m", "shadowtap", "replay", "-", "-t", aio_target.url, *extra],
                stdin=f,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )

    p = from_stdin("-w", "2")
    assert p.returncode == 3 and "JSONL file" in p.stderr
    p = from_stdin()  # the default: one process for stdin
    assert p.returncode == 0, p.stderr
    assert "worker 1" not in p.stderr and len(aio_target.seen) == 1


def test_a_killed_worker_is_reported_and_the_others_results_kept(tmp_path, aio_target):
    def kill_one(proc: subprocess.Popen[str]) -> None:
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
            workers = sorted(int(x) for x in f.read().split())
        assert len(workers) == 2
        os.kill(workers[1], signal.SIGKILL)  # a worker this test's command started

    proc, stderr, out = _endless_two_workers(tmp_path, aio_target, kill_one)
    assert proc.returncode == 1, stderr
    assert "replay worker" in stderr and "died (killed by SIGKILL)" in stderr
    results = [Result.from_json(d) for d in read_results(out)]  # every line complete and valid
    assert results and all(r.response is not None for r in results)
    assert [f for f in os.listdir(tmp_path) if f.startswith(".shadowtap")] == []


def test_no_more_workers_than_requests_in_flight(tmp_path, aio_target):
    owners = _clients_by_owner(3, 1)
    exs = [make_exchange(target=f"/w{w}", client=owners[w][0]) for w in range(3)]
    inp = write_jsonl(tmp_path / "in.jsonl", exs)
    p = replay(inp, "-t", aio_target.url, "--speed", "max", "-c", "2", "-w", "3")
    assert p.returncode == 0, p.stderr
    assert "2 workers" in p.stderr and "worker 3" not in p.stderr
    assert sorted(s.path for s in aio_target.seen) == ["/w0", "/w1", "/w2"]
