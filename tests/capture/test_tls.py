"""The TLS source against real servers, clients and kernel hooks, on loopback.

nginx with a TLS server block and an identical plaintext one (a self-signed certificate the test
makes with openssl), an aiohttp server over TLS and in plaintext; curl and Python's ssl (both on the
system's libssl) as clients. The same traffic goes to the TLS and to the plaintext port; the TLS
source's exchanges must equal those the eBPF TC source records for the plaintext port (method,
target, headers but Host, bodies, status, order on each connection), and what the clients got.
Keep-alive, pipelined, concurrent connections, bodies over many SSL_write calls (nginx) and in one
big SSL_write (Python), a response cut by the server closing. Then the command: -w pcap that
tshark decodes as HTTP, 0600, redaction, SIGTERM; and kill -9 leaves no uprobe (the breakpoint is
gone from a process's copy of SSL_read, and no bcc entry is left in uprobe_events).
"""

from __future__ import annotations

import http.client
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

import tests.support.live_lab as lab
from shadowtap.capture.extractor import Extractor
from shadowtap.wire.frames import LINKTYPE_ETHERNET, LINKTYPE_RAW
from tests.support.nginx import make_cert

AIOHTTP_APP = """
import asyncio, ssl, sys
from aiohttp import web

async def echo(request):
    body = await request.read()
    return web.Response(body=body[::-1], headers={"X-Len": str(len(body))})

async def cut(request):
    # promises 100,000 bytes, sends 30,000, then the server closes the connection
    resp = web.StreamResponse(headers={"Content-Length": "100000"})
    await resp.prepare(request)
    await resp.write(b"x" * 30000)
    request.transport.close()
    return resp

async def main():
    app = web.Application(client_max_size=1 << 24)
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/cut", cut)
    runner = web.AppRunner(app)
    await runner.setup()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(sys.argv[1], sys.argv[2])
    await web.TCPSite(runner, "127.0.0.1", int(sys.argv[3]), ssl_context=ctx).start()
    await web.TCPSite(runner, "127.0.0.1", int(sys.argv[4])).start()
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def require_tls_prereqs() -> None:
    lab.require_root()
    try:
        import bcc  # noqa: F401
    except ImportError:
        lab.require(False, "bcc (python3-bpfcc)")
    for tool in ("nginx", "curl", "openssl"):
        lab.require_tool(tool)


def free_port() -> int:
    while True:
        p = random.randrange(20000, 60000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
                return p
            except OSError:
                continue


class Servers:
    def __init__(self, d: Path) -> None:
        self.dir = d
        make_cert(d)
        self.ca = str(d / "cert.pem")
        self.nginx_tls, self.nginx_plain, self.aio_tls, self.aio_plain = (
            free_port() for _ in range(4)
        )
        # tests/support/nginx.py's server twice, same locations: over TLS and in plaintext
        (d / "tls").mkdir()
        (d / "plain").mkdir()
        self.nginx = lab.start_nginx(
            d / "tls", "127.0.0.1", self.nginx_tls, cert=d / "cert.pem", key=d / "key.pem"
        )
        self.nginx_p = lab.start_nginx(d / "plain", "127.0.0.1", self.nginx_plain)
        self.big = (d / "tls" / "big.txt").read_bytes()  # 306 KB: many SSL_write calls
        (d / "app.py").write_text(AIOHTTP_APP)
        self.aio = lab.Proc(
            [
                sys.executable,
                str(d / "app.py"),
                self.ca,
                str(d / "key.pem"),
                str(self.aio_tls),
                str(self.aio_plain),
            ],
            d,
            "aiohttp",
        )
        lab.wait_for(lambda: "ready" in self.aio.out(), 60, "aiohttp", proc=self.aio.p)

    def stop(self) -> None:
        self.nginx.stop()
        self.nginx_p.stop()
        self.aio.stop()


def curl(servers: Servers, *args: str) -> None:
    subprocess.run(["curl", "-sS", "-o", "/dev/null", "--cacert", servers.ca, *args], check=True)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    require_tls_prereqs()
    s = Servers(tmp_path_factory.mktemp("tls"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def sources(servers):
    """The TLS source on the TLS ports and the TC eBPF source on lo for the plaintext ones, open
    for the module (each compile takes seconds)."""
    from shadowtap.capture.ebpf import EbpfSource
    from shadowtap.capture.tls import TlsSource

    tls = TlsSource((servers.nginx_tls, servers.aio_tls))
    plain = EbpfSource("lo", (servers.nginx_plain, servers.aio_plain))
    # A keep-alive connection made before the probes exist: no ESTABLISHED event will name it
    # (test_a_connection_older_than_the_capture_is_resolved_from_proc).
    servers.early = connect(servers.nginx_tls, True, servers.ca)
    servers.early.request("GET", "/before")
    servers.early.getresponse().read()
    tls.open()
    try:
        plain.open()
    except BaseException:
        tls.close()
        raise
    yield tls, plain
    servers.early.close()
    tls.close()
    plain.close()


def drain(src, quiet: float = 0.6, limit: float = 30.0) -> list:
    """Every frame the source hands over until it has been quiet for ``quiet`` seconds."""
    frames: list = []
    end = time.monotonic() + limit
    last = time.monotonic()
    while time.monotonic() < end and time.monotonic() - last < quiet:
        got = src.read(0.1)
        if got:
            frames += got
            last = time.monotonic()
    return frames + src.flush()


def extract(frames, linktype: int, ports) -> list:
    ex = Extractor(ports=ports, keep_secrets=True)
    out = []
    for ts, f, _ in frames:
        out += ex.feed(ts / 1e6, linktype, f)
    return out + ex.finish()


def shape(ex) -> tuple:
    """An exchange without what differs between the TLS and the plaintext port (ports, Host,
    timestamps, Date)."""

    def msg(m, drop):
        if m is None:
            return None
        headers = tuple((k.lower(), v) for k, v in m.headers if k.lower() not in drop)
        return (
            getattr(m, "method", None),
            getattr(m, "target", None),
            getattr(m, "status", None),
            headers,
            m.body,
        )

    return (
        msg(ex.request, ("host",)),
        msg(ex.response, ("date", "server")),
        tuple(sorted(ex.anomalies)),
    )


def by_connection(exchanges) -> Counter:
    """The exchanges of each connection in order, as a multiset over connections (concurrent
    connections interleave differently from run to run)."""
    conns: dict[tuple[str, str], list] = {}
    for ex in sorted(exchanges, key=lambda e: (e.client, e.server, e.index)):
        conns.setdefault((ex.client, ex.server), []).append(shape(ex))
    return Counter(tuple(v) for v in conns.values())


def run_twice(servers, sources, traffic) -> tuple[list, list]:
    """``traffic(port_of)`` against the TLS ports, then the plaintext ones; the two captures."""
    tls, plain = sources
    drain(tls, 0.2)
    drain(plain, 0.2)
    traffic(lambda name: getattr(servers, f"{name}_tls"), True)
    traffic(lambda name: getattr(servers, f"{name}_plain"), False)
    t = extract(drain(tls), LINKTYPE_RAW, (servers.nginx_tls, servers.aio_tls))
    p = extract(drain(plain), LINKTYPE_ETHERNET, (servers.nginx_plain, servers.aio_plain))
    return t, p


def connect(port: int, tls: bool, ca: str) -> http.client.HTTPConnection:
    if tls:
        ctx = ssl.create_default_context(cafile=ca)
        return http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
    return http.client.HTTPConnection("127.0.0.1", port, timeout=30)


def ssl_read_byte(pid: int) -> int:
    """The first byte of the probe site that observes SSL_read (its entry, or the callee it shares
    with SSL_read_ex: tls_libs.plan_sites) in ``pid``'s mapping of libssl: 0xCC while a uprobe is
    on it."""
    from shadowtap.capture import tls_libs

    lib = [p for p in tls_libs.process_libraries(pid) if "libssl" in p][0]
    value = next(s.addr for s in tls_libs.inspect(lib).sites if "SSL_read" in s.observes)
    real = os.path.realpath(lib)
    base = None
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            parts = line.split()
            if len(parts) == 6 and os.path.realpath(parts[5]) == real and int(parts[2], 16) == 0:
                base = int(parts[0].split("-")[0], 16)
                break
    assert base is not None
    with open(f"/proc/{pid}/mem", "rb") as mem:
        mem.seek(base + value)
        return mem.read(1)[0]


@pytest.mark.root
def test_command_writes_pcap_tshark_reads_and_kill9_leaves_no_uprobe(servers, tmp_path):
    # First in the file: the module's `sources` (which would keep the uprobes on) are not open yet.
    tshark = lab.require_tool("tshark")
    port = servers.nginx_tls
    holder = subprocess.Popen([sys.executable, "-c", "import ssl, time; time.sleep(600)"])
    agent = None
    try:
        lab.wait_for(
            lambda: any("libssl" in p for p in _maps(holder.pid)), 30, "python to map libssl"
        )
        original = ssl_read_byte(holder.pid)
        assert original != 0xCC
        argv = [
            sys.executable,
            "-m",
            "shadowtap",
            "capture",
            "--tls",
            "-p",
            str(port),
            "-w",
            str(tmp_path / "tls.pcap"),
            "-o",
            str(tmp_path / "tls.jsonl"),
        ]
        agent = lab.Proc(argv, tmp_path, "agent", env=dict(os.environ))
        agent.wait_stderr("capturing:", timeout=120)
        assert (
            ssl_read_byte(holder.pid) == 0xCC
        )  # the uprobe's breakpoint, in another process's copy
        curl(
            servers,
            "-H",
            "Authorization: Bearer s3cret",
            f"https://127.0.0.1:{port}/cmd1",
            f"https://127.0.0.1:{port}/cmd2",
        )
        lab.wait_for(
            lambda: "/cmd2" in lab.text_of(tmp_path / "tls.jsonl"),
            30,
            "the exchanges",
            proc=agent.p,
        )
        assert agent.stop(signal.SIGTERM) == 0
        assert ssl_read_byte(holder.pid) == original  # SIGTERM detached everything
        for name in ("tls.pcap", "tls.jsonl"):
            assert (tmp_path / name).stat().st_mode & 0o777 == 0o600
        text = (tmp_path / "tls.jsonl").read_text()
        assert "/cmd1" in text and "s3cret" not in text  # redacted by default
        uris = subprocess.run(
            [
                tshark,
                "-r",
                str(tmp_path / "tls.pcap"),
                "-d",
                f"tcp.port=={port},http",
                "-Y",
                "http.request",
                "-T",
                "fields",
                "-e",
                "http.request.uri",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert uris == ["/cmd1", "/cmd2"]
        # kill -9: no cleanup runs; the kernel drops the perf-event uprobes with the process
        agent = lab.Proc(
            argv[:-4] + ["-o", str(tmp_path / "k.jsonl")], tmp_path, "agent9", env=dict(os.environ)
        )
        agent.wait_stderr("capturing:", timeout=120)
        assert ssl_read_byte(holder.pid) == 0xCC
        agent.p.send_signal(signal.SIGKILL)
        agent.p.wait(30)
        lab.wait_for(lambda: ssl_read_byte(holder.pid) == original, 30, "the breakpoint to go")
        events = Path("/sys/kernel/tracing/uprobe_events")
        if events.exists():
            assert f"_bcc_{agent.pid}" not in events.read_text()
    finally:
        if agent is not None and agent.p.poll() is None:  # a failed assert: no probe left on
            agent.p.kill()
            agent.p.wait()
        holder.kill()
        holder.wait()


def _maps(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/maps").read_text().split()
    except OSError:
        return []


@pytest.mark.root
def test_tls_capture_equals_the_plaintext_capture(servers, sources):
    received: dict[bool, list] = {True: [], False: []}
    local_ends: list[str] = []

    def traffic(port_of, tls: bool) -> None:
        scheme = "https" if tls else "http"
        # curl (the system's libssl): keep-alive over three requests on one connection
        urls = [f"{scheme}://127.0.0.1:{port_of('nginx')}/{p}" for p in ("a", "b?x=1", "big")]
        out = subprocess.run(
            ["curl", "-sS", "--cacert", servers.ca, *urls], capture_output=True, check=True
        ).stdout
        received[tls].append(out)
        # Python's ssl: keep-alive, a 300 KB POST body in one SSL_write, a big echo
        conn = connect(port_of("nginx"), tls, servers.ca)
        for i in range(3):
            conn.request("GET", f"/k{i}")
            received[tls].append(conn.getresponse().read())
        conn.request("POST", "/post", body=b"p" * 300_000)
        received[tls].append(conn.getresponse().read())
        if tls:
            local_ends.append("%s:%d" % conn.sock.getsockname()[:2])
        conn.close()
        echo = connect(port_of("aio"), tls, servers.ca)
        payload = bytes(random.Random(7).randrange(256) for _ in range(200_000))
        echo.request("POST", "/echo", body=payload)
        got = echo.getresponse().read()
        assert got == payload[::-1]
        received[tls].append(got)
        echo.close()
        # pipelined: two requests in one write
        raw = socket.create_connection(("127.0.0.1", port_of("nginx")))
        if tls:
            raw = ssl.create_default_context(cafile=servers.ca).wrap_socket(
                raw, server_hostname="127.0.0.1"
            )
        raw.sendall(
            b"GET /p1 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /p2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        data = b""
        while chunk := raw.recv(65536):
            data += chunk
        raw.close()
        assert b"hello /p1" in data and b"hello /p2" in data

        # concurrent connections
        def worker(n: int) -> None:
            c = connect(port_of("nginx"), tls, servers.ca)
            for j in range(5):
                c.request("GET", f"/c{n}-{j}")
                c.getresponse().read()
            c.close()

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        # the server closes mid-response
        cut = connect(port_of("aio"), tls, servers.ca)
        cut.request("GET", "/cut")
        with pytest.raises(http.client.IncompleteRead):
            cut.getresponse().read()
        cut.close()

    tls_ex, plain_ex = run_twice(servers, sources, traffic)
    assert received[True] == received[False]
    assert len(tls_ex) == len(plain_ex) == 3 + 4 + 1 + 2 + 20 + 1
    assert by_connection(tls_ex) == by_connection(plain_ex)
    # real endpoints: the Python client's own address and the server's
    mine = [e for e in tls_ex if e.request and e.request.target == "/k0"]
    assert [e.client for e in mine] == local_ends and mine[
        0
    ].server == f"127.0.0.1:{servers.nginx_tls}"
    big = [e for e in tls_ex if e.request and e.request.target == "/big"]
    assert big[0].response.body == servers.big
    cut = [e for e in tls_ex if e.request and e.request.target == "/cut"][0]
    assert len(cut.response.body) == 30000 and cut.anomalies
    counters = sources[0].counters()
    assert counters["lost_records"] == 0 and counters["truncated_bytes"] == 0


@pytest.mark.root
def test_a_client_side_process_is_not_recorded_twice(servers, sources):
    """curl's calls (remote port watched) are filtered in the kernel on the default server side."""
    tls, _ = sources
    before = tls.counters()["filtered_calls"]
    drain(tls, 0.2)
    curl(servers, f"https://127.0.0.1:{servers.nginx_tls}/once")
    exchanges = extract(drain(tls), LINKTYPE_RAW, (servers.nginx_tls,))
    assert [e.request.target for e in exchanges] == ["/once"]
    assert tls.counters()["filtered_calls"] > before


@pytest.mark.root
def test_a_connection_older_than_the_capture_is_resolved_from_proc(servers, sources):
    """Its socket has no ESTABLISHED event: the first call comes up without a 4-tuple, user space
    resolves nginx's fd through /proc and tells the kernel; the exchanges carry the real ends and
    start midstream (no handshake was seen)."""
    tls, _ = sources
    drain(tls, 0.2)
    unmapped = tls.tls_stats().unmapped_calls  # other processes' calls on this host may add some
    conn = servers.early
    for path in ("/after1", "/after2"):
        conn.request("GET", path)
        assert conn.getresponse().read() == f"hello {path}\n".encode()
    mine = "%s:%d" % conn.sock.getsockname()[:2]
    exchanges = extract(drain(tls), LINKTYPE_RAW, (servers.nginx_tls,))
    assert [e.request.target for e in exchanges] == ["/after1", "/after2"]
    assert {(e.client, e.server) for e in exchanges} == {(mine, f"127.0.0.1:{servers.nginx_tls}")}
    assert tls.tls_stats().unmapped_calls == unmapped
