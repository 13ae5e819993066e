"""The lake's schema (version ``LAKE_SCHEMA``, docs/lake.md) and the mapping between records and
its rows. Pure: no I/O; pyarrow builds the columns.

One row is one pair: an Exchange (the primary's request and response) and one Result (the
shadow's answer to one copy of it). Every field of both records is kept in nested structs
(``request``, ``primary``, ``shadow``) so the records can be rebuilt exactly (``pairs_from_batch``),
with bodies cut at the writer's bound (``*.body_truncated`` then set). Flat columns repeat what
queries ask most (statuses, latencies, endpoint, the diff summary) so SQL needs no struct access.

Schema evolution: columns are only ever added within a version; a removal or a change of meaning
bumps ``LAKE_SCHEMA``, which every row carries (``schema_version``) and every file's metadata too.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from shadowtap.records import (
    Chunks,
    Exchange,
    GrpcCall,
    GrpcMessage,
    H2Stream,
    Message,
    Request,
    Response,
    Result,
    ResultError,
)

LAKE_SCHEMA = 1
PARTITIONS = ("date", "endpoint_key")
DIFF_PATHS_MAX = 32  # paths kept per pair in diff_paths (diff_count counts them all)
META_KEY = b"shadowtap.lake.schema"

_HEADERS = pa.list_(pa.struct([("name", pa.string()), ("value", pa.string())]))
_COMMON = [
    ("ts", pa.float64()),
    ("end_ts", pa.float64()),
    ("version", pa.string()),
    ("headers", _HEADERS),
    ("body", pa.binary()),
    ("body_len", pa.int64()),
    ("body_truncated", pa.bool_()),
    ("decoded_len", pa.int64()),
]
REQUEST = pa.struct([("method", pa.string()), ("target", pa.string()), *_COMMON])
RESPONSE = pa.struct([("status", pa.int32()), ("reason", pa.string()), *_COMMON])
# The records' h2, grpc and chunks objects (their to_json shapes; bytes as binary, not text).
H2 = pa.struct(
    [
        ("stream_id", pa.int64()),
        ("outcome", pa.string()),
        ("error_code", pa.int64()),
        ("request_trailers", pa.int64()),
        ("response_trailers", pa.int64()),
        ("undecoded_fields", pa.int64()),
    ]
)
_GRPC_MESSAGES = pa.list_(
    pa.struct(
        [
            ("data", pa.binary()),
            ("len", pa.int64()),
            ("compressed", pa.bool_()),
            ("truncated", pa.bool_()),
        ]
    )
)
GRPC = pa.struct(
    [
        ("service", pa.string()),
        ("method", pa.string()),
        ("request_messages", _GRPC_MESSAGES),
        ("request_count", pa.int64()),
        ("response_messages", _GRPC_MESSAGES),
        ("response_count", pa.int64()),
        ("status", pa.int64()),
        ("message", pa.string()),
    ]
)
CHUNKS = pa.list_(pa.struct([("offset", pa.int64()), ("ts", pa.float64())]))
# Columns added to version 1 after its first files (older files lack them: read as null).
OPTIONAL = (
    "h2",
    "primary_grpc",
    "primary_chunks",
    "shadow_grpc",
    "shadow_chunks",
    "shadow_tls_handshake_ms",
)

SCHEMA = pa.schema(
    [
        ("schema_version", pa.int16()),
        ("host", pa.string()),  # the agent (or exporting host) the pair comes from
        ("exchange_id", pa.string()),
        ("copy", pa.int32()),
        ("endpoint", pa.string()),  # METHOD + path template, as compare names it
        ("ts", pa.timestamp("us", tz="UTC")),  # the exchange's start (its request's first byte)
        ("client", pa.string()),
        ("server", pa.string()),
        ("conn_index", pa.int32()),
        ("anomalies", pa.list_(pa.string())),
        ("primary_status", pa.int32()),
        ("shadow_status", pa.int32()),
        ("primary_ttfb_ms", pa.float64()),
        ("primary_ms", pa.float64()),
        ("shadow_ttfb_ms", pa.float64()),
        ("shadow_ms", pa.float64()),
        ("shadow_error_kind", pa.string()),
        ("shadow_error", pa.string()),
        ("shadow_target", pa.string()),
        ("scheduled", pa.float64()),
        ("sent", pa.float64()),
        ("result_extra", pa.string()),  # the Result's ``extra`` as JSON text, or null
        ("compared", pa.bool_()),  # both sides answered, so content was compared
        ("differs", pa.bool_()),
        ("diff_count", pa.int32()),
        ("diff_paths", pa.list_(pa.string())),
        ("diff_kinds", pa.list_(pa.string())),
        ("request", REQUEST),
        ("primary_response", RESPONSE),
        ("shadow_response", RESPONSE),
        ("h2", H2),  # the exchange's HTTP/2 stream, null for HTTP/1.x
        ("primary_grpc", GRPC),  # the exchange's gRPC call
        ("primary_chunks", CHUNKS),  # arrival of the primary's streamed body's pieces
        ("shadow_grpc", GRPC),  # the result's gRPC call
        ("shadow_chunks", CHUNKS),
        ("shadow_tls_handshake_ms", pa.float64()),
        ("date", pa.string()),  # partition: the exchange's UTC day, YYYY-MM-DD
        ("endpoint_key", pa.string()),  # partition: a path-safe name of the endpoint
    ],
    metadata={META_KEY: str(LAKE_SCHEMA).encode()},
)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def endpoint_key(endpoint: str) -> str:
    """A directory-safe, readable name for an endpoint: ``GET /items/{id}`` ->
    ``GET_items_id-1a2b3c4d`` (the hash keeps names that slug alike apart)."""
    slug = _UNSAFE.sub("_", endpoint).strip("_")[:80] or "_"
    return f"{slug}-{hashlib.blake2b(endpoint.encode(), digest_size=4).hexdigest()}"


def day(ts: float) -> str:
    """The partition ``date`` of a pair: its exchange's UTC day, YYYY-MM-DD."""
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def days(micros: pa.Array) -> pa.Array:
    """``day`` of each of an int64 column of microseconds since the epoch (no nulls): one
    strftime a distinct day, spread by ``take``: O(rows) in numpy (Arrow's strftime of a
    timestamp column costs ~0.6 us a row)."""
    d = np.floor_divide(micros.to_numpy(), 86_400_000_000)
    distinct, index = np.unique(d, return_inverse=True)
    return pa.array([day(int(n) * 86400) for n in distinct], pa.string()).take(index)


@dataclass(frozen=True, slots=True)
class DiffSummary:
    """What the per-pair diff found (``None`` fields: the pair was not compared)."""

    compared: bool
    count: int = 0
    paths: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()


NOT_COMPARED = DiffSummary(False)
SAME = DiffSummary(True)

# The columns the writer adds to a pair (its naming, its diff, where it goes); a joined batch
# (``complete_batch``) brings every other column of SCHEMA.
DERIVED = (
    "schema_version",
    "host",
    "endpoint",
    "compared",
    "differs",
    "diff_count",
    "diff_paths",
    "diff_kinds",
    "date",
    "endpoint_key",
)


def _message(
    m: Message | None, max_body: int, first: tuple[str, Any], second: tuple[str, Any]
) -> dict[str, Any] | None:
    if m is None:
        return None
    body = m.body
    cut = len(body) > max_body
    return {
        first[0]: first[1],
        second[0]: second[1],
        "ts": m.ts,
        "end_ts": m.end_ts,
        "version": m.version,
        "headers": [{"name": n, "value": v} for n, v in m.headers],
        "body": body[:max_body] if cut else body,
        "body_len": m.body_len,
        "body_truncated": m.body_truncated or cut,
        "decoded_len": m.decoded_len,
    }


def _grpc(g: GrpcCall | None) -> dict[str, Any] | None:
    if g is None:
        return None
    return {
        "service": g.service,
        "method": g.method,
        "request_messages": [_grpc_message(m) for m in g.request_messages],
        "request_count": g.request_count,
        "response_messages": [_grpc_message(m) for m in g.response_messages],
        "response_count": g.response_count,
        "status": g.status,
        "message": g.message,
    }


def _grpc_message(m: GrpcMessage) -> dict[str, Any]:
    return {"data": m.data, "len": m.length, "compressed": m.compressed, "truncated": m.truncated}


def _chunks(chunks: Chunks) -> list[dict[str, Any]] | None:
    return [{"offset": off, "ts": ts} for off, ts in chunks] if chunks else None


class Rows:
    """Columns being filled, one pair at a time; ``batch()`` hands them over as a RecordBatch.
    Memory: the rows added since the last batch (bodies cut at ``max_body``)."""

    def __init__(self, host: str, max_body: int = 65536) -> None:
        self.host = host
        self.max_body = max_body
        self._cols: dict[str, list[Any]] = {f.name: [] for f in SCHEMA}

    def __len__(self) -> int:
        return len(self._cols["exchange_id"])

    def add(
        self, ex: Exchange, res: Result, endpoint: str, diff: DiffSummary, host: str | None = None
    ) -> None:
        c = self._cols
        mb = self.max_body
        req, p, s = ex.request, ex.response, res.response
        ts = ex.ts
        c["schema_version"].append(LAKE_SCHEMA)
        c["host"].append(host or self.host)
        c["exchange_id"].append(ex.id)
        c["copy"].append(res.copy)
        c["endpoint"].append(endpoint)
        c["ts"].append(int(ts * 1_000_000))
        c["client"].append(ex.client)
        c["server"].append(ex.server)
        c["conn_index"].append(ex.index)
        c["anomalies"].append(list(ex.anomalies))
        c["primary_status"].append(p.status if p is not None else None)
        c["shadow_status"].append(s.status if s is not None else None)
        c["primary_ttfb_ms"].append(ex.ttfb_ms)
        c["primary_ms"].append(ex.total_ms)
        c["shadow_ttfb_ms"].append(res.ttfb_ms)
        c["shadow_ms"].append(res.total_ms)
        c["shadow_error_kind"].append(res.error.kind if res.error is not None else None)
        c["shadow_error"].append(res.error.message if res.error is not None else None)
        c["shadow_target"].append(res.target)
        c["scheduled"].append(res.scheduled)
        c["sent"].append(res.sent)
        c["result_extra"].append(orjson.dumps(res.extra).decode() if res.extra else None)
        c["compared"].append(diff.compared)
        c["differs"].append(diff.count > 0 if diff.compared else None)
        c["diff_count"].append(diff.count if diff.compared else None)
        c["diff_paths"].append(list(diff.paths))
        c["diff_kinds"].append(list(diff.kinds))
        c["request"].append(
            _message(req, mb, ("method", req.method), ("target", req.target)) if req else None
        )
        for col, m in (("primary_response", p), ("shadow_response", s)):
            c[col].append(
                _message(m, mb, ("status", m.status), ("reason", m.reason)) if m else None
            )
        c["h2"].append(ex.h2.to_json() if ex.h2 is not None else None)
        c["primary_grpc"].append(_grpc(ex.grpc))
        c["primary_chunks"].append(_chunks(ex.chunks))
        c["shadow_grpc"].append(_grpc(res.grpc))
        c["shadow_chunks"].append(_chunks(res.chunks))
        c["shadow_tls_handshake_ms"].append(res.tls_handshake_ms)
        c["date"].append(day(ts))
        c["endpoint_key"].append(endpoint_key(endpoint))

    def batch(self) -> pa.RecordBatch:
        cols = self._cols
        arrays = [pa.array(cols[f.name], type=f.type) for f in SCHEMA]
        self._cols = {f.name: [] for f in SCHEMA}
        return pa.RecordBatch.from_arrays(arrays, schema=SCHEMA)


# ------------------------------------------------------------------------------------ columns


def _by_name(col: pa.Array, make: Any) -> pa.Array:
    """``make(value)`` for each distinct value of a string column, spread back over the rows:
    O(rows) in Arrow plus one call per distinct value."""
    names = pc.unique(col)
    made = pa.array([make(n) for n in names.to_pylist()], type=pa.string())
    return pc.take(made, pc.index_in(col, value_set=names))


def rename_endpoints(batch: pa.RecordBatch, rename: Any) -> pa.RecordBatch:
    """``batch`` with ``rename(name) -> name`` applied to its endpoints (templates learnt since
    its rows came), ``endpoint_key`` following."""
    col = batch.column("endpoint")
    names = pc.unique(col).to_pylist()
    if all(rename(n) == n for n in names):
        return batch
    col = _by_name(col, rename)
    batch = batch.set_column(SCHEMA.get_field_index("endpoint"), SCHEMA.field("endpoint"), col)
    key = _by_name(col, endpoint_key)
    return batch.set_column(
        SCHEMA.get_field_index("endpoint_key"), SCHEMA.field("endpoint_key"), key
    )


def _cut_bodies(col: pa.StructArray, max_body: int) -> pa.StructArray:
    """A message column with bodies longer than ``max_body`` cut and marked ``body_truncated``
    (as ``_message`` does a record's)."""
    body = col.field("body")
    long = pc.greater(pc.binary_length(body), max_body)
    if not pc.any(long).as_py():
        return col
    fields = {f.name: col.field(f.name) for f in col.type}
    fields["body"] = pc.if_else(long, pc.binary_slice(body, 0, max_body), body)
    fields["body_truncated"] = pc.or_(fields["body_truncated"], pc.fill_null(long, False))
    return pa.StructArray.from_arrays(
        list(fields.values()), fields=list(col.type), mask=col.is_null()
    )


def complete_batch(
    joined: pa.RecordBatch,
    host: str,
    endpoints: pa.Array,
    summaries: list[DiffSummary],
    pick: Any,
    max_body: int,
) -> pa.RecordBatch:
    """Lake rows from a joined batch (every SCHEMA column but ``DERIVED``, any compatible types,
    bodies whole) and what the writer found for each row: its endpoint name and its diff summary
    (``summaries[pick[i]]`` for row ``i``: few distinct summaries, spread by ``take``).
    The same rows as ``Rows.add`` makes of the records (tests/lake/test_parquet.py checks it)."""
    n = joined.num_rows
    endpoint = endpoints.cast(pa.string())
    micros = joined.column("ts").cast(pa.int64())
    ts = micros.cast(SCHEMA.field("ts").type)
    index = pa.array(pick, pa.int64())

    def spread(values: list[Any], typ: pa.DataType) -> pa.Array:
        return pa.array(values, typ).take(index)

    derived: dict[str, Any] = {
        "schema_version": pa.repeat(pa.scalar(LAKE_SCHEMA, pa.int16()), n),
        "host": pa.repeat(pa.scalar(host, pa.string()), n),
        "endpoint": endpoint,
        "ts": ts,
        "compared": spread([d.compared for d in summaries], pa.bool_()),
        "differs": spread([d.count > 0 if d.compared else None for d in summaries], pa.bool_()),
        "diff_count": spread([d.count if d.compared else None for d in summaries], pa.int32()),
        "diff_paths": spread([d.paths for d in summaries], pa.list_(pa.string())),
        "diff_kinds": spread([d.kinds for d in summaries], pa.list_(pa.string())),
        "date": days(micros),
        "endpoint_key": _by_name(endpoint, endpoint_key),
    }
    arrays = []
    for f in SCHEMA:
        col = derived.get(f.name)
        if col is None:
            col = joined.column(f.name)
            if f.name in ("request", "primary_response", "shadow_response"):
                col = _cut_bodies(col, max_body)
            col = col.cast(f.type)
        arrays.append(col)
    return pa.RecordBatch.from_arrays(arrays, schema=SCHEMA)


# ------------------------------------------------------------------------------------ reading


def _headers(items: list[dict[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple((h["name"], h["value"]) for h in items)


def _common(d: dict[str, Any]) -> dict[str, Any]:
    return {
        "ts": d["ts"],
        "end_ts": d["end_ts"],
        "version": d["version"],
        "headers": _headers(d["headers"]),
        "body": d["body"],
        "body_len": d["body_len"],
        "body_truncated": d["body_truncated"],
        "decoded_len": d["decoded_len"],
    }


def diff_sides(col: pa.StructArray, rows: pa.Array) -> list[Response]:
    """The responses of a response column at ``rows`` (present ones: the pairs the writer must
    diff) as the per-pair diff reads them: status, headers and body, the times left at zero.
    Only those three fields are taken from the column, headers zipped from two flat lists, the
    records made positionally: the Arrow work is O(rows taken), the Python a record each."""
    statuses = pc.take(pc.struct_field(col, "status"), rows).to_pylist()
    bodies = pc.take(pc.struct_field(col, "body"), rows).to_pylist()
    headers = pc.take(pc.struct_field(col, "headers"), rows)
    flat = pc.list_flatten(headers)
    names = pc.struct_field(flat, "name").to_pylist()
    values = pc.struct_field(flat, "value").to_pylist()
    ends = pc.cumulative_sum(pc.list_value_length(headers).fill_null(0)).to_pylist()
    pairs = list(zip(names, values))
    out = []
    start = 0
    for status, body, end in zip(statuses, bodies, ends):
        # Message's fields in order (ts, end_ts, version, headers, body, body_len,
        # body_truncated, decoded_len), then Response's status.
        out.append(
            Response(0.0, 0.0, "", tuple(pairs[start:end]), body, len(body), False, None, status)
        )
        start = end
    return out


def bodies_at(col: pa.StructArray, rows: pa.Array) -> list[bytes]:
    """The bodies of a message column at ``rows``."""
    return pc.take(pc.struct_field(col, "body"), rows).to_pylist()  # type: ignore[no-any-return]


def header_at(col: pa.StructArray, rows: pa.Array, name: str) -> list[str | None]:
    """The first value of header ``name`` (lower-case ASCII; names compared case-insensitively,
    as ``records.header_value`` does: only ASCII letters lower to ASCII there, but for the
    Kelvin sign, so ASCII lowering is the same match for a name without a ``k``) of a message
    column at ``rows``, or None: O(headers at those rows) in Arrow and numpy, Python only for
    the rows that have it."""
    headers = pc.take(pc.struct_field(col, "headers"), rows)
    flat = pc.list_flatten(headers)
    hits = pc.indices_nonzero(pc.equal(pc.ascii_lower(pc.struct_field(flat, "name")), name))
    out: list[str | None] = [None] * len(rows)
    if len(hits) == 0:
        return out
    owner = pc.take(pc.list_parent_indices(headers), hits).to_numpy()
    first = np.flatnonzero(np.diff(owner, prepend=-1))  # a row's first hit: hits are in order
    values = pc.take(pc.struct_field(flat, "value"), hits.take(pa.array(first))).to_pylist()
    for i, v in zip(owner[first].tolist(), values):
        out[i] = v
    return out


def _response(d: dict[str, Any] | None) -> Response | None:
    if d is None:
        return None
    return Response(status=d["status"], reason=d["reason"], **_common(d))


def _grpc_call(d: dict[str, Any] | None) -> GrpcCall | None:
    if d is None:
        return None
    return GrpcCall(
        d["service"],
        d["method"],
        tuple(_grpc_messages(d["request_messages"])),
        tuple(_grpc_messages(d["response_messages"])),
        d["request_count"],
        d["response_count"],
        d["status"],
        d["message"],
    )


def _grpc_messages(items: list[dict[str, Any]] | None) -> Iterator[GrpcMessage]:
    for m in items or ():
        yield GrpcMessage(m["data"], m["len"], m["compressed"], m["truncated"])


def _chunks_of(items: list[dict[str, Any]] | None) -> Chunks:
    return tuple((c["offset"], c["ts"]) for c in items) if items else ()


def pairs_from_batch(batch: pa.RecordBatch | pa.Table) -> Iterator[tuple[Exchange, Result, str]]:
    """The records of a batch of lake rows, with each row's host. Rows of another schema version
    raise ValueError (the caller says where)."""
    need = (
        "schema_version",
        "host",
        "exchange_id",
        "copy",
        "client",
        "server",
        "conn_index",
        "anomalies",
        "primary_ttfb_ms",
        "primary_ms",
        "shadow_ttfb_ms",
        "shadow_ms",
        "shadow_error_kind",
        "shadow_error",
        "shadow_target",
        "scheduled",
        "sent",
        "result_extra",
        "request",
        "primary_response",
        "shadow_response",
    )
    missing = [n for n in need if n not in batch.schema.names]
    if missing:
        raise ValueError(f"not a shadowtap lake (columns missing: {', '.join(missing)})")
    cols = {n: batch.column(n).to_pylist() for n in need}
    names = batch.schema.names
    nulls = [None] * batch.num_rows
    for n in OPTIONAL:  # files written before these columns: null
        cols[n] = batch.column(n).to_pylist() if n in names else nulls
    for i in range(batch.num_rows):
        version = cols["schema_version"][i]
        if version != LAKE_SCHEMA:
            raise ValueError(f"lake rows of schema {version}, this shadowtap reads {LAKE_SCHEMA}")
        rq = cols["request"][i]
        req = Request(method=rq["method"], target=rq["target"], **_common(rq)) if rq else None
        ex = Exchange(
            id=cols["exchange_id"][i],
            client=cols["client"][i],
            server=cols["server"][i],
            index=cols["conn_index"][i],
            request=req,
            response=_response(cols["primary_response"][i]),
            anomalies=tuple(cols["anomalies"][i] or ()),
            ttfb_ms=cols["primary_ttfb_ms"][i],
            total_ms=cols["primary_ms"][i],
            h2=H2Stream(**h2) if (h2 := cols["h2"][i]) is not None else None,
            grpc=_grpc_call(cols["primary_grpc"][i]),
            chunks=_chunks_of(cols["primary_chunks"][i]),
        )
        kind = cols["shadow_error_kind"][i]
        extra = cols["result_extra"][i]
        res = Result(
            exchange_id=ex.id,
            target=cols["shadow_target"][i],
            scheduled=cols["scheduled"][i],
            sent=cols["sent"][i],
            response=_response(cols["shadow_response"][i]),
            ttfb_ms=cols["shadow_ttfb_ms"][i],
            total_ms=cols["shadow_ms"][i],
            error=ResultError(kind, cols["shadow_error"][i] or "") if kind else None,
            copy=cols["copy"][i],
            extra=orjson.loads(extra) if extra else {},
            grpc=_grpc_call(cols["shadow_grpc"][i]),
            chunks=_chunks_of(cols["shadow_chunks"][i]),
            tls_handshake_ms=cols["shadow_tls_handshake_ms"][i],
        )
        yield ex, res, cols["host"][i]
