"""`shadowtap compare` reading a run's stream (a real nats-server): the exchanges and results an
agent published give the report the same files give; a stream as RESULTS beside an exchanges
file."""

from __future__ import annotations

import json
import subprocess
import sys

from shadowtap.jsonl import read_jsonl
from shadowtap.lake.nats import NatsSink
from shadowtap.records import Exchange, Result
from tests.support.natsd import NatsServer
from tests.support.pairs import write_run


def _compare(*args: str, out: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "shadowtap", "compare", *args, "-q", "--json", out],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode in (0, 10, 11), proc.stderr  # a verdict, whichever
    return json.loads(open(out).read())


def test_compare_reads_the_stream(tmp_path) -> None:
    ex_path, res_path = write_run(str(tmp_path), 600)
    exchanges = list(read_jsonl(ex_path, Exchange.from_json))
    by_id = {ex.id: ex for ex in exchanges}
    with NatsServer(str(tmp_path / "js")) as srv:
        url = f"{srv.url}/cmp"
        sink = NatsSink(url, str(tmp_path / "spool"), host="agent-1")
        for ex in exchanges:
            sink.on_exchange(ex)
        for res in read_jsonl(res_path, Result.from_json):
            sink.on_result(res, by_id.get(res.exchange_id))
        sink.close()
        assert sink.acked == 1200
        from_files = _compare(ex_path, res_path, out=str(tmp_path / "files.json"))
        from_stream = _compare(url, out=str(tmp_path / "stream.json"))
        mixed = _compare(ex_path, url, out=str(tmp_path / "mixed.json"))
    # the stream holds records in partition order, not the files' order: endpoints first seen in
    # another order list in another order, and the example pairs kept differ; the rest is equal
    for rep in (from_stream, mixed):
        assert rep["summary"]["pairs"] == from_files["summary"]["pairs"] == 600
        assert _unordered(rep["verdict"]) == _unordered(from_files["verdict"])
        assert _by_endpoint(rep) == _by_endpoint(from_files)


def _unordered(verdict: dict) -> dict:
    metrics = sorted(json.dumps(m, sort_keys=True) for m in verdict["metrics"])
    return {**verdict, "metrics": metrics}


def _by_endpoint(report: dict) -> dict:
    return {e["endpoint"]: _no_examples(e) for e in report["endpoints"]}


def _no_examples(value: object) -> object:
    if isinstance(value, dict):
        return {k: _no_examples(v) for k, v in value.items() if k not in ("samples", "flips")}
    if isinstance(value, list):
        return [_no_examples(v) for v in value]
    return value
