"""Fixtures for the catalog tests: a real SQLite file in tmp_path and a clock tests move."""

from __future__ import annotations

import pytest

from asapo_hpc.catalog import Catalog, MessageRecord


class FakeClock:
    """Wall-clock nanoseconds that move only when a test says so."""

    def __init__(self, start_ns: int = 1_700_000_000_000_000_000):
        self.now = start_ns

    def __call__(self) -> int:
        return self.now

    def advance_ms(self, ms: int) -> None:
        self.now += ms * 1_000_000


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def catalog_path(tmp_path):
    return tmp_path / "catalog.db"


@pytest.fixture
def catalog(catalog_path, clock):
    with Catalog(catalog_path, clock=clock) as cat:
        yield cat


def message(data_id: int, stream: str = "s1", source: str = "src", **fields) -> MessageRecord:
    """A plain message record with predictable name, size, timestamp and meta."""
    defaults = dict(
        name=f"processed/{stream}/f{data_id}.tif",
        size=100 + data_id,
        timestamp=1_000 + data_id,
        meta={"i": data_id},
    )
    defaults.update(fields)
    return MessageRecord(source, stream, data_id, **defaults)


def part(data_id: int, substream: int, dataset_size: int, stream: str = "ds", **fields):
    """One part of a dataset."""
    defaults = dict(
        name=f"processed/{stream}/f{data_id}_m{substream}.tif",
        size=10,
        timestamp=2_000 + data_id,
        meta={"module": substream},
        dataset_substream=substream,
        dataset_size=dataset_size,
    )
    defaults.update(fields)
    return MessageRecord("src", stream, data_id, **defaults)


@pytest.fixture
def make_message():
    return message


@pytest.fixture
def make_part():
    return part
