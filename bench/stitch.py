"""Stitching a full Lambda 9M frame vs memcpy of the same bytes, in one run.

Every round times the memcpy peers and each stitching case once, so slow phases of a shared
machine hit all of them alike; the table shows medians. Before every timed call a 64 MB
buffer is written, so every call, peer or case, reads its input from memory. Peers:
``np.copyto`` of the frame's raw bytes (one thread) and a Numba parallel copy of the same
bytes in one contiguous block per thread (as many threads as the stitch case). Columns:

* ``vs memcpy`` = memcpy time / stitch time, memcpy on the same thread count as the stitch
  case (1.0 = memcpy bandwidth for the same input bytes);
* ``vs copyto`` = the same against single-threaded ``np.copyto`` (how this bench compared
  before: flatters 2-thread stitching);
* ``traffic`` = stitch bytes moved per second / memcpy bytes moved per second (same thread
  count), bytes moved = input + output (+ flatfield) for stitching, 2 x input for memcpy:
  float32 output and the gaps write more than memcpy does, a flatfield reads 4 B/pixel more.

Writes bench/results/stitch.json.

    python bench/stitch.py [--rounds 30] [--threads 1,2]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from importlib import import_module
from pathlib import Path

import numba
import numpy as np

from asapo_hpc.detectors.lambda9m import Lambda9MLayout
from asapo_hpc.workers.stitch import Stitcher

RESULTS = Path(__file__).parent / "results" / "stitch.json"


def cases(layout: Lambda9MLayout, flat_layout: Lambda9MLayout) -> dict[str, tuple[Stitcher, str]]:
    """name -> (stitcher, input dtype)."""
    return {
        "u16 -> u16": (Stitcher(layout, output="input"), "uint16"),
        "u16 -> f32": (Stitcher(layout, output="float32"), "uint16"),
        "u16 -> u16 flatfield+mask": (Stitcher(flat_layout, output="input"), "uint16"),
        "u16 -> u16 large pixels": (Stitcher(layout, output="input", large_pixels=True), "uint16"),
        "u16 -> f32 large pixels": (Stitcher(layout, large_pixels=True), "uint16"),
        "u32 -> u32": (Stitcher(layout.replace(bit_depth=24), output="input"), "uint32"),
    }


def with_flatfield_and_mask(layout: Lambda9MLayout) -> Lambda9MLayout:
    import dataclasses

    rng = np.random.default_rng(1)
    modules = [
        dataclasses.replace(
            m,
            flatfield=rng.uniform(0.9, 1.1, layout.module_shape).astype(np.float32),
            mask=rng.random(layout.module_shape) < 1e-3,
        )
        for m in layout.modules
    ]
    return layout.replace(modules=modules)


@numba.njit(parallel=True, cache=True)
def parallel_copy(src, dst, nthreads):  # pragma: no cover - compiled
    """dst[:] = src[:], one contiguous block per thread (the 2-thread memcpy peer)."""
    n = src.size
    block = -(-n // nthreads)
    for t in numba.prange(nthreads):
        lo = np.uint64(min(n, t * block))
        hi = np.uint64(min(n, (t + 1) * block))
        for i in range(lo, hi):
            dst[i] = src[i]


# Twice this VM's 32 MB L3: written before every timed call, so each call (memcpy peers and
# stitch cases alike) starts with its input and output out of the cache. Without it a call
# found the frame warm or cold depending on which case ran before it (a u16 case after the
# u32 memcpy: cold; after another u16 case: warm), which moved single rows by 0.1-0.3 ms.
EVICT_BYTES = 64 << 20


def timed(fn: Callable[[], object], evict: np.ndarray | None = None) -> float:
    if evict is not None:
        evict += 1  # read and write every line of it
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(rounds: int, threads: list[int]) -> dict:
    layout = Lambda9MLayout.default()
    rng = np.random.default_rng(0)
    frames = {
        dt: rng.integers(0, 4000, (layout.n_parts, *layout.module_shape)).astype(dt)
        for dt in ("uint16", "uint32")
    }
    copies = {dt: np.empty_like(f) for dt, f in frames.items()}
    work: dict[str, Callable[[], object]] = {}
    moved: dict[str, int] = {}  # bytes read + written
    for dt, frame in frames.items():
        work[f"memcpy {dt} [copyto]"] = lambda dt=dt, frame=frame: np.copyto(copies[dt], frame)
        moved[f"memcpy {dt} [copyto]"] = 2 * frame.nbytes
        for n in threads:
            def copy(dt=dt, frame=frame, n=n):
                numba.set_num_threads(n)
                parallel_copy(frame.reshape(-1), copies[dt].reshape(-1), n)

            work[f"memcpy {dt} [{n} thr]"] = copy
            moved[f"memcpy {dt} [{n} thr]"] = 2 * frame.nbytes
    for name, (stitcher, dt) in cases(layout, with_flatfield_and_mask(layout)).items():
        out = np.empty(stitcher.shape, stitcher.output_dtype(np.dtype(dt)))
        flat_bytes = 0 if stitcher.plan.flatfield is None else stitcher.plan.flatfield.nbytes
        for n in threads:
            key = f"{name} [{n} thr]"

            def call(stitcher=stitcher, frame=frames[dt], out=out, n=n):
                numba.set_num_threads(n)
                stitcher(frame, out)

            work[key] = call
            moved[key] = frames[dt].nbytes + out.nbytes + flat_bytes
    # a reused output whose gaps already hold the fill value: only module pixels written
    same = Stitcher(layout, output="input")
    kept = same(frames["uint16"])
    for n in threads:
        def reuse_call(n=n):
            numba.set_num_threads(n)
            same(frames["uint16"], kept, gaps_filled=True)

        work[f"u16 -> u16 gaps kept [{n} thr]"] = reuse_call
        moved[f"u16 -> u16 gaps kept [{n} thr]"] = 2 * frames["uint16"].nbytes
    # what a caller pays for a fresh output every frame: first touch of its pages
    fresh = Stitcher(layout, output="input")
    for n in threads:
        def fresh_call(n=n):
            numba.set_num_threads(n)
            fresh(frames["uint16"])

        work[f"u16 -> u16 new output [{n} thr]"] = fresh_call
        moved[f"u16 -> u16 new output [{n} thr]"] = (
            frames["uint16"].nbytes + int(np.prod(fresh.shape)) * 2
        )
    for fn in work.values():  # compile and touch every buffer once
        fn()
    times: dict[str, list[float]] = {k: [] for k in work}
    evict = np.zeros(EVICT_BYTES // 8, np.uint64)
    for _ in range(rounds):
        for key, fn in work.items():
            times[key].append(timed(fn, evict))
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    return summarise(times, moved, {dt: f.nbytes for dt, f in frames.items()}, layout)


def summarise(
    times: dict[str, list[float]], moved: dict[str, int], inputs: dict[str, int], layout
) -> dict:
    medians = {k: float(np.median(v)) for k, v in times.items()}
    rows = []
    for key, median in medians.items():
        dtype = "uint32" if key.startswith(("u32", "memcpy uint32")) else "uint16"
        thr = key[key.rindex("[") :]
        peer = f"memcpy {dtype} {thr}"
        memcpy = medians[peer]
        copyto = medians[f"memcpy {dtype} [copyto]"]
        rows.append(
            {
                "case": key,
                "median_ms": median * 1e3,
                "input_GB_per_s": inputs[dtype] / median / 1e9,
                "ratio_to_memcpy": memcpy / median,
                "memcpy_peer": peer,
                "ratio_to_copyto": copyto / median,
                "moved_bytes": moved[key],
                "traffic_ratio": (moved[key] / median) / (moved[peer] / memcpy),
                "frames_per_s": 1.0 / median,
            }
        )
    return {
        "what": "stitch 12x512x1536 module parts into the default layout vs memcpy peers",
        "stitched_shape": list(layout.stitched_shape()),
        "stitched_shape_large_pixels": list(layout.stitched_shape(True)),
        "rounds": len(next(iter(times.values()))),
        "machine": platform.platform(),
        "cpus": numba.config.NUMBA_NUM_THREADS,
        "rows": rows,
    }


def print_table(result: dict) -> None:
    print(f"{'case':38s} {'median ms':>9s} {'GB/s in':>8s} {'vs memcpy':>9s} "
          f"{'vs copyto':>9s} {'traffic':>8s} {'frames/s':>8s}")
    for r in result["rows"]:
        print(
            f"{r['case']:38s} {r['median_ms']:9.2f} {r['input_GB_per_s']:8.2f} "
            f"{r['ratio_to_memcpy']:9.2f} {r['ratio_to_copyto']:9.2f} "
            f"{r['traffic_ratio']:8.2f} {r['frames_per_s']:8.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    result = run(args.rounds, threads)
    print_table(result)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"wrote {RESULTS}")
    # bench/plot.py: module "plot" when run as python bench/stitch.py (bench/ is sys.path[0])
    import_module(f"{__package__}.plot" if __package__ else "plot").draw("stitch")


if __name__ == "__main__":
    main()
