"""The asapo_hpc ring as peers of bench/transport.py (imported by the harness if present).

Variants: one message per call (send / get_next / acknowledge), batch calls
(send_batch / get_next_batch / acknowledge_batch), and zero-copy reserve/commit on the
producer side. The consumer touches every message in place (a view into shared memory).
"""

from __future__ import annotations

import os
from typing import Any

from bench._transport_api import ConsumerReport, Peer, Start, Workload, now_ns, register_peer

GROUP = "bench"
BATCH = 64
PREFETCH = 32


def _config(workload: Workload) -> Any:
    from asapo_hpc.config import RingConfig

    slot = (workload.nbytes + 64 + 63) // 64 * 64  # data + room for an empty name/meta
    return RingConfig(slot_count=workload.depth, slot_size=slot, groups=(GROUP,),
                      full_timeout_s=60)


def ring_setup(workload: Workload, ctx: Any, tmpdir: str) -> tuple[Any, Any]:
    from asapo_hpc.client import Producer

    source = f"bench{os.getpid()}_{workload.name}"
    creator = Producer("transport", source, config=_config(workload))  # pages faulted in once
    channel = {"beamtime": "transport", "source": source}
    return channel, creator


def ring_teardown(creator: Any) -> None:
    from asapo_hpc._core import Segment

    name = creator.segment.name
    creator.close()
    Segment.unlink(name)


def _producer(channel: dict) -> Any:
    from asapo_hpc.client import Producer

    return Producer(channel["beamtime"], channel["source"], create=False, timeout_ms=60_000,
                    copy_threads=int(os.environ.get("ASAPO_BENCH_COPY_THREADS", "2")))


def _consumer(channel: dict, auto_ack: bool = False, prefetch: int = 1) -> Any:
    from asapo_hpc.client import Consumer

    return Consumer(channel["beamtime"], channel["source"], create=False, timeout_ms=60_000,
                    auto_ack=auto_ack, prefetch=prefetch)


def send_produce(channel: dict, workload: Workload, start: Start) -> None:
    producer = _producer(channel)
    source = workload.make_source()
    if not workload.is_frame:
        source = source.tobytes()  # small messages as bytes, as the zmq and pipe peers send
    send = producer.send
    start()
    for i in range(1, workload.count + 1):
        send(i, source)
    producer.close()


def batch_produce(channel: dict, workload: Workload, start: Start) -> None:
    import numpy as np

    producer = _producer(channel)
    block = np.tile(workload.make_source(), (BATCH, 1))
    start()
    sent = 0
    while sent < workload.count:
        n = min(BATCH, workload.count - sent)
        producer.send_batch(sent + 1, block[:n])
        sent += n
    producer.close()


def reserve_produce(channel: dict, workload: Workload, start: Start) -> None:
    producer = _producer(channel)
    source = workload.make_source().view("u1")
    start()
    for i in range(1, workload.count + 1):
        res = producer.reserve(source.nbytes, meta_capacity=0)
        res.data[:] = source  # stands for the detector's DMA into the reserved slot
        res.commit(i)
    producer.close()


def single_consume(channel: dict, workload: Workload, start: Start,
                   prefetch: int = 1) -> ConsumerReport:
    consumer = _consumer(channel, prefetch=prefetch)
    get_next, ack, touch = consumer.get_next, consumer.acknowledge, workload.touch
    as_frame = workload.is_frame  # frames as uint16 pixels; small messages as a memoryview
    start()
    msg = get_next(GROUP)
    first = now_ns()
    checksum = touch(msg.array("<u2") if as_frame else msg.buffer)
    ack(GROUP, msg)
    for _ in range(workload.count - 1):
        msg = get_next(GROUP)
        checksum += touch(msg.array("<u2") if as_frame else msg.buffer)
        ack(GROUP, msg)
    last = now_ns()
    consumer.close()
    return ConsumerReport(first, last, workload.count, checksum)


def prefetch_consume(channel: dict, workload: Workload, start: Start) -> ConsumerReport:
    """One message per get_next / acknowledge call; the consumer claims PREFETCH at a time
    and sends acknowledgements together (Consumer(prefetch=...))."""
    return single_consume(channel, workload, start, prefetch=PREFETCH)


def autoack_consume(channel: dict, workload: Workload, start: Start,
                    prefetch: int = 1) -> ConsumerReport:
    """get_next only: asking for the next message acknowledges the previous one."""
    consumer = _consumer(channel, auto_ack=True, prefetch=prefetch)
    get_next, touch = consumer.get_next, workload.touch
    as_frame = workload.is_frame
    start()
    msg = get_next(GROUP)
    first = now_ns()
    checksum = touch(msg.array("<u2") if as_frame else msg.buffer)
    for _ in range(workload.count - 1):
        msg = get_next(GROUP)
        checksum += touch(msg.array("<u2") if as_frame else msg.buffer)
    last = now_ns()
    consumer.close()
    return ConsumerReport(first, last, workload.count, checksum)


def batch_consume(channel: dict, workload: Workload, start: Start) -> ConsumerReport:
    consumer = _consumer(channel)
    get_batch, ack_batch, touch = consumer.get_next_batch, consumer.acknowledge_batch, \
        workload.touch
    view = "<u2" if workload.is_frame else "u1"
    start()
    received, checksum, first = 0, 0, None
    while received < workload.count:
        batch = get_batch(GROUP, BATCH)
        if first is None:
            first = now_ns()
        for data in (batch.arrays(view) if workload.is_frame else batch.buffers()):
            checksum += touch(data)
        ack_batch(GROUP, batch)
        received += len(batch)
    last = now_ns()
    consumer.close()
    return ConsumerReport(first, last, received, checksum)


register_peer(Peer("asapo-ring", "asapo_hpc ring: send / get_next / acknowledge, one per call",
                   ring_setup, send_produce, single_consume, ring_teardown))
register_peer(Peer("asapo-ring-autoack",
                   "asapo_hpc ring: send / get_next with auto_ack (one call per message)",
                   ring_setup, send_produce, autoack_consume, ring_teardown))
register_peer(Peer("asapo-ring-prefetch",
                   f"asapo_hpc ring: send / get_next / acknowledge, prefetch={PREFETCH}",
                   ring_setup, send_produce, prefetch_consume, ring_teardown))
register_peer(Peer("asapo-ring-batch",
                   f"asapo_hpc ring: send_batch / get_next_batch / acknowledge_batch ({BATCH})",
                   ring_setup, batch_produce, batch_consume, ring_teardown))
register_peer(Peer("asapo-ring-reserve",
                   "asapo_hpc ring: reserve, fill in place, commit / get_next / acknowledge",
                   ring_setup, reserve_produce, single_consume, ring_teardown))
