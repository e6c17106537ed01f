"""Shared memory is untrusted input (DESIGN.md decision 5): whatever bytes are flipped in a
segment file, attaching and using it either works or raises an AsapoError, never crashes.

Each example runs in a forked child, so a segfault or an abort is seen as the child's exit
status; hypothesis then prints the falsifying flips (which fully determine the run)."""

from __future__ import annotations

import multiprocessing as mp
import os
import traceback
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from asapo_hpc._core import Segment
from asapo_hpc.client import Consumer, Producer
from asapo_hpc.config import RingConfig, segment_name
from asapo_hpc.errors import AsapoError

CTX = mp.get_context("fork")
CFG = RingConfig(slot_count=8, slot_size=128, groups=("g",), max_groups=2, max_members=4,
                 max_streams=2, lease_s=0.05, full_timeout_s=0.05)
HEADER_END = 392  # struct seg_header (csrc/src/layout.h): checksummed part, then hot words
CHILD_LIMIT_S = 30  # every wait in the core is bounded: a child running longer is hung


def _layout() -> tuple[int, int]:
    """(file size, offset of the slot area) of a CFG segment."""
    name = segment_name("layout", "probe")
    seg = Segment.create(name, CFG)
    size = seg.size
    seg.close()
    assert Segment.unlink(name)
    return size, size - CFG.slot_count * CFG.slot_size


def _probe() -> None:
    """Child: attach and exercise the segment; exit 1 on any non-Asapo exception."""
    def attempt(fn):
        try:
            return fn()
        except AsapoError:
            return None

    try:
        consumer = attempt(lambda: Consumer("bt", "src", create=False, timeout_ms=20))
        producer = attempt(lambda: Producer("bt", "src", create=False, timeout_ms=20))
        if consumer is not None:
            for _ in range(3):
                msg = attempt(lambda: consumer.get_next("g", timeout_ms=20))
                if msg is not None:
                    attempt(lambda m=msg: (m.data.tobytes(), m.meta, m.name, m.stream,
                                           m.record(), m.dataset))
                    attempt(lambda m=msg: consumer.acknowledge("g", m))
            batch = attempt(lambda: consumer.get_next_batch("g", 4, timeout_ms=20))
            if batch is not None:
                attempt(lambda: [m.data.tobytes() for m in batch])
                attempt(lambda: consumer.acknowledge_batch("g", batch))
            for read in (consumer.get_last, lambda: consumer.get_by_id(1),
                         lambda: consumer.get_by_id(2, stream="s")):
                copy = attempt(read)
                if copy is not None:
                    attempt(lambda c=copy: (c.data.tobytes(), c.meta, c.name, c.stream))
            attempt(lambda: consumer.group_stats("g"))
        if producer is not None:
            attempt(lambda: producer.send(10, b"after the damage", {"k": 1}, name="n"))
            attempt(lambda: producer.send(1, b"new stream", stream="fresh"))
            attempt(lambda: producer.reserve(64).abort())
            attempt(producer.stats)
        for obj in (consumer, producer):
            if obj is not None:
                attempt(obj.close)
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


def _fresh_segment(path: Path) -> None:
    """A segment with a few messages, a claim and an acknowledgement in it."""
    with Producer("bt", "src", config=CFG) as producer, Consumer("bt", "src") as consumer:
        producer.send(1, b"first", {"a": 1}, name="one")
        producer.send(2, bytes(range(200)), {"b": [1, 2]}, stream="s", dataset=(1, 2))
        producer.send(3, b"third", '{"c": "x"}', name="three")
        consumer.acknowledge("g", consumer.get_next("g", timeout_ms=100))
        consumer.get_next("g", timeout_ms=100)  # left claimed
    assert path.exists()


@pytest.fixture(scope="module")
def layout():
    prefix = f"ahtest_{os.getpid()}_layout"
    old = os.environ.get("ASAPO_HPC_SHM_PREFIX")
    os.environ["ASAPO_HPC_SHM_PREFIX"] = prefix
    try:
        return _layout()
    finally:
        if old is None:
            del os.environ["ASAPO_HPC_SHM_PREFIX"]
        else:
            os.environ["ASAPO_HPC_SHM_PREFIX"] = old


def flips(size: int, slots: int):
    """(offset, xor mask) pairs: a third in the header, a third in the tables, a third
    anywhere in the file."""
    offset = st.one_of(st.integers(0, HEADER_END - 1), st.integers(HEADER_END, slots - 1),
                       st.integers(0, size - 1))
    return st.lists(st.tuples(offset, st.integers(1, 255)), min_size=1, max_size=6)


@pytest.mark.slow
@settings(max_examples=100, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_flipped_bytes_never_crash(shm_prefix, layout, data):
    size, slots = layout
    damage = data.draw(flips(size, slots), label="flips (offset, xor)")
    path = Path("/dev/shm") / segment_name("bt", "src")
    _fresh_segment(path)
    try:
        assert path.stat().st_size == size
        with open(path, "r+b") as f:
            for offset, mask in damage:
                f.seek(offset)
                byte = f.read(1)[0]
                f.seek(offset)
                f.write(bytes([byte ^ mask]))
        note(f"segment size {size}, slot area at {slots}")
        child = CTX.Process(target=_probe, daemon=True)
        child.start()
        child.join(CHILD_LIMIT_S)
        if child.is_alive():
            child.kill()
            child.join()
            pytest.fail(f"probe hung for {CHILD_LIMIT_S} s after flips {damage}")
        assert child.exitcode == 0, (
            f"probe died with exit status {child.exitcode} (negative: killed by that signal) "
            f"after flips {damage}")
    finally:
        Segment.unlink(path.name)
