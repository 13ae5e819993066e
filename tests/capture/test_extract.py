"""capture/extract.py and `shadowtap extract`: real captures (pcaps/, and one recorded here from
nginx and curl) compared with tshark's and curl's own view; the CLI's files, options and errors;
damaged captures; memory that does not grow with the capture."""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowtap.capture.extract import _KEY_DIGITS, _order_key, iter_exchanges
from shadowtap.errors import InputError
from shadowtap.records import Exchange
from tests.support.nginx import start_nginx
from tests.support.prereq import require_root, require_tool

ROOT = Path(__file__).resolve().parents[2]
PCAPS = sorted(p for p in (ROOT / "pcaps").iterdir() if p.suffix in (".pcap", ".pcapng"))


def shadowtap(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "shadowtap", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {proc.stderr}")
    return proc


def read_out(path: Path) -> list[Exchange]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        return [Exchange.from_json(orjson.loads(line)) for line in f]


def tshark_view(path: Path) -> tuple[Counter, Counter]:
    tshark = require_tool("tshark")

    def fields(display: str, *names: str) -> list[tuple[str, ...]]:
        cmd = [
            tshark,
            "-r",
            str(path),
            "-Y",
            display,
            "-T",
            "fields",
            "-E",
            "aggregator=\x1f",
            *(a for n in names for a in ("-e", n)),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
        rows = []
        for line in out.splitlines():
            # Several messages in one packet (pipelining): tshark joins each field's values.
            rows.extend(zip(*(col.split("\x1f") for col in line.split("\t"))))
        return rows

    requests = Counter(fields("http.request", "http.request.method", "http.request.uri"))
    # Interim responses (100 Continue) are not the answer to a request: shadowtap skips them.
    codes = Counter(
        c
        for (c,) in fields("http.response", "http.response.code")
        if not c.startswith("1") or c == "101"
    )
    return requests, codes


@pytest.mark.parametrize("pcap", PCAPS, ids=[p.name for p in PCAPS])
def test_pcaps_agree_with_tshark(pcap):
    exchanges = list(iter_exchanges([str(pcap)], keep_secrets=True))
    requests, codes = tshark_view(pcap)
    ours_req = Counter(
        (e.request.method, e.request.target) for e in exchanges if e.request is not None
    )
    ours_codes = Counter(str(e.response.status) for e in exchanges if e.response is not None)
    assert ours_req == requests
    assert ours_codes == codes
    assert exchanges, "the capture holds exchanges"
    assert all(not e.anomalies for e in exchanges), [e.anomalies for e in exchanges if e.anomalies]
    ts = [e.ts for e in exchanges]
    assert ts == sorted(ts)  # request-time order


def test_curl_mix_details():
    all_ex = list(iter_exchanges([str(ROOT / "pcaps/curl-mix.pcap")], keep_secrets=True))
    ex = {(e.request.method, e.request.target, e.request.version): e for e in all_ex}
    big = [e for e in all_ex if e.request.target == "/big.txt"]
    plain = next(e for e in big if e.request.header("Accept-Encoding") is None)
    gz = next(e for e in big if e.request.header("Accept-Encoding") is not None)
    assert plain.response.body_len == plain.response.decoded_len == 193890
    assert (
        gz.response.header("Content-Encoding") == "gzip"
        and gz.response.header("Transfer-Encoding") == "chunked"
    )
    assert gz.response.body_len < 20000 and gz.response.decoded_len == 193890  # gzip stays gzip
    assert ex[("HEAD", "/index.html", "HTTP/1.1")].response.body_len == 0
    assert ex[("GET", "/index.html", "HTTP/1.0")].response.status == 200
    assert ex[("GET", "/empty", "HTTP/1.1")].response.status == 204
    data = ex[("GET", "/data.bin", "HTTP/1.1")].response
    assert data.body == bytes(range(256)) * 64
    for e in ex.values():
        assert e.ttfb_ms is not None and e.total_ms is not None and e.total_ms >= 0


# -- the CLI ------------------------------------------------------------------------------------


def test_cli_writes_private_jsonl_and_a_summary(tmp_path):
    out = tmp_path / "x.jsonl"
    proc = shadowtap("extract", str(ROOT / "pcaps/hey-keepalive.pcap"), "-o", str(out))
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    got = read_out(out)
    assert len(got) == 300 and {e.response.status for e in got} == {200}
    assert "exchanges\t300" in proc.stderr and "connections\t3" in proc.stderr
    assert "exchanges/s" in proc.stderr


def test_cli_gzip_stdout_ports_filter_max_body_and_secrets(tmp_path, monkeypatch):
    mix = str(ROOT / "pcaps/curl-mix.pcap")
    gz = tmp_path / "x.jsonl.gz"
    shadowtap("extract", mix, "-o", str(gz))
    full = read_out(gz)
    stdout = shadowtap("extract", mix, "-o", "-").stdout
    assert [orjson.loads(line)["id"] for line in stdout.splitlines()] == [e.id for e in full]
    # Secrets: redacted by default, kept on request.
    post = next(e for e in full if e.request.header("Authorization"))
    assert post.request.header("Authorization").startswith("redacted:")
    assert post.request.header("Cookie").startswith("redacted:")
    kept = [
        orjson.loads(x) for x in shadowtap("extract", mix, "--keep-secrets").stdout.splitlines()
    ]
    assert ["Authorization", "Bearer secret-token"] in next(
        k for k in kept if k["request"]["method"] == "POST"
    )["request"]["headers"]
    # --max-body
    cut = [
        Exchange.from_json(orjson.loads(x))
        for x in shadowtap("extract", mix, "--max-body", "10").stdout.splitlines()
    ]
    assert max(len(c.response.body) for c in cut) == 10
    assert any(c.response.body_truncated and c.response.body_len == 193890 for c in cut)
    # --port and --filter: the server's port selects everything, another port nothing.
    port = int(full[0].server.rsplit(":", 1)[1])
    assert len(shadowtap("extract", mix, "--port", str(port)).stdout.splitlines()) == len(full)
    assert shadowtap("extract", mix, "--port", "1").stdout == ""
    assert len(
        shadowtap("extract", mix, "--filter", f"tcp port {port}").stdout.splitlines()
    ) == len(full)
    assert shadowtap("extract", mix, "--filter", "udp").stdout == ""
    bad = shadowtap("extract", mix, "--filter", "tcp port (", check=False)
    assert bad.returncode == 3 and "--filter" in bad.stderr


def test_cli_several_files_are_merged_in_time_order(tmp_path):
    a, b = ROOT / "pcaps/curl-ipv6.pcapng", ROOT / "pcaps/curl-mix.pcap"
    out = tmp_path / "m.jsonl"
    shadowtap("extract", str(b), str(a), "-o", str(out))
    got = read_out(out)
    assert len(got) == len(list(iter_exchanges([str(a)]))) + len(list(iter_exchanges([str(b)])))
    assert [e.ts for e in got] == sorted(e.ts for e in got)
    assert any(e.client.startswith("[::1]") for e in got)


def _record_offsets(path: Path) -> list[int]:
    """Byte offsets of every packet record of a (little-endian, microsecond) pcap."""
    data = path.read_bytes()
    offs, off = [], 24
    while off < len(data):
        offs.append(off)
        off += 16 + struct.unpack_from("<I", data, off + 8)[0]
    return offs


def test_truncated_capture_keeps_what_came_before_and_names_the_offset(tmp_path):
    src = ROOT / "pcaps/hey-keepalive.pcap"
    offs = _record_offsets(src)
    cut_at = offs[len(offs) // 2] + 30  # inside a record's data
    damaged = tmp_path / "damaged.pcap"
    damaged.write_bytes(src.read_bytes()[:cut_at])
    out = tmp_path / "out.jsonl"
    proc = shadowtap("extract", str(damaged), "-o", str(out), check=False)
    assert proc.returncode == 3
    assert f"{damaged} at byte {offs[len(offs) // 2]}" in proc.stderr and "truncated" in proc.stderr
    got = read_out(out)
    assert 100 < len(got) < 300  # the exchanges before the damage, flushed
    # The same through the API: exchanges first, then the error.
    seen: list[Exchange] = []
    with pytest.raises(InputError, match="at byte"):
        seen.extend(iter_exchanges([str(damaged)]))
    assert len(seen) == len(got)


def test_corrupt_record_header_and_not_a_capture(tmp_path):
    src = ROOT / "pcaps/hey-keepalive.pcap"
    offs = _record_offsets(src)
    data = bytearray(src.read_bytes())
    struct.pack_into("<I", data, offs[10] + 8, 0x7FFFFFFF)  # an absurd captured length
    bad = tmp_path / "corrupt.pcap"
    bad.write_bytes(bytes(data))
    proc = shadowtap("extract", str(bad), "-o", str(tmp_path / "o.jsonl"), check=False)
    assert (
        proc.returncode == 3 and f"at byte {offs[10]}" in proc.stderr and "corrupt" in proc.stderr
    )
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    proc = shadowtap("extract", str(text), check=False)
    assert proc.returncode == 3 and "not a pcap or pcapng" in proc.stderr
    proc = shadowtap("extract", str(tmp_path / "missing.pcap"), check=False)
    assert proc.returncode == 3 and "missing.pcap" in proc.stderr


def test_truncated_pcapng(tmp_path):
    src = (ROOT / "pcaps/curl-ipv6.pcapng").read_bytes()
    damaged = tmp_path / "d.pcapng"
    damaged.write_bytes(src[: len(src) - 50])
    proc = shadowtap("extract", str(damaged), "-o", str(tmp_path / "o.jsonl"), check=False)
    assert proc.returncode == 3 and "truncated block" in proc.stderr and "at byte" in proc.stderr


# -- memory ---------------------------------------------------------------------------------------


def _write_big_capture(path: Path, exchanges: int, body: int) -> None:
    """A raw-IP pcap of ``exchanges`` keep-alive connections each answering ``body`` bytes in 60 KB
    segments: much data, few packets (cheap to write and to read)."""
    seg = 60_000
    chunk = b"x" * seg
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 101))
        ts = 1_700_000_000

        def pkt(src, sport, dst, dport, seq, flags, payload):
            nonlocal ts
            ts += 1
            tcp = struct.pack(
                "!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, 0, 0x50, flags, 65535, 0, 0
            )
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), 0, 0, 64, 6, 0, src, dst)
            frame_len = len(ip) + len(tcp) + len(payload)
            f.write(struct.pack("<IIII", ts // 1000, (ts % 1000) * 1000, frame_len, frame_len))
            f.write(ip)
            f.write(tcp)
            f.write(payload)

        c, s = socket.inet_aton("10.1.0.1"), socket.inet_aton("10.1.0.2")
        for i in range(exchanges):
            port = 10000 + i
            pkt(c, port, s, 80, 99, 0x02, b"")
            pkt(s, 80, c, port, 499, 0x12, b"")
            req = b"GET /big HTTP/1.1\r\nHost: h\r\n\r\n"
            pkt(c, port, s, 80, 100, 0x18, req)
            head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % body
            pkt(s, 80, c, port, 500, 0x18, head)
            seq = 500 + len(head)
            for _ in range(body // seg):
                pkt(s, 80, c, port, seq, 0x18, chunk)
                seq += seg
            pkt(c, port, s, 80, 100 + len(req), 0x11, b"")
            pkt(s, 80, c, port, seq, 0x11, b"")


def _peak_rss_kb(capture: Path, out: Path, jobs: str) -> int:
    """Peak resident memory (KB) of an extraction in a fresh process. VmHWM, not ru_maxrss: the
    latter carries over exec from the forking (pytest) process."""
    code = textwrap.dedent(f"""
        import sys
        sys.argv = ["shadowtap", "extract", {str(capture)!r}, "-j", {jobs!r}, "-o", {str(out)!r}]
        from shadowtap.cli import main
        try:
            main()
        except SystemExit as e:
            assert not e.code, e.code
        status = open("/proc/self/status").read().splitlines()
        print(next(line.split()[1] for line in status if line.startswith("VmHWM")))
    """)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True
    )
    return int(proc.stdout.split()[-1])


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_capture(tmp_path):
    small, big = tmp_path / "small.pcap", tmp_path / "big.pcap"
    _write_big_capture(small, 8, 6_000_000)  # ~48 MB
    _write_big_capture(big, 170, 6_000_000)  # ~1 GB
    assert big.stat().st_size > 1_000_000_000
    for jobs in ("1", "2"):  # one process; and the merging parent of two workers
        rss_small = _peak_rss_kb(small, tmp_path / "s.jsonl", jobs)
        rss_big = _peak_rss_kb(big, tmp_path / "b.jsonl", jobs)
        got = read_out(tmp_path / "b.jsonl")
        assert len(got) == 170 and all(
            e.response.body_len == 6_000_000 and e.response.body_truncated for e in got
        )
        print(f"--jobs {jobs}: peak RSS {rss_small} KB on 48 MB, {rss_big} KB on 1 GB")
        assert rss_big < rss_small + 30_000, (rss_small, rss_big)  # KB: flat, within noise
        assert rss_big < 200_000
    big.unlink()


# -- recorded here: nginx, curl, tcpdump -------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_live_recording_agrees_with_curl(tmp_path):
    require_root()
    tcpdump, curl = require_tool("tcpdump"), require_tool("curl")
    port = _free_port()
    www = tmp_path / "www"
    www.mkdir()
    (www / "a.txt").write_bytes(b"alpha\n" * 1000)
    (www / "b.bin").write_bytes(os.urandom(50_000))
    server = start_nginx(
        tmp_path,
        "127.0.0.1",
        port,
        http_extra="gzip on; gzip_types text/plain; gzip_min_length 10;",
        locations=f'root {www}; location = /teapot {{ return 418 "short and stout"; }}',
    )
    pcap = tmp_path / "live.pcap"
    dump = None
    try:
        dump = subprocess.Popen(
            [tcpdump, "-i", "lo", "-U", "-s", "0", "-w", str(pcap), f"tcp port {port}"],
            stderr=subprocess.PIPE,
        )
        time.sleep(1.0)
        urls = [f"http://127.0.0.1:{port}/{p}" for p in ("a.txt", "b.bin", "missing", "teapot")]
        fmt = "%{http_code} %{size_download}\\n"
        outs = [a for u in urls for a in ("-o", "/dev/null", u)]
        plain = subprocess.run(
            [curl, "-s", "-w", fmt, *outs], capture_output=True, text=True, check=False
        ).stdout
        comp = subprocess.run(
            [curl, "-s", "--compressed", "-o", "/dev/null", "-w", fmt, urls[0]],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        time.sleep(1.0)
    finally:
        if dump is not None:
            dump.send_signal(signal.SIGINT)
            dump.wait(timeout=10)
        server.stop()
    curl_view = [tuple(int(x) for x in line.split()) for line in (plain + comp).splitlines()]
    got = list(iter_exchanges([str(pcap)], ports=[port]))
    ours = [(e.response.status, e.response.body_len) for e in got]
    assert ours == curl_view  # curl's size_download is the body as received: gzip stays gzip
    assert got[-1].response.decoded_len == 6000 and got[-1].response.body_len < 6000
    assert [e.request.target for e in got] == ["/a.txt", "/b.bin", "/missing", "/teapot", "/a.txt"]
    assert (
        shutil.which("tshark") is None or Counter(str(s) for s, _ in ours) == tshark_view(pcap)[1]
    )


# -- several worker processes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "pcap",
    [
        ROOT / "pcaps/curl-mix.pcap",
        ROOT / "pcaps/lab-mix.pcap",
        ROOT / "pcaps/hey-keepalive.pcap",
        ROOT / "tests/data/suricata/http-range-multiflows/input.pcap",
        ROOT / "tests/data/suricata/http-gap-double/input.pcap",
    ],
    ids=lambda p: p.parent.name if p.name == "input.pcap" else p.name,
)
def test_jobs_give_the_same_bytes(tmp_path, pcap):
    one, several = tmp_path / "one.jsonl", tmp_path / "several.jsonl"
    a = shadowtap("extract", str(pcap), "-j", "1", "-o", str(one))
    b = shadowtap("extract", str(pcap), "-j", "3", "-o", str(several))
    assert one.read_bytes() == several.read_bytes() and one.stat().st_size > 0
    assert stat.S_IMODE(several.stat().st_mode) == 0o600

    def figures(err: str) -> dict[str, str]:
        return dict(
            line.split("\t", 1)
            for line in err.splitlines()
            if "\t" in line and not line.startswith(("elapsed", "exchanges/s", "written"))
        )

    assert figures(a.stderr) == figures(b.stderr)  # connections, exchanges, anomalies: summed right


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(min_value=-1e12, max_value=4e9, allow_nan=False),
            st.integers(min_value=0, max_value=2**64 - 1),
            st.integers(min_value=0, max_value=2**64 - 1),
        ),
        min_size=2,
        max_size=20,
    )
)
def test_order_keys_sort_as_the_keys_they_encode(keys):
    """The parent merges the workers' lines as bytes: the encoded keys must sort as the keys do
    (times of either sign, -0.0 equal to 0.0), be fixed-width hex and never contain a newline."""
    enc = [_order_key(k) for k in keys]
    assert all(len(e) == _KEY_DIGITS and e.isalnum() and e == e.lower() for e in enc)
    for a, ea in zip(keys, enc):
        for b, eb in zip(keys, enc):
            assert (a < b) == (ea < eb) and (a == b) == (ea == eb)
    assert _order_key((-0.0, 1, 2)) == _order_key((0.0, 1, 2))


def test_jobs_on_a_damaged_capture(tmp_path):
    src = ROOT / "pcaps/hey-keepalive.pcap"
    offs = _record_offsets(src)
    damaged = tmp_path / "damaged.pcap"
    damaged.write_bytes(src.read_bytes()[: offs[len(offs) // 2] + 30])
    outs = []
    for jobs in ("1", "2"):
        out = tmp_path / f"out{jobs}.jsonl"
        proc = shadowtap("extract", str(damaged), "-j", jobs, "-o", str(out), check=False)
        assert proc.returncode == 3 and f"at byte {offs[len(offs) // 2]}" in proc.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] and outs[0]
