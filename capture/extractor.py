"""The Extractor: the one path from packets (or plaintext streams) to exchanges, shared by
offline ``extract``, live capture and the mirror. It is where protocols plug in.

``Extractor.feed(ts, linktype, frame)`` decodes a frame (shadowtap.wire.frames), reassembles its TCP
stream (shadowtap.wire.tcp), hands each connection's ordered bytes to its protocol's parser and
returns the exchanges that are ready, in request-time order; ``finish()`` flushes the rest at the
end
of input. ``feed_stream``/``end_stream`` take in-order plaintext of a connection that needs no
reassembly (a TLS source's decrypted chunks) and give the same Exchange records.

Protocols (``shadowtap.wire.protocol``): per connection the first payload bytes are offered to each
``ProtocolSpec`` of ``protocols`` in turn (``sniff``); the first that says YES parses the
connection (``make``), a MORE holds the bytes until one can tell. HTTP/1.x is the default and the
last resort (it tells non-HTTP from HTTP itself). A parser may hand its connection over to another
protocol mid-way (``Event.SWITCH``: HTTP/1.1 ``Upgrade: h2c`` answered ``101`` continues as
HTTP/2 at the exact byte after the ``101`` head; ``ProtocolSpec.upgrade``). A protocol's parser
appends ``(Event, Transaction)`` to its ``events``; the Extractor keeps the bookkeeping: the
connection of each transaction, its order key, the late ones, ids and redaction.

The same frames with the same timestamps give byte-identical records (ids derive from endpoints,
the connection's first timestamp in whole microseconds and the position on the connection).

Request-time order: a finished exchange is held until every exchange that began before it is
finished too (a heap keyed by first-byte time). A request that never gets an answer therefore holds
back later exchanges until its connection closes or is evicted as idle (``idle_timeout`` seconds of
capture time); ``max_held_exchanges`` bounds that wait: beyond it the oldest finished exchanges go
out anyway, and the late one is marked ``late`` when it comes.

``on_request`` is called with a ``RequestEvent`` the moment a request is complete on the wire
(before
its response): the live mirror sends it to the shadow at once. The exchange written later for it
carries the same id.

Order and sharding: exchanges are ordered by (first-byte time, number of the packet that began
them, serial); the packet number makes that order the same when ``shard=(k, n)`` splits the
connections over worker processes (capture.extract merges their lines by that key).
"""

from __future__ import annotations

import heapq
import struct
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shadowtap.errors import InputError
from shadowtap.frozen import fast_init
from shadowtap.records import Exchange, Request, exchange_id_at, exchange_id_prefix, format_endpoint
from shadowtap.redact import Redactor
from shadowtap.wire import http1, http2
from shadowtap.wire.anomalies import Anomaly
from shadowtap.wire.frames import Segment, decode
from shadowtap.wire.protocol import (
    SNIFF_MAX,
    Conversation,
    Event,
    ParserSettings,
    ProtocolSpec,
    Sniff,
    Transaction,
)
from shadowtap.wire.tcp import Connection, Kind, Reassembler, State

if TYPE_CHECKING:
    from shadowtap.capture.libpcap import BpfFilter

# The protocols tried on each connection, in order (the last one takes what the others do not).
DEFAULT_PROTOCOLS: tuple[ProtocolSpec, ...] = (http2.PROTOCOL, http1.PROTOCOL)

_H2_STREAM = http2.Stream

# Enum members bound once: attribute access on an Enum class costs ~0.3 us.
_EVENT_OPENED, _EVENT_REQUEST, _EVENT_SWITCH = Event.OPENED, Event.REQUEST, Event.SWITCH
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
    same bytes at the same offsets on its fast and its general path; tests/capture/test_extractor.py
    checks it on random frames)."""
    if (
        linktype == 1
        and len(frame) >= 38
        and frame[12] == 8
        and frame[13] == 0
        and frame[14] == 0x45
        and frame[23] == 6
    ):
        a, b, c, d = _eth_ip4_share_fields(frame, 26)
        return a ^ b ^ c ^ d
    return -1


def _conn_key(seg: Segment) -> int:
    """A segment's connection ``x`` (see above): the same for both directions."""
    return (
        seg.sport ^ seg.dport ^ seg.src[-1] ^ seg.dst[-1] ^ (seg.src[-2] << 8) ^ (seg.dst[-2] << 8)
    )


def _id(conn: Connection | _Stream, index: int) -> str:
    """``records.exchange_id`` of the ``index``-th exchange of ``conn``, with the connection's part
    of the key formatted once."""
    prefix = conn.id_prefix
    if not prefix:
        prefix = conn.id_prefix = exchange_id_prefix(conn.client, conn.server, conn.start_ts)
    return exchange_id_at(prefix, index)


def _held_size(txn: Transaction) -> int:
    """What a finished exchange holds while it waits for order: its kept bodies (the rest is small
    and counted by number)."""
    req, resp = txn.request, txn.response
    return (len(req.body) if req is not None else 0) + (len(resp.body) if resp is not None else 0)


@fast_init
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
    anomalies: dict[str, int] = field(
        default_factory=dict
    )  # by kind, over exchanges and connections
    evicted_connections: int = 0
    open_connections: int = 0  # tracked now (closed ones linger a few seconds for stragglers)
    held_exchanges: int = 0  # finished or in progress, waiting for request-time order


class _Default:
    def __repr__(self) -> str:
        return "<default Redactor>"


DEFAULT_REDACTOR = _Default()


class _Stream:
    """A connection fed as in-order plaintext (``Extractor.feed_stream``): what the Extractor keeps
    of a reassembled ``Connection`` (endpoints, first timestamp, the id prefix, the parser)."""

    __slots__ = (
        "app",
        "client",
        "client_ended",
        "id_prefix",
        "last_ts",
        "midstream",
        "server",
        "server_ended",
        "start_ts",
        "state",
    )

    def __init__(self, client: str, server: str, ts: float, midstream: bool) -> None:
        self.client = client
        self.server = server
        self.start_ts = ts
        self.last_ts = ts
        self.midstream = midstream
        self.id_prefix = ""
        self.app: Any = None
        self.client_ended = False
        self.server_ended = False
        self.state = State.OPEN


class _Sniffer:
    """A connection whose protocol cannot be told yet (a spec answered ``Sniff.MORE``): holds its
    first bytes (at most ``SNIFF_MAX`` a direction, then the last spec wins), then makes the chosen
    protocol's parser, puts it in ``conn.app`` and replays what it held into it."""

    __slots__ = ("anomalies", "conn", "events", "extractor", "feed_client", "feed_server", "held")

    def __init__(self, extractor: Extractor, conn: Any) -> None:
        self.extractor = extractor
        self.conn = conn
        self.held: list[tuple[bool, float, bytes]] = []
        self.events: list[tuple[Event, Transaction]] = []
        self.anomalies: list[str] = []
        self.feed_client = self._client
        self.feed_server = self._server

    @property
    def pending(self) -> bool:
        return False

    def current(self) -> Transaction | None:
        return None

    def _client(self, ts: float, data: bytes) -> None:
        self._data(True, ts, data)

    def _server(self, ts: float, data: bytes) -> None:
        self._data(False, ts, data)

    def _data(self, from_client: bool, ts: float, data: bytes) -> None:
        self.held.append((from_client, ts, data))
        seen = b"".join(d for c, _, d in self.held if c == from_client)
        spec = self.extractor._pick(seen, from_client, len(seen) >= SNIFF_MAX)
        if spec is not None:
            self._hand_over(spec)

    def _hand_over(self, spec: ProtocolSpec | None = None) -> Conversation:
        ex = self.extractor
        conv = (spec or ex.protocols[-1]).make(ex.settings, self.conn.midstream)
        self.conn.app = conv
        for from_client, ts, data in self.held:
            (conv.feed_client if from_client else conv.feed_server)(ts, data)
        self.held = []
        return conv

    def gap(self, from_client: bool, ts: float, n: int) -> None:
        self._hand_over().gap(from_client, ts, n)

    def end(self, from_client: bool, ts: float) -> None:
        self._hand_over().end(from_client, ts)

    def close(self, ts: float) -> None:
        self._hand_over().close(ts)


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
    ``keyed``: ``released_keys`` gets each returned exchange's order key, for merging shards.
    ``protocols``: the ``ProtocolSpec``s tried on each connection, in order (the last one takes
    what no other claims; see ``shadowtap.wire.protocol``)."""

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
        max_hold_bytes: int = 64 << 20,
        max_hold_seconds: float = 30.0,
        max_open: int = 100,
        shard: tuple[int, int] | None = None,
        keyed: bool = False,
        protocols: Sequence[ProtocolSpec] = DEFAULT_PROTOCOLS,
    ) -> None:
        if max_body < 0:
            raise InputError("must be >= 0", field="max_body")
        self.ports = frozenset(ports)
        self.filter: BpfFilter | None = None
        if bpf_filter:
            # Imported here: libpcap's binding (ctypes, the doctor's checks) is for filters and
            # live capture only; extract without a filter never loads it (start-up time).
            from shadowtap.capture.libpcap import BpfFilter

            self.filter = BpfFilter(bpf_filter)
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
        names = sorted(self.redactor.watch_names) if self.redactor is not None else []
        self._watch = tuple(n for n in names if not any(m != n and m in n for m in names))
        if not protocols:
            raise ValueError("protocols: at least one")
        self.protocols = tuple(protocols)
        self.settings = ParserSettings(
            max_body=max_body,
            max_head=max_head,
            watch=self._watch,
            max_open=max_open,
            upgrades=tuple(s.upgrade_token for s in self.protocols if s.upgrade is not None),
        )
        # Holding for request-time order is bounded three ways: finished exchanges waiting
        # (max_held_exchanges), their body bytes (max_hold_bytes), and the capture-time age of the
        # oldest unfinished one (max_hold_seconds): past any, the exchanges after a stalled one go
        # out and the stalled one is written ``late`` when it finishes (issue 12 item 5).
        self.max_hold_bytes = max_hold_bytes
        self.max_hold_seconds = max_hold_seconds
        self._held_bytes = 0  # body bytes of finished exchanges still in the heap
        self._now = 0.0  # the latest capture time fed
        self._streams: dict[tuple[str, str], _Stream] = {}  # feed_stream's connections
        self._streams_seen = 0
        self.idle_timeout = idle_timeout
        self.max_held_exchanges = max_held_exchanges
        self.shard = shard
        self._shares: dict[int, int] = {}  # connection key -> share (see "Sharding" above)
        self._next_share = 0
        self.reassembler = Reassembler(
            server_ports=self.ports,
            max_held_bytes=max_held_bytes,
            idle_timeout=idle_timeout,
            max_connections=max_connections,
        )
        # (first-byte time, packet number, serial, transaction, connection): request-time order,
        # ties
        # broken by the packet that began the exchange, then the order within that packet. The
        # packet number makes the order the same when connections are split over worker processes.
        self._heap: list[tuple[float, int, int, Transaction, Any]] = []
        self.keyed = keyed
        self.released_keys: list[
            tuple[float, int, int]
        ] = []  # with keyed=True: the key of each exchange returned
        self._serial = 0
        self._packets = 0
        self._bytes = 0
        self._tcp = 0
        self._exchanges = 0
        self._unanswered = 0
        self._orphans = 0
        self._anomalies: Counter[str] = Counter()
        self._late: list[
            tuple[float, int, int, Transaction, Any]
        ] = []  # done, released past: out next
        self._overtaken: dict[
            Transaction, tuple[float, int, int, Transaction, Any]
        ] = {}  # released past, not done
        self._ready = False  # a transaction finished since the last release

    # -- input ----------------------------------------------------------------------------------

    def feed(self, ts: float, linktype: int, frame: bytes) -> list[Exchange]:
        """One captured frame. Returns the exchanges now ready, in request-time order."""
        self._packets += 1
        self._bytes += len(frame)
        self._now = ts
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
        r = self.reassembler
        # The in-order lane first: a connection the reassembler knows passed the port and share
        # tests when it began (they do not change), so its segments skip them.
        found = r.feed_in_order(ts, seg)
        if found is not None:
            # The common segment: in order on a known connection. What ``_dispatch`` does for
            # one DATA event, without the event.
            self._tcp += 1
            payload = seg[7]
            if not payload:
                return []
            conn, from_client = found
            conv = conn.app
            if conv is None:
                conv = self._conversation(conn, from_client, payload)
            (conv.feed_client if from_client else conv.feed_server)(ts, payload)
            conv = conn.app  # a _Sniffer may have handed the connection over
            if conv.events:
                self._collect(conn, conv)
            if conv.anomalies:
                self._anomalies.update(conv.anomalies)
                conv.anomalies.clear()
            if self._ready or len(self._heap) > self.max_held_exchanges:
                return self._release()
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
        events = r.feed(ts, seg)
        last = r.last_conn  # set by the general path only: the in-order fast path meets no conflict
        if last is not None:
            conn = last
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
        for key in list(self._streams):
            out.extend(self._close_stream(key, self._streams[key].last_ts))
        out.extend(self._release())
        while self._heap:
            entry = heapq.heappop(self._heap)
            if not entry[3].void:
                out.append(self._exchange(entry))
        return out

    # -- in-order plaintext streams (no reassembly) ----------------------------------------------

    def feed_stream(
        self,
        ts: float,
        client: tuple[str, int],
        server: tuple[str, int],
        from_client: bool,
        data: bytes,
        *,
        midstream: bool = False,
    ) -> list[Exchange]:
        """In-order plaintext bytes of one direction of a connection (``client``/``server`` as (ip,
        port)), e.g. a TLS source's decrypted chunks: parsed as reassembled TCP data is, without
        reassembly, sharding or port filtering. A connection is new the first time its endpoints
        are seen (``midstream``: the source joined it after it began) and lasts until
        ``end_stream`` ended both directions, or ``idle_timeout`` seconds of capture time without
        data. Returns the exchanges now ready, in request-time order (frames and streams share
        it)."""
        key = (format_endpoint(*client), format_endpoint(*server))
        st = self._streams.get(key)
        if st is None:
            st = self._streams[key] = _Stream(key[0], key[1], ts, midstream)
            self._streams_seen += 1
            if self._streams_seen % 1024 == 0:
                self._sweep_streams(ts)
        st.last_ts = ts
        self._now = ts
        if not data:
            return []
        conv = st.app
        if conv is None:
            conv = self._conversation(st, from_client, data)
        (conv.feed_client if from_client else conv.feed_server)(ts, data)
        conv = st.app
        self._take(st, conv)
        if self._ready or len(self._heap) > self.max_held_exchanges:
            return self._release()
        return []

    def end_stream(
        self,
        ts: float,
        client: tuple[str, int],
        server: tuple[str, int],
        from_client: bool | None = None,
    ) -> list[Exchange]:
        """One direction (``from_client`` True/False) or both (None) of a ``feed_stream``
        connection carries nothing more; when both have ended the connection is closed (what is
        still open finishes as it stands) and forgotten."""
        key = (format_endpoint(*client), format_endpoint(*server))
        st = self._streams.get(key)
        if st is None:
            return []
        if from_client is None:
            return self._close_stream(key, ts)
        conv = st.app
        if from_client:
            st.client_ended = True
        else:
            st.server_ended = True
        if st.client_ended and st.server_ended:
            return self._close_stream(key, ts)
        if conv is not None:
            conv.end(from_client, ts)
            conv = st.app
            self._take(st, conv)
        return self._release() if self._ready else []

    def _close_stream(self, key: tuple[str, str], ts: float) -> list[Exchange]:
        st = self._streams.pop(key)
        st.state = State.CLOSED
        conv = st.app
        if conv is not None:
            for from_client, ended in ((True, st.client_ended), (False, st.server_ended)):
                if not ended:
                    conv.end(from_client, ts)
                    conv = st.app
            if conv.pending:
                conv.close(ts)
            self._take(st, conv)
            st.app = None
        return self._release() if self._ready else []

    def _take(self, conn: Connection | _Stream, conv: Conversation) -> None:
        """What a parser call produced: its events (ordering, ids) and its connection anomalies.
        (``feed`` and ``_dispatch`` inline the same on the per-segment path.)"""
        if conv.events:
            self._collect(conn, conv)
        if conv.anomalies:
            self._anomalies.update(conv.anomalies)
            conv.anomalies.clear()

    def _sweep_streams(self, now: float) -> None:
        """Streams idle for ``idle_timeout`` seconds of capture time are closed (their exchanges go
        out with the next release)."""
        for key, st in list(self._streams.items()):
            if now - st.last_ts > self.idle_timeout:
                self._close_stream(key, now)
                self._ready = True

    @property
    def stats(self) -> ExtractStats:
        return ExtractStats(
            packets=self._packets,
            bytes=self._bytes,
            tcp_packets=self._tcp,
            connections=self.reassembler.connections_seen + self._streams_seen,
            exchanges=self._exchanges,
            unanswered=self._unanswered,
            responses_without_request=self._orphans,
            anomalies={str(k): v for k, v in sorted(self._anomalies.items())},
            evicted_connections=self.reassembler.evicted,
            open_connections=len(self.reassembler.conns) + len(self._streams),
            held_exchanges=len(self._heap),
        )

    # -- internals ------------------------------------------------------------------------------

    def _pick(self, data: bytes, from_client: bool, final: bool) -> ProtocolSpec | None:
        """The first spec that claims a connection from its first bytes ``data``; None while one
        needs more (``final``: no more to wait for, the last spec wins)."""
        for spec in self.protocols:
            verdict = spec.sniff(data, from_client)
            if verdict == Sniff.YES:
                return spec
            if verdict == Sniff.MORE and not final:
                return None
        return self.protocols[-1]

    def _conversation(
        self, conn: Connection | _Stream, from_client: bool, data: bytes
    ) -> Conversation:
        """The parser of a connection whose first payload ``data`` just arrived (it is not fed
        here)."""
        conv: Conversation | _Sniffer
        if len(self.protocols) == 1:
            conv = self.protocols[0].make(self.settings, conn.midstream)
        else:
            spec = self._pick(data, from_client, len(data) >= SNIFF_MAX)
            conv = (
                _Sniffer(self, conn) if spec is None else spec.make(self.settings, conn.midstream)
            )
        conn.app = conv
        return conv  # type: ignore[return-value]  # a _Sniffer stands in until it knows

    def _parser(self, conn: Connection) -> Conversation:
        """The parser of a connection met by a gap or an end before any data (no bytes to sniff:
        the last protocol's)."""
        conv = conn.app = self.protocols[-1].make(self.settings, conn.midstream)
        return conv

    def _dispatch(self, events: list) -> list[Exchange]:
        for conn, from_client, kind, ts, value in events:
            conv = conn.app
            if kind == _KIND_DATA:
                if conv is None:
                    conv = self._conversation(conn, from_client, value)
                (conv.feed_client if from_client else conv.feed_server)(ts, value)
            else:
                if conv is None:
                    conv = self._parser(conn)
                if kind == _KIND_GAP:
                    conv.gap(from_client, ts, value)
                else:
                    conv.end(from_client, ts)
                    conv = conn.app
                    if conn.state == _STATE_CLOSED and conv.pending:
                        conv.close(
                            ts
                        )  # both directions ended: what is still open finishes as it stands
            conv = conn.app  # a _Sniffer may have handed the connection over
            if conv.events:
                self._collect(conn, conv)
            if conv.anomalies:
                self._anomalies.update(conv.anomalies)
                conv.anomalies.clear()
            if kind == _KIND_END and conn.state == _STATE_CLOSED and not conv.pending:
                conn.app = (
                    None  # the parser state goes now, not when the closed connection is forgotten
                )
        if self._ready or len(self._heap) > self.max_held_exchanges:
            return self._release()
        return []

    def _note_conflict(self, conn: Connection, conv: Conversation) -> None:
        """A retransmission carried different bytes: the transaction being parsed gets the note."""
        conn.c2s.conflicts = conn.s2c.conflicts = 0
        txn = conv.current()
        if txn is None:
            self._anomalies[Anomaly.RETRANSMISSION_CONFLICT] += 1
        else:
            txn.note(Anomaly.RETRANSMISSION_CONFLICT)

    def _collect(self, conn: Connection | _Stream, conv: Conversation) -> None:
        for ev, txn in conv.events:
            if ev == _EVENT_OPENED:
                self._serial += 1
                heapq.heappush(self._heap, (txn.ts, self._packets, self._serial, txn, conn))
            elif ev == _EVENT_REQUEST:
                if self.on_request is not None and txn.request is not None:
                    req = txn.request
                    if self.redactor is not None:  # heads only when flagged; bodies, queries
                        req = (
                            self.redactor.message(req)
                            if txn.secret  # type: ignore[assignment]
                            else self.redactor.bodies(req)
                        )
                    assert req is not None
                    self.on_request(
                        RequestEvent(_id(conn, txn.index), conn.client, conn.server, txn.index, req)
                    )
            elif ev == _EVENT_SWITCH:
                self._switch(conn, txn)
            else:  # DONE
                self._ready = True
                entry = self._overtaken.pop(txn, None) if self._overtaken else None
                if entry is not None:
                    if not txn.void:
                        self._late.append(entry)
                elif not txn.void:
                    self._held_bytes += _held_size(txn)
        conv.events.clear()

    def _switch(self, conn: Connection | _Stream, txn: Transaction) -> None:
        """The connection changes protocol after ``txn`` (``Event.SWITCH``: an HTTP/1.1 Upgrade
        answered ``101``): the spec that takes the token parses it from here, the bytes held
        past the handover point fed to it (``ProtocolSpec.upgrade``)."""
        sw = txn.switch
        for spec in self.protocols:
            if spec.upgrade is not None and spec.upgrade_token == sw.token:
                conv = conn.app = spec.upgrade(self.settings, sw)
                self._take(conn, conv)
                return
        raise AssertionError(f"no protocol takes the upgrade {sw.token!r}")  # settings.upgrades

    def _release(self) -> list[Exchange]:
        self._ready = False
        heap = self._heap
        out: list[Exchange] = []
        if self._late:
            out.extend(self._exchange(e) for e in self._late)
            self._late.clear()
        oldest = self._now - self.max_hold_seconds
        while heap and (
            heap[0][3].done
            or len(heap) > self.max_held_exchanges
            or self._held_bytes > self.max_hold_bytes
            or heap[0][0] < oldest
        ):
            entry = heapq.heappop(heap)
            txn = entry[3]
            if txn.void:
                continue
            if txn.done:
                self._held_bytes -= _held_size(txn)
            if not txn.done:
                # Held too long behind an unfinished exchange: let the rest go; it comes out late.
                self._overtaken[txn] = entry
                txn.note(Anomaly.LATE)
                continue
            out.append(self._exchange(entry))
        return out

    def _exchange(self, entry: tuple[float, int, int, Transaction, Any]) -> Exchange:
        txn = entry[3]
        conn = entry[4]
        if self.keyed:
            self.released_keys.append(entry[:3])  # type: ignore[arg-type]
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
            # Plain strings in the record (an Anomaly is a str subclass: orjson refuses it as a
            # dict key downstream, and records hold data, not enum members).
            anomalies = tuple(map(str, txn.anomalies))
            self._anomalies.update(anomalies)
        # Positional (cheaper than keywords): id, client, server, index, request, response,
        # anomalies, ttfb_ms, total_ms, h2, grpc, chunks.
        eid = _id(conn, txn.index)
        # ..., h2, grpc, chunks: an HTTP/2 stream has its outcome and its gRPC call.
        if txn.__class__ is _H2_STREAM:
            h2, grpc = txn.h2, txn.grpc
        else:
            h2 = grpc = None
        ex = Exchange(
            eid,
            conn.client,
            conn.server,
            txn.index,
            req,
            resp,
            anomalies,
            ttfb,
            total,
            h2,
            grpc,
            txn.chunks,
        )
        if self.redactor is not None:  # heads only when flagged; JSON and form bodies always
            ex = self.redactor.exchange(ex, head=txn.secret)
        return ex
