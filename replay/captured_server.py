"""Is this the captured server? The one answer, for replay and the mirror alike.

Sending captured traffic back into the server it was captured from doubles that server's load,
and in the live mirror it loops (the mirror captures its own copies: one request became 34,350
in issue 12). Both commands ask the same question of the same rules:

- addresses are normalised before they are compared: an IPv4-mapped IPv6 address is its IPv4
  address (``::ffff:127.0.0.1``, ``::ffff:7f00:1`` are ``127.0.0.1``), a scope is dropped;
- this host is every loopback address, the unspecified addresses (``0.0.0.0``, ``::``: a connect
  to them reaches this host; ``0`` resolves to ``0.0.0.0``), and every address of every
  interface of this network namespace (``ip -j addr``, plus what this host's name resolves to);
- two endpoints are the same server when their ports are equal and their addresses are equal or
  both this host (a server listening on the wildcard address answers on all of them);
- the target's host name is resolved to every address it has, and the answer is confirmed on each
  connection's real peer (``getpeername`` right after the connect, before a byte is sent:
  :meth:`ServerCheck.on_connect`, the replay client's hook), so a name, a NAT rule or a resolver
  that answers differently later cannot get past it.

The mirror recognises the copies it sends, when its capture sees them, by their local ports
(:class:`OwnPorts`), never by comparing address strings.

Pure but for :meth:`ThisHost.discover` (runs ``ip``, resolves this host's name) and the socket
calls in the hooks. Costs: a check is a dict lookup once a server was seen (the answer is cached,
and the cache emptied when a new peer is confirmed); a new server is compared with each target
endpoint, O(endpoints).
"""

from __future__ import annotations

import ipaddress
import json
import mmap
import socket
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from shadowtap.errors import ShadowtapError
from shadowtap.records import parse_endpoint

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_MAX_SERVERS = 10_000  # captured servers remembered for the peer check (a capture has few)


def normalise(ip: str | IPAddress) -> IPAddress | None:
    """``ip`` as the address it reaches: brackets and scope dropped, IPv4-mapped IPv6 as IPv4.
    None for what is not an address literal."""
    if isinstance(ip, str):
        text = ip.strip().strip("[]").split("%", 1)[0]
        try:
            addr: IPAddress = ipaddress.ip_address(text)
        except ValueError:
            return None
    else:
        addr = ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A normalised (address, port)."""

    ip: IPAddress
    port: int

    @classmethod
    def of(cls, ip: str | IPAddress, port: int) -> Endpoint | None:
        addr = normalise(ip)
        return None if addr is None else cls(addr, port)

    @classmethod
    def parse(cls, endpoint: str) -> Endpoint | None:
        """``ip:port`` or ``[v6]:port`` (the records' form); None when it is not one."""
        try:
            ip, port = parse_endpoint(endpoint)
        except ValueError:
            return None
        return cls.of(ip, port)

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if self.ip.version == 6 else f"{self.ip}:{self.port}"


@dataclass(frozen=True, slots=True)
class ThisHost:
    """The addresses that reach this host (normalised); loopback and unspecified ones always do."""

    addresses: frozenset[IPAddress] = frozenset()

    @classmethod
    def discover(cls) -> ThisHost:
        """Every address of every interface of this network namespace (``ip -j addr``; none when
        ``ip`` is missing: loopback and unspecified still count) and what this host's name
        resolves to."""
        found: set[IPAddress] = set()
        try:
            proc = subprocess.run(
                ["ip", "-j", "addr", "show"], capture_output=True, text=True, timeout=5, check=False
            )
            links = json.loads(proc.stdout or "[]")
        except (OSError, ValueError, subprocess.TimeoutExpired):
            links = []
        texts = [a.get("local", "") for link in links for a in link.get("addr_info", ())]
        try:
            infos = socket.getaddrinfo(socket.gethostname(), None, type=socket.SOCK_STREAM)
            texts.extend(str(info[4][0]) for info in infos)
        except (OSError, UnicodeError):
            pass
        for text in texts:
            addr = normalise(text)
            if addr is not None:
                found.add(addr)
        return cls(frozenset(found))

    def has(self, addr: IPAddress) -> bool:
        return addr.is_loopback or addr.is_unspecified or addr in self.addresses


def same_server(a: Endpoint, b: Endpoint, host: ThisHost) -> bool:
    """Whether ``a`` and ``b`` reach the same server (normalised endpoints; see the module doc)."""
    return a.port == b.port and (a.ip == b.ip or (host.has(a.ip) and host.has(b.ip)))


def resolve(host: str, port: int) -> frozenset[Endpoint]:
    """Every endpoint ``host:port`` resolves to (OSError when it does not)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    out = {Endpoint.of(str(info[4][0]), int(info[4][1])) for info in infos}
    return frozenset(e for e in out if e is not None)


class ServerCheck:
    """The refusal to send into the captured server: ``check(server)`` for each captured server
    (raises ``refusal(target, server)`` when it is the target), ``on_connect(sock)`` for each
    connection to the target (the real peer joins the target's endpoints, and raises when a
    server seen so far is it). Mutable (it learns peers and servers); one per run, used from one
    thread (the event loop's), shared by the Policy and the client."""

    def __init__(
        self,
        targets: Iterable[Endpoint],
        refusal: Callable[[Endpoint, Endpoint], ShadowtapError],
        *,
        host: ThisHost | None = None,
        servers: Iterable[Endpoint] = (),
    ) -> None:
        self.host = host if host is not None else ThisHost.discover()
        self.targets: set[Endpoint] = set(targets)
        self._refusal = refusal
        self._servers: set[Endpoint] = set(servers)  # captured servers seen (bounded)
        self._ok: dict[str, bool] = {}  # server text -> checked and not the target

    def check(self, server: str) -> None:
        """Raise when the captured ``server`` (``ip:port``) is one of the target's endpoints."""
        if server in self._ok:
            return
        ep = Endpoint.parse(server)
        if ep is not None:
            self._check(ep)
            if len(self._servers) < _MAX_SERVERS:
                self._servers.add(ep)
        if len(self._ok) >= _MAX_SERVERS:
            self._ok.clear()
        self._ok[server] = True

    def check_endpoint(self, ep: Endpoint) -> None:
        self._check(ep)
        if len(self._servers) < _MAX_SERVERS:
            self._servers.add(ep)

    def _check(self, ep: Endpoint) -> None:
        for t in self.targets:
            if same_server(ep, t, self.host):
                raise self._refusal(t, ep)

    def add_peer(self, sockaddr: tuple[Any, ...]) -> None:
        """A connection's real peer (``getpeername()``): refused when it is a server seen so far;
        else one of the target's endpoints from now on."""
        peer = Endpoint.of(str(sockaddr[0]), int(sockaddr[1]))
        if peer is None or peer in self.targets:
            return
        for s in self._servers:
            if same_server(s, peer, self.host):
                raise self._refusal(peer, s)
        self.targets.add(peer)
        self._ok.clear()  # servers passed against the old endpoints are checked again

    def on_connect(self, sock: socket.socket) -> None:
        """The replay client's hook, right after the connect and before any byte is sent."""
        self.add_peer(sock.getpeername())


class OwnPorts:
    """The local ports of this process's connections to the target, in an anonymous shared
    mapping made before the mirror forks its capture: the capture recognises the copies the
    mirror sends (when the target is reached through the captured interface, on a captured port)
    by their client endpoint, an address of this host on one of these ports. A port stays marked
    for the run (64 KiB, one byte a port): a request captured after its connection closed is
    still recognised; a client of the primary on this host that gets the same ephemeral port
    later is skipped as own traffic too (counted, not silent)."""

    def __init__(self, host: ThisHost) -> None:
        self.host = host
        self._ports = mmap.mmap(-1, 65536)  # MAP_SHARED | MAP_ANONYMOUS: shared across fork

    def on_connect(self, sock: socket.socket) -> None:
        self._ports[int(sock.getsockname()[1])] = 1

    def __contains__(self, client: object) -> bool:
        """Whether the captured ``client`` endpoint is one of our own connections."""
        if not isinstance(client, str):
            return False
        # The port's byte first (a slice and an int, per captured request): most clients are
        # not ours, and only a marked port is worth parsing the whole endpoint for.
        try:
            if self._ports[int(client[client.rindex(":") + 1 :])] != 1:
                return False
        except (ValueError, IndexError):
            return False
        ep = Endpoint.parse(client)
        return ep is not None and self._ports[ep.port] == 1 and self.host.has(ep.ip)
