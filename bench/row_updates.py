"""What one scattered histogram update costs on this machine, next to what the radial
integration passes spend per update.

Every per-frame pass of ``asapo_hpc.workers.azint`` is, at heart, a loop of read-modify-writes
of histogram rows chosen by a per-pixel index: the no-split quad pass one 32-byte update per
four pixels, the one-pixel pass one 8-byte update per pixel, the split passes one 32-byte
update per pixel. This bench times the bare loop (load an index and a value, add the value to
the indexed row: 8, 16, 32 or 64 bytes, rows 64-byte aligned) over tables of several sizes, random
rows (no chains of equal rows) and runs of 3 equal rows (the passes' typical run length), on
one thread; then the passes themselves on one thread (3072 x 3072 uint16 frame, 1000 bins,
as ``bench/azint.py``), per update. A pass at or below the bare loop's cost per update is
bound by its updates, not by its arithmetic or its memory reads. Beside the uint16 split pass
it times that pass's arithmetic alone: the same loads, sums and transposes, each pixel's row
added to one of eight rows in L1 instead of to its bin's row; the difference is what the
scattered updates add. Never asserts.

    python bench/row_updates.py [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from importlib import import_module
from pathlib import Path

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from asapo_hpc.workers.azint.kernels.constants import PREFETCH_BLOCK
from asapo_hpc.workers.azint.kernels.intrinsics import _load4, _pixel_rows, split_sums4_u16
from asapo_hpc.workers.azint.kernels.split import _prefetch_table

try:  # python -m bench.row_updates
    from bench.azint import median_time
except ImportError:  # python bench/row_updates.py (bench/ is sys.path[0])
    from azint import median_time

WIDTHS = (1, 2, 4, 8)  # uint64 per row: 8, 16, 32, 64 bytes
ROWS = (256, 1000, 4000)


def _row_add(width: int):
    """An intrinsic ``flat[width*row : width*(row+1)] += value`` (one vector add)."""

    @intrinsic
    def add(typingctx, flat, row, value):
        sig = types.void(flat, types.uint64, types.uint64)

        def codegen(context, builder, signature, args):
            i32, i64 = ir.IntType(32), ir.IntType(64)
            vty = ir.VectorType(i64, width) if width > 1 else i64
            data = context.make_array(signature.args[0])(context, builder, args[0]).data
            dst = builder.gep(builder.bitcast(data, vty.as_pointer()), [args[1]], inbounds=True)
            val = args[2]
            if width > 1:  # the value in every lane
                one = builder.insert_element(ir.Constant(vty, ir.Undefined), val,
                                             ir.Constant(i32, 0))
                val = builder.shuffle_vector(one, ir.Constant(vty, ir.Undefined),
                                             ir.Constant(ir.VectorType(i32, width), [0] * width))
            builder.store(builder.add(builder.load(dst, align=8), val), dst, align=8)
            return context.get_dummy_value()

        return sig, codegen

    @njit
    def loop(flat, rows, values):
        for i in range(rows.size):
            add(flat, np.uint64(rows[i]), np.uint64(values[i]))

    return loop


@intrinsic
def _split_rows4_local(typingctx, acc, raw, u, bins, p):
    """:func:`~asapo_hpc.workers.azint.kernels.intrinsics.split_add4_u16` without its row
    updates: the same four loads, sums and transpose, the four rows (and the bins, so they
    are read as in the pass) added to row ``(p / 4) % 8`` of ``acc`` (32 uint64): eight
    rows, so the adds do not form one store-to-load chain."""
    sig = types.void(acc, raw, u, bins, types.uint64)

    def codegen(context, builder, signature, args):
        i16, i64 = ir.IntType(16), ir.IntType(64)
        v4 = ir.VectorType(i64, 4)

        def data(k):
            return context.make_array(signature.args[k])(context, builder, args[k]).data

        r, w, b = (_load4(builder, data(k), args[4], i16, i64) for k in (1, 2, 3))
        rows = _pixel_rows(builder, *split_sums4_u16(builder, r, w))
        row = builder.and_(builder.lshr(args[4], ir.Constant(i64, 2)), ir.Constant(i64, 7))
        dst = builder.gep(builder.bitcast(data(0), v4.as_pointer()), [row], inbounds=True)
        total = builder.add(builder.load(dst, align=8), b)
        for k in range(4):
            total = builder.add(total, rows[k])
        builder.store(total, dst, align=8)
        return context.get_dummy_value()

    return sig, codegen


@njit
def _split_arithmetic(raw, u, bins):
    """The uint16 split pass's per-pixel work without its row updates (one thread, blocks
    of PREFETCH_BLOCK pixels with the pass's own prefetch)."""
    acc = _aligned_zeros(32)
    stop = raw.size // PREFETCH_BLOCK * PREFETCH_BLOCK
    for q in range(0, stop, PREFETCH_BLOCK):
        _prefetch_table(raw, bins, u, q)
        for i in range(0, PREFETCH_BLOCK, 4):
            _split_rows4_local(acc, raw, u, bins, np.uint64(q + i))
    return acc


@njit
def _aligned_zeros(n):
    """n uint64 zeros starting on a 64-byte boundary, as the passes' histograms: a row
    across two cache lines would measure the split, not the update."""
    buf = np.zeros(n + 8, np.uint64)
    skip = (-buf.ctypes.data % 64) // 8
    return buf[skip:skip + n]


def bare_updates(repeats: int, n: int = 1 << 22) -> list[dict]:
    rng = np.random.default_rng(1)
    values = rng.integers(0, 100, n).astype(np.uint16)
    out = []
    for width in WIDTHS:
        loop = _row_add(width)
        for nrows in ROWS:
            flat = _aligned_zeros(nrows * width)
            for pattern, rows in (("random", rng.integers(0, nrows, n)),
                                  ("runs of 3", np.arange(n) // 3 % nrows)):
                rows = rows.astype(np.uint16)
                t = median_time(lambda: loop(flat, rows, values), repeats)  # noqa: B023
                out.append(dict(bytes=8 * width, rows=nrows, table_kb=flat.nbytes / 1024,
                                pattern=pattern, ns=t / n * 1e9))
    return out


def passes_per_update(repeats: int) -> list[dict]:
    """The integration passes on one thread, ns per update (and per pixel)."""
    from asapo_hpc.geometry import PixelDetector, PoniGeometry
    from asapo_hpc.workers.azint import AzimuthalIntegrator, kernels

    n, pix, npt = 3072, 55e-6, 1000
    ai = AzimuthalIntegrator(PoniGeometry(0.2, n / 2 * pix, n / 2 * pix),
                             PixelDetector.regular((n, n), pix, pix))
    raw = np.random.default_rng(0).poisson(100, n * n).astype(np.uint16)
    out = []
    for method in ("no", "bbox"):
        ai.integrate1d(raw.reshape(n, n), npt, unit="2th_deg", method=method)
    corr = ai._corrections[("no", "histogram")][1]
    items, counts = corr.work_items(0, raw.size), corr.item_counts(0, raw.size)
    quads = corr.quad_tables(0, raw.size)
    runs = {
        "no split, quads (32 B, 1 per 4 px)": (
            lambda: kernels.hist_quads_items(raw, items, *quads, npt, counts, 1),
            quads[0].size + quads[2].size),
        "no split, one pixel (8 B, 1 per px)": (
            lambda: kernels.hist_packed_items(raw, corr.bins, items, npt, counts, 1),
            raw.size),
    }
    table = ai._corrections[("bbox", "csr")][1].table
    runs["bbox, uint16 (32 B, 1 per px)"] = (
        lambda: kernels.split_pass_u16(raw, *table, npt, 1), raw.size + table[2].size)
    runs["bbox, uint16, arithmetic alone (no update)"] = (
        lambda: _split_arithmetic(raw, table[1], table[0]), raw.size)
    numba.set_num_threads(1)
    try:
        for name, (fn, updates) in runs.items():
            t = median_time(fn, repeats)
            out.append(dict(pass_=name, ms=t * 1e3, updates=updates, ns=t / updates * 1e9,
                            ns_per_pixel=t / raw.size * 1e9))
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    started = time.time()
    bare = bare_updates(args.repeats)
    passes = passes_per_update(args.repeats)
    print("bare loop, one thread: ns per update (index and value loaded, row added)")
    print(f"{'row':>5} {'rows':>6} {'table kB':>9} {'random':>8} {'runs of 3':>10}")
    for i in range(0, len(bare), 2):
        a, b = bare[i], bare[i + 1]
        print(f"{a['bytes']:4d}B {a['rows']:6d} {a['table_kb']:9.1f} {a['ns']:8.3f} "
              f"{b['ns']:10.3f}")
    print("passes, one thread (3072 x 3072 uint16, 1000 bins):")
    for p in passes:
        print(f"  {p['pass_']:<44} {p['ms']:6.2f} ms  {p['ns']:.3f} ns per update, "
              f"{p['ns_per_pixel']:.3f} ns per pixel")
    out = Path(__file__).parent / "results" / "row_updates.json"
    out.write_text(json.dumps(dict(repeats=args.repeats, started_unix=started,
                                   machine=platform.platform(), cpus=os.cpu_count(),
                                   bare=bare, passes=passes), indent=1))
    print(f"wrote {out}")
    # bench/plot.py: module "plot" when run as python bench/row_updates.py
    import_module(f"{__package__}.plot" if __package__ else "plot").draw("row_updates")


if __name__ == "__main__":
    main()
