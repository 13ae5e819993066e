"""The engines give the report of one process: ``compare --jobs 2`` (local processes), and
``--engine spark`` (pyspark, local[2]) over JSONL files and over the Parquet lake. Real Spark
(Java from Debian), real processes, real files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from shadowtap.compare.config import CompareConfig
from shadowtap.compare.partitioned import Inputs, compare_local, partition_of
from tests.support.pairs import essence, write_run
from tests.support.prereq import require_tool

SHADOWTAP = [sys.executable, "-m", "shadowtap"]
N = 3000


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("run")
    ex, res = write_run(str(d), N, rich=True)  # the lake holds h2, gRPC, chunks, TLS too
    lake = str(d / "lake")
    subprocess.run(
        [*SHADOWTAP, "export", str(d), "-o", lake], check=True, capture_output=True, timeout=300
    )
    one = d / "one.json"
    out = subprocess.run(
        [*SHADOWTAP, "compare", ex, res, "--json", str(one), "-q"],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 11, out.stderr  # the tier regression fails the verdict
    return {"dir": d, "ex": ex, "res": res, "lake": lake, "one": json.loads(one.read_text())}


def _cli(run: dict, *args: str) -> dict:
    path = run["dir"] / f"r{abs(hash(args))}.json"
    out = subprocess.run(
        [*SHADOWTAP, "compare", *args, "--json", str(path), "-q"],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == run["one"]["verdict"]["exit_code"], out.stderr[-2000:]
    return json.loads(path.read_text())


def test_partition_keeps_an_exchange_with_its_results(run) -> None:
    with open(run["ex"], "rb") as f:
        ex_parts = {line[20:40]: partition_of(line, "x", 3) for line in f}
    assert len(set(ex_parts.values())) == 3  # the work is spread
    from shadowtap.records import Result

    with open(run["res"], "rb") as f:
        for line in f:
            r = Result.from_json(json.loads(line))
            assert partition_of(line, "r", 3) == partition_of(
                f'{{"schema":1,"id":"{r.exchange_id}"'.encode(), "x", 3
            )


def test_jobs_two_gives_the_one_process_report(run) -> None:
    assert essence(_cli(run, run["ex"], run["res"], "--jobs", "2")) == essence(run["one"])


def test_run_directory_and_lake_inputs(run) -> None:
    assert essence(_cli(run, str(run["dir"]))) == essence(run["one"])
    lake = _cli(run, run["lake"], "--jobs", "2")
    assert essence(lake) == essence(run["one"])


def test_jobs_report_bad_lines_once(tmp_path) -> None:
    ex, res = write_run(str(tmp_path), 200)
    with open(ex, "ab") as f:
        f.write(b"{not json\n")
    c = compare_local(Inputs(ex, res), CompareConfig(), 3)
    assert c.input_error_count == 1 and c.pairs == 200


@pytest.mark.slow
def test_spark_jsonl_cli_gives_the_one_process_report(run) -> None:
    require_tool("java")
    report = _cli(run, run["ex"], run["res"], "--engine", "spark", "--spark-master", "local[2]")
    assert essence(report) == essence(run["one"])


@pytest.mark.slow
def test_spark_lake_gives_the_one_process_report(run) -> None:
    require_tool("java")
    from shadowtap.compare.spark import compare_spark

    c = compare_spark(Inputs(lake=run["lake"]), CompareConfig(), "local[2]")
    assert essence(c.snapshot(fresh=True)) == essence(run["one"])


def test_lake_shares_balance_rows_not_files(tmp_path) -> None:
    """--jobs on a lake deals row groups out by rows: the /users endpoint holds half the pairs,
    so dealing files out gave one worker of two 60% of the rows."""
    import pyarrow.parquet as pq

    from shadowtap.compare.partitioned import lake_files, lake_shares
    from shadowtap.lake.writer import LakeWriter
    from tests.support.pairs import pairs

    lake = str(tmp_path / "lake")
    with LakeWriter(lake, host="h", rows_per_file=700) as w:
        for ex, res in pairs(5000):
            w.add(ex, res)
    groups = {(f, i) for f in lake_files(lake) for i in range(pq.read_metadata(f).num_row_groups)}
    for parts in (2, 3):
        shares = lake_shares(lake, parts)
        dealt = [(f, i) for s in shares for f, gs in s for i in gs]
        assert sorted(dealt) == sorted(groups)  # each row group once
        rows = [
            sum(pq.read_metadata(f).row_group(i).num_rows for f, gs in s for i in gs)
            for s in shares
        ]
        assert sum(rows) == 5000 and max(rows) - min(rows) <= 350, rows
    c = compare_local(Inputs(lake=lake), CompareConfig(), 2)
    assert c._overall.pairs == 5000  # noqa: SLF001


def test_engines_read_a_lake_with_files_from_before_the_added_columns(tmp_path) -> None:
    """Schema 1 gained columns (h2, gRPC calls, chunk times, the TLS handshake): files written
    before them lack them. Spark (mergeSchema) and the local engines read such a lake as the
    records it holds: the gRPC statuses of the newer files count (UNAVAILABLE: server errors)."""
    require_tool("java")
    import os

    import pyarrow.parquet as pq

    from shadowtap.compare.aggregate import Comparison
    from shadowtap.compare.spark import compare_spark
    from shadowtap.lake.schema import OPTIONAL
    from shadowtap.lake.writer import LakeWriter
    from tests.support.pairs import pairs

    lake = str(tmp_path / "lake")
    with LakeWriter(lake, host="h") as w:
        for ex, res in pairs(1000, rich=True):
            w.add(ex, res)
    for path in [os.path.join(d, f) for d, _, fs in os.walk(lake) for f in fs]:
        older = os.path.join(os.path.dirname(path), "0-old-" + os.path.basename(path))
        pq.write_table(pq.read_table(path).drop_columns(list(OPTIONAL)), older)
        os.remove(path)  # named to sort first: the file Spark takes the schema from unmerged
    newer = list(pairs(1000, rich=True, start=1000))
    with LakeWriter(lake, host="h") as w:
        for ex, res in newer:
            w.add(ex, res)
    expected = Comparison(CompareConfig())
    for ex, res in [*pairs(1000), *newer]:  # the older files' records have no stream fields
        expected.add(ex, res)
    want = essence(expected.snapshot(fresh=True))
    plain = Comparison(CompareConfig())
    for ex, res in pairs(2000):
        plain.add(ex, res)
    assert want != essence(plain.snapshot(fresh=True))  # losing the columns would show
    for c in (
        compare_local(Inputs(lake=lake), CompareConfig(), 1),
        compare_local(Inputs(lake=lake), CompareConfig(), 2),
        compare_spark(Inputs(lake=lake), CompareConfig(), "local[2]"),
    ):
        assert essence(c.snapshot(fresh=True)) == want
