"""Where the sink puts things: folders, file names, the NXmx-like layout, frame locations.

A stream's files live in ``<data root>/<beamtime>/<source>/<stream>/`` and are named
``<stream>_000001.h5``, ``<stream>_000002.h5``, ... (numbered from 1). Each data file holds::

    /entry                      NX_class = NXentry
    /entry/data                 NX_class = NXdata, signal = first image dataset
    /entry/data/data            (frames, *frame_shape)   one-part messages
    /entry/data/module_01 ...   (frames, *frame_shape)   dataset messages: part k -> module_kk
    /entry/data/message_id      (frames,) uint64         0 = frame not complete
    /entry/data/timestamp_ns    (frames,) int64          the message's timestamp (ns)

Chunks are one frame each; frames are appended along axis 0, and the frame index is the
same in every dataset of the file. So part k (counting from 1, as ASAPO's dataset
substreams do) of the message at frame index i is ``/entry/data/module_{k:02d}[i]``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asapo_hpc.errors import AsapoWrongInputError

LAYOUT_VERSION = 1
DATA_GROUP = "/entry/data"
SINGLE_DATASET = f"{DATA_GROUP}/data"
MESSAGE_ID_DATASET = f"{DATA_GROUP}/message_id"
TIMESTAMP_DATASET = f"{DATA_GROUP}/timestamp_ns"
LOCK_FILE_NAME = ".asapo_sink.lock"
_FILE_NUMBER_DIGITS = 6


def image_dataset_paths(parts: int) -> tuple[str, ...]:
    """The image dataset of each part, in part order (one dataset for one-part messages)."""
    if parts == 1:
        return (SINGLE_DATASET,)
    return tuple(f"{DATA_GROUP}/module_{k:02d}" for k in range(1, parts + 1))


def check_path_component(kind: str, name: str) -> str:
    """Refuse names that would leave the data root or make odd folders."""
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name
            or "\0" in name or name.startswith(".")):
        raise AsapoWrongInputError(
            f"{kind} name {name!r} can't be a folder name: use a non-empty name without '/', "
            "NUL or a leading '.'"
        )
    return name


def stream_folder(data_root: str | os.PathLike, beamtime: str, source: str, stream: str) -> Path:
    """``<data root>/<beamtime>/<source>/<stream>``, each name checked."""
    return (Path(data_root) / check_path_component("beamtime", beamtime)
            / check_path_component("data source", source)
            / check_path_component("stream", stream))


def data_file_name(stream: str, number: int) -> str:
    """``<stream>_000001.h5`` for ``number`` 1."""
    return f"{stream}_{number:0{_FILE_NUMBER_DIGITS}d}.h5"


def master_file_name(stream: str) -> str:
    """The master file that exposes all data files of a stream through virtual datasets."""
    return f"{stream}_master.h5"


def existing_data_files(folder: Path, stream: str) -> list[tuple[int, Path]]:
    """The stream's data files already in ``folder`` as (number, path), by number."""
    pattern = re.compile(re.escape(stream) + r"_(\d{" + str(_FILE_NUMBER_DIGITS) + r",})\.h5")
    found = []
    if folder.is_dir():
        for entry in folder.iterdir():
            match = pattern.fullmatch(entry.name)
            if match:
                found.append((int(match.group(1)), entry))
    return sorted(found)


@dataclass(frozen=True, slots=True)
class PartLocation:
    """Where one stored frame (or one part of a dataset message) lies."""

    file_path: str
    dataset_path: str
    frame_index: int


@dataclass(frozen=True, slots=True)
class FrameLocation:
    """Where a written message lies: its parts share the file and the frame index.

    ``dataset_paths[k - 1]`` holds part k. The catalog stores one ``PartLocation`` per part
    (``part(k)``) or this whole record (``to_dict`` / ``from_dict``).
    """

    message_id: int
    file_path: str
    dataset_paths: tuple[str, ...]
    frame_index: int

    @property
    def parts(self) -> int:
        """Number of parts (1 for a plain message)."""
        return len(self.dataset_paths)

    def part(self, k: int = 1) -> PartLocation:
        """Location of part ``k`` (counting from 1)."""
        if not 1 <= k <= len(self.dataset_paths):
            raise AsapoWrongInputError(
                f"message {self.message_id} has parts 1..{len(self.dataset_paths)}, not {k}"
            )
        return PartLocation(self.file_path, self.dataset_paths[k - 1], self.frame_index)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"message_id": self.message_id, "file_path": self.file_path,
                "dataset_paths": list(self.dataset_paths), "frame_index": self.frame_index}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> FrameLocation:
        """Inverse of ``to_dict``."""
        return cls(int(record["message_id"]), str(record["file_path"]),
                   tuple(record["dataset_paths"]), int(record["frame_index"]))
