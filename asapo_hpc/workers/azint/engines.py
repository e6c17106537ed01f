"""Integration engines and their registry.

An engine holds what depends on geometry only (bin of every pixel, or the CSR matrix); a
:class:`Corrections` holds what depends on dark / flat / polarisation / solid angle / dummy
(per-pixel normalisation, the per-frame bin index or matrix without invalid pixels, and the
frame-independent per-bin sums). Both are cached by the integrator and rebuilt on change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from asapo_hpc.errors import AsapoWrongInputError
from asapo_hpc.geometry import PixelDetector, PoniGeometry
from asapo_hpc.geometry.detector import per_pixel_corners
from asapo_hpc.workers.azint import kernels
from asapo_hpc.workers.azint.reference import bin_edges, upper_bound

#: Output unit -> factor from the internal unit binned in (pyFAI bins 2th in radians and r
#: in metres, then scales the bin centres).
UNIT_SCALE: dict[str, float] = {
    "2th_deg": 180.0 / math.pi,
    "2th_rad": 1.0,
    "q_nm^-1": 1.0,
    "r_mm": 1000.0,
}

#: Masked stretches of the flat pixel index shorter than this are read anyway (their
#: pixels go to the sentinel bin): skipping them would cost a work item more than it saves.
RUN_MIN_GAP = 64
#: The no-split passes skip masked runs only if that cuts the pixels read by this fraction.
RUN_MIN_SAVING = 0.10

#: The no-split passes read pixel quads (:func:`kernels.hist_quads_items`, and
#: :func:`kernels.hist_quads_checked_items`) unless more than this fraction of the quads
#: must be listed (bins narrower than pixels: the one-pixel pass is then faster) or there
#: are more than :data:`kernels.QUAD_MAX_BINS` bins.
QUADS_MAX_LISTED = 0.05

#: Split modes gather through the CSR matrix instead of the pixel-table passes when the
#: table lists more entries than this per pixel (bins narrower than pixels). 512 x 512,
#: 2 threads, listed entries a pixel -> table pass / gather: 0.3 -> 0.32 / 0.87 ms,
#: 2.4 -> 1.57 / 1.25 ms, 3.5 -> 1.90 / 1.61 ms, 4.6 -> 2.9 / 1.9 ms.
GATHER_LISTED_PER_PIXEL = 2.0

#: Short method name -> (split, algorithm) key of the engine registry.
METHODS: dict[str, tuple[str, str]] = {
    "no": ("no", "histogram"),
    "bbox": ("bbox", "csr"),
    "full": ("full", "csr"),
}


def check_method(method: str | tuple) -> tuple[str, str]:
    """Validate ``method`` ("no", "bbox", "full" or a registry tuple) -> registry key."""
    key = METHODS.get(method) if isinstance(method, str) else tuple(method)[:2]
    if key not in ENGINES:
        raise AsapoWrongInputError(
            f"unknown integration method {method!r}; use one of {sorted(METHODS)} "
            f"or {sorted(ENGINES)}"
        )
    return key


def internal_radial(
    geom: PoniGeometry, unit: str, p1: np.ndarray, p2: np.ndarray, p3: np.ndarray | None
) -> np.ndarray:
    """Radial position in the unit pyFAI bins in (2th in rad, r in m, q in nm^-1)."""
    if unit in ("2th_deg", "2th_rad"):
        return geom.tth(p1, p2, p3)
    if unit == "r_mm":
        t1, t2, _ = geom.lab_positions(p1, p2, p3)
        return np.sqrt(t1 * t1 + t2 * t2)
    return geom.q_nm(p1, p2, p3)


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine's geometry-only tables depend on."""

    method: tuple[str, str]
    unit: str
    npt: int
    radial_range: tuple[float, float] | None
    shape: tuple[int, int]
    geometry: tuple
    detector: int
    mask: Any

    @property
    def slot(self) -> tuple[str, ...]:
        """The integrator's cache slot: one engine per slot."""
        return self.method

    def diff(self, other: EngineKey | None) -> str:
        """Human-readable reason why an engine built for ``other`` does not fit ``self``."""
        if other is None:
            return "first use"
        changed = [f for f in self.__dataclass_fields__ if getattr(self, f) != getattr(other, f)]
        return "changed: " + ", ".join(changed)


class _Engine:
    """Common part: bin centres and the geometry-only validity (static mask)."""

    def __init__(self, key: EngineKey, geom: PoniGeometry, det: PixelDetector, mask: np.ndarray):
        self.key = key
        self.npt = key.npt
        self.valid = ~mask.ravel()
        self.lo = self.hi = 0.0
        self.name = f"asapo_hpc.azint.{key.method[0]}_{key.method[1]}_numba"

    def centers(self) -> np.ndarray:
        """Bin centres in the output unit (a new array each call, computed once)."""
        cached = self.__dict__.get("_centers_cache")
        if cached is None:
            cached = self._centers_cache = self._centers()
        return cached.copy()

    def _centers(self) -> np.ndarray:
        raise NotImplementedError


class NoSplitEngine(_Engine):
    """Pixel centre -> one bin; per-pixel bin index (uint16 when npt < 65535)."""

    def __init__(self, key: EngineKey, geom: PoniGeometry, det: PixelDetector, mask: np.ndarray):
        super().__init__(key, geom, det, mask)
        p1, p2 = det.centers()
        pos = np.ascontiguousarray(internal_radial(geom, key.unit, p1, p2, det.centers_p3()))
        pos = pos.ravel()
        if key.radial_range is None:  # pyFAI's histogram takes the range over all pixels
            self.lo, self.hi = float(pos.min()), upper_bound(float(pos.max()))
        else:  # pyFAI stretches a user's upper bound too
            self.lo, self.hi = key.radial_range[0], upper_bound(key.radial_range[1])
        self.edges = bin_edges(self.lo, self.hi, self.npt)
        dtype = np.uint16 if self.npt < np.iinfo(np.uint16).max else np.uint32
        self.bins = kernels.bin_index(
            pos, np.ones(pos.size, bool), self.lo, self.hi, self.edges, self.npt,
            np.empty(pos.size, dtype),
        )

    def _centers(self) -> np.ndarray:
        return 0.5 * (self.edges[1:] + self.edges[:-1]) * UNIT_SCALE[self.key.unit]


class CsrEngine(_Engine):
    """Bounding-box or full pixel splitting through a CSR matrix (rows = bins)."""

    def __init__(self, key: EngineKey, geom: PoniGeometry, det: PixelDetector, mask: np.ndarray):
        super().__init__(key, geom, det, mask)
        crad, corner_chi = _corner_values(geom, det, key.unit, key.method[0] == "full")
        if key.method[0] == "bbox":
            p1, p2 = det.centers()
            center = internal_radial(geom, key.unit, p1, p2, det.centers_p3()).ravel()
            delta = kernels.corner_delta(crad, center)
            lo, maxin = center - delta, center + delta
        else:
            lo, maxin = kernels.corner_min_max(crad)
        self.lo, self.hi = self._range(key.radial_range, lo[self.valid], maxin[self.valid])
        if key.method[0] == "bbox":
            data, indices, indptr = kernels.bbox_csr(center, delta, self.valid, self.lo,
                                                     self.hi, self.npt)
        else:
            data, indices, indptr = kernels.full_csr(
                crad, corner_chi, self.valid, self.lo, self.hi, self.npt
            )
        # two-bin weights in fixed point: the integer pass sums exactly this matrix
        self.matrix = (kernels.quantize_pairs(data, indices, indptr, self.valid.size),
                       indices, indptr)

    @staticmethod
    def _range(radial_range, lo: np.ndarray, hi: np.ndarray) -> tuple[float, float]:
        # pyFAI's split engines clip the lower bound at 0; the upper one is always stretched
        if radial_range is not None:
            return radial_range[0], upper_bound(radial_range[1])
        return max(0.0, float(lo.min())), upper_bound(max(0.0, float(hi.max())))

    def _centers(self) -> np.ndarray:
        width = (self.hi - self.lo) / self.npt
        return (self.lo + (np.arange(self.npt) + 0.5) * width) * UNIT_SCALE[self.key.unit]

    def scipy_matrix(self):
        """The CSR matrix as scipy.sparse (bins x pixels), for tests and users."""
        from scipy.sparse import csr_matrix

        data, indices, indptr = self.matrix
        return csr_matrix((data, indices, indptr), shape=(self.npt, self.valid.size))


def _corner_values(geom: PoniGeometry, det: PixelDetector, unit: str,
                   with_chi: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """(npix, 4) radial position (internal unit) of every pixel's corners, and their chi if
    asked. A regular grid computes them once per corner point, shared by up to four pixels
    (9.4 Mpixel: the arctan2 of 38 M corners took ~2 s); explicit corners each."""
    grid = det.corner_grid()
    if grid is not None:
        p1, p2 = grid
        rad = per_pixel_corners(internal_radial(geom, unit, p1, p2, None))
        return rad, per_pixel_corners(geom.chi(p1, p2)) if with_chi else None
    corners = det.corners()
    c3 = None if det.is_flat else corners[..., 0]
    rad = internal_radial(geom, unit, corners[..., 1], corners[..., 2], c3)
    chi = geom.chi(corners[..., 1], corners[..., 2], c3) if with_chi else None
    return (np.ascontiguousarray(rad.reshape(-1, 4)),
            None if chi is None else np.ascontiguousarray(chi.reshape(-1, 4)))


#: Registry: (split, algorithm) -> engine class.
ENGINES: dict[tuple[str, str], type[_Engine]] = {
    ("no", "histogram"): NoSplitEngine,
    ("bbox", "csr"): CsrEngine,
    ("full", "csr"): CsrEngine,
}


class Corrections:
    """Per-pixel normalisation and validity for one engine and one set of corrections.

    ``norm`` is float32 flat x polarisation x solid angle, 0 for statically invalid pixels;
    ``static`` holds per-bin Σnorm, Σnorm², count, Σdark over statically valid pixels.
    Split engines keep the matrix twice: CSR (``matrix``, for frames needing per-pixel
    checks) and pixel-major (``table``, see :func:`kernels.pixel_table`); ``split_step``
    is the most pixels one call of :func:`kernels.split_pass_u16` may take.
    """

    def __init__(self, engine: _Engine, norm: np.ndarray, dark: np.ndarray | None):
        self.npt = engine.npt
        self.norm = norm
        # only read for pixels found invalid in a frame, so zeros cost nothing per frame
        dark_full = dark if dark is not None else np.zeros(norm.size, np.float32)
        self.dark = dark_full
        valid = norm != 0
        if isinstance(engine, NoSplitEngine):
            self.bins = np.where(valid, engine.bins, engine.npt).astype(engine.bins.dtype)
            self.static = kernels.hist_static_sums(
                self.bins, norm, dark_full, engine.npt, kernels.n_chunks(norm.size)
            )
            self.runs = _skipping_runs(self.bins, engine.npt)
            #: pixels a whole-frame no-split pass reads (fewer than all: masked runs skipped)
            self.pixels_read = norm.size if self.runs is None else int(
                (self.runs[:, 1] - self.runs[:, 0]).sum())
            #: pixels of the fullest bin (a uint32 packed call must hold fewer)
            self.fullest = _fullest_bin(self.bins, engine.npt)
        else:
            data, indices, indptr = engine.matrix
            keep = valid[indices]
            rows = np.repeat(np.arange(engine.npt), np.diff(indptr))[keep]
            counts = np.bincount(rows, minlength=engine.npt)
            self.matrix = (
                np.ascontiguousarray(data[keep]),
                np.ascontiguousarray(indices[keep]),
                np.concatenate(([0], np.cumsum(counts))).astype(np.int32),
            )
            self.static = kernels.csr_static_sums(*self.matrix, norm, dark_full)
            # pixel-major copy for integer frames: the frame is read once, in order
            dtype = np.uint16 if engine.npt < np.iinfo(np.uint16).max else np.uint32
            bins = np.empty(norm.size, dtype)
            u = np.empty(norm.size, np.uint16)
            ex = kernels.pixel_table(*self.matrix, norm.size, bins, u)
            self.table = (bins, u, *ex)
            #: the CSR gather (:func:`kernels.csr_pass`) instead of the table passes when
            #: the pixels over 3+ bins, added one entry at a time, dominate the table
            self.gather_is_faster = ex[0].size > GATHER_LISTED_PER_PIXEL * norm.size
            fullest = _fullest_bin(bins, engine.npt)
            # a call of fewer pixels than the limit cannot overfill a bin
            self.split_step = (norm.size if fullest < kernels.SPLIT_U16_MAX_BIN_PIXELS
                               else kernels.SPLIT_U16_MAX_BIN_PIXELS - 1)
        self._table_parts: dict[tuple[int, int], tuple] = {}
        self._items: dict[tuple[int, int], np.ndarray] = {}
        self._counts: dict[tuple[int, int], np.ndarray] = {}
        self._quads: dict[tuple[int, int], tuple | None] = {}

    def work_items(self, start: int, stop: int) -> np.ndarray:
        """(start, stop) work items of the no-split passes over pixels ``start .. stop``
        (a module part or a packed-pass slice), indexed from ``start``; cached.

        Items of :data:`kernels.CHUNK` pixels cut from the valid runs when skipping masked
        runs pays off, else from the whole slice.
        """
        items = self._items.get((start, stop))
        if items is None:
            if self.runs is None:
                items = kernels.chunk_items(stop - start)
            else:
                items = _chunked(np.clip(self.runs, start, stop) - start, kernels.CHUNK)
            self._items[(start, stop)] = items
        return items

    def item_counts(self, start: int, stop: int) -> np.ndarray:
        """Pixels per bin inside ``work_items(start, stop)``, for the packed pass; cached."""
        counts = self._counts.get((start, stop))
        if counts is None:
            counts = kernels.item_counts(self.bins[start:stop], self.work_items(start, stop),
                                         self.npt)
            self._counts[(start, stop)] = counts
        return counts

    def packed_step(self, dtype: np.dtype) -> int:
        """Most pixels one call of the packed no-split passes may take for frames of
        ``dtype``: uint16 :data:`kernels.PACK_MAX_PIXELS`; uint32 the whole frame unless a
        bin holds over :data:`kernels.PACK48_MAX_BIN_PIXELS` pixels (then that many: no
        call can overfill a bin)."""
        if np.dtype(dtype) == np.uint16:
            return kernels.PACK_MAX_PIXELS
        if self.fullest <= kernels.PACK48_MAX_BIN_PIXELS:
            return self.norm.size
        return kernels.PACK48_MAX_BIN_PIXELS

    def quad_tables(self, start: int, stop: int) -> tuple | None:
        """Tables of the quad passes over ``work_items(start, stop)`` (qidx, off, listed
        pixels, their bins, the quad types used; see :func:`kernels.quad_table`), or None
        where the one-pixel passes are the faster (:data:`QUADS_MAX_LISTED`); cached."""
        key = (start, stop)
        if key not in self._quads:
            tables = None
            if self.npt <= kernels.QUAD_MAX_BINS:
                *tables, listed = kernels.quad_table(self.bins[start:stop],
                                                     self.work_items(start, stop), self.npt)
                if listed > QUADS_MAX_LISTED * max(1, tables[0].size):
                    tables = None
            self._quads[key] = None if tables is None else tuple(tables)
        return self._quads[key]

    def table_part(self, start: int, stop: int) -> tuple:
        """The pixel table of pixels ``start .. stop`` (a module part), indexed from 0.

        Per-pixel columns are views; the few listed pixels (sorted by pixel) are cut out
        and re-based once, then cached.
        """
        if start == 0 and stop == self.norm.size:
            return self.table
        part = self._table_parts.get((start, stop))
        if part is None:
            bins, u, ex_pix, ex_bin, ex_w = self.table
            lo, hi = np.searchsorted(ex_pix, (start, stop))
            part = (bins[start:stop], u[start:stop], (ex_pix[lo:hi] - start).astype(np.int32),
                    ex_bin[lo:hi], ex_w[lo:hi])
            self._table_parts[(start, stop)] = part
        return part


def _fullest_bin(bins: np.ndarray, npt: int) -> int:
    """Pixels of the fullest bin 0 .. npt - 1 (the sentinel npt not counted)."""
    return int(np.bincount(bins, minlength=npt + 1)[:npt].max(initial=0))


def _skipping_runs(bins: np.ndarray, npt: int) -> np.ndarray | None:
    """Valid runs of the flat pixel index (bin != ``npt``, short gaps merged), or None when
    skipping the masked runs would not cut the pixels read by :data:`RUN_MIN_SAVING`."""
    runs = kernels.valid_runs(bins, npt, RUN_MIN_GAP)
    read = int((runs[:, 1] - runs[:, 0]).sum())
    return runs if read <= (1.0 - RUN_MIN_SAVING) * bins.size else None


def _chunked(runs: np.ndarray, chunk: int) -> np.ndarray:
    """Runs (start, stop) cut into work items of at most ``chunk`` pixels; empty runs go."""
    runs = runs[runs[:, 1] > runs[:, 0]]
    pieces = -(-(runs[:, 1] - runs[:, 0]) // chunk)
    owner = np.repeat(np.arange(len(runs)), pieces)
    first = np.cumsum(pieces) - pieces  # index of each run's first item
    starts = runs[owner, 0] + (np.arange(owner.size) - first[owner]) * chunk
    stops = np.minimum(starts + chunk, runs[owner, 1])
    return np.ascontiguousarray(np.stack([starts, stops], axis=1), dtype=np.int64)
