"""Side-by-side samples of differing responses for the reports, with secrets redacted.

What is a secret is shadowtap.redact's decision (one set of rules for every command, by names
and value shapes: ``usage.completion_tokens`` is a count, ``access_token`` a secret); here secret
values are shown as ``[redacted]``. Bodies are cut at ``max_body`` characters. Cost: O(kept
bytes), paid only for the first few differences of each field; a body excerpt walks at most a
bounded number of JSON values (an excerpt shows only the beginning).
"""

from __future__ import annotations

from typing import Any

import orjson

from shadowtap.redact import REPORT_REDACTED, report_json, report_text, rules

REDACTED = REPORT_REDACTED
_VALUE_MAX = 300


def is_secret_name(name: str) -> bool:
    return rules().is_secret_name(name)


def redact_json(value: Any) -> Any:
    return report_json(value)


def redact_text(text: str) -> str:
    return report_text(text)


def redact_field(path: str, value: Any) -> Any:
    """A difference's value for display: redacted when its path names a secret, cut when long."""
    last = path.rsplit(".", 1)[-1]
    r = rules()
    if path.startswith("header."):
        if r.is_secret_header(last) or (isinstance(value, str) and r.is_secret_value(value)):
            return None if value is None else REDACTED
        return value
    if isinstance(value, str) and is_secret_name(last.replace("[]", "")):
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
            # At most ~limit values walked: the excerpt is cut at limit characters anyway.
            shown = report_json(parsed, [max(limit, 64)])
            text = orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode()
        except (TypeError, RecursionError):  # nested too deep to pretty-print: as text below
            text = None
        else:
            total = len(raw)
            if len(text) > limit:
                return text[:limit] + f"\n... (a {total}-byte body)"
            return text
    if text is None:
        try:
            text = raw[: limit * 2].decode("utf-8")
        except UnicodeDecodeError:
            return f"({len(raw)} bytes of binary data)"
        text = redact_text(text)
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n... ({len(text) - limit} more characters)"
