"""What the integrations return: the intensities and the float64 per-bin sums behind them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class _IntegrationResult:
    radial: np.ndarray
    intensity: np.ndarray
    sigma: np.ndarray | None
    unit: str
    sum_signal: np.ndarray
    sum_variance: np.ndarray | None
    sum_normalization: np.ndarray
    sum_normalization2: np.ndarray
    count: np.ndarray
    method: tuple[str, str]
    engine: str
    extra: dict = field(default_factory=dict)


@dataclass
class Integrate1dResult(_IntegrationResult):
    """A radial profile and the float64 per-bin sums it was computed from."""


@dataclass
class Integrate2dResult(_IntegrationResult):
    """A cake: intensity per (chi, radial) bin and the float64 per-bin sums behind it.

    Arrays are shaped (npt_azim, npt_rad); ``azimuthal`` holds the chi bin centres in degrees.
    """

    azimuthal: np.ndarray = field(kw_only=True)
