"""`asapo-hpc selfcheck`: move messages and detector-sized frames between two processes
through the node-local ring, verify every byte pattern, and print the rates."""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import numpy as np

from asapo_hpc._core import Segment
from asapo_hpc.client import Consumer, Producer
from asapo_hpc.config import RingConfig, segment_name

GROUP = "selfcheck"
FRAME_SHAPE = (12, 512, 1536)  # one Lambda 9M frame: 12 modules of 512 x 1536 uint16


def _consume(beamtime: str, source: str, count: int, frames: bool, results: mp.Queue) -> None:
    """Consumer process: take every message, check its pattern, report (count, bad, s)."""
    consumer = Consumer(beamtime, source, create=False, timeout_ms=30_000)
    bad, got, start = 0, 0, None
    while got < count:
        batch = consumer.get_next_batch(GROUP, 64)
        start = start or time.perf_counter()
        for msg in batch:
            if frames:  # frame i holds i in its first and last pixel of every module
                pixels = msg.array(np.uint16, FRAME_SHAPE)
                bad += int(np.any(pixels[:, 0, 0] != msg.id % 65536) or
                           np.any(pixels[:, -1, -1] != msg.id % 65536))
            else:
                bad += int(msg.data[0] != msg.id % 256)
        consumer.acknowledge_batch(GROUP, batch)
        got += len(batch)
    results.put((got, bad, time.perf_counter() - start))
    consumer.close()


def _produce_small(producer: Producer, count: int) -> None:
    payload = bytearray(1024)
    for i in range(1, count + 1):
        payload[0] = i % 256
        producer.send(i, payload)


def _produce_frames(producer: Producer, count: int) -> None:
    nbytes = int(np.prod(FRAME_SHAPE)) * 2
    for i in range(1, count + 1):
        res = producer.reserve(nbytes, meta_capacity=0)
        frame = res.array(np.uint16, FRAME_SHAPE)
        frame[:, 0, 0] = frame[:, -1, -1] = i % 65536  # a detector would DMA here
        res.commit(i)


def _run(label: str, config: RingConfig, count: int, frames: bool, nbytes: int) -> bool:
    beamtime, source = "selfcheck", f"check{os.getpid()}{'f' if frames else 's'}"
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    producer = Producer(beamtime, source, config=config, timeout_ms=30_000)
    child = ctx.Process(target=_consume, args=(beamtime, source, count, frames, results))
    child.start()
    try:
        start = time.perf_counter()
        (_produce_frames if frames else _produce_small)(producer, count)
        got, bad, consumer_s = results.get(timeout=120)
        elapsed = time.perf_counter() - start
    finally:
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
        producer.close()
        Segment.unlink(segment_name(beamtime, source))
    rate = got / elapsed
    print(f"  {label:<34} {got:>8} msgs  {rate:>12,.0f} msgs/s  {rate * nbytes / 1e9:7.2f} GB/s"
          f"  {'OK' if bad == 0 and got == count else f'{bad} BAD'}")
    return bad == 0 and got == count


def run(small: int = 100_000, frames: int = 200) -> int:
    """Both checks; returns a process exit code (0 when every message arrived intact)."""
    print("asapo-hpc selfcheck: producer -> ring (shared memory) -> consumer process")
    frame_bytes = int(np.prod(FRAME_SHAPE)) * 2
    ok = _run("1 KiB messages, send + batch get", RingConfig(
        slot_count=4096, slot_size=1088, groups=(GROUP,)), small, False, 1024)
    ok &= _run("18 MiB frames, reserve/commit (0 copy)", RingConfig(
        slot_count=8, slot_size=frame_bytes + 64, groups=(GROUP,)), frames, True, frame_bytes)
    print("all messages arrived intact" if ok else "SELFCHECK FAILED")
    return 0 if ok else 1
