"""Numba kernels for radial integration; each has a NumPy twin in :mod:`.reference`.

Per-frame kernels read only the frame and a per-pixel bin index (no split) or the CSR matrix
(split modes). Sums that do not depend on the frame (normalisation, count, dark) are
precomputed per bin; pixels found invalid in a frame (NaN, dummy) are subtracted from them,
so the per-pixel normalisation is read only for those rare pixels.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

#: Packed integer accumulator for uint16 frames: low 40 bits sum the counts, the bits above
#: count zero-valued pixels (Poisson variance max(raw, 1) = raw + [raw == 0]).
PACK_SHIFT = 40
PACK_LOW = (1 << PACK_SHIFT) - 1
#: Max pixels per chunk so neither packed field overflows (2^23 zeros, 2^40 / 65535 sum).
PACK_MAX_CHUNK = 1 << 22
LANES = 4  # interleaved sub-histograms: breaks store-to-load chains on runs of equal bins


def n_chunks(size: int, limit: int = PACK_MAX_CHUNK) -> int:
    """Chunks for a parallel pass: one per thread at least, each at most ``limit`` pixels."""
    return max(numba.get_num_threads(), -(-size // limit))


# ------------------------------------------------------------------------------ geometry setup
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


@njit(cache=True)
def _csr_from_counts(counts, npt):
    indptr = np.zeros(npt + 1, np.int32)
    for b in range(npt):
        indptr[b + 1] = indptr[b] + counts[b]
    return indptr


@njit(cache=True)
def bbox_csr(center, delta, valid, lo, hi, npt):
    """CSR (data, indices, indptr) of pyFAI's 1-D bounding-box split (see reference)."""
    width = (hi - lo) / npt
    counts = np.zeros(npt, np.int64)
    for two_pass in range(2):
        if two_pass == 1:
            indptr = _csr_from_counts(counts, npt)
            fill = indptr[:-1].copy()
            data = np.empty(indptr[-1], np.float32)
            indices = np.empty(indptr[-1], np.int32)
        for i in range(center.size):
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
                if two_pass == 0:
                    counts[b] += 1
                    continue
                if bmin == bmax:
                    w = 1.0
                elif b == bmin:
                    w = inv * (bmin + 1 - fmin)
                elif b == bmax:
                    w = inv * (fmax - bmax)
                else:
                    w = inv
                data[fill[b]] = w
                indices[fill[b]] = i
                fill[b] += 1
    return data, indices, indptr


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


@njit(cache=True)
def full_csr(corner_rad, corner_chi, valid, lo, hi, npt):
    """CSR of pyFAI's 1-D full split: polygon area in (radial, chi) per radial bin."""
    width = (hi - lo) / npt
    counts = np.zeros(npt, np.int64)
    x = np.empty(4)
    y = np.empty(4)
    buf = np.empty(npt + 2)
    for two_pass in range(2):
        if two_pass == 1:
            indptr = _csr_from_counts(counts, npt)
            fill = indptr[:-1].copy()
            data = np.empty(indptr[-1], np.float32)
            indices = np.empty(indptr[-1], np.int32)
        for i in range(corner_rad.shape[0]):
            if not valid[i]:
                continue
            for k in range(4):
                x[k] = (corner_rad[i, k] - lo) / width
            xmin, xmax = x.min(), x.max()
            if xmax < 0 or xmin >= npt:
                continue
            bmin, bmax = int(math.floor(xmin)), int(math.floor(xmax))
            if bmin == bmax:
                if two_pass == 0:
                    counts[bmin] += 1
                else:
                    data[fill[bmin]] = 1.0
                    indices[fill[bmin]] = i
                    fill[bmin] += 1
                continue
            bmin, bmax = max(0, bmin), min(npt - 1, bmax)
            _unwrap(corner_chi[i], y)
            areas = buf[: bmax - bmin + 1]
            _strip_areas(x, y, bmin, bmax, areas)
            total = areas.sum()
            if total == 0.0:
                continue
            for b in range(bmin, bmax + 1):
                if two_pass == 0:
                    counts[b] += 1
                else:
                    data[fill[b]] = areas[b - bmin] / total
                    indices[fill[b]] = i
                    fill[b] += 1
    return data, indices, indptr


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


# ---------------------------------------------------------------------------- per-frame passes
@njit(parallel=True, cache=True)
def hist_packed_u16(raw, bins, npt, nchunks):
    """No-split pass for uint16 frames without dynamic validity checks.

    Reads 2 B of frame + 2 B of bin index per pixel; one integer add per pixel into private
    per-thread, per-lane bins. Returns (Σraw, Σmax(raw, 1)) per bin as float64.
    """
    n = raw.size
    acc = np.zeros((nchunks, LANES, npt + 1), np.int64)
    chunk = -(-n // nchunks)
    for c in prange(nchunks):
        a = acc[c]
        start = c * chunk
        stop = min(n, start + chunk)
        stop4 = start + (stop - start) // LANES * LANES
        for p in range(start, stop4, LANES):
            for k in range(LANES):
                r = np.int64(raw[p + k])
                a[k, bins[p + k]] += r + (np.int64(r == 0) << PACK_SHIFT)
        for p in range(stop4, stop):
            r = np.int64(raw[p])
            a[0, bins[p]] += r + (np.int64(r == 0) << PACK_SHIFT)
    sig = np.empty(npt)
    var = np.empty(npt)
    for b in range(npt):
        sraw = 0
        zeros = 0
        for c in range(nchunks):
            for k in range(LANES):
                v = acc[c, k, b]
                sraw += v & PACK_LOW
                zeros += v >> PACK_SHIFT
        sig[b] = sraw
        var[b] = sraw + zeros
    return sig, var


@njit(parallel=True, cache=True)
def hist_checked(raw, bins, npt, norm, dark, check_dummy, dummy, delta_dummy, nchunks):
    """No-split pass for any frame dtype with NaN / dummy checks.

    Returns a (6, npt) float64 array: Σsignal, Σvariance of valid pixels, and for pixels
    found invalid in this frame: Σnorm, Σnorm², count, Σdark (to subtract from the static
    sums).
    """
    n = raw.size
    acc = np.zeros((nchunks, 6, npt + 1))
    chunk = -(-n // nchunks)
    for c in prange(nchunks):
        a = acc[c]
        for p in range(c * chunk, min(n, (c + 1) * chunk)):
            b = bins[p]
            if b == npt:
                continue
            v = np.float32(raw[p])
            bad = not np.isfinite(v)
            if check_dummy and not bad:
                bad = v == dummy if delta_dummy == 0.0 else abs(v - dummy) <= delta_dummy
            if bad:
                w = np.float64(norm[p])
                a[2, b] += w
                a[3, b] += w * w
                a[4, b] += 1.0
                a[5, b] += dark[p]
            else:
                a[0, b] += v
                a[1, b] += max(v, np.float32(1.0))
    return acc.sum(axis=0)[:, :npt]


@njit(parallel=True, cache=True)
def csr_pass(raw, data, indices, indptr, norm, dark, check, check_dummy, dummy, delta_dummy):
    """Split-mode pass: gather through the CSR matrix, one bin per iteration (no atomics).

    Returns (6, npt) float64 like :func:`hist_checked`, corrections weighted by c (and c²).
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
                bad = not np.isfinite(r)
                if check_dummy and not bad:
                    bad = r == dummy if delta_dummy == 0.0 else abs(r - dummy) <= delta_dummy
                if bad:
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
