"""Fixtures of the pipeline tests: a private /dev/shm prefix per test (unlinked after, and
checked empty), a small Lambda-like layout (4 modules of 64 x 96) for fast frames."""

from __future__ import annotations

import itertools
import multiprocessing
import os
from pathlib import Path

import pytest

from asapo_hpc._core import Segment

SHM = Path("/dev/shm")
HERE = Path(__file__).resolve().parent
SMALL_LAYOUT = HERE / "small_layout.toml"
_counter = itertools.count()


def shm_entries(prefix: str) -> list[str]:
    return sorted(p.name for p in SHM.iterdir() if p.name.startswith(prefix + "."))


@pytest.fixture
def shm_prefix(monkeypatch) -> str:
    """A unique segment-name prefix (inherited by spawned processes); unlinked after."""
    prefix = f"ahpipe_{os.getpid()}_{next(_counter)}"
    monkeypatch.setenv("ASAPO_HPC_SHM_PREFIX", prefix)
    yield prefix
    for name in shm_entries(prefix):
        Segment.unlink(name)
    assert multiprocessing.active_children() == []  # every process started was stopped


@pytest.fixture
def small_layout():
    from asapo_hpc.detectors.lambda9m import Lambda9MLayout

    return Lambda9MLayout.from_toml(SMALL_LAYOUT)
