"""The Parquet lake: every record field survives the round trip, the dataset is Hive-partitioned
and private, DuckDB reads it (the README's three queries), compare --parquet and export agree."""

from __future__ import annotations

import dataclasses
import os
import stat
import subprocess
import sys

import duckdb
import pyarrow.parquet as pq
import pytest

from shadowtap.lake.export import JoinStats, columnar_pairs, file_pairs
from shadowtap.lake.schema import LAKE_SCHEMA, OPTIONAL, SCHEMA, endpoint_key
from shadowtap.lake.writer import LakeWriter, read_lake
from shadowtap.records import Exchange, Result
from tests.support.pairs import pairs, write_run

SHADOWTAP = [sys.executable, "-m", "shadowtap"]

# The README's queries (docs/lake.md too); {lake} is the lake directory.
WORST_ENDPOINTS = """
SELECT endpoint, count(*) AS pairs,
       avg(CASE WHEN differs THEN 1 ELSE 0 END) AS diff_rate,
       avg(CASE WHEN shadow_error_kind IS NOT NULL OR shadow_status >= 500 THEN 1 ELSE 0 END)
         AS shadow_error_rate
FROM read_parquet('{lake}/**/*.parquet', hive_partitioning = true)
GROUP BY endpoint ORDER BY diff_rate DESC, shadow_error_rate DESC
"""
FIELD_OVER_TIME = """
SELECT date, endpoint,
       avg(CASE WHEN list_contains(diff_paths, 'body.tier') THEN 1 ELSE 0 END) AS tier_diff_rate
FROM read_parquet('{lake}/**/*.parquet', hive_partitioning = true)
WHERE compared AND endpoint = 'GET /users/{{id}}'
GROUP BY date, endpoint ORDER BY date
"""
SLOWEST_SHADOW = """
SELECT exchange_id, endpoint, shadow_ms, primary_ms, host
FROM read_parquet('{lake}/**/*.parquet', hive_partitioning = true)
WHERE shadow_ms IS NOT NULL ORDER BY shadow_ms DESC LIMIT 5
"""


def _export(tmp_path, n: int, *args: str) -> str:
    write_run(str(tmp_path), n)
    lake = str(tmp_path / "lake")
    out = subprocess.run(
        [*SHADOWTAP, "export", str(tmp_path), "-o", lake, "--host", "agent-1", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert f"exported {n} pairs" in out.stderr + out.stdout
    return lake


def _unset(record: object, f: dataclasses.Field) -> bool:
    value = getattr(record, f.name)
    if f.default is not dataclasses.MISSING:
        return value == f.default
    if f.default_factory is not dataclasses.MISSING:
        return value == f.default_factory()
    return value is None


def test_round_trip_every_record_field(tmp_path) -> None:
    """Every field of Exchange and Result (the dataclasses' own list: a field added later that
    the lake forgets fails here) comes back from the lake equal, and the input sets each one
    (not only its default) somewhere: HTTP/2 streams, gRPC calls, chunk times, TLS handshakes,
    binary bodies, missing responses, errors, extras, anomalies."""
    original = list(pairs(600, rich=True))
    original += [(ex, dataclasses.replace(res, copy=2)) for ex, res in original[:30]]
    lake = str(tmp_path / "lake")
    with LakeWriter(lake, host="h1", rows_per_file=250) as w:
        for ex, res in original:
            w.add(ex, res)
    back = {(ex.id, res.copy): (ex, res, host) for ex, res, host in read_lake(lake)}
    assert len(back) == len(original)
    for cls, side in ((Exchange, 0), (Result, 1)):
        for f in dataclasses.fields(cls):
            assert any(not _unset(p[side], f) for p in original), f"{cls.__name__}.{f.name}"
            for p in original:
                again = back[(p[0].id, p[1].copy)][side]
                assert getattr(again, f.name) == getattr(p[side], f.name), (
                    f"{cls.__name__}.{f.name} of {p[0].id}"
                )
    for ex, res in original:
        ex2, res2, host = back[(ex.id, res.copy)]
        assert (ex2, res2, host) == (ex, res, "h1")  # frozen dataclasses: all at once too


def test_lake_files_without_the_later_columns_still_read(tmp_path) -> None:
    """Columns added to version 1 later (h2, grpc, chunks, the TLS handshake) are null in files
    written before them: the readers give records without those fields."""
    lake = str(tmp_path / "lake")
    original = list(pairs(50, rich=True))
    with LakeWriter(lake, host="h1") as w:
        for ex, res in original:
            w.add(ex, res)
    for path in [os.path.join(d, f) for d, _, fs in os.walk(lake) for f in fs]:
        pq.write_table(pq.read_table(path).drop_columns(list(OPTIONAL)), path)
    plain = {
        ex.id: (
            dataclasses.replace(ex, h2=None, grpc=None, chunks=()),
            dataclasses.replace(res, grpc=None, chunks=(), tls_handshake_ms=None),
        )
        for ex, res in original
    }
    back = list(read_lake(lake))
    assert len(back) == 50 and all(plain[ex.id] == (ex, res) for ex, res, _ in back)


def test_bodies_bounded_and_marked(tmp_path) -> None:
    lake = str(tmp_path / "lake")
    with LakeWriter(lake, host="h", max_body=10) as w:
        for ex, res in pairs(20):
            w.add(ex, res)
    for ex, res, _ in read_lake(lake):
        if ex.response is not None and ex.response.body_len > 10:
            assert len(ex.response.body) == 10 and ex.response.body_truncated
            assert ex.response.body_len > 10  # the real length is kept


def test_export_partitions_private_files_and_schema(tmp_path) -> None:
    lake = _export(tmp_path, 2000)
    assert stat.S_IMODE(os.stat(lake).st_mode) == 0o700
    files = [os.path.join(d, f) for d, _, fs in os.walk(lake) for f in fs]
    assert files and all(stat.S_IMODE(os.stat(f).st_mode) == 0o600 for f in files)
    parts = {os.path.relpath(os.path.dirname(f), lake) for f in files}
    assert f"date=2025-11-26/endpoint_key={endpoint_key('GET /users/{id}')}" in parts
    assert any(p.startswith("date=2025-11-27/") for p in parts)
    meta = pq.read_schema(files[0]).metadata
    assert meta[b"shadowtap.lake.schema"] == str(LAKE_SCHEMA).encode()


def test_duckdb_reads_the_readme_queries(tmp_path) -> None:
    lake = _export(tmp_path, 3000)
    con = duckdb.connect()
    worst = con.sql(WORST_ENDPOINTS.format(lake=lake)).fetchall()
    assert worst[0][0] == "GET /users/{id}"  # the endpoint with the tier regression
    assert sum(r[1] for r in worst) == 3000
    over_time = con.sql(FIELD_OVER_TIME.format(lake=lake)).fetchall()
    assert [str(r[0]) for r in over_time] == ["2025-11-26", "2025-11-27"]
    assert all(0.2 < r[2] < 0.4 for r in over_time)  # ~30% of pairs get the tier wrong
    slow = con.sql(SLOWEST_SHADOW.format(lake=lake)).fetchall()
    assert len(slow) == 5 and slow[0][2] >= slow[-1][2] and slow[0][4] == "agent-1"
    # the per-pair diff summary is the diff's: the volatile request_id differs on every user pair
    n_users, with_rid = con.sql(
        f"SELECT count(*), sum(CASE WHEN list_contains(diff_paths, 'body.request_id') THEN 1 END) "
        f"FROM read_parquet('{lake}/**/*.parquet', hive_partitioning = true) "
        f"WHERE compared AND endpoint = 'GET /users/{{id}}'"
    ).fetchall()[0]
    assert n_users == with_rid > 1400  # every compared pair


def test_compare_parquet_writes_the_same_pairs_as_export(tmp_path) -> None:
    ex, res = write_run(str(tmp_path), 500)
    lake = str(tmp_path / "cmp-lake")
    out = subprocess.run(
        [*SHADOWTAP, "compare", ex, res, "--quiet", "--parquet", lake],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode in (0, 10, 11), out.stderr
    ids = sorted((e.id, r.copy) for e, r, _ in read_lake(lake))
    assert ids == sorted((e.id, r.copy) for e, r in pairs(500))


def test_bad_inputs_say_where(tmp_path) -> None:
    out = subprocess.run(
        [*SHADOWTAP, "export", str(tmp_path), "-o", str(tmp_path / "l")],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 3 and "no exchanges.jsonl" in out.stderr
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(Exception, match="bad.parquet"):
        list(read_lake(str(bad)))


def test_nothing_to_export_is_an_error(tmp_path) -> None:
    """Garbage or empty files used to end "exported 0 pairs", exit 0."""
    garbage, empty = tmp_path / "garbage.jsonl", tmp_path / "empty.jsonl"
    garbage.write_bytes(b'{"schema":2\nnot json\n')
    empty.write_bytes(b"")
    for ex, res, why in (
        (garbage, garbage, "4 malformed lines"),
        (empty, empty, "0 exchanges and 0 results"),
    ):
        out = subprocess.run(
            [*SHADOWTAP, "export", str(ex), str(res), "-o", str(tmp_path / "l")],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 3, out.stderr
        assert f"{ex}, {res}: no pair to export ({why}" in out.stderr, out.stderr


def _rows(lake: str) -> list[dict]:
    import pyarrow.dataset as ds

    table = ds.dataset(lake, format="parquet", partitioning="hive", schema=SCHEMA).to_table()
    return sorted(table.to_pylist(), key=lambda r: (r["exchange_id"], r["copy"]))


def _drop_lines(path: str, every: int) -> None:
    with open(path, "rb") as f:
        lines = f.readlines()
    with open(path, "wb") as f:
        f.writelines(line for i, line in enumerate(lines) if i % every)


@pytest.mark.parametrize("gz", [False, True])
def test_columnar_export_writes_the_record_paths_rows(tmp_path, gz: bool) -> None:
    """export's columnar path (DuckDB join, diff only where responses differ) and the record
    path (each line a record, the streaming joiner, LakeWriter.add) give the same rows, column
    by column: bodies cut at max_body, base64 bodies, missing responses, errors, extras,
    endpoint templates, diff summaries; and the same unmatched counts."""
    ex, res = write_run(str(tmp_path), 3000, gz=gz, rich=True)
    if not gz:  # some results and exchanges without their partner
        _drop_lines(ex, 101)
        _drop_lines(res, 89)
    lakes = {}
    stats = {}
    for path in ("records", "columnar"):
        lake = lakes[path] = str(tmp_path / path)
        st = stats[path] = JoinStats()
        with LakeWriter(lake, host="h", max_body=40, rows_per_file=1000) as w:
            if path == "records":
                for e, r in file_pairs(ex, res, st):
                    w.add(e, r)
            else:
                for batch in columnar_pairs(ex, res, st, batch_rows=700):
                    w.add_joined(batch)
    records, columnar = _rows(lakes["records"]), _rows(lakes["columnar"])
    assert len(columnar) == len(records) > 2500
    for a, b in zip(records, columnar):
        assert a == b
    assert (stats["records"].unmatched_exchanges, stats["records"].unmatched_results) == (
        stats["columnar"].unmatched_exchanges,
        stats["columnar"].unmatched_results,
    )
    if not gz:
        assert stats["columnar"].unmatched_exchanges > 0 and stats["columnar"].unmatched_results > 0
    assert any(r["primary_response"]["body_truncated"] for r in columnar if r["primary_response"])
    for name in OPTIONAL:  # the stream columns were compared with something in them
        assert any(r[name] is not None for r in columnar), name


def test_columnar_path_reads_lines_longer_than_its_first_buffer(tmp_path) -> None:
    """DuckDB reads with buffers for 16 MiB lines first (export._LINE_BYTES); a file with a
    longer line is read again with larger ones, on the columnar path, the line whole."""
    import orjson

    ex, res = write_run(str(tmp_path), 20)
    big = 40 << 20
    e, r = next(pairs(1, start=1))
    line = {**e.to_json(), "id": "zbig"}
    line["response"] = {**line["response"], "body": "x" * big, "body_len": big}
    with open(ex, "ab") as f:
        f.write(orjson.dumps(line) + b"\n")
    with open(res, "ab") as f:
        f.write(orjson.dumps({**r.to_json(), "exchange_id": "zbig"}) + b"\n")
    rows = [row for b in columnar_pairs(ex, res, JoinStats()) for row in b.to_pylist()]
    assert len(rows) == 21
    (row,) = [row for row in rows if row["exchange_id"] == "zbig"]
    assert row["primary_response"]["body"] == b"x" * big


def test_export_leaves_pandas_out(tmp_path) -> None:
    """pyarrow imports pandas on its first conversion of a Python value (0.17 s of CPU) unless
    it is missing: export's process has it missing, and exports all the same."""
    write_run(str(tmp_path), 50)
    code = (
        "import sys\n"
        "from shadowtap.cli import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as e:\n"
        "    print('exit', e.code, 'pandas' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, "export", str(tmp_path), "-o", str(tmp_path / "l")],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout.split() == ["exit", "0", "False"], out.stderr
    assert "exported 50 pairs" in out.stderr


def test_export_reads_bad_lines_record_by_record(tmp_path) -> None:
    """A line that is no valid record (bad JSON, an unknown error kind, a negative copy) makes
    export take the record path, which names the line and exports every good pair."""
    ex, res = write_run(str(tmp_path), 400)
    with open(res, "a") as f:
        f.write(
            '{"schema":2,"exchange_id":"zz","target":"t","scheduled":1,"sent":1,'
            '"response":null,"error":{"kind":"gone","message":"?"}}\n'
        )
        f.write(
            '{"schema":2,"exchange_id":"zy","copy":-1,"target":"t","scheduled":1,"sent":1,'
            '"response":null,"error":null}\n'
        )
    with open(ex, "a") as f:
        f.write("not json\n")
    out = subprocess.run(
        [*SHADOWTAP, "export", str(tmp_path), "-o", str(tmp_path / "l")],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "reading record by record" in out.stderr
    assert f"{ex} line 401" in out.stderr and f"{res} line 401" in out.stderr
    assert f"{res} line 402" in out.stderr  # copy -1
    assert "exported 400 pairs" in out.stderr and "3 bad lines" in out.stderr


_RESULT = {
    "schema": 2,
    "exchange_id": "ex00000001",
    "target": "t",
    "scheduled": 1.0,
    "sent": 1.0,
    "response": None,
    "error": None,
}


@pytest.mark.parametrize(
    "bad",
    [
        {"error": {"kind": "gone", "message": "?"}},
        {"copy": -1},
        {"scheduled": "NaN"},
        {"schema": 3},
        {"extra": [1]},
        {"tls_handshake_ms": "NaN"},
        {"grpc": {"service": "s", "request_messages": [], "response_messages": []}},
        {"grpc": {"service": "s", "method": "m", "request_messages": [{"data": "x", "len": -1}]}},
        {"chunks": [[1]]},
        {
            "response": {
                "status": 1000,
                "reason": "",
                "ts": 1.0,
                "end_ts": 1.0,
                "version": "1.1",
                "headers": [],
                "body_len": 0,
            }
        },
        {
            "response": {
                "status": 200,
                "reason": "",
                "ts": 2.0,
                "end_ts": 1.0,
                "version": "1.1",
                "headers": [["a", "b", "c"]],
                "body": "abc",
                "body_len": 1,
            }
        },
    ],
)
def test_columnar_path_declines_what_the_record_decoder_refuses(tmp_path, bad: dict) -> None:
    """Every rule of the record decoders holds on the columnar path: a record that breaks one
    sends the export record by record (where the line is named), never into the lake."""
    from shadowtap.records import Result

    _assert_declined(tmp_path, {**_RESULT, **bad}, Result)


@pytest.mark.parametrize(
    "bad",
    [
        {"h2": {"stream_id": 0}},
        {"h2": {"stream_id": 1, "outcome": "lost"}},
        {"h2": {"stream_id": 1, "request_trailers": -1}},
        {
            "grpc": {
                "service": "s",
                "method": "m",
                "request_messages": [],
                "response_messages": [{"data": "x", "len": 1, "encoding": "rot13"}],
            }
        },
        {"chunks": [[1, None]]},
    ],
)
def test_columnar_path_declines_bad_stream_objects(tmp_path, bad: dict) -> None:
    """The exchange's h2, grpc and chunks objects: what the record decoder refuses, the columnar
    path declines."""
    _assert_declined(
        tmp_path, {**next(pairs(1, start=5))[0].to_json(), "id": "zz", **bad}, Exchange
    )


def _assert_declined(tmp_path, line: dict, record: type) -> None:
    """``line`` is refused by ``record``'s decoder (the record path), and appended to a run's
    exchanges (an Exchange line) or results (a Result line), it makes the columnar path decline."""
    import orjson

    from shadowtap.lake.export import Declined

    ex, res = write_run(str(tmp_path), 20)
    with pytest.raises((ValueError, KeyError, TypeError)):
        record.from_json(line)  # type: ignore[attr-defined]
    with open(ex if record is Exchange else res, "ab") as f:
        f.write(orjson.dumps(line) + b"\n")
    with pytest.raises(Declined):
        list(columnar_pairs(ex, res, JoinStats()))


def test_header_at_reads_headers_as_records_do() -> None:
    """schema.header_at (the columnar export's Content-Type and Content-Encoding of the pairs it
    diffs) gives records.header_value's answer: any case, the first of repeated values, none."""
    import pyarrow as pa

    from shadowtap.lake.schema import RESPONSE, header_at
    from shadowtap.records import header_value

    heads = [
        [("Content-Type", "a/json"), ("content-TYPE", "b/json")],
        [],
        [("X", "1"), ("CONTENT-ENCODING", "gzip"), ("Content-Type", "text/plain")],
        [("X", "1")],
        [("cOnTeNt-TyPe", "")],
        [("CONTENT-ENCOD\u0130NG", "br"), ("Content-Encoding", "gzip")],  # not an ASCII I
    ]
    rows = [
        {"status": 200, "headers": [{"name": n, "value": v} for n, v in h], "body": b""}
        for h in heads
    ]
    col = pa.array(rows, RESPONSE)
    at = pa.array([4, 0, 2, 1, 3, 2, 5])
    for name in ("content-type", "content-encoding"):
        want = [header_value(tuple(heads[i]), name) for i in at.to_pylist()]
        assert header_at(col, at, name) == want
    assert header_at(col, pa.array([1, 3], pa.int64()), "content-type") == [None, None]
