"""Synthetic powder-diffraction frames of a Lambda detector, fast enough to feed a simulator.

The expected counts of every raw module pixel are computed once: Gaussian powder rings in 2θ
(from ``PoniGeometry`` at the true pixel centres, large pixels included), a flat background,
the solid angle and the pixel area (a 3-pixel-wide junction pixel collects three times as
many photons). Poisson sampling of 9.4 Mpixel costs ~0.3-0.5 s, far too slow for 100+
frames/s, so:

* a small bank of independent Poisson frames (``bank_size``, default 4) is drawn once with a
  fixed seed;
* frame ``i`` is assembled from the bank block by block (``block_rows`` rows of one module),
  each block taken from a bank frame chosen by a generator seeded with ``(seed, i)``.

Every pixel of every frame is then a true Poisson sample of its expected count, pixels within
a frame are independent, any frame is reproducible from its index alone, and making one costs
one memcpy of the frame (``fill`` writes straight into a caller's buffer, e.g. a shared-memory
view). The price: two frames share a block's noise with probability 1 / ``bank_size``, and
averages over many frames converge to the bank's mean, not the exact expectation. A Numba
Poisson sampler was the alternative; it is 50-100× slower per frame and its parallel random
streams are not reproducible from a seed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from asapo_hpc.detectors.lambda9m import Lambda9MLayout
from asapo_hpc.errors import AsapoWrongInputError
from asapo_hpc.geometry.poni import PoniGeometry

# LaB6 (NIST SRM 660 family), primitive cubic, lattice parameter in metres.
LAB6_LATTICE = 4.15689e-10


def cubic_d_spacings(lattice: float, count: int) -> np.ndarray:
    """The ``count`` largest d-spacings of a primitive cubic lattice (metres), descending."""
    hkl_max = int(math.isqrt(count * 2)) + 3
    sums = {
        h * h + k * k + ll * ll
        for h, k, ll in itertools.product(range(hkl_max + 1), repeat=3)
        if h or k or ll
    }
    return lattice / np.sqrt(np.array(sorted(sums)[:count], dtype=np.float64))


def ring_positions_deg(d_spacings: Sequence[float], wavelength: float) -> np.ndarray:
    """2θ (degrees) of each reflection by Bragg's law; unreachable ones are dropped."""
    s = wavelength / (2.0 * np.asarray(d_spacings, dtype=np.float64))
    return np.rad2deg(2.0 * np.arcsin(s[s < 1.0]))


class PowderFrames:
    """Noisy powder frames for the active modules of ``layout``: (n_parts, rows, cols)."""

    def __init__(
        self,
        layout: Lambda9MLayout,
        geometry: PoniGeometry,
        *,
        d_spacings: Sequence[float] | None = None,
        ring_counts: float = 200.0,
        ring_fwhm_deg: float = 0.05,
        background: float = 5.0,
        bank_size: int = 4,
        block_rows: int = 64,
        seed: int = 0,
    ):
        if bank_size < 1 or block_rows < 1:
            raise AsapoWrongInputError("bank_size and block_rows must be >= 1")
        if ring_fwhm_deg <= 0 or ring_counts < 0 or background < 0:
            raise AsapoWrongInputError("ring_fwhm_deg must be > 0, counts and background >= 0")
        self.layout = layout
        self.geometry = geometry
        self.shape = (layout.n_parts, *layout.module_shape)
        self.dtype = layout.dtype
        self.seed = int(seed)
        self.block_rows = int(block_rows)
        d = cubic_d_spacings(LAB6_LATTICE, 12) if d_spacings is None else d_spacings
        self.rings_deg = ring_positions_deg(d, geometry.wavelength)
        self.expected = self._expected(ring_counts, ring_fwhm_deg, background)
        self.bank = self._draw_bank(bank_size)

    def _expected(self, ring_counts: float, fwhm_deg: float, background: float) -> np.ndarray:
        """Mean counts per raw pixel, float32 (n_parts, rows, cols)."""
        p1, p2, p3 = self.layout.stack_centers()
        p3_or_none = p3 if np.any(p3) else None
        tth = self.geometry.radial("2th_deg", p1, p2, p3_or_none)
        sigma = fwhm_deg / (2.0 * math.sqrt(2.0 * math.log(2.0)))
        signal = np.full(tth.shape, background, dtype=np.float64)
        for order, centre in enumerate(self.rings_deg):
            near = np.abs(tth - centre) < 6 * sigma  # skip the far tails: exp() is the cost
            signal[near] += (ring_counts / (1 + 0.3 * order)) * np.exp(
                -0.5 * ((tth[near] - centre) / sigma) ** 2
            )
        signal *= self.geometry.solid_angle(p1, p2) * self.layout.area_factor()
        return signal.astype(np.float32)

    def _draw_bank(self, bank_size: int) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        bank = np.empty((bank_size, *self.shape), dtype=self.dtype)
        top = min(self.layout.saturation, np.iinfo(self.dtype).max)
        for k in range(bank_size):
            for m in range(self.shape[0]):
                counts = rng.poisson(self.expected[m])
                np.minimum(counts, top, out=counts)
                bank[k, m] = counts
        return bank

    @property
    def bank_size(self) -> int:
        return int(self.bank.shape[0])

    def block_choice(self, index: int) -> np.ndarray:
        """Which bank frame each (module, row block) of frame ``index`` comes from."""
        blocks = -(-self.shape[1] // self.block_rows)
        rng = np.random.default_rng((self.seed, int(index)))
        return rng.integers(self.bank_size, size=(self.shape[0], blocks))

    def fill(self, out: np.ndarray, index: int) -> np.ndarray:
        """Write frame ``index`` into ``out`` (n_parts, rows, cols) of the layout's dtype."""
        if out.shape != self.shape or out.dtype != self.dtype:
            raise AsapoWrongInputError(
                f"out must be {self.dtype} of shape {self.shape}, got {out.dtype} {out.shape}"
            )
        choice = self.block_choice(index)
        for m in range(self.shape[0]):
            for b, k in enumerate(choice[m]):
                rows = slice(b * self.block_rows, (b + 1) * self.block_rows)
                np.copyto(out[m, rows], self.bank[k, m, rows])
        return out

    def module_pieces(self, part: int, choice: np.ndarray) -> list[np.ndarray]:
        """Module ``part`` of the frame whose ``block_choice`` is ``choice``, as the
        contiguous bank pieces that make it up, top to bottom (neighbouring blocks drawn
        from the same bank frame joined into one piece). Concatenated they are the module
        ``fill`` writes; a caller copies them wherever it likes (e.g. with streaming stores
        into a ring slot) instead of going through an intermediate array."""
        row_choice = choice[part]
        pieces, start = [], 0
        for b in range(1, len(row_choice) + 1):
            if b == len(row_choice) or row_choice[b] != row_choice[start]:
                rows = slice(start * self.block_rows, b * self.block_rows)
                pieces.append(self.bank[row_choice[start], part, rows])
                start = b
        return pieces

    def module_frames(self, index: int) -> np.ndarray:
        """Frame ``index`` as a new (n_parts, rows, cols) array."""
        return self.fill(np.empty(self.shape, dtype=self.dtype), index)

    def module_frame_list(self, index: int) -> list[np.ndarray]:
        """Frame ``index`` as one array per active module (the parts of a dataset)."""
        return list(self.module_frames(index))
