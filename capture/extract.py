"""``shadowtap extract``: capture files -> JSON Lines of exchanges, and ``iter_exchanges`` for stages
that read a pcap on the fly (replay).

Several files are merged by packet timestamp (a capture rotated into pieces, or two interfaces'
captures, reassemble as one). Damage in a file stops the reading there: every exchange built from
the packets before it is still produced (and written), then the InputError naming the file and byte
offset propagates (non-zero exit).
"""

from __future__ import annotations

import gc
import heapq
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from capture.pcapfile import read_packets
from capture.pipeline import Extractor, ExtractStats
from shadowtap.errors import InputError
from shadowtap.records import Exchange

_PROGRESS_EVERY = 8192  # packets between progress updates


def _packets(paths: Sequence[str]) -> Iterator[tuple[float, int, bytes]]:
    if len(paths) == 1:
        return read_packets(paths[0])
    return heapq.merge(*(read_packets(p) for p in paths), key=lambda r: r[0])


def iter_exchanges(
    paths: Sequence[str],
    *,
    ports: Sequence[int] = (),
    bpf_filter: str | None = None,
    max_body: int = 1 << 20,
    keep_secrets: bool = False,
    extractor: Extractor | None = None,
) -> Iterator[Exchange]:
    """The exchanges of the captures at ``paths``, in request-time order, streaming (memory does not
    grow with the files). Raises InputError (file and byte offset) after yielding every exchange
    before the damage when a file is damaged."""
    ex = extractor or Extractor(ports=ports, bpf_filter=bpf_filter, max_body=max_body, keep_secrets=keep_secrets)
    feed = ex.feed
    try:
        for ts, linktype, frame in _packets(paths):
            out = feed(ts, linktype, frame)
            if out:
                yield from out
    except InputError:
        yield from ex.finish()
        raise
    yield from ex.finish()


@dataclass(frozen=True, slots=True)
class ExtractSummary:
    stats: ExtractStats
    elapsed: float
    written: int
    output: str


def _file_sizes(paths: Sequence[str]) -> int:
    import os

    total = 0
    for p in paths:
        try:
            total += os.path.getsize(p)
        except OSError as exc:
            raise InputError(f"cannot read: {exc.strerror}", where=p) from exc
    return total


def run_extract(
    paths: Sequence[str],
    output: str = "-",
    *,
    ports: Sequence[int] = (),
    bpf_filter: str | None = None,
    max_body: int = 1 << 20,
    keep_secrets: bool = False,
    idle_timeout: float = 120.0,
    max_held_bytes: int = 4 << 20,
    max_connections: int = 50_000,
) -> ExtractSummary:
    """The stage behind ``shadowtap extract``: write one JSON line per exchange to ``output``
    (``-`` stdout, ``.gz`` compressed, created 0600); on a terminal a progress bar on stderr, then a
    summary table either way. Returns the summary; raises InputError on a damaged capture after
    writing (and flushing) every exchange before the damage."""
    from shadowtap import console

    total_bytes = _file_sizes(paths)
    ex = Extractor(ports=ports, bpf_filter=bpf_filter, max_body=max_body, keep_secrets=keep_secrets,
                   idle_timeout=idle_timeout, max_held_bytes=max_held_bytes, max_connections=max_connections)
    # The extraction makes millions of short-lived acyclic objects; the default collector
    # thresholds would walk every live object thousands of times. Objects alive now (modules,
    # the CLI) are frozen out of collection; the few cycles (a connection's parser state) are
    # collected in larger batches.
    gc.collect()
    gc.freeze()
    old_threshold = gc.get_threshold()
    gc.set_threshold(50_000, 20, 100)
    started = time.monotonic()
    progress = None
    if console.interactive():
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        progress = Progress(TextColumn("extracting"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                            TextColumn("{task.fields[exchanges]} exchanges"), console=console.err, transient=True,
                            refresh_per_second=2)
    try:
        written, failure = _extract_to(output, paths, ex, progress, total_bytes)
    finally:
        gc.set_threshold(*old_threshold)
        gc.unfreeze()
    elapsed = time.monotonic() - started
    summary = ExtractSummary(ex.stats, elapsed, written, output)
    print_summary(summary, paths)
    if failure is not None:
        raise failure
    return summary


def _extract_to(output: str, paths: Sequence[str], ex: Extractor, progress: Any, total_bytes: int
                ) -> tuple[int, InputError | None]:
    """Write every exchange of ``paths`` to ``output``: (the number written, the damage met or
    None). On damage, the exchanges before it are written and the file closed first."""
    from shadowtap.jsonl import JsonlWriter

    failure: InputError | None = None
    with JsonlWriter(output) as writer:
        write = writer.write
        task = None
        if progress is not None:
            progress.start()
            task = progress.add_task("extract", total=total_bytes, exchanges=0)
        try:
            n = 0
            read = 0
            feed = ex.feed
            try:
                for ts, linktype, frame in _packets(paths):
                    for e in feed(ts, linktype, frame):
                        write(e.to_json())
                    if progress is not None:
                        n += 1
                        read += len(frame) + 16
                        if n % _PROGRESS_EVERY == 0:
                            progress.update(task, completed=read, exchanges=writer.count)
            except InputError as exc:
                failure = exc
            for e in ex.finish():
                write(e.to_json())
        finally:
            if progress is not None:
                progress.stop()
        written = writer.count
    return written, failure


def print_summary(summary: ExtractSummary, paths: Sequence[str]) -> None:
    from shadowtap import console

    s = summary.stats
    rate = s.exchanges / summary.elapsed if summary.elapsed > 0 else 0.0
    rows: list[tuple[str, object]] = [
        ("captures", " ".join(paths)),
        ("packets", s.packets),
        ("bytes", s.bytes),
        ("connections", s.connections),
        ("exchanges", s.exchanges),
        ("unanswered requests", s.unanswered),
        ("responses without request", s.responses_without_request),
    ]
    rows.extend((f"anomaly: {k}", v) for k, v in s.anomalies.items())
    if s.evicted_connections:
        rows.append(("evicted idle connections", s.evicted_connections))
    rows.extend([
        ("elapsed", f"{summary.elapsed:.2f} s"),
        ("exchanges/s", f"{rate:,.0f}"),
        ("written to", "stdout" if summary.output == "-" else summary.output),
    ])
    console.table("extract summary", ("what", "value"), rows, to_stderr=True)
