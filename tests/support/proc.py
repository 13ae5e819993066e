"""Processes of the tests: started here or in a network namespace, output to files, waited on by
condition (never a fixed sleep), stopped by their own pid only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def wait_for(
    cond: Callable[[], bool], timeout: float, what: str, *, proc: subprocess.Popen | None = None
) -> None:
    """Poll ``cond`` until true; fail naming ``what`` after ``timeout`` s or once ``proc`` died."""
    deadline = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"waiting for {what}: the process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def text_of(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


class Proc:
    """A process in a namespace (or here), stdout/stderr to files, stopped by its pid only."""

    def __init__(
        self,
        argv: Sequence[str],
        workdir: Path,
        name: str,
        *,
        ns: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.stdout = workdir / f"{name}.out"
        self.stderr = workdir / f"{name}.err"
        full = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
        with open(self.stdout, "wb") as out, open(self.stderr, "wb") as err:
            # `ip netns exec` execs the command: the pid is the command's own.
            self.p = subprocess.Popen(full, stdout=out, stderr=err, cwd=REPO, env=env)

    @property
    def pid(self) -> int:
        return self.p.pid

    def err(self) -> str:
        return text_of(self.stderr)

    def out(self) -> str:
        return text_of(self.stdout)

    def wait_stderr(self, needle: str, timeout: float = 60) -> None:
        wait_for(
            lambda: needle in self.err(),
            timeout,
            f"{self.name} to print {needle!r}; stderr: {self.err()[-2000:]}",
            proc=self.p,
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.p.poll() is None:
            self.p.send_signal(sig)
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            raise AssertionError(
                f"{self.name} did not stop on signal {sig}; stderr: {self.err()[-2000:]}"
            ) from None


def shadowtap(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``shadowtap ARGS`` in a child process (this interpreter), ``env`` added to the environment;
    its output captured as text, its exit status left to the caller."""
    return subprocess.run(
        [sys.executable, "-m", "shadowtap", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
