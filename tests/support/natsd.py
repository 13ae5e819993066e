"""A real nats-server with JetStream for the tests: on a free loopback port, its store in a temp
directory, ended by its PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

from tests.support.prereq import require_tool


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NatsServer:
    def __init__(self, store: str, port: int | None = None) -> None:
        self.binary = require_tool("nats-server")
        self.store = store
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        os.makedirs(self.store, exist_ok=True)
        self.proc = subprocess.Popen(
            [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", self.store],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # bounded: ready when it accepts connections
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"nats-server exited with {self.proc.returncode}")
                time.sleep(0.05)
        raise RuntimeError("nats-server did not listen within 20 s")

    def kill(self) -> None:
        """SIGKILL: the broker dies without a goodbye (what a crash looks like to the agents)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
