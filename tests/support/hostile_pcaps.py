"""Hostile captures (issue 12): what an attacker (or an unlucky client) on the
internet can make the capture agent parse. Each builder writes one pcap and returns its path; the
tests use small ones, ``scripts/bench_hostile.sh`` the sizes below (``python -m
tests.support.hostile_pcaps OUTDIR`` writes them all).

Segments carry up to 60 KiB each; frames are packed with struct (correct checksums) and checked
against scapy's reading of them (tests/shadowtap/test_hostile_pcaps.py).

| name | item | what |
| --- | --- | --- |
| br-bomb | 1 | a 5 KB request body with ``Content-Encoding: br`` that decodes to 1 GiB |
| gzip-gzip | 1 | 500 requests, ``Content-Encoding: gzip, gzip``, 300 bytes decoding to 64 MiB |
| header-flood | 3, 6 | a request head of 50,000 header lines, then more requests |
| stalled | 5 | one long-poll request never answered, then 20,000 exchanges on other connections |
| pipelined | 6 | 60,000 pipelined requests on one connection, never answered |
| tiny-chunks | 7 | a 8 MiB chunked response body in 2-byte chunks |
| crlf | 4 | bare CR in header values and a CR-smuggled request line |
| wide-json | 8 | 10 exchanges whose responses are 300k-element JSON arrays |
| secrets | 10 | API keys and tokens in queries, headers, JSON and form bodies |
"""

from __future__ import annotations

import gzip
import os
import socket
import struct
import sys
from collections.abc import Callable, Iterable

T0 = 1_700_000_000.0
_SEG = 60 << 10


class _Writer:
    """Frames of TCP connections into one pcap (Ethernet, IPv4, TCP with correct checksums), time
    advancing 10 us a frame. Frames are packed with struct: scapy builds ~10k packets a second on
    a loaded machine, too slow for the 120,000 of ``stalled``; tests/capture checks that scapy
    reads these frames as it would have built them."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.f = open(path, "wb")  # noqa: SIM115 - closed by close()
        self.f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        self.ts = T0
        self._conns = 0

    def conn(self, client_port: int | None = None) -> _Conn:
        self._conns += 1
        return _Conn(self, client_port or 20000 + self._conns % 40000, self._conns)

    def put(self, frame: bytes) -> None:
        self.ts += 1e-5
        sec = int(self.ts)
        usec = int(round((self.ts - sec) * 1e6))
        if usec >= 1_000_000:
            sec, usec = sec + 1, usec - 1_000_000
        self.f.write(struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame)

    def close(self) -> str:
        self.f.close()
        return self.path


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


_FLAGS = {"S": 0x02, "SA": 0x12, "PA": 0x18, "FA": 0x11, "A": 0x10}
_ETH = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00"


def tcp_frame(
    src: str, sport: int, dst: str, dport: int, seq: int, ack: int, flags: str, payload: bytes = b""
) -> bytes:
    """An Ethernet/IPv4/TCP frame with correct IP and TCP checksums."""
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    tcp = struct.pack(
        "!HHIIBBHHH",
        sport,
        dport,
        seq & 0xFFFFFFFF,
        ack & 0xFFFFFFFF,
        5 << 4,
        _FLAGS[flags],
        65535,
        0,
        0,
    )
    pseudo = s + d + struct.pack("!BBH", 0, 6, len(tcp) + len(payload))
    csum = _checksum(pseudo + tcp + payload)
    tcp = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), 1, 0x4000, 64, 6, 0, s, d
    )
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return _ETH + ip + tcp + payload


class _Conn:
    def __init__(self, w: _Writer, sport: int, n: int) -> None:
        self.w = w
        self.c = ("10.1.%d.%d" % (n // 250 % 250, n % 250 + 1), sport)
        self.s = ("10.2.0.1", 80)
        self.cseq, self.sseq = 1000, 50000
        self._pkt(True, "S", b"")
        self.cseq += 1
        self._pkt(False, "SA", b"")
        self.sseq += 1

    def _pkt(self, from_client: bool, flags: str, payload: bytes) -> None:
        src, dst = (self.c, self.s) if from_client else (self.s, self.c)
        seq, ack = (self.cseq, self.sseq) if from_client else (self.sseq, self.cseq)
        self.w.put(tcp_frame(src[0], src[1], dst[0], dst[1], seq, ack, flags, payload))

    def send(self, from_client: bool, data: bytes) -> _Conn:
        for i in range(0, len(data), _SEG):
            piece = data[i : i + _SEG]
            self._pkt(from_client, "PA", piece)
            if from_client:
                self.cseq += len(piece)
            else:
                self.sseq += len(piece)
        return self

    def c2s(self, data: bytes) -> _Conn:
        return self.send(True, data)

    def s2c(self, data: bytes) -> _Conn:
        return self.send(False, data)

    def close(self) -> None:
        self._pkt(True, "FA", b"")
        self.cseq += 1
        self._pkt(False, "FA", b"")


def _request(
    target: str = "/",
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    method: str = "GET",
) -> bytes:
    hs = [("Host", "svc.example"), *headers]
    if body or method in ("POST", "PUT"):
        hs.append(("Content-Length", str(len(body))))
    return (
        f"{method} {target} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in hs) + "\r\n"
    ).encode("latin-1") + body


def _response(
    body: bytes = b"ok", headers: Iterable[tuple[str, str]] = (), status: str = "200 OK"
) -> bytes:
    hs = [*headers, ("Content-Length", str(len(body)))]
    return (
        f"HTTP/1.1 {status}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in hs) + "\r\n"
    ).encode() + body


def _ok(c: _Conn, n: int = 1) -> None:
    for i in range(n):
        c.c2s(_request(f"/after/{i}"))
        c.s2c(_response(b'{"ok":true}', [("Content-Type", "application/json")]))


# ------------------------------------------------------------------------------- builders


def br_bomb(path: str, decoded: int = 1 << 30) -> str:
    import brotli

    comp = brotli.Compressor(quality=5, lgwin=24)
    zero = bytes(1 << 20)
    body = b"".join(comp.process(zero) for _ in range(decoded >> 20)) + comp.finish()
    w = _Writer(path)
    c = w.conn()
    c.c2s(
        _request(
            "/upload",
            [("Content-Encoding", "br"), ("Content-Type", "application/json")],
            body,
            "POST",
        )
    )
    c.s2c(_response(b"{}", [("Content-Type", "application/json")]))
    _ok(c, 3)
    c.close()
    return w.close()


def gzip_gzip(path: str, n: int = 500, decoded: int = 64 << 20) -> str:
    inner = gzip.compress(bytes(decoded), 9)
    body = gzip.compress(inner, 9)
    w = _Writer(path)
    c = w.conn()
    for _ in range(n):
        c.c2s(_request("/gz", [("Content-Encoding", "gzip, gzip")], body, "POST"))
        c.s2c(_response())
    c.close()
    return w.close()


def header_flood(path: str, lines: int = 50_000) -> str:
    w = _Writer(path)
    c = w.conn()
    c.c2s(_request("/flood", [(f"X-Flood-{i}", "y" * 20) for i in range(lines)]))
    c.s2c(_response())
    _ok(c, 3)
    c.close()
    return w.close()


def stalled(path: str, later: int = 20_000, body: int = 2048) -> str:
    w = _Writer(path)
    poll = w.conn(19999)
    poll.c2s(_request("/events/long-poll", [("Accept", "text/event-stream")]))
    payload = b'{"v":"' + b"x" * body + b'"}'
    for i in range(later):
        c = w.conn()
        c.c2s(_request(f"/item/{i}"))
        c.s2c(_response(payload, [("Content-Type", "application/json")]))
        c.close()
    return w.close()


def pipelined(path: str, n: int = 60_000) -> str:
    w = _Writer(path)
    c = w.conn()
    c.c2s(b"".join(_request(f"/p/{i}", [("Accept", "*/*")]) for i in range(n)))
    return w.close()


def tiny_chunks(path: str, size: int = 8 << 20) -> str:
    w = _Writer(path)
    c = w.conn()
    c.c2s(_request("/chunks"))
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n"
    c.s2c(head + b"2\r\nab\r\n" * (size // 2) + b"0\r\n\r\n")
    _ok(c, 3)
    c.close()
    return w.close()


def crlf(path: str) -> str:
    w = _Writer(path)
    c = w.conn()
    c.c2s(b"GET /a HTTP/1.1\r\nHost: svc.example\r\nX-A: 1\rDELETE /victim HTTP/1.1\r\n\r\n")
    c.s2c(_response())
    c.c2s(b"GET /b HTTP/1.1\r\nHost: svc.example\r\nX-B: 2\r\n\r\n")
    c.s2c(_response())
    c.close()
    return w.close()


def wide_json(path: str, n: int = 10, elements: int = 300_000) -> str:
    import orjson

    body = orjson.dumps(list(range(elements)))
    w = _Writer(path)
    c = w.conn()
    for i in range(n):
        c.c2s(_request(f"/wide/{i}"))
        c.s2c(_response(body, [("Content-Type", "application/json")]))
    c.close()
    return w.close()


SECRET_REQUEST = _request(
    "/v1/login?api_key=AKIAIOSFODNN7EXAMPLE&token=tok-123&page=2&max_tokens=50",
    [
        ("X-Api-Key", "key-abc"),
        ("X-Auth-Token", "auth-xyz"),
        ("Authorization", "Bearer sekrit-bearer-0123456789"),
        ("Proxy-Authorization", "Basic dXNlcjpwYXNz"),
        ("Content-Type", "application/json"),
    ],
    b'{"user":"bob","password":"hunter2","remember":true}',
    "POST",
)
SECRET_RESPONSE = _response(
    b'{"access_token":"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.sig","token_type":"Bearer",'
    b'"usage":{"completion_tokens":12,"prompt_tokens":5,"total_tokens":17}}',
    [("Content-Type", "application/json"), ("Set-Cookie", "sid=cookie-secret; HttpOnly")],
)


def secrets(path: str) -> str:
    w = _Writer(path)
    c = w.conn()
    c.c2s(SECRET_REQUEST)
    c.s2c(SECRET_RESPONSE)
    c.c2s(
        _request(
            "/form",
            [("Content-Type", "application/x-www-form-urlencoded")],
            b"username=bob&password=hunter2&client_secret=cs-1&count=3",
            "POST",
        )
    )
    c.s2c(_response())
    c.close()
    return w.close()


BUILDERS: dict[str, Callable[[str], str]] = {
    "br-bomb": br_bomb,
    "gzip-gzip": gzip_gzip,
    "header-flood": header_flood,
    "stalled": stalled,
    "pipelined": pipelined,
    "tiny-chunks": tiny_chunks,
    "crlf": crlf,
    "wide-json": wide_json,
    "secrets": secrets,
}


def main(argv: list[str]) -> None:
    out = argv[1] if len(argv) > 1 else "."
    only = set(argv[2:])
    os.makedirs(out, exist_ok=True)
    for name, build in BUILDERS.items():
        if only and name not in only:
            continue
        path = build(os.path.join(out, f"{name}.pcap"))
        os.chmod(path, 0o600)
        print(f"{path}\t{os.path.getsize(path)}", flush=True)


if __name__ == "__main__":
    main(sys.argv)
