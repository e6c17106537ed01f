"""Chunk codecs of the sink: encode a frame into the exact bytes an HDF5 filter stores, and back.

Chunks are compressed outside HDF5 (in worker threads) and written with
``write_direct_chunk``, so the bytes must be what the filters registered by hdf5plugin
expect when any HDF5 tool later reads the file:

- ``bslz4``: HDF5 filter 32008 (bitshuffle), cd_values ``(0, 2)`` = (auto block size, LZ4),
  as ``hdf5plugin.Bitshuffle(cname="lz4")``. A chunk is a 12-byte header (uncompressed size
  as big-endian uint64, block size *in bytes* as big-endian uint32) followed by the LZ4
  blocks of bitshuffled data that ``bitshuffle.compress_lz4`` returns.
- ``zstd``: HDF5 filter 32015, cd_values ``(level,)``, as ``hdf5plugin.Zstd(clevel=level)``.
  A chunk is one zstd frame.
- ``none``: no filter; the chunk is the frame's bytes in native order.

Both compressors (``bitshuffle``, ``zstandard``) release the GIL, so a thread pool scales.
"""

from __future__ import annotations

import os
import threading
from enum import Enum

import numpy as np
import zstandard

from asapo_hpc.errors import AsapoLocalIOError, AsapoWrongInputError


def _import_bitshuffle_single_threaded():
    """Import bitshuffle with its (private, in the wheel) OpenMP runtime at one thread.

    Parallelism comes from our thread pool; an OpenMP team per call on top of it
    oversubscribes the cores, and its spin-waiting threads slowed reads 3-6x here when the
    cores were shared. libgomp reads these variables once, when bitshuffle loads it.
    """
    saved = {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    os.environ.update({"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"})
    try:
        import bitshuffle
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return bitshuffle


bitshuffle = _import_bitshuffle_single_threaded()

BITSHUFFLE_FILTER_ID = 32008
ZSTD_FILTER_ID = 32015
_BITSHUFFLE_LZ4 = 2  # cd_values[4] of the bitshuffle filter: 2 = LZ4, 3 = zstd
_BSLZ4_HEADER_BYTES = 12
# bitshuffle's own default block size: ~8 KiB per block, a multiple of 8 elements.
_BSLZ4_TARGET_BLOCK_BYTES = 8192


class Compression(str, Enum):
    """How the sink stores chunks."""

    NONE = "none"
    BSLZ4 = "bslz4"
    ZSTD = "zstd"

    @classmethod
    def parse(cls, value: str | Compression) -> Compression:
        """Accept an enum member or its name (``"none"``, ``"bslz4"``, ``"zstd"``)."""
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(c.value for c in cls)
            raise AsapoWrongInputError(
                f"unknown sink compression {value!r}; choose one of {names}"
            ) from None


def dataset_filter_options(compression: Compression, level: int) -> dict:
    """Keyword arguments for ``create_dataset`` declaring the filter of ``compression``."""
    if compression is Compression.BSLZ4:
        return {"compression": BITSHUFFLE_FILTER_ID, "compression_opts": (0, _BITSHUFFLE_LZ4)}
    if compression is Compression.ZSTD:
        return {"compression": ZSTD_FILTER_ID, "compression_opts": (int(level),)}
    return {}


def compression_of_filters(filters: list[tuple[int, tuple[int, ...]]]) -> Compression | None:
    """The codec matching a dataset's filter pipeline, None when this module can't decode it.

    ``filters`` holds (filter id, cd_values) pairs in pipeline order.
    """
    if not filters:
        return Compression.NONE
    if len(filters) != 1:
        return None
    filter_id, cd_values = filters[0]
    if filter_id == BITSHUFFLE_FILTER_ID and len(cd_values) > 4:
        return Compression.BSLZ4 if cd_values[4] == _BITSHUFFLE_LZ4 else None
    if filter_id == ZSTD_FILTER_ID:
        return Compression.ZSTD
    return None


def _bslz4_block_elements(itemsize: int) -> int:
    return max(128, (_BSLZ4_TARGET_BLOCK_BYTES // itemsize) // 8 * 8)


_thread_state = threading.local()


def _zstd_compressor(level: int) -> zstandard.ZstdCompressor:
    compressors = getattr(_thread_state, "zstd_compressors", None)
    if compressors is None:
        compressors = _thread_state.zstd_compressors = {}
    if level not in compressors:
        # One compressor per thread and level: a ZstdCompressor is not thread-safe.
        compressors[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return compressors[level]


def _zstd_decompressor() -> zstandard.ZstdDecompressor:
    dctx = getattr(_thread_state, "zstd_decompressor", None)
    if dctx is None:
        dctx = _thread_state.zstd_decompressor = zstandard.ZstdDecompressor()
    return dctx


def encode_chunk(frame: np.ndarray, compression: Compression, level: int = 3):
    """Return the stored bytes of one frame (a buffer; for ``none`` the contiguous frame)."""
    frame = np.ascontiguousarray(frame)
    if compression is Compression.NONE:
        return frame
    if compression is Compression.BSLZ4:
        block = _bslz4_block_elements(frame.itemsize)
        blocks = bitshuffle.compress_lz4(frame.reshape(-1), block)
        header = frame.nbytes.to_bytes(8, "big") + (block * frame.itemsize).to_bytes(4, "big")
        return b"".join((header, blocks))  # one copy (header + tobytes() made two)
    return _zstd_compressor(level).compress(frame)


def decode_chunk(
    chunk: bytes, compression: Compression, shape: tuple[int, ...], dtype: np.dtype, where: str
) -> np.ndarray:
    """Decode one stored chunk into a new writable array; ``where`` names it in errors."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    try:
        if compression is Compression.BSLZ4:
            return _decode_bslz4(chunk, shape, dtype, nbytes)
        if compression is Compression.ZSTD:
            raw = _zstd_decompressor().decompress(chunk, max_output_size=nbytes)
        else:
            raw = chunk
        if len(raw) != nbytes:
            raise ValueError(f"chunk holds {len(raw)} bytes, expected {nbytes}")
        # bytearray makes the result writable, as every other read path returns.
        return np.frombuffer(bytearray(raw), dtype=dtype).reshape(shape)
    except (ValueError, RuntimeError, zstandard.ZstdError) as exc:
        raise AsapoLocalIOError(
            f"corrupt {compression.value} chunk at {where}: {exc}; the file is damaged, "
            "restore it from a copy or reprocess without this frame"
        ) from exc


def _decode_bslz4(chunk: bytes, shape: tuple[int, ...], dtype: np.dtype, nbytes: int):
    if len(chunk) < _BSLZ4_HEADER_BYTES:
        raise ValueError(f"chunk of {len(chunk)} bytes is shorter than its header")
    stored_nbytes = int.from_bytes(chunk[:8], "big")
    block_bytes = int.from_bytes(chunk[8:12], "big")
    if stored_nbytes != nbytes or block_bytes % dtype.itemsize:
        raise ValueError(f"header says {stored_nbytes} bytes in blocks of {block_bytes} bytes, "
                         f"expected {nbytes} bytes of {dtype}")
    payload = np.frombuffer(chunk, dtype=np.uint8, offset=_BSLZ4_HEADER_BYTES)
    flat = bitshuffle.decompress_lz4(payload, (nbytes // dtype.itemsize,), dtype,
                                     block_bytes // dtype.itemsize)
    return flat.reshape(shape)
