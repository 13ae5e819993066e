"""Real grpcio client and server (protos compiled by grpcio-tools), their bytes relayed on
loopback and read by the passive HTTP/2 parser: the calls recorded equal what the client sent and
received, for the four call kinds, metadata, an error status and gzip compression."""

from __future__ import annotations

import grpc
import pytest

from shadowtap.wire.http2 import Conversation, Event
from tests.support.grpc_lab import Relay, client_traffic, compile_protos, serve


@pytest.fixture(scope="module")
def protos(tmp_path_factory):
    return compile_protos(tmp_path_factory.mktemp("protos"))


def parse(log):
    conv = Conversation()
    done = []
    for fc, ts, data in log:
        conv.data(fc, ts, data)
        done += [st for ev, st in conv.events if ev == Event.DONE and not st.void]
        conv.events.clear()
    conv.end(True, 9e9)  # as the Extractor does at FIN or the end of input
    conv.end(False, 9e9)
    conv.close(9e9)
    done += [st for ev, st in conv.events if ev == Event.DONE and not st.void]
    return conv, done


@pytest.mark.parametrize("compression", [None, grpc.Compression.Gzip])
def test_grpcio_calls_recorded_as_sent(protos, compression):
    pb2, pb2_grpc, _ = protos
    server, port = serve(pb2, pb2_grpc, "v1", compression=compression)
    relay = Relay(("127.0.0.1", port))
    try:
        got = client_traffic(pb2, pb2_grpc, f"127.0.0.1:{relay.port}", compression=compression)
    finally:
        relay.close()
        server.stop(0)
    conv, done = parse(relay.log)
    calls = [st for st in done if st.grpc is not None]
    assert len(calls) == 8 + 5 and conv.anomalies == []
    by_method: dict[str, list] = {}
    for st in calls:
        by_method.setdefault(st.grpc.method, []).append(st)
    unary = sorted(by_method["Infer"], key=lambda st: st.id)
    for (req, resp), st in zip(got["unary"], unary[:8], strict=True):
        assert st.grpc.service == "lab.model.Model" and st.grpc.status == 0
        assert pb2.InferRequest.FromString(st.grpc.request_messages[0].data) == req
        assert pb2.InferResponse.FromString(st.grpc.response_messages[0].data) == resp
        assert ("x-tenant", "acme") in st.request.headers and (
            "x-served-by",
            "v1",
        ) in st.response.headers
        assert st.h2.outcome == "complete" and st.anomalies == []
        if compression:  # small messages go uncompressed (gRPC's choice), the header says gzip
            assert ("grpc-encoding", "gzip") in st.request.headers
    big = unary[8]
    assert pb2.InferRequest.FromString(big.grpc.request_messages[0].data) == got["big"][0]
    assert big.grpc.request_messages[0].compressed == (compression is not None)
    if compression:
        assert big.grpc.request_messages[0].length < 1000 < len(big.grpc.request_messages[0].data)
    err = unary[9]
    assert (err.grpc.status, err.grpc.message) == (5, "no model named missing")
    [ss] = by_method["InferStream"]
    assert [pb2.InferResponse.FromString(m.data) for m in ss.grpc.response_messages] == got[
        "server_stream"
    ]
    [cs] = by_method["InferBatch"]
    assert (
        cs.grpc.request_count == 3
        and pb2.InferResponse.FromString(cs.grpc.response_messages[0].data) == got["client_stream"]
    )
    [bd] = by_method["InferBidi"]
    assert [pb2.InferResponse.FromString(m.data) for m in bd.grpc.response_messages] == got["bidi"]
    # Timings: each side's first and last byte, request before response.
    assert all(st.request.ts <= st.response.ts <= st.response.end_ts for st in calls)
