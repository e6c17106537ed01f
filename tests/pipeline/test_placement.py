"""CPU placement (the ``cpus`` keys of a pipeline file): checked when read, applied to the
processes the runner starts, refused before anything starts when the host lacks the CPUs."""

from __future__ import annotations

import json
import multiprocessing
import os

import pytest

from asapo_hpc.errors import AsapoWrongInputError
from asapo_hpc.pipeline import PipelineSpec, run_pipeline
from asapo_hpc.pipeline.placement import heaviest_apart, placed

from .conftest import HERE, SMALL_LAYOUT

CPUS = sorted(os.sched_getaffinity(0))


def spec_values(tmp_path, stage_cpus: list[int], other_cpus: list[int]) -> dict:
    return {
        "beamtime": "bt", "data_root": str(tmp_path / "data"), "node_cpus": other_cpus,
        "detector": {"layout": str(SMALL_LAYOUT)},
        "sources": [{"name": "raw"}, {"name": "sums", "frame_shape": [1], "dtype": "float64",
                                      "record": True}],
        "stages": [{"name": "stitch", "worker": "stitch", "input": "raw", "output": "img",
                    "cpus": other_cpus},
                   {"name": "where", "worker": "asapo_pipeline_test_workers:where",
                    "input": "img", "output": "sums", "cpus": stage_cpus,
                    "options": {"path": str(tmp_path / "where.json")}}],
        "simulate": {"source": "raw", "frames": 2, "cpus": other_cpus},
    }


def test_a_stage_runs_on_its_cpus_with_one_numba_thread_each(shm_prefix, shm_names, tmp_path,
                                                              monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))  # spawned children inherit sys.path
    before = os.sched_getaffinity(0)
    spec = PipelineSpec.from_dict(spec_values(tmp_path, [CPUS[-1]], [CPUS[0]]))
    assert spec.stage("where").cpus == (CPUS[-1],) and spec.node_cpus == (CPUS[0],)
    result = run_pipeline(spec)
    assert result.stage_frames == {"stitch": 2, "where": 2}
    seen = json.loads((tmp_path / "where.json").read_text())
    assert seen == {"cpus": [CPUS[-1]], "threads": 1}
    assert os.sched_getaffinity(0) == before  # the runner's own thread is put back
    assert shm_names(shm_prefix) == []


def test_cpus_the_host_lacks_are_refused_before_anything_starts(shm_prefix, shm_names,
                                                                tmp_path):
    missing = max(CPUS) + 1000
    spec = PipelineSpec.from_dict(spec_values(tmp_path, [missing], []))
    with pytest.raises(AsapoWrongInputError,
                       match=rf"stage 'where': cpus \[{missing}\] include \[{missing}\], which "
                             r"this process may not use \(it may use \["):
        run_pipeline(spec)
    assert shm_names(shm_prefix) == [] and multiprocessing.active_children() == []


@pytest.mark.parametrize("cpus, reason", [
    ([-1], "must be a list of CPU numbers"), ("0", "must be a list of CPU numbers"),
    ([0.5], "must be a list of CPU numbers"), ([True], "must be a list of CPU numbers"),
    ([0, 0], "lists a CPU twice"),
])
def test_bad_cpus_are_refused_when_the_file_is_read(tmp_path, cpus, reason):
    with pytest.raises(AsapoWrongInputError, match=f"stage where: cpus {reason}"):
        PipelineSpec.from_dict(spec_values(tmp_path, cpus, []))
    values = spec_values(tmp_path, [], [])
    values["node_cpus"] = cpus
    with pytest.raises(AsapoWrongInputError, match=f"node_cpus: cpus {reason}"):
        PipelineSpec.from_dict(values)


def test_a_process_started_while_placed_keeps_the_placement(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))  # the spawned child imports its target from there
    from asapo_pipeline_test_workers import report_affinity

    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    before = os.sched_getaffinity(0)
    with placed("test", [CPUS[-1]]):
        assert os.sched_getaffinity(0) == {CPUS[-1]}
        proc = ctx.Process(target=report_affinity, args=(queue,))
        proc.start()
    assert os.sched_getaffinity(0) == before
    assert queue.get(timeout=60) == [CPUS[-1]]
    proc.join(30)
    assert proc.exitcode == 0


def test_the_heaviest_stage_gets_the_upper_half():
    assert heaviest_apart([0]) == ((), ())
    assert heaviest_apart([3, 1]) == ((1,), (3,))
    assert heaviest_apart(range(5)) == ((0, 1), (2, 3, 4))
