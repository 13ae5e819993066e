"""Helpers for the capture tests: a crafted TCP conversation as real Ethernet/IPv4|IPv6/TCP frames.

``Flow`` builds the frames with struct (fast enough for hypothesis) and tracks sequence numbers, so
a test writes the conversation (``flow.c(b"GET / ...")``, ``flow.s(b"HTTP/1.1 200 ...")``) and then
feeds the frames, possibly reordered, duplicated or with some dropped, to the component under test.
The decoder tests check these frames against scapy's independent builder.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

import pytest

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def tcp_frame(
    src: str, sport: int, dst: str, dport: int, seq: int, ack: int, flags: int, payload: bytes = b""
) -> bytes:
    """An Ethernet frame with IPv4 or IPv6 and TCP (checksums left zero: nothing here checks
    them)."""
    tcp = struct.pack(
        "!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags, 65535, 0, 0
    )
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if a.version == 4:
        ip = struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            20 + len(tcp) + len(payload),
            1,
            0x4000,
            64,
            6,
            0,
            a.packed,
            b.packed,
        )
        etype = 0x0800
    else:
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(tcp) + len(payload), 6, 64, a.packed, b.packed)
        etype = 0x86DD
    eth = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + struct.pack("!H", etype)
    return eth + ip + tcp + payload


@dataclass
class Flow:
    """One TCP connection between a client and a server, written as it happens on the wire."""

    client: tuple[str, int] = ("10.0.0.1", 40000)
    server: tuple[str, int] = ("10.0.0.2", 80)
    c_isn: int = 1000
    s_isn: int = 5000
    ts: float = 1_700_000_000.0
    step: float = 0.001
    mss: int = 0  # > 0: split payloads into segments of at most this size
    frames: list[tuple[float, int, bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.c_next = self.c_isn
        self.s_next = self.s_isn

    def _tick(self) -> float:
        self.ts = round(self.ts + self.step, 6)
        return self.ts

    def _add(self, from_client: bool, seq: int, ack: int, flags: int, payload: bytes = b"") -> None:
        src, dst = (self.client, self.server) if from_client else (self.server, self.client)
        self.frames.append(
            (self._tick(), 1, tcp_frame(src[0], src[1], dst[0], dst[1], seq, ack, flags, payload))
        )

    def frame(
        self,
        from_client: bool,
        seq: int,
        payload: bytes = b"",
        flags: int = ACK | PSH,
        ack: int = 0,
        ts: float | None = None,
    ) -> tuple[float, int, bytes]:
        """A frame of this flow at any sequence number (not appended): for crafted anomalies."""
        src, dst = (self.client, self.server) if from_client else (self.server, self.client)
        return (
            self._tick() if ts is None else ts,
            1,
            tcp_frame(src[0], src[1], dst[0], dst[1], seq, ack, flags, payload),
        )

    def handshake(self) -> Flow:
        self._add(True, self.c_next, 0, SYN)
        self.c_next += 1
        self._add(False, self.s_next, self.c_next, SYN | ACK)
        self.s_next += 1
        self._add(True, self.c_next, self.s_next, ACK)
        return self

    def c(self, data: bytes) -> Flow:
        """Client sends ``data`` (in ``mss`` pieces if set)."""
        for piece in self._pieces(data):
            self._add(True, self.c_next, self.s_next, ACK | PSH, piece)
            self.c_next += len(piece)
        return self

    def s(self, data: bytes) -> Flow:
        for piece in self._pieces(data):
            self._add(False, self.s_next, self.c_next, ACK | PSH, piece)
            self.s_next += len(piece)
        return self

    def _pieces(self, data: bytes) -> list[bytes]:
        if not self.mss:
            return [data]
        return [data[i : i + self.mss] for i in range(0, len(data), self.mss)]

    def fin(self) -> Flow:
        self._add(True, self.c_next, self.s_next, FIN | ACK)
        self.c_next += 1
        self._add(False, self.s_next, self.c_next, FIN | ACK)
        self.s_next += 1
        self._add(True, self.c_next, self.s_next, ACK)
        return self

    def rst(self, from_client: bool = True) -> Flow:
        self._add(from_client, self.c_next if from_client else self.s_next, 0, RST)
        return self


@pytest.fixture
def flow():
    """A factory of ``Flow``s (keyword arguments as the dataclass)."""
    return Flow


def run_extractor(frames, **kwargs):
    """Every exchange the Extractor produces for ``frames`` (feed + finish), and the extractor."""
    from shadowtap.capture.extractor import Extractor

    kwargs.setdefault("keep_secrets", True)
    ex = Extractor(**kwargs)
    out = []
    for ts, lt, fr in frames:
        out.extend(ex.feed(ts, lt, fr))
    out.extend(ex.finish())
    return out, ex


@pytest.fixture
def extract_frames():
    return run_extractor
