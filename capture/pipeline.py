"""The one path from packets to exchanges, shared by offline ``extract``, live capture and the mirror.

``Extractor.feed(ts, linktype, frame)`` decodes a frame (capture.decode), reassembles its TCP
stream (capture.reassembly), parses HTTP/1.x (capture.http1) and returns the exchanges that are
ready, in request-time order; ``finish()`` flushes the rest at the end of input. The same frames
with the same timestamps give byte-identical records (ids derive from endpoints, the connection's
first timestamp in whole microseconds and the position on the connection).

Request-time order: a finished exchange is held until every exchange that began before it is
finished too (a heap keyed by first-byte time). A request that never gets an answer therefore holds
back later exchanges until its connection closes or is evicted as idle (``idle_timeout`` seconds of
capture time); ``max_held_exchanges`` bounds that wait: beyond it the oldest finished exchanges go
out anyway, and the late one is marked ``late`` when it comes.

``on_request`` is called with a ``RequestEvent`` the moment a request is complete on the wire (before
its response): the live mirror sends it to the shadow at once. The exchange written later for it
carries the same id.

Order and sharding: exchanges are ordered by (first-byte time, number of the packet that began
them, serial); the packet number makes that order the same when ``shard=(k, n)`` splits the
connections over worker processes (capture.extract merges their lines by that key).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import heapq
import struct
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from hashlib import blake2b

from shadowtap.capture.decode import Segment, decode
from shadowtap.capture.http1 import Conversation, Event, Transaction
from shadowtap.capture.reassembly import Connection, Kind, Reassembler, State
from shadowtap.errors import InputError, PrerequisiteError
from shadowtap.records import Exchange, Request
from shadowtap.redact import Redactor

# Enum members bound once: attribute access on an Enum class costs ~0.3 us.
_EVENT_OPENED, _EVENT_REQUEST = Event.OPENED, Event.REQUEST
_KIND_DATA, _KIND_GAP, _KIND_END = Kind.DATA, Kind.GAP, Kind.END
_STATE_CLOSED = State.CLOSED


# Sharding (``Extractor(shard=(k, n))``): every worker reads every frame in the same order and
# keeps the connections of share k. A connection is known by ``x``, the XOR of the two ports and the
# last 16 bits of each address: the same both ways, and read off the raw bytes of an untagged
# Ethernet + IPv4 TCP frame (what loopback and most captures hold) before any decoding, so a worker
# skips the other shares' frames for one unpack and one dictionary lookup. Each new ``x`` goes to
# the next share round-robin: every worker sees the same frames in the same order, so all build
# the same table without talking to each other, and a few connections split evenly (a hash of
# eight connections over two workers was 5:3 as often as 4:4). Connections that share an ``x`` share
# a worker. The table holds at most 65,536 entries (~5 MB).

# The last 16 bits of each IPv4 address and the two ports of an untagged Ethernet + IPv4 (20-byte
# header) frame, at fixed offsets.
_eth_ip4_share_fields = struct.Struct("!2xH2xHHH").unpack_from


def _raw_conn_key(linktype: int, frame: bytes) -> int:
    """A connection's ``x`` read off the raw bytes of an untagged Ethernet + IPv4 TCP frame with a
    20-byte IP header; -1 for any other frame. Invariant: whenever ``decode(linktype, frame)``
    returns a segment and this is not -1, it equals ``_conn_key`` of that segment (decode reads the
    same bytes at the same offsets on its fast and its general path; tests/capture/test_pipeline.py
    checks it on random frames)."""
    if linktype == 1 and len(frame) >= 38 and frame[12] == 8 and frame[13] == 0 and frame[14] == 0x45 and frame[23] == 6:
        a, b, c, d = _eth_ip4_share_fields(frame, 26)
        return a ^ b ^ c ^ d
    return -1


def _conn_key(seg: Segment) -> int:
    """A segment's connection ``x`` (see above): the same for both directions."""
    return seg.sport ^ seg.dport ^ seg.src[-1] ^ seg.dst[-1] ^ (seg.src[-2] << 8) ^ (seg.dst[-2] << 8)


def _id(conn: Connection, index: int) -> str:
    """``records.exchange_id`` of the ``index``-th exchange of ``conn``, with the connection's part
    of the key formatted once (tests check both agree)."""
    prefix = conn.id_prefix
    if not prefix:
        prefix = conn.id_prefix = f"{conn.client}|{conn.server}|{round(conn.start_ts * 1_000_000)}|"
    return blake2b((prefix + str(index)).encode(), digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class RequestEvent:
    """A request complete on the wire, before its response."""

    exchange_id: str
    client: str
    server: str
    index: int
    request: Request


@dataclass(frozen=True, slots=True)
class ExtractStats:
    """Counters of one extraction (a snapshot)."""

    packets: int = 0
    bytes: int = 0
    tcp_packets: int = 0
    connections: int = 0
    exchanges: int = 0
    unanswered: int = 0  # requests without a response
    responses_without_request: int = 0
    anomalies: dict[str, int] = field(default_factory=dict)  # by kind, over exchanges and connections
    evicted_connections: int = 0
    open_connections: int = 0  # tracked now (closed ones linger a few seconds for stragglers)
    held_exchanges: int = 0  # finished or in progress, waiting for request-time order


class _Default:
    def __repr__(self) -> str:
        return "<default Redactor>"


DEFAULT_REDACTOR = _Default()


class BpfFilter:
    """A BPF filter expression run on each frame by libpcap (``pcap_offline_filter``), compiled
    once per link type. Costs one C call per frame."""

    def __init__(self, expr: str) -> None:
        self.expr = expr
        name = ctypes.util.find_library("pcap") or "libpcap.so.0.8"
        try:
            self._lib = ctypes.CDLL(name)
        except OSError as exc:
            raise PrerequisiteError("libpcap is needed for --filter", hint="apt-get install libpcap0.8") from exc
        lib = self._lib
        lib.pcap_open_dead.restype = ctypes.c_void_p
        lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.pcap_compile.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint32]
        lib.pcap_geterr.restype = ctypes.c_char_p
        lib.pcap_geterr.argtypes = [ctypes.c_void_p]
        lib.pcap_offline_filter.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p]
        self._programs: dict[int, _BpfProgram] = {}
        self._hdr = _PcapPkthdr()
        self.program(1)  # a bad expression fails now, not at the first packet

    def program(self, linktype: int) -> _BpfProgram:
        prog = self._programs.get(linktype)
        if prog is None:
            handle = self._lib.pcap_open_dead(linktype, 262144)
            prog = _BpfProgram()
            if self._lib.pcap_compile(handle, ctypes.byref(prog), self.expr.encode(), 1, 0xFFFFFFFF) != 0:
                msg = self._lib.pcap_geterr(handle).decode(errors="replace")
                raise InputError(f"bad filter expression {self.expr!r}: {msg}", field="bpf_filter")
            self._programs[linktype] = prog
        return prog

    def match(self, linktype: int, frame: bytes) -> bool:
        hdr = self._hdr
        hdr.caplen = hdr.len = len(frame)
        return bool(self._lib.pcap_offline_filter(ctypes.byref(self.program(linktype)), ctypes.byref(hdr), frame))


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.c_void_p)]


class _PcapPkthdr(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long), ("caplen", ctypes.c_uint32),
                ("len", ctypes.c_uint32)]


class Extractor:
    """Packets in, exchanges out (see the module docstring).

    ``ports``: only connections with a port in it (either end) are parsed; empty means every TCP
    connection, HTTP recognised by content. ``bpf_filter``: a BPF expression frames must match.
    ``max_body``: body bytes kept per message. Limits: ``max_held_bytes`` out-of-order bytes per
    direction, ``max_head`` bytes of an unfinished message head, ``idle_timeout`` seconds of capture
    time before an idle connection is evicted, ``max_connections`` tracked at once.
    ``shard=(k, n)``: only the connections of share k of n (capture.extract's worker processes;
    the n extractors must be fed the same frames in the same order: the shares are assigned as
    connections appear);
    ``keyed``: ``released_keys`` gets each returned exchange's order key, for merging shards."""

    def __init__(
        self,
        *,
        ports: Collection[int] = (),
        bpf_filter: str | None = None,
        max_body: int = 1 << 20,
        redactor: Redactor | None | _Default = DEFAULT_REDACTOR,
        keep_secrets: bool = False,
        on_request: Callable[[RequestEvent], None] | None = None,
        max_head: int = 64 << 10,
        max_held_bytes: int = 4 << 20,
        idle_timeout: float = 120.0,
        max_connections: int = 50_000,
        max_held_exchanges: int = 100_000,
        shard: tuple[int, int] | None = None,
        keyed: bool = False,
    ) -> None:
        if max_body < 0:
            raise InputError("must be >= 0", field="max_body")
        self.ports = frozenset(ports)
        self.filter = BpfFilter(bpf_filter) if bpf_filter else None
        self.max_body = max_body
        self.max_head = max_head
        if keep_secrets:
            self.redactor: Redactor | None = None
        elif isinstance(redactor, _Default):
            self.redactor = Redactor.default()
        else:
            self.redactor = redactor
        self.on_request = on_request
        # Redaction walks every header; the parser flags the heads that name a secret header, so
        # only those pay for it.
        # The names to look for in heads: one that contains another ("set-cookie", "cookie") is
        # found through it, so the default set is two substring searches a head.
        names = sorted(self.redactor.names) if self.redactor is not None else []
        self._watch = tuple(n for n in names if not any(m != n and m in n for m in names))
        self.max_held_exchanges = max_held_exchanges
        self.shard = shard
        self._shares: dict[int, int] = {}  # connection key -> share (see "Sharding" above)
        self._next_share = 0
        self.reassembler = Reassembler(
            server_ports=self.ports, max_held_bytes=max_held_bytes, idle_timeout=idle_timeout,
            max_connections=max_connections,
        )
        # (first-byte time, packet number, serial, transaction): request-time order, ties broken by
        # the packet that began the exchange, then the order within that packet. The packet number
        # makes the order the same when connections are split over worker processes.
        self._heap: list[tuple[float, int, int, Transaction]] = []
        self.keyed = keyed
        self.released_keys: list[tuple[float, int, int]] = []  # with keyed=True: the key of each exchange returned
        self._serial = 0
        self._packets = 0
        self._bytes = 0
        self._tcp = 0
        self._exchanges = 0
        self._unanswered = 0
        self._orphans = 0
        self._anomalies: Counter[str] = Counter()
        self._late: list[Transaction] = []
        self._ready = False  # a transaction finished since the last release

    # -- input ----------------------------------------------------------------------------------

    def feed(self, ts: float, linktype: int, frame: bytes) -> list[Exchange]:
        """One captured frame. Returns the exchanges now ready, in request-time order."""
        self._packets += 1
        self._bytes += len(frame)
        shard = self.shard
        if shard is not None:
            x = _raw_conn_key(linktype, frame)
            if x >= 0:
                k = self._shares.get(x)
                if k is None:
                    k = self._new_share(x)
                if k != shard[0]:
                    return []  # another worker's connection, known before decoding
                shard = None  # ours: no second test after decoding
        if self.filter is not None and not self.filter.match(linktype, frame):
            return []
        seg = decode(linktype, frame)
        if seg is None:
            return []
        if self.ports and seg.sport not in self.ports and seg.dport not in self.ports:
            return []
        if shard is not None:
            x = _conn_key(seg)
            k = self._shares.get(x)
            if k is None:
                k = self._new_share(x)
            if k != shard[0]:
                return []  # another worker's connection
        self._tcp += 1
        r = self.reassembler
        found = r.feed_in_order(ts, seg)
        if found is not None:
            # The common segment: in order on a known connection. What ``_dispatch`` does for
            # one DATA event, without the event.
            payload = seg[7]
            if not payload:
                return []
            conn, from_client = found
            conv = conn.app
            if conv is None:
                conv = self._conversation(conn)
            (conv.client if from_client else conv.server).feed(ts, payload)
            if conv.events:
                self._collect(conn, conv)
            if conv.anomalies:
                self._anomalies.update(conv.anomalies)
                conv.anomalies.clear()
            if self._ready or len(self._heap) > self.max_held_exchanges:
                return self._release()
            return []
        events = r.feed(ts, seg)
        conn = r.last_conn  # set by the general path only: the in-order fast path meets no conflict
        if conn is not None:
            r.last_conn = None
            if (conn.c2s.conflicts or conn.s2c.conflicts) and conn.app is not None:
                self._note_conflict(conn, conn.app)
        if not events:
            return []
        return self._dispatch(events)

    def _new_share(self, x: int) -> int:
        """The share of a connection key met for the first time: the next one round-robin."""
        k = self._shares[x] = self._next_share
        self._next_share = (k + 1) % self.shard[1]  # type: ignore[index]
        return k

    def finish(self) -> list[Exchange]:
        """End of input: every connection ends, every exchange goes out."""
        out = self._dispatch(self.reassembler.finish())
        while self._heap:
            txn = heapq.heappop(self._heap)[3]
            if not txn.void:
                out.append(self._exchange(txn))
        return out

    @property
    def stats(self) -> ExtractStats:
        return ExtractStats(
            packets=self._packets, bytes=self._bytes, tcp_packets=self._tcp,
            connections=self.reassembler.connections_seen, exchanges=self._exchanges,
            unanswered=self._unanswered, responses_without_request=self._orphans,
            anomalies=dict(sorted(self._anomalies.items())), evicted_connections=self.reassembler.evicted,
            open_connections=len(self.reassembler.conns), held_exchanges=len(self._heap),
        )

    # -- internals ------------------------------------------------------------------------------

    def _conversation(self, conn: Connection) -> Conversation:
        conv = conn.app
        if conv is None:
            conv = Conversation(max_body=self.max_body, max_head=self.max_head, midstream=conn.midstream,
                                watch=self._watch)
            conn.app = conv
        return conv

    def _dispatch(self, events: list) -> list[Exchange]:
        for conn, from_client, kind, ts, value in events:
            conv = conn.app
            if conv is None:
                conv = self._conversation(conn)
            if kind == _KIND_DATA:
                (conv.client if from_client else conv.server).feed(ts, value)
            elif kind == _KIND_GAP:
                conv.gap(from_client, ts, value)
            else:
                conv.end(from_client, ts)
                if conn.state == _STATE_CLOSED and (conv.queue or conv.client.txn is not None):
                    conv.close(ts)  # both directions ended: what is still open finishes as it stands
            if conv.events:
                self._collect(conn, conv)
            if conv.anomalies:
                self._anomalies.update(conv.anomalies)
                conv.anomalies.clear()
            if kind == _KIND_END and conn.state == _STATE_CLOSED and not conv.queue:
                conn.app = None  # the parser state goes now, not when the closed connection is forgotten
        if self._ready or len(self._heap) > self.max_held_exchanges:
            return self._release()
        return []

    def _note_conflict(self, conn: Connection, conv: Conversation) -> None:
        """A retransmission carried different bytes: the transaction being parsed gets the note."""
        conn.c2s.conflicts = conn.s2c.conflicts = 0
        txn = conv.server.txn or conv.client.txn or (conv.queue[-1] if conv.queue else None)
        if txn is None:
            self._anomalies["retransmission_conflict"] += 1
        else:
            txn.note("retransmission_conflict")

    def _collect(self, conn: Connection, conv: Conversation) -> None:
        for ev, txn in conv.events:
            if ev == _EVENT_OPENED:
                txn.conn = conn
                self._serial += 1
                txn.serial = self._serial
                txn.order = (txn.ts, self._packets, txn.serial)
                heapq.heappush(self._heap, (txn.ts, self._packets, txn.serial, txn))
            elif ev == _EVENT_REQUEST:
                if self.on_request is not None and txn.request is not None:
                    req = txn.request
                    if self.redactor is not None and txn.secret:
                        req = self.redactor.message(req)  # type: ignore[assignment]
                    assert req is not None
                    self.on_request(RequestEvent(_id(conn, txn.index), conn.client, conn.server, txn.index, req))
            else:  # DONE
                self._ready = True
                if txn.late and not txn.void:
                    self._late.append(txn)
        conv.events.clear()

    def _release(self) -> list[Exchange]:
        self._ready = False
        heap = self._heap
        out: list[Exchange] = []
        if self._late:
            out.extend(self._exchange(t) for t in self._late)
            self._late.clear()
        while heap and (heap[0][3].done or len(heap) > self.max_held_exchanges):
            txn = heapq.heappop(heap)[3]
            if txn.void:
                continue
            if not txn.done:
                # Held too long behind an unfinished exchange: let the rest go; it comes out late.
                txn.late = True
                txn.note("late")
                continue
            out.append(self._exchange(txn))
        return out

    def _exchange(self, txn: Transaction) -> Exchange:
        if self.keyed:
            self.released_keys.append(txn.order)
        conn: Connection = txn.conn
        req, resp = txn.request, txn.response
        ttfb = total = None
        if req is not None and resp is not None:
            ttfb = round((resp.ts - req.end_ts) * 1000.0, 3)
            total = round((resp.end_ts - req.ts) * 1000.0, 3)
        elif req is not None:
            self._unanswered += 1
        else:
            self._orphans += 1
        self._exchanges += 1
        anomalies: tuple[str, ...] = ()
        if txn.anomalies:
            anomalies = tuple(txn.anomalies)
            self._anomalies.update(anomalies)
        # Positional (cheaper than keywords): id, client, server, index, request, response,
        # anomalies, ttfb_ms, total_ms.
        ex = Exchange(_id(conn, txn.index), conn.client, conn.server, txn.index, req, resp, anomalies, ttfb, total,
                      chunks=txn.chunks)
        if self.redactor is not None and txn.secret:
            ex = self.redactor.exchange(ex)
        return ex
