"""TLS plaintext as TCP: the TLS source's chunks in, synthetic raw-IP TCP frames out (sans-I/O).

The TLS source (capture/tls.py) reads plaintext at the library's calls, already in order per
connection and direction, with the connection's real 4-tuple and each chunk's stream offset. This
module turns that into what every other source gives: TCP frames (pcap LINKTYPE_RAW, IPv4 or IPv6)
with the real addresses and ports, sequence numbers derived from the stream offsets, a synthetic
handshake when the connection's opening was seen and FINs when its ends were. So the one path of
capture/live.py serves it unchanged: the frames go to the -w pcap (which tshark decodes as HTTP
with ``-d tcp.port==PORT,http``: on 443 it would otherwise try TLS), through the spool to the same
Extractor, and the exchanges written live are, byte for byte, what `extract` of that pcap gives.

Why frames and not chunks straight into the HTTP parser: the live path's invariant above (the
JSONL equals `extract` of the -w pcap) and the spool between reader and extractor process are
defined on frames; synthetic frames keep both for TLS at the cost of one header (40-60 bytes) per
piece. The reassembler's in-order fast path takes them (no buffering: they arrive in order).

Invariants: a connection's client->server bytes take sequence numbers ``C_ISN + 1 + offset`` and
server->client bytes ``S_ISN + 1 + offset``, so a lost piece (counted by the kernel) leaves a hole
the reassembler reports as a gap at the right place instead of shifting the stream; a chunk never
yields a frame above MAX_SEGMENT bytes of payload; the TCP checksums are left zero (pcap readers
do not check them by default) and the IPv4 header checksum is computed.
"""

from __future__ import annotations

import functools
import struct
from collections import OrderedDict
from dataclasses import dataclass

from shadowtap.capture.source import Frame

C_ISN = 1_000_000
S_ISN = 2_000_000
MAX_SEGMENT = 16384  # payload bytes a synthetic segment carries at most (the BPF program's piece)
FIN, SYN, PSH, ACK = 0x01, 0x02, 0x08, 0x10
_TCP = struct.Struct("!HHIIBBHHH")
_IP4 = struct.Struct("!BBHHHBBH4s4s")
_IP6 = struct.Struct("!IHBB16s16s")

Endpoint = tuple[bytes, int]  # packed address (4 or 16 bytes), port


@dataclass(frozen=True, slots=True)
class Chunk:
    """Plaintext of one TLS library call (or one piece of it) on a connection: what the source
    hands over, in order per connection and direction. ``offset``: the stream offset of
    ``data[0]`` in its direction."""

    ts_us: int
    pid: int
    client: Endpoint
    server: Endpoint
    to_server: bool
    offset: int
    data: bytes


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


_IP4_TCP = struct.Struct("!BBHHHBBH4s4sHHIIBBHHH")  # one pack a segment: _IP4 then _TCP
_V4_CONST = 0x4500 + 0x4000 + (64 << 8 | 6)  # version/IHL, flags (DF), TTL/protocol


@functools.lru_cache(maxsize=4096)
def _ip4_sum(src: bytes, dst: bytes) -> int:
    """The IPv4 header's 16-bit words that do not change along a direction (all but the total
    length; ident 0): RFC 1071 sums are additive, so a segment's checksum is this plus its
    length, folded. Cached per address pair (a dict hit instead of a header unpack a segment)."""
    return _V4_CONST + sum(struct.unpack("!4H", src + dst))


def segment(
    src: Endpoint, dst: Endpoint, seq: int, ack: int, flags: int, payload: bytes = b""
) -> bytes:
    """One raw-IP TCP segment (LINKTYPE_RAW): IPv4 when both addresses are 4 bytes, else IPv6."""
    sa, da = src[0], dst[0]
    if len(sa) == 4 and len(da) == 4:
        length = 40 + len(payload)
        total = _ip4_sum(sa, da) + length
        total = (total >> 16) + (total & 0xFFFF)
        total += total >> 16
        hdr = _IP4_TCP.pack(
            0x45, 0, length, 0, 0x4000, 64, 6, ~total & 0xFFFF, sa, da,
            src[1], dst[1], seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags, 65535, 0, 0,
        )  # fmt: skip
        return hdr + payload
    tcp = _TCP.pack(src[1], dst[1], seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags, 65535, 0, 0)
    s = sa if len(sa) == 16 else b"\0" * 10 + b"\xff\xff" + sa
    d = da if len(da) == 16 else b"\0" * 10 + b"\xff\xff" + da
    return _IP6.pack(6 << 28, len(tcp) + len(payload), 6, 64, s, d) + tcp + payload


class _Conn:
    __slots__ = ("client", "server", "opened", "started", "c_next", "s_next", "c_fin", "s_fin")

    def __init__(self, client: Endpoint, server: Endpoint, opened: bool) -> None:
        self.client = client
        self.server = server
        self.opened = opened  # its ESTABLISHED was seen: it gets a handshake
        self.started = False  # frames were emitted for it
        self.c_next = 0  # stream offsets after the last byte framed, each direction
        self.s_next = 0
        self.c_fin = False
        self.s_fin = False


class Framer:
    """Source events in, frames out. Connections are keyed by the source's identity for a socket
    (its kernel address while it lives); ``max_connections`` bounds the state (the oldest is
    forgotten first: a connection whose close was never seen)."""

    def __init__(self, max_connections: int = 65536) -> None:
        self.max_connections = max_connections
        self._conns: OrderedDict[int, _Conn] = OrderedDict()
        self.frames = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._conns)

    def _conn(self, key: int, client: Endpoint, server: Endpoint, opened: bool) -> _Conn:
        c = self._conns.get(key)
        if c is None or c.client != client or c.server != server:
            c = _Conn(client, server, opened)
            self._conns[key] = c
            if len(self._conns) > self.max_connections:
                self._conns.popitem(last=False)
                self.evicted += 1
        return c

    def open(self, key: int, client: Endpoint, server: Endpoint) -> None:
        """The connection became established: its handshake is framed with its first data, so a
        connection that carries no TLS data (another process's, plain HTTP) yields nothing."""
        old = self._conns.pop(key, None)
        del old  # a socket address reused without a close seen: the new connection replaces it
        self._conn(key, client, server, opened=True)

    def _start(self, c: _Conn, ts_us: int, out: list[Frame]) -> None:
        c.started = True
        if not c.opened:
            return  # opened before the capture: midstream, as a packet capture would see it
        cl, sv = c.client, c.server
        for src, dst, seq, ack, flags in (
            (cl, sv, C_ISN, 0, SYN),
            (sv, cl, S_ISN, C_ISN + 1, SYN | ACK),
            (cl, sv, C_ISN + 1, S_ISN + 1, ACK),
        ):
            f = segment(src, dst, seq, ack, flags)
            out.append((ts_us, f, len(f)))

    def data(self, key: int, chunk: Chunk) -> list[Frame]:
        out: list[Frame] = []
        self.data_into(
            out, key, chunk.ts_us, chunk.client, chunk.server, chunk.to_server, chunk.offset,
            chunk.data,
        )  # fmt: skip
        return out

    def data_into(
        self,
        out: list[Frame],
        key: int,
        ts_us: int,
        client: Endpoint,
        server: Endpoint,
        to_server: bool,
        off: int,
        data: bytes,
    ) -> None:
        """``data`` with the chunk's fields, appending to ``out``: the source's path (no Chunk
        made per record, no list per call)."""
        c = self._conns.get(key)
        if c is None or c.client != client or c.server != server:
            c = self._conn(key, client, server, opened=False)
        self._conns.move_to_end(key)
        n = len(out)
        if not c.started:
            self._start(c, ts_us, out)
        if to_server:
            src, dst, isn, ack = c.client, c.server, C_ISN, S_ISN + 1 + c.s_next
        else:
            src, dst, isn, ack = c.server, c.client, S_ISN, C_ISN + 1 + c.c_next
        if len(data) <= MAX_SEGMENT:
            f = segment(src, dst, isn + 1 + off, ack, PSH | ACK, data)
            out.append((ts_us, f, len(f)))
        else:
            for i in range(0, len(data), MAX_SEGMENT):
                f = segment(src, dst, isn + 1 + off + i, ack, PSH | ACK, data[i : i + MAX_SEGMENT])
                out.append((ts_us, f, len(f)))
        end = off + len(data)
        if to_server:
            if end > c.c_next:
                c.c_next = end
        elif end > c.s_next:
            c.s_next = end
        self.frames += len(out) - n

    def end(self, key: int, ts_us: int, from_client: bool, offset: int) -> list[Frame]:
        """One side sent its FIN after ``offset`` bytes (its stream length, as counted)."""
        c = self._conns.get(key)
        if c is None or not c.started:
            return []
        if from_client:
            if c.c_fin:
                return []
            c.c_fin = True
            c.c_next = max(c.c_next, offset)
            f = segment(c.client, c.server, C_ISN + 1 + c.c_next, S_ISN + 1 + c.s_next, FIN | ACK)
        else:
            if c.s_fin:
                return []
            c.s_fin = True
            c.s_next = max(c.s_next, offset)
            f = segment(c.server, c.client, S_ISN + 1 + c.s_next, C_ISN + 1 + c.c_next, FIN | ACK)
        self.frames += 1
        return [(ts_us, f, len(f))]

    def close(self, key: int, ts_us: int, c_offset: int, s_offset: int) -> list[Frame]:
        """The socket is gone: whichever FIN was not framed yet is, and the state goes."""
        if key not in self._conns:
            return []
        out = self.end(key, ts_us, True, c_offset) + self.end(key, ts_us, False, s_offset)
        del self._conns[key]
        return out
