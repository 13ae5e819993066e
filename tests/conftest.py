"""Shared test helpers.

``require(condition, what)``: a test that needs a prerequisite (root, bcc, a tool) calls it. Off
CI a missing prerequisite skips the test with the reason; in CI (CI=true) it fails the test, so
nothing is silently skipped where it must run.
"""

from __future__ import annotations

import os
import shutil
import uuid

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


@pytest.fixture
def topology():
    """A factory of network-namespace topologies, unique to this test and removed after it."""
    from shadowtap.netns import Topology

    require_root()
    require_tool("ip")
    made: list[Topology] = []

    def make() -> Topology:
        topo = Topology(f"stt{uuid.uuid4().hex[:6]}")
        made.append(topo)
        return topo

    yield make
    for topo in made:
        topo.close()
