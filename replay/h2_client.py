"""Replay of plain (non-gRPC) HTTP/2 requests over HTTP/2: h2c with prior knowledge to an
``http://`` target, TLS with ALPN ``h2`` (offered alone) to an ``https://`` one.

Why python-hyper's ``h2`` on an asyncio ``Protocol`` and not httpx: the replay decides which
connection each request goes on (one target connection per captured connection, a new one where
the capture had one), which a pooling client hides; ``h2`` is the sans-I/O HTTP/2 state machine
(framing, HPACK, flow control, stream states) that httpx itself drives, so this module is only the
I/O shell around it, in the shape of replay/client.py's ``Sender``. gRPC calls do not come here:
grpcio sends those (replay/grpc_client.py).

``H2Sender`` has the ``Sender``'s interface (``start``, ``submit``, ``outstanding``, ``drain``,
``close``, ``stats``) and takes its connections from the HTTP/1.x ``Sender`` it is given
(``Sender.connect``): the same resolved addresses, the same refusal of the captured server on each
new socket, the same TLS options and session resumption, one count of connections opened.

Connections: per captured connection (a lane, ``Prepared.lane`` plus the copy number) one HTTP/2
connection; its requests are started in capture order and multiplex on it, as they did when
captured (at most the peer's SETTINGS_MAX_CONCURRENT_STREAMS at a time, the rest wait in order).
A lane whose exchange index goes back (the same endpoints opened a new connection in the capture)
gets a new connection. Without ``per_connection`` (the mirror) every request shares one lane. At
most ``concurrency`` requests are in flight over all connections; idle connections beyond
``max_idle`` are closed, least recently used first. A GOAWAY sends the streams the server did not
process (above its last stream id) once more on a new connection, as RFC 9113 6.8 allows; later
requests of the lane go on a new connection too.

Results have the shape of a captured HTTP/2 exchange: version ``HTTP/2``, ``:status`` first among
the headers, the trailers after them, the body (at most ``max_body`` bytes kept), ``ttfb_ms`` from
the HEADERS frame sent to the first frame of the answer, ``total_ms`` to the end of the stream,
``chunks`` for a streamed body (SSE, NDJSON) per socket read. Errors: ``refused`` (no connection),
``timeout`` (no complete answer within ``timeout``: the stream is cancelled), ``reset``
(RST_STREAM, or the connection closed before the end of the stream), ``protocol`` (an HTTP/2
error of the target's, no ALPN h2, a ``ResponseLimits`` cap passed), ``other`` (not sendable).

Memory: O(max_body + headers) a stream in flight; HPACK's table and frames are bounded by the
SETTINGS this client announces (header list size = ``ResponseLimits.max_head``).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Callable

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from shadowtap.errors import ShadowtapError
from shadowtap.records import Response, Result, ResultError
from shadowtap.replay.client import (
    Clock,
    Sender,
    SenderStats,
    Submitted,
    classify,
    tls_context,
)
from shadowtap.replay.policy import Prepared
from shadowtap.wire.content import decoded_length
from shadowtap.wire.genai import is_stream_type

__all__ = ["H2Sender", "h2_fields"]

# Our receive window (stream and connection): large enough that a fast answer is never held up by
# WINDOW_UPDATE round trips; bytes are acknowledged as soon as they are read.
_WINDOW = 1 << 24


class _Connection(h2.connection.H2Connection):
    """h2's client connection, kept open after the server's GOAWAY. h2 moves to CLOSED when one
    arrives and then refuses the frames of the streams the server still completes (RFC 9113 6.8
    lets streams up to the last stream id finish; nginx sends its GOAWAY after
    ``keepalive_requests`` streams and answers them after it): python-hyper/h2#1181, open since
    2019, met by httpx too (encode/httpcore#46). The GOAWAY is still reported
    (ConnectionTerminated); no new stream starts on the connection (``_H2Conn.goaway``)."""

    def _receive_goaway_frame(self, frame):  # type: ignore[no-untyped-def]
        frames, events = super()._receive_goaway_frame(frame)
        self.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
        return frames, events


# Outbound fields are not validated again by h2 (a fifth of its per-request cost): the Policy
# refused any request whose names or values could not be sent (``Request.send_problem``), and
# ``h2_fields`` writes them lower-case, pseudo-headers first. What the target sends is validated.
_CONFIG = h2.config.H2Configuration(
    client_side=True,
    header_encoding=None,
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
)


def h2_fields(prepared: Prepared, scheme: str, authority: str) -> list[tuple[bytes, bytes]]:
    """The HEADERS frame's fields of ``prepared``: the pseudo-headers (``:authority`` from its
    Host header, set by the Policy), then its headers with lower-case names, Host left out."""
    host = authority
    rest: list[tuple[bytes, bytes]] = []
    for name, value in prepared.headers:
        lname = name.lower()
        if lname == "host":
            host = value
            continue
        rest.append((lname.encode("latin-1"), value.encode("latin-1", "replace")))
    pseudo = [
        (b":method", prepared.method.encode("latin-1")),
        (b":scheme", scheme.encode("latin-1")),
        (b":authority", host.encode("latin-1", "replace")),
        (b":path", prepared.target.encode("latin-1", "replace")),
    ]
    return pseudo + rest


class _Job(Submitted):
    __slots__ = (
        "attempts",
        "body",
        "body_len",
        "chunks",
        "first_mono",
        "fresh",
        "headers",
        "interim",
        "sent_mono",
        "status",
        "timer",
        "to_send",
    )
    lane: _Lane

    def __init__(
        self,
        prepared: Prepared,
        scheduled: float,
        copy: int,
        on_result: Callable[[Result], None],
        lane: _Lane,
    ) -> None:
        super().__init__(prepared, scheduled, copy, on_result, lane)
        self.fresh = False  # the capture opened a new connection for it
        self.attempts = 0
        self.sent_mono = 0.0
        self.first_mono = 0.0
        self.status = 0
        self.interim = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.body_len = 0
        self.chunks: list[tuple[int, float]] | None = None
        self.to_send = memoryview(b"")  # the request body not yet sent (flow control)
        self.timer: asyncio.TimerHandle | None = None


class _Lane:
    __slots__ = ("conn", "key", "last_index")

    def __init__(self, key: str) -> None:
        self.key = key
        self.conn: _H2Conn | None = None
        self.last_index = -1


class _H2Conn(asyncio.Protocol):
    """One HTTP/2 connection to the target. ``waiting``: jobs for it not started yet (before the
    connection is up, or above the peer's concurrent stream limit), in order."""

    def __init__(self, sender: H2Sender) -> None:
        self.sender = sender
        self.transport: asyncio.Transport | None = None
        self.h2 = _Connection(_CONFIG)
        self.streams: dict[int, _Job] = {}
        self.waiting: deque[_Job] = deque()
        self.ready = False
        self.closed = False
        self.goaway = False  # no new stream on it
        self.done = 0  # streams answered on it
        self.tls_ms: float | None = None

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        tls = transport.get_extra_info("ssl_object")
        if tls is not None and tls.selected_alpn_protocol() != "h2":
            got = tls.selected_alpn_protocol() or "none"
            self.fail_all("protocol", f"the target did not agree to HTTP/2 over TLS (ALPN: {got})")
            return
        self.h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _WINDOW,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: self.sender.http.limits.max_head,
            },
        )
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(_WINDOW - 65535)
        self._flush()  # the preface; streams start in ``begin``, once the TLS time is known

    def begin(self, tls_ms: float | None) -> None:
        if self.closed:
            return
        self.tls_ms = tls_ms
        self.ready = True
        self._start_waiting()
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except (h2.exceptions.ProtocolError, ValueError) as exc:
            self.fail_all("protocol", f"HTTP/2 error in the target's answer: {exc!r}")
            return
        now = time.monotonic()
        for ev in events:
            self._event(ev, now)
            if self.closed:
                return
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        what = "reset" if isinstance(exc, ConnectionResetError) else "closed"
        self.fail_all("reset", f"connection {what} by the target before the end of the stream")

    # -- events
    def _event(self, ev: h2.events.Event, now: float) -> None:
        if isinstance(ev, h2.events.ResponseReceived | h2.events.InformationalResponseReceived):
            job = self.streams.get(ev.stream_id)
            if job is None:
                return
            if not job.first_mono:
                job.first_mono = now
            fields = list(ev.headers or ())
            limits = self.sender.http.limits
            if isinstance(ev, h2.events.InformationalResponseReceived):
                job.interim += 1
                if job.interim > limits.max_interim:
                    self._end(ev.stream_id, "protocol", f"more than {limits.max_interim} 1xx")
                return
            if len(fields) > limits.max_headers:
                self._end(ev.stream_id, "protocol", f"more than {limits.max_headers} fields")
                return
            job.headers = fields
            for name, value in fields:
                if name == b":status":
                    job.status = int(value) if value.isdigit() else 0
                elif name == b"content-type" and is_stream_type(value.decode("latin-1")):
                    job.chunks = []
        elif isinstance(ev, h2.events.DataReceived):
            if ev.flow_controlled_length:
                self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            job = self.streams.get(ev.stream_id)
            if job is None or not ev.data:
                return
            job.body_len += len(ev.data)
            room = self.sender.http.max_body - len(job.body)
            if room > 0:
                job.body += ev.data[:room]
            if job.chunks is not None:  # one entry per socket read, as replay/client.py
                if job.chunks and job.chunks[-1][1] == now:
                    job.chunks[-1] = (job.body_len, now)
                else:
                    job.chunks.append((job.body_len, now))
        elif isinstance(ev, h2.events.TrailersReceived):
            job = self.streams.get(ev.stream_id)
            if job is not None:
                job.headers += list(ev.headers or ())
        elif isinstance(ev, h2.events.StreamEnded):
            if ev.stream_id in self.streams:
                self._end(ev.stream_id, None, "")
        elif isinstance(ev, h2.events.StreamReset):
            if ev.stream_id in self.streams:
                code = _code_name(ev.error_code)
                self._end(ev.stream_id, "reset", f"stream reset by the target ({code})", rst=False)
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self._goaway(ev)
        elif isinstance(ev, h2.events.WindowUpdated):
            for sid in [ev.stream_id] if ev.stream_id else list(self.streams):
                self._send_body(sid)
        elif isinstance(ev, h2.events.RemoteSettingsChanged):
            self._start_waiting()

    def _goaway(self, ev: h2.events.ConnectionTerminated) -> None:
        """Streams above the last one the server processed go again on a new connection (never
        processed, so safe to send again, RFC 9113 6.8). A server that processed some streams
        before its GOAWAY (a limit of streams a connection) made progress: no attempt counted;
        one that processed none gets each stream a second try only."""
        self.goaway = True
        last = ev.last_stream_id if ev.last_stream_id is not None else 0
        progress = any(sid <= last for sid in self.streams) or self.done > 0
        message = f"refused by the target's GOAWAY ({_code_name(ev.error_code)})"
        for sid in sorted(sid for sid in self.streams if sid > last):
            job = self.streams.pop(sid)
            self.sender._untrack(job)
            self.sender._retry(job, message, counted=not progress)
        for job in self.waiting:
            self.sender._retry(job, message, counted=False)
        self.waiting.clear()
        if not self.streams:
            self.close()

    # -- sending
    def submit(self, job: _Job) -> None:
        self.waiting.append(job)
        if self.ready:
            self._start_waiting()
            self._flush()

    def _start_waiting(self) -> None:
        h = self.h2
        while self.waiting and self.ready and not self.goaway and not self.closed:
            if h.open_outbound_streams >= h.remote_settings.max_concurrent_streams:
                return
            job = self.waiting.popleft()
            sid = h.get_next_available_stream_id()
            body = job.prepared.body
            fields = h2_fields(job.prepared, self.sender.target.scheme, self.sender.authority)
            try:
                h.send_headers(sid, fields, end_stream=not body)
            except (h2.exceptions.ProtocolError, ValueError) as exc:
                job.sent_mono = time.monotonic()
                error = ResultError("other", f"not sent: {exc}")
                self.sender._finish(job, self, job.sent_mono, error)
                continue
            job.sent_mono = time.monotonic()
            self.streams[sid] = job
            job.timer = self.sender.loop.call_later(self.sender.timeout, self._timed_out, sid, job)
            if body:
                job.to_send = memoryview(body)
                self._send_body(sid)

    def _send_body(self, sid: int) -> None:
        job = self.streams.get(sid)
        if job is None or not job.to_send:
            return
        h = self.h2
        try:
            while job.to_send:
                n = min(h.local_flow_control_window(sid), h.max_outbound_frame_size)
                if n <= 0:
                    return  # the rest when the peer opens its window (WindowUpdated)
                piece, job.to_send = job.to_send[:n], job.to_send[n:]
                h.send_data(sid, piece.tobytes(), end_stream=not job.to_send)
        except h2.exceptions.StreamClosedError:
            job.to_send = memoryview(b"")  # the answer came (or a reset) before the whole body

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    # -- ends
    def _timed_out(self, sid: int, job: _Job) -> None:
        if self.streams.get(sid) is job:
            limit = self.sender.timeout
            self._end(sid, "timeout", f"no complete answer within {limit:g} s")
            self._flush()

    def _end(self, sid: int, kind: str | None, message: str, rst: bool = True) -> None:
        job = self.streams.pop(sid)
        if kind is not None and rst and not self.closed:
            try:
                self.h2.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
            except h2.exceptions.ProtocolError:
                pass
        error = ResultError(kind, message) if kind is not None else None
        self.done += kind is None
        self.sender._finish(job, self, time.monotonic(), error)
        self._start_waiting()
        if self.goaway and not self.streams:
            self.close()

    def fail_all(self, kind: str, message: str) -> None:
        """The connection is done: every stream on it ends with this error; jobs not started
        yet go on another connection."""
        self.close()
        now = time.monotonic()
        for sid in sorted(self.streams):
            self.sender._finish(self.streams.pop(sid), self, now, ResultError(kind, message))
        waiting = list(self.waiting)
        self.waiting.clear()
        for job in waiting:
            if self.ready:  # it was up: they go on a new one (never sent: no attempt)
                self.sender._retry(job, message, counted=False)
            else:  # never connected (or not HTTP/2): none of them can go
                job.sent_mono = now
                self.sender._finish(job, self, now, ResultError(kind, message))

    def idle(self) -> bool:
        return not self.streams and not self.waiting

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.transport is not None:
            if self.ready:
                try:
                    self.h2.close_connection()
                    self.transport.write(self.h2.data_to_send())
                except h2.exceptions.ProtocolError:
                    pass
            self.transport.close()


def _code_name(code: int | None) -> str:
    if code is None:
        return "no code"
    try:
        return h2.errors.ErrorCodes(code).name
    except ValueError:
        return f"code {code}"


class H2Sender:
    """Sends prepared HTTP/2 requests to the target of ``http`` (see the module docstring)."""

    def __init__(self, http: Sender, *, max_idle: int = 256) -> None:
        self.http = http
        self.target = http.target
        self.authority = http.target.authority
        self.timeout = http.timeout
        self.max_idle = max_idle
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._ssl = tls_context(http.tls, alpn=("h2",)) if self.target.scheme == "https" else None
        self._lanes: OrderedDict[str, _Lane] = OrderedDict()
        self._pending: deque[_Job] = deque()
        self._in_flight = 0
        self._sent = 0
        self._retries = 0
        self._tasks: set[asyncio.Task] = set()
        self._idle = asyncio.Event()

    @property
    def clock(self) -> Clock:
        return self.http.clock

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def outstanding(self) -> int:
        return self._in_flight + len(self._pending)

    def stats(self) -> SenderStats:
        # Connections are opened (and counted) by the HTTP/1.x sender's ``connect``.
        return SenderStats(self._sent, self._in_flight, len(self._pending), 0, self._retries)

    def submit(
        self,
        prepared: Prepared,
        *,
        scheduled: float,
        copy: int,
        on_result: Callable[[Result], None],
    ) -> None:
        """Queue ``prepared``; it starts when fewer than ``concurrency`` are in flight."""
        key = f"{prepared.lane}#{copy}" if self.http.per_connection else "pool"
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane(key)
        else:
            self._lanes.move_to_end(key)
        job = _Job(prepared, scheduled, copy, on_result, lane)
        if self.http.per_connection:
            job.fresh = prepared.index <= lane.last_index
            lane.last_index = prepared.index
        self._pending.append(job)
        self._idle.clear()
        self._pump()

    def _pump(self) -> None:
        while self._pending and self._in_flight < self.http.concurrency:
            job = self._pending.popleft()
            self._in_flight += 1
            self._place(job)

    def _place(self, job: _Job) -> None:
        lane = job.lane
        conn = lane.conn
        if conn is not None and job.fresh:
            job.fresh = False
            conn.goaway = True  # the capture's connection ended: so does ours, once answered
            if conn.idle():
                conn.close()
            conn = None
        if conn is None or conn.closed or conn.goaway:
            conn = lane.conn = _H2Conn(self)
            self._spawn(self._connect(conn))
        conn.submit(job)

    def _spawn(self, coro) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, conn: _H2Conn) -> None:
        try:
            _transport, tls_ms = await self.http.connect(lambda: conn, self._ssl)
        except (OSError, asyncio.TimeoutError, ShadowtapError) as exc:
            if isinstance(exc, ShadowtapError):
                kind, message = "refused", str(exc)
            elif "no application protocol" in str(exc).lower():  # TLS alert 120
                kind, message = "protocol", "the target refused HTTP/2 over TLS (ALPN h2)"
            else:
                kind, message = classify(exc)
            conn.fail_all(kind, message)
            return
        conn.begin(tls_ms)

    def _untrack(self, job: _Job) -> None:
        if job.timer is not None:
            job.timer.cancel()
            job.timer = None

    def _retry(self, job: _Job, message: str, *, counted: bool = True) -> None:
        """``job`` was not processed by its connection: again on a new one. ``counted``: an
        attempt that counts (a job sent fails with ``message`` at its second)."""
        if job.sent_mono:
            self._retries += 1
            if counted:
                if job.attempts > 0:
                    self._finish_error(job, "reset", message)
                    return
                job.attempts += 1
        job.sent_mono = 0.0
        job.first_mono = 0.0
        conn = job.lane.conn
        if conn is None or conn.closed or conn.goaway:
            conn = job.lane.conn = _H2Conn(self)
            self._spawn(self._connect(conn))
        conn.submit(job)

    def _finish_error(self, job: _Job, kind: str, message: str) -> None:
        now = time.monotonic()
        job.sent_mono = job.sent_mono or now
        self._finish(job, None, now, ResultError(kind, message))

    def _finish(
        self, job: _Job, conn: _H2Conn | None, end_mono: float, error: ResultError | None
    ) -> None:
        self._untrack(job)
        self._in_flight -= 1
        self._sent += 1
        clock = self.clock
        response: Response | None = None
        ttfb: float | None = None
        total: float | None = None
        if error is None:
            headers = tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in job.headers)
            body = bytes(job.body)
            truncated = job.body_len > len(body)
            coding = next((v for n, v in headers if n == "content-encoding"), None)
            first = job.first_mono or end_mono
            response = Response(
                clock.to_epoch(first),
                clock.to_epoch(max(first, end_mono)),
                "HTTP/2",
                headers,
                body,
                job.body_len,
                truncated,
                None if truncated else decoded_length(body, coding) if coding else len(body),
                job.status,
                "",
            )
            ttfb = (first - job.sent_mono) * 1000.0
            total = (end_mono - job.sent_mono) * 1000.0
        elif job.first_mono:
            ttfb = (job.first_mono - job.sent_mono) * 1000.0
        chunks = (
            tuple((n, clock.to_epoch(m)) for n, m in job.chunks)
            if response is not None and job.chunks
            else ()
        )
        tls_ms = None
        if conn is not None and conn.tls_ms is not None:  # the first request on a new TLS conn
            tls_ms, conn.tls_ms = round(conn.tls_ms, 3), None
        result = Result(
            job.prepared.exchange_id,
            job.prepared.url,
            job.scheduled,
            clock.to_epoch(job.sent_mono),
            response,
            ttfb,
            total,
            error,
            job.copy,
            chunks=chunks,
            tls_handshake_ms=tls_ms,
        )
        self._pump()
        self._close_idle()
        try:
            job.on_result(result)
        finally:
            if not self.outstanding:
                self._idle.set()

    def _close_idle(self) -> None:
        """Idle connections beyond ``max_idle``, least recently used first."""
        excess = len(self._lanes) - self.max_idle
        if excess <= 0:
            return
        for key in list(self._lanes)[:excess]:
            lane = self._lanes[key]
            if lane.conn is None or lane.conn.idle():
                if lane.conn is not None:
                    lane.conn.close()
                del self._lanes[key]

    async def drain(self) -> None:
        while self.outstanding:
            await self._idle.wait()

    def close(self) -> None:
        """Close every connection (streams in flight are abandoned, not answered)."""
        for task in list(self._tasks):
            task.cancel()
        for lane in self._lanes.values():
            if lane.conn is not None:
                conn, lane.conn = lane.conn, None
                conn.streams.clear()
                conn.waiting.clear()
                conn.close()
