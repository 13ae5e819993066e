"""Shapes of values: what looks like an id (folded in paths and templates) and what looks volatile
(a timestamp, a UUID, a random token: values that change from one response to the next whatever
the version). Pure and cheap: a few anchored regular expressions per call."""

from __future__ import annotations

import re
from enum import Enum

_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
_UUID = re.compile(
    r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
)
_HEX = re.compile(r"(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{8,}")
_TOKEN = re.compile(r"(?=[^\d]*\d)(?=[^A-Za-z]*[A-Za-z])[A-Za-z0-9_\-=.~+/]{16,}")
_ISO_TIME = re.compile(
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?"
    r"|\d{2}:\d{2}:\d{2}(\.\d+)?"
)
_HTTP_DATE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
    r"\d{4} \d{2}:\d{2}:\d{2} GMT"
)
_PREFIXED_ID = re.compile(r"[A-Za-z]{1,12}[-_:](?=.*\d)[A-Za-z0-9\-_]{6,}")

# Volatile tokens inside text (HTML, XML, plain text bodies): dates and times, UUIDs, long hex ids.
VOLATILE_TOKEN = re.compile(
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?"
    r"|(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} GMT"
    r"|\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"
    r"|\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{16,}\b"
)

# Epoch timestamps in s, ms, us, ns and how far from the exchange's own time they may be.
_EPOCH_SCALES = (1.0, 1e3, 1e6, 1e9)
_EPOCH_WINDOW_S = 2 * 86400.0


_ID_LIKE = re.compile("|".join(f"(?:{r.pattern})" for r in (_NUMBER, _UUID, _HEX, _TOKEN)))


def is_id_like(text: str) -> bool:
    """A number, a UUID, a hex id of 8+ digits, or a random token of 16+ characters mixing
    letters and digits. Cost: one anchored match (digits first: the common case)."""
    return text.isdigit() or _ID_LIKE.fullmatch(text) is not None


class Volatile(str, Enum):
    TIMESTAMP = "timestamp"
    EPOCH = "epoch timestamp"
    UUID = "uuid"
    TOKEN = "random id/token"
    COUNTER = "counter"


def volatile_shape(value: object, now: float | None) -> Volatile | None:
    """Why ``value`` is likely to change from one response to the next, or None.

    ``now``: the exchange's time (epoch seconds), so that a number is called an epoch timestamp
    only when it lies within two days of it (a model's score never does)."""
    if isinstance(value, str):
        if len(value) > 200:
            return None
        if _ISO_TIME.fullmatch(value) or _HTTP_DATE.fullmatch(value):
            return Volatile.TIMESTAMP
        if _UUID.fullmatch(value):
            return Volatile.UUID
        if _HEX.fullmatch(value) or _TOKEN.fullmatch(value) or _PREFIXED_ID.fullmatch(value):
            return Volatile.TOKEN
        if _NUMBER.fullmatch(value):
            try:
                return volatile_shape(float(value), now)
            except ValueError:
                return None
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and now:
        for scale in _EPOCH_SCALES:
            if abs(value / scale - now) <= _EPOCH_WINDOW_S:
                return Volatile.EPOCH
    return None
