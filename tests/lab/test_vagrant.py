"""The Vagrantfile of the multi-VM lab passes ``vagrant validate`` (Debian's vagrant).

Nothing here may start a VM or reach the network: validate runs in a fresh network namespace with
no interface but a down loopback (``unshare --net``), with Vagrant's version check off. No provider
(VirtualBox, libvirt) is installed on test machines, so provider blocks are skipped
(``--ignore-provider``); everything else of the file is checked, including that the provisioning
script exists.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import tests.support.prereq as _ct

ROOT = Path(__file__).resolve().parents[2]


def _validate(directory: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        VAGRANT_CHECKPOINT_DISABLE="1",
        VAGRANT_HOME=str(home),
        VAGRANT_NO_COLOR="1",
        VAGRANT_DOTFILE_PATH=str(home / "dotfile"),
    )
    argv = ["vagrant", "validate", "--ignore-provider"]
    if os.geteuid() == 0 and shutil.which("unshare"):
        argv = ["unshare", "--net", *argv]  # no route anywhere: validate must work offline
    return subprocess.run(
        argv, cwd=directory, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_vagrantfile_validates(tmp_path):
    _ct.require_tool("vagrant")
    _ct.require_root()
    proc = _validate(ROOT, tmp_path / "vagrant.d")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validated successfully" in proc.stdout
    for name in ("client", "primary", "shadow"):
        assert f"==> {name}:" in proc.stdout


def test_validate_catches_a_broken_vagrantfile(tmp_path):
    """The check above can fail: the same file with the provisioning script missing does not
    pass."""
    _ct.require_tool("vagrant")
    _ct.require_root()
    work = tmp_path / "copy"
    work.mkdir()
    shutil.copy(ROOT / "Vagrantfile", work / "Vagrantfile")
    proc = _validate(work, tmp_path / "vagrant.d")
    assert proc.returncode != 0
    assert "vagrant_provision.sh" in proc.stdout + proc.stderr


def test_vm_scripts_are_valid_bash():
    for name in ("vagrant_provision.sh", "vm_demo.sh"):
        path = ROOT / "scripts" / "lab" / name
        assert os.access(path, os.X_OK)
        proc = subprocess.run(
            ["bash", "-n", str(path)], capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, proc.stderr
    script = ROOT / "scripts" / "lab" / "vagrant_provision.sh"
    bad = subprocess.run(
        ["bash", str(script)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
        env={"PATH": os.environ["PATH"]},
    )
    assert bad.returncode != 0  # no role given: refuses before touching anything
