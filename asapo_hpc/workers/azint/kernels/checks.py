"""Per-pixel validity of a frame's values: NaN / infinity, and the user's dummy value."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(inline="always")
def invalid_value(v, check_dummy, dummy, delta_dummy):
    """Whether the float32 value ``v`` is not a count: not finite, or the dummy (within
    ``delta_dummy`` when it is not 0), as pyFAI's masking of dummies."""
    bad = not np.isfinite(v)
    if check_dummy and not bad:
        bad = v == dummy if delta_dummy == 0.0 else abs(v - dummy) <= delta_dummy
    return bad

