"""Streaming pcap and pcapng reading: ``read_packets(path)`` yields ``(ts, linktype, frame)``.

Reads the file in 1 MiB pieces and parses records from memory: memory is O(largest record), never
O(file). Both byte orders, microsecond and nanosecond pcap, pcapng with several interfaces (each
its own link type and ``if_tsresol``), Enhanced, Simple and obsolete Packet Blocks. A damaged file
raises ``InputError`` naming the file and the byte offset of the damage, after every packet before
it was yielded. (dpkt's readers do not report where a file is damaged and build an object per
packet; this reader is the thin I/O shell the extractor needs.)
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

from shadowtap.errors import InputError

PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
SNAPLEN = 262144  # tcpdump's default; what every pcap this project writes (and libpcap) declares

# What this project writes (the spool's segments, ``capture -w``): classic pcap in native byte
# order with microsecond timestamps, the magic telling readers which order that is.
PCAP_MAGIC = 0xA1B2C3D4
FILE_HEADER = struct.Struct("=IHHiIII")  # magic, version 2.4, thiszone, sigfigs, snaplen, linktype
RECORD_HEADER = struct.Struct("=IIII")  # seconds, microseconds, captured length, wire length


def file_header(linktype: int, snaplen: int = SNAPLEN) -> bytes:
    """The 24-byte header of a pcap file this project writes."""
    return FILE_HEADER.pack(PCAP_MAGIC, 2, 4, 0, 0, snaplen, linktype)


def record_header(ts_us: int, caplen: int, wire_len: int) -> bytes:
    """The 16-byte header of one record, ``ts_us`` microseconds since the epoch."""
    sec, usec = divmod(ts_us, 1_000_000)
    return RECORD_HEADER.pack(sec, usec, caplen, max(caplen, wire_len))


def seconds(ts_us: int) -> float:
    """Microseconds since the epoch -> the float every reader of a microsecond pcap record gets
    (``sec + usec * 1e-6``, in that order). "Live == offline byte for byte" rests on this one
    rule: the live loop, the spool's reader and the pcap readers all compute it this way (the
    record loops inline the same expression; tests/capture/test_pcapfile.py checks they agree)."""
    return ts_us // 1_000_000 + (ts_us % 1_000_000) * 1e-6


MAX_RECORD = 256 << 20  # a record larger than this is a corrupt header, not a packet
_CHUNK = 1 << 20


class _Input:
    """A file read in large pieces, with the absolute offset of the next unread byte."""

    __slots__ = ("base", "buf", "eof", "f", "pos")

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.buf = b""
        self.pos = 0
        self.base = 0  # file offset of buf[0]
        self.eof = False

    @property
    def offset(self) -> int:
        return self.base + self.pos

    def ensure(self, n: int) -> bool:
        """At least ``n`` unread bytes buffered; False if the file ends first."""
        while len(self.buf) - self.pos < n:
            if self.eof:
                return False
            more = self.f.read(max(_CHUNK, n))
            if not more:
                self.eof = True
                return False
            self.base += self.pos
            self.buf = self.buf[self.pos :] + more
            self.pos = 0
        return True

    def remaining(self) -> int:
        return len(self.buf) - self.pos


PCAPNG_BOMS = (b"\x4d\x3c\x2b\x1a", b"\x1a\x2b\x3c\x4d")
SNIFF_BYTES = 12  # what sniff_format needs to tell every format apart


def sniff_format(head: bytes) -> str | None:
    """``pcap``, ``pcapng`` or None from a file's first ``SNIFF_BYTES`` bytes, by full magic:
    pcap's 4-byte magic; pcapng's Section Header Block type (which begins with a newline byte, so
    a first-byte test takes it for text) and its byte-order magic at offset 8. The one sniffing
    function: replay asks it before reading an input as JSONL."""
    if head[:4] in PCAP_MAGICS:
        return "pcap"
    if head[:4] == PCAPNG_SHB and head[8:12] in PCAPNG_BOMS:
        return "pcapng"
    return None


def sniff_path(path: str) -> str | None:
    """``sniff_format`` of the file at ``path`` (None for ``-``: standard input is JSONL)."""
    if path == "-":
        return None
    try:
        with open(path, "rb") as f:
            return sniff_format(f.read(SNIFF_BYTES))
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", where=path) from exc


def read_packets(path: str) -> Iterator[tuple[float, int, bytes]]:
    """Every packet of the pcap or pcapng file at ``path`` as (epoch seconds, LINKTYPE, frame)."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed in finally
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", where=path) from exc
    try:
        inp = _Input(f)
        if not inp.ensure(4):
            raise InputError("empty or too short to be a capture", where=f"{path} at byte 0")
        inp.ensure(SNIFF_BYTES)
        kind = sniff_format(inp.buf[:SNIFF_BYTES])
        if kind == "pcap":
            yield from _read_pcap(path, inp)
        elif kind == "pcapng":
            yield from _read_pcapng(path, inp)
        else:
            raise InputError(
                f"not a pcap or pcapng file (starts with {inp.buf[:4].hex()})",
                where=f"{path} at byte 0",
                hint="give a capture made by tcpdump, tshark/dumpcap or shadowtap capture",
            )
    finally:
        f.close()


def _damage(path: str, offset: int, what: str) -> InputError:
    return InputError(what, where=f"{path} at byte {offset}")


def _read_pcap(path: str, inp: _Input) -> Iterator[tuple[float, int, bytes]]:
    if not inp.ensure(24):
        raise _damage(path, inp.offset, "truncated pcap file header")
    order, unit = PCAP_MAGICS[inp.buf[inp.pos : inp.pos + 4]]
    _, _, _, _, _, snaplen, linktype = struct.unpack_from(order + "IHHiIII", inp.buf, inp.pos)
    linktype &= 0x0FFFFFFF  # the upper bits carry FCS information
    inp.pos += 24
    rec = struct.Struct(order + "IIII").unpack_from
    limit = max(snaplen, SNAPLEN) if snaplen else MAX_RECORD
    limit = min(limit, MAX_RECORD)
    frac_limit = 1_000_000 if unit == 1e-6 else 1_000_000_000
    # The buffer and the position live in locals while records come from the same buffer;
    # ``inp.pos`` is brought up to date before anything that reads it (a refill, an error).
    buf, pos = inp.buf, inp.pos
    n = len(buf)
    while True:
        if n - pos < 16:
            inp.pos = pos
            if not inp.ensure(16):
                if inp.remaining():
                    raise _damage(
                        path,
                        inp.offset,
                        f"truncated packet record header ({inp.remaining()} of 16 bytes)",
                    )
                return
            buf, pos = inp.buf, inp.pos
            n = len(buf)
        sec, frac, caplen, _origlen = rec(buf, pos)
        if caplen > limit or frac >= frac_limit:
            inp.pos = pos
            raise _damage(
                path,
                inp.offset,
                f"corrupt packet record header (captured length {caplen}, fraction {frac})",
            )
        end = pos + 16 + caplen
        if end > n:
            inp.pos = pos
            start = inp.offset
            if not inp.ensure(16 + caplen):
                raise _damage(
                    path,
                    start,
                    f"truncated packet: the record says {caplen} bytes, the file ends after "
                    f"{inp.remaining() - 16}",
                )
            buf, pos = inp.buf, inp.pos
            n = len(buf)
            end = pos + 16 + caplen
        frame = buf[pos + 16 : end]
        pos = end
        yield sec + frac * unit, linktype, frame


def _ts(ticks: int, tick: float, offset: int) -> float:
    """Epoch seconds, computed as a pcap reader does (seconds + fraction) for decimal resolutions,
    so the same instant gives the same float from pcap and pcapng."""
    if tick == 1e-6:
        return offset + ticks // 1_000_000 + (ticks % 1_000_000) * 1e-6
    if tick == 1e-9:
        return offset + ticks // 1_000_000_000 + (ticks % 1_000_000_000) * 1e-9
    return offset + ticks * tick


def _read_pcapng(path: str, inp: _Input) -> Iterator[tuple[float, int, bytes]]:
    order = "<"
    interfaces: list[tuple[int, float, int]] = []  # (linktype, seconds per tick, offset seconds)
    hdr = struct.Struct("<II")
    last_ts = 0.0
    while True:
        start = inp.offset
        if not inp.ensure(12):
            if inp.remaining():
                raise _damage(path, start, f"truncated block header ({inp.remaining()} bytes)")
            return
        btype = inp.buf[inp.pos : inp.pos + 4]
        if btype == PCAPNG_SHB:
            bom = inp.buf[inp.pos + 8 : inp.pos + 12]
            if bom == b"\x4d\x3c\x2b\x1a":
                order = "<"
            elif bom == b"\x1a\x2b\x3c\x4d":
                order = ">"
            else:
                raise _damage(path, start, "corrupt section header (bad byte-order magic)")
            hdr = struct.Struct(order + "II")
            interfaces = []
        btype_n, blen = hdr.unpack_from(inp.buf, inp.pos)
        if blen < 12 or blen % 4 or blen > MAX_RECORD:
            raise _damage(
                path, start, f"corrupt block header (block type {btype_n:#x}, length {blen})"
            )
        if not inp.ensure(blen):
            raise _damage(
                path,
                start,
                f"truncated block: the header says {blen} bytes, the file ends after "
                f"{inp.remaining()}",
            )
        b = inp.buf
        p = inp.pos
        body = p + 8
        end = p + blen - 4
        if struct.unpack_from(order + "I", b, end)[0] != blen:
            raise _damage(path, start, f"corrupt block (trailing length differs from {blen})")
        inp.pos = p + blen
        if btype_n == 6:  # Enhanced Packet Block
            iface, hi, lo, caplen, _olen = struct.unpack_from(order + "IIIII", b, body)
            if iface >= len(interfaces):
                raise _damage(path, start, f"packet of undeclared interface {iface}")
            if 20 + caplen > blen - 12:
                raise _damage(path, start, f"corrupt packet block (captured length {caplen})")
            lt, tick, tsoff = interfaces[iface]
            last_ts = _ts((hi << 32) | lo, tick, tsoff)
            yield last_ts, lt, b[body + 20 : body + 20 + caplen]
        elif btype_n == 3:  # Simple Packet Block: no timestamp, interface 0
            if not interfaces:
                raise _damage(path, start, "packet before any interface description")
            (olen,) = struct.unpack_from(order + "I", b, body)
            caplen = min(olen, blen - 16)
            yield last_ts, interfaces[0][0], b[body + 4 : body + 4 + caplen]
        elif btype_n == 2:  # obsolete Packet Block
            iface, _drops, hi, lo, caplen, _olen = struct.unpack_from(order + "HHIIII", b, body)
            if iface >= len(interfaces) or 20 + caplen > blen - 12:
                raise _damage(path, start, "corrupt packet block")
            lt, tick, tsoff = interfaces[iface]
            last_ts = _ts((hi << 32) | lo, tick, tsoff)
            yield last_ts, lt, b[body + 20 : body + 20 + caplen]
        elif btype_n == 1:  # Interface Description Block
            lt, _res, _snap = struct.unpack_from(order + "HHI", b, body)
            tick, tsoff = 1e-6, 0
            o = body + 8
            while o + 4 <= end:
                code, olen = struct.unpack_from(order + "HH", b, o)
                if code == 0:
                    break
                val = b[o + 4 : o + 4 + olen]
                if code == 9 and olen >= 1:  # if_tsresol
                    r = val[0]
                    tick = 2.0 ** -(r & 0x7F) if r & 0x80 else 10.0**-r
                elif code == 14 and olen == 8:  # if_tsoffset
                    tsoff = struct.unpack(order + "q", val)[0]
                o += 4 + ((olen + 3) & ~3)
            interfaces.append((lt, tick, tsoff))
        # other blocks (name resolution, statistics, custom) carry no packets
