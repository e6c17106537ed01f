"""Group reads from disk through a real node service: a stream the ring no longer holds (the
ring was recreated, or wrapped past it) is read by a new group from id 1 from the catalog and
the HDF5 files, exactly once per group, byte-identical; members share it; a negative
acknowledgement, or a lease that ran out, redelivers (attempts 2, 3, ... as in the ring); the
end of a finished stream names the next stream; a live stream is followed as the sink
records more. Ring groups that can read from the ring still do (zero-copy messages)."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest

from asapo_hpc._core import Segment
from asapo_hpc.catalog import Catalog
from asapo_hpc.client import Consumer, Producer
from asapo_hpc.client.disk_groups import DiskMessage
from asapo_hpc.config import RingConfig, segment_name
from asapo_hpc.errors import AsapoEndOfStreamError, AsapoStreamFinishedError
from asapo_hpc.node import NodeConfig, NodeService, SourceConfig
from asapo_hpc.sink import SinkSettings

N = 30
SHAPE = (8, 8)


@pytest.fixture
def config(tmp_path) -> NodeConfig:
    """Source 'det' of 8 x 8 uint16 frames; a 16-slot ring, so 30 messages wrap it."""
    ring = RingConfig(slot_count=16, slot_size=1024, full_timeout_s=10.0, lease_s=30.0)
    source = SourceConfig("det", frame_shape=SHAPE, dtype="uint16", ring=ring)
    return NodeConfig(data_root=tmp_path / "data", beamtime="bt", sources=(source,),
                      sink=SinkSettings(frames_per_file=7, compression="none", threads=1),
                      poll_ms=20)


def frame(stream: str, i: int) -> np.ndarray:
    seed = sum(stream.encode()) * 1000 + i
    return np.random.default_rng(seed).integers(0, 65535, SHAPE, dtype=np.uint16)


def publish(producer: Producer, stream: str, ids: range) -> None:
    for i in ids:
        producer.send(i, frame(stream, i), {"i": i, "stream": stream}, stream=stream)


def stored(config: NodeConfig, stream: str, n: int) -> bool:
    """True once ids 1..n of `stream` are located on disk."""
    with Catalog(config.catalog_path) as catalog:
        try:
            return catalog.get_current_size("det", stream) >= n and all(
                catalog.get_by_id("det", stream, i).file_path for i in range(1, n + 1))
        except Exception:
            return False


def record_finished_stream(config: NodeConfig, wait_for, stream: str = "scan",
                           next_stream: str | None = "scan2") -> None:
    """Publish ids 1..N of `stream`, finish it, wait until the sink stored all."""
    with Producer("bt", "det", config=config.source("det").ring) as producer:
        publish(producer, stream, range(1, N + 1))
        producer.send_stream_finished_flag(stream, N, next_stream)
    wait_for(lambda: stored(config, stream, N), f"stream {stream} on disk")
    with Catalog(config.catalog_path) as catalog:
        wait_for(lambda: catalog.get_stream_info("det", stream).finished, "the finish")


def stored_without_ring(config: NodeConfig, wait_for, next_stream: str | None = "scan2") -> None:
    """The node service stores stream "scan" (finished, naming ``next_stream``), then the
    node restarts with a new, empty ring: whatever reads "scan" now reads it from disk."""
    with NodeService(config):
        record_finished_stream(config, wait_for, next_stream=next_stream)
    Segment.unlink(segment_name("bt", "det"))


def check(msg, stream: str) -> None:
    """Byte-identical data and the record fields as sent."""
    assert isinstance(msg, DiskMessage)
    assert msg.stream == stream and msg.dataset is None
    assert msg.meta == {"i": msg.id, "stream": stream}
    assert msg.size == frame(stream, msg.id).nbytes
    assert msg.data.tobytes() == frame(stream, msg.id).tobytes()
    assert msg.record()["_id"] == msg.id and msg.timestamp > 0


def read_all(consumer: Consumer, group: str, stream: str, got: list[int]) -> str | None:
    """Read until the stream is finished; returns the next stream named."""
    while True:
        try:
            msg = consumer.get_next(group, stream=stream, timeout_ms=2000)
        except AsapoStreamFinishedError as exc:
            assert exc.stream == stream and exc.last_id == N
            return exc.next_stream
        check(msg, stream)
        got.append(msg.id)
        consumer.acknowledge(group, msg)


def test_new_group_reads_finished_stream_from_disk_after_ring_recreated(
        shm_prefix, config, wait_for):
    stored_without_ring(config, wait_for)
    with Consumer("bt", "det", data_root=str(config.data_root)) as consumer:
        got: list[int] = []
        assert read_all(consumer, "fresh", "scan", got) == "scan2"
        assert got == list(range(1, N + 1))  # every id exactly once, in order
        with pytest.raises(AsapoStreamFinishedError) as err:  # and again: still finished
            consumer.get_next("fresh", stream="scan", timeout_ms=0)
        assert err.value.next_stream == "scan2"
        # the old stream was not registered in the new ring (its table stays free)
        assert "scan" not in consumer._streams._index
    with Catalog(config.catalog_path) as catalog:  # acknowledged in the catalog
        assert catalog.unacknowledged("fresh", "det", "scan") == []


def test_two_members_share_a_stored_stream_exactly_once(shm_prefix, config, wait_for):
    root = str(config.data_root)
    stored_without_ring(config, wait_for)
    got: list[list[int]] = [[], []]
    errors: list[BaseException] = []
    go = threading.Barrier(2)

    def member(k: int) -> None:
        try:
            with Consumer("bt", "det", data_root=root) as consumer:
                go.wait(10)
                read_all(consumer, "shared", "scan", got[k])
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=member, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(got[0] + got[1]) == list(range(1, N + 1))
    assert not set(got[0]) & set(got[1])


def test_nack_redelivers_and_ack_by_id(shm_prefix, config, wait_for):
    stored_without_ring(config, wait_for, next_stream=None)
    with Consumer("bt", "det", data_root=str(config.data_root)) as consumer:
        first = consumer.get_next("g", stream="scan", timeout_ms=1000)
        assert first.id == 1
        consumer.neg_acknowledge("g", first, delay_ms=0)
        again = consumer.get_next("g", stream="scan", timeout_ms=1000)
        check(again, "scan")
        assert again.id == 1  # redelivered before id 2
        consumer.acknowledge("g", 1, stream="scan")  # by id, with its stream
        second = consumer.get_next("g", stream="scan", timeout_ms=1000)
        assert second.id == 2
        consumer.neg_acknowledge("g", 2, delay_ms=60_000, stream="scan")  # by id, later
        batch = consumer.get_next_batch("g", N, stream="scan", timeout_ms=1000)
        assert batch.ids == list(range(3, N + 1))
        assert consumer.acknowledge_batch("g", batch) == N - 2
        with pytest.raises(AsapoStreamFinishedError) as err:
            consumer.get_next("g", stream="scan", timeout_ms=0)
        assert err.value.next_stream is None
    with Catalog(config.catalog_path) as catalog:
        assert catalog.unacknowledged("g", "det", "scan") == [2]


def test_attempts_count_the_catalogs_deliveries(shm_prefix, config, wait_for):
    stored_without_ring(config, wait_for, next_stream=None)
    with Consumer("bt", "det", data_root=str(config.data_root)) as consumer:
        first = consumer.get_next("g", stream="scan", timeout_ms=1000)
        assert (first.id, first.attempts) == (1, 1)  # a first delivery
        consumer.neg_acknowledge("g", first, delay_ms=0)
        again = consumer.get_next("g", stream="scan", timeout_ms=1000)
        assert (again.id, again.attempts) == (1, 2)
        consumer.neg_acknowledge("g", again, delay_ms=0)
        third = consumer.get_next("g", stream="scan", timeout_ms=1000)
        check(third, "scan")
        assert (third.id, third.attempts) == (1, 3)
        consumer.acknowledge("g", third)
        batch = consumer.get_next_batch("g", 3, stream="scan", timeout_ms=1000)
        assert [(m.id, m.attempts) for m in batch] == [(2, 1), (3, 1), (4, 1)]
        consumer.neg_acknowledge("g", batch[1], delay_ms=0)
        batch = consumer.get_next_batch("g", 2, stream="scan", timeout_ms=1000)
        assert [(m.id, m.attempts) for m in batch] == [(3, 2), (5, 1)]


def test_attempts_after_a_members_lease_expired(shm_prefix, config, wait_for):
    stored_without_ring(config, wait_for, next_stream=None)
    # the new ring's lease is what disk-mode groups resend by (no set_resend_nacs)
    ring = dataclasses.replace(config.source("det").ring, lease_s=0.2)
    root = str(config.data_root)
    with Consumer("bt", "det", config=ring, data_root=root) as other:
        with Consumer("bt", "det", config=ring, data_root=root) as dying:
            taken = dying.get_next("g", stream="scan", timeout_ms=1000)
            assert (taken.id, taken.attempts) == (1, 1)
        # the member left without acknowledging; once its lease is over, id 1 comes back
        time.sleep(0.5)
        back = other.get_next("g", stream="scan", timeout_ms=1000)
        check(back, "scan")
        assert (back.id, back.attempts) == (1, 2)
        nxt = other.get_next("g", stream="scan", timeout_ms=1000)
        assert (nxt.id, nxt.attempts) == (2, 1)


def test_late_group_after_the_ring_wrapped_reads_from_disk_and_follows(
        shm_prefix, config, wait_for):
    root = str(config.data_root)
    ring = config.source("det").ring
    with NodeService(config), Producer("bt", "det", config=ring) as producer, \
            Consumer("bt", "det", data_root=root) as consumer:
        with pytest.raises(AsapoEndOfStreamError):  # opened before publishing: ring mode
            consumer.get_next("early", stream="live", timeout_ms=0)
        early = []
        for i in range(1, N + 1):  # the early group keeps up; 30 messages wrap 16 slots
            publish(producer, "live", range(i, i + 1))
            early.append(consumer.get_next("early", stream="live", timeout_ms=1000))
            consumer.acknowledge("early", early[-1])
        assert not any(isinstance(m, DiskMessage) for m in early)  # zero-copy ring messages
        assert [m.id for m in early] == list(range(1, N + 1))
        wait_for(lambda: stored(config, "live", N), "the stream on disk")
        # a group opened now cannot get id 1 from the ring: it reads from disk
        late = [consumer.get_next("late", stream="live", timeout_ms=1000) for _ in range(N)]
        for msg in late:
            check(msg, "live")
        assert [m.id for m in late] == list(range(1, N + 1))
        with pytest.raises(AsapoEndOfStreamError) as err:  # not finished: waits for more
            consumer.get_next("late", stream="live", timeout_ms=100)
        assert not isinstance(err.value, AsapoStreamFinishedError)
        publish(producer, "live", range(N + 1, N + 6))  # follows what the sink records
        more = [consumer.get_next("late", stream="live", timeout_ms=5000) for _ in range(5)]
        assert [m.id for m in more] == list(range(N + 1, N + 6))
        for msg in more:
            assert msg.data.tobytes() == frame("live", msg.id).tobytes()
        producer.send_stream_finished_flag("live", N + 5, "next")
        with pytest.raises(AsapoStreamFinishedError) as err:
            consumer.get_next("late", stream="live", timeout_ms=5000)
        assert err.value.next_stream == "next"
