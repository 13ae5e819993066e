"""gRPC traffic for scripts/bench_extract.sh's gRPC case: the lab model service (the tests' proto,
compiled with grpcio-tools) and a grpcio load client. Not a load tester: it makes a capture.

    python scripts/bench_grpc_load.py serve WORKDIR PORTFILE      # runs until killed
    python scripts/bench_grpc_load.py load WORKDIR PORT CALLS CONNS
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.grpc_lab import compile_protos, serve  # noqa: E402


def main() -> None:
    mode, work = sys.argv[1], Path(sys.argv[2])
    pb2, pb2_grpc, _ = compile_protos(work / "protos")
    if mode == "serve":
        server, port = serve(pb2, pb2_grpc, "v1")
        Path(sys.argv[3]).write_text(str(port))
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            server.stop(0)
        return
    import grpc

    port, calls, conns = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])

    def worker(n: int) -> None:
        with grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        ) as ch:
            stub = pb2_grpc.ModelStub(ch)
            req = pb2.InferRequest(
                model_name="clf",
                id="r7",
                inputs=[
                    pb2.Tensor(
                        name="x", datatype="FP32", shape=[1, 4], fp32_contents=[0.5, 1.0, 2.0, 3.0]
                    )
                ],
            )
            for i in range(n):
                if i % 10 == 9:
                    list(stub.InferStream(req))
                else:
                    stub.Infer(req, metadata=(("x-request-id", str(i)),))

    threads = [threading.Thread(target=worker, args=(calls // conns,)) for _ in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
