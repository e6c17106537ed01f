"""The demo end to end on a few full-size Lambda 9M frames: HDF5 files and a PNG are left."""

from __future__ import annotations

import io

import h5py
import hdf5plugin  # noqa: F401
import numpy as np

from asapo_hpc.cli.demo import run_demo
from asapo_hpc.pipeline.results import read_profiles


def test_demo_leaves_raw_and_processed_hdf5_and_a_png(shm_prefix, shm_names, tmp_path):
    out = io.StringIO()
    info = run_demo(frames=4, data_root=tmp_path / "demo", npt=300, out=out)
    text = out.getvalue()
    assert "throughput:" in text and "latency  stitch: p50" in text and "PNG:" in text
    assert "cpu    stitch:" in text and "cpu     azint:" in text and "cpu  simulate:" in text
    assert shm_names(shm_prefix) == []  # the demo removed its rings itself
    raw_file = next(p for p in info["files"]["raw"] if "master" not in p.name)
    with h5py.File(raw_file, "r") as f:
        assert f["/entry/data/module_12"].shape == (4, 512, 1536)
        assert sorted(f["/entry/data/message_id"][()]) == [1, 2, 3, 4]
        assert f["/entry/data/module_01"][1].max() > 0
    prof = read_profiles(tmp_path / "demo", "demo", "profiles", "default")
    assert prof.intensity.shape == (4, 300) and np.all(np.isfinite(prof.intensity))
    assert prof.intensity.max() > 10 * np.median(prof.intensity[prof.intensity > 0])  # rings
    png = info["png"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
