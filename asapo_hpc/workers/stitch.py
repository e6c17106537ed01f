"""Stitch Lambda module parts into one image with a Numba kernel.

Everything that depends only on the layout is planned once (``StitchPlan``): one task per
output line of every module (where it goes, which raw line it reads, in which direction),
run tables that cut a line into plain runs (vector copies) and a table of the virtual pixels
of its wide chip-junction pixels (split in one tight loop, the division by ``n`` a multiply
by a precomputed reciprocal with a remainder fix; for counts of up to 16 bits an exact
integer multiply and shift), the gap runs to fill, and the output pixels that masked raw
pixels land on. Tasks and gap runs form one list sorted by output offset, so a frame is one
parallel pass that writes the output front to back (each thread one contiguous half):
sequential stores, and the gaps cost no second pass. (Non-temporal stores through an L1
staging buffer were tried: 2x slower in ``bench/stitch.py`` on a machine whose 32 MB L3
holds much of a frame, which such stores bypass.)
Masked pixels of a line are filled right after the line is written, while it is in cache.

Per pixel, with ``v`` the raw count and ``n`` the number of virtual pixels it covers (1, or
3 / 9 at chip junctions when the large-pixel correction is on):

* saturated pixels (``v >= layout.saturation``) are copied unchanged into every virtual pixel;
* otherwise ``x = v * flatfield`` (float64); float32 output gets ``x / n``; integer output
  rounds ``x`` half-to-even, clips it to the dtype, and splits it exactly: each virtual pixel
  gets ``x // n`` and the first ``x % n`` of them (row-major inside the wide pixel, in the
  module's own frame) one count more, so counts are conserved.

``stitch_reference.stitch_reference`` is the plain NumPy definition of the same result.
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

from asapo_hpc.detectors.lambda9m import AxisMap, Lambda9MLayout, ModuleGeometry
from asapo_hpc.errors import AsapoWrongInputError

# Columns of StitchPlan.tasks / StitchPlan.items (an item with T_RUNS == GAP is a gap run)
# T_PLAIN: 1 when the line is one forward run of plain pixels (a straight copy of a raw row)
T_OUT, T_MODULE, T_BASE, T_TSTRIDE, T_RUNS, T_WACROSS, T_SUBACROSS, T_ALONG_ROW, T_LEN, T_PLAIN = (
    range(10)
)
GAP = -1
# Columns of StitchPlan.runs
R_K0, R_LENGTH, R_T0, R_TDIR, R_WIDTH = range(5)
# Columns of StitchPlan.virtual: output offset in the line, raw t, wide pixel's width, sub
V_K, V_T, V_WIDTH, V_SUB = range(4)
# Columns of StitchPlan.counts: output offset in the line, raw offset from the line's start,
# n, rank, and the multiplier that divides by n (``(v * magic) >> 32 == v // n`` for v < 2^16)
C_K, C_T, C_N, C_RANK, C_MAGIC = range(5)


def identity_axis(length: int) -> AxisMap:
    """An axis without large pixels: raw pixel t is corrected pixel t."""
    idx = np.arange(length, dtype=np.int64)
    return AxisMap(start=idx, width=np.ones(length, np.int64), source=idx, sub=np.zeros_like(idx))


class StitchPlan:
    """Everything the kernel needs that depends on the layout only, built once."""

    def __init__(self, layout: Lambda9MLayout, large_pixels: bool = False):
        self.layout = layout
        self.large_pixels = bool(large_pixels)
        self.shape = layout.stitched_shape(self.large_pixels)
        self.module_shape = layout.module_shape
        self.module_size = layout.module_shape[0] * layout.module_shape[1]
        self.axes = (
            layout.axes if large_pixels else tuple(identity_axis(n) for n in self.module_shape)
        )
        self.runs, self.nruns, self.nplain = _run_tables(self.axes)
        self.virtual, self.nvirtual = _virtual_tables(self.runs, self.nruns, self.nplain)
        self.inv_width = 1.0 / np.maximum(self.virtual[:, :, V_WIDTH], 1)
        self.counts = _counts_table(self.virtual, layout.module_shape[1])
        self.tasks, self.task_ptr = self._tasks()
        self.gap_runs = _gap_runs(layout, self.large_pixels, self.shape)
        self.items = _output_ordered(self.tasks, self.gap_runs)
        self.masked = _masked_outputs(layout, self.large_pixels, self.axes, self.shape)
        self.flatfield = _stacked_flatfield(layout)

    def _tasks(self) -> tuple[np.ndarray, np.ndarray]:
        per_module = []
        slices = self.layout.module_slices(self.large_pixels)
        placed = zip(self.layout.active_modules, slices, strict=True)
        for part, (module, (rows, cols)) in enumerate(placed):
            per_module.append(self._module_tasks(part, module, rows.start, cols.start))
        ptr = np.cumsum([0] + [len(t) for t in per_module])
        return np.concatenate(per_module), ptr

    def _module_tasks(self, part: int, module: ModuleGeometry, row0: int, col0: int) -> np.ndarray:
        """One task per output row of this module's footprint."""
        rows_map, cols_map = self.axes
        shape = (rows_map.corrected_length, cols_map.corrected_length)
        u = module.orientation.apply(np.broadcast_to(np.arange(shape[0])[:, None], shape))
        v = module.orientation.apply(np.broadcast_to(np.arange(shape[1])[None, :], shape))
        along_row = module.orientation.quarter_turns % 2 == 1
        along, across = (u, v) if along_row else (v, u)
        direction = 1 if along.shape[1] < 2 or along[0, 1] > along[0, 0] else -1
        across_map = cols_map if along_row else rows_map
        across_u = across[:, 0]
        t_across = across_map.source[across_u]
        tasks = np.empty((across_u.size, 10), dtype=np.int64)
        tasks[:, T_OUT] = (row0 + np.arange(across_u.size)) * self.shape[1] + col0
        tasks[:, T_MODULE] = part
        tasks[:, T_BASE] = t_across if along_row else t_across * self.module_shape[1]
        tasks[:, T_TSTRIDE] = self.module_shape[1] if along_row else 1
        tasks[:, T_RUNS] = 2 * int(not along_row) + int(direction < 0)
        tasks[:, T_WACROSS] = across_map.width[t_across]
        tasks[:, T_SUBACROSS] = across_map.sub[across_u]
        tasks[:, T_ALONG_ROW] = int(along_row)
        tasks[:, T_LEN] = u.shape[1]  # the footprint's line length
        rid = tasks[0, T_RUNS]
        one_run = self.nruns[rid] == 1 and self.runs[rid, 0, R_WIDTH] == 1
        straight = bool(one_run and rid == 2 and tasks[0, T_TSTRIDE] == 1)
        tasks[:, T_PLAIN] = straight & (tasks[:, T_WACROSS] == 1)
        return tasks

    def mask_spans(self, masked: np.ndarray) -> np.ndarray:
        """For every item, the [lo, hi) range of the sorted ``masked`` outputs it covers."""
        lo = np.searchsorted(masked, self.items[:, T_OUT])
        hi = np.searchsorted(masked, self.items[:, T_OUT] + self.items[:, T_LEN])
        spans = np.stack([lo, hi], axis=1).astype(np.int64)
        spans[self.items[:, T_RUNS] == GAP] = 0
        return spans


def _output_ordered(tasks: np.ndarray, gap_runs: np.ndarray) -> np.ndarray:
    """Module lines and gap runs in one table, sorted by where they start in the output."""
    gaps = np.zeros((len(gap_runs), tasks.shape[1]), dtype=np.int64)
    gaps[:, T_OUT] = gap_runs[:, 0]
    gaps[:, T_LEN] = gap_runs[:, 1]
    gaps[:, T_RUNS] = GAP
    items = np.concatenate([tasks, gaps])
    return np.ascontiguousarray(items[np.argsort(items[:, T_OUT], kind="stable")])


def _run_tables(axes: Sequence[AxisMap]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of a line read along module rows (id 0, 1) or columns (2, 3), forward / reversed.

    Each table lists the plain runs first (``nplain`` of them, copied with vector loops),
    then the wide pixels (one row each, split in one tight loop): the order of runs inside a
    line does not matter, they write disjoint pixels.
    """
    tables = [_runs(axes[a], d) for a in (0, 1) for d in (1, -1)]
    tables = [sorted(t, key=lambda run: run[R_WIDTH] > 1) for t in tables]
    runs = np.zeros((4, max(len(t) for t in tables), 5), dtype=np.int64)
    for i, t in enumerate(tables):
        runs[i, : len(t)] = t
    nruns = np.array([len(t) for t in tables], dtype=np.int64)
    nplain = np.array([sum(run[R_WIDTH] == 1 for run in t) for t in tables], dtype=np.int64)
    return runs, nruns, nplain


def _virtual_tables(runs: np.ndarray, nruns: np.ndarray,
                    nplain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per run table, one row per virtual pixel of its wide pixels: (k, raw t, width, sub).

    ``sub`` is the virtual pixel's place inside its wide pixel along the line, in the
    module's own frame (a reversed line visits them backwards).
    """
    tables = []
    for rid in range(len(runs)):
        rows = []
        for k0, width, t, tdir, _ in runs[rid, nplain[rid] : nruns[rid]]:
            for j in range(width):
                rows.append((k0 + j, t, width, j if tdir > 0 else width - 1 - j))
        tables.append(rows)
    virtual = np.zeros((len(runs), max(1, max(len(t) for t in tables)), 4), dtype=np.int64)
    for rid, rows in enumerate(tables):
        virtual[rid, : len(rows)] = np.array(rows, dtype=np.int64).reshape(-1, 4)
    return virtual, np.array([len(t) for t in tables], dtype=np.int64)


def _counts_table(virtual: np.ndarray, row_length: int) -> np.ndarray:
    """``virtual`` for the common case (integer counts of at most 16 bits, no flatfield, a
    line of plain pixels across: n = width, rank = sub), with the raw offsets scaled by the
    line's stride (run tables 0 and 1 read down columns) and exact reciprocals."""
    width = np.maximum(virtual[:, :, V_WIDTH], 1)
    counts = np.zeros((*virtual.shape[:2], 5), dtype=np.int64)
    counts[:, :, C_K] = virtual[:, :, V_K]
    counts[:, :, C_T] = virtual[:, :, V_T] * np.array([row_length, row_length, 1, 1])[:, None]
    counts[:, :, C_N] = width
    counts[:, :, C_RANK] = virtual[:, :, V_SUB]
    counts[:, :, C_MAGIC] = -(-(1 << 32) // width)  # ceil: exact below 2^32 / width
    return counts


def _runs(axis: AxisMap, direction: int) -> list[tuple[int, int, int, int, int]]:
    """Cut one output line into runs: (k0, length, first raw t, t step, pixel width)."""
    length = axis.corrected_length
    u_of_k = np.arange(length) if direction > 0 else np.arange(length)[::-1]
    runs: list[tuple[int, int, int, int, int]] = []
    k = 0
    while k < length:
        t = int(axis.source[u_of_k[k]])
        w = int(axis.width[t])
        if w > 1:
            runs.append((k, w, t, direction, w))
            k += w
            continue
        k_end = k
        while k_end < length and axis.width[axis.source[u_of_k[k_end]]] == 1:
            k_end += 1
        runs.append((k, k_end - k, t, direction, 1))
        k = k_end
    return runs


def _covered(layout: Lambda9MLayout, large_pixels: bool, shape: tuple[int, int]) -> np.ndarray:
    covered = np.zeros(shape, dtype=bool)
    for rows, cols in layout.module_slices(large_pixels):
        covered[rows, cols] = True
    return covered


def _gap_runs(layout: Lambda9MLayout, large_pixels: bool, shape: tuple[int, int]) -> np.ndarray:
    """(flat start, length) of every horizontal run of pixels no active module covers."""
    gaps = np.zeros((shape[0], shape[1] + 2), dtype=np.int8)
    gaps[:, 1:-1] = ~_covered(layout, large_pixels, shape)
    edges = np.diff(gaps, axis=1)
    starts = np.argwhere(edges == 1)
    ends = np.argwhere(edges == -1)
    runs = np.empty((len(starts), 2), dtype=np.int64)
    runs[:, 0] = starts[:, 0] * shape[1] + starts[:, 1]
    runs[:, 1] = ends[:, 1] - starts[:, 1]
    return runs


def _masked_outputs(
    layout: Lambda9MLayout, large_pixels: bool, axes: Sequence[AxisMap], shape: tuple[int, int]
) -> np.ndarray:
    """Flat output indices of every virtual pixel of a masked raw pixel."""
    found = []
    slices = layout.module_slices(large_pixels)
    for module, (rows, cols) in zip(layout.active_modules, slices, strict=True):
        if module.mask is None or not module.mask.any():
            continue
        bad = module.orientation.apply(module.mask[axes[0].source][:, axes[1].source])
        r, c = np.nonzero(bad)
        found.append((r + rows.start) * shape[1] + c + cols.start)
    return np.concatenate(found).astype(np.int64) if found else np.zeros(0, np.int64)


def _stacked_flatfield(layout: Lambda9MLayout) -> np.ndarray | None:
    modules = layout.active_modules
    if all(m.flatfield is None for m in modules):
        return None
    flat = np.ones((len(modules), *layout.module_shape), dtype=np.float32)
    for i, m in enumerate(modules):
        if m.flatfield is not None:
            flat[i] = m.flatfield
    return flat.reshape(-1)


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


@numba.njit(inline="always")
def _divmod_exact(x, n, inv_n):  # pragma: no cover - compiled
    """``divmod(x, n)`` for a whole float ``0 <= x < 2**52``, without a division.

    ``x * inv_n`` is within one of ``x / n`` (``inv_n = 1 / n`` rounded), so its truncation
    is the floor or one off; the remainder tells which and fixes it. A division would cost
    more than the rest of a junction pixel and does not vectorise.
    """
    vi = np.int64(x)
    q = np.int64(x * inv_n)
    r = vi - q * n
    q = q + 1 if r >= n else q
    r = r - n if r >= n else r
    q = q - 1 if r < 0 else q
    r = r + n if r < 0 else r
    return q, r


@numba.njit(inline="always")
def _share_int(v, flat_value, has_flat, n, inv_n, rank, sat, maxval):  # pragma: no cover
    """Integer output: what virtual pixel ``rank`` of a raw count ``v`` split over ``n`` gets.

    Returned as int64 (no float round trip before the store). Without a flatfield the
    rounding and clipping are no-ops (the output dtype is the input's), so they are skipped.
    """
    x = np.float64(v)
    if has_flat:
        x = min(max(np.rint(x * flat_value), 0.0), maxval)
    q, r = _divmod_exact(x, n, inv_n)
    share = q + (1 if rank < r else 0)
    return np.int64(v) if v >= sat else share


@numba.njit(inline="always")
def _share_float(v, flat_value, n, sat):  # pragma: no cover - compiled
    """Float output: ``v * flat / n`` (a true division, as the reference), saturated kept."""
    return np.float64(v) if v >= sat else np.float64(v) * flat_value / n


@numba.njit
def _gained(v, gain, sat, int_out, maxval):  # pragma: no cover - compiled
    """``_share`` for a plain pixel (n = 1), written without early returns so it vectorises."""
    x = np.float64(v) * np.float64(gain)
    if int_out:
        x = min(max(np.rint(x), 0.0), maxval)
    return np.float64(v) if v >= sat else x


# The line helpers index with unsigned offsets instead of slicing: a slice takes a reference
# on the array (an atomic add on a counter both threads share), and unsigned indices need no
# negative-index wraparound. The two contiguous-line loops stay separate (not inlined)
# functions: inlined into the parallel loop body, LLVM no longer vectorised them.


@numba.njit
def _copy_line(src, s, out, o, count):  # pragma: no cover - compiled
    """out[o:o+count] = src[s:s+count], converting the dtype on the way."""
    s, o = np.uint64(s), np.uint64(o)
    for j in range(np.uint64(count)):
        out[o + j] = src[s + j]


@numba.njit
def _gain_line(src, s, flat, f, out, o, count, sat, int_out, maxval):  # pragma: no cover
    s, f, o = np.uint64(s), np.uint64(f), np.uint64(o)
    for j in range(np.uint64(count)):
        out[o + j] = _gained(src[s + j], flat[f + j], sat, int_out, maxval)


@numba.njit(inline="always")
def _strided_run(src, s, step, flat, f, has_flat, out, o, count, sat, int_out,
                 maxval):  # pragma: no cover - compiled
    """A line read backwards or down a column (flipped / rotated modules)."""
    for j in range(count):
        if has_flat:
            out[o + j] = _gained(src[s + j * step], flat[f + j * step], sat, int_out, maxval)
        else:
            out[o + j] = src[s + j * step]


@numba.njit(inline="always")
def _plain_run(src, s, step, flat, f, has_flat, out, o, count, sat, int_out,
               maxval):  # pragma: no cover - compiled
    """Normal pixels: one raw pixel -> one output pixel."""
    if step != 1:
        _strided_run(src, s, step, flat, f, has_flat, out, o, count, sat, int_out, maxval)
    elif has_flat:
        _gain_line(src, s, flat, f, out, o, count, sat, int_out, maxval)
    else:
        _copy_line(src, s, out, o, count)


@numba.njit
def _split_line(src, s, flat, f, has_flat, out, o, count, step, n, rank, sat, int_out,
                maxval):  # pragma: no cover - compiled
    """Plain pixels of a wide line: every raw value split over ``n`` (the line's width
    across) with one ``rank``. Branch-free per pixel, so a forward run vectorises."""
    s, f, o = np.int64(s), np.int64(f), np.uint64(o)
    inv_n = 1.0 / n
    for j in range(np.uint64(count)):
        t = np.int64(j) * step
        flat_value = np.float64(flat[np.uint64(f + t)]) if has_flat else 1.0
        v = src[np.uint64(s + t)]
        if int_out:
            out[o + j] = _share_int(v, flat_value, has_flat, n, inv_n, rank, sat, maxval)
        else:
            out[o + j] = _share_float(v, flat_value, n, sat)


@numba.njit
def _wide_pixels(src, s_line, f_line, tstride, flat, has_flat, out, o, virtual, inv_width,
                 nvirtual, w_across, sub_across, along_row, sat, int_out,
                 maxval):  # pragma: no cover - compiled
    """The virtual pixels of a line's wide (chip-junction) pixels, from their table.

    One branch-free pass, one table row per virtual pixel (~30 per line): n and the rank
    come from the row and the line; the division is a multiply by ``1 / width * 1 / w_across``
    (a few ulps off ``1 / n``, which ``_divmod_exact`` absorbs).
    """
    s_line, f_line, o = np.uint64(s_line), np.uint64(f_line), np.uint64(o)
    inv_across = 1.0 / w_across
    for e in range(np.uint64(nvirtual)):
        width = virtual[e, V_WIDTH]
        sub_along = virtual[e, V_SUB]
        t = np.uint64(virtual[e, V_T] * tstride)
        n = width * w_across
        rank = sub_along * w_across + sub_across if along_row else sub_across * width + sub_along
        flat_value = np.float64(flat[f_line + t]) if has_flat else 1.0
        k = o + np.uint64(virtual[e, V_K])
        if int_out:
            out[k] = _share_int(src[s_line + t], flat_value, has_flat, n,
                                inv_width[e] * inv_across, rank, sat, maxval)
        else:
            out[k] = _share_float(src[s_line + t], flat_value, n, sat)


@numba.njit(inline="always")
def _wide_counts(src, s_line, out, o, counts, rid, nv, sat):  # pragma: no cover - compiled
    """``_wide_pixels`` for the common case (see ``_counts_table``): integer arithmetic
    from a precomputed table, 2.8 -> 1.4 ns per virtual pixel (186 k per Lambda 9M frame).
    Inlined: a call per line (of ~30 entries) cost ~10 % of a frame on one thread."""
    s_line, o = np.uint64(s_line), np.uint64(o)
    for e in range(np.uint64(nv)):
        v = np.uint64(src[s_line + np.uint64(counts[rid, e, C_T])])
        n = np.uint64(counts[rid, e, C_N])
        q = (v * np.uint64(counts[rid, e, C_MAGIC])) >> np.uint64(32)
        r = v - q * n
        share = q + (np.uint64(counts[rid, e, C_RANK]) < r)
        out[o + np.uint64(counts[rid, e, C_K])] = v if v >= sat else share


@numba.njit(inline="always")
def _module_line(src, s_line, f_line, items, i, runs, nplain, virtual, inv_width, nvirtual,
                 counts, flat, has_flat, sat, int_out, maxval, out):  # pragma: no cover - compiled
    """One output line of one module: its plain runs, then its wide pixels."""
    o = items[i, T_OUT]
    tstride = items[i, T_TSTRIDE]
    rid = items[i, T_RUNS]
    w_across = items[i, T_WACROSS]
    sub_across = items[i, T_SUBACROSS]
    for r in range(nplain[rid]):
        k0 = runs[rid, r, R_K0]
        count = runs[rid, r, R_LENGTH]
        t0 = runs[rid, r, R_T0]
        step = runs[rid, r, R_TDIR] * tstride
        s = s_line + t0 * tstride
        f = f_line + t0 * tstride
        if w_across == 1:
            _plain_run(src, s, step, flat, f, has_flat, out, o + k0, count, sat, int_out,
                       maxval)
        else:  # plain pixels of a wide raw line: n = w_across, rank = sub_across
            _split_line(src, s, flat, f, has_flat, out, o + k0, count, step, w_across,
                        sub_across, sat, int_out, maxval)
    if src.itemsize <= 2 and int_out and not has_flat and w_across == 1:
        _wide_counts(src, s_line, out, o, counts, rid, nvirtual[rid], sat)
        return
    _wide_pixels(src, s_line, f_line, tstride, flat, has_flat, out, o, virtual[rid],
                 inv_width[rid], nvirtual[rid], w_across, sub_across,
                 items[i, T_ALONG_ROW] != 0, sat, int_out, maxval)


@intrinsic
def _pointer_at(typingctx, address, like):  # pragma: no cover - compiled
    """A typed pointer (the dtype of array ``like``) to the memory at integer ``address``."""
    signature = types.CPointer(like.dtype)(types.int64, like)

    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], context.get_value_type(sig.return_type))

    return signature, codegen


@numba.njit(parallel=True, cache=True)
def _stitch_items(part_addresses, like, part_size, items, runs, nplain, virtual, inv_width,
                  nvirtual, counts,
                  module_size, flat,
                  has_flat, masked, mask_spans, fill, fill_gaps, sat, int_out, maxval,
                  out):  # pragma: no cover - compiled
    """The whole frame in one pass over ``items`` (module lines and gap runs, output order).

    Parts are reached through their addresses (``like`` gives the dtype): a view made with
    ``carray`` has no reference count, where taking an array out of a tuple per line costs
    an atomic increment both threads contend for, and one signature serves any number of
    parts. prange's static split hands each thread one contiguous half of the output.
    """
    for i in numba.prange(items.shape[0]):
        o = items[i, T_OUT]
        if items[i, T_RUNS] == GAP:
            if fill_gaps:
                o, n = np.uint64(o), np.uint64(items[i, T_LEN])
                for j in range(n):
                    out[o + j] = fill
            continue
        module = items[i, T_MODULE]
        src = numba.carray(_pointer_at(part_addresses[module], like), part_size)
        s_line = items[i, T_BASE]
        if items[i, T_PLAIN] != 0 and not has_flat:  # the common case, kept lean
            _copy_line(src, s_line, out, o, items[i, T_LEN])
        else:
            f_line = module * module_size + s_line
            _module_line(src, s_line, f_line, items, i, runs, nplain, virtual, inv_width,
                         nvirtual, counts, flat, has_flat,
                         sat, int_out, maxval, out)
        for k in range(mask_spans[i, 0], mask_spans[i, 1]):
            out[masked[k]] = fill


# --------------------------------------------------------------------------------------------
# Python face
# --------------------------------------------------------------------------------------------

INPUT_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.uint32))
# The kernel's ``like`` per input dtype: one array type whether the parts are writable or
# read-only views of a ring (Numba compiles once per argument type)
_DTYPE_OF = {dtype: np.empty(0, dtype) for dtype in INPUT_DTYPES}


class Stitcher:
    """Stitch frames of one layout: ``image = stitcher(parts)``.

    ``parts`` is a (n_parts, rows, cols) array or a sequence of n_parts (rows, cols) arrays
    (one per active module, in ``layout.active_modules`` order) of uint8 / uint16 / uint32.
    ``output`` is ``"float32"`` or ``"input"`` (the parts' dtype). Gaps, disabled modules and
    masked pixels get ``fill``.
    """

    def __init__(
        self,
        layout: Lambda9MLayout,
        *,
        large_pixels: bool = False,
        output: str = "float32",
        fill: float = 0,
        apply_flatfield: bool = True,
        apply_mask: bool = True,
    ):
        if output not in ("float32", "input"):
            raise AsapoWrongInputError(f"output must be 'float32' or 'input', got {output!r}")
        self.layout = layout
        self.plan = StitchPlan(layout, large_pixels)
        self.output = output
        self.fill = fill
        self._flat = self.plan.flatfield if apply_flatfield else None
        self._masked = np.sort(self.plan.masked) if apply_mask else np.zeros(0, np.int64)
        self._mask_spans = self.plan.mask_spans(self._masked)

    @property
    def shape(self) -> tuple[int, int]:
        return self.plan.shape

    def output_dtype(self, input_dtype: np.dtype) -> np.dtype:
        return np.dtype(np.float32) if self.output == "float32" else np.dtype(input_dtype)

    def __call__(
        self,
        parts: np.ndarray | Sequence[np.ndarray],
        out: np.ndarray | None = None,
        *,
        gaps_filled: bool = False,
    ) -> np.ndarray:
        """Stitch one frame into ``out`` (a new array if None) and return it.

        ``gaps_filled=True`` skips the gaps (and disabled modules): pass it when ``out``
        already holds the fill value there, e.g. it was stitched into by this stitcher
        before and nothing else wrote into it. The gaps never change, so a caller reusing
        one output buffer saves writing ~20 % of the image per frame.
        """
        arrays, dtype = self._check_parts(parts)
        out_dtype = self.output_dtype(dtype)
        if out is None:
            gaps_filled = False
        out = self._check_out(out, out_dtype)
        flat_out = out.reshape(-1)
        int_out = out_dtype.kind in "ui"
        maxval = float(np.iinfo(out_dtype).max) if int_out else 0.0
        fill = self._fill_value(out_dtype)
        flat = self._flat if self._flat is not None else np.ones(1, np.float32)
        plan = self.plan
        if isinstance(arrays, np.ndarray):
            step = plan.module_size * dtype.itemsize
            addresses = arrays.ctypes.data + step * np.arange(len(arrays), dtype=np.int64)
        else:
            addresses = np.array([a.ctypes.data for a in arrays], dtype=np.int64)
        # ``arrays`` stays referenced here until the kernel returns: the addresses stay valid
        _stitch_items(addresses, _DTYPE_OF[dtype], plan.module_size, plan.items,
                      plan.runs, plan.nplain, plan.virtual, plan.inv_width, plan.nvirtual,
                      plan.counts, plan.module_size, flat, self._flat is not None,
                      self._masked, self._mask_spans, fill, not gaps_filled,
                      self.layout.saturation, int_out, maxval, flat_out)
        return out

    def _fill_value(self, dtype: np.dtype) -> float | int:
        if dtype.kind in "ui":
            info = np.iinfo(dtype)
            if self.fill != int(self.fill) or not info.min <= self.fill <= info.max:
                raise AsapoWrongInputError(f"fill value {self.fill} does not fit {dtype}")
            return dtype.type(self.fill)
        return dtype.type(self.fill)

    def _check_parts(
        self, parts: np.ndarray | Sequence[np.ndarray]
    ) -> tuple[np.ndarray | list[np.ndarray], np.dtype]:
        n, shape = self.layout.n_parts, self.layout.module_shape
        if isinstance(parts, np.ndarray):
            if parts.shape != (n, *shape):
                raise AsapoWrongInputError(
                    f"parts have shape {parts.shape}, expected {(n, *shape)} "
                    f"({n} active modules of {shape})"
                )
            _check_dtype(parts.dtype)
            return np.ascontiguousarray(parts), parts.dtype
        arrays = list(parts)
        if len(arrays) != n:
            raise AsapoWrongInputError(f"got {len(arrays)} module parts, the layout has {n}")
        dtypes = {np.asarray(a).dtype for a in arrays}
        if len(dtypes) != 1:
            raise AsapoWrongInputError(f"module parts have mixed dtypes {sorted(map(str, dtypes))}")
        for i, a in enumerate(arrays):
            if np.shape(a) != shape:
                raise AsapoWrongInputError(f"part {i} has shape {np.shape(a)}, expected {shape}")
        dtype = dtypes.pop()
        _check_dtype(dtype)
        return [np.ascontiguousarray(a) for a in arrays], dtype

    def _check_out(self, out: np.ndarray | None, dtype: np.dtype) -> np.ndarray:
        if out is None:
            return np.empty(self.shape, dtype=dtype)
        if out.shape != self.shape or out.dtype != dtype or not out.flags.c_contiguous:
            raise AsapoWrongInputError(
                f"out must be a C-contiguous {dtype} array of shape {self.shape}, got "
                f"{out.dtype} {out.shape}"
            )
        return out


def _check_dtype(dtype: np.dtype) -> None:
    if dtype not in INPUT_DTYPES:
        raise AsapoWrongInputError(
            f"module parts must be uint8, uint16 or uint32 counts, got {dtype}"
        )


def stitch(
    parts: np.ndarray | Sequence[np.ndarray],
    layout: Lambda9MLayout,
    *,
    large_pixels: bool = False,
    output: str = "float32",
    fill: float = 0,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """One-off stitching; build a ``Stitcher`` once to stitch many frames."""
    stitcher = Stitcher(layout, large_pixels=large_pixels, output=output, fill=fill)
    return stitcher(parts, out)
