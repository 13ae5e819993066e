"""The eBPF source's user-space cost a record, the ring buffer read two ways in one run: shadowtap's
direct reader (capture/ringbuf.py) and, its peer, bcc's ring_buffer_consume with a ctypes
callback a record (the reader before 2026-12-02, its parsing copied here). For each: N small TCP
writes over loopback in a private network namespace (unshare -n: nothing outside it, gone with
the process) fill the ring while nobody reads; then the CPU time (process_time) to drain it into
frames, divided by the frames. Prints both and the ratio.

    sudo .venv/bin/python scripts/bench_ringbuf.py [N=50000] [ROUNDS=3]
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

PORT = 7999


def traffic(n: int) -> None:
    """n writes of 64 bytes, each its own packet (TCP_NODELAY), to a local sink."""
    srv = socket.create_server(("127.0.0.1", PORT))
    got = [0]

    def sink() -> None:
        c, _ = srv.accept()
        while data := c.recv(1 << 16):
            got[0] += len(data)
        c.close()

    t = threading.Thread(target=sink)
    t.start()
    cli = socket.create_connection(("127.0.0.1", PORT))
    cli.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    msg = b"x" * 64
    for _ in range(n):
        cli.send(msg)
        if _ % 64 == 0:
            time.sleep(0)  # let the sink run: packets, not coalesced writes
    cli.close()
    t.join()
    srv.close()


def drain_direct(src) -> int:  # noqa: ANN001
    frames = 0
    while got := src.read(0):
        frames += len(got)
    return frames


def drain_bcc(src) -> int:  # noqa: ANN001
    """The reader as it was: bcc's consume, a ctypes callback and copy a record."""
    src._ring.close()  # noqa: SLF001 - replaced by bcc's own consumer for this measurement
    src._ring = None  # noqa: SLF001
    batch = src._batch  # noqa: SLF001 - _frame (the perf buffer's callback too) fills it

    def on_ring(_ctx: object, data: int, size: int) -> int:
        src._frame(data, size)  # noqa: SLF001
        return -1 if len(batch) >= 8192 else 0

    bpf = src._bpf  # noqa: SLF001
    bpf[b"events"].open_ring_buffer(on_ring)
    frames = 0
    while True:
        bpf.ring_buffer_consume()
        if not batch:
            return frames
        batch.sort(key=lambda f: f[0])
        frames += len(batch)
        batch.clear()


def measure(n: int, how: str) -> tuple[int, float]:
    from shadowtap.capture.ebpf import EbpfSource

    src = EbpfSource("lo", (PORT,), buffer_mb=64)
    src.open()
    try:
        traffic(n)
        time.sleep(0.2)
        t0 = time.process_time()
        frames = drain_direct(src) if how == "direct" else drain_bcc(src)
        cpu = time.process_time() - t0
        matched, lost, _t, _b = src.counters()
        if lost or frames != matched:
            sys.exit(f"{how}: {frames} frames of {matched} matched, {lost} lost")
        return frames, cpu
    finally:
        src.close()


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("bench_ringbuf: run as root")
    if os.environ.get("BENCH_RINGBUF_NS") != "1":
        env = dict(os.environ, BENCH_RINGBUF_NS="1")
        sys.exit(subprocess.call(["unshare", "-n", sys.executable, *sys.argv], env=env))
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    print(f"# bench_ringbuf {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"load {os.getloadavg()[0]:.2f}, {n} writes a round")  # fmt: skip
    best: dict[str, float] = {}
    for r in range(rounds):
        for how in ("bcc-callback", "direct"):
            frames, cpu = measure(n, how)
            us = cpu / frames * 1e6
            best[how] = min(best.get(how, us), us)
            print(f"round {r + 1} {how:13} {frames:7} frames {cpu:6.3f} s CPU {us:6.2f} us/frame")
    ratio = best["direct"] / best["bcc-callback"]
    print(
        f"best: bcc-callback {best['bcc-callback']:.2f} us/frame, direct {best['direct']:.2f} "
        f"us/frame: {ratio:.2f} of the callback's"
    )


if __name__ == "__main__":
    main()
