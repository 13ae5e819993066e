"""gRPC over HTTP/2, from the stream's bytes (sans-I/O).

A gRPC message on the wire is a 5-byte prefix (a compressed flag byte, a 4-byte big-endian
length) and the message; a call's DATA frames in one direction are a sequence of them, split
anywhere by frames. ``MessageSplitter`` takes DATA payloads in order and counts every message
exactly, while keeping message bytes only up to a budget (``--max-body`` for the whole side):
memory is O(budget), whatever the stream carries. Compressed messages (flag 1) are undone per
``grpc-encoding`` (``gzip``, ``deflate``; ``identity`` means none) with the output bounded by the
same budget; an unknown coding leaves the bytes as sent (``grpc_undecodable_message``).

Status: ``grpc-status`` and ``grpc-message`` (percent-encoded) from the response trailers, or
from the headers of a trailers-only response.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from urllib.parse import unquote

from shadowtap.records import GrpcMessage

__all__ = ["MessageSplitter", "is_grpc_content_type", "parse_path", "status_of"]

MAX_MESSAGES = 65536  # messages kept per side (all are counted)
_CODINGS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
_PREFIX = struct.Struct(">BI").unpack_from  # the compressed flag, the message length


def is_grpc_content_type(value: str | None) -> bool:
    return value is not None and (
        value == "application/grpc" or value.startswith(("application/grpc+", "application/grpc;"))
    )


def parse_path(path: str | None) -> tuple[str, str] | None:
    """``/package.Service/Method`` -> (``package.Service``, ``Method``); None for anything else."""
    if not path or not path.startswith("/"):
        return None
    service, sep, method = path[1:].partition("/")
    if not sep or not service or not method or "/" in method:
        return None
    return service, method


def status_of(fields: Iterable[tuple[str, str]]) -> tuple[int | None, str | None]:
    """(grpc-status, grpc-message) from response trailers or a trailers-only head; the last
    occurrence wins (trailers follow the head)."""
    status: int | None = None
    message: str | None = None
    for name, value in fields:
        if len(name) != 11 and len(name) != 12:  # neither name (most fields): not lower-cased
            continue
        lname = name.lower()
        if lname == "grpc-status":
            try:
                status = int(value.strip())
            except ValueError:
                status = None
        elif lname == "grpc-message":
            message = unquote(value)
    return status, message


def decompress(data: bytes, encoding: str, limit: int) -> tuple[bytes, bool] | None:
    """``data`` undone per gRPC ``encoding``, at most ``limit`` bytes out: (bytes, cut). None when
    the coding is unknown or the bytes do not decode."""
    wbits = _CODINGS.get(encoding)
    if wbits is None:
        return None
    try:
        d = zlib.decompressobj(wbits)
        out = d.decompress(data, limit) if limit > 0 else b""
        cut = bool(d.unconsumed_tail) or (limit <= 0 and bool(data))
        if not cut:
            out += d.flush()
        return out, cut
    except zlib.error:
        if encoding == "deflate":  # raw deflate, as some peers send
            try:
                d = zlib.decompressobj(-zlib.MAX_WBITS)
                out = d.decompress(data, limit) if limit > 0 else b""
                return out, bool(d.unconsumed_tail)
            except zlib.error:
                return None
        return None


class MessageSplitter:
    """Messages of one direction of one call (see the module docstring). ``lose()`` after a gap:
    message boundaries are unknown from then on, nothing more is split."""

    __slots__ = (
        "_cur",
        "_flag",
        "_head",
        "_len",
        "_need",
        "anomalies",
        "budget",
        "count",
        "lost",
        "messages",
        "partial",
    )

    def __init__(self, budget: int) -> None:
        self.budget = budget  # message bytes still to keep
        self._head = bytearray()
        self._need = -1  # payload bytes still to come for the current message; -1 reading a prefix
        self._cur = bytearray()
        self._flag = 0
        self._len = 0
        self.count = 0  # messages begun (complete or not)
        self.messages: list[tuple[int, int, bytes, bool]] = []  # (flag, length, kept bytes, cut)
        self.anomalies: list[str] = []
        self.lost = False
        self.partial = False  # the data ended inside a message

    def feed(self, data: bytes) -> None:
        if self.lost:
            return
        pos, n = 0, len(data)
        while pos < n:
            if self._need < 0 and not self._head and n - pos >= 5:
                # A whole prefix in this piece (the common case: a DATA frame holds whole
                # messages): read at once, and a message that ends here taken in one slice.
                flag, length = _PREFIX(data, pos)
                if flag > 1:
                    self.anomalies.append("grpc_bad_prefix")
                    self.lost = True
                    return
                self.count += 1
                end = pos + 5 + length
                if end <= n:
                    keep = min(length, self.budget) if self.budget > 0 else 0
                    self._flag, self._len = flag, length
                    self._cur = data[pos + 5 : pos + 5 + keep]  # type: ignore[assignment]
                    self._done()
                    pos = end
                    continue
                self._flag = flag
                self._need = self._len = length
                self._cur = bytearray()
                pos += 5
                continue
            if self._need < 0:
                take = min(5 - len(self._head), n - pos)
                self._head += data[pos : pos + take]
                pos += take
                if len(self._head) < 5:
                    break
                flag = self._head[0]
                if flag > 1:
                    self.anomalies.append("grpc_bad_prefix")
                    self.lost = True
                    return
                self._flag = flag
                self._need = self._len = int.from_bytes(self._head[1:5], "big")
                self._head.clear()
                self._cur = bytearray()
                self.count += 1
                if self._need == 0:
                    self._done()
                continue
            take = min(self._need, n - pos)
            keep = min(take, self.budget - len(self._cur)) if self.budget > len(self._cur) else 0
            if keep > 0:
                self._cur += data[pos : pos + keep]
            pos += take
            self._need -= take
            if self._need == 0:
                self._done()

    def _done(self) -> None:
        kept = bytes(self._cur)
        self._need = -1
        if (self.budget <= 0 and not kept) or len(self.messages) >= MAX_MESSAGES:
            return  # counted, not kept: the records stay O(budget)
        self.messages.append((self._flag, self._len, kept, len(kept) < self._len))
        self.budget -= len(kept)
        self._need = -1

    def finish(self) -> None:
        """End of the side's data: a message begun and not complete is kept as far as it got."""
        if self.lost:
            return
        if self._need > 0 or self._head:
            self.partial = True
            self.anomalies.append("grpc_bad_prefix")
            if self._need > 0:
                kept = bytes(self._cur)
                self.messages.append((self._flag, self._len, kept, True))
                self.budget -= len(kept)
            self._need = -1
            self._head.clear()

    def lose(self) -> None:
        if not self.lost:
            self.lost = True
            self.anomalies.append("grpc_gap")

    def records(self, encoding: str | None, budget: int) -> tuple[GrpcMessage, ...]:
        """The kept messages as records, compressed ones undone per ``encoding`` (bounded by
        ``budget`` bytes in all)."""
        out: list[GrpcMessage] = []
        enc = (encoding or "identity").lower()
        for flag, length, kept, cut in self.messages:
            data, truncated = kept, cut or len(kept) < length
            if flag and enc != "identity" and not truncated:
                got = decompress(kept, enc, max(budget, 0))
                if got is None:
                    self.anomalies.append("grpc_undecodable_message")
                else:
                    data, truncated = got
            elif flag and not truncated:
                self.anomalies.append("grpc_undecodable_message")
            budget -= len(data)
            out.append(GrpcMessage(data, length, bool(flag), truncated))
        return tuple(out)
