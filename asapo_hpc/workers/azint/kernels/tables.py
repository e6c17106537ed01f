"""Geometry-only tables, built once per engine or set of corrections: the bin index, the
CSR matrices of bbox and full splitting, fixed-point pair weights, the pixel table of the
split passes and the quad table of the no-split pass, work items, static per-bin sums."""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from asapo_hpc.workers.azint.kernels.constants import (
    CHUNK,
    QUAD_MAX_BINS,
    QUAD_TYPE_OF_STEPS,
    QUAD_TYPES,
    WEIGHT_ONE,
)


def n_chunks(size: int, limit: int = 1 << 22) -> int:
    """Chunks for a statically scheduled setup pass: one per thread, at most ``limit``."""
    return max(numba.get_num_threads(), -(-size // limit))


@njit(parallel=True, cache=True)
def bin_index(pos, valid, lo, hi, edges, npt, out):
    """Bin of every position as numpy.histogram assigns it; ``npt`` if invalid or outside."""
    for i in prange(pos.size):
        p = pos[i]
        if valid[i] and p < lo and (p - lo) / (hi - lo) * npt > -1.0:
            out[i] = 0  # pyFAI's C histogram truncates toward zero: just below lo -> bin 0
            continue
        if not valid[i] or not (p >= lo and p <= hi):
            out[i] = npt
            continue
        b = int((p - lo) / (hi - lo) * npt)  # numpy.histogram's exact float steps
        if b == npt:
            b -= 1
        if p < edges[b]:
            b -= 1
        if p >= edges[b + 1] and b != npt - 1:
            b += 1
        out[i] = b
    return out


@njit(parallel=True, cache=True)
def corner_delta(corner_rad, center):
    """Per pixel, the largest |corner - centre| of its (npix, 4) corner radial positions:
    the half-width of its bounding box (the same as NumPy's ``np.abs(corner_rad -
    center[:, None]).max(axis=1)``, without the (npix, 4) temporaries; 9.4 Mpixel: ~0.4 s
    -> tens of ms)."""
    out = np.empty(center.size)
    for j in prange(center.size):
        c = center[j]
        out[j] = max(max(abs(corner_rad[j, 0] - c), abs(corner_rad[j, 1] - c)),
                     max(abs(corner_rad[j, 2] - c), abs(corner_rad[j, 3] - c)))
    return out


@njit(parallel=True, cache=True)
def corner_min_max(corner_rad):
    """Per pixel, the smallest and largest of its four corner radial positions (NumPy's
    ``min(axis=1)`` and ``max(axis=1)`` of an (npix, 4) array: ~0.9 s for 9.4 Mpixel)."""
    n = corner_rad.shape[0]
    lo, hi = np.empty(n), np.empty(n)
    for j in prange(n):
        a, b, c, d = corner_rad[j, 0], corner_rad[j, 1], corner_rad[j, 2], corner_rad[j, 3]
        lo[j] = min(min(a, b), min(c, d))
        hi[j] = max(max(a, b), max(c, d))
    return lo, hi


#: Pixel chunks of the CSR builders: each counts and then fills its own entries, in parallel;
#: a bin's entries come chunk after chunk, so in pixel order as one serial pass makes them
CSR_CHUNKS = 16


@njit(inline="always")
def _chunk_bounds(n, c):
    return c * n // CSR_CHUNKS, (c + 1) * n // CSR_CHUNKS


@njit(cache=True)
def _chunk_csr_arrays(counts, npt):
    """The CSR arrays from every chunk's entries per bin (CSR_CHUNKS, npt): (indptr, the
    first free entry of every chunk in every bin, data, indices)."""
    indptr = np.zeros(npt + 1, np.int32)
    fill = np.empty_like(counts)
    for b in range(npt):
        at = indptr[b]
        for c in range(CSR_CHUNKS):
            fill[c, b] = at
            at += counts[c, b]
        indptr[b + 1] = at
    return indptr, fill, np.empty(indptr[-1], np.float32), np.empty(indptr[-1], np.int32)


@njit(inline="always")
def _put(row, b, i, w, data, indices, write):
    """Count an entry of bin b in ``row`` (first pass), or write it at ``row[b]`` (second
    pass, ``row`` the chunk's next free entries)."""
    if write:
        data[row[b]] = w
        indices[row[b]] = i
    row[b] += 1


@njit(parallel=True, cache=True)
def bbox_csr(center, delta, valid, lo, hi, npt):
    """CSR (data, indices, indptr) of pyFAI's 1-D bounding-box split (see reference)."""
    counts = np.zeros((CSR_CHUNKS, npt), np.int64)
    nodata, noindex = np.empty(0, np.float32), np.empty(0, np.int32)
    for c in prange(CSR_CHUNKS):
        _bbox_chunk(c, center, delta, valid, lo, hi, npt, counts[c], nodata, noindex, False)
    indptr, fill, data, indices = _chunk_csr_arrays(counts, npt)
    for c in prange(CSR_CHUNKS):
        _bbox_chunk(c, center, delta, valid, lo, hi, npt, fill[c], data, indices, True)
    return data, indices, indptr


@njit(inline="always")
def _bbox_chunk(c, center, delta, valid, lo, hi, npt, row, data, indices, write):
    width = (hi - lo) / npt
    first, stop = _chunk_bounds(center.size, c)
    for i in range(first, stop):
        if not valid[i]:
            continue
        fmin = (center[i] - delta[i] - lo) / width
        fmax = (center[i] + delta[i] - lo) / width
        bmin = int(fmin)
        bmax = int(fmax)
        if bmax < 0 or bmin >= npt:
            continue
        bmin = max(bmin, 0)
        bmax = min(bmax, npt - 1)
        inv = 1.0 / (fmax - fmin) if bmax > bmin else 1.0
        for b in range(bmin, bmax + 1):
            if bmin == bmax:
                w = 1.0
            elif bmax == bmin + 1 and b == bmax:  # pair: weights sum to 1 exactly
                w = np.float32(1.0) - np.float32(inv * (bmin + 1 - fmin))
            elif b == bmin:
                w = inv * (bmin + 1 - fmin)
            elif b == bmax:
                w = inv * (fmax - bmax)
            else:
                w = inv
            _put(row, b, i, w, data, indices, write)


@njit(cache=True)
def _strip_areas(x, y, bmin, bmax, out):
    out[:] = 0.0
    k = x.size
    for e in range(k):
        x0, y0 = x[e], y[e]
        x1, y1 = x[(e + 1) % k], y[(e + 1) % k]
        if x0 == x1:
            continue
        slope = (y1 - y0) / (x1 - x0)
        lo, hi = min(x0, x1), max(x0, x1)
        sign = 1.0 if x1 > x0 else -1.0
        for b in range(int(math.floor(lo)), int(math.floor(hi)) + 1):
            a, c = max(lo, b), min(hi, b + 1.0)
            if c <= a or b < bmin or b > bmax:
                continue
            out[b - bmin] += sign * 0.5 * (c - a) * (2 * y0 + slope * (a - x0 + c - x0))


@njit(cache=True)
def _unwrap(chi, out):
    for k in range(chi.size):
        d = chi[k] - chi[0]
        out[k] = chi[k] - 2 * math.pi if d > math.pi else (
            chi[k] + 2 * math.pi if d < -math.pi else chi[k])


@njit(parallel=True, cache=True)
def full_csr(corner_rad, corner_chi, valid, lo, hi, npt):
    """CSR of pyFAI's 1-D full split: polygon area in (radial, chi) per radial bin."""
    counts = np.zeros((CSR_CHUNKS, npt), np.int64)
    nodata, noindex = np.empty(0, np.float32), np.empty(0, np.int32)
    for c in prange(CSR_CHUNKS):
        _full_chunk(c, corner_rad, corner_chi, valid, lo, hi, npt, counts[c], nodata, noindex,
                    False)
    indptr, fill, data, indices = _chunk_csr_arrays(counts, npt)
    for c in prange(CSR_CHUNKS):
        _full_chunk(c, corner_rad, corner_chi, valid, lo, hi, npt, fill[c], data, indices,
                    True)
    return data, indices, indptr


@njit(inline="always")
def _full_chunk(c, corner_rad, corner_chi, valid, lo, hi, npt, row, data, indices, write):
    width = (hi - lo) / npt
    x = np.empty(4)
    y = np.empty(4)
    buf = np.empty(npt + 2)
    first, stop = _chunk_bounds(corner_rad.shape[0], c)
    for i in range(first, stop):
        if not valid[i]:
            continue
        for k in range(4):
            x[k] = (corner_rad[i, k] - lo) / width
        xmin, xmax = x.min(), x.max()
        if xmax < 0 or xmin >= npt:
            continue
        bmin, bmax = int(math.floor(xmin)), int(math.floor(xmax))
        if bmin == bmax:
            _put(row, bmin, i, 1.0, data, indices, write)
            continue
        bmin, bmax = max(0, bmin), min(npt - 1, bmax)
        _unwrap(corner_chi[i], y)
        areas = buf[: bmax - bmin + 1]
        _strip_areas(x, y, bmin, bmax, areas)
        total = areas.sum()
        if total == 0.0:
            continue
        for b in range(bmin, bmax + 1):
            w = areas[b - bmin] / total
            if bmax == bmin + 1 and b == bmax:  # pair: weights sum to 1 exactly
                w = np.float32(1.0) - np.float32(areas[0] / total)
            _put(row, b, i, w, data, indices, write)


@njit(cache=True)
def quantize_pairs(data, indices, indptr, npix):
    """Copy of a CSR matrix's data, two-bin pixels' weights in steps of 1/WEIGHT_ONE.

    A pixel with entries (b, 1 - w), (b + 1, w) (summing to 1 in float32, as the builders
    make them) gets (b, 1 - q), (b + 1, q) with q = round(w·WEIGHT_ONE) / WEIGHT_ONE: both
    exact in float32, so every pass (float CSR gather, float or integer pixel-major pass)
    sums with the very same matrix. Other pixels keep their weights. The change of a
    weight is at most 2^-16, far below the differences to pyFAI's own splitting.
    """
    npt = indptr.size - 1
    seen = np.zeros(npix, np.int8)  # entries met so far, capped at 3
    first = np.empty(npix, np.int32)  # position in data of the pixel's first entry
    second = np.empty(npix, np.int32)
    for b in range(npt):
        for k in range(indptr[b], indptr[b + 1]):
            j = indices[k]
            if seen[j] == 0:
                first[j] = k
            elif seen[j] == 1:
                second[j] = k
            seen[j] = min(seen[j] + 1, 3)
    out = data.copy()
    rows = np.empty(data.size, np.int32)  # bin of every entry, to check the pair is b, b + 1
    for b in range(npt):
        rows[indptr[b]:indptr[b + 1]] = b
    for j in range(npix):
        if seen[j] != 2:
            continue
        k0, k1 = first[j], second[j]
        if rows[k1] != rows[k0] + 1 or data[k1] != np.float32(1.0) - data[k0]:
            continue
        q = np.round(np.float64(data[k1]) * WEIGHT_ONE)
        out[k1] = np.float32(q / WEIGHT_ONE)
        out[k0] = np.float32((WEIGHT_ONE - q) / WEIGHT_ONE)
    return out


@njit(parallel=True, cache=True)
def csr_static_sums(data, indices, indptr, norm, dark):
    """Frame-independent per-bin sums: Σc·n, Σc²·n², Σc·[n>0], Σc·dark."""
    npt = indptr.size - 1
    out = np.zeros((4, npt))
    for b in prange(npt):
        sn = sn2 = sc = sd = 0.0
        for k in range(indptr[b], indptr[b + 1]):
            j = indices[k]
            c = np.float64(data[k])
            n = np.float64(norm[j])
            if n != 0.0:
                sn += c * n
                sn2 += c * c * n * n
                sc += c
                sd += c * dark[j]
        out[0, b], out[1, b], out[2, b], out[3, b] = sn, sn2, sc, sd
    return out


@njit(parallel=True, cache=True)
def hist_static_sums(bins, norm, dark, npt, nchunks):
    """Frame-independent per-bin sums over pixels with ``bins < npt``: n, n², count, dark."""
    n = bins.size
    acc = np.zeros((nchunks, 4, npt + 1))
    chunk = -(-n // nchunks)
    for c in prange(nchunks):
        for i in range(c * chunk, min(n, (c + 1) * chunk)):
            b = bins[i]
            v = np.float64(norm[i])
            acc[c, 0, b] += v
            acc[c, 1, b] += v * v
            acc[c, 2, b] += 1.0
            acc[c, 3, b] += dark[i]
    return acc.sum(axis=0)[:, :npt]


@njit(cache=True)
def item_counts(bins, items, npt):
    """Pixels of each bin (0 .. npt) inside the (start, stop) ``items``: the static N the
    packed passes add back. uint64 (npt + 1)."""
    counts = np.zeros(npt + 1, np.uint64)
    for c in range(items.shape[0]):
        for p in range(items[c, 0], items[c, 1]):
            counts[bins[p]] += np.uint64(1)
    return counts


@njit(cache=True)
def valid_runs(bins, npt, min_gap):
    """(start, stop) runs of pixels with ``bins != npt``; masked stretches shorter than
    ``min_gap`` between two runs stay inside one run (a few wasted reads are cheaper than a
    work item more). int64 (m, 2)."""
    n = bins.size
    out = np.empty((n // 2 + 1, 2), np.int64)  # runs alternate with gaps: at most n/2 + 1
    m = 0
    p = 0
    while p < n:
        while p < n and bins[p] == npt:
            p += 1
        if p == n:
            break
        start = p
        while p < n and bins[p] != npt:
            p += 1
        if m > 0 and start - out[m - 1, 1] < min_gap:
            out[m - 1, 1] = p
        else:
            out[m, 0], out[m, 1] = start, p
            m += 1
    return out[:m].copy()


@njit(cache=True)
def chunk_items(n):
    """Work items (start, stop) of :data:`CHUNK` pixels covering pixels 0 .. n."""
    nch = (n + CHUNK - 1) // CHUNK
    items = np.empty((nch, 2), np.int64)
    for c in range(nch):
        items[c, 0] = c * CHUNK
        items[c, 1] = min(n, c * CHUNK + CHUNK)
    return items


def quad_table(bins, items, npt):
    """Quad-pass tables (:func:`hist_quads_items`) of the (start, stop) ``items``.

    Item c's pixels i0, i0 + 1, ... are taken four at a time from i0; its quads' entries
    are ``qidx[off[c]:off[c + 1]]`` (uint16 ``T·(npt + 1) + b``, see :data:`QUAD_OFFSETS`;
    npt at most :data:`QUAD_MAX_BINS`, so that a sub-histogram stays under 0.5 MB). A quad
    of no type gets entry ``npt`` (row npt of type 0: never read) and its valid pixels are
    listed (pixel, bin), as are an item's last 1 to 3 pixels. Returns (qidx, off, list_pix
    int64, list_bin int64, used: uint8 per quad type, 1 where a quad has it (type 0
    always), quads listed).
    """
    if npt > QUAD_MAX_BINS:
        raise ValueError(f"the quad pass takes at most {QUAD_MAX_BINS} bins, not {npt}")
    off = _quad_offsets(items)
    qidx = np.empty(off[-1], np.uint16)
    list_pix, list_bin, listed = _quad_fill(bins, items, off, npt, qidx, QUAD_TYPE_OF_STEPS)
    used = np.zeros(QUAD_TYPES, np.uint8)
    used[np.unique(qidx // (npt + 1))] = 1
    used[0] = 1  # entry npt (quads of no type) is in type 0's block
    return qidx, off, list_pix, list_bin, used, listed


@njit(cache=True)
def _quad_offsets(items):
    off = np.zeros(items.shape[0] + 1, np.int64)
    for c in range(items.shape[0]):
        off[c + 1] = off[c] + (items[c, 1] - items[c, 0]) // 4
    return off


@njit(cache=True)
def _quad_type(bins, j, npt, type_of_steps):
    """Type of the quad of pixels j .. j + 3, or -1 (a masked pixel: bin npt; steps of no
    type)."""
    if max(bins[j], bins[j + 1], bins[j + 2], bins[j + 3]) >= npt:
        return -1
    s1 = np.int64(bins[j + 1]) - np.int64(bins[j])
    s2 = np.int64(bins[j + 2]) - np.int64(bins[j + 1])
    s3 = np.int64(bins[j + 3]) - np.int64(bins[j + 2])
    if max(abs(s1), abs(s2), abs(s3)) > 1:
        return -1
    return type_of_steps[s1 + 1, s2 + 1, s3 + 1]


@njit(cache=True)
def _quad_fill(bins, items, off, npt, qidx, type_of_steps):
    nit = items.shape[0]
    lp = np.empty(4 * off[nit] + 3 * nit, np.int64)
    lb = np.empty(lp.size, np.int64)
    m = 0
    listed = 0
    for c in range(nit):
        i0 = items[c, 0]
        for k in range(off[c + 1] - off[c]):
            j = i0 + 4 * k
            t = _quad_type(bins, j, npt, type_of_steps)
            if t >= 0:
                qidx[off[c] + k] = t * (npt + 1) + np.int64(bins[j])
                continue
            qidx[off[c] + k] = npt
            any_valid = False
            for q in range(j, j + 4):
                if bins[q] < npt:
                    lp[m], lb[m] = q, bins[q]
                    m += 1
                    any_valid = True
            listed += any_valid
        for q in range(i0 + 4 * (off[c + 1] - off[c]), items[c, 1]):  # the last 1 to 3
            if bins[q] < npt:
                lp[m], lb[m] = q, bins[q]
                m += 1
    return lp[:m].copy(), lb[:m].copy(), listed


@njit(cache=True)
def pixel_table(data, indices, indptr, npix, bins, u):
    """Pixel-major form of a CSR matrix (rows = bins) for the 2-bin split passes.

    A pixel with one entry of weight 1, or two entries in consecutive bins b, b+1 with
    weights 1 - q, q (q a multiple of 1/WEIGHT_ONE, see :func:`quantize_pairs`) is stored
    as ``bins[j] = b``, ``u[j] = q·WEIGHT_ONE`` (uint16; 0 for one entry); every other
    pixel (absent, 3+ bins, other weights) gets ``bins[j] = npt`` and its entries go to
    the returned pixel-sorted COO lists (pixel int32, bin int32, weight float32).
    """
    npt = indptr.size - 1
    state = np.zeros(npix, np.int8)  # 0 absent, 1 one entry, 2 pair, 3 exception
    w0 = np.empty(npix, np.float32)  # weight of the first entry
    for b in range(npt):
        for k in range(indptr[b], indptr[b + 1]):
            j = indices[k]
            c = data[k]
            s = state[j]
            if s == 0:
                bins[j] = b
                w0[j] = c
                state[j] = 1
            elif s == 1 and b == bins[j] + 1 and c == np.float32(1.0) - w0[j]:
                state[j] = 2
            else:
                state[j] = 3
    count = np.zeros(npix + 1, np.int64)
    for j in range(npix):
        q = np.float64(np.float32(1.0) - w0[j]) * WEIGHT_ONE  # second weight, fixed point
        # both weights must be what u stands for (1 - 2^-30 and 2^-30 are a float32 pair),
        # in 0 .. 1 (the integer pass's unsigned terms)
        exact = (q == math.floor(q) and 0.0 <= q <= WEIGHT_ONE
                 and np.float64(w0[j]) == 1.0 - q / WEIGHT_ONE)
        if (state[j] == 1 and w0[j] != 1.0) or (state[j] == 2 and not exact):
            state[j] = 3
        if state[j] == 0 or state[j] == 3:
            bins[j] = npt
        u[j] = np.uint16(q) if state[j] == 2 else np.uint16(0)
    for b in range(npt):
        for k in range(indptr[b], indptr[b + 1]):
            if state[indices[k]] == 3:
                count[indices[k] + 1] += 1
    for j in range(npix):
        count[j + 1] += count[j]
    ex_pix = np.empty(count[npix], np.int32)
    ex_bin = np.empty(count[npix], np.int32)
    ex_w = np.empty(count[npix], np.float32)
    for b in range(npt):
        for k in range(indptr[b], indptr[b + 1]):
            j = indices[k]
            if state[j] == 3:
                m = count[j]
                ex_pix[m], ex_bin[m], ex_w[m] = j, b, data[k]
                count[j] += 1
    return ex_pix, ex_bin, ex_w
