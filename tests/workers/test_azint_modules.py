"""Radial integration straight from unstitched module data, against stitching and pyFAI.

A small Lambda-like layout (6 modules turned and flipped every way, gaps, wide chip-junction
pixels) whose pixel size is a power of two: every pixel corner is then exact in float32, the
precision pyFAI keeps explicit corners in, so pyFAI places each pixel exactly where we do and
no-split counts can be compared bin for bin.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyFAI.detectors
import pytest
from pyFAI.integrator.azimuthal import AzimuthalIntegrator as PyFAIIntegrator
from pyFAI.utils.mathutil import rwp

from asapo_hpc.detectors.lambda9m import Lambda9MLayout, ModuleGeometry, Orientation
from asapo_hpc.errors import AsapoWrongInputError
from asapo_hpc.geometry import ModuleStackDetector, PoniGeometry
from asapo_hpc.workers.azint import AzimuthalIntegrator
from asapo_hpc.workers.stitch import Stitcher

PIXEL = 2.0**-14  # 61 µm, exact in float32
NPT = 200
GEOMETRIES = {
    # PONI on a pixel of module m1, detector tilted
    "tilted": PoniGeometry(0.05, 40.3 * PIXEL, 60.7 * PIXEL, 0.05, -0.08, 0.3, 1.2e-10),
    # beam off the detector, strongly tilted
    "off-centre": PoniGeometry(0.08, -0.004, 0.021, -0.2, 0.1, -1.0, 0.7e-10),
}
PYFAI_METHOD = {
    "no": ("no", "histogram", "cython"),
    "bbox": ("bbox", "csr", "cython"),
    "full": ("full", "csr", "cython"),
}


def make_layout(**changes) -> Lambda9MLayout:
    """2 x 3 modules of 32 x 96 raw pixels (36 x 104 corrected), 6-pixel gaps."""
    turns = [Orientation(0), Orientation(1, False, True), Orientation(2, True, False),
             Orientation(3), Orientation(0, True, True), Orientation(2)]
    modules, col = [], 0
    for i, o in enumerate(turns):
        row = 0 if i < 3 else 110
        if i == 3:
            col = 0
        h, w = o.shape((36, 104))
        modules.append(ModuleGeometry(f"m{i}", (col, row + (104 - h) // 2, 0), o))
        col += w + 6
    kwargs = dict(module_shape=(32, 96), chip_shape=(16, 32), large_pixel_factor=3,
                  pixel_size=(PIXEL, PIXEL))
    return Lambda9MLayout(modules, **{**kwargs, **changes})


@pytest.fixture(scope="module")
def layout():
    return make_layout()


@pytest.fixture(scope="module")
def stack(layout):
    rng = np.random.default_rng(11)
    return rng.poisson(300, (layout.n_parts, *layout.module_shape)).astype(np.uint16)


def pyfai_for(g: PoniGeometry, corners: np.ndarray) -> PyFAIIntegrator:
    pdet = pyFAI.detectors.Detector(PIXEL, PIXEL, max_shape=corners.shape[:2])
    pdet.set_pixel_corners(np.ascontiguousarray(corners, np.float32))
    return PyFAIIntegrator(dist=g.dist, poni1=g.poni1, poni2=g.poni2, rot1=g.rot1,
                           rot2=g.rot2, rot3=g.rot3, wavelength=g.wavelength, detector=pdet)


def place(layout: Lambda9MLayout, stack: np.ndarray) -> np.ndarray:
    """Module arrays into the assembled image (no large-pixel split), any dtype, gaps 1."""
    image = np.ones(layout.stitched_shape(False), stack.dtype)
    for part, (m, sl) in enumerate(zip(layout.active_modules, layout.module_slices(),
                                       strict=True)):
        image[sl] = m.orientation.apply(stack[part])
    return image


def assert_same(ours, theirs, rtol=1e-6):
    np.testing.assert_allclose(ours.radial, theirs.radial, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(ours.count, theirs.count)
    np.testing.assert_allclose(ours.sum_signal, theirs.sum_signal, rtol=rtol)
    np.testing.assert_allclose(ours.sum_variance, theirs.sum_variance, rtol=rtol)
    np.testing.assert_allclose(ours.sum_normalization, theirs.sum_normalization, rtol=rtol)
    np.testing.assert_allclose(ours.intensity, theirs.intensity, rtol=rtol)
    np.testing.assert_allclose(ours.sigma, theirs.sigma, rtol=rtol)


# ------------------------------------------------------------------------------- geometry
def test_stack_detector_places_raw_pixels_where_the_stitched_image_has_them(layout):
    det = layout.stack_detector()
    assert isinstance(det, ModuleStackDetector) and det.shape == (6 * 32, 96)
    np.testing.assert_array_equal(det.corners(), layout.stack_corners().reshape(*det.shape, 4, 3))
    stitched = layout.stitched_corners(large_pixels=False)
    corners = det.corners().reshape(6, 32, 96, 4, 3)
    for part, (m, sl) in enumerate(zip(layout.active_modules, layout.module_slices(),
                                       strict=True)):
        # the same pixel as a set of corners (orientation reorders A, B, C, D)
        ours = np.sort(m.orientation.apply(corners[part]), axis=2)
        np.testing.assert_array_equal(ours, np.sort(stitched[sl], axis=2))
    c1, c2 = det.centers()
    np.testing.assert_array_equal(c1, det.corners()[..., 1].mean(axis=2))
    np.testing.assert_array_equal(c2, det.corners()[..., 2].mean(axis=2))


def test_corrected_stack_detector_tiles_the_regular_grid(layout):
    det = layout.stack_detector(large_pixels=True)
    assert det.module_shape == layout.corrected_module_shape
    c1, c2 = det.centers()
    # every corrected pixel centre sits at the centre of a regular grid cell of its footprint
    for part, (m, (rs, cs)) in enumerate(zip(layout.active_modules, layout.module_slices(True),
                                             strict=True)):
        rows = slice(part * 36, (part + 1) * 36)
        i = m.orientation.apply(c1[rows]) / PIXEL - 0.5
        j = m.orientation.apply(c2[rows]) / PIXEL - 0.5
        np.testing.assert_array_equal(i, np.arange(rs.start, rs.stop)[:, None] + 0 * i)
        np.testing.assert_array_equal(j, np.arange(cs.start, cs.stop)[None, :] + 0 * j)


# ------------------------------------------------------------- stack vs stitched image
@pytest.mark.parametrize("name", list(GEOMETRIES))
@pytest.mark.parametrize("radial_range", [(3.0, 40.0), (0.0, 90.0)])
def test_no_split_from_modules_equals_stitched(layout, stack, name, radial_range):
    """Stitching without large-pixel split maps each raw pixel to one stitched pixel: the
    same pixels at the same places, so the same profile.

    With a given radial range: an automatic one spans every pixel of the image (pyFAI's
    histogram convention), masked gap pixels included, so it differs between the two.
    """
    g = GEOMETRIES[name]
    mask = np.zeros(stack.shape, bool)
    mask[2, 5:9, 10:30] = True
    layout = layout.replace(modules=[dataclasses.replace(m, mask=mask[i]) for i, m in
                                     enumerate(layout.modules)])
    image = Stitcher(layout, large_pixels=False, output="input")(stack)
    flat = np.random.default_rng(3).uniform(0.8, 1.2, stack.shape).astype(np.float32)
    flat_image = place(layout, flat)
    stitched = AzimuthalIntegrator(g, layout.stitched_detector(large_pixels=False))
    modules = AzimuthalIntegrator(g, layout.stack_detector())
    kw = dict(unit="2th_deg", radial_range=radial_range, polarization_factor=0.9)
    want = stitched.integrate1d(image, NPT, mask=layout.stitched_mask(), flat=flat_image, **kw)
    for data in (stack, list(stack)):  # one (n, rows, cols) array, or the dataset's parts
        got = modules.integrate1d(data, NPT, mask=layout.stack_mask(), flat=flat, **kw)
        assert_same(got, want)
        assert got.count.sum() == stack.size - mask.sum() or radial_range[1] < 90


@pytest.mark.parametrize("method", ["bbox", "full"])
def test_split_from_modules_equals_stitched(layout, stack, method):
    g = GEOMETRIES["tilted"]
    image = Stitcher(layout, large_pixels=False, output="input")(stack)
    stitched = AzimuthalIntegrator(g, layout.stitched_detector(large_pixels=False))
    modules = AzimuthalIntegrator(g, layout.stack_detector())
    want = stitched.integrate1d(image, NPT, unit="q_nm^-1", method=method,
                                mask=layout.stitched_mask())
    for data in (stack, list(stack), list(stack.astype(np.float32))):
        got = modules.integrate1d(data, NPT, unit="q_nm^-1", method=method)
        np.testing.assert_allclose(got.radial, want.radial, rtol=1e-12)
        np.testing.assert_allclose(got.count, want.count, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got.intensity, want.intensity, rtol=1e-5)


def test_corrected_stack_equals_corrected_stitched_image(layout, stack):
    """Large-pixel-corrected modules (virtual pixels) integrated unstitched."""
    g = GEOMETRIES["tilted"]
    image = Stitcher(layout, large_pixels=True, output="float32")(stack)
    corrected = np.empty((layout.n_parts, *layout.corrected_module_shape), np.float32)
    index = np.arange(corrected[0].size).reshape(corrected[0].shape)
    for part, (m, sl) in enumerate(zip(layout.active_modules, layout.module_slices(True),
                                       strict=True)):
        corrected[part].reshape(-1)[m.orientation.apply(index)] = image[sl]
    want = AzimuthalIntegrator(g, layout.stitched_detector(True)).integrate1d(
        image, NPT, unit="r_mm", radial_range=(1.0, 30.0), mask=layout.stitched_mask(True))
    got = AzimuthalIntegrator(g, layout.stack_detector(True)).integrate1d(
        list(corrected), NPT, unit="r_mm", radial_range=(1.0, 30.0))
    assert_same(got, want)


# ------------------------------------------------------------------------------ vs pyFAI
@pytest.mark.parametrize("name", list(GEOMETRIES))
@pytest.mark.parametrize("unit", ["2th_deg", "q_nm^-1", "r_mm"])
def test_no_split_from_modules_matches_pyfai_on_the_module_corners(layout, stack, name, unit):
    """pyFAI given our module pixel corners: identical counts, sums to 1e-6."""
    g = GEOMETRIES[name]
    det = layout.stack_detector()
    pai = pyfai_for(g, det.corners())
    frame = stack.reshape(det.shape)
    mask = np.zeros(det.shape, bool)
    mask[40:45, 7:60] = True
    theirs = pai.integrate1d(frame, NPT, unit=unit, method=PYFAI_METHOD["no"],
                             error_model="poisson", mask=mask, polarization_factor=0.5)
    ours = AzimuthalIntegrator(g, det).integrate1d(list(stack), NPT, unit=unit, mask=mask,
                                                   polarization_factor=0.5)
    assert_same(ours, theirs)


@pytest.mark.parametrize("method", ["bbox", "full"])
@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_split_from_modules_matches_pyfai(layout, stack, name, method):
    g = GEOMETRIES[name]
    det = layout.stack_detector()
    pai = pyfai_for(g, det.corners())
    theirs = pai.integrate1d(stack.reshape(det.shape), NPT, unit="q_nm^-1",
                             method=PYFAI_METHOD[method], error_model="poisson")
    ours = AzimuthalIntegrator(g, det).integrate1d(list(stack), NPT, unit="q_nm^-1",
                                                   method=method)
    np.testing.assert_allclose(ours.radial, theirs.radial, rtol=1e-6)
    assert rwp((theirs.radial, ours.intensity), (theirs.radial, theirs.intensity)) < 3
    # as test_azint: the bins around the beam centre, where chi spans 2pi, left out
    np.testing.assert_allclose(ours.intensity[2:], theirs.intensity[2:], rtol=1e-3)
    np.testing.assert_allclose(ours.count[2:], theirs.count[2:], rtol=5e-3)


def test_dummy_in_parts_matches_whole_frame(layout, stack):
    g = GEOMETRIES["off-centre"]
    ai = AzimuthalIntegrator(g, layout.stack_detector())
    data = stack.astype(np.float32)
    data[1, ::5, ::7] = np.nan
    data[4, ::3, ::2] = -1
    for method in ("no", "bbox"):
        whole = ai.integrate1d(data, NPT, method=method, dummy=-1)
        parts = ai.integrate1d(list(data), NPT, method=method, dummy=-1)
        np.testing.assert_array_equal(parts.count, whole.count)
        np.testing.assert_allclose(parts.intensity, whole.intensity, rtol=1e-12)
        assert whole.count.sum() < stack.size - 100


def test_parts_that_do_not_stack_are_refused(layout, stack):
    ai = AzimuthalIntegrator(GEOMETRIES["tilted"], layout.stack_detector())
    with pytest.raises(AsapoWrongInputError, match="do not stack"):
        ai.integrate1d(list(stack[:5]), NPT)
    with pytest.raises(AsapoWrongInputError, match="one dtype"):
        ai.integrate1d([*stack[:5], stack[5].astype(np.uint32)], NPT)
    with pytest.raises(AsapoWrongInputError, match="does not match"):
        ai.integrate1d(stack[:, :16], NPT)


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_cake_from_modules_matches_pyfai_on_the_module_corners(layout, stack, name):
    g = GEOMETRIES[name]
    det = layout.stack_detector()
    theirs = pyfai_for(g, det.corners()).integrate2d_ng(
        stack.reshape(det.shape), 100, 72, unit="q_nm^-1", method=PYFAI_METHOD["no"],
        error_model="poisson")
    ours = AzimuthalIntegrator(g, det).integrate2d(list(stack), 100, 72, unit="q_nm^-1")
    np.testing.assert_allclose(ours.azimuthal, theirs.azimuthal, rtol=1e-9, atol=1e-9)
    assert_same(ours, theirs)
    assert ours.count.sum() == stack.size
