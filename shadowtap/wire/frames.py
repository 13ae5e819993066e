"""Lean L2-L4 decoding: a captured frame -> the TCP segment it carries, or None.

Pure and allocation-light: one ``struct.unpack_from`` per header, addresses kept as raw bytes
(formatted only when a connection is first seen, by the reassembler), the payload a ``bytes`` slice.
dpkt's generic packet classes build an object per layer and decode every field; on the common
Ethernet/IPv4/TCP path this decoder does a handful of slices, several times faster.

Supported link types (pcap LINKTYPE_* numbers): Ethernet (1) with any number of 802.1Q/802.1ad tags,
Linux cooked SLL (113) and SLL2 (276), raw IP (101, the DLT_RAW aliases 12 and 14, and the
per-version LINKTYPE_IPV4 228 and LINKTYPE_IPV6 229), BSD null
(0, host byte order) and loopback (108, network byte order); IPv4 (options skipped, Ethernet padding
cut by the total length, fragments other than the first dropped) and IPv6 (extension headers
skipped). Everything else (ARP, UDP, ICMP, unknown link types) is None: not an error, not TCP.
"""

from __future__ import annotations

import socket
import struct
from typing import NamedTuple

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276
_DLT_RAW_ALIASES = (12, 14)
LINKTYPE_IPV4 = 228  # raw IPv4 (what some analyzers and tunnels write)
LINKTYPE_IPV6 = 229  # raw IPv6
SUPPORTED_LINKTYPES = frozenset(
    (
        LINKTYPE_NULL,
        LINKTYPE_ETHERNET,
        LINKTYPE_RAW,
        LINKTYPE_LOOP,
        LINKTYPE_LINUX_SLL,
        LINKTYPE_LINUX_SLL2,
        LINKTYPE_IPV4,
        LINKTYPE_IPV6,
    )
    + _DLT_RAW_ALIASES
)

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
_ETH_VLAN = (0x8100, 0x88A8, 0x9100)
_RAW_V4_V6 = (LINKTYPE_IPV4, LINKTYPE_IPV6)  # the version nibble says which, as for raw IP

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10

_u16 = struct.Struct("!H").unpack_from
_tcp = struct.Struct("!HHIIBB").unpack_from  # sport, dport, seq, ack, data offset byte, flags
_ipv6_ext = frozenset((0, 43, 60, 51))  # hop-by-hop, routing, destination options, AH (sized below)
_IPV6_FRAGMENT = 44


class Segment(NamedTuple):
    """One TCP segment. A NamedTuple rather than a dataclass: it is made once per packet on the hot
    path, and tuple construction is several times cheaper than a frozen dataclass's ``__init__``.
    ``src``/``dst`` are packed addresses (4 or 16 bytes)."""

    src: bytes
    sport: int
    dst: bytes
    dport: int
    seq: int
    ack: int
    flags: int
    payload: bytes


# Segment(...) goes through a Python-level __new__; tuple.__new__ makes the same object for
# less than half the cost (one per packet).
_new_tuple = tuple.__new__


def format_ip(packed: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)


# Ethernet + IPv4 without options + TCP, from the IPv4 header on: total length, fragment field,
# protocol, addresses, ports, seq, ack, data offset, flags. One C call for the common frame.
_eth_ip4_tcp = struct.Struct("!2xH2xHxB2x4s4sHHIIBB").unpack_from


def decode(linktype: int, frame: bytes) -> Segment | None:
    """The TCP segment in ``frame``, or None when it carries none (or is too short to tell).

    Never raises on any input: truncated headers yield None, a truncated payload is kept as far as
    captured (the reassembler then sees a gap where the snap length cut it)."""
    n = len(frame)
    if linktype == 1 and n >= 54 and frame[12] == 8 and frame[13] == 0 and frame[14] == 0x45:
        # The common case: untagged Ethernet, IPv4 with a 20-byte header.
        total, frag, proto, src, dst, sport, dport, seq, ack, doff, flags = _eth_ip4_tcp(frame, 14)
        if proto == 6 and not frag & 0x1FFF and doff >= 0x50:
            end = 14 + total if 20 <= total <= n - 14 else n  # as the general path below
            if end < 54:
                return None
            start = 34 + (doff >> 4) * 4
            return _new_tuple(
                Segment,
                (src, sport, dst, dport, seq, ack, flags, frame[start:end] if start < end else b""),
            )
    if linktype == LINKTYPE_ETHERNET:
        if n < 14:
            return None
        etype = (frame[12] << 8) | frame[13]
        off = 14
        while etype in _ETH_VLAN:
            if n < off + 4:
                return None
            etype = (frame[off + 2] << 8) | frame[off + 3]
            off += 4
    elif linktype == LINKTYPE_LINUX_SLL:
        if n < 16:
            return None
        etype = (frame[14] << 8) | frame[15]
        off = 16
    elif linktype == LINKTYPE_LINUX_SLL2:
        if n < 20:
            return None
        etype = (frame[0] << 8) | frame[1]
        off = 20
    elif linktype == LINKTYPE_RAW or linktype in _DLT_RAW_ALIASES or linktype in _RAW_V4_V6:
        if n < 1:
            return None
        v = frame[0] >> 4
        etype = ETH_IPV4 if v == 4 else ETH_IPV6 if v == 6 else 0
        off = 0
    elif linktype == LINKTYPE_NULL or linktype == LINKTYPE_LOOP:
        if n < 4:
            return None
        fam = int.from_bytes(frame[:4], "big" if linktype == LINKTYPE_LOOP else "little")
        if fam == 2:
            etype = ETH_IPV4
        elif fam in (10, 24, 28, 30):  # AF_INET6 on Linux, NetBSD/OpenBSD, FreeBSD, macOS
            etype = ETH_IPV6
        else:
            # A null header written on a machine of the other byte order.
            fam = int.from_bytes(frame[:4], "little" if linktype == LINKTYPE_LOOP else "big")
            etype = ETH_IPV4 if fam == 2 else ETH_IPV6 if fam in (10, 24, 28, 30) else 0
        off = 4
    else:
        return None

    if etype == ETH_IPV4:
        if n < off + 20:
            return None
        vhl = frame[off]
        if vhl >> 4 != 4:
            return None
        ihl = (vhl & 0x0F) * 4
        if frame[off + 9] != 6 or ihl < 20:
            return None
        if _u16(frame, off + 6)[0] & 0x1FFF:  # a non-first fragment: no TCP header in it
            return None
        total = _u16(frame, off + 2)[0]
        end = off + total if total >= ihl and off + total <= n else n  # cut Ethernet padding
        src = frame[off + 12 : off + 16]
        dst = frame[off + 16 : off + 20]
        off += ihl
    elif etype == ETH_IPV6:
        if n < off + 40:
            return None
        if frame[off] >> 4 != 6:
            return None
        plen = _u16(frame, off + 4)[0]
        nxt = frame[off + 6]
        src = frame[off + 8 : off + 24]
        dst = frame[off + 24 : off + 40]
        end = off + 40 + plen if plen and off + 40 + plen <= n else n  # plen 0: jumbogram
        off += 40
        while nxt != 6:
            if nxt in _ipv6_ext:
                if end < off + 8:
                    return None
                hlen = (frame[off + 1] + 2) * 4 if nxt == 51 else (frame[off + 1] + 1) * 8
                nxt = frame[off]
                off += hlen
            elif nxt == _IPV6_FRAGMENT:
                if end < off + 8 or _u16(frame, off + 2)[0] & 0xFFF8:  # offset != 0
                    return None
                nxt = frame[off]
                off += 8
            else:
                return None
    else:
        return None

    if end < off + 20:
        return None
    sport, dport, seq, ack, doff, flags = _tcp(frame, off)
    hl = (doff >> 4) * 4
    if hl < 20:
        return None
    start = off + hl
    payload = frame[start:end] if start < end else b""
    return _new_tuple(Segment, (src, sport, dst, dport, seq, ack, flags, payload))
