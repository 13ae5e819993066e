"""The installed package: one import namespace (shadowtap.…), nothing generic in site-packages, the
lab, the BPF program and the demo service inside it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_installs_only_shadowtap(tmp_path):
    # Built from a copy: setuptools writes build/ next to the sources it builds.
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__", "pcaps", "tests")
    shutil.copytree(ROOT, src, ignore=ignore)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("shadowtap-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"shadowtap"}
    for needed in ("shadowtap/capture/bpf/tc_capture.c", "shadowtap/lab/lab.py",
                   "shadowtap/lab/demo_service.py", "shadowtap/lab/traffic.py",
                   "shadowtap/lab/demo-compare.toml", "shadowtap/mirror/run.py",
                   "shadowtap/replay/client.py", "shadowtap/compare/verdict.py"):
        assert needed in names, needed
