"""The JSON report: the snapshot as it is (schema in docs/compare.md), written 0600 because its
samples hold pieces of captured traffic."""

from __future__ import annotations

from typing import Any

import orjson

from shadowtap.jsonl import create_private


def dumps(report: dict[str, Any]) -> bytes:
    # Non-finite floats (a NaN percentile of an empty side) become null.
    return orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)


def write_json(report: dict[str, Any], path: str) -> None:
    if path == "-":
        import sys

        sys.stdout.buffer.write(dumps(report) + b"\n")
        sys.stdout.flush()
        return
    with create_private(path) as f:
        f.write(dumps(report) + b"\n")
