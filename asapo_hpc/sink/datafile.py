"""One HDF5 data file of the sink: create it (securely, SWMR), append frames, scan it back."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (registers the bitshuffle and zstd filters with HDF5)
import numpy as np

from asapo_hpc.sink.codecs import Compression, dataset_filter_options
from asapo_hpc.sink.layout import (
    DATA_GROUP,
    LAYOUT_VERSION,
    MESSAGE_ID_DATASET,
    TIMESTAMP_DATASET,
    image_dataset_paths,
)

_INDEX_CHUNK = 1024  # message ids / timestamps per chunk
BUILDING_SUFFIX = ".building"


def create_private_file(path: Path, gid: int | None) -> None:
    """Create an empty file 0600, or 0660 owned by group ``gid``; fail if it exists."""
    mode = 0o600 if gid is None else 0o660
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, mode)
    try:
        if gid is not None:
            os.fchown(fd, -1, gid)
        os.fchmod(fd, mode)  # the umask may have removed bits we want
    finally:
        os.close(fd)


def fsync_path(path: Path) -> None:
    """Flush a file's (or folder's) data and metadata to the device."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class FrameFormat:
    """What every frame of a writer looks like."""

    frame_shape: tuple[int, ...]
    dtype: np.dtype
    parts: int


class DataFile:
    """A data file open for appending, in SWMR mode once its objects exist.

    HDF5 needs every object created before SWMR starts; after that only appends and
    ``flush()`` are allowed, and readers opened with ``swmr=True`` follow the file.
    """

    def __init__(self, path: Path, number: int, fmt: FrameFormat, compression: Compression,
                 level: int, gid: int | None, attrs: dict[str, str | int]):
        self.path = path
        self.number = number
        self.frames = 0
        self.dataset_paths = image_dataset_paths(fmt.parts)
        self._offset_tail = (0,) * len(fmt.frame_shape)
        self._frame_shape = tuple(fmt.frame_shape)
        # Built under a hidden name and linked into place once in SWMR mode: a writer killed
        # before that leaves no file that HDF5 marks "open for writing" under the real name.
        building = path.with_name(f".{path.name}{BUILDING_SUFFIX}")
        building.unlink(missing_ok=True)
        create_private_file(building, gid)
        self._file = h5py.File(building, "w", libver="latest")  # truncating keeps the mode
        try:
            self._images = self._create_layout(fmt, compression, level, attrs)
            self._ids = self._file[MESSAGE_ID_DATASET]
            self._timestamps = self._file[TIMESTAMP_DATASET]
            self._file.swmr_mode = True
            os.link(building, path)  # fails rather than replace an existing file
        except BaseException:
            self._file.close()
            raise
        finally:
            building.unlink(missing_ok=True)

    def _create_layout(self, fmt: FrameFormat, compression: Compression, level: int,
                       attrs: dict[str, str | int]) -> list[h5py.Dataset]:
        f = self._file
        f.attrs.update({"default": "entry", "creator": "asapo_hpc",
                        "asapo_hpc_layout": LAYOUT_VERSION, "file_number": self.number, **attrs})
        entry = f.create_group("entry")
        entry.attrs.update({"NX_class": "NXentry", "default": "data"})
        data = f.create_group(DATA_GROUP)
        data.attrs.update({"NX_class": "NXdata",
                           "signal": self.dataset_paths[0].rsplit("/", 1)[1]})
        filters = dataset_filter_options(compression, level)
        images = [f.create_dataset(name, shape=(0, *fmt.frame_shape), dtype=fmt.dtype,
                                   maxshape=(None, *fmt.frame_shape),
                                   chunks=(1, *fmt.frame_shape), **filters)
                  for name in self.dataset_paths]
        for name, dtype in ((MESSAGE_ID_DATASET, np.uint64), (TIMESTAMP_DATASET, np.int64)):
            f.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype,
                             chunks=(_INDEX_CHUNK,), fillvalue=0)
        return images

    def append(self, frames_chunks: list[list], message_ids: list[int],
               timestamps: list[int]) -> int:
        """Append frames (each a list of one stored chunk per part); return the first index.

        The extent grows first and the message ids are written last, so a frame whose id
        reads 0 (the fill value) or whose chunk is missing was never completed.
        """
        first = self.frames
        end = first + len(frames_chunks)
        # h5py's low-level calls: the high-level resize and slice assignment cost ~4x more
        # Python, and that Python holds the GIL the compression threads wait for
        for dset in self._images:
            dset.id.set_extent((end, *self._frame_shape))
        for dset in (self._ids, self._timestamps):
            dset.id.set_extent((end,))
        for index, chunks in enumerate(frames_chunks, start=first):
            offset = (index, *self._offset_tail)
            for dset, chunk in zip(self._images, chunks, strict=True):
                dset.id.write_direct_chunk(offset, chunk)
        _write_rows(self._timestamps, first, np.asarray(timestamps, dtype=np.int64))
        _write_rows(self._ids, first, np.asarray(message_ids, dtype=np.uint64))
        self.frames = end
        return first

    def flush(self) -> None:
        """Make everything appended so far visible to SWMR readers and to a later resume."""
        self._file.flush()

    def close(self) -> None:
        """Flush and close; the HDF5 handle is gone even when this raises."""
        try:
            self._file.flush()
        finally:
            self._file.close()


def _write_rows(dset: h5py.Dataset, first: int, values: np.ndarray) -> None:
    """``dset[first:first + len(values)] = values`` of a 1-D dataset, low-level."""
    file_space = dset.id.get_space()
    file_space.select_hyperslab((first,), (len(values),))
    dset.id.write(h5py.h5s.create_simple((len(values),)), file_space, values)


@dataclass(frozen=True)
class StoredFile:
    """The complete frames of a data file found on disk."""

    number: int
    path: Path
    dataset_paths: tuple[str, ...]
    message_ids: np.ndarray  # of the complete frames; frame index i holds message_ids[i]


def scan_data_file(path: Path, number: int) -> StoredFile:
    """Read which frames of ``path`` are complete (all chunks present and id set).

    Works on files left by a killed writer: such files open read-only (SWMR) and their
    complete frames form a prefix; anything after the first incomplete frame is ignored.
    """
    with h5py.File(path, "r", swmr=True) as f:
        data = f[DATA_GROUP]
        images = [data[name] for name in data if name not in ("message_id", "timestamp_ns")]
        images.sort(key=lambda d: d.name)
        ids = f[MESSAGE_ID_DATASET][()]
        extent = min([len(ids), *(d.shape[0] for d in images)])
        complete = _complete_prefix(images, ids, extent)
        return StoredFile(number, path, tuple(d.name for d in images), ids[:complete])


def _complete_prefix(images: list[h5py.Dataset], ids: np.ndarray, extent: int) -> int:
    unset = np.flatnonzero(ids[:extent] == 0)
    complete = int(unset[0]) if len(unset) else extent
    if all(d.id.get_num_chunks() == d.shape[0] for d in images):
        return complete  # every chunk inside the extent exists: no holes (one call each)
    for index in range(complete):  # only files of a killed writer get here
        if not all(_chunk_present(d, index) for d in images):
            return index
    return complete


def _chunk_present(dset: h5py.Dataset, index: int) -> bool:
    info = dset.id.get_chunk_info_by_coord((index,) + (0,) * (dset.ndim - 1))
    return info.byte_offset is not None
