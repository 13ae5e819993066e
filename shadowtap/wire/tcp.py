"""Sans-I/O TCP reassembly: segments in, ordered byte streams (with gaps marked) out.

``Reassembler.feed(ts, segment)`` returns a list of ``StreamEvent``s: data in sequence order per
direction, ``GAP`` where bytes were lost (never glued over: the consumer resynchronises), ``END``
when a direction finishes (FIN reached in order, RST, eviction, end of input). Connections are told
apart by their 4-tuple and, for port reuse, by a new SYN. Nothing here reads a file or a socket.

Invariants and costs:
- Sequence numbers are compared modulo 2^32 (a signed 32-bit difference), and every byte gets an
  absolute stream offset (an unbounded int), so wrap-around at 2^32 is invisible downstream.
- An in-order segment with nothing held costs O(1) and no copy. Out-of-order segments are held
  (``max_held_bytes`` per direction, ``max_held_segments``); beyond either cap, or when the peer
  acknowledges bytes this capture never saw, the missing range becomes a ``GAP`` and delivery goes
  on.
- Retransmitted bytes are dropped (first copy wins, as a receiving Linux stack keeps it); when they
  differ from the copy already delivered (checked against the last few delivered segments and held
  ones)
  the connection notes ``retransmission_conflict``.
- Memory is bounded: at most ``max_connections`` connections (the least recently active is evicted
  first) and connections idle for ``idle_timeout`` seconds of capture time are evicted.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection
from enum import IntEnum
from typing import Any, NamedTuple

from shadowtap.records import format_endpoint
from shadowtap.wire.frames import ACK, FIN, RST, SYN, Segment, format_ip

MASK = 0xFFFFFFFF
_RECENT = 4  # delivered segments kept per direction to check retransmissions against
HALF = 0x80000000


class Kind(IntEnum):
    DATA = 0  # value: bytes
    GAP = 1  # value: number of bytes lost (> 0)
    END = 2  # value: None; this direction carries nothing more


# Enum members bound once: attribute access on an Enum class costs ~0.3 us.
_KIND_DATA = Kind.DATA
_KIND_END = Kind.END
_KIND_GAP = Kind.GAP


class StreamEvent(NamedTuple):
    """One event of one direction of one connection (a NamedTuple: made per segment)."""

    conn: Connection
    from_client: bool
    kind: Kind
    ts: float
    value: Any


class HalfStream:
    """One direction's byte stream. ``next_off`` is the absolute offset of the next byte to deliver;
    ``next_seq`` the sequence number it has on the wire."""

    __slots__ = (
        "conflicts",
        "end_reported",
        "ended",
        "fin_off",
        "held",
        "held_bytes",
        "isn_known",
        "next_off",
        "next_seq",
        "recent",
        "retransmissions",
    )

    def __init__(self) -> None:
        self.next_seq: int | None = None
        self.next_off = 0
        self.held: dict[int, tuple[float, bytes]] = {}
        self.held_bytes = 0
        # The last few delivered segments (references, no copies), to tell a faithful
        # retransmission from one carrying different bytes.
        # A list trimmed by hand, not a deque: ~600 bytes less per direction, which counts with
        # 100,000s of connections.
        self.recent: list[tuple[int, bytes]] = []
        self.fin_off: int | None = None
        self.ended = False
        self.end_reported = False
        self.conflicts = 0
        self.retransmissions = 0
        self.isn_known = False

    def offset(self, seq: int) -> int:
        """The absolute offset of ``seq`` (the nearest one modulo 2^32 to ``next_off``)."""
        assert self.next_seq is not None
        d = (seq - self.next_seq) & MASK
        if d >= HALF:
            d -= 1 << 32
        return self.next_off + d

    def _check_overlap(self, off: int, data: bytes) -> None:
        """Compare an old copy of bytes at ``off`` with the recently delivered segments."""
        end = off + len(data)
        for roff, rdata in self.recent:
            lo = max(roff, off)
            hi = min(end, roff + len(rdata))
            if lo < hi and data[lo - off : hi - off] != rdata[lo - roff : hi - roff]:
                self.conflicts += 1
                return

    def add(self, ts: float, seq: int, data: bytes, out: list[tuple[float, Any]]) -> None:
        """Accept ``data`` at ``seq``; append (ts, bytes) / (ts, gap int) to ``out`` in order."""
        if self.ended:
            return
        if self.next_seq is None:  # joined mid-stream: the first byte seen starts the stream
            self.next_seq = seq
        off = self.offset(seq)
        end = off + len(data)
        nxt = self.next_off
        if end <= nxt:
            self.retransmissions += 1
            self._check_overlap(off, data)
            return
        if off < nxt:
            self.retransmissions += 1
            self._check_overlap(off, data[: nxt - off])
            data = data[nxt - off :]
            off = nxt
        if off == nxt:
            self._deliver(ts, off, data, out)
            if self.held:
                self._drain(out)
            return
        old = self.held.get(off)
        if old is not None:
            if len(old[1]) >= len(data):
                self.retransmissions += 1
                if old[1][: len(data)] != data:
                    self.conflicts += 1
                return
            self.held_bytes -= len(old[1])
        self.held[off] = (ts, data)
        self.held_bytes += len(data)

    def _deliver(self, ts: float, off: int, data: bytes, out: list[tuple[float, Any]]) -> None:
        # Invariant: off == self.next_off.
        out.append((ts, data))
        recent = self.recent
        recent.append((off, data))
        if len(recent) > _RECENT:
            del recent[0]
        self.next_off = off + len(data)
        assert self.next_seq is not None
        self.next_seq = (self.next_seq + len(data)) & MASK
        if self.fin_off is not None and self.next_off >= self.fin_off:
            self.ended = True

    def _drain(self, out: list[tuple[float, Any]]) -> None:
        """Deliver held segments that now touch ``next_off``. O(k) per held segment (k held)."""
        held = self.held
        while held:
            off = min(held)
            if off > self.next_off:
                return
            ts, data = held.pop(off)
            self.held_bytes -= len(data)
            nxt = self.next_off
            if off + len(data) <= nxt:
                self._check_overlap(off, data)
                continue
            if off < nxt:
                self._check_overlap(off, data[: nxt - off])
                data = data[nxt - off :]
                off = nxt
            self._deliver(ts, off, data, out)

    def skip_to_held(self, ts: float, out: list[tuple[float, Any]]) -> bool:
        """Declare the bytes before the first held segment lost: a gap, then deliver. False when
        nothing is held."""
        if not self.held:
            return False
        off = min(self.held)
        lost = off - self.next_off
        assert self.next_seq is not None
        if lost > 0:
            out.append((ts, lost))
            self.next_seq = (self.next_seq + lost) & MASK
            self.next_off = off
            self.recent.clear()
        self._drain(out)
        return True

    def flush(self, ts: float, out: list[tuple[float, Any]]) -> None:
        """End of this direction: whatever is held is delivered with gaps before it."""
        while self.skip_to_held(ts, out):
            pass
        if self.fin_off is not None and self.fin_off > self.next_off and not self.ended:
            out.append((ts, self.fin_off - self.next_off))  # bytes before the FIN never seen
        self.ended = True
        self.recent.clear()


class State(IntEnum):
    OPEN = 0
    CLOSED = 1  # both directions ended (FIN/FIN, RST, eviction); kept a moment for stragglers


# Enum members bound once: attribute access on an Enum class costs ~0.3 us.
_STATE_CLOSED = State.CLOSED
_STATE_OPEN = State.OPEN


class Connection:
    """One TCP connection. ``app`` is the consumer's per-connection state (the HTTP parser)."""

    __slots__ = (
        "app",
        "c2s",
        "client",
        "client_addr",
        "client_isn",
        "id_prefix",
        "key",
        "last_ts",
        "lru_ts",
        "midstream",
        "s2c",
        "server",
        "server_addr",
        "start_ts",
        "state",
    )

    def __init__(
        self,
        key: tuple,
        client: tuple[bytes, int],
        server: tuple[bytes, int],
        ts: float,
        midstream: bool,
    ) -> None:
        self.key = key
        self.client_addr = client
        self.server_addr = server
        self.client = format_endpoint(format_ip(client[0]), client[1])
        self.server = format_endpoint(format_ip(server[0]), server[1])
        self.start_ts = ts
        self.last_ts = ts
        self.lru_ts = ts
        self.midstream = midstream
        self.c2s = HalfStream()
        self.s2c = HalfStream()
        self.state = _STATE_OPEN
        self.app: Any = None
        self.id_prefix = ""  # the consumer's cache (the Extractor: the exchange ids' key prefix)
        self.client_isn: int | None = None

    @property
    def conflicts(self) -> int:
        return self.c2s.conflicts + self.s2c.conflicts


_HTTP_METHOD_START = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def sniff_sender_is_server(payload: bytes) -> bool | None:
    """From a first payload seen mid-stream: True if it looks sent by an HTTP server, False if by a
    client, None when it does not tell."""
    if payload.startswith(b"HTTP/"):
        return True
    sp = payload.find(b" ", 0, 24)
    if sp > 0 and payload[0] in _HTTP_METHOD_START and payload[:sp].isalpha():
        return False
    return None


class Reassembler:
    """Tracks connections and turns segments into ordered stream events.

    ``server_ports``: ports known to be servers (decides direction when the SYN was not captured);
    otherwise the content decides, then the lower port. ``on_close(conn, ts)`` is called once a
    connection is gone (after its final events were returned or passed to ``on_evict_events``)."""

    def __init__(
        self,
        *,
        server_ports: Collection[int] = (),
        max_held_bytes: int = 4 << 20,
        max_held_segments: int = 1024,
        idle_timeout: float = 120.0,
        max_connections: int = 50_000,
        linger: float = 5.0,
        on_open: Callable[[Connection], None] | None = None,
    ) -> None:
        self.server_ports = frozenset(server_ports)
        self.max_held_bytes = max_held_bytes
        self.max_held_segments = max_held_segments
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.linger = linger
        self.on_open = on_open
        self.conns: OrderedDict[tuple, Connection] = OrderedDict()  # least recently active first
        # (src, sport, dst, dport) of either direction -> (connection, sent by its client)
        self.dirs: dict[tuple, tuple[Connection, bool]] = {}
        self.now = 0.0
        self._next_sweep = 0.0
        self.connections_seen = 0
        self.evicted = 0
        # The connection of the last segment that took the general path (cleared by the consumer).
        self.last_conn: Connection | None = None

    # -- helpers -----------------------------------------------------------------------------

    def _new(self, key: tuple, seg: Segment, ts: float) -> Connection:
        src = (seg.src, seg.sport)
        dst = (seg.dst, seg.dport)
        flags = seg.flags
        if flags & SYN:
            sender_is_server = bool(flags & ACK)
            midstream = sender_is_server  # SYN-ACK first: the client's SYN was not captured
        else:
            midstream = True
            if seg.dport in self.server_ports and seg.sport not in self.server_ports:
                sender_is_server = False
            elif seg.sport in self.server_ports and seg.dport not in self.server_ports:
                sender_is_server = True
            else:
                sniffed = sniff_sender_is_server(seg.payload) if seg.payload else None
                if sniffed is None:
                    sender_is_server = seg.sport < seg.dport
                else:
                    sender_is_server = sniffed
        client, server = (dst, src) if sender_is_server else (src, dst)
        conn = Connection(key, client, server, ts, midstream)
        self.conns[key] = conn
        self.dirs[(client[0], client[1], server[0], server[1])] = (conn, True)
        self.dirs[(server[0], server[1], client[0], client[1])] = (conn, False)
        self.connections_seen += 1
        if self.on_open is not None:
            self.on_open(conn)
        return conn

    def _forget(self, conn: Connection) -> None:
        del self.conns[conn.key]
        (c_ip, c_port), (s_ip, s_port) = conn.client_addr, conn.server_addr
        self.dirs.pop((c_ip, c_port, s_ip, s_port), None)
        self.dirs.pop((s_ip, s_port, c_ip, c_port), None)

    def _end(self, conn: Connection, ts: float, out: list[StreamEvent]) -> None:
        """Flush both directions of ``conn`` and mark it closed."""
        for from_client, hs in ((True, conn.c2s), (False, conn.s2c)):
            if hs.end_reported:
                continue
            chunks: list[tuple[float, Any]] = []
            hs.flush(ts, chunks)
            self._emit(conn, from_client, chunks, out)
            hs.end_reported = True
            out.append(StreamEvent(conn, from_client, _KIND_END, ts, None))
        conn.state = _STATE_CLOSED
        conn.last_ts = ts

    @staticmethod
    def _emit(
        conn: Connection, from_client: bool, chunks: list[tuple[float, Any]], out: list[StreamEvent]
    ) -> None:
        for ts, v in chunks:
            out.append(
                StreamEvent(
                    conn, from_client, _KIND_GAP if isinstance(v, int) else _KIND_DATA, ts, v
                )
            )

    # -- the entry points --------------------------------------------------------------------

    def feed_in_order(self, ts: float, seg: Segment) -> tuple[Connection, bool] | None:
        """``feed``'s in-order lane without an event list: a segment of a known, open connection,
        next in sequence, nothing held either way, no SYN, FIN or RST, and no sweep due. Takes
        its payload (the caller delivers it: one DATA event's worth) and returns (connection,
        from the client); else None with nothing changed, and the caller calls ``feed``. Same
        state afterwards as ``feed`` would leave (tests/capture/test_tcp.py checks both
        lanes agree). O(1): one dictionary lookup."""
        if ts >= self._next_sweep:
            return None
        src, sport, dst, dport, seqno, _ack, flags, payload = seg
        found = self.dirs.get((src, sport, dst, dport))
        if found is None or flags & 0x07:
            return None
        conn, from_client = found
        if from_client:
            hs, peer = conn.c2s, conn.s2c
        else:
            hs, peer = conn.s2c, conn.c2s
        if (
            seqno != hs.next_seq
            or hs.held
            or peer.held
            or hs.fin_off is not None
            or conn.state == _STATE_CLOSED
        ):
            return None
        if ts > self.now:  # noqa: PLR1730 - max() is a call per packet
            self.now = ts
        if ts - conn.lru_ts > 0.5:
            conn.lru_ts = ts
            self.conns.move_to_end(conn.key)
        conn.last_ts = ts
        if payload:
            n = len(payload)
            recent = hs.recent
            recent.append((hs.next_off, payload))
            if len(recent) > _RECENT:
                del recent[0]
            hs.next_off += n
            hs.next_seq = (hs.next_seq + n) & MASK
        return found

    def feed(self, ts: float, seg: Segment) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        if ts > self.now:
            self.now = ts
            if ts >= self._next_sweep:
                self._next_sweep = ts + 1.0
                self.sweep(ts, out)
        conns = self.conns
        src, sport, dst, dport, seqno, _ack, flags, payload = seg  # one unpack, not eight lookups
        found = self.dirs.get((src, sport, dst, dport))
        if found is not None:
            conn, from_client = found
            if (
                ts - conn.lru_ts > 0.5
            ):  # LRU order kept to half a second: one move per 0.5 s, not per packet
                conn.lru_ts = ts
                conns.move_to_end(conn.key)
            if flags & SYN and not flags & ACK:
                # A SYN on a known 4-tuple: a duplicate, or port reuse by a new connection.
                if conn.client_isn == seqno and from_client:
                    return out
                if (
                    conn.state == _STATE_CLOSED
                    or conn.client_isn is not None
                    or conn.c2s.next_off
                    or conn.s2c.next_off
                ):
                    self._end(conn, ts, out)
                    self._forget(conn)
                    found = None
        if found is None:
            if flags & RST and not payload:
                return out
            a = (src, sport)
            b = (dst, dport)
            conn = self._new((a, b) if a < b else (b, a), seg, ts)
            from_client = a == conn.client_addr
            if len(conns) > self.max_connections:
                old = next(iter(conns.values()))
                self._end(old, ts, out)
                self._forget(old)
                self.evicted += 1
        elif conn.state == _STATE_CLOSED:
            return out  # a straggler after the close (late retransmission, final ACK)
        conn.last_ts = ts
        if from_client:
            hs, peer = conn.c2s, conn.s2c
        else:
            hs, peer = conn.s2c, conn.c2s
        if (
            not flags & 0x07
            and seqno == hs.next_seq
            and not hs.held
            and not peer.held
            and hs.fin_off is None
        ):
            # The common case: in order, nothing held either way, no SYN/FIN/RST. O(1), no copy.
            if payload:
                n = len(payload)
                recent = hs.recent
                recent.append((hs.next_off, payload))
                if len(recent) > _RECENT:
                    del recent[0]
                hs.next_off += n
                hs.next_seq = (hs.next_seq + n) & MASK
                out.append(StreamEvent(conn, from_client, _KIND_DATA, ts, payload))
            return out
        self.last_conn = conn  # the general path: the consumer checks this connection for conflicts
        if flags & SYN:
            if hs.next_seq is None or not hs.isn_known and hs.next_off == 0:
                hs.next_seq = (seg.seq + 1) & MASK
                hs.isn_known = True
                if from_client and not flags & ACK:
                    conn.client_isn = seg.seq
            seq = (seg.seq + 1) & MASK
        else:
            seq = seg.seq
        chunks: list[tuple[float, Any]] = []
        payload = seg.payload
        if payload:
            hs.add(ts, seq, payload, chunks)
        if flags & FIN and hs.fin_off is None:
            if hs.next_seq is None:
                hs.next_seq = seq
            hs.fin_off = hs.offset((seq + len(payload)) & MASK)
            if hs.next_off >= hs.fin_off:
                hs.ended = True
        if flags & ACK:
            peer = conn.s2c if from_client else conn.c2s
            if peer.held and peer.next_seq is not None:
                acked = peer.offset(seg.ack)
                if acked > min(peer.held):
                    # The receiver had bytes this capture never saw: they are lost to us.
                    pchunks: list[tuple[float, Any]] = []
                    peer.skip_to_held(ts, pchunks)
                    self._emit(conn, not from_client, pchunks, out)
        if hs.held and (
            hs.held_bytes > self.max_held_bytes or len(hs.held) > self.max_held_segments
        ):
            hs.skip_to_held(ts, chunks)
        self._emit(conn, from_client, chunks, out)
        if flags & RST:
            self._end(conn, ts, out)
        else:
            for fc, h in ((True, conn.c2s), (False, conn.s2c)):
                if h.ended and not h.end_reported:
                    h.end_reported = True
                    out.append(StreamEvent(conn, fc, _KIND_END, ts, None))
            if conn.c2s.end_reported and conn.s2c.end_reported:
                conn.state = _STATE_CLOSED
                conn.c2s.recent.clear()
                conn.s2c.recent.clear()
        return out

    def sweep(self, now: float, out: list[StreamEvent]) -> None:
        """Evict idle connections and forget closed ones past their linger. O(evicted)."""
        conns = self.conns
        while conns:
            conn = next(iter(conns.values()))
            idle = now - conn.last_ts
            if conn.state == _STATE_CLOSED:
                if idle < self.linger:
                    break
            elif idle < self.idle_timeout:
                break
            else:
                self._end(conn, now, out)
                self.evicted += 1
            self._forget(conn)

    def finish(self) -> list[StreamEvent]:
        """End of input: every open connection ends (held bytes delivered after gaps)."""
        out: list[StreamEvent] = []
        for conn in list(self.conns.values()):
            if conn.state != _STATE_CLOSED:
                self._end(conn, self.now, out)
        self.conns.clear()
        self.dirs.clear()
        return out
