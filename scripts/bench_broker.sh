#!/usr/bin/env bash
# Agent -> NATS JetStream (issue 16): NatsSink publishing exchanges with acknowledgements to a real
# nats-server (-js, file store in a temp directory) against its peer, writing the same exchanges to
# a local JSONL file (JsonlWriter), in the same run. Prints the rates (wall), the CPU time per
# exchange of the agent (the whole process: the producer and the sink's thread) and of nats-server
# (/proc/PID/stat), and the ratios to the file peer. On a shared machine the CPU figures are the
# ones to read. The capture's loss-free rate with --sink: scripts/bench_capture.sh, recorder
# "ebpf-sink" against "ebpf" (BENCH_RECORDERS="ebpf ebpf-sink").
# Exchanges come from tests/support/pairs.py (several endpoints, JSON bodies, errors, binary bodies).
# Usage: scripts/bench_broker.sh   (env: BENCH_PUBLISH=50000, BENCH_ROUNDS=3: rounds, alternating)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || scripts/setup.sh
echo "== agent -> JetStream (${BENCH_PUBLISH:-50000} exchanges, acknowledged) vs a local JSONL file," \
  "${BENCH_ROUNDS:-3} rounds; $(date -u '+%Y-%m-%d %H:%M UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg)"
exec .venv/bin/python - <<'PY'
import os, shutil, statistics, sys, tempfile, time
sys.path.insert(0, ".")
from shadowtap.jsonl import JsonlWriter
from shadowtap.lake.nats import NatsSink
from tests.support.natsd import NatsServer  # a free loopback port, a temp store, killed by PID
from tests.support.pairs import pairs

n, rounds = int(os.environ.get("BENCH_PUBLISH", "50000")), int(os.environ.get("BENCH_ROUNDS", "3"))
us = lambda s: s / n * 1e6  # noqa: E731


def cpu_of(pid: int) -> float:  # a process's user + system seconds
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def one_round(r: int) -> tuple[float, float, float, float, float]:
    t, c = time.perf_counter(), time.process_time()
    with JsonlWriter(f"{work}/agent.jsonl") as w:
        for ex in exchanges:
            w.write(ex.to_json())
    t_file, c_file = time.perf_counter() - t, time.process_time() - c
    s0 = cpu_of(srv.proc.pid)
    t, c = time.perf_counter(), time.process_time()  # the process: producer + the sink's thread
    sink = NatsSink(f"{srv.url}/bench{r}", f"{work}/spool{r}", host="bench")
    for ex in exchanges:
        sink.on_exchange(ex)
    sink.close()
    t_nats, c_nats = time.perf_counter() - t, time.process_time() - c
    c_srv = cpu_of(srv.proc.pid) - s0
    assert sink.acked == n and sink.dropped == 0, (sink.acked, sink.dropped)
    print(f"round {r + 1}: JetStream {n / t_nats:,.0f}/s acknowledged ({t_nats:.2f} s), CPU per exchange "
          f"agent {us(c_nats):.1f} us + nats-server {us(c_srv):.1f} us | file {n / t_file:,.0f}/s "
          f"({t_file:.2f} s), CPU {us(c_file):.1f} us", flush=True)
    return t_nats, c_nats, c_srv, t_file, c_file


work = tempfile.mkdtemp(prefix="bench-broker-")
os.chmod(work, 0o700)
srv = NatsServer(f"{work}/js").start()
try:
    exchanges = [ex for ex, _ in pairs(n)]
    rows = [one_round(r) for r in range(rounds)]
finally:
    srv.kill()
    shutil.rmtree(work, ignore_errors=True)
t_nats, c_nats, c_srv, t_file, c_file = (statistics.median(col) for col in zip(*rows))
print(f"median: JetStream {n / t_nats:,.0f} exchanges/s acknowledged, local JSONL (peer) {n / t_file:,.0f}/s:"
      f" ratio {t_file / t_nats:.2f}")
print(f"median CPU per exchange: agent {us(c_nats):.1f} us, nats-server {us(c_srv):.1f} us, file peer "
      f"{us(c_file):.1f} us: agent/peer {c_nats / c_file:.2f}x, (agent + server)/peer "
      f"{(c_nats + c_srv) / c_file:.2f}x")
print(f"one core's worth (n / CPU s): agent alone {n / c_nats:,.0f}/s, agent + nats-server "
      f"{n / (c_nats + c_srv):,.0f}/s, file peer {n / c_file:,.0f}/s")
PY
