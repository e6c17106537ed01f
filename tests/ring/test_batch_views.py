"""MessageBatch views: the per-slot view tables buffers() hands out for batches of
equal-sized messages in consecutive slots, and the per-message path for every other shape
(mixed lengths, the ring's end, finish markers, prefetched messages)."""

from __future__ import annotations

import numpy as np
import pytest

from asapo_hpc.client import Consumer, Producer
from asapo_hpc.config import RingConfig
from asapo_hpc.errors import AsapoEndOfStreamError

CFG = RingConfig(slot_count=16, slot_size=128, groups=("g",), full_timeout_s=0.2)
T = 200


def rows(first_id: int, n: int, size: int = 100) -> np.ndarray:
    """n distinct messages of `size` bytes, message i filled with (first_id + i) % 256."""
    return np.array([[(first_id + i) % 256] * size for i in range(n)], np.uint8)


@pytest.fixture
def pc(shm_prefix):
    producer = Producer("bt", "src", config=CFG)
    consumer = Consumer("bt", "src", config=CFG)
    yield producer, consumer
    consumer.close()
    producer.close()


def take(consumer: Consumer, n: int) -> list[bytes]:
    batch = consumer.get_next_batch("g", n, timeout_ms=T)
    out = [bytes(b) for b in batch.buffers()]
    assert out == [m.data.tobytes() for m in batch]  # the same bytes as each Message's
    assert out == [a.tobytes() for a in batch.arrays()]
    assert consumer.acknowledge_batch("g", batch) == len(batch)
    return out


def test_views_of_equal_batches_are_right_over_many_laps(pc):
    producer, consumer = pc
    sent = 1
    for _ in range(20):  # 20 x 4 messages through 16 slots: five laps
        producer.send_batch(sent, rows(sent, 4))
        assert take(consumer, 4) == [bytes(r) for r in rows(sent, 4)]
        sent += 4
    assert set(consumer._views) == {100}  # one table, for the one length
    assert len(consumer._views[100]) == CFG.slot_count


def test_a_view_handed_out_again_cannot_be_released(pc):
    producer, consumer = pc
    for first in (1, 5, 9):  # the table is made when a length comes the second time
        producer.send_batch(first, rows(first, 4))
        batch = consumer.get_next_batch("g", 4, timeout_ms=T)
        views = batch.buffers()
        consumer.acknowledge_batch("g", batch)
    assert views[0] is consumer._views[100][8]
    with pytest.raises(BufferError):
        views[0].release()
    with pytest.raises(BufferError), views[1]:  # a with block releases at its end
        pass
    for first in (13, 17, 21):  # the same slots again: the views still work
        producer.send_batch(first, rows(first, 4))
        assert take(consumer, 4) == [bytes(r) for r in rows(first, 4)]


def test_other_shapes_take_a_view_per_message(pc):
    producer, consumer = pc
    producer.send(1, b"a" * 10)
    producer.send(2, b"b" * 20)
    producer.send(3, b"c" * 200)  # two slots
    assert take(consumer, 3) == [b"a" * 10, b"b" * 20, b"c" * 200]
    producer.send_batch(4, rows(4, 10))  # slots 4..13
    assert take(consumer, 10) == [bytes(r) for r in rows(4, 10)]
    producer.send_batch(14, rows(14, 4))  # slots 14, 15, then 0, 1: across the end
    batch = consumer.get_next_batch("g", 4, timeout_ms=T)
    assert batch._run is None
    assert [bytes(b) for b in batch.buffers()] == [bytes(r) for r in rows(14, 4)]
    assert batch.ids == [14, 15, 16, 17]
    consumer.acknowledge_batch("g", batch)
    producer.send_batch(18, rows(18, 3, size=200))  # two slots each: every second slot
    batch = consumer.get_next_batch("g", 3, timeout_ms=T)
    assert batch._run is not None and batch._run[1] == 2
    assert [bytes(b) for b in batch.buffers()] == [bytes(r) for r in rows(18, 3, size=200)]
    assert [bytes(b) for b in batch.buffers()] == [bytes(r) for r in rows(18, 3, size=200)]
    assert [m.id for m in batch] == [18, 19, 20] and batch[-1].id == 20
    assert [m.id for m in batch[1:]] == [19, 20]
    consumer.acknowledge_batch("g", batch)


def test_finish_marker_in_a_batch_keeps_views_right(pc):
    producer, consumer = pc
    producer.send_batch(1, rows(1, 3), stream="s")
    producer.send_stream_finished_flag("s", 3, next_stream="t")
    producer.send_batch(1, rows(7, 2), stream="t")
    batch = consumer.get_next_batch("g", 8, timeout_ms=T)
    assert [(m.stream, m.id) for m in batch] == [("s", 1), ("s", 2), ("s", 3), ("t", 1),
                                                  ("t", 2)]
    assert [bytes(b) for b in batch.buffers()] == \
        [bytes(r) for r in rows(1, 3)] + [bytes(r) for r in rows(7, 2)]
    assert consumer.acknowledge_batch("g", batch) == 5


def test_prefetched_messages_then_a_batch(shm_prefix):
    producer = Producer("bt", "src", config=CFG)
    consumer = Consumer("bt", "src", config=CFG, prefetch=8)
    try:
        producer.send_batch(1, rows(1, 6))
        first = consumer.get_next("g", timeout_ms=T)  # claims all six, hands out one
        assert first.buffer.tobytes() == bytes(rows(1, 1)[0])
        consumer.acknowledge("g", first)
        for _ in range(2):  # the second time makes the table
            batch = consumer.get_next_batch("g", 2, timeout_ms=T)
            assert batch._run is not None
            first_id = batch.ids[0]
            assert [bytes(b) for b in batch.buffers()] == \
                [bytes(r) for r in rows(first_id, 2)]
            consumer.acknowledge_batch("g", batch)
        assert 100 in consumer._views
        rest = consumer.get_next_batch("g", 8, timeout_ms=T)
        assert rest.ids == [6]
        consumer.acknowledge_batch("g", rest)
        with pytest.raises(AsapoEndOfStreamError):
            consumer.get_next_batch("g", 8, timeout_ms=20)
    finally:
        consumer.close()
        producer.close()
    assert consumer._views == {}  # closing drops the tables (they hold the mapping)


def test_few_tables_are_kept(pc):
    producer, consumer = pc
    sent = 1
    for size in (10, 20, 30, 40, 50, 60):
        for _ in range(2):
            producer.send_batch(sent, rows(sent, 2, size=size))
            assert take(consumer, 2) == [bytes(r) for r in rows(sent, 2, size=size)]
            sent += 2
    assert 1 <= len(consumer._views) <= 4 and 60 in consumer._views
