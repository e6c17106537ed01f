"""Radial integration benchmark: asapo_hpc's Numba engines vs pyFAI's CPU engines.

3072 x 3072 frames (uint16), 55 um pixels, dist 0.2 m, beam centred, 1000 bins in 2th_deg;
both sides may use every core. Every timed call takes the next of FRAMES different frames, as
in a stream: together they are larger than this VM's 32 MB L3 cache, so a call reads its
frame from memory (one frame reused call after call stayed partly in L3: the no-split pass
ran 10-15 % faster than on rotating frames). Median of several repeats after a warm-up; our
side is timed end to end (``integrate1d``: argument checks, cache look-ups, the per-frame
kernel, the result arrays), after enough warm-up calls for its per-pass thread-count choice
to settle ("thr": the count it runs next). Also prints the per-frame kernel alone (same
tables, the same rotating frames) on 1 thread and on all, and the memory-bandwidth floor of
the pass: the bytes it must read (frame + per-pixel tables: no split 2 B of quad entry per four
pixels and the short list of pixels not in quads, or a 2 B bin index where the one-pixel pass
runs; split modes a bin index, a uint16 fixed-point weight and the short list of 3+-bin
pixels) / the machine's streaming-read rate, measured in the same run, the higher of numpy's
one-thread sum and a Numba sum on every thread. "% floor" is floor / end-to-end time,
"kern %" floor / the faster kernel-alone time, "% 1t fl" "% floor" against numpy's
one-thread read rate (the streaming-read ceiling ../shared/BASELINES.md documents for these
machines, 26-30 GB/s, and its floor definition; the Numba sum on two threads reads at 31-62
GB/s here, depending on the minute, while the passes, bound by their arithmetic and their
histogram updates (bench/row_updates.py), take the same time), "% CSR fl" the same as "% floor" with
the bytes of the CSR matrix (reference only: that is more bytes than the pass needs).
Prints a table and writes bench/results/azint.json; never asserts.

    python bench/azint.py [--repeats N] [--size N] [--warmup N] [--frame-types]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import time
from importlib import import_module
from pathlib import Path

import numba
import numpy as np

#: distinct frames the timed calls cycle through (4 x 18.9 MB of uint16)
FRAMES = 4


def rotating(fn, frames):
    """A call of ``fn`` on the next of ``frames`` each time (see the module docstring)."""
    it = itertools.cycle(frames)
    return lambda: fn(next(it))


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):  # compilation, engine setup, caches, thread-count choice
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@numba.njit(parallel=True, cache=True)
def _parallel_sum(words):  # pragma: no cover - compiled
    total = np.uint64(0)
    for i in numba.prange(words.size):
        total += words[i]
    return total


def stream_read_rates(nbytes: int = 512 << 20, repeats: int = 5) -> dict[str, float]:
    """Bytes/s a large array is read at: numpy's float64 sum (one thread) and a Numba
    parallel sum over a uint64 view on every thread (the passes run on every thread too)."""
    arr = np.ones(nbytes // 8)
    words = arr.view(np.uint64)
    return {
        "numpy_sum_1t": nbytes / median_time(lambda: arr.sum(), repeats),
        f"numba_sum_{numba.get_num_threads()}t": nbytes / median_time(
            lambda: _parallel_sum(words), repeats, warmup=2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--size", type=int, default=3072)
    parser.add_argument("--warmup", type=int, default=12,
                        help="calls before timing ours (pyFAI gets one)")
    parser.add_argument("--frame-types", action="store_true",
                        help="also time ours end to end on the same counts as uint32 (the "
                             "Lambda's 24-bit mode) and float32 frames, every method")
    args = parser.parse_args()

    import pyFAI.detectors
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator as PyFAIIntegrator

    from asapo_hpc.geometry import PixelDetector, PoniGeometry
    from asapo_hpc.workers.azint import AzimuthalIntegrator, kernels

    n, pix, npt, unit = args.size, 55e-6, 1000, "2th_deg"
    g = PoniGeometry(0.2, n / 2 * pix, n / 2 * pix)
    ours = AzimuthalIntegrator(g, PixelDetector.regular((n, n), pix, pix))
    pdet = pyFAI.detectors.Detector(pix, pix, max_shape=(n, n))
    theirs = PyFAIIntegrator(dist=g.dist, poni1=g.poni1, poni2=g.poni2, detector=pdet,
                             wavelength=g.wavelength)
    rng = np.random.default_rng(0)
    frames = [rng.poisson(100, (n, n)).astype(np.uint16) for _ in range(FRAMES)]
    frame = frames[0]  # its size and type stand for all
    rates = stream_read_rates()
    rate = max(rates.values())  # the machine's read ceiling: the floor must not flatter us
    max_threads = numba.get_num_threads()

    def run_ours(method, frames=frames):
        return rotating(lambda f: ours.integrate1d(f, npt, unit=unit, method=method), frames)

    def run_pyfai(method):
        return rotating(lambda f: theirs.integrate1d(f, npt, unit=unit, method=method,
                                                     error_model="poisson"), frames)

    rows = []
    t_pyfai = {}
    for m in [("no", "histogram", "cython"), ("no", "csr", "cython"),
              ("bbox", "csr", "cython"), ("full", "csr", "cython")]:
        t_pyfai[m] = median_time(run_pyfai(m), args.repeats)
    fastest_no = min(t_pyfai[("no", "histogram", "cython")], t_pyfai[("no", "csr", "cython")])
    for method, ref, target in [("no", fastest_no, 15.0),
                                ("bbox", t_pyfai[("bbox", "csr", "cython")], 10.0),
                                ("full", t_pyfai[("full", "csr", "cython")], 10.0)]:
        t = median_time(run_ours(method), args.repeats, args.warmup)
        key = ("no", "histogram") if method == "no" else (method, "csr")
        corr = ours._corrections[key][1]
        raw = frame.ravel()
        if method == "no":  # the integrator's call: cached work items, counts, quad tables
            items, counts = corr.work_items(0, raw.size), corr.item_counts(0, raw.size)
            quads = corr.quad_tables(0, raw.size)
            if quads is None:
                def fn(raw, bins, npt, nt, items=items, counts=counts):
                    return kernels.hist_packed_items(raw, bins, items, npt, counts, nt)

                name, arrays = "hist_packed", (raw, corr.bins)
            else:
                def fn(raw, qidx, off, lpix, lbin, used, npt, nt, items=items, counts=counts):
                    return kernels.hist_quads_items(raw, items, qidx, off, lpix, lbin, used,
                                                    npt, counts, nt)

                name, arrays = "hist_quads", (raw, *quads)
        else:
            name, fn, arrays = "split_pass_u16", kernels.split_pass_u16, (raw, *corr.table)
        nthreads = ours._threads[name].pick()  # what the integrator runs next
        t_kernel = {}
        for nt in sorted({1, max_threads}):  # the pass alone, same arrays, each thread count
            numba.set_num_threads(nt)
            t_kernel[nt] = median_time(rotating(
                lambda raw, fn=fn, rest=arrays[1:], nt=nt: fn(raw, *rest, npt, nt),
                [f.ravel() for f in frames]), args.repeats)
        numba.set_num_threads(max_threads)
        nbytes = sum(a.nbytes for a in arrays)
        floor = nbytes / rate
        # split modes could read the CSR matrix instead (what pyFAI reads): that floor is
        # higher, so a fraction of it would flatter us; shown for reference only
        csr_bytes = raw.nbytes + sum(a.nbytes for a in corr.matrix) if method != "no" else nbytes
        rows.append(dict(method=method, ours_ms=t * 1e3, pyfai_ms=ref * 1e3,
                         speedup=ref / t, target_speedup=target,
                         kernel_ms={nt: v * 1e3 for nt, v in t_kernel.items()},
                         threads=nthreads, bytes_per_frame=nbytes, floor_ms=floor * 1e3,
                         fraction_of_floor=floor / t, kernel_fraction_of_floor=floor / min(
                             t_kernel.values()), csr_bytes_per_frame=csr_bytes,
                         fraction_of_csr_floor=csr_bytes / rate / t,
                         fraction_of_1t_read_floor=nbytes / rates["numpy_sum_1t"] / t,
                         mpix_per_s=frame.size / t / 1e6))

    print(f"frame {n}x{n} uint16 ({frame.size / 1e6:.2f} Mpixel), {npt} bins, {unit}, "
          f"threads: numba {numba.get_num_threads()}, cpus {os.cpu_count()}")
    print("streaming read: " + ", ".join(f"{k} {v / 1e9:.2f} GB/s" for k, v in rates.items())
          + f" -> floor at {rate / 1e9:.2f} GB/s")
    for m, t in t_pyfai.items():
        print(f"  pyFAI {'/'.join(m):<22} {t * 1e3:8.1f} ms")
    head = (f"{'method':<6} {'ours ms':>8} {'pyFAI ms':>9} {'speedup':>8} {'target':>7} "
            f"{'kern 1t':>8} {f'kern {max_threads}t':>8} {'thr':>3} {'MB/frame':>9} "
            f"{'floor ms':>9} {'% floor':>8} {'kern %':>7} {'% 1t fl':>8} {'% CSR fl':>8} "
            f"{'Mpix/s':>8}")
    print(head)
    for r in rows:
        print(f"{r['method']:<6} {r['ours_ms']:8.2f} {r['pyfai_ms']:9.1f} {r['speedup']:7.1f}x "
              f"{r['target_speedup']:6.0f}x {r['kernel_ms'][1]:8.2f} "
              f"{r['kernel_ms'][max_threads]:8.2f} {r['threads']:3d} "
              f"{r['bytes_per_frame'] / 1e6:9.1f} "
              f"{r['floor_ms']:9.2f} {100 * r['fraction_of_floor']:7.0f}% "
              f"{100 * r['kernel_fraction_of_floor']:6.0f}% "
              f"{100 * r['fraction_of_1t_read_floor']:7.0f}% "
              f"{100 * r['fraction_of_csr_floor']:7.0f}% {r['mpix_per_s']:8.0f}")
    by_type = {}
    if args.frame_types:  # which pass a frame type gets: docs/azint.md
        for dtype in (np.uint16, np.uint32, np.float32):
            typed = [f.astype(dtype) for f in frames]
            by_type[np.dtype(dtype).name] = {
                m: 1e3 * median_time(run_ours(m, typed), args.repeats, args.warmup)
                for m in ("no", "bbox", "full")}
        print("ours end to end by frame type (ms): " + "; ".join(
            f"{k} " + " / ".join(f"{m} {v:.2f}" for m, v in t.items())
            for k, t in by_type.items()))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    result = dict(
        frame_shape=[n, n], frames=FRAMES, npt=npt, unit=unit, repeats=args.repeats,
        numba_threads=numba.get_num_threads(), cpus=os.cpu_count(),
        machine=platform.machine(), stream_read_GBps=rate / 1e9,
        stream_read_rates_GBps={k: v / 1e9 for k, v in rates.items()},
        pyfai_ms={"/".join(m): t * 1e3 for m, t in t_pyfai.items()}, rows=rows,
        ours_ms_by_frame_type=by_type,
    )
    (out / "azint.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out / 'azint.json'}")
    # bench/plot.py: module "plot" when run as python bench/azint.py (bench/ is sys.path[0])
    import_module(f"{__package__}.plot" if __package__ else "plot").draw("azint")


if __name__ == "__main__":
    main()
