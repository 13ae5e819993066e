"""Writing pairs to the lake, and reading them back.

``LakeWriter`` is a sink (``on_exchange``/``on_result``/``on_pair``/``close``, the mirror's sink
interface; ``add`` for callers that join themselves): it names each pair's endpoint (compare's
Templater), diffs the pair (compare's diff_responses: the per-pair summary) and writes rows in
files of at most ``rows_per_file`` rows, partitioned Hive style by ``date`` and ``endpoint_key``:
``ROOT/date=2025-11-26/endpoint_key=GET_items_id-1a2b3c4d/<run>-<n>-<i>.parquet``.

Files are written whole (a reader never sees a half-written file; a crash loses at most the rows
not yet flushed); the root directory is made 0700 and every file 0600 (captured traffic).
Memory: at most ``rows_per_file`` rows (bodies cut at ``max_body``).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.dataset as ds

from shadowtap.compare.config import CompareConfig
from shadowtap.compare.diff import diff_responses
from shadowtap.compare.endpoints import Templater
from shadowtap.errors import InputError
from shadowtap.lake.schema import (
    DIFF_PATHS_MAX,
    NOT_COMPARED,
    PARTITIONS,
    SCHEMA,
    DiffSummary,
    Rows,
    pairs_from_batch,
)
from shadowtap.records import Exchange, Result

if TYPE_CHECKING:
    from typing_extensions import Self

_PARTITIONING = ds.partitioning(pa.schema([SCHEMA.field(n) for n in PARTITIONS]), flavor="hive")


class LakeWriter:
    def __init__(
        self,
        root: str,
        *,
        host: str | None = None,
        config: CompareConfig | None = None,
        max_body: int = 65536,
        rows_per_file: int = 100_000,
        flush_interval: float | None = None,
    ) -> None:
        self.root = root
        self.config = config or CompareConfig()
        self.rows = Rows(host or socket.gethostname(), max_body)
        self.rows_per_file = rows_per_file
        self.flush_interval = flush_interval  # seconds between flushes of a live writer (mirror)
        self.written = 0  # rows in files
        self.files = 0
        self._templater = Templater(self.config.endpoints)
        self._ignored = self.config.headers.ignored()
        self._run = uuid.uuid4().hex[:12]
        self._seq = 0
        self._last_flush = time.monotonic()
        try:
            os.makedirs(root, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise InputError(
                f"cannot create the lake directory: {exc.strerror}", where=root
            ) from exc
        if not os.access(root, os.W_OK):
            raise InputError("cannot write the lake: directory not writable", where=root)

    # ------------------------------------------------------------------ sink interface
    def on_exchange(self, ex: Exchange) -> None:  # pairs only: single records are not rows
        pass

    def on_result(self, res: Result) -> None:
        pass

    def on_pair(self, pair: object) -> None:
        self.add(pair.exchange, pair.result)  # type: ignore[attr-defined]

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ rows
    def summary(self, ex: Exchange, res: Result) -> DiffSummary:
        p, s = ex.response, res.response
        if p is None or s is None:
            return NOT_COMPARED
        tol = self.config.numeric.tolerance
        diffs = diff_responses(p, s, self._ignored, tol).differences
        if not diffs:
            return DiffSummary(True)
        seen: dict[str, str] = {}
        for d in diffs:
            if d.path not in seen and len(seen) < DIFF_PATHS_MAX:
                seen[d.path] = d.kind.value
        return DiffSummary(True, len(diffs), tuple(seen), tuple(seen.values()))

    def add(self, ex: Exchange, res: Result, host: str | None = None) -> None:
        req = ex.request
        name = (
            self._templater.endpoint(req.method, req.target)
            if req is not None
            else "? (no request)"
        )
        self.rows.add(ex, res, name, self.summary(ex, res), host)
        if len(self.rows) >= self.rows_per_file or (
            self.flush_interval is not None
            and time.monotonic() - self._last_flush >= self.flush_interval
        ):
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not len(self.rows):
            return
        # Templates learnt since the first rows came: name those rows as the later ones.
        self.rows.rename_endpoints(self._templater.retemplate)
        batch = self.rows.batch()
        self._seq += 1

        def visit(f: ds.WrittenFile) -> None:
            os.chmod(f.path, 0o600)
            self.files += 1

        ds.write_dataset(
            pa.Table.from_batches([batch]),
            self.root,
            format="parquet",
            partitioning=_PARTITIONING,
            basename_template=f"{self._run}-{self._seq:05d}-{{i}}.parquet",
            existing_data_behavior="overwrite_or_ignore",
            file_visitor=visit,
            max_rows_per_group=64 * 1024,
        )
        self.written += batch.num_rows


def read_lake(root: str, batch_size: int = 8192) -> Iterator[tuple[Exchange, Result, str]]:
    """Every pair of a lake directory (or of one Parquet file), with its host."""
    if not os.path.exists(root):
        raise InputError("no such lake directory or file", where=root)
    try:
        dataset = ds.dataset(
            root,
            format="parquet",
            partitioning="hive",
            schema=SCHEMA if os.path.isdir(root) else None,
        )
        for batch in dataset.to_batches(batch_size=batch_size):
            yield from pairs_from_batch(batch)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"not a readable Parquet lake: {exc}", where=root) from exc
    except ValueError as exc:
        raise InputError(str(exc), where=root) from exc
