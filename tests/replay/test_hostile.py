"""Hostile shadows and hostile inputs against the real replay command and client (issue 12 items
3, 4 and 12): a shadow that never ends its head, JSONL records that smuggle a DELETE through CR/LF,
a pcapng given to replay."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import orjson
import pytest

from shadowtap.records import Request, Result
from shadowtap.replay.client import ResponseLimits, Sender
from shadowtap.replay.policy import Prepared, Target
from tests.support.hostile import HostileServer
from tests.support.prereq import require_tool

from .conftest import make_exchange, read_results, write_jsonl
from .test_client import prep
from .test_run import replay

HOSTILE_PATHS = (
    "/headers-forever",
    "/value-forever",
    "/reason-forever",
    "/interim-forever",
    "/many-headers",
)


@pytest.fixture
def hostile():
    s = HostileServer()
    yield s
    s.close()


# A forked child starts with its parent's RSS high-water mark, and exec keeps it in ru_maxrss: a
# command started straight from a large pytest process would report pytest's size. A small
# launcher (a fresh interpreter) forks the command instead and reports its peak on a pipe.
_LAUNCHER = (
    "import os, sys\n"
    "fd = int(sys.argv[1])\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    os.close(fd)\n"
    "    os.execv(sys.argv[2], sys.argv[2:])\n"
    "_, status, usage = os.wait4(pid, 0)\n"
    "os.write(fd, str(usage.ru_maxrss).encode())\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def run_measured(args: list[str], timeout: float = 120) -> tuple[int, str, int]:
    """Run a command; (exit status, stderr, peak RSS in KiB of that process alone)."""
    r, w = os.pipe()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, str(w), *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            pass_fds=(w,),
            timeout=timeout,
        )
    finally:
        os.close(w)
    with os.fdopen(r, "rb") as f:
        peak = int(f.read() or b"0")
    return proc.returncode, proc.stderr.decode(errors="replace"), peak


def test_client_bounds_every_hostile_head_and_goes_on(hostile):
    async def go() -> list[Result]:
        sender = Sender(Target.parse(hostile.url), concurrency=1, timeout=20)
        await sender.start()
        out = []
        for i, path in enumerate((*HOSTILE_PATHS, "/fine")):
            out.append(
                await sender.send(prep(hostile.url, path, index=i, client=f"10.1.0.{i}:4000"))
            )
        sender.close()
        return out

    results = asyncio.run(go())
    *bad, fine = results
    for path, r in zip(HOSTILE_PATHS, bad):
        assert r.response is None and r.error is not None and r.error.kind == "protocol", (
            path,
            r.error,
        )
    messages = [r.error.message for r in bad]  # type: ignore[union-attr]
    assert "more than 500 header fields" in messages[0]  # small lines: the count cap comes first
    assert "head longer than 262144 bytes" in messages[1]
    assert "reason phrase longer than 1024" in messages[2]
    assert "more than 16 interim" in messages[3]
    assert "more than 500 header fields" in messages[4]
    assert fine.error is None and fine.response is not None and fine.response.status == 200


def test_limits_are_configurable(hostile):
    async def go() -> Result:
        sender = Sender(Target.parse(hostile.url), limits=ResponseLimits(max_headers=6000))
        await sender.start()
        r = await sender.send(prep(hostile.url, "/many-headers"))
        sender.close()
        return r

    r = asyncio.run(go())
    assert r.error is None and len(r.response.headers) == 5001  # type: ignore[union-attr]


def test_replay_against_a_header_flood_is_bounded_and_the_run_goes_on(tmp_path, hostile):
    exchanges = [
        make_exchange(t=i * 0.01, target=p, index=i, client=f"10.1.0.{i}:4000")
        for i, p in enumerate(("/headers-forever", "/ok", "/interim-forever", "/ok2"))
    ]
    inp = write_jsonl(tmp_path / "in.jsonl", exchanges)
    out = tmp_path / "res.jsonl"
    rc, err, peak_kib = run_measured(
        [
            sys.executable,
            "-m",
            "shadowtap",
            "replay",
            inp,
            "-t",
            hostile.url,
            "-o",
            str(out),
            "--timeout",
            "25",
            "--speed",
            "max",
        ]
    )
    assert rc == 0, err
    by_path = {r["target"].rsplit("/", 1)[1]: r for r in read_results(out)}
    assert by_path["headers-forever"]["error"]["kind"] == "protocol"
    assert by_path["interim-forever"]["error"]["kind"] == "protocol"
    assert (
        by_path["ok"]["response"]["status"] == 200 and by_path["ok2"]["response"]["status"] == 200
    )
    # The run reached 7.1 GB with --timeout 25; bounded, it is the interpreter's size.
    assert peak_kib < 250 * 1024, f"peak RSS {peak_kib} KiB"
    assert hostile.bytes_sent < 64 << 20  # the client closed early: it did not read on for 25 s


# -------------------------------------------------------------------------- CRLF injection

SMUGGLE = "DELETE /victim HTTP/1.1\r\nHost: x\r\n\r\n"


def smuggling_records() -> list[bytes]:
    """JSONL lines whose GET request, written as it is, becomes a GET and a DELETE on the wire."""
    base = make_exchange(target="/ok", index=0)
    lines = []
    variants = [
        {"target": "/a HTTP/1.1\r\nHost: x\r\n\r\n" + SMUGGLE.removesuffix("\r\n\r\n")},
        {"headers": [["Host", "x"], ["X-A", "1\r\n\r\n" + SMUGGLE.removesuffix("\r\n\r\n")]]},
        {
            "headers": [
                ["Host", "x"],
                ["X-A: 1\r\n\r\n" + SMUGGLE.removesuffix("\r\n\r\n") + "\r\nX-B", "2"],
            ]
        },
        {"method": "GET /a HTTP/1.1\r\nHost: x\r\n\r\nDELETE"},
        {"target": "/a\x00b"},
        {"headers": [["Host", "x"], ["X-A", "1\rDELETE /victim HTTP/1.1"]]},  # a bare CR
    ]
    for i, v in enumerate(variants):
        d = base.to_json()
        d["id"] = f"bad{i}"
        d["request"].update(v)
        lines.append(orjson.dumps(d))
    return lines


@pytest.mark.parametrize(
    "mode",
    [[], ["--pool"], ["--amplify", "3"], ["--loop", "2"], ["--rate", "50"]],
    ids=["default", "pool", "amplify", "loop", "rate"],
)
def test_crlf_injection_never_reaches_the_wire(tmp_path, aio_target, mode):
    good = [
        make_exchange(t=0.0, target="/first", index=0),
        make_exchange(t=0.01, target="/last", index=1),
    ]
    inp = tmp_path / "in.jsonl"
    with open(inp, "wb") as f:
        f.write(orjson.dumps(good[0].to_json()) + b"\n")
        f.writelines(line + b"\n" for line in smuggling_records())
        f.write(orjson.dumps(good[1].to_json()) + b"\n")
    out = tmp_path / "res.jsonl"
    p = replay(str(inp), "-t", aio_target.url, "-o", str(out), "--speed", "max", *mode, timeout=120)
    assert p.returncode == 0, p.stderr
    methods = {s.method for s in aio_target.seen}
    assert methods == {"GET"}, methods
    assert not any("victim" in s.path for s in aio_target.seen)
    assert {s.path for s in aio_target.seen} == {"/first", "/last"}
    # Each rejected record is warned about with its line number (lines 2..7).
    for lineno in range(2, 8):
        assert f"in.jsonl line {lineno}: malformed record: request not replayable" in p.stderr, (
            p.stderr
        )
    assert "header name 'X-A: 1" in p.stderr and "is not a token" in p.stderr


def test_the_client_refuses_an_unsendable_request_whatever_built_it(aio_target):
    good = prep(aio_target.url, "/x")
    bad = Prepared(
        good.exchange_id,
        good.method,
        "/x HTTP/1.1\r\n\r\nDELETE /victim",
        good.url,
        good.headers,
        b"",
        good.wire.replace(b"/x ", b"/x HTTP/1.1\r\n\r\nDELETE /victim "),
        good.lane,
        0,
    )

    async def go() -> Result:
        sender = Sender(Target.parse(aio_target.url))
        await sender.start()
        r = await sender.send(bad)
        sender.close()
        return r

    r = asyncio.run(go())
    assert (
        r.error is not None
        and r.error.kind == "other"
        and r.error.message.startswith("not sent: target")
    )
    assert aio_target.seen == []


def test_request_line_problem_table():
    ok = Request(
        0.0, 0.0, "HTTP/1.1", (("Host", "a"), ("X-Tab", "a\tb")), method="GET", target="/a?b=c"
    )
    assert ok.send_problem() is None
    for method, target, headers in (
        ("GE T", "/", ()),
        ("GET", "", ()),
        ("GET", "/a b", ()),
        ("GET", "/", (("X A", "1"),)),
        ("GET", "/", (("X", "a\x7fb"),)),
        ("GET", "/", (("", "1"),)),
        ("G\u00e9T", "/", ()),
    ):
        r = Request(0.0, 0.0, "HTTP/1.1", headers, method=method, target=target)
        assert r.send_problem() is not None, (method, target, headers)


# -------------------------------------------------------------------------- pcapng given to replay


def test_replay_reads_a_pcapng_as_a_capture(tmp_path, aio_target):
    editcap = require_tool("editcap")
    src = os.path.join(
        os.path.dirname(__file__), "..", "data", "suricata", "http-chunked", "input.pcap"
    )
    ng = tmp_path / "capture.pcapng"
    subprocess.run([editcap, "-F", "pcapng", src, str(ng)], check=True)
    assert ng.read_bytes()[:1] == b"\n"  # the block type starts with a newline byte
    out = tmp_path / "res.jsonl"
    p = replay(
        str(ng),
        *("-t", aio_target.url, "-o", str(out), "--speed", "max", "--force"),
        "--keep-secrets",  # the capture's Cookie: sent as captured, not as a placeholder
    )
    assert p.returncode == 0, p.stderr
    assert "malformed" not in p.stderr
    assert len(read_results(out)) >= 1 and len(aio_target.seen) >= 1


def test_replay_of_garbage_is_an_error_exit(tmp_path, aio_target):
    bad = tmp_path / "garbage.bin"
    bad.write_bytes(b"\n\r\r\n" + os.urandom(200))  # pcapng's block type, no byte-order magic
    p = replay(str(bad), "-t", aio_target.url)
    assert p.returncode == 3, p.stderr
    assert "no HTTP exchange to replay" in p.stderr


def test_a_bare_cr_seen_on_the_wire_is_not_forwarded(tmp_path, aio_target):
    """A capture whose request carries 'X-A: 1<CR>DELETE /victim HTTP/1.1': replayed from the
    pcap, that request is skipped as unsendable; the next one on the connection goes."""
    from tests.support.hostile_pcaps import crlf

    cap = crlf(str(tmp_path / "crlf.pcap"))
    p = replay(cap, "-t", aio_target.url, "--force", "--speed", "max")
    assert p.returncode == 0, p.stderr
    assert "skipped: unsendable\t1" in p.stderr
    assert [(s.method, s.path) for s in aio_target.seen] == [("GET", "/b")]
