"""Detector geometry in pyFAI conventions (PONI), shared by detectors and workers.

A leaf package: numpy only, never imports the integration engines.
"""

from asapo_hpc.geometry.detector import DetectorModule, ModuleStackDetector, PixelDetector
from asapo_hpc.geometry.poni import RADIAL_UNITS, PoniGeometry, check_unit

__all__ = [
    "DetectorModule",
    "ModuleStackDetector",
    "PixelDetector",
    "PoniGeometry",
    "RADIAL_UNITS",
    "check_unit",
]
