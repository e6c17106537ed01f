"""The azint pipeline stage integrating the detector's module parts (``from_modules``),
without a stitch stage."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest
from pyFAI.utils.mathutil import rwp

from asapo_hpc.detectors.frames import PowderFrames
from asapo_hpc.detectors.lambda9m import Lambda9MLayout
from asapo_hpc.detectors.simulator import default_geometry
from asapo_hpc.errors import AsapoWrongInputError
from asapo_hpc.pipeline import PipelineSpec, run_pipeline
from asapo_hpc.pipeline.results import read_profiles
from asapo_hpc.pipeline.spec import SourceSpec
from asapo_hpc.pipeline.workers import AzintWorker
from asapo_hpc.workers.stitch import Stitcher

LAYOUT = Path(__file__).resolve().parents[1] / "pipeline" / "small_layout.toml"
FRAMES = 4


@pytest.fixture(scope="module")
def layout() -> Lambda9MLayout:
    return Lambda9MLayout.from_toml(LAYOUT)


def raw_source(layout: Lambda9MLayout, shape=None) -> SourceSpec:
    return SourceSpec("raw", tuple(shape or layout.module_shape), "uint16", layout.n_parts)


def test_from_modules_stage_equals_the_worker_called_directly(shm_prefix, tmp_path, layout):
    options = {"npt": 64, "unit": "2th_deg", "from_modules": True}
    spec = PipelineSpec.from_dict({
        "beamtime": "bt", "data_root": str(tmp_path / "data"), "compression": "none",
        "detector": {"layout": str(LAYOUT)},
        "sources": [{"name": "raw"}, {"name": "profiles", "record": True}],
        "stages": [{"name": "azint", "worker": "azint", "input": "raw", "output": "profiles",
                    "output_stream": "{stream}_iq", "options": options}],
        "simulate": {"source": "raw", "frames": FRAMES, "stream": "scan"},
    })
    result = run_pipeline(spec)
    assert result.stage_frames == {"azint": FRAMES}
    assert multiprocessing.active_children() == []
    prof = read_profiles(spec.data_root, "bt", "profiles", "scan_iq")
    frames = PowderFrames(layout, default_geometry(layout))
    worker = AzintWorker({"layout": str(LAYOUT), **options}, raw_source(layout), LAYOUT.parent)
    for k in range(FRAMES):
        direct = worker.integrate(frames.module_frame_list(k))
        np.testing.assert_allclose(prof.radial[k], direct.radial, rtol=1e-12)
        np.testing.assert_allclose(prof.intensity[k], direct.intensity, rtol=1e-10)
        np.testing.assert_allclose(prof.sigma[k], direct.sigma, rtol=1e-10)
    assert prof.intensity.max() > 0


@pytest.mark.parametrize("method", ["bbox", "full"])
def test_from_modules_profile_agrees_with_the_large_pixel_stitched_one(layout, method):
    """Wide raw pixels at their true extent, normalised by their area, give the profile the
    vendor's large-pixel correction gives after stitching (full split: to 1e-3)."""
    opts = {"layout": str(LAYOUT), "npt": 64, "unit": "2th_deg", "method": method}
    parts = PowderFrames(layout, default_geometry(layout)).module_frame_list(0)
    ours = AzintWorker({**opts, "from_modules": True}, raw_source(layout), LAYOUT.parent)
    image = Stitcher(layout, large_pixels=True, output="float32")(parts)
    stitched = AzintWorker(opts, SourceSpec("img", image.shape, "float32"), LAYOUT.parent)
    a, b = ours.integrate(parts), stitched.integrate(image)
    np.testing.assert_allclose(a.radial, b.radial, rtol=1e-9)
    assert rwp((b.radial, a.intensity), (b.radial, b.intensity)) < 3
    if method == "full":
        np.testing.assert_allclose(a.intensity, b.intensity, rtol=1e-3)
    # without the area normalisation the wide pixels' bins stand out
    plain = ours.integrator.integrate1d(parts, 64, **{**ours.kwargs, "flat": None})
    assert np.abs(plain.intensity / b.intensity - 1).max() > 10 * np.abs(
        a.intensity / b.intensity - 1).max()


def test_from_modules_masks_bad_pixels_and_applies_flatfields(layout, tmp_path):
    rng = np.random.default_rng(5)
    mask = np.zeros(layout.module_shape, bool)
    mask[10:20, 30:40] = True
    flat = rng.uniform(0.5, 1.5, layout.module_shape).astype(np.float32)
    flat[0, 0] = 0.0  # a dead pixel: masked, not an infinite weight
    np.save(tmp_path / "mask.npy", mask)
    np.save(tmp_path / "flat.npy", flat)
    text = LAYOUT.read_text().replace(
        'name = "m2"', 'name = "m2"\nmask = "mask.npy"\nflatfield = "flat.npy"')
    (tmp_path / "layout.toml").write_text(text)
    lay = Lambda9MLayout.from_toml(tmp_path / "layout.toml")
    opts = {"layout": "layout.toml", "npt": 64, "from_modules": True}
    worker = AzintWorker(opts, raw_source(lay), tmp_path)
    parts = PowderFrames(lay, default_geometry(lay)).module_frame_list(0)
    res = worker.integrate(parts)
    assert res.count.sum() == lay.n_parts * mask.size - mask.sum() - 1
    assert np.all(np.isfinite(res.intensity))
    bare = AzintWorker({**opts, "apply_mask": False, "apply_flatfield": False},
                       raw_source(lay), tmp_path).integrate(parts)
    assert bare.count.sum() == lay.n_parts * mask.size
    # the flat is 1 / flatfield times the wide-pixel area
    with np.errstate(divide="ignore"):
        np.testing.assert_allclose(worker.flat[1], lay.area_factor() / flat)


def test_from_modules_accepts_large_pixel_corrected_parts(layout):
    worker = AzintWorker({"layout": str(LAYOUT), "npt": 32, "from_modules": True},
                         raw_source(layout, layout.corrected_module_shape), LAYOUT.parent)
    assert worker.integrator.detector.module_shape == layout.corrected_module_shape
    assert np.all(worker.flat == 1)


def test_from_modules_refuses_input_that_is_not_the_layouts_modules(layout):
    with pytest.raises(AsapoWrongInputError, match="from_modules"):
        AzintWorker({"layout": str(LAYOUT), "from_modules": True},
                    raw_source(layout, (64, 95)), LAYOUT.parent)
    with pytest.raises(AsapoWrongInputError, match="from_modules = true"):
        AzintWorker({"layout": str(LAYOUT)}, raw_source(layout), LAYOUT.parent)
