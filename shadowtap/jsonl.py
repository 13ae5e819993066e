"""Reading and writing JSON Lines files of records (exchanges, results).

Files are created with mode 0600 (captured traffic holds personal data), never through a link or
into a directory another user could plant one in (``create_private``), gzip-compressed when the
name ends in ``.gz``, ``-`` is standard output/input. Writers flush at least every
``flush_interval`` seconds, so a crash loses at most that much.
"""

from __future__ import annotations

import errno
import gzip
import os
import stat
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any, TypeVar

import msgspec
import orjson

from shadowtap.errors import InputError

T = TypeVar("T")

if TYPE_CHECKING:
    from typing_extensions import Self


def check_directory(path: str) -> None:
    """Refuse a directory another user could plant files or links in: writable by group or others
    and not owned by the caller (``/tmp`` for anyone but root, another user's world-writable
    folder). InputError naming it otherwise. A directory the caller owns, or one only its owner
    (root, say) can write, is fine."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise InputError(f"cannot use the directory: {exc.strerror}", where=path) from exc
    if not stat.S_ISDIR(st.st_mode):
        raise InputError("not a directory", where=path)
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and st.st_uid != os.geteuid():
        raise InputError(
            f"refusing a directory other users can write (mode {stat.S_IMODE(st.st_mode):o}, "
            f"owner uid {st.st_uid}): they could plant a link or a file where the output goes",
            where=path,
            hint="write into a directory you own that others cannot write (e.g. a 0700 folder)",
        )


def _shared(st: os.stat_result) -> bool:
    return bool(st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def create_private(path: str, *, binary: bool = True) -> IO[Any]:
    """Open ``path`` for writing (truncating) with mode 0600, whatever the umask, safely in a
    directory others can reach (issue 12 item 9; docs/security.md):

    - the directory must not be writable by others unless the caller owns it (``check_directory``);
    - the file is opened with ``O_NOFOLLOW``: a symbolic link is followed only when it belongs to
      the caller or root (``/dev/stdout``, a link the user made), never one another user planted;
    - an existing regular file with other hard links, or (in a directory others can write)
      owned by another user, is refused before anything is truncated;
    - an existing regular file keeps its inode and has its mode set to 0600; a device or a FIFO
      (``/dev/null``, a named pipe) is written as it is, its mode left alone."""
    folder = os.path.dirname(os.path.abspath(path))
    check_directory(folder)
    me = os.geteuid()
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise InputError(f"cannot write: {exc.strerror}", where=path) from exc
        link = os.lstat(path)
        if link.st_uid not in (me, 0):
            raise InputError(
                f"refusing to follow a symbolic link owned by uid {link.st_uid}",
                where=path,
                hint="remove the link, or write elsewhere",
            ) from exc
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc2:
            raise InputError(f"cannot write: {exc2.strerror}", where=path) from exc2
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode):
        problem = None
        if st.st_nlink > 1:
            problem = f"the file has {st.st_nlink} hard links: writing would change the others too"
        elif st.st_uid != me and _shared(os.stat(folder)):
            problem = f"the file belongs to uid {st.st_uid} in a directory others can write"
        if problem is not None:
            os.close(fd)
            raise InputError(
                f"refusing to write: {problem}", where=path, hint="remove it, or write elsewhere"
            )
        os.ftruncate(fd, 0)
        os.fchmod(fd, 0o600)
    # 64 KiB buffers: a write syscall per ~100 exchanges, not per ~10 (writers flush every second).
    return os.fdopen(fd, "wb" if binary else "w", buffering=1 << 16)


class JsonlWriter:
    """Writes one JSON object a line. Use as a context manager; ``close`` flushes."""

    def __init__(self, path: str, *, flush_interval: float = 1.0) -> None:
        self.path = path
        self.count = 0
        self._flush_interval = flush_interval
        self._last_flush = time.monotonic()
        self._raw: IO[bytes] | None
        if path == "-":
            self._raw = None
            self._out: IO[bytes] | gzip.GzipFile = sys.stdout.buffer
        else:
            self._raw = create_private(path)
            if path.endswith(".gz"):
                # The gzip member is flushed with Z_SYNC_FLUSH on flush(), so a reader of a crashed
                # run's file gets every line written before the last flush.
                self._out = gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=6)
            else:
                self._out = self._raw

    def write(self, obj: dict[str, Any]) -> None:
        self.write_line(orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE))

    def write_line(self, line: bytes) -> None:
        """One line already encoded (a JSON object and its newline: a merge of other files')."""
        self._out.write(line)
        self.count += 1
        now = time.monotonic()
        if now - self._last_flush >= self._flush_interval:
            self.flush()

    def write_lines(self, lines: list[bytes]) -> None:
        """Lines already serialised (each ending with a newline), in one write call."""
        self._out.write(b"".join(lines))
        self.count += len(lines)
        now = time.monotonic()
        if now - self._last_flush >= self._flush_interval:
            self.flush()

    def flush(self) -> None:
        self._out.flush()
        if self._raw is not None and self._out is not self._raw:
            self._raw.flush()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        self.flush()
        if self._out is not sys.stdout.buffer:
            self._out.close()
        if self._raw is not None and not self._raw.closed:
            self._raw.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_READ_BUFFER = 1 << 20


def _open_input(path: str) -> IO[bytes]:
    if path == "-":
        return sys.stdin.buffer
    gz = path.endswith(".gz")
    try:
        # 1 MiB buffers for plain files: records of streamed answers are lines of 5-20 KB, which
        # the default 8 KiB buffer reads in pieces and joins (readline 3.3 -> 1.3 us a 9 KB line)
        raw = open(path, "rb", buffering=-1 if gz else _READ_BUFFER)  # noqa: SIM115 - closed by the caller
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", where=path) from exc
    if gz:
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


def malformed(exc: Exception) -> str:
    """Why a JSONL line is not a record, for the user: a KeyError's text is only the key's repr
    (``'exchange_id'``), so it is named as the missing field it is."""
    if isinstance(exc, KeyError):
        return f"malformed record: missing field {exc} (is this the right kind of file?)"
    if isinstance(exc, msgspec.ValidationError) and "missing required field" in str(exc):
        return f"malformed record: {exc} (is this the right kind of file?)"
    return f"malformed record: {exc}"


def read_jsonl(
    path: str,
    decode: Callable[[Any], T],
    on_error: Callable[[InputError], None] | None = None,
    keep: Callable[[bytes], bool] | None = None,
    other: Callable[[bytes], T | None] | None = None,
    *,
    lines: bool = False,
) -> Iterator[T]:
    """Yield ``decode(obj)`` for each line of ``path`` (``decode(line)``, the raw bytes, with
    ``lines``: a typed decoder of its own) (each line ``keep(line)`` accepts, when
    given: a cheap test on the raw bytes that spares the parse of lines another reader takes;
    ``other(line)``, when given and not None, is yielded for the lines ``keep`` rejects: a
    placeholder of another reader's line).

    A malformed line (bad JSON, or ``decode`` raising ValueError/KeyError/TypeError or msgspec's
    DecodeError) is reported to
    ``on_error`` as an InputError naming the file and line, and skipped; without ``on_error`` it
    raises. Blank lines are skipped. Reads are streaming: memory is O(longest line)."""
    f = _open_input(path)
    try:
        lineno = 0
        while True:
            try:
                line = f.readline()
            except (OSError, EOFError, gzip.BadGzipFile) as exc:
                err = InputError(f"unreadable after line {lineno}: {exc}", where=path)
                if on_error is None:
                    raise err from exc
                on_error(err)
                return
            if not line:
                return
            lineno += 1
            if keep is not None and not keep(line):
                if other is not None:
                    placeholder = other(line)
                    if placeholder is not None:
                        yield placeholder
                continue
            if line.isspace():  # blank (line is not empty here): no stripped copy of every line
                continue
            try:
                if lines:
                    yield decode(line)
                    continue
                obj = orjson.loads(line)
                if not isinstance(obj, dict):
                    raise TypeError("not a JSON object")
                yield decode(obj)
            except (
                orjson.JSONDecodeError,
                msgspec.DecodeError,
                ValueError,
                KeyError,
                TypeError,
            ) as exc:
                err = InputError(malformed(exc), where=f"{path} line {lineno}")
                if on_error is None:
                    raise err from exc
                on_error(err)
    finally:
        if f is not sys.stdin.buffer:
            f.close()
