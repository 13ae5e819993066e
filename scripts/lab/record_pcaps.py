"""Records the lab captures in pcaps/ (lab-*.pcap): brings a private lab up (its own prefix),
drives the demo service from the client namespace with curl, raw sockets and the traffic
generator, records each scenario with tcpdump on the server's ``to-client`` interface, and takes
the lab down again (also on failure). Needs root, tcpdump, curl.

    .venv/bin/python scripts/lab/record_pcaps.py [OUTDIR]     (default: pcaps/)

Re-running makes new captures (timestamps, request ids and tag order differ); pcaps/README.md says
what each holds.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from shadowtap.lab import lab as labmod

HERE = Path(__file__).resolve().parent

PRIMARY = f"{labmod.PRIMARY_ADDR}:{labmod.DEFAULT_PORT}"
SHADOW = f"{labmod.SHADOW_ADDR_FROM_CLIENT}:{labmod.DEFAULT_PORT}"

PIPELINE = r"""
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.create_connection((host, port), timeout=10)
reqs = [b"GET /v1/products/1 HTTP/1.1\r\nHost: %s\r\n\r\n",
        b"GET /v1/products?page=2&per_page=5 HTTP/1.1\r\nHost: %s\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"]
s.sendall(b"".join(r % host.encode() for r in reqs))  # all three in one segment: pipelined
data = b""
while chunk := s.recv(65536):
    data += chunk
assert data.count(b"HTTP/1.1 200") == 3, data[:300]
"""


def _client(lab: labmod.Lab, argv: list[str]) -> None:
    subprocess.run(
        ["ip", "netns", "exec", lab.ns("client"), *argv],
        check=True,
        timeout=120,
        stdout=subprocess.DEVNULL,
    )


def _curl(lab: labmod.Lab, *args: str) -> bool:
    """One curl run in the client's namespace (True, so that scenarios can chain runs with
    `and`)."""
    _client(lab, ["curl", "-sS", "--max-time", "10", *args])
    return True


def record(lab: labmod.Lab, where: str, path: Path, action: Callable[[], object]) -> None:
    """Run ``action`` while tcpdump records the server's side of the client link into ``path``."""
    dump = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            lab.ns(where),
            "tcpdump",
            "-i",
            "to-client",
            "-U",
            "-n",
            "--immediate-mode",
            "-s",
            "0",
            "-Z",
            "root",
            "-w",
            str(path),
            f"tcp port {labmod.DEFAULT_PORT}",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert dump.stderr is not None
        line = dump.stderr.readline()
        if "listening" not in line:
            raise RuntimeError(f"tcpdump did not start: {line}")
        action()
        # every packet is written as it comes: wait until the file stops growing (FIN/ACK included)
        last, stable = -1, 0
        while stable < 5:
            time.sleep(0.1)
            size = path.stat().st_size
            stable = stable + 1 if size == last else 0
            last = size
    finally:
        dump.terminate()
        dump.wait(10)
    path.chmod(0o644)


def scenarios(lab: labmod.Lab, tmp: Path) -> dict[str, tuple[str, Callable[[], object]]]:
    p, s = f"http://{PRIMARY}", f"http://{SHADOW}"
    predict = (
        '{"features":{"amount":120.5,"account_age_days":30,"items":2,"country":"US",'
        '"device":"mobile","hour":3}}'
    )
    body = tmp / "predict.json"
    body.write_text(predict)
    return {
        "lab-keepalive.pcap": (
            "primary",
            lambda: _curl(
                lab,
                f"{p}/health",
                f"{p}/v1/products?page=1",
                f"{p}/v1/products/5",
                f"{p}/v1/categories",
                f"{p}/v1/search?q=lamp",
            ),
        ),
        "lab-pipelined.pcap": (
            "primary",
            lambda: _client(
                lab, [sys.executable, "-c", PIPELINE, labmod.PRIMARY_ADDR, str(labmod.DEFAULT_PORT)]
            ),
        ),
        "lab-chunked.pcap": (
            "primary",
            lambda: (
                _curl(lab, f"{p}/v1/export?limit=200")
                and _curl(
                    lab,
                    "-H",
                    "Content-Type: application/json",
                    "-H",
                    "Transfer-Encoding: chunked",
                    "--data-binary",
                    f"@{body}",
                    f"{p}/v1/predict",
                )
            ),
        ),
        "lab-gzip.pcap": (
            "primary",
            lambda: _curl(
                lab,
                "--compressed",
                f"{p}/v1/products?page=3&per_page=50",
                f"{p}/v1/search?q=pro&limit=50",
            ),
        ),
        "lab-post.pcap": (
            "primary",
            lambda: (
                _curl(lab, "-H", "Content-Type: application/json", "-d", predict, f"{p}/v1/predict")
                and _curl(
                    lab,
                    "-H",
                    "Content-Type: application/json",
                    "-d",
                    '{"items":[{"product_id":5,"quantity":2},{"product_id":17,"quantity":1}]}',
                    f"{p}/v1/orders",
                )
            ),
        ),
        "lab-errors.pcap": (
            "shadow",
            lambda: (
                _curl(
                    lab,
                    f"{s}/v1/products?page=7",
                    f"{s}/v1/products/9999",
                    f"{s}/v1/products?page=x",
                )
                and _curl(
                    lab,
                    "-H",
                    "Content-Type: application/json",
                    "-d",
                    '{"features":{"amount":1}}',
                    f"{s}/v1/predict",
                )
            ),
        ),
        "lab-slow.pcap": ("primary", lambda: _curl(lab, f"{p}/v1/search?q=pro&limit=500")),
        "lab-mix.pcap": (
            "primary",
            lambda: _client(
                lab,
                [
                    sys.executable,
                    str(HERE / "traffic.py"),
                    "--target",
                    p,
                    "--count",
                    "200",
                    "--rate",
                    "50",
                    "--seed",
                    "7",
                ],
            ),
        ),
    }


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else HERE.parents[1] / "pcaps"
    out.mkdir(parents=True, exist_ok=True)
    for tool in ("tcpdump", "curl"):
        if shutil.which(tool) is None:
            print(
                f"record_pcaps: {tool} is missing (scripts/setup.sh installs it)", file=sys.stderr
            )
            return 4
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        lab = labmod.Lab(prefix=f"strec{uuid.uuid4().hex[:4]}", run_dir=tmp / "run")
        try:
            labmod.up(lab)
            for name, (where, action) in scenarios(lab, tmp).items():
                record(lab, where, tmp / name, action)
                shutil.copy(tmp / name, out / name)
                print(f"{out / name}: {(out / name).stat().st_size} bytes")
        finally:
            labmod.down(lab)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
