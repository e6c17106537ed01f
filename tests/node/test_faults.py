"""Faults: kill -9 of the node service mid-stream, and a data folder it cannot write."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from asapo_hpc.catalog import Catalog
from asapo_hpc.client import Consumer, Producer
from asapo_hpc.errors import AsapoRingFullError
from asapo_hpc.node import NodeConfig, NodeService, read_by_id
from asapo_hpc.node.replay import close_readers

BEAMTIME = "bt"
FRAME_SHAPE = (16, 32)


def frame(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 65535, FRAME_SHAPE, dtype=np.uint16)


def write_toml(config: NodeConfig, path: Path) -> Path:
    source = config.source("det")
    ring = source.ring
    path.write_text(f"""
data_root = "{config.data_root}"
beamtime = "{config.beamtime}"
poll_ms = 50
status_interval_s = 0.2
[sink]
compression = "bslz4"
frames_per_file = 7
threads = 1
[[sources]]
name = "det"
frame_shape = {list(source.frame_shape)}
dtype = "uint16"
[sources.ring]
slot_count = {ring.slot_count}
slot_size = {ring.slot_size}
full_timeout_s = {ring.full_timeout_s}
lease_s = {ring.lease_s}
""")
    return path


@pytest.fixture
def serve(tmp_path):
    """Start `asapo-hpc serve --config FILE` in a child process; every one is killed after."""
    procs: list[subprocess.Popen] = []

    def start(config_file: Path) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from asapo_hpc.cli import main; "
             "sys.exit(main(sys.argv[1:]))", "serve", "--config", str(config_file)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        return proc
    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
    close_readers()


def located_ids(catalog: Catalog, n: int) -> set[int]:
    size = catalog.get_current_size("det", "default") if catalog.get_stream_list("det") else 0
    return {i for i in range(1, min(size, n) + 1)
            if catalog.get_by_id("det", "default", i).file_path}


def test_kill_9_mid_stream_then_restart(shm_prefix, tmp_path, node_config, wait_for, serve):
    config = node_config(tmp_path)
    config_file = write_toml(config, tmp_path / "node.toml")
    ring = config.source("det").ring
    config.data_root.mkdir(parents=True)
    catalog = Catalog(config.catalog_path)
    with Producer(BEAMTIME, "det", config=ring) as producer:
        proc = serve(config_file)
        for i in range(1, 41):
            producer.send(i, frame(i))
        wait_for(lambda: len(located_ids(catalog, 40)) >= 10, "frames on disk")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        with Consumer(BEAMTIME, "det", create=False) as probe:
            acked = probe.group_stats("sink")["acked"]
        # every message acknowledged in the ring is on disk and located in the catalog
        assert len(located_ids(catalog, 40)) >= acked > 0
        for i in range(41, 61):
            producer.send(i, frame(i))
        proc = serve(config_file)
        producer.send_stream_finished_flag("default", 60)
        wait_for(lambda: catalog.get_stream_list("det")[0].finished
                 and len(located_ids(catalog, 60)) == 60, "the restarted service to finish")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    records = catalog.query_messages("det", "default", "_id > 0")
    assert [r.data_id for r in records] == list(range(1, 61))  # none lost, none twice
    for i in range(1, 61):
        assert read_by_id(BEAMTIME, "det", "default", i, config=config).data.tobytes() == \
            frame(i).tobytes()
    folder = config.data_root / BEAMTIME / "det" / "default"
    stored: set[int] = set()
    for path in sorted(folder.glob("default_0*.h5")):
        with h5py.File(path, "r") as f:  # plain (non-SWMR) open: write flags were cleared
            stored |= set(f["/entry/data/message_id"][:].tolist())
    assert stored - {0} == set(range(1, 61))  # redelivered frames may be stored twice
    catalog.close()


def test_unwritable_data_folder_backpressure_then_recovery(shm_prefix, tmp_path, node_config,
                                                            wait_for, caplog):
    config = node_config(tmp_path, slot_count=8, full_timeout_s=0.5,
                         catalog=tmp_path / "catalog.sqlite")
    blocker = config.data_root / BEAMTIME  # a file where the beamtime folder should be
    config.data_root.mkdir(parents=True)
    blocker.write_text("not a folder")  # (works as root too, unlike chmod)
    caplog.set_level(logging.INFO, logger="asapo_hpc.node")
    catalog = Catalog(config.catalog_path)
    with NodeService(config) as service, \
            Producer(BEAMTIME, "det", config=config.source("det").ring) as producer:
        sent = 0
        with pytest.raises(AsapoRingFullError, match="durable consumer group"):
            for i in range(1, 100):
                producer.send(i, frame(i))
                sent = i
        assert sent == 8  # the ring's 8 slots, held by the sink group: nothing dropped
        counters = wait_for(lambda: service.counters()["det"]["retrying"]
                            and service.counters()["det"], "the retry state")
        assert counters["write_errors"] >= 1
        assert str(blocker) in counters["last_error"] and "Cause:" in counters["last_error"]
        assert counters["streams"]["default"]["messages_written"] == 0
        lines = [json.loads(r.getMessage()) for r in caplog.records
                 if r.name == "asapo_hpc.node"]
        failure = next(line for line in lines if line["event"] == "sink_write_failed")
        assert failure["level"] == "ERROR" and failure["source"] == "det"
        assert "not acknowledged" in failure["action"]
        # what was claimed before the error is recorded, not on disk; the rest waits in the
        # ring (the recorder claims nothing new while it retries)
        recorded = catalog.query_messages("det", "default", "_id > 0")
        assert 1 <= len(recorded) <= 8
        assert [r.file_path for r in recorded] == [None] * len(recorded)
        os.unlink(blocker)  # the operator fixes the folder: the same frames are written
        wait_for(lambda: not service.counters()["det"]["retrying"], "recovery")
        for i in range(9, 13):
            producer.send(i, frame(i))
        producer.send_stream_finished_flag("default", 12)
        wait_for(lambda: catalog.get_stream_list("det")[0].finished, "the finished stream")
    for i in range(1, 13):
        assert read_by_id(BEAMTIME, "det", "default", i, config=config).data.tobytes() == \
            frame(i).tobytes()
    assert any(json.loads(r.getMessage())["event"] == "sink_recovered"
               for r in caplog.records if r.name == "asapo_hpc.node")
    close_readers()
    catalog.close()
