"""The comparison split into partitions and merged: ``compare --jobs N`` (local processes) and
``compare --engine spark`` (compare/spark.py) run the same per-partition comparison, and the
partial Comparisons are merged (Comparison.merge) into the one the report is made from.

Partitioning keeps what must meet together: an exchange, its results (every copy) and its
baseline results go to the partition ``crc32(exchange id) mod N``. A partition of JSONL files is
read by scanning the raw lines for the id (``"id":"`` in an exchange, ``"exchange_id":"`` in a
result: the first keys the record encoder writes) and parsing only the lines it keeps, so N
workers parse each line once between them; each worker still reads (and gunzips) every byte.
A line whose id cannot be found goes to partition 0 (a malformed line is then counted once).
Measured (100,000 pairs): the scan of the other workers' lines costs a worker 0.14 s of its
2.8 s, so two workers' CPU is within 10% of one process's; the rest is the comparison itself.

A lake (Parquet) needs no join: its rows are pairs. Its row groups (64k rows at most) are dealt
out to the workers by rows, largest first to the least loaded (``lake_shares``), so that workers
get near-equal rows whatever the partitions' sizes (a lake's files are as uneven as its
endpoints' traffic: dealing files out gave one of two workers 60% of the rows).
"""

from __future__ import annotations

import multiprocessing
import os
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import orjson

from shadowtap.compare.aggregate import Comparison
from shadowtap.compare.config import CompareConfig
from shadowtap.compare.join import Joiner, join
from shadowtap.errors import InputError
from shadowtap.jsonl import malformed, read_jsonl
from shadowtap.records import Exchange, Result

_KEYS = {
    "x": (b'"id":"', b'"id": "'),
    "r": (b'"exchange_id":"', b'"exchange_id": "'),
}


def partition_of(line: bytes, tag: str, n: int) -> int:
    """The partition of a raw JSONL line of an exchange (tag ``x``) or a result (``r``, ``b``)."""
    if n == 1:
        return 0
    for key in _KEYS["x" if tag == "x" else "r"]:
        i = line.find(key)
        if i >= 0:
            start = i + len(key)
            end = line.find(b'"', start)
            if end > start:
                return zlib.crc32(line[start:end]) % n
    return 0


@dataclass(frozen=True, slots=True)
class Inputs:
    """What a comparison reads: JSONL files (exchanges, results, optional baseline), or a lake."""

    exchanges: str | None = None
    results: str | None = None
    baseline: str | None = None
    lake: str | None = None


def _note_error(c: Comparison, err: InputError) -> None:
    c.input_error_count += 1
    if len(c.input_errors) < 10:
        c.input_errors.append(str(err))


def compare_files(inputs: Inputs, cfg: CompareConfig, part: int = 0, parts: int = 1) -> Comparison:
    """Partition ``part`` of ``parts`` of JSONL inputs, compared (streaming: memory is the join's
    reordering window, as for one process)."""
    assert inputs.exchanges is not None and inputs.results is not None
    c = Comparison(cfg, baseline=inputs.baseline is not None)

    def on_error(err: InputError) -> None:
        _note_error(c, err)

    def keep(tag: str):
        return None if parts == 1 else (lambda line: partition_of(line, tag, parts) == part)

    joiner = Joiner(baseline=inputs.baseline is not None)
    triples = join(
        read_jsonl(inputs.exchanges, Exchange.from_json, on_error, keep("x")),
        read_jsonl(inputs.results, Result.from_json, on_error, keep("r")),
        (
            read_jsonl(inputs.baseline, Result.from_json, on_error, keep("b"))
            if inputs.baseline
            else None
        ),
        joiner,
    )
    for ex, res, base in triples:
        c.add(ex, res, base)
    c.unmatched_exchanges = joiner.unmatched_exchanges
    c.unmatched_results = joiner.unmatched_results
    return c


def compare_tagged(
    lines: Iterable[tuple[str, bytes]], cfg: CompareConfig, baseline: bool
) -> Comparison:
    """A partition given as raw lines tagged ``x`` (exchange), ``r`` (result), ``b`` (baseline),
    in any order (Spark's shuffle): records wait in the joiner for their partners, so memory is
    O(the partition's unmatched records)."""
    c = Comparison(cfg, baseline=baseline)
    j = Joiner(baseline=baseline)
    feed = {
        "x": (Exchange.from_json, j.exchange),
        "r": (Result.from_json, j.result),
        "b": (Result.from_json, j.base),
    }
    where = {"x": "exchanges", "r": "results", "b": "baseline"}
    for tag, line in lines:
        if not line.strip():
            continue
        decode, push = feed[tag]
        try:
            obj = orjson.loads(line)
            if not isinstance(obj, dict):
                raise TypeError("not a JSON object")
            rec = decode(obj)
        except (orjson.JSONDecodeError, ValueError, KeyError, TypeError) as exc:
            _note_error(c, InputError(malformed(exc), where=where[tag]))
            continue
        for t in push(rec):  # type: ignore[operator]
            c.add(*t)
    for t in j.finish():
        c.add(*t)
    c.unmatched_exchanges = j.unmatched_exchanges
    c.unmatched_results = j.unmatched_results
    return c


Share = list[tuple[str, list[int]]]  # (Parquet file, its row groups) a worker reads


def compare_lake_share(share: Share, cfg: CompareConfig) -> Comparison:
    """Row groups of lake files compared: each row is a pair already."""
    from shadowtap.lake.writer import read_row_groups

    c = Comparison(cfg)
    for ex, res, _host in read_row_groups(share):
        c.add(ex, res)
    return c


def lake_shares(root: str, parts: int) -> list[Share]:
    """The lake's row groups dealt to ``parts`` workers by rows (largest first, each to the
    least loaded: within one row group of equal). Reads only the files' footers. Shares left
    empty (fewer row groups than workers) are dropped."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    units = []
    for f in lake_files(root):
        try:
            md = pq.read_metadata(f)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"not a readable Parquet file: {exc}", where=f) from exc
        units += [(md.row_group(i).num_rows, f, i) for i in range(md.num_row_groups)]
    loads = [0] * parts
    shares: list[dict[str, list[int]]] = [{} for _ in range(parts)]
    for rows, f, i in sorted(units, key=lambda u: (-u[0], u[1], u[2])):
        k = loads.index(min(loads))
        loads[k] += rows
        shares[k].setdefault(f, []).append(i)
    return [sorted((f, sorted(g)) for f, g in s.items()) for s in shares if s]


def lake_files(root: str) -> list[str]:
    """The Parquet files of a lake, in a stable order."""
    if os.path.isfile(root):
        return [root]
    if not os.path.isdir(root):
        raise InputError("no such lake directory", where=root)
    files = sorted(
        os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".parquet")
    )
    if not files:
        raise InputError("no Parquet files in this lake directory", where=root)
    return files


def _job(inputs: Inputs, cfg: CompareConfig, part: int, parts: int, share: Share | None) -> bytes:
    import pickle

    if share is not None:
        c = compare_lake_share(share, cfg)
    else:
        c = compare_files(inputs, cfg, part, parts)
    return pickle.dumps(c, protocol=pickle.HIGHEST_PROTOCOL)


def merged(parts: Iterator[Comparison], cfg: CompareConfig, baseline: bool) -> Comparison:
    total = Comparison(cfg, baseline=baseline)
    for c in parts:
        total.merge(c)
    return total


def compare_local(inputs: Inputs, cfg: CompareConfig, jobs: int) -> Comparison:
    """``jobs`` worker processes (forked: the config and the code are inherited), each comparing
    one partition; the parent merges. ``jobs`` 1 compares in this process."""
    import pickle

    shares: list[Share | None] = [None] * jobs
    if inputs.lake is not None:
        shares = list(lake_shares(inputs.lake, jobs))
        jobs = len(shares)
    if jobs == 1:
        return pickle.loads(_job(inputs, cfg, 0, 1, shares[0]))
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        futures = [pool.submit(_job, inputs, cfg, k, jobs, shares[k]) for k in range(jobs)]
        return merged((pickle.loads(f.result()) for f in futures), cfg, inputs.baseline is not None)


def resolve(exchanges: str, results: str | None, baseline: str | None) -> Inputs:
    """Files as given; or, with one path, a run directory (its exchanges and results) or a lake."""
    if results is not None:
        return Inputs(exchanges, results, baseline)
    if os.path.isdir(exchanges) and not any(
        os.path.exists(os.path.join(exchanges, f"exchanges{s}")) for s in (".jsonl", ".jsonl.gz")
    ):
        if baseline:
            raise InputError(
                "a lake holds no baseline results: compare JSONL files with it", field="baseline"
            )
        lake_files(exchanges)  # fails early when there is nothing to read
        return Inputs(lake=exchanges)
    if os.path.isfile(exchanges) and exchanges.endswith(".parquet"):
        return Inputs(lake=exchanges)
    from shadowtap.lake.export import run_files

    ex, res = run_files([exchanges])
    return Inputs(ex, res, baseline)


def compare_inputs(
    exchanges: str,
    results: str | None,
    baseline: str | None,
    cfg: CompareConfig,
    *,
    jobs: int = 1,
    engine: str = "local",
    spark_master: str = "local[*]",
    parquet: str | None = None,
) -> Comparison:
    """The Comparison of the inputs, by the engine asked for (the CLI's door)."""
    inputs = resolve(exchanges, results, baseline)
    if parquet:
        raise InputError(
            "written by the one-process comparison of JSONL files only",
            field="parquet",
            hint="shadowtap export RUN_DIR -o LAKE (or drop --jobs/--engine)",
        )
    if engine == "spark":
        from shadowtap.compare.spark import compare_spark

        return compare_spark(inputs, cfg, spark_master, jobs if jobs > 1 else None)
    if engine != "local":
        raise InputError(f"unknown engine {engine!r} (local, spark)", field="engine")
    return compare_local(inputs, cfg, max(1, jobs or os.cpu_count() or 1))
