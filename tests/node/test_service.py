"""The node service in a thread: frames, datasets and odd messages end up in the catalog
and on disk, byte-identical; finish markers finish streams; a restart resumes."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from asapo_hpc.catalog import Catalog, MessageRecord
from asapo_hpc.client import Consumer, Producer
from asapo_hpc.errors import (
    AsapoConfigMismatchError,
    AsapoDataNotInCacheError,
    AsapoStreamFinishedError,
)
from asapo_hpc.node import NodeService, read_by_id
from asapo_hpc.node.replay import DiskReader, close_readers

BEAMTIME = "bt"
FRAME_SHAPE = (16, 32)


def frame(i: int, shape=FRAME_SHAPE) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 65535, shape, dtype=np.uint16)


def located(catalog: Catalog, source: str, stream: str, ids) -> bool:
    return all(catalog.get_by_id(source, stream, i).file_path for i in ids)


def finished(catalog: Catalog, source: str, stream: str) -> bool:
    streams = {s.name: s for s in catalog.get_stream_list(source)}
    return stream in streams and streams[stream].finished


@pytest.fixture
def readers():
    yield
    close_readers()


def test_frames_are_recorded_located_and_byte_identical(shm_prefix, tmp_path, node_config,
                                                        wait_for, readers):
    config = node_config(tmp_path)
    n = 30
    with NodeService(config) as service:
        with Producer(BEAMTIME, "det", config=config.source("det").ring) as producer:
            for i in range(1, n + 1):
                producer.send(i, frame(i), {"i": i}, name=f"raw/f{i:04d}.tif")
            producer.send_stream_finished_flag("default", n, next_stream="run2")
        catalog = Catalog(config.catalog_path)
        wait_for(lambda: finished(catalog, "det", "default"), "the finished stream")
        wait_for(lambda: located(catalog, "det", "default", range(1, n + 1)), "locations")
    counters = service.counters()["det"]  # final figures, taken when the recorder stopped
    stream = catalog.get_stream_list("det")[0]
    assert (stream.name, stream.last_id, stream.finished, stream.next_stream) == \
        ("default", n, True, "run2")
    files = set()
    for i in range(1, n + 1):
        record = catalog.get_by_id("det", "default", i)
        assert (record.name, record.meta_dict(), record.size) == (f"raw/f{i:04d}.tif",
                                                                  {"i": i}, frame(i).nbytes)
        with h5py.File(record.file_path, "r") as f:  # any HDF5 tool, with hdf5plugin
            assert np.array_equal(f[record.dataset_path][record.frame_index], frame(i))
            assert f["/entry/data/message_id"][record.frame_index] == i
        files.add(record.file_path)
        stored = read_by_id(BEAMTIME, "det", "default", i, config=config)
        assert stored.data.tobytes() == frame(i).tobytes()
        assert np.array_equal(stored.array(np.uint16, FRAME_SHAPE), frame(i))
    assert len(files) == 5  # 30 frames, 7 per file
    assert counters["streams"]["default"]["messages_written"] == n
    assert counters["streams"]["default"]["bytes_written"] == n * frame(1).nbytes
    assert counters["streams"]["default"]["finished"] is True
    assert counters["sink_acked"] == n + 1  # and the finish marker
    assert counters["write_errors"] == 0
    catalog.close()


def test_datasets_and_odd_messages(shm_prefix, tmp_path, node_config, wait_for, readers):
    config = node_config(tmp_path, compression="zstd")
    odd = {1: b"x" * 100, 2: b"", 3: frame(3).tobytes()}
    with NodeService(config):
        with Producer(BEAMTIME, "mod", config=config.source("mod").ring) as producer:
            for i in range(1, 5):  # parts out of order, datasets interleaved
                for k in (3, 1):
                    producer.send(i, frame(10 * i + k, (8, 8)), stream="scan", dataset=(k, 3))
            for i in range(1, 5):
                producer.send(i, frame(10 * i + 2, (8, 8)), stream="scan", dataset=(2, 3))
            producer.send_stream_finished_flag("scan", 4)
        with Producer(BEAMTIME, "det", config=config.source("det").ring) as producer:
            for i, data in odd.items():
                producer.send(i, data, stream="odd")
            producer.send_stream_finished_flag("odd", 3)
        catalog = Catalog(config.catalog_path)
        wait_for(lambda: finished(catalog, "mod", "scan") and finished(catalog, "det", "odd"),
                 "both streams finished")
    with DiskReader(config) as disk:
        for i in range(1, 5):
            parts = disk.read_dataset("mod", "scan", i)
            assert [p.record.dataset_substream for p in parts] == [1, 2, 3]
            for k, part in enumerate(parts, start=1):
                assert part.data.tobytes() == frame(10 * i + k, (8, 8)).tobytes()
            assert {p.record.file_path for p in parts} == {parts[0].record.file_path}
            assert [p.record.dataset_path for p in parts] == \
                [f"/entry/data/module_{k:02d}" for k in (1, 2, 3)]
        for i, data in odd.items():
            assert disk.read("det", "odd", i).data.tobytes() == data
        assert catalog.get_by_id("det", "odd", 2).file_path is None  # empty: nothing to store
        folders = sorted(p.name for p in (config.data_root / BEAMTIME / "det").iterdir())
        assert folders == ["odd", "odd.raw100"]
    catalog.close()


def test_stop_mid_stream_and_restart_resumes(shm_prefix, tmp_path, node_config, wait_for, readers):
    config = node_config(tmp_path)
    ring = config.source("det").ring
    with Producer(BEAMTIME, "det", config=ring) as producer:
        with NodeService(config):
            for i in range(1, 21):
                producer.send(i, frame(i))
            catalog = Catalog(config.catalog_path)
            wait_for(lambda: catalog.get_current_size("det", "default") >= 10, "some records")
        stopped_at = catalog.get_current_size("det", "default")
        for i in range(21, 41):  # while the service is down: the ring keeps them
            producer.send(i, frame(i))
        with NodeService(config):
            producer.send_stream_finished_flag("default", 40)
            wait_for(lambda: finished(catalog, "det", "default"), "the finished stream")
    records = catalog.query_messages("det", "default", "_id > 0")
    assert [r.data_id for r in records] == list(range(1, 41))
    assert 10 <= stopped_at <= 40
    for i in range(1, 41):
        assert read_by_id(BEAMTIME, "det", "default", i, config=config).data.tobytes() == \
            frame(i).tobytes()
    catalog.close()


def test_ring_with_other_settings_is_refused(shm_prefix, tmp_path, node_config, wait_for):
    config = node_config(tmp_path)
    other = node_config(tmp_path, slot_count=64)
    with Producer(BEAMTIME, "det", config=other.source("det").ring):
        with pytest.raises(AsapoConfigMismatchError):
            NodeService(config).start()


def test_read_by_id_of_a_message_not_on_disk(shm_prefix, tmp_path, node_config, wait_for, readers):
    config = node_config(tmp_path)
    config.data_root.mkdir(parents=True)
    catalog = Catalog(config.catalog_path)
    catalog.add_messages([MessageRecord("det", "default", 1, "n", 10, 5)])
    with pytest.raises(AsapoDataNotInCacheError, match="not on disk yet"):
        read_by_id(BEAMTIME, "det", "default", 1, config=config)
    catalog.close()


def test_consumer_get_by_id_falls_back_from_ring_to_disk(shm_prefix, tmp_path, node_config,
                                                         wait_for, readers):
    """Decision 6: once the ring has reused a message's slot, get_by_id reads it from the
    files the sink wrote, with its name and metadata; ids never stored raise clearly."""
    config = node_config(tmp_path, slot_count=8)
    n = 40  # five laps of an 8-slot ring
    with NodeService(config):
        with Producer(BEAMTIME, "det", config=config.source("det").ring) as producer:
            for i in range(1, n + 1):
                producer.send(i, frame(i), {"i": i}, name=f"f{i}")
            producer.send_stream_finished_flag("default", n)
        catalog = Catalog(config.catalog_path)
        wait_for(lambda: finished(catalog, "det", "default"), "the finished stream")
        wait_for(lambda: located(catalog, "det", "default", range(1, n + 1)), "locations")
        catalog.close()
        consumer = Consumer(BEAMTIME, "det", create=False, data_root=str(config.data_root))
        try:
            from_ring = consumer.get_by_id(n)  # still in the ring
            from_disk = consumer.get_by_id(3)  # overwritten in the ring five laps ago
            assert from_ring.data.tobytes() == frame(n).tobytes()
            assert (from_disk.id, from_disk.name, from_disk.meta, from_disk.stream) == \
                (3, "f3", {"i": 3}, "default")
            assert np.array_equal(from_disk.array(np.uint16, FRAME_SHAPE), frame(3))
            with pytest.raises(AsapoStreamFinishedError):
                consumer.get_by_id(n + 5)  # beyond the last id of the finished stream
        finally:
            consumer.close()
