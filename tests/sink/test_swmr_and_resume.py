"""A reader in another process follows a growing file; a SIGKILLed writer's stream resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401
import numpy as np
import pytest

from asapo_hpc.sink import FrameReader, SinkSettings, StreamWriter

# Frames are a function of their message id, so another process can check what it reads.
FRAME_OF_ID = textwrap.dedent("""
    import numpy as np
    def frame_of(message_id):
        rng = np.random.default_rng(message_id)
        return rng.poisson(3.0, (64, 96)).astype(np.uint16)
""")
_namespace: dict = {}
exec(FRAME_OF_ID, _namespace)
frame_of = _namespace["frame_of"]

REPO_ROOT = Path(__file__).resolve().parents[2]


def start_python(code: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen([sys.executable, "-c", FRAME_OF_ID + textwrap.dedent(code)],
                            stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True, env=env)


SWMR_READER = """
    import json, sys
    import h5py, hdf5plugin
    from asapo_hpc.sink import FrameReader
    path, total = sys.argv[1], int(sys.argv[2])
    with h5py.File(path, "r", swmr=True) as f:
        ids = f["/entry/data/message_id"]
        print(json.dumps({"opened_with": ids.shape[0]}), flush=True)
        sys.stdin.readline()  # the writer has appended more frames
        ids.refresh()
        seen = ids[()].tolist()
    reader = FrameReader()
    ok = [bool((reader.read_at(path, "/entry/data/data", i) == frame_of(m)).all())
          for i, m in enumerate(seen)]
    print(json.dumps({"seen": seen, "frames_match": ok}), flush=True)
"""


@pytest.mark.parametrize("compression", ["bslz4", "none"])
def test_swmr_reader_in_another_process_follows_the_writer(tmp_path, compression):
    settings = SinkSettings(compression=compression, frames_per_file=100)
    with StreamWriter(tmp_path, "bt", "det", "live", settings) as writer:
        first = writer.write(1, frame_of(1))
        code = SWMR_READER.replace("sys.argv[1], int(sys.argv[2])",
                                   f"{first.file_path!r}, 6")
        reader = start_python(code)
        try:
            opened = json.loads(reader.stdout.readline())
            for message_id in range(2, 7):
                writer.write(message_id, frame_of(message_id))
            reader.stdin.write("go\n")
            reader.stdin.flush()
            result = json.loads(reader.stdout.readline())
        finally:
            reader.kill()
            reader.wait()
    assert opened == {"opened_with": 1}
    assert result["seen"] == [1, 2, 3, 4, 5, 6]
    assert all(result["frames_match"])


KILLED_WRITER = """
    import sys
    from asapo_hpc.sink import SinkSettings, StreamWriter
    root = sys.argv[1]
    writer = StreamWriter(root, "bt", "det", "crash",
                          SinkSettings(compression="bslz4", frames_per_file=5, max_batch=3))
    message_id = 0
    while True:  # until killed
        message_id += 1
        future = writer.submit(message_id, frame_of(message_id))
        if message_id % 3 == 0:
            print(future.result().message_id, flush=True)
"""


def test_sigkilled_writer_leaves_readable_files_and_the_stream_resumes(tmp_path):
    child = start_python(KILLED_WRITER.replace("sys.argv[1]", repr(str(tmp_path))))
    try:
        stored_before_kill = [int(child.stdout.readline()) for _ in range(4)]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    folder = tmp_path / "bt" / "det" / "crash"
    crashed_files = sorted(folder.glob("crash_0*.h5"))
    assert len(crashed_files) >= 2

    # Before any repair, the file the writer was appending to opens in SWMR mode.
    with h5py.File(crashed_files[-1], "r", swmr=True) as f:
        assert f["/entry/data/message_id"].shape[0] >= 1

    settings = SinkSettings(compression="bslz4", frames_per_file=5)
    with StreamWriter(tmp_path, "bt", "det", "crash", settings) as writer:
        # The file being appended to when the kill came (if any) got its flags cleared.
        assert set(writer.repaired_files) <= set(crashed_files)
        stored = list(writer.stored_locations())
        ids = [loc.message_id for loc in stored]
        # What the killed writer reported stored is on disk, in order, without gaps.
        assert ids == list(range(1, len(ids) + 1))
        assert ids[-1] >= stored_before_kill[-1]
        assert writer.last_message_id == ids[-1]
        next_ids = range(ids[-1] + 1, ids[-1] + 6)
        new_locations = [writer.write(m, frame_of(m)) for m in next_ids]

    # The killed writer's files stay readable by plain h5py, and hold the stored frames.
    for path in crashed_files:
        with h5py.File(path, "r") as f:
            f["/entry/data/data"][()]
    for location in stored:
        with h5py.File(location.file_path, "r") as f:
            frame = f["/entry/data/data"][location.frame_index]
        assert np.array_equal(frame, frame_of(location.message_id))

    # New frames never go into a killed writer's file: it may not be reopened for writing.
    assert Path(new_locations[0].file_path) not in crashed_files
    assert Path(new_locations[0].file_path).name > crashed_files[-1].name
    with FrameReader() as reader:
        for location in stored + new_locations:
            assert np.array_equal(reader.read(location), frame_of(location.message_id))
    with h5py.File(folder / "crash_master.h5", "r") as f:
        assert f["/entry/data/message_id"][()].tolist() == list(range(1, next_ids[-1] + 1))


def test_reopening_a_cleanly_closed_stream_continues_in_a_new_file(tmp_path):
    settings = SinkSettings(compression="zstd", frames_per_file=3)
    with StreamWriter(tmp_path, "bt", "det", "s", settings) as writer:
        for m in range(1, 6):
            writer.write(m, frame_of(m))
    (writer.folder / "s_000003.h5").touch()  # a writer killed before its first flush
    with StreamWriter(tmp_path, "bt", "det", "s", settings) as writer:
        assert writer.last_message_id == 5
        assert [loc.message_id for loc in writer.stored_locations()] == [1, 2, 3, 4, 5]
        location = writer.write(6, frame_of(6))
    assert Path(location.file_path).name == "s_000004.h5" and location.frame_index == 0
    with h5py.File(writer.folder / "s_master.h5", "r") as f:
        assert f["/entry/data/message_id"][()].tolist() == [1, 2, 3, 4, 5, 6]
        assert np.array_equal(f["/entry/data/data"][5], frame_of(6))
