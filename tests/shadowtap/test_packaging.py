"""The installed package: one import namespace (shadowtap.…), nothing generic in site-packages, the
lab, the BPF program and the demo service inside it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

from tests.support.prereq import require_root

ROOT = Path(__file__).resolve().parents[2]


def build_wheel(tmp_path: Path) -> Path:
    # Built from a copy: setuptools writes build/ next to the sources it builds.
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns(
        ".venv", ".git", "build", "*.egg-info", "__pycache__", "pcaps", "tests"
    )
    shutil.copytree(ROOT, src, ignore=ignore)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("shadowtap-*.whl")
    return wheel


def test_the_wheel_installs_only_shadowtap(tmp_path):
    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"shadowtap"}
    for needed in (
        "shadowtap/capture/bpf/tc_capture.c",
        "shadowtap/lab/lab.py",
        "shadowtap/lab/demo_service.py",
        "shadowtap/lab/traffic.py",
        "shadowtap/lab/demo-compare.toml",
        "shadowtap/mirror/run.py",
        "shadowtap/replay/client.py",
        "shadowtap/compare/verdict.py",
    ):
        assert needed in names, needed


def test_lab_runs_from_the_installed_package(tmp_path):
    """`shadowtap lab` from the wheel installed away from any checkout (run from another
    directory, the checkout's folders not on the path): up, status with both services healthy,
    down."""
    require_root()
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(build_wheel(tmp_path)),
        ],
        check=True,
        capture_output=True,
    )
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(target)}
    prefix = f"stp{uuid.uuid4().hex[:5]}"

    def lab(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "shadowtap", "lab", *args, "--prefix", prefix],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    where = subprocess.run(
        [sys.executable, "-c", "import shadowtap.lab.lab as m; print(m.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.strip().startswith(str(target))
    try:
        up = lab("up")
        assert up.returncode == 0, up.stderr
        status = lab("status")
        assert status.returncode == 0, status.stderr
        assert status.stdout.count("health=200") == 2, status.stdout
    finally:
        down = lab("down")
    assert down.returncode == 0, down.stderr
    assert (
        prefix not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    )
