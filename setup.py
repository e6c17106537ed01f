"""Build script: the cffi ring extension (API mode, out of line) from csrc/, and the C fast
path of the per-message calls (asapo_hpc/_core/_fastpath.c) beside it."""
from setuptools import Extension, setup

# The fast path calls the same C core; csrc/src/ring.c keeps no static state, so its copy
# in each extension shares everything through the segment.
fastpath = Extension(
    "asapo_hpc._core._fastpath",
    sources=["asapo_hpc/_core/_fastpath.c", "csrc/src/ring.c"],
    include_dirs=["csrc/include", "csrc/src", "asapo_hpc/_core"],
    extra_compile_args=["-std=c11", "-O2", "-Wall"],
    libraries=["rt"],
)

setup(cffi_modules=["asapo_hpc/_core/_build.py:ffibuilder"], ext_modules=[fastpath])
