"""Fixtures of the ring tests: a private /dev/shm name prefix per test, checked clean after.

Every test that touches shared memory gets its own ``ASAPO_HPC_SHM_PREFIX`` (inherited by
the child processes it starts), and the fixture unlinks and then asserts that nothing with
that prefix is left in /dev/shm.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from asapo_hpc.config import segment_name

SHM = Path("/dev/shm")


@pytest.fixture
def seg_path(shm_prefix):
    """The /dev/shm path of the segment of (beamtime, source) under this test's prefix."""
    def path(beamtime: str = "bt", source: str = "src") -> Path:
        return SHM / segment_name(beamtime, source)
    return path


@pytest.fixture
def children():
    """Child processes (multiprocessing.Process or subprocess.Popen) the test starts:
    every one is killed (SIGKILL) if still running, and joined, at the end."""
    procs: list = []
    yield procs
    for p in procs:
        if hasattr(p, "join"):  # multiprocessing.Process
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
            p.join(10)
        else:  # subprocess.Popen
            if p.poll() is None:
                p.kill()
            p.wait(10)
