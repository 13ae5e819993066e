"""The records every stage shares: an HTTP message, an exchange (request + the primary's response),
and a replay result (what the shadow answered). docs/exchange-format.md and docs/results-format.md
are the contract; these classes are its only encoder and decoder.

Records are frozen: a captured record is never mutated after it is made.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from typing import Any

EXCHANGE_SCHEMA = 1
RESULT_SCHEMA = 1

Headers = tuple[tuple[str, str], ...]


def _encode_body(body: bytes) -> tuple[str, str]:
    """Body bytes as JSON text: UTF-8 when the bytes are valid UTF-8, else base64."""
    if not body:
        return "", "utf8"
    try:
        return body.decode("utf-8"), "utf8"
    except UnicodeDecodeError:
        return base64.b64encode(body).decode("ascii"), "base64"


def _decode_body(text: str, encoding: str) -> bytes:
    if encoding == "utf8":
        return text.encode("utf-8")
    if encoding == "base64":
        return base64.b64decode(text)
    raise ValueError(f"unknown body_encoding {encoding!r}")


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
            "headers": [[n, v] for n, v in self.headers],
            "body": text,
            "body_encoding": enc,
            "body_len": self.body_len,
            "body_truncated": self.body_truncated,
            "decoded_len": self.decoded_len,
        }

    @staticmethod
    def _common_kwargs(d: dict[str, Any]) -> dict[str, Any]:
        return {
            "ts": float(d["ts"]),
            "end_ts": float(d["end_ts"]),
            "version": str(d["version"]),
            "headers": tuple((str(n), str(v)) for n, v in d["headers"]),
            "body": _decode_body(d.get("body", ""), d.get("body_encoding", "utf8")),
            "body_len": int(d["body_len"]),
            "body_truncated": bool(d.get("body_truncated", False)),
            "decoded_len": d.get("decoded_len"),
        }


@dataclass(frozen=True, slots=True)
class Request(Message):
    method: str = "GET"
    target: str = "/"

    def to_json(self) -> dict[str, Any]:
        return self._json("method", self.method, "target", self.target)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Request:
        return cls(method=str(d["method"]), target=str(d["target"]), **cls._common_kwargs(d))


@dataclass(frozen=True, slots=True)
class Response(Message):
    status: int = 0
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return self._json("status", self.status, "reason", self.reason)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Response:
        return cls(status=int(d["status"]), reason=str(d["reason"]), **cls._common_kwargs(d))


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
    key = f"{client}|{server}|{round(conn_start_ts * 1_000_000)}|{index}"
    return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request and the primary's response to it, as seen on the wire.

    ``ttfb_ms``: last request byte to first response byte; ``total_ms``: first request byte to last
    response byte; both None when either side is missing. ``anomalies``: names of conditions met
    (``gap``, ``retransmission_conflict``, ``parse_error``, ``midstream``, ``truncated``, ...)."""

    id: str
    client: str
    server: str
    index: int
    request: Request | None
    response: Response | None
    anomalies: tuple[str, ...] = ()
    ttfb_ms: float | None = None
    total_ms: float | None = None

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

    def to_json(self) -> dict[str, Any]:
        return {
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

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Exchange:
        schema = d.get("schema")
        if schema != EXCHANGE_SCHEMA:
            raise ValueError(f"not an exchange record of schema {EXCHANGE_SCHEMA} (schema={schema!r})")
        req, resp = d.get("request"), d.get("response")
        return cls(
            id=str(d["id"]),
            client=str(d["conn"]["client"]),
            server=str(d["conn"]["server"]),
            index=int(d["index"]),
            request=Request.from_json(req) if req is not None else None,
            response=Response.from_json(resp) if resp is not None else None,
            anomalies=tuple(d.get("anomalies", ())),
            ttfb_ms=d.get("ttfb_ms"),
            total_ms=d.get("total_ms"),
        )


ERROR_KINDS = ("timeout", "refused", "reset", "protocol", "other")


@dataclass(frozen=True, slots=True)
class ResultError:
    kind: str  # one of ERROR_KINDS
    message: str

    def __post_init__(self) -> None:
        if self.kind not in ERROR_KINDS:
            raise ValueError(f"error kind {self.kind!r} not in {ERROR_KINDS}")


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
            "error": {"kind": self.error.kind, "message": self.error.message} if self.error else None,
        }
        if self.extra:
            d["extra"] = self.extra
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Result:
        schema = d.get("schema")
        if schema != RESULT_SCHEMA:
            raise ValueError(f"not a result record of schema {RESULT_SCHEMA} (schema={schema!r})")
        resp, err = d.get("response"), d.get("error")
        return cls(
            exchange_id=str(d["exchange_id"]),
            copy=int(d.get("copy", 0)),
            target=str(d["target"]),
            scheduled=float(d["scheduled"]),
            sent=float(d["sent"]),
            response=Response.from_json(resp) if resp is not None else None,
            ttfb_ms=d.get("ttfb_ms"),
            total_ms=d.get("total_ms"),
            error=ResultError(str(err["kind"]), str(err["message"])) if err else None,
            extra=dict(d.get("extra", {})),
        )
