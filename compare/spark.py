"""``compare --engine spark``: the per-partition comparison of compare/partitioned.py on Apache
Spark (pyspark), the partial Comparisons merged on the driver. The report and the verdict are
those of the local engines (tests/compare/test_engines.py).

- A lake (Parquet): Spark reads the files (its own splits), each partition's Arrow batches become
  pairs (``mapInArrow``) and one Comparison; no shuffle.
- JSONL files: lines are keyed by ``partition_of`` (the exchange id's crc32), shuffled so that an
  exchange meets its results, and each partition is joined and compared (``compare_tagged``).

Executors need shadowtap installed (the same version); ``local[*]`` uses this interpreter.
Cost on the driver: the merge, O(partitions x endpoints x (fields + reservoirs)).
"""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Iterator
from typing import Any

from shadowtap.compare.aggregate import Comparison
from shadowtap.compare.config import CompareConfig
from shadowtap.compare.partitioned import Inputs, compare_tagged, merged, partition_of
from shadowtap.errors import InputError, PrerequisiteError


def _session(master: str) -> tuple[Any, bool]:
    """The Spark session, and whether this call started it (and so stops it)."""
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise PrerequisiteError(
            "pyspark is not installed", hint="pip install 'shadowtap[spark]' (and a Java runtime)"
        ) from exc
    # local[*]: the Python workers are this interpreter (shadowtap and its dependencies importable)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    ours = SparkSession.getActiveSession() is None
    try:
        spark = (
            SparkSession.builder.master(master)
            .appName("shadowtap compare")
            .config("spark.ui.enabled", "false")
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            .getOrCreate()
        )
    except Exception as exc:
        raise PrerequisiteError(
            f"cannot start Spark ({master}): {exc}",
            hint="a Java runtime (default-jre-headless) and a reachable master",
        ) from exc
    spark.sparkContext.setLogLevel("ERROR")
    return spark, ours


def compare_spark(
    inputs: Inputs, cfg: CompareConfig, master: str, partitions: int | None = None
) -> Comparison:
    spark, ours = _session(master)
    sc = spark.sparkContext
    n = partitions or max(2, sc.defaultParallelism)
    baseline = inputs.baseline is not None
    try:
        if inputs.lake is not None:
            states = _lake(spark, inputs.lake, cfg)
        else:
            states = _jsonl(sc, inputs, cfg, n, baseline)
    except Exception as exc:
        if "Path does not exist" in str(exc) or "FileNotFoundException" in str(exc):
            raise InputError("no such input", where=str(exc).split("\n")[0][:300]) from exc
        raise
    finally:
        if ours:
            spark.stop()
    return merged((pickle.loads(s) for s in states), cfg, baseline)


def _lake(spark: Any, root: str, cfg: CompareConfig) -> list[bytes]:
    from shadowtap.lake.schema import pairs_from_batch

    if not os.path.exists(root):
        raise InputError("no such lake directory", where=root)

    def compare_batches(batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa

        c = Comparison(cfg)
        for batch in batches:
            for ex, res, _host in pairs_from_batch(batch):
                c.add(ex, res)
        state = pickle.dumps(c, protocol=pickle.HIGHEST_PROTOCOL)
        schema = pa.schema([("state", pa.binary())])
        yield pa.RecordBatch.from_pydict({"state": [state]}, schema=schema)

    # mergeSchema: files written before the columns added to schema 1 lack them (docs/lake.md)
    df = spark.read.option("basePath", root).option("mergeSchema", "true").parquet(root)
    rows = df.mapInArrow(compare_batches, "state binary").collect()
    return [bytes(r.state) for r in rows]


def _jsonl(sc: Any, inputs: Inputs, cfg: CompareConfig, n: int, baseline: bool) -> list[bytes]:
    assert inputs.exchanges is not None and inputs.results is not None

    def tagged(path: str, tag: str) -> Any:
        # use_unicode=False: raw bytes, as the local engine reads them (.gz is read by Hadoop)
        return sc.textFile(os.path.abspath(path), use_unicode=False).map(
            lambda line: (partition_of(line, tag, n), (tag, line))
        )

    rdd = tagged(inputs.exchanges, "x").union(tagged(inputs.results, "r"))
    if inputs.baseline:
        rdd = rdd.union(tagged(inputs.baseline, "b"))

    def compare_partition(items: Iterator[tuple[int, tuple[str, bytes]]]) -> Iterator[bytes]:
        c = compare_tagged((v for _, v in items), cfg, baseline)
        yield pickle.dumps(c, protocol=pickle.HIGHEST_PROTOCOL)

    return rdd.partitionBy(n, lambda k: k).mapPartitions(compare_partition).collect()
