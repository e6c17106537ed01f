"""The demo chain vs a plain-Python version of the same pipeline, in one run.

Chain: simulated Lambda 9M frames (12 module parts, uint16, the simulator's PowderFrames,
seed 0) -> stitch (large-pixel corrected, counts kept as uint16) -> radial integration
(1000 bins in q_nm^-1, solid angle, gap mask, Poisson sigma) -> profiles.

(a) asapo_hpc: the demo's pipeline (``cli.demo.demo_spec``) run by ``PipelineRunner``:
    simulator, stitch and azint processes, rings between them, the node service recording
    the profiles (HDF5, no compression).
(b) plain Python: the same three processes (simulator, stitch, azint) plus the main process
    collecting; frames handed over through ``multiprocessing.shared_memory`` slots (raw: 16
    frames, stitched: 8, as the demo's rings) whose indices travel through
    ``multiprocessing`` queues; numpy for the work: a numpy stitch (row gather per module,
    then the large pixels' counts split with the same integer rule) and a numpy radial
    integration (``np.bincount`` over a precomputed bin index with the same corrections:
    the bin index and per-pixel normalisation are taken from asapo's integrator at set-up,
    so both sides use the same tables and only the per-frame work differs). The main process
    writes the profiles to HDF5 (no compression).

Fairness: same frames, same frame count, same worker processes; raw-data recording is
*excluded in both* (the demo records raw with bslz4; here neither side does), profile
recording is included in both. Both sides are warmed up (Numba compile / table build)
before the first frame; frames/s = frames / (first frame published -> last profile out).
Both sides' profiles are compared (allclose) and the result reported.

    python bench/pipeline.py [--frames 200] [--repeats 3]

Writes bench/results/pipeline.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import tempfile
import time
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "pipeline.json"
NPT = 1000
UNIT = "q_nm^-1"
RAW_SLOTS, STITCHED_SLOTS = 16, 8


# ------------------------------------------------------------------------------ (a) asapo


def run_asapo(frames: int, root: Path) -> dict:
    from asapo_hpc.cli.demo import demo_spec, trace_span
    from asapo_hpc.pipeline import PipelineSpec, run_pipeline
    from asapo_hpc.pipeline.results import read_profiles

    os.environ["ASAPO_HPC_SHM_PREFIX"] = f"benchpipe{os.getpid()}"
    values = demo_spec(frames, 0.0, root, NPT).to_dict()
    values["compression"] = "none"
    for src in values["sources"]:
        src["record"] = src["name"] == "profiles"  # no raw recording (nor in (b))
    spec = PipelineSpec.from_dict(values)
    t0 = time.monotonic()
    result = run_pipeline(spec)
    wall = time.monotonic() - t0
    span = trace_span(spec.data_root / "catalog.sqlite", "profiles", "default")
    prof = read_profiles(spec.data_root, spec.beamtime, "profiles", "default")
    order = np.argsort(prof.ids)
    return {"seconds": span, "wall": wall, "fps": frames / span,
            "intensity": prof.intensity[order], "sigma": prof.sigma[order],
            "radial": prof.radial[order], "stage_frames": result.stage_frames}


# ------------------------------------------------------------------------- (b) plain Python


def _layout_geometry():
    from asapo_hpc.detectors.lambda9m import Lambda9MLayout
    from asapo_hpc.detectors.simulator import default_geometry

    layout = Lambda9MLayout.default()
    return layout, default_geometry(layout)


class NumpyStitcher:
    """Lambda parts -> stitched uint16 image with large pixels, in numpy.

    Per module (unrotated): ``out[rows, cols] = raw[rsrc][:, csrc]`` (each corrected pixel
    reads its raw pixel), then the pixels of wide raw pixels get ``v // n`` plus one for the
    first ``v % n`` of them (row-major rank), saturated ones ``v``; gaps 0."""

    def __init__(self, layout):
        self.shape = layout.stitched_shape(True)
        self.sat = layout.saturation
        rows_map, cols_map = layout.axes
        self.rsrc, self.csrc = rows_map.source, cols_map.source
        rw, cw = rows_map.width[self.rsrc], cols_map.width[self.csrc]
        n = rw[:, None] * cw[None, :]
        rank = rows_map.sub[:, None] * cw[None, :] + cols_map.sub[None, :]
        wide = np.flatnonzero(n.ravel() > 1)
        self.wide, self.n, self.rank = wide, n.ravel()[wide], rank.ravel()[wide]
        self.slices = layout.module_slices(True)
        for m in layout.active_modules:
            o = m.orientation
            if o.quarter_turns or o.flip_ud or o.flip_lr:
                raise SystemExit("the plain stitcher handles unrotated modules only")

    def __call__(self, parts: np.ndarray, out: np.ndarray) -> np.ndarray:
        out[...] = 0  # gaps
        for raw, (rows, cols) in zip(parts, self.slices, strict=True):
            block = np.take(raw[self.rsrc], self.csrc, axis=1)  # C-ordered: flat is a view
            flat = block.reshape(-1)
            v = flat[self.wide].astype(np.int64)
            q = v // self.n
            share = q + (self.rank < v - q * self.n)
            flat[self.wide] = np.where(v >= self.sat, v, share)
            out[rows, cols] = block
        return out


class NumpyIntegrator:
    """np.bincount over the bin index of asapo's no-split engine (same tables)."""

    def __init__(self, layout, geometry):
        from asapo_hpc.workers.azint import AzimuthalIntegrator

        ai = AzimuthalIntegrator(geometry, layout.stitched_detector(True))
        mask = layout.stitched_mask(True)
        ai.integrate1d(np.zeros(layout.stitched_shape(True), np.uint16), NPT, unit=UNIT,
                       mask=mask, correct_solid_angle=True)
        engine = next(iter(ai._engines.values()))  # set-up only: the tables, not the work
        corr = next(iter(ai._corrections.values()))[1]
        self.bins = corr.bins.astype(np.intp)
        self.radial = engine.centers()
        self.norm_sum = np.bincount(self.bins, weights=corr.norm, minlength=NPT + 1)[:NPT]
        self.empty = np.bincount(self.bins, minlength=NPT + 1)[:NPT] == 0

    def __call__(self, image: np.ndarray) -> np.ndarray:
        raw = image.reshape(-1)
        sig = np.bincount(self.bins, weights=raw, minlength=NPT + 1)[:NPT]
        # Poisson variance Σmax(raw, 1) = Σraw + number of zero pixels (as asapo's kernel)
        var = sig + np.bincount(self.bins[raw == 0], minlength=NPT + 1)[:NPT]
        with np.errstate(divide="ignore", invalid="ignore"):
            intensity = np.where(self.empty, 0.0, sig / self.norm_sum)
            sigma = np.where(self.empty, 0.0, np.sqrt(var) / self.norm_sum)
        return np.stack([self.radial, intensity, sigma])


def _sim_proc(frames, raw_name, free_q, out_q, ready_q, go):
    from asapo_hpc.detectors.frames import PowderFrames

    layout, geometry = _layout_geometry()
    pf = PowderFrames(layout, geometry, seed=0)
    shm = shared_memory.SharedMemory(raw_name)
    slots = np.ndarray((RAW_SLOTS, *pf.shape), pf.dtype, buffer=shm.buf)
    ready_q.put("sim")
    go.wait()
    for fid in range(1, frames + 1):
        slot = free_q.get()
        pf.fill(slots[slot], fid - 1)
        out_q.put((fid, slot, time.time_ns()))
    out_q.put(None)
    del slots
    shm.close()


def _stitch_proc(raw_name, st_name, raw_free, raw_q, st_free, st_q, ready_q):
    layout, _ = _layout_geometry()
    stitcher = NumpyStitcher(layout)
    shm_in = shared_memory.SharedMemory(raw_name)
    shm_out = shared_memory.SharedMemory(st_name)
    parts = np.ndarray((RAW_SLOTS, layout.n_parts, *layout.module_shape), layout.dtype,
                       buffer=shm_in.buf)
    images = np.ndarray((STITCHED_SLOTS, *stitcher.shape), layout.dtype, buffer=shm_out.buf)
    stitcher(parts[0], images[0])  # warm-up
    ready_q.put("stitch")
    while (item := raw_q.get()) is not None:
        fid, slot, t0 = item
        out = st_free.get()
        stitcher(parts[slot], images[out])
        raw_free.put(slot)
        st_q.put((fid, out, t0))
    st_q.put(None)
    del parts, images
    shm_in.close()
    shm_out.close()


def _azint_proc(st_name, st_free, st_q, prof_q, ready_q):
    layout, geometry = _layout_geometry()
    integrate = NumpyIntegrator(layout, geometry)
    shm = shared_memory.SharedMemory(st_name)
    images = np.ndarray((STITCHED_SLOTS, *layout.stitched_shape(True)), layout.dtype,
                        buffer=shm.buf)
    integrate(images[0])  # warm-up
    ready_q.put("azint")
    while (item := st_q.get()) is not None:
        fid, slot, t0 = item
        profile = integrate(images[slot])
        st_free.put(slot)
        prof_q.put((fid, t0, profile))
    prof_q.put(None)
    del images
    shm.close()


def run_plain(frames: int, root: Path) -> dict:
    import h5py

    layout, _ = _layout_geometry()
    ctx = mp.get_context("spawn")
    raw_bytes = RAW_SLOTS * layout.n_parts * int(np.prod(layout.module_shape)) * 2
    st_bytes = STITCHED_SLOTS * int(np.prod(layout.stitched_shape(True))) * 2
    shm_raw = shared_memory.SharedMemory(create=True, size=raw_bytes)
    shm_st = shared_memory.SharedMemory(create=True, size=st_bytes)
    raw_free, raw_q, st_free, st_q, prof_q, ready_q = (ctx.Queue() for _ in range(6))
    for i in range(RAW_SLOTS):
        raw_free.put(i)
    for i in range(STITCHED_SLOTS):
        st_free.put(i)
    go = ctx.Event()
    procs = [ctx.Process(target=_sim_proc, args=(frames, shm_raw.name, raw_free, raw_q,
                                                 ready_q, go)),
             ctx.Process(target=_stitch_proc, args=(shm_raw.name, shm_st.name, raw_free,
                                                    raw_q, st_free, st_q, ready_q)),
             ctx.Process(target=_azint_proc, args=(shm_st.name, st_free, st_q, prof_q,
                                                   ready_q))]
    t_wall = time.monotonic()
    try:
        for p in procs:
            p.start()
        for _ in procs:
            ready_q.get(timeout=300)
        go.set()
        out = np.zeros((frames, 3, NPT))
        first_in, last_out = None, 0
        with h5py.File(root / "plain_profiles.h5", "w") as f:
            dset = f.create_dataset("profiles", (frames, 3, NPT), np.float64)
            while (item := prof_q.get(timeout=300)) is not None:
                fid, t0, profile = item
                dset[fid - 1] = profile
                out[fid - 1] = profile
                first_in = t0 if first_in is None else min(first_in, t0)
                last_out = time.time_ns()
        for p in procs:
            p.join(30)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        shm_raw.close()
        shm_raw.unlink()
        shm_st.close()
        shm_st.unlink()
    span = (last_out - first_in) / 1e9
    return {"seconds": span, "wall": time.monotonic() - t_wall, "fps": frames / span,
            "radial": out[:, 0], "intensity": out[:, 1], "sigma": out[:, 2]}


# ------------------------------------------------------------------------------------ main


def check_stitch() -> bool:
    """The numpy stitch equals asapo's Stitcher on one simulated frame."""
    from asapo_hpc.detectors.frames import PowderFrames
    from asapo_hpc.workers.stitch import Stitcher

    layout, geometry = _layout_geometry()
    parts = PowderFrames(layout, geometry, seed=0, bank_size=1).module_frames(0)
    ours = Stitcher(layout, large_pixels=True, output="input")(parts)
    plain = NumpyStitcher(layout)(parts, np.empty_like(ours))
    return bool(np.array_equal(ours, plain))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    stitch_equal = check_stitch()
    runs: dict[str, list[dict]] = {"asapo": [], "plain": []}
    same = True
    max_rel = 0.0
    for r in range(args.repeats):
        for name, fn in (("asapo", run_asapo), ("plain", run_plain)):
            with tempfile.TemporaryDirectory(prefix="benchpipe") as tmp:
                runs[name].append(fn(args.frames, Path(tmp)))
            print(f"repeat {r + 1} {name:>5}: {runs[name][-1]['fps']:7.1f} frames/s "
                  f"({runs[name][-1]['seconds']:.2f} s streaming, "
                  f"{runs[name][-1]['wall']:.1f} s wall)", flush=True)
        a, b = runs["asapo"][-1], runs["plain"][-1]
        for key in ("radial", "intensity", "sigma"):
            same &= bool(np.allclose(a[key], b[key], rtol=1e-9, atol=1e-12))
            scale = np.maximum(np.abs(b[key]), 1e-300)
            max_rel = max(max_rel, float(np.max(np.abs(a[key] - b[key]) / scale)))
    fps = {k: statistics.median(x["fps"] for x in v) for k, v in runs.items()}
    ratio = fps["asapo"] / fps["plain"]
    print(f"\n{'implementation':<16}{'frames/s (median)':>20}{'runs':>30}")
    for k in ("asapo", "plain"):
        print(f"{k:<16}{fps[k]:>20.1f}   " + " ".join(f"{x['fps']:.1f}" for x in runs[k]))
    print(f"ratio asapo / plain: {ratio:.2f}x  (target >= 10x)")
    print(f"profiles identical (allclose rtol 1e-9): {same} (max rel diff {max_rel:.2e}); "
          f"numpy stitch == Stitcher: {stitch_equal}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({
        "command": f"python bench/pipeline.py --frames {args.frames} "
                   f"--repeats {args.repeats}",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "frames": args.frames, "repeats": args.repeats,
        "raw_recording": "excluded in both; profiles recorded to HDF5 in both",
        "fps": fps, "ratio": ratio, "target_ratio": 10.0,
        "runs": {k: [{"fps": x["fps"], "streaming_s": x["seconds"], "wall_s": x["wall"]}
                     for x in v] for k, v in runs.items()},
        "profiles_allclose": same, "max_rel_diff": max_rel, "stitch_equal": stitch_equal,
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()
