"""LLVM intrinsics of the per-frame passes: the atomic work-item counter, a non-temporal
prefetch, and the vector read-modify-writes of histogram rows (per pixel, four pixels at a
time, or per pixel pair) that LLVM does not form on its own."""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from asapo_hpc.workers.azint.kernels.constants import SPLIT_LANES, WEIGHT_ONE


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


@intrinsic
def add_pairs4(typingctx, flat, raw, pidx, p, k, lane0, lane1, mask):
    """Pixels p .. p + 4 of :func:`hist_pairs_items` as two pairs (``p`` a pixel of the
    frame, ``k`` the index of the pair of pixels p, p + 1 in ``pidx``): pair j's packed
    values ``(r - 1) & mask`` (2 x uint64) added to entry ``lane_j + pidx[k + j]`` of
    ``flat`` (rows of two uint64). One <4 x i16> (or i32) load, two 16-byte
    read-modify-writes; unchecked: callers keep every index inside the arrays."""
    ok = (isinstance(flat, types.Array) and flat.dtype == types.uint64
          and isinstance(raw, types.Array) and raw.dtype in (types.uint16, types.uint32)
          and isinstance(pidx, types.Array) and pidx.dtype == types.uint16)
    if not ok:
        return None
    sig = types.void(flat, raw, pidx, types.uint64, types.uint64, types.intp, types.intp,
                     types.uint64)
    bits = raw.dtype.bitwidth

    def codegen(context, builder, signature, args):
        i32, i64 = ir.IntType(32), ir.IntType(64)
        v4, v2 = ir.VectorType(i64, 4), ir.VectorType(i64, 2)

        def data(n):
            return context.make_array(signature.args[n])(context, builder, args[n]).data

        rptr = builder.bitcast(builder.gep(data(1), [args[3]], inbounds=True),
                               ir.VectorType(ir.IntType(bits), 4).as_pointer())
        r = builder.zext(builder.load(rptr, align=bits // 8), v4)
        mask4 = builder.shuffle_vector(
            builder.insert_element(ir.Constant(v4, ir.Undefined), args[7], ir.Constant(i32, 0)),
            ir.Constant(v4, ir.Undefined), ir.Constant(ir.VectorType(i32, 4), [0, 0, 0, 0]))
        packed = builder.and_(builder.add(r, ir.Constant(v4, [ir.Constant(i64, -1)] * 4)), mask4)
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
