"""Live capture: a source (eBPF or pcap) on an interface feeds the Extractor, the same path as
`extract`, and its outputs (a pcap of the raw frames, the exchanges as JSONL).

Invariant: every frame written to the pcap is fed to the Extractor, in the same order, with the
same timestamp (whole microseconds), and nothing else is: so the exchanges written live are, byte
for byte, what `extract` of the run's pcap gives.

Two loops share the reading (``_read_loop``):
- ``run_capture`` feeds the Extractor in this process as frames arrive: the live mirror's path
  (its on_request must fire in real time), with its own Extractor and ``on_exchange``;
- ``run_spooled_capture`` (`shadowtap capture`) only reads and spools the frames; an extractor
  process runs the Extractor on the spool (capture/spool.py) and writes the JSONL, so the reader
  never waits for the ~40 us an exchange costs, and a burst is extracted late instead of dropped.
``capture`` is the stage function behind `shadowtap capture` (signals, the live figures on a
terminal, the summary).

Costs: per frame one pcap record write (buffered) and one Extractor.feed (in-process), or one
record packed into the spool's batch write (spooled); files are flushed and the figures refreshed
once a second.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import IO, Any

from shadowtap.capture.extractor import ExtractStats
from shadowtap.capture.pcapfile import (
    FILE_HEADER,
    RECORD_HEADER,
    SNAPLEN,
    file_header,
    record_header,
    seconds,
)
from shadowtap.capture.source import Frame, Source, SourceStats
from shadowtap.errors import InputError, PrerequisiteError, ShadowtapError
from shadowtap.jsonl import JsonlWriter, create_private
from shadowtap.procs import Child, ChildContext, ChildDied, codec_for, spawn
from shadowtap.records import Exchange

FLUSH_INTERVAL = 1.0  # seconds: files are flushed at least this often (a crash loses at most this)
READ_TIMEOUT = 0.2  # seconds a read waits for packets, i.e. the loop's reaction time to a stop
# Seconds a read waits for packets while ``on_batch`` says it holds a backlog (the mirror's frames
# the pipe did not take): the backlog is offered again this often, whether packets come or not.
BACKLOG_POLL = 0.001
DRAIN_SECONDS = 30.0  # after a stop, the backlog in the kernel buffer is read for this long at most


class Backend(str, Enum):
    AUTO = "auto"
    EBPF = "ebpf"
    PCAP = "pcap"
    TLS = "tls"  # plaintext at the TLS library's calls (capture/tls.py): no interface


@dataclass(frozen=True, slots=True)
class CaptureConfig:
    """What to capture and where to write it. ``count``: stop once this many exchanges were
    recorded (those still in flight are then completed, so a few more may follow);
    ``rotate_size``: start a new output file when the current one reaches this many bytes."""

    iface: str
    ports: tuple[int, ...] = ()
    backend: Backend = Backend.AUTO
    pcap_out: str | None = None
    jsonl_out: str | None = None
    duration: float | None = None
    count: int | None = None
    rotate_size: int | None = None
    buffer_mb: int = 64
    ringbuf: bool | None = None  # None: probe; False: force the perf buffer (eBPF)
    # Hand each packet over as it arrives (the live mirror). Else the reader wakes in batches:
    # pcap's 100 ms ring blocks, eBPF's every-N-records wake-up with a short poll timeout.
    immediate: bool = False
    # With ``immediate``: at most one read every ``coalesce`` seconds. Packets that come meanwhile
    # wait in the kernel's buffer and are read as one batch: under load the reader (and whatever
    # each batch wakes: the mirror's pipe and event loop) wakes at most 1/coalesce times a second
    # instead of once a packet, for at most ``coalesce`` more latency; a packet after a quiet
    # moment is still read at once.
    coalesce: float = 0.0
    spool_dir: str | None = (
        None  # where `capture` makes its private spool directory (default: $TMPDIR)
    )
    spool_max: int | None = None  # bytes the spool may hold (default: capture/spool.py's)
    sink: str | None = None  # nats://host:port/SUBJECT: exchanges published to JetStream too
    sink_spool: str | None = None  # the sink's disk buffer (default: lake/nats.py's)
    # The TLS source (backend TLS, or auto on a port that speaks TLS): library files to attach to
    # (default: the system's), one process only, which side of the connections to record.
    tls_libs: tuple[str, ...] = ()
    tls_pid: int | None = None
    tls_side: str = "server"

    def __post_init__(self) -> None:
        for p in self.ports:
            if not 0 < p < 65536:
                raise InputError(f"bad port {p}", field="ports")
        if self.rotate_size is not None and self.rotate_size <= 0:
            raise InputError("must be positive", field="rotate_size")
        if self.spool_max is not None and self.spool_max <= 0:
            raise InputError("must be positive", field="spool_max")


@dataclass(frozen=True, slots=True)
class Figures:
    """What the live display shows, once a second."""

    elapsed: float
    packets: int
    bytes: int
    exchanges: int
    exchanges_per_s: float
    kernel_drops: int
    buffer_drops: int
    open_connections: int | None
    backlog_bytes: int = 0  # spooled, not yet extracted
    spool_drops: int = 0  # frames not spooled (the spool's bound, or its disk full)


@dataclass(frozen=True, slots=True)
class CaptureSummary:
    backend: str
    reason: str
    description: str
    elapsed: float
    source: SourceStats
    exchanges: int
    figures: Figures
    extract_stats: Any = None
    pcap_files: tuple[str, ...] = ()
    jsonl_files: tuple[str, ...] = ()
    removed_stale_hooks: int = 0
    spool_drops: int = 0
    spool_error: str | None = None  # the spool's first write error (its disk full), if any


def rotated_name(path: str, n: int) -> str:
    """``out.pcap`` -> ``out.1.pcap``; ``x.jsonl.gz`` -> ``x.1.jsonl.gz``; n == 0 is ``path``."""
    if n == 0:
        return path
    head, base = os.path.split(path)
    stem, dot, ext = base.partition(".")
    return os.path.join(head, f"{stem}.{n}{dot}{ext}" if dot else f"{base}.{n}")


class PcapWriter:
    """Classic pcap (microsecond timestamps), 0600, rotated by size; what tcpdump, tshark and
    tcpreplay read. The frames are written raw: no redaction is possible in a pcap."""

    def __init__(
        self, path: str, linktype: int, *, snaplen: int = SNAPLEN, rotate_size: int | None = None
    ) -> None:
        self.path = path
        self.linktype = linktype
        self.snaplen = snaplen
        self.rotate_size = rotate_size
        self.files: list[str] = []
        self._f: IO[bytes] | None = None
        self._size = 0
        self._open_next()

    def _open_next(self) -> None:
        if self._f is not None:
            self._f.close()
        name = rotated_name(self.path, len(self.files))
        self._f = create_private(name)
        self.files.append(name)
        self._f.write(file_header(self.linktype, self.snaplen))
        self._size = FILE_HEADER.size

    def write(self, ts_us: int, frame: bytes, wire_len: int) -> None:
        assert self._f is not None
        try:
            if self.rotate_size is not None and self._size >= self.rotate_size:
                self._open_next()
            self._f.write(record_header(ts_us, len(frame), wire_len))
            self._f.write(frame)
        except OSError as exc:
            raise InputError(f"cannot write: {exc.strerror or exc}", where=self.files[-1]) from exc
        self._size += RECORD_HEADER.size + len(frame)

    def flush(self) -> None:
        if self._f is not None:
            try:
                self._f.flush()
            except OSError as exc:
                raise InputError(
                    f"cannot write: {exc.strerror or exc}", where=self.files[-1]
                ) from exc

    def close(self) -> None:
        if self._f is not None:
            f, self._f = self._f, None
            try:
                f.close()
            except OSError:
                pass  # already reported by the write or flush that failed


class RotatingJsonl:
    """JsonlWriter (0600, .gz, flushed every second) that starts a new file past ``rotate_size``
    bytes. The size is the file's (one fstat a record: about a microsecond, against the tens the
    Extractor spends on an exchange), so it lags by what the writer buffers (8 KiB; for .gz, what
    the compressor holds)."""

    def __init__(self, path: str, *, rotate_size: int | None = None) -> None:
        self.path = path
        self.rotate_size = rotate_size if path != "-" else None
        self.files: list[str] = [path]
        self.count = 0
        self._w = JsonlWriter(path, flush_interval=FLUSH_INTERVAL)

    def write(self, obj: dict[str, Any]) -> None:
        try:
            self._w.write(obj)
            if self.rotate_size is not None:
                self._maybe_rotate()
        except OSError as exc:
            raise InputError(f"cannot write: {exc.strerror or exc}", where=self.files[-1]) from exc
        self.count += 1

    def _maybe_rotate(self) -> None:
        if self.rotate_size is None or os.path.getsize(self.files[-1]) < self.rotate_size:
            return
        self._w.close()
        name = rotated_name(self.path, len(self.files))
        self.files.append(name)
        self._w = JsonlWriter(name, flush_interval=FLUSH_INTERVAL)

    def flush(self) -> None:
        try:
            self._w.flush()
            self._maybe_rotate()
        except OSError as exc:
            raise InputError(f"cannot write: {exc.strerror or exc}", where=self.files[-1]) from exc

    def close(self) -> None:
        try:
            self._w.close()
        except OSError:
            pass  # already reported by the write or flush that failed


def _check_output(path: str) -> None:
    """An output must be a regular file (or '-' for the JSONL): creating it 0600 must never chmod
    a device such as /dev/null. Its directory must exist and be writable."""
    if path == "-":
        return
    if os.path.exists(path) and not os.path.isfile(path):
        raise InputError("not a regular file (outputs are created 0600)", where=path)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise InputError("cannot write: no such directory", where=path)
    if not os.access(parent, os.W_OK):
        raise InputError("cannot write: permission denied", where=path)


def open_source(config: CaptureConfig) -> tuple[Source, str]:
    """The opened source for ``config.backend`` and why it was chosen (for ``auto``)."""
    if config.backend is Backend.PCAP:
        src = _pcap_source(config)
        src.open()
        return src, "pcap backend requested"
    if config.backend is Backend.TLS:
        return _open_tls(config), "tls backend requested"
    if config.backend is Backend.EBPF:
        src = _ebpf_source(config)
        src.open()
        return src, "ebpf backend requested"
    # auto: TLS when a watched port speaks TLS (its plaintext is only visible there); else eBPF
    # where bcc, the kernel and privileges allow it, else pcap, saying why.
    from shadowtap.capture.tls import tls_ports

    tls = tls_ports(config.ports)
    if tls:
        return _open_tls(config), f"auto: tls, because port {','.join(map(str, tls))} speaks TLS"
    try:
        src = _ebpf_source(config)
        src.open()
        return src, "auto: eBPF (bcc, kernel headers, clsact and privileges present)"
    except PrerequisiteError as exc:
        why = exc.message
    src = _pcap_source(config)
    try:
        src.open()
    except PrerequisiteError as exc:
        raise PrerequisiteError(
            f"no backend can run: eBPF: {why}; pcap: {exc.message}", hint=exc.hint
        ) from exc
    return src, f"auto: pcap, because eBPF is unavailable: {why}"


def _pcap_source(config: CaptureConfig) -> Source:
    """The libpcap source of ``config``, not yet opened."""
    from shadowtap.capture.libpcap import PcapSource

    return PcapSource(
        config.iface, config.ports, buffer_mb=config.buffer_mb, immediate=config.immediate
    )


def _ebpf_source(config: CaptureConfig) -> Source:
    """The eBPF (TC hooks) source of ``config``, not yet opened."""
    from shadowtap.capture.ebpf import EbpfSource

    return EbpfSource(
        config.iface,
        config.ports,
        buffer_mb=config.buffer_mb,
        ringbuf=config.ringbuf,
        immediate=config.immediate,
    )


def _open_tls(config: CaptureConfig) -> Source:
    from shadowtap.capture.tls import Side, TlsSource

    src = TlsSource(
        config.ports,
        libs=config.tls_libs,
        pid=config.tls_pid,
        side=Side(config.tls_side),
        buffer_mb=config.buffer_mb,
        ringbuf=config.ringbuf,
        immediate=config.immediate,
    )
    src.open()
    return src


def _uses_iface(config: CaptureConfig) -> bool:
    """False for the TLS source, which reads at the library: no interface to check."""
    if config.backend is Backend.TLS:
        return False
    return config.backend is not Backend.AUTO or bool(config.iface)


def _open_connections(extractor: Any) -> int | None:
    """Connections the Extractor tracks now (ExtractStats has no such figure: read its
    reassembler)."""
    conns = getattr(getattr(extractor, "reassembler", None), "conns", None)
    return len(conns) if conns is not None else None


def _preflight(config: CaptureConfig) -> None:
    """The interface, then the outputs: a bad name or an unwritable path fails before any hook is
    attached (the pcap, which needs the source's link type, is checked here too)."""
    if _uses_iface(config) and not os.path.isdir(f"/sys/class/net/{config.iface}"):
        raise InputError(
            f"no such interface: {config.iface}", hint="list them with: ip -brief link"
        )
    for path in (config.pcap_out, config.jsonl_out):
        if path:
            _check_output(path)


def _read_loop(
    config: CaptureConfig,
    src: Source,
    stop_event: threading.Event,
    start: float,
    consume: Callable[[list[Frame]], bool],
    on_tick: Callable[[float], None],
    done: Callable[[], bool],
) -> None:
    """Read ``src`` into ``consume`` until ``stop_event``, ``config.duration`` or ``done()``;
    ``on_tick`` once a second (the caller flushes its files and shows its figures); then drain
    what the kernel already holds (a pcap ring block is handed over only when full or after its
    timeout): packets that passed the hooks before the stop are not lost. While ``consume``
    returns True (a backlog it could not hand on), reads wait BACKLOG_POLL at most, so the
    backlog moves on when the packets stop."""
    last_tick = start
    # The duration counts from the first read, not from ``start``: opening a source may take
    # seconds (the TLS source compiles its program) that must not eat the capture's time.
    deadline = time.monotonic() + config.duration if config.duration is not None else None
    coalesce = config.coalesce
    read_at = 0.0  # when the last read that returned packets ended
    backlog = False
    while not stop_event.is_set():
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            break
        if coalesce and now - read_at < coalesce:
            time.sleep(coalesce - (now - read_at))
        wait = BACKLOG_POLL if backlog else READ_TIMEOUT
        if deadline is not None:
            wait = max(0.0, min(wait, deadline - now))
        frames = src.read(wait)
        backlog = consume(frames)
        now = time.monotonic()
        if frames:
            read_at = now
        if now - last_tick >= FLUSH_INTERVAL:
            if src.name != "tls" and not os.path.isdir(f"/sys/class/net/{config.iface}"):
                raise InputError(f"interface {config.iface} went away during the capture")
            on_tick(now)
            last_tick = now
        if done():
            break
    drain_end = time.monotonic() + DRAIN_SECONDS
    while time.monotonic() < drain_end:
        frames = src.read(READ_TIMEOUT)
        if not frames:
            break
        consume(frames)
    consume(src.flush())


def run_capture(
    config: CaptureConfig,
    extractor: Any,
    stop_event: threading.Event | None = None,
    on_exchange: Callable[[Exchange], None] | None = None,
    *,
    on_figures: Callable[[Figures], None] | None = None,
    on_started: Callable[[Source, str], None] | None = None,
    on_batch: Callable[[], bool] | None = None,
) -> CaptureSummary:
    """Capture until ``stop_event`` is set, ``config.duration`` has passed or ``config.count``
    exchanges were recorded; feed every frame to ``extractor`` (capture/extractor.py's Extractor)
    in this process, as it arrives; write the outputs of ``config``; call ``on_exchange`` for each
    exchange, in the order written; ``on_batch`` after each batch of frames read (the mirror
    sends what a batch made in one write), and after every read while it returns True (it holds
    a backlog: its pipe was full). The live mirror's path (its Extractor's on_request fires in
    real time); `shadowtap capture` takes ``run_spooled_capture``.

    The source's hooks are detached, the Extractor finished (exchanges in flight are written) and
    the files closed on every way out, errors included. Safe to run in a thread (it installs no
    signal handlers: the caller maps signals to ``stop_event``)."""
    stop_event = stop_event or threading.Event()
    pcap: PcapWriter | None = None
    jsonl: RotatingJsonl | None = None
    src: Source | None = None
    exchanges = 0
    start = time.monotonic()
    last_tick = start
    last_exchanges = 0
    rate = 0.0
    finished = False

    def emit(batch: list[Exchange]) -> None:
        nonlocal exchanges
        for ex in batch:
            if jsonl is not None:
                jsonl.write(ex.to_json())
            if on_exchange is not None:
                on_exchange(ex)
        exchanges += len(batch)

    try:
        _preflight(config)
        if config.jsonl_out:
            jsonl = RotatingJsonl(config.jsonl_out, rotate_size=config.rotate_size)
        src, reason = open_source(config)
        linktype = src.linktype
        if config.pcap_out:
            pcap = PcapWriter(config.pcap_out, linktype, rotate_size=config.rotate_size)
        if on_started is not None:
            on_started(src, reason)

        feed = extractor.feed

        backlog = False

        def consume(frames: list[Frame]) -> bool:
            nonlocal backlog
            for ts_us, frame, wire_len in frames:
                if pcap is not None:
                    pcap.write(ts_us, frame, wire_len)
                # As capture/pcapfile.py computes it from the record: the same float, bit for bit.
                out = feed(seconds(ts_us), linktype, frame)
                if out:
                    emit(out)
            if on_batch is not None and (frames or backlog):
                backlog = on_batch()
            return backlog

        def on_tick(now: float) -> None:
            nonlocal last_tick, last_exchanges, rate
            if pcap is not None:
                pcap.flush()
            if jsonl is not None:
                jsonl.flush()
            rate = (exchanges - last_exchanges) / (now - last_tick)
            last_tick, last_exchanges = now, exchanges
            if on_figures is not None:
                on_figures(
                    _figures(src, now - start, exchanges, rate, _open_connections(extractor))
                )

        _read_loop(
            config,
            src,
            stop_event,
            start,
            consume,
            on_tick,
            lambda: config.count is not None and exchanges >= config.count,
        )
        finished = True
        emit(extractor.finish())
        elapsed = time.monotonic() - start
        return CaptureSummary(
            backend=src.name,
            reason=reason,
            description=src.describe(),
            elapsed=elapsed,
            source=src.stats(),
            exchanges=exchanges,
            figures=_figures(src, elapsed, exchanges, rate, _open_connections(extractor)),
            extract_stats=getattr(extractor, "stats", None),
            pcap_files=tuple(pcap.files) if pcap else (),
            jsonl_files=tuple(jsonl.files) if jsonl else (),
            removed_stale_hooks=len(getattr(src, "removed_stale", ())),
        )
    except Exception:
        # Lose nothing that can still be kept: the exchanges in flight are completed and written
        # (unless writing is what failed), then the error goes on.
        if src is not None and not finished:
            with contextlib.suppress(Exception):
                emit(extractor.finish())
        raise
    finally:
        if src is not None:
            src.close()
        if pcap is not None:
            pcap.close()
        if jsonl is not None:
            jsonl.close()


def _figures(
    src: Source,
    elapsed: float,
    exchanges: int,
    rate: float,
    open_connections: int | None,
    backlog: int = 0,
    spool_drops: int = 0,
) -> Figures:
    st = src.stats()
    return Figures(
        elapsed,
        st.packets,
        st.bytes,
        exchanges,
        rate,
        st.kernel_drops,
        st.buffer_drops,
        open_connections,
        backlog,
        spool_drops,
    )


# -- the decoupled capture: a reader and an extractor process -----------------------------------
#
# `shadowtap capture` runs the HTTP extraction (~40 us an exchange) in a child process, fed through
# a spool on disk (capture/spool.py), so the reader never waits for it: during a burst the child
# lags and the spool grows; it catches up afterwards, and at the stop the capture returns once the
# child has extracted the whole spool. The child is forked before any hook is attached (it
# inherits no bcc state) and runs as SCHED_IDLE: the service and the reader come first.

DRAIN_REPORT_INTERVAL = 0.5  # seconds between on_draining calls while the child finishes


class ExtractorDied(ShadowtapError):
    """The extractor process ended without finishing (killed, or a bug)."""


@dataclass(frozen=True, slots=True)
class Ready:
    """Extractor process -> reader: the JSONL is open; hooks may be attached."""


@dataclass(frozen=True, slots=True)
class ExtractionDone:
    """The extractor process's result: what it wrote."""

    exchanges: int
    stats: ExtractStats | None
    files: tuple[str, ...]


def _codec() -> Any:
    from shadowtap.capture import spool

    return codec_for([Ready, ExtractionDone, spool.Seal, spool.End, spool.Abort])


def _extraction_child(
    ctx: ChildContext,
    extractor: Any,
    directory: str,
    shared: Any,
    jsonl_out: str | None,
    rotate_size: int | None,
    sink_url: str | None = None,
    sink_spool: str | None = None,
) -> ExtractionDone:
    """The extractor process: the spool's frames -> ``extractor`` -> the JSONL (and the JetStream
    sink at ``sink_url``). Sends Ready once the outputs are open; returns what it wrote (procs
    reports an error the same way)."""
    from shadowtap.capture import spool

    jsonl: RotatingJsonl | None = None
    exchanges = 0
    finished = False
    sink = None  # the JetStream sink (shadowtap/lake/nats.py): its own thread, spooled when away

    def emit(out: list[Exchange]) -> None:
        nonlocal exchanges
        if jsonl is not None:
            for ex in out:
                jsonl.write(ex.to_json())
        if sink is not None:
            for ex in out:
                sink.on_exchange(ex)
        exchanges += len(out)
        shared[spool.EXCHANGES] = exchanges

    try:
        if jsonl_out:
            jsonl = RotatingJsonl(jsonl_out, rotate_size=rotate_size)
        if sink_url:
            from shadowtap.lake.nats import open_sink

            sink = open_sink(sink_url, sink_spool)
        ctx.channel.send(Ready())
        reader = spool.SpoolReader(directory, ctx.channel, shared)
        feed = extractor.feed
        last_tick = time.monotonic()
        packets = 0
        for batch in reader.batches():
            for ts, linktype, frame in batch:
                out = feed(ts, linktype, frame)
                if out:
                    emit(out)
            packets += len(batch)
            shared[spool.PACKETS] = packets
            now = time.monotonic()
            if now - last_tick >= FLUSH_INTERVAL:
                last_tick = now
                if jsonl is not None:
                    jsonl.flush()
                conns = _open_connections(extractor)
                shared[spool.OPEN_CONNECTIONS] = -1 if conns is None else conns
        finished = True
        emit(extractor.finish())
        if jsonl is not None:
            jsonl.close()
        _close_sink(sink)
        if reader.orphaned:
            spool.remove_dir(directory)  # the reader died and cannot remove it
        return ExtractionDone(
            exchanges, getattr(extractor, "stats", None), tuple(jsonl.files) if jsonl else ()
        )
    except BaseException:
        if not finished:
            with contextlib.suppress(BaseException):
                emit(extractor.finish())
        if jsonl is not None:
            jsonl.close()
        _close_sink(sink)
        raise


def _close_sink(sink: Any) -> None:
    """Publish what waits (bounded by the sink's drain timeout), say what became of it."""
    if sink is None:
        return
    from shadowtap import console
    from shadowtap.lake.nats import sink_summary

    with contextlib.suppress(Exception):
        sink.close()
        console.info(sink_summary(sink))


class _Extraction:
    """The reader's handle on the extractor process: its messages, its death."""

    def __init__(self, child: Child, shared: Any) -> None:
        self.child = child
        self.shared = shared

    def died(self) -> ExtractorDied:
        from shadowtap.capture import spool

        return ExtractorDied(
            f"{self.child.died().message} after {self.shared[spool.EXCHANGES]:,} exchanges: the "
            "exchanges "
            "after those were not written",
            hint="the -w pcap, if any, holds every frame: `shadowtap extract` it",
        )

    def _result(self, **kw: Any) -> ExtractionDone:
        try:
            return self.child.result(**kw)  # type: ignore[no-any-return]
        except ChildDied:
            raise self.died() from None

    def wait_ready(self) -> None:
        while True:
            msg = self.child.take(0.2)
            if isinstance(msg, Ready):
                return
            if self.child.exited is not None or not self.child.is_alive():
                self._result(timeout=1)  # raises its error (or its death)
                raise self.died()

    def check(self) -> None:
        """Raise the child's error, or its death, if either happened."""
        c = self.child
        if c.exited is None:
            c.take(0)  # its Exited, if it came
        if c.exited is not None and c.exited.error is not None:
            self._result(timeout=0)
        if c.exited is None and not c.is_alive():
            self._result(timeout=1)

    def finish(self, on_wait: Callable[[], None] | None = None) -> ExtractionDone:
        """Wait for the child's result, calling ``on_wait`` meanwhile (every
        DRAIN_REPORT_INTERVAL)."""
        done = self._result(on_wait=on_wait, interval=DRAIN_REPORT_INTERVAL)
        self.child.proc.join(30)
        return done


def run_spooled_capture(
    config: CaptureConfig,
    extractor: Any,
    stop_event: threading.Event | None = None,
    *,
    on_figures: Callable[[Figures], None] | None = None,
    on_started: Callable[[Source, str], None] | None = None,
    on_draining: Callable[[Figures], None] | None = None,
) -> CaptureSummary:
    """`shadowtap capture`'s loop: this process reads the source into the spool (and the -w pcap);
    an extractor child process runs ``extractor`` on the spool and writes the JSONL. Returns once
    the child has extracted everything spooled (``on_draining`` is called meanwhile, every
    DRAIN_REPORT_INTERVAL seconds, with the backlog in the figures).

    The JSONL is byte for byte what `extract` of the run's pcap gives (the child reads the same
    records) unless the spool overflowed (``spool_drops``, counted and reported). On every way out
    the hooks are detached first; on an error the child still extracts what was spooled, on a
    KeyboardInterrupt (a second Ctrl-C) it stops at once; the spool directory is removed."""
    import multiprocessing
    import tempfile

    from shadowtap.capture import spool

    stop_event = stop_event or threading.Event()
    _preflight(config)
    max_bytes = config.spool_max or spool.default_max_bytes(
        config.spool_dir or tempfile.gettempdir()
    )
    directory = spool.make_dir(config.spool_dir)
    shared = spool.new_shared(multiprocessing.get_context("fork"))
    child: Child | None = None
    src: Source | None = None
    pcap: PcapWriter | None = None
    writer: spool.SpoolWriter | None = None
    start = time.monotonic()
    last_tick, last_exchanges, rate = start, 0, 0.0

    def figures(now: float, source: Source) -> Figures:
        conns = shared[spool.OPEN_CONNECTIONS]
        return _figures(
            source,
            now - start,
            shared[spool.EXCHANGES],
            rate,
            None if conns < 0 else conns,
            writer.backlog if writer else 0,
            writer.dropped if writer else 0,
        )

    try:
        # Forked before any hook is attached (it inherits no bcc state). The reader decides when
        # to stop (Ctrl-C and SIGTERM reach it; the whole process group may get them): the child
        # ignores them and ends when the spool ends, is aborted, or the reader dies (EOF).
        # SCHED_IDLE: it runs only on CPU time nothing else wants, and any waking task of the
        # service (or the reader) preempts it at once (a nice 19 task keeps the CPU to the end of
        # its slice, a few ms in the service's tail latency). Nice 19 where SCHED_IDLE is refused.
        child = spawn(
            _extraction_child,
            extractor,
            directory,
            shared,
            config.jsonl_out,
            config.rotate_size,
            config.sink,
            config.sink_spool,
            name="extractor",
            codec=_codec(),
            sched_idle=True,
            fallback_nice=19,
            gc_batch=True,
        )
        extraction = _Extraction(child, shared)
        extraction.wait_ready()  # an unwritable JSONL fails here, before any hook
        src, reason = open_source(config)
        if config.pcap_out:
            pcap = PcapWriter(config.pcap_out, src.linktype, rotate_size=config.rotate_size)
        writer = spool.SpoolWriter(
            directory, src.linktype, child.channel, shared, max_bytes=max_bytes
        )
        if on_started is not None:
            on_started(src, reason)
        spool_write = writer.write

        def consume(frames: list[Frame]) -> bool:
            if pcap is not None:
                for ts_us, frame, wire_len in frames:
                    pcap.write(ts_us, frame, wire_len)
            spool_write(frames)
            return False  # the spool takes everything or drops it (counted): no backlog here

        def on_tick(now: float) -> None:
            nonlocal last_tick, last_exchanges, rate
            if pcap is not None:
                pcap.flush()
            n = shared[spool.EXCHANGES]
            rate = (n - last_exchanges) / (now - last_tick)
            last_tick, last_exchanges = now, n
            if on_figures is not None:
                on_figures(figures(now, src))

        def done() -> bool:
            extraction.check()
            return config.count is not None and shared[spool.EXCHANGES] >= config.count

        _read_loop(config, src, stop_event, start, consume, on_tick, done)
        # Detach now: the child's catching up needs no hook. The source's figures are kept first.
        final_source = src.stats()
        last = figures(time.monotonic(), src)
        description, backend = src.describe(), src.name
        removed = len(getattr(src, "removed_stale", ()))
        src.close()
        if pcap is not None:
            pcap.close()
        writer.end()

        def draining() -> None:
            if on_draining is not None:
                on_draining(
                    Figures(
                        time.monotonic() - start,
                        last.packets,
                        last.bytes,
                        shared[spool.EXCHANGES],
                        rate,
                        last.kernel_drops,
                        last.buffer_drops,
                        last.open_connections,
                        writer.backlog,
                        writer.dropped,
                    )
                )

        result = extraction.finish(draining)
        exchanges = result.exchanges
        elapsed = time.monotonic() - start
        return CaptureSummary(
            backend=backend,
            reason=reason,
            description=description,
            elapsed=elapsed,
            source=final_source,
            exchanges=exchanges,
            figures=Figures(
                elapsed,
                last.packets,
                last.bytes,
                exchanges,
                rate,
                last.kernel_drops,
                last.buffer_drops,
                None,
                0,
                writer.dropped,
            ),
            extract_stats=result.stats,
            pcap_files=tuple(pcap.files) if pcap else (),
            jsonl_files=result.files,
            removed_stale_hooks=removed,
            spool_drops=writer.dropped,
            spool_error=writer.disk_error,
        )
    except BaseException as exc:
        # Hooks first, then whatever was spooled is still extracted and written (a second Ctrl-C:
        # at once), then the error goes on.
        if src is not None:
            src.close()
        if child is not None and child.is_alive():
            with contextlib.suppress(Exception):
                if isinstance(exc, KeyboardInterrupt):
                    if writer is not None:
                        writer.abort()
                    else:
                        child.send(spool.Abort())
                    child.proc.join(10)
                else:
                    if writer is not None:
                        writer.end()
                    else:
                        child.send(spool.End(-1, 0))  # nothing spooled
                    _Extraction(child, shared).finish()
        raise
    finally:
        if src is not None:
            src.close()
        if pcap is not None:
            pcap.close()
        if child is not None:
            # It ignores SIGTERM (the reader decides): an abort not obeyed ends here (SIGKILL).
            child.reap(5, terminate=False)
        spool.remove_dir(directory)


# -- the stage function behind `shadowtap capture` ---------------------------------------------


def _figures_table(fig: Figures, title: str) -> Any:
    from rich.table import Table

    t = Table(title=title, title_justify="left", show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column(justify="right")
    rows = [
        ("elapsed", f"{fig.elapsed:,.1f} s"),
        ("packets", f"{fig.packets:,}"),
        ("bytes", _human_bytes(fig.bytes)),
        ("exchanges", f"{fig.exchanges:,}"),
        ("exchanges/s", f"{fig.exchanges_per_s:,.1f}"),
        ("kernel drops", f"{fig.kernel_drops:,}"),
        ("ring buffer drops", f"{fig.buffer_drops:,}"),
        ("open connections", "-" if fig.open_connections is None else f"{fig.open_connections:,}"),
        ("spool backlog", _human_bytes(fig.backlog_bytes)),
        ("spool drops", f"{fig.spool_drops:,}"),
    ]
    for name, value in rows:
        t.add_row(name, value)
    return t


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:,.1f} {unit}" if unit != "B" else f"{n:,} B"
        value /= 1024
    return f"{n} B"


def capture(
    config: CaptureConfig,
    *,
    keep_secrets: bool = False,
    secret_headers: tuple[str, ...] = (),
    max_body: int = 1 << 20,
) -> CaptureSummary:
    """`shadowtap capture`: run until Ctrl-C, SIGTERM, --duration or --count; live figures on a
    terminal (stderr), a summary at the end. SIGINT and SIGTERM stop the capture cleanly (hooks
    detached, in-flight exchanges written, files closed); a second Ctrl-C interrupts at once."""
    from shadowtap import console
    from shadowtap.capture.extractor import Extractor
    from shadowtap.redact import Redactor, key_path

    try:
        redactor = None if keep_secrets else Redactor.default(secret_headers)
    except OSError as exc:
        raise InputError(
            f"cannot read or create the redaction key: {exc.strerror}",
            where=key_path(),
            hint="set SHADOWTAP_KEY_FILE to a file this user can write",
        ) from exc
    extractor = Extractor(
        ports=config.ports, max_body=max_body, keep_secrets=keep_secrets, redactor=redactor
    )
    stop = threading.Event()
    previous: dict[int, Any] = {}

    def on_signal(signum: int, _frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, on_signal)
    live: Any = None
    interactive = console.interactive()
    last_note: float | None = None
    try:

        def started(src: Source, reason: str) -> None:
            nonlocal live
            console.info(f"capturing: {src.describe()}")
            console.info(f"backend: {reason}")
            for f in getattr(src, "removed_stale", ()):
                what = (
                    f"{f.name} ({f.direction.name.lower()})" if hasattr(f, "direction") else str(f)
                )
                console.warn(f"removed a stale shadowtap hook left by a killed run: {what}")
            if config.pcap_out:
                console.info(f"pcap: {config.pcap_out} (raw, unredacted)")
            if (
                interactive
            ):  # started here, after the extractor process was forked (no thread in it)
                from rich.live import Live

                live = Live(
                    _figures_table(Figures(0, 0, 0, 0, 0, 0, 0, None), "capturing"),
                    console=console.err,
                    refresh_per_second=2,
                    transient=True,
                )
                live.start()

        def on_figures(fig: Figures) -> None:
            if live is not None:
                live.update(_figures_table(fig, f"capturing on {config.iface or 'TLS libraries'}"))

        def on_draining(fig: Figures) -> None:
            # The hooks are detached; the extractor process finishes the spool.
            nonlocal last_note
            if live is not None:
                live.update(
                    _figures_table(
                        fig,
                        "stopped; extracting the spooled backlog "
                        f"({_human_bytes(fig.backlog_bytes)})",
                    )
                )
            elif fig.backlog_bytes and (last_note is None or fig.elapsed - last_note >= 5):
                last_note = fig.elapsed
                console.info(
                    f"stopped; extracting the spooled backlog: {_human_bytes(fig.backlog_bytes)} "
                    "left, "
                    f"{fig.exchanges:,} exchanges so far"
                )

        summary = run_spooled_capture(
            config,
            extractor,
            stop,
            on_figures=on_figures,
            on_started=started,
            on_draining=on_draining,
        )
    finally:
        if live is not None:
            live.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    _print_summary(summary)
    return summary


def _print_summary(s: CaptureSummary) -> None:
    from shadowtap import console

    rows = [
        ("backend", f"{s.backend}: {s.description}"),
        ("duration", f"{s.elapsed:,.1f} s"),
        ("packets", f"{s.source.packets:,}"),
        ("bytes", _human_bytes(s.source.bytes)),
        ("exchanges", f"{s.exchanges:,}"),
        ("kernel drops", f"{s.source.kernel_drops:,}"),
        ("ring buffer drops", f"{s.source.buffer_drops:,}"),
        ("truncated packets", f"{s.source.truncated:,}"),
        ("spool drops", f"{s.spool_drops:,}"),
    ]
    st = s.extract_stats
    for name in ("connections", "unanswered", "responses_without_request"):
        value = getattr(st, name, None)
        if isinstance(value, int):
            rows.append((name.replace("_", " "), f"{value:,}"))
    for label, files in (("pcap", s.pcap_files), ("exchanges file", s.jsonl_files)):
        if files:
            rows.append((label, ", ".join(files)))
    console.table("capture summary", ("figure", "value"), rows, to_stderr=True)
    if s.source.drops:
        console.warn(
            f"{s.source.drops:,} packets were dropped before shadowtap saw them: exchanges may be "
            "missing (a bigger --buffer-mb, or fewer ports)"
        )
    if s.spool_drops:
        why = f" ({s.spool_error})" if s.spool_error else " (the spool reached --spool-max)"
        console.warn(
            f"{s.spool_drops:,} packets were captured but not spooled for extraction{why}: "
            "exchanges may "
            "be missing from the exchanges file (the -w pcap has them)"
        )
