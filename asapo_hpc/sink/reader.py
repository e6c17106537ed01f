"""Read a stored frame back by its location: how ``get_by_id`` falls back to disk.

Compressed chunks are read with ``read_direct_chunk`` and decoded here (no HDF5 filter
pipeline, no type conversion); uncompressed ones with a plain read. Files are opened in SWMR
mode and kept open (a small LRU), so a reader follows files the sink is still writing.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import h5py
import hdf5plugin  # noqa: F401  (filters for datasets this module can't decode itself)
import numpy as np

from asapo_hpc.errors import AsapoDataNotInCacheError, AsapoLocalIOError, AsapoWrongInputError
from asapo_hpc.sink.codecs import Compression, compression_of_filters, decode_chunk
from asapo_hpc.sink.layout import FrameLocation, PartLocation

_FILTER_SKIPPED = 1  # bit 0 of a chunk's filter mask: the (only) filter was not applied


@dataclass
class _DatasetInfo:
    dataset: h5py.Dataset
    compression: Compression | None  # None: a filter we don't decode, let HDF5 do it
    frame_shape: tuple[int, ...]
    dtype: np.dtype


def _filters_of(dataset: h5py.Dataset) -> list[tuple[int, tuple[int, ...]]]:
    plist = dataset.id.get_create_plist()
    filters = [plist.get_filter(i) for i in range(plist.get_nfilters())]
    return [(filter_id, tuple(cd_values)) for filter_id, _flags, cd_values, _name in filters]


class FrameReader:
    """Returns frames given their ``FrameLocation`` / ``PartLocation``; thread-safe."""

    def __init__(self, max_open_files: int = 32):
        self.max_open_files = max_open_files
        self._files: OrderedDict[str, h5py.File] = OrderedDict()
        self._datasets: dict[tuple[str, str], _DatasetInfo] = {}
        self._lock = threading.Lock()

    def read(self, location: FrameLocation | PartLocation) -> np.ndarray:
        """The frame: ``frame_shape`` for one part, ``(parts, *frame_shape)`` for a dataset."""
        if isinstance(location, PartLocation):
            return self.read_at(location.file_path, location.dataset_path, location.frame_index)
        if location.parts == 1:
            return self.read_part(location, 1)
        return np.stack([self.read_part(location, k) for k in range(1, location.parts + 1)])

    def read_part(self, location: FrameLocation, part: int) -> np.ndarray:
        """Part ``part`` (counting from 1) of a stored message."""
        where = location.part(part)
        return self.read_at(where.file_path, where.dataset_path, where.frame_index)

    def read_at(self, file_path: str, dataset_path: str, frame_index: int) -> np.ndarray:
        """The frame at ``frame_index`` of ``dataset_path`` in ``file_path`` (catalog fields)."""
        if frame_index < 0:
            raise AsapoWrongInputError(f"frame index must be >= 0, got {frame_index}")
        with self._lock:  # h5py serialises its calls anyway; this also guards the caches
            info = self._dataset_info(file_path, dataset_path)
            self._check_extent(info, file_path, dataset_path, frame_index)
            return self._read_frame(info, f"{file_path}:{dataset_path}[{frame_index}]",
                                    frame_index)

    def close(self) -> None:
        """Close every cached file."""
        with self._lock:
            self._datasets.clear()
            while self._files:
                self._files.popitem()[1].close()

    def __enter__(self) -> FrameReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _dataset_info(self, file_path: str, dataset_path: str) -> _DatasetInfo:
        info = self._datasets.get((file_path, dataset_path))
        if info is not None:
            self._files.move_to_end(file_path)
            return info
        f = self._open(file_path)
        try:
            dataset = f[dataset_path]
        except KeyError:
            raise AsapoDataNotInCacheError(
                f"{file_path} has no dataset {dataset_path}; the catalog and the files disagree"
            ) from None
        info = _DatasetInfo(dataset, compression_of_filters(_filters_of(dataset)),
                            dataset.shape[1:], dataset.dtype)
        self._datasets[(file_path, dataset_path)] = info
        return info

    def _open(self, file_path: str) -> h5py.File:
        f = self._files.get(file_path)
        if f is not None:
            self._files.move_to_end(file_path)
            return f
        try:
            f = self._open_h5(file_path)
        except FileNotFoundError:
            raise AsapoDataNotInCacheError(
                f"{file_path} no longer exists: the message left the ring and its file is gone"
            ) from None
        except OSError as exc:
            raise AsapoLocalIOError(
                f"could not open {file_path}: {exc}; check it is readable by this user and an "
                "HDF5 file written by the sink"
            ) from exc
        self._files[file_path] = f
        while len(self._files) > self.max_open_files:
            old_path, old = self._files.popitem(last=False)
            self._datasets = {k: v for k, v in self._datasets.items() if k[0] != old_path}
            old.close()
        return f

    @staticmethod
    def _open_h5(file_path: str) -> h5py.File:
        try:
            return h5py.File(file_path, "r", swmr=True)
        except FileNotFoundError:
            raise
        except OSError:
            # HDF5 refuses a second SWMR handle on a file this process already has open
            # without SWMR (and files not written for SWMR); a plain handle works there.
            return h5py.File(file_path, "r")

    @staticmethod
    def _check_extent(info: _DatasetInfo, file_path: str, dataset_path: str, index: int) -> None:
        if index >= info.dataset.shape[0]:
            info.dataset.refresh()  # the writer may have appended since we opened the file
        if index >= info.dataset.shape[0]:
            raise AsapoDataNotInCacheError(
                f"{file_path}:{dataset_path} holds {info.dataset.shape[0]} frames, "
                f"not frame {index}"
            )

    @staticmethod
    def _read_frame(info: _DatasetInfo, where: str, index: int) -> np.ndarray:
        if info.compression in (None, Compression.NONE):
            return info.dataset[index]
        offset = (index,) + (0,) * len(info.frame_shape)
        try:
            filter_mask, chunk = info.dataset.id.read_direct_chunk(offset)
        except (OSError, RuntimeError) as exc:
            raise AsapoDataNotInCacheError(
                f"{where} was never completely written (its chunk is missing): {exc}"
            ) from exc
        compression = Compression.NONE if filter_mask & _FILTER_SKIPPED else info.compression
        return decode_chunk(chunk, compression, info.frame_shape, info.dtype, where)
