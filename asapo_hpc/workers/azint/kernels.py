"""Numba kernels for radial integration; each has a NumPy twin in :mod:`.reference`.

Per-frame kernels read only the frame and a per-pixel bin index (no split), a pixel-major
table (split modes, integer frames: first bin + one uint16 fixed-point weight per pixel, the
few pixels over 3+ bins in a short list; uint16 frames summed in exact integers) or the CSR
matrix (split modes with per-pixel checks). All
stream the frame once, in pixel order, into private per-thread bins; work items are handed
out through an atomic counter. Sums that do not depend on the frame (normalisation, count,
dark) are precomputed per bin; pixels found invalid in a frame (NaN, dummy) are subtracted
from them, so the per-pixel normalisation is read only for those rare pixels.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

#: Packed integer sums of uint16 frames: each pixel adds (raw - 1) mod 2^PACK_SHIFT, so a
#: zero adds 2^PACK_SHIFT - 1 = -1 + 2^PACK_SHIFT. A bin's N pixels (a static count) sum to
#: Σraw - N + zeros·2^PACK_SHIFT: with N added back, the low bits are Σraw and the bits above
#: count the zeros (Poisson variance max(raw, 1) = raw + [raw == 0]).
PACK_SHIFT = 40
PACK_LOW = (1 << PACK_SHIFT) - 1
LANES = 4  # interleaved sub-histograms: breaks store-to-load chains on runs of equal bins
#: Pixels one call of :func:`hist_packed_u16` may take: a bin of N < 2^24 pixels keeps
#: Σraw < 65536·N < 2^PACK_SHIFT and zeros·2^PACK_SHIFT < 2^64 (partial sums may wrap
#: around; the total cannot).
PACK_MAX_PIXELS = (1 << 24) - 1
#: The same packing at 2^32 (a pixel adds (raw - 1) mod 2^32: one 32-bit add, where the
#: 40-bit mask takes two) while every bin (0 .. npt - 1) of a call holds at most this many
#: pixels: Σraw <= 65535 x 65537 = 2^32 - 1 stays below the zero count. 3072 x 3072, 1000
#: bins (at most 22 k pixels a bin): 3.62 -> 3.41 ms on one thread.
PACK32_MAX_BIN_PIXELS = 65537
#: The pair pass (:func:`hist_pairs_u16_items`): pixels 2k, 2k + 1 of a work item share
#: one entry ``3·b + t`` of its histogram, t = 0 (both in bin b), 1 (second in b + 1),
#: 2 (second in b - 1), two uint64 (one per pixel) added as one 16-byte vector: half the
#: updates and loads of the one-pixel pass (3072 x 3072, 1000 bins, one thread: 3.5 ->
#: 2.7 ms). Pairs whose bins are further apart are listed and added one pixel at a time.
PAIR_TYPES = 3
#: Sub-histograms of the pair pass (consecutive pairs into different ones: 1 and 4 slower)
PAIR_LANES = 2
#: Pixels per work item of the per-frame passes (a multiple of the lane counts). Threads take
#: items from a shared atomic counter (a core busy with another process takes fewer) and add
#: into their own private bins (numba.parallel_chunksize costs ~2 ms per call here). The
#: passes take the thread count as an argument: numba.get_num_threads() is the usual value.
CHUNK = 1 << 14
#: Sub-histograms of the 2-bin split passes (4 x 32 kB for 1000 bins, in L2): consecutive
#: pixels often share a bin (runs of ~3.4 on a 9.4 Mpixel frame, 1000 bins); 4 lanes cut
#: the store-to-load chains 2 left (uint16 pass on one thread: 10.0 -> 8.8 ms; 8: no gain).
SPLIT_LANES = 4
#: Fixed-point unit of the split weights of two-bin pixels: the engines round the weight of
#: the second bin to a multiple of 1/WEIGHT_ONE (:func:`quantize_pairs`), the pixel table
#: stores it as a uint16 count of those, and the uint16 pass sums in exact integers.
WEIGHT_ONE = 1 << 15
#: :func:`split_pass_u16` is exact while every bin takes fewer pixels than this in one call
#: (its largest per-pixel term, (WEIGHT_ONE)² x 65535 < 2^46, summed in a uint64).
SPLIT_U16_MAX_BIN_PIXELS = 1 << 18
#: The no-split pass prefetches (non-temporal) the frame and bin index this many pixels
#: ahead, one 64-byte line of each per PREFETCH_BLOCK pixels: ~14 % faster on one thread
#: (stitched Lambda 9M, 1000 bins), as the streamed lines no longer evict the histograms.
PREFETCH_AHEAD = 1024
PREFETCH_BLOCK = 32


def n_chunks(size: int, limit: int = 1 << 22) -> int:
    """Chunks for a statically scheduled setup pass: one per thread, at most ``limit``."""
    return max(numba.get_num_threads(), -(-size // limit))


@intrinsic
def fetch_add(typingctx, arr, idx, val):
    """Atomically ``old = arr[idx]; arr[idx] += val; return old`` on an int64 array."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64):
        return None
    sig = types.int64(arr, types.intp, types.int64)

    def codegen(context, builder, signature, args):
        aty = signature.args[0]
        ary = context.make_array(aty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aty, ary, [args[1]])
        return builder.atomic_rmw("add", ptr, args[2], "monotonic")

    return sig, codegen


@intrinsic
def prefetch_nta(typingctx, arr, idx):
    """Hint the CPU to fetch the cache line of ``arr[idx]`` for one read (``prefetchnta``).

    The no-split pass streams the frame and the bin index once: fetched this way, their
    lines do not push the per-lane histograms (32 kB, a whole L1) out of the L1 cache.
    A prefetch never faults; callers still keep ``idx`` inside the array.
    """
    if not isinstance(arr, types.Array):
        return None
    sig = types.void(arr, types.intp)

    def codegen(context, builder, signature, args):
        aty = signature.args[0]
        ary = context.make_array(aty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aty, ary, [args[1]])
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        # (address, read, locality 0 = non-temporal, data cache)
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 0),
                          ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def add_row4(typingctx, flat, row, x0, x1, x2, x3):
    """``flat[4*row : 4*row + 4] += (x0, x1, x2, x3)`` as one 4 x float64 vector add.

    LLVM does not merge four adjacent scalar read-modify-writes into one; this is a single
    vector load, add and store (the split pass's per-pixel update).
    """
    if not (isinstance(flat, types.Array) and flat.ndim == 1 and flat.dtype == types.float64):
        return None
    f64 = types.float64
    sig = types.void(flat, types.intp, f64, f64, f64, f64)

    def codegen(context, builder, signature, args):
        aty = signature.args[0]
        ary = context.make_array(aty)(context, builder, args[0])
        first = builder.shl(args[1], context.get_constant(types.intp, 2))
        ptr = cgutils.get_item_pointer(context, builder, aty, ary, [first])
        vty = ir.VectorType(ir.DoubleType(), 4)
        vptr = builder.bitcast(ptr, vty.as_pointer())
        vec = ir.Constant(vty, ir.Undefined)
        for i in range(4):
            vec = builder.insert_element(vec, args[2 + i], ir.Constant(ir.IntType(32), i))
        builder.store(builder.fadd(builder.load(vptr, align=8), vec), vptr, align=8)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def add_row4_from(typingctx, flat, row, buf, i):
    """``flat[4*row : 4*row + 4] += buf[4*i : 4*i + 4]`` as one 4-vector add (float64 or
    uint64, both arrays alike).

    The scatter half of the split passes: the four sums of a pixel were computed
    beforehand, vectorised across pixels, into ``buf``; here they are one vector load and
    one read-modify-write of the bin's row.
    """
    same = (isinstance(flat, types.Array) and isinstance(buf, types.Array)
            and flat.ndim == 1 and buf.ndim == 1 and flat.dtype == buf.dtype
            and flat.dtype in (types.float64, types.uint64))
    if not same:
        return None
    sig = types.void(flat, types.intp, buf, types.intp)
    is_float = flat.dtype == types.float64

    def codegen(context, builder, signature, args):
        vty = ir.VectorType(ir.DoubleType() if is_float else ir.IntType(64), 4)
        two = context.get_constant(types.intp, 2)

        def row_ptr(aty, arr, index):
            ary = context.make_array(aty)(context, builder, arr)
            ptr = cgutils.get_item_pointer(context, builder, aty, ary, [builder.shl(index, two)])
            return builder.bitcast(ptr, vty.as_pointer())

        dst = row_ptr(signature.args[0], args[0], args[1])
        src = row_ptr(signature.args[2], args[2], args[3])
        add = builder.fadd if is_float else builder.add
        builder.store(add(builder.load(dst, align=8), builder.load(src, align=8)), dst, align=8)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def split_add4_u16(typingctx, flat, raw, u, bins, p, lane_rows):
    """Pixels p .. p + 4 of the uint16 split pass, from the table to the rows in registers.

    Pixel p + k adds (r, u·r, u²·rv, (WEIGHT_ONE - u)²·rv), rv = max(r, 1), uint64, to row
    ``k * lane_rows + bins[p + k]`` of ``flat`` (lane k). The four sums are computed for the
    four pixels at once (4 x uint64 vectors, one quantity each), transposed to one row per
    pixel with eight in-register shuffles and added with one read-modify-write each: no
    store and reload through a buffer, which cost more than the row update (one thread:
    8.2 -> 5.8 ms on 3072 x 3072, 1000 bins). Same integer arithmetic (mod 2^64) as
    :func:`_split_sums_u16`; ``p`` .. ``p + 4`` must be inside the arrays (unchecked).
    """
    assert SPLIT_LANES == 4, "split_add4_u16 puts pixel p + k into lane k of 4"
    ok = (isinstance(flat, types.Array) and flat.ndim == 1 and flat.dtype == types.uint64
          and all(isinstance(a, types.Array) and a.ndim == 1 and a.dtype == types.uint16
                  for a in (raw, u, bins)))
    if not ok:
        return None
    sig = types.void(flat, raw, u, bins, types.uint64, types.intp)

    def codegen(context, builder, signature, args):
        i16, i32, i64 = ir.IntType(16), ir.IntType(32), ir.IntType(64)
        v4 = ir.VectorType(i64, 4)

        def data(k):
            return context.make_array(signature.args[k])(context, builder, args[k]).data

        def splat(c):
            return ir.Constant(v4, [ir.Constant(i64, c)] * 4)

        def shuffle(a, b, idx):
            return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(i32, 4), idx))

        def load4(k):  # 4 x uint16 -> 4 x uint64
            ptr = builder.gep(data(k), [args[4]], inbounds=True)
            vec = builder.load(builder.bitcast(ptr, ir.VectorType(i16, 4).as_pointer()), align=2)
            return builder.zext(vec, v4)

        bptr = builder.gep(data(3), [args[4]], inbounds=True)
        bins4 = [builder.zext(builder.load(builder.gep(bptr, [ir.Constant(i64, k)]), align=2),
                              i64) for k in range(4)]
        r, w = load4(1), load4(2)
        rv = builder.select(builder.icmp_unsigned(">", r, splat(1)), r, splat(1))
        wr = builder.mul(w, r)
        wwrv = builder.mul(builder.mul(w, w), rv)
        v = builder.sub(splat(WEIGHT_ONE), w)
        vvrv = builder.mul(builder.mul(v, v), rv)
        # 4 x 4 transpose: (r0 wr0 r2 wr2), (r1 wr1 r3 wr3), the same of the variance terms,
        # then one (r, wr, wwrv, vvrv) row per pixel
        t0, t1 = shuffle(r, wr, [0, 4, 2, 6]), shuffle(r, wr, [1, 5, 3, 7])
        t2, t3 = shuffle(wwrv, vvrv, [0, 4, 2, 6]), shuffle(wwrv, vvrv, [1, 5, 3, 7])
        rows = [shuffle(t0, t2, [0, 1, 4, 5]), shuffle(t1, t3, [0, 1, 4, 5]),
                shuffle(t0, t2, [2, 3, 6, 7]), shuffle(t1, t3, [2, 3, 6, 7])]
        rows_ptr = builder.bitcast(data(0), v4.as_pointer())
        for k in range(4):
            lane = builder.gep(rows_ptr, [builder.mul(args[5], ir.Constant(i64, k))],
                               inbounds=True)
            dst = builder.gep(lane, [bins4[k]], inbounds=True)
            builder.store(builder.add(builder.load(dst, align=8), rows[k]), dst, align=8)
        return context.get_dummy_value()

    return sig, codegen


def _make_add_pairs4(mask: int):
    """Intrinsic for :func:`hist_pairs_u16_items`, packing pixels at ``mask`` (2^32 - 1 or
    :data:`PACK_LOW`): pixels p .. p + 4 (``p`` a pixel of the frame, ``k`` the index of
    the pair of pixels p, p + 1 in ``pidx``) as two pairs, pair j's packed values
    ``((r - 1) & mask`` of its two pixels, 2 x uint64) added to entry ``lane_j + pidx[k + j]``
    of ``flat`` (rows of two uint64). One <4 x i16> load, two 16-byte read-modify-writes;
    unchecked: callers keep every index inside the arrays."""

    @intrinsic
    def add_pairs4(typingctx, flat, raw, pidx, p, k, lane0, lane1):
        ok = (isinstance(flat, types.Array) and flat.dtype == types.uint64
              and isinstance(raw, types.Array) and raw.dtype == types.uint16
              and isinstance(pidx, types.Array) and pidx.dtype == types.uint16)
        if not ok:
            return None
        sig = types.void(flat, raw, pidx, types.uint64, types.uint64, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            i16, i32, i64 = ir.IntType(16), ir.IntType(32), ir.IntType(64)
            v4, v2 = ir.VectorType(i64, 4), ir.VectorType(i64, 2)

            def data(n):
                return context.make_array(signature.args[n])(context, builder, args[n]).data

            rptr = builder.bitcast(builder.gep(data(1), [args[3]], inbounds=True),
                                   ir.VectorType(i16, 4).as_pointer())
            r = builder.zext(builder.load(rptr, align=2), v4)
            packed = builder.and_(builder.add(r, ir.Constant(v4, [ir.Constant(i64, -1)] * 4)),
                                  ir.Constant(v4, [ir.Constant(i64, mask)] * 4))
            rows = builder.bitcast(data(0), v2.as_pointer())
            iptr = builder.gep(data(2), [args[4]], inbounds=True)
            for j, lane in enumerate((args[5], args[6])):
                half = builder.shuffle_vector(
                    packed, packed, ir.Constant(ir.VectorType(i32, 2), [2 * j, 2 * j + 1]))
                idx = builder.zext(builder.load(builder.gep(iptr, [ir.Constant(i64, j)]),
                                                align=2), i64)
                dst = builder.gep(rows, [builder.add(lane, idx)], inbounds=True)
                builder.store(builder.add(builder.load(dst, align=16), half), dst, align=16)
            return context.get_dummy_value()

        return sig, codegen

    return add_pairs4


add_pairs4_packed32 = _make_add_pairs4((1 << 32) - 1)
add_pairs4_packed = _make_add_pairs4(PACK_LOW)


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
                elif bmax == bmin + 1 and b == bmax:  # pair: weights sum to 1 exactly
                    w = np.float32(1.0) - np.float32(inv * (bmin + 1 - fmin))
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
                    w = areas[b - bmin] / total
                    if bmax == bmin + 1 and b == bmax:  # pair: weights sum to 1 exactly
                        w = np.float32(1.0) - np.float32(areas[0] / total)
                    data[fill[b]] = w
                    indices[fill[b]] = i
                    fill[b] += 1
    return data, indices, indptr


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


# ---------------------------------------------------------------------------- per-frame passes
@njit(cache=True, error_model="numpy")
def finish_1d(static, sums, nf, empty_by_norm):
    """The per-bin results of one frame, (6, npt): Σsignal, Σnormalisation, Σnorm², count,
    intensity, sigma, from the static sums (Σnorm, Σnorm², count, Σdark of every valid
    pixel) and the frame's (Σsignal, Σvariance, then the frame-invalid pixels' Σnorm, Σnorm²,
    count, Σdark). A bin is empty by its normalisation (CSR engines) or its count, as pyFAI
    marks them; empty bins get intensity and sigma 0. One loop instead of ~15 NumPy calls
    (~100 us per frame); the same operations in the same order, so the same values."""
    npt = sums.shape[1]
    out = np.empty((6, npt))
    for b in range(npt):
        signal = sums[0, b] - (static[3, b] - sums[5, b])
        norm = nf * (static[0, b] - sums[2, b])
        count = static[2, b] - sums[4, b]
        empty = norm == 0 if empty_by_norm else count < 1e-6
        out[0, b] = signal
        out[1, b] = norm
        out[2, b] = nf * nf * (static[1, b] - sums[3, b])
        out[3, b] = 0.0 if empty and count < 1e-6 else count
        out[4, b] = 0.0 if empty else signal / norm
        out[5, b] = 0.0 if empty else math.sqrt(sums[1, b]) / norm
    return out



@njit(inline="always")
def _packed(raw_value):
    # Two instructions (lea, and) where raw | (raw == 0) << 40 took five: 4.0 vs 4.5 ms on
    # a stitched Lambda 9M frame (1 thread). Computed before the bin index is loaded: LLVM
    # then makes the histogram update one add-to-memory instruction.
    return (np.uint64(raw_value) - np.uint64(1)) & np.uint64(PACK_LOW)


@njit(inline="always")
def _packed32(raw_value):
    # (raw - 1) mod 2^32 in one 32-bit add (zero-extended): see PACK32_MAX_BIN_PIXELS
    return (np.uint64(raw_value) + np.uint64(0xFFFFFFFF)) & np.uint64(0xFFFFFFFF)


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


@njit(inline="always")
def _add_packed_lanes(r, bb, p, a):
    """Pixels p .. p + LANES - 1, pixel p + k into lane k's bins."""
    for k in range(LANES):
        v = _packed(r[p + np.uint64(k)])  # first: see _packed
        a[k, bb[p + np.uint64(k)]] += v


@njit(inline="always")
def _add_packed32_lanes(r, bb, p, a):
    for k in range(LANES):
        v = _packed32(r[p + np.uint64(k)])
        a[k, bb[p + np.uint64(k)]] += v


@njit(inline="always")
def _packed_item(raw, bins, i0, i1, last, a, narrow):
    """Pixels i0 .. i1 into the lanes ``a``, packed at 2^32 (``narrow``) or 2^PACK_SHIFT.
    (The packing is a branch per block, not a function argument: a cached caller of a
    kernel taking functions as arguments crashed when loaded from the disk cache.)"""
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
                _add_packed_lanes(r, bb, p, a)
    m4 = m // np.uint64(LANES) * np.uint64(LANES)
    for p in range(mb, m4, np.uint64(LANES)):
        if narrow:
            _add_packed32_lanes(r, bb, p, a)
        else:
            _add_packed_lanes(r, bb, p, a)
    for p in range(m4, m):
        v = _packed32(r[p]) if narrow else _packed(r[p])
        a[0, bb[p]] += v


@njit(parallel=True, cache=True)
def hist_packed_u16_items(raw, bins, items, npt, counts, nthreads):
    """No-split pass for uint16 frames without dynamic validity checks, over work items.

    Reads 2 B of frame + 2 B of bin index per pixel of the (start, stop) ``items`` (pixels
    outside them are skipped: long masked runs); one integer add per pixel into private
    per-thread, per-lane bins (exact); items handed out dynamically. ``counts``: the
    items' pixels per bin (:func:`item_counts`). At most :data:`PACK_MAX_PIXELS` pixels;
    packed at 2^32 when no bin holds over :data:`PACK32_MAX_BIN_PIXELS` of them, else
    at 2^PACK_SHIFT. Returns (Σraw, Σmax(raw, 1)).
    """
    nt = max(1, nthreads)  # numba.get_num_threads() here would defeat the disk cache
    acc = np.zeros((nt, LANES, npt + 1), np.uint64)
    nit = items.shape[0]
    last = raw.size - 1  # prefetches stay inside the arrays
    narrow = _fits_packed32(counts, npt)
    counter = np.zeros(1, np.int64)
    for t in prange(nt):  # one iteration per thread; work items from the counter
        a = acc[t]
        while True:
            c = fetch_add(counter, 0, 1)
            if c >= nit:
                break
            _packed_item(raw, bins, items[c, 0], items[c, 1], last, a, narrow)
    total = counts[:npt].copy()  # the N the per-pixel -1 took off; sums wrap around uint64
    for t in range(nt):
        for k in range(LANES):
            for b in range(npt):
                total[b] += acc[t, k, b]
    return _unpacked(total, narrow)


@njit(cache=True)
def pair_table(bins, items, npt):
    """Pair-pass tables (:func:`hist_pairs_u16_items`) of the (start, stop) ``items``.

    Item c's pixels i0, i0 + 1, ... are paired from i0; its pairs' entries are
    ``pidx[off[c]:off[c + 1]]`` (uint16: 3·b + t, see :data:`PAIR_TYPES`; ``3·npt`` for
    a pair whose bins are not b, b + {0, 1, -1}: discarded), and each such pair's pixels
    and an odd item's last pixel are listed (pixel, bin) unless masked (bin ``npt``).
    Returns (pidx, off, list_pix int64, list_bin int64, pairs listed).
    """
    nit = items.shape[0]
    off = np.zeros(nit + 1, np.int64)
    for c in range(nit):
        off[c + 1] = off[c] + (items[c, 1] - items[c, 0]) // 2
    pidx = np.empty(off[nit], np.uint16)
    lp = np.empty(2 * off[nit] + nit, np.int64)
    lb = np.empty(lp.size, np.int64)
    m = 0
    listed = 0
    for c in range(nit):
        i0 = items[c, 0]
        for k in range(off[c + 1] - off[c]):
            j = i0 + 2 * k
            b0, b1 = np.int64(bins[j]), np.int64(bins[j + 1])
            d = b1 - b0
            if b0 < npt and (d == 0 or d == 1 or (d == -1 and b0 > 0)):
                pidx[off[c] + k] = PAIR_TYPES * b0 + (0 if d == 0 else (1 if d == 1 else 2))
                continue
            pidx[off[c] + k] = PAIR_TYPES * npt
            if b0 == npt and b1 == npt:
                continue  # both masked: nothing to add
            listed += 1
            for q in (j, j + 1):
                if bins[q] != npt:
                    lp[m], lb[m] = q, bins[q]
                    m += 1
        if (items[c, 1] - i0) % 2 == 1:
            q = items[c, 1] - 1
            if bins[q] != npt:
                lp[m], lb[m] = q, bins[q]
                m += 1
    return pidx, off, lp[:m].copy(), lb[:m].copy(), listed


@njit(inline="always")
def _pairs_item(raw, pidx, i0, k0, npairs, last, flat, ne, narrow):
    """Pairs k0 .. k0 + npairs of ``pidx`` (pixels from i0) into ``flat``, pair j into
    lane j % 2; the frame and the entries prefetched ahead as in :func:`_packed_item`."""
    block = np.uint64(PREFETCH_BLOCK // 2)  # pairs per 64-byte line of the frame
    n = np.uint64(npairs)
    nb = n // block * block
    p0, q0 = np.uint64(i0), np.uint64(k0)
    lane1 = np.intp(ne)
    for q in range(np.uint64(0), nb, block):
        ahead = min(np.int64(p0 + 2 * q) + PREFETCH_AHEAD, last)
        prefetch_nta(raw, ahead)
        prefetch_nta(pidx, min(np.int64(q0 + q) + PREFETCH_AHEAD // 2, pidx.size - 1))
        if narrow:
            for j in range(q, q + block, np.uint64(2)):
                add_pairs4_packed32(flat, raw, pidx, p0 + 2 * j, q0 + j, 0, lane1)
        else:
            for j in range(q, q + block, np.uint64(2)):
                add_pairs4_packed(flat, raw, pidx, p0 + 2 * j, q0 + j, 0, lane1)
    for j in range(nb, n):  # fewer than a block of pairs left: one pixel at a time
        e = 2 * np.int64(pidx[q0 + j])
        for h in range(2):
            r = raw[p0 + 2 * j + np.uint64(h)]
            flat[e + h] += _packed32(r) if narrow else _packed(r)


@njit(parallel=True, cache=True)
def hist_pairs_u16_items(raw, items, pidx, off, list_pix, list_bin, npt, counts, nthreads):
    """:func:`hist_packed_u16_items` reading pixel pairs' entries instead of bins.

    The same sums, bit for bit, from 2 B of frame + 1 B of entry index per pixel: the
    tables of :func:`pair_table` (built once per geometry and items) replace the bin
    index; the listed pixels go through work items of their own, one at a time. Same
    limits and packing as :func:`hist_packed_u16_items`. Returns (Σraw, Σmax(raw, 1)).
    """
    nt = max(1, nthreads)  # numba.get_num_threads() here would defeat the disk cache
    ne = PAIR_TYPES * (npt + 1)
    acc = np.zeros((nt, PAIR_LANES * ne * 2), np.uint64)  # per thread: lanes of entries
    single = np.zeros((nt, npt + 1), np.uint64)
    nit = items.shape[0]
    nitems = nit + (list_pix.size + CHUNK - 1) // CHUNK
    last = raw.size - 1
    narrow = _fits_packed32(counts, npt)
    counter = np.zeros(1, np.int64)
    for t in prange(nt):  # one iteration per thread; work items from the counter
        while True:
            c = fetch_add(counter, 0, 1)
            if c >= nitems:
                break
            if c < nit:
                _pairs_item(raw, pidx, items[c, 0], off[c], off[c + 1] - off[c], last, acc[t],
                            ne, narrow)
            else:
                for m in range((c - nit) * CHUNK, min(list_pix.size, (c - nit + 1) * CHUNK)):
                    r = raw[list_pix[m]]
                    single[t, list_bin[m]] += _packed32(r) if narrow else _packed(r)
    total = counts[:npt].copy()  # the N the per-pixel -1 took off; sums wrap around uint64
    for t in range(nt):
        for b in range(npt):
            total[b] += single[t, b]
        for lane in range(PAIR_LANES):
            for b in range(npt):
                e = 2 * (lane * ne + PAIR_TYPES * b)
                total[b] += acc[t, e] + acc[t, e + 1] + acc[t, e + 2] + acc[t, e + 4]
                if b + 1 < npt:
                    total[b + 1] += acc[t, e + 3]
                if b > 0:
                    total[b - 1] += acc[t, e + 5]
    return _unpacked(total, narrow)


@njit(inline="always")
def _fits_packed32(counts, npt):
    """Whether every bin's pixels allow the 2^32 packing (:data:`PACK32_MAX_BIN_PIXELS`)."""
    narrow = True
    for b in range(npt):
        narrow &= counts[b] <= PACK32_MAX_BIN_PIXELS
    return narrow


@njit(inline="always")
def _unpacked(total, narrow):
    """(Σraw, Σmax(raw, 1)) per bin from the packed totals (N added back)."""
    shift = np.uint64(32) if narrow else np.uint64(PACK_SHIFT)
    low = (np.uint64(1) << shift) - np.uint64(1)
    sig = np.empty(total.size)
    var = np.empty(total.size)
    for b in range(total.size):
        sraw = total[b] & low
        sig[b] = sraw
        var[b] = sraw + (total[b] >> shift)
    return sig, var


def hist_packed_u16(raw, bins, npt, nthreads):
    """:func:`hist_packed_u16_items` over every pixel, in items of :data:`CHUNK` pixels.
    Counts the pixels per bin on every call (a second pass over ``bins``): the integrator
    calls :func:`hist_packed_u16_items` with counts it keeps (``Corrections.item_counts``).

    Plain Python, like :func:`hist_checked`: a disk-cached Numba function calling a
    parallel one segfaulted when both were loaded from the cache (the caller's copy of
    the parallel region and the callee's own, compiled in different processes)."""
    items = chunk_items(raw.size)
    return hist_packed_u16_items(raw, bins, items, npt, item_counts(bins, items, npt),
                                 nthreads)


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
    out = np.zeros((2, npt))
    for t in range(nt):
        for k in range(SPLIT_LANES):
            for b in range(npt):
                out[0, b] += acc[t, k, b, 0]
                out[1, b] += acc[t, k, b, 1]
            for b in range(npt - 1):  # the b + 1 shares (bin npt - 1 has none: u = 0)
                out[0, b + 1] += acc[t, k, b, 2]
                out[1, b + 1] += acc[t, k, b, 3]
    return out


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
        _split_block(raw, bins, u, q, flat, lane_rows, buf)
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
def hist_checked_items(raw, bins, items, npt, norm, dark, check_dummy, dummy, delta_dummy,
                       nthreads):
    """No-split pass for any frame dtype with NaN / dummy checks, over work items.

    Returns a (6, npt) float64 array: Σsignal, Σvariance of valid pixels, and for pixels
    found invalid in this frame: Σnorm, Σnorm², count, Σdark (to subtract from the static
    sums). Only pixels of the (start, stop) ``items`` are read. Private per-thread bins;
    items handed out dynamically.
    """
    nt = max(1, nthreads)  # numba.get_num_threads() here would defeat the disk cache
    acc = np.zeros((nt, npt + 1, 6))
    nit = items.shape[0]
    counter = np.zeros(1, np.int64)
    for t in prange(nt):  # one iteration per thread; work items from the counter
        a = acc[t]
        while True:
            c = fetch_add(counter, 0, 1)
            if c >= nit:
                break
            for p in range(items[c, 0], items[c, 1]):
                b = bins[p]
                v = np.float32(raw[p])
                bad = not np.isfinite(v)
                if check_dummy and not bad:
                    bad = v == dummy if delta_dummy == 0.0 else abs(v - dummy) <= delta_dummy
                if bad:
                    w = np.float64(norm[p])
                    a[b, 2] += w
                    a[b, 3] += w * w
                    a[b, 4] += 1.0
                    a[b, 5] += dark[p]
                else:
                    a[b, 0] += v
                    a[b, 1] += max(v, np.float32(1.0))
    return acc.sum(axis=0)[:npt].T.copy()


def hist_checked(raw, bins, npt, norm, dark, check_dummy, dummy, delta_dummy, nthreads):
    """:func:`hist_checked_items` over every pixel, in items of :data:`CHUNK` pixels
    (plain Python: see :func:`hist_packed_u16`)."""
    return hist_checked_items(raw, bins, chunk_items(raw.size), npt, norm, dark, check_dummy,
                              dummy, delta_dummy, nthreads)


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
