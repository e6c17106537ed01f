"""Consumer(auto_ack=True): asking a group for more acknowledges what this member got from
it last. Still at-least-once: a member killed while working on a message never asked for
the next one, so that message goes to another member."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import time

import pytest

from asapo_hpc.client import Consumer, Producer
from asapo_hpc.config import RingConfig
from asapo_hpc.errors import AsapoEndOfStreamError, AsapoRingFullError

CFG = RingConfig(slot_count=8, slot_size=256, groups=("g",), lease_s=60.0, full_timeout_s=0.2)
CTX = mp.get_context("fork")


def acked(consumer: Consumer) -> tuple[int, int]:
    stats = consumer.group_stats("g")
    return stats["acked"], stats["floor"]


def test_next_call_acknowledges_the_previous_message(shm_prefix):
    with Producer("bt", "src", config=CFG) as producer, \
            Consumer("bt", "src", auto_ack=True) as consumer:
        for i in range(1, 4):
            producer.send(i, bytes([i]))
        first = consumer.get_next("g")
        assert (first.id, acked(consumer)) == (1, (0, 0))  # held while we work on it
        second = consumer.get_next("g")
        assert (second.id, acked(consumer)) == (2, (1, 1))
        consumer.get_next("g")
        with pytest.raises(AsapoEndOfStreamError):
            consumer.get_next("g", timeout_ms=20)  # asking again acknowledges message 3
        assert acked(consumer) == (3, 3)


def test_ring_keeps_flowing_without_any_explicit_acknowledge(shm_prefix):
    """ASAPO programs that never acknowledge: 5 laps of an 8-slot ring."""
    with Producer("bt", "src", config=CFG) as producer, \
            Consumer("bt", "src", auto_ack=True) as consumer:
        got = []
        for i in range(1, 41):
            producer.send(i, bytes([i % 256]))
            got.append(consumer.get_next("g").id)
        assert got == list(range(1, 41))


def test_without_auto_ack_the_same_program_fills_the_ring(shm_prefix):
    with Producer("bt", "src", config=CFG) as producer, Consumer("bt", "src") as consumer:
        with pytest.raises(AsapoRingFullError, match="auto_ack=True"):
            for i in range(1, 41):
                producer.send(i, b"x")
                consumer.get_next("g")


def test_batches_and_explicit_acks_mix_without_double_acknowledging(shm_prefix):
    with Producer("bt", "src", config=CFG) as producer, \
            Consumer("bt", "src", auto_ack=True) as consumer:
        for i in range(1, 7):
            producer.send(i, b"x")
        batch = consumer.get_next_batch("g", 3)
        assert batch.ids == [1, 2, 3] and acked(consumer) == (0, 0)
        single = consumer.get_next("g")  # acknowledges the held batch first
        assert single.id == 4 and acked(consumer) == (3, 3)
        consumer.acknowledge("g", single)  # early, explicitly: not acknowledged again later
        assert acked(consumer) == (4, 4)
        assert consumer.get_next_batch("g", 8).ids == [5, 6]
        assert acked(consumer) == (4, 4)
    with Consumer("bt", "src") as after:  # closing acknowledged the last batch
        assert acked(after) == (6, 6) and after.group_stats("g")["redelivered"] == 0


def test_expired_lease_is_logged_and_the_next_message_still_comes(shm_prefix, caplog):
    with Producer("bt", "src", config=CFG) as producer, \
            Consumer("bt", "src", auto_ack=True) as slow, Consumer("bt", "src") as other:
        slow.set_resend_nacs(True, delay_ms=10, attempts=3)
        producer.send(1, b"a")
        producer.send(2, b"b")
        assert slow.get_next("g").id == 1
        time.sleep(0.05)  # the lease of message 1 runs out while "working"
        taken = other.get_next("g", timeout_ms=1000)
        assert (taken.id, taken.attempts) == (1, 2)
        with caplog.at_level(logging.WARNING, logger="asapo_hpc.consumer"):
            assert slow.get_next("g").id == 2
        assert "redelivered to another member" in caplog.text
        other.acknowledge("g", taken)


def _work_on_first(out) -> None:
    consumer = Consumer("bt", "src", auto_ack=True)
    out.put(consumer.get_next("g", timeout_ms=5000).id)
    time.sleep(600)  # killed while "working" on it, before asking for the next


def test_killed_member_message_is_redelivered(shm_prefix, children):
    producer = Producer("bt", "src", config=CFG)
    producer.send(1, b"a")
    producer.send(2, b"b")
    out = CTX.Queue()
    proc = CTX.Process(target=_work_on_first, args=(out,), daemon=True)
    children.append(proc)
    proc.start()
    assert out.get(timeout=30) == 1
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    survivor = Consumer("bt", "src", auto_ack=True)
    got = sorted((m.id, m.attempts) for m in (survivor.get_next("g", timeout_ms=5000),
                                              survivor.get_next("g", timeout_ms=5000)))
    assert got == [(1, 2), (2, 1)]
    survivor.close()
    producer.close()
