"""The JSON report: the snapshot's records as they are (schema in docs/compare.md), written 0600
because its samples hold pieces of captured traffic."""

from __future__ import annotations

import sys
from typing import Any

import orjson

from shadowtap.compare.report import Record, Report
from shadowtap.jsonl import create_private

# Records go to _record (their to_json leaves out the optional keys that do not apply); lists,
# dicts, enums (by value), numbers and strings are orjson's own work. Non-finite floats (a NaN
# percentile of an empty side) become null.
_OPTIONS = orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS


def _record(obj: Any) -> Any:
    if isinstance(obj, Record):
        return obj.to_json()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def dumps(report: Report) -> bytes:
    return orjson.dumps(report, default=_record, option=_OPTIONS)


def write_json(report: Report, path: str) -> None:
    if path == "-":
        sys.stdout.buffer.write(dumps(report) + b"\n")
        sys.stdout.flush()
        return
    with create_private(path) as f:
        f.write(dumps(report) + b"\n")
