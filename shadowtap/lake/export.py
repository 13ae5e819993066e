"""The stage behind ``shadowtap export``: join exchanges and results from files (or a run
directory) and write the pairs to the lake. Also the one place that finds a run directory's files
and joins files into pairs, for ``compare``'s engines too.

Two ways through, one result (tests/lake/test_parquet.py compares them row by row):

- **columnar** (``columnar_pairs``), for well-formed files: DuckDB (embedded, one pass over each
  file in C++) reads both files into columns, checks every rule the record decoders check, joins
  them on the exchange id and builds the lake's nested columns; the writer then runs the Python
  diff only on pairs whose responses differ (``LakeWriter.add_joined``). Cost: O(bytes) in C++
  plus the diff of the differing pairs; no Python object per field.
- **records** (``file_pairs``): each line decoded to an Exchange or a Result and joined by the
  streaming Joiner. Taken for standard input, and whenever the columnar path declines: a line
  that is not a valid record (the record path names each one with its line number and skips it,
  as it always did), or an exchange id seen twice.

Neither redacts: the lake holds the records as they are in the files, which capture and the
mirror redacted when they wrote them (docs/lake.md); ``shadowtap.redact`` stays the one place.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shadowtap import console
from shadowtap.compare.config import load_config
from shadowtap.compare.join import Joiner, join
from shadowtap.errors import InputError
from shadowtap.jsonl import read_jsonl
from shadowtap.procs import batch_gc
from shadowtap.records import ERROR_KINDS, H2_OUTCOMES, Exchange, Result

if TYPE_CHECKING:
    import pyarrow as pa


def run_files(inputs: list[str]) -> tuple[str, str]:
    """(exchanges, results) from ``[RUN_DIR]`` or ``[EXCHANGES, RESULTS]``."""
    if len(inputs) == 2:
        return inputs[0], inputs[1]
    if len(inputs) == 1 and os.path.isdir(inputs[0]):
        d = inputs[0]
        found = []
        for stem in ("exchanges", "results"):
            for name in (f"{stem}.jsonl", f"{stem}.jsonl.gz"):
                if os.path.exists(os.path.join(d, name)):
                    found.append(os.path.join(d, name))
                    break
            else:
                raise InputError(f"no {stem}.jsonl(.gz) in this run directory", where=d)
        return found[0], found[1]
    raise InputError(
        "give a run directory, or an exchanges file and a results file",
        where=" ".join(inputs) or "(no input)",
    )


@dataclass
class JoinStats:
    unmatched_exchanges: int = 0
    unmatched_results: int = 0
    input_errors: int = 0
    examples: list[str] = field(default_factory=list)

    def error(self, err: InputError) -> None:
        self.input_errors += 1
        if self.input_errors <= 20:
            console.warn(f"{err} (skipped)")
        if len(self.examples) < 10:
            self.examples.append(str(err))


def file_pairs(exchanges: str, results: str, stats: JoinStats) -> Iterator[tuple[Exchange, Result]]:
    """The joined pairs of two JSONL files, streaming; unmatched records and bad lines are counted
    in ``stats``."""
    joiner = Joiner(baseline=False)
    for ex, res, _ in join(
        read_jsonl(exchanges, Exchange.from_json, stats.error),
        read_jsonl(results, Result.from_json, stats.error),
        None,
        joiner,
    ):
        yield ex, res
    stats.unmatched_exchanges = joiner.unmatched_exchanges
    stats.unmatched_results = joiner.unmatched_results


# --------------------------------------------------------------------------------- columnar

_MESSAGE = (
    "STRUCT(method VARCHAR, target VARCHAR, status BIGINT, reason VARCHAR, ts DOUBLE, "
    "end_ts DOUBLE, version VARCHAR, headers VARCHAR[][], body VARCHAR, body_encoding VARCHAR, "
    "body_len BIGINT, body_truncated BOOLEAN, decoded_len BIGINT)"
)
_H2 = (
    "STRUCT(stream_id BIGINT, outcome VARCHAR, error_code BIGINT, request_trailers BIGINT, "
    "response_trailers BIGINT, undecoded_fields BIGINT)"
)
_GRPC_MESSAGES = (
    "STRUCT(data VARCHAR, encoding VARCHAR, len BIGINT, compressed BOOLEAN, truncated BOOLEAN)[]"
)
_GRPC = (
    f"STRUCT(service VARCHAR, method VARCHAR, request_messages {_GRPC_MESSAGES}, "
    f"request_count BIGINT, response_messages {_GRPC_MESSAGES}, response_count BIGINT, "
    "status BIGINT, message VARCHAR)"
)
_EXCHANGE_COLUMNS = {
    "schema": "BIGINT",
    "id": "VARCHAR",
    "conn": "STRUCT(client VARCHAR, server VARCHAR)",
    "index": "BIGINT",
    "request": _MESSAGE,
    "response": _MESSAGE,
    "ttfb_ms": "DOUBLE",
    "total_ms": "DOUBLE",
    "anomalies": "VARCHAR[]",
    "h2": _H2,
    "grpc": _GRPC,
    "chunks": "DOUBLE[][]",
}
_RESULT_COLUMNS = {
    "schema": "BIGINT",
    "exchange_id": "VARCHAR",
    "copy": "BIGINT",
    "target": "VARCHAR",
    "scheduled": "DOUBLE",
    "sent": "DOUBLE",
    "response": _MESSAGE,
    "ttfb_ms": "DOUBLE",
    "total_ms": "DOUBLE",
    "error": "STRUCT(kind VARCHAR, message VARCHAR)",
    "extra": "JSON",
    "grpc": _GRPC,
    "chunks": "DOUBLE[][]",
    "tls_handshake_ms": "DOUBLE",
}


def _read_json(path: str, columns: dict[str, str], line_bytes: int) -> str:
    cols = ", ".join(f"\"{k}\": '{v}'" for k, v in columns.items())
    return (
        f"read_json({_quote(path)}, format = 'newline_delimited', columns = {{{cols}}}, "
        f"maximum_object_size = {line_bytes})"
    )


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _body(m: str, text: str = "body", encoding: str = "body_encoding") -> str:
    """The bytes of a body (or a gRPC message's data): base64 decoded, or UTF-8 encoded."""
    return (
        f"CASE WHEN coalesce({m}.{encoding}, 'utf8') = 'base64' THEN from_base64({m}.{text}) "
        f"ELSE encode(coalesce({m}.{text}, '')) END"
    )


def _message_problems(m: str, first: str, second: str) -> list[str]:
    """What Request/Response.from_json refuse in a message ``m`` (SQL conditions, when present)."""
    return [
        f"{m}.{first} IS NULL OR {m}.{second} IS NULL OR {m}.version IS NULL",
        f"{m}.ts IS NULL OR {m}.end_ts IS NULL OR NOT isfinite({m}.ts) OR NOT isfinite({m}.end_ts)",
        f"{m}.end_ts < {m}.ts",
        f"{m}.headers IS NULL OR NOT list_bool_and(list_transform({m}.headers, lambda h: "
        "len(h) = 2 AND h[1] IS NOT NULL AND h[2] IS NOT NULL))",
        f"coalesce({m}.body_encoding, 'utf8') NOT IN ('utf8', 'base64')",
        f"{m}.body_len IS NULL OR {m}.body_len < octet_length({_body(m)})",
        f"{m}.decoded_len < 0",
    ]


def _grpc_problems(g: str) -> list[str]:
    """What GrpcCall.from_json refuses in a call ``g`` (SQL conditions, when present; a null
    list of messages is refused here though a missing one is not: the record path decides)."""
    each = (
        "lambda m: m.data IS NOT NULL AND m.len IS NOT NULL AND m.len >= 0 "
        "AND coalesce(m.encoding, 'utf8') IN ('utf8', 'base64')"
    )
    return [
        f"{g}.service IS NULL OR {g}.method IS NULL",
        f"{g}.request_count < 0 OR {g}.response_count < 0",
        f"{g}.request_messages IS NULL OR {g}.response_messages IS NULL",
        f"NOT list_bool_and(list_transform({g}.request_messages, {each}))",
        f"NOT list_bool_and(list_transform({g}.response_messages, {each}))",
    ]


def _stream_problems(side: str) -> list[tuple[str, str]]:
    """The rules of the optional h2 (exchanges), grpc and chunks objects."""
    rules = []
    if side == "x":
        outcomes = ", ".join(_quote(o) for o in H2_OUTCOMES)
        rules.append(
            (
                "h2",
                "h2 IS NOT NULL AND (h2.stream_id IS NULL OR h2.stream_id <= 0 OR "
                f"coalesce(h2.outcome, 'complete') NOT IN ({outcomes}) OR "
                "h2.request_trailers < 0 OR h2.response_trailers < 0 OR h2.undecoded_fields < 0)",
            )
        )
    rules += [("grpc", f"grpc IS NOT NULL AND ({c})") for c in _grpc_problems("grpc")]
    rules.append(
        (
            "chunks",
            "chunks IS NOT NULL AND NOT list_bool_and(list_transform(chunks, lambda c: "
            "len(c) = 2 AND c[1] IS NOT NULL AND c[2] IS NOT NULL AND isfinite(c[1]) "
            "AND c[1] = trunc(c[1])))",
        )
    )
    return rules


def _problems(side: str) -> str:
    """One SQL expression: why a row of ``x`` (exchanges) or ``r`` (results) is no valid record
    (the first rule it breaks), or NULL. The rules are the record decoders' (records.py)."""
    rules: list[tuple[str, str]] = [("schema", "schema IS NULL OR schema NOT IN (1, 2)")]
    if side == "x":
        rules += [
            ("id", "id IS NULL OR conn.client IS NULL OR conn.server IS NULL"),
            ("index", '"index" IS NULL OR "index" < 0'),
            ("no message", "request IS NULL AND response IS NULL"),
        ]
        msgs = [("request", "method", "target"), ("response", "status", "reason")]
    else:
        rules += [
            ("exchange_id", "exchange_id IS NULL OR target IS NULL"),
            ("copy", "copy < 0"),
            (
                "times",
                "scheduled IS NULL OR sent IS NULL OR NOT isfinite(scheduled) "
                "OR NOT isfinite(sent)",
            ),
            (
                "error",
                "error IS NOT NULL AND (error.kind IS NULL OR error.message IS NULL OR "
                f"error.kind NOT IN ({', '.join(_quote(k) for k in ERROR_KINDS)}))",
            ),
            ("extra", "extra IS NOT NULL AND json_type(extra) <> 'OBJECT'"),
        ]
        msgs = [("response", "status", "reason")]
    rules += _stream_problems(side)
    times = ("ttfb_ms", "total_ms") if side == "x" else ("ttfb_ms", "total_ms", "tls_handshake_ms")
    rules += [(f"{k}", f"{k} IS NOT NULL AND NOT isfinite({k})") for k in times]
    for m, first, second in msgs:
        conds = _message_problems(m, first, second)
        if first == "status":
            conds.append(f"{m}.status < 0 OR {m}.status > 999")
        rules += [(m, f"{m} IS NOT NULL AND ({c})") for c in conds]
    whens = " ".join(f"WHEN {cond} THEN {_quote(name)}" for name, cond in rules)
    return f"CASE {whens} END"


def _message(m: str, first: str, second: str) -> str:
    return (
        f"CASE WHEN {m} IS NULL THEN NULL ELSE {{'{first}': {m}.{first}, "
        f"'{second}': {m}.{second}, 'ts': {m}.ts, 'end_ts': {m}.end_ts, 'version': {m}.version, "
        f"'headers': list_transform({m}.headers, lambda h: {{'name': h[1], 'value': h[2]}}), "
        f"'body': {_body(m)}, 'body_len': {m}.body_len, "
        f"'body_truncated': coalesce({m}.body_truncated, false), "
        f"'decoded_len': {m}.decoded_len}} END"
    )


def _h2(h: str) -> str:
    return (
        f"CASE WHEN {h} IS NULL THEN NULL ELSE {{'stream_id': {h}.stream_id, "
        f"'outcome': coalesce({h}.outcome, 'complete'), 'error_code': {h}.error_code, "
        f"'request_trailers': coalesce({h}.request_trailers, 0), "
        f"'response_trailers': coalesce({h}.response_trailers, 0), "
        f"'undecoded_fields': coalesce({h}.undecoded_fields, 0)}} END"
    )


def _grpc(g: str) -> str:
    def messages(side: str) -> str:
        data = _body("m", "data", "encoding")
        return (
            f"list_transform({g}.{side}_messages, lambda m: {{'data': {data}, "
            "'len': m.len, 'compressed': coalesce(m.compressed, false), "
            "'truncated': coalesce(m.truncated, false)})"
        )

    return (
        f"CASE WHEN {g} IS NULL THEN NULL ELSE {{'service': {g}.service, 'method': {g}.method, "
        f"'request_messages': {messages('request')}, "
        f"'request_count': coalesce({g}.request_count, 0), "
        f"'response_messages': {messages('response')}, "
        f"'response_count': coalesce({g}.response_count, 0), "
        f"'status': {g}.status, 'message': {g}.message}} END"
    )


def _chunks(c: str) -> str:
    """Null for no chunks, as the record path writes ``()``."""
    return (
        f"CASE WHEN len({c}) = 0 THEN NULL ELSE list_transform({c}, lambda c: "
        "{'offset': CAST(c[1] AS BIGINT), 'ts': c[2]}) END"
    )


_PAIRS = f"""
SELECT
  x.id AS exchange_id, coalesce(r.copy, 0) AS copy, x.conn.client AS client,
  x.conn.server AS server, x."index" AS conn_index,
  coalesce(x.anomalies, []::VARCHAR[]) AS anomalies,
  x.response.status AS primary_status, r.response.status AS shadow_status,
  x.ttfb_ms AS primary_ttfb_ms, x.total_ms AS primary_ms,
  r.ttfb_ms AS shadow_ttfb_ms, r.total_ms AS shadow_ms,
  r.error.kind AS shadow_error_kind, r.error.message AS shadow_error,
  r.target AS shadow_target, r.scheduled, r.sent,
  CASE WHEN r.extra IS NULL OR len(json_keys(r.extra)) = 0 THEN NULL
       ELSE CAST(r.extra AS VARCHAR) END AS result_extra,
  {_message("x.request", "method", "target")} AS request,
  {_message("x.response", "status", "reason")} AS primary_response,
  {_message("r.response", "status", "reason")} AS shadow_response,
  {_h2("x.h2")} AS h2, {_grpc("x.grpc")} AS primary_grpc, {_chunks("x.chunks")} AS primary_chunks,
  {_grpc("r.grpc")} AS shadow_grpc, {_chunks("r.chunks")} AS shadow_chunks,
  r.tls_handshake_ms AS shadow_tls_handshake_ms,
  CAST(trunc(coalesce(x.request.ts, x.response.ts) * 1000000) AS BIGINT) AS ts,
  x.response.status = r.response.status AND x.response.headers = r.response.headers
    AS same_head,
  same_head AND CASE
    WHEN coalesce(x.response.body_encoding, 'utf8') = 'utf8'
     AND coalesce(r.response.body_encoding, 'utf8') = 'utf8'
    THEN coalesce(x.response.body, '') = coalesce(r.response.body, '')
    ELSE {_body("x.response")} = {_body("r.response")} END AS same
FROM x JOIN r ON x.id = r.exchange_id
"""


# DuckDB's memory: past it, its tables spill to the private temporary directory.
_DUCKDB_MEMORY = "1GB"
# Lines up to 64 MiB (larger ones: the record path). DuckDB's JSON reader holds buffers of twice
# its largest line: a file is read with 16 MiB first, again with 64 MiB only if a line is longer
# (100 MB less memory, and its page faults, for the usual files).
_LINE_BYTES = (16 << 20, 64 << 20)


class Declined(Exception):
    """The columnar path cannot take these files (why: the message); the record path will."""


def columnar_pairs(
    exchanges: str, results: str, stats: JoinStats, batch_rows: int = 65536
) -> Iterator[pa.RecordBatch]:
    """The joined pairs of two JSONL files as Arrow batches for ``LakeWriter.add_joined``.
    Raises Declined before yielding anything when a line is not a valid record (or an id is
    seen twice): the caller then takes the record path, which names each bad line.

    Memory: DuckDB's (both files' columns, up to 1 GB, spilled to a private temporary directory
    past it) and one batch of output."""
    import duckdb

    if "-" in (exchanges, results):
        raise Declined("standard input")
    tmp = tempfile.mkdtemp(prefix="shadowtap-export-")  # 0700: spilled rows hold traffic
    con = duckdb.connect()
    try:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        con.execute(f"SET threads = {max(1, threads)}")
        con.execute(f"SET temp_directory = {_quote(tmp)}")
        con.execute("SET preserve_insertion_order = false")
        con.execute(f"SET memory_limit = '{_DUCKDB_MEMORY}'")
        try:
            for name, path, cols in (
                ("x", exchanges, _EXCHANGE_COLUMNS),
                ("r", results, _RESULT_COLUMNS),
            ):
                _create(con, name, path, cols)
            for name, where in (("x", exchanges), ("r", results)):
                bad = con.execute(
                    f"SELECT count(*), any_value(p) FROM (SELECT {_problems(name)} AS p FROM "
                    f"{name}) WHERE p IS NOT NULL"
                ).fetchall()[0]
                if bad[0]:
                    raise Declined(f"{bad[0]} records of {where} break a rule ({bad[1]})")
            rows, ids = con.execute("SELECT count(*), count(DISTINCT id) FROM x").fetchall()[0]
            if rows != ids:
                raise Declined(f"{rows - ids} exchange ids seen more than once")
            stats.unmatched_exchanges = _count(
                con, "SELECT count(*) FROM x ANTI JOIN r ON x.id = r.exchange_id"
            )
            stats.unmatched_results = _count(
                con, "SELECT count(*) FROM r ANTI JOIN x ON x.id = r.exchange_id"
            )
            reader = con.sql(_PAIRS).to_arrow_reader(batch_rows)
        except duckdb.Error as exc:
            raise Declined(str(exc).splitlines()[0]) from exc
        try:
            yield from reader
        except duckdb.Error as exc:  # after rows went out: no going back to the record path
            raise InputError(f"export stopped: {exc}", where=f"{exchanges}, {results}") from exc
    finally:
        con.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _create(con: Any, name: str, path: str, columns: dict[str, str]) -> None:
    """Table ``name`` of the JSON lines of ``path`` (``columns``), with the smallest buffers
    that hold its longest line."""
    import duckdb

    for line_bytes in _LINE_BYTES:
        try:
            con.execute(
                f"CREATE TEMP TABLE {name} AS SELECT * FROM "
                f"{_read_json(path, columns, line_bytes)}"
            )
            return
        except duckdb.InvalidInputException as exc:
            if "maximum_object_size" not in str(exc) or line_bytes == _LINE_BYTES[-1]:
                raise


def _count(con: Any, sql: str) -> int:
    return int(con.execute(sql).fetchall()[0][0])


def run_export(
    inputs: list[str],
    out: str,
    *,
    host: str | None = None,
    config: str | None = None,
    max_body: int = 65536,
    rows_per_file: int = 100_000,
) -> int:
    import pyarrow as pa

    from shadowtap.lake.writer import LakeWriter

    # Arrow's default pool (mimalloc) hands freed pages back and faults them in again for the
    # next batch: malloc's pool costs ~0.4 s less system time a 200,000-pair export.
    pa.set_memory_pool(pa.system_memory_pool())
    exchanges, results = run_files(inputs)
    stats = JoinStats()
    writer = LakeWriter(
        out, host=host, config=load_config(config), max_body=max_body, rows_per_file=rows_per_file
    )
    # Millions of short-lived acyclic objects (parsed bodies, records): rare collections.
    with batch_gc():
        try:
            try:
                for batch in columnar_pairs(exchanges, results, stats):
                    writer.add_joined(batch)
            except Declined as declined:
                console.info(f"reading record by record ({declined})")
                stats = JoinStats()
                for ex, res in file_pairs(exchanges, results, stats):
                    writer.add(ex, res)
        finally:
            writer.close()  # Ctrl-C: the pairs read so far are written
    console.info(
        f"exported {writer.written} pairs to {out} ({writer.files} files); unmatched: "
        f"{stats.unmatched_exchanges} exchanges, {stats.unmatched_results} results; "
        f"{stats.input_errors} bad lines"
    )
    if writer.written == 0:  # garbage, empty files, the wrong files: say so, not "exported 0"
        why = (
            f"{stats.input_errors} malformed lines"
            if stats.input_errors
            else f"{stats.unmatched_exchanges} exchanges and {stats.unmatched_results} results, "
            "none with its counterpart"
        )
        raise InputError(f"no pair to export ({why})", where=f"{exchanges}, {results}")
    return 0
