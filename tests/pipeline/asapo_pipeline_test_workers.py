"""User-function workers for the pipeline tests (imported by the spawned stage processes)."""

from __future__ import annotations

import numpy as np


def explode(parts: list[np.ndarray], meta: dict, fail_at: int = 2) -> np.ndarray:
    """Sum the image; raise on frame ``fail_at``."""
    if meta.get("frame") == fail_at:
        raise ValueError(f"boom at frame {fail_at}")
    return np.array([float(parts[0].sum())])


def where(parts: list[np.ndarray], meta: dict, path: str = "") -> np.ndarray:
    """Write the CPUs and Numba threads this process runs with to ``path``; sum the image."""
    import json
    import os

    import numba

    with open(path, "w") as f:
        json.dump({"cpus": sorted(os.sched_getaffinity(0)),
                   "threads": numba.get_num_threads()}, f)
    return np.array([float(parts[0].sum())])


def report_affinity(queue) -> None:
    """Process target: put the CPUs this process may run on."""
    import os

    queue.put(sorted(os.sched_getaffinity(0)))
