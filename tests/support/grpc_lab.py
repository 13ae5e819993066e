"""A gRPC model service for the tests: a small KServe-v2-shaped proto compiled at test time with
grpcio-tools, and a grpcio server in two versions (v2 shifts scores and flips the top class of
some inputs), with the four call kinds (unary, server-, client- and bidi-streaming) and an error.

``compile_protos(dir)`` returns the generated modules ``(pb2, pb2_grpc)`` and the path of a
FileDescriptorSet (``--descriptor_set_out``) for the schema-aware comparison.
"""

from __future__ import annotations

import importlib
import sys
from concurrent import futures
from pathlib import Path

import grpc

PROTO = """
syntax = "proto3";
package lab.model;

message Tensor {
  string name = 1;
  string datatype = 2;
  repeated int64 shape = 3;
  repeated float fp32_contents = 4;
}
message InferRequest {
  string model_name = 1;
  string id = 2;
  repeated Tensor inputs = 3;
}
message InferResponse {
  string model_name = 1;
  string model_version = 2;
  string id = 3;
  repeated Tensor outputs = 4;
}

service Model {
  rpc Infer(InferRequest) returns (InferResponse);
  rpc InferStream(InferRequest) returns (stream InferResponse);
  rpc InferBatch(stream InferRequest) returns (InferResponse);
  rpc InferBidi(stream InferRequest) returns (stream InferResponse);
}
"""


def compile_protos(out: Path, proto: str = PROTO, name: str = "labmodel"):
    """Compile ``proto`` (default: PROTO) into ``out`` as ``name``.proto (grpcio-tools' protoc);
    import and return (pb2, pb2_grpc, descriptor set path)."""
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.proto").write_text(proto)
    desc = out / f"{name}.desc"
    rc = protoc.main(
        [
            "protoc",
            f"-I{out}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            f"--descriptor_set_out={desc}",
            "--include_imports",
            str(out / f"{name}.proto"),
        ]
    )
    if rc != 0:
        raise RuntimeError(f"protoc failed: {rc}")
    sys.path.insert(0, str(out))
    try:
        for module in (f"{name}_pb2", f"{name}_pb2_grpc"):
            sys.modules.pop(module, None)
        pb2 = importlib.import_module(f"{name}_pb2")
        pb2_grpc = importlib.import_module(f"{name}_pb2_grpc")
    finally:
        sys.path.remove(str(out))
    return pb2, pb2_grpc, desc


def make_servicer(pb2, pb2_grpc, version: str):
    def scores(req) -> list[float]:
        vals = [v for t in req.inputs for v in t.fp32_contents] or [0.0]
        out = [round(v * 0.5 + i, 3) for i, v in enumerate(vals[:4])]
        if version == "v2":
            out = [round(s + 0.25, 3) for s in out]
            if req.id.endswith("7"):
                out.reverse()  # the top class flips for these inputs
        return out

    def answer(req):
        return pb2.InferResponse(
            model_name=req.model_name,
            model_version=version,
            id=req.id,
            outputs=[
                pb2.Tensor(name="scores", datatype="FP32", shape=[1, 4], fp32_contents=scores(req))
            ],
        )

    class Servicer(pb2_grpc.ModelServicer):
        def Infer(self, request, context):
            if request.model_name == "missing":
                context.abort(grpc.StatusCode.NOT_FOUND, "no model named missing")
            context.set_trailing_metadata((("x-served-by", version),))
            return answer(request)

        def InferStream(self, request, context):
            for i in range(3):
                yield pb2.InferResponse(
                    model_name=request.model_name, model_version=version, id=f"{request.id}-{i}"
                )

        def InferBatch(self, request_iterator, context):
            ids = [r.id for r in request_iterator]
            return pb2.InferResponse(model_name="batch", model_version=version, id=",".join(ids))

        def InferBidi(self, request_iterator, context):
            for r in request_iterator:
                yield answer(r)

    return Servicer()


def serve(
    pb2,
    pb2_grpc,
    version: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    compression: grpc.Compression | None = None,
) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), compression=compression)
    pb2_grpc.add_ModelServicer_to_server(make_servicer(pb2, pb2_grpc, version), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    return server, bound


def client_traffic(
    pb2, pb2_grpc, addr: str, *, compression: grpc.Compression | None = None
) -> dict:
    """One call of each kind plus an error, on one channel (one HTTP/2 connection); returns what
    the client sent and got, for the tests to compare with what was captured."""
    got: dict = {}
    with grpc.insecure_channel(addr, compression=compression) as ch:
        stub = pb2_grpc.ModelStub(ch)
        reqs = [
            pb2.InferRequest(
                model_name="clf",
                id=f"r{i}",
                inputs=[
                    pb2.Tensor(
                        name="x",
                        datatype="FP32",
                        shape=[1, 4],
                        fp32_contents=[0.5 * i, 1.0, 2.0, 3.0],
                    )
                ],
            )
            for i in range(8)
        ]
        got["unary"] = [(r, stub.Infer(r, metadata=(("x-tenant", "acme"),))) for r in reqs]
        got["server_stream"] = list(stub.InferStream(reqs[0]))
        got["client_stream"] = stub.InferBatch(iter(reqs[:3]))
        got["bidi"] = list(stub.InferBidi(iter(reqs[:2])))
        big = pb2.InferRequest(
            model_name="clf",
            id="big",
            inputs=[
                pb2.Tensor(name="x", datatype="FP32", shape=[1, 4096], fp32_contents=[0.0] * 4096)
            ],
        )
        got["big"] = (big, stub.Infer(big))
        try:
            stub.Infer(pb2.InferRequest(model_name="missing", id="m"))
        except grpc.RpcError as exc:
            got["error"] = (exc.code(), exc.details())
    return got


class Relay:
    """A TCP relay on loopback that logs every chunk as ``(from_client, ts, bytes)``: the bytes a
    passive observer of the connection would reassemble, for tests of the parser against real
    grpcio peers (the live-capture tests use tcpdump or shadowtap's sources instead)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        import socket
        import threading

        self.upstream = upstream
        self.log: list[tuple[bool, float, bytes]] = []  # every connection's, in arrival order
        self.by_conn: list[list[tuple[bool, float, bytes]]] = []  # each connection's own
        self._lock = threading.Lock()
        self._srv = socket.create_server(("127.0.0.1", 0))
        self.port = self._srv.getsockname()[1]
        self._stop = False
        self._threads: list[threading.Thread] = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)

    def _accept(self) -> None:
        import socket
        import threading

        self._srv.settimeout(0.2)
        while not self._stop:
            try:
                c, _ = self._srv.accept()
            except (TimeoutError, OSError):
                continue
            c.settimeout(None)  # accepted sockets inherit the listener's timeout: not wanted
            u = socket.create_connection(self.upstream)
            own: list[tuple[bool, float, bytes]] = []
            self.by_conn.append(own)
            for src, dst, fc in ((c, u, True), (u, c, False)):
                t = threading.Thread(target=self._pump, args=(src, dst, fc, own), daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(self, src, dst, from_client: bool, own: list) -> None:
        import socket
        import time

        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self._lock:
                    self.log.append((from_client, time.time(), data))
                    own.append(self.log[-1])
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self) -> None:
        self._stop = True
        self._srv.close()
        for t in self._threads:
            t.join(timeout=2)


def _main(argv: list[str]) -> None:
    """For tests that run the peers in a network namespace (``ip netns exec``):

    ``python -m tests.support.grpc_lab serve WORKDIR PORT [VERSION]`` (until SIGTERM) and
    ``python -m tests.support.grpc_lab traffic WORKDIR HOST:PORT OUT.json`` (client_traffic, what
    it sent and got written as hex protobuf bytes)."""
    import json
    import signal
    import threading

    mode, work = argv[0], Path(argv[1])
    pb2, pb2_grpc, _ = compile_protos(work / f"protos-{mode}")
    if mode == "serve":
        server, _ = serve(pb2, pb2_grpc, argv[3] if len(argv) > 3 else "v1", port=int(argv[2]))
        print("serving", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        stop.wait()
        server.stop(0)
        return
    got = client_traffic(pb2, pb2_grpc, argv[2])
    out = {
        "unary": [
            [q.SerializeToString().hex(), r.SerializeToString().hex()] for q, r in got["unary"]
        ],
        "bidi": [m.SerializeToString().hex() for m in got["bidi"]],
        "error": [got["error"][0].value[0], got["error"][1]],
    }
    Path(argv[3]).write_text(json.dumps(out))


if __name__ == "__main__":
    _main(sys.argv[1:])
