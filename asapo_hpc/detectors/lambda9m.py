"""Lambda 9M geometry: modules, their placement, large pixels and pixel corners.

A Lambda module ("750k") is a grid of Medipix3 chips (2×6 chips of 256×256 pixels, 512×1536
raw pixels of 55 µm). The pixels at a chip junction are wider (three pixels wide by default),
so a module's true extent is 516×1556 pixels; the vendor's large-pixel correction spreads each
wide pixel's counts over the virtual pixels it covers. Installations place modules differently,
so every number here (module and chip shape, wide-pixel factor, pixel size, translations,
orientation) is data: from a TOML configuration or from each module's NeXus file.

Conventions:

* ``translation`` is ``[x, y, z]`` in pixels, as in the NeXus files: ``x`` is the column and
  ``y`` the row of the module's top-left pixel in the assembled image, after the module was
  oriented. The assembled image starts at the smallest translation of any module.
* Orientation: the module array is flipped (``flip_ud`` then ``flip_lr``) and then rotated by
  ``rotation`` degrees (a multiple of 90) with ``numpy.rot90`` semantics (counter-clockwise as
  displayed with row 0 at the top).
* Coordinates are metres in the detector plane, pyFAI's order ``(z, p1, p2)``: p1 along rows
  (slow), p2 along columns (fast), origin at the assembled image's top-left corner.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from asapo_hpc._compat import tomllib
from asapo_hpc.errors import AsapoWrongInputError

if TYPE_CHECKING:
    from asapo_hpc.geometry.detector import DetectorModule, ModuleStackDetector, PixelDetector

DEFAULT_LAYOUT_FILE = "lambda9m_default.toml"

# Bit depth -> dtype of the raw counters (1- and 6-bit modes fit in uint8).
BIT_DEPTH_DTYPES: dict[int, type[np.unsignedinteger]] = {
    1: np.uint8,
    6: np.uint8,
    12: np.uint16,
    24: np.uint32,
}


def _fail(message: str) -> AsapoWrongInputError:
    return AsapoWrongInputError(message)


# --------------------------------------------------------------------------------------------
# Large pixels along one axis
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AxisMap:
    """How the raw pixels of one module axis map onto the corrected (virtual-pixel) axis.

    ``start[t]`` and ``width[t]`` give the corrected pixels covered by raw pixel ``t``;
    ``source[u]`` and ``sub[u]`` give, for corrected pixel ``u``, its raw pixel and its place
    inside that raw pixel (0 .. width-1).
    """

    start: np.ndarray
    width: np.ndarray
    source: np.ndarray
    sub: np.ndarray

    @property
    def raw_length(self) -> int:
        return int(self.start.size)

    @property
    def corrected_length(self) -> int:
        return int(self.source.size)

    def nodes(self, large_pixels: bool) -> np.ndarray:
        """Pixel edges in units of pixels: raw pixels with true widths, or the corrected grid."""
        if large_pixels:
            return np.arange(self.corrected_length + 1, dtype=np.float64)
        return np.append(self.start, self.corrected_length).astype(np.float64)


def axis_map(raw_length: int, chip_length: int, large_pixel_factor: int) -> AxisMap:
    """Map one module axis of ``raw_length`` pixels in chips of ``chip_length`` pixels.

    The first and last pixel of every chip at a junction are ``large_pixel_factor`` pixels wide.
    """
    if chip_length <= 0 or raw_length % chip_length:
        raise _fail(f"module length {raw_length} is not a whole number of chips of {chip_length}")
    if large_pixel_factor < 1:
        raise _fail(f"large_pixel_factor must be >= 1, got {large_pixel_factor}")
    width = np.ones(raw_length, dtype=np.int64)
    junctions = np.arange(chip_length, raw_length, chip_length)
    width[junctions - 1] = large_pixel_factor
    width[junctions] = large_pixel_factor
    start = np.concatenate(([0], np.cumsum(width)[:-1]))
    source = np.repeat(np.arange(raw_length), width)
    sub = np.arange(source.size) - start[source]
    return AxisMap(start=start, width=width, source=source, sub=sub)


# --------------------------------------------------------------------------------------------
# Orientation: one definition used for arrays and for coordinates
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Orientation:
    """Flips, then a rotation by ``quarter_turns`` × 90° (``numpy.rot90`` semantics)."""

    quarter_turns: int = 0
    flip_ud: bool = False
    flip_lr: bool = False

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Orient the first two axes of ``array`` (a view, no copy)."""
        if self.flip_ud:
            array = array[::-1]
        if self.flip_lr:
            array = array[:, ::-1]
        return np.rot90(array, self.quarter_turns % 4, axes=(0, 1))

    def shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        return (shape[1], shape[0]) if self.quarter_turns % 2 else (shape[0], shape[1])

    def points(
        self, y: np.ndarray, x: np.ndarray, height: float, width: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Move points of a ``height`` × ``width`` rectangle the way ``apply`` moves pixels."""
        if self.flip_ud:
            y = height - y
        if self.flip_lr:
            x = width - x
        for _ in range(self.quarter_turns % 4):
            # rot90: new[i, j] = old[j, W - 1 - i], i.e. (y, x) -> (W - x, y)
            y, x = width - x, y
            height, width = width, height
        return y, x


# --------------------------------------------------------------------------------------------
# Modules and layout
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class ModuleGeometry:
    """One module: where it sits, how it is turned, which pixels are bad, its flatfield.

    ``name`` identifies the module across runs (file names do not: they are renumbered when a
    module is switched off). ``mask`` (True = bad) and ``flatfield`` (multiplied into the
    counts) have the raw module shape; ``None`` means none.
    """

    name: str
    translation: tuple[float, float, float]
    orientation: Orientation = Orientation()
    enabled: bool = True
    mask: np.ndarray | None = None
    flatfield: np.ndarray | None = None
    source: str | None = None

    @property
    def row(self) -> int:
        return int(round(self.translation[1]))

    @property
    def col(self) -> int:
        return int(round(self.translation[0]))


class Lambda9MLayout:
    """A set of Lambda modules and everything needed to stitch and integrate them.

    ``modules`` lists every module of the installation; the enabled ones, in this order, are
    the parts of a frame (``active_modules``). Disabled modules keep their place in the
    assembled image, which then shows the fill value there.
    """

    def __init__(
        self,
        modules: Sequence[ModuleGeometry],
        *,
        module_shape: tuple[int, int] = (512, 1536),
        chip_shape: tuple[int, int] = (256, 256),
        large_pixel_factor: int = 3,
        pixel_size: tuple[float, float] = (55e-6, 55e-6),
        bit_depth: int = 12,
        saturation: int | None = None,
        name: str = "lambda",
    ):
        self.name = name
        self.module_shape = _pair_of_ints(module_shape, "module_shape")
        self.chip_shape = _pair_of_ints(chip_shape, "chip_shape")
        self.large_pixel_factor = int(large_pixel_factor)
        self.pixel_size = (float(pixel_size[0]), float(pixel_size[1]))
        if min(self.pixel_size) <= 0:
            raise _fail(f"pixel_size must be positive, got {pixel_size}")
        if bit_depth not in BIT_DEPTH_DTYPES:
            raise _fail(f"bit_depth must be one of {sorted(BIT_DEPTH_DTYPES)}, got {bit_depth}")
        self.bit_depth = int(bit_depth)
        self.saturation = (1 << self.bit_depth) - 1 if saturation is None else int(saturation)
        self.axes = (
            axis_map(self.module_shape[0], self.chip_shape[0], self.large_pixel_factor),
            axis_map(self.module_shape[1], self.chip_shape[1], self.large_pixel_factor),
        )
        self.modules = tuple(modules)
        self._validate_modules()

    # ----- construction ---------------------------------------------------------------------

    @classmethod
    def default(cls) -> Lambda9MLayout:
        """The example layout shipped with the package (not any real installation)."""
        text = resources.files("asapo_hpc.detectors").joinpath(DEFAULT_LAYOUT_FILE).read_text()
        return cls.from_config(tomllib.loads(text))

    @classmethod
    def from_toml(cls, path: str | Path) -> Lambda9MLayout:
        path = Path(path)
        try:
            config = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise _fail(f"{path}: not valid TOML: {exc}") from exc
        return cls.from_config(config, base_dir=path.parent)

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], base_dir: str | Path | None = None
    ) -> Lambda9MLayout:
        """Build from a parsed configuration (``[detector]`` table + ``[[module]]`` array)."""
        return _layout_from_config(cls, config, Path(base_dir) if base_dir else None)

    @classmethod
    def from_module_files(
        cls, paths: Sequence[str | Path], reference: Lambda9MLayout | None = None, **kwargs: Any
    ) -> Lambda9MLayout:
        """Build from one NeXus file per module (see ``lambda9m_nexus``); see that function."""
        from asapo_hpc.detectors.lambda9m_nexus import layout_from_module_files

        return layout_from_module_files(paths, reference=reference, layout_cls=cls, **kwargs)

    def replace(self, **changes: Any) -> Lambda9MLayout:
        """A copy with some constructor arguments changed (e.g. ``modules=...``)."""
        kwargs: dict[str, Any] = dict(
            modules=self.modules,
            module_shape=self.module_shape,
            chip_shape=self.chip_shape,
            large_pixel_factor=self.large_pixel_factor,
            pixel_size=self.pixel_size,
            bit_depth=self.bit_depth,
            saturation=self.saturation,
            name=self.name,
        )
        kwargs.update(changes)
        modules = kwargs.pop("modules")
        return type(self)(modules, **kwargs)

    # ----- basic facts ------------------------------------------------------------------------

    @property
    def active_modules(self) -> tuple[ModuleGeometry, ...]:
        return tuple(m for m in self.modules if m.enabled)

    @property
    def n_parts(self) -> int:
        """Number of module parts a frame has (the enabled modules)."""
        return len(self.active_modules)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(BIT_DEPTH_DTYPES[self.bit_depth])

    @property
    def corrected_module_shape(self) -> tuple[int, int]:
        return (self.axes[0].corrected_length, self.axes[1].corrected_length)

    def module_footprint(self, module: ModuleGeometry, large_pixels: bool) -> tuple[int, int]:
        shape = self.corrected_module_shape if large_pixels else self.module_shape
        return module.orientation.shape(shape)

    @property
    def origin(self) -> tuple[int, int]:
        """(row, col) translation that lands on the assembled image's pixel (0, 0)."""
        return (min(m.row for m in self.modules), min(m.col for m in self.modules))

    def stitched_shape(self, large_pixels: bool = False) -> tuple[int, int]:
        """Shape of the assembled image (rows, cols)."""
        oy, ox = self.origin
        rows = cols = 0
        for m in self.modules:
            h, w = self.module_footprint(m, large_pixels)
            rows = max(rows, m.row - oy + h)
            cols = max(cols, m.col - ox + w)
        return rows, cols

    def module_slices(self, large_pixels: bool = False) -> list[tuple[slice, slice]]:
        """For each active module, the (rows, cols) slices of the assembled image it fills.

        ``image[sl] == orient(module)`` (after the large-pixel correction when asked for);
        ``module_view`` gives the matching view of a module array.
        """
        oy, ox = self.origin
        slices = []
        for m in self.active_modules:
            h, w = self.module_footprint(m, large_pixels)
            slices.append((slice(m.row - oy, m.row - oy + h), slice(m.col - ox, m.col - ox + w)))
        return slices

    # ----- masks ----------------------------------------------------------------------------

    def stack_mask(self) -> np.ndarray:
        """Bad pixels of the unstitched stack (active modules, raw shape), True = bad."""
        mask = np.zeros((self.n_parts, *self.module_shape), dtype=bool)
        for i, m in enumerate(self.active_modules):
            if m.mask is not None:
                mask[i] = m.mask
        return mask

    def stitched_mask(self, large_pixels: bool = False) -> np.ndarray:
        """Pixels of the assembled image that hold no valid count: gaps and bad pixels."""
        mask = np.ones(self.stitched_shape(large_pixels), dtype=bool)
        for m, sl in zip(self.active_modules, self.module_slices(large_pixels), strict=True):
            bad = np.zeros(self.module_shape, dtype=bool) if m.mask is None else m.mask
            if large_pixels:
                bad = bad[self.axes[0].source][:, self.axes[1].source]
            mask[sl] = m.orientation.apply(bad)
        return mask

    # ----- pixel coordinates ------------------------------------------------------------------

    def _module_nodes(
        self, module: ModuleGeometry, large_pixels: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-edge coordinates (p1, p2 in metres) of one module, oriented and translated.

        Shape (rows + 1, cols + 1) in the module's own (un-oriented) array order.
        """
        p1, p2 = self.pixel_size
        y = self.axes[0].nodes(large_pixels) * p1
        x = self.axes[1].nodes(large_pixels) * p2
        yy, xx = np.meshgrid(y, x, indexing="ij")
        height = self.axes[0].corrected_length * p1
        width = self.axes[1].corrected_length * p2
        yy, xx = module.orientation.points(yy, xx, height, width)
        oy, ox = self.origin
        return yy + (module.row - oy) * p1, xx + (module.col - ox) * p2

    def stack_corners(self) -> np.ndarray:
        """Corners of the unstitched stack, (n_parts, rows, cols, 4, 3) float64 metres.

        Raw module order; the large pixels get their true, wider extent. Corner order and
        coordinate order (z, p1, p2) follow pyFAI's ``get_pixel_corners``.
        """
        rows, cols = self.module_shape
        corners = np.empty((self.n_parts, rows, cols, 4, 3))
        for i, m in enumerate(self.active_modules):
            yy, xx = self._module_nodes(m, large_pixels=False)
            corners[i, ..., 0] = m.translation[2] * self.pixel_size[0]
            _nodes_to_corners(yy, xx, corners[i])
        return corners

    def stitched_corners(self, large_pixels: bool = False) -> np.ndarray:
        """Corners of the assembled image, (rows, cols, 4, 3) float64 metres.

        Module pixels get their true positions (wide pixels wide, unless ``large_pixels``
        already split them); gap pixels, which hold no data, get the regular grid.
        """
        shape = self.stitched_shape(large_pixels)
        p1, p2 = self.pixel_size
        yy, xx = np.meshgrid(
            np.arange(shape[0] + 1) * p1, np.arange(shape[1] + 1) * p2, indexing="ij"
        )
        corners = np.zeros((*shape, 4, 3))
        _nodes_to_corners(yy, xx, corners)
        for m, (rs, cs) in zip(self.active_modules, self.module_slices(large_pixels), strict=True):
            my, mx = self._module_nodes(m, large_pixels)
            my, mx = m.orientation.apply(my), m.orientation.apply(mx)
            corners[rs, cs, :, 0] = m.translation[2] * p1
            _nodes_to_corners(my, mx, corners[rs, cs])
        return corners

    def stack_centers(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pixel centres (p1, p2, p3) of the unstitched stack, each (n_parts, rows, cols), metres.

        The mean of each pixel's four corners (as ``PixelDetector.centers``), computed without
        building the corner array.
        """
        shape = (self.n_parts, *self.module_shape)
        p1, p2, p3 = np.empty(shape), np.empty(shape), np.empty(shape)
        for i, m in enumerate(self.active_modules):
            yy, xx = self._module_nodes(m, large_pixels=False)
            p1[i] = 0.25 * (yy[:-1, :-1] + yy[1:, :-1] + yy[1:, 1:] + yy[:-1, 1:])
            p2[i] = 0.25 * (xx[:-1, :-1] + xx[1:, :-1] + xx[1:, 1:] + xx[:-1, 1:])
            p3[i] = m.translation[2] * self.pixel_size[0]
        return p1, p2, p3

    def stack_detector(self, large_pixels: bool = False) -> ModuleStackDetector:
        """The unstitched stack (modules along axis 0) as a detector of shape (n*rows, cols).

        Raw modules (large pixels with their true width) or, with ``large_pixels``, modules
        after the large-pixel correction (corrected_module_shape, a regular grid). Each
        module's orientation and translation become an affine placement; corners are built
        only when a pixel-splitting engine asks for them.
        """
        from asapo_hpc.geometry.detector import ModuleStackDetector

        return ModuleStackDetector(
            [self._module_placement(m, large_pixels) for m in self.active_modules]
        )

    def _module_placement(self, module: ModuleGeometry, large_pixels: bool) -> DetectorModule:
        """Module edges and the affine map ``_module_nodes`` applies, as a DetectorModule."""
        from asapo_hpc.geometry.detector import DetectorModule

        p1, p2 = self.pixel_size
        height = self.axes[0].corrected_length * p1
        width = self.axes[1].corrected_length * p2
        # the orientation is affine: read its matrix (entries 0 or +-1, rounded away from the
        # differences' float error) and offset off three points
        y, x = module.orientation.points(
            np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, 1.0]), height, width
        )
        oy, ox = self.origin
        return DetectorModule(
            self.axes[0].nodes(large_pixels) * p1,
            self.axes[1].nodes(large_pixels) * p2,
            matrix=np.rint([[y[1] - y[0], y[2] - y[0]], [x[1] - x[0], x[2] - x[0]]]),
            offset=(y[0] + (module.row - oy) * p1, x[0] + (module.col - ox) * p2),
            height=module.translation[2] * p1,
        )

    def stitched_detector(self, large_pixels: bool = False) -> PixelDetector:
        """The assembled image as a detector; a regular grid when it is one."""
        from asapo_hpc.geometry.detector import PixelDetector

        if large_pixels and all(m.translation[2] == 0 for m in self.modules):
            # Corrected modules on integer translations tile the regular pixel grid exactly.
            return PixelDetector.regular(self.stitched_shape(True), *self.pixel_size)
        return PixelDetector.from_corners(self.stitched_corners(large_pixels))

    def area_factor(self) -> np.ndarray:
        """Area of each raw module pixel in units of a normal pixel, (rows, cols)."""
        return self.axes[0].width[:, None] * self.axes[1].width[None, :].astype(np.float64)

    # ----- checks -----------------------------------------------------------------------------

    def _validate_modules(self) -> None:
        if not self.modules:
            raise _fail("a layout needs at least one module")
        names = [m.name for m in self.modules]
        if len(set(names)) != len(names):
            raise _fail(f"module names must be unique, got {names}")
        for m in self.modules:
            _check_module(m, self.module_shape)
        self._reject_overlaps()

    def _reject_overlaps(self) -> None:
        boxes = []
        for m in self.modules:
            h, w = self.module_footprint(m, large_pixels=True)
            boxes.append((m.name, m.row, m.col, m.row + h, m.col + w))
        for i, (na, r0, c0, r1, c1) in enumerate(boxes):
            for nb, s0, d0, s1, d1 in boxes[i + 1 :]:
                if r0 < s1 and s0 < r1 and c0 < d1 and d0 < c1:
                    raise _fail(
                        f"modules {na} and {nb} overlap (rows {r0}:{r1} vs {s0}:{s1}, cols "
                        f"{c0}:{c1} vs {d0}:{d1}); check their translations"
                    )

    def __repr__(self) -> str:
        return (
            f"Lambda9MLayout(name={self.name!r}, modules={len(self.modules)}, "
            f"active={self.n_parts}, module_shape={self.module_shape}, "
            f"stitched_shape={self.stitched_shape()})"
        )


def _nodes_to_corners(yy: np.ndarray, xx: np.ndarray, corners: np.ndarray) -> None:
    """Fill p1, p2 of (rows, cols, 4, 3) corners from (rows+1, cols+1) edge grids (pyFAI order)."""
    for k, (dy, dx) in enumerate(((0, 0), (1, 0), (1, 1), (0, 1))):
        corners[..., k, 1] = yy[dy : yy.shape[0] - 1 + dy, dx : yy.shape[1] - 1 + dx]
        corners[..., k, 2] = xx[dy : xx.shape[0] - 1 + dy, dx : xx.shape[1] - 1 + dx]


def _pair_of_ints(value: Iterable[Any], what: str) -> tuple[int, int]:
    try:
        pair = tuple(int(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise _fail(f"{what} must be two integers, got {value!r}") from exc
    if len(pair) != 2 or min(pair) <= 0:
        raise _fail(f"{what} must be two positive integers, got {value!r}")
    return pair  # type: ignore[return-value]


def _check_module(module: ModuleGeometry, module_shape: tuple[int, int]) -> None:
    t = module.translation
    if len(t) != 3 or not all(np.isfinite(t)):
        raise _fail(f"module {module.name}: translation must be [x, y, z], got {t}")
    for value, axis in ((t[0], "x"), (t[1], "y")):
        if abs(value - round(value)) > 1e-6:
            raise _fail(
                f"module {module.name}: translation {axis}={value} is not a whole pixel; "
                "stitching copies whole pixels"
            )
    for what, array in (("mask", module.mask), ("flatfield", module.flatfield)):
        if array is not None and array.shape != tuple(module_shape):
            raise _fail(
                f"module {module.name}: {what} has shape {array.shape}, expected {module_shape}"
            )


def orientation_from_degrees(
    rotation: Any, flip_ud: Any = False, flip_lr: Any = False
) -> Orientation:
    """An ``Orientation`` from a rotation in degrees (a multiple of 90)."""
    try:
        degrees = float(rotation)
    except (TypeError, ValueError) as exc:
        raise _fail(f"rotation must be a number of degrees, got {rotation!r}") from exc
    if degrees % 90:
        raise _fail(f"rotation must be a multiple of 90 degrees, got {rotation}")
    if not isinstance(flip_ud, bool) or not isinstance(flip_lr, bool):
        raise _fail(f"flip_ud and flip_lr must be true or false, got {flip_ud!r}, {flip_lr!r}")
    return Orientation(int(degrees // 90) % 4, flip_ud, flip_lr)


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------

_DETECTOR_KEYS = {
    "name",
    "module_shape",
    "chip_shape",
    "large_pixel_factor",
    "pixel_size",
    "bit_depth",
    "saturation",
}
_MODULE_KEYS = {"name", "translation", "rotation", "flip_ud", "flip_lr", "enabled", "mask",
                "flatfield"}


def _layout_from_config(
    cls: type[Lambda9MLayout], config: Mapping[str, Any], base_dir: Path | None
) -> Lambda9MLayout:
    detector = config.get("detector", {})
    modules = config.get("module")
    if not isinstance(detector, Mapping):
        raise _fail("[detector] must be a table")
    if not isinstance(modules, list) or not modules:
        raise _fail("the configuration needs a [[module]] entry per module")
    unknown = set(detector) - _DETECTOR_KEYS
    if unknown:
        raise _fail(f"unknown [detector] keys {sorted(unknown)}; known: {sorted(_DETECTOR_KEYS)}")
    kwargs = {k: detector[k] for k in _DETECTOR_KEYS if k in detector}
    if "pixel_size" in kwargs and not isinstance(kwargs["pixel_size"], list):
        kwargs["pixel_size"] = (kwargs["pixel_size"], kwargs["pixel_size"])
    parsed = [_module_from_config(i, entry, base_dir) for i, entry in enumerate(modules)]
    return cls(parsed, **kwargs)


def _module_from_config(index: int, entry: Any, base_dir: Path | None) -> ModuleGeometry:
    if not isinstance(entry, Mapping):
        raise _fail(f"[[module]] #{index + 1} must be a table")
    unknown = set(entry) - _MODULE_KEYS
    if unknown:
        raise _fail(f"[[module]] #{index + 1}: unknown keys {sorted(unknown)}")
    name = str(entry.get("name", f"m{index + 1:02d}"))
    translation = entry.get("translation")
    if not isinstance(translation, list) or len(translation) not in (2, 3):
        raise _fail(f"module {name}: translation must be [x, y] or [x, y, z] in pixels")
    try:
        translation = tuple(float(v) for v in [*translation, 0.0][:3])
    except (TypeError, ValueError) as exc:
        raise _fail(f"module {name}: translation must be numbers, got {translation}") from exc
    orientation = orientation_from_degrees(
        entry.get("rotation", 0), entry.get("flip_ud", False), entry.get("flip_lr", False)
    )
    return ModuleGeometry(
        name=name,
        translation=translation,  # type: ignore[arg-type]
        orientation=orientation,
        enabled=bool(entry.get("enabled", True)),
        mask=_load_array(entry.get("mask"), base_dir, name, bool),
        flatfield=_load_array(entry.get("flatfield"), base_dir, name, np.float32),
    )


def _load_array(path: Any, base_dir: Path | None, name: str, dtype: Any) -> np.ndarray | None:
    """Mask / flatfield from a ``.npy`` file named relative to the configuration file."""
    if path is None:
        return None
    full = Path(path) if base_dir is None else base_dir / path
    try:
        return np.load(full).astype(dtype)
    except OSError as exc:
        raise _fail(f"module {name}: cannot read {full}: {exc}") from exc
