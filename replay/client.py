"""The async client that sends prepared requests to the target and turns each answer into a
``Result`` whose response has the shape of a captured one.

Hot path: one asyncio ``Protocol`` per TCP connection with llhttp (httptools) parsing the
responses; no per-request task, no stream objects. The ``Sender`` is callback-driven (``submit``
never blocks and calls ``on_result`` when the request is done) with ``send`` as the awaitable
wrapper for callers that handle one request at a time (the live mirror).

Connections (one request in flight on each; no pipelining):
  - per-connection mode (default): requests of one captured connection (``Prepared.lane``, plus the
    copy number) go in order on one connection to the target; a lane waits for a free slot when
    ``concurrency`` requests are in flight. Idle lane connections beyond ``max_idle`` are closed,
    least recently used first, so a capture of many connections does not exhaust descriptors;
  - pool mode: every request is independent and takes any idle connection of a pool of at most
    ``concurrency`` connections.
A request that finds its reused connection closed by the target before any byte of the answer
(a keep-alive race) is retried once on a fresh connection. Errors are classified as ``timeout``
(connect or answer), ``refused``, ``reset`` (closed or reset before the answer was complete),
``protocol`` (unparsable answer) or ``other``.

Bounds on what a hostile or broken target can make the client hold (``ResponseLimits``): the
head (status line and headers, interim answers included) in bytes, the number of headers, the
reason phrase's length and the number of interim (1xx) answers before the final one. Past any of
them the request ends with a ``protocol`` error and its connection is closed; the run goes on.
Bytes are counted before they are parsed, so memory is O(max_head + one read) a connection
whatever the target sends; a target that trickles is ended by the timeout.

Before a request is written its head is checked once more (``records.request_line_problem``):
a method or header name that is no token, CR/LF/NUL in the target or a value is never written
(an ``other`` error "not sent"), whatever built the request.

Times: ``Clock`` maps the monotonic clock to epoch seconds once, so ``scheduled`` and ``sent``
are comparable to the microsecond and immune to wall-clock steps during a run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import socket
import ssl as ssl_module
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httptools

from shadowtap.errors import ShadowtapError, TargetError
from shadowtap.records import Response, Result, ResultError, request_line_problem
from shadowtap.replay.policy import Prepared, Target
from shadowtap.wire.content import decoded_length
from shadowtap.wire.genai import is_stream_type


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """How an https:// target is trusted: the system's CAs (default), ``ca_file`` instead, or no
    verification at all (``insecure``: the CLI says so loudly). SNI is the target's host name
    (none for an IP address, as TLS wants); the Host header is the request's own."""

    ca_file: str | None = None
    insecure: bool = False


class _ResumingContext(ssl_module.SSLContext):
    """An SSLContext that resumes the last TLS session it saw for a server name on every new
    connection (asyncio's create_connection takes no ``session``; wrap_bio is where it goes). A
    reconnect then costs an abbreviated handshake instead of a full one."""

    sessions: dict[str | None, ssl_module.SSLSession]

    def wrap_bio(
        self,
        incoming,
        outgoing,
        server_side=False,  # type: ignore[override]
        server_hostname=None,
        session=None,
    ):
        session = session or self.sessions.get(server_hostname)
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)


def tls_context(
    opts: TlsOptions | None, alpn: tuple[str, ...] = ("http/1.1",)
) -> ssl_module.SSLContext:
    """The client context of an https target (verification on unless ``opts.insecure``),
    offering ``alpn`` (replay/h2_client.py offers h2 alone)."""
    opts = opts or TlsOptions()
    ctx = _ResumingContext(ssl_module.PROTOCOL_TLS_CLIENT)
    ctx.sessions = {}
    if opts.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl_module.CERT_NONE
    elif opts.ca_file:
        try:
            ctx.load_verify_locations(cafile=opts.ca_file)
        except (OSError, ssl_module.SSLError) as exc:
            from shadowtap.errors import InputError

            raise InputError(f"cannot load the CA file: {exc}", field="ca") from exc
    else:
        ctx.load_default_certs()
    ctx.set_alpn_protocols(list(alpn))
    return ctx


@dataclass(frozen=True, slots=True)
class ResponseLimits:
    """Caps on one answer's head (docs/security.md lists them with their defaults). Generous for
    any real service (nginx's proxy buffer is 4-8 KiB, curl's header cap 100 KiB), small enough
    that a connection costs at most ~``max_head`` of memory."""

    max_head: int = 256 << 10  # bytes of status lines and headers, interim answers included
    max_headers: int = 500  # header fields of one answer
    max_reason: int = 1024  # bytes of the reason phrase
    max_interim: int = 16  # 1xx answers before the final one

    def __post_init__(self) -> None:
        for name in ("max_head", "max_headers", "max_reason", "max_interim"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")


class Clock:
    """Epoch seconds from the monotonic clock: ``now()`` never steps back during a run."""

    __slots__ = ("_mono0", "_wall0")

    def __init__(self) -> None:
        self._mono0 = time.monotonic()
        self._wall0 = time.time()

    def now(self) -> float:
        return self._wall0 + (time.monotonic() - self._mono0)

    def to_epoch(self, mono: float) -> float:
        return self._wall0 + (mono - self._mono0)


class Submitted:
    """A request given to a sender: the prepared request, when it was due, its copy number, whom
    to tell, and its lane (the gRPC and HTTP/2 senders' job; this module's ``_Job`` keeps its own
    flat slots: one ``__init__`` call a request on the hot path)."""

    __slots__ = ("copy", "lane", "on_result", "prepared", "scheduled")

    def __init__(
        self,
        prepared: Prepared,
        scheduled: float,
        copy: int,
        on_result: Callable[[Result], None],
        lane: Any,
    ) -> None:
        self.prepared = prepared
        self.scheduled = scheduled
        self.copy = copy
        self.on_result = on_result
        self.lane = lane


class _Job:
    """One request on its way: the prepared request and what happened to it so far."""

    __slots__ = (
        "attempts",
        "body",
        "body_len",
        "chunks",
        "coding",
        "copy",
        "first_mono",
        "fresh",
        "head_bytes",
        "headers",
        "in_final",
        "interim",
        "lane",
        "on_result",
        "prepared",
        "reason",
        "received",
        "rx_mono",
        "scheduled",
        "sent_mono",
        "status",
        "version",
        "violation",
    )

    def __init__(
        self,
        prepared: Prepared,
        scheduled: float,
        copy: int,
        on_result: Callable[[Result], None],
        lane: _Lane | None,
    ) -> None:
        self.prepared = prepared
        self.scheduled = scheduled
        self.copy = copy
        self.on_result = on_result
        self.lane = lane
        self.sent_mono = 0.0
        self.first_mono = 0.0
        self.received = 0
        self.attempts = 0
        self.fresh = False  # start a new target connection for it (a new captured connection)
        self.rx_mono = 0.0  # when the socket read being parsed arrived (streamed bodies' times)
        # The answer's fields are set by reset_answer() when the request is written.

    def reset_answer(self) -> None:
        self.status = 0
        self.reason = b""
        self.version = "HTTP/1.1"
        self.headers: list[tuple[bytes, bytes]] = []  # raw; decoded once, when the answer is done
        self.coding: bytes | None = None  # Content-Encoding
        self.body = bytearray()
        self.body_len = 0
        self.in_final = False
        # A streamed body (text/event-stream, NDJSON): (body length so far, monotonic arrival
        # time) per socket read, for time to first token; None for other bodies (no cost).
        self.chunks: list[tuple[int, float]] | None = None
        self.head_bytes = 0  # bytes received before the final answer's head was complete
        self.interim = 0  # 1xx answers so far
        self.violation: str | None = None  # a ResponseLimits cap passed: the protocol error


class _Lane:
    """The replay of one captured connection: its target connection and the requests waiting."""

    __slots__ = ("busy", "conn", "key", "last_index", "queue")

    def __init__(self, key: str) -> None:
        self.key = key
        self.conn: _Conn | None = None
        self.queue: deque[_Job] = deque()
        self.busy = False  # a job of this lane is in flight or the lane waits for a slot
        self.last_index = -1


class _Conn(asyncio.Protocol):
    """One TCP connection to the target. Invariant: at most one job in flight (``job``)."""

    def __init__(self, sender: Sender) -> None:
        self.sender = sender
        self.transport: asyncio.Transport | None = None
        self.job: _Job | None = None
        self.done = 0  # requests answered on this connection
        self.closed = False
        self.parser = httptools.HttpResponseParser(self)
        self.tls_ms: float | None = None  # its TLS handshake, reported with its first request

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        job = self.job
        if job is None:
            # Bytes nobody asked for: the connection cannot be trusted for the next request.
            self.close()
            return
        if job.received == 0:
            job.first_mono = job.rx_mono = time.monotonic()
        elif job.chunks is not None:
            job.rx_mono = time.monotonic()
        job.received += len(data)
        if not job.in_final:
            # Counted before parsing: the parser (and job.headers) never hold more than
            # max_head plus one read of the head.
            job.head_bytes += len(data)
            if job.head_bytes - len(data) > self.sender.limits.max_head:
                limit = self.sender.limits.max_head
                self._fail("protocol", f"response head longer than {limit} bytes")
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self.job is job:  # 101 Switching Protocols: the connection is no longer HTTP
                self._complete(keep=False)
            else:
                self.close()
        except httptools.HttpParserError as exc:
            if self.job is job:
                self._fail("protocol", f"unparsable response: {exc}")
            return
        if self.job is job and job.violation is not None:
            self._fail("protocol", job.violation)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        job = self.job
        if job is None:
            return
        names = {n.lower() for n, _v in job.headers}
        if job.in_final and b"content-length" not in names and b"transfer-encoding" not in names:
            self._complete(keep=False)  # a body delimited by the end of the connection
            return
        if job.received == 0 and self.done > 0 and job.attempts == 0:
            # The target closed an idle keep-alive connection as we reused it: retry once.
            self._detach(job)
            job.attempts += 1
            self.sender._reconnect(job)
            return
        if isinstance(exc, ConnectionResetError):
            self._fail("reset", "connection reset by the target")
        else:
            what = "before answering" if job.received == 0 else "in the middle of the response"
            self._fail("reset", f"connection closed by the target {what}")

    # -- httptools callbacks
    # A replaced parser (after a HEAD answer) may still call back with no job: ignored.
    # A cap passed sets ``violation`` and stops keeping; the job fails when its head completes or
    # after the read, whichever comes first (the parser cannot be stopped from a callback).
    def on_status(self, status: bytes) -> None:
        job = self.job
        if job is not None and job.violation is None:
            job.reason += status
            if len(job.reason) > self.sender.limits.max_reason:
                job.violation = f"reason phrase longer than {self.sender.limits.max_reason} bytes"
                job.reason = job.reason[: self.sender.limits.max_reason]

    def on_header(self, name: bytes, value: bytes) -> None:
        job = self.job
        if job is not None and job.violation is None:
            if len(job.headers) >= self.sender.limits.max_headers:
                job.violation = f"more than {self.sender.limits.max_headers} header fields"
                return
            job.headers.append((name, value))
            if len(name) == 16 and name.lower() == b"content-encoding":
                job.coding = value
            elif len(name) == 12 and name.lower() == b"content-type" and _stream_type(value):
                job.chunks = []

    def on_headers_complete(self) -> None:
        job = self.job
        if job is None:
            return
        if job.violation is not None:
            self._fail("protocol", job.violation)  # later callbacks of this read find no job
            return
        job.status = self.parser.get_status_code()
        job.version = "HTTP/" + self.parser.get_http_version()  # as captured: "HTTP/1.1"
        if 100 <= job.status < 200 and job.status != 101:
            # an interim answer (100 Continue, 103 Early Hints): the final one follows
            job.interim += 1
            if job.interim > self.sender.limits.max_interim:
                limit = self.sender.limits.max_interim
                self._fail("protocol", f"more than {limit} interim (1xx) answers")
            return
        job.in_final = True
        if job.prepared.is_head:
            # llhttp cannot be told the request was HEAD: the answer ends with its headers. The
            # parser is replaced, so it never reads a body that will not come.
            self.parser = httptools.HttpResponseParser(self)
            self._complete(keep=True)

    def on_body(self, body: bytes) -> None:
        job = self.job
        if job is None:
            return
        job.body_len += len(body)
        chunks = job.chunks
        if chunks is not None:  # one entry per socket read: pieces of one read share its time
            if chunks and chunks[-1][1] == job.rx_mono:
                chunks[-1] = (job.body_len, job.rx_mono)
            else:
                chunks.append((job.body_len, job.rx_mono))
        room = self.sender.max_body - len(job.body)
        if room > 0:
            job.body += body[:room] if len(body) > room else body

    def on_message_complete(self) -> None:
        job = self.job
        if job is None:
            return
        if not job.in_final:
            # The interim answer is dropped; its bytes still count against max_head.
            interim, head_bytes, violation = job.interim, job.head_bytes, job.violation
            job.reset_answer()
            job.interim, job.head_bytes, job.violation = interim, head_bytes, violation
            return
        self._complete(keep=job.status != 101 and self.parser.should_keep_alive())

    # -- jobs
    def start(self, job: _Job) -> None:
        """Send ``job``'s request now. The connection must be open and idle."""
        assert self.job is None and self.transport is not None
        self.job = job
        job.reset_answer()
        job.received = 0
        job.sent_mono = time.monotonic()
        self.sender._busy.add(self)
        self.transport.write(job.prepared.wire)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _detach(self, job: _Job) -> None:
        self.job = None
        self.sender._busy.discard(self)

    def _complete(self, keep: bool) -> None:
        job = self.job
        assert job is not None
        self._detach(job)
        self.done += 1
        end = time.monotonic()
        if not keep:
            self.close()
        self.sender._finish(job, self, end, None)

    def _fail(self, kind: str, message: str) -> None:
        job = self.job
        assert job is not None
        self._detach(job)
        self.close()
        self.sender._finish(job, self, time.monotonic(), ResultError(kind, message))


@dataclass(frozen=True, slots=True)
class SenderStats:
    sent: int
    in_flight: int
    queued: int
    connections_opened: int
    retries: int


class Sender:
    """Sends prepared requests to ``target``; at most ``concurrency`` in flight.

    Use from a running event loop: ``await start()`` (resolves the target), then ``submit`` /
    ``send``, then ``await drain()`` and ``close()``. Not thread-safe."""

    def __init__(
        self,
        target: Target,
        *,
        concurrency: int = 64,
        per_connection: bool = True,
        timeout: float = 10.0,
        connect_timeout: float = 5.0,
        max_body: int = 1 << 20,
        max_idle: int | None = None,
        clock: Clock | None = None,
        limits: ResponseLimits | None = None,
        on_connect: Callable[[socket.socket], None] | None = None,
        tls: TlsOptions | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.limits = limits or ResponseLimits()
        self.tls = tls
        self.target = target
        self.concurrency = concurrency
        self.per_connection = per_connection
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_body = max_body
        self.max_idle = max_idle if max_idle is not None else max(4 * concurrency, 256)
        self.clock = clock or Clock()
        # Called with each new connection's socket, connected, before a byte is sent (TLS
        # included); raising a ShadowtapError refuses it: the socket is closed, ``refused`` set
        # and every later connection refused too (replay/captured_server.py's peer check).
        self.on_connect = on_connect
        self.refused: ShadowtapError | None = None
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.addresses: list[tuple[int, tuple]] = []  # (family, sockaddr) of the target
        self._ssl: ssl_module.SSLContext | None = None
        self._in_flight = 0
        self._sent = 0
        self._opened = 0
        self._retries = 0
        self._lanes: dict[str, _Lane] = {}
        self._idle_lanes: OrderedDict[str, _Lane] = OrderedDict()
        self._waiting_lanes: deque[_Lane] = deque()
        self._pending: deque[_Job] = deque()  # pool mode
        self._idle: list[_Conn] = []  # pool mode
        self._all_done: asyncio.Event | None = None
        self._queued = 0
        # Connections with a request in flight, swept for timeouts every ``_sweep_every`` s: one
        # timer for all, instead of arming and cancelling one a request (a measurable share of
        # the per-request cost at tens of thousands a second). Timeouts fire up to that late.
        self._busy: set[_Conn] = set()
        self._sweep_every = min(0.05, timeout / 4)
        self._sweeper: asyncio.TimerHandle | None = None

    # -- life cycle
    async def start(self) -> None:
        """Resolve the target; raises TargetError when its name does not resolve."""
        self.loop = asyncio.get_running_loop()
        self._all_done = asyncio.Event()
        self._all_done.set()
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self._sweep_every, self._sweep)
        if self.target.scheme == "https" and self._ssl is None:
            self._ssl = tls_context(self.tls)
        try:
            infos = await self.loop.getaddrinfo(
                self.target.host, self.target.port, type=socket.SOCK_STREAM
            )
        except socket.gaierror as exc:
            raise TargetError(
                f"cannot resolve the target host {self.target.host!r}: {exc.strerror}"
            ) from exc
        self.addresses = [(fam, addr) for fam, _t, _p, _c, addr in infos]

    async def check_reachable(self) -> None:
        """Open and close one connection: a clear TargetError now beats every request failing."""
        conn = _Conn(self)
        try:
            await self._open(conn)
        except (OSError, asyncio.TimeoutError) as exc:
            _kind, message = classify(exc)
            hint = "is the shadow running and listening there?"
            if isinstance(exc, ssl_module.SSLCertVerificationError):
                hint = "pass the CA that signed its certificate with --ca (--insecure: any)"
            raise TargetError(
                f"cannot connect to the target {self.target.url}: {message}",
                hint=hint,
            ) from exc
        conn.close()

    @property
    def endpoints(self) -> frozenset[tuple[str, int]]:
        return frozenset((addr[0], addr[1]) for _fam, addr in self.addresses)

    def stats(self) -> SenderStats:
        return SenderStats(self._sent, self._in_flight, self._queued, self._opened, self._retries)

    @property
    def outstanding(self) -> int:
        """Requests submitted and not yet answered (in flight + queued)."""
        return self._in_flight + self._queued

    async def drain(self) -> None:
        """Wait until every submitted request is done."""
        assert self._all_done is not None
        while self.outstanding:
            self._all_done.clear()
            await self._all_done.wait()

    def _sweep(self) -> None:
        limit = time.monotonic() - self.timeout
        for conn in [c for c in self._busy if c.job is not None and c.job.sent_mono <= limit]:
            conn._fail("timeout", f"no complete answer within {self.timeout:g} s")
        self._sweeper = self.loop.call_later(self._sweep_every, self._sweep)

    def close(self) -> None:
        """Close every connection (requests still in flight are abandoned, not answered)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for lane in self._lanes.values():
            if lane.conn is not None:
                lane.conn.close()
        for conn in self._idle:
            conn.close()
        self._idle.clear()

    # -- submitting
    def submit(
        self,
        prepared: Prepared,
        *,
        scheduled: float,
        copy: int,
        on_result: Callable[[Result], None],
    ) -> None:
        """Queue ``prepared`` for sending; ``on_result`` gets its Result. Never blocks. A request
        whose head would not be one request on the wire is not sent: its Result (an ``other``
        error) comes at once. Cost of the check: O(bytes of the head)."""
        problem = request_line_problem(prepared.method, prepared.target, prepared.headers)
        if problem is not None:
            now = self.clock.now()
            on_result(
                Result(
                    prepared.exchange_id,
                    prepared.url,
                    scheduled,
                    now,
                    None,
                    None,
                    None,
                    ResultError("other", f"not sent: {problem}"),
                    copy,
                )
            )
            return
        self._queued += 1
        if self.per_connection:
            key = f"{prepared.lane}#{copy}"
            lane = self._lanes.get(key)
            if lane is None:
                lane = self._lanes[key] = _Lane(key)
            else:
                self._idle_lanes.pop(key, None)
            job = _Job(prepared, scheduled, copy, on_result, lane)
            # The same endpoints started a new connection in the capture: so will we.
            job.fresh = prepared.index <= lane.last_index
            lane.last_index = prepared.index
            lane.queue.append(job)
            if not lane.busy:
                lane.busy = True
                if self._in_flight < self.concurrency:
                    self._start_lane(lane)
                else:
                    self._waiting_lanes.append(lane)
        else:
            self._pending.append(_Job(prepared, scheduled, copy, on_result, None))
            self._pump_pool()

    async def send(
        self, prepared: Prepared, *, scheduled: float | None = None, copy: int = 0
    ) -> Result:
        """Send one request and wait for its Result (errors are in the Result, not raised)."""
        fut: asyncio.Future[Result] = self.loop.create_future()

        def deliver(result: Result) -> None:
            if not fut.done():  # the caller may have been cancelled meanwhile
                fut.set_result(result)

        self.submit(
            prepared,
            scheduled=self.clock.now() if scheduled is None else scheduled,
            copy=copy,
            on_result=deliver,
        )
        return await fut

    # -- internals
    def _start_lane(self, lane: _Lane) -> None:
        job = lane.queue.popleft()
        self._queued -= 1
        self._in_flight += 1
        conn = lane.conn
        if job.fresh and conn is not None:
            conn.close()
        if conn is None or conn.closed:
            conn = lane.conn = _Conn(self)
            self.loop.create_task(self._connect_and_start(conn, job))
        else:
            conn.start(job)

    def _pump_pool(self) -> None:
        while self._pending and self._in_flight < self.concurrency:
            job = self._pending.popleft()
            self._queued -= 1
            self._in_flight += 1
            conn = None
            while self._idle:
                c = self._idle.pop()
                if not c.closed:
                    conn = c
                    break
            if conn is None:
                self.loop.create_task(self._connect_and_start(_Conn(self), job))
            else:
                conn.start(job)

    def _reconnect(self, job: _Job) -> None:
        self._retries += 1
        conn = _Conn(self)
        if job.lane is not None:
            job.lane.conn = conn
        self.loop.create_task(self._connect_and_start(conn, job))

    async def _open(self, conn: _Conn) -> None:
        _transport, conn.tls_ms = await self.connect(lambda: conn, self._ssl)

    async def connect(
        self,
        factory: Callable[[], asyncio.Protocol],
        ssl: ssl_module.SSLContext | None,
    ) -> tuple[asyncio.BaseTransport, float | None]:
        """A new connection to the target (each resolved address in turn) with ``factory``'s
        protocol, TLS by ``ssl`` (replay/h2_client.py passes its own, offering ALPN h2), the
        ``on_connect`` check done on the socket before a byte is sent. Returns the transport and
        the TLS handshake's milliseconds (None without TLS). Raises OSError, asyncio.TimeoutError
        or the refusal (a ShadowtapError)."""
        if not self.addresses:
            await self.start()
        last: BaseException | None = None
        for fam, addr in self.addresses:
            if self.refused is not None:
                raise self.refused
            sock = socket.socket(fam, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await asyncio.wait_for(self.loop.sock_connect(sock, addr), self.connect_timeout)
                if self.on_connect is not None:
                    try:
                        self.on_connect(sock)
                    except ShadowtapError as exc:
                        sock.close()
                        self.refused = exc
                        raise
                tcp_done = time.monotonic()
                sni = _sni(self.target.host) if ssl else None
                transport, _ = await asyncio.wait_for(
                    self.loop.create_connection(
                        factory,
                        sock=sock,
                        ssl=ssl,
                        server_hostname=sni,
                        ssl_handshake_timeout=self.connect_timeout if ssl else None,
                    ),
                    self.connect_timeout,
                )
                tls_ms = None
                if ssl is not None:
                    # The handshake's own time, apart from the request's latency (which starts
                    # when the request is written, after it).
                    tls_ms = (time.monotonic() - tcp_done) * 1000.0
                    tls_obj = transport.get_extra_info("ssl_object")
                    sessions = getattr(ssl, "sessions", None)
                    if tls_obj is not None and tls_obj.session is not None and sessions is not None:
                        sessions[sni] = tls_obj.session
                self._opened += 1
                return transport, tls_ms
            except (OSError, asyncio.TimeoutError) as exc:
                sock.close()
                last = exc
        assert last is not None
        raise last

    async def _connect_and_start(self, conn: _Conn, job: _Job) -> None:
        try:
            await self._open(conn)
        except (OSError, asyncio.TimeoutError, ShadowtapError) as exc:
            conn.closed = True
            kind, message = (
                ("refused", str(exc)) if isinstance(exc, ShadowtapError) else classify(exc)
            )
            job.sent_mono = time.monotonic()
            self._finish(job, conn, job.sent_mono, ResultError(kind, message))
            return
        conn.start(job)

    def _finish(self, job: _Job, conn: _Conn, end_mono: float, error: ResultError | None) -> None:
        self._in_flight -= 1
        self._sent += 1
        clock = self.clock
        sent = clock.to_epoch(job.sent_mono)
        if error is None:
            headers = tuple([(n.decode("latin-1"), v.decode("latin-1")) for n, v in job.headers])
            body = bytes(job.body)
            truncated = job.body_len > len(body)
            if truncated:
                decoded: int | None = None
            elif job.coding is None:
                decoded = len(body)
            else:
                decoded = decoded_length(body, job.coding.decode("latin-1"))
            # Positional (a third cheaper than keywords on this path); the field order is
            # checked by tests/replay/test_client.py::test_record_field_order.
            response: Response | None = Response(
                clock.to_epoch(job.first_mono),
                clock.to_epoch(end_mono),
                job.version,
                headers,
                body,
                job.body_len,
                truncated,
                decoded,
                job.status,
                job.reason.decode("latin-1"),
            )
            ttfb: float | None = (job.first_mono - job.sent_mono) * 1000.0
            total: float | None = (end_mono - job.sent_mono) * 1000.0
        else:
            response = None
            ttfb = (job.first_mono - job.sent_mono) * 1000.0 if job.received else None
            total = None
        chunks = (
            tuple([(n, clock.to_epoch(m)) for n, m in job.chunks])
            if response is not None and job.chunks
            else ()
        )
        result = Result(
            job.prepared.exchange_id,
            job.prepared.url,
            job.scheduled,
            sent,
            response,
            ttfb,
            total,
            error,
            job.copy,
            chunks=chunks,
        )
        if conn.tls_ms is not None:  # the first request on a new TLS connection
            result = dataclasses.replace(result, tls_handshake_ms=round(conn.tls_ms, 3))
            conn.tls_ms = None
        # Hand the connection on before the callback, so the next request goes out first.
        lane = job.lane
        if lane is not None:
            if conn.closed and lane.conn is conn:
                lane.conn = None
            self._next_lane(lane)
        else:
            if not conn.closed and conn.job is None:
                self._idle.append(conn)
            self._pump_pool()
        job.on_result(result)
        if self.outstanding == 0 and self._all_done is not None:
            self._all_done.set()

    def _next_lane(self, done_lane: _Lane) -> None:
        if done_lane.queue:
            self._waiting_lanes.append(done_lane)
        else:
            done_lane.busy = False
            self._idle_lanes[done_lane.key] = done_lane
            while len(self._idle_lanes) > self.max_idle:
                _key, old = self._idle_lanes.popitem(last=False)
                if old.conn is not None:
                    old.conn.close()
                del self._lanes[old.key]
        while self._waiting_lanes and self._in_flight < self.concurrency:
            self._start_lane(self._waiting_lanes.popleft())


@functools.lru_cache(maxsize=256)
def _stream_type(content_type: bytes) -> bool:
    """``is_stream_type`` of a raw Content-Type (a service sends few distinct ones: cached)."""
    return is_stream_type(content_type.decode("latin-1"))


def _sni(host: str) -> str:
    """The server name of the handshake: the target's host (Python announces no SNI for an IP
    address and checks the certificate's IP SAN against it instead)."""
    return host.strip("[]")


def classify(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout", "connect timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "refused", "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "reset", "connection reset"
    if isinstance(exc, OSError):
        return "other", exc.strerror or str(exc)
    return "other", str(exc)
