"""gRPC replay end to end: real grpcio traffic to a v1 server, read by the passive parser, written
as exchanges, replayed by ``shadowtap replay`` to a v2 server (grpcio generic calls)."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from shadowtap.records import Result
from tests.support.grpc_lab import Relay, client_traffic, compile_protos, serve
from tests.wire.exchanges import exchanges

from .conftest import shadowtap_replay


@pytest.fixture(scope="module")
def protos(tmp_path_factory):
    return compile_protos(tmp_path_factory.mktemp("protos"))


@pytest.fixture(scope="module")
def captured(protos, tmp_path_factory):
    pb2, pb2_grpc, _ = protos
    server, port = serve(pb2, pb2_grpc, "v1")
    relay = Relay(("127.0.0.1", port))
    try:
        got = client_traffic(pb2, pb2_grpc, f"127.0.0.1:{relay.port}")
    finally:
        relay.close()
        server.stop(0)
    exs = exchanges(relay.log)
    path = tmp_path_factory.mktemp("cap") / "exchanges.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e.to_json()) + b"\n" for e in exs))
    return path, exs, got


def replay_to_v2(pb2, pb2_grpc, path, out) -> subprocess.CompletedProcess[str]:
    """``shadowtap replay`` of the captured calls to a v2 server started for it (stopped after)."""
    shadow, port = serve(pb2, pb2_grpc, "v2")
    try:
        p = shadowtap_replay(path, f"http://127.0.0.1:{port}", out)
    finally:
        shadow.stop(0)
    assert p.returncode == 0, p.stderr
    return p


def test_replay_to_v2_records_status_messages_and_metadata(protos, captured, tmp_path):
    pb2, pb2_grpc, _ = protos
    path, exs, _got = captured
    out = tmp_path / "results.jsonl"
    replay_to_v2(pb2, pb2_grpc, path, out)
    results = {
        r.exchange_id: r
        for r in (Result.from_json(orjson.loads(x)) for x in out.read_bytes().splitlines())
    }
    assert len(results) == len(exs) == 13
    for ex in exs:
        r = results[ex.id]
        assert r.error is None and r.grpc is not None, r
        assert r.grpc.method == ex.grpc.method and r.grpc.request_count == ex.grpc.request_count
        assert r.response.version == "HTTP/2" and r.total_ms is not None and r.sent >= r.scheduled
    infer = [ex for ex in exs if ex.grpc.method == "Infer" and ex.grpc.status == 0]
    for ex in infer:
        r = results[ex.id]
        primary = pb2.InferResponse.FromString(ex.grpc.response_messages[0].data)
        shadow_answer = pb2.InferResponse.FromString(r.grpc.response_messages[0].data)
        assert (primary.model_version, shadow_answer.model_version) == ("v1", "v2")
        assert shadow_answer.id == primary.id
        assert ("x-served-by", "v2") in r.response.headers
    missing = next(ex for ex in exs if ex.grpc.status == 5)
    assert (results[missing.id].grpc.status, results[missing.id].grpc.message) == (
        5,
        "no model named missing",
    )
    stream = next(ex for ex in exs if ex.grpc.method == "InferStream")
    assert results[stream.id].grpc.response_count == 3
    bidi = next(ex for ex in exs if ex.grpc.method == "InferBidi")
    assert results[bidi.id].grpc.response_count == 2


def test_replay_refused_target_is_an_error_not_a_status(captured, tmp_path):
    import socket

    path, _exs, _ = captured
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    out = tmp_path / "results.jsonl"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "shadowtap",
            "replay",
            str(path),
            "-t",
            f"http://127.0.0.1:{port}",
            "-o",
            str(out),
            "--allow-unsafe",
            "--speed",
            "max",
            "--no-check",
            "--timeout",
            "3",
            "--connect-timeout",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    results = (
        [Result.from_json(orjson.loads(x)) for x in out.read_bytes().splitlines()]
        if out.exists()
        else []
    )
    assert results, p.stderr
    assert all(r.error is not None and r.error.kind == "refused" for r in results), [
        r.error for r in results
    ]


def test_compare_reports_the_deliberate_difference_by_field_name(protos, captured, tmp_path):
    """Replay to v2, then ``shadowtap compare --proto-descriptor``: the report names the changed
    fields (model_version, the scores), the error call's status agrees."""
    import json

    pb2, pb2_grpc, desc = protos
    path, _exs, _ = captured
    out = tmp_path / "results.jsonl"
    replay_to_v2(pb2, pb2_grpc, path, out)
    report = tmp_path / "report.json"
    c = subprocess.run(
        [
            sys.executable,
            "-m",
            "shadowtap",
            "compare",
            str(path),
            str(out),
            "--json",
            str(report),
            "--proto-descriptor",
            str(desc),
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert c.returncode in (0, 10, 11), c.stderr
    text = report.read_text()
    rep = json.loads(text)
    assert "body.model_version" in text
    # the unary answers' scores are compared as a tensor (compare/tensors.py), not field by field
    infer = next(e for e in rep["endpoints"] if e["endpoint"].endswith("/lab.model.Model/Infer"))
    assert [o["name"] for o in infer["tensors"]["outputs"]] == ["scores"]
    assert "/lab.model.Model/Infer" in text
    assert rep["verdict"]["result"] in ("fail", "marginal")


@pytest.fixture
def tls_v2(protos, tmp_path):
    """A v2 gRPC server over TLS with a self-signed certificate made by openssl: (port, cert)."""
    from concurrent import futures

    import grpc

    from tests.support.grpc_lab import make_servicer
    from tests.support.nginx import make_cert

    pb2, pb2_grpc, _ = protos
    cert, key = make_cert(tmp_path)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb2_grpc.add_ModelServicer_to_server(make_servicer(pb2, pb2_grpc, "v2"), server)
    creds = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    yield port, cert
    server.stop(0)


@pytest.mark.parametrize("trust", ["ca", "insecure"])
def test_replay_to_a_tls_server_trusts_the_ca_given_or_any_with_insecure(
    captured, tls_v2, tmp_path, trust
):
    """An ``https://`` target: grpcio over TLS, the certificate verified against ``--ca``; with
    ``--insecure`` the unknown self-signed certificate is accepted (grpcio cannot skip
    verification: the target's own certificate is trusted, its name checked against itself)."""
    path, exs, _ = captured
    port, cert = tls_v2
    out = tmp_path / "results.jsonl"
    args = ("--ca", str(cert)) if trust == "ca" else ("--insecure",)
    p = shadowtap_replay(path, f"https://localhost:{port}", out, *args)
    assert p.returncode == 0, p.stderr
    results = [Result.from_json(orjson.loads(x)) for x in out.read_bytes().splitlines()]
    assert len(results) == len(exs)
    assert all(r.error is None and r.grpc is not None for r in results), results
    assert {r.grpc.status for r in results} == {0, 5}  # answers (one NOT_FOUND among them)


def test_replay_to_an_unknown_ca_stops_at_start_or_fails_each_call_saying_why(
    captured, tls_v2, tmp_path
):
    """Verification is on by default: the start check stops the run naming --ca; with
    --no-check every call fails as a TLS error that names --ca."""
    path, exs, _ = captured
    port, _cert = tls_v2
    out = tmp_path / "results.jsonl"
    p = shadowtap_replay(path, f"https://localhost:{port}", out)
    assert p.returncode != 0 and "certificate verify failed" in p.stderr and "--ca" in p.stderr, (
        p.stderr
    )
    shadowtap_replay(path, f"https://localhost:{port}", out, "--no-check")
    results = [Result.from_json(orjson.loads(x)) for x in out.read_bytes().splitlines()]
    assert len(results) == len(exs)
    assert all(r.response is None and r.error is not None for r in results)
    assert all(
        r.error.message.startswith("TLS: ") and "--ca" in r.error.message for r in results
    ), results[0]


def test_certificate_name_prefers_the_alternative_names(tls_v2):
    from shadowtap.replay.grpc_client import certificate_name

    _port, cert = tls_v2
    assert certificate_name(cert.read_bytes()) == "localhost"


def test_an_http1_request_saying_grpc_goes_out_as_http1(tmp_path, aio_target):
    """gRPC is HTTP/2 only: a captured HTTP/1.1 POST whose Content-Type says application/grpc (a
    gateway's or a misconfigured client's) is replayed as the HTTP/1.1 request it was."""
    from .conftest import make_exchange, read_results, write_jsonl

    body = b"\x00\x00\x00\x00\x02\x08\x01"
    ex = make_exchange(
        method="POST",
        target="/pkg.Svc/Call",
        headers=(("Content-Type", "application/grpc"),),
        body=body,
    )
    inp = write_jsonl(tmp_path / "in.jsonl", [ex])
    out = tmp_path / "res.jsonl"
    p = shadowtap_replay(inp, aio_target.url, out, "--speed", "max", "--allow-unsafe")
    assert p.returncode == 0, p.stderr
    (seen,) = aio_target.seen
    assert (seen.method, seen.path, seen.body) == ("POST", "/pkg.Svc/Call", body)
    assert seen.header("Content-Type") == "application/grpc"
    (r,) = read_results(out)
    assert r["response"]["status"] == 200 and r["error"] is None
