"""Fixtures shared by every test. The prerequisite helpers (``require``: skip off CI, fail in CI)
are in tests/support/prereq.py."""

from __future__ import annotations

import uuid

import pytest

from tests.support.prereq import require_root, require_tool


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
