"""Helpers of the live-capture tests (test_live.py, test_ebpf.py, test_libpcap.py, test_doctor.py):
a real nginx in a namespace, the capture agent and tcpdump as real processes, waiting on
conditions (never on a fixed sleep), and exchange comparison "all but timestamps".

Imported as ``import tests.support.live_lab as lab``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from tests.support.nginx import start_nginx  # noqa: F401 - the tests use these as lab.*
from tests.support.prereq import (  # noqa: F401
    require,
    require_bcc,
    require_root,
    require_tool,
)
from tests.support.proc import REPO, Proc, text_of, wait_for  # noqa: F401


def agent_argv(
    iface: str, port: int, backend: str, workdir: Path, *extra: str, name: str = "agent"
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "shadowtap",
        "capture",
        "-i",
        iface,
        "-p",
        str(port),
        "-b",
        backend,
        "-w",
        str(workdir / f"{name}.pcap"),
        "-o",
        str(workdir / f"{name}.jsonl"),
        *extra,
    ]


def start_agent(
    iface: str,
    port: int,
    backend: str,
    workdir: Path,
    *extra: str,
    ns: str | None,
    name: str = "agent",
) -> Proc:
    proc = Proc(
        agent_argv(iface, port, backend, workdir, *extra, name=name),
        workdir,
        name,
        ns=ns,
        env=dict(os.environ),
    )
    proc.wait_stderr("capturing:")
    return proc


def start_tcpdump(iface: str, port: int, workdir: Path, ns: str | None) -> Proc:
    path = workdir / "tcpdump.pcap"
    proc = Proc(
        [
            "tcpdump",
            "-i",
            iface,
            "-n",
            "-s",
            "0",
            "-B",
            "65536",
            "--immediate-mode",
            "-U",
            "-w",
            str(path),
            f"tcp port {port}",
        ],
        workdir,
        "tcpdump",
        ns=ns,
    )
    proc.wait_stderr("listening on")
    return proc


def jsonl_lines(path: Path) -> list[bytes]:
    return [line for line in path.read_bytes().splitlines() if line.strip()]


def normalise(obj: dict[str, Any]) -> dict[str, Any]:
    """An exchange's JSON without what depends on capture timestamps: the id (made from the
    connection's first timestamp), ts/end_ts and the latencies."""
    out = {k: v for k, v in obj.items() if k not in ("id", "ttfb_ms", "total_ms")}
    for side in ("request", "response"):
        if out.get(side):
            out[side] = {k: v for k, v in out[side].items() if k not in ("ts", "end_ts")}
    return out


def keyed(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Normalised and in a timestamp-free order: (connection, index on it)."""
    return sorted(
        (normalise(o) for o in objs),
        key=lambda o: (o["conn"]["client"], o["conn"]["server"], o["index"]),
    )


def extract_pcap(paths: Sequence[Path], port: int) -> list[dict[str, Any]]:
    from shadowtap.capture.extract import iter_exchanges

    return [ex.to_json() for ex in iter_exchanges([str(p) for p in paths], ports=(port,))]


def loads(lines: list[bytes]) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in lines]


def tc_filters(iface: str, ns: str | None) -> str:
    """What `tc filter show` prints for both hooks of ``iface`` (empty when nothing is attached)."""
    text = ""
    for hook in ("ingress", "egress"):
        argv = ["tc", "filter", "show", "dev", iface, hook]
        proc = subprocess.run(
            ["ip", "netns", "exec", ns, *argv] if ns else argv,
            capture_output=True,
            text=True,
            check=False,
        )
        text += proc.stdout
    return text
