"""gRPC answers compared message by message (pure; the schema is loaded once by the caller).

A gRPC pair's differences (the same ``Difference`` records and kinds as compare/diff.py):

- ``grpc.status`` (the gRPC status code: for gRPC it plays the part the HTTP status plays for
  HTTP, which is always 200) and ``grpc.message``;
- ``grpc.messages`` (``size``) when the answers hold different numbers of messages;
- the messages' fields: ``body.<path>`` for a single answer message, ``body[].<path>`` for a
  stream (message positions fold like array elements). Each message becomes a JSON tree and is
  walked by compare/diff.py's ``diff_json``, so folding, numeric tolerances and the per-field
  statistics work as for JSON bodies.

The tree of a message: with a schema (``Schema`` from a FileDescriptorSet, as ``protoc
--descriptor_set_out`` or grpcio-tools write it), protobuf's ``json_format`` with the proto
field names (``body.outputs[].fp32_contents``); without one, the wire-format tree decoded by
``bbpb`` (blackboxprotobuf): keys are field numbers (``body.4[].4``), length-delimited fields
become nested messages where they parse as such, else strings or bytes (``b64:`` + base64). A
length-delimited field is ambiguous on the wire, so the shadow's message is decoded with the
type bbpb inferred from the primary's: both sides read the same way, and a difference of shape
shows as a difference, not as two unrelated guesses. A message that does not decode at all is
compared as bytes (``body``: ``value`` with digests, or ``size``).

Costs: O(message bytes) per message for decoding and walking; messages beyond ``MAX_MESSAGES``
per answer are compared by count only.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

from shadowtap.compare.diff import (
    MAX_DIFFERENCES,
    MAX_WALK,
    Body,
    BodyType,
    Budget,
    Difference,
    Kind,
    PairDiff,
    diff_json,
)
from shadowtap.errors import InputError
from shadowtap.records import GrpcCall

__all__ = ["MAX_MESSAGES", "Schema", "diff_grpc", "message_tree"]

MAX_MESSAGES = 256


class Schema:
    """Message types by gRPC method, from a FileDescriptorSet file (loaded once)."""

    def __init__(self, path: str | Path) -> None:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise InputError(
                f"cannot read the descriptor set: {exc.strerror}", where=str(path)
            ) from exc
        fds = descriptor_pb2.FileDescriptorSet()
        try:
            fds.ParseFromString(data)
            pool = descriptor_pool.DescriptorPool()
            for f in fds.file:
                pool.Add(f)
        except Exception as exc:  # protobuf raises several kinds for a bad file
            raise InputError(
                f"not a FileDescriptorSet (protoc --descriptor_set_out): {exc}", where=str(path)
            ) from exc
        self._pool = pool
        self._factory = message_factory
        self._types: dict[tuple[str, str, bool], Any] = {}

    def message_class(self, service: str, method: str, response: bool) -> Any | None:
        key = (service, method, response)
        if key not in self._types:
            try:
                m = self._pool.FindMethodByName(f"{service}.{method}")
                desc = m.output_type if response else m.input_type
                self._types[key] = self._factory.GetMessageClass(desc)
            except KeyError:
                self._types[key] = None
        return self._types[key]


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    if isinstance(v, (bytes, bytearray)):
        return "b64:" + base64.b64encode(bytes(v)).decode("ascii")
    return v


def message_tree(
    data: bytes, *, cls: Any = None, typedef: dict | None = None
) -> tuple[Any, dict | None]:
    """A message as a JSON tree and the bbpb typedef used (None with a schema). Raises ValueError
    when the bytes are not a message of that type (or not a protobuf message at all)."""
    if cls is not None:
        from google.protobuf import json_format
        from google.protobuf.message import DecodeError

        msg = cls()
        try:
            msg.ParseFromString(data)
        except DecodeError as exc:
            raise ValueError(str(exc)) from exc
        return json_format.MessageToDict(msg, preserving_proto_field_name=True), None
    import blackboxprotobuf

    try:
        if typedef is not None:
            value, used = blackboxprotobuf.decode_message(data, typedef)
        else:
            value, used = blackboxprotobuf.decode_message(data)
    except Exception as exc:  # bbpb raises its own and builtin errors
        raise ValueError(str(exc)) from exc
    return _jsonable(value), used


def _digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:16]


def _diff_wire(
    p: Any, s: Any, path: str, out: list[Difference], tolerance: Any, budget: Budget
) -> None:
    """diff_json for wire-format trees: the same kinds, but field numbers are a schema, never
    folded as ids (``body.4[].4``, not ``body.{id}``); scalars go to diff_json (tolerances).
    Every node visited spends one unit of the pair's ``budget``."""
    if not budget.spend():
        return
    if isinstance(p, dict) and isinstance(s, dict):
        for k, pv in p.items():
            if k in s:
                _diff_wire(pv, s[k], f"{path}.{k}", out, tolerance, budget)
            else:
                out.append(Difference(f"{path}.{k}", Kind.MISSING, pv, None))
        for k, sv in s.items():
            if k not in p:
                out.append(Difference(f"{path}.{k}", Kind.EXTRA, None, sv))
    elif isinstance(p, list) and isinstance(s, list):
        if len(p) != len(s):
            out.append(Difference(path, Kind.SIZE, len(p), len(s)))
        seen: set[str] = set()
        for a, b in zip(p, s):
            found: list[Difference] = []
            _diff_wire(a, b, path + "[]", found, tolerance, budget)
            for d in found:
                if d.path not in seen:
                    seen.add(d.path)
                    out.append(d)
    else:
        diff_json(p, s, path, out, tolerance, budget)


def diff_grpc(
    p: GrpcCall,
    s: GrpcCall,
    tolerance: Any,
    schema: Schema | None = None,
    *,
    max_walk: int = MAX_WALK,
    max_differences: int = MAX_DIFFERENCES,
) -> PairDiff:
    """The differences of a primary and a shadow gRPC answer (see the module docstring). The
    returned PairDiff's bodies are the answers as JSON trees (a list for a stream), so the
    caller's per-field statistics read them like JSON bodies. The walk over all messages is
    bounded by one budget (``max_walk`` values, ``max_differences`` kept), as for a body."""
    out: list[Difference] = []
    budget = Budget(max_walk, max_differences)
    if p.status != s.status:
        out.append(Difference("grpc.status", Kind.VALUE, p.status, s.status))
    if (p.message or "") != (s.message or ""):
        out.append(Difference("grpc.message", Kind.VALUE, p.message, s.message))
    if p.response_count != s.response_count:
        out.append(Difference("grpc.messages", Kind.SIZE, p.response_count, s.response_count))
    stream = max(p.response_count, s.response_count) > 1
    root = "body[]" if stream else "body"
    cls = schema.message_class(p.service, p.method, True) if schema is not None else None
    ptrees: list[Any] = []
    strees: list[Any] = []
    pairs = list(zip(p.response_messages, s.response_messages))[:MAX_MESSAGES]
    for pm, sm in pairs:
        if budget.cut:
            break
        if pm.data == sm.data:
            try:
                tree, _ = message_tree(pm.data, cls=cls)
            except ValueError:
                tree = "b64:" + base64.b64encode(pm.data).decode("ascii")
            ptrees.append(tree)
            strees.append(tree)
            continue
        try:
            ptree, typedef = message_tree(pm.data, cls=cls)
            stree, _ = message_tree(sm.data, cls=cls, typedef=typedef)
        except ValueError:
            # Not both decodable the same way: compared as bytes.
            if len(pm.data) != len(sm.data):
                out.append(Difference(root, Kind.SIZE, len(pm.data), len(sm.data)))
            else:
                out.append(Difference(root, Kind.VALUE, _digest(pm.data), _digest(sm.data)))
            continue
        ptrees.append(ptree)
        strees.append(stree)
        found: list[Difference] = []
        if cls is None:
            _diff_wire(ptree, stree, root, found, tolerance, budget)
        else:
            diff_json(ptree, stree, root, found, tolerance, budget)
        # One report per path over the messages of a stream.
        seen = {d.path for d in out}
        out.extend(d for d in found if d.path not in seen)
    pv: Any = ptrees if stream else (ptrees[0] if ptrees else {})
    sv: Any = strees if stream else (strees[0] if strees else {})
    praw = b"".join(m.data for m in p.response_messages)
    sraw = b"".join(m.data for m in s.response_messages)
    return PairDiff(out, Body(BodyType.JSON, pv, praw), Body(BodyType.JSON, sv, sraw), budget.cut)
