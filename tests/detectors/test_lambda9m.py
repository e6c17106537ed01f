"""Lambda 9M layout: configuration, large pixels, placement, coordinates, NeXus files."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from asapo_hpc.detectors.lambda9m import (
    Lambda9MLayout,
    ModuleGeometry,
    Orientation,
    axis_map,
)
from asapo_hpc.detectors.lambda9m_nexus import read_module_file, write_module_file
from asapo_hpc.errors import AsapoWrongInputError

SMALL = dict(module_shape=(8, 24), chip_shape=(4, 8), large_pixel_factor=3)


def small_layout(**changes) -> Lambda9MLayout:
    modules = [
        ModuleGeometry("a", (0, 0, 0)),
        ModuleGeometry("b", (40, 0, 0), Orientation(1, False, True)),
        ModuleGeometry("c", (0, 40, 0), Orientation(2, True, False)),
        ModuleGeometry("d", (40, 40, 0), Orientation(3, False, False)),
    ]
    return Lambda9MLayout(modules, **{**SMALL, **changes})


def test_axis_map_of_a_lambda_module_axis():
    cols = axis_map(1536, 256, 3)
    assert cols.corrected_length == 1556
    assert axis_map(512, 256, 3).corrected_length == 516
    # chip 0 pixel 255 and chip 1 pixel 0 are wide; chip 1 pixel 1 sits 4 pixels further on
    assert (cols.start[254], cols.width[254]) == (254, 1)
    assert (cols.start[255], cols.width[255]) == (255, 3)
    assert (cols.start[256], cols.width[256]) == (258, 3)
    assert cols.start[257] == 261
    assert list(cols.source[255:261]) == [255, 255, 255, 256, 256, 256]
    assert list(cols.sub[255:261]) == [0, 1, 2, 0, 1, 2]


def test_default_layout_is_twelve_modules_from_the_shipped_file():
    layout = Lambda9MLayout.default()
    assert layout.n_parts == 12
    assert layout.module_shape == (512, 1536)
    assert layout.corrected_module_shape == (516, 1556)
    assert layout.dtype == np.uint16
    rows, cols = layout.stitched_shape(large_pixels=True)
    assert rows == 4 * 516 + 3 * 140 and cols == 3 * 1556 + 2 * 30


def test_config_round_trip_through_toml(tmp_path):
    np.save(tmp_path / "mask.npy", np.eye(8, 24, dtype=bool))
    (tmp_path / "det.toml").write_text(
        """
[detector]
module_shape = [8, 24]
chip_shape = [4, 8]
bit_depth = 24
pixel_size = 75e-6

[[module]]
name = "left"
translation = [0, 0, 0]
mask = "mask.npy"

[[module]]
name = "right"
translation = [40, 5]
rotation = 180
flip_lr = true
"""
    )
    layout = Lambda9MLayout.from_toml(tmp_path / "det.toml")
    assert [m.name for m in layout.modules] == ["left", "right"]
    assert layout.dtype == np.uint32 and layout.saturation == 2**24 - 1
    assert layout.pixel_size == (75e-6, 75e-6)
    assert layout.modules[1].orientation == Orientation(2, False, True)
    assert layout.modules[0].mask[3, 3] and not layout.modules[0].mask[3, 4]
    assert layout.stitched_shape() == (5 + 8, 40 + 24)


@pytest.mark.parametrize(
    "module_entry, message",
    [
        ({"translation": [0, 0, 0], "rotation": 45}, "multiple of 90"),
        ({"translation": [0.5, 0, 0]}, "whole pixel"),
        ({"translation": [0]}, "translation"),
        ({"translation": [0, 0, 0], "colour": "red"}, "unknown keys"),
        ({"translation": [0, 0, 0], "flip_ud": "yes"}, "true or false"),
    ],
)
def test_bad_module_config_is_rejected(module_entry, message):
    config = {"detector": {"module_shape": [8, 24], "chip_shape": [4, 8]}, "module": [module_entry]}
    with pytest.raises(AsapoWrongInputError, match=message):
        Lambda9MLayout.from_config(config)


@pytest.mark.parametrize(
    "detector, message",
    [
        ({"module_shape": [8, 20], "chip_shape": [4, 8]}, "whole number of chips"),
        ({"bit_depth": 16}, "bit_depth"),
        ({"pixel_size": -1.0}, "pixel_size"),
        ({"size": 3}, "unknown"),
    ],
)
def test_bad_detector_config_is_rejected(detector, message):
    config = {"detector": detector, "module": [{"translation": [0, 0, 0]}]}
    with pytest.raises(AsapoWrongInputError, match=message):
        Lambda9MLayout.from_config(config)


def test_overlapping_modules_are_rejected():
    # the corrected module is 12 x 32 pixels: a module 31 columns to the right overlaps
    modules = [ModuleGeometry("a", (0, 0, 0)), ModuleGeometry("b", (31, 0, 0))]
    with pytest.raises(AsapoWrongInputError, match="overlap"):
        Lambda9MLayout(modules, **SMALL)
    Lambda9MLayout([modules[0], ModuleGeometry("b", (32, 0, 0))], **SMALL)  # touching is fine


def test_module_slices_follow_translation_and_orientation():
    layout = small_layout()
    slices = layout.module_slices(large_pixels=False)
    assert slices[0] == (slice(0, 8), slice(0, 24))
    assert slices[1] == (slice(0, 24), slice(40, 48))  # rotated: 24 rows x 8 cols
    assert slices[3] == (slice(40, 64), slice(40, 48))
    assert layout.stitched_shape(large_pixels=True) == (40 + 32, 40 + 12)


def test_origin_is_the_smallest_translation():
    modules = [ModuleGeometry("a", (100, 50, 0)), ModuleGeometry("b", (140, 50, 0))]
    layout = Lambda9MLayout(modules, **SMALL)
    assert layout.origin == (50, 100)
    assert layout.module_slices()[1] == (slice(0, 8), slice(40, 64))


def test_stitched_mask_marks_gaps_disabled_modules_and_bad_pixels():
    mask = np.zeros((8, 24), bool)
    mask[1, 2] = True
    layout = small_layout()
    modules = list(layout.modules)
    modules[0] = dataclasses.replace(modules[0], mask=mask)
    modules[3] = dataclasses.replace(modules[3], enabled=False)
    layout = layout.replace(modules=modules)
    stitched = layout.stitched_mask()
    assert stitched[1, 2] and not stitched[1, 3]
    assert stitched[30, 30]  # gap
    assert stitched[45, 45]  # disabled module
    assert layout.stack_mask().shape == (3, 8, 24)


def test_stack_corners_give_large_pixels_their_width():
    layout = Lambda9MLayout([ModuleGeometry("a", (0, 0, 0))], **SMALL)
    corners = layout.stack_corners()
    p = 55e-6
    width = corners[0, 0, :, 2, 2] - corners[0, 0, :, 0, 2]  # corner C - corner A along p2
    expected = np.array([1, 1, 1, 1, 1, 1, 1, 3, 3, 1, 1, 1, 1, 1, 1, 3, 3] + [1] * 7) * p
    np.testing.assert_allclose(width, expected)
    height = corners[0, :, 0, 1, 1] - corners[0, :, 0, 0, 1]
    np.testing.assert_allclose(height, np.array([1, 1, 1, 3, 3, 1, 1, 1]) * p)
    assert corners[0, -1, -1, 2, 1] == pytest.approx(12 * p)
    assert corners[0, -1, -1, 2, 2] == pytest.approx(32 * p)


def test_rotated_module_corners_land_inside_its_footprint():
    layout = small_layout()
    p = 55e-6
    corners = layout.stitched_corners(large_pixels=True)
    # large-pixel corrected modules on integer translations tile the regular grid exactly
    i, j = np.meshgrid(np.arange(corners.shape[0]), np.arange(corners.shape[1]), indexing="ij")
    np.testing.assert_allclose(corners[..., 0, 1], i * p, atol=1e-12)
    np.testing.assert_allclose(corners[..., 2, 2], (j + 1) * p, atol=1e-12)
    # stack corners of module b (rotated 90°, flipped) span its footprint rows 0:32, cols 40:52
    b = layout.stack_corners()[1]
    assert b[..., 1].min() == pytest.approx(0) and b[..., 1].max() == pytest.approx(32 * p)
    assert b[..., 2].min() == pytest.approx(40 * p) and b[..., 2].max() == pytest.approx(52 * p)


def test_stack_and_stitched_coordinates_agree_for_each_pixel():
    """A raw pixel's centre in the stack equals the centre of its stitched pixel."""
    layout = small_layout()
    p1, p2, _ = layout.stack_centers()
    stitched = layout.stitched_corners(large_pixels=False).mean(axis=2)
    placed = zip(layout.active_modules, layout.module_slices(), strict=True)
    for part, (m, (rs, cs)) in enumerate(placed):
        np.testing.assert_allclose(m.orientation.apply(p1[part]), stitched[rs, cs, 1])
        np.testing.assert_allclose(m.orientation.apply(p2[part]), stitched[rs, cs, 2])


def test_detectors_from_the_geometry_package():
    layout = small_layout()
    stack = layout.stack_detector()
    assert stack.shape == (4 * 8, 24)
    c1, _ = stack.centers()
    np.testing.assert_allclose(c1.reshape(4, 8, 24), layout.stack_centers()[0])
    regular = layout.stitched_detector(large_pixels=True)
    assert regular.is_regular and regular.shape == layout.stitched_shape(True)
    explicit = layout.stitched_detector(large_pixels=False)
    assert not explicit.is_regular and explicit.shape == layout.stitched_shape(False)


# ---------------------------------------------------------------------------- NeXus files


def write_files(tmp_path, layout, modules, **kwargs):
    paths = []
    for n, m in enumerate(modules, start=1):
        path = tmp_path / f"scan_00001_m{n:02d}.nxs"
        write_module_file(path, layout, m, **kwargs)
        paths.append(path)
    return paths


def test_layout_round_trips_through_module_files(tmp_path):
    rng = np.random.default_rng(3)
    layout = small_layout()
    modules = [
        dataclasses.replace(
            m,
            mask=rng.random((8, 24)) < 0.1,
            flatfield=rng.uniform(0.8, 1.2, (8, 24)).astype(np.float32),
        )
        for m in layout.modules
    ]
    layout = layout.replace(modules=modules)
    paths = write_files(tmp_path, layout, layout.modules)
    back = Lambda9MLayout.from_module_files(paths, **SMALL)
    assert back.n_parts == 4
    for a, b in zip(layout.modules, back.modules, strict=True):
        assert a.translation == b.translation
        assert a.orientation == b.orientation
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_array_equal(a.flatfield, b.flatfield)
        assert b.source is not None


def test_switched_off_module_is_matched_by_translation_not_file_name(tmp_path):
    reference = small_layout()
    present = [m for m in reference.modules if m.name != "b"]  # b switched off
    # vendor files carry no orientation: it must come from the reference
    paths = write_files(tmp_path, reference, present, write_orientation=False)
    assert [p.name[-7:] for p in paths] == ["m01.nxs", "m02.nxs", "m03.nxs"]  # renumbered
    layout = Lambda9MLayout.from_module_files(paths, reference=reference)
    assert [m.name for m in layout.active_modules] == ["a", "c", "d"]
    assert [m.name for m in layout.modules if not m.enabled] == ["b"]
    assert layout.active_modules[1].orientation == Orientation(2, True, False)
    assert layout.stitched_shape() == reference.stitched_shape()


def test_applied_flatfield_is_not_applied_again(tmp_path):
    layout = Lambda9MLayout([ModuleGeometry("a", (0, 0, 0))], **SMALL)
    module = dataclasses.replace(layout.modules[0], flatfield=np.full((8, 24), 2, np.float32))
    (path,) = write_files(tmp_path, layout, [module], flatfield_applied=True)
    assert Lambda9MLayout.from_module_files([path], **SMALL).modules[0].flatfield is None


def test_corrected_shape_maps_in_files_are_reduced_to_raw_pixels(tmp_path):
    import h5py

    layout = Lambda9MLayout([ModuleGeometry("a", (0, 0, 0))], **SMALL)
    (path,) = write_files(tmp_path, layout, layout.modules)
    with h5py.File(path, "a") as f:
        det = f["entry/instrument/detector"]
        del det["pixel_mask"], det["flatfield"]
        mask = np.zeros((12, 32), np.uint32)
        mask[0, 8] = 1  # one virtual pixel of the wide raw column 7
        det["pixel_mask"] = mask
        det["flatfield"] = np.full((12, 32), 1.5, np.float32)
    f = read_module_file(path, layout)
    assert f.mask.shape == (8, 24) and f.mask[0, 7] and f.mask.sum() == 1
    np.testing.assert_allclose(f.flatfield, 1.5)


def test_file_that_matches_no_reference_module_is_an_error(tmp_path):
    reference = small_layout()
    stray = ModuleGeometry("x", (200, 200, 0))
    (path,) = write_files(tmp_path, reference, [stray])
    with pytest.raises(AsapoWrongInputError, match="matches no module"):
        Lambda9MLayout.from_module_files([path], reference=reference)


def test_not_a_module_file_is_an_error(tmp_path):
    import h5py

    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["data"] = 1
    with pytest.raises(AsapoWrongInputError, match="not a Lambda file"):
        Lambda9MLayout.from_module_files([tmp_path / "x.h5"], **SMALL)
