"""Radial (azimuthal) integration: Numba engines with NumPy references, pyFAI conventions."""

from asapo_hpc.workers.azint.engines import ENGINES, METHODS, UNIT_SCALE
from asapo_hpc.workers.azint.integrator import AzimuthalIntegrator, Integrate1dResult

__all__ = ["AzimuthalIntegrator", "ENGINES", "Integrate1dResult", "METHODS", "UNIT_SCALE"]
