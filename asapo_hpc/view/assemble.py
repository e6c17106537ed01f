"""A whole detector from the parts of one dataset (one part per module), for display.

With a detector layout (a Lambda 9M: ``Lambda9MLayout``) each raw module is oriented and
placed at its translation, gaps left empty (shown grey); without one the modules are stacked
one above another, as a frame of more than two dimensions is shown. Raw pixels are placed
as they are: no large-pixel correction, no flatfield, no mask (that is the stitch worker's
job; this is the raw frame).

Cheap on purpose (the view runs beside kHz acquisition): every module is block-averaged to
the display scale first and placed on the small canvas, so no full-size image (40 MB of
float32 for a Lambda 9M) is ever built. A module's place on the canvas is its translation
divided by the block size, rounded down: at most one display pixel off, never mixing two
modules in one block. At block size 1 the placement is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from asapo_hpc.view.render import FrameFormatError, block_mean, display_factor

if TYPE_CHECKING:
    from asapo_hpc.detectors.lambda9m import Lambda9MLayout, Orientation


@dataclass(frozen=True)
class Placement:
    """Where one module goes in the assembled image (raw pixels) and how it is turned."""

    row: int
    col: int
    orientation: Orientation | None = None

    def oriented(self, module: np.ndarray) -> np.ndarray:
        return module if self.orientation is None else self.orientation.apply(module)


@dataclass(frozen=True)
class Arrangement:
    """The modules of a frame in the assembled image: its shape and one Placement each."""

    shape: tuple[int, int]
    module_shape: tuple[int, int]
    placements: tuple[Placement, ...]
    geometry: str  # what the page says: a layout's name, or "stacked"


def stacked(n: int, module_shape: tuple[int, int]) -> Arrangement:
    """n modules one above another, no gaps (the arrangement without a geometry)."""
    h, w = module_shape
    return Arrangement((n * h, w), (h, w), tuple(Placement(k * h, 0) for k in range(n)),
                       "stacked")


def from_layout(layout: Lambda9MLayout) -> Arrangement:
    """The layout's active modules at their translations (raw module shape)."""
    slices = layout.module_slices(large_pixels=False)
    placements = tuple(Placement(rows.start, cols.start, m.orientation)
                       for m, (rows, cols) in zip(layout.active_modules, slices, strict=True))
    return Arrangement(layout.stitched_shape(large_pixels=False), layout.module_shape,
                       placements, layout.name)


@lru_cache(maxsize=1)
def _default_layout() -> Lambda9MLayout:
    from asapo_hpc.detectors.lambda9m import Lambda9MLayout

    return Lambda9MLayout.default()


def choose_layout(configured: Lambda9MLayout | None, n_parts: int,
                  part_meta: Sequence[dict[str, Any]]) -> Lambda9MLayout | None:
    """The layout to place the parts with: the configured one, else the shipped default
    Lambda 9M layout when the parts name exactly its modules (what the simulator sends,
    meta {"module": "m01"}, ...), else None (stack them)."""
    if configured is not None:
        if configured.n_parts != n_parts:
            raise FrameFormatError(
                f"the layout {configured.name!r} has {configured.n_parts} active modules, "
                f"the dataset {n_parts} parts: start the view with the detector's --layout")
        return configured
    default = _default_layout()
    names = [meta.get("module") for meta in part_meta]
    if names == [m.name for m in default.active_modules]:
        return default
    return None


def assemble_small(modules: Sequence[np.ndarray | None], arrangement: Arrangement,
                   max_size: int) -> np.ndarray:
    """The assembled image, downsampled so its longest side is at most max_size: float32,
    NaN where no module is (gaps, and modules missing from the list as None)."""
    factor = display_factor(arrangement.shape, max_size)
    h, w = arrangement.shape
    canvas = np.full((max(1, h // factor), max(1, w // factor)), np.nan, dtype=np.float32)
    for module, place in zip(modules, arrangement.placements, strict=True):
        if module is None:
            continue
        small = block_mean(place.oriented(module), factor)
        r0, c0 = place.row // factor, place.col // factor
        # a module's blocks end where its own pixels do: clip to the canvas, never beyond
        rows, cols = min(small.shape[0], canvas.shape[0] - r0), min(small.shape[1],
                                                                  canvas.shape[1] - c0)
        if rows > 0 and cols > 0:
            canvas[r0:r0 + rows, c0:c0 + cols] = small[:rows, :cols]
    return canvas
