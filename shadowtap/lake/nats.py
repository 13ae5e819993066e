"""Agents streaming to NATS JetStream (nats-py, the maintained client): ``NatsSink`` publishes
exchanges and results with acknowledgements; ``consume`` reads them back (replay's source).

``--sink nats://host:4222/SUBJECT``: the stream ``stream_name(SUBJECT)`` holds ``SUBJECT.>`` (one
stream per run: give each run its subject), file storage, created by the first agent. Records go
to ``SUBJECT.x.<P>`` (exchanges) and ``SUBJECT.r.<P>`` (results), ``P`` = the partition of the
captured connection (crc32 of client and server, mod ``PARTITIONS``): a connection's exchanges
stay in one subject, in order.

A message is a batch: one to ``BATCH_RECORDS`` records of one kind and partition, in order, each
record's JSON (the file formats') on a line of its own (JSON Lines; a one-record message is
just the record's JSON). ``records_of`` splits a message; every reader goes through it. Headers:
``Shadowtap-Host`` (the agent's host name), ``Shadowtap-Kind``, ``Shadowtap-Records`` (how many)
and ``Nats-Msg-Id`` (the first record's id and the count, ``x-<id>+<n>``: JetStream drops a
resent duplicate within its window). A batch is sealed once (full, or when the publisher is
ready for more and nothing sealed waits) and never re-formed: a resent batch carries the same
records and id. Why batches: a message costs the agent a header block, a future and an ack to
parse, and the broker a store write and an ack, whatever its size; per record that was 30 us of
the agent's CPU and 8 of nats-server's (docs/benchmarks.md).

Delivery: a record counts as delivered when JetStream acknowledged its batch (``acked``). Until
then it is in memory (at most ``memory_records``) or, when the broker is away or behind, in a
disk spool (shadowtap/lake/spool.py, a batch per spool record): resent in order before anything
newer, the oldest dropped past ``spool_bytes`` (``dropped``, in records). ``close`` waits up to
``drain_timeout`` for the spool to empty; what is left stays on disk for the next run with the
same spool directory.

Threads: the sink runs its own event loop in a thread; ``on_exchange``/``on_result`` may be
called from any thread and cost an encode and an append (and a wake-up of the publisher when a
batch is sealed or the first record arrives while it is idle).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson

from shadowtap.errors import InputError, PrerequisiteError
from shadowtap.lake.spool import DiskSpool
from shadowtap.records import Exchange, Result

PARTITIONS = 16
EXCHANGE, RESULT = 0, 1
_KIND = {EXCHANGE: "x", RESULT: "r"}
_WINDOW = 32  # batches in flight awaiting their acks
BATCH_RECORDS = 256  # records a message holds at most
BATCH_BYTES = 256 << 10  # and bytes (a larger record goes alone; nats-server's max_payload: 1 MiB)
Batch = tuple[int, str, bytes]  # kind, "<partition>:<records>:<message id>", payload (JSON lines)


def records_of(data: bytes) -> list[bytes]:
    """The records' JSON of a message (a batch: one record a line)."""
    return data.split(b"\n")


def _ident(part: int, n: int, msg_id: str) -> str:
    return f"{part}:{n}:{msg_id}"


def _unident(ident: str) -> tuple[str, int, str]:
    """(partition, records, message id) of a batch's spool id; a spool of the one-record version
    (``<partition>:<message id>``) reads as batches of one."""
    part, rest = ident.split(":", 1)
    n, sep, msg_id = rest.partition(":")
    if not sep or not n.isdigit():
        return part, 1, rest
    return part, int(n), msg_id


def batch_weight(ident: str) -> int:
    """Records in a batch (the spool counts drops and waiting records by it)."""
    return _unident(ident)[1]


_ACK_TIMEOUT = 5.0
ACK_WAIT = 60.0  # a consumer's messages are redelivered if not acked (or "in progress") by then


@dataclass(frozen=True, slots=True)
class SinkUrl:
    server: str  # nats://host:port
    subject: str

    @property
    def stream(self) -> str:
        return stream_name(self.subject)


def parse_sink(url: str) -> SinkUrl:
    """``nats://host:4222/SUBJECT`` (user:password@ allowed)."""
    parts = urlsplit(url)
    subject = parts.path.lstrip("/")
    if parts.scheme not in ("nats", "tls") or not parts.hostname or not subject:
        raise InputError(f"not a NATS sink URL {url!r} (nats://host:4222/SUBJECT)", field="sink")
    if not re.fullmatch(r"[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*", subject):
        raise InputError(
            f"subject {subject!r}: letters, digits, - and _ between dots", field="sink"
        )
    return SinkUrl(f"{parts.scheme}://{parts.netloc}", subject)


def stream_name(subject: str) -> str:
    return "SHADOWTAP_" + subject.replace(".", "_").replace("-", "_").upper()


def partition(client: str, server: str, partitions: int = PARTITIONS) -> int:
    return zlib.crc32(f"{client}|{server}".encode()) % partitions


async def ensure_stream(js: object, url: SinkUrl) -> None:
    from nats.js.api import StorageType, StreamConfig
    from nats.js.errors import NotFoundError

    try:
        await js.stream_info(url.stream)  # type: ignore[attr-defined]
    except NotFoundError:
        cfg = StreamConfig(
            name=url.stream,
            subjects=[f"{url.subject}.>"],
            storage=StorageType.FILE,
            duplicate_window=600.0,
        )
        with contextlib.suppress(Exception):  # another agent made it meanwhile
            await js.add_stream(cfg)  # type: ignore[attr-defined]
        await js.stream_info(url.stream)  # type: ignore[attr-defined]


class NatsSink:
    """A sink (``on_exchange``/``on_result``/``on_pair``/``close``) publishing to JetStream."""

    def __init__(
        self,
        url: str,
        spool_dir: str,
        *,
        host: str | None = None,
        memory_records: int = 50_000,
        spool_bytes: int = 1 << 30,
        drain_timeout: float = 30.0,
        partitions: int = PARTITIONS,
    ) -> None:
        try:
            import nats  # noqa: F401
        except ImportError as exc:
            raise PrerequisiteError(
                "nats-py is not installed", hint="pip install 'shadowtap[nats]'"
            ) from exc
        self.url = parse_sink(url)
        self.host = host or socket.gethostname()
        self.partitions = partitions
        self.memory_records = memory_records
        self.drain_timeout = drain_timeout
        self.spool = DiskSpool(spool_dir, max_bytes=spool_bytes, weigh=batch_weight)
        self.acked = 0  # records
        self.published = 0  # messages (batches) published, resends included
        self.connected = False
        self._mem: deque[Batch] = deque()  # sealed batches not yet on disk
        self._mem_records = 0
        # open batches by (kind, partition): [message id of the first, records, bytes]
        self._open: dict[tuple[int, int], tuple[str, list[bytes], int]] = {}
        self._open_records = 0
        self._idle = True  # the publisher waits for records (the first one wakes it)
        self._lock = threading.Lock()  # _mem, _open and spool between producers and the publisher
        self._closing = False
        self._wake: asyncio.Event | None = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nats-sink", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    @property
    def dropped(self) -> int:
        return self.spool.dropped

    @property
    def waiting(self) -> int:
        with self._lock:
            return self._mem_records + self._open_records + self.spool.weight

    # ------------------------------------------------------------------ sink interface
    def on_exchange(self, ex: Exchange) -> None:
        p = partition(ex.client, ex.server, self.partitions)
        self._put(EXCHANGE, p, f"x-{ex.id}", orjson.dumps(ex.to_json()))

    def on_result(self, res: Result, exchange: Exchange | None = None) -> None:
        p = partition(exchange.client, exchange.server, self.partitions) if exchange else 0
        self._put(RESULT, p, f"r-{res.exchange_id}-{res.copy}", orjson.dumps(res.to_json()))

    def on_pair(self, pair: object) -> None:  # a pair's records were published as they came
        pass

    def _put(self, kind: int, part: int, msg_id: str, payload: bytes) -> None:
        key = (kind, part)
        wake = False
        with self._lock:
            first, lines, size = self._open.get(key) or (msg_id, [], 0)
            if lines and size + len(payload) > BATCH_BYTES:
                self._seal(key, first, lines)
                first, lines, size = msg_id, [], 0
                wake = True
            lines.append(payload)
            self._open_records += 1
            if len(lines) >= BATCH_RECORDS or size + len(payload) >= BATCH_BYTES:
                self._seal(key, first, lines)
                wake = True
            else:
                self._open[key] = (first, lines, size + len(payload) + 1)
            if self._idle:
                self._idle = False
                wake = True
        if wake and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def _seal(self, key: tuple[int, int], first: str, lines: list[bytes]) -> None:
        """Close an open batch: to memory, or to disk when anything waits there or memory is
        full (order: nothing overtakes what waits on disk). Under the lock."""
        self._open.pop(key, None)
        n = len(lines)
        self._open_records -= n
        batch = (key[0], _ident(key[1], n, f"{first}+{n}"), b"\n".join(lines))
        if self.spool or self._mem_records + n > self.memory_records:
            self.spool.append(*batch)
        else:
            self._mem.append(batch)
            self._mem_records += n

    def _seal_all(self) -> None:
        for key, (first, lines, _) in list(self._open.items()):
            self._seal(key, first, lines)

    def close(self) -> None:
        """Publish what waits (up to ``drain_timeout``), then stop; the rest stays spooled."""
        self._closing = True
        if self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)
        self._thread.join(self.drain_timeout + 10)
        with self._lock:
            self._seal_all()
            while self._mem:  # never published: to disk, for the next run
                self.spool.append(*self._mem.popleft())
            self._mem_records = 0
            self.spool.close()

    # ------------------------------------------------------------------ publisher
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        import nats

        self._wake = asyncio.Event()
        self._ready.set()

        async def up() -> None:
            self.connected = True

        async def down() -> None:
            self.connected = False

        nc = None
        deadline = None
        while True:
            if nc is None:
                try:
                    nc = await nats.connect(
                        self.url.server,
                        name=f"shadowtap-agent-{self.host}",
                        max_reconnect_attempts=-1,
                        reconnect_time_wait=0.25,
                        connect_timeout=2,
                        reconnected_cb=up,
                        disconnected_cb=down,
                        allow_reconnect=True,
                    )
                    js = nc.jetstream(publish_async_max_pending=_WINDOW * 2)
                    await ensure_stream(js, self.url)
                    self.connected = True
                except Exception:  # noqa: BLE001 - the broker away: spool, retry
                    if nc is not None:
                        with contextlib.suppress(Exception):
                            await nc.close()
                    nc = None
                    self._to_disk()
            if self._closing and deadline is None:
                deadline = time.monotonic() + self.drain_timeout
            if deadline is not None and (time.monotonic() > deadline or not self.waiting):
                break
            if nc is None or not self.connected:
                await self._nap(0.25)
                continue
            batch, from_spool = self._take()
            if not batch:
                await self._nap(0.5)
                continue
            ok = await self._publish(js, batch)
            with self._lock:
                if from_spool:
                    self.spool.ack(batch[:ok])
                elif ok < len(batch):
                    # the failed tail, then everything newer, to disk in order
                    for rec in batch[ok:]:
                        self.spool.append(*rec)
                    self._mem_to_disk()
            if ok < len(batch):
                await self._nap(0.25)
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()

    async def _nap(self, seconds: float) -> None:
        assert self._wake is not None
        self._wake.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    def _to_disk(self) -> None:
        with self._lock:
            self._seal_all()
            self._mem_to_disk()

    def _mem_to_disk(self) -> None:
        while self._mem:
            self.spool.append(*self._mem.popleft())
        self._mem_records = 0

    def _take(self) -> tuple[list[Batch], bool]:
        """Up to ``_WINDOW`` sealed batches, the spool's first; when none is sealed, the open
        ones are sealed (the publisher is ready: waiting longer would only add latency); when
        none is open either, the publisher goes idle (the next record wakes it)."""
        with self._lock:
            if not self.spool and not self._mem:
                self._seal_all()
            if self.spool:
                return self.spool.peek(_WINDOW), True
            batch = [self._mem.popleft() for _ in range(min(_WINDOW, len(self._mem)))]
            self._mem_records -= sum(_unident(ident)[1] for _, ident, _ in batch)
            if not batch:
                self._idle = True
            return batch, False

    async def _publish(self, js: object, batch: list[Batch]) -> int:
        """Publish a window of batches; the number of leading batches acknowledged."""
        futures = []
        counts = []
        try:
            for kind, ident, payload in batch:
                part, n, msg_id = _unident(ident)
                counts.append(n)
                futures.append(
                    await js.publish_async(  # type: ignore[attr-defined]
                        f"{self.url.subject}.{_KIND[kind]}.{part}",
                        payload,
                        headers={
                            "Nats-Msg-Id": msg_id,
                            "Shadowtap-Host": self.host,
                            "Shadowtap-Kind": _KIND[kind],
                            "Shadowtap-Records": str(n),
                        },
                    )
                )
                self.published += 1
            done = await asyncio.wait_for(
                asyncio.gather(*futures, return_exceptions=True), _ACK_TIMEOUT
            )
        except Exception:  # noqa: BLE001 - timeouts, a closed connection: count what was acked
            done = [
                f.result() if f.done() and not f.cancelled() and f.exception() is None else None
                for f in futures
            ]
            for f in futures:
                f.cancel()
        ok = 0
        for r in done:
            if r is None or isinstance(r, BaseException):
                break
            ok += 1
        self.acked += sum(counts[:ok])
        return ok


# ---------------------------------------------------------------------------------- consuming


def owner(part: int, members: list[str]) -> str:
    """Rendezvous hashing: the member a partition belongs to (moves only when members change)."""
    return max(members, key=lambda m: zlib.crc32(f"{part}|{m}".encode()))


class GroupConsumer:
    """Exchanges from the run's stream for one member of a group of replay processes.

    Ordering rule: a captured connection's exchanges are in one partition subject, and a partition
    is served by one member at a time, in stream order: partitions are dealt to the live members
    by rendezvous hashing, each served through its own durable consumer (``GROUP-pN``, so the
    position survives a change of member) under a lease (a key created atomically in the
    group's KV bucket, renewed with the member's heartbeat, expiring ``ttl`` seconds after a
    member dies). A member takes a partition's next batch only once the previous one is acked, and
    gives a partition up only between batches, so two members never hold one partition's records
    at once; while the membership is stable each connection stays in one process.

    Iterating yields (Exchange, host); a batch is acknowledged when the iteration asks for the
    record after it (at-least-once: a member that dies mid-batch has it redelivered). Ends after
    ``idle_timeout`` seconds without a record. ``expect_members``: wait (up to ``ttl`` x 3 s) for
    that many members before the first fetch, so a group started together shares from the start.
    ``ack_wait``: seconds JetStream waits for a batch's ack before it redelivers it; a
    member still working through a fetch (thousands of records at the recorded pace) says
    "in progress" every ``ack_wait / 3``, so only a dead member's batches are redelivered.
    """

    def __init__(
        self,
        url: str,
        group: str,
        *,
        member: str | None = None,
        batch: int = 64,
        idle_timeout: float = 5.0,
        partitions: int = PARTITIONS,
        ttl: float = 6.0,
        expect_members: int = 1,
        ack_wait: float = ACK_WAIT,
    ) -> None:
        import queue
        import uuid

        self.url = parse_sink(url)
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", group):
            raise InputError(f"group {group!r}: letters, digits, - and _", field="group")
        self.group = group
        self.member = member or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self.batch = batch
        self.idle_timeout = idle_timeout
        self.partitions = partitions
        self.ttl = ttl
        self.expect_members = expect_members
        self.ack_wait = ack_wait
        self.received = 0
        self.error: BaseException | None = None
        self._out: queue.Queue = queue.Queue(maxsize=2)
        self._stop = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="nats-consumer", daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[tuple[Exchange, str]]:
        while True:
            item = self._out.get()
            if item is None:
                if self.error is not None:
                    raise self.error
                return
            records, done = item
            for rec in records:
                self.received += 1
                yield rec
            self._loop.call_soon_threadsafe(done.set)  # acked by the consumer's loop

    def close(self) -> None:
        """Stop; batches handed over but not taken are not acknowledged (redelivered to the
        group later: at-least-once)."""
        self._stop.set()
        with contextlib.suppress(Exception):
            while True:  # unblocks a hand-over in progress
                self._out.get_nowait()
        self._thread.join(30)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as exc:  # noqa: BLE001 - handed to the iterating thread
            self.error = exc
        finally:
            self._out.put(None)

    async def _main(self) -> None:
        import nats
        from nats.js.api import AckPolicy, ConsumerConfig, KeyValueConfig
        from nats.js.errors import KeyWrongLastSequenceError, NoKeysError

        try:
            nc = await nats.connect(
                self.url.server,
                name=f"shadowtap-replay-{self.member}",
                connect_timeout=5,
                max_reconnect_attempts=-1,
            )
        except Exception as exc:  # noqa: BLE001 - said as the user's problem
            raise InputError(f"cannot reach the broker: {exc}", field="input") from exc
        js = nc.jetstream()
        await js.stream_info(self.url.stream)  # fails clearly when the run has no stream
        bucket = f"{self.url.stream}_{self.group}"
        try:
            kv = await js.key_value(bucket)
        except Exception:  # noqa: BLE001 - not made yet: make it (another member may race us)
            with contextlib.suppress(Exception):
                await js.create_key_value(KeyValueConfig(bucket=bucket, ttl=self.ttl))
            kv = await js.key_value(bucket)
        me = f"m.{self.member}"
        leases: dict[int, int] = {}  # partition -> lease revision
        subs: dict[int, object] = {}
        last_beat = 0.0
        last_record = time.monotonic()

        async def members() -> list[str]:
            try:
                return sorted(k[2:] for k in await kv.keys() if k.startswith("m."))
            except NoKeysError:
                return []

        async def release(p: int) -> None:
            sub = subs.pop(p, None)
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()  # type: ignore[attr-defined]
            rev = leases.pop(p, None)
            if rev is not None:
                with contextlib.suppress(Exception):
                    await kv.delete(f"o.{p}", last=rev)

        await kv.put(me, b"1")
        waited = time.monotonic() + self.ttl * 3
        while len(await members()) < self.expect_members and time.monotonic() < waited:
            await asyncio.sleep(0.1)
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now - last_beat >= self.ttl / 3:
                    last_beat = now
                    await kv.put(me, b"1")
                    for p, rev in list(leases.items()):
                        try:
                            leases[p] = await kv.update(f"o.{p}", self.member.encode(), last=rev)
                        except Exception:  # noqa: BLE001 - lost (expired): give it up
                            leases.pop(p, None)
                            await release(p)
                    live = await members()
                    mine = {
                        p for p in range(self.partitions) if live and owner(p, live) == self.member
                    }
                    for p in set(leases) - mine:
                        await release(p)
                    for p in sorted(mine - set(leases)):
                        try:
                            leases[p] = await kv.create(f"o.{p}", self.member.encode())
                        except KeyWrongLastSequenceError:
                            continue  # its last holder has not let go yet: next heartbeat
                        subs[p] = await js.pull_subscribe(
                            f"{self.url.subject}.x.{p}",
                            durable=f"{self.group}-p{p}",
                            stream=self.url.stream,
                            config=ConsumerConfig(
                                ack_policy=AckPolicy.EXPLICIT,
                                ack_wait=self.ack_wait,
                                max_ack_pending=self.batch * 4,
                            ),
                        )
                got = False
                for p, sub in list(subs.items()):
                    try:
                        msgs = await sub.fetch(self.batch, timeout=0.2)  # type: ignore[attr-defined]
                    except (asyncio.TimeoutError, nats.errors.TimeoutError):
                        continue
                    if not msgs:  # nats-py may end a fetch empty: no record, the idle clock runs
                        continue
                    records: list[tuple[Exchange, str]] = []
                    for m in msgs:
                        host = (m.headers or {}).get("Shadowtap-Host", "")
                        records.extend(
                            (Exchange.from_json(orjson.loads(line)), host)
                            for line in records_of(m.data)
                        )
                    done = asyncio.Event()
                    handed = asyncio.ensure_future(
                        asyncio.to_thread(self._out.put, (records, done))
                    )
                    beat = time.monotonic()
                    while not done.is_set() and not self._stop.is_set():
                        with contextlib.suppress(asyncio.TimeoutError):
                            await asyncio.wait_for(done.wait(), 0.5)
                        if time.monotonic() - beat >= self.ack_wait / 3:
                            # A fetch may hold thousands of records (messages are batches) that
                            # replay sends at the recorded pace: "still working" keeps them
                            # ours past ack_wait instead of redelivered to another member.
                            beat = time.monotonic()
                            for m in msgs:
                                with contextlib.suppress(Exception):
                                    await m.in_progress()
                    if not done.is_set():  # closed mid-batch: not acked, redelivered later
                        handed.cancel()
                        break
                    await handed
                    for m in msgs:
                        await m.ack()
                    got = True
                    last_record = time.monotonic()
                if not got:
                    if time.monotonic() - last_record > self.idle_timeout:
                        break
                    if not subs:
                        await asyncio.sleep(0.2)
        finally:
            for p in list(leases):
                await release(p)
            with contextlib.suppress(Exception):
                await kv.delete(me)
            await nc.close()


def consumer_pass(url: str) -> Callable[[], Iterator[Exchange]]:
    """replay's source for ``nats://host:4222/SUBJECT?group=NAME&members=N&idle=S``: a factory
    of passes over the stream as a member of the group (default ``replay``; ``members``: wait for
    that many before starting; ``idle``: seconds without a record that end the pass, 5)."""
    from urllib.parse import parse_qs

    parts = urlsplit(url)
    q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    base = url.split("?", 1)[0]
    try:
        members, idle = int(q.get("members", "1")), float(q.get("idle", "5"))
    except ValueError as exc:
        raise InputError(f"bad members= or idle= in {url!r}", field="input") from exc
    parse_sink(base)  # a bad URL fails before the replay starts

    def one_pass() -> Iterator[Exchange]:
        consumer = GroupConsumer(
            base, q.get("group", "replay"), expect_members=members, idle_timeout=idle
        )
        try:
            for ex, _host in consumer:
                yield ex
        finally:
            consumer.close()

    return one_pass


def stream_records(url: str) -> Iterator[tuple[str, str, bytes]]:
    """Every record of a run's stream (``nats://host:4222/SUBJECT``), in stream order: (kind
    ``x``/``r``, the agent's host, the record's JSON). Reads message by message (no consumer is
    made, nothing is acknowledged): for looking at a run, the fleet lab's demo and tests; replay
    shares a stream through ``GroupConsumer``."""
    import queue

    sink = parse_sink(url)
    out: queue.Queue = queue.Queue(maxsize=64)

    async def main() -> None:
        import nats

        nc = await nats.connect(sink.server, connect_timeout=5)
        try:
            js = nc.jetstream()
            info = await js.stream_info(sink.stream)
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                msg = await js.get_msg(sink.stream, seq)
                heads = msg.headers or {}
                host, kind = heads.get("Shadowtap-Host", ""), heads.get("Shadowtap-Kind", "x")
                await asyncio.to_thread(
                    out.put, [(kind, host, r) for r in records_of(msg.data or b"")]
                )
        finally:
            await nc.close()

    def run() -> None:
        try:
            asyncio.run(main())
            out.put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the iterating thread
            out.put(exc)

    thread = threading.Thread(target=run, name="nats-reader", daemon=True)
    thread.start()
    while True:
        item = out.get()
        if item is None:
            return
        if isinstance(item, BaseException):
            raise InputError(f"cannot read the stream: {item}", field="input") from item
        yield from item


def stream_to_files(url: str, directory: str) -> tuple[str, str, int, int]:
    """A run's stream as ``exchanges.jsonl`` and ``results.jsonl`` (0600) in ``directory``: the
    record JSON as the agents published it, in stream order (so a connection's exchanges in
    capture order). Returns (exchanges path, results path, exchanges, results)."""
    from shadowtap.jsonl import create_private

    paths = (os.path.join(directory, "exchanges.jsonl"), os.path.join(directory, "results.jsonl"))
    counts = {"x": 0, "r": 0}
    with create_private(paths[0]) as xf, create_private(paths[1]) as rf:
        out = {"x": xf, "r": rf}
        for kind, _host, rec in stream_records(url):
            if kind in out:
                out[kind].write(rec + b"\n")
                counts[kind] += 1
    return paths[0], paths[1], counts["x"], counts["r"]


def default_spool_dir(url: str) -> str:
    """Where an agent spools for ``url`` unless told: per user and stream, kept across runs (a
    restarted agent resends what it had not published)."""
    import tempfile

    return os.path.join(
        tempfile.gettempdir(), f"shadowtap-sink-{os.getuid()}-{parse_sink(url).stream.lower()}"
    )


def open_sink(url: str, spool_dir: str | None = None, **kw: object) -> NatsSink:
    """The sink of ``--sink nats://host:4222/SUBJECT[?host=NAME]``: ``host`` names the agent in
    its records (default: the machine's host name; a fleet of agents on one machine, as in the
    lab's network namespaces, which share the host name, tell themselves apart by it)."""
    from urllib.parse import parse_qs

    query = parse_qs(urlsplit(url).query)
    unknown = set(query) - {"host"}
    if unknown:
        raise InputError(
            f"unknown sink URL parameter(s) {sorted(unknown)} in {url!r}", field="sink"
        )
    if "host" in query:
        kw.setdefault("host", query["host"][-1])
    return NatsSink(url, spool_dir or default_spool_dir(url), **kw)  # type: ignore[arg-type]


def sink_summary(sink: NatsSink) -> str:
    return (
        f"sink {sink.url.server}/{sink.url.subject}: {sink.acked} acknowledged, "
        f"{sink.dropped} dropped, {sink.waiting} spooled for the next run "
        f"({sink.spool.directory})"
    )
