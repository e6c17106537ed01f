"""Reading a pipeline's results back: profiles from HDF5, latencies from the catalog.

An ``azint`` stage's output source is recorded by the node service like any frames source:
``<data_root>/<beamtime>/<source>/<stream>/<stream>_master.h5`` (virtual datasets over the
numbered data files) holds ``/entry/data/data`` of shape (frames, 3, npt) — rows radial,
intensity, sigma (``spec.RESULT_ROWS``) — and ``/entry/data/message_id``. The unit and the
per-stage ``trace`` of every frame are in the catalog's metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asapo_hpc.errors import AsapoDataNotInCacheError


@dataclass
class Profiles:
    """I(q) of every frame of a stream, ordered by frame id."""

    ids: np.ndarray
    radial: np.ndarray
    intensity: np.ndarray
    sigma: np.ndarray


def stream_files(data_root: Path, beamtime: str, source: str, stream: str) -> list[Path]:
    """The numbered data files of a recorded stream (not the master file)."""
    folder = Path(data_root) / beamtime / source / stream
    return sorted(p for p in folder.glob(f"{stream}_*.h5") if "master" not in p.name)


def read_frames(data_root: Path, beamtime: str, source: str, stream: str,
                dataset: str = "/entry/data/data") -> tuple[np.ndarray, np.ndarray]:
    """(ids, frames) of one recorded image dataset, over every data file, sorted by id."""
    import h5py
    import hdf5plugin  # noqa: F401  (registers the bslz4 / zstd filters)

    files = stream_files(data_root, beamtime, source, stream)
    if not files:
        raise AsapoDataNotInCacheError(
            f"no HDF5 files of {source}/{stream} under {Path(data_root) / beamtime}")
    ids, frames = [], []
    for path in files:
        with h5py.File(path, "r") as f:
            ids.append(f["/entry/data/message_id"][()])
            frames.append(f[dataset][()])
    all_ids, all_frames = np.concatenate(ids), np.concatenate(frames)
    order = np.argsort(all_ids, kind="stable")
    return all_ids[order], all_frames[order]


def read_profiles(data_root: Path, beamtime: str, source: str, stream: str) -> Profiles:
    """The radial profiles an azint stage produced, as the node service stored them."""
    ids, frames = read_frames(data_root, beamtime, source, stream)
    return Profiles(ids, frames[:, 0], frames[:, 1], frames[:, 2])


def stage_latencies(catalog_path: Path, source: str, stream: str) -> dict[str, np.ndarray]:
    """Per stage (and "total": first input to last output), latencies in seconds of every
    frame, from the ``trace`` metadata of the final output's catalog records."""
    from asapo_hpc.catalog import Catalog

    catalog = Catalog(catalog_path)
    try:
        records = catalog.query_messages(source, stream, "_id > 0")
    finally:
        catalog.close()
    out: dict[str, list[float]] = {}
    for record in records:
        trace = record.meta_dict().get("trace") or []
        for stage, t_in, t_out in trace:
            out.setdefault(stage, []).append((t_out - t_in) / 1e9)
        if trace:
            out.setdefault("total", []).append((trace[-1][2] - trace[0][1]) / 1e9)
    return {k: np.asarray(v) for k, v in out.items()}


def percentiles(values: np.ndarray, qs: tuple[float, ...] = (50, 90, 99)) -> dict[str, float]:
    """{"p50": ..} of ``values`` (NaN when empty)."""
    if len(values) == 0:
        return {f"p{q:g}": float("nan") for q in qs}
    return {f"p{q:g}": float(np.percentile(values, q)) for q in qs}
