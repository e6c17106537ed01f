"""Split-mode per-frame passes: the pixel-table passes (uint16 frames in exact integers,
others in float, four pixels at a time in registers; frames that need per-pixel checks
block by block) and the CSR gather for bins narrower than pixels."""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from asapo_hpc.workers.azint.kernels.checks import invalid_value
from asapo_hpc.workers.azint.kernels.constants import (
    CHUNK,
    PREFETCH_AHEAD,
    PREFETCH_BLOCK,
    SPLIT_LANES,
    WEIGHT_ONE,
)
from asapo_hpc.workers.azint.kernels.intrinsics import (
    FLOAT_ROW_FRAMES,
    add_row4,
    add_row4_from,
    fetch_add,
    prefetch_nta,
    split_add4_float,
    split_add4_u16,
)


@njit(parallel=True, cache=True)
def split_pass(raw, bins, u, ex_pix, ex_bin, ex_w, npt, nthreads):
    """Split-mode pass for integer frames without dynamic validity checks (float sums).

    Pixel order, frame read once: pixel j adds (1 - c)·raw to bin ``bins[j]`` and c·raw
    to the next one, c = u[j] / WEIGHT_ONE (``bins[j] == npt``: nowhere), then the few
    pixels of the COO lists add their entries. Private per-thread bins; work items handed
    out dynamically. Returns (2, npt) float64: Σc·raw, Σc²·max(raw, 1) — the same sums as
    :func:`csr_pass` over the matrix :func:`pixel_table` was made from.

    A pixel's four sums (its share of bin b and of bin b + 1, signal and variance) go to
    four adjacent float64 of bin b's row, ``acc[.., b, :] = (Σc0·r, Σc0²·rv, Σc1·r,
    Σc1²·rv)``: one cache line per pixel instead of two; the b + 1 halves are shifted in
    when the per-thread rows are added up.
    """
    nt = max(1, nthreads)  # numba.get_num_threads() here would defeat the disk cache
    acc = np.zeros((nt, SPLIT_LANES, npt + 1, 4))
    flat = acc.reshape(nt, -1)  # per thread: rows of 4, lane k's bin b at k*(npt+1) + b
    counter = np.zeros(1, np.int64)
    for t in prange(nt):  # one iteration per thread; work items from the counter
        buf = np.empty(4 * PREFETCH_BLOCK)  # one block's per-pixel sums (see _split_block)
        _split_items(_split_chunk, raw, bins, u, ex_pix, ex_bin, ex_w, counter, flat[t],
                     npt + 1, buf, acc[t, 0])
    return _split_float_totals(acc, npt)


@njit(inline="always")
def _split_items(chunk, raw, bins, u, ex_pix, ex_bin, ex_w, counter, flat, lane_rows, buf,
                 listed):
    """One thread's share of a split pass: work items from ``counter`` until none is left.

    Item c < nch: pixels c·CHUNK .. (c + 1)·CHUNK through ``chunk`` (:func:`_split_chunk`
    or :func:`_split_chunk_u16`: a dispatcher known at compile time, inlined like the rest,
    not a first-class function value) into ``flat``; the items after those: CHUNK entries
    of the COO lists each, float sums into ``listed[bin, 0:2]``.
    """
    n = raw.size
    nch = (n + CHUNK - 1) // CHUNK
    nitems = nch + (ex_pix.size + CHUNK - 1) // CHUNK
    while True:
        c = fetch_add(counter, 0, 1)
        if c >= nitems:
            break
        if c < nch:
            chunk(raw, bins, u, c * CHUNK, min(n, (c + 1) * CHUNK), flat, lane_rows, buf)
        else:
            _split_listed(raw, ex_pix, ex_bin, ex_w, (c - nch) * CHUNK, listed, 0)


@njit(inline="always")
def _split_listed(raw, ex_pix, ex_bin, ex_w, start, out, col):
    """Entries start .. start + CHUNK of the COO lists: Σc·r, Σc²·max(r, 1) into
    ``out[bin, col]``, ``out[bin, col + 1]`` (float sums, any integer frame)."""
    for m in range(start, min(ex_pix.size, start + CHUNK)):
        r = np.float64(np.float32(raw[ex_pix[m]]))
        w = np.float64(ex_w[m])
        out[ex_bin[m], col] += w * r
        out[ex_bin[m], col + 1] += w * w * max(r, 1.0)


@njit(inline="always")
def _split_sums(r16, u16):
    """Float sums of one pixel: (c0·r, c0²·rv, c1·r, c1²·rv), c1 = u / WEIGHT_ONE."""
    r = np.float64(np.float32(r16))  # float32 values, as pyFAI
    rv = max(r, 1.0)
    c1 = np.float64(u16) * (1.0 / WEIGHT_ONE)  # both exact: u < 2^16
    c0 = 1.0 - c1
    return c0 * r, c0 * c0 * rv, c1 * r, c1 * c1 * rv


@njit(inline="always")
def _split_pixel(raw, bins, u, p, flat, row0):
    x0, x1, x2, x3 = _split_sums(raw[p], u[p])
    add_row4(flat, row0 + bins[p], x0, x1, x2, x3)


@njit(inline="always")
def _scatter_block(bb, flat, lane_rows, buf):
    """Add row i of ``buf`` to bin ``bb[i]``, pixel i into lane i % SPLIT_LANES."""
    for i in range(0, PREFETCH_BLOCK, SPLIT_LANES):
        for k in range(SPLIT_LANES):
            add_row4_from(flat, k * lane_rows + bb[i + k], buf, i + k)


@njit(inline="always")
def _split_block(raw, bins, u, q, flat, lane_rows, buf):
    """Pixels q .. q + PREFETCH_BLOCK: their sums first, then one row update each.

    Computing the four sums in a loop of its own lets LLVM vectorise it across pixels (one
    pixel at a time, building the 4-vector cost more than the update itself).
    """
    block = np.uint64(PREFETCH_BLOCK)
    r16, w, bb = raw[q:q + block], u[q:q + block], bins[q:q + block]
    for i in range(PREFETCH_BLOCK):
        buf[4 * i], buf[4 * i + 1], buf[4 * i + 2], buf[4 * i + 3] = _split_sums(r16[i], w[i])
    _scatter_block(bb, flat, lane_rows, buf)


def _float_block(raw, bins, u, q, flat, lane_rows, buf):
    """Pixels q .. q + PREFETCH_BLOCK of a float split pass, all valid (compiled only)."""


@overload(_float_block, inline="always")
def _float_block_impl(raw, bins, u, q, flat, lane_rows, buf):
    """Four pixels at a time in registers (:func:`split_add4_float`) for frames of up to
    32 bits; through the block buffer (:func:`_split_block`) for wider ones. Same sums."""
    if raw.dtype in FLOAT_ROW_FRAMES and bins.dtype == u.dtype == types.uint16:
        def in_registers(raw, bins, u, q, flat, lane_rows, buf):
            for i in range(0, PREFETCH_BLOCK, 4):  # lanes 0 .. 3 (SPLIT_LANES = 4)
                split_add4_float(flat, raw, u, bins, q + np.uint64(i), lane_rows)
        return in_registers

    def buffered(raw, bins, u, q, flat, lane_rows, buf):
        _split_block(raw, bins, u, q, flat, lane_rows, buf)
    return buffered


@njit(inline="always")
def _prefetch_table(raw, bins, u, p):
    """Prefetch (non-temporal) the lines of pixel p + PREFETCH_AHEAD: one line of each
    2-byte column holds PREFETCH_BLOCK pixels."""
    ahead = min(np.int64(p) + PREFETCH_AHEAD, raw.size - 1)  # stay inside the arrays
    prefetch_nta(raw, ahead)
    prefetch_nta(bins, ahead)
    prefetch_nta(u, ahead)


@njit(inline="always")
def _split_chunk(raw, bins, u, start, stop, flat, lane_rows, buf):
    """Pixels start .. stop in blocks of PREFETCH_BLOCK, consecutive ones into different
    sub-histograms (lanes), the table prefetched ahead."""
    start, stop = np.uint64(start), np.uint64(stop)  # unsigned: no wraparound code
    block = np.uint64(PREFETCH_BLOCK)
    stop_b = start + (stop - start) // block * block
    for q in range(start, stop_b, block):
        _prefetch_table(raw, bins, u, q)
        _float_block(raw, bins, u, q, flat, lane_rows, buf)
    for p in range(stop_b, stop):
        _split_pixel(raw, bins, u, p, flat, 0)


@njit(parallel=True, cache=True)
def split_pass_u16(raw, bins, u, ex_pix, ex_bin, ex_w, npt, nthreads):
    """:func:`split_pass` for uint16 frames, the pixel table's pixels summed in integers.

    Bin b's row holds (Σr, Σu·r, Σu²·rv, Σ(WEIGHT_ONE - u)²·rv), rv = max(r, 1), in uint64:
    exact (no rounding, no float add latency in the store-to-load chains of equal bins),
    and turned into Σc·r, Σc²·rv of bins b and b + 1 once per call. Exact while no bin
    takes :data:`SPLIT_U16_MAX_BIN_PIXELS` pixels in one call. The COO-listed pixels are
    summed in float as in :func:`split_pass`. Returns (2, npt) float64.
    """
    nt = max(1, nthreads)  # numba.get_num_threads() here would defeat the disk cache
    acc = np.zeros((nt, SPLIT_LANES, npt + 1, 4), np.uint64)
    flat = acc.reshape(nt, -1)  # per thread: rows of 4, lane k's bin b at k*(npt+1) + b
    listed = np.zeros((nt, npt, 2))
    counter = np.zeros(1, np.int64)
    for t in prange(nt):  # one iteration per thread; work items from the counter
        buf = np.empty(4 * PREFETCH_BLOCK, np.uint64)
        _split_items(_split_chunk_u16, raw, bins, u, ex_pix, ex_bin, ex_w, counter, flat[t],
                     npt + 1, buf, listed[t])
    return _split_u16_totals(acc, listed, npt)


@njit(inline="always")
def _split_sums_u16(buf, i, r16, u16):
    r = np.uint64(r16)
    rv = max(r, np.uint64(1))
    w = np.uint64(u16)
    v = np.uint64(WEIGHT_ONE) - w
    buf[4 * i], buf[4 * i + 1], buf[4 * i + 2], buf[4 * i + 3] = r, w * r, w * w * rv, v * v * rv


@njit(inline="always")
def _split_chunk_u16(raw, bins, u, start, stop, flat, lane_rows, buf):
    """:func:`_split_chunk` with integer sums, four pixels at a time in registers
    (:func:`split_add4_u16`, pixel i into lane i % 4); the tail pixels go through ``buf``."""
    start, stop = np.uint64(start), np.uint64(stop)  # unsigned: no wraparound code
    block = np.uint64(PREFETCH_BLOCK)
    stop_b = start + (stop - start) // block * block
    for q in range(start, stop_b, block):
        _prefetch_table(raw, bins, u, q)
        for i in range(0, PREFETCH_BLOCK, 4):  # lanes 0 .. 3 (SPLIT_LANES = 4)
            split_add4_u16(flat, raw, u, bins, q + np.uint64(i), lane_rows)
    for p in range(stop_b, stop):
        _split_sums_u16(buf, 0, raw[p], u[p])
        add_row4_from(flat, bins[p], buf, 0)


@njit(cache=True)
def _split_u16_totals(acc, listed, npt):
    """(2, npt) Σc·r, Σc²·rv from the integer rows of every thread and lane (shares of
    bins b and b + 1) plus the float sums of the listed pixels."""
    one = np.float64(WEIGHT_ONE)
    out = np.zeros((2, npt))
    for b in range(npt):
        tot = np.zeros(4, np.uint64)  # < 2^64: under SPLIT_U16_MAX_BIN_PIXELS pixels
        for t in range(acc.shape[0]):
            for k in range(SPLIT_LANES):
                tot += acc[t, k, b]
        out[0, b] += np.float64(np.uint64(WEIGHT_ONE) * tot[0] - tot[1]) / one
        out[1, b] += np.float64(tot[3]) / (one * one)
        if b + 1 < npt:  # bin npt - 1 has no b + 1 share: u = 0
            out[0, b + 1] += np.float64(tot[1]) / one
            out[1, b + 1] += np.float64(tot[2]) / (one * one)
    for t in range(listed.shape[0]):
        for b in range(npt):
            out[0, b] += listed[t, b, 0]
            out[1, b] += listed[t, b, 1]
    return out


@njit(parallel=True, cache=True)
def csr_pass(raw, data, indices, indptr, norm, dark, check, check_dummy, dummy, delta_dummy):
    """Split-mode pass: gather through the CSR matrix, one bin per iteration (no atomics).

    Returns (6, npt) float64 like :func:`hist_checked`, corrections weighted by c (and c²).
    The integrator runs it only when bins are narrower than pixels (most pixels listed,
    see ``engines.GATHER_LISTED_PER_PIXEL``); otherwise the pixel-table passes, which read
    the frame in pixel order, are faster (:func:`split_pass_checked`: ~7x). The tests also
    check the table passes against this independent gather.
    """
    npt = indptr.size - 1
    out = np.zeros((6, npt))
    for b in prange(npt):
        s = v2 = bn = bn2 = bc = bd = 0.0
        for k in range(indptr[b], indptr[b + 1]):
            j = indices[k]
            c = np.float64(data[k])
            r = np.float32(raw[j])
            if check:
                if invalid_value(r, check_dummy, dummy, delta_dummy):
                    w = np.float64(norm[j])
                    if w != 0.0:
                        bn += c * w
                        bn2 += c * c * w * w
                        bc += c
                        bd += c * dark[j]
                    continue
            s += c * r
            v2 += c * c * max(r, np.float32(1.0))
        out[0, b], out[1, b], out[2, b], out[3, b], out[4, b], out[5, b] = s, v2, bn, bn2, bc, bd
    return out


@njit(parallel=True, cache=True)
def split_pass_checked(raw, bins, u, ex_pix, ex_bin, ex_w, norm, dark, check_dummy, dummy,
                       delta_dummy, npt, nthreads):
    """:func:`split_pass` for frames whose pixels may be invalid (float frames: NaN,
    infinity; any frame with a dummy value), over the pixel table instead of the CSR
    gather of :func:`csr_pass` (which reads the frame in bin order, ~7x slower).

    A block of PREFETCH_BLOCK pixels without an invalid value takes :func:`split_pass`'s
    vectorised path; a block with one goes pixel by pixel, an invalid pixel adding its
    weighted normalisation, its square, its weight and its weighted dark to ``inv`` (to
    subtract from the static sums). Returns (6, npt) float64 like :func:`csr_pass`.
    """
    nt = max(1, nthreads)  # numba.get_num_threads() here would defeat the disk cache
    acc = np.zeros((nt, SPLIT_LANES, npt + 1, 4))
    flat = acc.reshape(nt, -1)  # per thread: rows of 4, lane k's bin b at k*(npt+1) + b
    inv = np.zeros((nt, npt + 2, 4))  # row npt + 1: the second bin of a pixel in bin npt
    n = raw.size
    nch = (n + CHUNK - 1) // CHUNK
    nitems = nch + (ex_pix.size + CHUNK - 1) // CHUNK
    counter = np.zeros(1, np.int64)
    for t in prange(nt):  # one iteration per thread; work items from the counter
        buf = np.empty(4 * PREFETCH_BLOCK)
        while True:
            c = fetch_add(counter, 0, 1)
            if c >= nitems:
                break
            if c < nch:
                _checked_chunk(raw, bins, u, c * CHUNK, min(n, (c + 1) * CHUNK), flat[t],
                               npt + 1, buf, norm, dark, check_dummy, dummy, delta_dummy,
                               inv[t])
            else:
                _checked_listed(raw, ex_pix, ex_bin, ex_w, (c - nch) * CHUNK, acc[t, 0],
                                norm, dark, check_dummy, dummy, delta_dummy, inv[t])
    out = np.zeros((6, npt))
    out[:2] = _split_float_totals(acc, npt)
    for t in range(nt):
        for b in range(npt):
            for q in range(4):
                out[2 + q, b] += inv[t, b, q]
    return out


@njit(inline="always")
def _checked_chunk(raw, bins, u, start, stop, flat, lane_rows, buf, norm, dark, check_dummy,
                   dummy, delta_dummy, inv):
    """:func:`_split_chunk` with validity checks: a block's values are checked first."""
    start, stop = np.uint64(start), np.uint64(stop)  # unsigned: no wraparound code
    block = np.uint64(PREFETCH_BLOCK)
    stop_b = start + (stop - start) // block * block
    for q in range(start, stop_b, block):
        _prefetch_table(raw, bins, u, q)
        bad = False
        for p in range(q, q + block):
            bad |= invalid_value(np.float32(raw[p]), check_dummy, dummy, delta_dummy)
        if not bad:
            _float_block(raw, bins, u, q, flat, lane_rows, buf)
            continue
        for p in range(q, q + block):
            _checked_pixel(raw, bins, u, p, flat, norm, dark, check_dummy, dummy,
                           delta_dummy, inv)
    for p in range(stop_b, stop):
        _checked_pixel(raw, bins, u, p, flat, norm, dark, check_dummy, dummy, delta_dummy,
                       inv)


@njit(inline="always")
def _checked_pixel(raw, bins, u, p, flat, norm, dark, check_dummy, dummy, delta_dummy, inv):
    if not invalid_value(np.float32(raw[p]), check_dummy, dummy, delta_dummy):
        _split_pixel(raw, bins, u, p, flat, 0)
        return
    c1 = np.float64(u[p]) * (1.0 / WEIGHT_ONE)
    b = np.int64(bins[p])  # npt (masked): rows npt, npt + 1, never read
    _add_invalid(inv, b, 1.0 - c1, norm[p], dark[p])
    if c1 > 0.0:
        _add_invalid(inv, b + 1, c1, norm[p], dark[p])


@njit(inline="always")
def _add_invalid(inv, b, c, w, d):
    """An invalid pixel's share c of bin b: Σc·norm, Σc²·norm², Σc, Σc·dark (as
    :func:`csr_pass`; pixels of normalisation 0 are statically invalid: not counted)."""
    w = np.float64(w)
    if w != 0.0:
        inv[b, 0] += c * w
        inv[b, 1] += c * c * w * w
        inv[b, 2] += c
        inv[b, 3] += c * np.float64(d)


@njit(inline="always")
def _checked_listed(raw, ex_pix, ex_bin, ex_w, start, out, norm, dark, check_dummy, dummy,
                    delta_dummy, inv):
    """:func:`_split_listed` with validity checks."""
    for m in range(start, min(ex_pix.size, start + CHUNK)):
        j = ex_pix[m]
        v = np.float32(raw[j])
        c = np.float64(ex_w[m])
        if invalid_value(v, check_dummy, dummy, delta_dummy):
            _add_invalid(inv, np.int64(ex_bin[m]), c, norm[j], dark[j])
            continue
        r = np.float64(v)
        out[ex_bin[m], 0] += c * r
        out[ex_bin[m], 1] += c * c * max(r, 1.0)


@njit(cache=True)
def _split_float_totals(acc, npt):
    """(2, npt) Σc·r, Σc²·rv from the float rows of every thread and lane (shares of bins
    b and b + 1)."""
    out = np.zeros((2, npt))
    for t in range(acc.shape[0]):
        for k in range(SPLIT_LANES):
            for b in range(npt):
                out[0, b] += acc[t, k, b, 0]
                out[1, b] += acc[t, k, b, 1]
            for b in range(npt - 1):  # the b + 1 shares (bin npt - 1 has none: u = 0)
                out[0, b + 1] += acc[t, k, b, 2]
                out[1, b + 1] += acc[t, k, b, 3]
    return out
