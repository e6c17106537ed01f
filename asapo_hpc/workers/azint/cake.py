"""2-D ("cake") integration: radial x azimuthal bins, no pixel splitting, pyFAI's conventions.

A cake is a 1-D no-split histogram over ``npt_azim * npt_rad`` bins: every pixel centre gets
one combined bin ``chi_bin * npt_rad + radial_bin``, so the per-frame Numba passes, the
correction tables and the per-bin sums of the 1-D no-split engine serve unchanged; only the
bin index is new (:func:`combine_bins`), and the sums are reshaped to (npt_azim, npt_rad).

Conventions (pyFAI's ``integrate2d_ng(..., method=("no", "histogram", "cython"))``):

* chi = atan2(t1, t2) of the pixel centre, in degrees on output; its discontinuity sits at
  180° (chi in (-180°, 180°], pyFAI's default) or, with ``chi_disc=0``, at 0° (chi in
  [0°, 360°), pyFAI's ``setChiDiscAtZero``).
* Automatic ranges span the pixel centres, lower radial edge clipped at 0, upper edges
  stretched by (1 + float32 eps). An ``azimuth_range`` in degrees is brought into the chi
  interval first (180 is the same angle as -180); an upper end at or below the lower one
  means one more turn. A range crossing the discontinuity is refused (pyFAI only warns and
  returns partial results): move the discontinuity with ``chi_disc`` instead.
* Bin edges and the assignment of a pixel to a bin are numpy.histogram's, in each axis.
* Output arrays are (npt_azim, npt_rad), as pyFAI's; empty bins hold 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from asapo_hpc.errors import AsapoWrongInputError
from asapo_hpc.geometry import PixelDetector, PoniGeometry
from asapo_hpc.workers.azint import kernels
from asapo_hpc.workers.azint.engines import (
    EngineKey,
    NoSplitEngine,
    _Engine,
    internal_radial,
)
from asapo_hpc.workers.azint.reference import bin_edges, upper_bound
from asapo_hpc.workers.azint.results import Integrate2dResult

#: Where chi jumps by 360°: 180 (chi in (-180, 180], pyFAI's default) or 0 (chi in [0, 360)).
CHI_DISCONTINUITIES = (180, 0)


@dataclass(frozen=True)
class CakeKey(EngineKey):
    """An engine key with the azimuthal binning; ``npt`` is (npt_rad, npt_azim)."""

    azimuth_range: tuple[float, float] | None = None
    chi_disc: int = 180

    @property
    def slot(self) -> tuple[str, ...]:
        return (*self.method, "2d")


def check_chi_disc(chi_disc: int) -> int:
    if chi_disc not in CHI_DISCONTINUITIES:
        raise AsapoWrongInputError(
            f"chi_disc must be one of {CHI_DISCONTINUITIES} (degrees), got {chi_disc!r}"
        )
    return int(chi_disc)


def azimuth_range_rad(
    azimuth_range: tuple[float, float] | None, chi_disc: int
) -> tuple[float, float] | None:
    """A user's chi range in degrees -> radians inside the chi interval (see module doc)."""
    if azimuth_range is None:
        return None
    lo, hi = (_wrap_deg(float(v), chi_disc) for v in azimuth_range)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise AsapoWrongInputError(f"bad azimuth_range {azimuth_range!r}")
    if hi <= lo:
        hi += 2.0 * math.pi
    top = math.pi if chi_disc == 180 else 2.0 * math.pi
    if hi > top:
        raise AsapoWrongInputError(
            f"azimuth_range {azimuth_range!r} crosses the chi discontinuity at {chi_disc}°; "
            f"integrate with chi_disc={0 if chi_disc == 180 else 180} instead"
        )
    return lo, hi


def _wrap_deg(deg: float, chi_disc: int) -> float:
    """Degrees -> radians in [-pi, pi) (chi_disc 180) or [0, 2 pi) (chi_disc 0)."""
    turns = (deg / 180.0) % 2.0  # half-turns in [0, 2), the way pyFAI reduces an angle
    if chi_disc == 180 and turns >= 1.0:
        turns -= 2.0
    return turns * math.pi


def pixel_chi(
    geom: PoniGeometry, p1: np.ndarray, p2: np.ndarray, p3: np.ndarray | None, chi_disc: int
) -> np.ndarray:
    """chi of pixel centres in radians, in the interval ``chi_disc`` chooses."""
    chi = geom.chi(p1, p2, p3)
    return np.mod(chi, 2.0 * math.pi) if chi_disc == 0 else chi


@njit(parallel=True, cache=True)
def combine_bins(radial_bins, chi_bins, npt_rad, npt_azim, out):
    """Combined bin ``chi * npt_rad + radial``; npt_rad * npt_azim when either is outside."""
    excluded = npt_rad * npt_azim
    for i in prange(out.size):
        r = radial_bins[i]
        c = chi_bins[i]
        out[i] = excluded if (r >= npt_rad or c >= npt_azim) else c * npt_rad + r
    return out


class CakeEngine(NoSplitEngine):
    """Pixel centre -> one (chi, radial) bin, as a flat bin index over npt_azim * npt_rad.

    A NoSplitEngine to the integrator: the same corrections and per-frame passes apply.
    """

    def __init__(self, key: CakeKey, geom: PoniGeometry, det: PixelDetector, mask: np.ndarray):
        _Engine.__init__(self, key, geom, det, mask)
        self.npt_rad, self.npt_azim = key.npt
        self.npt = self.npt_rad * self.npt_azim
        self.name = "asapo_hpc.azint.no_histogram2d_numba"
        p1, p2 = det.centers()
        p3 = det.centers_p3()
        rad = np.ascontiguousarray(internal_radial(geom, key.unit, p1, p2, p3)).ravel()
        chi = np.ascontiguousarray(pixel_chi(geom, p1, p2, p3, key.chi_disc)).ravel()
        if key.radial_range is None:
            self.lo, self.hi = max(0.0, float(rad.min())), upper_bound(float(rad.max()))
        else:
            self.lo, self.hi = key.radial_range[0], upper_bound(key.radial_range[1])
        if key.azimuth_range is None:
            self.chi_lo, self.chi_hi = float(chi.min()), upper_bound(float(chi.max()))
        else:
            self.chi_lo, self.chi_hi = key.azimuth_range[0], upper_bound(key.azimuth_range[1])
        self.edges = bin_edges(self.lo, self.hi, self.npt_rad)
        self.chi_edges = bin_edges(self.chi_lo, self.chi_hi, self.npt_azim)
        everywhere = np.ones(rad.size, bool)  # the static mask enters through Corrections
        rbins = kernels.bin_index(rad, everywhere, self.lo, self.hi, self.edges, self.npt_rad,
                                  np.empty(rad.size, np.uint32))
        cbins = kernels.bin_index(chi, everywhere, self.chi_lo, self.chi_hi, self.chi_edges,
                                  self.npt_azim, np.empty(rad.size, np.uint32))
        dtype = np.uint16 if self.npt < np.iinfo(np.uint16).max else np.uint32
        self.bins = combine_bins(rbins, cbins, self.npt_rad, self.npt_azim,
                                 np.empty(rad.size, dtype))

    def chi_centers(self) -> np.ndarray:
        """chi bin centres in degrees."""
        return np.rad2deg(0.5 * (self.chi_edges[1:] + self.chi_edges[:-1]))


def cake_result(engine: CakeEngine, flat) -> Integrate2dResult:
    """The 2-D result from the integrator's flat per-bin result over npt_azim * npt_rad."""
    shape = (engine.npt_azim, engine.npt_rad)

    def cut(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a.reshape(shape)

    return Integrate2dResult(
        radial=flat.radial, azimuthal=engine.chi_centers(), intensity=cut(flat.intensity),
        sigma=cut(flat.sigma), unit=flat.unit, sum_signal=cut(flat.sum_signal),
        sum_variance=cut(flat.sum_variance), sum_normalization=cut(flat.sum_normalization),
        sum_normalization2=cut(flat.sum_normalization2), count=cut(flat.count),
        method=flat.method, engine=engine.name,
        extra={"radial_range_internal": (engine.lo, engine.hi),
               "azimuth_range_internal": (engine.chi_lo, engine.chi_hi),
               "chi_disc": engine.key.chi_disc},
    )
