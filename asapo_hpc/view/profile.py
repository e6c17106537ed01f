"""Integrated profiles (I vs radial coordinate) from messages of a processed source.

Accepted message formats (float32 or float64 data; ``unit`` names the radial axis with
pyFAI's names, e.g. ``q_nm^-1``, ``2th_deg``, ``r_mm``; ``radial_unit`` is read too):

1. data = intensities, 1D (npt values); meta ``{"radial": [npt bin centres], "unit": ...}``,
   optionally ``"sigma": [npt errors]``. The dtype is meta ``"dtype"`` or follows from the
   byte count (4 or 8 bytes per radial value).
2. data = a (2, npt) or (3, npt) array: rows radial, intensity[, sigma]; meta
   ``{"shape": [2, npt], "dtype": "float32", "unit": ...}``.
3. data = intensities, 1D; meta ``{"radial_range": [lo, hi], "unit": ...}``: npt bin centres
   spread evenly over the range (pyFAI's layout).
4. data = intensities alone (meta ``{"dtype": "float32"}`` or nothing: float32): plotted
   against the bin index, unit ``bin``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MAX_POINTS = 8192  # longer profiles are strided for the page


class ProfileFormatError(ValueError):
    """A message that is not a profile in one of the accepted formats."""


def _dtype(meta: dict[str, Any], nbytes: int, npt: int | None) -> np.dtype:
    name = meta.get("dtype")
    if name is None and npt:
        name = {4: "float32", 8: "float64"}.get(nbytes // npt if nbytes % npt == 0 else 0)
    dt = np.dtype(name or "float32")
    if dt.kind not in "fiu":
        raise ProfileFormatError(f"profile dtype {dt} is not numeric")
    if nbytes % dt.itemsize:
        raise ProfileFormatError(f"{nbytes} bytes are not a whole number of {dt} values")
    return dt


def _rows(values: np.ndarray, meta: dict[str, Any]) -> np.ndarray | None:
    """The (k, npt) rows of format 2, or None for a 1D profile."""
    shape = meta.get("shape")
    if shape is None or len(shape) != 2:
        return None
    if int(np.prod(shape)) != values.size or int(shape[0]) not in (2, 3):
        raise ProfileFormatError(f"profile shape {shape} must be [2, npt] or [3, npt] and "
                                 f"hold the {values.size} values sent")
    return values.reshape(int(shape[0]), int(shape[1]))


def _radial(meta: dict[str, Any], npt: int) -> tuple[np.ndarray, bool]:
    """Bin centres for a 1D profile and whether the message named them."""
    if "radial" in meta:
        radial = np.asarray(meta["radial"], dtype=np.float64)
        if radial.shape != (npt,):
            raise ProfileFormatError(f"meta radial has {radial.size} values for {npt} bins")
        return radial, True
    if "radial_range" in meta:
        lo, hi = (float(v) for v in meta["radial_range"])
        step = (hi - lo) / npt
        return lo + step * (np.arange(npt) + 0.5), True
    return np.arange(npt, dtype=np.float64), False


def decode_profile(data: np.ndarray, meta: dict[str, Any]) -> dict[str, Any]:
    """{"unit", "radial", "intensity", "sigma" (or None)} as float lists from one message."""
    npt_hint = len(meta["radial"]) if isinstance(meta.get("radial"), list) else None
    values = data.view(_dtype(meta, data.size, npt_hint)).astype(np.float64)
    rows = _rows(values, meta)
    unit = meta.get("unit") or meta.get("radial_unit")
    if rows is not None:
        radial, intensity = rows[0], rows[1]
        sigma = rows[2] if rows.shape[0] == 3 else None
    else:
        intensity = values
        radial, named = _radial(meta, values.size)
        unit = unit if named else (unit or "bin")
        sigma = np.asarray(meta["sigma"], dtype=np.float64) if "sigma" in meta else None
    return _packed(radial, intensity, sigma, unit or "radial")


def _finite_list(a: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in a.tolist()]


def _packed(radial: np.ndarray, intensity: np.ndarray, sigma: np.ndarray | None,
            unit: str) -> dict[str, Any]:
    step = max(1, -(-intensity.size // MAX_POINTS))
    out: dict[str, Any] = {"unit": str(unit), "npt": int(intensity.size),
                           "radial": _finite_list(radial[::step]),
                           "intensity": _finite_list(intensity[::step]), "sigma": None}
    if sigma is not None and sigma.size == intensity.size:
        out["sigma"] = _finite_list(sigma[::step])
    return out
