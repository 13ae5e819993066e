"""The conditions an exchange (or an extraction's summary) can carry: one place for their names.

``Anomaly`` is a ``StrEnum``: each member *is* its string, so records, JSONL files and summaries
hold the same bytes as before the names became an enum, and ``"gap" in txn.anomalies`` still
reads. docs/exchange-format.md's table says what each one means; keep both in step.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Anomaly"]


class Anomaly(StrEnum):
    # Capture and reassembly
    MIDSTREAM = "midstream"
    GAP = "gap"
    RESYNC = "resync"
    RETRANSMISSION_CONFLICT = "retransmission_conflict"
    TRUNCATED = "truncated"
    # Parsing
    PARSE_ERROR = "parse_error"
    NOT_HTTP = "not_http"
    TUNNEL = "tunnel"
    HTTP09 = "http09"
    ODD_REQUEST_LINE = "odd_request_line"
    OBS_FOLD = "obs_fold"
    BAD_HEADER = "bad_header"
    BARE_LF = "bare_lf"
    BAD_CONTENT_LENGTH = "bad_content_length"
    CONFLICTING_CONTENT_LENGTH = "conflicting_content_length"
    TE_AND_CL = "te_and_cl"
    BAD_TRANSFER_ENCODING = "bad_transfer_encoding"
    CHUNK_FRAMING = "chunk_framing"
    HEAD_TOO_LARGE = "head_too_large"
    TOO_MANY_HEADERS = "too_many_headers"
    OPEN_LIMIT = "open_limit"
    # Content decoding
    UNDECODABLE_BODY = "undecodable_body"
    DECODE_LIMIT = "decode_limit"
    # Ordering (the Extractor)
    LATE = "late"
