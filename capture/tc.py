"""TC (clsact) hooks over rtnetlink: the clsact qdisc and direct-action BPF filters on an
interface's ingress and egress, as `tc qdisc add dev X clsact` and `tc filter add dev X ingress
bpf da ...` would make them, but taking a program by file descriptor (bcc's ``load_func``).

shadowtap's filters are recognisable: priority ``PRIORITY`` and the name
``shadowtap-<pid>-<process start time>`` (what ``tc filter show`` prints after ``bpf name``). A
filter whose process is gone (or whose pid now belongs to a process started at another time) was
left by a killed run (kill -9 runs no cleanup) and is removed by the next run: ``remove_stale``. A
filter of a live run on the same interface is left alone.

Cost: a few netlink round trips per call; nothing here is on the packet path.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass
from enum import Enum

PRIORITY = 0x5354  # "ST": every shadowtap filter sits at this priority
NAME_PREFIX = "shadowtap-"

# rtnetlink constants (linux/rtnetlink.h, linux/netlink.h, linux/pkt_sched.h, linux/pkt_cls.h)
_RTM_NEWQDISC, _RTM_DELQDISC = 36, 37
_RTM_NEWTFILTER, _RTM_DELTFILTER, _RTM_GETTFILTER = 44, 45, 46
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_EXCL, _NLM_F_CREATE, _NLM_F_DUMP = 0x1, 0x4, 0x200, 0x400, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_TCA_KIND, _TCA_OPTIONS = 1, 2
_TCA_BPF_FD, _TCA_BPF_NAME, _TCA_BPF_FLAGS, _TCA_BPF_ID = 6, 7, 8, 11
_TCA_BPF_FLAG_ACT_DIRECT = 1
_TC_H_CLSACT = 0xFFFFFFF1
_CLSACT_HANDLE = 0xFFFF0000
_ETH_P_ALL_BE = socket.htons(0x0003)

_NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_TCMSG = struct.Struct("=BxxxiIII")  # family, ifindex, handle, parent, info
_RTA = struct.Struct("=HH")  # len, type


class Direction(Enum):
    INGRESS = 0xFFFFFFF2  # TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)
    EGRESS = 0xFFFFFFF3  # TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_EGRESS)


@dataclass(frozen=True, slots=True)
class Filter:
    """One BPF filter on a clsact hook."""

    ifindex: int
    direction: Direction
    priority: int
    handle: int
    name: str
    prog_id: int | None

    @property
    def owner(self) -> tuple[int, int] | None:
        """(pid, start time) of the shadowtap run that made it, or None for someone else's
        filter."""
        if self.priority != PRIORITY or not self.name.startswith(NAME_PREFIX):
            return None
        try:
            pid, start = self.name[len(NAME_PREFIX) :].split("-")
            return int(pid), int(start)
        except ValueError:
            return None


def process_start(pid: int) -> int | None:
    """The start time (clock ticks after boot) of process ``pid``, or None when there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    return int(stat[stat.rindex(b")") + 2 :].split()[19])


def owner_name(pid: int | None = None) -> str:
    """The filter name that marks this process's filters."""
    pid = os.getpid() if pid is None else pid
    return f"{NAME_PREFIX}{pid}-{process_start(pid)}"


class NetlinkError(OSError):
    pass


def _attr(kind: int, payload: bytes) -> bytes:
    data = _RTA.pack(_RTA.size + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def _parse_attrs(data: bytes) -> dict[int, bytes]:
    attrs: dict[int, bytes] = {}
    off = 0
    while off + _RTA.size <= len(data):
        length, kind = _RTA.unpack_from(data, off)
        if length < _RTA.size:
            break
        attrs[kind & 0x7FFF] = data[off + _RTA.size : off + length]
        off += (length + 3) & ~3
    return attrs


class _Rtnl:
    """One rtnetlink socket in the current network namespace."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def request(self, kind: int, flags: int, body: bytes) -> list[tuple[int, bytes]]:
        """Send one message; return the (type, payload) replies up to the ack or the dump's end.
        A negative ack raises NetlinkError with its errno."""
        self.seq += 1
        msg = _NLMSG.pack(_NLMSG.size + len(body), kind, flags | _NLM_F_REQUEST, self.seq, 0) + body
        self.sock.send(msg)
        replies: list[tuple[int, bytes]] = []
        while True:
            data = self.sock.recv(1 << 16)
            off = 0
            while off + _NLMSG.size <= len(data):
                length, mtype, _flags, seq, _pid = _NLMSG.unpack_from(data, off)
                payload = data[off + _NLMSG.size : off + length]
                off += (length + 3) & ~3
                if seq != self.seq:
                    continue
                if mtype == _NLMSG_DONE:
                    return replies
                if mtype == _NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", payload)
                    if code:
                        raise NetlinkError(-code, os.strerror(-code))
                    return replies
                replies.append((mtype, payload))
            if not flags & _NLM_F_DUMP and not flags & _NLM_F_ACK:
                return replies

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ensure_clsact(ifindex: int) -> bool:
    """Add the clsact qdisc when the interface lacks it; True when this call added it."""
    body = _TCMSG.pack(socket.AF_UNSPEC, ifindex, _CLSACT_HANDLE, _TC_H_CLSACT, 0) + _attr(
        _TCA_KIND, b"clsact\0"
    )
    with _Rtnl() as nl:
        try:
            nl.request(_RTM_NEWQDISC, _NLM_F_ACK | _NLM_F_CREATE | _NLM_F_EXCL, body)
        except NetlinkError as exc:
            if exc.errno == errno.EEXIST:
                return False
            raise
    return True


def remove_clsact(ifindex: int) -> None:
    body = _TCMSG.pack(socket.AF_UNSPEC, ifindex, _CLSACT_HANDLE, _TC_H_CLSACT, 0) + _attr(
        _TCA_KIND, b"clsact\0"
    )
    _delete(_RTM_DELQDISC, body)


def _delete(mtype: int, body: bytes) -> None:
    """One delete request; what is already gone (ENOENT, EINVAL, ENODEV) is not an error."""
    with _Rtnl() as nl:
        try:
            nl.request(mtype, _NLM_F_ACK, body)
        except NetlinkError as exc:
            if exc.errno not in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
                raise


def list_filters(ifindex: int, direction: Direction) -> list[Filter]:
    """The BPF filters on one hook (none when the interface has no clsact qdisc)."""
    body = _TCMSG.pack(socket.AF_UNSPEC, ifindex, 0, direction.value, 0)
    with _Rtnl() as nl:
        try:
            replies = nl.request(_RTM_GETTFILTER, _NLM_F_DUMP, body)
        except NetlinkError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOENT):
                return []
            raise
    found = []
    for mtype, payload in replies:
        if mtype != _RTM_NEWTFILTER:
            continue
        _fam, idx, handle, _parent, info = _TCMSG.unpack_from(payload)
        attrs = _parse_attrs(payload[_TCMSG.size :])
        if handle == 0 or attrs.get(_TCA_KIND, b"").rstrip(b"\0") != b"bpf":
            continue
        opts = _parse_attrs(attrs.get(_TCA_OPTIONS, b""))
        name = opts.get(_TCA_BPF_NAME, b"").rstrip(b"\0").decode("ascii", "replace")
        prog_id = struct.unpack("=I", opts[_TCA_BPF_ID])[0] if _TCA_BPF_ID in opts else None
        found.append(Filter(idx, direction, info >> 16, handle, name, prog_id))
    return found


def add_filter(
    ifindex: int, direction: Direction, prog_fd: int, *, handle: int, name: str
) -> Filter:
    """Attach the program ``prog_fd`` (BPF_PROG_TYPE_SCHED_CLS) as a direct-action filter."""
    info = (PRIORITY << 16) | _ETH_P_ALL_BE
    opts = (
        _attr(_TCA_BPF_FD, struct.pack("=I", prog_fd))
        + _attr(_TCA_BPF_NAME, name.encode("ascii") + b"\0")
        + _attr(_TCA_BPF_FLAGS, struct.pack("=I", _TCA_BPF_FLAG_ACT_DIRECT))
    )
    body = _TCMSG.pack(socket.AF_UNSPEC, ifindex, handle, direction.value, info)
    body += _attr(_TCA_KIND, b"bpf\0") + _attr(_TCA_OPTIONS | 0x8000, opts)
    with _Rtnl() as nl:
        nl.request(_RTM_NEWTFILTER, _NLM_F_ACK | _NLM_F_CREATE | _NLM_F_EXCL, body)
    return Filter(ifindex, direction, PRIORITY, handle, name, None)


def delete_filter(f: Filter) -> None:
    """Remove one filter; a filter already gone is not an error."""
    info = (f.priority << 16) | _ETH_P_ALL_BE
    body = _TCMSG.pack(socket.AF_UNSPEC, f.ifindex, f.handle, f.direction.value, info) + _attr(
        _TCA_KIND, b"bpf\0"
    )
    _delete(_RTM_DELTFILTER, body)


def remove_stale(ifindex: int) -> list[Filter]:
    """Remove shadowtap filters whose owning process is gone; return them."""
    removed = []
    for direction in Direction:
        for f in list_filters(ifindex, direction):
            owner = f.owner
            if owner is not None and process_start(owner[0]) != owner[1]:
                delete_filter(f)
                removed.append(f)
    return removed
