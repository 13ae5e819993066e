"""The live mirror's capture process: capture/live.py's loop, the Extractor and the admission of each
request (Policy, sampling, rate limit), in a child process of its own, talking to the mirror's
event loop (mirror/run.py) over a pipe.

Why a process and not a thread: both halves are CPU-bound Python (packets -> HTTP on one side;
sending, pairing and comparing on the other). In one process they share one GIL, so the mirror
could never use more than one core, and every system call of one thread handed the GIL to the
other for a switch interval: lag of tens of milliseconds at a few thousand requests a second.

The pipe carries frames: a 4-byte length, then a ``marshal``-encoded tuple whose first item says
what it is (``REQ``, ``EXC``, ``STATS``, ``STARTED``, ``ERROR``). marshal is the fastest
serialisation of tuples of str/bytes/int/float CPython has (a few microseconds for a record, where
pickling the frozen dataclasses costs 20-40); both ends are the same interpreter.

Never blocking the capture: the pipe is non-blocking (and enlarged); frames that do not fit wait in
a bounded outbox, and past its bound the oldest frame is dropped and counted (``Outbox``). When the
mirror's process goes away, writes fail (EPIPE) and the capture stops, detaching its hooks; the
kernel also sends us SIGTERM on the parent's death (PR_SET_PDEATHSIG), which does the same.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import gc
import marshal
import os
import signal
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Any

from shadowtap.mirror.sender import Admission, Outcome, Pending, TokenBucket
from shadowtap.replay.policy import Policy, Prepared, Skip, SkipReason
from shadowtap.records import Exchange, Request, Response

REQ, EXC, STATS, STARTED, ERROR = 1, 2, 3, 4, 5
_LEN = struct.Struct("<I")
PIPE_SIZE = 4 << 20  # bytes asked for the pipe (F_SETPIPE_SZ); the kernel may give less
MAX_OUTBOX_BYTES = 256 << 20  # frames waiting for the pipe, at most (bodies can be 1 MiB each)
_F_SETPIPE_SZ = 1031
_PR_SET_PDEATHSIG = 1


# ---------------------------------------------------------------------------------- encoding
def _msg(m: Request | Response) -> tuple[Any, ...]:
    return (m.ts, m.end_ts, m.version, m.headers, m.body, m.body_len, m.body_truncated, m.decoded_len)


def encode_exchange(ex: Exchange, admitted: bool) -> bytes:
    req, resp = ex.request, ex.response
    return marshal.dumps((
        EXC, admitted, ex.id, ex.client, ex.server, ex.index,
        None if req is None else (*_msg(req), req.method, req.target),
        None if resp is None else (*_msg(resp), resp.status, resp.reason),
        ex.anomalies, ex.ttfb_ms, ex.total_ms, ex.chunks,
    ))


def _decode_exchange(t: tuple[Any, ...]) -> tuple[Exchange, bool]:
    _, admitted, xid, client, server, index, rq, rs, anomalies, ttfb, total, chunks = t
    req = None if rq is None else Request(
        ts=rq[0], end_ts=rq[1], version=rq[2], headers=rq[3], body=rq[4], body_len=rq[5],
        body_truncated=rq[6], decoded_len=rq[7], method=rq[8], target=rq[9])
    resp = None if rs is None else Response(
        ts=rs[0], end_ts=rs[1], version=rs[2], headers=rs[3], body=rs[4], body_len=rs[5],
        body_truncated=rs[6], decoded_len=rs[7], status=rs[8], reason=rs[9])
    return Exchange(id=xid, client=client, server=server, index=index, request=req, response=resp,
                    anomalies=anomalies, ttfb_ms=ttfb, total_ms=total, chunks=chunks), admitted


def encode_request(item: Pending) -> bytes:
    p: Prepared = item.outgoing
    return marshal.dumps((REQ, item.wire_ts, item.admitted, p.exchange_id, p.method, p.target, p.url,
                          p.headers, p.body, p.wire, p.lane, p.index))


def _decode_request(t: tuple[Any, ...]) -> Pending:
    _, wire_ts, admitted, xid, method, target, url, headers, body, wire, lane, index = t
    p = Prepared(exchange_id=xid, method=method, target=target, url=url, headers=headers, body=body,
                 wire=wire, lane=lane, index=index)
    return Pending(xid, p, wire_ts, admitted)


@dataclass(frozen=True, slots=True)
class CaptureFigures:
    """The capture side's counters, sent once a second and at the end."""

    seen: int = 0
    counts: tuple[tuple[str, int], ...] = ()  # Outcome value -> count
    skip_reasons: tuple[tuple[str, int], ...] = ()
    capture_drops: int = 0  # kernel + ring buffer
    outbox_dropped_requests: int = 0
    outbox_dropped_exchanges: int = 0
    final: bool = False

    def count(self, outcome: Outcome) -> int:
        return dict(self.counts).get(outcome.value, 0)


class Decoder:
    """Frames in (any split), decoded records out. Pure."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[Any, ...]]:
        buf = self._buf
        buf += data
        out = []
        pos = 0
        n = len(buf)
        while n - pos >= 4:
            (size,) = _LEN.unpack_from(buf, pos)
            if n - pos - 4 < size:
                break
            out.append(marshal.loads(bytes(buf[pos + 4:pos + 4 + size])))
            pos += 4 + size
        if pos:
            del buf[:pos]
        return out


def decode(t: tuple[Any, ...]) -> Any:
    """A frame's tuple as what it stands for: (kind, object)."""
    kind = t[0]
    if kind == REQ:
        return REQ, _decode_request(t)
    if kind == EXC:
        return EXC, _decode_exchange(t)
    if kind == STATS:
        return STATS, CaptureFigures(*t[1:])
    return kind, t[1:]


# ---------------------------------------------------------------------------------- the child
class Outbox:
    """Frames to the mirror's process, never blocking: a non-blocking pipe, and behind it a deque of
    at most ``max_frames`` frames and ``max_bytes`` bytes; past that the oldest frames are dropped
    and counted. ``put`` has DropOldestQueue's contract for requests (returns the Pending items
    dropped), so Admission can forget an id whose request will never be sent."""

    def __init__(self, fd: int, max_frames: int, max_bytes: int = MAX_OUTBOX_BYTES) -> None:
        self.fd = fd
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.bytes = 0
        self.dropped_requests = 0
        self.dropped_exchanges = 0
        self.broken = False
        self._frames: deque[tuple[bytes, Any]] = deque()  # (frame, Pending or None)
        self._partial = b""

    def put(self, item: Pending) -> list[Pending]:
        return self._push(encode_request(item), item)

    def put_exchange(self, ex: Exchange, admitted: bool) -> None:
        self._push(encode_exchange(ex, admitted), None)

    def put_raw(self, obj: tuple[Any, ...]) -> None:
        self._push(marshal.dumps(obj), None)

    def _push(self, payload: bytes, item: Pending | None) -> list[Pending]:
        dropped: list[Pending] = []
        frame = _LEN.pack(len(payload)) + payload
        self._frames.append((frame, item))
        self.bytes += len(frame)
        while len(self._frames) > 1 and (len(self._frames) > self.max_frames or self.bytes > self.max_bytes):
            old_frame, old = self._frames.popleft()
            self.bytes -= len(old_frame)
            if old is None:
                self.dropped_exchanges += 1
            else:
                self.dropped_requests += 1
                dropped.append(old)
        self.flush()
        return dropped

    def flush(self, *, block: bool = False) -> None:
        """Write what the pipe takes now (all of it with ``block``, as at the end)."""
        while (self._partial or self._frames) and not self.broken:
            if not self._partial:
                self._partial = self._frames.popleft()[0]
                self.bytes -= len(self._partial)
            try:
                n = os.write(self.fd, self._partial)
            except BlockingIOError:
                if not block:
                    return
                time.sleep(0.001)
                continue
            except OSError as exc:
                if exc.errno in (errno.EPIPE, errno.EBADF):
                    self.broken = True  # the mirror's process is gone
                    return
                raise
            self._partial = self._partial[n:]


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def make_decide(cfg: Any, policy: Policy, own: Container[str]) -> Callable[[Any], Any]:
    """Admission's decision for one RequestEvent: the shadow's own traffic (when the shadow is
    reached through the captured interface on a captured port) is never mirrored; then the Policy
    (filters, safety, consistent sampling, rewriting); then ``--percent`` per request."""
    cut = cfg.percent * 10_000  # of 1_000_000
    per_request = cfg.sample_per_request and cfg.percent < 100.0

    def decide(ev: Any) -> tuple[Prepared | None, tuple[Outcome, str] | None]:
        if ev.client in own:  # a copy we sent (its local port is one of ours: OwnPorts)
            return None, (Outcome.OWN_TRAFFIC, "own_traffic")
        ex = Exchange(id=ev.exchange_id, client=ev.client, server=ev.server, index=ev.index,
                      request=ev.request, response=None)
        d = policy.decide(ex)
        if isinstance(d, Skip):
            if d.reason is SkipReason.SAMPLED_OUT:
                return None, (Outcome.SAMPLED_OUT, "sampled_out")
            return None, (Outcome.SKIPPED, d.reason.value)
        if per_request and int(ev.exchange_id[:8], 16) % 1_000_000 >= cut:
            # The id is a hash (uniform), so this samples each request on its own, as Istio's
            # mirrorPercentage does, and the same capture gives the same choice every time.
            return None, (Outcome.SAMPLED_OUT, "sampled_out")
        return d, None

    return decide


def child_main(fd: int, stop_fd: int, cfg: Any, policy: Policy, own: Container[str]) -> None:
    """The capture process. Ends when ``stop_fd`` becomes readable (the parent wrote to it or
    closed it), on SIGTERM, when the pipe breaks, or when the capture fails (an ERROR frame)."""
    from shadowtap.capture.live import Backend, CaptureConfig, run_capture
    from shadowtap.capture.extractor import Extractor

    _die_with_parent()
    stop = threading.Event()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def watch_stop() -> None:
        try:
            os.read(stop_fd, 1)  # returns on a byte or on EOF (the parent closed it or died)
        except OSError:
            pass
        stop.set()

    threading.Thread(target=watch_stop, daemon=True, name="stop-watch").start()
    fl = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, fl | os.O_NONBLOCK)
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass
    outbox = Outbox(fd, max_frames=max(2 * cfg.queue, 20_000))
    bucket = TokenBucket(cfg.rate_limit) if cfg.rate_limit else None
    admission = Admission(outbox, make_decide(cfg, policy, own), rate_limit=bucket,  # type: ignore[arg-type]
                          max_admitted=max(20 * cfg.queue, 100_000))
    drops = 0

    def figures(final: bool = False) -> tuple[Any, ...]:
        return (STATS, admission.seen, tuple((o.value, n) for o, n in admission.counts.items()),
                tuple(admission.skip_reasons.items()), drops, outbox.dropped_requests,
                outbox.dropped_exchanges, final)

    def on_exchange(ex: Exchange) -> None:
        outbox.put_exchange(ex, admission.take_admitted(ex.id))
        if outbox.broken:
            stop.set()

    def on_started(src: Any, reason: str) -> None:
        gc.collect()
        gc.freeze()  # bcc, the compiled program, the imports: not the cyclic GC's business
        outbox.put_raw((STARTED, src.describe(), reason))

    def on_figures(fig: Any) -> None:
        nonlocal drops
        drops = int(fig.kernel_drops) + int(fig.buffer_drops)
        outbox.put_raw(figures())
        if outbox.broken:
            stop.set()

    def on_request(ev: Any) -> None:
        admission.offer(ev)

    try:
        extractor = Extractor(ports=cfg.ports, bpf_filter=cfg.bpf_filter, max_body=cfg.max_body,
                              redactor=None, on_request=on_request, max_held_exchanges=256)
        ccfg = CaptureConfig(iface=cfg.iface, ports=cfg.ports, backend=Backend(cfg.backend), immediate=True)
        summary = run_capture(ccfg, extractor, stop, on_exchange, on_figures=on_figures, on_started=on_started)
        drops = summary.source.drops
        outbox.put_raw(figures(final=True))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
        outbox.put_raw((ERROR, type(exc).__name__, getattr(exc, "message", str(exc)),
                        getattr(exc, "hint", None), getattr(exc, "exit_code", 1)))
    finally:
        outbox.flush(block=True)
        os.close(fd)
