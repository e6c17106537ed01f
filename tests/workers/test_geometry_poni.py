"""PONI geometry and pixel detectors against the installed pyFAI."""

from __future__ import annotations

import numpy as np
import pyFAI
import pyFAI.detectors
import pytest
from pyFAI.integrator.azimuthal import AzimuthalIntegrator as PyFAIIntegrator

from asapo_hpc.errors import AsapoWrongInputError
from asapo_hpc.geometry import PixelDetector, PoniGeometry

SHAPE = (64, 80)
PIXEL = (1e-4, 1.2e-4)
GEOMETRIES = [
    PoniGeometry(0.1, 0.0032, 0.0048),
    PoniGeometry(0.1, 0.002, 0.0015, 0.05, -0.08, 0.3, 1.2e-10),
    PoniGeometry(0.25, -0.01, 0.02, -0.2, 0.1, -1.0, 0.7e-10),
]


def pyfai_integrator(g: PoniGeometry, det) -> PyFAIIntegrator:
    return PyFAIIntegrator(
        dist=g.dist, poni1=g.poni1, poni2=g.poni2, rot1=g.rot1, rot2=g.rot2, rot3=g.rot3,
        wavelength=g.wavelength, detector=det,
    )


@pytest.fixture(params=range(len(GEOMETRIES)), ids=["centred", "tilted", "off-centre"])
def pair(request):
    g = GEOMETRIES[request.param]
    det = PixelDetector.regular(SHAPE, *PIXEL)
    pdet = pyFAI.detectors.Detector(*PIXEL, max_shape=SHAPE)
    return g, det, pyfai_integrator(g, pdet)


@pytest.mark.parametrize("unit", ["2th_deg", "2th_rad", "q_nm^-1", "r_mm"])
def test_radial_units_match_pyfai(pair, unit):
    g, det, ai = pair
    ours = g.radial(unit, *det.centers())
    np.testing.assert_allclose(ours, ai.center_array(SHAPE, unit=unit), rtol=1e-12)


def test_chi_solid_angle_polarization_match_pyfai(pair):
    g, det, ai = pair
    p1, p2 = det.centers()
    np.testing.assert_allclose(g.chi(p1, p2), ai.center_array(SHAPE, unit="chi_rad"), atol=1e-12)
    np.testing.assert_allclose(g.solid_angle(p1, p2), ai.solidAngleArray(SHAPE), rtol=1e-6)
    for factor in (0.0, 0.5, 0.99):
        np.testing.assert_allclose(
            g.polarization(p1, p2, factor=factor), ai.polarization(SHAPE, factor=factor),
            rtol=1e-6,
        )


def test_regular_corners_match_pyfai_and_centres_are_their_mean():
    det = PixelDetector.regular(SHAPE, *PIXEL)
    pdet = pyFAI.detectors.Detector(*PIXEL, max_shape=SHAPE)
    np.testing.assert_allclose(det.corners(), pdet.get_pixel_corners(), atol=1e-9)
    explicit = PixelDetector.from_corners(det.corners())
    for a, b in zip(explicit.centers(), det.centers(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-15)
    assert explicit.shape == SHAPE and explicit.is_flat and not explicit.is_regular


def test_poni_round_trip(tmp_path):
    g = GEOMETRIES[1]
    g.detector_config = {"pixel1": PIXEL[0], "pixel2": PIXEL[1], "max_shape": list(SHAPE)}
    path = tmp_path / "g.poni"
    g.to_file(path)
    assert "Detector_config:" in path.read_text()
    back = PoniGeometry.from_file(path)
    assert back == g
    ai = pyFAI.load(str(path))  # pyFAI reads what we write
    assert (ai.dist, ai.poni1, ai.poni2, ai.rot1, ai.rot2, ai.rot3, ai.wavelength) == (
        g.dist, g.poni1, g.poni2, g.rot1, g.rot2, g.rot3, g.wavelength)
    assert ai.detector.pixel1 == PIXEL[0] and ai.detector.shape == SHAPE


def test_read_file_written_by_pyfai(tmp_path):
    g = GEOMETRIES[2]
    ai = pyfai_integrator(g, pyFAI.detectors.Detector(*PIXEL, max_shape=SHAPE))
    path = tmp_path / "pyfai.poni"
    ai.save(str(path))
    back = PoniGeometry.from_file(path)
    assert (back.dist, back.poni1, back.poni2, back.rot1, back.rot2, back.rot3) == (
        g.dist, g.poni1, g.poni2, g.rot1, g.rot2, g.rot3)
    assert back.wavelength == g.wavelength
    assert back.detector == "Detector" and back.detector_config["pixel1"] == PIXEL[0]


def test_errors():
    g = GEOMETRIES[0]
    with pytest.raises(AsapoWrongInputError, match="unknown radial unit"):
        g.radial("chi_deg", 0.0, 0.0)
    with pytest.raises(AsapoWrongInputError, match=r"\(n1, n2, 4, 3\)"):
        PixelDetector.from_corners(np.zeros((4, 4, 3)))
    with pytest.raises(AsapoWrongInputError, match="mask shape"):
        PixelDetector.regular((4, 4), 1e-4, 1e-4, mask=np.zeros((4, 5)))
    with pytest.raises(AsapoWrongInputError, match="lacks"):
        PoniGeometry.from_text("Distance: 0.1\n")
