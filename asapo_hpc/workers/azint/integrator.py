"""An AzimuthalIntegrator-like front end: geometry + detector -> 1-D radial profiles.

Engines come from the registry in :mod:`.engines`, are cached, and are rebuilt (the reason
logged) when the unit, npt, range, mask or geometry change. dark, flat and mask arrays are
cached by identity: after changing one in place, call :meth:`AzimuthalIntegrator.reset`.

A frame is one image of the detector's shape, or, for a detector of stacked modules (shape
(n * rows, cols), e.g. ``Lambda9MLayout.stack_detector()``), a (n, rows, cols) array or a
sequence of n (rows, cols) arrays: the module parts straight from a dataset, integrated where
they lie in memory, without stitching. dark, flat and mask may be given in either shape.
"""

from __future__ import annotations

import logging

import numpy as np

from asapo_hpc.errors import AsapoWrongInputError
from asapo_hpc.geometry import PixelDetector, PoniGeometry, check_unit
from asapo_hpc.workers.azint import cake, kernels
from asapo_hpc.workers.azint.engines import (
    ENGINES,
    UNIT_SCALE,
    Corrections,
    CsrEngine,
    EngineKey,
    NoSplitEngine,
    check_method,
)
from asapo_hpc.workers.azint.results import Integrate1dResult, Integrate2dResult
from asapo_hpc.workers.azint.threads import ThreadChooser

logger = logging.getLogger(__name__)

ERROR_MODELS = ("poisson", None)


def _identity(arr: np.ndarray | None):
    """Cache key of a calibration array: identity and buffer address (not its content)."""
    if arr is None:
        return None
    return (id(arr), arr.__array_interface__["data"][0], arr.shape, arr.dtype.str)


class AzimuthalIntegrator:
    """1-D azimuthal integration following pyFAI's conventions (see FIELD_NOTES.md)."""

    def __init__(self, geometry: PoniGeometry, detector: PixelDetector):
        self.geometry = geometry
        self.detector = detector
        self.reset()

    def reset(self) -> None:
        """Forget every cached engine and correction table."""
        self._engines: dict[tuple[str, ...], object] = {}
        self._corrections: dict[tuple[str, ...], tuple[tuple, Corrections]] = {}
        self._arrays: dict[tuple, np.ndarray] = {}
        self._threads: dict[str, ThreadChooser] = {}
        self._key_memo: tuple | None = None

    # ------------------------------------------------------------------------------ public
    def integrate1d(
        self,
        data: np.ndarray,
        npt: int,
        unit: str = "q_nm^-1",
        radial_range: tuple[float, float] | None = None,
        method: str | tuple = "no",
        mask: np.ndarray | None = None,
        dummy: float | None = None,
        delta_dummy: float | None = None,
        dark: np.ndarray | None = None,
        flat: np.ndarray | None = None,
        correct_solid_angle: bool = True,
        polarization_factor: float | None = None,
        error_model: str | None = "poisson",
        normalization_factor: float = 1.0,
    ) -> Integrate1dResult:
        """Integrate one frame (uint16, uint32, float32, ... as given, never copied whole).

        ``data``: an image of the detector's shape, its (n, rows, cols) module stack, or a
        sequence of n module arrays (see the module docstring).
        """
        parts = self._frame_parts(data)
        key = self._engine_key(npt, unit, radial_range, method, mask)
        if error_model not in ERROR_MODELS:
            raise AsapoWrongInputError(
                f"unknown error model {error_model!r}; use one of {ERROR_MODELS}"
            )
        engine = self._engine(key, mask)
        corr = self._correction_table(
            engine, key, mask, dark, flat, correct_solid_angle, polarization_factor, dummy,
            delta_dummy,
        )
        sums = self._frame_sums(engine, corr, parts, dummy, delta_dummy)
        return self._result(engine, corr, sums, error_model, normalization_factor)

    def integrate2d(
        self,
        data: np.ndarray,
        npt_rad: int,
        npt_azim: int = 360,
        unit: str = "q_nm^-1",
        radial_range: tuple[float, float] | None = None,
        azimuth_range: tuple[float, float] | None = None,
        method: str | tuple = "no",
        mask: np.ndarray | None = None,
        dummy: float | None = None,
        delta_dummy: float | None = None,
        dark: np.ndarray | None = None,
        flat: np.ndarray | None = None,
        correct_solid_angle: bool = True,
        polarization_factor: float | None = None,
        error_model: str | None = "poisson",
        normalization_factor: float = 1.0,
        chi_disc: int = 180,
    ) -> Integrate2dResult:
        """A cake: (npt_azim, npt_rad) bins of chi (degrees) x the radial unit.

        No pixel splitting; conventions, ranges and ``chi_disc`` in :mod:`.cake`. Frames,
        corrections and errors as :meth:`integrate1d`.
        """
        parts = self._frame_parts(data)
        if check_method(method) != ("no", "histogram"):
            raise AsapoWrongInputError(
                f"2-D integration has no pixel splitting: method must be 'no', got {method!r}"
            )
        if isinstance(npt_azim, bool) or not isinstance(npt_azim, (int, np.integer)) or \
                npt_azim <= 0:
            raise AsapoWrongInputError(f"npt_azim must be a positive integer, got {npt_azim!r}")
        if error_model not in ERROR_MODELS:
            raise AsapoWrongInputError(
                f"unknown error model {error_model!r}; use one of {ERROR_MODELS}"
            )
        chi_disc = cake.check_chi_disc(chi_disc)
        base = self._engine_key(npt_rad, unit, radial_range, method, mask)
        key = cake.CakeKey(**{**vars(base), "npt": (int(npt_rad), int(npt_azim))},
                           azimuth_range=cake.azimuth_range_rad(azimuth_range, chi_disc),
                           chi_disc=chi_disc)
        engine = self._engine(key, mask, cake.CakeEngine)
        corr = self._correction_table(
            engine, key, mask, dark, flat, correct_solid_angle, polarization_factor, dummy,
            delta_dummy,
        )
        sums = self._frame_sums(engine, corr, parts, dummy, delta_dummy)
        flat_result = self._result(engine, corr, sums, error_model, normalization_factor)
        return cake.cake_result(engine, flat_result)

    # ---------------------------------------------------------------------------- checking
    def _frame_parts(self, data) -> list[np.ndarray]:
        """The frame as 1-D runs of pixels in detector order, without copying C-contiguous
        input: one run for an image or a stack, one per module for a sequence of parts."""
        if isinstance(data, (list, tuple)):
            parts = [np.asarray(p) for p in data]
            n1, n2 = self.detector.shape
            if not parts or n1 % len(parts) or any(
                p.shape != (n1 // len(parts), n2) for p in parts
            ):
                raise AsapoWrongInputError(
                    f"{len(parts)} parts of shapes {sorted({p.shape for p in parts})} do not "
                    f"stack to the detector shape {self.detector.shape}"
                )
            if len({p.dtype for p in parts}) != 1:
                raise AsapoWrongInputError("all parts of a frame must share one dtype")
            return [_read_only_run(p) for p in parts]
        data = np.asarray(data)
        self._check_shape("frame", data)
        return [_read_only_run(data)]  # no copy for a C-contiguous frame

    def _check_shape(self, name: str, arr: np.ndarray | None) -> None:
        """``arr`` must be of the detector's shape or a (n, rows, cols) stack of it."""
        if arr is None:
            return
        shape = np.shape(arr)
        n1, n2 = self.detector.shape
        stacked = len(shape) == 3 and shape[0] * shape[1] == n1 and shape[2] == n2
        if shape != self.detector.shape and not stacked:
            raise AsapoWrongInputError(
                f"{name} shape {shape} does not match detector shape {self.detector.shape}"
                " (or a stack of modules of it)"
            )

    def _engine_key(self, npt, unit, radial_range, method, mask) -> EngineKey:
        """The engine key of these arguments; the last call's is reused while the arguments
        are equal and the masks the same objects (a stream of frames integrated alike pays
        ~1 us here instead of ~40 for the checks and the key)."""
        if not isinstance(radial_range, (tuple, type(None))):  # arrays: no == comparisons
            self._key_memo = None
            return self._new_engine_key(npt, unit, radial_range, method, mask)
        args = (type(npt), npt, unit, radial_range, method, self._geometry_key())
        memo = self._key_memo
        if (memo is not None and memo[0] is mask and memo[1] is self.detector.mask
                and memo[2] == args):
            return memo[3]
        key = self._new_engine_key(npt, unit, radial_range, method, mask)
        # the masks are held here, so their ids cannot be reused while the memo stands
        self._key_memo = (mask, self.detector.mask, args, key)
        return key

    def _geometry_key(self) -> tuple:
        g = self.geometry
        return (g.dist, g.poni1, g.poni2, g.rot1, g.rot2, g.rot3, g.wavelength)

    def _new_engine_key(self, npt, unit, radial_range, method, mask) -> EngineKey:
        if isinstance(npt, bool) or not isinstance(npt, (int, np.integer)) or npt <= 0:
            raise AsapoWrongInputError(f"npt must be a positive integer, got {npt!r}")
        check_unit(unit)
        method_key = check_method(method)
        self._check_shape("mask", mask)
        rng = None
        if radial_range is not None:
            lo, hi = (float(v) / UNIT_SCALE[unit] for v in radial_range)
            if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
                raise AsapoWrongInputError(f"bad radial_range {radial_range!r}")
            rng = (lo, hi)
        return EngineKey(
            method=method_key, unit=unit, npt=int(npt), radial_range=rng,
            shape=self.detector.shape,
            geometry=self._geometry_key(),
            detector=id(self.detector),
            mask=(_identity(mask), _identity(self.detector.mask)),
        )

    # ------------------------------------------------------------------------------ caches
    def _static_mask(self, mask: np.ndarray | None) -> np.ndarray:
        out = np.zeros(self.detector.shape, bool)
        for m in (self.detector.mask, mask):
            if m is not None:
                out |= np.asarray(m, bool).reshape(self.detector.shape)
        return out

    def _engine(self, key: EngineKey, mask: np.ndarray | None, factory=None):
        engine = self._engines.get(key.slot)
        if engine is not None and engine.key == key:
            return engine
        reason = key.diff(None if engine is None else engine.key)
        logger.info("azint: building %s engine (%s)", "/".join(key.slot), reason)
        static = self._static_mask(mask)
        factory = factory or ENGINES[key.method]
        engine = factory(key, self.geometry, self.detector, static)
        self._engines[key.slot] = engine
        self._corrections.pop(key.slot, None)
        return engine

    def _geometry_array(self, name: str, factor: float | None = None) -> np.ndarray:
        g = self.geometry
        gkey = (name, factor, g.dist, g.poni1, g.poni2, g.rot1, g.rot2, g.rot3, id(self.detector))
        arr = self._arrays.get(gkey)
        if arr is None:
            p1, p2 = self.detector.centers()
            p3 = self.detector.centers_p3()
            if name == "solid_angle":
                arr = g.solid_angle(p1, p2, p3)
            else:
                arr = g.polarization(p1, p2, p3, factor=factor)
            arr = np.ascontiguousarray(arr, dtype=np.float32).ravel()
            self._arrays[gkey] = arr
        return arr

    def _correction_table(
        self, engine, key, mask, dark, flat, solid, pol, dummy, delta_dummy
    ) -> Corrections:
        self._check_shape("dark", dark)
        self._check_shape("flat", flat)
        ckey = (key, _identity(dark), _identity(flat), bool(solid), pol, dummy, delta_dummy)
        cached = self._corrections.get(key.slot)
        if cached is not None and cached[0] == ckey:
            return cached[1]
        logger.info("azint: building correction tables for %s", "/".join(key.slot))
        norm = self._pixel_norm(mask, dark, flat, solid, pol, dummy, delta_dummy)
        dark32 = None if dark is None else np.ascontiguousarray(dark, np.float32).ravel()
        corr = Corrections(engine, norm, dark32)
        self._corrections[key.slot] = (ckey, corr)
        return corr

    def _pixel_norm(self, mask, dark, flat, solid, pol, dummy, delta_dummy) -> np.ndarray:
        """float32 flat x polarisation x solid angle; 0 marks a statically invalid pixel."""
        n = self.detector.size
        norm = np.ones(n, np.float32)
        invalid = self._static_mask(mask).ravel()
        if flat is not None:
            flat32 = np.ascontiguousarray(flat, np.float32).ravel()
            norm *= flat32
            invalid |= _dummy_like(flat32, dummy, delta_dummy)
        if dark is not None:
            dark32 = np.ascontiguousarray(dark, np.float32).ravel()
            invalid |= _dummy_like(dark32, dummy, delta_dummy) | ~np.isfinite(dark32)
        if pol is not None:
            norm *= self._geometry_array("polarization", float(pol))
        if solid:
            norm *= self._geometry_array("solid_angle")
        invalid |= ~np.isfinite(norm)
        norm[invalid] = 0.0
        return norm

    # ---------------------------------------------------------------------------- per frame
    def _frame_sums(
        self, engine, corr: Corrections, parts: list[np.ndarray], dummy, delta_dummy
    ) -> np.ndarray:
        """(6, npt): Σsignal, Σvariance over valid pixels and sums of frame-invalid pixels.

        Every sum is over pixels, so a frame in parts is the sum of its parts' passes, each
        on its slice of the per-pixel tables.
        """
        check_dummy = dummy is not None
        d = np.float32(dummy if check_dummy else 0.0)
        dd = np.float32(delta_dummy or 0.0)
        kind = parts[0].dtype.kind
        if isinstance(engine, NoSplitEngine):
            if len(parts) == 1:  # an image or a stack: no sum of parts to make
                return self._hist_sums(engine, corr, parts[0], 0, check_dummy, d, dd)
            out = np.zeros((6, engine.npt))
            start = 0
            for raw in parts:
                out += self._hist_sums(engine, corr, raw, start, check_dummy, d, dd)
                start += raw.size
            return out
        if corr.gather_is_faster:  # bins narrower than pixels: most pixels listed
            raw = parts[0] if len(parts) == 1 else np.concatenate(parts)  # one copy
            return kernels.csr_pass(raw, *corr.matrix, corr.norm, corr.dark,
                                    check_dummy or kind == "f", check_dummy, d, dd)
        out = np.zeros((6, engine.npt))
        start = 0
        for raw in parts:
            stop = start + raw.size
            if kind in "ui" and not check_dummy:  # integer counts: nothing to check
                out[:2] += self._split_sums(engine, corr, raw, start)
            else:
                out += self._run("split_pass_checked", kernels.split_pass_checked, raw,
                                 *corr.table_part(start, stop), corr.norm[start:stop],
                                 corr.dark[start:stop], check_dummy, d, dd, engine.npt)
            start = stop
        return out

    def _split_sums(self, engine, corr: Corrections, raw, start) -> np.ndarray:
        """(2, npt) split-mode Σsignal, Σvariance of the integer pixels ``start ..
        start + raw.size``: uint16 frames summed in integers, in calls small enough to
        stay exact (one call for usual bin counts)."""
        stop = start + raw.size
        if raw.dtype != np.uint16:
            return self._run("split_pass", kernels.split_pass, raw,
                             *corr.table_part(start, stop), engine.npt)
        out = np.zeros((2, engine.npt))
        for i in range(start, stop, corr.split_step):
            j = min(stop, i + corr.split_step)
            out += self._run("split_pass_u16", kernels.split_pass_u16, raw[i - start:j - start],
                             *corr.table_part(i, j), engine.npt)
        return out

    def _hist_sums(self, engine, corr: Corrections, raw, start, check_dummy, d, dd):
        """No-split sums of the pixels ``start .. start + raw.size`` of the frame; the
        passes read only the pixels of the table's work items (masked runs skipped)."""
        stop = start + raw.size
        if raw.dtype in (np.uint16, np.uint32) and not check_dummy:
            out = np.zeros((6, engine.npt))
            step = corr.packed_step(raw.dtype)
            for i in range(start, stop, step):  # one call unless a bin is very full
                j = min(stop, i + step)
                part, items, counts = raw[i - start:j - start], corr.work_items(i, j), \
                    corr.item_counts(i, j)
                quads = corr.quad_tables(i, j)
                if quads is None:
                    sig, var = self._run("hist_packed", kernels.hist_packed_items,
                                         part, corr.bins[i:j], items, engine.npt, counts)
                else:
                    sig, var = self._run("hist_quads", kernels.hist_quads_items,
                                         part, items, *quads, engine.npt, counts)
                out[0] += sig
                out[1] += var
            return out
        items, norm, dark = (corr.work_items(start, stop), corr.norm[start:stop],
                             corr.dark[start:stop])
        vector = raw.dtype.name in kernels.VECTOR_FRAME_TYPES
        quads = corr.quad_tables(start, stop) if vector else None
        if quads is not None:  # float32 and <= 32-bit integer frames: four pixels an update
            return self._run("hist_quads_checked", kernels.hist_quads_checked_items, raw,
                             items, *quads, engine.npt, norm, dark, check_dummy, d, dd)
        return self._run("hist_checked", kernels.hist_checked_items, raw, corr.bins[start:stop],
                         items, engine.npt, norm, dark, check_dummy, d, dd)

    def _run(self, name: str, fn, *args):
        """A per-frame pass on the thread count measured fastest for it lately."""
        chooser = self._threads.get(name)
        if chooser is None:
            chooser = self._threads[name] = ThreadChooser()
        return chooser.run(fn, *args)

    def _result(self, engine, corr, sums, error_model, nf) -> Integrate1dResult:
        signal, norm, norm2, count, intensity, sigma = kernels.finish_1d(
            corr.static, sums, float(nf), isinstance(engine, CsrEngine))
        variance = sums[1] if error_model == "poisson" else None
        if variance is None:
            sigma = None
        return Integrate1dResult(
            radial=engine.centers(), intensity=intensity, sigma=sigma, unit=engine.key.unit,
            sum_signal=signal, sum_variance=variance, sum_normalization=norm,
            sum_normalization2=norm2, count=count, method=engine.key.method,
            engine=engine.name,
            extra={"radial_range_internal": (engine.lo, engine.hi)},
        )


def _dummy_like(arr: np.ndarray, dummy: float | None, delta_dummy: float | None) -> np.ndarray:
    if dummy is None:
        return np.zeros(arr.size, bool)
    with np.errstate(invalid="ignore"):
        if not delta_dummy:
            return arr == np.float32(dummy)
        return np.abs(arr - np.float32(dummy)) <= np.float32(delta_dummy)


def _read_only_run(arr: np.ndarray) -> np.ndarray:
    """``arr`` as a 1-D read-only view (a copy only if not C-contiguous). The kernels see
    one array type whether the caller's frame is writable or a read-only ring view: Numba
    compiles once per argument type, so mixing both used to compile every pass twice."""
    run = np.ascontiguousarray(arr).reshape(-1)
    if run.flags.writeable:
        run = run.view()
        run.flags.writeable = False
    return run
