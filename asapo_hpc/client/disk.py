"""Reading stored messages back from disk: the catalog says where, ``FrameReader`` reads.

The client's disk tier. ``read_by_id(beamtime, source, stream, id)`` is what
``Consumer.get_by_id`` falls back to when the message left the ring: it returns a
``StoredMessage`` with the message's bytes exactly as the producer sent them (uint8;
``array(dtype, shape)`` views them as a frame) and its catalog record (name, metadata,
timestamp, dataset part). Dataset messages are read part by part with
``DiskReader.read_dataset``.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asapo_hpc.catalog import Catalog, MessageRecord
from asapo_hpc.errors import AsapoDataNotInCacheError
from asapo_hpc.sink import FrameReader

DATA_ROOT_ENV = "ASAPO_HPC_DATA_ROOT"
CATALOG_NAME = "catalog.sqlite"  # <data root>/catalog.sqlite unless the node says otherwise


def catalog_path_for(data_root: str | os.PathLike | None = None) -> Path:
    """The catalog of a node's data root: `data_root`, else $ASAPO_HPC_DATA_ROOT, else
    ./asapo_data."""
    root = data_root or os.environ.get(DATA_ROOT_ENV) or "./asapo_data"
    return Path(root) / CATALOG_NAME


@dataclass(frozen=True)
class StoredMessage:
    """A message read back from disk: its bytes and its catalog record."""

    data: np.ndarray
    record: MessageRecord

    @property
    def id(self) -> int:
        return self.record.data_id

    @property
    def meta(self) -> dict[str, Any]:
        return self.record.meta_dict()

    def array(self, dtype: Any, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """The bytes as an array of `dtype` (and `shape`), without a copy."""
        arr = self.data.view(dtype)
        return arr.reshape(shape) if shape is not None else arr


class DiskReader:
    """Reads messages from a node's catalog and HDF5 files; thread-safe."""

    def __init__(self, catalog_path: str | os.PathLike):
        self.catalog_path = Path(catalog_path)
        self._catalog = Catalog(self.catalog_path)
        self._frames = FrameReader()

    def read(self, source: str, stream: str, data_id: int) -> StoredMessage:
        """Message `data_id` of `stream`. The catalog's errors pass through (end of stream,
        stream finished, no data); AsapoDataNotInCacheError when it is recorded but not on
        disk (not written yet, or its file is gone)."""
        return self._load(self._catalog.get_by_id(source, stream, data_id))

    def read_dataset(self, source: str, stream: str, data_id: int,
                     min_size: int = 0) -> list[StoredMessage]:
        """The parts of dataset `data_id`, by substream (the catalog's rules for partial
        datasets apply: AsapoPartialDataError below the full size)."""
        dataset = self._catalog.get_dataset_by_id(source, stream, data_id, min_size)
        return [self._load(part) for part in dataset.parts]

    def _load(self, record: MessageRecord) -> StoredMessage:
        if record.size == 0:
            return StoredMessage(np.zeros(0, np.uint8), record)
        if record.file_path is None or record.dataset_path is None \
                or record.frame_index is None:
            raise AsapoDataNotInCacheError(
                f"message {record.data_id} of stream {record.stream!r} ({record.source}) is in "
                "the catalog but not on disk yet: the sink has not stored it (is the node "
                "service running? see its sink_write_failed log lines)")
        frame = self._frames.read_at(record.file_path, record.dataset_path, record.frame_index)
        raw = np.ascontiguousarray(frame).reshape(-1).view(np.uint8)
        return StoredMessage(raw[:record.size], record)

    def close(self) -> None:
        self._frames.close()
        self._catalog.close()

    def __enter__(self) -> DiskReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_readers: dict[tuple[str, Path], DiskReader] = {}
_readers_lock = threading.Lock()


def read_by_id(beamtime: str, source: str, stream: str, data_id: int, *,
               catalog_path: str | os.PathLike | None = None,
               data_root: str | os.PathLike | None = None) -> StoredMessage:
    """Message `data_id` of (beamtime, source, stream) from disk.

    The catalog is `catalog_path`, else <data root>/catalog.sqlite with the data root from
    `data_root`, the environment variable ASAPO_HPC_DATA_ROOT, or ./asapo_data. Readers are
    cached per catalog.
    """
    path = Path(catalog_path) if catalog_path is not None else catalog_path_for(data_root)
    key = (beamtime, path.resolve())
    with _readers_lock:
        reader = _readers.get(key)
        if reader is None:
            if not path.exists():
                raise AsapoDataNotInCacheError(
                    f"no catalog at {path}: nothing of beamtime {beamtime!r} was stored there "
                    "(set ASAPO_HPC_DATA_ROOT to the node's data root)")
            reader = _readers[key] = DiskReader(path)
    return reader.read(source, stream, data_id)


def close_readers() -> None:
    """Close the readers ``read_by_id`` cached."""
    with _readers_lock:
        while _readers:
            _readers.popitem()[1].close()
