"""The master file: one ``/entry/data/...`` per image dataset over all data files of a stream.

``<stream>_master.h5`` holds virtual datasets (HDF5 VDS) of shape (all frames, ...) mapping
the data files in order, so a tool that opens the master sees the stream as one dataset
(as DECTRIS's master files do). Sources are named relative to the master's folder
("./<file>"), so the folder can be moved as a whole. The file is rebuilt when a data file is
closed and replaced atomically; a reader never sees half a master file.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from asapo_hpc.sink.datafile import FrameFormat, create_private_file
from asapo_hpc.sink.layout import (
    DATA_GROUP,
    LAYOUT_VERSION,
    MESSAGE_ID_DATASET,
    TIMESTAMP_DATASET,
    image_dataset_paths,
    master_file_name,
)


def write_master_file(folder: Path, stream: str, files: list[tuple[Path, int]],
                      fmt: FrameFormat, gid: int | None, attrs: dict[str, str | int]) -> Path:
    """(Re)write the master file over ``files`` = [(data file, complete frames)]."""
    final = folder / master_file_name(stream)
    temporary = folder / f".{final.name}.tmp"
    temporary.unlink(missing_ok=True)
    create_private_file(temporary, gid)
    try:
        with h5py.File(temporary, "w", libver="latest") as f:
            f.attrs.update({"default": "entry", "creator": "asapo_hpc",
                            "asapo_hpc_layout": LAYOUT_VERSION, **attrs})
            entry = f.create_group("entry")
            entry.attrs.update({"NX_class": "NXentry", "default": "data"})
            data = f.create_group(DATA_GROUP)
            paths = image_dataset_paths(fmt.parts)
            data.attrs.update({"NX_class": "NXdata", "signal": paths[0].rsplit("/", 1)[1]})
            for path in paths:
                _add_virtual(f, path, files, fmt.frame_shape, fmt.dtype)
            _add_virtual(f, MESSAGE_ID_DATASET, files, (), np.dtype(np.uint64))
            _add_virtual(f, TIMESTAMP_DATASET, files, (), np.dtype(np.int64))
        os.replace(temporary, final)
    finally:
        temporary.unlink(missing_ok=True)
    return final


def _add_virtual(f: h5py.File, path: str, files: list[tuple[Path, int]],
                 frame_shape: tuple[int, ...], dtype: np.dtype) -> None:
    total = sum(frames for _, frames in files)
    layout = h5py.VirtualLayout(shape=(total, *frame_shape), dtype=dtype)
    start = 0
    for file_path, frames in files:
        # The source's extent may exceed `frames` (a killed writer's file): map only these.
        source = h5py.VirtualSource(f"./{file_path.name}", path, shape=(frames, *frame_shape),
                                    dtype=dtype)
        layout[start:start + frames] = source
        start += frames
    f.create_virtual_dataset(path, layout, fillvalue=0)
