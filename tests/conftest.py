"""Fixtures every test folder shares: a private /dev/shm name prefix per test."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from asapo_hpc._core import Segment

SHM = Path("/dev/shm")
_counter = itertools.count()


def shm_entries(prefix: str) -> list[str]:
    """Segments in /dev/shm under `prefix`."""
    return sorted(p.name for p in SHM.iterdir() if p.name.startswith(prefix + "."))


@pytest.fixture
def shm_prefix(monkeypatch, request) -> Iterator[str]:
    """A unique segment-name prefix for this test, inherited by the processes it starts
    (env ASAPO_HPC_SHM_PREFIX); its segments are unlinked after, and none may be left."""
    prefix = f"ah{request.node.path.parent.name}_{os.getpid()}_{next(_counter)}"
    assert not shm_entries(prefix)
    monkeypatch.setenv("ASAPO_HPC_SHM_PREFIX", prefix)
    yield prefix
    for name in shm_entries(prefix):
        Segment.unlink(name)
    assert shm_entries(prefix) == [], f"segments left behind in /dev/shm: {prefix}.*"


@pytest.fixture
def shm_names() -> Callable[[str], list[str]]:
    """shm_names(prefix) -> the segments under prefix, for tests that check mid-way."""
    return shm_entries
