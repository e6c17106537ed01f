"""Radial (azimuthal) integration: Numba engines with NumPy references, pyFAI conventions."""

from asapo_hpc.workers.azint.cake import CHI_DISCONTINUITIES
from asapo_hpc.workers.azint.engines import ENGINES, METHODS, UNIT_SCALE
from asapo_hpc.workers.azint.integrator import AzimuthalIntegrator
from asapo_hpc.workers.azint.results import Integrate1dResult, Integrate2dResult

__all__ = [
    "AzimuthalIntegrator",
    "CHI_DISCONTINUITIES",
    "ENGINES",
    "Integrate1dResult",
    "Integrate2dResult",
    "METHODS",
    "UNIT_SCALE",
]
