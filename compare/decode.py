"""Content decoding of bodies before comparison: ``shadowtap.wire.content`` (the one decoder,
streamed and bounded, shared with the capture parsers' ``decoded_len``) with compare's reading of
its outcome.

Pure: bytes in, bytes out. A body that cannot be decoded (a wrong header, an unknown coding) or
that decodes past the bounds (a decompression bomb: docs/security.md) is compared as it is, and
the caller is told (``DecodeResult.error``). A coded stream cut short (a truncated capture) is
compared as far as it decodes, as a client would show it.
"""

from __future__ import annotations

from dataclasses import dataclass

from shadowtap.wire.content import Status, decode


@dataclass(frozen=True, slots=True)
class DecodeResult:
    body: bytes
    error: str | None = None  # why decoding stopped, when it did


def decode_body(body: bytes, content_encoding: str | None) -> DecodeResult:
    """``body`` with the codings of ``Content-Encoding`` removed (last applied first)."""
    if not content_encoding or not body:
        return DecodeResult(body)
    out = decode(body, content_encoding, keep=True)
    if out.status is Status.OK or out.status is Status.TRUNCATED:
        assert out.body is not None
        return DecodeResult(out.body)
    return DecodeResult(body, out.detail)
