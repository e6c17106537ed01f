"""``asapo-hpc reprocess`` over a stream a real node service stored: N instances of a real
Python consumer command share the stream exactly once, reading it from disk; a failing
command fails the run with a clear message, and a run again with the same group does only
what was not acknowledged. --slurm submits a job array to a real single-node Slurm the tests
start (tests/cli/conftest.py): its tasks share the stream the same way, and failed tasks are
reported with their Slurm state and exit code."""

from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from asapo_hpc._core import Segment
from asapo_hpc.catalog import Catalog
from asapo_hpc.cli import main
from asapo_hpc.client import Producer
from asapo_hpc.config import RingConfig, segment_name
from asapo_hpc.node import NodeConfig, NodeService, SourceConfig
from asapo_hpc.sink import SinkSettings

N = 24
SHAPE = (8, 8)

# Each message's bytes go to <out>/<id> (O_EXCL: a second processing of an id fails the
# instance); FAIL_AFTER=k: acknowledge k messages, take one more, exit 3 without acking it.
# With a second argument, each instance writes where and as what it ran to
# <reports>/<instance>.json (its Slurm variables, cwd, shm prefix) before it starts.
CONSUMER = textwrap.dedent("""
    import json, os, sys
    from asapo_hpc.client import Consumer
    from asapo_hpc.errors import AsapoStreamFinishedError
    env = os.environ
    out, fail_after = sys.argv[1], int(env.get("FAIL_AFTER", "-1"))
    group, stream = env["ASAPO_HPC_GROUP"], env["ASAPO_HPC_STREAM"]
    if len(sys.argv) > 2:
        keys = ("ASAPO_HPC_INSTANCE", "ASAPO_HPC_INSTANCES", "ASAPO_HPC_DATA_ROOT",
                "ASAPO_HPC_SHM_PREFIX", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_JOB_ID",
                "SLURM_JOB_ID", "SLURM_CLUSTER_NAME")
        report = {k: env.get(k) for k in keys}
        report["cwd"], report["python"] = os.getcwd(), sys.executable
        with open(os.path.join(sys.argv[2], env["ASAPO_HPC_INSTANCE"] + ".json"), "x") as f:
            json.dump(report, f)
    done = 0
    with Consumer(env["ASAPO_HPC_BEAMTIME"], env["ASAPO_HPC_SOURCE"],
                  data_root=env["ASAPO_HPC_DATA_ROOT"]) as consumer:
        while True:
            try:
                msg = consumer.get_next(group, stream=stream, timeout_ms=5000)
            except AsapoStreamFinishedError:
                break
            if done == fail_after:
                sys.exit(3)
            fd = os.open(os.path.join(out, str(msg.id)), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            os.write(fd, msg.data.tobytes())
            os.close(fd)
            consumer.acknowledge(group, msg)
            done += 1
""")


def frame(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 65535, SHAPE, dtype=np.uint16)


@pytest.fixture
def stored(tmp_path, shm_prefix) -> Path:
    """Stream 'scan' of source 'det' (ids 1..N, finished), stored by a node service whose
    ring is then removed: only the disk has it. Returns the data root."""
    ring = RingConfig(slot_count=16, slot_size=1024, full_timeout_s=10.0, lease_s=30.0)
    config = NodeConfig(data_root=tmp_path / "stored data,1", beamtime="bt",
                        sources=(SourceConfig("det", frame_shape=SHAPE, dtype="uint16",
                                              ring=ring),),
                        sink=SinkSettings(frames_per_file=10, compression="none", threads=1),
                        poll_ms=20)
    with NodeService(config), Producer("bt", "det", config=ring) as producer:
        for i in range(1, N + 1):
            producer.send(i, frame(i), {"i": i}, stream="scan")
        producer.send_stream_finished_flag("scan", N)
        with Catalog(config.catalog_path) as catalog:
            _wait(lambda: catalog.get_current_size("det", "scan") == N and all(
                catalog.get_by_id("det", "scan", i).file_path for i in range(1, N + 1)))
    Segment.unlink(segment_name("bt", "det"))
    return config.data_root


def _wait(condition, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the sink"
        time.sleep(0.05)


def reprocess(root: Path, *extra: str, quiet: bool = True) -> int:
    return main(["reprocess", "--beamtime", "bt", "--source", "det", "--stream", "scan",
                 "--data-root", str(root), *(["--quiet"] if quiet else []), *extra])


def outputs(out: Path) -> dict[int, bytes]:
    return {int(p.name): p.read_bytes() for p in out.iterdir()}


def test_instances_share_the_stored_stream_exactly_once(stored, tmp_path, capsys):
    script = tmp_path / "consumer.py"
    script.write_text(CONSUMER)
    out = tmp_path / "out"
    out.mkdir()
    code = reprocess(stored, "-n", "3", "--group", "batch", "--", sys.executable,
                     str(script), str(out))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert outputs(out) == {i: frame(i).tobytes() for i in range(1, N + 1)}
    assert f"{N}/{N} messages acknowledged by group batch" in captured.out
    with Catalog(stored / "catalog.sqlite") as catalog:
        assert catalog.unacknowledged("batch", "det", "scan") == []


def test_failing_command_fails_clearly_and_a_rerun_does_the_rest(stored, tmp_path, capsys,
                                                                 monkeypatch):
    script = tmp_path / "consumer.py"
    script.write_text(CONSUMER)
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setenv("FAIL_AFTER", "5")
    code = reprocess(stored, "--group", "retry", "--", sys.executable, str(script), str(out))
    err = capsys.readouterr().err
    assert code == 1
    assert "instance 0 of " in err and "failed with exit code 3" in err
    assert f"5/{N} messages acknowledged" in err and "--group retry" in err
    assert sorted(outputs(out)) == [1, 2, 3, 4, 5]
    monkeypatch.delenv("FAIL_AFTER")
    # again with the same group: only what was not acknowledged (id 6 was taken, not acked)
    code = reprocess(stored, "-n", "2", "--group", "retry", "--", sys.executable,
                     str(script), str(out))
    assert code == 0, capsys.readouterr().err
    assert outputs(out) == {i: frame(i).tobytes() for i in range(1, N + 1)}


def test_bad_input_is_refused_with_what_to_do(stored, tmp_path, capsys):
    assert reprocess(stored) == 2
    assert "give either --pipeline FILE or -- COMMAND" in capsys.readouterr().err
    assert main(["reprocess", "--beamtime", "bt", "--source", "det", "--stream", "nope",
                 "--data-root", str(stored), "--", "true"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert reprocess(tmp_path / "elsewhere", "--", "true") == 2
    assert "no catalog at" in capsys.readouterr().err
    assert reprocess(stored, "--wait", "--", "true") == 2
    assert "--wait goes with --slurm" in capsys.readouterr().err


def submitted_job(stdout: str) -> str:
    found = re.search(r"submitted Slurm job (\d+) \(", stdout)
    assert found, stdout
    return found[1]


@pytest.mark.slow
def test_slurm_job_array_shares_the_stored_stream_exactly_once(stored, slurm, shm_prefix,
                                                               tmp_path, capsys, monkeypatch):
    script = tmp_path / "consumer.py"
    script.write_text(CONSUMER)
    out, reports, work = tmp_path / "out", tmp_path / "reports", tmp_path / "work"
    for d in (out, reports, work):
        d.mkdir()
    monkeypatch.chdir(work)  # the tasks run here and write slurm-<job>_<task>.out here
    code = reprocess(stored, "-n", "3", "--group", "slurmed", "--slurm", "--wait", "--",
                     sys.executable, str(script), str(out), str(reports), quiet=False)
    captured = capsys.readouterr()
    assert code == 0, captured.err + slurm.logs()
    job = submitted_job(captured.out)
    assert f"{N}/{N} messages of stream 'scan' acknowledged; Slurm job {job} ended" \
        in captured.err
    assert outputs(out) == {i: frame(i).tobytes() for i in range(1, N + 1)}
    assert f"{N}/{N} messages acknowledged by group slurmed" in captured.out
    # every instance ran as a task of that array under this cluster, with what it needed
    ran = {int(p.stem): json.loads(p.read_text()) for p in reports.iterdir()}
    assert sorted(ran) == [0, 1, 2]
    for instance, report in ran.items():
        assert report["SLURM_ARRAY_TASK_ID"] == str(instance)
        assert report["SLURM_ARRAY_JOB_ID"] == job
        assert report["SLURM_CLUSTER_NAME"] == "asapotest"
        assert report["ASAPO_HPC_INSTANCES"] == "3"
        assert report["ASAPO_HPC_DATA_ROOT"] == str(stored.resolve())
        assert report["ASAPO_HPC_SHM_PREFIX"] == shm_prefix
        assert report["cwd"] == str(work) and report["python"] == sys.executable
    assert len({r["SLURM_JOB_ID"] for r in ran.values()}) == 3
    assert sorted(p.name for p in work.iterdir()) == [f"slurm-{job}_{i}.out" for i in range(3)]
    states = slurm.run("scontrol", "show", "job", "-o", job).stdout
    assert states.count("JobState=COMPLETED") == 3, states
    with Catalog(stored / "catalog.sqlite") as catalog:
        assert catalog.unacknowledged("slurmed", "det", "scan") == []
    assert reprocess(stored, "--group", "slurmed", "--progress") == 0
    assert f"group slurmed: {N}/{N} messages" in capsys.readouterr().out


@pytest.mark.slow
def test_slurm_failed_tasks_are_reported_and_a_rerun_does_the_rest(stored, slurm, shm_prefix,
                                                                   tmp_path, capsys,
                                                                   monkeypatch):
    script = tmp_path / "consumer.py"
    script.write_text(CONSUMER)
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FAIL_AFTER", "5")  # the tasks inherit the submitting environment
    code = reprocess(stored, "-n", "3", "--group", "retry", "--slurm", "--wait", "--",
                     sys.executable, str(script), str(out))
    captured = capsys.readouterr()
    job = submitted_job(captured.out)
    assert code == 1, captured.err
    for i in range(3):
        assert f"instance {i} of " in captured.err
        assert f"(Slurm job {job}_{i}) failed with exit code 3 (FAILED)" in captured.err
    assert f"3 of 3 instances failed; 15/{N} messages acknowledged" in captured.err
    assert "--group retry" in captured.err
    assert len(outputs(out)) == 15
    monkeypatch.delenv("FAIL_AFTER")
    code = reprocess(stored, "-n", "2", "--group", "retry", "--slurm", "--wait", "--",
                     sys.executable, str(script), str(out))
    assert code == 0, capsys.readouterr().err
    assert outputs(out) == {i: frame(i).tobytes() for i in range(1, N + 1)}


def test_slurm_without_wait_returns_after_submitting(stored, slurm, shm_prefix, tmp_path,
                                                     capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = reprocess(stored, "-n", "2", "--group", "later", "--slurm", "--", "sleep", "30")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    job = submitted_job(captured.out)
    assert "--group later --progress" in captured.out
    assert job in slurm.jobs()  # still queued or running: the fixture cancels it
    slurm.run("scancel", job)


def sum_pipeline(tmp_path: Path, monkeypatch) -> Path:
    """A pipeline file of beamtime "bt": stage "sum" reads "raw", records "sums"."""
    workers = Path(__file__).resolve().parents[1] / "pipeline"
    monkeypatch.syspath_prepend(str(workers))  # spawned stage processes inherit sys.path
    pipe = tmp_path / "sum.toml"
    pipe.write_text(textwrap.dedent(f"""
        beamtime = "bt"
        data_root = "{tmp_path / 'results'}"
        compression = "none"
        [[sources]]
        name = "raw"
        frame_shape = [8, 8]
        dtype = "uint16"
        record = true          # reprocess feeds it from disk: it is not recorded again
        [[sources]]
        name = "sums"
        frame_shape = [1]
        dtype = "float64"
        record = true
        [[stages]]
        name = "sum"
        worker = "asapo_pipeline_test_workers:explode"
        input = "raw"
        output = "sums"
        instances = 2
        [stages.options]
        fail_at = -1
    """))
    return pipe


def test_pipeline_reads_its_first_stage_input_from_the_stored_stream(stored, tmp_path, capsys,
                                                                     monkeypatch):
    from asapo_hpc.client.disk import DiskReader

    pipe = sum_pipeline(tmp_path, monkeypatch)
    code = reprocess(stored, "--pipeline", str(pipe))
    assert code == 0, capsys.readouterr().err
    with DiskReader(tmp_path / "results" / "catalog.sqlite") as reader:
        sums = {i: reader.read("sums", "scan", i).array(np.float64)[0] for i in range(1, N + 1)}
        assert reader._catalog.get_current_size("sums", "scan") == N
        assert reader._catalog.get_stream_info("sums", "scan").finished
        assert reader._catalog.get_source_list() == ["sums"]  # raw was not stored again
    assert sums == {i: float(frame(i).sum()) for i in range(1, N + 1)}


def test_pipeline_beside_a_live_one_needs_its_own_beamtime(stored, tmp_path, capsys,
                                                         monkeypatch, shm_prefix, shm_names):
    """A live run of the file's beamtime holds ring "raw": reprocess refuses to join it (and
    leaves it), then runs under --pipeline-beamtime, recording there."""
    from asapo_hpc.client.disk import DiskReader

    pipe = sum_pipeline(tmp_path, monkeypatch)
    with Producer("bt", "raw", config=RingConfig(slot_count=16, slot_size=1024)) as live:
        assert reprocess(stored, "--pipeline", str(pipe)) == 1
        assert "ring of source 'raw' is in use by 1 live process" in capsys.readouterr().err
        assert shm_names(shm_prefix) == [live.segment.name]
        code = reprocess(stored, "--pipeline", str(pipe), "--pipeline-beamtime", "bt_again")
        assert code == 0, capsys.readouterr().err
        assert shm_names(shm_prefix) == [live.segment.name]
    with DiskReader(tmp_path / "results" / "catalog.sqlite") as reader:
        assert reader._catalog.get_current_size("sums", "scan") == N
    assert (tmp_path / "results" / "bt_again" / "sums").is_dir()
    assert not (tmp_path / "results" / "bt").exists()


def test_pipeline_beamtime_without_a_pipeline_is_refused(stored, capsys):
    assert reprocess(stored, "--pipeline-beamtime", "x", "--", "true") == 2
    assert "--pipeline-beamtime goes with --pipeline FILE" in capsys.readouterr().err
