"""Fixtures of the node service tests: a private /dev/shm prefix per test, a small config,
helpers that wait for the catalog (bounded waits, no timing assertions)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from asapo_hpc.config import RingConfig
from asapo_hpc.node import NodeConfig, SourceConfig
from asapo_hpc.sink import SinkSettings

BEAMTIME = "bt"
FRAME_SHAPE = (16, 32)


def _node_config(tmp_path: Path, *, slot_count: int = 128, full_timeout_s: float = 5.0,
                compression: str = "bslz4", **kw) -> NodeConfig:
    """Source 'det': frames of 16 x 32 uint16 (1 KiB); source 'mod': 3-part datasets of
    8 x 8 uint16. Small files (7 frames) so streams roll over files."""
    ring = RingConfig(slot_count=slot_count, slot_size=1024, full_timeout_s=full_timeout_s,
                      lease_s=30.0)
    sources = (SourceConfig("det", frame_shape=FRAME_SHAPE, dtype="uint16", ring=ring),
               SourceConfig("mod", frame_shape=(8, 8), dtype="uint16", parts=3, ring=ring))
    values = dict(data_root=tmp_path / "data", beamtime=BEAMTIME, sources=sources,
                  sink=SinkSettings(frames_per_file=7, compression=compression, threads=1),
                  poll_ms=50)
    values.update(kw)
    return NodeConfig(**values)


def _wait_for(condition: Callable[[], object], what: str, timeout: float = 30.0) -> object:
    """Poll `condition` until it returns something truthy; fail naming `what` after
    `timeout` seconds (a bound against hanging, not a speed requirement)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def node_config():
    """The factory of small node configs (see _node_config)."""
    return _node_config


@pytest.fixture
def wait_for():
    """Poll a condition with a bound (see _wait_for)."""
    return _wait_for
