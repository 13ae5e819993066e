"""`shadowtap doctor` and the prerequisite errors of `shadowtap capture`, on this machine as it is
(root, bcc, headers) and as an unprivileged user (setpriv to nobody), and with the kernel headers
pointed away (BCC_KERNEL_SOURCE), where `auto` falls back to pcap and says why."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import tests.support.live_lab as lab

NOBODY = 65534


def shadowtap(
    *args: str, env: dict[str, str] | None = None, as_nobody: bool = False, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "shadowtap", *args]
    if as_nobody:
        argv = [
            lab.require_tool("setpriv"),
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            *argv,
        ]
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        check=False,
        cwd=lab.REPO,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def nobody_dir():
    """A directory the unprivileged user owns (pytest's tmp_path is root's, mode 0700); 0700, as
    output directories must be (others cannot plant links in it)."""
    path = Path(tempfile.mkdtemp(prefix="shadowtap-nobody-"))
    os.chown(path, 65534, 65534)
    os.chmod(path, 0o700)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.root
def test_doctor_all_present():
    lab.require_root()
    proc = shadowtap("doctor", "-i", "lo")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in (
        "privileges (ebpf)",
        "privileges (pcap)",
        "bcc",
        "kernel headers",
        "clsact",
        "BPF ring buffer",
        "tracefs",
        "libpcap",
        "interface lo",
    ):
        assert name in proc.stdout
    assert "ebpf backend: ready" in proc.stdout and "pcap backend: ready" in proc.stdout
    assert "MISSING" not in proc.stdout


@pytest.mark.root
def test_doctor_missing_interface_names_the_fix():
    lab.require_root()
    proc = shadowtap("doctor", "-i", "nosuchif0")
    assert proc.returncode == 4
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("interface nosuchif0"))
    assert "MISSING" in line and "ip -brief link" in line


@pytest.mark.root
def test_unprivileged_user_gets_clear_errors(nobody_dir):
    lab.require_root()
    env = {"SHADOWTAP_KEY_FILE": str(nobody_dir / "key")}
    proc = shadowtap("doctor", env=env, as_nobody=True)
    assert proc.returncode == 4
    assert (
        "CAP_BPF" in proc.stdout and "CAP_NET_ADMIN" in proc.stdout and "CAP_NET_RAW" in proc.stdout
    )
    assert "run as root" in proc.stdout
    for backend, cap in (("ebpf", "CAP_BPF"), ("pcap", "CAP_NET_RAW"), ("auto", "CAP_NET_RAW")):
        proc = shadowtap("capture", "-i", "lo", "-p", "80", "-b", backend, env=env, as_nobody=True)
        assert proc.returncode == 4, proc.stderr
        assert (
            "shadowtap: error:" in proc.stderr
            and cap in proc.stderr
            and "fix: run as root" in proc.stderr
        )
        assert "Traceback" not in proc.stderr
    assert "no backend can run: eBPF:" in proc.stderr  # auto says why for both


@pytest.mark.root
def test_missing_headers_ebpf_fails_auto_falls_back_to_pcap(tmp_path):
    lab.require_root()
    env = {
        "BCC_KERNEL_SOURCE": str(tmp_path / "no-headers"),
        "SHADOWTAP_KEY_FILE": str(tmp_path / "key"),
    }
    proc = shadowtap("doctor", env=env)
    assert proc.returncode == 4
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("kernel headers"))
    assert "MISSING" in line and "linux-headers-" in line
    assert "ebpf backend: not available" in proc.stdout and "pcap backend: ready" in proc.stdout
    proc = shadowtap("capture", "-i", "lo", "-p", "80", "-b", "ebpf", env=env)
    assert (
        proc.returncode == 4
        and "kernel headers" in proc.stderr
        and "fix: apt-get install linux-headers-" in proc.stderr
    )
    proc = shadowtap(
        "capture",
        "-i",
        "lo",
        "-p",
        "1",
        "-b",
        "auto",
        "--duration",
        "0.5",
        "-o",
        str(tmp_path / "x.jsonl"),
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "backend: auto: pcap, because eBPF is unavailable: kernel headers:" in proc.stderr


def test_capture_help_says_the_pcap_is_raw():
    proc = shadowtap("capture", "--help", env={"COLUMNS": "200"})
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "RAW AND UNREDACTED" in text and "--keep-secrets" in text and "shadowtap doctor" in text
