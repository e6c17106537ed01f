"""PowderFrames.module_pieces: the bank pieces of one module, joined, are what fill writes."""

from __future__ import annotations

import numpy as np

from asapo_hpc.detectors.frames import PowderFrames
from asapo_hpc.detectors.lambda9m import Lambda9MLayout, ModuleGeometry
from asapo_hpc.geometry.poni import PoniGeometry


def test_pieces_concatenate_to_the_filled_module_and_merge_equal_neighbours():
    modules = [ModuleGeometry(f"m{i}", (110 * i, 0, 0)) for i in range(2)]
    layout = Lambda9MLayout(modules, module_shape=(70, 96), chip_shape=(35, 32),
                            large_pixel_factor=3)  # 70 rows: a last block of 6 rows
    geometry = PoniGeometry(dist=0.05, poni1=2e-3, poni2=5e-3, wavelength=1e-10)
    frames = PowderFrames(layout, geometry, block_rows=8, bank_size=3, seed=5)
    for index in range(6):
        choice = frames.block_choice(index)
        want = frames.module_frames(index)
        for part in range(layout.n_parts):
            pieces = frames.module_pieces(part, choice)
            assert all(p.flags.c_contiguous for p in pieces)
            np.testing.assert_array_equal(np.concatenate(pieces), want[part])
            runs = 1 + int(np.count_nonzero(np.diff(choice[part])))
            assert len(pieces) == runs  # one piece per run of equal bank choices
