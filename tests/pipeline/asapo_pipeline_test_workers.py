"""User-function workers for the pipeline tests (imported by the spawned stage processes)."""

from __future__ import annotations

import numpy as np


def explode(parts: list[np.ndarray], meta: dict, fail_at: int = 2) -> np.ndarray:
    """Sum the image; raise on frame ``fail_at``."""
    if meta.get("frame") == fail_at:
        raise ValueError(f"boom at frame {fail_at}")
    return np.array([float(parts[0].sum())])
