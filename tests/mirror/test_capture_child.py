"""mirror/capture_child.py: the frames between the capture process and the mirror's loop, over a
real pipe."""

import fcntl
import os
import threading
import time
from dataclasses import replace

from shadowtap.capture import live
from shadowtap.capture.source import SourceStats
from shadowtap.codec import FrameReader, frame
from shadowtap.mirror.capture_child import (
    BATCH_RECORDS,
    PIPE_SIZE,
    Captured,
    CaptureFigures,
    Outbox,
    Started,
    decode_batch,
    encode_batch,
)
from shadowtap.mirror.sender import Pending
from shadowtap.procs import enlarge_pipe
from shadowtap.records import Exchange, H2Stream, Request, Response
from shadowtap.replay.policy import Policy, Target


def _exchange(i: int = 1) -> Exchange:
    req = Request(
        ts=1.5,
        end_ts=1.6,
        version="HTTP/1.1",
        headers=(("Host", "a"), ("Authorization", "x")),
        body=b"\x00\xffbin",
        body_len=5,
        method="POST",
        target=f"/v1/predict?i={i}",
    )
    resp = Response(
        ts=1.7,
        end_ts=1.8,
        version="HTTP/1.1",
        headers=(("Content-Type", "application/json"),),
        body=b'{"a": 1}',
        body_len=8,
        decoded_len=8,
        status=201,
        reason="Created",
    )
    return Exchange(
        id=f"{i:016x}",
        client="10.0.0.1:4000",
        server="[::1]:8080",
        index=i,
        request=req,
        response=resp,
        anomalies=("gap",),
        ttfb_ms=0.1,
        total_ms=0.3,
        h2=H2Stream(stream_id=3),
        chunks=((4, 1.75), (8, 1.8)),  # a streamed body's timed pieces travel too
    )


def test_records_survive_the_frames_whatever_the_splits():
    ex = _exchange()
    half = Exchange(id="h", client="c:1", server="s:2", index=0, request=ex.request, response=None)
    prepared = Policy(target=Target.parse("http://10.9.9.9:81"), allow_unsafe=True).decide(ex)
    item = Pending(ex.id, prepared, 1.6)
    sent = [
        Captured(ex, True),
        item,
        Captured(half, False),
        Started("eBPF on x", "auto"),
        CaptureFigures(seen=3, counts=(("queued", 2),), final=True),
    ]
    stream = frame(encode_batch(sent[:2])) + frame(encode_batch(sent[2:]))
    for step in (1, 3, 7, len(stream)):
        reader = FrameReader()
        out = []
        for i in range(0, len(stream), step):
            out += [r for p in reader.feed(stream[i : i + step]) for r in decode_batch(p)]
        assert out == sent
        assert out[1].outgoing.wire == prepared.wire and out[0].exchange.h2 == ex.h2


def test_outbox_never_blocks_and_drops_the_oldest_when_nobody_reads():
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETFL, fcntl.fcntl(w, fcntl.F_GETFL) | os.O_NONBLOCK)
    box = Outbox(w, max_records=100)
    prepared = Policy(target=Target.parse("http://10.9.9.9:81")).decide(
        Exchange(
            id="x",
            client="c:1",
            server="s:2",
            index=0,
            request=Request(
                ts=1,
                end_ts=1,
                version="HTTP/1.1",
                headers=(),
                body=b"b" * 4000,
                body_len=4000,
                method="GET",
                target="/",
            ),
            response=None,
        )
    )
    t0 = time.monotonic()
    dropped = [
        box.put(Pending(str(i), replace(prepared, exchange_id=str(i)), 1.0))
        for i in range(2000)
    ]  # ~8 MB: more than a pipe holds
    assert time.monotonic() - t0 < 5
    lost = [d.exchange_id for ds in dropped for d in ds]
    assert box.dropped_requests == len(lost) > 0
    assert lost == sorted(lost, key=int)  # oldest first
    # what was not dropped arrives, in order, once the reader reads
    reader = FrameReader()
    got: list[str] = []
    fcntl.fcntl(r, fcntl.F_SETFL, fcntl.fcntl(r, fcntl.F_GETFL) | os.O_NONBLOCK)
    while True:
        box.flush()
        try:
            data = os.read(r, 1 << 20)
        except BlockingIOError:
            if not box._records and not box._partial:
                break
            continue
        got += [r.exchange_id for p in reader.feed(data) for r in decode_batch(p)]
    assert len(got) + len(lost) == 2000 and got == sorted(got, key=int)
    os.close(r)
    box.put(Pending("late", prepared, 1.0))
    box.flush()  # the reader is gone: broken, not an exception
    assert box.broken
    os.close(w)


def test_the_pipe_is_enlarged_to_what_the_kernel_allows():
    # Without CAP_SYS_RESOURCE 4 MiB is refused; the pipe then gets pipe-max-size, not 64 KiB.
    r, w = os.pipe()
    try:
        with open("/proc/sys/fs/pipe-max-size") as f:
            allowed = int(f.read())
        size = enlarge_pipe(w, PIPE_SIZE)
        assert size == fcntl.fcntl(w, fcntl.F_GETPIPE_SZ) >= min(PIPE_SIZE, allowed)
    finally:
        os.close(r)
        os.close(w)


def test_a_backlog_moves_on_when_the_packets_stop(monkeypatch):
    """The capture process's frames that the pipe did not take are offered again every
    BACKLOG_POLL, packets or not (they waited for the next packet, or the next second)."""
    stop = threading.Event()
    waits: list[float] = []
    backlog = [True, True, True, False]  # on_batch's answers: the pipe takes it at the 4th
    batches: list[bool] = []

    class Src:
        name, linktype = "tls", 1  # no interface to check

        def read(self, wait: float) -> list:
            waits.append(wait)
            if len(waits) == 6:
                stop.set()
            return [(1_000_000, b"x", 1)] if len(waits) == 1 else []

        def flush(self) -> list:
            return []

        def stats(self) -> SourceStats:
            return SourceStats()

        def describe(self) -> str:
            return "fake"

        def close(self) -> None:
            pass

    class Extractor:
        def feed(self, *_a: object) -> list:
            return []

        def finish(self) -> list:
            return []

    def on_batch() -> bool:
        batches.append(True)
        return backlog.pop(0)

    monkeypatch.setattr(live, "open_source", lambda _cfg: (Src(), "test"))
    monkeypatch.setattr(live, "_preflight", lambda _cfg: None)
    live.run_capture(
        live.CaptureConfig(iface="x", ports=(1,)), Extractor(), stop, on_batch=on_batch
    )
    assert len(batches) == 4  # the packet's batch, then three empty reads while it was behind
    assert waits[:6] == [live.READ_TIMEOUT] + [live.BACKLOG_POLL] * 3 + [live.READ_TIMEOUT] * 2


def test_a_flush_sends_its_records_as_frames_of_a_batch_each_in_order():
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETFL, fcntl.fcntl(w, fcntl.F_GETFL) | os.O_NONBLOCK)
    enlarge_pipe(w, PIPE_SIZE)
    box = Outbox(w, max_records=10_000)
    n = 2 * BATCH_RECORDS + 10
    for i in range(n):
        box.put_exchange(_exchange(i), admitted=i % 2 == 0)
    box.put_record(CaptureFigures(seen=n, final=True))
    box.flush()
    assert not box.pending and box.bytes == 0
    os.close(w)
    data = b""
    while chunk := os.read(r, 1 << 20):
        data += chunk
    os.close(r)
    batches = [decode_batch(p) for p in FrameReader().feed(data)]
    # frames of at most BATCH_RECORDS records (and WRITE_BYTES of their weight)
    assert len(batches) >= 3 and all(0 < len(b) <= BATCH_RECORDS for b in batches)
    got = [rec for b in batches for rec in b]
    assert [c.exchange.index for c in got[:-1]] == list(range(n))
    assert [c.admitted for c in got[:3]] == [True, False, True]
    assert got[-1] == CaptureFigures(seen=n, final=True)
