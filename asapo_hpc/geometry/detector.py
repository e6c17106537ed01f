"""Pixel detectors described by their pixel corners, in pyFAI's ``get_pixel_corners`` layout.

Corners are shaped (n1, n2, 4, 3): pixel index along the slow axis, along the fast axis, corner
A, B, C, D, and the coordinate (p3, p1, p2) in metres. For pixel (i, j) of a regular grid,
A = (i, j), B = (i+1, j), C = (i+1, j+1), D = (i, j+1) in pixel units. Non-contiguous layouts
(detector modules with gaps, wider pixels) give their corners explicitly.
"""

from __future__ import annotations

import numpy as np

from asapo_hpc.errors import AsapoWrongInputError

#: Corners A, B, C, D of pixel (i, j) as offsets in grid points: (i, j), (i+1, j), (i+1, j+1),
#: (i, j+1)
CORNER_OFFSETS = ((0, 0), (1, 0), (1, 1), (0, 1))


def per_pixel_corners(grid_values: np.ndarray) -> np.ndarray:
    """(n1 + 1, n2 + 1) values at a regular grid's corner points -> (n1 * n2, 4): each
    pixel's corners A, B, C, D, as :meth:`PixelDetector.corners` orders them."""
    n1, n2 = grid_values.shape[0] - 1, grid_values.shape[1] - 1
    return np.stack([grid_values[di:di + n1, dj:dj + n2] for di, dj in CORNER_OFFSETS],
                    axis=-1).reshape(-1, 4)


class PixelDetector:
    """A 2-D array of quadrilateral pixels, with an optional mask (non-zero = masked)."""

    def __init__(
        self,
        corners: np.ndarray | None = None,
        *,
        shape: tuple[int, int] | None = None,
        pixel1: float | None = None,
        pixel2: float | None = None,
        mask: np.ndarray | None = None,
    ):
        # Either explicit corners or a regular grid (shape + pixel sizes), never both.
        if corners is not None:
            corners = np.ascontiguousarray(corners, dtype=np.float64)
            if corners.ndim != 4 or corners.shape[2:] != (4, 3):
                raise AsapoWrongInputError(
                    f"corners must be shaped (n1, n2, 4, 3), got {corners.shape}"
                )
            shape = corners.shape[:2]
        elif shape is None or pixel1 is None or pixel2 is None:
            raise AsapoWrongInputError("give corners, or shape with pixel1 and pixel2")
        elif pixel1 <= 0 or pixel2 <= 0 or len(shape) != 2 or min(shape) <= 0:
            raise AsapoWrongInputError(
                f"bad regular grid: shape={shape}, pixel1={pixel1}, pixel2={pixel2}"
            )
        self._corners = corners
        self.shape: tuple[int, int] = (int(shape[0]), int(shape[1]))
        self.pixel1 = pixel1
        self.pixel2 = pixel2
        self.mask = None
        if mask is not None:
            self.set_mask(mask)

    @classmethod
    def regular(
        cls, shape: tuple[int, int], pixel1: float, pixel2: float, mask: np.ndarray | None = None
    ) -> PixelDetector:
        """A contiguous grid of ``shape`` pixels of pixel1 x pixel2 metres (slow x fast)."""
        return cls(shape=shape, pixel1=pixel1, pixel2=pixel2, mask=mask)

    @classmethod
    def from_corners(cls, corners: np.ndarray, mask: np.ndarray | None = None) -> PixelDetector:
        """A detector with explicit pixel corners shaped (n1, n2, 4, 3), (p3, p1, p2) last."""
        return cls(corners=corners, mask=mask)

    @property
    def is_regular(self) -> bool:
        """True for a contiguous grid defined by pixel sizes."""
        return self._corners is None

    @property
    def is_flat(self) -> bool:
        """True when every corner lies in the detector plane (p3 == 0)."""
        return self._corners is None or not np.any(self._corners[..., 0])

    @property
    def size(self) -> int:
        """Number of pixels."""
        return self.shape[0] * self.shape[1]

    def set_mask(self, mask: np.ndarray | None) -> None:
        """Set the static mask (non-zero = masked) or clear it with None."""
        if mask is None:
            self.mask = None
            return
        mask = np.asarray(mask)
        if mask.shape != self.shape:
            raise AsapoWrongInputError(
                f"mask shape {mask.shape} does not match detector shape {self.shape}"
            )
        self.mask = mask.astype(bool)

    def corner_grid(self) -> tuple[np.ndarray, np.ndarray] | None:
        """A regular grid's pixel edges: (p1, p2) of every corner point, each (n1 + 1,
        n2 + 1) (broadcast views), metres; None unless :attr:`is_regular`. Neighbouring pixels
        share corner points: a per-corner quantity computed on this grid costs a quarter of
        computing it on :meth:`corners`, with the same values."""
        if not self.is_regular:
            return None
        e1, e2 = self._edges()
        grid = (e1.size, e2.size)
        return np.broadcast_to(e1[:, None], grid), np.broadcast_to(e2[None, :], grid)

    def _edges(self) -> tuple[np.ndarray, np.ndarray]:
        n1, n2 = self.shape
        return (np.arange(n1 + 1, dtype=np.float64) * self.pixel1,
                np.arange(n2 + 1, dtype=np.float64) * self.pixel2)

    def corners(self) -> np.ndarray:
        """Pixel corners (n1, n2, 4, 3) float64, (p3, p1, p2) in metres, pyFAI order."""
        if self._corners is not None:
            return self._corners
        n1, n2 = self.shape
        e1, e2 = self._edges()
        out = np.zeros((n1, n2, 4, 3), dtype=np.float64)
        for k, (di, dj) in enumerate(CORNER_OFFSETS):
            out[:, :, k, 1] = e1[di : di + n1, None]
            out[:, :, k, 2] = e2[None, dj : dj + n2]
        return out

    def centers(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixel centres (p1, p2), each shaped like the detector, metres.

        Regular grids: (i + 0.5) * pixel; explicit corners: the mean of the four corners,
        which is what pyFAI's bilinear interpolation at the pixel centre gives.
        """
        if self._corners is None:
            n1, n2 = self.shape
            c1 = (np.arange(n1, dtype=np.float64) + 0.5) * self.pixel1
            c2 = (np.arange(n2, dtype=np.float64) + 0.5) * self.pixel2
            return np.broadcast_to(c1[:, None], self.shape), np.broadcast_to(c2, self.shape)
        mean = self._corners.mean(axis=2)
        return mean[..., 1], mean[..., 2]

    def centers_p3(self) -> np.ndarray | None:
        """Height of the pixel centres above the detector plane, or None if flat."""
        if self.is_flat:
            return None
        return self._corners[..., 0].mean(axis=2)

    def __repr__(self) -> str:
        kind = (
            f"regular pixel1={self.pixel1} pixel2={self.pixel2}"
            if self.is_regular
            else "explicit corners"
        )
        return f"PixelDetector(shape={self.shape}, {kind}, masked={self._masked_count()})"

    def _masked_count(self) -> int:
        return 0 if self.mask is None else int(self.mask.sum())


class DetectorModule:
    """One flat module: its pixel edges in its own frame, placed on the detector by an affine map.

    ``edges1`` (rows + 1) and ``edges2`` (cols + 1) are the pixel edges in metres along the
    module's slow and fast axes (uneven for wider pixels). A point (y, x) of the module frame
    lands at ``(p1, p2) = matrix @ (y, x) + offset`` on the detector plane, at height
    ``height`` (p3). Flips, quarter turns and in-plane rotations are all such maps.
    """

    def __init__(
        self,
        edges1: np.ndarray,
        edges2: np.ndarray,
        matrix: np.ndarray | None = None,
        offset: tuple[float, float] = (0.0, 0.0),
        height: float = 0.0,
    ):
        self.edges1 = np.asarray(edges1, dtype=np.float64)
        self.edges2 = np.asarray(edges2, dtype=np.float64)
        if self.edges1.ndim != 1 or self.edges2.ndim != 1 or min(
            self.edges1.size, self.edges2.size
        ) < 2:
            raise AsapoWrongInputError("module edges must be 1-D with at least two entries")
        self.matrix = np.eye(2) if matrix is None else np.asarray(matrix, dtype=np.float64)
        if self.matrix.shape != (2, 2):
            raise AsapoWrongInputError(f"module matrix must be 2x2, got {self.matrix.shape}")
        self.offset = (float(offset[0]), float(offset[1]))
        self.height = float(height)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.edges1.size - 1, self.edges2.size - 1)

    def place(self, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Module-frame points (y, x) -> detector-plane (p1, p2), broadcasting."""
        m = self.matrix
        return (
            m[0, 0] * y + m[0, 1] * x + self.offset[0],
            m[1, 0] * y + m[1, 1] * x + self.offset[1],
        )

    def centers(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixel centres (p1, p2), (rows, cols): the affine image of the mid-edges, which is
        the mean of the four corners without building them."""
        yc = 0.5 * (self.edges1[:-1] + self.edges1[1:])
        xc = 0.5 * (self.edges2[:-1] + self.edges2[1:])
        return self.place(yc[:, None], xc[None, :])

    def corners(self, out: np.ndarray) -> None:
        """Fill ``out`` (rows, cols, 4, 3) with pyFAI-ordered corners (p3, p1, p2)."""
        yy, xx = self.place(self.edges1[:, None], self.edges2[None, :])
        _nodes_to_corners(yy, xx, out)
        out[..., 0] = self.height


class ModuleStackDetector(PixelDetector):
    """Equal-sized modules stacked along the slow axis: shape (n * rows, cols).

    The frame is the modules' raw arrays one after the other (a (n, rows, cols) stack read as
    (n * rows, cols)); each module's :class:`DetectorModule` places its pixels. Centres are
    computed from the edges; corners (12 float64 per pixel, ~0.9 GB for a Lambda 9M) only
    when a split engine asks for them, and never kept.
    """

    def __init__(self, modules: list[DetectorModule], mask: np.ndarray | None = None):
        if not modules:
            raise AsapoWrongInputError("a module stack needs at least one module")
        shapes = {m.shape for m in modules}
        if len(shapes) != 1:
            raise AsapoWrongInputError(f"modules of a stack must share one shape, got {shapes}")
        self.modules = list(modules)
        self.module_shape: tuple[int, int] = shapes.pop()
        self._corners = None
        self.shape = (len(modules) * self.module_shape[0], self.module_shape[1])
        self.pixel1 = self.pixel2 = None
        self.mask = None
        if mask is not None:
            self.set_mask(np.asarray(mask).reshape(self.shape))

    @property
    def n_modules(self) -> int:
        return len(self.modules)

    @property
    def is_regular(self) -> bool:
        return False

    @property
    def is_flat(self) -> bool:
        return all(m.height == 0.0 for m in self.modules)

    def corners(self) -> np.ndarray:
        rows = self.module_shape[0]
        out = np.empty((*self.shape, 4, 3))
        for k, m in enumerate(self.modules):
            m.corners(out[k * rows : (k + 1) * rows])
        return out

    def centers(self) -> tuple[np.ndarray, np.ndarray]:
        p1, p2 = np.empty(self.shape), np.empty(self.shape)
        rows = self.module_shape[0]
        for k, m in enumerate(self.modules):
            p1[k * rows : (k + 1) * rows], p2[k * rows : (k + 1) * rows] = m.centers()
        return p1, p2

    def centers_p3(self) -> np.ndarray | None:
        if self.is_flat:
            return None
        rows = self.module_shape[0]
        return np.repeat([m.height for m in self.modules], rows)[:, None] * np.ones(self.shape)

    def __repr__(self) -> str:
        return (
            f"ModuleStackDetector(modules={self.n_modules}, module_shape={self.module_shape}, "
            f"masked={self._masked_count()})"
        )


def _nodes_to_corners(yy: np.ndarray, xx: np.ndarray, corners: np.ndarray) -> None:
    """p1, p2 of (rows, cols, 4, 3) corners from (rows+1, cols+1) node grids, pyFAI's order."""
    yy, xx = np.broadcast_arrays(yy, xx)
    rows, cols = yy.shape[0] - 1, yy.shape[1] - 1
    for k, (dy, dx) in enumerate(((0, 0), (1, 0), (1, 1), (0, 1))):
        corners[..., k, 1] = yy[dy : dy + rows, dx : dx + cols]
        corners[..., k, 2] = xx[dy : dy + rows, dx : dx + cols]
