"""The workers a stage can run: ``stitch``, ``azint``, or a user function.

A worker is called once per input frame with the frame's parts (numpy views into the input
ring, no copy: one array for plain messages, ``parts`` arrays for datasets) and the frame's
metadata. Built-in workers have a fixed output format (``out_shape``, ``out_dtype``): the
stage reserves the output slot in the next ring and the worker writes into it (no copy),
returning extra metadata. ``out_reused=True`` tells it the slot still holds its own output
of an earlier frame (the stage checks the ring's sequence numbers): what never changes from
frame to frame (the stitcher's gaps) need not be written again. A user function
``fn(parts, meta, **options) -> array`` returns its result, which is published with one
copy.

Detector description for the built-in workers and the simulator, from the stage options
(or the pipeline's ``[detector]`` table): ``layout`` (a Lambda layout TOML; default: the
shipped example), ``poni`` (a pyFAI PONI file) or ``geometry`` (a table of PONI values);
default ``simulator.default_geometry(layout)``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from asapo_hpc.errors import AsapoWrongInputError

if TYPE_CHECKING:
    from asapo_hpc.detectors.lambda9m import Lambda9MLayout
    from asapo_hpc.geometry.poni import PoniGeometry
    from asapo_hpc.pipeline.spec import SimulateSpec, SourceSpec

BUILTIN = ("stitch", "azint")
_DETECTOR_KEYS = ("layout", "poni", "geometry")


def load_layout(options: dict[str, Any], base: Path) -> Lambda9MLayout:
    """The layout named by ``options['layout']`` (relative to ``base``), else the default."""
    from asapo_hpc.detectors.lambda9m import Lambda9MLayout

    path = options.get("layout") or ""
    if not path:
        return Lambda9MLayout.default()
    p = Path(path)
    return Lambda9MLayout.from_toml(p if p.is_absolute() else base / p)


def load_geometry(options: dict[str, Any], layout: Lambda9MLayout, base: Path) -> PoniGeometry:
    """The PONI geometry of ``options`` ('poni' file or 'geometry' table), else the default."""
    from asapo_hpc.detectors.simulator import default_geometry
    from asapo_hpc.geometry.poni import PoniGeometry

    if options.get("poni"):
        p = Path(options["poni"])
        return PoniGeometry.from_file(p if p.is_absolute() else base / p)
    if options.get("geometry"):
        return PoniGeometry(**options["geometry"])
    return default_geometry(layout)


def simulated_format(sim: SimulateSpec, base: Path,
                     detector: dict[str, Any]) -> dict[str, Any]:
    """frame_shape / dtype / parts of the simulator's output."""
    layout = load_layout({"layout": sim.layout or detector.get("layout", "")}, base)
    return dict(frame_shape=tuple(layout.module_shape), dtype=np.dtype(layout.dtype).name,
                parts=layout.n_parts)


def output_format(worker: str, options: dict[str, Any], source: SourceSpec,
                  base: Path) -> dict[str, Any] | None:
    """frame_shape / dtype of what a built-in worker publishes; None for user functions."""
    if worker == "stitch":
        layout = load_layout(options, base)
        shape = layout.stitched_shape(bool(options.get("large_pixels", True)))
        out = options.get("output", "input")
        dtype = "float32" if out == "float32" else source.dtype
        return dict(frame_shape=tuple(shape), dtype=dtype, parts=1)
    if worker == "azint":
        return dict(frame_shape=(len(_result_rows()), int(options.get("npt", 1000))),
                    dtype="float64", parts=1)
    return None


def _result_rows() -> tuple[str, ...]:
    from asapo_hpc.pipeline.spec import RESULT_ROWS

    return RESULT_ROWS


class StitchWorker:
    """Module parts -> one image (``workers.stitch.Stitcher``), written into the out slot.

    Options: layout, large_pixels (default true), output ("input" = the raw dtype, counts
    split exactly over large pixels; or "float32"), fill, apply_flatfield, apply_mask.
    """

    def __init__(self, options: dict[str, Any], source: SourceSpec, base: Path):
        from asapo_hpc.workers.stitch import Stitcher

        layout = load_layout(options, base)
        if source.parts != layout.n_parts:
            raise AsapoWrongInputError(
                f"stitch: input has {source.parts} parts, the layout {layout.n_parts} modules")
        self.stitcher = Stitcher(
            layout, large_pixels=bool(options.get("large_pixels", True)),
            output="float32" if options.get("output", "input") == "float32" else "input",
            fill=options.get("fill", 0), apply_flatfield=options.get("apply_flatfield", True),
            apply_mask=options.get("apply_mask", True))
        self.out_shape = self.stitcher.shape
        self.out_dtype = self.stitcher.output_dtype(np.dtype(source.dtype))

    def __call__(self, parts: list[np.ndarray], meta: dict, out: np.ndarray, *,
                 out_reused: bool = False) -> dict:
        self.stitcher(parts, out=out, gaps_filled=out_reused)  # ~15 % of the image: gaps
        return {}


class AzintWorker:
    """Stitched image (or the module parts) -> I(q) with Poisson sigma: out rows radial,
    intensity, sigma.

    Options: layout, poni / geometry, npt (1000), unit ("q_nm^-1"), method ("no"),
    radial_range, polarization_factor, correct_solid_angle (true). By default the input is a
    stitched image; its shape says whether it was stitched with large-pixel correction; gaps
    and bad pixels are masked.

    ``from_modules = true``: the input is the detector's dataset itself (one part per active
    module, raw or large-pixel-corrected module shape) and no stitch stage is needed: the
    layout places every module pixel (see ``Lambda9MLayout.stack_detector``). Raw wide pixels
    keep their true extent and their area enters the normalisation (as pyFAI's flat), so the
    profile is per normal-pixel area, as after the large-pixel correction. apply_mask
    (true) masks the modules' bad pixels; apply_flatfield (true) divides the counts' weight by
    the modules' flatfields (a pyFAI flat of 1 / flatfield; 0 masks the pixel).
    """

    def __init__(self, options: dict[str, Any], source: SourceSpec, base: Path):
        from asapo_hpc.workers.azint import AzimuthalIntegrator

        layout = load_layout(options, base)
        self.from_modules = bool(options.get("from_modules", False))
        if self.from_modules:
            detector, self.mask, self.flat = _module_inputs(layout, options, source)
        else:
            detector, self.mask = _stitched_inputs(layout, source)
            self.flat = None
        self.integrator = AzimuthalIntegrator(load_geometry(options, layout, base), detector)
        self.npt = int(options.get("npt", 1000))
        self.unit = options.get("unit", "q_nm^-1")
        rr = options.get("radial_range")
        self.kwargs = dict(unit=self.unit, method=options.get("method", "no"),
                           radial_range=tuple(rr) if rr else None,
                           polarization_factor=options.get("polarization_factor"),
                           correct_solid_angle=options.get("correct_solid_angle", True),
                           mask=self.mask, flat=self.flat)
        self.out_shape = (len(_result_rows()), self.npt)
        self.out_dtype = np.dtype(np.float64)

    def integrate(self, data: np.ndarray | list[np.ndarray]):
        """The Integrate1dResult of one stitched image, or of the module parts with
        ``from_modules`` (the stage's own call)."""
        return self.integrator.integrate1d(data, self.npt, **self.kwargs)

    def __call__(self, parts: list[np.ndarray], meta: dict, out: np.ndarray, *,
                 out_reused: bool = False) -> dict:
        result = self.integrate(parts if self.from_modules else parts[0])
        out[0], out[1], out[2] = result.radial, result.intensity, result.sigma
        return {"unit": self.unit, "npt": self.npt, "rows": list(_result_rows())}


def _stitched_inputs(layout: Lambda9MLayout, source: SourceSpec):
    """Detector and mask of a stitched image of ``layout`` (with or without large pixels)."""
    shape = tuple(source.frame_shape)
    if shape == layout.stitched_shape(True):
        large = True
    elif shape == layout.stitched_shape(False):
        large = False
    else:
        raise AsapoWrongInputError(
            f"azint: input frames of shape {shape} are not a stitched image of the "
            f"layout ({layout.stitched_shape(True)} or {layout.stitched_shape(False)}); "
            "for module parts set from_modules = true")
    return layout.stitched_detector(large), layout.stitched_mask(large)


def _module_inputs(layout: Lambda9MLayout, options: dict[str, Any], source: SourceSpec):
    """Detector, mask and flat of the module stack a ``from_modules`` stage integrates."""
    shape = tuple(source.frame_shape)
    if shape not in (layout.module_shape, layout.corrected_module_shape) or \
            source.parts != layout.n_parts:
        raise AsapoWrongInputError(
            f"azint from_modules: input is {source.parts} parts of shape {shape}; the layout "
            f"has {layout.n_parts} modules of {layout.module_shape} raw pixels "
            f"({layout.corrected_module_shape} large-pixel corrected)")
    large = shape == layout.corrected_module_shape != layout.module_shape
    rows, cols = layout.axes[0].source, layout.axes[1].source

    def expand(a: np.ndarray) -> np.ndarray:  # raw module pixels -> corrected grid
        return a[:, rows][:, :, cols] if large else a

    mask = expand(layout.stack_mask()) if options.get("apply_mask", True) else None
    # a wide raw pixel collects the counts of its whole area: normalise by that area
    flat = np.ones((layout.n_parts, *shape), np.float32)
    if not large:
        flat *= layout.area_factor().astype(np.float32)
    if options.get("apply_flatfield", True):
        for i, m in enumerate(layout.active_modules):
            if m.flatfield is not None:
                with np.errstate(divide="ignore"):  # flatfield 0: an infinite flat, masked
                    flat[i] /= expand(m.flatfield[None])[0]
    return layout.stack_detector(large), mask, flat


class FunctionWorker:
    """A user function ``fn(parts, meta, **options) -> array`` (published with one copy)."""

    out_shape = None
    out_dtype = None

    def __init__(self, path: str, options: dict[str, Any]):
        self.fn = import_function(path)
        self.options = {k: v for k, v in options.items() if k not in _DETECTOR_KEYS}

    def __call__(self, parts: list[np.ndarray], meta: dict, out: Any = None) -> np.ndarray:
        return np.asarray(self.fn(parts, meta, **self.options))


def import_function(path: str) -> Callable[..., Any]:
    """``package.module:function`` or ``package.module.function``."""
    module_name, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not attr:
        raise AsapoWrongInputError(
            f"worker {path!r} is not 'stitch', 'azint' or a 'package.module:function' path")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AsapoWrongInputError(f"worker {path!r}: cannot import {module_name}: {exc}") \
            from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise AsapoWrongInputError(f"worker {path!r}: {module_name} has no function {attr!r}")
    return fn


def make_worker(name: str, options: dict[str, Any], source: SourceSpec, base: Path) -> Any:
    """The worker object of a stage."""
    if name == "stitch":
        return StitchWorker(options, source, base)
    if name == "azint":
        return AzintWorker(options, source, base)
    return FunctionWorker(name, options)
