"""Plain NumPy references for every Numba kernel in :mod:`.kernels`.

Slow and obvious on purpose: tests compare the kernels against these on random inputs, and
these against pyFAI. Conventions follow pyFAI (float32 per-pixel values, float64 sums).
"""

from __future__ import annotations

import math

import numpy as np

#: The upper edge of an automatic radial range is stretched by this factor, as pyFAI does.
EPS32 = 1.0 + float(np.finfo(np.float32).eps)


def upper_bound(maximum: float) -> float:
    """Smallest float32-distinguishable value above ``maximum`` (pyFAI's calc_upper_bound)."""
    return maximum * EPS32 if maximum > 0 else maximum / EPS32


def bin_edges(lo: float, hi: float, npt: int) -> np.ndarray:
    """The npt + 1 bin edges numpy.histogram uses for the range (lo, hi)."""
    return np.linspace(lo, hi, npt + 1)


def bin_index_reference(pos: np.ndarray, lo: float, hi: float, npt: int) -> np.ndarray:
    """Bin of each position as pyFAI's histogram assigns it, ``npt`` when outside [lo, hi].

    Same float steps as numpy: a scaled index, then a correction against the linspace
    edges, so counts match numpy.histogram (hence pyFAI's "no" histogram) exactly.
    """
    pos = np.asarray(pos, dtype=np.float64).ravel()
    edges = bin_edges(lo, hi, npt)
    out = np.full(pos.size, npt, dtype=np.int64)
    keep = (pos >= lo) & (pos <= hi)
    p = pos[keep]
    idx = ((p - lo) / (hi - lo) * npt).astype(np.int64)
    idx[idx == npt] -= 1
    idx[p < edges[idx]] -= 1
    idx[(p >= edges[idx + 1]) & (idx != npt - 1)] += 1
    out[keep] = idx
    # pyFAI's C histogram truncates toward zero, so a position less than one bin below lo
    # lands in bin 0 (only matters for a user-given range)
    out[(pos < lo) & ((pos - lo) / (hi - lo) * npt > -1.0)] = 0
    return out


def preprocess_reference(
    raw: np.ndarray,
    dark: np.ndarray | None = None,
    flat: np.ndarray | None = None,
    solid_angle: np.ndarray | None = None,
    polarization: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    dummy: float | None = None,
    delta_dummy: float | None = None,
    normalization_factor: float = 1.0,
    poisson: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel (signal, variance, norm, count) in float32; all zero for invalid pixels.

    Invalid: masked, non-finite, equal to ``dummy`` (within ``delta_dummy``), a dark or flat
    equal to ``dummy``, or a zero / non-finite normalisation.
    """
    f32 = np.float32
    raw32 = np.asarray(raw).astype(f32).ravel()
    n = raw32.size
    invalid = np.zeros(n, bool) if mask is None else np.asarray(mask, bool).ravel().copy()
    invalid |= ~np.isfinite(raw32)
    dark32 = None if dark is None else np.asarray(dark).astype(f32).ravel()
    flat32 = None if flat is None else np.asarray(flat).astype(f32).ravel()
    if dummy is not None:
        for arr in (raw32, dark32, flat32):
            if arr is not None:
                invalid |= _is_dummy(arr, dummy, delta_dummy)
    signal = raw32 - dark32 if dark32 is not None else raw32.copy()
    norm = np.full(n, f32(normalization_factor), dtype=f32)
    for arr in (flat32, polarization, solid_angle):
        if arr is not None:
            norm *= np.asarray(arr).astype(f32).ravel()
    invalid |= ~np.isfinite(norm) | (norm == 0)
    variance = np.maximum(raw32, f32(1.0)) if poisson else np.zeros(n, f32)
    count = (~invalid).astype(f32)
    for arr in (signal, variance, norm):
        arr[invalid] = 0.0
    return signal, variance, norm, count


def _is_dummy(arr: np.ndarray, dummy: float, delta_dummy: float | None) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        if not delta_dummy:
            return arr == np.float32(dummy)
        return np.abs(arr - np.float32(dummy)) <= np.float32(delta_dummy)


def histogram_reference(
    bins: np.ndarray, npt: int, signal: np.ndarray, variance: np.ndarray,
    norm: np.ndarray, count: np.ndarray,
) -> tuple[np.ndarray, ...]:
    """Per-bin float64 sums (signal, variance, norm, norm², count); ``bins == npt`` dropped."""
    b = np.asarray(bins).ravel()

    def acc(w: np.ndarray) -> np.ndarray:
        return np.bincount(b, weights=np.asarray(w, np.float64), minlength=npt + 1)[:npt]

    norm64 = norm.astype(np.float64)
    return acc(signal), acc(variance), acc(norm64), acc(norm64 * norm64), acc(count)


def csr_integrate_reference(
    data: np.ndarray, indices: np.ndarray, indptr: np.ndarray,
    signal: np.ndarray, variance: np.ndarray, norm: np.ndarray, count: np.ndarray,
) -> tuple[np.ndarray, ...]:
    """Per-bin sums through a CSR matrix (rows = bins): Σc·s, Σc²·v, Σc·n, Σc²·n², Σc·count."""
    npt = indptr.size - 1
    out = [np.zeros(npt) for _ in range(5)]
    c = data.astype(np.float64)
    for b in range(npt):
        sl = slice(indptr[b], indptr[b + 1])
        cols, w = indices[sl], c[sl]
        out[0][b] = np.sum(w * signal[cols])
        out[1][b] = np.sum(w * w * variance[cols])
        nb = norm[cols].astype(np.float64)
        out[2][b] = np.sum(w * nb)
        out[3][b] = np.sum(w * w * nb * nb)
        out[4][b] = np.sum(w * count[cols])
    return tuple(out)


def quantize_pairs_reference(data, indices, indptr, npix: int, one: int):
    """Data of a CSR matrix with two-bin pixels' weights in steps of 1/``one`` (see
    kernels.quantize_pairs): entries (b, 1 - w), (b + 1, w) -> (b, 1 - q), (b + 1, q),
    q = round(w·one) / one."""
    npt = indptr.size - 1
    rows = np.repeat(np.arange(npt), np.diff(indptr))
    order = np.lexsort((rows, indices))  # by pixel, then bin
    pix, row, w = indices[order], rows[order], data[order]
    nper = np.bincount(pix, minlength=npix)
    first = np.concatenate(([0], np.cumsum(nper)[:-1]))
    f = first[np.flatnonzero(nper == 2)]
    pair = (row[f + 1] == row[f] + 1) & (w[f + 1] == np.float32(1.0) - w[f])
    f = f[pair]
    q = np.round(w[f + 1].astype(np.float64) * one)
    out = data.copy()
    out[order[f + 1]] = (q / one).astype(np.float32)
    out[order[f]] = ((one - q) / one).astype(np.float32)
    return out


def pixel_table_reference(data, indices, indptr, npix: int, one: int):
    """Pixel-major form of a CSR matrix (see kernels.pixel_table): (bins, u, pix, bin, w).

    Pixels with one entry of weight 1, or entries (b, 1 - q), (b + 1, q) with q·``one`` a
    whole number, get ``bins = b``, ``u = q·one`` (0 for one entry); the others
    ``bins = npt`` and their entries in COO lists sorted by pixel then bin.
    """
    npt = indptr.size - 1
    rows = np.repeat(np.arange(npt), np.diff(indptr))
    order = np.lexsort((rows, indices))
    pix, row, w = indices[order], rows[order], data[order].astype(np.float32)
    nper = np.bincount(pix, minlength=npix)
    first = np.concatenate(([0], np.cumsum(nper)[:-1]))
    bins = np.full(npix, npt, np.int64)
    u = np.zeros(npix, np.uint16)
    simple = np.zeros(npix, bool)
    one_entry = np.flatnonzero(nper == 1)
    simple[one_entry] = w[first[one_entry]] == 1.0
    two = np.flatnonzero(nper == 2)
    f = first[two]
    q = w[f + 1].astype(np.float64) * one
    simple[two] = ((row[f + 1] == row[f] + 1) & (w[f + 1] == np.float32(1.0) - w[f])
                   & (q == np.floor(q)) & (q >= 0) & (q <= one)
                   & (w[f].astype(np.float64) == 1.0 - q / one))
    has = nper > 0
    bins[simple] = row[first[simple]]
    u[two[simple[two]]] = q[simple[two]]
    ex = ~simple[pix] & has[pix]
    return bins, u, pix[ex].astype(np.int32), row[ex].astype(np.int32), w[ex]


def split_pass_reference(raw, bins, u, ex_pix, ex_bin, ex_w, npt: int, one: int):
    """(2, npt) Σc·raw, Σc²·max(raw, 1) of the pixel-major table (see kernels.split_pass)."""
    r = np.asarray(raw).astype(np.float32).astype(np.float64).ravel()
    rv = np.maximum(r, 1.0)
    c1 = u.astype(np.float64) / one
    c0 = 1.0 - c1
    ex_c = ex_w.astype(np.float64)
    cols = np.concatenate([bins, np.asarray(bins, np.int64) + 1, ex_bin])
    out = np.zeros((2, npt))
    for k, (a, b, e) in enumerate([(c0 * r, c1 * r, ex_c * r[ex_pix]),
                                   (c0 * c0 * rv, c1 * c1 * rv, ex_c * ex_c * rv[ex_pix])]):
        out[k] = np.bincount(cols, np.concatenate([a, b, e]), minlength=npt + 2)[:npt]
    return out


def _to_csr(rows: list[int], cols: list[int], vals: list[float], npt: int):
    rows_a = np.asarray(rows, np.int64)
    order = np.lexsort((np.asarray(cols, np.int64), rows_a))
    indptr = np.zeros(npt + 1, np.int64)
    np.add.at(indptr, rows_a + 1, 1)
    return (
        np.asarray(vals, np.float32)[order],
        np.asarray(cols, np.int32)[order],
        np.cumsum(indptr).astype(np.int32),
    )


def bbox_csr_reference(
    center: np.ndarray, delta: np.ndarray, valid: np.ndarray, lo: float, hi: float, npt: int
):
    """CSR (data, indices, indptr) of bounding-box splitting, as pyFAI's 1-D bbox CSR.

    Each valid pixel spreads uniformly over [center - delta, center + delta] in bin space;
    bins outside [0, npt) are clipped (pyFAI keeps the unclipped fractions).
    """
    width = (hi - lo) / npt
    rows, cols, vals = [], [], []
    for i in np.flatnonzero(np.asarray(valid).ravel()):
        fmin = (center[i] - delta[i] - lo) / width
        fmax = (center[i] + delta[i] - lo) / width
        bmin, bmax = int(fmin), int(fmax)  # truncation toward zero, like a C cast
        if bmax < 0 or bmin >= npt:
            continue
        bmin, bmax = max(bmin, 0), min(bmax, npt - 1)
        if bmin == bmax:
            rows.append(bmin), cols.append(i), vals.append(1.0)
            continue
        inv = 1.0 / (fmax - fmin)
        for b in range(bmin, bmax + 1):
            if bmax == bmin + 1 and b == bmax:  # a pair's weights sum to 1 in float32
                w = float(np.float32(1.0) - np.float32(inv * (bmin + 1 - fmin)))
            elif b == bmin:
                w = inv * (bmin + 1 - fmin)
            elif b == bmax:
                w = inv * (fmax - bmax)
            else:
                w = inv
            rows.append(b), cols.append(i), vals.append(w)
    return _to_csr(rows, cols, vals, npt)


def strip_areas(x: np.ndarray, y: np.ndarray, bmin: int, bmax: int) -> np.ndarray:
    """Signed area of the closed polygon (x, y) inside each strip [b, b+1), b in bmin..bmax.

    x is in bin units. Each edge adds the trapezoid under it, clipped to every strip it
    crosses; summed around the polygon that is the polygon's area inside the strip.
    """
    out = np.zeros(bmax - bmin + 1)
    k = len(x)
    for e in range(k):
        x0, y0, x1, y1 = x[e], y[e], x[(e + 1) % k], y[(e + 1) % k]
        if x0 == x1:
            continue
        slope = (y1 - y0) / (x1 - x0)
        lo, hi = min(x0, x1), max(x0, x1)
        sign = 1.0 if x1 > x0 else -1.0
        for b in range(int(math.floor(lo)), int(math.floor(hi)) + 1):
            a, c = max(lo, b), min(hi, b + 1)
            if c <= a or b < bmin or b > bmax:
                continue
            ya, yc = y0 + slope * (a - x0), y0 + slope * (c - x0)
            out[b - bmin] += sign * 0.5 * (c - a) * (ya + yc)
    return out


def full_csr_reference(
    corner_rad: np.ndarray, corner_chi: np.ndarray, valid: np.ndarray,
    lo: float, hi: float, npt: int,
):
    """CSR of full pixel splitting in 1-D, as pyFAI: pixel polygon area in (radial, chi) space
    falling in each radial bin, normalised over the bins inside the range.

    corner_rad / corner_chi are (n, 4); chi is unwrapped around corner A so a pixel never
    straddles the ±pi cut.
    """
    width = (hi - lo) / npt
    rows, cols, vals = [], [], []
    for i in np.flatnonzero(np.asarray(valid).ravel()):
        x = (corner_rad[i] - lo) / width
        y = unwrap_chi(corner_chi[i])
        bmin, bmax = int(math.floor(x.min())), int(math.floor(x.max()))
        if x.max() < 0 or x.min() >= npt:
            continue
        if bmin == bmax:
            rows.append(bmin), cols.append(i), vals.append(1.0)
            continue
        bmin, bmax = max(0, bmin), min(npt - 1, bmax)
        areas = strip_areas(x, y, bmin, bmax)
        total = areas.sum()
        if total == 0:
            continue
        w = areas / total
        if bmax == bmin + 1:  # a pair's weights sum to 1 in float32
            w[1] = np.float32(1.0) - np.float32(w[0])
        for b in range(bmin, bmax + 1):
            rows.append(b), cols.append(i), vals.append(w[b - bmin])
    return _to_csr(rows, cols, vals, npt)


def unwrap_chi(chi: np.ndarray) -> np.ndarray:
    """Shift corners by 2pi so that all lie within pi of the first one."""
    out = np.array(chi, dtype=np.float64)
    d = out - out[0]
    out[d > math.pi] -= 2 * math.pi
    out[d < -math.pi] += 2 * math.pi
    return out
