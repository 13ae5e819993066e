"""Child processes: one way to start them, talk to them and end them.

shadowtap forks workers in three places: the live mirror's capture process
(mirror/capture_child.py), `shadowtap capture`'s extractor process (capture/live.py, fed by
capture/spool.py) and `extract --jobs`'s workers (capture/extract.py). Each gets, from ``spawn``:

- a fork (multiprocessing's "fork" context: the child inherits the parent's imported modules and
  objects; fork before any thread or event loop exists). With ``freeze`` the parent's objects are
  moved out of the cyclic GC's sight first (``gc.freeze``), so no collection in the child walks
  them (a walk writes to every object's header: copy-on-write faults for all their pages);
- its signal dispositions set explicitly, never inherited: a child started under ``nohup … &`` has
  SIGINT ignored from its parent, and one started by a terminal has it delivered to the whole
  process group (``Signals``: ignore it, stop on it, or Python's default);
- ``die_with_parent``: the kernel sends it that signal when the parent dies (PR_SET_PDEATHSIG);
  a child that ignores it still sees EOF on its channel;
- its priority (shadowtap/priority.py: nice, SCHED_IDLE), and with ``gc_batch`` the collector's
  thresholds raised (millions of short-lived acyclic objects: the default thresholds would walk
  every live object thousands of times);
- a ``Channel`` to the parent (a duplex pipe carrying records of shadowtap/codec.py: typed, and
  a new record field travels with its record). The child's target returns a value or raises; the
  last message is ``Exited`` with that value or the error (codec.ErrorRecord), which
  ``Child.result`` returns or raises in the parent as the same ShadowtapError class. A child that
  dies without it (killed) is a ``ChildDied`` error that says how it died.

Data streams that must not wait (the mirror's frames, extract's lines) are the caller's own pipes,
passed as arguments; ``close_in_child`` closes the parent's ends in the child, so each side sees
EOF when the other dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import fcntl
import gc
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from shadowtap.codec import Codec, ErrorRecord, error_record
from shadowtap.errors import ShadowtapError
from shadowtap.priority import lower_priority

_PR_SET_PDEATHSIG = 1
DEAD_PARENT_GRACE = 10.0  # seconds a child with a dead parent has to clean up
BATCH_GC_THRESHOLD = (50_000, 20, 100)  # gen0 collections every 50,000 allocations, not 700


@contextlib.contextmanager
def batch_gc() -> Iterator[None]:
    """For a stretch of work that makes millions of short-lived acyclic objects (extraction): the
    objects alive now are frozen out of collection and the thresholds raised (BATCH_GC_THRESHOLD),
    so collections are rare and walk only what the work made; restored afterwards. No collection
    first: it walked every object the imports made (10-20 ms of ``extract``'s start-up) to free
    the few cycles among them."""
    gc.freeze()
    old = gc.get_threshold()
    gc.set_threshold(*BATCH_GC_THRESHOLD)
    try:
        yield
    finally:
        gc.set_threshold(*old)
        gc.unfreeze()


class Signals(enum.Enum):
    """What a child does on a signal."""

    IGNORE = "ignore"  # the parent decides (Ctrl-C reaches the whole process group)
    STOP = "stop"  # sets the child's ``stop`` event: it ends cleanly
    DEFAULT = "default"  # SIGINT: KeyboardInterrupt; others: the system's default (end)


@dataclass(frozen=True, slots=True)
class Stop:
    """Parent -> child: end now, cleanly (EOF on the channel means the same)."""


@dataclass(frozen=True, slots=True)
class Exited:
    """Child -> parent, the last message: the target's return value, or its error."""

    value: Any = None
    error: ErrorRecord | None = None


class ChildDied(ShadowtapError):
    """A child process ended without saying how (killed, or a crash of the interpreter)."""


class Channel:
    """Records both ways over a multiprocessing Connection (a duplex pipe), encoded by ``codec``.
    ``recv`` raises EOFError when the other side is gone."""

    def __init__(self, conn: Any, codec: Codec) -> None:
        self.conn = conn
        self.codec = codec

    def send(self, obj: Any) -> None:
        self.conn.send_bytes(self.codec.dumps(obj))

    def recv(self) -> Any:
        return self.codec.loads(self.conn.recv_bytes())

    def poll(self, timeout: float = 0.0) -> bool:
        return bool(self.conn.poll(timeout))

    def fileno(self) -> int:
        return int(self.conn.fileno())

    def close(self) -> None:
        self.conn.close()


def codec_for(classes: Iterable[type]) -> Codec:
    """A Codec for ``classes`` and the messages every channel carries (Stop, Exited)."""
    return Codec([Stop, Exited, ErrorRecord, *classes])


@dataclass(slots=True)
class ChildContext:
    """What the child's target gets: its channel to the parent, and ``stop``, set by a signal
    whose disposition is STOP or, with ``watch``, by Stop or EOF on the channel."""

    channel: Channel
    stop: threading.Event


def _die_with_parent(sig: signal.Signals) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _child_main(
    target: Callable[..., Any],
    conn: Any,
    codec: Codec,
    name: str,
    args: tuple[Any, ...],
    signals: dict[signal.Signals, Signals],
    die_with_parent: signal.Signals | None,
    nice: int,
    sched_idle: bool,
    fallback_nice: int,
    gc_batch: bool,
    watch: bool,
    close_in_child: Sequence[Any],
) -> None:
    for end in close_in_child:  # the parent's ends: its death must read as EOF here
        with contextlib.suppress(OSError):
            end.close() if hasattr(end, "close") else os.close(end)
    stop = threading.Event()
    for sig, how in signals.items():
        if how is Signals.IGNORE:
            signal.signal(sig, signal.SIG_IGN)
        elif how is Signals.STOP:
            signal.signal(sig, lambda *_: stop.set())
        else:
            signal.signal(
                sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
            )
    if die_with_parent is not None:
        _die_with_parent(die_with_parent)
    if not lower_priority(nice, sched_idle) and sched_idle and fallback_nice:
        with contextlib.suppress(OSError):
            os.nice(fallback_nice)  # SCHED_IDLE refused: the weak form
    if gc_batch:
        gc.set_threshold(*BATCH_GC_THRESHOLD)
    channel = Channel(conn, codec)
    if watch:
        parent = os.getppid()

        def watch_stop() -> None:
            with contextlib.suppress(EOFError, OSError):
                while not isinstance(channel.recv(), Stop):
                    pass
            stop.set()
            if os.getppid() != parent:
                # The parent died (EOF): the child's cleanup (hooks detached) gets a bounded time,
                # then the process goes, so that it never outlives its parent for long.
                time.sleep(DEAD_PARENT_GRACE)
                os._exit(1)

        threading.Thread(target=watch_stop, daemon=True, name=f"{name}-stop").start()
    try:
        result = Exited(value=target(ChildContext(channel, stop), *args))
    except KeyboardInterrupt:
        os._exit(130)  # a second Ctrl-C where the child takes it: no report, at once
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
        result = Exited(error=error_record(exc, f"the {name} process"))
    with contextlib.suppress(OSError, ValueError):
        channel.send(result)


class Child:
    """The parent's handle on a child process."""

    def __init__(self, proc: Any, channel: Channel, name: str) -> None:
        self.proc = proc
        self.channel = channel
        self.name = name
        self.exited: Exited | None = None

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def is_alive(self) -> bool:
        return bool(self.proc.is_alive())

    def send(self, obj: Any) -> None:
        self.channel.send(obj)

    def stop(self) -> None:
        """Ask the child to end (a Stop message; nothing if it is gone already)."""
        with contextlib.suppress(OSError, ValueError):
            self.channel.send(Stop())

    def take(self, timeout: float = 0.0) -> Any:
        """The child's next message within ``timeout`` seconds, or None. ``Exited`` is kept in
        ``exited`` (and returned); at EOF, None."""
        try:
            if not self.channel.poll(timeout):
                return None
            msg = self.channel.recv()
        except (EOFError, OSError):
            return None
        if isinstance(msg, Exited):
            self.exited = msg
        return msg

    def died(self) -> ChildDied:
        self.proc.join(1)
        code = self.proc.exitcode
        how = (
            f"killed by {signal.Signals(-code).name}"
            if code is not None and code < 0
            else f"exit status {code}"
        )
        return ChildDied(f"the {self.name} process died ({how})")

    def result(
        self,
        timeout: float | None = None,
        *,
        on_message: Callable[[Any], None] | None = None,
        on_wait: Callable[[], None] | None = None,
        interval: float = 0.2,
    ) -> Any:
        """Wait for the child's ``Exited``: its value, or its error raised here; ChildDied when it
        ended without one, TimeoutError after ``timeout`` seconds (None: no limit). Meanwhile
        other messages go to ``on_message``, and ``on_wait`` is called every ``interval`` s."""
        import time

        end = None if timeout is None else time.monotonic() + timeout
        while self.exited is None:
            wait = interval if end is None else max(0.0, min(interval, end - time.monotonic()))
            msg = self.take(wait)
            if msg is None:
                if not self.proc.is_alive():
                    msg = self.take(0)  # sent just before it ended
                    if msg is None and self.exited is None:
                        raise self.died()
                elif end is not None and time.monotonic() >= end:
                    raise TimeoutError(f"the {self.name} process did not end in {timeout} s")
                elif on_wait is not None:
                    on_wait()
            if msg is not None and not isinstance(msg, Exited) and on_message is not None:
                on_message(msg)
        if self.exited.error is not None:
            raise self.exited.error.rebuild()
        return self.exited.value

    def reap(self, grace: float = 30.0, *, terminate: bool = True) -> None:
        """Wait up to ``grace`` seconds for the child to end, then SIGTERM (its cleanup runs; not
        when it ignores SIGTERM: ``terminate=False``), then SIGKILL."""
        proc = self.proc
        proc.join(grace)
        if proc.is_alive() and terminate:
            proc.terminate()
            proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
        self.channel.close()


def spawn(
    target: Callable[..., Any],
    *args: Any,
    name: str,
    codec: Codec,
    signals: dict[signal.Signals, Signals] | None = None,
    die_with_parent: signal.Signals | None = None,
    nice: int = 0,
    sched_idle: bool = False,
    fallback_nice: int = 0,
    gc_batch: bool = False,
    freeze: bool = False,
    watch: bool = False,
    close_in_child: Sequence[Any] = (),
    daemon: bool = True,
) -> Child:
    """Fork a child that runs ``target(ChildContext, *args)`` (see the module's docstring).
    ``signals``: the disposition of SIGINT, SIGTERM and SIGHUP (default: all IGNORE: the parent
    decides when its children end). ``codec`` must know the records the channel carries
    (``codec_for``)."""
    import multiprocessing

    dispositions = {
        signal.SIGINT: Signals.IGNORE,
        signal.SIGTERM: Signals.IGNORE,
        signal.SIGHUP: Signals.IGNORE,
    }
    dispositions.update(signals or {})
    if freeze:
        gc.collect()
        gc.freeze()
    ctx = multiprocessing.get_context("fork")
    mine, theirs = ctx.Pipe(duplex=True)
    proc = ctx.Process(
        target=_child_main,
        name=f"shadowtap-{name}",
        daemon=daemon,
        args=(
            target,
            theirs,
            codec,
            name,
            args,
            dispositions,
            die_with_parent,
            nice,
            sched_idle,
            fallback_nice,
            gc_batch,
            watch,
            (mine, *close_in_child),
        ),
    )
    proc.start()
    theirs.close()
    return Child(proc, Channel(mine, codec), name)


def enlarge_pipe(fd: int, size: int) -> int:
    """Ask for a pipe of ``size`` bytes, else of the largest size an unprivileged process may ask
    (/proc/sys/fs/pipe-max-size, 1 MiB by default: more needs CAP_SYS_RESOURCE, which root may
    lack); returns the size the pipe has (the default 64 KiB if both are refused)."""
    try:
        return fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)
    except OSError:
        pass
    try:
        with open("/proc/sys/fs/pipe-max-size") as f:
            allowed = int(f.read())
        return fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, min(size, allowed))
    except (OSError, ValueError):
        return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
