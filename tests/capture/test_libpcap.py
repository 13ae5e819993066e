"""The pcap backend (libpcap on AF_PACKET) against the real kernel, on loopback: the kernel filter
passes only the watched ports, packets are never cut (loopback's 64 KiB frames included), and a
ring left unread overflows into kernel drops that are reported (PACKET_STATISTICS)."""

from __future__ import annotations

import socket
import threading

import pytest

import tests.support.live_lab as lab
from shadowtap.capture.libpcap import SNAPLEN, PcapSource, port_filter
from shadowtap.wire.frames import decode


class Sink:
    """A loopback TCP server that reads and discards everything, on an ephemeral port."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.received = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            while data := conn.recv(1 << 20):
                self.received += len(data)

    def send(self, nbytes: int, chunk: bytes = b"y" * (1 << 16)) -> None:
        with socket.create_connection(("127.0.0.1", self.port)) as s:
            sent = 0
            while sent < nbytes:
                s.sendall(chunk)
                sent += len(chunk)
        self.thread.join(30)
        self.sock.close()


def covered_bytes(segs: list) -> int:
    """Bytes of the stream the segments cover (retransmissions counted once), from the SYN on."""
    syn = next(s for s in segs if s.flags & 0x02)
    isn = syn.seq + 1
    spans = sorted(((s.seq - isn) % (1 << 32), len(s.payload)) for s in segs if s.payload)
    total, end = 0, 0
    for start, n in spans:
        if start + n > end:
            total += start + n - max(start, end)
            end = start + n
    return total


def read_all(src: PcapSource) -> list:
    frames = []
    while got := src.read(0.3):
        frames += got
    return frames


def test_port_filter_expressions():
    assert port_filter(()) == "tcp"
    assert port_filter((80,)) == "tcp and (port 80)"
    assert port_filter((80, 8080)) == "tcp and (port 80 or port 8080)"


@pytest.mark.root
def test_kernel_filter_and_whole_packets():
    lab.require_root()
    watched, other = Sink(), Sink()
    src = PcapSource("lo", (watched.port,))
    src.open()
    try:
        frames: list = []
        reader = threading.Thread(target=lambda: frames.extend(read_all(src)))
        reader.start()
        watched.send(8 << 20)
        other.send(1 << 20)
        reader.join(60)
        stats = src.stats()
    finally:
        src.close()
    assert watched.received == 8 << 20
    segs = [decode(src.linktype, f) for _ts, f, _len in frames]
    assert segs and all(s is not None for s in segs)
    assert {s.sport for s in segs} | {s.dport for s in segs} >= {watched.port}
    assert all(watched.port in (s.sport, s.dport) for s in segs)  # the other port never reached us
    assert covered_bytes([s for s in segs if s.dport == watched.port]) == 8 << 20  # every byte
    assert all(len(f) == wire for _ts, f, wire in frames)  # never cut
    assert max(len(f) for _ts, f, _len in frames) > 1514  # loopback's big frames too, not MTU-sized
    assert stats.truncated == 0 and stats.kernel_drops == 0
    assert src.describe().endswith(f"snaplen {SNAPLEN}")


@pytest.mark.root
def test_kernel_drops_are_reported():
    """A 1 MiB ring left unread while 64 MiB cross loopback overflows: the kernel's drop count
    (PACKET_STATISTICS, through pcap_stats) says so."""
    lab.require_root()
    sink = Sink()
    src = PcapSource("lo", (sink.port,), buffer_mb=1)
    src.open()
    try:
        sink.send(64 << 20)
        frames = read_all(src)
        stats = src.stats()
    finally:
        src.close()
    assert stats.kernel_drops > 0
    assert stats.packets == len(frames) > 0
    assert stats.drops == stats.kernel_drops


def test_no_such_interface():
    lab.require_root()
    from shadowtap.errors import InputError

    src = PcapSource("nosuchif0", (80,))
    with pytest.raises(InputError, match="no such interface: nosuchif0"):
        src.open()
    src.close()  # idempotent after a failed open
