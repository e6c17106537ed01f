"""Pipelines end to end on small frames: results equal the workers called directly,
failures are reported with the stage's name, finish markers propagate, rings go away."""

from __future__ import annotations

import numpy as np
import pytest

from asapo_hpc.detectors.frames import PowderFrames
from asapo_hpc.detectors.simulator import default_geometry
from asapo_hpc.pipeline import PipelineError, PipelineSpec, run_pipeline
from asapo_hpc.pipeline.results import read_profiles, stage_latencies
from asapo_hpc.pipeline.workers import AzintWorker
from asapo_hpc.workers.stitch import Stitcher

from .conftest import HERE, SMALL_LAYOUT

FRAMES = 5


def two_stage_spec(tmp_path, stitch_instances: int = 2) -> PipelineSpec:
    return PipelineSpec.from_dict({
        "beamtime": "bt", "data_root": str(tmp_path / "data"), "compression": "none",
        "detector": {"layout": str(SMALL_LAYOUT)},
        "sources": [{"name": "raw", "record": True}, {"name": "profiles", "record": True}],
        "stages": [{"name": "stitch", "worker": "stitch", "input": "raw",
                    "output": "stitched", "instances": stitch_instances, "batch": 3},
                   {"name": "azint", "worker": "azint", "input": "stitched",
                    "output": "profiles", "output_stream": "{stream}_iq",
                    "options": {"npt": 64, "unit": "2th_deg"}}],
        "simulate": {"source": "raw", "frames": FRAMES, "stream": "scan"},
    })


def test_two_stage_pipeline_equals_the_workers_called_directly(shm_prefix, shm_names, tmp_path,
                                                                small_layout):
    spec = two_stage_spec(tmp_path)
    result = run_pipeline(spec)
    assert result.stage_frames == {"stitch": FRAMES, "azint": FRAMES}
    assert result.streams["profiles"] == {"scan_iq": FRAMES}  # finish reached the end
    assert shm_names(shm_prefix) == []

    prof = read_profiles(spec.data_root, "bt", "profiles", "scan_iq")
    np.testing.assert_array_equal(prof.ids, np.arange(1, FRAMES + 1))
    frames = PowderFrames(small_layout, default_geometry(small_layout))
    stitcher = Stitcher(small_layout, large_pixels=True, output="input")
    azint = AzintWorker({"layout": str(SMALL_LAYOUT), "npt": 64, "unit": "2th_deg"},
                        spec.source("stitched"), HERE)
    for k in range(FRAMES):
        direct = azint.integrate(stitcher(frames.module_frames(k)))
        np.testing.assert_allclose(prof.radial[k], direct.radial, rtol=1e-12)
        np.testing.assert_allclose(prof.intensity[k], direct.intensity, rtol=1e-10)
        np.testing.assert_allclose(prof.sigma[k], direct.sigma, rtol=1e-10)
    assert prof.intensity.max() > 0 and np.all(prof.sigma >= 0)
    lat = stage_latencies(spec.data_root / "catalog.sqlite", "profiles", "scan_iq")
    assert set(lat) == {"stitch", "azint", "total"}
    assert all(len(v) == FRAMES and np.all(v >= 0) for v in lat.values())
    check_stage_times(result)


@pytest.mark.parametrize("instances", [1, 2])
def test_stitched_frames_stay_exact_when_output_slots_are_reused(shm_prefix, shm_names, tmp_path,
                                                                 small_layout, instances):
    """A 2-frame output ring wraps every other frame: the stitcher then skips the gaps of
    slots that still hold its own output (and only those), and every stored frame is
    still byte for byte the stitcher's output."""
    from asapo_hpc.pipeline.results import read_frames

    frames_n = 7
    spec = PipelineSpec.from_dict({
        "beamtime": "bt", "data_root": str(tmp_path / "data"), "compression": "none",
        "detector": {"layout": str(SMALL_LAYOUT)},
        "sources": [{"name": "raw"}, {"name": "stitched", "record": True, "frames_in_ring": 2}],
        "stages": [{"name": "stitch", "worker": "stitch", "input": "raw", "output": "stitched",
                    "instances": instances, "options": {"output": "input", "fill": 7}}],
        "simulate": {"source": "raw", "frames": frames_n},
    })
    assert run_pipeline(spec).stage_frames == {"stitch": frames_n}
    ids, stored = read_frames(spec.data_root, "bt", "stitched", "default")
    frames = PowderFrames(small_layout, default_geometry(small_layout))
    stitcher = Stitcher(small_layout, large_pixels=True, output="input", fill=7)  # not 0:
    for i, image in zip(ids, stored, strict=True):  # fresh ring memory has no 7s in the gaps
        np.testing.assert_array_equal(image, stitcher(frames.module_frames(i - 1)))
    assert sorted(ids) == list(range(1, frames_n + 1))
    assert shm_names(shm_prefix) == []


def test_own_slots_are_reused_only_straight_after_our_own_output():
    from asapo_hpc.pipeline.stage import OwnSlots

    slots = OwnSlots(4)
    assert not slots.reused(5)  # nothing written yet
    slots.wrote(5)
    assert slots.reused(9)  # the next lap's position in the same slot
    assert not slots.reused(13)  # a lap was skipped: position 9 went to another writer
    assert not slots.reused(6)  # another slot
    slots.wrote(9)
    assert slots.reused(13) and not slots.reused(9)


def check_stage_times(result) -> None:
    """Each instance accounts for its own frames (ids split 1,3,5 / 2,4 over two stitch
    instances), and its waits and work fit inside its span."""
    times = result.stage_times
    assert [t["frames"] for t in times["stitch"]] == [3, 2]
    assert [t["frames"] for t in times["azint"]] == [FRAMES]
    for t in times["stitch"] + times["azint"]:
        assert t["cpu"] > 0 and t["wall"] > 0
        assert min(t["input_wait"], t["work"], t["output_wait"]) >= 0
        assert t["input_wait"] + t["work"] + t["output_wait"] <= t["wall"] + 1e-3
    sim = result.simulation
    assert sim["frames"] == FRAMES and sim["cpu"] > 0
    assert 0 <= sim["output_wait"] <= sim["seconds"]


def test_a_stage_that_raises_is_reported_with_its_name(shm_prefix, shm_names, tmp_path,
                                                      monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))  # spawned children inherit sys.path
    spec = PipelineSpec.from_dict({
        "beamtime": "bt", "data_root": str(tmp_path / "data"),
        "detector": {"layout": str(SMALL_LAYOUT)},
        "sources": [{"name": "raw"}, {"name": "sums", "frame_shape": [1], "dtype": "float64"}],
        "stages": [{"name": "stitch", "worker": "stitch", "input": "raw", "output": "img"},
                   {"name": "explode", "worker": "asapo_pipeline_test_workers:explode",
                    "input": "img", "output": "sums", "options": {"fail_at": 2}}],
        "simulate": {"source": "raw", "frames": 4},
    })
    with pytest.raises(PipelineError) as info:
        run_pipeline(spec)
    text = str(info.value)
    assert "stage 'explode' instance 0 failed" in text
    assert "ValueError: boom at frame 2" in text
    assert shm_names(shm_prefix) == []


def test_bad_pipeline_files_are_refused_with_the_reason(tmp_path):
    bad = tmp_path / "p.toml"
    bad.write_text('[[sources]]\nname = "raw"\n[[stages]]\nname = "s"\nworker = "stitch"\n'
                   'input = "nowhere"\noutput = "raw"\n')
    with pytest.raises(Exception, match="'nowhere' is not declared"):
        PipelineSpec.from_file(bad)


def test_stage_threads_are_given_or_shared_out_over_busy_processes(tmp_path):
    import os

    from asapo_hpc.cli.demo import demo_spec

    spec = demo_spec(4, 0.0, tmp_path)
    busy = 2 + 1 + 1  # stitch, azint, simulator, node service
    assert spec.stage_threads(spec.stage("azint")) == max(1, (os.cpu_count() or 1) // busy)
    values = spec.to_dict()
    values["stages"][0]["threads"] = 3
    spec = PipelineSpec.from_dict(values)
    assert spec.stage_threads(spec.stage("stitch")) == 3


def test_a_ring_in_use_by_a_live_process_is_refused_and_left_alone(shm_prefix, shm_names,
                                                                   tmp_path):
    """Another run of this beamtime (here: this test's producer) owns the ring of "raw": the
    pipeline must neither join its stream nor remove it when it gives up."""
    from asapo_hpc.client import Producer

    spec = two_stage_spec(tmp_path)
    with Producer("bt", "raw", config=spec.ring_config("raw")) as live:
        live.send(1, b"another run's frame")
        with pytest.raises(PipelineError, match=r"ring of source 'raw' is in use by 1 live "
                                                r"process.*give this pipeline its own beamtime"):
            run_pipeline(spec)
        assert shm_names(shm_prefix) == [live.segment.name]  # still there, nothing else made
        assert live.segment.ring_stats()["published"] == 1


def test_a_ring_left_by_a_killed_run_is_replaced(shm_prefix, shm_names, tmp_path, small_layout):
    """A ring nobody uses any more (its processes are gone) still holds old messages: the
    pipeline removes it, and its stages see only this run's frames."""
    from asapo_hpc.client import Producer

    spec = two_stage_spec(tmp_path, stitch_instances=1)
    old = Producer("bt", "raw", config=spec.ring_config("raw"))
    old.send(1, np.zeros(1, np.uint8), stream="scan")  # a stale frame of the wrong size
    old.close()  # the processes are gone; the segment stays, as after kill -9
    assert len(shm_names(shm_prefix)) == 1
    result = run_pipeline(spec)
    assert result.stage_frames == {"stitch": FRAMES, "azint": FRAMES}
    prof = read_profiles(spec.data_root, "bt", "profiles", "scan_iq")
    np.testing.assert_array_equal(prof.ids, np.arange(1, FRAMES + 1))
    assert shm_names(shm_prefix) == []


def test_warm_up_frames_have_the_numba_type_of_ring_frames(shm_prefix):
    """A stage warms its kernels up on frames of the type the ring delivers (read-only
    views): Numba compiles once per argument type, so writable zeros would leave the real
    signature to compile on the first streamed frame."""
    import numba

    from asapo_hpc.client import Consumer, Producer
    from asapo_hpc.config import RingConfig
    from asapo_hpc.pipeline.stage import warm_up_parts

    shape, dtype = (8, 6), np.dtype(np.uint16)
    config = RingConfig(slot_size=4096, slot_count=4, groups=("g",))
    with Producer("bt", "frames", config=config) as producer, \
            Consumer("bt", "frames", timeout_ms=2000) as consumer:
        producer.send(1, np.arange(48, dtype=dtype))
        ring_frame = consumer.get_next("g").array(dtype, shape)
        warm = warm_up_parts(shape, dtype, 3)
        assert len(warm) == 3
        assert all(numba.typeof(w) == numba.typeof(ring_frame) for w in warm)
        assert not (warm[0].any() or warm[0].flags.writeable)
