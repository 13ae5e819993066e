"""h2c with prior knowledge between real peers: curl (nghttp2's HPACK encoder: dynamic table,
Huffman) against nginx's cleartext ``http2`` listener, relayed on loopback and read by the passive
parser; and a real grpcio session joined mid-way (the first part of its bytes cut off)."""

from __future__ import annotations

import socket
import subprocess
import time

import pytest

from shadowtap.wire.http2 import Conversation, Event
from tests.support.grpc_lab import Relay, client_traffic, compile_protos, serve
from tests.support.prereq import require_tool

NGINX = """
user root;
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  server {{
    listen 127.0.0.1:{port} http2;
    root {dir}/www;
    location /api {{ add_header X-Served h2c; default_type application/json;
                    return 200 '{{"ok":true}}'; }}
  }}
}}
"""


def parse(log, midstream=False):
    conv = Conversation(midstream=midstream)
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


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def nginx_h2c(tmp_path):
    require_tool("nginx")
    port = free_port()
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "big.txt").write_bytes(b"0123456789abcdef" * 8192)  # 128 KiB: many frames
    (tmp_path / "conf").write_text(NGINX.format(dir=tmp_path, port=port))
    proc = subprocess.Popen(
        ["nginx", "-c", str(tmp_path / "conf"), "-p", str(tmp_path)], stderr=subprocess.PIPE
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield port
    proc.terminate()
    proc.wait(10)


def test_curl_prior_knowledge_against_nginx(nginx_h2c):
    """curl 7.88 does not reuse a prior-knowledge connection for a second URL (it exits 16), so
    each request is its own connection; nghttp2's encoder still indexes within a head and
    Huffman-codes the strings."""
    require_tool("curl")
    relay = Relay(("127.0.0.1", nginx_h2c))
    base = f"http://127.0.0.1:{relay.port}"
    common = [
        "curl",
        "-s",
        "--http2-prior-knowledge",
        "-H",
        "X-Trace: abc123",
        "-H",
        "X-Long: " + "L" * 200,
    ]
    try:
        for path in ("/api/one", "/big.txt", "/api/two?q=1", "/missing"):
            subprocess.run([*common, "-o", "/dev/null", base + path], timeout=30, check=True)
        # nginx answers a `return` before reading the body, then resets the stream (NO_ERROR):
        # curl 7.88 calls that an error (92); the exchange is recorded as it happened.
        subprocess.run(
            [*common, "-o", "/dev/null", "-d", "payload=1", base + "/api/post"], timeout=30
        )
    finally:
        relay.close()
    done = []
    for log in relay.by_conn:
        conv, streams = parse(log)
        assert conv.anomalies == []
        done += streams
    by = {st.request.target: st for st in done}
    assert set(by) == {"/api/one", "/big.txt", "/api/two?q=1", "/missing", "/api/post"}
    for st in done:
        assert ("x-trace", "abc123") in st.request.headers and (
            "x-long",
            "L" * 200,
        ) in st.request.headers
        assert ("user-agent", "curl/7.88.1") in st.request.headers or st.request.header(
            "user-agent"
        )
        assert st.request.version == "HTTP/2" and st.h2.stream_id == 1
        if st.request.target != "/api/post":
            assert st.anomalies == [] and st.h2.outcome == "complete"
    assert by["/api/one"].response.status == 200 and by["/api/one"].response.body == b'{"ok":true}'
    assert ("x-served", "h2c") in by["/api/one"].response.headers
    big = by["/big.txt"].response
    assert big.body == b"0123456789abcdef" * 8192 and big.body_len == 131072
    assert by["/missing"].response.status == 404
    post = by["/api/post"]
    assert post.request.method == "POST" and post.response.status == 200
    assert post.request.body == b"payload=1" or post.h2.outcome == "reset"


def test_grpcio_session_joined_mid_way(tmp_path):
    """The first third of a real grpcio connection's bytes is not seen: the calls after the cut
    are recovered; fields that referenced older HPACK entries are named, never guessed."""
    pb2, pb2_grpc, _ = compile_protos(tmp_path / "protos")
    server, port = serve(pb2, pb2_grpc, "v1")
    relay = Relay(("127.0.0.1", port))
    try:
        client_traffic(pb2, pb2_grpc, f"127.0.0.1:{relay.port}")
        client_traffic(pb2, pb2_grpc, f"127.0.0.1:{relay.port}")
    finally:
        relay.close()
        server.stop(0)
    # grpcio may keep one connection for both sessions (its subchannel pool): the last
    # connection, cut half way.
    log = relay.by_conn[-1]
    _, full = parse(log)
    half = log[len(log) // 2 :]
    # ... and mid-frame: the first kept write loses its first 5 bytes.
    half[0] = (half[0][0], half[0][1], half[0][2][5:])
    conv, done = parse(half, midstream=True)
    assert done, conv.anomalies
    calls = [st for st in done if st.grpc is not None]
    # (A call may show only one side's tail: its start and its answer fell before the cut.)
    assert calls and any(st.grpc.response_count >= 1 for st in calls)
    known = {st.grpc.path for st in calls if st.grpc.service}
    assert known <= {
        "/lab.model.Model/Infer",
        "/lab.model.Model/InferStream",
        "/lab.model.Model/InferBatch",
        "/lab.model.Model/InferBidi",
    }
    # Never guessed: a decoded field is one the full parse decoded for some stream too.
    seen_full = {f for st in full for f in st.request.headers}
    for st in calls:
        for f in st.request.headers if st.request is not None else ():
            assert f in seen_full
    assert conv.partly_decoded >= 1 and any("h2_headers_undecodable" in st.anomalies for st in done)
