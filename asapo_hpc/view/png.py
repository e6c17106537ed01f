"""A plain numpy -> PNG encoder (RGB, 8 bit) and the colour map the view uses."""

from __future__ import annotations

import struct
import zlib
from functools import lru_cache

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def encode_png(rgb: np.ndarray, level: int = 3) -> bytes:
    """PNG bytes of an (h, w, 3) uint8 image (no row filter, zlib `level`)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"encode_png wants an (h, w, 3) uint8 array, got {rgb.dtype} "
                         f"{rgb.shape}")
    h, w = rgb.shape[:2]
    if h == 0 or w == 0:
        raise ValueError("encode_png: empty image")
    rows = np.empty((h, 1 + 3 * w), dtype=np.uint8)
    rows[:, 0] = 0  # filter type "none" on every scan line
    rows[:, 1:] = rgb.reshape(h, 3 * w)
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (_SIGNATURE + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(rows.tobytes(), level)) + _chunk(b"IEND", b""))


@lru_cache(maxsize=8)
def colormap(name: str = "viridis") -> np.ndarray:
    """A (256, 3) uint8 lookup table: matplotlib's map `name`, or grey if unavailable."""
    try:
        from matplotlib import colormaps

        lut = colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3]
        return np.ascontiguousarray(np.round(lut * 255), dtype=np.uint8)
    except (ImportError, KeyError):
        grey = np.arange(256, dtype=np.uint8)
        return np.stack([grey, grey, grey], axis=1)
