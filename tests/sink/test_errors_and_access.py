"""Write errors (full disk, read-only folder), reader errors, file modes, one writer per stream."""

from __future__ import annotations

import os
import stat
import subprocess
import uuid
from pathlib import Path

import h5py
import numpy as np
import pytest

from asapo_hpc.errors import AsapoDataNotInCacheError, AsapoLocalIOError
from asapo_hpc.sink import FrameLocation, FrameReader, SinkSettings, StreamWriter
from asapo_hpc.sink.repair import lookup3


def mount_tmpfs(where: Path, options: str) -> Path:
    """A private tmpfs at ``where`` (root only); the test is skipped where mounting fails."""
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options,
                             f"asapo_sink_test_{uuid.uuid4().hex[:8]}", str(where)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    return where


@pytest.fixture
def full_disk(tmp_path):
    where = mount_tmpfs(tmp_path / "small", "size=2m,mode=0700")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=True)


@pytest.fixture
def read_only_folder(tmp_path):
    if os.geteuid() != 0:  # root ignores permission bits, so it gets a read-only mount
        where = tmp_path / "ro"
        where.mkdir()
        where.chmod(0o555)
        yield where
        where.chmod(0o755)
        return
    where = mount_tmpfs(tmp_path / "ro", "ro,size=1m")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=True)


def test_full_disk_fails_frames_loudly_and_keeps_stored_ones_readable(full_disk):
    frame = np.random.default_rng(0).integers(0, 60000, (256, 256), dtype=np.uint16)  # 128 KiB
    settings = SinkSettings(compression="none", frames_per_file=1000, max_batch=1)
    writer = StreamWriter(full_disk, "bt", "det", "s", settings)
    futures = []
    with pytest.raises(AsapoLocalIOError) as refused:
        for message_id in range(1, 40):  # 5 MiB into 2 MiB
            futures.append(writer.submit(message_id, frame))
            futures[-1].exception(timeout=30)
    writer.close()

    assert "NOT stored" in str(refused.value)
    failed = [f for f in futures if f.exception() is not None]
    stored = [f.result() for f in futures if f.exception() is None]
    assert failed and stored
    error = failed[0].exception()
    assert isinstance(error, AsapoLocalIOError)
    assert "disk is full" in str(error) and "s_000001.h5" in str(error)
    assert "NOT" in str(error) and "resumes" in str(error)
    counters = writer.counters
    assert counters.frames_written == len(stored)
    assert counters.frames_failed == len(failed)
    assert counters.frames_submitted == len(futures)
    with FrameReader() as reader:
        for location in stored:
            assert np.array_equal(reader.read(location), frame)


def test_read_only_folder_is_refused_with_a_clear_error(read_only_folder):
    with pytest.raises(AsapoLocalIOError, match="could not create the stream folder") as caught:
        StreamWriter(read_only_folder, "bt", "det", "s")
    assert str(read_only_folder) in str(caught.value)
    assert "read-only" in str(caught.value) or "permission" in str(caught.value)


def test_second_writer_on_a_stream_is_refused(tmp_path):
    with StreamWriter(tmp_path, "bt", "det", "s"):
        with pytest.raises(AsapoLocalIOError, match="another sink writer"):
            StreamWriter(tmp_path, "bt", "det", "s")
    StreamWriter(tmp_path, "bt", "det", "s").close()  # free again once closed


def test_files_and_folders_are_private_by_default(tmp_path):
    with StreamWriter(tmp_path / "root", "bt", "det", "s") as writer:
        location = writer.write(1, np.zeros((8, 8), np.uint16))
    for path in (Path(location.file_path), writer.folder / "s_master.h5"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for folder in (writer.folder, writer.folder.parent, tmp_path / "root"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_a_configured_group_gets_read_write_access(tmp_path):
    gid = os.getgid()
    settings = SinkSettings(group=gid)
    old_umask = os.umask(0o077)  # the configured modes must not depend on the umask
    try:
        with StreamWriter(tmp_path, "bt", "det", "s", settings) as writer:
            location = writer.write(1, np.zeros((8, 8), np.uint16))
    finally:
        os.umask(old_umask)
    info = Path(location.file_path).stat()
    assert stat.S_IMODE(info.st_mode) == 0o660 and info.st_gid == gid
    assert stat.S_IMODE(writer.folder.stat().st_mode) == 0o2770


def _stored(tmp_path, compression="bslz4") -> FrameLocation:
    settings = SinkSettings(compression=compression)
    with StreamWriter(tmp_path, "bt", "det", "s", settings) as writer:
        return writer.write(1, np.arange(64 * 96, dtype=np.uint16).reshape(64, 96))


def test_reader_reports_a_missing_file_or_frame(tmp_path):
    location = _stored(tmp_path)
    beyond = FrameLocation(1, location.file_path, location.dataset_paths, 5)
    with FrameReader() as reader:
        with pytest.raises(AsapoDataNotInCacheError, match="holds 1 frames, not frame 5"):
            reader.read(beyond)
        os.unlink(location.file_path)
        missing = FrameLocation(1, location.file_path + ".gone", location.dataset_paths, 0)
        with pytest.raises(AsapoDataNotInCacheError, match="no longer exists"):
            reader.read(missing)


def test_reader_reports_a_corrupt_chunk(tmp_path):
    location = _stored(tmp_path)
    with h5py.File(location.file_path, "r+") as f:
        f[location.dataset_paths[0]].id.write_direct_chunk((0, 0, 0), b"\0\0\0\0garbage")
    with FrameReader() as reader, pytest.raises(AsapoLocalIOError, match="corrupt bslz4 chunk"):
        reader.read(location)


def test_lookup3_matches_the_reference_vectors_and_hdf5(tmp_path):
    assert lookup3(b"") == 0xDEADBEEF
    assert lookup3(b"Four score and seven years ago") == 0x17770551
    assert lookup3(b"Four score and seven years ago", 1) == 0xCD628161
    path = tmp_path / "f.h5"
    h5py.File(path, "w", libver="latest").close()
    superblock = path.read_bytes()[:48]
    assert lookup3(superblock[:44]) == int.from_bytes(superblock[44:], "little")
