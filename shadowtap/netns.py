"""Network namespaces and veth pairs: the lab's hosts and the tests' topology.

A ``Topology`` creates namespaces named ``<prefix>-<host>`` and veth links between them, with
addresses only inside those namespaces, and removes everything it made on exit (also what a crashed
earlier run with the same prefix left behind: ``remove_stale``). Every command goes through
``ip netns exec``, so nothing here can send traffic outside the namespaces it made.

Needs root and iproute2.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from shadowtap.errors import PrerequisiteError, ShadowtapError

if TYPE_CHECKING:
    from typing_extensions import Self


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise ShadowtapError(
            f"ip {' '.join(args)} failed: {proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc


def check_prerequisites() -> None:
    if os.geteuid() != 0:
        raise PrerequisiteError("network namespaces need root", hint="run as root (sudo)")
    if shutil.which("ip") is None:
        raise PrerequisiteError(
            "the ip command (iproute2) is missing", hint="apt-get install iproute2"
        )


def list_namespaces() -> list[str]:
    proc = _ip("netns", "list", check=False)
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def remove_stale(prefix: str) -> list[str]:
    """Delete every namespace named ``<prefix>-*`` (their veth ends go with them)."""
    removed = []
    for ns in list_namespaces():
        if ns.startswith(prefix + "-"):
            _ip("netns", "del", ns, check=False)
            removed.append(ns)
    return removed


@dataclass
class Host:
    """One namespace. ``addr`` is its first address (set by ``Topology.link``)."""

    ns: str
    addrs: dict[str, str] = field(default_factory=dict)  # interface -> address (no prefix length)

    @property
    def addr(self) -> str:
        return next(iter(self.addrs.values()))

    def cmd(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside this namespace."""
        return ["ip", "netns", "exec", self.ns, *argv]

    def run(
        self, argv: Sequence[str], *, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self.cmd(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise ShadowtapError(
                f"in {self.ns}: {' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}"
            )
        return proc

    def popen(self, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.cmd(argv), **kwargs)  # type: ignore[call-overload]


class Topology:
    """Namespaces and veth links, removed on ``close`` (or leaving the ``with`` block).

    >>> with Topology("st-test") as topo:                         # doctest: +SKIP
    ...     client, server = topo.host("client"), topo.host("server")
    ...     topo.link(client, server, "10.250.1.1", "10.250.1.2")
    """

    def __init__(self, prefix: str) -> None:
        check_prerequisites()
        self.prefix = prefix
        self.hosts: dict[str, Host] = {}
        self._links = 0
        remove_stale(prefix)

    def host(self, name: str) -> Host:
        ns = f"{self.prefix}-{name}"
        _ip("netns", "add", ns)
        host = Host(ns)
        self.hosts[name] = host
        host.run(["ip", "link", "set", "lo", "up"])
        return host

    def link(
        self,
        a: Host,
        b: Host,
        addr_a: str,
        addr_b: str,
        *,
        prefixlen: int = 24,
        mtu: int | None = None,
    ) -> tuple[str, str]:
        """A veth pair between ``a`` and ``b`` with the given addresses; returns the interface
        names (in ``a``, in ``b``). Interface names are short (15 characters at most)."""
        self._links += 1
        tag = f"{os.getpid() % 100000}x{self._links}"  # unique across concurrent runs
        if_a, if_b = f"sta{tag}", f"stb{tag}"
        _ip("link", "add", if_a, "type", "veth", "peer", "name", if_b)
        try:
            _ip("link", "set", if_a, "netns", a.ns)
            _ip("link", "set", if_b, "netns", b.ns)
        except ShadowtapError:
            _ip("link", "del", if_a, check=False)
            raise
        for host, ifname, addr in ((a, if_a, addr_a), (b, if_b, addr_b)):
            host.run(["ip", "addr", "add", f"{addr}/{prefixlen}", "dev", ifname])
            if mtu:
                host.run(["ip", "link", "set", ifname, "mtu", str(mtu)])
            host.run(["ip", "link", "set", ifname, "up"])
            host.addrs[ifname] = addr
        return if_a, if_b

    def route(self, host: Host, dest: str, via: str) -> None:
        host.run(["ip", "route", "add", dest, "via", via])

    def forward(self, host: Host) -> None:
        """Let ``host`` route between its interfaces (inside its namespace only)."""
        host.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])

    def close(self) -> None:
        for host in self.hosts.values():
            _ip("netns", "del", host.ns, check=False)
        self.hosts.clear()
        remove_stale(self.prefix)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
