"""The live mirror's one door into compare/: the streaming Comparison and its report writers.

This is the single exception to the dependency rule (replay does not import compare): the live
mirror compares as it goes, and replay is where the mirror lives because it is replay's sender fed
live. Everything the mirror needs from compare goes through the four functions here, so the
coupling is one small module (docs/architecture.md).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from shadowtap.records import Exchange, Result

if TYPE_CHECKING:
    from shadowtap.compare.aggregate import Comparison
    from shadowtap.compare.report import Report


def open_comparison(
    config_path: str | None, ignore: tuple[str, ...], proto_descriptor: str | None = None
) -> Comparison:
    from shadowtap.compare.aggregate import Comparison
    from shadowtap.compare.config import NoiseRule, load_config

    cfg = load_config(config_path).with_ignore(tuple(NoiseRule.parse(r) for r in ignore))
    schema = None
    if proto_descriptor:  # gRPC messages with their field names (compare/protobuf.py)
        from shadowtap.compare.protobuf import Schema

        schema = Schema(proto_descriptor)
    comparison = Comparison(cfg, proto_schema=schema)
    comparison.warm()  # the embedder now, not on the comparison thread mid-run
    return comparison


def add(comparison: Comparison, exchange: Exchange, result: Result) -> None:
    comparison.add(exchange, result)


def view(report: Report) -> tuple[str | None, float | None, list[tuple[str, int, float]]]:
    """(verdict, divergence overall, endpoints by divergence) of a report."""
    # No pair yet: no verdict so far (compare's "error" means "nothing to judge" at the end).
    verdict = report.result
    # Divergence as compare defines it per endpoint (the worst of: error-rate increase, the share
    # of pairs where a field differs beyond noise), weighted by pairs: "identical" would count
    # every pair whose request id or timestamp differs.
    endpoints = report.endpoints
    pairs = sum(e.pairs for e in endpoints)
    divergence = sum(e.divergence * e.pairs for e in endpoints) / pairs if pairs else None
    eps = sorted(
        ((e.endpoint, e.pairs, e.divergence) for e in endpoints), key=lambda e: (-e[2], -e[1])
    )
    return verdict, divergence, eps


def snapshot(comparison: Comparison, *, final: bool = False) -> Report:
    """The report so far; ``final``: every endpoint recomputed (a live snapshot recomputes within
    a time budget and keeps the others' previous reports: stale counts in a final report)."""
    return comparison.snapshot(fresh=final)


def set_unmatched(comparison: Comparison, exchanges: int, results: int) -> None:
    """The pairs the mirror could not make (evicted unpaired), for the report's summary."""
    comparison.unmatched_exchanges = exchanges
    comparison.unmatched_results = results


def write_reports(report: Report, run_dir: str | None) -> list[str]:
    """Print the terminal report (stdout); in ``run_dir`` also report.txt (the same, plain),
    report.json and report.html. Returns the report files that could not be written, with why."""
    import contextlib
    import io
    import sys

    from shadowtap import console
    from shadowtap.compare.report_json import write_json
    from shadowtap.compare.report_terminal import render
    from shadowtap.jsonl import create_private

    # The terminal report goes through the one output sink, whose plain (non-terminal) path writes
    # to sys.stdout: rendered into a buffer, it is the text of report.txt, in order.
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        render(report)
    text = buf.getvalue()
    if console.out.is_terminal:
        render(report)  # again, in colour
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    missing = []
    if run_dir:
        with create_private(os.path.join(run_dir, "report.txt")) as f:
            f.write(text.encode())
        write_json(report, os.path.join(run_dir, "report.json"))
        try:
            from shadowtap.compare.report_html import write_html
        except ImportError as exc:
            missing.append(f"report.html: compare's HTML writer is missing ({exc})")
        else:
            write_html(report, os.path.join(run_dir, "report.html"))
    return missing


class Worker:
    """The comparison on its own thread, so the mirror's event loop never waits on it.

    Why: the loop stamps the shadow's answers (ttfb, total) as it reads them; a comparison run on
    the loop (a chat answer's semantic similarity: ~50 ms, 3 s for the first as the embedding
    model loads; a snapshot: ~0.4 ms per pair so far) delayed every read behind it, and the demo's
    shadow measured ~60x slower than it is on every endpoint. On a thread the loop waits at most
    the interpreter's switch interval for the GIL (0.5 ms in the mirror, SWITCH_INTERVAL).
    Invariants: pairs are compared in the order given; ``view()`` never blocks (the last view the
    thread made, refreshed at most once a second when asked for); ``close()`` compares every pair
    given before it returns, after which the comparison is the loop's again.
    Cost: pairs cross to the thread in batches (``add_batch``: the live mirror hands over a list
    every few hundred pairs or every tick), so the thread wakes and takes the GIL once a batch, not
    once a pair (a wake-up and a GIL handover a pair were ~12% of the mirror's CPU at 4k/s, more
    than the comparison of small JSON answers itself).
    """

    def __init__(self, comparison: Comparison) -> None:
        import queue
        import threading

        self.comparison = comparison
        self._pairs: queue.SimpleQueue[list[tuple[Exchange, Result]] | None] = queue.SimpleQueue()
        self._view: tuple[str | None, float | None, list[tuple[str, int, float]]] = (None, None, [])
        self._want_view = threading.Event()
        self.errors: list[str] = []  # the thread appends, the loop pops (atomic list ops)
        self._thread = threading.Thread(target=self._run, name="mirror-compare", daemon=True)
        self._thread.start()

    def add(self, exchange: Exchange, result: Result) -> None:
        self._pairs.put([(exchange, result)])

    def add_batch(self, pairs: list[tuple[Exchange, Result]]) -> None:
        """``pairs`` compared in order, after those given before; the list is the worker's now."""
        if pairs:
            self._pairs.put(pairs)

    def view(self) -> tuple[str | None, float | None, list[tuple[str, int, float]]]:
        self._want_view.set()
        return self._view

    def close(self) -> None:
        if self._thread.is_alive():
            self._pairs.put(None)
            self._thread.join()

    def _run(self) -> None:
        import queue
        import time

        view_at = -1e9
        while True:
            try:
                batch = self._pairs.get(timeout=0.2)
            except queue.Empty:
                batch = []
            if batch is None:
                return
            for exchange, result in batch:
                try:
                    add(self.comparison, exchange, result)
                except Exception as exc:  # noqa: BLE001 - a comparison bug must not stop the mirror
                    self.errors.append(
                        f"comparison failed on {getattr(exchange, 'id', '?')}: "
                        f"{type(exc).__name__}: {exc}"
                    )
            now = time.monotonic()
            if self._want_view.is_set() and now - view_at >= 1.0:
                self._want_view.clear()
                view_at = now
                try:
                    self._view = view(snapshot(self.comparison))
                except Exception as exc:  # noqa: BLE001
                    self.errors.append(f"comparison snapshot failed: {type(exc).__name__}: {exc}")
