"""Synthetic powder frames: rings where Bragg puts them, Poisson noise, reproducible, fast path."""

from __future__ import annotations

import numpy as np
import pytest

from asapo_hpc.detectors.frames import PowderFrames, cubic_d_spacings, ring_positions_deg
from asapo_hpc.detectors.lambda9m import Lambda9MLayout, ModuleGeometry
from asapo_hpc.errors import AsapoWrongInputError
from asapo_hpc.geometry.poni import PoniGeometry

SMALL = dict(module_shape=(64, 96), chip_shape=(32, 32), large_pixel_factor=3)


def layout(bit_depth: int = 12) -> Lambda9MLayout:
    modules = [ModuleGeometry(f"m{i}", (110 * (i % 2), 80 * (i // 2), 0)) for i in range(4)]
    return Lambda9MLayout(modules, bit_depth=bit_depth, **SMALL)


def geometry(lay: Lambda9MLayout) -> PoniGeometry:
    rows, cols = lay.stitched_shape(True)
    return PoniGeometry(dist=0.05, poni1=rows * 55e-6 / 2, poni2=cols * 55e-6 / 2,
                        wavelength=1e-10)


def frames(bit_depth: int = 12, **kwargs) -> PowderFrames:
    lay = layout(bit_depth)
    return PowderFrames(lay, geometry(lay), **kwargs)


def test_cubic_d_spacings_skip_sums_that_are_not_three_squares():
    d = cubic_d_spacings(1.0, 8)
    np.testing.assert_allclose(1 / d**2, [1, 2, 3, 4, 5, 6, 8, 9])
    assert ring_positions_deg([1e-10], 1e-10)[0] == pytest.approx(60.0)
    assert ring_positions_deg([0.4e-10], 1e-10).size == 0  # beyond 180°: no ring


def test_rings_sit_at_the_bragg_angles():
    pf = frames(d_spacings=[12e-10], ring_fwhm_deg=0.3, background=0.0)
    lay, geo = pf.layout, pf.geometry
    p1, p2, _ = lay.stack_centers()
    tth = geo.radial("2th_deg", p1, p2)
    brightest = np.unravel_index(np.argmax(pf.expected / lay.area_factor()), pf.expected.shape)
    assert tth[brightest] == pytest.approx(pf.rings_deg[0], abs=0.1)
    assert pf.rings_deg[0] == pytest.approx(np.rad2deg(2 * np.arcsin(1 / 24)))


def test_wide_pixels_collect_photons_for_their_area():
    pf = frames(d_spacings=[], background=10.0)  # flat background only
    ratio = pf.expected[0] / pf.geometry.solid_angle(*pf.layout.stack_centers()[:2])[0]
    np.testing.assert_allclose(ratio, 10.0 * pf.layout.area_factor(), rtol=1e-5)


def test_frames_are_poisson_around_the_expectation():
    pf = frames(bank_size=2, background=50.0, d_spacings=[])
    frame = pf.module_frames(0).astype(np.float64)
    normal = pf.layout.area_factor() == 1
    residual = (frame - pf.expected)[:, normal]
    lam = pf.expected[:, normal]
    assert abs(residual.mean()) < 0.2
    assert np.var(residual / np.sqrt(lam)) == pytest.approx(1.0, abs=0.05)


def test_frames_are_reproducible_and_differ_from_each_other():
    a, b = frames(seed=5), frames(seed=5)
    np.testing.assert_array_equal(a.module_frames(3), b.module_frames(3))
    assert not np.array_equal(a.module_frames(3), a.module_frames(4))
    assert not np.array_equal(a.module_frames(3), frames(seed=6).module_frames(3))


@pytest.mark.parametrize("bit_depth, dtype", [(12, np.uint16), (24, np.uint32), (6, np.uint8)])
def test_dtype_follows_the_bit_depth(bit_depth, dtype):
    frame = frames(bit_depth, bank_size=1).module_frames(0)
    assert frame.dtype == dtype and frame.shape == (4, 64, 96)
    assert frame.max() <= 2**bit_depth - 1


def test_fill_writes_into_a_caller_buffer():
    pf = frames()
    out = np.zeros(pf.shape, pf.dtype)
    assert pf.fill(out, 7) is out
    np.testing.assert_array_equal(out, pf.module_frames(7))
    assert len(pf.module_frame_list(7)) == 4
    with pytest.raises(AsapoWrongInputError, match="out must be"):
        pf.fill(np.zeros(pf.shape, np.uint32), 0)
    with pytest.raises(AsapoWrongInputError, match="out must be"):
        pf.fill(np.zeros((3, 64, 96), pf.dtype), 0)


def test_bad_parameters_are_rejected():
    with pytest.raises(AsapoWrongInputError):
        frames(bank_size=0)
    with pytest.raises(AsapoWrongInputError):
        frames(ring_fwhm_deg=0)
