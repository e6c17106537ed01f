"""Exactly once per group under load: several producer processes and several consumer
processes in two groups (one following every stream, one following a single stream) for a
bounded time; every consumer reports the (producer, id) pairs it got."""

from __future__ import annotations

import multiprocessing as mp
import time

import numpy as np
import pytest

from asapo_hpc.client import Consumer, Producer
from asapo_hpc.config import RingConfig
from asapo_hpc.errors import AsapoEndOfStreamError

CTX = mp.get_context("fork")
CFG = RingConfig(slot_count=64, slot_size=256, groups=("all",), lease_s=120.0,
                 full_timeout_s=60.0)
N_PRODUCERS = 3
MAX_PER_PRODUCER = 50_000
RUN_S = 2.5
WAIT = 90


def payload(k: int, i: int) -> np.ndarray:
    return np.array([k, i, k * 1_000_003 + i], dtype=np.uint64)


def _produce(k: int, start_at: float, out) -> None:
    """Producer k publishes ids 1.. in stream p<k> until RUN_S is over: with send (k=0),
    reserve/commit (k=1) or send_batch in blocks of 16 (k=2)."""
    producer = Producer("bt", "src")
    stream = f"p{k}"
    while time.time() < start_at:
        time.sleep(0.001)
    n = 0
    while n < MAX_PER_PRODUCER and time.time() < start_at + RUN_S:
        if k == 0:
            n += 1
            producer.send(n, payload(k, n), stream=stream)
        elif k == 1:
            n += 1
            with producer.reserve(24, meta_capacity=0) as res:
                res.array(np.uint64, (3,))[:] = payload(k, n)
                res.commit(n, stream=stream)
        else:
            rows = np.stack([payload(k, n + j) for j in range(1, 17)])
            producer.send_batch(n + 1, rows, stream=stream)
            n += 16
    producer.close()
    out.put(("produced", k, n))


def _consume(group: str, stream: str | None, batch: bool, ready, stop, out) -> None:
    consumer = Consumer("bt", "src")
    try:
        consumer.get_next(group, stream=stream, timeout_ms=1)  # join before producers start
    except AsapoEndOfStreamError:
        pass
    ready.put(1)
    got, bad = [], []
    while True:
        try:
            msgs = (consumer.get_next_batch(group, 8, stream=stream, timeout_ms=100) if batch
                    else [consumer.get_next(group, stream=stream, timeout_ms=100)])
        except AsapoEndOfStreamError:
            if stop.is_set():
                break
            continue
        for msg in msgs:
            k, i, check = msg.array(np.uint64).tolist()
            if (msg.stream, msg.id, check, msg.attempts) != (f"p{k}", i, k * 1_000_003 + i, 1):
                bad.append((msg.stream, msg.id, k, i, check, msg.attempts))
            got.append((k, i))
        if batch:
            assert consumer.acknowledge_batch(group, msgs) == len(msgs)
        else:
            consumer.acknowledge(group, msgs[0])
    consumer.close()
    out.put(("consumed", group, got, bad))


@pytest.mark.slow
def test_exactly_once_per_group(shm_prefix, children):
    Producer("bt", "src", config=CFG).close()  # the segment, with group "all" declared
    out, ready, stop = CTX.Queue(), CTX.Queue(), CTX.Event()
    consumers = [("all", None, False), ("all", None, True), ("all", None, False),
                 ("one", "p0", False), ("one", "p0", True)]
    for group, stream, batch in consumers:
        proc = CTX.Process(target=_consume, args=(group, stream, batch, ready, stop, out),
                           daemon=True)
        children.append(proc)
        proc.start()
    for _ in consumers:
        ready.get(timeout=WAIT)
    start_at = time.time() + 0.2
    producers = []
    for k in range(N_PRODUCERS):
        proc = CTX.Process(target=_produce, args=(k, start_at, out), daemon=True)
        children.append(proc)
        producers.append(proc)
        proc.start()
    produced, consumed = {}, []
    while len(produced) < N_PRODUCERS:
        kind, k, n = out.get(timeout=WAIT)
        assert kind == "produced"
        produced[k] = n
    stop.set()
    while len(consumed) < len(consumers):
        kind, group, got, bad = out.get(timeout=WAIT)
        assert kind == "consumed"
        assert bad == [], f"{group}: wrong data, stream, id or attempts: {bad[:5]}"
        consumed.append((group, got))
    for proc in children:
        proc.join(WAIT)
        assert proc.exitcode == 0

    assert all(n > 0 for n in produced.values()), produced
    expected = {(k, i) for k, n in produced.items() for i in range(1, n + 1)}
    for group, want in (("all", expected), ("one", {p for p in expected if p[0] == 0})):
        pairs = [p for g, got in consumed if g == group for p in got]
        assert len(pairs) == len(set(pairs)), f"{group}: delivered twice"
        assert set(pairs) == want, (f"{group}: missing {sorted(want - set(pairs))[:5]}, "
                                    f"unexpected {sorted(set(pairs) - want)[:5]}")
        # per member, each producer's ids arrive in publish order
        for g, got in consumed:
            if g == group:
                for k in produced:
                    ids = [i for kk, i in got if kk == k]
                    assert ids == sorted(ids)
    with Consumer("bt", "src") as consumer:
        stats = consumer.group_stats("all")
        assert (stats["acked"], stats["redelivered"], stats["deadlettered"]) == (
            len(expected), 0, 0)
        assert stats["floor"] == stats["next"]
