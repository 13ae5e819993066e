"""Writing pairs to the lake, and reading them back.

``LakeWriter`` is a sink (``on_exchange``/``on_result``/``on_pair``/``close``, the mirror's sink
interface; ``add`` for callers that join themselves, ``add_joined`` for pairs joined as columns
by export's columnar path): it names each pair's endpoint (compare's
Templater), diffs the pair (compare's diff_responses: the per-pair summary) and writes rows in
files of at most ``rows_per_file`` rows, partitioned Hive style by ``date`` and ``endpoint_key``:
``ROOT/date=2025-11-26/endpoint_key=GET_items_id-1a2b3c4d/<run>-<n>-<i>.parquet``.

Files are written whole (under a hidden name, then renamed: a reader never sees a half-written
file; a crash loses at most the rows not yet flushed); the directories are made 0700 and every
file 0600 (captured traffic).
Memory: at most ``rows_per_file`` rows (bodies cut at ``max_body``).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shadowtap.compare.config import CompareConfig
from shadowtap.compare.diff import Difference, diff_bodies, diff_responses
from shadowtap.compare.endpoints import Templater
from shadowtap.errors import InputError
from shadowtap.lake.schema import (
    DIFF_PATHS_MAX,
    NOT_COMPARED,
    PARTITIONS,
    SAME,
    SCHEMA,
    DiffSummary,
    Rows,
    bodies_at,
    complete_batch,
    diff_sides,
    header_at,
    pairs_from_batch,
    rename_endpoints,
)
from shadowtap.records import Exchange, Response, Result

NO_REQUEST = "? (no request)"  # the endpoint of an exchange without a request
# Columns of few distinct values, dictionary-encoded in the files; the others (ids, bodies,
# times) are not tried: trying costs a third of the encoding time and they would not fit.
_DICTIONARY = [
    "host",
    "endpoint",
    "client",
    "server",
    "anomalies",
    "shadow_error_kind",
    "shadow_error",
    "shadow_target",
    "diff_paths",
    "diff_kinds",
]

if TYPE_CHECKING:
    from typing_extensions import Self


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
        self.max_body = max_body
        self._joined: list[pa.RecordBatch] = []  # complete rows from add_joined, not yet written
        self._joined_rows = 0
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
    def summary(self, p: Response | None, s: Response | None) -> DiffSummary:
        """The per-pair diff summary of the primary's and the shadow's responses."""
        if p is None or s is None:
            return NOT_COMPARED
        return _summarise(self._differences(p, s))

    def _differences(self, p: Response, s: Response) -> list[Difference]:
        return diff_responses(p, s, self._ignored, self.config.numeric.tolerance).differences

    def add(self, ex: Exchange, res: Result, host: str | None = None) -> None:
        req = ex.request
        name = self._templater.endpoint(req.method, req.target) if req is not None else NO_REQUEST
        self.rows.add(ex, res, name, self.summary(ex.response, res.response), host)
        self._maybe_flush()

    def add_joined(self, joined: pa.RecordBatch) -> None:
        """Pairs joined as columns (``export``'s columnar path: every SCHEMA column but
        ``schema.DERIVED``, bodies whole, ``ts`` in microseconds, ``same_head``: true where both
        responses have the same status and headers, and ``same``: the same body too). The rows
        are those ``add`` makes of the records: endpoints named by the one Templater, the diff
        only on the pairs that are not ``same`` (identical responses have no difference), of
        their bodies alone (``diff_bodies``, no records made) where ``same_head``.
        Cost: the diff of those pairs; the rest is O(rows) in Arrow plus one Templater call a
        distinct (method, target)."""
        n = joined.num_rows
        if n == 0:
            return
        req = joined.column("request")
        method, target = req.field("method"), req.field("target")
        key = pc.binary_join_element_wise(method, target, "\0")
        names = pc.unique(key)
        named = []
        for k in names.to_pylist():
            if k is None:
                named.append(NO_REQUEST)
            else:
                m, _, t = k.partition("\0")
                named.append(self._templater.endpoint(m, t))
        endpoints = pc.take(pa.array(named, pa.string()), pc.index_in(key, value_set=names))
        p_col, s_col = joined.column("primary_response"), joined.column("shadow_response")
        compared = pc.and_(p_col.is_valid(), s_col.is_valid())
        todo = pc.and_(compared, pc.invert(pc.fill_null(joined.column("same"), False)))
        # Same status and headers: only the bodies differ (diff_bodies, no records made).
        head = pc.fill_null(joined.column("same_head"), False)
        bodies = pc.indices_nonzero(pc.and_(todo, head))
        tol = self.config.numeric.tolerance
        summaries = _Summaries()
        codes = [
            summaries.code(diff_bodies(pb, sb, ct, ce, tol))
            for pb, sb, ct, ce in zip(
                bodies_at(p_col, bodies),
                bodies_at(s_col, bodies),
                header_at(p_col, bodies, "content-type"),
                header_at(p_col, bodies, "content-encoding"),
            )
        ]
        rows = pc.indices_nonzero(pc.and_(todo, pc.invert(head)))
        codes += [
            summaries.code(self._differences(p, s))
            for p, s in zip(diff_sides(p_col, rows), diff_sides(s_col, rows))
        ]
        # Each row's summary by index into summaries.found (NOT_COMPARED, SAME, then each
        # distinct summary): O(rows) in numpy.
        pick = compared.to_numpy(zero_copy_only=False).astype(np.int64)
        pick[np.concatenate([bodies.to_numpy(), rows.to_numpy()])] = codes
        batch = complete_batch(
            joined, self.rows.host, endpoints, summaries.found, pick, self.max_body
        )
        self._joined.append(_grouped(batch))
        self._joined_rows += n
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if len(self.rows) + self._joined_rows >= self.rows_per_file or (
            self.flush_interval is not None
            and time.monotonic() - self._last_flush >= self.flush_interval
        ):
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        batches = self._joined
        if len(self.rows):
            batches.append(_grouped(self.rows.batch()))
        if not batches:
            return
        self._joined, self._joined_rows = [], 0
        # Templates learnt since the first rows came: name those rows as the later ones (which
        # may join partitions: grouped again).
        renamed = [rename_endpoints(b, self._templater.retemplate) for b in batches]
        self._seq += 1
        self._write([b if r is b else _grouped(r) for b, r in zip(batches, renamed)])
        self.written += sum(b.num_rows for b in batches)

    def _write(self, batches: list[pa.RecordBatch]) -> None:
        """One file per partition (Hive style: the partition columns are the directories', not
        the file's), written under a hidden name and renamed: whole or not at all. Each batch's
        rows are grouped by partition (``_grouped``), so a partition is one slice of each batch:
        the file is those slices, in batch order, without a copy."""
        import pyarrow.parquet as pq

        parts: dict[tuple[str, ...], list[pa.RecordBatch]] = {}
        for batch in batches:
            cols = [batch.column(n) for n in PARTITIONS]
            key = pc.binary_join_element_wise(*cols, "\0")
            body = batch.drop_columns(list(PARTITIONS))
            start = 0
            for end in pc.run_end_encode(key).run_ends.to_pylist():
                values = tuple(c[start].as_py() for c in cols)
                parts.setdefault(values, []).append(body.slice(start, end - start))
                start = end
        for i, values in enumerate(sorted(parts)):  # the partitions' order, as _grouped's
            folder = os.path.join(self.root, *(f"{n}={v}" for n, v in zip(PARTITIONS, values)))
            os.makedirs(folder, mode=0o700, exist_ok=True)
            name = f"{self._run}-{self._seq:05d}-{i}.parquet"
            hidden = os.path.join(folder, f".{name}.part")
            fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as f:
                pq.write_table(
                    pa.Table.from_batches(parts[values]),
                    f,
                    row_group_size=64 * 1024,
                    use_dictionary=_DICTIONARY,
                )
            os.rename(hidden, os.path.join(folder, name))
            self.files += 1


def _grouped(batch: pa.RecordBatch) -> pa.RecordBatch:
    """``batch`` with its rows grouped by partition, the partitions in order and each one's rows
    in their order (a stable sort): O(rows log rows) in Arrow and one copy of the rows, made as
    the rows come (the source's buffers are then freed), not at the flush."""
    return batch.sort_by([(n, "ascending") for n in PARTITIONS])


def _summarise(diffs: list[Difference]) -> DiffSummary:
    if not diffs:
        return SAME
    seen: dict[str, str] = {}
    for d in diffs:
        if d.path not in seen and len(seen) < DIFF_PATHS_MAX:
            seen[d.path] = d.kind.value
    return DiffSummary(True, len(diffs), tuple(seen), tuple(seen.values()))


class _Summaries:
    """The distinct diff summaries of a batch's pairs, each made once: pairs differ in the same
    few ways (a volatile field), so a pair costs a key of its differences' paths and kinds and a
    dict lookup instead of a DiffSummary (``_summarise``: ~2 us a pair)."""

    def __init__(self) -> None:
        self.found: list[DiffSummary] = [NOT_COMPARED, SAME]
        self._codes: dict[tuple[tuple[str, str], ...], int] = {}

    def code(self, diffs: list[Difference]) -> int:
        """The index in ``found`` of the summary of ``diffs``."""
        if not diffs:
            return 1
        key = tuple([(d.path, d.kind) for d in diffs])  # all a summary depends on
        code = self._codes.get(key)
        if code is None:
            code = self._codes[key] = len(self.found)
            self.found.append(_summarise(diffs))
        return code


def read_lake(root: str, batch_size: int = 8192) -> Iterator[tuple[Exchange, Result, str]]:
    """Every pair of a lake directory (or of one Parquet file), with its host."""
    import pyarrow.dataset as ds  # imports pandas: 0.5 s of CPU that writing does not need

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


def read_row_groups(share: list[tuple[str, list[int]]]) -> Iterator[tuple[Exchange, Result, str]]:
    """The pairs of some row groups of lake files (``(file, [row group, ...])``: a worker's share
    of a lake, compare/partitioned.py), with their hosts. Errors name the file."""
    import pyarrow.parquet as pq

    for path, groups in share:
        try:
            f = pq.ParquetFile(path)
            for batch in f.iter_batches(batch_size=8192, row_groups=groups):
                yield from pairs_from_batch(batch)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"not a readable Parquet lake file: {exc}", where=path) from exc
        except ValueError as exc:
            raise InputError(str(exc), where=path) from exc
