"""Fixtures of the pipeline tests: a private /dev/shm prefix per test (unlinked after, and
checked empty), a small Lambda-like layout (4 modules of 64 x 96) for fast frames."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SMALL_LAYOUT = HERE / "small_layout.toml"


@pytest.fixture
def shm_prefix(shm_prefix):
    """The shared prefix fixture, and: every process a pipeline test started was stopped."""
    yield shm_prefix
    assert multiprocessing.active_children() == []


@pytest.fixture
def small_layout():
    from asapo_hpc.detectors.lambda9m import Lambda9MLayout

    return Lambda9MLayout.from_toml(SMALL_LAYOUT)
