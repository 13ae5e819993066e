"""Live capture: a source (eBPF or pcap) on an interface feeds the Extractor, the same path as
`extract`, and its outputs (a pcap of the raw frames, the exchanges as JSONL).

Invariant: every frame written to the pcap is fed to the Extractor, in the same order, with the
same timestamp (whole microseconds), and nothing else is: so the exchanges written live are, byte
for byte, what `extract` of the run's pcap gives.

``run_capture`` is the embeddable loop (the live mirror runs it too, with its own Extractor and
``on_exchange``); ``capture`` is the stage function behind `shadowtap capture` (signals, the live
figures on a terminal, the summary).

Costs: per frame one pcap record write (buffered) and one Extractor.feed; files are flushed and
the figures refreshed once a second.
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import IO, Any

from capture.source import Frame, Source, SourceStats
from shadowtap.errors import InputError, PrerequisiteError
from shadowtap.jsonl import JsonlWriter, create_private
from shadowtap.records import Exchange

FLUSH_INTERVAL = 1.0  # seconds: files are flushed at least this often (a crash loses at most this)
READ_TIMEOUT = 0.2  # seconds a read waits for packets, i.e. the loop's reaction time to a stop
DRAIN_SECONDS = 30.0  # after a stop, the backlog in the kernel buffer is read for this long at most


class Backend(str, Enum):
    AUTO = "auto"
    EBPF = "ebpf"
    PCAP = "pcap"


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
    immediate: bool = False  # pcap: hand each packet over at once rather than in 100 ms blocks

    def __post_init__(self) -> None:
        for p in self.ports:
            if not 0 < p < 65536:
                raise InputError(f"bad port {p}", where="--port")
        if self.rotate_size is not None and self.rotate_size <= 0:
            raise InputError("must be positive", where="--rotate-size")


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

    _HDR = struct.Struct("=IHHiIII")
    _REC = struct.Struct("=IIII")

    def __init__(self, path: str, linktype: int, *, snaplen: int = 262144, rotate_size: int | None = None) -> None:
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
        self._f.write(self._HDR.pack(0xA1B2C3D4, 2, 4, 0, 0, self.snaplen, self.linktype))
        self._size = self._HDR.size

    def write(self, ts_us: int, frame: bytes, wire_len: int) -> None:
        assert self._f is not None
        try:
            if self.rotate_size is not None and self._size >= self.rotate_size:
                self._open_next()
            sec, usec = divmod(ts_us, 1_000_000)
            self._f.write(self._REC.pack(sec, usec, len(frame), max(wire_len, len(frame))))
            self._f.write(frame)
        except OSError as exc:
            raise InputError(f"cannot write: {exc.strerror or exc}", where=self.files[-1]) from exc
        self._size += self._REC.size + len(frame)

    def flush(self) -> None:
        if self._f is not None:
            try:
                self._f.flush()
            except OSError as exc:
                raise InputError(f"cannot write: {exc.strerror or exc}", where=self.files[-1]) from exc

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
    from capture.afpacket import PcapSource
    from capture.ebpf import EbpfSource

    if config.backend is Backend.PCAP:
        src: Source = PcapSource(config.iface, config.ports, buffer_mb=config.buffer_mb, immediate=config.immediate)
        src.open()
        return src, "pcap backend requested"
    if config.backend is Backend.EBPF:
        src = EbpfSource(config.iface, config.ports, buffer_mb=config.buffer_mb, ringbuf=config.ringbuf)
        src.open()
        return src, "ebpf backend requested"
    # auto: eBPF where bcc, the kernel and privileges allow it, else pcap, saying why.
    try:
        src = EbpfSource(config.iface, config.ports, buffer_mb=config.buffer_mb, ringbuf=config.ringbuf)
        src.open()
        return src, "auto: eBPF (bcc, kernel headers, clsact and privileges present)"
    except PrerequisiteError as exc:
        why = exc.message
    src = PcapSource(config.iface, config.ports, buffer_mb=config.buffer_mb, immediate=config.immediate)
    try:
        src.open()
    except PrerequisiteError as exc:
        raise PrerequisiteError(f"no backend can run: eBPF: {why}; pcap: {exc.message}", hint=exc.hint) from exc
    return src, f"auto: pcap, because eBPF is unavailable: {why}"


def _open_connections(extractor: Any) -> int | None:
    """Connections the Extractor tracks now (ExtractStats has no such figure: read its reassembler)."""
    conns = getattr(getattr(extractor, "reassembler", None), "conns", None)
    return len(conns) if conns is not None else None


def run_capture(
    config: CaptureConfig,
    extractor: Any,
    stop_event: threading.Event | None = None,
    on_exchange: Callable[[Exchange], None] | None = None,
    *,
    on_figures: Callable[[Figures], None] | None = None,
    on_started: Callable[[Source, str], None] | None = None,
) -> CaptureSummary:
    """Capture until ``stop_event`` is set, ``config.duration`` has passed or ``config.count``
    exchanges were recorded; feed every frame to ``extractor`` (capture/pipeline.py's Extractor);
    write the outputs of ``config``; call ``on_exchange`` for each exchange, in the order written.

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
    figures = Figures(0.0, 0, 0, 0, 0.0, 0, 0, None)
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
        # The interface, then the outputs: a bad name or an unwritable path fails before any hook
        # is attached (the pcap, which needs the source's link type, is checked here too).
        if not os.path.isdir(f"/sys/class/net/{config.iface}"):
            raise InputError(f"no such interface: {config.iface}", hint="list them with: ip -brief link")
        for path in (config.pcap_out, config.jsonl_out):
            if path:
                _check_output(path)
        if config.jsonl_out:
            jsonl = RotatingJsonl(config.jsonl_out, rotate_size=config.rotate_size)
        src, reason = open_source(config)
        linktype = src.linktype
        if config.pcap_out:
            pcap = PcapWriter(config.pcap_out, linktype, rotate_size=config.rotate_size)
        if on_started is not None:
            on_started(src, reason)

        feed = extractor.feed

        def consume(frames: list[Frame]) -> None:
            for ts_us, frame, wire_len in frames:
                if pcap is not None:
                    pcap.write(ts_us, frame, wire_len)
                # As capture/pcapfile.py computes it from the record: the same float, bit for bit.
                out = feed(ts_us // 1_000_000 + (ts_us % 1_000_000) * 1e-6, linktype, frame)
                if out:
                    emit(out)

        deadline = start + config.duration if config.duration is not None else None
        while not stop_event.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            wait = READ_TIMEOUT if deadline is None else max(0.0, min(READ_TIMEOUT, deadline - now))
            consume(src.read(wait))
            now = time.monotonic()
            if now - last_tick >= FLUSH_INTERVAL:
                if not os.path.isdir(f"/sys/class/net/{config.iface}"):
                    raise InputError(f"interface {config.iface} went away during the capture")
                if pcap is not None:
                    pcap.flush()
                if jsonl is not None:
                    jsonl.flush()
                rate = (exchanges - last_exchanges) / (now - last_tick)
                last_tick, last_exchanges = now, exchanges
                figures = _figures(src, extractor, now - start, exchanges, rate)
                if on_figures is not None:
                    on_figures(figures)
            if config.count is not None and exchanges >= config.count:
                break
        # Drain what the kernel already holds (a pcap ring block is handed over only when full or
        # after its timeout): packets that passed the hooks before the stop are not lost.
        drain_end = time.monotonic() + DRAIN_SECONDS
        while time.monotonic() < drain_end:
            frames = src.read(READ_TIMEOUT)
            if not frames:
                break
            consume(frames)
        consume(src.flush())
        finished = True
        emit(extractor.finish())
        elapsed = time.monotonic() - start
        figures = _figures(src, extractor, elapsed, exchanges, rate)
        return CaptureSummary(
            backend=src.name,
            reason=reason,
            description=src.describe(),
            elapsed=elapsed,
            source=src.stats(),
            exchanges=exchanges,
            figures=figures,
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


def _figures(src: Source, extractor: Any, elapsed: float, exchanges: int, rate: float) -> Figures:
    st = src.stats()
    return Figures(elapsed, st.packets, st.bytes, exchanges, rate, st.kernel_drops, st.buffer_drops,
                   _open_connections(extractor))


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


def capture(config: CaptureConfig, *, keep_secrets: bool = False, secret_headers: tuple[str, ...] = (),
            max_body: int = 1 << 20) -> CaptureSummary:
    """`shadowtap capture`: run until Ctrl-C, SIGTERM, --duration or --count; live figures on a
    terminal (stderr), a summary at the end. SIGINT and SIGTERM stop the capture cleanly (hooks
    detached, in-flight exchanges written, files closed); a second Ctrl-C interrupts at once."""
    from capture.pipeline import Extractor
    from shadowtap import console
    from shadowtap.redact import Redactor, key_path

    try:
        redactor = None if keep_secrets else Redactor.default(secret_headers)
    except OSError as exc:
        raise InputError(f"cannot read or create the redaction key: {exc.strerror}", where=key_path(),
                         hint="set SHADOWTAP_KEY_FILE to a file this user can write") from exc
    extractor = Extractor(ports=config.ports, max_body=max_body, keep_secrets=keep_secrets, redactor=redactor)
    stop = threading.Event()
    previous: dict[int, Any] = {}

    def on_signal(signum: int, _frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, on_signal)
    live = None
    try:
        def started(src: Source, reason: str) -> None:
            console.info(f"capturing: {src.describe()}")
            console.info(f"backend: {reason}")
            for f in getattr(src, "removed_stale", ()):
                console.warn(f"removed a stale shadowtap hook left by a killed run: {f.name} ({f.direction.name.lower()})")
            if config.pcap_out:
                console.info(f"pcap: {config.pcap_out} (raw, unredacted)")

        on_figures = None
        if console.interactive():
            from rich.live import Live

            live = Live(_figures_table(Figures(0, 0, 0, 0, 0, 0, 0, None), "capturing"),
                        console=console.err, refresh_per_second=2, transient=True)
            live.start()
            on_figures = lambda fig: live.update(_figures_table(fig, f"capturing on {config.iface}"))
        summary = run_capture(config, extractor, stop, on_figures=on_figures, on_started=started)
    finally:
        if live is not None:
            live.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
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
        console.warn(f"{s.source.drops:,} packets were dropped before shadowtap saw them: exchanges may be "
                     "missing (a bigger --buffer-mb, or fewer ports)")

