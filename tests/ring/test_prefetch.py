"""Consumer(prefetch=N): get_next claims up to N messages in one C call and hands them out one
by one; acknowledgements are gathered and sent together. Same delivery guarantees as
prefetch=1: exactly once per group while members live, at-least-once when they die."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import time

import pytest

from asapo_hpc.client import Consumer, Producer
from asapo_hpc.config import RingConfig
from asapo_hpc.errors import (
    AsapoEndOfStreamError,
    AsapoStreamFinishedError,
    AsapoWrongInputError,
)

CFG = RingConfig(slot_count=64, slot_size=256, groups=("g",), lease_s=60.0,
                 full_timeout_s=5.0)
CTX = mp.get_context("fork")


def stats(consumer: Consumer) -> dict[str, int]:
    return consumer.group_stats("g")


def payload(i: int) -> bytes:
    return bytes([i % 256]) * (1 + i % 40)


def test_messages_come_in_order_once_and_byte_identical(shm_prefix):
    with Producer("bt", "src", config=CFG) as producer, \
            Consumer("bt", "src", prefetch=8) as consumer:
        for i in range(1, 21):
            producer.send(i, payload(i), {"i": i})
        got = []
        for _ in range(20):
            msg = consumer.get_next("g")
            got.append((msg.id, bytes(msg.buffer), msg.meta["i"], msg.attempts))
            consumer.acknowledge("g", msg)
        assert got == [(i, payload(i), i, 1) for i in range(1, 21)]
        # the last message of each claimed run was acknowledged with nothing left to hand
        # out: every acknowledgement reached the ring, the slots are free
        assert (stats(consumer)["acked"], stats(consumer)["floor"]) == (20, 20)
        with pytest.raises(AsapoEndOfStreamError):
            consumer.get_next("g", timeout_ms=20)


def test_acknowledgements_are_sent_together_while_claimed_messages_remain(shm_prefix):
    with Producer("bt", "src", config=CFG) as producer, \
            Consumer("bt", "src", prefetch=4) as consumer:
        for i in range(1, 9):
            producer.send(i, b"x")
        first = consumer.get_next("g")  # claims 1..4
        assert stats(consumer)["delivered"] == 4
        consumer.acknowledge("g", first)
        assert stats(consumer)["acked"] == 0  # gathered: 2..4 are still to be handed out
        for _ in range(3):
            consumer.acknowledge("g", consumer.get_next("g"))
        assert stats(consumer)["acked"] == 4  # the run is used up: sent in one call


def test_two_members_share_a_group_exactly_once(shm_prefix):
    with Producer("bt", "src", config=CFG) as producer, \
            Consumer("bt", "src", prefetch=8) as a, Consumer("bt", "src", prefetch=3) as b:
        for i in range(1, 31):
            producer.send(i, payload(i))
        seen: dict[int, bytes] = {}
        members = [a, b]
        while members:  # turn by turn; a member with nothing left claimed drops out
            member = members.pop(0)
            try:
                msg = member.get_next("g", timeout_ms=50)
            except AsapoEndOfStreamError:
                continue
            assert msg.id not in seen
            seen[msg.id] = bytes(msg.buffer)
            member.acknowledge("g", msg)
            members.append(member)
        assert seen == {i: payload(i) for i in range(1, 31)}
        assert stats(a)["floor"] == 30


def test_close_gives_unused_messages_back_without_counting_an_attempt(shm_prefix):
    with Producer("bt", "src", config=CFG) as producer:
        for i in range(1, 7):
            producer.send(i, b"x")
        early = Consumer("bt", "src", prefetch=4)
        held = early.get_next("g")  # claims 1..4, hands out 1 (never acknowledged)
        assert held.id == 1
        early.close()
        with Consumer("bt", "src") as late:
            got = sorted((m.id, m.attempts) for m in
                         (late.get_next("g", timeout_ms=1000) for _ in range(6)))
        # 1 was handed out and never acknowledged: a second attempt. 2..4 were only
        # prefetched: first attempts still.
        assert got == [(1, 2), (2, 1), (3, 1), (4, 1), (5, 1), (6, 1)]


def test_auto_ack_with_prefetch(shm_prefix):
    with Producer("bt", "src", config=CFG) as producer:
        consumer = Consumer("bt", "src", prefetch=5, auto_ack=True)
        for i in range(1, 13):
            producer.send(i, b"x")
        assert [consumer.get_next("g").id for _ in range(12)] == list(range(1, 13))
        with pytest.raises(AsapoEndOfStreamError):
            consumer.get_next("g", timeout_ms=20)  # asking again acknowledges message 12
        assert (stats(consumer)["acked"], stats(consumer)["floor"]) == (12, 12)
        consumer.close()


def test_batch_call_hands_out_prefetched_messages_first(shm_prefix):
    with Producer("bt", "src", config=CFG) as producer, \
            Consumer("bt", "src", prefetch=4) as consumer:
        for i in range(1, 11):
            producer.send(i, payload(i))
        assert consumer.get_next("g").id == 1  # 2..4 wait in the prefetch queue
        batch = consumer.get_next_batch("g", 8)
        assert batch.ids == [2, 3, 4]
        assert [bytes(b) for b in batch.buffers()] == [payload(i) for i in (2, 3, 4)]
        assert consumer.get_next_batch("g", 8).ids == list(range(5, 11))


@pytest.mark.parametrize("stream", [None, "scan"])
def test_end_of_stream_is_told_after_the_last_message(shm_prefix, stream):
    with Producer("bt", "src", config=CFG) as producer, \
            Consumer("bt", "src", prefetch=16) as consumer:
        for i in range(1, 4):
            producer.send(i, b"x", stream="scan")
        producer.send_stream_finished_flag("scan", last_id=3, next_stream="scan2")
        for i in range(1, 4):
            msg = consumer.get_next("g", stream=stream)
            assert msg.id == i
            consumer.acknowledge("g", msg)
        with pytest.raises(AsapoStreamFinishedError) as info:
            consumer.get_next("g", stream=stream)
        assert info.value.next_stream == "scan2"


def test_late_acknowledgement_is_logged(shm_prefix, caplog):
    with Producer("bt", "src", config=CFG) as producer, \
            Consumer("bt", "src", prefetch=4) as slow, Consumer("bt", "src") as other:
        slow.set_resend_nacs(True, delay_ms=10, attempts=3)
        producer.send(1, b"a")
        producer.send(2, b"b")
        first = slow.get_next("g")  # claims 1 and 2
        time.sleep(0.05)  # both leases run out
        taken = [other.get_next("g", timeout_ms=1000) for _ in range(2)]
        assert sorted((m.id, m.attempts) for m in taken) == [(1, 2), (2, 2)]
        with caplog.at_level(logging.WARNING, logger="asapo_hpc.consumer"):
            slow.acknowledge("g", first)
            slow.acknowledge("g", slow.get_next("g"))  # sends both: neither is slow's now
        assert "2 of 2 acknowledgements came too late" in caplog.text
        for msg in taken:
            other.acknowledge("g", msg)


@pytest.mark.parametrize("bad", [0, -1, 1.5, 10_000])
def test_bad_prefetch_is_refused(shm_prefix, bad):
    with Producer("bt", "src", config=CFG):
        with pytest.raises(AsapoWrongInputError, match="prefetch must be an int"):
            Consumer("bt", "src", prefetch=bad)


def _take_one_and_hang(out) -> None:
    consumer = Consumer("bt", "src", prefetch=4)
    out.put(consumer.get_next("g", timeout_ms=5000).id)
    time.sleep(600)  # killed holding 1 (handed out) and 2..4 (prefetched)


def test_killed_member_prefetched_messages_are_redelivered(shm_prefix, children):
    producer = Producer("bt", "src", config=CFG)
    for i in range(1, 7):
        producer.send(i, b"x")
    out = CTX.Queue()
    proc = CTX.Process(target=_take_one_and_hang, args=(out,), daemon=True)
    children.append(proc)
    proc.start()
    assert out.get(timeout=30) == 1
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    with Consumer("bt", "src", prefetch=4) as survivor:
        got = []
        for _ in range(6):
            msg = survivor.get_next("g", timeout_ms=5000)
            got.append((msg.id, msg.attempts))
            survivor.acknowledge("g", msg)
        # everything the dead member had claimed comes again, as a second attempt
        assert sorted(got) == [(1, 2), (2, 2), (3, 2), (4, 2), (5, 1), (6, 1)]
        assert stats(survivor)["floor"] == 6
    producer.close()
