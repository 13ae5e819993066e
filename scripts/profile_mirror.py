"""The live mirror's two per-request paths, offline, in CPU time a request (issue 17's profile).

scripts/bench_mirror.sh measures the mirror as it runs (both processes' CPU over a load window),
but on a shared 2-core machine that figure moves with the load: a mirror starved of CPU falls
behind and then handles its backlog in big batches, which costs less a request. This script runs
the same code on the same synthetic traffic with nothing else in the way, so two builds compare:

- capture path: Ethernet frames of keep-alive HTTP/1.1 connections (the bench's requests, nginx's
  answers) into the capture process's code: the Extractor (TCP reassembly, HTTP parsing, records),
  admission (the Policy's prepared request, a Pending) and the Outbox (the records of every 8
  packets encoded as one frame and written, to a file here). Not measured: the eBPF ring's read.
- loop path: those records, as the mirror's process gets them, decoded and handed to the run's
  consumers (counters, pairing, the run directory, the live comparison on its thread, redaction),
  each request's shadow answer made as replay's client makes it. Not measured: the sockets to the
  shadow (a write and a read a request) and the event loop's own work.

    .venv/bin/python scripts/profile_mirror.py [--requests N] [--repeat N] [--profile capture|loop]
        [--out DIR]

Prints the CPU time (user + system, every thread: the comparison's too) a request of each path.
``--out DIR``: the last round's run directory there (exchanges.jsonl, results.jsonl) with the final
reports (report.txt, report.json, report.html): two builds' outputs compared byte for byte (but
report.json's "generated" time) show that an optimization changed no record and no report.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import os
import pstats
import shutil
import struct
import sys
import tempfile
import time
from types import SimpleNamespace

from shadowtap.capture.extractor import Extractor
from shadowtap.codec import FrameReader
from shadowtap.mirror import comparison as mirror_compare
from shadowtap.mirror.capture_child import Captured, Outbox, decode_batch, make_decide
from shadowtap.mirror.consumers import (
    Consumers,
    Counters,
    LiveComparison,
    Pairing,
    RunDirectory,
)
from shadowtap.mirror.pairing import Pairer
from shadowtap.mirror.sender import Admission, Pending
from shadowtap.procs import BATCH_GC_THRESHOLD
from shadowtap.records import Response, Result
from shadowtap.redact import Redactor
from shadowtap.replay.policy import Policy, Target

CLIENT, SERVER, PORT = bytes([10, 250, 31, 1]), bytes([10, 250, 31, 2]), 8080
REQUEST = (
    b"GET /bench HTTP/1.1\r\nHost: 10.250.31.2:8080\r\nUser-Agent: hey/0.0.1\r\n"
    b"Content-Type: text/html\r\nAccept-Encoding: gzip\r\n\r\n"
)
BODY = b'{"path": "/bench", "ok": true}\n'
T0 = 1764650000.0
RATE = 3000.0  # requests a second of capture time (the Date header changes once a second)


def _date(ts: float) -> bytes:
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(ts)).encode()


def _answer(ts: float) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: " + _date(ts) + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n"
        % len(BODY)
    ) + BODY


def _frame(
    src: bytes,
    sport: int,
    dst: bytes,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    payload: bytes = b"",
) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0)
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), 0, 0x4000, 64, 6, 0, src, dst
    )
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + tcp + payload


def traffic(requests: int, connections: int = 16) -> list[tuple[int, bytes]]:
    """(time in microseconds, frame) of ``connections`` keep-alive connections taking turns:
    handshake, then per request the request's segment and the answer's (which acknowledges it),
    and the client's next segment acknowledging the answer, as hey and nginx do."""
    out: list[tuple[int, bytes]] = []
    seqs = {}
    ts = T0
    for c in range(connections):
        port = 40000 + c
        cs, ss = 1000 + c * 7, 5000 + c * 11
        out.append((int(ts * 1e6), _frame(CLIENT, port, SERVER, PORT, cs, 0, 0x02)))
        out.append((int(ts * 1e6), _frame(SERVER, PORT, CLIENT, port, ss, cs + 1, 0x12)))
        out.append((int(ts * 1e6), _frame(CLIENT, port, SERVER, PORT, cs + 1, ss + 1, 0x10)))
        seqs[port] = [cs + 1, ss + 1]
    for i in range(requests):
        port = 40000 + i % connections
        cs, ss = seqs[port]
        ts += 1 / RATE
        out.append((int(ts * 1e6), _frame(CLIENT, port, SERVER, PORT, cs, ss, 0x18, REQUEST)))
        cs += len(REQUEST)
        answer = _answer(ts)
        out.append((int(ts * 1e6) + 200, _frame(SERVER, PORT, CLIENT, port, ss, cs, 0x18, answer)))
        ss += len(answer)
        seqs[port] = [cs, ss]
    out.sort(key=lambda f: f[0])
    return out


def capture_path(frames: list[tuple[int, bytes]], out_fd: int) -> int:
    """The capture process's work on ``frames``; the frames it sends go to ``out_fd``."""
    cfg = SimpleNamespace(percent=100.0, sample_per_request=True, queue=20_000)
    outbox = Outbox(out_fd, max_records=1 << 30, max_bytes=1 << 40)
    policy = Policy(target=Target.parse("http://10.250.32.2:8080"), force=True)
    admission = Admission(outbox, make_decide(cfg, policy, frozenset()), max_admitted=1 << 30)  # type: ignore[arg-type]
    extractor = Extractor(
        ports=(PORT,), redactor=None, on_request=admission.offer, max_held_exchanges=256
    )  # type: ignore[arg-type]
    n = 0
    for i, (us, frame) in enumerate(frames):
        for ex in extractor.feed(us / 1e6, 1, frame):
            outbox.put_exchange(ex, admission.take_admitted(ex.id))
            n += 1
        if i % 8 == 7:
            outbox.flush(block=True)
    for ex in extractor.finish():
        outbox.put_exchange(ex, admission.take_admitted(ex.id))
        n += 1
    outbox.flush(block=True)
    return n


def loop_path(payloads: list[bytes], run_dir: str, comparison: LiveComparison) -> int:
    """The mirror's process's work on the capture's frames: decoded, each request's shadow answer
    made as replay's client makes it, every record through the consumers (ticks every 1,000)."""
    pairer = Pairer(capacity=100_000, ttl=60.0)
    pairing = Pairing(pairer, emit=lambda _p: None)
    hub = Consumers([Counters(), pairing, RunDirectory(run_dir), comparison], Redactor(b"k" * 32))
    pairing.emit = hub.pair
    headers_of = {}

    async def run() -> None:
        await hub.start()
        records = (record for payload in payloads for record in decode_batch(payload))
        for i, obj in enumerate(records):
            if type(obj) is Pending:
                prepared = obj.outgoing
                sent = obj.wire_ts + 0.0005
                head = headers_of.get(int(sent))
                if head is None:
                    head = headers_of[int(sent)] = (
                        ("Server", "nginx/1.22.1"),
                        ("Date", _date(sent).decode()),
                        ("Content-Type", "application/json"),
                        ("Content-Length", str(len(BODY))),
                        ("Connection", "keep-alive"),
                    )
                resp = Response(
                    sent + 0.0002,
                    sent + 0.0003,
                    "HTTP/1.1",
                    tuple([(n, v) for n, v in head]),
                    bytes(BODY),
                    len(BODY),
                    False,
                    len(BODY),
                    200,
                    "OK",
                )
                hub.result(
                    Result(
                        prepared.exchange_id,
                        prepared.url,
                        obj.wire_ts,
                        sent,
                        resp,
                        0.2,
                        0.3,
                        None,
                        0,
                    )
                )
            elif type(obj) is Captured:
                hub.exchange(obj.exchange, obj.admitted)
            if i % 1000 == 999:
                hub.tick(time.monotonic())
        await hub.close()

    asyncio.run(run())
    return pairer.paired


def _keep(run_dir: str, comparison: LiveComparison, out: str) -> None:
    """The run directory's files and the final reports (as the mirror writes them at its end)
    in ``out``."""
    os.makedirs(out, mode=0o700, exist_ok=True)
    for name in ("exchanges.jsonl", "results.jsonl"):
        shutil.copyfile(os.path.join(run_dir, name), os.path.join(out, name))
    report = mirror_compare.snapshot(comparison.comparison, final=True)
    with contextlib.redirect_stdout(io.StringIO()):  # the terminal report: report.txt has it
        mirror_compare.write_reports(report, out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=30_000)
    ap.add_argument("--profile", choices=("capture", "loop"))
    ap.add_argument("--repeat", type=int, default=1, help="rounds; the least CPU of each path")
    ap.add_argument("--out", help="a directory for the last round's run directory and reports")
    args = ap.parse_args()
    # The collector as the mirror's processes set it (mirror/run.py): start-up frozen, thresholds
    # raised.
    gc.collect()
    gc.freeze()
    gc.set_threshold(*BATCH_GC_THRESHOLD)
    frames = traffic(args.requests)
    capture_runs, loop_runs = [], []
    with tempfile.TemporaryDirectory() as work:
        for rnd in range(args.repeat):
            path = os.path.join(work, f"frames-{rnd}")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            prof = cProfile.Profile() if args.profile == "capture" else None
            t0 = time.process_time()
            if prof:
                prof.enable()
            exchanges = capture_path(frames, fd)
            if prof:
                prof.disable()
            capture_runs.append(time.process_time() - t0)
            os.close(fd)
            with open(path, "rb") as f:
                payloads = FrameReader().feed(f.read())
            run_dir = os.path.join(work, f"run-{rnd}")
            os.mkdir(run_dir, 0o700)
            # compare's imports (scipy) and first snapshot are the run's start, not per request
            comparison = LiveComparison(mirror_compare.open_comparison(None, ()), print)
            comparison.view()
            prof2 = cProfile.Profile() if args.profile == "loop" else None
            t0 = time.process_time()
            if prof2:
                prof2.enable()
            pairs = loop_path(payloads, run_dir, comparison)
            if prof2:
                prof2.disable()
            loop_runs.append(time.process_time() - t0)
        if args.out:
            _keep(run_dir, comparison, args.out)
    n = args.requests
    # The least disturbed of the rounds: on a shared machine other processes only ever add time.
    capture_cpu, loop_cpu = min(capture_runs), min(loop_runs)
    print(
        f"{n} requests ({len(frames)} frames, {exchanges} exchanges, {pairs} pairs), "
        f"best of {args.repeat}: capture path {capture_cpu / n * 1e6:.1f} us a request, "
        f"loop path {loop_cpu / n * 1e6:.1f} us a request, "
        f"together {(capture_cpu + loop_cpu) / n * 1e6:.1f} us"
    )
    for p in (prof, prof2):
        if p is not None:
            pstats.Stats(p, stream=sys.stdout).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
