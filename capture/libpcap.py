"""The pcap live source: libpcap (through ctypes) on an AF_PACKET socket with a TPACKET_V3
memory-mapped ring, the same path tcpdump takes.

- a kernel BPF filter compiled from the ports (``tcp and (port A or port B)``), so user space sees
  only the watched traffic;
- a large kernel ring (``buffer_mb``, 64 MiB by default) to absorb bursts while Python works;
- a snap length of 262144, larger than any packet the kernel hands over, TSO/GRO super-packets
  included: a packet is never cut (cutting at the MTU is what loses requests in other tools);
- drops: libpcap's pcap_stats reads the socket's PACKET_STATISTICS (ps_drop: the ring was full),
  plus ps_ifdrop (the interface's own drops) when the driver reports them.

Costs: one ctypes call and one copy of the frame a packet; the ring is read in place.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select

from shadowtap.capture.doctor import libpcap_name, require_pcap
from shadowtap.capture.pcapfile import SNAPLEN
from shadowtap.capture.source import Frame, SourceStats
from shadowtap.errors import InputError, PrerequisiteError

MAX_BATCH = 8192  # frames a read returns at most, so the caller's loop keeps its 1 s rhythm
_PCAP_ERRBUF_SIZE = 256
_PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _PktHdr(ctypes.Structure):
    _fields_ = [("ts", _Timeval), ("caplen", ctypes.c_uint32), ("len", ctypes.c_uint32)]


class _Stat(ctypes.Structure):
    _fields_ = [
        ("ps_recv", ctypes.c_uint),
        ("ps_drop", ctypes.c_uint),
        ("ps_ifdrop", ctypes.c_uint),
    ]


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.c_void_p)]


_LIB: ctypes.CDLL | None = None


def _libpcap() -> ctypes.CDLL:
    """libpcap, loaded and its signatures declared once a process (the live source and the BPF
    filter share it)."""
    global _LIB
    if _LIB is not None:
        return _LIB
    name = libpcap_name()
    if not name:
        raise PrerequisiteError("libpcap is missing", hint="apt-get install libpcap0.8")
    lib = ctypes.CDLL(name)
    lib.pcap_create.restype = ctypes.c_void_p
    lib.pcap_create.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    for fn in (
        "pcap_set_snaplen",
        "pcap_set_buffer_size",
        "pcap_set_timeout",
        "pcap_set_promisc",
        "pcap_set_immediate_mode",
    ):
        getattr(lib, fn).argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.pcap_setnonblock.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p]
    lib.pcap_activate.argtypes = [ctypes.c_void_p]
    lib.pcap_geterr.restype = ctypes.c_char_p
    lib.pcap_geterr.argtypes = [ctypes.c_void_p]
    lib.pcap_statustostr.restype = ctypes.c_char_p
    lib.pcap_compile.argtypes = [
        ctypes.c_void_p,
        ctypes.POINTER(_BpfProgram),
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_uint32,
    ]
    lib.pcap_setfilter.argtypes = [ctypes.c_void_p, ctypes.POINTER(_BpfProgram)]
    lib.pcap_freecode.argtypes = [ctypes.POINTER(_BpfProgram)]
    lib.pcap_datalink.argtypes = [ctypes.c_void_p]
    lib.pcap_get_selectable_fd.argtypes = [ctypes.c_void_p]
    lib.pcap_next_ex.argtypes = [
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.POINTER(_PktHdr)),
        ctypes.POINTER(ctypes.c_void_p),
    ]
    lib.pcap_stats.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Stat)]
    lib.pcap_close.argtypes = [ctypes.c_void_p]
    lib.pcap_open_dead.restype = ctypes.c_void_p
    lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.pcap_offline_filter.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p]
    _LIB = lib
    return lib


class _OfflineHdr(ctypes.Structure):
    _fields_ = [("ts", _Timeval), ("caplen", ctypes.c_uint32), ("len", ctypes.c_uint32)]


class BpfFilter:
    """A BPF filter expression run on each frame by libpcap (``pcap_offline_filter``), compiled
    once per link type. Costs one C call per frame."""

    def __init__(self, expr: str) -> None:
        self.expr = expr
        self._lib = _libpcap()
        self._programs: dict[int, _BpfProgram] = {}
        self._hdr = _OfflineHdr()
        self.program(1)  # a bad expression fails now, not at the first packet

    def program(self, linktype: int) -> _BpfProgram:
        prog = self._programs.get(linktype)
        if prog is None:
            handle = self._lib.pcap_open_dead(linktype, SNAPLEN)
            prog = _BpfProgram()
            if (
                self._lib.pcap_compile(
                    handle, ctypes.byref(prog), self.expr.encode(), 1, _PCAP_NETMASK_UNKNOWN
                )
                != 0
            ):
                msg = self._lib.pcap_geterr(handle).decode(errors="replace")
                raise InputError(f"bad filter expression {self.expr!r}: {msg}", field="bpf_filter")
            self._programs[linktype] = prog
        return prog

    def match(self, linktype: int, frame: bytes) -> bool:
        hdr = self._hdr
        hdr.caplen = hdr.len = len(frame)
        return bool(
            self._lib.pcap_offline_filter(
                ctypes.byref(self.program(linktype)), ctypes.byref(hdr), frame
            )
        )


def port_filter(ports: tuple[int, ...]) -> str:
    """The kernel filter for ``ports`` in pcap-filter syntax (every TCP packet when empty)."""
    if not ports:
        return "tcp"
    return "tcp and (" + " or ".join(f"port {p}" for p in ports) + ")"


class PcapSource:
    """libpcap capture of TCP packets to or from ``ports`` on ``iface``."""

    name = "pcap"

    def __init__(
        self,
        iface: str,
        ports: tuple[int, ...] = (),
        *,
        buffer_mb: int = 64,
        immediate: bool = False,
    ) -> None:
        self.iface = iface
        self.immediate = immediate
        self.ports = tuple(sorted(set(ports)))
        self.buffer_mb = buffer_mb
        self.filter = port_filter(self.ports)
        self.linktype = 1
        self._lib: ctypes.CDLL | None = None
        self._p: int | None = None
        self._fd = -1
        self._received = 0
        self._bytes = 0
        self._truncated = 0
        self._last_stats = SourceStats()

    def _err(self) -> str:
        assert self._lib is not None
        return (self._lib.pcap_geterr(self._p) or b"").decode(errors="replace")

    def open(self) -> None:
        require_pcap()
        if not os.path.isdir(f"/sys/class/net/{self.iface}"):
            raise InputError(
                f"no such interface: {self.iface}", hint="list them with: ip -brief link"
            )
        lib = self._lib = _libpcap()
        errbuf = ctypes.create_string_buffer(_PCAP_ERRBUF_SIZE)
        self._p = lib.pcap_create(self.iface.encode(), errbuf)
        if not self._p:
            raise InputError(f"cannot open {self.iface}: {errbuf.value.decode(errors='replace')}")
        lib.pcap_set_snaplen(self._p, SNAPLEN)
        lib.pcap_set_buffer_size(self._p, self.buffer_mb << 20)
        lib.pcap_set_promisc(self._p, 0)
        if self.immediate:
            # Each packet handed over as it arrives (the live mirror: lag before throughput).
            lib.pcap_set_immediate_mode(self._p, 1)
        else:
            lib.pcap_set_timeout(
                self._p, 100
            )  # a partly filled ring block is handed over after 100 ms
        rc = lib.pcap_activate(self._p)
        if rc < 0:
            msg = self._err() or lib.pcap_statustostr(rc).decode()
            self.close()
            if "ermission" in msg or "not permitted" in msg:
                raise PrerequisiteError(
                    f"opening {self.iface} for capture: {msg}",
                    hint="run as root, or grant CAP_NET_RAW (shadowtap doctor)",
                )
            if "No such device" in msg or "doesn't exist" in msg:
                raise InputError(
                    f"no such interface: {self.iface}", hint="list them with: ip -brief link"
                )
            raise PrerequisiteError(
                f"opening {self.iface} for capture: {msg}", hint="shadowtap doctor"
            )
        prog = _BpfProgram()
        if (
            lib.pcap_compile(
                self._p, ctypes.byref(prog), self.filter.encode(), 1, _PCAP_NETMASK_UNKNOWN
            )
            < 0
        ):
            msg = self._err()
            self.close()
            raise InputError(f"bad capture filter {self.filter!r}: {msg}")
        try:
            if lib.pcap_setfilter(self._p, ctypes.byref(prog)) < 0:
                msg = self._err()
                self.close()
                raise PrerequisiteError(f"cannot set the kernel filter on {self.iface}: {msg}")
        finally:
            lib.pcap_freecode(ctypes.byref(prog))
        self.linktype = lib.pcap_datalink(self._p)
        errbuf = ctypes.create_string_buffer(_PCAP_ERRBUF_SIZE)
        lib.pcap_setnonblock(self._p, 1, errbuf)
        self._fd = lib.pcap_get_selectable_fd(self._p)

    def describe(self) -> str:
        return (
            f"libpcap (AF_PACKET TPACKET_V3 ring, {self.buffer_mb} MiB) on {self.iface}, "
            f"kernel filter '{self.filter}', snaplen {SNAPLEN}"
        )

    def read(self, timeout: float) -> list[Frame]:
        """What is in the ring now (MAX_BATCH frames at most); when it is empty, waits for the
        socket up to ``timeout``."""
        if self._p is None or self._lib is None:
            return []
        lib, p = self._lib, self._p
        hdr = ctypes.POINTER(_PktHdr)()
        data = ctypes.c_void_p()
        frames: list[Frame] = []
        waited = False
        while len(frames) < MAX_BATCH:  # bounded: under a sustained load the ring is never empty
            rc = lib.pcap_next_ex(p, ctypes.byref(hdr), ctypes.byref(data))
            if rc == 1:
                h = hdr.contents
                frames.append(
                    (
                        h.ts.tv_sec * 1_000_000 + h.ts.tv_usec,
                        ctypes.string_at(data, h.caplen),
                        h.len,
                    )
                )
                self._bytes += h.len
                if h.caplen < h.len:
                    self._truncated += 1
                continue
            if rc == 0:
                if frames or waited or timeout <= 0:
                    break
                select.select([self._fd], [], [], timeout)
                waited = True
                continue
            if rc == -2:
                break
            raise InputError(f"capture on {self.iface} failed: {self._err()}")
        self._received += len(frames)
        return frames

    def flush(self) -> list[Frame]:
        return []  # nothing is held back: read() hands over frames in the order the ring has them

    def stats(self) -> SourceStats:
        if self._p is not None and self._lib is not None:
            st = _Stat()
            if self._lib.pcap_stats(self._p, ctypes.byref(st)) == 0:
                self._last_stats = SourceStats(kernel_drops=st.ps_drop + st.ps_ifdrop)
        return SourceStats(
            packets=self._received,
            bytes=self._bytes,
            kernel_drops=self._last_stats.kernel_drops,
            truncated=self._truncated,
        )

    def close(self) -> None:
        if self._p is not None and self._lib is not None:
            self.stats()  # keep the last drop counts
            self._lib.pcap_close(self._p)
        self._p = None
