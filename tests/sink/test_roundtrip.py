"""Round trips through the sink's files: every codec and dtype, datasets of parts, rollover."""

from __future__ import annotations

import threading

import h5py
import hdf5plugin  # noqa: F401
import numpy as np
import pytest

from asapo_hpc.errors import AsapoTimeoutError, AsapoWrongInputError
from asapo_hpc.sink import FrameLocation, FrameReader, SinkSettings, StreamWriter

SHAPE = (64, 96)


def poisson_frames(count: int, dtype, shape=SHAPE, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    frames = [rng.poisson(3.0, shape).astype(dtype) for _ in range(count)]
    if np.dtype(dtype) == np.uint32:
        frames[0][0, :4] = [0, 1 << 20, (1 << 32) - 1, 1 << 31]  # use the high bytes too
    return frames


def write_all(writer: StreamWriter, frames: list, first_id: int = 1) -> list[FrameLocation]:
    futures = [writer.submit(first_id + i, f, timestamp_ns=1000 + i) for i, f in enumerate(frames)]
    return [f.result(timeout=30) for f in futures]


@pytest.mark.parametrize("compression", ["none", "bslz4", "zstd"])
@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_round_trip_is_byte_identical(tmp_path, compression, dtype):
    frames = poisson_frames(5, dtype)
    settings = SinkSettings(compression=compression, frames_per_file=100)
    with StreamWriter(tmp_path, "bt1", "det", "scan1", settings) as writer:
        locations = write_all(writer, frames)

    with FrameReader() as reader:
        for frame, location in zip(frames, locations, strict=True):
            got = reader.read(location)
            assert got.dtype == frame.dtype and got.tobytes() == frame.tobytes()
    # Any HDF5 tool with hdf5plugin sees the same frames through the registered filters.
    with h5py.File(locations[0].file_path, "r") as f:
        stored = f["/entry/data/data"]
        assert stored.chunks == (1, *SHAPE)
        assert stored[()].tobytes() == np.stack(frames).tobytes()
        assert f["/entry/data/message_id"][()].tolist() == [1, 2, 3, 4, 5]
        assert f["/entry/data/timestamp_ns"][()].tolist() == [1000, 1001, 1002, 1003, 1004]


@pytest.mark.parametrize("compression,filter_id", [("bslz4", 32008), ("zstd", 32015)])
def test_filters_match_hdf5plugin(tmp_path, compression, filter_id):
    with StreamWriter(tmp_path, "bt", "det", "s", SinkSettings(compression=compression)) as w:
        location = w.write(1, poisson_frames(1, np.uint16)[0])
    with h5py.File(location.file_path, "r") as f:
        plist = f["/entry/data/data"].id.get_create_plist()
        assert plist.get_nfilters() == 1
        got_id, _flags, cd_values, _name = plist.get_filter(0)
    assert got_id == filter_id
    expected = (hdf5plugin.Bitshuffle(cname="lz4") if compression == "bslz4"
                else hdf5plugin.Zstd(clevel=3))
    assert expected.filter_id == filter_id
    if compression == "bslz4":
        assert cd_values[4] == expected.filter_options[1]  # LZ4
    else:
        assert tuple(cd_values) == tuple(expected.filter_options)


def test_nxmx_layout(tmp_path):
    with StreamWriter(tmp_path, "bt", "det", "s", SinkSettings(compression="none")) as w:
        location = w.write(7, poisson_frames(1, np.uint16)[0])
    assert location.dataset_paths == ("/entry/data/data",) and location.frame_index == 0
    with h5py.File(location.file_path, "r") as f:
        assert f["entry"].attrs["NX_class"] == "NXentry"
        assert f["entry/data"].attrs["NX_class"] == "NXdata"
        assert f["entry/data"].attrs["signal"] == "data"
        assert f.attrs["stream"] == "s" and f.attrs["beamtime"] == "bt"


def test_dataset_of_twelve_parts(tmp_path):
    shape = (32, 48)
    messages = [poisson_frames(12, np.uint16, shape, seed=m) for m in range(5)]
    settings = SinkSettings(compression="bslz4", frames_per_file=2)
    with StreamWriter(tmp_path, "bt", "lambda9m", "scan", settings) as writer:
        locations = write_all(writer, messages)

    assert [(loc.file_path.rsplit("_", 1)[1], loc.frame_index) for loc in locations] == [
        ("000001.h5", 0), ("000001.h5", 1), ("000002.h5", 0), ("000002.h5", 1),
        ("000003.h5", 0)]
    third = locations[2]
    assert third.parts == 12
    assert third.part(12).dataset_path == "/entry/data/module_12"
    with FrameReader() as reader:
        assert np.array_equal(reader.read(third), np.stack(messages[2]))
        assert np.array_equal(reader.read(third.part(5)), messages[2][4])
    with h5py.File(third.file_path, "r") as f:
        for k in range(1, 13):
            assert np.array_equal(f[f"/entry/data/module_{k:02d}"][0], messages[2][k - 1])
    # The master file exposes each module over all data files.
    with h5py.File(writer.folder / "scan_master.h5", "r") as f:
        assert f["/entry/data/module_03"].shape == (5, *shape)
        assert np.array_equal(f["/entry/data/module_03"][4], messages[4][2])
        assert f["/entry/data/message_id"][()].tolist() == [1, 2, 3, 4, 5]


def test_rollover_maps_frames_to_files_exactly(tmp_path):
    frames = poisson_frames(10, np.uint16)
    settings = SinkSettings(compression="zstd", frames_per_file=4)
    with StreamWriter(tmp_path, "bt", "det", "run", settings) as writer:
        locations = write_all(writer, frames)
    mapping = [(loc.file_path.rsplit("/", 1)[1], loc.frame_index) for loc in locations]
    assert mapping == [(f"run_{k // 4 + 1:06d}.h5", k % 4) for k in range(10)]
    names = sorted(p.name for p in writer.folder.iterdir() if not p.name.startswith("."))
    assert names == ["run_000001.h5", "run_000002.h5", "run_000003.h5", "run_master.h5"]
    with h5py.File(writer.folder / "run_master.h5", "r") as f:
        assert f["/entry/data/data"][()].tobytes() == np.stack(frames).tobytes()
    assert writer.counters.files_created == 3


def test_realistic_lambda_module_frame(tmp_path):
    frames = poisson_frames(3, np.uint16, shape=(1536, 512), seed=4)
    with StreamWriter(tmp_path, "bt", "det", "big", SinkSettings(compression="bslz4")) as w:
        locations = write_all(w, frames)
    assert 2.5 < w.counters.bytes_submitted / w.counters.bytes_written < 8
    with h5py.File(locations[0].file_path, "r") as f:
        assert f["/entry/data/data"][()].tobytes() == np.stack(frames).tobytes()


def test_location_survives_a_json_round_trip(tmp_path):
    with StreamWriter(tmp_path, "bt", "det", "s") as w:
        location = w.write(3, poisson_frames(1, np.uint16)[0])
    assert FrameLocation.from_dict(location.to_dict()) == location
    with FrameReader() as reader:
        part = location.part(1)
        assert np.array_equal(reader.read_at(part.file_path, part.dataset_path,
                                             part.frame_index), reader.read(location))


@pytest.mark.parametrize("compression", ["none", "bslz4"])
def test_buffers_are_released_once_and_may_be_reused_after(tmp_path, compression):
    frames = poisson_frames(6, np.uint16)
    buffers = [f.copy() for f in frames]
    released = []

    def release_for(i):
        def release():
            released.append(i)
            buffers[i][...] = 0xFFFF  # the producer reuses its buffer at once
        return release

    with StreamWriter(tmp_path, "bt", "det", "s", SinkSettings(compression=compression)) as w:
        futures = [w.submit(i + 1, buffers[i], release=release_for(i)) for i in range(6)]
        locations = [f.result(timeout=30) for f in futures]
    assert sorted(released) == list(range(6))
    with FrameReader() as reader:
        for frame, location in zip(frames, locations, strict=True):
            assert np.array_equal(reader.read(location), frame)


def test_counters(tmp_path):
    frames = poisson_frames(4, np.uint16)
    with StreamWriter(tmp_path, "bt", "det", "s", SinkSettings(compression="bslz4")) as w:
        write_all(w, frames)
        w.flush()
        counters = w.counters
        assert counters.frames_submitted == counters.frames_written == 4
        assert counters.frames_pending == 0 and counters.compression_jobs_queued == 0
        assert counters.bytes_submitted == sum(f.nbytes for f in frames)
        assert 0 < counters.bytes_written < counters.bytes_submitted


def test_submit_times_out_when_too_many_frames_are_in_flight(tmp_path):
    gate = threading.Event()
    frames = poisson_frames(2, np.uint16)
    settings = SinkSettings(compression="bslz4", max_pending=1)
    with StreamWriter(tmp_path, "bt", "det", "s", settings) as w:
        first = w.submit(1, frames[0], release=lambda: gate.wait(10))
        with pytest.raises(AsapoTimeoutError, match="in flight"):
            w.submit(2, frames[1], timeout=0.2)
        gate.set()
        assert first.result(timeout=10).frame_index == 0
        assert w.write(2, frames[1]).frame_index == 1


def test_submit_blocks_while_too_many_frames_are_in_flight(tmp_path):
    frames = poisson_frames(12, np.uint16)
    settings = SinkSettings(compression="zstd", max_pending=2, max_batch=1)
    with StreamWriter(tmp_path, "bt", "det", "s", settings) as w:
        locations = write_all(w, frames)
    assert [loc.frame_index for loc in locations] == list(range(12))


def test_wrong_frames_are_refused(tmp_path):
    with StreamWriter(tmp_path, "bt", "det", "s") as w:
        w.write(1, np.zeros(SHAPE, np.uint16))
        with pytest.raises(AsapoWrongInputError, match="start a new stream"):
            w.submit(2, np.zeros((10, 10), np.uint16))
        with pytest.raises(AsapoWrongInputError, match="start a new stream"):
            w.submit(2, np.zeros(SHAPE, np.uint32))
        with pytest.raises(AsapoWrongInputError, match="part"):
            w.submit(2, [np.zeros(SHAPE, np.uint16)] * 2)
        with pytest.raises(AsapoWrongInputError, match="start at 1"):
            w.submit(0, np.zeros(SHAPE, np.uint16))
        with pytest.raises(AsapoWrongInputError, match="numpy arrays"):
            w.submit(2, b"raw bytes")
        assert w.counters.frames_submitted == 1


@pytest.mark.parametrize("name", ["..", "a/b", "", ".hidden"])
def test_names_that_would_escape_the_data_root_are_refused(tmp_path, name):
    with pytest.raises(AsapoWrongInputError, match="folder name"):
        StreamWriter(tmp_path, "bt", name, "s")


def test_unknown_compression_is_refused(tmp_path):
    with pytest.raises(AsapoWrongInputError, match="bslz4"):
        StreamWriter(tmp_path, "bt", "det", "s", SinkSettings(compression="gzip"))
