"""The C fast path of send(id, data), get_next(group) and acknowledge(group, msg)
(asapo_hpc/_core/_fastpath.c): it runs the common calls, hands every other call to the Python
methods, lets other threads run while it waits, and a closed producer or consumer raises
instead of touching a freed handle."""

from __future__ import annotations

import gc
import threading
import time
import weakref

import numpy as np
import pytest

from asapo_hpc._core import Acknowledge, GetNext, MessageCore, SegmentSlice, Send
from asapo_hpc.client import Consumer, Producer
from asapo_hpc.config import RingConfig
from asapo_hpc.errors import (
    AsapoEndOfStreamError,
    AsapoRingFullError,
    AsapoStreamFinishedError,
    AsapoWrongInputError,
)

CFG = RingConfig(slot_count=16, slot_size=256, groups=("g",), lease_s=60.0,
                 full_timeout_s=5.0)


def test_common_calls_run_in_c_and_deliver_exactly(shm_prefix):
    with Producer("bt", "src", config=CFG) as producer, \
            Consumer("bt", "src", timeout_ms=200) as consumer:
        assert type(producer.send) is Send
        assert type(consumer.get_next) is GetNext
        assert type(consumer.acknowledge) is Acknowledge
        sent = {}
        for i in range(1, 41):  # the fast path and the Python method, interleaved
            data = bytes([i]) * i
            if i % 3:
                producer.send(i, data if i % 2 else np.frombuffer(data, np.uint8))
            else:
                producer.send(i, bytearray(data), {"i": i})
            sent[i] = data
            msg = consumer.get_next("g") if i % 4 else consumer.get_next("g", stream=None)
            assert (msg.id, bytes(msg.buffer), msg.attempts) == (i, data, 1)
            assert msg.meta == ({"i": i} if i % 3 == 0 else {})
            consumer.acknowledge("g", msg) if i % 5 else consumer.acknowledge("g", msg.id)
        stats = consumer.group_stats("g")
        assert (stats["delivered"], stats["acked"], stats["redelivered"]) == (40, 40, 0)
        with pytest.raises(AsapoEndOfStreamError):
            consumer.get_next("g")


@pytest.mark.parametrize("prefetch", [1, 8])
def test_prefetch_and_auto_ack_through_c(shm_prefix, prefetch):
    cfg = RingConfig(slot_count=16, slot_size=256, groups=("g", "h"), full_timeout_s=5.0)
    with Producer("bt", "src", config=cfg) as producer, \
            Consumer("bt", "src", timeout_ms=200, prefetch=prefetch) as consumer, \
            Consumer("bt", "src", timeout_ms=200, auto_ack=True) as auto:
        got, auto_got = [], []
        for start in range(1, 61, 10):
            for i in range(start, start + 10):
                producer.send(i, i.to_bytes(4, "little"))
            for _ in range(10):
                msg = consumer.get_next("g")
                got.append(int.from_bytes(msg.buffer, "little"))
                consumer.acknowledge("g", msg)
                auto_got.append(auto.get_next("h").id)
        assert got == list(range(1, 61)) and auto_got == list(range(1, 61))
        assert consumer.group_stats("g")["acked"] == 60
        assert auto.group_stats("h")["acked"] == 59  # the last is acknowledged on close


def test_the_python_method_takes_what_c_leaves(shm_prefix):
    """Bad ids and buffers get the Python method's errors; large messages its parallel copy;
    a finish marker its AsapoStreamFinishedError."""
    big = RingConfig(slot_count=4, slot_size=8 << 20, groups=("g",), full_timeout_s=5.0)
    with Producer("bt", "src", config=big, copy_threads=2) as producer, \
            Consumer("bt", "src", timeout_ms=200, prefetch=4) as consumer:
        for bad in (0, -1, True, 1.0, "1"):
            with pytest.raises(AsapoWrongInputError, match="message id must be an integer"):
                producer.send(bad, b"x")
        with pytest.raises(AsapoWrongInputError, match="not C-contiguous"):
            producer.send(1, np.zeros((4, 4), np.uint16)[:, ::2])
        with pytest.raises(AsapoWrongInputError, match="does not expose a contiguous buffer"):
            producer.send(1, "text")
        frame = np.arange(3 << 20, dtype=np.uint16)  # 6 MiB: copied by two threads
        producer.send(np.int64(1), frame)
        producer.send_stream_finished_flag("default", 1)
        msg = consumer.get_next("g")
        assert msg.id == 1 and np.array_equal(msg.array(np.uint16), frame)
        consumer.acknowledge("g", msg)
        with pytest.raises(AsapoStreamFinishedError):
            consumer.get_next("g")


def test_a_send_waiting_for_room_lets_other_threads_run(shm_prefix):
    """The ring is full: send waits without the GIL, so a consumer thread in the same
    process can make room (holding the GIL, the send would time out)."""
    cfg = RingConfig(slot_count=4, slot_size=256, groups=("g",), full_timeout_s=5.0)
    with Producer("bt", "src", config=cfg) as producer, \
            Consumer("bt", "src", timeout_ms=2000) as consumer:
        for i in range(1, 5):
            producer.send(i, b"x" * 100)

        def drain():
            time.sleep(0.3)
            for _ in range(5):
                consumer.acknowledge("g", consumer.get_next("g"))

        thread = threading.Thread(target=drain)
        thread.start()
        producer.send(5, b"y" * 100)  # waits for the thread
        thread.join()
        producer.timeout_ns = 0
        for i in range(6, 10):
            producer.send(i, b"z")
        with pytest.raises(AsapoRingFullError):
            producer.send(10, b"z")


def test_a_get_next_waiting_for_a_message_lets_other_threads_run(shm_prefix):
    with Producer("bt", "src", config=CFG) as producer, \
            Consumer("bt", "src", timeout_ms=5000) as consumer:
        producer.send(1, b"first")
        consumer.acknowledge("g", consumer.get_next("g"))
        timer = threading.Timer(0.3, producer.send, (2, b"second"))
        timer.start()
        started = time.monotonic()
        msg = consumer.get_next("g")
        assert bytes(msg.buffer) == b"second" and time.monotonic() - started < 4
        timer.join()


def test_closed_producer_and_consumer_raise(shm_prefix):
    producer = Producer("bt", "src", config=CFG)
    consumer = Consumer("bt", "src", timeout_ms=100, prefetch=4)
    producer.send(1, b"kept")
    msg = consumer.get_next("g")
    producer.close()
    consumer.close()
    gc.collect()  # no handle object keeps the freed ring alive
    assert bytes(msg.buffer) == b"kept"  # a view keeps its mapping
    for call in (lambda: producer.send(2, b"x"), lambda: producer.send(2, b"x", {"a": 1}),
                 lambda: producer.reserve(10), lambda: producer.next_id(),
                 lambda: consumer.get_next("g"), lambda: consumer.get_next_batch("g", 4),
                 lambda: consumer.acknowledge("g", msg), lambda: consumer.get_last(),
                 lambda: consumer.neg_acknowledge("g", msg)):
        with pytest.raises(AsapoWrongInputError, match="was closed"):
            call()


def test_subclass_overrides_are_kept(shm_prefix):
    class CountingProducer(Producer):
        sent = 0

        def send(self, id, data, meta=None, **kw):
            CountingProducer.sent += 1
            return super().send(id, data, meta, **kw)

    with CountingProducer("bt", "src", config=CFG) as producer:
        producer.send(1, b"x")
        assert CountingProducer.sent == 1 and not isinstance(producer.send, Send)


def test_producer_and_consumer_are_collected(shm_prefix):
    """The fast-path callables refer back to their owner's methods: a reference cycle the
    garbage collector must be able to break."""
    producer = Producer("bt", "src", config=CFG)
    consumer = Consumer("bt", "src")
    refs = [weakref.ref(producer), weakref.ref(consumer)]
    producer.close()
    consumer.close()
    del producer, consumer
    gc.collect()
    assert [r() for r in refs] == [None, None]


def test_callables_made_without_init_raise():
    for cls in (Send, GetNext, Acknowledge):
        with pytest.raises(TypeError, match="before __init__"):
            cls.__new__(cls)("g", 1)


def test_message_fields_are_made_from_the_descriptor_on_demand(shm_prefix):
    with Producer("bt", "src", config=CFG) as producer, \
            Consumer("bt", "src", timeout_ms=200, prefetch=4) as consumer:
        producer.send(7, b"abc", {"k": 1}, dataset=(2, 3), name="f7")
        msg = consumer.get_next("g")
        fields = msg._fields  # made from the C descriptor now, then kept
        assert (fields[1], fields[3], fields[10], fields[11], fields[12]) == (7, 3, 2, 3, 1)
        assert msg._fields is fields and len(fields) == 14
        assert (bytes(msg.data), msg.meta, msg.name, msg.dataset) == (b"abc", {"k": 1}, "f7",
                                                                      (2, 3))
        copy = msg.copy()
        assert copy._fields == fields and bytes(copy.data) == b"abc"
        consumer.acknowledge("g", msg)
        assert consumer.group_stats("g")["acked"] == 1


def test_message_core_checks_what_it_is_given():
    core = MessageCore()
    core._fields = range(14)
    assert core._fields == tuple(range(14))
    with pytest.raises(ValueError, match="14 fields"):
        core._fields = (1, 2)
    with pytest.raises(OverflowError):
        core._fields = (0,) * 6 + (2**32,) + (0,) * 7
    with pytest.raises(OverflowError):
        core._fields = (-1,) + (0,) * 13
    with pytest.raises(AttributeError, match="cannot be deleted"):
        del core._fields
    assert core._fields == tuple(range(14))  # a failed set leaves it as it was
    with pytest.raises(TypeError, match="MessageCore instances only"):
        SegmentSlice(b"abc").__get__(object(), object)


def test_callables_take_a_context_buffer_only():
    for bad in (b"", bytearray(3), 12345):
        with pytest.raises(TypeError):
            GetNext(ctx=bad, all_streams={}, held_markers={}, pending_finish={}, queued={},
                    acks={}, held={}, held_batch={}, msg_class={}, message_type=MessageCore,
                    owner=None, slow=print, prefetch=1, disk_group=0, auto_ack=False)


def test_copy_module_and_pickle_point_to_msg_copy(shm_prefix):
    import copy
    import pickle

    with Producer("bt", "src", config=CFG) as producer, \
            Consumer("bt", "src", timeout_ms=200) as consumer:
        producer.send(1, b"abc")
        msg = consumer.get_next("g")
        for attempt in (copy.copy, copy.deepcopy, pickle.dumps):
            with pytest.raises(TypeError, match=r"msg.copy\(\)"):
                attempt(msg)
        assert bytes(msg.copy().data) == b"abc"


def test_prefetch_and_auto_ack_are_fixed_at_construction(shm_prefix):
    with Producer("bt", "src", config=CFG), \
            Consumer("bt", "src", prefetch=4, auto_ack=True) as consumer:
        assert (consumer.prefetch, consumer.auto_ack) == (4, True)
        for name, value in (("prefetch", 1), ("auto_ack", False)):
            with pytest.raises(AttributeError):
                setattr(consumer, name, value)
