"""capture/ringbuf.walk on crafted data areas laid out as the kernel lays out a BPF ring buffer:
committed records handed over in order, discarded ones skipped, the walk stopped at a record
still reserved (BUSY), lengths rounded up to 8 bytes, positions past the end masked (the kernel's
double mapping makes the record itself contiguous). The reader against the kernel's own ring
buffer: tests/capture/test_ebpf.py and test_tls.py (both sources read through it)."""

from __future__ import annotations

import struct

from shadowtap.capture.ringbuf import BUSY_BIT, DISCARD_BIT, HDR_SIZE, walk

SIZE = 256  # the data area (a power of two); the buffer below is twice as big (double mapping)


def area() -> bytearray:
    return bytearray(2 * SIZE)


def put(buf: bytearray, pos: int, payload: bytes, flags: int = 0) -> int:
    """A record at ``pos`` (as the kernel writes it, in both halves); the next record's position."""
    rec = struct.pack("=II", len(payload) | flags, 0) + payload
    for base in (pos % SIZE, pos % SIZE + SIZE):
        end = min(base + len(rec), 2 * SIZE)
        buf[base:end] = rec[: end - base]
    return pos + ((len(payload) + HDR_SIZE + 7) & ~7)


def records(buf: bytearray, cons: int, prod: int, limit: int = 100) -> tuple[int, list[bytes]]:
    new, spans = walk(memoryview(buf).cast("I"), SIZE - 1, cons, prod, limit)
    assert all(off % 8 == HDR_SIZE % 8 and off < SIZE + HDR_SIZE for off, _ in spans)
    return new, [bytes(buf[off : off + n]) for off, n in spans]


def test_committed_records_in_order_aligned() -> None:
    buf = area()
    pos = put(buf, 0, b"a")  # 1 byte: 8 + 1 rounded to 16
    assert pos == 16
    pos = put(buf, pos, b"12345678")  # exactly 16
    pos = put(buf, pos, b"xyz" * 5)  # 15: rounded to 24
    assert pos == 16 + 16 + 24
    assert records(buf, 0, pos) == (pos, [b"a", b"12345678", b"xyz" * 5])


def test_busy_record_stops_the_walk() -> None:
    buf = area()
    p1 = put(buf, 0, b"first")
    p2 = put(buf, p1, b"reserved", BUSY_BIT)
    p3 = put(buf, p2, b"after")
    assert records(buf, 0, p3) == (p1, [b"first"])  # consumer_pos stops before the busy one
    put(buf, p1, b"reserved")  # committed now
    assert records(buf, p1, p3) == (p3, [b"reserved", b"after"])


def test_busy_record_first_gives_nothing() -> None:
    buf = area()
    p1 = put(buf, 0, b"x" * 20, BUSY_BIT)
    assert records(buf, 0, p1) == (0, [])


def test_discarded_records_skipped_and_consumed() -> None:
    buf = area()
    p1 = put(buf, 0, b"drop me", DISCARD_BIT)
    p2 = put(buf, p1, b"keep")
    p3 = put(buf, p2, b"drop too" * 3, DISCARD_BIT)
    assert records(buf, 0, p3) == (p3, [b"keep"])


def test_limit_leaves_the_rest() -> None:
    buf = area()
    pos = 0
    for i in range(5):
        pos = put(buf, pos, bytes([i]) * 3)
    new, got = records(buf, 0, pos, limit=2)
    assert got == [b"\0" * 3, b"\1" * 3] and new == 32
    assert records(buf, new, pos)[1] == [b"\2" * 3, b"\3" * 3, b"\4" * 3]


def test_positions_past_the_end_are_masked() -> None:
    buf = area()
    cons = 5 * SIZE + SIZE - 16  # 16 bytes before the end of the area, a few laps on
    p1 = put(buf, cons, b"wraps around the end")  # continues in the second mapping
    p2 = put(buf, p1, b"next lap")
    assert records(buf, cons, p2) == (p2, [b"wraps around the end", b"next lap"])


def test_nothing_to_read() -> None:
    assert records(area(), 64, 64) == (64, [])
