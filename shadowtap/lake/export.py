"""The stage behind ``shadowtap export``: join exchanges and results from files (or a run
directory) and write the pairs to the lake. Also the one place that finds a run directory's files
and joins files into pairs, for ``compare``'s engines too."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from shadowtap import console
from shadowtap.compare.config import load_config
from shadowtap.compare.join import Joiner, join
from shadowtap.errors import InputError
from shadowtap.jsonl import read_jsonl
from shadowtap.records import Exchange, Result


def run_files(inputs: list[str]) -> tuple[str, str]:
    """(exchanges, results) from ``[RUN_DIR]`` or ``[EXCHANGES, RESULTS]``."""
    if len(inputs) == 2:
        return inputs[0], inputs[1]
    if len(inputs) == 1 and os.path.isdir(inputs[0]):
        d = inputs[0]
        found = []
        for stem in ("exchanges", "results"):
            for name in (f"{stem}.jsonl", f"{stem}.jsonl.gz"):
                if os.path.exists(os.path.join(d, name)):
                    found.append(os.path.join(d, name))
                    break
            else:
                raise InputError(f"no {stem}.jsonl(.gz) in this run directory", where=d)
        return found[0], found[1]
    raise InputError(
        "give a run directory, or an exchanges file and a results file",
        where=" ".join(inputs) or "(no input)",
    )


@dataclass
class JoinStats:
    unmatched_exchanges: int = 0
    unmatched_results: int = 0
    input_errors: int = 0
    examples: list[str] = field(default_factory=list)

    def error(self, err: InputError) -> None:
        self.input_errors += 1
        if self.input_errors <= 20:
            console.warn(f"{err} (skipped)")
        if len(self.examples) < 10:
            self.examples.append(str(err))


def file_pairs(exchanges: str, results: str, stats: JoinStats) -> Iterator[tuple[Exchange, Result]]:
    """The joined pairs of two JSONL files, streaming; unmatched records and bad lines are counted
    in ``stats``."""
    joiner = Joiner(baseline=False)
    for ex, res, _ in join(
        read_jsonl(exchanges, Exchange.from_json, stats.error),
        read_jsonl(results, Result.from_json, stats.error),
        None,
        joiner,
    ):
        yield ex, res
    stats.unmatched_exchanges = joiner.unmatched_exchanges
    stats.unmatched_results = joiner.unmatched_results


def run_export(
    inputs: list[str],
    out: str,
    *,
    host: str | None = None,
    config: str | None = None,
    max_body: int = 65536,
    rows_per_file: int = 100_000,
) -> int:
    from shadowtap.lake.writer import LakeWriter

    exchanges, results = run_files(inputs)
    stats = JoinStats()
    writer = LakeWriter(
        out, host=host, config=load_config(config), max_body=max_body, rows_per_file=rows_per_file
    )
    try:
        for ex, res in file_pairs(exchanges, results, stats):
            writer.add(ex, res)
    finally:
        writer.close()  # Ctrl-C: the pairs read so far are written
    console.info(
        f"exported {writer.written} pairs to {out} ({writer.files} files); unmatched: "
        f"{stats.unmatched_exchanges} exchanges, {stats.unmatched_results} results; "
        f"{stats.input_errors} bad lines"
    )
    if writer.written == 0:  # garbage, empty files, the wrong files: say so, not "exported 0"
        why = (
            f"{stats.input_errors} malformed lines"
            if stats.input_errors
            else f"{stats.unmatched_exchanges} exchanges and {stats.unmatched_results} results, "
            "none with its counterpart"
        )
        raise InputError(f"no pair to export ({why})", where=f"{exchanges}, {results}")
    return 0
