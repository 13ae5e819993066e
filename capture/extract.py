"""``shadowtap extract``: capture files -> JSON Lines of exchanges, and ``iter_exchanges`` for
stages
that read a pcap on the fly (replay).

Several files are merged by packet timestamp (a capture rotated into pieces, or two interfaces'
captures, reassemble as one). Damage in a file stops the reading there: every exchange built from
the packets before it is still produced (and written), then the InputError naming the file and byte
offset propagates (non-zero exit).
"""

from __future__ import annotations

import dataclasses
import gc
import heapq
import os
import signal
import struct
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from shadowtap.capture.extractor import Extractor, ExtractStats
from shadowtap.capture.pcapfile import read_packets
from shadowtap.codec import ErrorRecord, error_record
from shadowtap.errors import InputError
from shadowtap.procs import Child, Signals, batch_gc, codec_for, enlarge_pipe, spawn
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
    ex = extractor or Extractor(
        ports=ports, bpf_filter=bpf_filter, max_body=max_body, keep_secrets=keep_secrets
    )
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


def _busy_cpus() -> float:
    """CPUs busy with other work: the 1-minute load average, or the tasks runnable right now
    (besides this one) when fewer. The average lags a minute behind: a command that just ended
    still counts in it, and a machine that has just become idle looks busy."""
    busy = os.getloadavg()[0]
    try:
        with open("/proc/loadavg") as f:
            running = int(
                f.read().split()[3].split("/")[0]
            )  # "runnable/total", this process included
        busy = min(busy, running - 1)
    except (OSError, ValueError, IndexError):
        pass  # not Linux: the average alone
    return max(0.0, busy)


def _auto_jobs(total_bytes: int) -> int:
    """Worker processes for ``--jobs 0``: for captures over 32 MiB, one for the CPU this process
    would use plus one per further CPU left wholly idle (``_busy_cpus``; at most 4, within the
    CPUs this process may run on); else one. An idle 2-CPU machine gets two. Extra workers cost
    little (each reads the file and skips the other shares' packets by one unpack: 10-20% more
    CPU in all), so they pay whenever a CPU is free."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    if total_bytes <= 32 << 20 or cpus < 2:
        return 1
    idle = cpus - _busy_cpus()
    return max(1, min(4, cpus, int(idle) + 1))


def _file_sizes(paths: Sequence[str]) -> int:
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
    jobs: int = 0,
    secret_headers: Sequence[str] = (),
) -> ExtractSummary:
    """The stage behind ``shadowtap extract``: write one JSON line per exchange to ``output``
    (``-`` stdout, ``.gz`` compressed, created 0600); on a terminal a progress bar on stderr, then a
    summary table either way. Returns the summary; raises InputError on a damaged capture after
    writing (and flushing) every exchange before the damage.

    ``jobs``: worker processes (0: ``_auto_jobs``). With several, each reads the captures and takes
    its share of the connections; the lines are merged in the order one process writes them (the
    output is byte for byte the same)."""
    from shadowtap import console

    total_bytes = _file_sizes(paths)
    options: dict[str, Any] = {
        "ports": ports,
        "bpf_filter": bpf_filter,
        "max_body": max_body,
        "keep_secrets": keep_secrets,
        "idle_timeout": idle_timeout,
        "max_held_bytes": max_held_bytes,
        "max_connections": max_connections,
    }
    if secret_headers and not keep_secrets:  # more headers than shadowtap.redact's rules name
        from shadowtap.redact import Redactor

        options["redactor"] = Redactor.default(secret_headers)
    ex = Extractor(**options)  # a bad filter fails here, before any worker starts
    if jobs <= 0:
        jobs = _auto_jobs(total_bytes)
    if jobs > 1:
        return _run_sharded(paths, output, jobs, options, total_bytes)
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

        progress = Progress(
            TextColumn("extracting"),
            BarColumn(),
            DownloadColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[exchanges]} exchanges"),
            console=console.err,
            transient=True,
            refresh_per_second=2,
        )
    with batch_gc():
        written, failure = _extract_to(output, paths, ex, progress, total_bytes)
    elapsed = time.monotonic() - started
    summary = ExtractSummary(ex.stats, elapsed, written, output)
    print_summary(summary, paths)
    if failure is not None:
        raise failure
    return summary


def _extract_to(
    output: str, paths: Sequence[str], ex: Extractor, progress: Any, total_bytes: int
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
                    done = feed(ts, linktype, frame)
                    if done:  # most packets finish no exchange
                        for e in done:
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
    rows.extend(
        [
            ("elapsed", f"{summary.elapsed:.2f} s"),
            ("exchanges/s", f"{rate:,.0f}"),
            ("written to", "stdout" if summary.output == "-" else summary.output),
        ]
    )
    console.table("extract summary", ("what", "value"), rows, to_stderr=True)


# -- several worker processes -------------------------------------------------------------------
#
# Worker k of n reads every packet and keeps the connections whose 4-tuple falls in share k
# (capture.extractor's ``shard``: for the common Ethernet/IPv4 frame the share is read off the raw
# bytes, so the other shares' packets cost a read and one unpack, no decoding). It writes to a pipe
# one line per exchange, ``<order key: 48 hex digits><json>``, in its request-time order. The key's
# bytes sort as the order key does (``_order_key``) and no two exchanges share one, so the parent
# merges whole lines as bytes (no parsing: ~1.5 us a line) into the order one process would have
# written, and writes the JSON as it came. Connections are independent and ids depend only on
# their own connection, so the lines are the ones a single process writes. The workers are
# shadowtap/procs.py children: each one's figures, and the damage it met, come back as a
# ``ShardDone`` record on its channel; a crash or a kill as the same class of error.

_KEY_DIGITS = 48
_pack_key = struct.Struct(">dQQ").pack


def _order_key(key: tuple[float, int, int]) -> bytes:
    """``(time, packet number, serial)`` as 48 lower-case hex digits whose byte order is the key's
    order: the IEEE 754 bits of the time with the sign bit set (all bits flipped for a negative
    time), then the packet number and the serial, big-endian."""
    ts, packet, serial = key
    raw = _pack_key(ts + 0.0, packet, serial)  # + 0.0: -0.0 becomes 0.0, equal as a float
    if raw[0] & 0x80:
        raw = bytes(x ^ 0xFF for x in raw[:8]) + raw[8:]
    else:
        raw = bytes((raw[0] | 0x80,)) + raw[1:]
    return raw.hex().encode()


@dataclass(frozen=True, slots=True)
class ShardDone:
    """A worker's result: its share's figures and the damage it met (the lines before it are
    out)."""

    stats: ExtractStats
    error: ErrorRecord | None = None


def _shard_worker(
    ctx: Any, paths: Sequence[str], k: int, n: int, options: dict[str, Any], fd: int
) -> ShardDone:
    import orjson

    # Writes of 128 KiB into a 1 MiB pipe: the parent merges the workers' lines in order, so a
    # worker holding back a batch stalls the others behind it (the pipe holds 8 batches, enough);
    # with 16 KiB writes the parent woke up ten times as often and preempted the workers ~10x more.
    out = os.fdopen(fd, "wb", buffering=1 << 17)
    try:
        ex = Extractor(**options, shard=(k, n), keyed=True)
        keys = ex.released_keys
        error = None

        dumps = orjson.dumps
        write = out.write

        def emit(exchanges: list[Exchange]) -> None:
            for key, e in zip(keys, exchanges):
                write(_order_key(key) + dumps(e.to_json(), option=orjson.OPT_APPEND_NEWLINE))
            keys.clear()

        try:
            for ts, linktype, frame in _packets(paths):
                done = ex.feed(ts, linktype, frame)
                if done:
                    emit(done)
        except InputError as exc:
            error = error_record(exc)
        emit(ex.finish())
        out.close()
        return ShardDone(ex.stats, error)
    except BrokenPipeError:
        os._exit(1)  # the parent is gone


def _run_sharded(
    paths: Sequence[str], output: str, jobs: int, options: dict[str, Any], total_bytes: int
) -> ExtractSummary:
    import orjson

    from shadowtap import console
    from shadowtap.jsonl import JsonlWriter

    # The objects alive now (modules, the CLI) are frozen out of collection before forking, so the
    # workers inherit them frozen (as run_extract does for one process); thawed at the end.
    gc.collect()
    gc.freeze()
    children: list[Child] = []
    readers: list[BinaryIO] = []
    started = time.monotonic()
    codec = codec_for([ShardDone])
    try:
        for k in range(jobs):
            r, w = os.pipe()
            enlarge_pipe(w, 1 << 20)  # or what the kernel allows: a smaller pipe means more waiting
            # Ctrl-C reaches the whole group: a worker ends at once (exit 130), the parent reports.
            children.append(
                spawn(
                    _shard_worker,
                    paths,
                    k,
                    jobs,
                    options,
                    w,
                    name="extract worker",
                    codec=codec,
                    signals={signal.SIGINT: Signals.DEFAULT, signal.SIGTERM: Signals.DEFAULT},
                    gc_batch=True,
                    close_in_child=[*readers, r],
                )
            )
            os.close(w)
            readers.append(os.fdopen(r, "rb", buffering=1 << 20))

        progress = None
        if console.interactive():
            from rich.progress import Progress, SpinnerColumn, TextColumn

            progress = Progress(
                SpinnerColumn(),
                TextColumn(f"extracting ({jobs} processes)"),
                TextColumn("{task.fields[exchanges]} exchanges"),
                console=console.err,
                transient=True,
                refresh_per_second=2,
            )
            progress.start()
            task = progress.add_task("extract", total=None, exchanges=0)
        # The workers' JSON goes out as it came (orjson.Fragment: no parse, no re-encoding).
        as_is = getattr(orjson, "Fragment", None) or orjson.loads
        try:
            with JsonlWriter(output) as writer:
                write = writer.write
                for n, line in enumerate(heapq.merge(*readers), 1):
                    write(as_is(line[_KEY_DIGITS:-1]))
                    if progress is not None and n % _PROGRESS_EVERY == 0:
                        progress.update(task, exchanges=n)
                written = writer.count
        finally:
            if progress is not None:
                progress.stop()
        results: list[ShardDone] = [c.result() for c in children]  # a worker's crash is raised here
    except BaseException:
        for c in children:
            if c.is_alive():
                c.proc.terminate()
        raise
    finally:
        gc.unfreeze()
        for f in readers:
            f.close()
        for c in children:
            c.reap(5)
    stats = [dataclasses.asdict(r.stats) for r in results]
    errors = [r.error for r in results if r.error is not None]
    total = dict(stats[0])
    anomalies: Counter[str] = Counter()
    for st in stats:
        anomalies.update(st["anomalies"])
    for key in (
        "connections",
        "exchanges",
        "unanswered",
        "responses_without_request",
        "evicted_connections",
    ):
        total[key] = sum(st[key] for st in stats)
    total["tcp_packets"] = sum(st["tcp_packets"] for st in stats)  # each counts its own share's
    total["anomalies"] = dict(sorted(anomalies.items()))
    total["open_connections"] = total["held_exchanges"] = 0  # figures of a running extraction
    summary = ExtractSummary(ExtractStats(**total), time.monotonic() - started, written, output)
    print_summary(summary, paths)
    if errors:
        raise errors[0].rebuild()
    return summary
