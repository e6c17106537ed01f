"""Numba kernels for radial integration; each has a NumPy twin in :mod:`..reference`.

Per-frame kernels read only the frame and per-pixel tables: pixel quads' histogram entries
or a bin index (no split, :mod:`.nosplit`), a pixel-major table (split modes, integer
frames: first bin + one uint16 fixed-point weight per pixel, the few pixels over 3+ bins in
a short list; uint16 frames summed in exact integers) or the CSR matrix (split modes with
per-pixel checks; both in :mod:`.split`). All stream the frame once, in pixel order, into
private per-thread bins; work items are handed out through an atomic counter. Sums that do
not depend on the frame (normalisation, count, dark) are precomputed per bin
(:mod:`.tables`, which builds every geometry-only table); pixels found invalid in a frame
(NaN, dummy) are subtracted from them, so the per-pixel normalisation is read only for
those rare pixels. :mod:`.intrinsics` holds the LLVM pieces (atomic counter, prefetch,
vector row updates), :mod:`.constants` the layout and tuning constants they share.

Modules depend one way: constants <- intrinsics, tables <- nosplit, split; finish alone.
"""

from asapo_hpc.workers.azint.kernels.constants import (  # noqa: F401 - the package's names
    CHUNK,
    LANES,
    PACK32_MAX_BIN_PIXELS,
    PACK48_MAX_BIN_PIXELS,
    PACK48_SHIFT,
    PACK_MAX_PIXELS,
    PACK_SHIFT,
    PREFETCH_AHEAD,
    PREFETCH_BLOCK,
    QUAD_MAX_BINS,
    QUAD_OFFSETS,
    QUAD_TWO_LANES_BELOW,
    QUAD_TYPE_OF_STEPS,
    QUAD_TYPES,
    SPLIT_LANES,
    SPLIT_U16_MAX_BIN_PIXELS,
    VECTOR_FRAME_TYPES,
    WEIGHT_ONE,
)
from asapo_hpc.workers.azint.kernels.finish import (  # noqa: F401 - the package's names
    finish_1d,
)
from asapo_hpc.workers.azint.kernels.intrinsics import (  # noqa: F401 - the package's names
    add_quad,
    add_quad_float,
    add_row4,
    add_row4_from,
    fetch_add,
    prefetch_nta,
    split_add4_float,
    split_add4_u16,
)
from asapo_hpc.workers.azint.kernels.nosplit import (  # noqa: F401 - the package's names
    hist_checked,
    hist_checked_items,
    hist_packed,
    hist_packed_items,
    hist_quads_checked_items,
    hist_quads_items,
)
from asapo_hpc.workers.azint.kernels.split import (  # noqa: F401 - the package's names
    csr_pass,
    split_pass,
    split_pass_checked,
    split_pass_u16,
)
from asapo_hpc.workers.azint.kernels.tables import (  # noqa: F401 - the package's names
    bbox_csr,
    bin_index,
    chunk_items,
    corner_delta,
    corner_min_max,
    csr_static_sums,
    full_csr,
    hist_static_sums,
    item_counts,
    n_chunks,
    pixel_table,
    quad_table,
    quantize_pairs,
    valid_runs,
)
