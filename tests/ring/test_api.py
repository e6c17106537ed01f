"""The public ring API (asapo_hpc.client) end to end in one process: round trips, metadata,
datasets, zero-copy views, reservations, batches, (negative) acknowledgement, redelivery,
dead letters, latest-value reads, finished streams, auto ids and ASAPO's factories."""

from __future__ import annotations

import json

import numpy as np
import pytest

from asapo_hpc.client import (
    Consumer,
    Message,
    Producer,
    Reservation,
    create_consumer,
    create_producer,
)
from asapo_hpc.config import RingConfig
from asapo_hpc.errors import (
    AsapoCorruptSegmentError,
    AsapoEndOfStreamError,
    AsapoLeaseExpiredError,
    AsapoNoDataError,
    AsapoStreamFinishedError,
)

CFG = RingConfig(slot_count=64, slot_size=1024, groups=("g",), lease_s=30.0,
                 full_timeout_s=0.2)
T = 200  # ms: how long a get_next waits when a message is expected (or none is)


@pytest.fixture
def ring(shm_prefix):
    """make(config) -> (producer, consumer) on bt/src; both closed at the end."""
    opened = []

    def make(config: RingConfig = CFG, n_consumers: int = 1):
        producer = Producer("bt", "src", config=config)
        consumers = [Consumer("bt", "src", config=config) for _ in range(n_consumers)]
        opened.extend([producer, *consumers])
        return (producer, *consumers)

    yield make
    for obj in opened:
        obj.close()


def drain(consumer: Consumer, group: str, stream: str | None = None) -> list[Message]:
    """Every message available now for `group`, acknowledged, as detached copies."""
    out = []
    while True:
        try:
            msg = consumer.get_next(group, stream=stream, timeout_ms=20)
        except AsapoEndOfStreamError:
            return out
        out.append(msg.copy())
        consumer.acknowledge(group, msg)


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview"])
def test_buffer_round_trip_is_byte_identical(ring, kind):
    producer, consumer = ring()
    payloads = [bytes(range(256)) * 3, b"", b"\x00", bytes(1000)]
    wrap = {"bytes": bytes, "bytearray": bytearray, "memoryview": memoryview}[kind]
    for i, payload in enumerate(payloads, 1):
        assert producer.send(i, wrap(payload)) == i
    for i, payload in enumerate(payloads, 1):
        msg = consumer.get_next("g", timeout_ms=T)
        assert (msg.id, msg.attempts, msg.size) == (i, 1, len(payload))
        assert msg.data.dtype == np.uint8
        assert msg.data.tobytes() == payload
        consumer.acknowledge("g", msg)
    with pytest.raises(AsapoEndOfStreamError):
        consumer.get_next("g", timeout_ms=20)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int32", "float32", "float64",
                                   "complex64", "bool"])
def test_numpy_round_trip_is_byte_identical(ring, dtype):
    producer, consumer = ring()
    rng = np.random.default_rng(7)
    arr = (rng.random((6, 10)) * 1000).astype(dtype)
    producer.send(1, arr)
    msg = consumer.get_next("g", timeout_ms=T)
    assert msg.data.tobytes() == arr.tobytes()
    got = msg.array(dtype, (6, 10))
    assert got.dtype == np.dtype(dtype) and got.shape == (6, 10)
    np.testing.assert_array_equal(got, arr)
    assert msg.array(dtype).shape == (60,)
    consumer.acknowledge("g", msg)


def test_metadata_name_and_record_round_trip(ring):
    producer, consumer = ring()
    meta = {"exposure": 0.5, "tags": ["a", "b"], "nested": {"x": None, "ok": True}, "n": 7}
    producer.send(1, b"abc", meta, name="raw/file_0001.h5")
    producer.send(2, b"def", '{"json": "string"}')
    producer.send(3, b"ghi")
    m1, m2, m3 = (consumer.get_next("g", timeout_ms=T) for _ in range(3))
    assert (m1.meta, m1.name, m1.stream) == (meta, "raw/file_0001.h5", "default")
    assert (m2.meta, m2.name) == ({"json": "string"}, "")
    assert m3.meta == {}
    # the text as the producer encoded it, for storing without a second encode
    assert json.loads(m1.meta_json) == meta
    assert (m2.meta_json, m3.meta_json) == ('{"json": "string"}', "{}")
    data, record = m1
    assert data.tobytes() == b"abc"
    assert {k: record[k] for k in ("_id", "size", "name", "stream", "meta")} == {
        "_id": 1, "size": 3, "name": "raw/file_0001.h5", "stream": "default", "meta": meta}
    assert record["timestamp"] > 0
    assert "dataset_substream" not in record
    consumer.acknowledge_batch("g", [m1, m2, m3])


def test_datasets_carry_substream_and_size(ring):
    producer, consumer = ring()
    for part in (1, 2, 3):
        producer.send(5, bytes([part]) * 4, dataset=(part, 3))
    got = [consumer.get_next("g", timeout_ms=T) for _ in range(3)]
    assert [(m.id, m.dataset, m.data.tobytes()) for m in got] == [
        (5, (p, 3), bytes([p]) * 4) for p in (1, 2, 3)]
    _, record = got[1]
    assert (record["dataset_substream"], record["dataset_size"]) == (2, 3)
    consumer.acknowledge_batch("g", got)


def test_copy_outlives_acknowledgement_and_views_are_read_only(ring):
    producer, consumer = ring()
    producer.send(1, b"keep me")
    msg = consumer.get_next("g", timeout_ms=T)
    assert not msg.data.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        msg.data[0] = 1
    kept = msg.copy()
    consumer.acknowledge("g", msg)
    assert (kept.id, kept.data.tobytes(), kept.meta) == (1, b"keep me", {})
    assert kept.data.flags.writeable  # the copy is the caller's own memory
    kept.data[0] = ord("K")
    assert kept.data.tobytes() == b"Keep me"


def test_reserve_commit_array_is_zero_copy(ring):
    producer, consumer = ring()
    res = producer.reserve(4 * 8 * 4)
    assert isinstance(res, Reservation) and res.capacity == 128
    assert res.data.flags.writeable
    frame = res.array(np.float32, (4, 8))
    assert frame.flags.writeable and frame.shape == (4, 8)
    frame[:] = np.arange(32, dtype=np.float32).reshape(4, 8)
    assert res.commit(9, {"kind": "frame"}, name="f9") == 9
    msg = consumer.get_next("g", timeout_ms=T)
    assert (msg.id, msg.meta, msg.name) == (9, {"kind": "frame"}, "f9")
    np.testing.assert_array_equal(msg.array(np.float32, (4, 8)),
                                  np.arange(32, dtype=np.float32).reshape(4, 8))
    consumer.acknowledge("g", msg)


def test_commit_fewer_bytes_than_reserved(ring):
    producer, consumer = ring()
    with producer.reserve(100) as res:
        res.data[:5] = np.frombuffer(b"short", np.uint8)
        res.commit(1, nbytes=5)
    msg = consumer.get_next("g", timeout_ms=T)
    assert msg.data.tobytes() == b"short"
    consumer.acknowledge("g", msg)


def test_abort_and_with_block_leave_nothing_visible(ring):
    producer, consumer = ring()
    res = producer.reserve(10)
    res.data[:] = 1
    res.abort()
    res.abort()  # idempotent
    with producer.reserve(10) as res2:
        res2.data[:] = 2  # no commit: aborted on exit
    with pytest.raises(RuntimeError), producer.reserve(10) as res3:
        res3.data[:] = 3
        raise RuntimeError("acquisition failed")
    producer.send(4, b"after")
    assert [(m.id, m.data.tobytes()) for m in drain(consumer, "g")] == [(4, b"after")]


def test_send_batch_and_batch_get_ack(ring):
    producer, consumer = ring()
    rows = np.arange(20 * 6, dtype=np.uint16).reshape(20, 6)
    assert producer.send_batch(1, rows) == 20
    got = []
    while len(got) < 20:
        batch = consumer.get_next_batch("g", 8, timeout_ms=T)
        assert 1 <= len(batch) <= 8
        got.extend((m.id, m.data.tobytes()) for m in batch)
        assert consumer.acknowledge_batch("g", batch) == len(batch)
    assert got == [(i + 1, rows[i].tobytes()) for i in range(20)]
    assert consumer.group_stats("g")["acked"] == 20
    with pytest.raises(AsapoEndOfStreamError):
        consumer.get_next_batch("g", 8, timeout_ms=20)


def test_neg_acknowledge_with_delay_redelivers_with_attempts_2(ring):
    producer, c1, c2 = ring(n_consumers=2)
    producer.send(1, b"retry me")
    first = c1.get_next("g", timeout_ms=T)
    c1.neg_acknowledge("g", first, delay_ms=50)
    again = c2.get_next("g", timeout_ms=2000)  # waits out the delay
    assert (again.id, again.attempts, again.data.tobytes()) == (1, 2, b"retry me")
    c2.acknowledge("g", again)
    stats = c2.group_stats("g")
    assert (stats["delivered"], stats["redelivered"], stats["acked"]) == (2, 1, 1)


def test_neg_acknowledge_by_id(ring):
    producer, consumer = ring()
    producer.send(3, b"x", stream="s")
    msg = consumer.get_next("g", timeout_ms=T)
    consumer.neg_acknowledge("g", 3, stream="s")
    again = consumer.get_next("g", timeout_ms=T)
    assert (again.id, again.attempts, again.stream) == (3, 2, "s")
    consumer.acknowledge("g", 3, stream="s")
    assert msg.id == 3


def test_short_lease_redelivers_and_first_ack_is_stale(ring):
    producer, c1, c2 = ring(n_consumers=2)
    for c in (c1, c2):
        c.set_resend_nacs(True, 30, 5)
    producer.send(1, b"slow")
    held = c1.get_next("g", timeout_ms=T)
    again = c2.get_next("g", timeout_ms=3000)  # after the 30 ms lease
    assert (again.id, again.attempts) == (1, 2)
    with pytest.raises(AsapoLeaseExpiredError, match="went to another member"):
        c1.acknowledge("g", held)
    c2.acknowledge("g", again)
    assert c2.group_stats("g")["acked"] == 1


def test_dead_letter_after_max_attempts(ring):
    producer, consumer = ring(RingConfig(slot_count=16, slot_size=256, groups=("g",),
                                         max_attempts=2, full_timeout_s=0.2))
    producer.send(1, b"poison")
    producer.send(2, b"fine")
    seen = []
    for _ in range(3):
        msg = consumer.get_next("g", timeout_ms=T)
        seen.append((msg.id, msg.attempts))
        if msg.id == 1:
            consumer.neg_acknowledge("g", msg)
        else:
            consumer.acknowledge("g", msg)
    assert sorted(seen) == [(1, 1), (1, 2), (2, 1)]
    with pytest.raises(AsapoEndOfStreamError):
        consumer.get_next("g", timeout_ms=50)
    stats = consumer.group_stats("g")
    assert (stats["deadlettered"], stats["acked"]) == (1, 1)
    assert stats["floor"] == stats["next"] == 2  # the dead letter no longer holds the ring


def test_get_last_and_get_by_id_return_copies(ring):
    producer, consumer = ring()
    with pytest.raises(AsapoNoDataError, match="nothing published"):
        consumer.get_last()
    for i in range(1, 6):
        producer.send(i, bytes([i]) * (10 * i), {"i": i}, name=f"n{i}")
    last = consumer.get_last()
    assert (last.id, last.data.tobytes(), last.meta, last.name) == (5, b"\x05" * 50,
                                                                    {"i": 5}, "n5")
    by_id = consumer.get_by_id(3)
    assert (by_id.id, by_id.data.tobytes(), by_id.meta) == (3, b"\x03" * 30, {"i": 3})
    by_id.data[0] = 99  # a private copy
    assert consumer.get_by_id(3).data[0] == 3
    with pytest.raises(AsapoNoDataError, match="message 42 of stream 'default' is not in"):
        consumer.get_by_id(42)
    # latest reads claim nothing: the group still gets all five
    assert [m.id for m in drain(consumer, "g")] == [1, 2, 3, 4, 5]


def test_stream_finished_for_every_member_of_a_stream_group(ring):
    producer, c1, c2 = ring(n_consumers=2)
    for c in (c1, c2):  # both join group "h" following s1 before anything is sent
        with pytest.raises(AsapoEndOfStreamError):
            c.get_next("h", stream="s1", timeout_ms=10)
    producer.send(1, b"a", stream="s1")
    producer.send(2, b"b", stream="s1")
    producer.send(1, b"other", stream="s2")
    producer.send_stream_finished_flag("s1", 2, next_stream="s2")
    m1 = c1.get_next("h", stream="s1", timeout_ms=T)
    m2 = c2.get_next("h", stream="s1", timeout_ms=T)
    assert sorted([m1.id, m2.id]) == [1, 2] and {m1.stream, m2.stream} == {"s1"}
    c1.acknowledge("h", m1, stream="s1")
    c2.acknowledge("h", m2, stream="s1")
    for c in (c1, c2, c1):
        with pytest.raises(AsapoStreamFinishedError, match="'s1' is finished") as info:
            c.get_next("h", stream="s1", timeout_ms=T)
        assert info.value.next_stream == "s2"


def test_a_member_told_the_end_does_not_cut_off_one_still_working(ring):
    """One member meets the finish marker while another still holds the stream's last
    message: that one can still acknowledge it; its acknowledgement ends the group."""
    producer, c1, c2 = ring(n_consumers=2)
    for c in (c1, c2):
        with pytest.raises(AsapoEndOfStreamError):
            c.get_next("h", stream="s1", timeout_ms=10)
    producer.send(1, b"a", stream="s1")
    producer.send_stream_finished_flag("s1", 1)
    working = c1.get_next("h", stream="s1", timeout_ms=T)
    with pytest.raises(AsapoStreamFinishedError):
        c2.get_next("h", stream="s1", timeout_ms=T)
    fill = producer.stats()["groups"]
    c1.acknowledge("h", working)  # the group is still there for it
    assert producer.stats()["groups"] == fill - 1  # and now retired: holds nothing
    with pytest.raises(AsapoStreamFinishedError):
        c1.get_next("h", stream="s1", timeout_ms=T)


def test_stream_finished_without_next_stream(ring):
    producer, consumer = ring()
    producer.send(1, b"a", stream="last")
    producer.send_stream_finished_flag("last", 1)
    msg = consumer.get_next("h", stream="last", timeout_ms=T)
    consumer.acknowledge("h", msg)
    with pytest.raises(AsapoStreamFinishedError) as info:
        consumer.get_next("h", stream="last", timeout_ms=T)
    assert info.value.next_stream is None


def test_stream_finished_for_a_group_following_all_streams(ring):
    producer, c1, c2 = ring(n_consumers=2)
    producer.send(1, b"a", stream="s1")
    producer.send_stream_finished_flag("s1", 1, next_stream="s2")
    producer.send(1, b"b", stream="s2")
    msg = c1.get_next("g", timeout_ms=T)
    assert (msg.id, msg.stream) == (1, "s1")
    c1.acknowledge("g", msg)
    # the marker goes to exactly one member of the group, which is told the next stream
    with pytest.raises(AsapoStreamFinishedError, match="'s1' is finished") as info:
        c2.get_next("g", timeout_ms=T)
    assert info.value.next_stream == "s2"
    msg = c1.get_next("g", timeout_ms=T)
    assert (msg.id, msg.stream, msg.data.tobytes()) == (1, "s2", b"b")
    c1.acknowledge("g", msg)
    with pytest.raises(AsapoEndOfStreamError) as info2:
        c2.get_next("g", timeout_ms=20)
    assert not isinstance(info2.value, AsapoStreamFinishedError)


def test_auto_ids_are_shared_between_producers(ring):
    p1, consumer = ring()
    p2 = Producer("bt", "src")
    try:
        ids = []
        for i in range(6):
            ids.append((p1 if i % 2 else p2).send(0, bytes([i]), auto_id=True))
        ids.append(p1.send(0, b"s", stream="other", auto_id=True))
    finally:
        p2.close()
    assert ids == [1, 2, 3, 4, 5, 6, 1]
    got = drain(consumer, "g")
    assert [(m.id, m.stream, m.data.tobytes()) for m in got] == [
        (i + 1, "default", bytes([i])) for i in range(6)] + [(1, "other", b"s")]


def test_factories_take_asapo_positional_order(shm_prefix):
    producer = create_producer("", "processed", "bt", "auto", "src", "", 1, 500, config=CFG)
    consumer = create_consumer("", "", False, "bt", "src", "", 300)
    try:
        assert (producer.beamtime, producer.data_source) == ("bt", "src")
        assert (consumer.beamtime, consumer.data_source) == ("bt", "src")
        assert producer.timeout_ns == 500_000_000 and consumer.timeout_ns == 300_000_000
        producer.send(1, b"via factories")
        msg = consumer.get_next("g")
        assert msg.data.tobytes() == b"via factories"
        consumer.acknowledge("g", msg)
    finally:
        producer.close()
        consumer.close()


def test_acknowledge_by_id_with_and_without_stream(ring):
    producer, consumer = ring()
    producer.send(7, b"seven")
    producer.send(7, b"seven in s", stream="s")
    a = consumer.get_next("g", timeout_ms=T)
    b = consumer.get_next("g", timeout_ms=T)
    assert [(a.id, a.stream), (b.id, b.stream)] == [(7, "default"), (7, "s")]
    consumer.acknowledge("g", 7)
    consumer.acknowledge("g", 7, stream="s")
    stats = consumer.group_stats("g")
    assert (stats["acked"], stats["floor"]) == (2, 2)


def test_groups_each_see_every_message(ring):
    cfg = RingConfig(slot_count=16, slot_size=256, groups=("a", "b"), full_timeout_s=0.2)
    producer, consumer = ring(cfg)
    for i in range(1, 11):
        producer.send(i, bytes([i]))
    assert [m.id for m in drain(consumer, "a")] == list(range(1, 11))
    assert [m.id for m in drain(consumer, "b")] == list(range(1, 11))
    # both groups acknowledged everything: the ring can take a full lap again
    for i in range(11, 27):
        producer.send(i, b"x")


def test_finish_markers_in_a_batch_are_told_once_and_never_redelivered(ring):
    producer, consumer = ring()
    for i in range(1, 4):
        producer.send(i, b"x", stream="a")
    producer.send_stream_finished_flag("a", 3, next_stream="b")
    for i in range(1, 3):
        producer.send(i, b"y", stream="b")
    producer.send_stream_finished_flag("b", 2)
    seen = []
    for _ in range(4):
        try:
            batch = consumer.get_next_batch("g", 64, timeout_ms=50)
            seen.append([(m.stream, m.id) for m in batch])
            consumer.acknowledge_batch("g", batch)
        except AsapoStreamFinishedError as exc:
            seen.append((exc.stream, exc.last_id, exc.next_stream))
        except AsapoEndOfStreamError:
            seen.append("end")
    assert seen == [[("a", 1), ("a", 2), ("a", 3), ("b", 1), ("b", 2)],
                    ("a", 3, "b"), ("b", 2, None), "end"]
    stats = consumer.group_stats("g")
    assert (stats["delivered"], stats["acked"], stats["redelivered"], stats["floor"]) == \
        (7, 7, 0, 7)


def test_a_batch_of_only_a_finish_marker_then_more_streams(ring):
    """A batch holding nothing but a marker ends the stream; the next calls go on normally
    (regression: this once left an empty hold-back list that the next call popped from)."""
    producer, consumer = ring()
    producer.send(1, b"x", stream="a")
    batch = consumer.get_next_batch("g", 64, timeout_ms=50)
    consumer.acknowledge_batch("g", batch)
    producer.send_stream_finished_flag("a", 1, next_stream="b")
    with pytest.raises(AsapoStreamFinishedError):
        consumer.get_next_batch("g", 64, timeout_ms=50)
    producer.send(1, b"y", stream="b")
    batch = consumer.get_next_batch("g", 64, timeout_ms=50)
    assert [(m.stream, m.id) for m in batch] == [("b", 1)]
    consumer.acknowledge_batch("g", batch)
    with pytest.raises(AsapoEndOfStreamError):
        consumer.get_next_batch("g", 64, timeout_ms=50)


def test_metadata_a_c_producer_garbled_is_refused_by_meta_and_meta_json(ring):
    """Bytes no Python producer would write (a C producer's, or damage): both ways of
    reading the metadata raise the same clear error; data and id stay usable."""
    from asapo_hpc._core._ring import lib

    producer, consumer = ring()
    name, meta = b"f", b"{\xff not json"
    rc = lib.ahrpy_send(producer._ptr, producer._member, b"abc", 3, 1,
                        producer._streams.index("default"), 0, 0, 0, name, len(name), meta,
                        len(meta), 10**9)
    assert rc == 0
    msg = consumer.get_next("g", timeout_ms=T)
    for read in (lambda: msg.meta, lambda: msg.meta_json):
        with pytest.raises(AsapoCorruptSegmentError, match="metadata is not UTF-8 JSON"):
            read()
    assert (msg.id, msg.data.tobytes(), msg.name) == (1, b"abc", "f")
    consumer.acknowledge("g", msg)
