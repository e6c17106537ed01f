"""Radial integration: Numba kernels vs NumPy references, and the integrator vs pyFAI."""

from __future__ import annotations

import contextlib
import logging

import numba
import numpy as np
import pyFAI.detectors
import pytest
from pyFAI.integrator.azimuthal import AzimuthalIntegrator as PyFAIIntegrator
from pyFAI.utils.mathutil import rwp

from asapo_hpc.errors import AsapoWrongInputError
from asapo_hpc.geometry import PixelDetector, PoniGeometry
from asapo_hpc.workers.azint import AzimuthalIntegrator, engines, kernels, reference

SHAPE = (256, 300)
PIXEL = (1e-4, 1.2e-4)
GEOMETRIES = {
    "centred": PoniGeometry(0.1, 0.0128, 0.018),
    "tilted": PoniGeometry(0.1, 0.004, 0.012, 0.05, -0.08, 0.3, 1.2e-10),
    "off-centre": PoniGeometry(0.15, -0.01, 0.045, -0.2, 0.1, -1.0, 0.7e-10),
}
UNITS = ["2th_deg", "q_nm^-1", "r_mm", "2th_rad"]
PYFAI_METHOD = {
    "no": ("no", "histogram", "cython"),
    "bbox": ("bbox", "csr", "cython"),
    "full": ("full", "csr", "cython"),
}
NPT = 300


def make_pair(g: PoniGeometry, shape=SHAPE):
    det = PixelDetector.regular(shape, *PIXEL)
    pdet = pyFAI.detectors.Detector(*PIXEL, max_shape=shape)
    pai = PyFAIIntegrator(
        dist=g.dist, poni1=g.poni1, poni2=g.poni2, rot1=g.rot1, rot2=g.rot2, rot3=g.rot3,
        wavelength=g.wavelength, detector=pdet,
    )
    return AzimuthalIntegrator(g, det), pai


@pytest.fixture(scope="module")
def frame():
    rng = np.random.default_rng(42)
    return rng.poisson(200, SHAPE).astype(np.uint16)


@pytest.fixture(scope="module", params=list(GEOMETRIES))
def pair(request):
    return make_pair(GEOMETRIES[request.param])


def assert_close_to_pyfai(ours, theirs, rtol=1e-6):
    np.testing.assert_allclose(ours.radial, theirs.radial, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(ours.count, theirs.count)
    np.testing.assert_allclose(ours.sum_signal, theirs.sum_signal, rtol=rtol)
    np.testing.assert_allclose(ours.sum_normalization, theirs.sum_normalization, rtol=rtol)
    np.testing.assert_allclose(ours.intensity, theirs.intensity, rtol=rtol)
    if theirs.sigma is not None:
        np.testing.assert_allclose(ours.sum_variance, theirs.sum_variance, rtol=rtol)
        np.testing.assert_allclose(ours.sigma, theirs.sigma, rtol=rtol)


# ----------------------------------------------------------------- kernels vs NumPy references
def test_bin_index_matches_reference_and_numpy_histogram():
    rng = np.random.default_rng(1)
    pos = np.concatenate([rng.uniform(-0.1, 1.1, 20000), np.linspace(0, 1, 101)])
    lo, hi, npt = 0.0, 1.0, 100
    out = kernels.bin_index(pos, np.ones(pos.size, bool), lo, hi,
                            reference.bin_edges(lo, hi, npt), npt, np.empty(pos.size, np.uint16))
    ref = reference.bin_index_reference(pos, lo, hi, npt)
    np.testing.assert_array_equal(out, ref)
    counts = np.bincount(out, minlength=npt + 1)[:npt]
    below = np.count_nonzero((pos < lo) & (pos > lo - (hi - lo) / npt))
    expected = np.histogram(pos, npt, range=(lo, hi))[0]
    expected[0] += below  # pyFAI's truncation toward zero
    np.testing.assert_array_equal(counts, expected)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.float32])
def test_histogram_kernels_match_reference(dtype):
    rng = np.random.default_rng(2)
    n, npt = 50000, 77
    raw = rng.integers(0, 50, n).astype(dtype)
    bins = rng.integers(0, npt + 1, n).astype(np.uint16)  # npt = excluded pixel
    norm = rng.uniform(0.5, 1.0, n).astype(np.float32)
    dark = rng.uniform(0, 2, n).astype(np.float32)
    dummy = 7.0
    if dtype == np.float32:
        raw[::97] = np.nan
    s, v, nn, c = reference.preprocess_reference(raw, dummy=dummy)
    ref = reference.histogram_reference(bins, npt, s, v, np.ones(n, np.float32), c)
    got = kernels.hist_checked(raw, bins, npt, norm, dark, True, np.float32(dummy),
                               np.float32(0), 2)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-12)
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-12)
    bad = (c == 0) & (bins < npt)
    np.testing.assert_allclose(got[2], np.bincount(bins[bad], norm[bad], npt + 1)[:npt],
                               rtol=1e-6)
    np.testing.assert_array_equal(got[4], np.bincount(bins[bad], minlength=npt + 1)[:npt])
    if dtype == np.uint16:
        sig, var = kernels.hist_packed(raw, bins, npt, 2)
        s, v, _, c = reference.preprocess_reference(raw)
        ref = reference.histogram_reference(bins, npt, s, v, np.ones(n, np.float32), c)
        np.testing.assert_array_equal(sig, ref[0])
        np.testing.assert_array_equal(var, ref[1])


def _random_pixels(n, rng):
    center = rng.uniform(0.0, 1.0, n)
    delta = rng.uniform(0.0, 0.03, n)
    corner_rad = center[:, None] + rng.uniform(-0.03, 0.03, (n, 4))
    corner_chi = rng.uniform(-np.pi, np.pi, n)[:, None] + np.array([0, 0.01, 0.012, 0.002])
    corner_chi = np.where(corner_chi > np.pi, corner_chi - 2 * np.pi, corner_chi)
    valid = rng.random(n) > 0.1
    return center, delta, corner_rad, corner_chi, valid


@pytest.mark.parametrize("nthreads", [1, 2])
def test_csr_builders_match_reference(nthreads):
    """Built in parallel pixel chunks, each bin's entries still in pixel order, on any
    thread count."""
    rng = np.random.default_rng(3)
    center, delta, crad, cchi, valid = _random_pixels(3001, rng)
    lo, hi, npt = 0.05, 0.95, 60
    with _threads(min(nthreads, numba.config.NUMBA_NUM_THREADS)):
        built = [kernels.bbox_csr(center, delta, valid, lo, hi, npt),
                 kernels.full_csr(crad, cchi, valid, lo, hi, npt)]
    refs = [reference.bbox_csr_reference(center, delta, valid, lo, hi, npt),
            reference.full_csr_reference(crad, cchi, valid, lo, hi, npt)]
    for got, ref in zip(built, refs, strict=True):
        np.testing.assert_array_equal(got[2], ref[2])
        np.testing.assert_array_equal(got[1], ref[1])
        np.testing.assert_allclose(got[0], ref[0], rtol=1e-6, atol=1e-7)


def test_full_split_conserves_pixel_weight():
    rng = np.random.default_rng(4)
    _, _, crad, cchi, valid = _random_pixels(2000, rng)
    data, indices, _ = kernels.full_csr(crad, cchi, valid, -1.0, 2.0, 50)
    per_pixel = np.bincount(indices, data.astype(np.float64), minlength=valid.size)
    np.testing.assert_allclose(per_pixel[valid], 1.0, rtol=1e-6)
    assert not per_pixel[~valid].any()


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_csr_pass_matches_reference_and_scipy(dtype):
    rng = np.random.default_rng(5)
    center, delta, _, _, valid = _random_pixels(5000, rng)
    data, indices, indptr = kernels.bbox_csr(center, delta, valid, 0.0, 1.0, 40)
    raw = rng.integers(0, 30, valid.size).astype(dtype)
    norm = rng.uniform(0.5, 1.0, valid.size).astype(np.float32)
    dark = np.zeros(valid.size, np.float32)
    got = kernels.csr_pass(raw, data, indices, indptr, norm, dark, True, False,
                           np.float32(0), np.float32(0))
    s, v, _, c = reference.preprocess_reference(raw)
    ref = reference.csr_integrate_reference(data, indices, indptr, s, v, norm, c)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-10)
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-10)
    from scipy.sparse import csr_matrix
    m = csr_matrix((data.astype(np.float64), indices, indptr), shape=(40, valid.size))
    np.testing.assert_allclose(got[0], m @ raw.astype(np.float64), rtol=1e-10)


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_split_modes_gather_when_bins_are_narrower_than_pixels(frame, dtype):
    """Most pixels over 3+ bins: the integrator gathers through the CSR matrix; same
    profile as the table passes, and pyFAI's within its tolerance."""
    data = frame.astype(dtype)
    npt = NPT  # centred: 2.8 listed entries a pixel; tilted: 0.4
    for name, gathers in (("centred", True), ("tilted", False)):
        ai, pai = make_pair(GEOMETRIES[name])
        ours = ai.integrate1d(data, npt, unit="2th_deg", method="bbox")
        corr = ai._corrections[("bbox", "csr")][1]
        assert corr.gather_is_faster == gathers
        table = kernels.split_pass_checked(data.ravel(), *corr.table, corr.norm, corr.dark,
                                           False, np.float32(0), np.float32(0), npt, 2)
        np.testing.assert_allclose(ours.sum_signal, table[0], rtol=1e-9)
        theirs = pai.integrate1d(data, npt, unit="2th_deg", method=PYFAI_METHOD["bbox"],
                                 error_model="poisson")
        assert rwp((theirs.radial, ours.intensity), (theirs.radial, theirs.intensity)) < 3


@pytest.mark.parametrize("method", ["bbox", "full"])
def test_checked_split_pass_equals_the_csr_gather(frame, method):
    """Float frames with NaN, infinities and dummies (in whole blocks and alone, in listed
    pixels near the centre and in masked ones): the pixel-table pass with checks gives
    :func:`kernels.csr_pass`'s six sums over the same matrix."""
    ai, _ = make_pair(GEOMETRIES["tilted"])
    mask = np.zeros(SHAPE, bool)
    mask[100:110] = True
    data = frame.astype(np.float32)
    flat = data.reshape(-1)
    flat[::13] = np.nan
    flat[5:200] = -1.0  # the dummy: whole blocks of it
    flat[1000:1003] = np.inf
    ai.integrate1d(data, NPT, unit="q_nm^-1", method=method, mask=mask, dummy=-1.0)
    corr = ai._corrections[(method, "csr")][1]
    assert corr.table[2].size > 0 or method == "bbox"  # listed pixels exercised (full)
    for dummy, delta in ((-1.0, 0.0), (-1.0, 0.5), (0.0, 0.0)):
        check = dummy != 0.0
        want = kernels.csr_pass(flat, *corr.matrix, corr.norm, corr.dark, True, check,
                                np.float32(dummy), np.float32(delta))
        for nthreads in (1, 2):
            got = kernels.split_pass_checked(flat, *corr.table, corr.norm, corr.dark, check,
                                             np.float32(dummy), np.float32(delta), NPT,
                                             nthreads)
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
        assert want[4].sum() > 0  # invalid pixels were found


@pytest.mark.parametrize("method", ["bbox", "full"])
def test_regular_grid_corners_computed_once_equal_explicit_corners(frame, method):
    """A regular grid computes radial and chi once per corner point (shared by up to four
    pixels); the same detector given by its explicit corners computes them per pixel.
    Same corner values (to the last bits numpy's vector loops may round) and profiles."""
    g = GEOMETRIES["tilted"]
    det = PixelDetector.regular(SHAPE, *PIXEL)
    explicit = PixelDetector.from_corners(det.corners())
    assert det.corner_grid() is not None and explicit.corner_grid() is None
    for unit in ("q_nm^-1", "2th_deg"):
        rad, chi = engines._corner_values(g, det, unit, True)
        rad_e, chi_e = engines._corner_values(g, explicit, unit, True)
        np.testing.assert_allclose(rad, rad_e, rtol=1e-14, atol=0)
        np.testing.assert_allclose(chi, chi_e, rtol=1e-14, atol=1e-15)
        ours = AzimuthalIntegrator(g, det).integrate1d(frame, NPT, unit=unit, method=method)
        theirs = AzimuthalIntegrator(g, explicit).integrate1d(frame, NPT, unit=unit,
                                                              method=method)
        np.testing.assert_allclose(ours.intensity, theirs.intensity, rtol=1e-12)
        np.testing.assert_allclose(ours.count, theirs.count, rtol=1e-12)


@pytest.mark.parametrize("method", ["bbox", "full"])
def test_integrator_equals_scipy_product_of_its_matrix(pair, frame, method):
    ai, _ = pair
    res = ai.integrate1d(frame, NPT, unit="q_nm^-1", method=method)
    m = ai._engines[("bbox" if method == "bbox" else "full", "csr")].scipy_matrix()
    sa = ai.geometry.solid_angle(*ai.detector.centers()).astype(np.float32).ravel()
    np.testing.assert_allclose(res.sum_signal, m @ frame.ravel().astype(np.float64), rtol=1e-9)
    np.testing.assert_allclose(res.sum_normalization, m @ sa.astype(np.float64), rtol=1e-9)
    np.testing.assert_allclose(res.count, m @ np.ones(frame.size), rtol=1e-9)


# --------------------------------------------------------------------------------- vs pyFAI
@pytest.mark.parametrize("unit", UNITS)
def test_no_split_matches_pyfai(pair, frame, unit):
    ai, pai = pair
    ours = ai.integrate1d(frame, NPT, unit=unit, method="no")
    theirs = pai.integrate1d(frame, NPT, unit=unit, method=PYFAI_METHOD["no"],
                             error_model="poisson")
    assert_close_to_pyfai(ours, theirs)
    assert ours.engine.endswith("no_histogram_numba") and ours.count.sum() == frame.size


@pytest.mark.parametrize("npt, quads", [(60, True), (3000, False)])
def test_no_split_quad_pass_or_one_pixel_pass_both_match_pyfai(frame, npt, quads):
    """Bins wider than pixels: the quad pass runs; bins narrower than pixels (most quads
    listed): the one-pixel pass. Both equal pyFAI and the one-pixel pass bit for bit."""
    ai, pai = make_pair(GEOMETRIES["off-centre"])
    ours = ai.integrate1d(frame, npt, unit="2th_deg", method="no")
    corr = ai._corrections[("no", "histogram")][1]
    tables = corr.quad_tables(0, frame.size)
    assert (tables is not None) == quads
    theirs = pai.integrate1d(frame, npt, unit="2th_deg", method=PYFAI_METHOD["no"],
                             error_model="poisson")
    assert_close_to_pyfai(ours, theirs)
    sig, var = kernels.hist_packed(frame.ravel(), corr.bins, npt, 2)
    np.testing.assert_array_equal(ours.sum_signal, sig)
    np.testing.assert_array_equal(ours.sum_variance, var)
    if quads:  # the few listed pixels: mask edges, quads across the beam centre
        assert tables[2].size < 0.05 * frame.size


@pytest.mark.parametrize("method", ["bbox", "full"])
@pytest.mark.parametrize("unit", UNITS[:3])
def test_split_methods_match_pyfai(pair, frame, unit, method):
    ai, pai = pair
    ours = ai.integrate1d(frame, NPT, unit=unit, method=method)
    theirs = pai.integrate1d(frame, NPT, unit=unit, method=PYFAI_METHOD[method],
                             error_model="poisson")
    np.testing.assert_allclose(ours.radial, theirs.radial, rtol=1e-6)
    # rwp on the common abscissa: edge extrapolation would otherwise dominate
    assert rwp((theirs.radial, ours.intensity), (theirs.radial, theirs.intensity)) < 3
    # the first bins hold the pixel around the beam centre, whose chi spans 2pi: there the
    # polygon in (radial, chi) is ill-defined and pyFAI's recentering differs from ours
    np.testing.assert_allclose(ours.intensity[2:], theirs.intensity[2:], rtol=1e-3)
    np.testing.assert_allclose(ours.count[2:], theirs.count[2:], rtol=5e-3)


def test_corrections_match_pyfai(frame):
    ai, pai = make_pair(GEOMETRIES["tilted"])
    rng = np.random.default_rng(6)
    mask = rng.random(SHAPE) < 0.05
    dark = rng.uniform(0, 5, SHAPE).astype(np.float32)
    flat = rng.uniform(0.8, 1.2, SHAPE).astype(np.float32)
    cases = [
        dict(mask=mask), dict(dark=dark), dict(flat=flat), dict(polarization_factor=0.95),
        dict(correct_solid_angle=False), dict(normalization_factor=2.5),
        dict(mask=mask, dark=dark, flat=flat, polarization_factor=-0.3),
    ]
    for kw in cases:
        pyfai_kw = {("correctSolidAngle" if k == "correct_solid_angle" else k): v
                    for k, v in kw.items()}
        for method in ("no", "bbox"):
            ours = ai.integrate1d(frame, NPT, unit="2th_deg", method=method, **kw)
            theirs = pai.integrate1d(frame, NPT, unit="2th_deg", method=PYFAI_METHOD[method],
                                     error_model="poisson", **pyfai_kw)
            if method == "no":
                assert_close_to_pyfai(ours, theirs, rtol=2e-6)
            else:
                np.testing.assert_allclose(ours.intensity, theirs.intensity, rtol=1e-4)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.float32])
def test_dummy_and_nan_match_pyfai(frame, dtype):
    """No split through the checked quad pass, full through the checked pixel table."""
    ai, pai = make_pair(GEOMETRIES["off-centre"])
    data = frame.astype(dtype)
    data[::7, ::5] = 65000  # dummy value
    if dtype == np.float32:
        data[::11, ::3] = np.nan
    for method in ("no", "full"):
        for delta in (None, 2.0):
            ours = ai.integrate1d(data, NPT, unit="r_mm", method=method, dummy=65000,
                                  delta_dummy=delta)
            theirs = pai.integrate1d(data, NPT, unit="r_mm", method=PYFAI_METHOD[method],
                                     error_model="poisson", dummy=65000, delta_dummy=delta)
            if method == "no":
                assert_close_to_pyfai(ours, theirs)
            else:
                np.testing.assert_allclose(ours.intensity, theirs.intensity, rtol=1e-4)
    assert "hist_quads_checked" in ai._threads and "hist_checked" not in ai._threads
    # the same frame without dummy: bins holding the 65000 pixels differ
    plain = ai.integrate1d(data, NPT, unit="r_mm", method="no")
    assert plain.count.sum() > ours.count.sum() or dtype == np.float32


def test_explicit_corners_with_gap_match_pyfai(frame):
    """Two modules with a 10-pixel gap and wider edge pixels, integrated unstitched."""
    g = GEOMETRIES["tilted"]
    base = PixelDetector.regular(SHAPE, *PIXEL).corners().copy()
    base[SHAPE[0] // 2:, :, :, 1] += 10 * PIXEL[0]  # second module further down
    base[:, -1, 2:4, 2] += 0.5 * PIXEL[1]  # last column 1.5 pixels wide
    det = PixelDetector.from_corners(base)
    pdet = pyFAI.detectors.Detector(*PIXEL, max_shape=SHAPE)
    pdet.set_pixel_corners(base.astype(np.float32))
    ai = AzimuthalIntegrator(g, det)
    pai = PyFAIIntegrator(dist=g.dist, poni1=g.poni1, poni2=g.poni2, rot1=g.rot1, rot2=g.rot2,
                          rot3=g.rot3, wavelength=g.wavelength, detector=pdet)
    for method in ("no", "bbox", "full"):
        ours = ai.integrate1d(frame, NPT, unit="q_nm^-1", method=method)
        theirs = pai.integrate1d(frame, NPT, unit="q_nm^-1", method=PYFAI_METHOD[method],
                                 error_model="poisson")
        assert rwp((theirs.radial, ours.intensity), (theirs.radial, theirs.intensity)) < 3
        if method == "no":
            np.testing.assert_allclose(ours.intensity, theirs.intensity, rtol=1e-5)
            assert np.abs(ours.count - theirs.count).sum() <= 4


def test_radial_range_and_no_error_model(frame):
    ai, pai = make_pair(GEOMETRIES["centred"])
    for method in ("no", "bbox", "full"):
        ours = ai.integrate1d(frame, 100, unit="2th_deg", radial_range=(2.0, 9.0),
                              method=method, error_model=None)
        theirs = pai.integrate1d(frame, 100, unit="2th_deg", radial_range=(2.0, 9.0),
                                 method=PYFAI_METHOD[method])
        assert ours.sigma is None
        np.testing.assert_allclose(ours.radial, theirs.radial, rtol=1e-9)
        np.testing.assert_allclose(ours.intensity, theirs.intensity, rtol=1e-5)


# ---------------------------------------------------------------------------- engine cache
def test_engine_cached_and_rebuilt_with_reason(frame, caplog):
    ai, _ = make_pair(GEOMETRIES["centred"])
    ai.integrate1d(frame, NPT, method="bbox")
    engine = ai._engines[("bbox", "csr")]
    ai.integrate1d(frame, NPT, method="bbox")
    assert ai._engines[("bbox", "csr")] is engine
    with caplog.at_level(logging.INFO, logger="asapo_hpc.workers.azint.integrator"):
        ai.integrate1d(frame, NPT + 1, method="bbox")
    assert "changed: npt" in caplog.text
    assert ai._engines[("bbox", "csr")] is not engine


def test_repeated_calls_follow_every_change_of_arguments_masks_and_geometry(frame):
    """The last call's engine key is reused only while nothing it depends on changed."""
    g = PoniGeometry(0.1, 0.0128, 0.018)
    ai, _ = make_pair(g)
    first = ai.integrate1d(frame, NPT)
    again = ai.integrate1d(frame, NPT)
    np.testing.assert_array_equal(again.intensity, first.intensity)
    assert again.radial is not first.radial  # callers may change their arrays
    with pytest.raises(AsapoWrongInputError, match="npt must be a positive integer"):
        ai.integrate1d(frame, True)  # equal to 1, still refused
    mask = np.zeros(SHAPE, bool)
    mask[:, :150] = True
    masked = ai.integrate1d(frame, NPT, mask=mask)
    assert masked.count.sum() == first.count.sum() / 2
    other = np.zeros(SHAPE, bool)  # another mask object: another key
    assert ai.integrate1d(frame, NPT, mask=other).count.sum() == first.count.sum()
    g.dist = 0.12  # the geometry changed in place
    moved = ai.integrate1d(frame, NPT)
    assert not np.allclose(moved.radial, first.radial)
    as_array = ai.integrate1d(frame, NPT, radial_range=np.array([1.0, 5.0]))  # not memoised
    as_tuple = ai.integrate1d(frame, NPT, radial_range=(1.0, 5.0))  # after an array: fine
    np.testing.assert_array_equal(as_tuple.intensity, as_array.intensity)
    assert ai.integrate1d(frame, 50, unit="q_nm^-1").radial.size == 50


# ---------------------------------------------------------------------------------- errors
def test_wrong_input_errors(frame):
    ai, _ = make_pair(GEOMETRIES["centred"])
    with pytest.raises(AsapoWrongInputError, match="unknown radial unit"):
        ai.integrate1d(frame, NPT, unit="chi_deg")
    with pytest.raises(AsapoWrongInputError, match="unknown integration method"):
        ai.integrate1d(frame, NPT, method="lut")
    with pytest.raises(AsapoWrongInputError, match="does not match detector shape"):
        ai.integrate1d(frame[:, :-1], NPT)
    with pytest.raises(AsapoWrongInputError, match="dark shape"):
        ai.integrate1d(frame, NPT, dark=np.zeros((2, 2)))
    for npt in (0, -5, 2.5):
        with pytest.raises(AsapoWrongInputError, match="npt must be a positive integer"):
            ai.integrate1d(frame, npt)
    with pytest.raises(AsapoWrongInputError, match="unknown error model"):
        ai.integrate1d(frame, NPT, error_model="azimuthal")
    with pytest.raises(AsapoWrongInputError, match="bad radial_range"):
        ai.integrate1d(frame, NPT, radial_range=(5.0, 1.0))


# ------------------------------------------------------------------ pixel-major split pass
def _thread_counts():
    return sorted({1, numba.config.NUMBA_NUM_THREADS})


@contextlib.contextmanager
def _threads(n):
    before = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(before)


def _random_csr(rng, npix=6000, npt=60):
    center, delta, crad, cchi, valid = _random_pixels(npix, rng)
    bbox = kernels.bbox_csr(center, delta, valid, 0.05, 0.95, npt)
    full = kernels.full_csr(crad, cchi, valid, 0.05, 0.95, npt)
    return bbox, full


def test_pair_weights_sum_to_one_in_float32():
    rng = np.random.default_rng(7)
    for data, indices, _ in _random_csr(rng):
        nper = np.bincount(indices)
        pairs = np.flatnonzero(nper == 2)
        order = np.argsort(indices, kind="stable")  # rows ascending within each pixel
        first = np.concatenate(([0], np.cumsum(nper)[:-1]))
        w = data[order]
        np.testing.assert_array_equal(w[first[pairs] + 1], np.float32(1) - w[first[pairs]])


def test_quantize_pairs_matches_reference_and_keeps_pixel_sums():
    rng = np.random.default_rng(12)
    one = kernels.WEIGHT_ONE
    for data, indices, indptr in _random_csr(rng):
        got = kernels.quantize_pairs(data, indices, indptr, 6000)
        np.testing.assert_array_equal(
            got, reference.quantize_pairs_reference(data, indices, indptr, 6000, one))
        assert (got != data).any()
        assert np.abs(got - data).max() <= 0.5 / one + 1e-7
        nper = np.bincount(indices, minlength=6000)
        sums = np.bincount(indices, got.astype(np.float64), minlength=6000)
        np.testing.assert_array_equal(sums[nper == 2], 1.0)  # pairs still sum to 1 exactly


def _quantized_csr(rng, npix=6000, npt=60):
    """The random matrices as the engines keep them: two-bin weights in fixed point."""
    return [(kernels.quantize_pairs(d, i, p, npix), i, p) for d, i, p in
            _random_csr(rng, npix, npt)]


def test_pixel_table_matches_reference():
    rng = np.random.default_rng(8)
    for data, indices, indptr in _quantized_csr(rng):
        npix = 6000
        bins = np.empty(npix, np.uint16)
        u = np.empty(npix, np.uint16)
        ex = kernels.pixel_table(data, indices, indptr, npix, bins, u)
        ref = reference.pixel_table_reference(data, indices, indptr, npix, kernels.WEIGHT_ONE)
        np.testing.assert_array_equal(bins, ref[0])
        np.testing.assert_array_equal(u, ref[1])
        for got, want in zip(ex, ref[2:], strict=True):
            np.testing.assert_array_equal(got, want)
        assert 0 < ex[0].size < data.size  # both kinds present in this random matrix


def test_corner_spans_equal_numpy():
    """The bounding-box half-widths and the corner extremes the split engines take, against
    NumPy's expressions, bit for bit (NaN-free positions of any sign and order)."""
    rng = np.random.default_rng(24)
    crad = rng.normal(0.0, 3.0, (10001, 4))
    crad[::7] = crad[::7, ::-1]
    center = crad.mean(axis=1) + rng.normal(0.0, 0.1, 10001)
    np.testing.assert_array_equal(kernels.corner_delta(crad, center),
                                  np.abs(crad - center[:, None]).max(axis=1))
    lo, hi = kernels.corner_min_max(crad)
    np.testing.assert_array_equal(lo, crad.min(axis=1))
    np.testing.assert_array_equal(hi, crad.max(axis=1))


def test_pixel_table_lists_pairs_not_in_fixed_point():
    """Unquantized weights: pairs go to the lists, and the table is still the matrix."""
    rng = np.random.default_rng(8)
    data, indices, indptr = _random_csr(rng)[0]
    bins = np.empty(6000, np.uint16)
    u = np.empty(6000, np.uint16)
    table = (bins, u, *kernels.pixel_table(data, indices, indptr, 6000, bins, u))
    nper = np.bincount(indices, minlength=6000)
    assert np.isin(np.flatnonzero(nper == 2), table[2]).mean() > 0.9
    raw = rng.integers(0, 40, 6000).astype(np.uint16)
    csr = kernels.csr_pass(raw, data, indices, indptr, np.ones(6000, np.float32),
                           np.zeros(6000, np.float32), False, False, np.float32(0),
                           np.float32(0))
    np.testing.assert_allclose(kernels.split_pass_u16(raw, *table, 60, 1), csr[:2], rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.int32, np.uint8, np.int16,
                                   np.int64, np.float32])
def test_split_pass_matches_reference_csr_pass_and_scipy(dtype):
    """The scipy matrix is built from the fixed-point weights the passes use."""
    from scipy.sparse import csr_matrix

    rng = np.random.default_rng(9)
    npix, npt = 6000, 60  # the COO lists get their own work items after the pixels
    raw = rng.integers(0, 40, npix).astype(dtype)
    raw[::13] = 0
    if np.dtype(dtype).itemsize >= 4:
        raw[::17] = 2**24 + 1  # not a float32: every path rounds it like pyFAI
    norm = np.ones(npix, np.float32)
    dark = np.zeros(npix, np.float32)
    passes = [kernels.split_pass] + ([kernels.split_pass_u16] if dtype == np.uint16 else [])
    for data, indices, indptr in _quantized_csr(rng, npix, npt):
        bins = np.empty(npix, np.uint16)
        u = np.empty(npix, np.uint16)
        table = (bins, u, *kernels.pixel_table(data, indices, indptr, npix, bins, u))
        want = reference.split_pass_reference(raw, *table, npt, kernels.WEIGHT_ONE)
        csr = kernels.csr_pass(raw, data, indices, indptr, norm, dark, False, False,
                               np.float32(0), np.float32(0))
        r32 = raw.astype(np.float32).astype(np.float64)
        m = csr_matrix((data.astype(np.float64), indices, indptr), shape=(npt, npix))
        for nthreads in _thread_counts():
            for split_pass in passes:
                with _threads(nthreads):
                    got = split_pass(raw, *table, npt, nthreads)
                np.testing.assert_allclose(got, want, rtol=1e-12)
                np.testing.assert_allclose(got, csr[:2], rtol=1e-12)
                np.testing.assert_allclose(got[0], m @ r32, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint32, np.int32, np.float32])
def test_split_pass_in_registers_equals_the_buffered_pass_bit_for_bit(dtype):
    """Frames of up to 32 bits take four pixels at a time in registers
    (kernels.split_add4_float), 64-bit ones the block buffer: the same float operations in
    the same order, so on one thread the same sums bit for bit, values that float32 rounds
    and zeros included."""
    rng = np.random.default_rng(21)
    npix, npt = 4 * kernels.CHUNK + 37, 50  # several items, a block tail, an item tail
    info = np.finfo(dtype) if np.dtype(dtype).kind == "f" else np.iinfo(dtype)
    lo, hi = max(info.min, -(2**31)), min(info.max, 2**31)
    raw = rng.uniform(lo, hi, npix).astype(dtype)
    raw[::11] = 0
    if np.dtype(dtype).kind == "f":
        raw[::5] = raw[::5] * np.float32(1e-30)  # also tiny values under rv = max(r, 1)
    wide = raw.astype(np.float64 if np.dtype(dtype).kind == "f" else np.int64)
    bins = rng.integers(0, npt + 1, npix).astype(np.uint16)  # npt: nowhere
    u = rng.integers(0, kernels.WEIGHT_ONE + 1, npix).astype(np.uint16)
    u[::3] = 0
    empty = np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32)
    with _threads(1):
        got = kernels.split_pass(raw, bins, u, *empty, npt, 1)
        buffered = kernels.split_pass(wide, bins, u, *empty, npt, 1)
    np.testing.assert_array_equal(got, buffered)
    want = reference.split_pass_reference(raw, bins, u, *empty, npt, kernels.WEIGHT_ONE)
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_split_pass_u16_exact_up_to_its_bin_limit():
    """Every pixel in one bin, the largest values and weights: the uint64 sums hold."""
    n = kernels.SPLIT_U16_MAX_BIN_PIXELS - 1
    rng = np.random.default_rng(13)
    raw = np.full(n, 65535, np.uint16)
    raw[::7] = 0
    u = rng.choice(np.array([0, 1, kernels.WEIGHT_ONE], np.uint16), n)
    bins = np.zeros(n, np.uint16)
    empty = np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32)
    want = reference.split_pass_reference(raw, bins, u, *empty, 2, kernels.WEIGHT_ONE)
    got = kernels.split_pass_u16(raw, bins, u, *empty, 2, 2)
    np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("n", [5, 2 * kernels.CHUNK, 6 * kernels.CHUNK + 3])
def test_hist_packed_exact_for_any_chunking(n):
    rng = np.random.default_rng(10)
    npt = 50
    raw = rng.integers(0, 65536, n).astype(np.uint16)
    raw[rng.random(n) < 0.3] = 0
    raw[::101] = 65535
    bins = rng.integers(0, npt + 1, n).astype(np.uint16)
    s, v, _, c = reference.preprocess_reference(raw)
    ref = reference.histogram_reference(bins, npt, s.astype(np.float64), v, s, c)
    exact = np.bincount(bins, raw.astype(np.float64), npt + 1)[:npt]
    zeros = np.bincount(bins[raw == 0], minlength=npt + 1)[:npt]
    for nthreads in (1, 2, 5):  # more threads than the pool: the first ones do the work
        with _threads(min(nthreads, numba.config.NUMBA_NUM_THREADS)):
            sig, var = kernels.hist_packed(raw, bins, npt, nthreads)
        np.testing.assert_array_equal(sig, exact)
        np.testing.assert_array_equal(var, exact + zeros)
        np.testing.assert_allclose(sig, ref[0], rtol=1e-12)


def test_packed_pass_is_exact_at_its_pixel_limit():
    """PACK_MAX_PIXELS pixels in one bin: all at the top count, all zeros, half each (the
    packed sums at their largest, the per-pixel -1 wrapping around)."""
    n = kernels.PACK_MAX_PIXELS
    bins = np.zeros(n, np.uint16)
    for raw in (np.full(n, 65535, np.uint16), np.zeros(n, np.uint16),
                np.tile(np.array([0, 65535], np.uint16), n // 2 + 1)[:n]):
        sig, var = kernels.hist_packed(raw, bins, 2, 2)
        total = int(raw.sum(dtype=np.uint64))
        zeros = int((raw == 0).sum())
        assert (sig[0], var[0]) == (total, total + zeros)
        assert (sig[1], var[1]) == (0, 0)


@pytest.mark.parametrize("per_bin", [kernels.PACK32_MAX_BIN_PIXELS,
                                     kernels.PACK32_MAX_BIN_PIXELS + 1])
def test_packed_pass_is_exact_at_the_narrow_packing_limit(per_bin):
    """Bins at the 2^32 packing's limit (it is taken) and one pixel over (the 2^PACK_SHIFT
    packing is): top counts, zeros, both mixed, and a masked bin (npt) over the limit."""
    npt = 3
    over = kernels.PACK32_MAX_BIN_PIXELS + 10  # the masked bin: never counted
    bins = np.concatenate([np.repeat(np.arange(npt, dtype=np.uint16), per_bin),
                           np.full(over, npt, np.uint16)])
    rng = np.random.default_rng(5)
    raw = np.where(rng.random(bins.size) < 0.5, 0, 65535).astype(np.uint16)
    raw[bins == 0] = 65535
    raw[bins == 1] = 0
    exact = np.bincount(bins, raw.astype(np.float64), npt + 1)[:npt]
    zeros = np.bincount(bins[raw == 0], minlength=npt + 1)[:npt]
    items = kernels.chunk_items(bins.size)
    counts = kernels.item_counts(bins, items, npt)
    for sig, var in (kernels.hist_packed(raw, bins, npt, 2),
                     _quad_pass(raw, bins, items, npt, counts, 2)):
        np.testing.assert_array_equal(sig, exact)
        np.testing.assert_array_equal(var, exact + zeros)


@pytest.mark.parametrize("pixels", [kernels.PACK48_MAX_BIN_PIXELS, 3000])
def test_packed_passes_sum_uint32_frames_exactly(pixels):
    """uint32 frames (24-bit Lambda mode, or any counts up to 2^32 - 1) packed at 2^48:
    a bin at its pixel limit with every count at 2^32 - 1, a bin of zeros, a bin of both,
    and random counts; both passes, every thread count."""
    rng = np.random.default_rng(13)
    npt = 5
    bins = np.repeat(np.arange(npt, dtype=np.uint16), pixels)
    raw = rng.integers(0, 1 << 32, bins.size, dtype=np.uint64).astype(np.uint32)
    raw[bins == 0] = np.iinfo(np.uint32).max
    raw[bins == 1] = 0
    raw[(bins == 2) & (rng.random(bins.size) < 0.5)] = 0
    raw[(bins == 3) & (rng.random(bins.size) < 0.3)] = 0
    exact = [sum(int(v) for v in raw[bins == b]) for b in range(npt)]
    zeros = [int((raw[bins == b] == 0).sum()) for b in range(npt)]
    items = kernels.chunk_items(bins.size)
    counts = kernels.item_counts(bins, items, npt)
    for nthreads in (1, 2):
        with _threads(min(nthreads, numba.config.NUMBA_NUM_THREADS)):
            for sig, var in (kernels.hist_packed_items(raw, bins, items, npt, counts, nthreads),
                             _quad_pass(raw, bins, items, npt, counts, nthreads)):
                assert [int(x) for x in sig] == exact  # exact in float64: < 2^53
                assert [int(x) for x in var] == [e + z for e, z in zip(exact, zeros,
                                                                      strict=True)]


def test_uint32_frame_with_a_bin_over_the_packing_limit_is_summed_in_slices():
    """A bin holding more pixels than one uint32 packed call may take: the integrator cuts
    the frame into calls of PACK48_MAX_BIN_PIXELS pixels; the sums stay exact."""
    shape = (600, 300)
    ai = AzimuthalIntegrator(GEOMETRIES["centred"], PixelDetector.regular(shape, *PIXEL))
    raw = np.random.default_rng(14).integers(0, 1 << 32, shape, dtype=np.uint64)
    raw = raw.astype(np.uint32)
    raw[::7] = 0
    res = ai.integrate1d(raw, 2, unit="2th_deg")
    corr = ai._corrections[("no", "histogram")][1]
    assert corr.fullest > kernels.PACK48_MAX_BIN_PIXELS
    assert corr.packed_step(np.uint32) == kernels.PACK48_MAX_BIN_PIXELS
    bins = corr.bins.astype(np.int64)
    exact = [sum(int(v) for v in raw.ravel()[bins == b]) for b in range(2)]
    zeros = [int((raw.ravel()[bins == b] == 0).sum()) for b in range(2)]
    assert [int(x) for x in res.sum_signal] == exact
    assert [int(x) for x in res.sum_variance] == [e + z for e, z in zip(exact, zeros,
                                                                       strict=True)]


def test_uint32_and_uint16_frames_of_the_same_counts_integrate_alike(pair, frame):
    """No split: both packed in integers, the same sums bit for bit. bbox: uint16 in
    integers, uint32 in float (split_pass): equal to rounding."""
    ai, _ = pair
    wide = frame.astype(np.uint32)
    a, b = (ai.integrate1d(f, NPT, unit="q_nm^-1", method="no") for f in (frame, wide))
    np.testing.assert_array_equal(a.sum_signal, b.sum_signal)
    np.testing.assert_array_equal(a.sum_variance, b.sum_variance)
    a, b = (ai.integrate1d(f, NPT, unit="q_nm^-1", method="bbox") for f in (frame, wide))
    np.testing.assert_allclose(a.sum_signal, b.sum_signal, rtol=1e-12)
    np.testing.assert_allclose(a.sigma, b.sigma, rtol=1e-12)


def _quad_pass(raw, bins, items, npt, counts, nthreads):
    *tables, _ = kernels.quad_table(bins, items, npt)
    return kernels.hist_quads_items(raw, items, *tables, npt, counts, nthreads)


def _walk_bins(rng, n, npt):
    """Bins as an image row gives them: steps of -1, 0, +1, now and then a jump or a
    masked stretch (npt); from the middle bin, reflected at 0 and npt - 1."""
    steps = rng.choice([-1, 0, 0, 1], n)
    jumps = rng.random(n) < 0.01
    steps[jumps] = rng.integers(2, 30, int(jumps.sum())) * rng.choice([-1, 1], int(jumps.sum()))
    walk = (np.cumsum(steps) + npt // 2) % (2 * npt)
    bins = np.where(walk < npt, walk, 2 * npt - 1 - walk)
    for start in rng.integers(0, n, 6):
        bins[start:start + rng.integers(1, 80)] = npt
    return bins.astype(np.uint16)


def _cut_items(rng, raw, bins, npt, cuts, extra):
    """Items between the given cuts and ``extra`` random ones, which pixels they take, and
    the exact Σraw and zero count per bin of those pixels."""
    cuts = np.unique(np.concatenate((cuts, rng.integers(0, raw.size, extra))))
    items = np.stack([cuts[:-1:2], cuts[1::2]], axis=1).astype(np.int64)
    take = np.zeros(raw.size, bool)
    for start, stop in items:
        take[start:stop] = True
    exact = np.bincount(bins[take], raw[take].astype(np.float64), npt + 1)[:npt]
    zeros = np.bincount(bins[take & (raw == 0)], minlength=npt + 1)[:npt]
    return items, take, exact, zeros


@pytest.mark.parametrize("npt", [60, kernels.QUAD_TWO_LANES_BELOW, kernels.QUAD_MAX_BINS])
def test_quad_pass_equals_the_exact_sums_for_items_cut_anywhere(npt):
    """The quad pass: quads whose bins step by 0 or +1 (or 0 or -1) through entries, the
    rest (jumps, up then down, a masked pixel, an item's last 1 to 3 pixels) listed; items
    starting and ending anywhere, inside a prefetch block and at the last pixel. Two
    sub-histograms (npt below QUAD_TWO_LANES_BELOW) and one; the largest entries (npt
    QUAD_MAX_BINS)."""
    rng = np.random.default_rng(12)
    n = 20000
    raw = rng.integers(0, 400, n).astype(np.uint16)
    raw[rng.random(n) < 0.2] = 0
    raw[::97] = 65535
    bins = _walk_bins(rng, n, npt)
    items, _, exact, zeros = _cut_items(rng, raw, bins, npt, [0, 1, 31, 33, 100, 1090, 1091,
                                                              4967, 19998, n], 30)
    counts = kernels.item_counts(bins, items, npt)
    qidx, off, list_pix, list_bin, used, listed = kernels.quad_table(bins, items, npt)
    assert qidx.dtype == np.uint16
    assert listed > 0 and list_pix.size > 0  # jumps and mask edges were listed
    # every entry names its quad's bins; listed pixels are exactly those of other quads
    first = np.concatenate([np.arange(i0, i0 + 4 * (off[c + 1] - off[c]), 4)
                            for c, (i0, _) in enumerate(items)])
    quad_bins = bins[first[:, None] + np.arange(4)].astype(int)
    kind, base = qidx // (npt + 1), qidx % (npt + 1)
    typed = qidx != npt
    assert (kind[typed] < kernels.QUAD_TYPES).all()
    np.testing.assert_array_equal(base[typed], quad_bins[typed, 0])
    np.testing.assert_array_equal(quad_bins[typed] - quad_bins[typed, :1],
                                  kernels.QUAD_OFFSETS[kind[typed]])
    steps = np.diff(quad_bins[~typed], axis=1)  # untyped: masked, or steps of no type
    assert ((quad_bins[~typed] == npt).any(axis=1) | (np.abs(steps) > 1).any(axis=1)
            | ((steps > 0).any(axis=1) & (steps < 0).any(axis=1))).all()
    assert set(kind[typed]) == set(range(kernels.QUAD_TYPES))  # the walk meets every type
    assert used.all()
    tails = [np.arange(start + 4 * ((stop - start) // 4), stop) for start, stop in items]
    want = np.sort(np.concatenate([(first[~typed, None] + np.arange(4)).ravel(), *tails]))
    want = want[bins[want] != npt]
    np.testing.assert_array_equal(np.sort(list_pix), want)
    np.testing.assert_array_equal(list_bin, bins[list_pix])
    for nthreads in (1, 2, 3):
        with _threads(min(nthreads, numba.config.NUMBA_NUM_THREADS)):
            sig, var = _quad_pass(raw, bins, items, npt, counts, nthreads)
        np.testing.assert_array_equal(sig, exact)
        np.testing.assert_array_equal(var, exact + zeros)


def test_quad_pass_reads_only_the_types_it_zeroed():
    """Sub-histogram rows of quad types no quad has are neither zeroed nor added up: calls
    one after the other (each reusing memory the last left full of sums) stay exact."""
    rng = np.random.default_rng(23)
    npt, n = 50, 4 * kernels.CHUNK
    items = kernels.chunk_items(n)
    rising = np.repeat(np.arange(npt, dtype=np.uint16), -(-n // npt))[:n]  # 4 types of 15
    walk = _walk_bins(rng, n, npt)  # every type
    for bins in (walk, rising, walk, rising):
        *tables, _ = kernels.quad_table(bins, items, npt)
        assert tables[4].sum() == (4 if bins is rising else kernels.QUAD_TYPES)
        raw = rng.integers(0, 1000, n).astype(np.uint16)
        counts = kernels.item_counts(bins, items, npt)
        sig, var = kernels.hist_quads_items(raw, items, *tables, npt, counts, 2)
        valid = bins < npt
        np.testing.assert_array_equal(sig, np.bincount(bins[valid], raw[valid], npt))


def test_quad_table_refuses_more_bins_than_its_entries_hold():
    bins = np.zeros(64, np.uint16)
    items = kernels.chunk_items(64)
    assert kernels.quad_table(bins, items, kernels.QUAD_MAX_BINS)[0].dtype == np.uint16
    with pytest.raises(ValueError, match=f"at most {kernels.QUAD_MAX_BINS} bins"):
        kernels.quad_table(bins, items, kernels.QUAD_MAX_BINS + 1)


@pytest.mark.parametrize("dtype, npt, delta", [(np.float32, 60, 0.0), (np.float32, 4000, 2.5),
                                               (np.int16, 60, 0.0), (np.uint16, 450, 1.0),
                                               (np.uint32, 60, 0.0)])
def test_checked_quad_pass_equals_the_one_pixel_checked_pass(dtype, npt, delta):
    """Frames needing checks (float32: NaN, infinity; any with a dummy value) through the
    quad table: the same six sums as hist_checked_items, with invalid pixels alone and
    filling whole blocks, in typed quads, untyped ones and the listed pixels, items cut
    anywhere; two sub-histograms (npt 60), one (450, 4000); dummies exact or within
    delta_dummy."""
    rng = np.random.default_rng(22)
    n, dummy = 20000, 77
    raw = rng.integers(0, 400, n).astype(dtype)
    raw[rng.random(n) < 0.02] = dummy
    raw[4096:4160] = dummy  # whole blocks of invalid pixels
    if np.dtype(dtype).kind == "f":
        raw[rng.random(n) < 0.01] = np.nan
        raw[::301] = np.inf
        raw[::7] *= np.float32(0.37)  # values float32 does not sum exactly
    bins = _walk_bins(rng, n, npt)
    items, *_ = _cut_items(rng, raw, bins, npt, [0, 1, 31, 33, 100, 1090, 1091, 4967, 19998, n],
                           30)
    norm = rng.uniform(0.5, 1.0, n).astype(np.float32)
    dark = rng.uniform(0, 2, n).astype(np.float32)
    qidx, off, list_pix, list_bin, used, listed = kernels.quad_table(bins, items, npt)
    assert listed > 0
    assert np.isin(raw[list_pix], [dummy]).any()  # invalid pixels among the listed ones
    for nthreads in (1, 2):
        with _threads(min(nthreads, numba.config.NUMBA_NUM_THREADS)):
            got = kernels.hist_quads_checked_items(raw, items, qidx, off, list_pix, list_bin,
                                                   used, npt, norm, dark, True,
                                                   np.float32(dummy), np.float32(delta),
                                                   nthreads)
            want = kernels.hist_checked_items(raw, bins, items, npt, norm, dark, True,
                                              np.float32(dummy), np.float32(delta), nthreads)
        np.testing.assert_allclose(got, want, rtol=1e-12)
        np.testing.assert_array_equal(got[4], want[4])  # invalid pixels counted alike
        assert got[4].sum() > 64


def test_packed_pass_items_of_any_length_are_exact():
    """Items cut anywhere (inside a prefetch block, a lane group, up to the last pixel)."""
    rng = np.random.default_rng(11)
    n, npt = 5000, 40
    raw = rng.integers(0, 300, n).astype(np.uint16)
    raw[rng.random(n) < 0.2] = 0
    bins = rng.integers(0, npt + 1, n).astype(np.uint16)
    items, take, exact, zeros = _cut_items(rng, raw, bins, npt,
                                           [0, 1, 31, 33, 100, 1090, 1091, 4967, n], 20)
    counts = kernels.item_counts(bins, items, npt)
    np.testing.assert_array_equal(counts, np.bincount(bins[take], minlength=npt + 1))
    for nthreads in (1, 2):
        with _threads(min(nthreads, numba.config.NUMBA_NUM_THREADS)):
            sig, var = kernels.hist_packed_items(raw, bins, items, npt, counts, nthreads)
        np.testing.assert_array_equal(sig, exact)
        np.testing.assert_array_equal(var, exact + zeros)


def test_only_pixels_over_three_bins_leave_the_pixel_table(frame):
    ai, _ = make_pair(GEOMETRIES["tilted"])
    for method in ("bbox", "full"):
        ai.integrate1d(frame, NPT, unit="2th_deg", method=method)
        corr = ai._corrections[(method, "csr")][1]
        bins, _, ex_pix, _, _ = corr.table
        nper = np.bincount(corr.matrix[1], minlength=bins.size)
        np.testing.assert_array_equal(np.unique(ex_pix), np.flatnonzero(nper >= 3))
        assert (nper[bins < NPT] <= 2).all()


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.int32])
def test_integer_split_path_equals_csr_path(frame, dtype):
    ai, _ = make_pair(GEOMETRIES["off-centre"])
    data = frame.astype(dtype)
    data[::9, ::4] = 0
    mask = np.zeros(SHAPE, bool)
    mask[10:20, 30:60] = True
    for method in ("bbox", "full"):
        ours = ai.integrate1d(data, NPT, unit="q_nm^-1", method=method, mask=mask)
        corr = ai._corrections[(method, "csr")][1]
        csr = kernels.csr_pass(data.ravel(), *corr.matrix, corr.norm, corr.dark, False, False,
                               np.float32(0), np.float32(0))
        np.testing.assert_allclose(ours.sum_signal, csr[0], rtol=1e-12)
        np.testing.assert_allclose(ours.sum_variance, csr[1], rtol=1e-12)


def test_uint16_split_path_in_slices_equals_one_call(frame):
    """Bins too full for one exact integer call: the integrator cuts the frame in slices."""
    ai, _ = make_pair(GEOMETRIES["off-centre"])
    data = frame.astype(np.uint16)
    for method in ("bbox", "full"):
        whole = ai.integrate1d(data, NPT, unit="q_nm^-1", method=method)
        corr = ai._corrections[(method, "csr")][1]
        assert corr.split_step == data.size
        corr.split_step = 997  # as if a bin had SPLIT_U16_MAX_BIN_PIXELS pixels
        sliced = ai.integrate1d(data, NPT, unit="q_nm^-1", method=method)
        np.testing.assert_allclose(sliced.sum_signal, whole.sum_signal, rtol=1e-12)
        np.testing.assert_allclose(sliced.sum_variance, whole.sum_variance, rtol=1e-12)


@numba.njit(parallel=True)
def _count_with_fetch_add(n, nthreads):
    counter = np.zeros(2, np.int64)
    got = np.zeros(n, np.int64)
    for _ in numba.prange(nthreads):
        while True:
            i = kernels.fetch_add(counter, 0, 1)
            if i >= n:
                break
            got[i] += 1
            kernels.fetch_add(counter, 1, 1)
    return counter, got


def test_fetch_add_hands_out_each_item_once():
    counter, got = _count_with_fetch_add(100000, 4)
    assert (got == 1).all() and counter[1] == 100000 and counter[0] >= 100000


def test_thread_chooser_follows_the_faster_count(monkeypatch):
    from asapo_hpc.workers.azint import threads

    chooser = threads.ThreadChooser(explore_every=4, first_samples=2)
    monkeypatch.setattr(chooser, "options", lambda: [1, 2])
    clock = iter(range(10**6))
    monkeypatch.setattr(threads.time, "perf_counter", lambda: next(clock))
    used = []
    for _ in range(30):
        n = chooser.pick()
        used.append(n)
        chooser.record(n, 1.0 if n == 2 else 3.0)
    assert used[:6] == [1, 2, 1, 2, 1, 2]  # alternating: a warm-up and two measured each
    assert used[6:].count(2) > used[6:].count(1) > 0  # mostly the faster, sometimes the other
    before = numba.get_num_threads()
    n, inside = threads.ThreadChooser().run(lambda n: (n, numba.get_num_threads()))
    assert n == inside and n in (1, before)
    assert numba.get_num_threads() == before


def test_thread_chooser_undoes_a_choice_made_while_disturbed(monkeypatch):
    from asapo_hpc.workers.azint import threads

    chooser = threads.ThreadChooser(explore_every=16, window=5, first_samples=3)
    monkeypatch.setattr(chooser, "options", lambda: [1, 2])
    used = []
    for call in range(80):
        n = chooser.pick()
        used.append(n)
        disturbed = call < 8  # the warm-up: 2 threads slowed by another process
        chooser.record(n, (5.0 if disturbed else 1.0) if n == 2 else 3.0)
    assert used[:8] == [1, 2] * 4  # every sample of 2 threads was a slow one: 1 is chosen
    first_retry = used.index(2, 8)
    assert first_retry <= 8 + 16  # retried within one exploration period
    # the retry beat 1 thread's median: repeated until 2 threads' median wins, then kept
    assert used[first_retry:first_retry + 3] == [2, 2, 2]
    later = used[first_retry + 3:]
    assert later.count(1) <= len(later) // 16 + 1  # 1 thread only retried, once a period
    # a retry that loses is not repeated
    assert all(a != 1 or b != 1 for a, b in zip(later, later[1:], strict=False))


def _drive(chooser, calls, seconds):
    """Pick and record ``calls`` times; ``seconds(call, n)`` is the time of a call."""
    used = []
    for call in range(calls):
        n = chooser.pick()
        used.append(n)
        chooser.record(n, seconds(call, n))
    return used


def test_thread_chooser_retries_a_clear_loser_less_and_less(monkeypatch):
    from asapo_hpc.workers.azint import threads

    chooser = threads.ThreadChooser(explore_every=16, window=5, first_samples=3,
                                    max_explore_every=256)
    monkeypatch.setattr(chooser, "options", lambda: [1, 2])
    used = _drive(chooser, 3000, lambda call, n: 1.0 if n == 2 else 3.0)
    retries = [i for i in range(8, len(used)) if used[i] == 1]
    gaps = np.diff(retries).tolist()
    assert gaps[:4] == [32, 64, 128, 256]  # doubled after every clear loss ...
    assert set(gaps[4:]) == {256}  # ... up to the cap: still retried, never given up
    assert retries[0] <= 8 + 16


def test_thread_chooser_run_backs_off_on_real_thread_counts(monkeypatch):
    """Through run(), which sets Numba's thread count around the call (record() must not
    take its options from inside that)."""
    from asapo_hpc.workers.azint import threads

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 Numba threads")
    before = numba.get_num_threads()
    numba.set_num_threads(2)
    now = [0.0]
    monkeypatch.setattr(threads.time, "perf_counter", lambda: now[0])

    def pass_(n):  # 2 threads take 1 s, 1 thread 3 s (a fake clock)
        now[0] += 1.0 if numba.get_num_threads() == 2 else 3.0
        return n

    try:
        chooser = threads.ThreadChooser()
        used = [chooser.run(pass_) for _ in range(600)]
    finally:
        numba.set_num_threads(before)
    retries = [i for i in range(8, len(used)) if used[i] == 1]
    assert np.diff(retries).tolist()[:4] == [32, 64, 128, 256]


def test_thread_chooser_keeps_retrying_a_close_count_often(monkeypatch):
    from asapo_hpc.workers.azint import threads

    chooser = threads.ThreadChooser(explore_every=16, window=5, first_samples=3, slack=1.25)
    monkeypatch.setattr(chooser, "options", lambda: [1, 2])
    used = _drive(chooser, 400, lambda call, n: 1.0 if n == 2 else 1.2)  # within the slack
    gaps = set(np.diff([i for i in range(8, len(used)) if used[i] == 1]).tolist())
    assert gaps == {16}


def test_thread_chooser_sees_a_load_on_its_choice_at_once(monkeypatch):
    from asapo_hpc.workers.azint import threads

    chooser = threads.ThreadChooser(explore_every=16, window=5, first_samples=3)
    monkeypatch.setattr(chooser, "options", lambda: [1, 2])
    # 2 threads fast until call 1000, then slowed by another process; 1 thread unchanged
    used = _drive(chooser, 1020, lambda call, n: (1.0 if call < 1000 else 5.0) if n == 2
                  else 3.0)
    assert used[990:1000] == [2] * 10 and 1 not in used[1000:1003]  # the back-off was long
    # the third slow call moved 2 threads' median of 5: 1 thread from then on, 2 threads
    # only at its scheduled retry
    assert used[1003] == 1 and used[1003:].count(2) <= 1


def _gap_mask(shape):
    """Lambda-like gaps: masked row bands and column bands (long runs of the flat index)."""
    mask = np.zeros(shape, bool)
    mask[60:100] = True  # a module-row gap: 40 whole rows
    mask[200:230] = True
    mask[:, 140:150] = True  # a module-column gap: 10 pixels per row, merged into runs
    mask[5, 7] = True  # a lone masked pixel
    return mask


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_no_split_skips_long_masked_runs_with_identical_sums(frame, dtype):
    ai, _ = make_pair(GEOMETRIES["tilted"])
    mask = _gap_mask(SHAPE)
    data = frame.astype(dtype)  # integer values: float sums exact in any order
    data[mask] = 7  # masked pixels hold counts: they must not leak into any bin
    ours = ai.integrate1d(data, NPT, unit="q_nm^-1", mask=mask)
    corr = ai._corrections[("no", "histogram")][1]
    assert corr.runs is not None
    rows_read = SHAPE[0] - 70  # the row bands are skipped, the column band is read
    assert corr.pixels_read == rows_read * SHAPE[1] < 0.9 * frame.size
    # the same passes over every pixel (no skipping)
    raw = data.ravel()
    if dtype == np.uint16:
        sig, var = kernels.hist_packed(raw, corr.bins, NPT, 2)
    else:
        sig, var = kernels.hist_checked(raw, corr.bins, NPT, corr.norm, corr.dark, False,
                                        np.float32(0), np.float32(0), 2)[:2]
    np.testing.assert_array_equal(ours.sum_signal, sig)
    np.testing.assert_array_equal(ours.sum_variance, var)
    valid = corr.bins < NPT
    np.testing.assert_array_equal(ours.count, np.bincount(corr.bins[valid], minlength=NPT))


def test_work_items_cover_every_valid_pixel_of_a_slice(frame):
    ai, _ = make_pair(GEOMETRIES["centred"])
    ai.integrate1d(frame, NPT, mask=_gap_mask(SHAPE))
    corr = ai._corrections[("no", "histogram")][1]
    for start, stop in [(0, frame.size), (0, frame.size // 2), (70 * SHAPE[1] + 3, frame.size)]:
        items = corr.work_items(start, stop)
        assert ((items[:, 1] - items[:, 0]) <= kernels.CHUNK).all()
        assert (items[:, 0] < items[:, 1]).all() and items.min() >= 0
        assert items.max() <= stop - start
        covered = np.zeros(stop - start, int)
        for a, b in items:
            covered[a:b] += 1
        assert covered.max() == 1
        assert covered[corr.bins[start:stop] < NPT].all()


def test_no_mask_reads_every_pixel(frame):
    ai, _ = make_pair(GEOMETRIES["centred"])
    ai.integrate1d(frame, NPT)
    corr = ai._corrections[("no", "histogram")][1]
    assert corr.runs is None and corr.pixels_read == frame.size
    np.testing.assert_array_equal(corr.work_items(0, frame.size),
                                  kernels.chunk_items(frame.size))


def test_writable_and_read_only_frames_share_the_compiled_passes(frame):
    """A writable frame and a read-only view of it (as a ring delivers) give one result and
    compile no second kernel signature."""
    ai, _ = make_pair(GEOMETRIES["tilted"])
    data = frame.astype(np.uint16)
    first = ai.integrate1d(data, NPT, unit="q_nm^-1")
    compiled = len(kernels.hist_packed_items.signatures)
    view = data.view()
    view.flags.writeable = False
    second = ai.integrate1d(view, NPT, unit="q_nm^-1")
    np.testing.assert_array_equal(first.intensity, second.intensity)
    assert len(kernels.hist_packed_items.signatures) == compiled
    assert data.flags.writeable  # the caller's array is left as it was
