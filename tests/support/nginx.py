"""The one nginx harness of the tests: a real nginx (master process off, one worker) in a network
namespace or here, on an address and port the test chose, with the locations it needs and, when
given a certificate, TLS (the test makes the certificate with openssl). Started and stopped by its
pid; ``start_nginx`` returns once it listens (nginx writes its pid file after opening the listening
sockets, so waiting for that file waits for the socket, in any namespace)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.support.prereq import require_tool
from tests.support.proc import Proc, wait_for

CONF = """
daemon off;
master_process off;
user root;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    default_type text/plain;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    client_max_body_size 16m;
    keepalive_requests 100000;
    {http_extra}
    server {{
        listen {addr}:{port}{listen_extra};
        {tls}
        {locations}
    }}
}}
"""

# What the live-capture tests drive: a large file, a POST, and a Set-Cookie to redact.
CAPTURE_LOCATIONS = """
        location /big { alias {dir}/big.txt; }
        location /post { return 201 "stored $request_length\\n"; }
        location / {
            add_header Set-Cookie "session=s3cret-$request_uri";
            return 200 "hello $request_uri\\n";
        }
"""


def start_nginx(
    workdir: Path,
    addr: str,
    port: int,
    ns: str | None = None,
    *,
    locations: str = CAPTURE_LOCATIONS,
    http_extra: str = "",
    cert: Path | None = None,
    key: Path | None = None,
    http2: bool = False,
    timeout: float = 30,
) -> Proc:
    """nginx serving ``locations`` (``{dir}`` in them is ``workdir``) on addr:port; TLS when
    ``cert`` and ``key`` are given; HTTP/2 when ``http2`` (``listen ... http2``: over TLS by ALPN,
    else h2c with prior knowledge only). Returns once it listens; stop it with ``.stop()``."""
    require_tool("nginx")
    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (workdir / d).mkdir(exist_ok=True)
    # Big enough for TSO/GSO super-packets (64 KiB) on the veth and several ring records.
    line = b"".join(b"%06d the quick brown fox jumps over the lazy dog\n" % i for i in range(6000))
    (workdir / "big.txt").write_bytes(line)
    tls = f"ssl_certificate {cert}; ssl_certificate_key {key};" if cert and key else ""
    conf = workdir / "nginx.conf"
    conf.write_text(
        CONF.format(
            dir=workdir,
            addr=addr,
            port=port,
            http_extra=http_extra,
            listen_extra=(" ssl" if tls else "") + (" http2" if http2 else ""),
            tls=tls,
            locations=locations.replace("{dir}", str(workdir)),
        )
    )
    pidfile = workdir / "nginx.pid"
    pidfile.unlink(missing_ok=True)
    proc = Proc(
        [shutil.which("nginx") or "nginx", "-c", str(conf), "-p", str(workdir)],
        workdir,
        "nginx",
        ns=ns,
    )
    wait_for(pidfile.exists, timeout, f"nginx to listen on {addr}:{port}", proc=proc.p)
    return proc


def make_cert(d: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1 in ``d``: (cert.pem, key.pem)."""
    require_tool("openssl")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key
