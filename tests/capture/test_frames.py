"""shadowtap/wire/frames.py: frames built by scapy (an independent encoder) decode to the right
segment, for
every supported link type, VLAN tags, IPv4 options, IPv6 extension headers; anything else is None
and no input raises."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import CookedLinux, Dot1AD, Dot1Q, Ether, Loopback
from scapy.packet import Raw

from shadowtap.wire.frames import ACK, PSH, SUPPORTED_LINKTYPES, decode, format_ip

PAYLOAD = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def _tcp() -> TCP:
    return TCP(sport=40000, dport=8080, seq=123456, ack=654321, flags="PA") / Raw(PAYLOAD)


def _check4(seg) -> None:
    assert seg is not None
    assert format_ip(seg.src) == "192.0.2.1" and format_ip(seg.dst) == "192.0.2.2"
    assert (seg.sport, seg.dport, seg.seq, seg.ack) == (40000, 8080, 123456, 654321)
    assert seg.flags == PSH | ACK
    assert seg.payload == PAYLOAD


def _check6(seg) -> None:
    assert seg is not None
    assert format_ip(seg.src) == "2001:db8::1" and format_ip(seg.dst) == "2001:db8::2"
    assert (seg.sport, seg.dport, seg.seq) == (40000, 8080, 123456)
    assert seg.payload == PAYLOAD


IP4 = IP(src="192.0.2.1", dst="192.0.2.2")
IP6 = IPv6(src="2001:db8::1", dst="2001:db8::2")


@pytest.mark.parametrize(
    ("linktype", "frame", "check"),
    [
        (1, Ether() / IP4 / _tcp(), _check4),
        (1, Ether() / Dot1Q(vlan=7) / IP4 / _tcp(), _check4),
        (1, Ether() / Dot1AD(vlan=3) / Dot1Q(vlan=7) / IP4 / _tcp(), _check4),
        (1, Ether() / IP6 / _tcp(), _check6),
        (1, Ether() / Dot1Q(vlan=9) / IP6 / _tcp(), _check6),
        (1, Ether() / IP6 / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / _tcp(), _check6),
        (1, Ether() / IP6 / IPv6ExtHdrFragment(offset=0, m=0) / _tcp(), _check6),
        (
            1,
            Ether() / IP(src="192.0.2.1", dst="192.0.2.2", options=b"\x01\x01\x01\x00") / _tcp(),
            _check4,
        ),
        (113, CookedLinux(proto=0x0800) / IP4 / _tcp(), _check4),
        (113, CookedLinux(proto=0x86DD) / IP6 / _tcp(), _check6),
        (101, IP4 / _tcp(), _check4),
        (101, IP6 / _tcp(), _check6),
        (12, IP4 / _tcp(), _check4),
        (0, Loopback(type=2) / IP4 / _tcp(), _check4),  # BSD null: host (little-endian) order
        (0, Loopback(type=30) / IP6 / _tcp(), _check6),  # AF_INET6 of macOS
    ],
)
def test_link_types(linktype, frame, check):
    check(decode(linktype, bytes(frame)))


def test_sll2():
    # SLL2 (LINKTYPE 276): protocol(2) reserved(2) ifindex(4) hatype(2) pkttype(1) addrlen(1)
    # addr(8)
    hdr = struct.pack("!HHIHBB8s", 0x0800, 0, 1, 1, 0, 6, b"\x02" * 6 + b"\0\0")
    _check4(decode(276, hdr + bytes(IP4 / _tcp())))


def test_loop_network_order_and_null_other_order():
    raw = bytes(IP4 / _tcp())
    _check4(decode(108, struct.pack("!I", 2) + raw))  # OpenBSD loopback: network order
    _check4(decode(0, struct.pack("!I", 2) + raw))  # a null header written big-endian


def test_ethernet_padding_is_cut():
    frame = (
        bytes(Ether() / IP4 / TCP(sport=1, dport=2, flags="A")) + b"\0" * 6
    )  # padded to 60 bytes
    seg = decode(1, frame)
    assert seg is not None and seg.payload == b""


def test_not_tcp_or_not_first_fragment_is_none():
    assert decode(1, bytes(Ether() / IP4 / UDP(sport=1, dport=53) / Raw(b"x"))) is None
    assert (
        decode(
            1,
            bytes(
                Ether() / IP(src="192.0.2.1", dst="192.0.2.2", frag=100, proto=6) / Raw(b"x" * 40)
            ),
        )
        is None
    )
    assert decode(1, bytes(Ether(type=0x0806) / Raw(b"\0" * 28))) is None  # ARP
    assert decode(147, bytes(IP4 / _tcp())) is None  # an unsupported link type
    assert decode(1, bytes(Ether() / IP6 / IPv6ExtHdrFragment(offset=5) / _tcp())) is None


def test_truncated_frames_never_raise_and_keep_what_was_captured():
    frame = bytes(Ether() / IP4 / _tcp())
    for cut in range(len(frame)):
        seg = decode(1, frame[:cut])
        if seg is not None:  # headers complete: the payload is what the snap length kept
            assert PAYLOAD.startswith(seg.payload)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(SUPPORTED_LINKTYPES)), st.binary(max_size=120))
def test_random_bytes_never_raise(linktype, data):
    decode(linktype, data)


@settings(max_examples=300, deadline=None)
@given(
    st.binary(min_size=54, max_size=90),
    st.integers(min_value=0, max_value=0xFFFF),
    st.integers(min_value=0, max_value=255),
)
def test_fast_path_agrees_with_the_general_path(tail, total, doff):
    """Untagged Ethernet + IPv4 takes a one-unpack fast path; a VLAN tag forces the general path.
    Both must read any such frame alike."""
    ip = bytearray(tail)
    ip[0] = 0x45
    ip[9] = 6
    ip[2:4] = total.to_bytes(2, "big")
    ip[32] = doff
    plain = b"\x02" * 12 + b"\x08\x00" + bytes(ip)
    tagged = b"\x02" * 12 + b"\x81\x00\x00\x07\x08\x00" + bytes(ip)
    a, b = decode(1, plain), decode(1, tagged)
    if a is None or b is None:
        assert a is None and b is None
    else:
        # The tagged frame is 4 bytes longer: an IP total length that did not fit may now fit.
        if 20 <= total <= len(plain) - 14:
            assert a == b


def test_linktypes_ipv4_228_and_ipv6_229():
    f4 = bytes(IP(src="1.2.3.4", dst="5.6.7.8") / TCP(sport=1, dport=80) / Raw(b"x"))
    f6 = bytes(IPv6(src="::1", dst="::2") / TCP(sport=2, dport=80) / Raw(b"y"))
    s4, s6 = decode(228, f4), decode(229, f6)
    assert (format_ip(s4.src), s4.sport, s4.payload) == ("1.2.3.4", 1, b"x")
    assert (format_ip(s6.dst), s6.sport, s6.payload) == ("::2", 2, b"y")
    assert {228, 229} <= SUPPORTED_LINKTYPES
