"""gRPC answers compared by message fields: with a schema (field names) and without (wire-format
tree, field numbers), status and message counts, undecodable bytes."""

from __future__ import annotations

import pytest

from shadowtap.compare.diff import Kind
from shadowtap.compare.protobuf import Schema, diff_grpc, message_tree
from shadowtap.errors import InputError
from shadowtap.records import GrpcCall, GrpcMessage
from tests.support.grpc_lab import compile_protos


@pytest.fixture(scope="module")
def protos(tmp_path_factory):
    return compile_protos(tmp_path_factory.mktemp("protos"))


def tol(_path):
    return (0.0, 0.0)


def call(pb2, *answers, status=0, message=None):
    msgs = tuple(GrpcMessage(a.SerializeToString(), a.ByteSize()) for a in answers)
    return GrpcCall("lab.model.Model", "Infer", (), msgs, 1, len(msgs), status, message)


def answer(pb2, version="v1", scores=(1.0, 2.0)):
    return pb2.InferResponse(
        model_name="clf",
        model_version=version,
        id="r1",
        outputs=[
            pb2.Tensor(
                name="scores", datatype="FP32", shape=[1, len(scores)], fp32_contents=list(scores)
            )
        ],
    )


def test_with_schema_fields_by_name(protos):
    pb2, _, desc = protos
    schema = Schema(desc)
    d = diff_grpc(call(pb2, answer(pb2)), call(pb2, answer(pb2, "v2", (1.0, 2.5))), tol, schema)
    paths = {x.path: x for x in d.differences}
    assert (
        paths["body.model_version"].primary == "v1" and paths["body.model_version"].shadow == "v2"
    )
    assert paths["body.outputs[].fp32_contents[]"].kind is Kind.VALUE
    assert d.primary_body.value["outputs"][0]["name"] == "scores"


def test_tolerance_applies_to_message_numbers(protos):
    pb2, _, desc = protos

    def loose(path):
        return (0.6, 0.0)

    d = diff_grpc(
        call(pb2, answer(pb2)), call(pb2, answer(pb2, scores=(1.0, 2.5))), loose, Schema(desc)
    )
    assert d.differences == []


def test_without_schema_wire_tree_paths(protos):
    pb2, _, _ = protos
    d = diff_grpc(call(pb2, answer(pb2)), call(pb2, answer(pb2, "v2", (1.0, 2.5))), tol, None)
    paths = {x.path for x in d.differences}
    assert "body.2" in paths  # model_version, field 2
    assert any(p.startswith("body.4") for p in paths)  # outputs, field 4: not folded to {id}
    tree, typedef = message_tree(answer(pb2).SerializeToString())
    assert tree["1"] == "clf" and typedef is not None


def test_status_message_and_stream_counts(protos):
    pb2, _, desc = protos
    p = call(pb2, answer(pb2), answer(pb2))
    s = call(pb2, answer(pb2), status=14, message="unavailable")
    d = diff_grpc(p, s, tol, Schema(desc))
    kinds = {(x.path, x.kind) for x in d.differences}
    assert ("grpc.status", Kind.VALUE) in kinds and ("grpc.message", Kind.VALUE) in kinds
    assert ("grpc.messages", Kind.SIZE) in kinds


def test_undecodable_bytes_compared_as_bytes():
    p = GrpcCall("a.B", "C", (), (GrpcMessage(b"\xff\xff\xff", 3),), 1, 1, 0)
    s = GrpcCall("a.B", "C", (), (GrpcMessage(b"\xff\xff\xfe\x00", 4),), 1, 1, 0)
    d = diff_grpc(p, s, tol, None)
    assert [(x.path, x.kind) for x in d.differences] == [("body", Kind.SIZE)]


def test_bad_descriptor_file(tmp_path):
    bad = tmp_path / "x.desc"
    bad.write_bytes(b"\x0a\x03abc\xff")
    with pytest.raises(InputError):
        Schema(bad)
    with pytest.raises(InputError):
        Schema(tmp_path / "missing.desc")
