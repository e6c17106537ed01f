"""Stitching: the Numba kernel against the NumPy reference, placement, large pixels, errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from asapo_hpc.detectors.lambda9m import Lambda9MLayout, ModuleGeometry, Orientation
from asapo_hpc.errors import AsapoWrongInputError
from asapo_hpc.workers.stitch import Stitcher, _covered, stitch
from asapo_hpc.workers.stitch_reference import stitch_reference

SMALL = dict(module_shape=(8, 24), chip_shape=(4, 8), large_pixel_factor=3)


def mixed_layout(bit_depth: int = 12, seed: int = 0) -> Lambda9MLayout:
    """Every orientation kind, a disabled module, masks and flatfields."""
    rng = np.random.default_rng(seed)

    def extras():
        return dict(
            mask=rng.random((8, 24)) < 0.05,
            flatfield=rng.uniform(0.5, 1.5, (8, 24)).astype(np.float32),
        )

    modules = [
        ModuleGeometry("a", (0, 0, 0)),
        ModuleGeometry("b", (40, 0, 0), Orientation(1, False, True), **extras()),
        ModuleGeometry("c", (0, 40, 0), Orientation(2, True, False)),
        ModuleGeometry("d", (60, 0, 0), Orientation(3, False, False), enabled=False),
        ModuleGeometry("e", (40, 40, 0), Orientation(3, True, True), **extras()),
        ModuleGeometry("f", (0, 80, 0), Orientation(0, False, True), **extras()),
        ModuleGeometry("g", (40, 80, 0), Orientation(0, True, False)),
    ]
    return Lambda9MLayout(modules, bit_depth=bit_depth, **SMALL)


def random_parts(layout: Lambda9MLayout, seed: int) -> np.ndarray:
    """Counts up to just above saturation, so saturated pixels occur."""
    rng = np.random.default_rng(seed)
    top = layout.saturation
    parts = rng.integers(0, top // 4, (layout.n_parts, *layout.module_shape))
    parts[rng.random(parts.shape) < 0.02] = top
    return parts.astype(layout.dtype)


@pytest.mark.parametrize("large_pixels", [False, True])
@pytest.mark.parametrize("bit_depth", [12, 24])
@pytest.mark.parametrize("output", ["input", "float32"])
def test_kernel_equals_reference(large_pixels, bit_depth, output):
    layout = mixed_layout(bit_depth)
    stitcher = Stitcher(layout, large_pixels=large_pixels, output=output, fill=3)
    for seed in range(3):
        parts = random_parts(layout, seed)
        expected = stitch_reference(parts, layout, large_pixels=large_pixels, output=output, fill=3)
        from_stack = stitcher(parts)
        from_list = stitcher(list(parts))
        assert from_stack.dtype == expected.dtype
        np.testing.assert_array_equal(from_stack, expected)  # bit-identical, floats included
        np.testing.assert_array_equal(from_list, expected)


def test_kernel_equals_reference_without_flatfield_and_mask():
    layout = mixed_layout()
    parts = random_parts(layout, 9)
    stitcher = Stitcher(layout, large_pixels=True, apply_flatfield=False, apply_mask=False)
    expected = stitch_reference(
        parts, layout, large_pixels=True, apply_flatfield=False, apply_mask=False
    )
    np.testing.assert_array_equal(stitcher(parts), expected)


def test_each_module_lands_where_its_translation_says():
    layout = Lambda9MLayout.default()
    parts = np.zeros((12, 512, 1536), np.uint16)
    for m in range(12):
        parts[m, 0, 0] = 100 + m
        parts[m, 511, 1535] = 200 + m
        parts[m, 300, 700] = 300 + m
    image = Stitcher(layout, output="input", fill=9)(parts)
    assert image.shape == layout.stitched_shape()
    for m, module in enumerate(layout.modules):
        x, y, _ = (int(v) for v in module.translation)
        assert image[y, x] == 100 + m
        assert image[y + 511, x + 1535] == 200 + m
        assert image[y + 300, x + 700] == 300 + m
    # gaps: the 30 columns right of module 1, the 140 rows below module 1 (raw footprint)
    assert image[0, 1536] == 9 and image[0, 1585] == 9
    assert image[512, 0] == 9 and image[655, 0] == 9
    assert image.sum(dtype=np.int64) == parts.sum(dtype=np.int64) + 9 * (
        image.size - parts[0].size * 12
    )


def test_rotated_and_flipped_modules_by_hand():
    layout = mixed_layout()
    parts = np.zeros((layout.n_parts, 8, 24), np.uint16)
    b = 1  # part index of module b: rotation 90°, flip_lr, at x=40, y=0
    parts[b, 0, 0] = 11
    parts[b, 0, 23] = 12
    parts[b, 7, 0] = 13
    image = Stitcher(layout, output="input", apply_mask=False, apply_flatfield=False)(parts)
    # fliplr: (r, c) -> (r, 23 - c); rot90: (r, c) -> (23 - c, r)  => (r, c) -> (c, r)
    assert image[0, 40] == 11
    assert image[23, 40] == 12
    assert image[0, 47] == 13
    assert np.count_nonzero(image) == 3


def tiny_layout(module_shape, chip_shape, **kwargs) -> Lambda9MLayout:
    return Lambda9MLayout(
        [ModuleGeometry("m", (0, 0, 0))],
        module_shape=module_shape,
        chip_shape=chip_shape,
        large_pixel_factor=3,
        **kwargs,
    )


def test_large_pixel_split_matches_a_hand_computed_example():
    layout = tiny_layout((2, 4), (2, 2))  # one junction between columns 1 and 2
    raw = np.array([[[7, 10, 5, 2], [0, 4095, 4, 1]]], np.uint16)
    image = Stitcher(layout, large_pixels=True, output="input")(raw)
    np.testing.assert_array_equal(
        image,
        [
            [7, 4, 3, 3, 2, 2, 1, 2],  # 10 -> 4 3 3, 5 -> 2 2 1: remainders go first
            [0, 4095, 4095, 4095, 2, 1, 1, 1],  # saturated 4095 is copied, not divided
        ],
    )
    as_float = Stitcher(layout, large_pixels=True)(raw)
    np.testing.assert_allclose(as_float[0, 1:4], 10 / 3, rtol=1e-7)
    assert as_float[1, 2] == 4095


def test_corner_pixel_of_four_chips_is_split_over_nine():
    layout = tiny_layout((4, 4), (2, 2))
    raw = np.zeros((1, 4, 4), np.uint16)
    raw[0, 1, 1] = 20
    image = Stitcher(layout, large_pixels=True, output="input")(raw)
    assert image.shape == (8, 8)
    np.testing.assert_array_equal(image[1:4, 1:4], [[3, 3, 2], [2, 2, 2], [2, 2, 2]])
    assert image.sum() == 20


def test_large_pixel_correction_conserves_counts_except_saturated():
    layout = mixed_layout()
    parts = random_parts(layout, 4)
    stitcher = Stitcher(layout, large_pixels=True, output="input", apply_flatfield=False,
                        apply_mask=False)
    image = stitcher(parts).astype(np.int64)
    n_virtual = layout.area_factor().astype(np.int64)
    for part, (rows, cols) in enumerate(layout.module_slices(large_pixels=True)):
        raw = parts[part].astype(np.int64)
        saturated = raw >= layout.saturation
        expected = raw[~saturated].sum() + (raw * n_virtual)[saturated].sum()
        assert image[rows, cols].sum() == expected
    assert (parts >= layout.saturation).any()


def test_flatfield_mask_and_fill():
    flat = np.full((8, 24), 2.0, np.float32)
    flat[0, 1] = 0.5
    mask = np.zeros((8, 24), bool)
    mask[2, 3] = True
    modules = [
        ModuleGeometry("a", (0, 0, 0), mask=mask, flatfield=flat),
        ModuleGeometry("b", (40, 0, 0), enabled=False),
    ]
    layout = Lambda9MLayout(modules, **SMALL)
    raw = np.full((1, 8, 24), 10, np.uint16)
    raw[0, 0, 1] = 5
    raw[0, 0, 2] = 4095  # saturated: kept as is
    image = Stitcher(layout, output="input", fill=77)(raw)
    assert image[0, 0] == 20
    assert image[0, 1] == 2  # 5 * 0.5 = 2.5 rounds half to even
    assert image[0, 2] == 4095
    assert image[2, 3] == 77  # masked
    assert image[0, 30] == 77  # gap
    assert image[0, 45] == 77  # disabled module b
    as_float = Stitcher(layout, fill=np.nan)(raw)
    assert as_float[0, 1] == 2.5 and np.isnan(as_float[2, 3]) and np.isnan(as_float[0, 45])


def test_flatfield_clips_at_the_dtype():
    flat = np.full((8, 24), 40.0, np.float32)
    layout = Lambda9MLayout([ModuleGeometry("a", (0, 0, 0), flatfield=flat)], **SMALL)
    raw = np.full((1, 8, 24), 4000, np.uint16)
    assert Stitcher(layout, output="input")(raw).max() == 65535


def test_writes_into_a_given_output_buffer():
    layout = mixed_layout()
    stitcher = Stitcher(layout, output="input")
    out = np.full(stitcher.shape, 12345, np.uint16)
    parts = random_parts(layout, 1)
    assert stitcher(parts, out) is out
    np.testing.assert_array_equal(out, stitch(parts, layout, output="input"))


def test_reused_output_with_gaps_already_filled():
    layout = mixed_layout()
    stitcher = Stitcher(layout, large_pixels=True, output="input", fill=5)
    out = stitcher(random_parts(layout, 1))
    for seed in (2, 3):  # the gaps keep their fill; every module pixel is rewritten
        parts = random_parts(layout, seed)
        stitcher(parts, out, gaps_filled=True)
        expected = stitch_reference(parts, layout, large_pixels=True, output="input", fill=5)
        np.testing.assert_array_equal(out, expected)
    gaps = ~_covered(layout, True, stitcher.shape)
    out[:] = 77  # gaps_filled=True leaves the gaps alone, so they keep what is there
    stitcher(random_parts(layout, 4), out, gaps_filled=True)
    assert (out[gaps] == 77).all()
    fresh = stitcher(random_parts(layout, 4), None, gaps_filled=True)  # a new array: filled
    assert (fresh[gaps] == 5).all()


@pytest.mark.parametrize(
    "parts, message",
    [
        (np.zeros((5, 8, 24), np.uint16), "expected"),
        (np.zeros((6, 8, 20), np.uint16), "expected"),
        (np.zeros((6, 8, 24), np.int16), "uint8, uint16 or uint32"),
        (np.zeros((6, 8, 24), np.float32), "uint8, uint16 or uint32"),
        ([np.zeros((8, 24), np.uint16)] * 5, "5 module parts"),
        ([np.zeros((8, 24), np.uint16)] * 5 + [np.zeros((8, 24), np.uint32)], "mixed dtypes"),
        ([np.zeros((8, 24), np.uint16)] * 5 + [np.zeros((8, 23), np.uint16)], "part 5"),
    ],
)
def test_wrong_parts_are_rejected(parts, message):
    stitcher = Stitcher(mixed_layout())
    with pytest.raises(AsapoWrongInputError, match=message):
        stitcher(parts)


def test_wrong_output_settings_are_rejected():
    layout = mixed_layout()
    parts = random_parts(layout, 0)
    with pytest.raises(AsapoWrongInputError, match="output"):
        Stitcher(layout, output="float64")
    with pytest.raises(AsapoWrongInputError, match="does not fit"):
        Stitcher(layout, output="input", fill=-1)(parts)
    stitcher = Stitcher(layout)
    with pytest.raises(AsapoWrongInputError, match="out must be"):
        stitcher(parts, np.zeros(stitcher.shape, np.float64))
    with pytest.raises(AsapoWrongInputError, match="out must be"):
        stitcher(parts, np.zeros((3, 3), np.float32))


def test_switched_off_module_needs_one_part_less():
    layout = mixed_layout()
    modules = [dataclasses.replace(m, enabled=True) for m in layout.modules]
    full = layout.replace(modules=modules)
    assert full.n_parts == layout.n_parts + 1
    assert Stitcher(full).shape == Stitcher(layout).shape


def test_division_by_reciprocal_is_exact():
    """``_divmod_exact`` (multiply by 1/n, then fix) against integer divmod, including exact
    multiples of n (where x * (1/n) can round below the quotient) and 32-bit counts."""
    from asapo_hpc.workers.stitch import _divmod_exact

    rng = np.random.default_rng(5)
    xs = np.concatenate([np.arange(300), rng.integers(0, 2**32, 2000), [2**32 - 1, 2**16 - 1]])
    for n in (1, 2, 3, 4, 5, 7, 9, 25, 49):
        xs_n = np.concatenate([xs, (xs // n) * n])  # the multiples too
        for x in xs_n:
            assert _divmod_exact.py_func(float(x), n, 1.0 / n) == divmod(int(x), n)
        # the kernel gets 1/width * 1/w_across, a few ulps off 1/n
        for w in (1, 3, 5, 7):
            if n % w == 0:
                inv = (1.0 / w) * (1.0 / (n // w))
                for x in xs_n[::7]:
                    assert _divmod_exact.py_func(float(x), n, inv) == divmod(int(x), n)


@pytest.mark.parametrize("factor", [2, 5])
@pytest.mark.parametrize("output", ["input", "float32"])
def test_other_large_pixel_factors_and_odd_chips(factor, output):
    """Odd chip sizes and other widths: n = 2, 4 or 5, 25; every orientation, flatfields."""
    rng = np.random.default_rng(factor)
    shape = (9, 15)
    orientations = [Orientation(q, fu, fl) for q in range(4) for fu in (False, True)
                    for fl in (False, True)][::2]
    modules = [
        ModuleGeometry(f"m{i}", (40 * (i % 4), 40 * (i // 4), 0), o,
                       flatfield=rng.uniform(0.5, 1.5, shape).astype(np.float32) if i % 2 else None)
        for i, o in enumerate(orientations)
    ]
    layout = Lambda9MLayout(modules, module_shape=shape, chip_shape=(3, 5),
                            large_pixel_factor=factor)
    parts = random_parts(layout, 11)
    expected = stitch_reference(parts, layout, large_pixels=True, output=output)
    np.testing.assert_array_equal(Stitcher(layout, large_pixels=True, output=output)(parts),
                                  expected)


@pytest.mark.parametrize("bit_depth", [12, 24])
@pytest.mark.parametrize("output", ["input", "float32"])
def test_saturated_and_large_counts_at_junctions(bit_depth, output):
    """Junction rows, columns and corners saturated or holding the largest unsaturated count
    (the reciprocal split must stay exact up there), in every orientation."""
    layout = mixed_layout(bit_depth, seed=3)
    parts = random_parts(layout, 6)
    junction_rows, junction_cols = [3, 4], [7, 8, 15, 16]
    for p in range(layout.n_parts):
        for k, r in enumerate(junction_rows):
            parts[p, r, :: 2 + k] = layout.saturation
            parts[p, r, 1 :: 3] = layout.saturation - 1
        for k, c in enumerate(junction_cols):
            parts[p, k % 2 :: 2, c] = layout.saturation - 1 - k
            parts[p, (k + 1) % 2 :: 3, c] = layout.saturation
        parts[p, 3, 7] = layout.saturation  # a corner pixel (split over nine)
        parts[p, 4, 16] = layout.saturation - 1
    for flat in (True, False):
        stitcher = Stitcher(layout, large_pixels=True, output=output, apply_flatfield=flat)
        expected = stitch_reference(parts, layout, large_pixels=True, output=output,
                                    apply_flatfield=flat)
        np.testing.assert_array_equal(stitcher(parts), expected)


def test_counts_table_divides_every_16_bit_count_exactly():
    """The integer split of 16-bit counts divides by a multiply and a shift: exact for every
    count 0 .. 65535 and every n its tables hold (the wide pixels' widths: 2, 3, 5)."""
    from asapo_hpc.workers.stitch import C_MAGIC, C_N, StitchPlan

    v = np.arange(1 << 16, dtype=np.uint64)
    seen = set()
    for factor in (2, 3, 5):
        layout = Lambda9MLayout([ModuleGeometry("a", (0, 0, 0))], module_shape=(9, 15),
                                chip_shape=(3, 5), large_pixel_factor=factor)
        counts = StitchPlan(layout, large_pixels=True).counts.reshape(-1, 5)
        for n, magic in {(int(c[C_N]), int(c[C_MAGIC])) for c in counts}:
            seen.add(n)
            np.testing.assert_array_equal((v * np.uint64(magic)) >> np.uint64(32), v // n)
    assert {2, 3, 5} <= seen


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_full_range_counts_split_like_the_reference(dtype):
    """Counts up to the dtype's top with saturation above them: every junction pixel is
    split by the integer path, the largest counts included."""
    top = int(np.iinfo(dtype).max)
    layout = mixed_layout(12, seed=4).replace(saturation=top + 1)
    rng = np.random.default_rng(8)
    parts = rng.integers(0, top + 1, (layout.n_parts, *layout.module_shape)).astype(dtype)
    parts[:, ::5, ::3] = top
    stitcher = Stitcher(layout, large_pixels=True, output="input", apply_flatfield=False)
    expected = stitch_reference(parts, layout, large_pixels=True, output="input",
                                apply_flatfield=False)
    np.testing.assert_array_equal(stitcher(parts), expected)


def test_read_only_parts_reuse_the_compiled_kernel():
    """Ring frames are read-only views; they must not need a second compiled kernel (a
    compile of seconds on a stage's first streamed frame)."""
    from asapo_hpc.workers.stitch import _stitch_items

    layout = mixed_layout()
    parts = random_parts(layout, 2)
    stitcher = Stitcher(layout, large_pixels=True, output="input")
    expected = stitcher(parts)
    compiled = len(_stitch_items.signatures)
    read_only = parts.copy()
    read_only.flags.writeable = False
    np.testing.assert_array_equal(stitcher(read_only), expected)
    np.testing.assert_array_equal(stitcher(list(read_only)), expected)
    assert len(_stitch_items.signatures) == compiled
