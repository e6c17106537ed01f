"""Per-module NeXus files of a Lambda detector: write them, read a layout back from them.

Layout of one file, as the Lambda's own files have it::

    entry/instrument/detector/data                (frames, rows, cols)    optional
    entry/instrument/detector/translation/distance  [x, y, z] in pixels
    entry/instrument/detector/flatfield           + flatfield_applied (0/1)
    entry/instrument/detector/pixel_mask          + pixel_mask_applied (0/1), non-zero = bad
    entry/instrument/detector/x_pixel_size, y_pixel_size   metres

Orientation is not in the vendor's files; when a writer knows it, it is kept as attributes
``rotation`` (degrees), ``flip_ud`` and ``flip_lr`` of the ``translation`` group, otherwise it
comes from the reference configuration. File names do not identify modules (they are
renumbered when a module is switched off): modules are matched to the reference layout by
their translation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from asapo_hpc.detectors.lambda9m import (
    AxisMap,
    Lambda9MLayout,
    ModuleGeometry,
    Orientation,
    orientation_from_degrees,
)
from asapo_hpc.errors import AsapoLocalIOError, AsapoWrongInputError

DETECTOR_PATH = "entry/instrument/detector"


def write_module_file(
    path: str | Path,
    layout: Lambda9MLayout,
    module: ModuleGeometry,
    frames: np.ndarray | None = None,
    *,
    flatfield_applied: bool = False,
    pixel_mask_applied: bool = False,
    write_orientation: bool = True,
) -> None:
    """Write one module's geometry (and optionally its frames) as a Lambda-like NeXus file."""
    import h5py

    with h5py.File(path, "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        instrument = entry.create_group("instrument")
        instrument.attrs["NX_class"] = "NXinstrument"
        det = instrument.create_group("detector")
        det.attrs["NX_class"] = "NXdetector"
        if frames is not None:
            det.create_dataset("data", data=frames, chunks=(1, *frames.shape[1:]))
        translation = det.create_group("translation")
        distance = translation.create_dataset(
            "distance", data=np.asarray(module.translation, dtype=np.float64)
        )
        distance.attrs["units"] = "pixel"
        if write_orientation:
            o = module.orientation
            translation.attrs["rotation"] = 90 * o.quarter_turns
            translation.attrs["flip_ud"] = int(o.flip_ud)
            translation.attrs["flip_lr"] = int(o.flip_lr)
        det["y_pixel_size"], det["x_pixel_size"] = layout.pixel_size
        flat = module.flatfield
        det["flatfield"] = np.ones(layout.module_shape, np.float32) if flat is None else flat
        det["flatfield_applied"] = int(flatfield_applied)
        mask = np.zeros(layout.module_shape, bool) if module.mask is None else module.mask
        det["pixel_mask"] = mask.astype(np.uint32)
        det["pixel_mask_applied"] = int(pixel_mask_applied)


@dataclasses.dataclass(frozen=True)
class ModuleFile:
    """What one module file says about its module."""

    path: str
    translation: tuple[float, float, float]
    orientation: Orientation | None
    mask: np.ndarray | None
    flatfield: np.ndarray | None
    flatfield_applied: bool
    pixel_mask_applied: bool


def read_module_file(path: str | Path, layout: Lambda9MLayout) -> ModuleFile:
    """Read geometry, mask and flatfield of one module file (raw or corrected shape)."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise AsapoLocalIOError(f"cannot open module file {path}: {exc}") from exc
    with f:
        if DETECTOR_PATH not in f:
            raise AsapoWrongInputError(f"{path}: no {DETECTOR_PATH} group; not a Lambda file?")
        det = f[DETECTOR_PATH]
        if "translation/distance" not in det:
            raise AsapoWrongInputError(f"{path}: no {DETECTOR_PATH}/translation/distance")
        distance = np.asarray(det["translation/distance"][()], dtype=np.float64).ravel()
        if distance.size != 3:
            raise AsapoWrongInputError(f"{path}: translation/distance must hold [x, y, z]")
        attrs = det["translation"].attrs
        orientation = None
        if "rotation" in attrs:
            orientation = orientation_from_degrees(
                attrs["rotation"], bool(attrs.get("flip_ud", 0)), bool(attrs.get("flip_lr", 0))
            )
        flat = _optional(det, "flatfield")
        mask = _optional(det, "pixel_mask")
        return ModuleFile(
            path=str(path),
            translation=tuple(float(v) for v in distance),  # type: ignore[arg-type]
            orientation=orientation,
            mask=None if mask is None else _to_raw(mask != 0, layout, np.logical_or, path),
            flatfield=None if flat is None else _to_raw(flat, layout, np.add, path),
            flatfield_applied=bool(_optional(det, "flatfield_applied", 0)),
            pixel_mask_applied=bool(_optional(det, "pixel_mask_applied", 0)),
        )


def _optional(group: Any, name: str, default: Any = None) -> Any:
    return group[name][()] if name in group else default


def _to_raw(array: np.ndarray, layout: Lambda9MLayout, reduce: Any, path: Any) -> np.ndarray:
    """Bring a per-pixel map to the raw module shape; corrected maps are reduced per raw pixel
    (any virtual pixel bad -> raw pixel bad; flatfield -> mean over the virtual pixels)."""
    if array.shape == layout.module_shape:
        return array
    if array.shape != layout.corrected_module_shape:
        raise AsapoWrongInputError(
            f"{path}: per-pixel map has shape {array.shape}, expected {layout.module_shape} "
            f"or {layout.corrected_module_shape}"
        )
    rows, cols = layout.axes
    out = _reduce_axis(_reduce_axis(array, rows, reduce, 0), cols, reduce, 1)
    if reduce is np.add:
        out = out / layout.area_factor()
        return out.astype(np.float32)
    return out


def _reduce_axis(array: np.ndarray, axis_map: AxisMap, reduce: Any, axis: int) -> np.ndarray:
    return reduce.reduceat(array, axis_map.start, axis=axis)


def layout_from_module_files(
    paths: Sequence[str | Path],
    reference: Lambda9MLayout | None = None,
    *,
    layout_cls: type[Lambda9MLayout] = Lambda9MLayout,
    match_tolerance: float = 2.0,
    **layout_kwargs: Any,
) -> Lambda9MLayout:
    """A layout whose active modules are these files, in this order (the frame's part order).

    With a ``reference`` layout (the installation's configuration), each file is matched to
    the reference module whose translation is within ``match_tolerance`` pixels; reference
    modules without a file are kept, disabled, so the assembled image keeps its shape.
    Without one, modules are named ``m01``... in file order. A flatfield already applied to
    the data (``flatfield_applied``) is not applied again; the mask always is.
    """
    if not paths:
        raise AsapoWrongInputError("no module files given")
    probe = reference if reference is not None else _probe_layout(layout_cls, layout_kwargs)
    files = [read_module_file(p, probe) for p in paths]
    if reference is None:
        modules = [_module(f"m{i + 1:02d}", f, Orientation()) for i, f in enumerate(files)]
        return probe.replace(modules=modules)
    matched = _match_to_reference(files, reference, match_tolerance)
    modules = [_module(ref.name, f, ref.orientation) for f, ref in zip(files, matched, strict=True)]
    used = {ref.name for ref in matched}
    absent = [
        dataclasses.replace(m, enabled=False) for m in reference.modules if m.name not in used
    ]
    return reference.replace(modules=modules + absent)


def _probe_layout(layout_cls: type[Lambda9MLayout], kwargs: dict[str, Any]) -> Lambda9MLayout:
    """A one-module layout carrying the detector parameters, used to read the files."""
    placeholder = ModuleGeometry("probe", (0.0, 0.0, 0.0))
    return layout_cls([placeholder], **kwargs)


def _module(name: str, f: ModuleFile, fallback: Orientation) -> ModuleGeometry:
    return ModuleGeometry(
        name=name,
        translation=f.translation,
        orientation=f.orientation or fallback,
        mask=f.mask,
        flatfield=None if f.flatfield_applied else f.flatfield,
        source=f.path,
    )


def _match_to_reference(
    files: Sequence[ModuleFile], reference: Lambda9MLayout, tolerance: float
) -> list[ModuleGeometry]:
    refs = np.array([m.translation[:2] for m in reference.modules], dtype=np.float64)
    matched: list[ModuleGeometry] = []
    for f in files:
        dist = np.hypot(*(refs - np.asarray(f.translation[:2])).T)
        best = int(np.argmin(dist))
        if dist[best] > tolerance:
            raise AsapoWrongInputError(
                f"{f.path}: translation {f.translation[:2]} matches no module of the reference "
                f"layout within {tolerance} pixels; is it the right installation?"
            )
        module = reference.modules[best]
        if any(m is module for m in matched):
            raise AsapoWrongInputError(
                f"{f.path}: module {module.name} already came from another file"
            )
        matched.append(module)
    return matched
