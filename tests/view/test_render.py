"""Rendering and message decoding, without a server: PNG encoding, frame layout from
metadata, downsampling, colour scaling, the profile formats."""

from __future__ import annotations

import numpy as np
import pytest

from asapo_hpc.view.png import encode_png
from asapo_hpc.view.profile import ProfileFormatError, decode_profile
from asapo_hpc.view.render import (
    MASKED_RGB,
    FrameFormatError,
    Scale,
    colourise,
    downsample,
    frame_layout,
    normalise,
    render_frame,
    rendered_size,
)

from .conftest import decode_png


def test_png_round_trips_through_pillow():
    rgb = np.random.default_rng(0).integers(0, 256, size=(7, 13, 3), dtype=np.uint8)
    assert np.array_equal(decode_png(encode_png(rgb)), rgb)


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32),
                                 np.zeros((0, 4, 3), np.uint8)])
def test_png_rejects_what_it_cannot_encode(bad):
    with pytest.raises(ValueError):
        encode_png(bad)


def test_layout_comes_from_metadata():
    assert frame_layout({"shape": [3, 4], "dtype": "float32"}, 48) == ((3, 4), np.float32)


def test_layout_stacks_modules_vertically():
    (h, w), dt = frame_layout({"shape": [12, 5, 7], "dtype": "uint32"}, 12 * 5 * 7 * 4)
    assert (h, w, dt) == (60, 7, np.uint32)


def test_layout_defaults_fill_what_metadata_lacks():
    assert frame_layout({}, 40 * 50 * 4, shape=(40, 50), dtype="int32") == ((40, 50), np.int32)
    assert frame_layout({"shape": [2, 3]}, 6) == ((2, 3), np.uint8)  # 1 byte: uint8
    assert frame_layout({}, 2 * 64 * 64) == ((64, 64), np.uint16)  # square uint16 guess


@pytest.mark.parametrize("meta, nbytes, words", [
    ({"shape": [3, 4]}, 48, "dtype"),  # 4 bytes per value: uint32 or float32? must be told
    ({"shape": [3, 5], "dtype": "uint16"}, 24, "does not hold"),
    ({}, 2 * 10, "no shape"),  # 10 values: not square
    ({"dtype": "nonsense"}, 8, "not a numpy type"),
])
def test_layout_errors_say_what_to_send(meta, nbytes, words):
    with pytest.raises(FrameFormatError, match=words):
        frame_layout(meta, nbytes)


def test_downsample_is_a_block_mean_within_max_size():
    image = np.arange(40 * 60, dtype=np.uint16).reshape(40, 60)
    small = downsample(image, 20)
    assert small.shape == (13, 20) == rendered_size((40, 60), 20)
    assert small[0, 0] == pytest.approx(image[:3, :3].mean())
    assert downsample(image, 100).shape == (40, 60)


def test_normalise_clips_at_percentiles_and_masks_non_finite():
    values = np.concatenate([np.linspace(0, 100, 101), [1e9, np.nan]]).astype(np.float32)
    unit = normalise(values.reshape(1, -1), Scale(kind="linear", low_pct=0, high_pct=99))
    assert unit[0, 0] == 0.0 and unit[0, -2] == 1.0  # the hot pixel is clipped, not scaled
    assert np.isnan(unit[0, -1])
    assert 0.4 < unit[0, 50] < 0.6  # 50 of 0..~101: mid-scale, not crushed by the 1e9


def test_colourise_paints_masked_pixels_grey():
    rgb = colourise(np.array([[0.0, 1.0, np.nan]], dtype=np.float32), "viridis")
    assert tuple(rgb[0, 2]) == MASKED_RGB
    assert tuple(rgb[0, 0]) != tuple(rgb[0, 1])


def test_render_frame_makes_a_png_of_the_display_size():
    png = decode_png(render_frame(np.random.default_rng(1).poisson(5, (300, 500)),
                                  Scale(max_size=250)))
    assert png.shape == (150, 250, 3)
    assert len(np.unique(png.reshape(-1, 3), axis=0)) > 10  # a picture, not a flat colour


def test_profile_with_radial_in_metadata():
    q = np.linspace(1, 2, 5)
    out = decode_profile(np.arange(5, dtype=np.float64).view(np.uint8),
                         {"radial": q.tolist(), "unit": "q_nm^-1", "sigma": [1] * 5})
    assert out["unit"] == "q_nm^-1" and out["npt"] == 5
    assert out["radial"] == pytest.approx(q) and out["intensity"] == [0, 1, 2, 3, 4]
    assert out["sigma"] == [1, 1, 1, 1, 1]


def test_profile_as_rows():
    rows = np.array([[0.1, 0.2, 0.3], [5, 6, 7], [1, 1, 2]], dtype=np.float32)
    out = decode_profile(rows.view(np.uint8).ravel(),
                         {"shape": [3, 3], "dtype": "float32", "unit": "2th_deg"})
    assert out["radial"] == pytest.approx([0.1, 0.2, 0.3])
    assert out["intensity"] == [5, 6, 7] and out["sigma"] == [1, 1, 2]


def test_profile_from_radial_range_uses_bin_centres():
    out = decode_profile(np.ones(4, np.float32).view(np.uint8),
                         {"radial_range": [0, 8], "unit": "r_mm"})
    assert out["radial"] == [1.0, 3.0, 5.0, 7.0] and out["unit"] == "r_mm"


def test_bare_profile_is_plotted_against_bin_index():
    out = decode_profile(np.array([3, 4], np.float32).view(np.uint8), {})
    assert out["unit"] == "bin" and out["radial"] == [0, 1] and out["intensity"] == [3, 4]


def test_profile_non_finite_values_become_null():
    out = decode_profile(np.array([1, np.nan], np.float32).view(np.uint8), {})
    assert out["intensity"] == [1.0, None]


@pytest.mark.parametrize("meta", [{"radial": [1, 2, 3]}, {"shape": [4, 2]},
                                  {"dtype": "S4"}])
def test_profile_errors(meta):
    with pytest.raises(ProfileFormatError):
        decode_profile(np.zeros(2, np.float32).view(np.uint8), meta)
