"""Replay of captured gRPC calls to the shadow (h2c, or TLS for an ``https://`` target).

Why grpcio's generic calls and not an HTTP/2 library over asyncio: grpcio is the reference gRPC
implementation (its C core does HTTP/2 framing, flow control, keepalive, TLS and the call
lifecycle), so the shadow receives what a real gRPC client sends; ``channel.stream_stream(path)``
without serializers moves raw message bytes both ways. On the wire a unary, client-, server- or
bidi-streaming call is the same HTTP/2 stream (the kind is a property of the service definition,
not of the bytes), so every call is replayed as ``stream_stream``: the captured messages are
sent in order, the request side is half-closed, every answer message is read. What is lost:
grpcio chooses its own HTTP/2 settings and header order, and cannot send plain (non-gRPC) HTTP/2.

``GrpcSender`` has the ``Sender``'s interface (``start``, ``submit``, ``outstanding``, ``drain``,
``close``, ``endpoints``, ``clock``, ``stats``), so replay/run.py drives both; ``Router`` sends
each prepared request to the one that speaks its protocol. Per captured connection (a lane) one
channel with its own HTTP/2 connection (a local subchannel pool), calls started in capture order
(they multiplex, as they did on the captured connection); at most ``concurrency`` in flight.

Results: ``response`` is the answer as an HTTP/2 exchange would record it (status 200, the initial
and trailing metadata as headers, ``grpc-status``/``grpc-message`` last, the body the
length-prefixed messages), ``grpc`` holds the messages (at most ``max_body`` bytes kept) and the
status. A status other than OK is an answer, not an error; ``error`` is set only when no answer
came: ``refused`` (cannot connect), ``timeout`` (our deadline), ``reset`` (the connection broke).

TLS: grpcio always verifies the server's certificate and has no switch to skip it. ``--ca`` is
its root; ``--insecure`` is done by trusting, for the whole run, the certificate the target
presents to a first plain TLS connection (fetched once, the name checked against it overridden
with one of its own names): any server is accepted, as the flag says, at the cost of one extra
handshake. A leaf that does not anchor itself (a chain whose CA grpcio cannot see) still fails
verification; the error says to pass its CA with ``--ca``.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import struct
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import astuple
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from shadowtap.records import GrpcCall, GrpcMessage, Response, Result, ResultError, header_value
from shadowtap.replay.client import Clock, Sender, SenderStats, TlsOptions
from shadowtap.replay.client import Submitted as _Job
from shadowtap.replay.h2_client import H2Sender
from shadowtap.replay.policy import Prepared, Target
from shadowtap.wire.grpc import MessageSplitter, is_grpc_content_type, parse_path

__all__ = ["GrpcSender", "Router", "is_grpc_request", "split_request"]

# Request headers that are the transport's, not the call's metadata (grpcio sets its own).
_NOT_METADATA = frozenset(
    {
        "host",
        "content-length",
        "content-type",
        "te",
        "user-agent",
        "grpc-encoding",
        "grpc-accept-encoding",
        "grpc-timeout",
        "connection",
        "transfer-encoding",
        "accept-encoding",
    }
)
_COMPRESSION = {"gzip": grpc.Compression.Gzip, "deflate": grpc.Compression.Deflate}


def is_grpc_request(prepared: Prepared) -> bool:
    return is_grpc_content_type(header_value(prepared.headers, "content-type"))


def split_request(prepared: Prepared, budget: int = 64 << 20) -> tuple[list[bytes], list[str]]:
    """The captured request's messages (decompressed per ``grpc-encoding``) and anomalies."""
    sp = MessageSplitter(budget)
    sp.feed(prepared.body)
    sp.finish()
    msgs = [m.data for m in sp.records(header_value(prepared.headers, "grpc-encoding"), budget)]
    return msgs, sp.anomalies


def _metadata(prepared: Prepared) -> list[tuple[str, str | bytes]]:
    out: list[tuple[str, str | bytes]] = []
    for name, value in prepared.headers:
        lname = name.lower()
        if lname.startswith(":") or lname in _NOT_METADATA:
            continue
        if lname.endswith("-bin"):
            try:
                out.append((lname, base64.b64decode(value + "=" * (-len(value) % 4))))
            except ValueError:
                continue
        else:
            out.append((lname, value))
    return out


def _frame(msg: bytes) -> bytes:
    return struct.pack(">BI", 0, len(msg)) + msg


class GrpcSender:
    """Sends prepared gRPC calls to ``target`` (see the module docstring)."""

    def __init__(
        self,
        target: Target,
        *,
        concurrency: int = 64,
        timeout: float = 10.0,
        connect_timeout: float = 5.0,
        max_body: int = 1 << 20,
        max_channels: int = 256,
        clock: Clock | None = None,
        tls: TlsOptions | None = None,
    ) -> None:
        self.target = target
        self.tls = tls
        self.concurrency = concurrency
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_body = max_body
        self.max_channels = max_channels
        self.clock = clock or Clock()
        self.addresses: list[tuple[int, tuple]] = []
        self._channels: OrderedDict[str, grpc.aio.Channel] = OrderedDict()
        self._pending: deque[_Job] = deque()
        self._in_flight = 0
        self._sent = 0
        self._opened = 0
        self._tasks: set[asyncio.Task] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._trust: (
            asyncio.Future[tuple[grpc.ChannelCredentials, list[tuple[str, Any]]]] | None
        ) = None

    async def start(self) -> None:
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def endpoints(self) -> frozenset[tuple[str, int]]:
        return frozenset()

    @property
    def outstanding(self) -> int:
        return self._in_flight + len(self._pending)

    def stats(self) -> SenderStats:
        return SenderStats(self._sent, self._in_flight, len(self._pending), self._opened, 0)

    async def _channel(self, lane: str) -> grpc.aio.Channel:
        ch = self._channels.get(lane)
        if ch is not None:
            self._channels.move_to_end(lane)
            return ch
        host = f"[{self.target.host}]" if ":" in self.target.host else self.target.host
        addr = f"{host}:{self.target.port}"
        # A local subchannel pool: this lane gets its own HTTP/2 connection, as in the capture.
        options: list[tuple[str, Any]] = [
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.enable_retries", 0),
            ("grpc.max_receive_message_length", -1),
            ("grpc.max_send_message_length", -1),
        ]
        if self.target.scheme == "https":
            if self._trust is None:
                self._trust = asyncio.ensure_future(self._credentials())
            try:
                creds, extra = await asyncio.shield(self._trust)
            except BaseException:
                self._trust = None  # the next call tries again
                raise
            ch = self._channels.get(lane)  # another call of this lane may have made it meanwhile
            if ch is not None:
                return ch
            ch = grpc.aio.secure_channel(addr, creds, options=options + extra)
        else:
            ch = grpc.aio.insecure_channel(addr, options=options)
        self._opened += 1
        self._channels[lane] = ch
        while len(self._channels) > self.max_channels:
            _, old = self._channels.popitem(last=False)
            self._spawn(old.close(grace=self.timeout))
        return ch

    async def _credentials(self) -> tuple[grpc.ChannelCredentials, list[tuple[str, Any]]]:
        """The channel credentials of an https target: ``--ca`` (or the system's CAs), or with
        ``--insecure`` the certificate the target presents (see the module docstring)."""
        if self.tls is None or not self.tls.insecure:
            ca = self.tls.ca_file if self.tls is not None else None
            return grpc.ssl_channel_credentials(
                root_certificates=Path(ca).read_bytes() if ca else None
            ), []
        pem = await asyncio.to_thread(
            ssl.get_server_certificate,
            (self.target.host, self.target.port),
            timeout=self.connect_timeout,
        )
        root = pem.encode("ascii")
        return grpc.ssl_channel_credentials(root_certificates=root), [
            ("grpc.ssl_target_name_override", certificate_name(root))
        ]

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def submit(
        self,
        prepared: Prepared,
        *,
        scheduled: float,
        copy: int,
        on_result: Callable[[Result], None],
    ) -> None:
        """Queue a call; it starts at once when fewer than ``concurrency`` are in flight."""
        self._pending.append(_Job(prepared, scheduled, copy, on_result, f"{prepared.lane}#{copy}"))
        self._idle.clear()
        self._pump()

    def _pump(self) -> None:
        while self._pending and self._in_flight < self.concurrency:
            job = self._pending.popleft()
            self._in_flight += 1
            self._spawn(self._call(job))

    async def _call(self, job: _Job) -> None:
        try:
            result = await self._run(job)
        except Exception as exc:  # noqa: BLE001 - a call's failure is its Result, never the run's
            result = self._failed(job, self.clock.now(), "other", repr(exc))
        self._in_flight -= 1
        self._sent += 1
        try:
            job.on_result(result)
        finally:
            self._pump()
            if not self.outstanding:
                self._idle.set()

    def _failed(self, job: _Job, sent: float, kind: str, message: str) -> Result:
        return Result(
            job.prepared.exchange_id,
            self._url(job.prepared),
            job.scheduled,
            sent,
            None,
            error=ResultError(kind, message),
            copy=job.copy,
        )

    def _url(self, prepared: Prepared) -> str:
        return self.target.base + prepared.target

    async def _run(self, job: _Job) -> Result:
        p = job.prepared
        msgs, _ = split_request(p)
        names = parse_path(p.target) or ("", "")
        encoding = (header_value(p.headers, "grpc-encoding") or "identity").lower()
        try:
            channel = await self._channel(job.lane)
        except ConnectionRefusedError as exc:
            return self._failed(job, self.clock.now(), "refused", str(exc))
        except (OSError, ssl.SSLError) as exc:
            return self._failed(
                job, self.clock.now(), "other", f"TLS: cannot read the target's certificate: {exc}"
            )
        sent_mono = time.monotonic()
        sent = self.clock.to_epoch(sent_mono)
        call = channel.stream_stream(p.target)(
            iter(msgs),
            metadata=_metadata(p) or None,
            timeout=self.timeout + self.connect_timeout,
            compression=_COMPRESSION.get(encoding),
            wait_for_ready=False,
        )
        kept: list[GrpcMessage] = []
        budget = self.max_body
        count = 0
        first: float | None = None
        body = bytearray()
        body_len = 0
        try:
            async for m in call:
                now = time.monotonic()
                if first is None:
                    first = now
                count += 1
                framed = _frame(m)
                body_len += len(framed)
                room = self.max_body - len(body)
                if room > 0:
                    body += framed[:room]
                keep = m[: max(budget, 0)]
                if keep or budget > 0:
                    kept.append(GrpcMessage(keep, len(m), False, len(keep) < len(m)))
                budget -= len(keep)
        except grpc.aio.AioRpcError:
            pass  # the status below says what happened
        except asyncio.CancelledError:
            call.cancel()
            raise
        code = await call.code()
        details = await call.details()
        end = time.monotonic()
        if (
            code == grpc.StatusCode.UNAVAILABLE
            and first is None
            and "handshake" in (details or "").lower()
        ):
            hint = " (pass the target's CA with --ca)" if self.target.scheme == "https" else ""
            return self._failed(job, sent, "other", f"TLS: {details}{hint}")
        if code == grpc.StatusCode.UNAVAILABLE and first is None and _no_connection(details):
            return self._failed(job, sent, "refused", details or "unavailable")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and first is None:
            return self._failed(job, sent, "timeout", f"no answer within {self.timeout:g} s")
        initial = await call.initial_metadata() or ()
        trailing = await call.trailing_metadata() or ()
        headers = [(":status", "200"), ("content-type", "application/grpc")]
        headers += [(k, _text(v)) for k, v in initial]
        headers += [(k, _text(v)) for k, v in trailing]
        headers.append(("grpc-status", str(code.value[0])))
        if details:
            headers.append(("grpc-message", details))
        ts = self.clock.to_epoch(first if first is not None else end)
        resp = Response(
            ts=ts,
            end_ts=max(ts, self.clock.to_epoch(end)),
            version="HTTP/2",
            headers=tuple(headers),
            body=bytes(body),
            body_len=body_len,
            body_truncated=body_len > len(body),
            decoded_len=None if body_len > len(body) else body_len,
            status=200,
            reason="",
        )
        result_call = GrpcCall(
            names[0], names[1], (), tuple(kept), len(msgs), count, code.value[0], details or None
        )
        ttfb = round(((first if first is not None else end) - sent_mono) * 1000.0, 3)
        total = round((end - sent_mono) * 1000.0, 3)
        return Result(
            p.exchange_id,
            self._url(p),
            job.scheduled,
            sent,
            resp,
            ttfb,
            total,
            None,
            job.copy,
            grpc=result_call,
        )

    async def drain(self) -> None:
        while self.outstanding:
            await self._idle.wait()

    def close(self) -> None:
        """Cancel the calls in flight; ``aclose`` then closes the channels."""
        for task in list(self._tasks):
            task.cancel()

    async def aclose(self) -> None:
        self.close()
        channels = list(self._channels.values())
        self._channels.clear()
        for ch in channels:
            await ch.close(grace=None)


def _no_connection(details: str | None) -> bool:
    d = (details or "").lower()
    return "connect" in d or "refused" in d or "unreachable" in d


def certificate_name(pem: bytes) -> str:
    """A name the certificate ``pem`` is valid for (its first DNS or IP subject alternative name,
    else its common name; a wildcard's ``*`` made a label), for grpcio's name check."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_pem_x509_certificate(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [
            *san.get_values_for_type(x509.DNSName),
            *map(str, san.get_values_for_type(x509.IPAddress)),
        ]
    except x509.ExtensionNotFound:
        names = []
    names += [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if not names:
        raise ssl.SSLError(
            "the target's certificate names no host (no subject alternative name, no CN)"
        )
    return names[0].replace("*", "shadowtap", 1)


def _text(v: str | bytes) -> str:
    return base64.b64encode(v).decode("ascii").rstrip("=") if isinstance(v, bytes) else v


class Router:
    """The replay's sender: gRPC calls to a ``GrpcSender``, other requests captured as HTTP/2 to
    an ``H2Sender`` (replay/h2_client.py, connecting through ``http``), the rest to the HTTP/1.x
    ``Sender`` (one clock for all, so ``scheduled`` and ``sent`` stay comparable)."""

    def __init__(self, http: Sender, grpc_sender: GrpcSender | None = None) -> None:
        self.http = http
        # By default the gRPC sender gets the HTTP/1.x sender's target, bounds and TLS options.
        self.grpc = grpc_sender or GrpcSender(
            http.target,
            concurrency=http.concurrency,
            timeout=http.timeout,
            connect_timeout=http.connect_timeout,
            max_body=http.max_body,
            tls=http.tls,
        )
        self.h2 = H2Sender(http)
        self.grpc.clock = http.clock
        self.clock = http.clock
        self.target = http.target
        self._senders = (http, self.grpc, self.h2)

    async def start(self) -> None:
        for s in self._senders:
            await s.start()

    async def check_reachable(self) -> None:
        await self.http.check_reachable()

    @property
    def endpoints(self) -> frozenset[tuple[str, int]]:
        return self.http.endpoints

    @property
    def outstanding(self) -> int:
        return sum(s.outstanding for s in self._senders)

    def stats(self) -> SenderStats:
        rows = [astuple(s.stats()) for s in self._senders]
        return SenderStats(*(sum(col) for col in zip(*rows, strict=True)))

    def submit(
        self,
        prepared: Prepared,
        *,
        scheduled: float,
        copy: int,
        on_result: Callable[[Result], None],
    ) -> None:
        # gRPC is HTTP/2 only: an HTTP/1.x request goes to the HTTP/1.x client whatever its
        # Content-Type says, without a scan of its headers (0.15-0.35 us a request).
        sender: Sender | GrpcSender | H2Sender
        if not prepared.http2:
            sender = self.http
        elif is_grpc_request(prepared):
            sender = self.grpc
        else:
            sender = self.h2
        sender.submit(prepared, scheduled=scheduled, copy=copy, on_result=on_result)

    async def drain(self) -> None:
        await asyncio.gather(*(s.drain() for s in self._senders))

    def close(self) -> None:
        for s in self._senders:
            s.close()

    async def aclose(self) -> None:
        """Close the gRPC channels (after ``close``; the other senders need no await)."""
        await self.grpc.aclose()
