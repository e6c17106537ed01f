"""Faults with real processes: SIGKILL of a consumer holding claims and of a producer
between reserve and commit, a full ring, and a consumer that leaves with unacked claims."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

import numpy as np
import pytest

from asapo_hpc.client import Consumer, Producer
from asapo_hpc.config import RingConfig
from asapo_hpc.errors import AsapoEndOfStreamError, AsapoRingFullError, AsapoStreamFinishedError

CTX = mp.get_context("fork")
CFG = RingConfig(slot_count=8, slot_size=256, groups=("g",), lease_s=60.0, full_timeout_s=0.3)
WAIT = 30  # s: the longest a test waits for a child's report before failing


def _hold_and_wait(to_ack: int, to_hold: int, out) -> None:
    """Child: claim to_ack + to_hold messages, ack the first to_ack, report, then sleep."""
    consumer = Consumer("bt", "src")
    got = [consumer.get_next("g", timeout_ms=5000) for _ in range(to_ack + to_hold)]
    for msg in got[:to_ack]:
        consumer.acknowledge("g", msg)
    out.put(([m.id for m in got[:to_ack]], [m.id for m in got[to_ack:]]))
    time.sleep(600)


def _reserve_and_wait(nbytes: int, out) -> None:
    """Child: reserve, write half the data, report, then sleep without committing."""
    producer = Producer("bt", "src")
    res = producer.reserve(nbytes, meta_capacity=64)
    res.data[: nbytes // 2] = 0xAB
    out.put(res.capacity)
    time.sleep(600)


def start(children, target, *args):
    out = CTX.Queue()
    proc = CTX.Process(target=target, args=(*args, out), daemon=True)
    children.append(proc)
    proc.start()
    return proc, out


def kill(proc) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(WAIT)
    assert proc.exitcode == -signal.SIGKILL


def drain(consumer: Consumer, group: str = "g", timeout_ms: int = 200) -> list[tuple]:
    """(id, attempts, data) of everything available, each acknowledged."""
    out = []
    while True:
        try:
            msg = consumer.get_next(group, timeout_ms=timeout_ms)
        except AsapoEndOfStreamError:
            return out
        out.append((msg.id, msg.attempts, msg.data.tobytes()))
        consumer.acknowledge(group, msg)


def test_killed_consumer_claims_go_to_another_member(shm_prefix, children):
    producer = Producer("bt", "src", config=CFG)
    for i in range(1, 9):
        producer.send(i, bytes([i]) * 10)
    proc, out = start(children, _hold_and_wait, 2, 3)
    acked, held = out.get(timeout=WAIT)
    assert sorted(acked + held) == [1, 2, 3, 4, 5]
    with Consumer("bt", "src") as survivor:
        kill(proc)
        got = drain(survivor)
        stats = survivor.group_stats("g")
    by_id = {i: (attempts, data) for i, attempts, data in got}
    assert len(by_id) == len(got), f"a message was delivered twice: {got}"
    assert set(by_id) == set(range(1, 9)) - set(acked)  # nothing lost, acked ones not again
    assert {i for i, (attempts, _) in by_id.items() if attempts == 2} == set(held)
    assert all(data == bytes([i]) * 10 for i, (_, data) in by_id.items())
    assert (stats["acked"], stats["redelivered"], stats["delivered"]) == (8, 3, 11)
    assert stats["floor"] == stats["next"] == 8
    # the ring is whole again: a full lap fits
    for i in range(9, 17):
        producer.send(i, b"again")
    producer.close()


def test_killed_producer_between_reserve_and_commit(shm_prefix, children):
    producer = Producer("bt", "src", config=CFG)
    producer.send(1, b"before")
    proc, out = start(children, _reserve_and_wait, 300)  # two slots
    assert out.get(timeout=WAIT) == 300
    producer.send(2, b"after")
    with Consumer("bt", "src") as consumer:
        first = consumer.get_next("g", timeout_ms=1000)
        assert (first.id, first.data.tobytes()) == (1, b"before")
        consumer.acknowledge("g", first)
        kill(proc)  # dies holding the reservation: consumers skip it
        assert drain(consumer, timeout_ms=1000) == [(2, 1, b"after")]
        # the dead reservation's space comes back: the producer fills the whole ring again
        for i in range(3, 3 + CFG.slot_count):
            producer.send(i, bytes([i]) * 200)
        with pytest.raises(AsapoRingFullError):
            producer.send(99, b"one too many")
        assert drain(consumer) == [(i, 1, bytes([i]) * 200)
                                   for i in range(3, 3 + CFG.slot_count)]
        stats = consumer.group_stats("g")
        assert stats["acked"] == 2 + CFG.slot_count
        assert stats["floor"] == stats["next"] == producer.stats()["head"]
    producer.close()


def test_consumer_waiting_while_the_producer_dies(shm_prefix, children):
    """A consumer already blocked in get_next behind the dead reservation gets on."""
    producer = Producer("bt", "src", config=CFG)
    proc, out = start(children, _reserve_and_wait, 100)
    assert out.get(timeout=WAIT) == 100
    producer.send(1, b"behind the reservation")
    with Consumer("bt", "src") as consumer:
        with pytest.raises(AsapoEndOfStreamError):
            consumer.get_next("g", timeout_ms=100)  # blocked by the live reservation
        kill(proc)
        msg = consumer.get_next("g", timeout_ms=5000)
        assert (msg.id, msg.data.tobytes()) == (1, b"behind the reservation")
        consumer.acknowledge("g", msg)
    producer.close()


def test_full_ring_blocks_then_raises(shm_prefix):
    with Producer("bt", "src", config=CFG) as producer, Consumer("bt", "src") as consumer:
        for i in range(1, CFG.slot_count + 1):
            producer.send(i, bytes([i]))
        with pytest.raises(AsapoRingFullError, match=r"send of message 9 .*every durable "
                           r"consumer group acknowledged it.*full_timeout_s.*ENOSPC") as info:
            producer.send(9, b"x")
        assert type(info.value) is AsapoRingFullError
        assert isinstance(info.value, TimeoutError)
        with pytest.raises(AsapoRingFullError, match=r"reserve of 10 bytes.*ENOSPC"):
            producer.reserve(10, meta_capacity=0)
        with pytest.raises(AsapoRingFullError, match=r"send_batch of 3 messages.*lagging group"):
            producer.send_batch(20, np.zeros((3, 4), np.uint8))
        # one acknowledgement frees one slot: the next send goes through
        msg = consumer.get_next("g", timeout_ms=200)
        consumer.acknowledge("g", msg)
        producer.send(9, b"x")
        # and a batch that only partly fits says how far it got
        consumer.acknowledge("g", consumer.get_next("g", timeout_ms=200))
        with pytest.raises(AsapoRingFullError, match=r"1 of 3 messages were published \(ids "
                                                     r"20..20\); send the rest from id 21"):
            producer.send_batch(20, np.full((3, 4), 7, np.uint8))
        assert [m[0] for m in drain(consumer)] == [*range(3, 10), 20]


def test_send_waits_for_space_freed_by_another_process(shm_prefix, children):
    """A blocked producer is woken when a consumer in another process acknowledges."""
    producer = Producer("bt", "src", config=CFG, timeout_ms=20_000)
    for i in range(1, CFG.slot_count + 1):
        producer.send(i, b"full")
    proc, out = start(children, _hold_and_wait, 1, 0)
    producer.send(9, b"fits once one is acknowledged")  # waits for the child's ack
    assert out.get(timeout=WAIT) == ([1], [])
    kill(proc)
    with Consumer("bt", "src") as consumer:
        assert [m[0] for m in drain(consumer)] == list(range(2, 10))
    producer.close()


def test_closed_consumer_hands_its_claims_to_another_member(shm_prefix):
    with Producer("bt", "src", config=CFG) as producer, Consumer("bt", "src") as other:
        for i in range(1, 6):
            producer.send(i, bytes([i]))
        leaving = Consumer("bt", "src")
        held = [leaving.get_next("g", timeout_ms=200) for _ in range(3)]
        leaving.acknowledge("g", held[0])
        leaving.close()
        got = drain(other)
        assert sorted((i, a) for i, a, _ in got) == [(2, 2), (3, 2), (4, 1), (5, 1)]
        assert other.group_stats("g")["acked"] == 5


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_killed_consumer_mid_batch(shm_prefix, children, signum):
    """Claims taken with get_next_batch are redelivered the same way."""
    producer = Producer("bt", "src", config=CFG)
    for i in range(1, 7):
        producer.send(i, bytes([i]))
    out = CTX.Queue()
    proc = CTX.Process(target=_batch_and_wait, args=(out,), daemon=True)
    children.append(proc)
    proc.start()
    held = out.get(timeout=WAIT)
    os.kill(proc.pid, signum)
    proc.join(WAIT)
    assert proc.exitcode == -signum
    with Consumer("bt", "src") as consumer:
        got = drain(consumer)
    assert sorted((i, a) for i, a, _ in got) == sorted(
        [(i, 2) for i in held] + [(i, 1) for i in range(1, 7) if i not in held])
    producer.close()


def _batch_and_wait(out) -> None:
    consumer = Consumer("bt", "src")
    batch = consumer.get_next_batch("g", 4, timeout_ms=5000)
    out.put([m.id for m in batch])
    time.sleep(600)



def _told_of_the_end(out) -> None:
    """Child: read group g to the finish marker, report, then sleep (killed before it asks
    again, so before it could have acted on the end of the stream)."""
    consumer = Consumer("bt", "src")
    ids = []
    while True:
        try:
            msg = consumer.get_next("g", timeout_ms=5000)
        except AsapoStreamFinishedError as exc:
            out.put((ids, exc.stream, exc.last_id, exc.next_stream))
            time.sleep(600)
        ids.append(msg.id)
        consumer.acknowledge("g", msg)


def test_finish_marker_of_a_killed_member_goes_to_another(shm_prefix, children):
    producer = Producer("bt", "src", config=CFG)
    producer.send(1, b"a", stream="s1")
    producer.send(2, b"b", stream="s1")
    producer.send_stream_finished_flag("s1", 2, next_stream="s2")
    proc, out = start(children, _told_of_the_end)
    assert out.get(timeout=WAIT) == ([1, 2], "s1", 2, "s2")
    kill(proc)
    survivor = Consumer("bt", "src")
    with pytest.raises(AsapoStreamFinishedError) as info:
        survivor.get_next("g", timeout_ms=5000)  # the marker comes back: it was not done
    assert (info.value.stream, info.value.last_id, info.value.next_stream) == ("s1", 2, "s2")
    survivor.close()  # a clean close counts the marker as handled
    after = Consumer("bt", "src")
    with pytest.raises(AsapoEndOfStreamError) as info:
        after.get_next("g", timeout_ms=100)
    assert not isinstance(info.value, AsapoStreamFinishedError)
    after.close()
    producer.close()
