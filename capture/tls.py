"""The TLS source: the plaintext of HTTPS traffic read at the TLS library's calls (bcc uprobes on
OpenSSL 1.1/3 and GnuTLS, capture/bpf/tls_uprobes.c), with no keys, no proxy, no change to the
application; handed over as synthetic TCP frames (capture/tls_frames.py) so capture/live.py's one
path (the -w pcap, the spool, the Extractor, the mirror) serves it unchanged.

Attachment: to library files (every process that maps them: the system's libssl and libgnutls by
default, ``libs`` to name others, e.g. a copy inside a container's root) or to one process
(``pid``: the libraries it has mapped). The port filter and the side run in the kernel:
``Side.SERVER`` records the connections whose local port is watched (the service's; with no port,
the accepted ones), ``Side.CLIENT`` those whose remote port is (outgoing calls), ``Side.BOTH``
both (a connection between two instrumented processes on one host is then seen twice).

A socket open before the capture started has no ESTABLISHED event: its first call comes up
PENDING with the fd; user space resolves the fd to the 4-tuple through /proc/PID/fd and
/proc/PID/net/tcp{,6} (the process's own network namespace), decides, and writes the decision
into the kernel's table, so its later calls are filtered there. Such a connection starts
midstream (no synthetic handshake), as a packet capture started late would see it.

Hooks: bcc creates the uprobes with perf_event_open (no tracefs entry): they go with the process,
kill -9 included. Where bcc falls back to tracefs (``uprobe_events``, old kernels), the entries are
named after the pid (``..._bcc_<pid>``); ``remove_stale_uprobes`` removes those whose process is
gone, and ``open`` calls it. ``close`` detaches everything (exit, Ctrl-C, SIGTERM, errors; atexit
as a safety net).

Costs: see the .c file (one trap per call, emulated where tls_libs.plan_sites could place it so;
one copy). User space: the ring buffer read directly (capture/ringbuf.py: a batch of records
walked in Python, each piece copied out of the ring, no callback a record; the perf buffer: one
ctypes callback a record), one frame per piece (16 KiB at most), plus the framing (a few us).
"""

from __future__ import annotations

import atexit
import bisect
import ctypes
import ipaddress
import os
import re
import struct
import time
from dataclasses import dataclass
from enum import Enum
from importlib import resources
from typing import Any

from shadowtap.capture import tls_libs
from shadowtap.capture.doctor import ringbuf_supported
from shadowtap.capture.ebpf import ring_pages, with_settings
from shadowtap.capture.ringbuf import RingReader, Span
from shadowtap.capture.source import Frame, SourceStats
from shadowtap.capture.tls_frames import Chunk, Framer
from shadowtap.errors import InputError, PrerequisiteError
from shadowtap.wire.frames import LINKTYPE_RAW

PROGRAM_FILE = "tls_uprobes.c"
MAX_BATCH = 8192
# Batched reading (`shadowtap capture`; the mirror reads with ``immediate``): the reader polls the
# ring every BATCH_POLL_MS, and the kernel wakes it sooner only after WAKEUP_EVERY records a CPU
# (``wakeup_every``: as many of the largest records as fill 1/WAKEUP_FRACTION of the ring from all
# CPUs; 508 with the default 64 MiB and 2 CPUs). So the exchanges reach the spool up to
# BATCH_POLL_MS late, and at 1,000 requests/s the reader wakes ~12 times a second instead of ~60
# (20 ms polls and a forced wake-up every 256 records a CPU before), with ~30% less of its CPU.
BATCH_POLL_MS = 100
WAKEUP_FRACTION = 4
PERF_WAKEUP_EVENTS = 32
REORDER_US = 50_000
MAX_ORIENTED = 65536  # connections whose orientation _record keeps
# 32 x 16 KiB = 512 KiB a call (the verifier bounds the loop); the rest is counted as truncated
DEFAULT_MAX_PIECES = 32
UPROBE_EVENTS = ("/sys/kernel/tracing/uprobe_events", "/sys/kernel/debug/tracing/uprobe_events")

# struct rec_hdr (the .c file): ts, sk, ssl, rd, wr, tgid, tid, len, piece, total, fd, kind, dir,
# flags, role, family, lport, rport, pad, laddr, raddr, pad2
_HDR = struct.Struct("=QQQQQIIIIIiBBBBHHHH16s16sI")
PIECE = 16384  # the bytes of a call a record carries at most (the .c file's macro PIECE)
_LARGEST_RECORD = _HDR.size + PIECE + 8  # struct rec_l and the ring's 8-byte record header
K_DATA, K_OPEN, K_END_LOCAL, K_END_REMOTE, K_CLOSE = 1, 2, 3, 4, 5
D_READ, D_WRITE = 0, 1
F_TUPLE, F_FAULT, F_NOSK = 1, 2, 4
ROLE_UNKNOWN, ROLE_ACTIVE, ROLE_PASSIVE = 0, 1, 2
W_PENDING, W_WATCHED, W_IGNORED = 0, 1, 2
(C_CALLS, C_BYTES, C_RECORDS, C_LOST, C_LOST_BYTES, C_TRUNCATED, C_FAULTS, C_FILTERED, C_NOSK) = (
    range(9)
)
COUNTER_NAMES = (
    "calls",
    "bytes",
    "records",
    "lost_records",
    "lost_bytes",
    "truncated_bytes",
    "read_faults",
    "filtered_calls",
    "calls_without_socket",
)
_V4_MAPPED = b"\0" * 10 + b"\xff\xff"
_IGNORED = ()  # an orientation: resolved from /proc, on a connection the filter does not watch


class Side(str, Enum):
    SERVER = "server"
    CLIENT = "client"
    BOTH = "both"


_SIDE_CODE = {Side.SERVER: 0, Side.CLIENT: 1, Side.BOTH: 2}


def program_source() -> str:
    return resources.files("shadowtap.capture").joinpath("bpf", PROGRAM_FILE).read_text()


def _addr(family: int, raw: bytes) -> bytes:
    """Packed address; a v4-mapped IPv6 address (a dual-stack socket's IPv4 peer) as IPv4, as the
    wire carries it."""
    if family == 10:
        return raw[12:16] if raw[:12] == _V4_MAPPED else raw
    return raw[:4]


def decide(lport: int, rport: int, role: int, ports: frozenset[int], side: Side) -> bool:
    """The kernel's decide() for sockets user space resolves (same rule, same result)."""
    if not ports:
        if side is Side.SERVER:
            return role == ROLE_PASSIVE
        if side is Side.CLIENT:
            return role == ROLE_ACTIVE
        return True
    if side is Side.SERVER:
        return lport in ports
    if side is Side.CLIENT:
        return rport in ports
    return lport in ports or rport in ports


# -- /proc: the 4-tuple of a socket open before the capture --------------------------------------


def _proc_tcp(pid: int) -> dict[int, tuple[int, bytes, int, bytes, int, int]]:
    """inode -> (family, laddr, lport, raddr, rport, state) from the process's network namespace."""
    out: dict[int, tuple[int, bytes, int, bytes, int, int]] = {}
    for name, family in (("tcp", 2), ("tcp6", 10)):
        try:
            with open(f"/proc/{pid}/net/{name}") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            p = line.split()
            if len(p) < 10:
                continue
            (la, lp), (ra, rp) = p[1].split(":"), p[2].split(":")
            out[int(p[9])] = (
                family,
                _proc_addr(la),
                int(lp, 16),
                _proc_addr(ra),
                int(rp, 16),
                int(p[3], 16),
            )
    return out


def _proc_addr(hexaddr: str) -> bytes:
    raw = bytes.fromhex(hexaddr)
    # /proc prints each 32-bit word in host (little-endian) order.
    return b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))


def resolve_fd(pid: int, fd: int) -> tuple[int, bytes, int, bytes, int] | None:
    """(family, laddr, lport, raddr, rport) of a process's TCP socket fd, or None."""
    try:
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return None
    m = re.fullmatch(r"socket:\[(\d+)\]", target)
    if not m:
        return None
    entry = _proc_tcp(pid).get(int(m.group(1)))
    if entry is None:
        return None
    family, la, lp, ra, rp, _state = entry
    return family, la, lp, ra, rp


def listening_ports(pid: int) -> set[int]:
    return {e[2] for e in _proc_tcp(pid).values() if e[5] == 0x0A}


# -- stale tracefs uprobes ---------------------------------------------------------------------

_BCC_EVENT = re.compile(r"^[pr]:(?:\S+/)?(\S+_bcc_(\d+))\s", re.M)


def remove_stale_uprobes() -> list[str]:
    """Remove tracefs uprobes that bcc made for a process that is gone (bcc names them
    ``..._bcc_<pid>``; perf_event-based ones, the default, never linger). Returns their names."""
    for path in UPROBE_EVENTS:
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            continue
        removed = []
        for m in _BCC_EVENT.finditer(text):
            name, pid = m.group(1), int(m.group(2))
            if pid == os.getpid() or os.path.exists(f"/proc/{pid}"):
                continue
            try:
                # O_APPEND without the seek Python's "a" mode adds (tracefs refuses it): an
                # append of "-:name" removes the probe and leaves the others.
                fd = os.open(path, os.O_WRONLY | os.O_APPEND)
                try:
                    os.write(fd, f"-:{name}\n".encode())
                finally:
                    os.close(fd)
                removed.append(name)
            except OSError:
                pass  # busy (still enabled by a perf event): it goes with that event
        return removed
    return []


def ensure_tracefs() -> None:
    if os.path.exists("/sys/kernel/tracing/events") or os.path.exists(
        "/sys/kernel/debug/tracing/events"
    ):
        return
    rc = os.system("mount -t tracefs tracefs /sys/kernel/tracing >/dev/null 2>&1")
    if rc != 0:
        raise PrerequisiteError(
            "tracefs is not mounted (uprobes and tracepoints need it)",
            hint="mount -t tracefs tracefs /sys/kernel/tracing",
        )


def tls_ports(ports: tuple[int, ...], timeout: float = 1.0) -> list[int]:
    """The ports among ``ports`` whose listener on this host (this network namespace) completes a
    TLS handshake: ``auto``'s test. One probe connection a listening port, certificate not
    checked (only whether it speaks TLS); a port nobody listens on here is not probed."""
    import socket
    import ssl

    listen: dict[int, str] = {}
    for _inode, (family, la, lp, _ra, _rp, state) in _proc_tcp(os.getpid()).items():
        if state == 0x0A and lp in ports and lp not in listen:
            ip = str(ipaddress.ip_address(la if family == 2 else _addr(10, la)))
            listen[lp] = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(ip, ip)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    found = []
    for port, host in sorted(listen.items()):
        try:
            with (
                socket.create_connection((host, port), timeout=timeout) as raw,
                ctx.wrap_socket(raw, server_hostname=None),
            ):
                found.append(port)
        except (OSError, ssl.SSLError):
            continue
    return found


@dataclass(frozen=True, slots=True)
class TlsStats:
    """The kernel's counters (COUNTER_NAMES) and user space's."""

    kernel: dict[str, int]
    unmapped_calls: int  # calls whose socket could not be found (closed before user space looked)
    connections: int


class TlsSource:
    """The TLS plaintext source (a capture/source.py Source), frames of LINKTYPE_RAW.

    ``ports``: watched TCP ports (every port when empty); ``libs``: library files (default: the
    system's, or the process's with ``pid``); ``pid``: attach to this process only; ``side``: see
    the module docstring; ``buffer_mb``: the ring buffer (per CPU for the perf buffer);
    ``ringbuf``: None probes, False forces the perf buffer; ``immediate``: wake the reader per
    record (the live mirror)."""

    name = "tls"
    linktype = LINKTYPE_RAW

    def __init__(
        self,
        ports: tuple[int, ...] = (),
        *,
        libs: tuple[str, ...] = (),
        pid: int | None = None,
        side: Side = Side.SERVER,
        buffer_mb: int = 64,
        ringbuf: bool | None = None,
        immediate: bool = False,
        max_pieces: int = DEFAULT_MAX_PIECES,
    ) -> None:
        for p in ports:
            if not 0 < p < 65536:
                raise InputError(f"bad port {p}", field="ports")
        if pid is not None and pid <= 0:
            raise InputError(f"bad pid {pid}", field="pid")
        if max_pieces < 1:
            raise InputError("must be >= 1", field="max_pieces")
        self.ports = tuple(sorted(set(ports)))
        self._portset = frozenset(self.ports)
        self.lib_paths = tuple(libs)
        self.pid = pid
        self.side = side
        self.buffer_mb = buffer_mb
        self.use_ringbuf = ringbuf
        self.immediate = immediate
        self.max_pieces = max_pieces
        # The per-thread state in task-local storage (Linux 5.11+); open() falls back to a hash
        # where the kernel or bcc refuses it.
        self.task_storage = True
        self.libraries: list[tls_libs.TlsLibrary] = []
        self.removed_stale: list[str] = []
        self.framer = Framer()
        self._bpf: Any = None  # bcc.BPF once open
        self._ring: RingReader | None = None  # the ring buffer's reader (else the perf buffer)
        self._batch: list[Frame] = []
        self._pending: list[tuple[int, bytes]] = []  # perf buffer: (ts, record) awaiting reordering
        self._offset_ns = 0
        self._received = 0
        self._payload = 0
        self._unmapped = 0
        self._oriented: dict[tuple[int, int, int], tuple] = {}  # see _record
        self._resolved: dict[
            int, tuple | None
        ] = {}  # sk -> orientation, for sockets user space resolved
        self._listening: dict[int, set[int]] = {}
        self._closed = False
        self.on_chunk = (
            None  # optional callback(Chunk): the chunk view of the stream (tests, tools)
        )
        self.detach_errors: list[OSError] = []

    # -- the program -------------------------------------------------------------------------
    def _pages(self) -> int:
        return ring_pages(self.buffer_mb)

    def wakeup_every(self) -> int:
        """Records a CPU after which the kernel wakes the batched reader (see WAKEUP_FRACTION)."""
        ring = self._pages() * os.sysconf("SC_PAGE_SIZE")
        cpus = os.cpu_count() or 1
        return max(1, ring // (WAKEUP_FRACTION * cpus * _LARGEST_RECORD))

    def cflags(self) -> list[str]:
        return [
            f"-DUSE_RINGBUF={int(bool(self.use_ringbuf))}",
            f"-DRINGBUF_PAGES={self._pages()}",
            f"-DWAKEUP_EVERY={0 if self.immediate else self.wakeup_every()}",
            f"-DMAX_PIECES={self.max_pieces}",
            f"-DPIECE={PIECE}",
            f"-DUSE_TASK_STORAGE={int(self.task_storage)}",
        ]

    def _probe_ringbuf(self) -> None:
        if self.use_ringbuf is None:
            self.use_ringbuf = ringbuf_supported()

    def program_text(self) -> str:
        """The program as compiled, with the loader's settings: what ``--print-bpf`` shows."""
        self._probe_ringbuf()
        return with_settings(program_source(), self.cflags(), "(TLS source)")

    def find_libraries(self) -> list[tls_libs.TlsLibrary]:
        """The libraries to attach to, each checked; raises when none is usable."""
        if self.lib_paths:
            paths = list(self.lib_paths)
            for p in paths:
                if not os.path.isfile(p):
                    raise InputError("no such file", where=p)
        elif self.pid is not None:
            paths = tls_libs.process_libraries(self.pid)
            if not paths:
                raise PrerequisiteError(
                    f"process {self.pid} maps no libssl nor libgnutls: its TLS is built in "
                    "or not OpenSSL/GnuTLS (see `shadowtap doctor`)",
                    hint="name the executable with --tls-lib if it exports SSL_read/SSL_write",
                )
        else:
            paths = tls_libs.system_libraries()
            if not paths:
                raise PrerequisiteError(
                    "no system OpenSSL or GnuTLS library found", hint="name one with --tls-lib PATH"
                )
        libs = [tls_libs.inspect(p) for p in paths]
        usable = [lib for lib in libs if lib.usable]
        if not usable:
            why = "; ".join(
                f"{lib.path}: {lib.kind.value}, missing {', '.join(lib.missing) or '?'}"
                for lib in libs
            )
            raise PrerequisiteError(
                f"no usable TLS library: {why}",
                hint="the library must export SSL_read/SSL_write (or gnutls_record_recv/send)",
            )
        return usable

    # -- life cycle ---------------------------------------------------------------------------
    def open(self) -> None:
        from shadowtap.capture.doctor import require_ebpf

        require_ebpf()
        ensure_tracefs()
        self.libraries = self.find_libraries()
        try:
            from bcc import BPF  # optional (the distribution's bcc): loaded only to attach
        except ImportError as exc:
            raise PrerequisiteError(
                "bcc's Python bindings are missing", hint="scripts/setup.sh"
            ) from exc
        self._probe_ringbuf()
        self.removed_stale = remove_stale_uprobes()
        atexit.register(self.close)
        try:
            try:
                self._bpf = BPF(text=program_source().encode(), cflags=self.cflags())
            except Exception:  # noqa: BLE001 - bcc's bare Exception: retried without task storage
                self.task_storage = False
                self._bpf = BPF(text=program_source().encode(), cflags=self.cflags())
        except Exception as exc:  # bcc raises bare Exceptions for compile and verifier failures
            self.close()
            raise PrerequisiteError(
                f"the TLS BPF program did not compile or load: {exc}",
                hint="check the kernel headers and tracefs (shadowtap doctor)",
            ) from exc
        b = self._bpf
        ports = b[b"ports"]
        for p in self.ports:
            ports[ports.Key(p)] = ports.Leaf(1)
        cfg = b[b"config"]
        cfg[ctypes.c_int(0)] = ctypes.c_uint32(0 if self.ports else 1)
        cfg[ctypes.c_int(1)] = ctypes.c_uint32(_SIDE_CODE[self.side])
        try:
            for lib in self.libraries:
                # At the planned sites (tls_libs.plan_sites): a virtual address in the file,
                # which bcc turns into the file offset as it does a symbol's.
                for site in lib.sites:
                    b.attach_uprobe(
                        name=lib.path.encode(),
                        addr=site.addr,
                        fn_name=site.entry.encode(),
                        pid=self.pid or -1,
                    )
                    if site.ret is not None:
                        b.attach_uretprobe(
                            name=lib.path.encode(),
                            addr=site.addr,
                            fn_name=site.ret.encode(),
                            pid=self.pid or -1,
                        )
        except Exception as exc:
            self.close()
            raise PrerequisiteError(
                f"cannot attach uprobes: {exc}", hint="shadowtap doctor"
            ) from exc
        if self.use_ringbuf:
            self._ring = RingReader(b[b"events"].map_fd)
        else:
            b[b"events"].open_perf_buffer(
                self._on_perf,
                page_cnt=self._pages(),
                lost_cb=lambda _n: None,
                wakeup_events=1 if self.immediate else PERF_WAKEUP_EVENTS,
            )
        self._offset_ns = time.time_ns() - time.monotonic_ns()

    def describe(self) -> str:
        libs = (
            ", ".join(f"{lib.path} ({lib.version or lib.kind.value})" for lib in self.libraries)
            or "none"
        )
        where = f"process {self.pid}" if self.pid else "every process mapping them"
        buf = "ring buffer" if self.use_ringbuf else "perf buffer (per CPU)"
        ports = ",".join(map(str, self.ports)) or "all"
        wake = "woken per record" if self.immediate else f"read every {BATCH_POLL_MS} ms"
        return (
            f"TLS uprobes on {libs} ({where}), {self.side.value} side, TCP ports {ports}, "
            f"{buf}, {wake}"
        )

    def close(self) -> None:
        """Detach every probe and free the program. Idempotent."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        if self._bpf is not None:
            try:
                self._bpf.cleanup()
            except OSError as exc:
                self.detach_errors.append(exc)
            self._bpf = None

    # -- reading ------------------------------------------------------------------------------
    def _records(self, area: memoryview, spans: list[Span]) -> None:
        """A batch of the ring buffer's records (capture/ringbuf.py), in one loop."""
        record = self._record
        for off, _size in spans:
            record(area, off)

    def _on_perf(self, _cpu: int, data: int, size: int) -> None:
        raw = ctypes.string_at(data, size)
        self._pending.append((struct.unpack_from("=Q", raw)[0], raw))

    def _orientation(self, h: tuple) -> tuple | None:
        """(sk key, client, server, process_is_server) of a record; None: it cannot be placed."""
        (
            _ts,
            sk,
            _ssl,
            _rd,
            _wr,
            tgid,
            _tid,
            _len,
            _piece,
            _total,
            fd,
            _kind,
            _dir,
            flags,
            role,
            family,
            lport,
            rport,
            _pad,
            laddr,
            raddr,
            _pad2,
        ) = h
        if flags & F_TUPLE:
            local, remote = (_addr(family, laddr), lport), (_addr(family, raddr), rport)
            server = (
                role == ROLE_PASSIVE
                if role != ROLE_UNKNOWN
                else self._is_server(tgid, lport, rport)
            )
            return (sk, remote, local, True) if server else (sk, local, remote, False)
        if flags & F_NOSK or not sk:
            return None
        if sk in self._resolved:
            return self._resolved[sk]
        found = resolve_fd(tgid, fd) if fd >= 0 else None
        if found is None:
            return None  # not remembered: the fd may be resolvable at the next call
        fam, la, lp, ra, rp = found
        role = ROLE_PASSIVE if self._is_server(tgid, lp, rp) else ROLE_ACTIVE
        watched = decide(lp, rp, role, self._portset, self.side)
        local, remote = (_addr(fam, la.ljust(16, b"\0")), lp), (_addr(fam, ra.ljust(16, b"\0")), rp)
        orient = (
            ((sk, remote, local, True) if role == ROLE_PASSIVE else (sk, local, remote, False))
            if watched
            else _IGNORED
        )
        self._resolved[sk] = orient
        self._tell_kernel(sk, fam, la, lp, ra, rp, role, W_WATCHED if watched else W_IGNORED)
        return orient

    def _is_server(self, tgid: int, lport: int, rport: int) -> bool:
        if self._portset:
            if lport in self._portset:
                return True
            if rport in self._portset:
                return False
        listening = self._listening.get(tgid)
        if listening is None:
            listening = self._listening[tgid] = listening_ports(tgid)
        return lport in listening

    def _tell_kernel(
        self, sk: int, family: int, la: bytes, lp: int, ra: bytes, rp: int, role: int, watch: int
    ) -> None:
        if self._bpf is None:
            return
        table = self._bpf[b"conns"]
        leaf = table.Leaf()
        leaf.family, leaf.lport, leaf.rport, leaf.role, leaf.watch = family, lp, rp, role, watch
        ctypes.memmove(leaf.laddr, la.ljust(16, b"\0"), 16)
        ctypes.memmove(leaf.raddr, ra.ljust(16, b"\0"), 16)
        try:
            table[table.Key(sk)] = leaf
        except Exception:  # noqa: BLE001 - the socket may be gone; its calls then stay visible here
            pass

    def _record(self, raw: bytes | memoryview, at: int = 0) -> None:
        """One record, at ``at`` in ``raw`` (a memoryview: the ring, valid during the call)."""
        h = _HDR.unpack_from(raw, at)
        body = at + _HDR.size
        ts_us = (h[0] + self._offset_ns) // 1000
        kind = h[11]
        flags = h[13]
        if kind == K_DATA and flags & F_TUPLE and not flags & F_FAULT and self.on_chunk is None:
            # The common record (a watched connection's bytes): its orientation cached by
            # (sk, lport, rport), forgotten at the socket's K_OPEN/K_CLOSE (same key: those
            # records carry the tuple too); ~1.5 us a record less than the general path.
            key = (h[1], h[16], h[17])
            orient = self._oriented.get(key)
            if orient is None:
                orient = self._orientation(h)
                assert orient is not None  # a record with its tuple is always placed
                if len(self._oriented) >= MAX_ORIENTED:
                    self._oriented.clear()  # closes that were never seen (lost records)
                self._oriented[key] = orient
            sk, client, server, proc_is_server = orient
            d = h[12]
            data = bytes(raw[body : body + h[7]])
            self._payload += len(data)
            if data:
                self.framer.data_into(
                    self._batch, sk, ts_us, client, server,
                    (d == D_READ) if proc_is_server else (d == D_WRITE),
                    (h[3] if d == D_READ else h[4]) + h[8], data,
                )  # fmt: skip
            return
        if kind == K_OPEN or kind == K_CLOSE:
            self._oriented.pop((h[1], h[16], h[17]), None)
        if kind == K_OPEN:
            (_ts, sk, *_rest) = h
            family, lport, rport, laddr, raddr, role = h[15], h[16], h[17], h[19], h[20], h[14]
            local, remote = (_addr(family, laddr), lport), (_addr(family, raddr), rport)
            if role == ROLE_PASSIVE or (role == ROLE_UNKNOWN and lport in self._portset):
                self.framer.open(sk, remote, local)
            else:
                self.framer.open(sk, local, remote)
            return
        orient = self._orientation(h)
        if orient is _IGNORED:
            return  # resolved from /proc, not watched: the kernel filters its next calls
        if kind == K_DATA:
            if orient is None:
                self._unmapped += 1
                return
            sk, client, server, proc_is_server = orient
            d, flags, rd, wr, piece = h[12], h[13], h[3], h[4], h[8]
            data = bytes(raw[body : body + h[7]]) if not flags & F_FAULT else b""
            to_server = (d == D_READ) if proc_is_server else (d == D_WRITE)
            offset = (rd if d == D_READ else wr) + piece
            self._payload += len(data)
            if not data:
                return  # a fault: the hole stays at its offset
            chunk = Chunk(ts_us, h[5], client, server, to_server, offset, data)
            if self.on_chunk is not None:
                self.on_chunk(chunk)
            self._batch.extend(self.framer.data(sk, chunk))
            return
        if orient is None:
            return
        sk, _client, _server, proc_is_server = orient
        rd, wr = h[3], h[4]
        c_off, s_off = (rd, wr) if proc_is_server else (wr, rd)
        if kind == K_END_LOCAL:
            self._batch.extend(self.framer.end(sk, ts_us, not proc_is_server, wr))
        elif kind == K_CLOSE:
            self._batch.extend(self.framer.close(sk, ts_us, c_off, s_off))
            self._resolved.pop(sk, None)
        # K_END_REMOTE: the peer's FIN may be processed (softirq) before this process's last read
        # returns; it is framed at K_CLOSE, after every read of the connection.

    def read(self, timeout: float) -> list[Frame]:
        if self._bpf is None:
            return []
        ms = max(0, int(timeout * 1000))
        if self._ring is not None:
            self._ring.take(
                ms,
                self._records,
                immediate=self.immediate,
                batch_poll_ms=BATCH_POLL_MS,
                limit=MAX_BATCH,
            )
        else:
            self._bpf.perf_buffer_poll(ms if self.immediate else min(ms, BATCH_POLL_MS))
            if not self.immediate:
                self._bpf.perf_buffer_consume()
            self._drain_pending(final=False)
        batch, self._batch = self._batch, []
        self._received += len(batch)
        return batch

    def _drain_pending(self, final: bool) -> None:
        """Perf buffers are per CPU: records wait REORDER_US (so every CPU's older ones are read),
        then are handled in time order. A poll that found nothing hands everything over."""
        pending = self._pending
        if not pending:
            return
        pending.sort(key=_first)
        if final:
            cut = len(pending)
        else:
            horizon = time.monotonic_ns() - REORDER_US * 1000
            cut = bisect.bisect_right(pending, horizon, key=_first)
        for _ts, raw in pending[:cut]:
            self._record(raw)
        del pending[:cut]

    def flush(self) -> list[Frame]:
        if self._ring is not None:
            self._ring.consume(MAX_BATCH, self._records)
        elif self._bpf is not None:
            self._bpf.perf_buffer_consume()
        self._drain_pending(final=True)
        out, self._batch = self._batch, []
        self._received += len(out)
        return out

    def counters(self) -> dict[str, int]:
        if self._bpf is None:
            return dict.fromkeys(COUNTER_NAMES, 0)
        table = self._bpf[b"counters"]
        return {name: int(table.sum(table.Key(i)).value) for i, name in enumerate(COUNTER_NAMES)}

    def tls_stats(self) -> TlsStats:
        return TlsStats(self.counters(), self._unmapped, len(self.framer))

    def stats(self) -> SourceStats:
        c = self.counters()
        return SourceStats(
            packets=self._received,
            bytes=c["bytes"],
            buffer_drops=c["lost_records"],
            truncated=c["truncated_bytes"] and 1,
        )


def _first(item: tuple[int, bytes]) -> int:
    return item[0]


__all__ = ["TlsSource", "Side", "TlsStats", "remove_stale_uprobes", "resolve_fd", "decide"]
