"""Pixel detectors described by their pixel corners, in pyFAI's ``get_pixel_corners`` layout.

Corners are shaped (n1, n2, 4, 3): pixel index along the slow axis, along the fast axis, corner
A, B, C, D, and the coordinate (p3, p1, p2) in metres. For pixel (i, j) of a regular grid,
A = (i, j), B = (i+1, j), C = (i+1, j+1), D = (i, j+1) in pixel units. Non-contiguous layouts
(detector modules with gaps, wider pixels) give their corners explicitly.
"""

from __future__ import annotations

import numpy as np

from asapo_hpc.errors import AsapoWrongInputError


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

    def corners(self) -> np.ndarray:
        """Pixel corners (n1, n2, 4, 3) float64, (p3, p1, p2) in metres, pyFAI order."""
        if self._corners is not None:
            return self._corners
        n1, n2 = self.shape
        e1 = np.arange(n1 + 1, dtype=np.float64) * self.pixel1
        e2 = np.arange(n2 + 1, dtype=np.float64) * self.pixel2
        out = np.zeros((n1, n2, 4, 3), dtype=np.float64)
        # A, B, C, D = (i, j), (i+1, j), (i+1, j+1), (i, j+1)
        for k, (di, dj) in enumerate(((0, 0), (1, 0), (1, 1), (0, 1))):
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
