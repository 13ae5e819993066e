"""``shadowtap compare`` end to end: files in, reports out, the verdict as the exit status."""

import json
import os
import random
import stat
import subprocess
import sys
import uuid
from pathlib import Path

from shadowtap.errors import (
    EXIT_INPUT,
    EXIT_OK,
    EXIT_VERDICT_ERROR,
    EXIT_VERDICT_FAIL,
    EXIT_VERDICT_MARGINAL,
)
from shadowtap.jsonl import JsonlWriter

SHADOWTAP = str(Path(sys.executable).with_name("shadowtap"))


def write_run(craft, tmp_path, n=150, shadow=None, name="run", suffix=".jsonl"):
    """Exchanges and results files; ``shadow(i, body) -> (body, status)`` changes the shadow."""
    rng = random.Random(1)
    ex_path, res_path = tmp_path / f"{name}-ex{suffix}", tmp_path / f"{name}-res{suffix}"
    with JsonlWriter(str(ex_path)) as we, JsonlWriter(str(res_path)) as wr:
        for i in range(n):
            body = {
                "id": i,
                "label": ["a", "b", "c"][i % 3],
                "at": craft.iso(craft.T0 + i),
                "rid": str(uuid.uuid4()),
            }
            sbody, status = dict(body, at=craft.iso(craft.T0 + i + 0.2), rid=str(uuid.uuid4())), 200
            if shadow:
                sbody, status = shadow(i, sbody)
            lat = rng.gauss(20, 2)
            we.write(
                craft.exchange(
                    i, craft.response(body), target=f"/v1/things/{i}", latency_ms=lat
                ).to_json()
            )
            wr.write(
                craft.result(
                    i, craft.response(sbody, status=status), latency_ms=rng.gauss(20, 2)
                ).to_json()
            )
    return str(ex_path), str(res_path)


def run(*args):
    return subprocess.run(
        [SHADOWTAP, "compare", *args], check=False, capture_output=True, text=True, timeout=120
    )


def test_pass_writes_private_json_report(craft, tmp_path):
    ex, res = write_run(craft, tmp_path)
    out = tmp_path / "report.json"
    p = run(ex, res, "--json", str(out))
    assert p.returncode == EXIT_OK, p.stdout + p.stderr
    assert p.stdout.startswith("verdict: PASS")
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    rep = json.loads(out.read_text())
    assert rep["schema"] == 1 and rep["verdict"]["result"] == "pass"
    assert {n["path"] for n in rep["noise"]} == {"body.at", "body.rid"}
    assert [e["endpoint"] for e in rep["endpoints"]] == ["GET /v1/things/{id}"]


def test_fail_and_marginal_exit_codes(craft, tmp_path):
    ex, res = write_run(
        craft, tmp_path, shadow=lambda i, b: (b, 500 if i % 10 == 0 else 200), name="f"
    )
    p = run(ex, res)
    assert p.returncode == EXIT_VERDICT_FAIL and p.stdout.startswith("verdict: FAIL")
    assert "error rate High" in p.stdout

    def flip(i, b):
        return (dict(b, label="z") if i % 10 == 0 else b), 200

    ex, res = write_run(craft, tmp_path, shadow=flip, name="m")
    p = run(ex, res)
    assert p.returncode == EXIT_VERDICT_MARGINAL, p.stdout
    assert "agreement Low" in p.stdout


def test_ignore_and_config(craft, tmp_path):
    ex, res = write_run(craft, tmp_path, shadow=lambda i, b: (dict(b, id=-1), 200))
    assert run(ex, res, "-q").returncode == EXIT_VERDICT_FAIL
    assert run(ex, res, "-q", "--ignore", "GET /v1/*::body.id").returncode == EXIT_OK
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[noise.rules]]\npath = "body.id"\nreason = "ids are reassigned"\n')
    p = run(ex, res, "--config", str(cfg), "--json", "-")
    assert p.returncode == EXIT_OK
    rep = json.loads(p.stdout)
    assert any("ids are reassigned" in n["reason"] for n in rep["noise"])


def test_malformed_lines_are_reported_and_skipped(craft, tmp_path):
    ex, res = write_run(craft, tmp_path, n=60)
    lines = Path(res).read_text().splitlines()
    lines.insert(2, '{"schema": 1, "broken": ')
    lines.insert(5, '{"schema": 99}')
    Path(res).write_text("\n".join(lines) + "\n")
    p = run(ex, res, "--json", str(tmp_path / "r.json"))
    assert p.returncode == EXIT_OK, p.stderr
    assert f"{res} line 3: malformed record" in p.stderr
    assert f"{res} line 6: malformed record" in p.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["summary"]["pairs"] == 60 and rep["summary"]["input_errors"] == 2


def test_gzip_inputs_and_baseline(craft, tmp_path):
    ex, res = write_run(craft, tmp_path, suffix=".jsonl.gz")
    _, base = write_run(craft, tmp_path, name="base", suffix=".jsonl.gz")
    p = run(ex, res, "--baseline", base, "--json", str(tmp_path / "r.json"))
    assert p.returncode == EXIT_OK, p.stdout
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["summary"]["with_baseline"] == 150
    assert all(n["reason"].startswith("within baseline noise") for n in rep["noise"])


def test_errors(craft, tmp_path):
    ex, res = write_run(craft, tmp_path, n=5)
    p = run(ex, str(tmp_path / "missing.jsonl"))
    assert p.returncode == EXIT_INPUT and "missing.jsonl: cannot read" in p.stderr
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    p = run(ex, str(empty))
    assert p.returncode == EXIT_VERDICT_ERROR and p.stdout.startswith("verdict: ERROR")
    bad = tmp_path / "bad.toml"
    bad.write_text("[nope]\n")
    p = run(ex, res, "--config", str(bad))
    assert p.returncode == EXIT_INPUT and "unknown key nope" in p.stderr


def test_unwritable_report_fails_before_the_work(craft, tmp_path):
    ex, res = write_run(craft, tmp_path, n=5)
    p = run(ex, res, "--html", str(tmp_path / "no" / "such" / "dir" / "r.html"))
    assert p.returncode == EXIT_INPUT and "r.html: cannot write the report" in p.stderr
    assert p.stdout == ""


def test_truncated_gzip_input_reports_what_was_read(craft, tmp_path):
    ex, res = write_run(craft, tmp_path, n=400, suffix=".jsonl.gz")
    data = Path(res).read_bytes()
    Path(res).write_bytes(data[: len(data) // 2])
    p = run(ex, res, "--json", str(tmp_path / "r.json"))
    assert f"{res}: unreadable after line" in p.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    assert 0 < rep["summary"]["pairs"] < 400 and rep["summary"]["input_errors"] == 1
    assert rep["summary"]["unmatched_exchanges"] == 400 - rep["summary"]["pairs"]


def test_ctrl_c_reports_the_pairs_read_so_far(craft, tmp_path):
    import errno
    import signal
    import time

    ex, res = write_run(craft, tmp_path, n=60)
    fifo = tmp_path / "results.fifo"
    os.mkfifo(fifo)
    report = tmp_path / "r.json"
    proc = subprocess.Popen(
        [SHADOWTAP, "compare", ex, str(fifo), "--json", str(report)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # the reader opens the FIFO once it has read every exchange
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError as exc:
                assert (
                    exc.errno == errno.ENXIO and proc.poll() is None and time.monotonic() < deadline
                )
                time.sleep(0.02)
        lines = Path(res).read_text().splitlines()[:40]
        os.set_blocking(fd, True)
        os.write(fd, ("\n".join(lines) + "\n").encode())
        # wait until compare is blocked reading the FIFO for more: it has compared the 40 pairs
        while "pipe" not in Path(f"/proc/{proc.pid}/wchan").read_text():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        os.close(fd)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted: reporting the 40 pairs compared so far" in err
    assert out.startswith("verdict: PASS")
    rep = json.loads(report.read_text())
    assert rep["summary"]["pairs"] == 40 and rep["summary"]["interrupted"] is True
