"""Side-by-side samples of differing responses for the reports, with secrets redacted.

Secret headers (Authorization, Cookie, Set-Cookie, ...) and JSON fields or query/form parameters
whose names say they hold a secret (password, token, api_key, session, ...) are replaced by
``[redacted]``. Bodies are cut at ``max_body`` characters. Cost: O(kept bytes), paid only for the
first few differences of each field.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from shadowtap.redact import DEFAULT_SECRET_HEADERS

REDACTED = "[redacted]"
_SECRET_NAME = re.compile(
    r"pass(word|wd|phrase)?|secret|token|api[-_]?key|authori[sz]ation|cookie|session|credential"
    r"|private[-_]?key"
    r"|ssn|card[-_]?number|cvv",
    re.IGNORECASE,
)
_TEXT_SECRET = re.compile(
    r"""(?P<k>["']?[\w-]*(?:pass(?:word|wd)?|secret|token|api[-_]?key|authori[sz]ation"""
    r"""|session\w*)["']?\s*[:=]\s*)"""
    r"""(?P<v>"[^"]*"|'[^']*'|[^&\s,;"'}<]+)""",
    re.IGNORECASE,
)
_VALUE_MAX = 300


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def redact_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: (REDACTED if is_secret_name(str(k)) else redact_json(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [redact_json(v) for v in value]
    return value


def redact_text(text: str) -> str:
    return _TEXT_SECRET.sub(lambda m: m.group("k") + REDACTED, text)


def redact_field(path: str, value: Any) -> Any:
    """A difference's value for display: redacted when its path names a secret, cut when long."""
    last = path.rsplit(".", 1)[-1]
    if path.startswith("header."):
        if last in DEFAULT_SECRET_HEADERS or is_secret_name(last):
            return None if value is None else REDACTED
        return value
    if value is not None and is_secret_name(last.replace("[]", "")):
        return REDACTED
    try:
        value = redact_json(value)
    except RecursionError:
        return "(nested too deep to show)"
    if isinstance(value, str):
        return redact_text(value)[:_VALUE_MAX]
    if isinstance(value, (dict, list)):
        try:
            text = orjson.dumps(value).decode()
        except TypeError:
            return "(nested too deep to show)"
        return value if len(text) <= _VALUE_MAX else text[:_VALUE_MAX] + "..."
    return value


def body_excerpt(raw: bytes, parsed: Any, is_json: bool, limit: int) -> str:
    """The body as text for a side-by-side view: pretty JSON with secret fields redacted, else the
    text with key=value secrets redacted; binary bodies as a note."""
    text = None
    if is_json:
        try:
            text = orjson.dumps(redact_json(parsed), option=orjson.OPT_INDENT_2).decode()
        except (TypeError, RecursionError):  # nested too deep to pretty-print: as text below
            text = None
    if text is None:
        try:
            text = raw[: limit * 2].decode("utf-8")
        except UnicodeDecodeError:
            return f"({len(raw)} bytes of binary data)"
        text = redact_text(text)
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n... ({len(text) - limit} more characters)"
