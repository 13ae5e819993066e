"""The eBPF live source: bcc compiles capture/bpf/tc_capture.c and attaches it as a TC (clsact)
classifier on the interface's ingress and egress (capture/tc.py). The port filter runs in the
kernel; matching packets reach user space whole through a BPF ring buffer (a perf buffer where the
kernel has no ring buffer), and every packet the kernel matched but could not hand over is counted.

On loopback a packet passes egress and then ingress: it is recorded at egress only.

Hooks are removed by ``close`` (called on exit, Ctrl-C, SIGTERM and errors by capture/live.py, and
by an atexit safety net); a kill -9 leaves them, and the next run on the interface removes them
(filters are named after their process: capture/tc.py).

Costs: the kernel side is described in the .c file. User space reads the ring buffer directly
(capture/ringbuf.py: a batch of records walked in Python, each frame copied out of the ring, no
callback a packet); the perf buffer (old kernels) costs one ctypes callback and copy a packet.
"""

from __future__ import annotations

import atexit
import bisect
import ctypes
import ctypes.util
import errno
import itertools
import os
import socket
import struct
import time
from importlib import resources
from typing import Any

from shadowtap.capture import tc
from shadowtap.capture.doctor import require_ebpf, ringbuf_supported
from shadowtap.capture.ringbuf import RingReader, Span
from shadowtap.capture.source import Frame, SourceStats
from shadowtap.errors import InputError, PrerequisiteError

PROGRAM_FILE = "tc_capture.c"
MAX_BATCH = 8192  # frames a read returns at most, so the caller's loop keeps its 1 s rhythm
# Batched wake-ups (not immediate): the kernel wakes the reader every WAKEUP_EVERY records a CPU,
# and the reader polls at least every BATCH_POLL_MS. Per-packet wake-ups cost the CPUs the service
# shares (a context switch and a poll a packet); a capture to files needs no real time.
WAKEUP_EVERY = 1024
BATCH_POLL_MS = 20
PERF_WAKEUP_EVENTS = 64  # the perf buffer's equivalent (per CPU buffer)
REORDER_US = 50_000  # perf buffer: how long a frame waits for older ones from other CPUs
_REC_HDR = struct.Struct("=QII")  # ts_ns, len, caplen (struct rec_hdr)
_SMALL_RECORD = 2048 + 16 + 8  # up to the .c file's rec_m (and its 8-byte alignment)
_C_MATCHED, _C_LOST, _C_TRUNCATED, _C_BYTES = 0, 1, 2, 3
_ARPHRD_ETHER, _ARPHRD_LOOPBACK = 1, 772
LINKTYPE_ETHERNET, LINKTYPE_RAW = 1, 101


def ring_pages(buffer_mb: int) -> int:
    """Pages of a BPF ring of ``buffer_mb`` MiB, rounded up to the power of two the kernel wants."""
    pages = max(1, buffer_mb * (1 << 20) // os.sysconf("SC_PAGE_SIZE"))
    return 1 << (pages - 1).bit_length()


def with_settings(program: str, cflags: list[str], where: str) -> str:
    """A BPF program as bcc compiles it, its -D settings written out as #defines above it: what
    ``--print-bpf`` shows."""
    defines = "".join(f"#define {f[2:].replace('=', ' ', 1)}\n" for f in cflags)
    return f"// compiled by bcc with these settings {where}:\n{defines}\n{program}"


def program_source() -> str:
    return resources.files("shadowtap.capture").joinpath("bpf", PROGRAM_FILE).read_text()


def interface_index(iface: str) -> int:
    try:
        return socket.if_nametoindex(iface)
    except OSError:
        raise InputError(
            f"no such interface: {iface}", hint="list them with: ip -brief link"
        ) from None


def link_layer(iface: str) -> tuple[int, int, bool]:
    """(bytes before the IP header, pcap link type, is loopback) as TC programs see the frames."""
    try:
        with open(f"/sys/class/net/{iface}/type") as f:
            arphrd = int(f.read())
    except OSError:
        raise InputError(
            f"no such interface: {iface}", hint="list them with: ip -brief link"
        ) from None
    if arphrd in (_ARPHRD_ETHER, _ARPHRD_LOOPBACK):
        return 14, LINKTYPE_ETHERNET, arphrd == _ARPHRD_LOOPBACK
    return 0, LINKTYPE_RAW, False  # tun, wireguard, ipip...: frames start at the IP header


class EbpfSource:
    """A TC eBPF capture on ``iface`` of TCP packets to or from ``ports`` (every port when empty).

    ``buffer_mb``: the ring buffer's size (per CPU for the perf buffer), rounded up to a power of
    two pages. ``ringbuf``: None probes the kernel, False forces the perf buffer. ``immediate``:
    the reader is woken for each packet (the live mirror); else in batches (WAKEUP_EVERY records
    or BATCH_POLL_MS, whichever comes first)."""

    name = "ebpf"

    def __init__(
        self,
        iface: str,
        ports: tuple[int, ...] = (),
        *,
        buffer_mb: int = 64,
        ringbuf: bool | None = None,
        immediate: bool = False,
    ) -> None:
        self.iface = iface
        self.immediate = immediate
        self.ports = tuple(sorted(set(ports)))
        self.buffer_mb = buffer_mb
        self.use_ringbuf = ringbuf
        self.ifindex = interface_index(iface)
        self.l2_len, self.linktype, self.loopback = link_layer(iface)
        self.removed_stale: list[tc.Filter] = []
        self._bpf: Any = None  # bcc's BPF object once open
        self._ring: RingReader | None = None  # the ring buffer's reader (else the perf buffer)
        self._filters: list[tc.Filter] = []
        self._added_clsact = False
        self._batch: list[Frame] = []
        self._pending: list[Frame] = []  # perf buffer frames waiting for reordering
        self._perf_lost = 0
        self._received = 0
        self._offset_ns = 0
        self._closed = False
        self.detach_errors: list[OSError] = []

    # -- the program -------------------------------------------------------------------------
    def _pages(self) -> int:
        return ring_pages(self.buffer_mb)

    def cflags(self) -> list[str]:
        return [
            f"-DL2_LEN={self.l2_len}",
            f"-DSKIP_INGRESS={int(self.loopback)}",
            f"-DUSE_RINGBUF={int(bool(self.use_ringbuf))}",
            f"-DRINGBUF_PAGES={self._pages()}",
            f"-DWAKEUP_EVERY={0 if self.immediate else WAKEUP_EVERY}",
        ]

    def program_text(self) -> str:
        """The program as compiled, with the loader's settings: what ``--print-bpf`` shows."""
        if self.use_ringbuf is None:
            self.use_ringbuf = ringbuf_supported()
        return with_settings(program_source(), self.cflags(), f"for {self.iface}")

    # -- life cycle ---------------------------------------------------------------------------
    def open(self) -> None:
        require_ebpf()
        try:
            from bcc import BPF  # optional (the distribution's bcc): loaded only to attach
        except ImportError as exc:  # require_ebpf checked this; keep the message if it races
            raise PrerequisiteError(
                "bcc's Python bindings are missing", hint="scripts/setup.sh"
            ) from exc
        if self.use_ringbuf is None:
            self.use_ringbuf = ringbuf_supported()
        try:
            self._bpf = BPF(text=program_source().encode(), cflags=self.cflags())
            ing = self._bpf.load_func(b"shadowtap_ing", BPF.SCHED_CLS)
            egr = self._bpf.load_func(b"shadowtap_egr", BPF.SCHED_CLS)
        except Exception as exc:  # bcc raises bare Exceptions for compile and verifier failures
            self.close()
            raise PrerequisiteError(
                f"the BPF program did not compile or load: {exc}",
                hint="check the kernel headers (shadowtap doctor), or use --backend pcap",
            ) from exc
        ports = self._bpf[b"ports"]
        for p in self.ports:
            ports[ports.Key(p)] = ports.Leaf(1)
        self._bpf[b"config"][ctypes.c_int(0)] = ctypes.c_uint32(0 if self.ports else 1)
        if self.use_ringbuf:
            self._ring = RingReader(self._bpf[b"events"].map_fd)
        else:
            self._bpf[b"events"].open_perf_buffer(
                self._on_perf,
                page_cnt=self._pages(),
                lost_cb=self._on_perf_lost,
                wakeup_events=1 if self.immediate else PERF_WAKEUP_EVENTS,
            )
        self._offset_ns = time.time_ns() - time.monotonic_ns()
        atexit.register(self.close)
        try:
            self.removed_stale = tc.remove_stale(self.ifindex)
            # A clsact left empty by removing a killed run's filters was most likely made by that
            # run: treat it as ours, so it goes when this run ends (if nobody else uses it).
            self._added_clsact = tc.ensure_clsact(self.ifindex) or (
                bool(self.removed_stale)
                and not any(tc.list_filters(self.ifindex, d) for d in tc.Direction)
            )
            name = tc.owner_name()
            for direction, fn in ((tc.Direction.INGRESS, ing), (tc.Direction.EGRESS, egr)):
                handle = _next_handle()
                self._filters.append(
                    tc.add_filter(self.ifindex, direction, fn.fd, handle=handle, name=name)
                )
        except OSError as exc:
            self.close()
            if exc.errno == errno.EPERM:
                raise PrerequisiteError(
                    "attaching TC filters needs CAP_NET_ADMIN", hint="run as root (sudo)"
                ) from exc
            raise PrerequisiteError(
                f"cannot attach TC filters to {self.iface}: {exc.strerror or exc}",
                hint="shadowtap doctor",
            ) from exc

    def describe(self) -> str:
        buf = "ring buffer" if self.use_ringbuf else "perf buffer (no ring buffer in this kernel)"
        size = f"{self._pages() * os.sysconf('SC_PAGE_SIZE') >> 20} MiB" + (
            "" if self.use_ringbuf else " per CPU"
        )
        ports = ",".join(map(str, self.ports)) or "all"
        where = "egress only counted (loopback)" if self.loopback else "ingress+egress"
        wake = "woken per packet" if self.immediate else f"woken every {BATCH_POLL_MS} ms"
        return f"eBPF TC clsact on {self.iface} ({where}), TCP ports {ports}, {buf} {size}, {wake}"

    def close(self) -> None:
        """Detach the hooks and free the program. Idempotent; never raises on a hook already
        gone."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        errors = []
        for f in self._filters:
            try:
                tc.delete_filter(f)
            except OSError as exc:
                errors.append(exc)
        self._filters = []
        if self._added_clsact:
            try:
                if not any(tc.list_filters(self.ifindex, d) for d in tc.Direction):
                    tc.remove_clsact(self.ifindex)
            except OSError:
                pass  # the interface went away with its qdisc
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None
        self.detach_errors = errors  # capture/live.py reports them

    # -- reading ------------------------------------------------------------------------------
    def _frame(self, data: int, size: int) -> None:
        if size <= _SMALL_RECORD:
            # Small records (ACKs, most requests and responses): one copy out of the ring, then
            # slices (a ctypes call costs about a microsecond, a 2 KiB copy much less).
            raw = ctypes.string_at(data, size)
            ts_ns, wire_len, caplen = _REC_HDR.unpack_from(raw)
            frame = raw[_REC_HDR.size : _REC_HDR.size + caplen]
        else:
            ts_ns, wire_len, caplen = _REC_HDR.unpack(ctypes.string_at(data, _REC_HDR.size))
            frame = ctypes.string_at(data + _REC_HDR.size, min(caplen, size - _REC_HDR.size))
        self._batch.append(((ts_ns + self._offset_ns) // 1000, frame, wire_len))

    def _ring_frames(self, area: memoryview, spans: list[Span]) -> None:
        """A batch of the ring buffer's records (capture/ringbuf.py), one loop: a frame's bytes
        copied out of the ring."""
        offset_ns, unpack, hdr = self._offset_ns, _REC_HDR.unpack_from, _REC_HDR.size
        append = self._batch.append
        for off, size in spans:
            ts_ns, wire_len, caplen = unpack(area, off)
            start = off + hdr
            frame = area[start : start + min(caplen, size - hdr)].tobytes()
            append(((ts_ns + offset_ns) // 1000, frame, wire_len))

    def _on_perf(self, _cpu: int, data: int, size: int) -> None:
        self._frame(data, size)

    def _on_perf_lost(self, lost: int) -> None:
        # The program already counts every failed perf_submit_skb in counters[C_LOST]; this is the
        # same loss seen from user space, kept only for a cross-check.
        self._perf_lost += lost

    def read(self, timeout: float) -> list[Frame]:
        if self._bpf is None:
            return []
        ms = max(0, int(timeout * 1000))
        if self._ring is not None:
            self._ring.take(
                ms,
                self._ring_frames,
                immediate=self.immediate,
                batch_poll_ms=BATCH_POLL_MS,
                limit=MAX_BATCH,
            )
            batch, self._batch = self._batch, []
            if len(batch) > 1:
                # One ring, in reservation order; a time stamp taken just before may be a few
                # microseconds out between CPUs. Timsort on nearly sorted input is O(n).
                batch.sort(key=_ts)
            self._received += len(batch)
            return batch
        self._bpf.perf_buffer_poll(ms if self.immediate else min(ms, BATCH_POLL_MS))
        if not self.immediate:
            self._bpf.perf_buffer_consume()  # the buffers that have not reached their wake-up mark
        return self._reorder()

    def _reorder(self) -> list[Frame]:
        """Perf buffers are per CPU: a frame read from one CPU's buffer may be older than one read
        before from another's. Frames wait here until they are REORDER_US old (so every CPU's
        older frames have been read), then go out in time order. A poll that found nothing means
        every buffer is empty: everything goes out."""
        new, self._batch = self._batch, []
        pending = self._pending
        if not new:
            out, self._pending = pending, []
        else:
            pending += new
            pending.sort(key=_ts)
            horizon = (time.monotonic_ns() + self._offset_ns) // 1000 - REORDER_US
            cut = bisect.bisect_right(pending, horizon, key=_ts)
            out, self._pending = pending[:cut], pending[cut:]
        self._received += len(out)
        return out

    def flush(self) -> list[Frame]:
        """The frames held for reordering, at the end of a capture."""
        out, self._pending = self._pending, []
        self._received += len(out)
        return out

    def counters(self) -> list[int]:
        """The kernel-side counters (matched, lost, truncated, bytes), summed over CPUs."""
        if self._bpf is None:
            return [0, 0, 0, 0]
        table = self._bpf[b"counters"]
        return [int(table.sum(table.Key(i)).value) for i in range(4)]

    def stats(self) -> SourceStats:
        _matched, lost, truncated, nbytes = self.counters()
        return SourceStats(
            packets=self._received, bytes=nbytes, buffer_drops=lost, truncated=truncated
        )


_HANDLES = itertools.count(1)


def _ts(frame: Frame) -> int:
    return frame[0]


def _next_handle() -> int:
    """A filter handle unique to this process: its pid (22 bits at most) and a counter."""
    return (os.getpid() << 8 | (next(_HANDLES) & 0xFF)) & 0xFFFFFFFF or 1
