"""2-D (cake) integration against pyFAI's integrate2d_ng(..., ("no", "histogram", "cython"))."""

from __future__ import annotations

import numpy as np
import pyFAI.detectors
import pytest
from pyFAI.integrator.azimuthal import AzimuthalIntegrator as PyFAIIntegrator

from asapo_hpc.errors import AsapoWrongInputError
from asapo_hpc.geometry import PixelDetector, PoniGeometry
from asapo_hpc.workers.azint import AzimuthalIntegrator, Integrate2dResult
from asapo_hpc.workers.azint.cake import azimuth_range_rad

SHAPE = (256, 300)
PIXEL = (1e-4, 1.2e-4)
GEOMETRIES = {
    "centred": PoniGeometry(0.1, 0.0128, 0.018),
    "tilted": PoniGeometry(0.1, 0.004, 0.012, 0.05, -0.08, 0.3, 1.2e-10),
    "off-centre": PoniGeometry(0.15, -0.01, 0.045, -0.2, 0.1, -1.0, 0.7e-10),
}
PYFAI_NO = ("no", "histogram", "cython")
NR, NA = 120, 36


def make_pair(g: PoniGeometry):
    pdet = pyFAI.detectors.Detector(*PIXEL, max_shape=SHAPE)
    pai = PyFAIIntegrator(dist=g.dist, poni1=g.poni1, poni2=g.poni2, rot1=g.rot1, rot2=g.rot2,
                          rot3=g.rot3, wavelength=g.wavelength, detector=pdet)
    return AzimuthalIntegrator(g, PixelDetector.regular(SHAPE, *PIXEL)), pai


@pytest.fixture(scope="module")
def frame():
    return np.random.default_rng(42).poisson(200, SHAPE).astype(np.uint16)


@pytest.fixture(scope="module", params=list(GEOMETRIES))
def pair(request):
    return make_pair(GEOMETRIES[request.param])


def assert_cake_matches(ours: Integrate2dResult, theirs, rtol=1e-6):
    assert ours.intensity.shape == theirs.intensity.shape == (len(theirs.azimuthal),
                                                              len(theirs.radial))
    np.testing.assert_allclose(ours.radial, theirs.radial, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ours.azimuthal, theirs.azimuthal, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(ours.count, theirs.count)
    np.testing.assert_allclose(ours.sum_signal, theirs.sum_signal, rtol=rtol)
    np.testing.assert_allclose(ours.sum_normalization, theirs.sum_normalization, rtol=rtol)
    np.testing.assert_allclose(ours.intensity, theirs.intensity, rtol=rtol)
    if theirs.sigma is not None:
        np.testing.assert_allclose(ours.sum_variance, theirs.sum_variance, rtol=rtol)
        np.testing.assert_allclose(ours.sigma, theirs.sigma, rtol=rtol)


@pytest.mark.parametrize("unit", ["2th_deg", "q_nm^-1", "r_mm"])
def test_cake_matches_pyfai(pair, frame, unit):
    ai, pai = pair
    ours = ai.integrate2d(frame, NR, NA, unit=unit)
    theirs = pai.integrate2d_ng(frame, NR, NA, unit=unit, method=PYFAI_NO,
                                error_model="poisson")
    assert_cake_matches(ours, theirs)
    assert ours.count.sum() == frame.size  # automatic ranges hold every pixel
    assert ours.engine.endswith("histogram2d_numba")


@pytest.mark.parametrize("ranges", [((1.0, 10.0), (-100.0, 50.0)),
                                    ((0.5, 30.0), (-180.0, 180.0)),
                                    (None, (0.0, 90.0))])
def test_cake_ranges_match_pyfai(frame, ranges):
    ai, pai = make_pair(GEOMETRIES["tilted"])
    rr, ar = ranges
    ours = ai.integrate2d(frame, NR, NA, unit="2th_deg", radial_range=rr, azimuth_range=ar)
    theirs = pai.integrate2d_ng(frame, NR, NA, unit="2th_deg", radial_range=rr,
                                azimuth_range=ar, method=PYFAI_NO, error_model="poisson")
    assert_cake_matches(ours, theirs)
    assert 0 < ours.count.sum() < frame.size or ranges[0] == (0.5, 30.0)


def test_cake_corrections_and_dummy_match_pyfai(frame):
    ai, pai = make_pair(GEOMETRIES["off-centre"])
    rng = np.random.default_rng(6)
    data = frame.astype(np.float32)
    data[::7, ::5] = -5.0
    data[::11, ::3] = np.nan
    kw = dict(mask=rng.random(SHAPE) < 0.05,
              dark=rng.uniform(0, 5, SHAPE).astype(np.float32),
              flat=rng.uniform(0.8, 1.2, SHAPE).astype(np.float32),
              polarization_factor=0.95, dummy=-5.0, normalization_factor=2.5)
    ours = ai.integrate2d(data, NR, NA, unit="q_nm^-1", **kw)
    theirs = pai.integrate2d_ng(data, NR, NA, unit="q_nm^-1", method=PYFAI_NO,
                                error_model="poisson", **kw)
    assert_cake_matches(ours, theirs, rtol=2e-6)
    assert ours.count.sum() < 0.95 * frame.size


def test_chi_discontinuity_at_zero_matches_pyfai(frame):
    """chi in [0, 360): ranges through 180° become possible. pyFAI's automatic chi range
    with the discontinuity at 0 loses chi > 180° (its engine clips to (-180, 180]), so the
    comparison takes explicit ranges."""
    ai, pai = make_pair(GEOMETRIES["centred"])
    pai.setChiDiscAtZero()
    for ar in [(100.0, 300.0), (0.0, 360.0), (170.0, 190.0)]:
        ours = ai.integrate2d(frame, NR, NA, unit="2th_deg", azimuth_range=ar, chi_disc=0)
        theirs = pai.integrate2d_ng(frame, NR, NA, unit="2th_deg", azimuth_range=ar,
                                    method=PYFAI_NO, error_model="poisson")
        assert_cake_matches(ours, theirs)
        assert ours.count.sum() > 0
    whole = ai.integrate2d(frame, NR, NA, chi_disc=0)
    assert whole.count.sum() == frame.size
    assert 0 <= whole.azimuthal.min() and whole.azimuthal.max() < 360


def test_cake_summed_over_chi_is_the_1d_profile(frame):
    ai, _ = make_pair(GEOMETRIES["tilted"])
    rr = (2.0, 20.0)
    one = ai.integrate1d(frame, NR, unit="2th_deg", radial_range=rr, polarization_factor=0.5)
    two = ai.integrate2d(frame, NR, 90, unit="2th_deg", radial_range=rr,
                         polarization_factor=0.5)
    np.testing.assert_array_equal(two.count.sum(axis=0), one.count)
    np.testing.assert_array_equal(two.sum_signal.sum(axis=0), one.sum_signal)  # integers
    np.testing.assert_allclose(two.sum_normalization.sum(axis=0), one.sum_normalization,
                               rtol=1e-12)
    np.testing.assert_array_equal(two.radial, one.radial)
    # both engines stay cached side by side
    assert set(ai._engines) == {("no", "histogram"), ("no", "histogram", "2d")}


def test_cake_from_module_parts_equals_the_whole_frame(frame):
    g = GEOMETRIES["tilted"]
    corners = PixelDetector.regular(SHAPE, *PIXEL).corners()
    ai = AzimuthalIntegrator(g, PixelDetector.from_corners(corners))
    whole = ai.integrate2d(frame, NR, NA)
    parts = ai.integrate2d(list(frame.reshape(4, 64, 300)), NR, NA)
    np.testing.assert_array_equal(parts.count, whole.count)
    np.testing.assert_array_equal(parts.sum_signal, whole.sum_signal)


def test_azimuth_range_conversion_and_refusals(frame):
    deg = np.rad2deg
    assert deg(azimuth_range_rad((-180, 180), 180)) == pytest.approx((-180, 180))
    assert deg(azimuth_range_rad((-180, -180), 180)) == pytest.approx((-180, 180))  # a turn
    assert deg(azimuth_range_rad((180, 360), 0)) == pytest.approx((180, 360))
    assert deg(azimuth_range_rad((-90, 0), 0)) == pytest.approx((270, 360))
    ai, _ = make_pair(GEOMETRIES["centred"])
    with pytest.raises(AsapoWrongInputError, match="crosses the chi discontinuity"):
        ai.integrate2d(frame, NR, NA, azimuth_range=(170, -170))
    with pytest.raises(AsapoWrongInputError, match="crosses the chi discontinuity at 0"):
        ai.integrate2d(frame, NR, NA, azimuth_range=(-10, 10), chi_disc=0)
    with pytest.raises(AsapoWrongInputError, match="no pixel splitting"):
        ai.integrate2d(frame, NR, NA, method="full")
    with pytest.raises(AsapoWrongInputError, match="chi_disc"):
        ai.integrate2d(frame, NR, NA, chi_disc=90)
    with pytest.raises(AsapoWrongInputError, match="npt_azim"):
        ai.integrate2d(frame, NR, 0)
