"""Content decoding of bodies before comparison (gzip, x-gzip, deflate, br; stacked codings).

Pure: bytes in, bytes out. A body that cannot be decoded (a truncated capture, a wrong header)
is compared as it is, and the caller is told (``DecodeResult.error``).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import brotli

# Upper bound on a decoded body, so a decompression bomb cannot take the machine's memory.
MAX_DECODED = 64 << 20


@dataclass(frozen=True, slots=True)
class DecodeResult:
    body: bytes
    error: str | None = None  # why decoding stopped, when it did


def _inflate(data: bytes) -> bytes:
    # "deflate" is zlib-wrapped by the RFC, raw deflate in practice from some servers.
    for wbits in (zlib.MAX_WBITS, -zlib.MAX_WBITS):
        try:
            d = zlib.decompressobj(wbits)
            out = d.decompress(data, MAX_DECODED)
            return out
        except zlib.error:
            continue
    raise ValueError("not deflate data")


def _gunzip(data: bytes) -> bytes:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        return d.decompress(data, MAX_DECODED)
    except zlib.error as exc:
        raise ValueError(str(exc)) from exc


def _unbrotli(data: bytes) -> bytes:
    try:
        out = brotli.decompress(data)
    except brotli.error as exc:
        raise ValueError(str(exc)) from exc
    return out[:MAX_DECODED]


_DECODERS = {"gzip": _gunzip, "x-gzip": _gunzip, "deflate": _inflate, "br": _unbrotli}


def decode_body(body: bytes, content_encoding: str | None) -> DecodeResult:
    """``body`` with the codings of ``Content-Encoding`` removed (last applied first)."""
    if not content_encoding or not body:
        return DecodeResult(body)
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    for coding in reversed(codings):
        if coding == "identity":
            continue
        decoder = _DECODERS.get(coding)
        if decoder is None:
            return DecodeResult(body, f"unknown content-encoding {coding!r}")
        try:
            body = decoder(body)
        except ValueError as exc:
            return DecodeResult(body, f"cannot decode {coding}: {exc}")
    return DecodeResult(body)

