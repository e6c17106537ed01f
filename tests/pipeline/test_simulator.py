"""The simulator publishes exactly N frames as n-part datasets, then finishes the stream."""

from __future__ import annotations

import numpy as np
import pytest

from asapo_hpc.client import Consumer
from asapo_hpc.detectors.frames import PowderFrames
from asapo_hpc.detectors.simulator import default_geometry, ring_config, simulate
from asapo_hpc.errors import AsapoEndOfStreamError, AsapoStreamFinishedError


def test_publishes_n_frames_as_datasets_with_the_generator_counts(shm_prefix, small_layout):
    lay = small_layout
    config = ring_config(lay, frames_in_ring=8, groups=("check",))
    consumer = Consumer("bt", "det", config=config, create=True)
    try:
        report = simulate("bt", "det", 5, 0.0, layout=lay, stream="scan1")
        assert report.frames == 5 and report.bytes == 5 * 4 * 64 * 96 * 2
        seen: dict[int, dict[int, np.ndarray]] = {}
        with pytest.raises(AsapoStreamFinishedError) as info:
            while True:
                for msg in consumer.get_next_batch("check", 16, timeout_ms=2000):
                    assert msg.stream == "scan1"
                    part, size = msg.dataset
                    assert size == lay.n_parts and msg.meta["frame"] == msg.id
                    assert part not in seen.setdefault(msg.id, {})
                    seen[msg.id][part] = msg.array(lay.dtype, lay.module_shape).copy()
                    consumer.acknowledge("check", msg)
        assert info.value.last_id == 5 and info.value.next_stream is None
        assert sorted(seen) == [1, 2, 3, 4, 5]
        expected = PowderFrames(lay, default_geometry(lay))
        for frame_id, parts in seen.items():
            assert sorted(parts) == [1, 2, 3, 4]
            stack = np.stack([parts[k] for k in sorted(parts)])
            np.testing.assert_array_equal(stack, expected.module_frames(frame_id - 1))
        assert len({seen[i][1].tobytes() for i in seen}) > 1  # frames differ (noise)
    finally:
        consumer.close()


def test_pacing_spreads_frames_over_the_asked_rate(shm_prefix, small_layout):
    report = simulate("bt", "paced", 4, 40.0, layout=small_layout)
    assert report.frames == 4
    assert report.seconds >= 3 / 40.0  # frame i is not published before i / rate
    assert "frames/s held" in report.summary()


def test_before_run_is_called_before_the_first_frame(shm_prefix, small_layout):
    config = ring_config(small_layout, frames_in_ring=4, groups=("check",))
    consumer = Consumer("bt", "det", config=config, create=True)
    published_when_called = []
    try:
        def before_run():
            with pytest.raises(AsapoEndOfStreamError):  # nothing published yet
                consumer.get_next_batch("check", 1, timeout_ms=0)
            published_when_called.append(True)

        report = simulate("bt", "det", 2, 0.0, layout=small_layout, before_run=before_run)
        assert report.frames == 2 and published_when_called == [True]
    finally:
        consumer.close()
