"""Helpers of the live-capture tests (test_live.py, test_ebpf.py, test_afpacket.py, test_doctor.py):
a real nginx in a namespace, the capture agent and tcpdump as real processes, waiting on
conditions (never on a fixed sleep), and exchange comparison "all but timestamps".

Imported as ``import live_lab as lab`` (tests/ is on the test path).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
from tests.support.prereq import require, require_root, require_tool  # noqa: F401 - the tests use them as lab.*

REPO = Path(__file__).resolve().parents[2]
NGINX_CONF = """
daemon off;
master_process off;
user root;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    default_type text/plain;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    client_max_body_size 16m;
    keepalive_requests 100000;
    server {{
        listen {addr}:{port};
        location /big {{ alias {dir}/big.txt; }}
        location /post {{ return 201 "stored $request_length\\n"; }}
        location / {{ add_header Set-Cookie "session=s3cret-$request_uri"; return 200 "hello $request_uri\\n"; }}
    }}
}}
"""


def wait_for(cond: Callable[[], bool], timeout: float, what: str, *, proc: subprocess.Popen | None = None) -> None:
    """Poll ``cond`` until true; fail naming ``what`` after ``timeout`` s (or when ``proc`` died)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"waiting for {what}: the process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def text_of(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


class Proc:
    """A process in a namespace (or here), stdout/stderr to files, stopped by its pid only."""

    def __init__(self, argv: Sequence[str], workdir: Path, name: str, *, ns: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.stdout = workdir / f"{name}.out"
        self.stderr = workdir / f"{name}.err"
        full = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
        with open(self.stdout, "wb") as out, open(self.stderr, "wb") as err:
            # `ip netns exec` execs the command: the pid is the command's own.
            self.p = subprocess.Popen(full, stdout=out, stderr=err, cwd=REPO, env=env)

    @property
    def pid(self) -> int:
        return self.p.pid

    def err(self) -> str:
        return text_of(self.stderr)

    def out(self) -> str:
        return text_of(self.stdout)

    def wait_stderr(self, needle: str, timeout: float = 60) -> None:
        wait_for(lambda: needle in self.err(), timeout, f"{self.name} to print {needle!r}; stderr: {self.err()[-2000:]}",
                 proc=self.p)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.p.poll() is None:
            self.p.send_signal(sig)
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            raise AssertionError(f"{self.name} did not stop on signal {sig}; stderr: {self.err()[-2000:]}") from None


def start_nginx(workdir: Path, addr: str, port: int, ns: str | None) -> Proc:
    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (workdir / d).mkdir(exist_ok=True)
    # Big enough for TSO/GSO super-packets (64 KiB) on the veth and several ring records.
    line = b"".join(b"%06d the quick brown fox jumps over the lazy dog\n" % i for i in range(6000))
    (workdir / "big.txt").write_bytes(line)
    conf = workdir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=workdir, addr=addr, port=port))
    proc = Proc(["nginx", "-c", str(conf), "-p", str(workdir)], workdir, "nginx", ns=ns)
    return proc


def agent_argv(iface: str, port: int, backend: str, workdir: Path, *extra: str, name: str = "agent") -> list[str]:
    return [sys.executable, "-m", "shadowtap", "capture", "-i", iface, "-p", str(port), "-b", backend,
            "-w", str(workdir / f"{name}.pcap"), "-o", str(workdir / f"{name}.jsonl"), *extra]


def start_agent(iface: str, port: int, backend: str, workdir: Path, *extra: str, ns: str | None,
                name: str = "agent") -> Proc:
    proc = Proc(agent_argv(iface, port, backend, workdir, *extra, name=name), workdir, name, ns=ns,
                env=dict(os.environ))
    proc.wait_stderr("capturing:")
    return proc


def start_tcpdump(iface: str, port: int, workdir: Path, ns: str | None) -> Proc:
    path = workdir / "tcpdump.pcap"
    proc = Proc(["tcpdump", "-i", iface, "-n", "-s", "0", "-B", "65536", "--immediate-mode", "-U",
                 "-w", str(path), f"tcp port {port}"], workdir, "tcpdump", ns=ns)
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
    return sorted((normalise(o) for o in objs), key=lambda o: (o["conn"]["client"], o["conn"]["server"], o["index"]))


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
        proc = subprocess.run(["ip", "netns", "exec", ns, *argv] if ns else argv, capture_output=True,
                              text=True, check=False)
        text += proc.stdout
    return text
