"""The lab's gRPC model (scripts/lab/grpc_model.py): its descriptor set is what compare reads
(the messages by the method's name), its model deterministic, version 2 flipping the top-1 class
of a few inputs, and the service's errors real gRPC statuses (a grpcio server and client)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from shadowtap.compare.protobuf import Schema
from shadowtap.lab import grpc_model as gm

FEATURES = {
    "amount": 120.0,
    "account_age_days": 30,
    "items": 2,
    "country": "BR",
    "device": "mobile",
    "hour": 3,
}


def test_descriptor_set_names_the_kserve_messages(tmp_path):
    assert gm.main(["descriptor", str(tmp_path / "m.desc")]) == 0
    schema = Schema(tmp_path / "m.desc")
    req_cls = schema.message_class(gm.SERVICE, "ModelInfer", False)
    resp_cls = schema.message_class(gm.SERVICE, "ModelInfer", True)
    wire = gm.infer_request(FEATURES, "r1").SerializeToString()
    req = req_cls.FromString(wire)
    assert req.model_name == "risk" and list(req.inputs[0].shape) == [1, 6]
    assert resp_cls.DESCRIPTOR.full_name == "inference.ModelInferResponse"
    assert oct((tmp_path / "m.desc").stat().st_mode & 0o777) == "0o600"


def test_model_is_deterministic_and_v2_flips_a_few():
    row = gm.encode(FEATURES)
    assert gm.decode(row)["country"] == "BR"
    p1, p2 = gm.classify(row, 1), gm.classify(row, 2)
    assert gm.classify(row, 1) == p1 and abs(sum(p1) - 1) < 1e-3 and p1 != p2
    assert 0.02 < gm.flip_share(2000) < 0.10
    with pytest.raises(ValueError):
        gm.decode([1.0, 2.0])


def test_service_answers_and_its_errors_are_grpc_statuses():
    async def go():
        server = grpc.aio.server()
        gm.add_to_server(server, 2)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                call = ch.unary_unary(
                    gm.METHOD,
                    request_serializer=gm.ModelInferRequest.SerializeToString,
                    response_deserializer=gm.ModelInferResponse.FromString,
                )
                ok = await call(gm.infer_request(FEATURES, "r1"))
                codes = []
                for bad in (
                    gm.ModelInferRequest(model_name="other"),
                    gm.ModelInferRequest(model_name="risk"),
                ):
                    try:
                        await call(bad)
                    except grpc.aio.AioRpcError as exc:
                        codes.append(exc.code())
                return ok, codes
        finally:
            await server.stop(None)

    ok, codes = asyncio.run(go())
    assert ok.model_version == "2" and ok.id == "r1"
    (out,) = ok.outputs
    assert out.name == "probabilities" and list(out.shape) == [1, 3]
    assert list(out.contents.fp32_contents) == pytest.approx(
        gm.classify(gm.encode(FEATURES), 2), abs=1e-6
    )
    assert codes == [grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT]
