"""``asapo-hpc reprocess`` over a stream a real node service stored: N instances of a real
Python consumer command share the stream exactly once, reading it from disk; a failing
command fails the run with a clear message, and a run again with the same group does only
what was not acknowledged; --slurm submits a job array (a stand-in sbatch records it)."""

from __future__ import annotations

import os
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
CONSUMER = textwrap.dedent("""
    import os, sys
    from asapo_hpc.client import Consumer
    from asapo_hpc.errors import AsapoStreamFinishedError
    env = os.environ
    out, fail_after = sys.argv[1], int(env.get("FAIL_AFTER", "-1"))
    group, stream = env["ASAPO_HPC_GROUP"], env["ASAPO_HPC_STREAM"]
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
    config = NodeConfig(data_root=tmp_path / "data", beamtime="bt",
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


def reprocess(root: Path, *extra: str) -> int:
    return main(["reprocess", "--beamtime", "bt", "--source", "det", "--stream", "scan",
                 "--data-root", str(root), "--quiet", *extra])


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


def test_slurm_submits_a_job_array(stored, tmp_path, capsys, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "sbatch.args"
    fake = bin_dir / "sbatch"  # a stand-in for Slurm's sbatch: records its arguments
    fake.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {log}\necho 4242\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    code = reprocess(stored, "-n", "4", "--group", "slurmed", "--slurm", "--", "myprog", "x")
    assert code == 0
    assert "submitted Slurm job 4242 (4 tasks)" in capsys.readouterr().out
    args = log.read_text().splitlines()
    assert args[:3] == ["--parsable", "--array=0-3", "--job-name=asapo-reprocess-scan"]
    assert "ASAPO_HPC_GROUP=slurmed" in args[3] and "ASAPO_HPC_STREAM=scan" in args[3]
    assert args[4:] == ["--wrap", "export ASAPO_HPC_INSTANCE=$SLURM_ARRAY_TASK_ID; "
                                  "exec myprog x"]
    assert reprocess(stored, "--group", "slurmed", "--progress") == 0
    assert f"group slurmed: 0/{N} messages" in capsys.readouterr().out


def test_pipeline_reads_its_first_stage_input_from_the_stored_stream(stored, tmp_path, capsys,
                                                                     monkeypatch):
    from asapo_hpc.client.disk import DiskReader

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
    code = reprocess(stored, "--pipeline", str(pipe))
    assert code == 0, capsys.readouterr().err
    with DiskReader(tmp_path / "results" / "catalog.sqlite") as reader:
        sums = {i: reader.read("sums", "scan", i).array(np.float64)[0] for i in range(1, N + 1)}
        assert reader._catalog.get_current_size("sums", "scan") == N
        assert reader._catalog.get_stream_info("sums", "scan").finished
        assert reader._catalog.get_source_list() == ["sums"]  # raw was not stored again
    assert sums == {i: float(frame(i).sum()) for i in range(1, N + 1)}
