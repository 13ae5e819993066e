"""Records and errors across a process boundary: the one codec of shadowtap's child processes.

A ``Codec`` is made from record classes (frozen dataclasses). For each it generates, from the
class's dataclass fields and their type hints, an encoder to a tuple of plain values and a decoder
back: a field holding another record (``Request | None``, ``tuple[GrpcMessage, ...]``) is encoded
recursively, an enum by its value, a field typed ``Any`` with a tag saying what it holds; the rest
(str, bytes, int, float, bool, None, tuples, dicts of those) goes as it is. ``dumps`` puts the
class's tag first and serialises with ``marshal`` (a few microseconds for an exchange, where
pickling the dataclasses costs 20-40); both ends are the same interpreter (a forked child), so
marshal's format is not a compatibility concern.

Because the code is generated from the fields, a field added to a record travels with it: nothing
to update here or in the processes that use it, and nothing dropped silently (tests/shadowtap/
test_codec.py adds one and checks it round-trips).

Errors: ``error_record`` turns any exception into an ``ErrorRecord`` (class, message, its plain
attributes such as hint, ``where`` and ``field``, exit code; for a bug, where it happened),
``ErrorRecord.rebuild`` gives back the same class of the ShadowtapError hierarchy, found among its
subclasses by module and name.

Framing for byte streams (a pipe read by an event loop, a non-blocking writer): ``frame`` prefixes a
payload with its length as multiprocessing.connection does (4 bytes, big-endian), so a frame
written here is what ``Connection.recv_bytes`` reads, and ``FrameReader`` splits a stream of them.
"""

from __future__ import annotations

import dataclasses
import enum
import marshal
import struct
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from shadowtap.errors import ShadowtapError

_LEN = struct.Struct("!i")  # multiprocessing.connection's length prefix
_RAW = 0  # the tag of an ``Any`` field's value that is not a record


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    """An exception as it crosses a process boundary; ``kind``: ``module:qualname`` of its class,
    ``attrs``: its own attributes (``message``, ``hint``, InputError's ``where`` and ``field``...:
    those of plain types), so an attribute added to an error class crosses too."""

    kind: str
    message: str
    attrs: dict[str, Any] = dataclasses.field(default_factory=dict)
    exit_code: int = 1

    def rebuild(self) -> ShadowtapError:
        """The error as the same class of the ShadowtapError hierarchy with the same attributes
        (ShadowtapError itself when the class is not one)."""
        cls = _error_classes().get(self.kind)
        if cls is None:
            err = ShadowtapError(self.message, hint=self.attrs.get("hint"))
        else:
            err = cls.__new__(cls)
            Exception.__init__(err, self.message)
            err.__dict__.update(self.attrs)
            err.message = self.message
        err.exit_code = self.exit_code
        return err


_PLAIN = (str, int, float, bool, bytes, type(None))


def error_record(exc: BaseException, process: str = "a child process") -> ErrorRecord:
    """``exc`` as an ErrorRecord. A ShadowtapError keeps its class and attributes; any other
    exception (a bug) becomes a ShadowtapError that says which process failed and where."""
    if isinstance(exc, ShadowtapError):
        cls = type(exc)
        attrs = {k: v for k, v in vars(exc).items() if isinstance(v, _PLAIN)}
        return ErrorRecord(
            f"{cls.__module__}:{cls.__qualname__}", exc.message, attrs, int(exc.exit_code or 1)
        )
    import traceback

    tb = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    at = f" at {tb.filename}:{tb.lineno}" if tb else ""
    return ErrorRecord("", f"{process} failed: {type(exc).__name__}: {exc}{at}")


def _error_classes() -> dict[str, type[ShadowtapError]]:
    out: dict[str, type[ShadowtapError]] = {}
    todo: list[type[ShadowtapError]] = [ShadowtapError]
    while todo:
        cls = todo.pop()
        out[f"{cls.__module__}:{cls.__qualname__}"] = cls
        todo.extend(cls.__subclasses__())
    return out


# ---------------------------------------------------------------------------------- generation
def _record_of(hint: Any) -> tuple[str, type | None]:
    """How a field's value is encoded: ("record", C), ("optional", C), ("many", C) for a tuple of
    records, ("enum", E), ("dict", None), ("any", None) for a field typed Any, ("raw", None) for
    the rest."""
    if hint is Any or hint is object:
        return "any", None
    if isinstance(hint, type):
        if dataclasses.is_dataclass(hint):
            return "record", hint
        if issubclass(hint, enum.Enum):
            return "enum", hint
        return "raw", None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            how, cls = _record_of(rest[0])
            if how == "record":
                return "optional", cls
            if how == "enum":
                return "optional_enum", cls
            return how, cls
        return ("any", None) if any(_record_of(a)[0] != "raw" for a in rest) else ("raw", None)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        how, cls = _record_of(args[0])
        if how == "record":
            return "many", cls
    if origin is dict:
        return "dict", None  # a Counter or another dict subclass is not marshal's: a plain copy
    return "raw", None


def _fields(record: type) -> list[tuple[str, Any]]:
    """(name, resolved type) of each field ``__init__`` takes, in order."""
    hints = typing.get_type_hints(record)
    return [(f.name, hints.get(f.name, Any)) for f in dataclasses.fields(record) if f.init]


def _keyword_only(record: type) -> set[str]:
    return {f.name for f in dataclasses.fields(record) if f.init and f.kw_only}


class Codec:
    """Encoders and decoders generated for ``classes`` and every record class their fields hold.
    ``dumps(obj)``/``loads(data)``: one record (any registered class) as bytes and back."""

    def __init__(self, classes: Iterable[type]) -> None:
        self._tags: dict[type, int] = {}
        self._enc: list[Any] = [None]  # by tag; tag 0 is _RAW
        self._dec: list[Any] = [None]
        self._classes: list[type] = [type(None)]
        for cls in classes:
            self._register(cls)
        ns: dict[str, Any] = {"_c": self, "_RAW": _RAW}
        for cls, tag in self._tags.items():
            ns[f"_C{tag}"] = cls
        for cls, tag in list(self._tags.items()):
            self._generate(cls, tag, ns)
        self._enc = [None] + [ns[f"_e{t}"] for t in range(1, len(self._classes))]
        self._dec = [None] + [ns[f"_d{t}"] for t in range(1, len(self._classes))]

    def _register(self, cls: type) -> None:
        if cls in self._tags:
            return
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls.__name__} is not a dataclass")
        self._tags[cls] = len(self._classes)
        self._classes.append(cls)
        for f in _fields(cls):
            how, inner = _record_of(f[1])
            if inner is not None and how in ("record", "optional", "many"):
                self._register(inner)

    def _generate(self, cls: type, tag: int, ns: dict[str, Any]) -> None:
        enc_parts, dec_parts = [], []
        # The decoder passes the fields positionally, in __init__'s order (half the cost of a
        # keyword call, the record's own validation still runs); keyword-only fields by name.
        kw_only = _keyword_only(cls)
        for i, (name, hint) in enumerate(_fields(cls)):
            how, inner = _record_of(hint)
            v, t = f"o.{name}", f"t[{i}]"
            if how == "record":
                k = self._tags[inner]  # type: ignore[index]
                enc_parts.append(f"_e{k}({v})")
                dec_parts.append(f"{name}=_d{k}({t})")
            elif how == "optional":
                k = self._tags[inner]  # type: ignore[index]
                enc_parts.append(f"None if {v} is None else _e{k}({v})")
                dec_parts.append(f"{name}=None if {t} is None else _d{k}({t})")
            elif how == "many":
                k = self._tags[inner]  # type: ignore[index]
                enc_parts.append(f"tuple([_e{k}(x) for x in {v}])")
                dec_parts.append(f"{name}=tuple([_d{k}(x) for x in {t}])")
            elif how in ("enum", "optional_enum"):
                ns[f"_E{tag}_{i}"] = inner
                enc_parts.append(f"None if {v} is None else {v}.value")
                dec_parts.append(f"{name}=None if {t} is None else _E{tag}_{i}({t})")
            elif how == "dict":
                enc_parts.append(f"None if {v} is None else dict({v})")
                dec_parts.append(f"{name}={t}")
            elif how == "any":
                enc_parts.append(f"_c._any({v})")
                dec_parts.append(f"{name}=_c._unany({t})")
            else:
                enc_parts.append(v)
                dec_parts.append(f"{name}={t}")
        names = [name for name, _hint in _fields(cls)]
        positional = [
            p[len(n) + 1 :] for p, n in zip(dec_parts, names, strict=True) if n not in kw_only
        ]
        dec_parts = positional + [p for p, n in zip(dec_parts, names, strict=True) if n in kw_only]
        comma = "," if len(enc_parts) == 1 else ""
        src = (
            f"def _e{tag}(o):\n    return ({', '.join(enc_parts)}{comma})\n"
            f"def _d{tag}(t):\n    return _C{tag}({', '.join(dec_parts)})\n"
        )
        exec(compile(src, f"<codec {cls.__qualname__}>", "exec"), ns)  # noqa: S102 - our own generated code

    def _any(self, value: Any) -> tuple[int, Any]:
        tag = self._tags.get(type(value))
        if tag is None:
            return (_RAW, value)
        return (tag, self._enc[tag](value))

    def _unany(self, t: tuple[int, Any]) -> Any:
        tag, value = t
        return value if tag == _RAW else self._dec[tag](value)

    def encode(self, obj: Any) -> tuple[int, Any]:
        """``obj`` (a registered record) as (tag, tuple of plain values)."""
        tag = self._tags[type(obj)]
        return tag, self._enc[tag](obj)

    def decode(self, t: tuple[int, Any]) -> Any:
        return self._dec[t[0]](t[1])

    def dumps(self, obj: Any) -> bytes:
        tag = self._tags[type(obj)]
        return marshal.dumps((tag, self._enc[tag](obj)))

    def loads(self, data: bytes | bytearray | memoryview) -> Any:
        tag, t = marshal.loads(data)
        return self._dec[tag](t)


def frame(payload: bytes) -> bytes:
    """``payload`` with its length first, as multiprocessing.connection frames it."""
    return _LEN.pack(len(payload)) + payload


class FrameReader:
    """Frames in (any split), payloads out. Pure; holds at most one partial frame."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out = []
        pos = 0
        n = len(buf)
        unpack = _LEN.unpack_from
        while n - pos >= 4:
            (size,) = unpack(buf, pos)
            if n - pos - 4 < size:
                break
            out.append(bytes(buf[pos + 4 : pos + 4 + size]))
            pos += 4 + size
        if pos:
            del buf[:pos]
        return out
