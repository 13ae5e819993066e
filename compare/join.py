"""Joining exchanges with the shadow's results (and the baseline's) by exchange id, streaming.

Results come in completion order, close to but not exactly the exchanges' order; the joiner
keeps only what is still waiting for its partner, so memory is O(reordering window), not
O(input). A result may have several copies (``--amplify``/``--loop``): each copy is compared
with the exchange, so a matched exchange stays reachable in a bounded recent-window for them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

from shadowtap.records import Exchange, Result

Triple = tuple[Exchange, Result, Result | None]
_RECENT = 10_000  # matched exchanges kept for later copies of their result


class Joiner:
    """Pure state machine: feed records, get the triples that became complete."""

    def __init__(self, *, baseline: bool) -> None:
        self.baseline = baseline
        self._exchanges: dict[str, Exchange] = {}
        self._recent: OrderedDict[str, Exchange] = OrderedDict()
        self._results: dict[str, list[Result]] = {}
        self._bases: dict[tuple[str, int], Result] = {}
        self._waiting: dict[tuple[str, int], tuple[Exchange, Result]] = {}
        self.baseline_done = not baseline
        self.unmatched_exchanges = 0
        self.unmatched_results = 0
        self.unmatched_baseline = 0

    def _pair(self, ex: Exchange, r: Result) -> list[Triple]:
        if not self.baseline:
            return [(ex, r, None)]
        key = (r.exchange_id, r.copy)
        b = self._bases.pop(key, None) or self._bases.pop((r.exchange_id, 0), None)
        if b is not None or self.baseline_done:
            return [(ex, r, b)]
        self._waiting[key] = (ex, r)
        return []

    def exchange(self, ex: Exchange) -> list[Triple]:
        waiting = self._results.pop(ex.id, None)
        if waiting is None:
            self._exchanges[ex.id] = ex
            return []
        self._remember(ex)
        out: list[Triple] = []
        for r in waiting:
            out.extend(self._pair(ex, r))
        return out

    def _remember(self, ex: Exchange) -> None:
        self._recent[ex.id] = ex
        if len(self._recent) > _RECENT:
            self._recent.popitem(last=False)

    def result(self, r: Result) -> list[Triple]:
        ex = self._exchanges.pop(r.exchange_id, None)
        if ex is not None:
            self._remember(ex)
        else:
            ex = self._recent.get(r.exchange_id)
        if ex is None:
            self._results.setdefault(r.exchange_id, []).append(r)
            return []
        return self._pair(ex, r)

    def base(self, b: Result) -> list[Triple]:
        key = (b.exchange_id, b.copy)
        w = self._waiting.pop(key, None)
        if w is None:
            self._bases[key] = b
            return []
        return [(w[0], w[1], b)]

    def end_of_baseline(self) -> list[Triple]:
        self.baseline_done = True
        out: list[Triple] = [(ex, r, None) for ex, r in self._waiting.values()]
        self._waiting.clear()
        return out

    def finish(self) -> list[Triple]:
        out = self.end_of_baseline()
        self.unmatched_exchanges = len(self._exchanges)
        self.unmatched_results = sum(len(v) for v in self._results.values())
        self.unmatched_baseline = len(self._bases)
        return out


def join(
    exchanges: Iterator[Exchange],
    results: Iterator[Result],
    baseline: Iterator[Result] | None,
    joiner: Joiner,
    chunk: int = 256,
) -> Iterator[Triple]:
    """Read the streams round-robin, ``chunk`` records at a time, yielding complete triples."""
    streams: list[tuple[Iterator, object]] = [
        (exchanges, joiner.exchange),
        (results, joiner.result),
    ]
    if baseline is not None:
        streams.append((baseline, joiner.base))
    while streams:
        for entry in list(streams):
            it, feed = entry
            for _ in range(chunk):
                rec = next(it, None)
                if rec is None:
                    streams.remove(entry)
                    if feed == joiner.base:
                        yield from joiner.end_of_baseline()
                    break
                yield from feed(rec)  # type: ignore[operator]
    yield from joiner.finish()
