"""Which HDF5 writer a message goes to, and the arrays it is given.

Every stream of a source has one ``StreamWriter`` for its frames, in the folder
``<data root>/<beamtime>/<source>/<stream>/``: messages of the source's frame format
(``frame_shape`` x ``dtype``, ``parts`` parts per dataset) are stored as images there. In
``bytes`` format the first message of a stream fixes that writer's size (1-D uint8 arrays).
Any other message is not dropped: it is stored as 1-D uint8 arrays in a sibling folder
``<stream>.raw<size>`` (``<stream>.raw<size>x<parts>`` for datasets), one writer per size;
dataset parts of unequal size are zero-padded to the largest (the catalog keeps each part's
true size, and replay trims to it). Empty messages are only recorded in the catalog.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asapo_hpc.client import Message
from asapo_hpc.node.config import SourceConfig
from asapo_hpc.sink import SinkSettings, StreamWriter


@dataclass(frozen=True)
class FrameKey:
    """One writer: the stream it belongs to, its folder name and its frame format."""

    stream: str
    folder: str
    shape: tuple[int, ...]
    dtype: str
    parts: int


class WriterSet:
    """The open ``StreamWriter`` objects of one source, made on first use."""

    def __init__(self, data_root: Path, beamtime: str, source: SourceConfig,
                 settings: SinkSettings):
        self._data_root, self._beamtime = data_root, beamtime
        self._source, self._settings = source, settings
        self._writers: dict[FrameKey, StreamWriter] = {}
        self._bytes_size: dict[str, int] = {}  # bytes format: the stream's own writer's size

    def key_for(self, stream: str, sizes: Sequence[int]) -> FrameKey | None:
        """The writer for a message (one size) or dataset (one size per part); None when
        there is nothing to store (every part empty)."""
        size, parts = max(sizes), len(sizes)
        if size == 0:
            return None
        src = self._source
        if src.format == "frames" and parts == src.parts and all(
                s == src.frame_nbytes for s in sizes):
            return FrameKey(stream, stream, src.frame_shape, src.dtype, parts)
        uniform = all(s == size for s in sizes)
        if src.format == "bytes" and uniform and parts == src.parts:
            if self._bytes_size.setdefault(stream, size) == size:
                return FrameKey(stream, stream, (size,), "uint8", parts)
        suffix = f".raw{size}" + (f"x{parts}" if parts > 1 else "")
        return FrameKey(stream, stream + suffix, (size,), "uint8", parts)

    @staticmethod
    def arrays(key: FrameKey, messages: Sequence[Message | None]) -> list[np.ndarray]:
        """The arrays to submit: views into the ring where the format allows (no copy),
        copies for padded or missing parts (zeros)."""
        nbytes = int(np.prod(key.shape)) * np.dtype(key.dtype).itemsize
        out = []
        for msg in messages:
            data = None if msg is None else msg.data
            if data is None or len(data) != nbytes:
                padded = np.zeros(nbytes, np.uint8)
                if data is not None:
                    padded[:len(data)] = data
                data = padded
            out.append(data.view(key.dtype).reshape(key.shape))
        return out

    def writer(self, key: FrameKey) -> StreamWriter:
        """The writer of `key` (opened on first use; raises AsapoLocalIOError when the
        folder can't be written)."""
        writer = self._writers.get(key)
        if writer is None:
            writer = StreamWriter(self._data_root, self._beamtime, self._source.name,
                                  key.folder, self._settings, frame_shape=key.shape,
                                  dtype=key.dtype, parts=key.parts)
            self._writers[key] = writer
        return writer

    def discard(self, key: FrameKey, writer: StreamWriter) -> None:
        """Close `writer` after a write error, so the next use of `key` opens a new one."""
        if self._writers.get(key) is writer:
            del self._writers[key]
        writer.close()

    def close_stream(self, stream: str) -> None:
        """Close every writer of `stream` (its files are complete: the stream finished)."""
        for key in [k for k in self._writers if k.stream == stream]:
            self._writers.pop(key).close()
        self._bytes_size.pop(stream, None)

    def close_all(self) -> None:
        """Close every writer (each stores what it was given first)."""
        while self._writers:
            self._writers.popitem()[1].close()

    def backlog(self) -> int:
        """Frames handed to the writers and not yet stored or failed."""
        return sum(w.counters.frames_pending for w in self._writers.values())
