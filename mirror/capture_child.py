"""The live mirror's capture process: capture/live.py's loop, the Extractor and the admission of
each request (Policy, sampling, rate limit), in a child process of its own (shadowtap/procs.py),
talking to the mirror's event loop (mirror/run.py) over a pipe.

Why a process and not a thread: both halves are CPU-bound Python (packets -> HTTP on one side;
sending, pairing and comparing on the other). In one process they share one GIL, so the mirror
could never use more than one core, and every system call of one thread handed the GIL to the
other for a switch interval: lag of tens of milliseconds at a few thousand requests a second.

The pipe carries frames (shadowtap/codec.py's framing: a length, then a payload), each a batch of
records (``encode_batch``: the records' codec tuples in one marshal): ``Pending`` (a request to
send), ``Captured`` (an exchange rebuilt, and whether its request was admitted),
``CaptureFigures`` (the capture side's counters, once a second and at the end), ``Started`` (the
hooks are attached). The codec is generated from the record classes, so a field added to
Exchange or Prepared reaches the mirror with no change here. The child's error, if any, comes
back on its procs channel (``Child.result``) as the same ShadowtapError class.

Why batches: a frame a record cost a marshal call, a length prefix and a copy on this side and a
split, a copy and a marshal call on the other, twice a request; a batch pays them once, and the
objects its records share (a connection's endpoints, the Policy's remembered head of the outgoing
requests) are written and rebuilt once (scripts/profile_mirror.py's 30,000 requests: 18.1 MB
through the pipe instead of 26.0, ~2 us a request less over both processes).

Never blocking the capture: the pipe is non-blocking (and enlarged); records that do not fit wait
in a bounded outbox, and past its bound the oldest record is dropped and counted (``Outbox``).
When the mirror's process goes away, writes fail (EPIPE) and the capture stops, detaching its
hooks; the kernel also sends us SIGTERM on the parent's death (PR_SET_PDEATHSIG), which does the
same.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import marshal
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass
from typing import Any

from shadowtap.codec import FrameReader, frame
from shadowtap.errors import ShadowtapError
from shadowtap.frozen import fast_init
from shadowtap.mirror.pairing import body_size
from shadowtap.mirror.sender import Admission, Outcome, Pending, TokenBucket
from shadowtap.procs import (
    Child,
    ChildContext,
    ChildDied,
    Signals,
    codec_for,
    enlarge_pipe,
    spawn,
)
from shadowtap.records import Exchange
from shadowtap.replay.policy import Policy, Prepared, Skip, SkipReason

# Bytes asked for the pipe (``procs.enlarge_pipe``). Without CAP_SYS_RESOURCE the kernel refuses
# more than /proc/sys/fs/pipe-max-size (1 MiB by default): then that is asked, never the default
# 64 KiB, which holds ~70 requests' frames (a backlog behind it drained ~70 a second).
PIPE_SIZE = 4 << 20
WRITE_BYTES = 256 << 10  # records' weight (see Outbox) encoded into one frame and write, at most
BATCH_RECORDS = 256  # records in one frame, at most
MAX_OUTBOX_BYTES = 256 << 20  # records' weight waiting for the pipe, at most (bodies up to 1 MiB)
# What a record weighs beside its bodies (its heads, ids, numbers): the bench's records encode to
# ~400 bytes. Heads over this go uncounted by the byte bound; the count bound holds whatever
# they weigh (and the capture's --max-head bounds each).
RECORD_WEIGHT = 1 << 10
# Seconds between two reads of the capture under load (capture/live.py's CaptureConfig.coalesce):
# a batch of packets, one write to the pipe and one wake-up of the mirror's loop every COALESCE,
# not one of each a packet (at 3k requests/s, ~9k packets/s: the wake-ups and their system calls
# were a quarter of the mirror's CPU). The lag it adds is at most this.
COALESCE = 0.001


# ---------------------------------------------------------------------------------- the frames
@fast_init
@dataclass(frozen=True, slots=True)
class Captured:
    """An exchange rebuilt from the wire; ``admitted``: its request went to the shadow."""

    exchange: Exchange
    admitted: bool


@dataclass(frozen=True, slots=True)
class Started:
    """The source is open and its hooks attached."""

    describe: str
    reason: str


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


CODEC = codec_for([Pending, Prepared, Captured, CaptureFigures, Started])


def encode_batch(records: list[Any]) -> bytes:
    """A frame's payload: ``records`` (of CODEC's classes), in order."""
    encode = CODEC.encode
    return marshal.dumps([encode(r) for r in records])


def decode_batch(payload: bytes) -> list[Any]:
    """A frame's payload as the records it carries, in order."""
    decode = CODEC.decode
    return [decode(t) for t in marshal.loads(payload)]


# ---------------------------------------------------------------------------------- the child
class Outbox:
    """Records to the mirror's process, never blocking: a non-blocking pipe, and behind it a deque
    of at most ``max_records`` records weighing at most ``max_bytes`` (a record's weight: its
    bodies, or a request's outgoing bytes, and RECORD_WEIGHT); past that the oldest records are
    dropped and counted. ``put`` has DropOldestQueue's contract for requests
    (returns the Pending items dropped), so Admission can forget an id whose request will never
    be sent. Records stay records (droppable) until ``flush`` encodes those the pipe is offered,
    up to BATCH_RECORDS and WRITE_BYTES a frame (``encode_batch``)."""

    def __init__(self, fd: int, max_records: int, max_bytes: int = MAX_OUTBOX_BYTES) -> None:
        self.fd = fd
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.bytes = 0
        self.dropped_requests = 0
        self.dropped_exchanges = 0
        self.broken = False
        self._records: deque[tuple[Any, int, Pending | None]] = deque()  # (record, weight, Pending)
        self._partial = b""

    def put(self, item: Pending) -> Sequence[Pending]:
        return self._push((item, len(item.outgoing.wire) + RECORD_WEIGHT, item))

    def put_exchange(self, ex: Exchange, admitted: bool) -> None:
        self._push((Captured(ex, admitted), body_size(ex) + RECORD_WEIGHT, None))

    def put_record(self, obj: Any) -> None:
        self._push((obj, RECORD_WEIGHT, None))

    def _push(self, entry: tuple[Any, int, Pending | None]) -> Sequence[Pending]:
        """Queue (record, weight, the Pending or None); it goes out at the next ``flush``: the
        capture loop flushes once per batch of packets read (``on_batch``), so a batch's records
        cost one frame, one write and one wake-up of the mirror's loop, not one each."""
        records = self._records
        records.append(entry)
        self.bytes += entry[1]
        if len(records) <= self.max_records and self.bytes <= self.max_bytes:
            return ()
        dropped: list[Pending] = []
        while len(records) > 1 and (
            len(records) > self.max_records or self.bytes > self.max_bytes
        ):
            _, old_weight, old = records.popleft()
            self.bytes -= old_weight
            if old is None:
                self.dropped_exchanges += 1
            else:
                self.dropped_requests += 1
                dropped.append(old)
        return dropped

    @property
    def pending(self) -> bool:
        """Records the pipe has not taken yet (and the pipe is not broken)."""
        return bool(self._partial or self._records) and not self.broken

    def flush(self, *, block: bool = False) -> None:
        """Write what the pipe takes now (all of it with ``block``, as at the end): the queued
        records encoded a frame at a time (records not yet encoded stay droppable)."""
        records = self._records
        while (self._partial or records) and not self.broken:
            if not self._partial:
                if len(records) <= BATCH_RECORDS and self.bytes <= WRITE_BYTES:
                    batch = [entry[0] for entry in records]  # all of them: the usual case
                    records.clear()
                    self.bytes = 0
                else:
                    batch = []
                    size = 0
                    while records and size < WRITE_BYTES and len(batch) < BATCH_RECORDS:
                        record, weight, _ = records.popleft()
                        batch.append(record)
                        size += weight
                    self.bytes -= size
                self._partial = frame(encode_batch(batch))
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


def make_decide(cfg: Any, policy: Policy, own: Container[str]) -> Callable[[Any], Any]:
    """Admission's decision for one RequestEvent: the shadow's own traffic (when the shadow is
    reached through the captured interface on a captured port) is never mirrored; then the Policy
    (filters, safety, consistent sampling, rewriting); then ``--percent`` per request."""
    cut = cfg.percent * 10_000  # of 1_000_000
    per_request = cfg.sample_per_request and cfg.percent < 100.0

    def decide(ev: Any) -> tuple[Prepared | None, tuple[Outcome, str] | None]:
        if ev.client in own:  # a copy we sent (its local port is one of ours: OwnPorts)
            return None, (Outcome.OWN_TRAFFIC, "own_traffic")
        # positional (id, client, server, index, request, response): cheaper than keywords
        ex = Exchange(ev.exchange_id, ev.client, ev.server, ev.index, ev.request, None)
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


def child_main(ctx: ChildContext, fd: int, cfg: Any, policy: Policy, own: Container[str]) -> None:
    """The capture process. Ends when ``ctx.stop`` is set (the parent's Stop or its death, or
    SIGTERM), when the pipe breaks, or when the capture fails (raised: procs reports it)."""
    from shadowtap.capture.extractor import Extractor
    from shadowtap.capture.live import Backend, CaptureConfig, run_capture

    stop = ctx.stop
    fl = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, fl | os.O_NONBLOCK)
    enlarge_pipe(fd, PIPE_SIZE)
    outbox = Outbox(fd, max_records=max(2 * cfg.queue, 20_000))
    bucket = TokenBucket(cfg.rate_limit) if cfg.rate_limit else None
    admission = Admission(
        outbox,  # type: ignore[arg-type]  # an Outbox is the queue's put side
        make_decide(cfg, policy, own),
        rate_limit=bucket,  # type: ignore[arg-type]
        max_admitted=max(20 * cfg.queue, 100_000),
    )
    drops = 0

    def figures(final: bool = False) -> CaptureFigures:
        return CaptureFigures(
            admission.seen,
            tuple((o.value, n) for o, n in admission.counts.items()),
            tuple(admission.skip_reasons.items()),
            drops,
            outbox.dropped_requests,
            outbox.dropped_exchanges,
            final,
        )

    def on_exchange(ex: Exchange) -> None:
        outbox.put_exchange(ex, admission.take_admitted(ex.id))

    def on_batch() -> bool:
        outbox.flush()
        if outbox.broken:
            stop.set()
        return outbox.pending  # the capture loop offers it again soon, packets or not

    def on_started(src: Any, reason: str) -> None:
        gc.collect()
        gc.freeze()  # bcc, the compiled program, the imports: not the cyclic GC's business
        outbox.put_record(Started(src.describe(), reason))
        outbox.flush()

    def on_figures(fig: Any) -> None:
        nonlocal drops
        drops = int(fig.kernel_drops) + int(fig.buffer_drops)
        outbox.put_record(figures())
        outbox.flush()
        if outbox.broken:
            stop.set()

    try:
        extractor = Extractor(
            ports=cfg.ports,
            bpf_filter=cfg.bpf_filter,
            max_body=cfg.max_body,
            redactor=None,
            on_request=admission.offer,  # type: ignore[arg-type]  # its Outcome is ignored
            max_held_exchanges=256,
        )
        ccfg = CaptureConfig(
            iface=cfg.iface,
            ports=cfg.ports,
            backend=Backend(cfg.backend),
            immediate=True,
            coalesce=COALESCE,
        )
        summary = run_capture(
            ccfg,
            extractor,
            stop,
            on_exchange,
            on_figures=on_figures,
            on_started=on_started,
            on_batch=on_batch,
        )
        drops = summary.source.drops
        outbox.put_record(figures(final=True))
    finally:
        outbox.flush(block=True)
        os.close(fd)


# ------------------------------------------------------------------------- the parent's handle
class CaptureProcess:
    """The mirror's handle on its capture process: ``start`` forks it (before any thread or event
    loop exists), ``read`` hands each record of the pipe to ``on_record`` from the event loop and
    returns a future done when the pipe closes, ``stop`` asks it to end (hooks detached, last
    exchanges and final figures sent), ``outcome`` its error once it ended, ``reap`` waits for it
    (SIGTERM, then SIGKILL, if stuck)."""

    def __init__(self) -> None:
        self.child: Child | None = None
        self._data_fd = -1
        self._transport: Any = None

    def start(self, cfg: Any, policy: Policy, own: Container[str]) -> None:
        rfd, wfd = os.pipe()
        # SIGINT: Ctrl-C reaches the whole group, the parent decides; SIGTERM (ours at the end,
        # or the kernel's when the parent dies) stops it cleanly: hooks detached.
        self.child = spawn(
            child_main,
            wfd,
            cfg,
            policy,
            own,
            name="capture",
            codec=CODEC,
            signals={signal.SIGTERM: Signals.STOP},
            die_with_parent=signal.SIGTERM,
            gc_batch=True,
            watch=True,
            close_in_child=(rfd,),
        )
        os.close(wfd)
        self._data_fd = rfd

    async def read(self, on_record: Callable[[Any], None]) -> Any:
        import asyncio

        loop = asyncio.get_running_loop()
        done = loop.create_future()
        reader = FrameReader()

        class Reader(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                for payload in reader.feed(data):
                    for record in decode_batch(payload):
                        on_record(record)

            def connection_lost(self, exc: Exception | None) -> None:
                if not done.done():
                    done.set_result(None)

        self._transport, _ = await loop.connect_read_pipe(
            Reader, os.fdopen(self._data_fd, "rb", buffering=0)
        )
        return done

    def outcome(self, timeout: float = 5.0) -> ShadowtapError | None:
        """Once the pipe has closed: the child's error, or None when it ended cleanly."""
        if self.child is None:
            return None
        try:
            self.child.result(timeout)
        except ChildDied:
            code = self.child.proc.exitcode
            return ShadowtapError(
                f"the capture process did not end cleanly (exit status {code}); the report covers "
                "what was mirrored until then"
            )
        except TimeoutError:
            return None  # still ending: reap() takes care of it
        except ShadowtapError as exc:
            return exc
        return None

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()

    def close_pipe(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def reap(self) -> None:
        if self.child is not None:
            self.child.reap(30)
