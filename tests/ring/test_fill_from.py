"""Reservation.fill_from: one streaming copy into a reserved slot, byte-identical after
commit, refused when the piece does not fit."""

from __future__ import annotations

import numpy as np
import pytest

from asapo_hpc.client import Consumer, Producer
from asapo_hpc.config import RingConfig
from asapo_hpc.errors import AsapoWrongInputError

CFG = RingConfig(slot_count=8, slot_size=1 << 20, groups=("g",), full_timeout_s=0.2)
T = 200  # ms: how long a get_next waits for a message that is there


@pytest.fixture
def ring(shm_prefix):
    producer = Producer("bt", "src", config=CFG)
    consumer = Consumer("bt", "src", config=CFG)
    yield producer, consumer
    producer.close()
    consumer.close()


def test_pieces_chained_are_byte_identical_after_commit(ring):
    producer, consumer = ring
    rng = np.random.default_rng(1)
    # odd sizes and offsets: the unaligned head, the 64-byte body and the tail all copy
    sizes = [1, 63, 64, 4097, 100_003, 3]
    pieces = [rng.integers(0, 256, n, dtype=np.uint8) for n in sizes]
    total = sum(sizes)
    with producer.reserve(total + 5) as res:
        offset = 0
        for piece in pieces:
            offset = res.fill_from(piece, offset)
        assert offset == total
        res.commit(1, nbytes=total)
    msg = consumer.get_next("g", timeout_ms=T)
    assert msg.data.tobytes() == np.concatenate(pieces).tobytes()
    consumer.acknowledge("g", msg)


def test_typed_array_and_bytes_fill_the_slot(ring):
    producer, consumer = ring
    frame = np.arange(256 * 300, dtype=np.uint16).reshape(256, 300)
    with producer.reserve(frame.nbytes + 4) as res:
        end = res.fill_from(frame)
        assert res.fill_from(b"tail", end) == frame.nbytes + 4
        res.commit(7, {"kind": "frame"})
    msg = consumer.get_next("g", timeout_ms=T)
    np.testing.assert_array_equal(msg.data[:frame.nbytes].view(np.uint16).reshape(256, 300),
                                  frame)
    assert msg.data.tobytes() == frame.tobytes() + b"tail"
    consumer.acknowledge("g", msg)


def test_a_piece_that_does_not_fit_is_refused_and_nothing_written(ring):
    producer, _ = ring
    with producer.reserve(100) as res:
        res.data[:] = 7
        with pytest.raises(AsapoWrongInputError, match="101 bytes at offset 0 do not fit the "
                                                       "100 reserved"):
            res.fill_from(np.zeros(101, np.uint8))
        with pytest.raises(AsapoWrongInputError, match="10 bytes at offset 95"):
            res.fill_from(np.zeros(10, np.uint8), 95)
        with pytest.raises(AsapoWrongInputError, match="offset -1"):
            res.fill_from(b"x", -1)
        assert (res.data == 7).all()  # a refused piece leaves the slot alone


def test_non_contiguous_and_closed_reservations_are_refused(ring):
    producer, _ = ring
    res = producer.reserve(64)
    with pytest.raises(AsapoWrongInputError, match="not C-contiguous"):
        res.fill_from(np.zeros((8, 16), np.uint8)[:, ::2])
    res.commit(1)
    with pytest.raises(AsapoWrongInputError, match="already committed"):
        res.fill_from(b"late")
