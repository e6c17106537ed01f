"""Build script: compiles the cffi ring extension (API mode, out of line) from csrc/."""
from setuptools import setup

setup(cffi_modules=["asapo_hpc/_core/_build.py:ffibuilder"])
