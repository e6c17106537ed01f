"""asapo_hpc: streaming detector data on HPC nodes.

The public names are loaded lazily, so ``import asapo_hpc.workers`` does not need the
compiled ring extension (workers depend on numpy and numba only).
"""

from __future__ import annotations

from importlib import import_module

from asapo_hpc.errors import *  # noqa: F401,F403  (errors are a leaf anyone may import)

__version__ = "0.1.0"

_LAZY = {
    "create_producer": "asapo_hpc.client",
    "create_consumer": "asapo_hpc.client",
    "Producer": "asapo_hpc.client",
    "Consumer": "asapo_hpc.client",
    "Message": "asapo_hpc.client",
    "RingConfig": "asapo_hpc.config",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'asapo_hpc' has no attribute {name!r}")
    return getattr(import_module(module), name)
