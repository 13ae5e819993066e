"""What a protocol parser gives the Extractor, and how it is chosen for a connection.

A protocol plugs into the wire layer with three things (HTTP/1.x is the first,
``shadowtap.wire.http1``; HTTP/2 + gRPC and SSE come next):

- a ``Conversation``: the sans-I/O parser of one connection. Ordered bytes of each direction go in
  (``feed_client(ts, data)`` / ``feed_server(ts, data)``, ``gap``, ``end``, ``close``) and it
  appends ``(Event, Transaction)`` pairs to ``events`` (``OPENED`` when an exchange begins,
  ``REQUEST`` when its request is complete on the wire, ``DONE`` when it is finished) and anomaly
  names with no exchange to carry them to ``anomalies``. The Extractor empties both lists after
  each call. It never reads a socket or a file; the bytes may come from TCP reassembly
  (``shadowtap.wire.tcp``) or from an in-order plaintext source (TLS uprobes) alike.
- a ``Transaction``: one exchange in the making. The parser fills ``request``/``response``
  (``shadowtap.records`` messages), ``anomalies``, ``chunks`` (a streamed response's pieces with
  their capture times), sets ``secret`` when a watched (secret) header
  name appears and ``done`` when finished (``void``: it turned out to be no exchange). ``index``
  is the position on the connection (0, 1, ...; it keys the exchange id). The Extractor turns a
  done transaction into a frozen ``Exchange``; ordering, ids and redaction are its business.
- a ``ProtocolSpec``: a name, ``sniff(first_bytes, from_client) -> Sniff`` and ``make(settings,
  midstream) -> Conversation``. The Extractor offers a connection's first payload bytes (either
  direction) to each spec in turn: the first ``YES`` wins; ``MORE`` asks to see more bytes (held,
  at most ``SNIFF_MAX`` of them, then replayed to the winner); a protocol that answers ``YES`` to
  anything (HTTP/1.x does: it finds out for itself what is not HTTP) goes last.

Costs: the Extractor calls ``feed_client``/``feed_server`` directly (bound methods made once per
connection): one Python call per segment between the reassembler and the parser.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from shadowtap.records import Request, Response

__all__ = [
    "SNIFF_MAX",
    "Conversation",
    "Event",
    "ParserSettings",
    "ProtocolSpec",
    "Sniff",
    "Switch",
    "Transaction",
]

# Bytes of a connection held while the protocols cannot tell yet (``Sniff.MORE``); past them the
# last spec (the one that accepts anything) gets the connection.
SNIFF_MAX = 64


class Event(IntEnum):
    OPENED = 0
    REQUEST = 1
    DONE = 2
    SWITCH = 3  # the connection changes protocol after this transaction (``Transaction.switch``)


class Sniff(IntEnum):
    NO = 0
    YES = 1
    MORE = 2  # not enough bytes to tell


@dataclass(frozen=True, slots=True)
class Switch:
    """A connection handed from one protocol's parser to another's at an exact byte (RFC 9110
    section 7.8, Upgrade; HTTP/2's ``h2c``, RFC 7540 section 3.2). ``request``: the upgraded
    request (the new protocol's first exchange: HTTP/2's stream 1), whose position on the
    connection is ``index`` (its exchange id) and that is ``secret`` (a watched header) with
    ``anomalies``; ``next_index``: the next position free on the connection. ``client`` /
    ``server``: the bytes of each direction after the handover point (the request, the ``101``
    head) that the old parser held, first seen at ``client_ts`` / ``server_ts``."""

    token: str  # the protocol token, lower case ("h2c")
    request: Request
    index: int
    next_index: int
    secret: bool
    anomalies: tuple[str, ...]
    client: bytes
    client_ts: float
    server: bytes
    server_ts: float


class Transaction:
    """One exchange in the making (mutable; the Extractor turns it into a frozen Exchange).
    ``index`` is the position on the connection. A protocol may subclass it with its own parser
    state (HTTP/1.x does); the Extractor reads only the fields here (``switch`` only for an
    ``Event.SWITCH``: it is set then, and unset, costing nothing, on every other transaction)."""

    __slots__ = (
        "anomalies",
        "chunks",
        "done",
        "index",
        "request",
        "response",
        "secret",
        "switch",
        "ts",
        "void",
    )

    switch: Switch  # set by a parser before it appends (Event.SWITCH, this transaction)

    def __init__(self, ts: float) -> None:
        self.ts = ts  # the first byte's capture time: the request-time order
        self.index = -1
        self.request: Request | None = None
        self.response: Response | None = None
        self.anomalies: list[str] = []
        self.void = False
        self.done = False
        self.secret = False  # a watched (secret) header name appears in a head: redact
        # A streamed response's timed pieces: (body length, capture time) (records.Exchange.chunks)
        self.chunks: tuple[tuple[int, float], ...] = ()

    def note(self, anomaly: str) -> None:
        if anomaly not in self.anomalies:
            self.anomalies.append(anomaly)


@dataclass(frozen=True, slots=True)
class ParserSettings:
    """The limits and options every protocol's parser gets (the Extractor's, per connection).

    ``max_body``: body bytes kept per message (the rest counted); ``max_head``: bytes of an
    unfinished message head; ``watch``: lower-case header names whose presence marks a
    transaction ``secret``; ``max_open``: exchanges open at once on one connection (past it the
    oldest unanswered one is finished as it stands, ``open_limit``); ``upgrades``: the Upgrade
    tokens for which a parser hands the connection over (``Event.SWITCH``)."""

    max_body: int = 1 << 20
    max_head: int = 64 << 10
    watch: tuple[str, ...] = ()
    max_open: int = 100  # exchanges open at once on one connection (pipelined, unanswered)
    upgrades: tuple[str, ...] = ()  # Upgrade tokens another protocol takes over ("h2c")


class Conversation(Protocol):
    """One connection's parser (see the module docstring). ``pending``: an exchange is open
    (the Extractor keeps the parser of a closed connection until it is False)."""

    events: list[tuple[Event, Transaction]]
    anomalies: list[str]
    feed_client: Callable[[float, bytes], None]
    feed_server: Callable[[float, bytes], None]

    def gap(self, from_client: bool, ts: float, n: int) -> None: ...

    def end(self, from_client: bool, ts: float) -> None: ...

    def close(self, ts: float) -> None: ...

    def current(self) -> Transaction | None:
        """The transaction being parsed now, if any (a retransmission that carried different bytes
        is noted on it)."""
        ...

    @property
    def pending(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class ProtocolSpec:
    """A protocol the Extractor can pick for a connection (see the module docstring)."""

    name: str
    sniff: Callable[[bytes, bool], Sniff]
    make: Callable[[ParserSettings, bool], Conversation]  # (settings, midstream)
    # The Upgrade token this protocol takes a connection over by (``Event.SWITCH``), and the
    # parser it then makes: the switch's held bytes already fed.
    upgrade_token: str = ""
    upgrade: Callable[[ParserSettings, Switch], Conversation] | None = None
