"""No-split per-frame passes: packed integer sums of uint16 and uint32 frames (one pixel per
update, or four: pixel quads), and the float pass with per-pixel validity checks."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from asapo_hpc.workers.azint.kernels.checks import invalid_value
from asapo_hpc.workers.azint.kernels.constants import (
    CHUNK,
    LANES,
    PACK32_MAX_BIN_PIXELS,
    PACK48_SHIFT,
    PACK_SHIFT,
    PREFETCH_AHEAD,
    PREFETCH_BLOCK,
    QUAD_OFFSETS,
    QUAD_TWO_LANES_BELOW,
    QUAD_TYPES,
)
from asapo_hpc.workers.azint.kernels.intrinsics import (
    add_quad,
    add_quad_float,
    address_of,
    fetch_add,
    prefetch_nta,
)
from asapo_hpc.workers.azint.kernels.tables import chunk_items, item_counts


@njit(inline="always")
def _packed(raw_value, mask):
    # Two instructions (lea, and) where raw | (raw == 0) << 40 took five: 4.0 vs 4.5 ms on
    # a stitched Lambda 9M frame (1 thread). Computed before the bin index is loaded: LLVM
    # then makes the histogram update one add-to-memory instruction.
    return (np.uint64(raw_value) - np.uint64(1)) & mask


@njit(inline="always")
def _packed32(raw_value):
    # (raw - 1) mod 2^32 in one 32-bit add (zero-extended): see PACK32_MAX_BIN_PIXELS
    return (np.uint64(raw_value) + np.uint64(0xFFFFFFFF)) & np.uint64(0xFFFFFFFF)


@njit(inline="always")
def _packing(raw, counts, npt):
    """The packing shift of a call: uint16 frames at 2^32 when every bin's pixels allow it
    (:data:`PACK32_MAX_BIN_PIXELS`), else at 2^PACK_SHIFT; uint32 frames at
    2^PACK48_SHIFT (the caller keeps bins within :data:`PACK48_MAX_BIN_PIXELS`)."""
    if raw.itemsize > 2:
        return np.uint64(PACK48_SHIFT)
    narrow = True
    for b in range(npt):
        narrow &= counts[b] <= PACK32_MAX_BIN_PIXELS
    return np.uint64(32) if narrow else np.uint64(PACK_SHIFT)


@njit(inline="always")
def _low(shift):
    return (np.uint64(1) << shift) - np.uint64(1)


@njit(inline="always")
def _add_packed_lanes(r, bb, p, a, mask):
    """Pixels p .. p + LANES - 1, pixel p + k into lane k's bins."""
    for k in range(LANES):
        v = _packed(r[p + np.uint64(k)], mask)  # first: see _packed
        a[k, bb[p + np.uint64(k)]] += v


@njit(inline="always")
def _add_packed32_lanes(r, bb, p, a):
    for k in range(LANES):
        v = _packed32(r[p + np.uint64(k)])
        a[k, bb[p + np.uint64(k)]] += v


@njit(inline="always")
def _packed_item(raw, bins, i0, i1, last, a, narrow, mask):
    """Pixels i0 .. i1 into the lanes ``a``, packed at 2^32 (``narrow``: a constant mask,
    one 32-bit add) or by ``mask``. (The packing is a branch per block, not a function
    argument: a cached caller of a kernel taking functions as arguments crashed when
    loaded from the disk cache.)"""
    # Views of the item, indexed from 0 with unsigned indices (no negative-index
    # wraparound code): 10 % faster than indexing the whole arrays from start.
    r = raw[i0:i1]
    bb = bins[i0:i1]
    m = np.uint64(r.size)
    mb = m // np.uint64(PREFETCH_BLOCK) * np.uint64(PREFETCH_BLOCK)
    # Prefetched through the views, up to the arrays' last pixel (span): the views' pointers
    # are in registers already; the arrays' own and i0 were spilled to the stack and read
    # back per block (one thread: 3.60 -> 3.41 ms with the 2^32 packing).
    span = last - i0
    for q in range(np.uint64(0), mb, np.uint64(PREFETCH_BLOCK)):
        ahead = min(np.int64(q) + PREFETCH_AHEAD, span)
        prefetch_nta(r, ahead)
        prefetch_nta(bb, ahead)
        if narrow:
            for p in range(q, q + np.uint64(PREFETCH_BLOCK), np.uint64(LANES)):
                _add_packed32_lanes(r, bb, p, a)
        else:
            for p in range(q, q + np.uint64(PREFETCH_BLOCK), np.uint64(LANES)):
                _add_packed_lanes(r, bb, p, a, mask)
    for p in range(mb, m):
        a[0, bb[p]] += _packed(r[p], mask)


@njit(parallel=True, cache=True)
def hist_packed_items(raw, bins, items, npt, counts, nthreads):
    """No-split pass for uint16 and uint32 frames without dynamic validity checks, over
    work items.

    Reads the frame + 2 B of bin index per pixel of the (start, stop) ``items`` (pixels
    outside them are skipped: long masked runs); one integer add per pixel into private
    per-thread, per-lane bins (exact); items handed out dynamically. ``counts``: the
    items' pixels per bin (:func:`item_counts`). uint16: at most :data:`PACK_MAX_PIXELS`
    pixels a call; uint32: at most :data:`PACK48_MAX_BIN_PIXELS` in any bin (see
    :func:`_packing`). Returns (Σraw, Σmax(raw, 1)).
    """
    nt = max(1, nthreads)  # numba.get_num_threads() here would defeat the disk cache
    acc = np.zeros((nt, LANES, npt + 1), np.uint64)
    nit = items.shape[0]
    last = raw.size - 1  # prefetches stay inside the arrays
    shift = _packing(raw, counts, npt)
    narrow, mask = shift == np.uint64(32), _low(shift)
    counter = np.zeros(1, np.int64)
    for t in prange(nt):  # one iteration per thread; work items from the counter
        a = acc[t]
        while True:
            c = fetch_add(counter, 0, 1)
            if c >= nit:
                break
            _packed_item(raw, bins, items[c, 0], items[c, 1], last, a, narrow, mask)
    total = counts[:npt].copy()  # the N the per-pixel -1 took off; sums wrap around uint64
    for t in range(nt):
        for k in range(LANES):
            for b in range(npt):
                total[b] += acc[t, k, b]
    return _unpacked(total, shift)


@njit(inline="always")
def _prefetch_quads(raw, qidx, p, k, last):
    """Prefetch (non-temporal) the frame PREFETCH_AHEAD pixels past pixel p and the quad
    entries as far past quad k, inside the arrays."""
    prefetch_nta(raw, min(np.int64(p) + PREFETCH_AHEAD, last))
    prefetch_nta(qidx, min(np.int64(k) + PREFETCH_AHEAD // 4, qidx.size - 1))


@njit(inline="always")
def _quads_item(raw, qidx, i0, k0, nquads, last, flat, lane1, mask):
    """Quads k0 .. k0 + nquads of ``qidx`` (pixels from i0) into ``flat``, every second quad
    ``lane1`` rows on (0: one sub-histogram); the frame and the entries prefetched ahead
    as in :func:`_packed_item`."""
    block = np.uint64(PREFETCH_BLOCK // 4)  # quads per 64-byte line of a uint16 frame
    n = np.uint64(nquads)
    nb = n // block * block
    p0, q0 = np.uint64(i0), np.uint64(k0)
    for q in range(np.uint64(0), nb, block):
        _prefetch_quads(raw, qidx, p0 + 4 * q, q0 + q, last)
        for j in range(q, q + block, np.uint64(2)):
            add_quad(flat, raw, qidx, p0 + 4 * j, q0 + j, 0, mask)
            add_quad(flat, raw, qidx, p0 + 4 * j + np.uint64(4), q0 + j + np.uint64(1), lane1,
                     mask)
    for j in range(nb, n):  # fewer than a block of quads left: one pixel at a time
        e = 4 * np.int64(qidx[q0 + j])
        for h in range(4):
            flat[e + h] += _packed(raw[p0 + 4 * j + np.uint64(h)], mask)


@njit(inline="always")
def _aligned_rows(buf, nt, per_thread, align):
    """(nt, per_thread) view of the 8-byte-element ``buf`` (nt·per_thread + align / 8
    elements) whose rows start ``align``-byte aligned (per_thread a multiple of align / 8):
    the quad passes' row updates then never straddle cache lines."""
    a = np.uint64(align)
    skip = (a - address_of(buf) % a) % a // np.uint64(8)
    return buf[skip:skip + nt * per_thread].reshape((nt, per_thread))


@njit(parallel=True, cache=True)
def hist_quads_items(raw, items, qidx, off, list_pix, list_bin, used, npt, counts, nthreads):
    """:func:`hist_packed_items` reading pixel quads' entries instead of bins.

    The same sums, bit for bit, from the frame + 2 B of entry per four pixels: the tables
    of :func:`quad_table` (built once per geometry and items) replace the bin index; one
    32-byte update per quad; the listed pixels go through work items of their own, one at
    a time; only the quad types in ``used`` are zeroed and added up. Same frames, limits
    and packing as :func:`hist_packed_items`. Returns (Σraw, Σmax(raw, 1)).
    """
    nt = max(1, nthreads)  # numba.get_num_threads() here would defeat the disk cache
    lanes = 2 if npt < QUAD_TWO_LANES_BELOW else 1
    ne = QUAD_TYPES * (npt + 1)  # entries of one sub-histogram
    acc = _aligned_rows(np.empty(nt * lanes * ne * 4 + 4, np.uint64), nt, lanes * ne * 4, 32)
    single = np.zeros((nt, npt + 1), np.uint64)
    nit = items.shape[0]
    nitems = nit + (list_pix.size + CHUNK - 1) // CHUNK
    last = raw.size - 1
    shift = _packing(raw, counts, npt)
    mask = _low(shift)
    counter = np.zeros(1, np.int64)
    for t in prange(nt):  # one iteration per thread; work items from the counter
        _zero_quad_rows(acc[t], lanes, npt, used, 4)  # each thread its own (in parallel)
        while True:
            c = fetch_add(counter, 0, 1)
            if c >= nitems:
                break
            if c < nit:
                _quads_item(raw, qidx, items[c, 0], off[c], off[c + 1] - off[c], last, acc[t],
                            ne * (lanes - 1), mask)
            else:
                for m in range((c - nit) * CHUNK, min(list_pix.size, (c - nit + 1) * CHUNK)):
                    single[t, list_bin[m]] += _packed(raw[list_pix[m]], mask)
    total = counts[:npt].copy()  # the N the per-pixel -1 took off; sums wrap around uint64
    for t in range(nt):
        for b in range(npt):
            total[b] += single[t, b]
        _fold_quad_rows(acc[t], lanes, npt, used, 4, 0, total)
    return _unpacked(total, shift)


@njit(inline="always")
def _zero_quad_rows(rows, lanes, npt, used, width):
    """Zero the entries of the ``used`` quad types in every sub-histogram of ``rows``
    (entries of ``width`` elements, T-major: type T's npt + 1 entries in a block)."""
    block = (npt + 1) * width
    for lane in range(lanes):
        for ty in range(QUAD_TYPES):
            if used[ty]:
                start = (lane * QUAD_TYPES + ty) * block
                rows[start:start + block] = 0


@njit(inline="always")
def _fold_quad_rows(rows, lanes, npt, used, width, first, target):
    """Slot ``first + h`` of every entry (T, b) of the used types into ``target[b +
    QUAD_OFFSETS[T, h]]`` (row npt of type 0, quads of no type, is never read)."""
    block = (npt + 1) * width
    for lane in range(lanes):
        for ty in range(QUAD_TYPES):
            if not used[ty]:
                continue
            start = (lane * QUAD_TYPES + ty) * block + first
            for h in range(4):
                d = QUAD_OFFSETS[ty, h]
                for b in range(npt):
                    target[b + d] += rows[start + b * width + h]


@njit(inline="always")
def _unpacked(total, shift):
    """(Σraw, Σmax(raw, 1)) per bin from the packed totals (N added back)."""
    low = _low(shift)
    sig = np.empty(total.size)
    var = np.empty(total.size)
    for b in range(total.size):
        sraw = total[b] & low
        sig[b] = sraw
        var[b] = sraw + (total[b] >> shift)
    return sig, var


def hist_packed(raw, bins, npt, nthreads):
    """:func:`hist_packed_items` over every pixel, in items of :data:`CHUNK` pixels.
    Counts the pixels per bin on every call (a second pass over ``bins``): the integrator
    calls :func:`hist_packed_items` with counts it keeps (``Corrections.item_counts``).

    Plain Python, like :func:`hist_checked`: a disk-cached Numba function calling a
    parallel one segfaulted when both were loaded from the cache (the caller's copy of
    the parallel region and the callee's own, compiled in different processes)."""
    items = chunk_items(raw.size)
    return hist_packed_items(raw, bins, items, npt, item_counts(bins, items, npt), nthreads)


@njit(parallel=True, cache=True)
def hist_checked_items(raw, bins, items, npt, norm, dark, check_dummy, dummy, delta_dummy,
                       nthreads):
    """No-split pass for any frame dtype with NaN / dummy checks, over work items.

    Returns a (6, npt) float64 array: Σsignal, Σvariance of valid pixels, and for pixels
    found invalid in this frame: Σnorm, Σnorm², count, Σdark (to subtract from the static
    sums). Only pixels of the (start, stop) ``items`` are read. Private per-thread bins,
    the valid sums in LANES sub-histograms; items handed out dynamically.
    """
    nt = max(1, nthreads)  # numba.get_num_threads() here would defeat the disk cache
    valid = np.zeros((nt, LANES, npt + 1, 2))  # Σv, Σmax(v, 1): pixel p + k into lane k
    invalid = np.zeros((nt, npt + 1, 4))  # Σnorm, Σnorm², count, Σdark
    nit = items.shape[0]
    counter = np.zeros(1, np.int64)
    for t in prange(nt):  # one iteration per thread; work items from the counter
        vt, it = valid[t], invalid[t]
        while True:
            c = fetch_add(counter, 0, 1)
            if c >= nit:
                break
            i0, i1 = np.uint64(items[c, 0]), np.uint64(items[c, 1])  # unsigned: no wraparound
            i4 = i0 + (i1 - i0) // np.uint64(LANES) * np.uint64(LANES)
            for p in range(i0, i4, np.uint64(LANES)):  # lanes: no float-add chains
                for k in range(LANES):
                    _checked_add(raw, bins, p + np.uint64(k), p + np.uint64(k), vt, k, it,
                                 norm, dark, check_dummy, dummy, delta_dummy)
            for p in range(i4, i1):
                _checked_add(raw, bins, p, p, vt, 0, it, norm, dark, check_dummy, dummy,
                             delta_dummy)
    return _checked_totals(valid, invalid, npt)


@njit(inline="always")
def _checked_totals(valid, invalid, npt):
    """(6, npt): the valid pixels' Σv, Σmax(v, 1) over every thread and lane, then the
    invalid pixels' four sums over every thread."""
    out = np.zeros((6, npt))
    for t in range(valid.shape[0]):
        for b in range(npt):
            for k in range(LANES):
                out[0, b] += valid[t, k, b, 0]
                out[1, b] += valid[t, k, b, 1]
            for q in range(4):
                out[2 + q, b] += invalid[t, b, q]
    return out


@njit(inline="always")
def _checked_add(raw, bins, p, i, valid, k, invalid, norm, dark, check_dummy, dummy,
                 delta_dummy):
    """Pixel p, of bin ``bins[i]``, into its bin: its value and Poisson variance into lane
    ``k`` of ``valid``, or, invalid in this frame, into ``invalid``."""
    b = bins[i]
    v = np.float32(raw[p])
    if invalid_value(v, check_dummy, dummy, delta_dummy):
        _add_invalid_pixel(invalid, b, p, norm, dark)
    else:
        valid[k, b, 0] += v
        valid[k, b, 1] += max(v, np.float32(1.0))


@njit(inline="always")
def _add_invalid_pixel(invalid, b, p, norm, dark):
    """Pixel p, invalid in this frame: its normalisation, square, count and dark into
    bin b of ``invalid`` (to subtract from the static sums)."""
    w = np.float64(norm[p])
    invalid[b, 0] += w
    invalid[b, 1] += w * w
    invalid[b, 2] += 1.0
    invalid[b, 3] += dark[p]


@njit(parallel=True, cache=True)
def hist_quads_checked_items(raw, items, qidx, off, list_pix, list_bin, used, npt, norm, dark,
                             check_dummy, dummy, delta_dummy, nthreads):
    """:func:`hist_checked_items` over the quad table of :func:`hist_quads_items`.

    Frames of up to 32 bits (float32; integers with a dummy value): a block of
    PREFETCH_BLOCK pixels without an invalid value adds four pixels at a time
    (:func:`add_quad_float`: values and Poisson variances, two 32-byte updates of one
    entry); a block with one goes pixel by pixel, an invalid pixel's normalisation,
    square, count and dark into the invalid sums. Listed pixels one at a time, checked
    alike. Returns (6, npt) float64 like :func:`hist_checked_items`.
    """
    nt = max(1, nthreads)  # numba.get_num_threads() here would defeat the disk cache
    lanes = 2 if npt < QUAD_TWO_LANES_BELOW else 1
    ne = QUAD_TYPES * (npt + 1)  # entries of one sub-histogram
    acc = _aligned_rows(np.empty(nt * lanes * ne * 8 + 8), nt, lanes * ne * 8, 64)
    single = np.zeros((nt, LANES, npt + 1, 2))  # listed pixels: Σv, Σmax(v, 1)
    invalid = np.zeros((nt, npt + 1, 4))  # Σnorm, Σnorm², count, Σdark
    nit = items.shape[0]
    nitems = nit + (list_pix.size + CHUNK - 1) // CHUNK
    last = raw.size - 1
    counter = np.zeros(1, np.int64)
    for t in prange(nt):  # one iteration per thread; work items from the counter
        _zero_quad_rows(acc[t], lanes, npt, used, 8)
        while True:
            c = fetch_add(counter, 0, 1)
            if c >= nitems:
                break
            if c < nit:
                _checked_quads_item(raw, qidx, items[c, 0], off[c], off[c + 1] - off[c], last,
                                    acc[t], ne * (lanes - 1), npt, norm, dark, check_dummy,
                                    dummy, delta_dummy, invalid[t])
                continue
            for m in range((c - nit) * CHUNK, min(list_pix.size, (c - nit + 1) * CHUNK)):
                _checked_add(raw, list_bin, list_pix[m], m, single[t], m % LANES, invalid[t],
                             norm, dark, check_dummy, dummy, delta_dummy)
    out = _checked_totals(single, invalid, npt)
    for t in range(nt):
        _fold_quad_rows(acc[t], lanes, npt, used, 8, 0, out[0])  # values
        _fold_quad_rows(acc[t], lanes, npt, used, 8, 4, out[1])  # variances
    return out


@njit(inline="always")
def _checked_quads_item(raw, qidx, i0, k0, nquads, last, flat, lane1, npt, norm, dark,
                        check_dummy, dummy, delta_dummy, invalid):
    """Quads k0 .. k0 + nquads of ``qidx`` (pixels from i0) as :func:`_quads_item`; the
    few invalid pixels :func:`add_quad_float` reports go to the invalid sums."""
    block = np.uint64(PREFETCH_BLOCK // 4)
    n = np.uint64(nquads)
    nb = n // block * block
    p0, q0 = np.uint64(i0), np.uint64(k0)
    for q in range(np.uint64(0), nb, block):
        _prefetch_quads(raw, qidx, p0 + 4 * q, q0 + q, last)
        for j in range(q, q + block, np.uint64(2)):
            p, k = p0 + 4 * j, q0 + j
            bad0 = add_quad_float(flat, raw, qidx, p, k, 0, check_dummy, dummy, delta_dummy)
            bad1 = add_quad_float(flat, raw, qidx, p + np.uint64(4), k + np.uint64(1), lane1,
                                  check_dummy, dummy, delta_dummy)
            if bad0 | bad1:  # rare: a NaN, an infinity, a dummy
                _invalid_quad_pixels(qidx, p, k, bad0, npt, norm, dark, invalid)
                _invalid_quad_pixels(qidx, p + np.uint64(4), k + np.uint64(1), bad1, npt, norm,
                                     dark, invalid)
    for j in range(nb, n):
        _checked_quad(raw, qidx, p0 + 4 * j, q0 + j, flat, npt, norm, dark, check_dummy,
                      dummy, delta_dummy, invalid)


@njit(inline="always")
def _invalid_quad_pixels(qidx, p, k, bad, npt, norm, dark, invalid):
    """The pixels of quad k (from pixel p) set in the bit mask ``bad`` into the invalid sums
    of their bins (an untyped quad's, entry npt: into row npt, never read; its pixels are
    listed)."""
    e = np.int64(qidx[k])
    ty, b0 = e // (npt + 1), e % (npt + 1)
    for h in range(4):
        if (bad >> h) & 1:
            _add_invalid_pixel(invalid, b0 + QUAD_OFFSETS[ty, h], p + np.uint64(h), norm, dark)


@njit(inline="always")
def _checked_quad(raw, qidx, p, k, flat, npt, norm, dark, check_dummy, dummy, delta_dummy,
                  invalid):
    """Pixels p .. p + 4 of quad k one at a time (lane 0), checked alike (the items' last
    quads)."""
    e = np.int64(qidx[k])
    ty, b0 = e // (npt + 1), e % (npt + 1)
    for h in range(4):
        v = np.float32(raw[p + np.uint64(h)])
        if invalid_value(v, check_dummy, dummy, delta_dummy):
            _add_invalid_pixel(invalid, b0 + QUAD_OFFSETS[ty, h], p + np.uint64(h), norm, dark)
        else:
            flat[8 * e + h] += v
            flat[8 * e + 4 + h] += max(v, np.float32(1.0))


def hist_checked(raw, bins, npt, norm, dark, check_dummy, dummy, delta_dummy, nthreads):
    """:func:`hist_checked_items` over every pixel, in items of :data:`CHUNK` pixels
    (plain Python: see :func:`hist_packed`)."""
    return hist_checked_items(raw, bins, chunk_items(raw.size), npt, norm, dark, check_dummy,
                              dummy, delta_dummy, nthreads)
