"""Detector geometry in pyFAI conventions (PONI), shared by detectors and workers."""
