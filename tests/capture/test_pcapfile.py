"""capture/pcapfile.py: the one pcap format module: what the project writes, every reader reads
back with the same timestamps (the float rule that "live == offline byte for byte" rests on)."""

from __future__ import annotations

import random

from shadowtap.capture.live import PcapWriter
from shadowtap.capture.pcapfile import FILE_HEADER, SNAPLEN, read_packets, seconds


def test_written_records_read_back_with_the_one_timestamp_rule(tmp_path):
    rng = random.Random(7)
    stamps = [rng.randrange(1_500_000_000_000_000, 1_900_000_000_000_000) for _ in range(2000)]
    stamps += [1_700_000_000_000_000, 1_700_000_000_999_999, 0, 999_999]
    path = str(tmp_path / "t.pcap")
    w = PcapWriter(path, 1)
    for i, ts in enumerate(stamps):
        w.write(ts, bytes([i % 256]) * (i % 60 + 1), 1500)
    w.close()
    got = list(read_packets(path))
    assert [t for t, _, _ in got] == [seconds(ts) for ts in stamps]
    assert [len(f) for _, _, f in got] == [i % 60 + 1 for i in range(len(stamps))]
    with open(path, "rb") as f:
        assert FILE_HEADER.unpack(f.read(FILE_HEADER.size))[5:] == (SNAPLEN, 1)
