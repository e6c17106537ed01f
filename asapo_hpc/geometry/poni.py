"""PONI geometry in pyFAI's conventions.

Axes: p1 is the slow (vertical, "y") detector axis, p2 the fast (horizontal, "x") one, p3 the
height of a pixel above the detector plane (0 for flat detectors). The PONI is the foot of the
perpendicular from the sample onto the detector plane; ``dist`` is that perpendicular's length.
Rotations rot1, rot2, rot3 act about axes 1, 2 and 3 in that order, with pyFAI's handedness
(rot1 and rot2 left-handed, rot3 right-handed). Lengths in metres, angles in radians.

All position methods take pixel coordinates in metres in the detector frame (not relative to
the PONI) and broadcast like numpy.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from asapo_hpc.errors import AsapoLocalIOError, AsapoWrongInputError

ArrayLike = Any

#: Radial units understood by :meth:`PoniGeometry.radial`, with a short description.
RADIAL_UNITS: dict[str, str] = {
    "2th_deg": "scattering angle 2theta in degrees",
    "2th_rad": "scattering angle 2theta in radians",
    "q_nm^-1": "scattering vector modulus q = 4 pi sin(theta) / lambda in nm^-1",
    "r_mm": "distance from the beam in the plane orthogonal to it, in mm",
}

_PONI_KEYS = {
    "distance": "dist",
    "dist": "dist",
    "poni1": "poni1",
    "poni2": "poni2",
    "rot1": "rot1",
    "rot2": "rot2",
    "rot3": "rot3",
    "wavelength": "wavelength",
}


def check_unit(unit: str) -> str:
    """Return ``unit`` if it is a known radial unit, else raise AsapoWrongInputError."""
    if unit not in RADIAL_UNITS:
        raise AsapoWrongInputError(
            f"unknown radial unit {unit!r}; use one of {sorted(RADIAL_UNITS)}"
        )
    return unit


@dataclass
class PoniGeometry:
    """Sample-detector geometry as pyFAI's PONI parameters.

    ``detector`` and ``detector_config`` only carry the PONI file's detector description
    through a read/write round trip; the geometry maths never uses them.
    """

    dist: float
    poni1: float
    poni2: float
    rot1: float = 0.0
    rot2: float = 0.0
    rot3: float = 0.0
    wavelength: float = 1e-10
    detector: str = "Detector"
    detector_config: dict = field(default_factory=dict)

    # ----------------------------------------------------------------------------- file I/O
    @classmethod
    def from_file(cls, path: str | Path) -> PoniGeometry:
        """Read a pyFAI PONI file (versions 1, 2, 2.1 and 3 are understood)."""
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise AsapoLocalIOError(f"cannot read PONI file {path}: {err}") from err
        return cls.from_text(text, source=str(path))

    @classmethod
    def from_text(cls, text: str, source: str = "<text>") -> PoniGeometry:
        """Parse the content of a PONI file."""
        values: dict[str, float] = {}
        detector, detector_config = "Detector", {}
        for line in text.splitlines():
            if line.lstrip().startswith("#") or ":" not in line:
                continue
            key, value = (s.strip() for s in line.split(":", 1))
            key = key.lower()
            if key in _PONI_KEYS:
                values[_PONI_KEYS[key]] = float(value)
            elif key == "detector":
                detector = value
            elif key == "detector_config":
                detector_config = json.loads(value)
            elif key in ("pixelsize1", "pixelsize2"):  # version 1 files
                detector_config["pixel" + key[-1]] = float(value)
        missing = {"dist", "poni1", "poni2"} - values.keys()
        if missing:
            raise AsapoWrongInputError(f"PONI file {source} lacks {sorted(missing)}")
        return cls(detector=detector, detector_config=detector_config, **values)

    def to_text(self) -> str:
        """PONI file content, version 2 (with a Detector_config line) as pyFAI writes it."""
        lines = [
            "# Nota: C-Order, 1 refers to the Y axis, 2 to the X axis",
            "# Written by asapo_hpc",
            "poni_version: 2",
            f"Detector: {self.detector}",
            f"Detector_config: {json.dumps(self.detector_config)}",
            f"Distance: {self.dist!r}",
            f"Poni1: {self.poni1!r}",
            f"Poni2: {self.poni2!r}",
            f"Rot1: {self.rot1!r}",
            f"Rot2: {self.rot2!r}",
            f"Rot3: {self.rot3!r}",
            f"Wavelength: {self.wavelength!r}",
            "",
        ]
        return "\n".join(lines)

    def to_file(self, path: str | Path) -> None:
        """Write a PONI file readable by pyFAI (``pyFAI.load``)."""
        try:
            Path(path).write_text(self.to_text())
        except OSError as err:
            raise AsapoLocalIOError(f"cannot write PONI file {path}: {err}") from err

    # ----------------------------------------------------------------------------- geometry
    def rotation_matrix(self) -> np.ndarray:
        """3x3 matrix taking detector-frame (p1, p2, L+p3) to lab-frame (t1, t2, t3)."""
        c1, s1 = math.cos(self.rot1), math.sin(self.rot1)
        c2, s2 = math.cos(self.rot2), math.sin(self.rot2)
        c3, s3 = math.cos(self.rot3), math.sin(self.rot3)
        r1 = np.array([[1.0, 0.0, 0.0], [0.0, c1, s1], [0.0, -s1, c1]])
        r2 = np.array([[c2, 0.0, -s2], [0.0, 1.0, 0.0], [s2, 0.0, c2]])
        r3 = np.array([[c3, -s3, 0.0], [s3, c3, 0.0], [0.0, 0.0, 1.0]])
        return r3 @ r2 @ r1

    def lab_positions(
        self, p1: ArrayLike, p2: ArrayLike, p3: ArrayLike | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pixel positions in the lab frame: (t1 vertical, t2 horizontal, t3 along the beam)."""
        d1 = np.asarray(p1, dtype=np.float64) - self.poni1
        d2 = np.asarray(p2, dtype=np.float64) - self.poni2
        d3 = self.dist if p3 is None else self.dist + np.asarray(p3, dtype=np.float64)
        m = self.rotation_matrix()
        shape = np.broadcast_shapes(d1.shape, d2.shape, np.shape(d3))
        taken: set[int] = set()  # d1, d2, d3 are new arrays: one may be returned as it is
        return tuple(_row_times(m[i], (d1, d2, d3), shape, taken) for i in range(3))

    def tth(self, p1: ArrayLike, p2: ArrayLike, p3: ArrayLike | None = None) -> np.ndarray:
        """Scattering angle 2theta in radians."""
        t1, t2, t3 = self.lab_positions(p1, p2, p3)
        return np.arctan2(np.sqrt(t1 * t1 + t2 * t2), t3)

    def chi(self, p1: ArrayLike, p2: ArrayLike, p3: ArrayLike | None = None) -> np.ndarray:
        """Azimuthal angle chi in radians, in (-pi, pi], as pyFAI's default."""
        t1, t2, _ = self.lab_positions(p1, p2, p3)
        return np.arctan2(t1, t2)

    def q_nm(self, p1: ArrayLike, p2: ArrayLike, p3: ArrayLike | None = None) -> np.ndarray:
        """Scattering vector modulus in nm^-1."""
        if not self.wavelength or self.wavelength <= 0:
            raise AsapoWrongInputError("q needs a positive wavelength (metres)")
        return (4.0e-9 * math.pi / self.wavelength) * np.sin(0.5 * self.tth(p1, p2, p3))

    def r_mm(self, p1: ArrayLike, p2: ArrayLike, p3: ArrayLike | None = None) -> np.ndarray:
        """Distance from the direct beam, orthogonal to it, in millimetres."""
        t1, t2, _ = self.lab_positions(p1, p2, p3)
        return 1000.0 * np.sqrt(t1 * t1 + t2 * t2)

    def radial(
        self, unit: str, p1: ArrayLike, p2: ArrayLike, p3: ArrayLike | None = None
    ) -> np.ndarray:
        """The radial coordinate in ``unit`` (see RADIAL_UNITS)."""
        check_unit(unit)
        if unit == "2th_deg":
            return np.rad2deg(self.tth(p1, p2, p3))
        if unit == "2th_rad":
            return self.tth(p1, p2, p3)
        if unit == "q_nm^-1":
            return self.q_nm(p1, p2, p3)
        return self.r_mm(p1, p2, p3)

    def cos_incidence(self, p1: ArrayLike, p2: ArrayLike) -> np.ndarray:
        """Cosine of the incidence angle on a flat detector (1 at the PONI).

        Rotations do not enter: the sample sits on the detector normal through the PONI.
        """
        d1 = np.asarray(p1, dtype=np.float64) - self.poni1
        d2 = np.asarray(p2, dtype=np.float64) - self.poni2
        return self.dist / np.sqrt(self.dist * self.dist + d1 * d1 + d2 * d2)

    def solid_angle(
        self, p1: ArrayLike, p2: ArrayLike, p3: ArrayLike | None = None
    ) -> np.ndarray:
        """Solid angle relative to a pixel at the PONI, cos(incidence)^3 (pyFAI's
        ``solidAngleArray``). Flat-detector formula; ``p3`` is accepted and ignored."""
        cosa = self.cos_incidence(p1, p2)
        return cosa * cosa * cosa

    def polarization(
        self,
        p1: ArrayLike,
        p2: ArrayLike,
        p3: ArrayLike | None = None,
        factor: float = 0.0,
        axis_offset: float = 0.0,
    ) -> np.ndarray:
        """pyFAI's polarization correction (divide the signal by it).

        ``factor`` = (Ih - Iv) / (Ih + Iv): 0 unpolarised, 1 horizontally polarised beam;
        ``axis_offset`` is the angle of the polarisation plane to the detector's x axis.
        """
        t1, t2, t3 = self.lab_positions(p1, p2, p3)
        tth = np.arctan2(np.sqrt(t1 * t1 + t2 * t2), t3)
        chi = np.arctan2(t1, t2)
        cos2 = np.cos(tth) ** 2
        return 0.5 * (1.0 + cos2 - factor * np.cos(2.0 * (chi + axis_offset)) * (1.0 - cos2))


def _row_times(row: np.ndarray, d: tuple, shape: tuple[int, ...], taken: set[int]) -> np.ndarray:
    """row[0]·d[0] + row[1]·d[1] + row[2]·d[2] as an array of ``shape``, leaving out the
    terms whose coefficient is 0 and the product by 1 (an unrotated detector: the identity,
    the common case), adding in place, and returning one of the fresh arrays ``d`` itself
    when it is the whole sum (``taken``: their ids, so none is returned twice). Same values
    as the full sum (a term 0·d adds a zero; only the sign of an exact zero may differ).
    Each full-size temporary of a 9.4 Mpixel detector's 4 corners is 300 MB, and allocating
    it costs more than the arithmetic."""
    terms = [(c, x) for c, x in zip(row, d, strict=True) if c != 0.0]
    if not terms:
        return np.zeros(shape)
    c, x = terms[0]
    if c == 1.0 and len(terms) == 1 and np.shape(x) == shape and id(x) not in taken:
        taken.add(id(x))
        return x
    out = np.array(np.broadcast_to(x if c == 1.0 else c * x, shape), dtype=np.float64)
    for c, x in terms[1:]:
        out += x if c == 1.0 else c * x
    return out
