"""Redaction of secrets in captured headers.

A secret header's value is replaced by ``redacted:<hmac>``, a keyed hash (HMAC-SHA256, 16 hex
digits) so that comparisons still see equal and unequal values without storing them. The key is
per machine, kept in ``$SHADOWTAP_KEY_FILE`` (default ``~/.config/shadowtap/redact.key``, created
0600 on first use), so that two captures on the same machine hash the same value alike.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable

from shadowtap.jsonl import create_private
from shadowtap.records import Exchange, Headers, Message

DEFAULT_SECRET_HEADERS = ("authorization", "cookie", "set-cookie", "proxy-authorization")
REDACTED_PREFIX = "redacted:"


def key_path() -> str:
    return os.environ.get("SHADOWTAP_KEY_FILE") or os.path.expanduser("~/.config/shadowtap/redact.key")


def load_key(path: str | None = None) -> bytes:
    """The machine's redaction key, created (0600) when missing."""
    path = path or key_path()
    try:
        with open(path, "rb") as f:
            key = f.read()
        if len(key) >= 16:
            return key
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    key = secrets.token_bytes(32)
    with create_private(path) as f:  # never through a planted link
        f.write(key)
    return key


@dataclasses.dataclass(frozen=True, slots=True)
class Redactor:
    """Replaces the values of ``names`` (lower-case header names) with keyed hashes."""

    key: bytes
    names: frozenset[str] = frozenset(DEFAULT_SECRET_HEADERS)

    @classmethod
    def default(cls, extra: Iterable[str] = ()) -> Redactor:
        return cls(load_key(), frozenset(DEFAULT_SECRET_HEADERS) | {n.lower() for n in extra})

    def hash_value(self, value: str) -> str:
        digest = hmac.new(self.key, value.encode("latin-1", "replace"), hashlib.sha256).hexdigest()
        return REDACTED_PREFIX + digest[:16]

    def headers(self, headers: Headers) -> Headers:
        names = self.names
        for n, _ in headers:  # a plain loop: about twice as fast as any() over a generator
            if n.lower() in names:
                break
        else:
            return headers
        return tuple(
            (n, self.hash_value(v) if n.lower() in self.names and not v.startswith(REDACTED_PREFIX) else v)
            for n, v in headers
        )

    def message(self, msg: Message | None) -> Message | None:
        if msg is None:
            return None
        new = self.headers(msg.headers)
        return msg if new is msg.headers else dataclasses.replace(msg, headers=new)

    def exchange(self, ex: Exchange) -> Exchange:
        req, resp = self.message(ex.request), self.message(ex.response)
        if req is ex.request and resp is ex.response:
            return ex
        return dataclasses.replace(ex, request=req, response=resp)  # type: ignore[arg-type]
