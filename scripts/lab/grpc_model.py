"""The lab's gRPC model service: KServe v2 / Triton's ``inference.GRPCInferenceService`` with its
``ModelInfer`` call, serving a risk classifier over the demo's transaction features.

The messages are KServe v2's own (``grpc_predict_v2.proto``: the same package, names and field
numbers, so the bytes on the wire are those a Triton or KServe client sends), reduced to the
fields the lab uses (no parameters maps, no requested outputs). They are built at run time from a
``FileDescriptorProto`` with protobuf's descriptor pool: no protoc, no generated code, nothing
but grpcio and protobuf installed. ``descriptor_set()`` is the FileDescriptorSet that
``shadowtap compare/mirror --proto-descriptor`` reads, so reports name the fields
(``outputs[].contents.fp32_contents``) and compare the output tensors.

The model (``classify``, pure and deterministic): input ``features`` FP32 [1, 6] (amount, account
age in days, items, country index, device index, hour; the REST ``/v1/predict`` features), output
``probabilities`` FP32 [1, 3] over ``CLASSES`` (softmax). Version 2 is "retrained": its logits are
scaled and shifted, so every score moves a little and the top-1 class flips for the inputs near
a boundary (about 5-10% of the traffic generator's mix). Served by grpcio's asyncio server with a
generic handler (``add_to_server``); the demo service shares its port (scripts/lab/demo_service.py).
"""

from __future__ import annotations

import math
import random
import sys
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from shadowtap.lab.demo_service import _COUNTRY_RISK, _DEVICE_RISK, _logit

SERVICE = "inference.GRPCInferenceService"
METHOD = f"/{SERVICE}/ModelInfer"
MODEL = "risk"
CLASSES = ("approve", "review", "decline")
COUNTRIES = tuple(_COUNTRY_RISK)
DEVICES = tuple(_DEVICE_RISK)

_F = descriptor_pb2.FieldDescriptorProto
_TENSOR_FIELDS = (("name", 1, _F.TYPE_STRING), ("datatype", 2, _F.TYPE_STRING))
_CONTENTS = (
    ("bool_contents", 1, _F.TYPE_BOOL),
    ("int_contents", 2, _F.TYPE_INT32),
    ("int64_contents", 3, _F.TYPE_INT64),
    ("uint_contents", 4, _F.TYPE_UINT32),
    ("uint64_contents", 5, _F.TYPE_UINT64),
    ("fp32_contents", 6, _F.TYPE_FLOAT),
    ("fp64_contents", 7, _F.TYPE_DOUBLE),
    ("bytes_contents", 8, _F.TYPE_BYTES),
)


def _file() -> descriptor_pb2.FileDescriptorProto:
    """KServe v2's messages and service (the subset the lab uses, the real field numbers)."""
    f = descriptor_pb2.FileDescriptorProto(
        name="grpc_predict_v2.proto", package="inference", syntax="proto3"
    )

    def field(msg: Any, name: str, number: int, kind: int, *, repeated: bool = False) -> Any:
        label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
        return msg.field.add(name=name, number=number, type=kind, label=label)

    contents = f.message_type.add(name="InferTensorContents")
    for name, number, kind in _CONTENTS:
        field(contents, name, number, kind, repeated=True)

    def tensor(parent: Any, name: str) -> None:
        t = parent.nested_type.add(name=name)
        for fname, number, kind in _TENSOR_FIELDS:
            field(t, fname, number, kind)
        field(t, "shape", 3, _F.TYPE_INT64, repeated=True)
        field(t, "contents", 5, _F.TYPE_MESSAGE).type_name = ".inference.InferTensorContents"

    for name, tensor_type, tensors, raw in (
        ("ModelInferRequest", "InferInputTensor", ("inputs", 5), ("raw_input_contents", 7)),
        ("ModelInferResponse", "InferOutputTensor", ("outputs", 5), ("raw_output_contents", 6)),
    ):
        m = f.message_type.add(name=name)
        field(m, "model_name", 1, _F.TYPE_STRING)
        field(m, "model_version", 2, _F.TYPE_STRING)
        field(m, "id", 3, _F.TYPE_STRING)
        tensor(m, tensor_type)
        t = field(m, tensors[0], tensors[1], _F.TYPE_MESSAGE, repeated=True)
        t.type_name = f".inference.{name}.{tensor_type}"
        field(m, raw[0], raw[1], _F.TYPE_BYTES, repeated=True)
    svc = f.service.add(name="GRPCInferenceService")
    svc.method.add(
        name="ModelInfer",
        input_type=".inference.ModelInferRequest",
        output_type=".inference.ModelInferResponse",
    )
    return f


_FILE = _file()
_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_FILE)
ModelInferRequest: Any = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName("inference.ModelInferRequest")
)
ModelInferResponse: Any = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName("inference.ModelInferResponse")
)


def descriptor_set() -> bytes:
    """The FileDescriptorSet of the service (what ``protoc --descriptor_set_out`` writes)."""
    return descriptor_pb2.FileDescriptorSet(file=[_FILE]).SerializeToString()


# --- the model (pure) ----------------------------------------------------------------------------


def encode(features: dict[str, Any]) -> list[float]:
    """The REST features as the FP32 input row."""
    return [
        float(features["amount"]),
        float(features["account_age_days"]),
        float(features["items"]),
        float(COUNTRIES.index(str(features["country"]))),
        float(DEVICES.index(str(features["device"]))),
        float(features["hour"]),
    ]


def decode(row: list[float]) -> dict[str, Any]:
    """The FP32 input row as the features (ValueError for a row that is none)."""
    if len(row) != 6 or not all(math.isfinite(v) for v in row):
        raise ValueError("features must be 6 finite numbers")
    country, device = int(row[3]), int(row[4])
    if not (0 <= country < len(COUNTRIES) and 0 <= device < len(DEVICES)):
        raise ValueError("country or device index out of range")
    return {
        "amount": max(row[0], 0.0),
        "account_age_days": max(int(row[1]), 0),
        "items": max(int(row[2]), 0),
        "country": COUNTRIES[country],
        "device": DEVICES[device],
        "hour": int(row[5]) % 24,
    }


def classify(row: list[float], version: int) -> list[float]:
    """Class probabilities (rounded to 4 places, as FP32 carries them) of one input row."""
    z = _logit(decode(row))
    logits = [-1.5 * z, 0.6, 1.5 * z - 1.2]
    if version == 2:  # retrained: scaled and shifted towards "review"
        logits = [1.05 * logits[0], logits[1] + 0.2, 1.05 * logits[2]]
    top = max(logits)
    exp = [math.exp(v - top) for v in logits]
    total = sum(exp)
    return [round(e / total, 4) for e in exp]


def top1(row: list[float], version: int) -> str:
    probs = classify(row, version)
    return CLASSES[probs.index(max(probs))]


def infer_request(features: dict[str, Any], request_id: str) -> Any:
    req = ModelInferRequest(model_name=MODEL, id=request_id)
    t = req.inputs.add(name="features", datatype="FP32", shape=[1, 6])
    t.contents.fp32_contents.extend(encode(features))
    return req


def input_row(req: Any) -> list[float]:
    """The request's ``features`` row (ValueError when it has none)."""
    for t in req.inputs:
        if t.name == "features":
            return list(t.contents.fp32_contents)
    raise ValueError("no input named features")


# --- the service ---------------------------------------------------------------------------------


def add_to_server(server: Any, version: int) -> None:
    """``ModelInfer`` of ``version`` on a ``grpc.aio`` server (a generic handler: raw bytes in,
    the lab's message classes for parsing)."""
    import grpc

    async def model_infer(req: Any, context: Any) -> Any:
        if req.model_name != MODEL:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no model named {req.model_name!r}")
        try:
            probs = classify(input_row(req), version)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        resp = ModelInferResponse(model_name=MODEL, model_version=str(version), id=req.id)
        out = resp.outputs.add(name="probabilities", datatype="FP32", shape=[1, len(CLASSES)])
        out.contents.fp32_contents.extend(probs)
        return resp

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "ModelInfer": grpc.unary_unary_rpc_method_handler(
                model_infer,
                request_deserializer=ModelInferRequest.FromString,
                response_serializer=ModelInferResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))


def flip_share(n: int = 5000, seed: int = 1) -> float:
    """Share of the traffic generator's inputs whose top-1 class version 2 changes."""
    from shadowtap.lab.traffic import random_features

    rng = random.Random(seed)
    rows = [encode(random_features(rng)) for _ in range(n)]
    return sum(top1(r, 1) != top1(r, 2) for r in rows) / n


def main(argv: list[str]) -> int:
    """``python -m shadowtap.lab.grpc_model descriptor FILE``: write the FileDescriptorSet."""
    if len(argv) != 2 or argv[0] != "descriptor":
        print("usage: grpc_model.py descriptor FILE", file=sys.stderr)
        return 2
    import os

    fd = os.open(argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(descriptor_set())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
