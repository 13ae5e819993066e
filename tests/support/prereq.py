"""Prerequisites of tests: ``require(condition, what)`` skips a test off CI and FAILS it in CI
(CI=true), so nothing that must run in CI is silently skipped. Importable from every test as
``from tests.support.prereq import require``."""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, what: str) -> None:
    if condition:
        return
    if IN_CI:
        pytest.fail(f"missing prerequisite in CI: {what}")
    pytest.skip(f"missing prerequisite (would fail in CI): {what}")


def require_root() -> None:
    require(os.geteuid() == 0, "root")


def require_tool(name: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"the {name} command")
    return path or name


def require_bcc() -> None:
    """Root and bcc's Python module (the eBPF backend's prerequisites)."""
    require_root()
    try:
        import bcc  # noqa: F401
    except ImportError:
        require(False, "bcc (python3-bpfcc)")
