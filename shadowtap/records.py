"""The records every stage shares: an HTTP message, an exchange (request + the primary's response),
and a replay result (what the shadow answered). docs/exchange-format.md and docs/results-format.md
are the contract; these classes are its only encoder and decoder.

Records are frozen: a captured record is never mutated after it is made.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import math
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, overload

import msgspec
import orjson

from shadowtap.frozen import fast_init

# Schema 2 added the optional ``h2`` and ``grpc`` objects (HTTP/2 streams and gRPC calls) and
# ``chunks`` (the arrival times of a streamed body's pieces). A
# schema 1 line is upgraded on reading (``_migrate``); a reader of schema 1 refuses a schema 2
# line rather than replaying an HTTP/2 exchange as HTTP/1.x.
EXCHANGE_SCHEMA = 2
RESULT_SCHEMA = 2

Headers = tuple[tuple[str, str], ...]
# (end offset in the body, arrival time in epoch seconds) of each piece of a streamed body
# (text/event-stream, NDJSON) as it came off the wire or the socket; () when not recorded.
Chunks = tuple[tuple[int, float], ...]


def _chunks_json(chunks: Chunks) -> list[list[float]]:
    return [[off, ts] for off, ts in chunks]


def _chunks_from(d: dict[str, Any]) -> Chunks:
    raw = d.get("chunks") or ()
    if not raw:
        return ()
    try:
        # [int, float] pairs (what to_json writes) in one C call: half the cost of the loop
        # below; anything else (bools, strings, integral floats, ...) goes the loop's way
        return msgspec.convert(raw, Chunks)  # type: ignore[no-any-return]
    except msgspec.ValidationError:
        pass
    try:
        return tuple((int(off), float(ts)) for off, ts in raw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"chunks: not a list of [offset, time] pairs ({exc})") from exc


def _encode_body(body: bytes) -> tuple[str, str]:
    """Body bytes as JSON text: UTF-8 when the bytes are valid UTF-8, else base64."""
    if not body:
        return "", "utf8"
    try:
        return body.decode("utf-8"), "utf8"
    except UnicodeDecodeError:
        return binascii.b2a_base64(body, newline=False).decode("ascii"), "base64"


def _decode_body(text: str, encoding: str) -> bytes:
    if not isinstance(text, str):
        raise TypeError(f"body: not a string: {type(text).__name__}")
    if encoding == "utf8":
        return text.encode("utf-8")
    if encoding == "base64":
        return base64.b64decode(text)
    raise ValueError(f"unknown body_encoding {encoding!r}")


# RFC 9110 5.6.2: token = 1*tchar. Methods and header names must be tokens; anything else (a
# space, CR, LF, ':', NUL) could end the request line or a header early on the wire: CRLF injection.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKENS = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+(?:\n[!#$%&'*+\-.^_`|~0-9A-Za-z]+)*")
# A target or a header value may hold any byte but controls that split or end a line on the wire:
# CR, LF, NUL and the other C0 controls and DEL (HTAB is allowed in values, RFC 9110 5.5).
_TARGET_BAD = re.compile(r"[\x00-\x20\x7f]")
_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


# Header tuples found clean: a service's requests repeat whole heads (the capture parser hands the
# same tuple for a repeated block), and every request is checked two or three times (on reading,
# by the Policy, by the sender): a lookup (hashing the tuple) instead of two regex scans and two
# joins. A memo of a pure function; at most _CLEAN_HEADS_MAX heads, emptied when full.
_CLEAN_HEADS: dict[Headers, None] = {}
_CLEAN_HEADS_MAX = 4096


def is_token(text: str) -> bool:
    return _TOKEN.fullmatch(text) is not None


def request_line_problem(method: str, target: str, headers: Headers) -> str | None:
    """Why a request with these fields cannot be written to the wire as one request, or None.

    Methods and header names must be tokens; the target must hold no whitespace or control
    character; header values no control character but HTAB. The one check of both the records
    read from a file and the requests the replay client sends (a request that passes it is one
    request on the wire, whatever the input held). Cost: O(bytes of the head)."""
    if not is_token(method):
        return f"method {method[:40]!r} is not a token (RFC 9110)"
    if not target or _TARGET_BAD.search(target) is not None:
        return f"target {target[:60]!r} is empty or holds a space or a control character"
    if not headers or headers in _CLEAN_HEADS:
        return None
    # One regex call for all the names and one for all the values (HTAB, allowed in a value,
    # joins them; LF, never in a token, joins the names); the loop below only says which.
    names = "\n".join([n for n, _ in headers])
    if _TOKENS.fullmatch(names) is not None and (
        _VALUE_BAD.search("\t".join([v for _, v in headers])) is None
    ):
        if len(_CLEAN_HEADS) >= _CLEAN_HEADS_MAX:
            _CLEAN_HEADS.clear()
        _CLEAN_HEADS[headers] = None
        return None
    for name, value in headers:
        if not is_token(name):
            return f"header name {name[:40]!r} is not a token (RFC 9110)"
        if _VALUE_BAD.search(value) is not None:
            return f"header {name!r}: value {value[:60]!r} holds a control character (CR, LF, NUL)"
    return None


def finite(d: dict[str, Any], key: str, where: str) -> float:
    """``d[key]`` as a finite float; ValueError naming the field otherwise (``"NaN"``, ``inf``,
    strings and booleans are not times)."""
    v = d[key]
    if type(v) is float and v - v == 0.0:  # the common case first (inf - inf and NaN are NaN)
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{where}{key}: not a number: {v!r}")
    f = float(v)
    if not math.isfinite(f):
        raise ValueError(f"{where}{key}: not a finite number: {v!r}")
    return f


def _optional_finite(d: dict[str, Any], key: str, where: str) -> float | None:
    return None if d.get(key) is None else finite(d, key, where)


@overload
def _count(d: dict[str, Any], key: str, where: str) -> int: ...
@overload
def _count(d: dict[str, Any], key: str, where: str, *, optional: bool) -> int | None: ...
def _count(d: dict[str, Any], key: str, where: str, *, optional: bool = False) -> int | None:
    v = d.get(key) if optional else d[key]
    if type(v) is int and v >= 0:  # the common case first
        return v
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"{where}{key}: not a count (an integer >= 0): {v!r}")
    return v


def header_values(headers: Headers, name: str) -> list[str]:
    """All values of header ``name`` (case-insensitive), in wire order."""
    lname = name.lower()
    return [v for n, v in headers if n.lower() == lname]


def header_value(headers: Headers, name: str) -> str | None:
    """The first value of header ``name`` (case-insensitive), or None."""
    lname = name.lower()
    for n, v in headers:
        if n.lower() == lname:
            return v
    return None


@fast_init
@dataclass(frozen=True, slots=True)
class Message:
    """Fields common to requests and responses.

    ``body`` holds the body after removing chunked transfer coding and before content decoding, cut
    at the capture's ``max_body``; ``body_len`` counts every byte of it even when cut
    (``body_truncated``). ``decoded_len`` is the length after content decoding (gzip, deflate, br)
    where that was possible, else None. Header names and values are latin-1 decoded wire bytes, in
    wire order and case."""

    ts: float
    end_ts: float
    version: str
    headers: Headers
    body: bytes = b""
    body_len: int = 0
    body_truncated: bool = False
    decoded_len: int | None = None

    def __post_init__(self) -> None:
        if self.end_ts < self.ts:
            raise ValueError(f"end_ts {self.end_ts} before ts {self.ts}")
        if self.body_len < len(self.body):
            raise ValueError("body_len smaller than the body kept")

    def header(self, name: str) -> str | None:
        return header_value(self.headers, name)

    def _json(self, k1: str, v1: Any, k2: str, v2: Any) -> dict[str, Any]:
        """The JSON object of a message: the subclass's two fields first (method and target, or
        status and reason), then the common ones. One dict display: cheaper than merging two."""
        text, enc = _encode_body(self.body)
        return {
            k1: v1,
            k2: v2,
            "ts": self.ts,
            "end_ts": self.end_ts,
            "version": self.version,
            "headers": list(map(list, self.headers)),  # [[name, value], ...]
            "body": text,
            "body_encoding": enc,
            "body_len": self.body_len,
            "body_truncated": self.body_truncated,
            "decoded_len": self.decoded_len,
        }

    @staticmethod
    def _common(d: dict[str, Any], where: str) -> tuple[Any, ...]:
        """The common fields of a JSON message in field order (positional construction: cheaper
        than keywords), checked: times finite, lengths counts. Errors are ValueErrors naming the
        field (``request.ts: not a finite number: 'NaN'``)."""
        return (
            finite(d, "ts", where),
            finite(d, "end_ts", where),
            str(d["version"]),
            tuple([(str(n), str(v)) for n, v in d["headers"]]),
            _decode_body(d.get("body", ""), d.get("body_encoding", "utf8")),
            _count(d, "body_len", where),
            bool(d.get("body_truncated", False)),
            _count(d, "decoded_len", where, optional=True),
        )


@fast_init
@dataclass(frozen=True, slots=True)
class Request(Message):
    method: str = "GET"
    target: str = "/"

    def to_json(self) -> dict[str, Any]:
        return self._json("method", self.method, "target", self.target)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Request:
        return cls(*cls._common(d, "request."), str(d["method"]), str(d["target"]))  # type: ignore[call-arg]

    def send_problem(self) -> str | None:
        """Why this request cannot be sent as one request (``request_line_problem``), or None.
        Not checked on decoding: compare reads odd captured requests as they were; replay and
        the mirror refuse to send them."""
        headers = self.headers
        if self.version == "HTTP/2":  # pseudo-header names begin with a colon (RFC 9113 8.3)
            headers = tuple((n[1:] if n[:1] == ":" else n, v) for n, v in headers)
        return request_line_problem(self.method, self.target, headers)


@fast_init
@dataclass(frozen=True, slots=True)
class Response(Message):
    status: int = 0
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return self._json("status", self.status, "reason", self.reason)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Response:
        status = d["status"]
        if isinstance(status, bool) or not isinstance(status, int) or not 0 <= status <= 999:
            raise ValueError(f"response.status: not a status code: {status!r}")
        return cls(*cls._common(d, "response."), status, str(d["reason"]))  # type: ignore[call-arg]


def format_endpoint(ip: str, port: int) -> str:
    """``IP:PORT``, IPv6 as ``[addr]:port``."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def parse_endpoint(text: str) -> tuple[str, int]:
    if text.startswith("["):
        addr, _, port = text[1:].partition("]:")
        return addr, int(port)
    addr, _, port = text.rpartition(":")
    return addr, int(port)


def exchange_id(client: str, server: str, conn_start_ts: float, index: int) -> str:
    """Unique and stable for the same input: the connection (its endpoints and the timestamp of its
    first packet, in whole microseconds as a pcap keeps it) and the position on it."""
    return exchange_id_at(exchange_id_prefix(client, server, conn_start_ts), index)


def exchange_id_prefix(client: str, server: str, conn_start_ts: float) -> str:
    """The connection's part of ``exchange_id``'s key (the Extractor formats it once a
    connection)."""
    return f"{client}|{server}|{round(conn_start_ts * 1_000_000)}|"


@functools.lru_cache(maxsize=4096)
def exchange_id_at(prefix: str, index: int) -> str:
    """``exchange_id`` of the ``index``-th exchange of the connection of ``prefix``. Remembered
    (the last 4,096): the live Extractor asks twice an exchange, when its request is complete
    and when the exchange is, and a hash costs ten times a lookup."""
    return hashlib.blake2b((prefix + str(index)).encode(), digest_size=8).hexdigest()


H2_OUTCOMES = ("complete", "reset", "refused", "truncated")


@fast_init
@dataclass(frozen=True, slots=True)
class H2Stream:
    """How an HTTP/2 stream went. ``outcome``: ``complete`` (both sides ended the stream),
    ``reset`` (RST_STREAM, ``error_code`` its code), ``refused`` (above a GOAWAY's last stream id,
    ``error_code`` the GOAWAY's), ``truncated`` (the connection or capture ended first).
    ``request_trailers``/``response_trailers``: how many of the message's last ``headers`` are
    trailers. ``undecoded_fields``: header fields that referenced HPACK table entries from before
    the capture began (left out, never guessed)."""

    stream_id: int
    outcome: str = "complete"
    error_code: int | None = None
    request_trailers: int = 0
    response_trailers: int = 0
    undecoded_fields: int = 0

    def __post_init__(self) -> None:
        if self.outcome not in H2_OUTCOMES:
            raise ValueError(f"h2 outcome {self.outcome!r} not in {H2_OUTCOMES}")
        if self.stream_id <= 0:
            raise ValueError("stream_id must be > 0")

    def to_json(self) -> dict[str, Any]:
        return {
            "stream_id": self.stream_id,
            "outcome": self.outcome,
            "error_code": self.error_code,
            "request_trailers": self.request_trailers,
            "response_trailers": self.response_trailers,
            "undecoded_fields": self.undecoded_fields,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> H2Stream:
        code = d.get("error_code")
        return cls(
            _count(d, "stream_id", ""),
            str(d.get("outcome", "complete")),
            None if code is None else int(code),
            _count(d, "request_trailers", "", optional=True) or 0,
            _count(d, "response_trailers", "", optional=True) or 0,
            _count(d, "undecoded_fields", "", optional=True) or 0,
        )


@fast_init
@dataclass(frozen=True, slots=True)
class GrpcMessage:
    """One gRPC message: ``data`` the message bytes (decompressed when it was sent compressed),
    cut at the capture's budget (``truncated``); ``length`` its length on the wire (the
    prefix's)."""

    data: bytes
    length: int
    compressed: bool = False
    truncated: bool = False

    def to_json(self) -> dict[str, Any]:
        text, enc = _encode_body(self.data)
        return {
            "data": text,
            "encoding": enc,
            "len": self.length,
            "compressed": self.compressed,
            "truncated": self.truncated,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> GrpcMessage:
        return cls(
            _decode_body(d.get("data", ""), d.get("encoding", "utf8")),
            _count(d, "len", ""),
            bool(d.get("compressed", False)),
            bool(d.get("truncated", False)),
        )


@fast_init
@dataclass(frozen=True, slots=True)
class GrpcCall:
    """A gRPC call: ``/service/method``, the messages of each side (kept up to ``--max-body``
    bytes per side; ``*_count`` counts them all), and the status (``grpc-status``,
    ``grpc-message``) from the trailers or a trailers-only response; None when none was seen."""

    service: str
    method: str
    request_messages: tuple[GrpcMessage, ...] = ()
    response_messages: tuple[GrpcMessage, ...] = ()
    request_count: int = 0
    response_count: int = 0
    status: int | None = None
    message: str | None = None

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.method}"

    def to_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "method": self.method,
            "request_messages": [m.to_json() for m in self.request_messages],
            "request_count": self.request_count,
            "response_messages": [m.to_json() for m in self.response_messages],
            "response_count": self.response_count,
            "status": self.status,
            "message": self.message,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> GrpcCall:
        status = d.get("status")
        return cls(
            str(d["service"]),
            str(d["method"]),
            tuple(GrpcMessage.from_json(m) for m in d.get("request_messages", ())),
            tuple(GrpcMessage.from_json(m) for m in d.get("response_messages", ())),
            _count(d, "request_count", "", optional=True) or 0,
            _count(d, "response_count", "", optional=True) or 0,
            None if status is None else int(status),
            d.get("message"),
        )


def _migrate(d: dict[str, Any], current: int, kind: str) -> dict[str, Any]:
    """A record of an older schema brought up to ``current``, one step at a time (mitmproxy's
    io/compat style: a converter per version step). Raises ValueError for an unknown schema."""
    schema = d.get("schema")
    if schema == current:
        return d
    if not isinstance(schema, int) or isinstance(schema, bool) or not 1 <= schema < current:
        raise ValueError(f"not {kind} record of schema {current} (schema={schema!r})")
    while schema < current:
        d = _MIGRATIONS[schema](d)
        schema = d["schema"]
    return d


def _v1_to_v2(d: dict[str, Any]) -> dict[str, Any]:
    """Schema 2 only added optional fields (``h2``, ``grpc``, ``chunks``): a schema 1 record is
    HTTP/1.x with no timed body pieces."""
    return {**d, "schema": 2}


_MIGRATIONS = {1: _v1_to_v2}


_Count = Annotated[int, msgspec.Meta(ge=0)]


class _SendableRequest(msgspec.Struct, frozen=True):
    """The JSON request as ``Request.from_json`` reads it (field names and types of
    docs/exchange-format.md), for ``Exchange.sendable_from_line``; unknown fields are ignored."""

    ts: float
    end_ts: float
    version: str
    headers: Headers
    body_len: _Count
    method: str
    target: str
    body: str = ""
    body_encoding: str = "utf8"
    body_truncated: bool = False
    decoded_len: _Count | None = None


class _SendableConn(msgspec.Struct, frozen=True):
    client: str
    server: str


class _SendableExchange(msgspec.Struct, frozen=True, kw_only=True):
    """The fields of an exchange line replay reads; ``schema`` anything (``_migrate`` checks
    it and says what is wrong)."""

    schema: Any = None
    id: str
    conn: _SendableConn
    index: _Count
    request: _SendableRequest | None = None
    h2: dict[str, Any] | None = None
    grpc: dict[str, Any] | None = None


_decode_sendable = msgspec.json.Decoder(_SendableExchange).decode


@fast_init
@dataclass(frozen=True, slots=True)
class Exchange:
    """One request and the primary's response to it, as seen on the wire.

    ``ttfb_ms``: last request byte to first response byte; ``total_ms``: first request byte to last
    response byte; both None when either side is missing. ``anomalies``: names of conditions met
    (``gap``, ``retransmission_conflict``, ``parse_error``, ``midstream``, ``truncated``, ...).
    ``chunks``: when each piece of a streamed response body arrived (see ``Chunks``)."""

    id: str
    client: str
    server: str
    index: int
    request: Request | None
    response: Response | None
    anomalies: tuple[str, ...] = ()
    ttfb_ms: float | None = None
    total_ms: float | None = None
    h2: H2Stream | None = None  # an HTTP/2 stream (messages' version "HTTP/2")
    grpc: GrpcCall | None = None  # a gRPC call carried by that stream
    chunks: Chunks = ()

    def __post_init__(self) -> None:
        if self.request is None and self.response is None:
            raise ValueError("an exchange needs a request or a response")
        if self.index < 0:
            raise ValueError("index must be >= 0")

    @property
    def ts(self) -> float:
        """When the exchange started: the request's first byte, else the response's."""
        msg = self.request if self.request is not None else self.response
        assert msg is not None
        return msg.ts

    @classmethod
    def sendable_from_line(cls, line: bytes) -> Exchange:
        """The exchange of a JSONL line as replay needs it: id, connection, index, the request
        (checked as ``from_json`` checks it), ``h2`` and ``grpc``. One typed msgspec decode of only
        those fields (``_SendableExchange``): the primary's response, timings, anomalies and chunks
        are skipped in C, never built (3.7 us a line where orjson and the dict walk took 8.0 on a
        wrk capture's lines). A line of an older schema is migrated first; a response alone is
        decoded whole (the policy skips it, counted). A request that cannot be sent as one request
        (CRLF injection, a method or header name that is no token) is a ValueError naming the field,
        so the reader warns about it with its line number and skips it; wrong types are msgspec's
        ValidationError, naming the field by its JSON path."""
        s = _decode_sendable(line)
        if s.schema != EXCHANGE_SCHEMA:  # migrated as a dict, then the same typed fields
            d = _migrate(orjson.loads(line), EXCHANGE_SCHEMA, "an exchange")
            s = msgspec.convert(d, _SendableExchange)
        r = s.request
        if r is None:
            return cls.from_json(orjson.loads(line))
        # Times are finite: JSON has no NaN or Infinity and msgspec refuses 1e999 ("Number out of
        # range"). Positional: Message's field order, then Request's.
        request = Request(
            r.ts,
            r.end_ts,
            r.version,
            r.headers,
            _decode_body(r.body, r.body_encoding),
            r.body_len,
            r.body_truncated,
            r.decoded_len,
            r.method,
            r.target,
        )
        problem = request.send_problem()
        if problem is not None:
            raise ValueError(f"request not replayable: {problem}")
        return cls(
            id=s.id,
            client=s.conn.client,
            server=s.conn.server,
            index=s.index,
            request=request,
            response=None,
            h2=H2Stream.from_json(s.h2) if s.h2 is not None else None,
            grpc=GrpcCall.from_json(s.grpc) if s.grpc is not None else None,
        )

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "schema": EXCHANGE_SCHEMA,
            "id": self.id,
            "conn": {"client": self.client, "server": self.server},
            "index": self.index,
            "request": self.request.to_json() if self.request is not None else None,
            "response": self.response.to_json() if self.response is not None else None,
            "ttfb_ms": self.ttfb_ms,
            "total_ms": self.total_ms,
            "anomalies": list(self.anomalies),
        }
        if self.h2 is not None:
            d["h2"] = self.h2.to_json()
        if self.grpc is not None:
            d["grpc"] = self.grpc.to_json()
        if self.chunks:
            d["chunks"] = _chunks_json(self.chunks)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Exchange:
        d = _migrate(d, EXCHANGE_SCHEMA, "an exchange")
        req, resp = d.get("request"), d.get("response")
        h2, grpc = d.get("h2"), d.get("grpc")
        return cls(
            id=str(d["id"]),
            client=str(d["conn"]["client"]),
            server=str(d["conn"]["server"]),
            index=_count(d, "index", ""),
            request=Request.from_json(req) if req is not None else None,
            response=Response.from_json(resp) if resp is not None else None,
            anomalies=tuple(d.get("anomalies", ())),
            ttfb_ms=_optional_finite(d, "ttfb_ms", ""),
            total_ms=_optional_finite(d, "total_ms", ""),
            h2=H2Stream.from_json(h2) if h2 is not None else None,
            grpc=GrpcCall.from_json(grpc) if grpc is not None else None,
            chunks=_chunks_from(d),
        )


ERROR_KINDS = ("timeout", "refused", "reset", "protocol", "other")


@fast_init
@dataclass(frozen=True, slots=True)
class ResultError:
    kind: str  # one of ERROR_KINDS
    message: str

    def __post_init__(self) -> None:
        if self.kind not in ERROR_KINDS:
            raise ValueError(f"error kind {self.kind!r} not in {ERROR_KINDS}")


@fast_init
@dataclass(frozen=True, slots=True)
class Result:
    """What the shadow did with one replayed request.

    ``scheduled`` and ``sent`` are wall-clock epoch seconds; ``copy`` numbers the copies of one
    exchange sent by ``--amplify`` and ``--loop`` (0 for the first)."""

    exchange_id: str
    target: str  # the URL the request was sent to
    scheduled: float
    sent: float
    response: Response | None
    ttfb_ms: float | None = None
    total_ms: float | None = None
    error: ResultError | None = None
    copy: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    grpc: GrpcCall | None = None  # the shadow's side of a replayed gRPC call (its messages, status)
    chunks: Chunks = ()  # when each piece of a streamed answer arrived (see ``Chunks``)
    # https targets: the TLS handshake of the connection this request opened (None when it reused
    # one); not part of ttfb_ms/total_ms, which start when the request is written.
    tls_handshake_ms: float | None = None

    @property
    def lag_ms(self) -> float:
        return (self.sent - self.scheduled) * 1000.0

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "schema": RESULT_SCHEMA,
            "exchange_id": self.exchange_id,
            "copy": self.copy,
            "target": self.target,
            "scheduled": self.scheduled,
            "sent": self.sent,
            "response": self.response.to_json() if self.response is not None else None,
            "ttfb_ms": self.ttfb_ms,
            "total_ms": self.total_ms,
            "error": {"kind": self.error.kind, "message": self.error.message}
            if self.error
            else None,
        }
        if self.extra:
            d["extra"] = self.extra
        if self.grpc is not None:
            d["grpc"] = self.grpc.to_json()
        if self.chunks:
            d["chunks"] = _chunks_json(self.chunks)
        if self.tls_handshake_ms is not None:
            d["tls_handshake_ms"] = self.tls_handshake_ms
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Result:
        d = _migrate(d, RESULT_SCHEMA, "a result")
        resp, err, grpc = d.get("response"), d.get("error"), d.get("grpc")
        return cls(
            exchange_id=str(d["exchange_id"]),
            copy=_count(d, "copy", "", optional=True) or 0,
            target=str(d["target"]),
            scheduled=finite(d, "scheduled", ""),
            sent=finite(d, "sent", ""),
            response=Response.from_json(resp) if resp is not None else None,
            ttfb_ms=_optional_finite(d, "ttfb_ms", ""),
            total_ms=_optional_finite(d, "total_ms", ""),
            error=ResultError(str(err["kind"]), str(err["message"])) if err else None,
            extra=dict(d.get("extra", {})),
            grpc=GrpcCall.from_json(grpc) if grpc is not None else None,
            chunks=_chunks_from(d),
            tls_handshake_ms=_optional_finite(d, "tls_handshake_ms", ""),
        )
