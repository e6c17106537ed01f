"""Zero-copy frame handoff between two processes: how many frame slots per second change
hands when nobody copies the frame (the detector writes in place, the consumer reads in
place). The ring's reserve -> commit / get_next -> acknowledge against the same handoff done
with multiprocessing.shared_memory and two index queues (slot numbers go out through one
queue and come back through the other).

    python bench/handoff.py [--count N] [--repeats R] [--json PATH]

The producer writes one uint16 into each 18 MiB frame slot, the consumer reads it back:
what is measured is the handoff, not memory bandwidth. Rate measured in the consumer,
median of R runs, ratio to the index-queue peer. Writes bench/results/handoff.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import time
from importlib import import_module
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np

FRAME_BYTES = 12 * 512 * 1536 * 2
SLOTS = 8
GROUP = "handoff"


def _ring_consume(source: str, count: int, out: mp.Queue) -> None:
    from asapo_hpc.client import Consumer

    consumer = Consumer("handoff", source, create=False, timeout_ms=30_000, auto_ack=True)
    first = None
    bad = 0
    for i in range(1, count + 1):
        msg = consumer.get_next(GROUP)
        first = first or time.perf_counter()
        bad += msg.buffer[0] != i % 256
    out.put(((count - 1) / (time.perf_counter() - first), bad))
    consumer.close()


def run_ring(count: int) -> tuple[float, int]:
    from asapo_hpc._core import Segment
    from asapo_hpc.client import Producer
    from asapo_hpc.config import RingConfig, segment_name

    source = f"h{os.getpid()}"
    producer = Producer("handoff", source, config=RingConfig(
        slot_count=SLOTS, slot_size=FRAME_BYTES + 4096, groups=(GROUP,), full_timeout_s=30))
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=_ring_consume, args=(source, count, out))
    child.start()
    try:
        for i in range(1, count + 1):
            res = producer.reserve(FRAME_BYTES, meta_capacity=0)
            res.data[0] = i % 256  # the detector would DMA the frame here
            res.commit(i)
        return out.get(timeout=60)
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
        producer.close()
        Segment.unlink(segment_name("handoff", source))


def _shm_consume(name: str, count: int, full: mp.Queue, free: mp.Queue, out: mp.Queue) -> None:
    shm = shared_memory.SharedMemory(name=name)
    frames = np.ndarray((SLOTS, FRAME_BYTES), np.uint8, shm.buf)
    first, bad = None, 0
    for i in range(1, count + 1):
        slot = full.get()
        first = first or time.perf_counter()
        bad += frames[slot, 0] != i % 256
        free.put(slot)
    out.put(((count - 1) / (time.perf_counter() - first), bad))
    del frames
    shm.close()


def run_shm_queues(count: int) -> tuple[float, int]:
    ctx = mp.get_context("spawn")
    shm = shared_memory.SharedMemory(create=True, size=SLOTS * FRAME_BYTES)
    frames = np.ndarray((SLOTS, FRAME_BYTES), np.uint8, shm.buf)
    full, free, out = ctx.Queue(), ctx.Queue(), ctx.Queue()
    for slot in range(SLOTS):
        free.put(slot)
    child = ctx.Process(target=_shm_consume, args=(shm.name, count, full, free, out))
    child.start()
    try:
        for i in range(1, count + 1):
            slot = free.get()
            frames[slot, 0] = i % 256
            full.put(slot)
        return out.get(timeout=60)
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
        del frames
        shm.close()
        shm.unlink()


PEERS = {"asapo-ring reserve/commit": run_ring, "shm + index queues": run_shm_queues}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "handoff.json"))
    args = parser.parse_args()
    rates: dict[str, list[float]] = {name: [] for name in PEERS}
    for r in range(args.repeats):
        for name, run in PEERS.items():
            rate, bad = run(args.count)
            if bad:
                print(f"  {name}: {bad} frames had the wrong marker")
            rates[name].append(rate)
            print(f"  [{r + 1}/{args.repeats}] {name:<28} {rate:>12,.0f} frames/s", flush=True)
    ref = statistics.median(rates["shm + index queues"])
    print(f"\nhandoff of {FRAME_BYTES / 2**20:.0f} MiB frame slots, {SLOTS} slots, "
          f"{args.count} frames, median of {args.repeats}")
    print(f"  {'transport':<28} {'frames/s':>12} {'x shm+queues':>13}")
    for name, values in rates.items():
        med = statistics.median(values)
        print(f"  {name:<28} {med:>12,.0f} {med / ref:>13.2f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"count": args.count, "rates": rates}, indent=1))
    # bench/plot.py: module "plot" when run as python bench/handoff.py (bench/ is sys.path[0])
    import_module(f"{__package__}.plot" if __package__ else "plot").draw("handoff", args.json)


if __name__ == "__main__":
    main()
