"""Plain NumPy definition of stitching: what ``stitch.Stitcher`` must reproduce.

Slow and simple on purpose: correct each module (flatfield, large pixels) as a whole array,
orient it, place it; then gaps and masked pixels get the fill value.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from asapo_hpc.detectors.lambda9m import AxisMap, Lambda9MLayout


def split_large_pixels(
    values: np.ndarray,
    raw: np.ndarray,
    axes: Sequence[AxisMap],
    saturation: int,
    integer: bool,
) -> np.ndarray:
    """Spread each raw pixel over the virtual pixels it covers.

    ``values`` are the (flatfielded, rounded when ``integer``) counts, ``raw`` the raw counts
    used for the saturation test. Integer counts are split exactly: ``value // n`` each, plus
    one for the first ``value % n`` virtual pixels in row-major order inside the wide pixel.
    """
    rows, cols = axes
    spread = values[rows.source][:, cols.source]
    saturated = raw[rows.source][:, cols.source] >= saturation
    n = rows.width[rows.source][:, None] * cols.width[cols.source][None, :]
    rank = rows.sub[:, None] * cols.width[cols.source][None, :] + cols.sub[None, :]
    if integer:
        spread = spread.astype(np.int64)
        shares = spread // n + (rank < spread % n)
    else:
        shares = spread / n
    return np.where(saturated, raw[rows.source][:, cols.source], shares)


def correct_module(
    raw: np.ndarray,
    flatfield: np.ndarray | None,
    axes: Sequence[AxisMap],
    saturation: int,
    out_dtype: np.dtype,
) -> np.ndarray:
    """Flatfield and large-pixel correction of one module, in its own (un-oriented) frame."""
    integer = out_dtype.kind in "ui"
    values = raw.astype(np.float64)
    if flatfield is not None:
        values = values * flatfield.astype(np.float64)
        values = np.where(raw >= saturation, raw, values)
    if integer:
        values = np.clip(np.rint(values), 0, np.iinfo(out_dtype).max)
    return split_large_pixels(values, raw, axes, saturation, integer).astype(out_dtype)


def stitch_reference(
    parts: np.ndarray | Sequence[np.ndarray],
    layout: Lambda9MLayout,
    *,
    large_pixels: bool = False,
    output: str = "float32",
    fill: float = 0,
    apply_flatfield: bool = True,
    apply_mask: bool = True,
) -> np.ndarray:
    """The stitched image, by the definition (see ``stitch`` for the parameters)."""
    from asapo_hpc.workers.stitch import identity_axis

    parts = [np.asarray(p) for p in parts]
    out_dtype = np.dtype(np.float32) if output == "float32" else parts[0].dtype
    axes = layout.axes if large_pixels else tuple(identity_axis(n) for n in layout.module_shape)
    image = np.full(layout.stitched_shape(large_pixels), fill, dtype=out_dtype)
    slices = layout.module_slices(large_pixels)
    for raw, module, where in zip(parts, layout.active_modules, slices, strict=True):
        flat = module.flatfield if apply_flatfield else None
        corrected = correct_module(raw, flat, axes, layout.saturation, out_dtype)
        if apply_mask and module.mask is not None:
            bad = module.mask[axes[0].source][:, axes[1].source]
            corrected[bad] = fill
        image[where] = module.orientation.apply(corrected)
    return image
