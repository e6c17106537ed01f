"""LLVM intrinsics of the per-frame passes: the atomic work-item counter, a non-temporal
prefetch, and the vector read-modify-writes of histogram rows (per pixel, four pixels at a
time, or per quad of pixels) that LLVM does not form on its own."""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from asapo_hpc.workers.azint.kernels.constants import SPLIT_LANES, VECTOR_FRAME_TYPES, WEIGHT_ONE


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


def _pixel_rows(builder, q0, q1, q2, q3):
    """Four 4-vectors, one quantity of pixels 0..3 each, to one (q0, q1, q2, q3) row per
    pixel: a 4 x 4 transpose in eight shuffles."""
    i32 = ir.IntType(32)

    def shuffle(a, b, idx):
        return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(i32, 4), idx))

    t0, t1 = shuffle(q0, q1, [0, 4, 2, 6]), shuffle(q0, q1, [1, 5, 3, 7])
    t2, t3 = shuffle(q2, q3, [0, 4, 2, 6]), shuffle(q2, q3, [1, 5, 3, 7])
    return [shuffle(t0, t2, [0, 1, 4, 5]), shuffle(t1, t3, [0, 1, 4, 5]),
            shuffle(t0, t2, [2, 3, 6, 7]), shuffle(t1, t3, [2, 3, 6, 7])]


def _add_pixel_rows(builder, flat_data, rows, bins_data, p, lane_rows, add):
    """Row k (pixel p + k) added to row ``k * lane_rows + bins[p + k]`` of ``flat`` (lane
    k): one 32-byte read-modify-write each."""
    i64 = ir.IntType(64)
    rows_ptr = builder.bitcast(flat_data, rows[0].type.as_pointer())
    bptr = builder.gep(bins_data, [p], inbounds=True)
    for k in range(4):
        b = builder.zext(builder.load(builder.gep(bptr, [ir.Constant(i64, k)]), align=2), i64)
        lane = builder.gep(rows_ptr, [builder.mul(lane_rows, ir.Constant(i64, k))],
                           inbounds=True)
        dst = builder.gep(lane, [b], inbounds=True)
        builder.store(add(builder.load(dst, align=8), rows[k]), dst, align=8)


def _load4(builder, data, p, elem, wide):
    """Elements p .. p + 4 of an array (``elem`` their IR type) as one vector load,
    zero-extended to 4 x ``wide`` (or as is, when ``wide`` is None)."""
    ptr = builder.gep(data, [p], inbounds=True)
    vec = builder.load(builder.bitcast(ptr, ir.VectorType(elem, 4).as_pointer()),
                       align=elem.width // 8 if isinstance(elem, ir.IntType) else 4)
    return vec if wide is None else builder.zext(vec, ir.VectorType(wide, 4))


def split_sums4_u16(builder, r, w):
    """The four integer sums of four pixels, one 4 x uint64 vector per quantity: r,
    u·r, u²·rv, (WEIGHT_ONE - u)²·rv with rv = max(r, 1) (``r``, ``w``: the pixels' values
    and weights, zero-extended). As :func:`_split_sums_u16`, mod 2^64."""
    v4 = r.type
    i64 = v4.element

    def splat(c):
        return ir.Constant(v4, [ir.Constant(i64, c)] * 4)

    rv = builder.select(builder.icmp_unsigned(">", r, splat(1)), r, splat(1))
    v = builder.sub(splat(WEIGHT_ONE), w)
    return (r, builder.mul(w, r), builder.mul(builder.mul(w, w), rv),
            builder.mul(builder.mul(v, v), rv))


def _is_table(arr) -> bool:
    return isinstance(arr, types.Array) and arr.ndim == 1 and arr.dtype == types.uint16


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
          and all(_is_table(a) for a in (raw, u, bins)))
    if not ok:
        return None
    sig = types.void(flat, raw, u, bins, types.uint64, types.intp)

    def codegen(context, builder, signature, args):
        i16, i64 = ir.IntType(16), ir.IntType(64)

        def data(k):
            return context.make_array(signature.args[k])(context, builder, args[k]).data

        r, w = (_load4(builder, data(k), args[4], i16, i64) for k in (1, 2))
        rows = _pixel_rows(builder, *split_sums4_u16(builder, r, w))
        _add_pixel_rows(builder, data(0), rows, data(3), args[4], args[5], builder.add)
        return context.get_dummy_value()

    return sig, codegen


#: :data:`VECTOR_FRAME_TYPES` as Numba types (:func:`split_add4_float`, :func:`add_quad_float`)
FLOAT_ROW_FRAMES = tuple(getattr(types, name) for name in VECTOR_FRAME_TYPES)


def _float32x4(builder, data, p, frame):
    """Elements p .. p + 4 of a frame of type ``frame`` as <4 x float>: float32 as is,
    integers rounded to float32 as pyFAI reads frames."""
    if frame == types.float32:
        return _load4(builder, data, p, ir.FloatType(), None)
    vals = _load4(builder, data, p, ir.IntType(frame.bitwidth), None)
    to_float = builder.sitofp if frame.signed else builder.uitofp
    return to_float(vals, ir.VectorType(ir.FloatType(), 4))


@intrinsic
def split_add4_float(typingctx, flat, raw, u, bins, p, lane_rows):
    """Pixels p .. p + 4 of the float split pass (:func:`split_pass`'s block path) in
    registers, as :func:`split_add4_u16` does for the integer one.

    Pixel p + k adds (c0·r, c0²·rv, c1·r, c1²·rv), r its value as float32 then float64,
    rv = max(r, 1), c1 = u / WEIGHT_ONE, c0 = 1 - c1, to row ``k * lane_rows + bins[p + k]``
    of ``flat`` (float64, lane k): the very operations of :func:`_split_sums`, so the same
    sums bit for bit. Values must be valid (no NaN or dummy: callers check blocks first).
    """
    assert SPLIT_LANES == 4, "split_add4_float puts pixel p + k into lane k of 4"
    ok = (isinstance(flat, types.Array) and flat.ndim == 1 and flat.dtype == types.float64
          and isinstance(raw, types.Array) and raw.ndim == 1
          and raw.dtype in FLOAT_ROW_FRAMES and _is_table(u) and _is_table(bins))
    if not ok:
        return None
    sig = types.void(flat, raw, u, bins, types.uint64, types.intp)
    frame = raw.dtype

    def codegen(context, builder, signature, args):
        f64 = ir.DoubleType()
        v4d = ir.VectorType(f64, 4)

        def data(k):
            return context.make_array(signature.args[k])(context, builder, args[k]).data

        def splat(c):
            return ir.Constant(v4d, [ir.Constant(f64, c)] * 4)

        r = builder.fpext(_float32x4(builder, data(1), args[4], frame), v4d)
        rv = builder.select(builder.fcmp_ordered(">", r, splat(1.0)), r, splat(1.0))
        w = builder.uitofp(_load4(builder, data(2), args[4], ir.IntType(16), None), v4d)
        c1 = builder.fmul(w, splat(1.0 / WEIGHT_ONE))
        c0 = builder.fsub(splat(1.0), c1)
        rows = _pixel_rows(builder, builder.fmul(c0, r), builder.fmul(builder.fmul(c0, c0), rv),
                           builder.fmul(c1, r), builder.fmul(builder.fmul(c1, c1), rv))
        _add_pixel_rows(builder, data(0), rows, data(3), args[4], args[5], builder.fadd)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def add_quad(typingctx, flat, raw, qidx, p, k, lane, mask):
    """Pixels p .. p + 4 of :func:`hist_quads_items` (``k`` the index of their quad in
    ``qidx``): their packed values ``(r - 1) & mask`` (4 x uint64) added to entry
    ``lane + qidx[k]`` of ``flat`` (rows of four uint64, 32-byte aligned). One <4 x i16>
    (or i32) load, one 32-byte read-modify-write; unchecked: callers keep every index
    inside the arrays."""
    ok = (isinstance(flat, types.Array) and flat.dtype == types.uint64
          and isinstance(raw, types.Array) and raw.dtype in (types.uint16, types.uint32)
          and _is_table(qidx))
    if not ok:
        return None
    sig = types.void(flat, raw, qidx, types.uint64, types.uint64, types.intp, types.uint64)
    bits = raw.dtype.bitwidth

    def codegen(context, builder, signature, args):
        i32, i64 = ir.IntType(32), ir.IntType(64)
        v4 = ir.VectorType(i64, 4)

        def data(n):
            return context.make_array(signature.args[n])(context, builder, args[n]).data

        r = _load4(builder, data(1), args[3], ir.IntType(bits), i64)
        mask4 = builder.shuffle_vector(
            builder.insert_element(ir.Constant(v4, ir.Undefined), args[6], ir.Constant(i32, 0)),
            ir.Constant(v4, ir.Undefined), ir.Constant(ir.VectorType(i32, 4), [0, 0, 0, 0]))
        packed = builder.and_(builder.add(r, ir.Constant(v4, [ir.Constant(i64, -1)] * 4)), mask4)
        entry = builder.load(builder.gep(data(2), [args[4]], inbounds=True), align=2)
        rows = builder.bitcast(data(0), v4.as_pointer())
        dst = builder.gep(rows, [builder.add(args[5], builder.zext(entry, i64))], inbounds=True)
        builder.store(builder.add(builder.load(dst, align=32), packed), dst, align=32)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def add_quad_float(typingctx, flat, raw, qidx, p, k, lane, check_dummy, dummy, delta_dummy):
    """Pixels p .. p + 4 of :func:`hist_quads_checked_items`: their values v (as float32,
    like pyFAI, then float64) and Poisson variances max(v, 1) added to entry
    ``e = lane + qidx[k]`` of ``flat`` (float64 rows of eight, 64-byte aligned: the four v
    at 8e, the four variances at 8e + 4), two 32-byte read-modify-writes in one line.

    Invalid values (not finite; the dummy, within ``delta_dummy`` when it is not 0, if
    ``check_dummy``: :func:`checks.invalid_value` in vector form) add 0; returns their
    lanes as a bit mask (bit h: pixel p + h) for the caller's invalid sums.
    """
    ok = (isinstance(flat, types.Array) and flat.dtype == types.float64
          and isinstance(raw, types.Array) and raw.dtype in FLOAT_ROW_FRAMES
          and _is_table(qidx))
    if not ok:
        return None
    sig = types.uint32(flat, raw, qidx, types.uint64, types.uint64, types.intp, types.boolean,
                       types.float32, types.float32)
    frame = raw.dtype

    def codegen(context, builder, signature, args):
        i1, i32, i64 = ir.IntType(1), ir.IntType(32), ir.IntType(64)
        f32, f64 = ir.FloatType(), ir.DoubleType()
        v4f, v4d = ir.VectorType(f32, 4), ir.VectorType(f64, 4)

        def data(n):
            return context.make_array(signature.args[n])(context, builder, args[n]).data

        def splat(value, vty):
            one = builder.insert_element(ir.Constant(vty, ir.Undefined), value,
                                         ir.Constant(i32, 0))
            return builder.shuffle_vector(one, ir.Constant(vty, ir.Undefined),
                                          ir.Constant(ir.VectorType(i32, 4), [0] * 4))

        x = _float32x4(builder, data(1), args[3], frame)
        zero4 = ir.Constant(v4f, [ir.Constant(f32, 0.0)] * 4)
        bad = builder.fcmp_unordered("!=", builder.fsub(x, x), zero4)  # NaN or infinity
        dummy, delta = splat(args[7], v4f), splat(args[8], v4f)
        off = builder.fsub(x, dummy)
        near = builder.fcmp_ordered("<=", builder.select(
            builder.fcmp_ordered("<", off, zero4), builder.fsub(zero4, off), off), delta)
        hit = builder.select(builder.fcmp_ordered("==", args[8], ir.Constant(f32, 0.0)),
                             builder.fcmp_ordered("==", x, dummy), near)
        use_dummy = splat(builder.zext(args[6], i1) if args[6].type != i1 else args[6],
                          ir.VectorType(i1, 4))
        bad = builder.or_(bad, builder.and_(hit, use_dummy))
        v = builder.fpext(x, v4d)
        one, nothing = (ir.Constant(v4d, [ir.Constant(f64, c)] * 4) for c in (1.0, 0.0))
        var = builder.select(builder.fcmp_ordered(">", v, one), v, one)
        v, var = builder.select(bad, nothing, v), builder.select(bad, nothing, var)
        entry = builder.load(builder.gep(data(2), [args[4]], inbounds=True), align=2)
        e = builder.add(args[5], builder.zext(entry, i64))
        rows = builder.bitcast(data(0), v4d.as_pointer())
        two = ir.Constant(i64, 2)
        for half, value, align in ((0, v, 64), (1, var, 32)):
            dst = builder.gep(rows, [builder.add(builder.mul(e, two), ir.Constant(i64, half))],
                              inbounds=True)
            builder.store(builder.fadd(builder.load(dst, align=align), value), dst, align=align)
        return builder.zext(builder.bitcast(bad, ir.IntType(4)), i32)

    return sig, codegen


@intrinsic
def address_of(typingctx, arr):
    """The address of ``arr``'s first element (to align rows inside a larger buffer)."""
    if not isinstance(arr, types.Array):
        return None
    sig = types.uint64(arr)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.ptrtoint(ary.data, ir.IntType(64))

    return sig, codegen
