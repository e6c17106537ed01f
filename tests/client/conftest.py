"""Fixtures of the client tests: a private /dev/shm prefix per test (unlinked after), small
node configs and a bounded wait."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from asapo_hpc.config import RingConfig
from asapo_hpc.node import NodeConfig, SourceConfig
from asapo_hpc.sink import SinkSettings


@pytest.fixture
def node_config(tmp_path) -> NodeConfig:
    """Source 'mod': 3-part datasets of 8 x 8 uint16, recorded under tmp_path/data."""
    ring = RingConfig(slot_count=64, slot_size=1024, full_timeout_s=5.0, lease_s=30.0)
    source = SourceConfig("mod", frame_shape=(8, 8), dtype="uint16", parts=3, ring=ring)
    return NodeConfig(data_root=tmp_path / "data", beamtime="bt", sources=(source,),
                      sink=SinkSettings(frames_per_file=50, compression="none", threads=1),
                      poll_ms=20)


@pytest.fixture
def wait_for():
    """A bounded poll (see _wait_for)."""
    return _wait_for


def _wait_for(condition: Callable[[], object], what: str, timeout: float = 30.0) -> object:
    """Poll until truthy; a bound against hanging, not a speed requirement."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)
    return value
