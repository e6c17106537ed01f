"""record_batch_ms: the recorder collects small messages for a bounded time and stores them
together (one HDF5 append, one location transaction, one acknowledgement), without giving
up any guarantee: every message is located and acknowledged, a finish marker met while
collecting finishes the stream."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from asapo_hpc.catalog import Catalog
from asapo_hpc.client import Producer
from asapo_hpc.config import RingConfig
from asapo_hpc.errors import AsapoWrongInputError
from asapo_hpc.node import NodeConfig, NodeService, SourceConfig
from asapo_hpc.node.recorder import Recorder

BEAMTIME = "bt"
FRAME_SHAPE = (16, 32)


def frame(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 65535, FRAME_SHAPE, dtype=np.uint16)


class _CountedLocations:
    """Counts Catalog.update_locations calls (transactions) and the updates they carried."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.calls: list[int] = []
        self._lock = threading.Lock()
        original = Catalog.update_locations

        def counted(catalog, updates):
            updates = list(updates)
            with self._lock:
                self.calls.append(len(updates))
            return original(catalog, updates)

        monkeypatch.setattr(Catalog, "update_locations", counted)


def _all_located(catalog: Catalog, n: int) -> bool:
    return all(catalog.get_by_id("det", "default", i).file_path for i in range(1, n + 1))


def _finished(catalog: Catalog) -> bool:
    return any(s.name == "default" and s.finished for s in catalog.get_stream_list("det"))


def _publish(config: NodeConfig, n: int) -> None:
    with Producer(BEAMTIME, "det", config=config.source("det").ring) as producer:
        for i in range(1, n + 1):
            producer.send(i, frame(i), {"i": i})
        producer.send_stream_finished_flag("default", n)


def _record(config: NodeConfig, n: int, wait_for) -> tuple[dict, Catalog]:
    """Publish n frames and the finish marker through a node service; wait until the
    stream is finished and every frame located. The source's counters and the catalog."""
    with NodeService(config) as service:
        _publish(config, n)
        catalog = Catalog(config.catalog_path)
        wait_for(lambda: _finished(catalog), "the finished stream")
        wait_for(lambda: _all_located(catalog, n), "locations")
    return service.counters()["det"], catalog


def test_small_messages_share_location_transactions(shm_prefix, tmp_path, node_config,
                                                   wait_for, monkeypatch):
    located = _CountedLocations(monkeypatch)
    # a bound far longer than publishing takes: the burst is collected in very few claims
    config = node_config(tmp_path, record_batch_ms=500)
    n = 40
    counters, catalog = _record(config, n, wait_for)
    assert sum(located.calls) == n
    assert len(located.calls) <= 3, located.calls  # unbatched: up to one per message
    assert counters["streams"]["default"]["messages_written"] == n
    assert counters["sink_acked"] == n + 1  # and the finish marker
    for i in (1, n // 2, n):
        record = catalog.get_by_id("det", "default", i)
        assert (record.meta_dict(), record.size) == ({"i": i}, frame(i).nbytes)
    catalog.close()


def test_a_batch_holds_at_most_half_the_ring(shm_prefix, tmp_path, node_config, wait_for,
                                             monkeypatch):
    """Messages of a batch stay unacknowledged until it is stored: the producer keeps room
    for the other half of the ring instead of blocking until the batch time runs out."""
    batches: list[int] = []
    collect = Recorder._collect

    def counted(recorder, messages):
        messages, finished = collect(recorder, messages)
        batches.append(len(messages))
        return messages, finished

    monkeypatch.setattr(Recorder, "_collect", counted)
    ring = RingConfig(slot_count=16, slot_size=4096, full_timeout_s=5.0, lease_s=30.0)
    source = SourceConfig("det", frame_shape=FRAME_SHAPE, dtype="uint16", ring=ring)
    config = node_config(tmp_path, sources=(source,), record_batch_ms=1000)
    n = 40
    counters, catalog = _record(config, n, wait_for)
    assert sum(batches) == n
    assert max(batches) <= 8, batches  # the ring (16 messages) would hold them all
    assert counters["sink_acked"] == n + 1
    catalog.close()


def test_batching_off_records_every_claim_at_once(shm_prefix, tmp_path, node_config,
                                                  wait_for):
    config = node_config(tmp_path, record_batch_ms=0)
    n = 10
    counters, catalog = _record(config, n, wait_for)
    assert counters["sink_acked"] == n + 1
    catalog.close()


@pytest.mark.parametrize("value", [-1, 1001])
def test_record_batch_ms_out_of_range_is_refused(tmp_path, node_config, value):
    with pytest.raises(AsapoWrongInputError, match="record_batch_ms"):
        node_config(tmp_path, record_batch_ms=value)
