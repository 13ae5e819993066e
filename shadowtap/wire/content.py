"""The one content decoder (``Content-Encoding``: gzip, x-gzip, deflate, br, identity, stacked),
for the HTTP parsers' ``decoded_len`` and for compare's bodies alike: one rule, one set of bounds.

Pure: bytes in, a ``Decoded`` out. Every coding is decoded as a stream in pieces of at most
``PIECE`` bytes (zlib's ``max_length``, brotli's ``Decompressor.process(output_buffer_limit=)``),
so no coding is ever decoded in one call, and a stacked coding (``gzip, gzip``) passes pieces from
one stage to the next without holding the middle stage whole.

Bounds, per message (``Limits``; the defaults are those of docs/security.md):
- output: every stage stops past ``cap(len(body))`` decoded bytes, the smaller of ``max_decoded``
  (64 MiB) and ``max_ratio`` (1000) times the encoded size, but never less than ``min_allowance``
  (1 MiB): a small legitimate body always decodes; a bomb stops at its cap;
- work: at most ``max_codings`` (4) stacked codings, each producing at most the cap: the CPU a
  message can cost is O(codings x cap), whatever the attacker's ratio;
- memory: O(PIECE) when only the length is wanted (``keep=False``, the parsers); O(cap) with
  ``keep=True`` (compare, which needs the bytes).

Past a bound the result is ``Status.LIMIT`` (``decoded_len`` null, anomaly ``decode_limit``); a
body that is not what its header says is ``Status.UNDECODABLE`` (``undecodable_body``); a stream
that stops before its end is ``Status.TRUNCATED`` (undecodable for the parsers; compare keeps the
decoded part, as a browser would show it).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum

import brotli

from shadowtap.wire.anomalies import Anomaly

__all__ = ["DEFAULT_LIMITS", "PIECE", "Decoded", "Limits", "Status", "decode", "decoded_length"]

PIECE = 256 << 10  # decoded bytes a stage produces per call at most


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds of one message's decoding (see the module docstring)."""

    max_decoded: int = 64 << 20
    max_ratio: int = 1000
    min_allowance: int = 1 << 20
    max_codings: int = 4

    def cap(self, encoded: int) -> int:
        return min(self.max_decoded, max(self.min_allowance, self.max_ratio * encoded))


DEFAULT_LIMITS = Limits()


class Status(IntEnum):
    OK = 0
    UNDECODABLE = 1  # not the coding its header says, or an unknown coding
    TRUNCATED = 2  # the coded stream stops before its end
    LIMIT = 3  # past a bound: more codings, or more decoded bytes, than allowed


@dataclass(frozen=True, slots=True)
class Decoded:
    """``length``: decoded bytes (None unless ``status`` is OK); ``body``: with ``keep=True``, the
    decoded bytes (all of them when OK, those decoded before stopping else), None otherwise;
    ``detail``: why decoding stopped, for people."""

    status: Status
    length: int | None
    body: bytes | None = None
    detail: str = ""

    @property
    def anomaly(self) -> Anomaly | None:
        if self.status is Status.OK:
            return None
        return Anomaly.DECODE_LIMIT if self.status is Status.LIMIT else Anomaly.UNDECODABLE_BODY


class _Limit(Exception):
    pass


class _Bad(Exception):
    pass


class _Truncated(Exception):
    pass


def _zlib_stage(coding: str, pieces: Iterator[bytes], cap: int) -> Iterator[bytes]:
    d: zlib._Decompress | None = None
    total = 0
    for data in pieces:
        if d is None:
            if coding == "deflate" and not (
                len(data) >= 2 and (data[0] & 0x0F) == 8 and ((data[0] << 8) | data[1]) % 31 == 0
            ):
                d = zlib.decompressobj(-15)  # raw deflate, as some servers send
            else:
                d = zlib.decompressobj(47 if coding != "deflate" else 15)  # 47: gzip or zlib header
        try:
            out = d.decompress(data, PIECE)
            while out:
                total += len(out)
                if total > cap:
                    raise _Limit
                yield out
                out = d.decompress(d.unconsumed_tail, PIECE) if d.unconsumed_tail else b""
        except zlib.error as exc:
            raise _Bad(f"cannot decode {coding}: {exc}") from exc
        if d.eof:
            break  # what follows the end of the stream (a second gzip member, padding) is ignored
    if d is None:
        raise _Truncated(f"empty {coding} stream")
    try:
        out = d.flush()
    except zlib.error as exc:
        raise _Bad(f"cannot decode {coding}: {exc}") from exc
    if out:
        total += len(out)
        if total > cap:
            raise _Limit
        yield out
    if not d.eof:
        raise _Truncated(f"{coding} stream ends early")


def _brotli_stage(pieces: Iterator[bytes], cap: int) -> Iterator[bytes]:
    d = brotli.Decompressor()
    total = 0
    try:
        for data in pieces:
            # ``output_buffer_limit`` bounds each call's output (loosely: a call may return up to
            # ~2x); what is left comes from further calls with no input, until one returns nothing.
            out = d.process(data, output_buffer_limit=PIECE)
            while out:
                total += len(out)
                if total > cap:
                    raise _Limit
                yield out
                out = d.process(b"", output_buffer_limit=PIECE)
            if d.is_finished():
                break
    except brotli.error as exc:
        raise _Bad(f"cannot decode br: {exc}") from exc
    if not d.is_finished():
        raise _Truncated("br stream ends early")


def _stage(coding: str, pieces: Iterator[bytes], cap: int) -> Iterator[bytes]:
    if coding in ("gzip", "x-gzip", "deflate"):
        return _zlib_stage(coding, pieces, cap)
    if coding == "br":
        return _brotli_stage(pieces, cap)
    raise _Bad(f"unknown content-encoding {coding!r}")


def decode(
    body: bytes,
    content_encoding: str | None,
    *,
    keep: bool = False,
    limits: Limits = DEFAULT_LIMITS,
) -> Decoded:
    """``body`` with the codings of ``content_encoding`` undone (the last applied first), within
    ``limits``. ``keep``: return the decoded bytes too (else only their number)."""
    if not content_encoding:
        return Decoded(Status.OK, len(body), body if keep else None)
    codings = [
        c for c in (c.strip().lower() for c in content_encoding.split(",")) if c and c != "identity"
    ]
    if not codings:
        return Decoded(Status.OK, len(body), body if keep else None)
    if len(codings) > limits.max_codings:
        return Decoded(
            Status.LIMIT,
            None,
            body if keep else None,
            f"{len(codings)} stacked content codings (at most {limits.max_codings} are decoded)",
        )
    cap = limits.cap(len(body))
    pieces: Iterator[bytes] = iter((body,))
    try:
        for coding in reversed(codings):
            pieces = _stage(coding, pieces, cap)
    except _Bad as exc:  # an unknown coding, before any work
        return Decoded(Status.UNDECODABLE, None, body if keep else None, str(exc))
    kept: list[bytes] = []
    total = 0
    try:
        for piece in pieces:
            total += len(piece)
            if keep:
                kept.append(piece)
    except _Limit:
        return Decoded(
            Status.LIMIT,
            None,
            b"".join(kept) if keep else None,
            f"decoded body over {cap} bytes (the bound for {len(body)} encoded bytes)",
        )
    except _Bad as exc:
        return Decoded(Status.UNDECODABLE, None, body if keep else None, str(exc))
    except _Truncated as exc:
        return Decoded(Status.TRUNCATED, None, b"".join(kept) if keep else None, str(exc))
    return Decoded(Status.OK, total, b"".join(kept) if keep else None)


def decoded_length(
    body: bytes, content_encoding: str | None, limits: Limits = DEFAULT_LIMITS
) -> int | None:
    """The body's length after undoing ``content_encoding``, or None when it cannot be decoded
    within ``limits`` (memory O(PIECE))."""
    return decode(body, content_encoding, limits=limits).length
