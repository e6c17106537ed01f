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

``--azint-from-modules``: a different chain, on both sides. The azint process integrates
each raw frame's 12 modules itself (asapo: ``from_modules = true``, input "raw"; plain: the
bincount over the bin index of asapo's module-stack engine) while the stitch process
stitches the same raw frame beside it into a stitched slot nobody reads; a raw slot is
free once both have it done. Same total work as each other (stitch + integrate), not the
same profiles as the default chain (module pixels are binned at their own centres, wide
ones whole, instead of the stitched image's split virtual pixels). It helps the plain side
more: its bottleneck, the numpy integration, shrinks by a third (9.4 instead of 11.7
Mpixel, no gap pixels) while asapo's pipeline, bound by the CPU of all its processes
together on 2 cores, gains ~10%.

``--azint-instances N``: N azint processes on both sides, frame ``id`` to instance
``(id - 1) % N`` (the stages' split). The asapo side then fills the core the single azint
process left idle while the stitch and the simulator waited for ring room (+10-15% here),
but the plain side's bottleneck is split N ways, so the ratio falls.

Placement (``--no-placement`` leaves it to the scheduler): on both sides the azint
process(es) on the upper half of the CPUs, the simulator and the stitch process on the
lower half (``pipeline.placement.heaviest_apart``; the asapo side through the pipeline
file's ``cpus`` keys). The process recording the profiles goes where it costs least: the
asapo node service beside azint (on 2 cores the halves then carry ~4.3 and ~4.6 ms of CPU
per frame; with the node beside simulate + stitch, ~5.3 against ~4.0: 186.5 -> 203.8
frames/s in back-to-back runs at 21:37-21:41), the plain side's main process beside simulate +
stitch (~24 ms a frame; its azint process, ~51 ms, sets the rate). On 2 cores the asapo
side gains 8-13 % from placement: unplaced, the light processes preempt the azint stage;
the plain side, bound by its numpy integration alone on a core, hardly changes.

Per run it prints each process's CPU per frame (``breakdown``; asapo: also the time each
stage spent working and waiting for input / for room downstream, and the node service's
process as "node"). On 2 cores the asapo side is bound by the sum of its processes' CPU,
the plain side by its slowest process.

    python bench/pipeline.py [--frames 200] [--repeats 3] [--azint-from-modules]
                             [--azint-instances 1] [--no-placement]

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
from importlib import import_module
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np

try:
    from bench._machine import probe_and_print
except ImportError:  # run as a script: bench/ is sys.path[0]
    from _machine import probe_and_print
from asapo_hpc.pipeline.placement import heaviest_apart, placed

RESULTS = Path(__file__).parent / "results" / "pipeline.json"
NPT = 1000
UNIT = "q_nm^-1"
RAW_SLOTS, STITCHED_SLOTS = 16, 8


# ------------------------------------------------------------------------------ (a) asapo


def run_asapo(frames: int, root: Path, from_modules: bool = False,
              azint_instances: int = 1, split: bool = True) -> dict:
    from asapo_hpc.cli.demo import demo_spec, trace_span
    from asapo_hpc.pipeline import PipelineSpec, run_pipeline
    from asapo_hpc.pipeline.results import read_profiles

    os.environ["ASAPO_HPC_SHM_PREFIX"] = f"benchpipe{os.getpid()}"
    values = demo_spec(frames, 0.0, root, NPT).to_dict()
    values["compression"] = "none"
    for src in values["sources"]:
        src["record"] = src["name"] == "profiles"  # no raw recording (nor in (b))
    azint = next(s for s in values["stages"] if s["name"] == "azint")
    azint["instances"] = azint_instances
    others, heavy = heaviest_apart() if split else ((), ())
    values["simulate"]["cpus"] = others
    values["node_cpus"] = heavy  # the recorder beside azint: the halves' CPU then balance
    for stage in values["stages"]:
        stage["cpus"] = heavy if stage is azint else others
    if from_modules:  # azint beside stitch on the raw ring; "stitched" has no reader
        azint["input"] = "raw"
        azint["options"]["from_modules"] = True
    spec = PipelineSpec.from_dict(values)
    t0 = time.monotonic()
    result = run_pipeline(spec)
    wall = time.monotonic() - t0
    span = trace_span(spec.data_root / "catalog.sqlite", "profiles", "default")
    prof = read_profiles(spec.data_root, spec.beamtime, "profiles", "default")
    order = np.argsort(prof.ids)
    return {"seconds": span, "wall": wall, "fps": frames / span,
            "intensity": prof.intensity[order], "sigma": prof.sigma[order],
            "radial": prof.radial[order], "stage_frames": result.stage_frames,
            "breakdown": breakdown(result)}


def breakdown(result) -> dict[str, dict[str, float]]:
    """Per process, ms per frame: CPU, work, waiting for input / for output room."""
    out = {}
    sim = result.simulation or {}
    if sim.get("frames"):
        n = sim["frames"]
        out["simulate"] = {"cpu": sim["cpu"] / n * 1e3, "wall": sim["seconds"] / n * 1e3,
                           "output_wait": sim["output_wait"] / n * 1e3}
    for stage, instances in result.stage_times.items():
        for i, t in enumerate(instances):
            n = max(t["frames"], 1)
            out[f"{stage}.{i}"] = {k: t[k] / n * 1e3 for k in
                                   ("cpu", "wall", "work", "input_wait", "output_wait")}
    if sim.get("frames"):
        out["node"] = {"cpu": result.service_cpu / sim["frames"] * 1e3}
    return out


def format_breakdown(b: dict[str, dict[str, float]]) -> str:
    return "; ".join(f"{name} " + " ".join(f"{k} {v:.1f}" for k, v in d.items())
                     for name, d in b.items()) + " (ms/frame)"


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
    """np.bincount over the bin index of asapo's no-split engine (same tables): of the
    stitched image, or of the 12 raw module images (``from_modules``)."""

    def __init__(self, layout, geometry, from_modules: bool = False):
        from asapo_hpc.pipeline.spec import SourceSpec
        from asapo_hpc.pipeline.workers import AzintWorker

        if from_modules:
            source = SourceSpec("raw", tuple(layout.module_shape), "uint16", layout.n_parts)
            frame = np.zeros((layout.n_parts, *layout.module_shape), np.uint16)
        else:
            source = SourceSpec("stitched", tuple(layout.stitched_shape(True)), "uint16")
            frame = np.zeros(layout.stitched_shape(True), np.uint16)
        worker = AzintWorker({"npt": NPT, "unit": UNIT, "from_modules": from_modules},
                             source, Path("."))
        worker.integrate(list(frame) if from_modules else frame)
        ai = worker.integrator
        engine = next(iter(ai._engines.values()))  # set-up only: the tables, not the work
        corr = next(iter(ai._corrections.values()))[1]
        self.bins = corr.bins.astype(np.intp)
        self.radial = engine.centers()
        self.norm_sum = np.bincount(self.bins, weights=corr.norm, minlength=NPT + 1)[:NPT]
        self.empty = np.bincount(self.bins, minlength=NPT + 1)[:NPT] == 0

    def __call__(self, image: np.ndarray) -> np.ndarray:
        raw = image.reshape(-1)  # a stitched image, or the (12, 512, 1536) module stack
        sig = np.bincount(self.bins, weights=raw, minlength=NPT + 1)[:NPT]
        # Poisson variance Σmax(raw, 1) = Σraw + number of zero pixels (as asapo's kernel)
        var = sig + np.bincount(self.bins[raw == 0], minlength=NPT + 1)[:NPT]
        with np.errstate(divide="ignore", invalid="ignore"):
            intensity = np.where(self.empty, 0.0, sig / self.norm_sum)
            sigma = np.where(self.empty, 0.0, np.sqrt(var) / self.norm_sum)
        return np.stack([self.radial, intensity, sigma])


def _next_free(free_q, returned: list[int], ready: list[int], readers: int) -> int:
    """A raw slot every reader gave back (each reader puts a slot it is done with)."""
    while not ready:
        slot = free_q.get()
        returned[slot] += 1
        if returned[slot] == readers:
            returned[slot] = 0
            ready.append(slot)
    return ready.pop(0)


def _report_cpu(cpu_q, name: str, cpu0: float | None, frames: int) -> None:
    """This process's CPU from its first frame to now, per frame (ms)."""
    if cpu0 is not None and frames:
        cpu_q.put((name, (time.process_time() - cpu0) / frames * 1e3))


def _share(queues: list, fid: int):
    """The queue of the instance that takes frame ``fid`` (ids split as the stages do)."""
    return queues[(fid - 1) % len(queues)]


def _sim_proc(frames, raw_name, free_q, readers, ready_q, go, cpu_q):
    """``readers``: per reader of the raw frames, the queues of its instances."""
    from asapo_hpc.detectors.frames import PowderFrames

    layout, geometry = _layout_geometry()
    pf = PowderFrames(layout, geometry, seed=0)
    shm = shared_memory.SharedMemory(raw_name)
    slots = np.ndarray((RAW_SLOTS, *pf.shape), pf.dtype, buffer=shm.buf)
    returned, ready = [0] * RAW_SLOTS, list(range(RAW_SLOTS))
    ready_q.put("sim")
    go.wait()
    cpu0 = time.process_time()
    for fid in range(1, frames + 1):
        slot = _next_free(free_q, returned, ready, len(readers))
        pf.fill(slots[slot], fid - 1)
        for queues in readers:  # every reader of the raw frames
            _share(queues, fid).put((fid, slot, time.time_ns()))
    for q in (q for queues in readers for q in queues):
        q.put(None)
    _report_cpu(cpu_q, "simulate", cpu0, frames)
    del slots
    shm.close()


def _stitch_proc(raw_name, st_name, raw_free, raw_q, st_free, st_qs, ready_q, cpu_q):
    """Stitch each raw frame into a stitched slot for the azint instance taking it
    (``st_qs``); with no reader of the stitched frames (``st_qs`` None: azint reads the
    modules) the slots are reused in turn."""
    layout, _ = _layout_geometry()
    stitcher = NumpyStitcher(layout)
    shm_in = shared_memory.SharedMemory(raw_name)
    shm_out = shared_memory.SharedMemory(st_name)
    parts = np.ndarray((RAW_SLOTS, layout.n_parts, *layout.module_shape), layout.dtype,
                       buffer=shm_in.buf)
    images = np.ndarray((STITCHED_SLOTS, *stitcher.shape), layout.dtype, buffer=shm_out.buf)
    stitcher(parts[0], images[0])  # warm-up
    ready_q.put("stitch")
    n, cpu0 = 0, None
    while (item := raw_q.get()) is not None:
        fid, slot, t0 = item
        cpu0 = time.process_time() if cpu0 is None else cpu0
        out = st_free.get() if st_qs is not None else n % STITCHED_SLOTS
        stitcher(parts[slot], images[out])
        raw_free.put(slot)
        if st_qs is not None:
            _share(st_qs, fid).put((fid, out, t0))
        n += 1
    for q in st_qs or ():
        q.put(None)
    _report_cpu(cpu_q, "stitch", cpu0, n)
    del parts, images
    shm_in.close()
    shm_out.close()


def _azint_proc(in_name, in_free, in_q, prof_q, ready_q, from_modules, cpu_q, name):
    """Integrate each stitched frame (or, ``from_modules``, each raw frame's modules)."""
    layout, geometry = _layout_geometry()
    integrate = NumpyIntegrator(layout, geometry, from_modules)
    shm = shared_memory.SharedMemory(in_name)
    shape = ((RAW_SLOTS, layout.n_parts, *layout.module_shape) if from_modules
             else (STITCHED_SLOTS, *layout.stitched_shape(True)))
    frames = np.ndarray(shape, layout.dtype, buffer=shm.buf)
    integrate(frames[0])  # warm-up
    ready_q.put("azint")
    n, cpu0 = 0, None
    while (item := in_q.get()) is not None:
        fid, slot, t0 = item
        cpu0 = time.process_time() if cpu0 is None else cpu0
        profile = integrate(frames[slot])
        in_free.put(slot)
        prof_q.put((fid, t0, profile))
        n += 1
    _report_cpu(cpu_q, name, cpu0, n)
    prof_q.put(None)
    del frames
    shm.close()


def run_plain(frames: int, root: Path, from_modules: bool = False,
              azint_instances: int = 1, split: bool = True) -> dict:
    import h5py

    layout, _ = _layout_geometry()
    ctx = mp.get_context("spawn")
    raw_bytes = RAW_SLOTS * layout.n_parts * int(np.prod(layout.module_shape)) * 2
    st_bytes = STITCHED_SLOTS * int(np.prod(layout.stitched_shape(True))) * 2
    shm_raw = shared_memory.SharedMemory(create=True, size=raw_bytes)
    shm_st = shared_memory.SharedMemory(create=True, size=st_bytes)
    raw_free, raw_q, st_free, prof_q, ready_q, cpu_q = (ctx.Queue() for _ in range(6))
    az_qs = [ctx.Queue() for _ in range(azint_instances)]
    for i in range(STITCHED_SLOTS):
        st_free.put(i)
    go = ctx.Event()
    if from_modules:  # stitch and azint both read the raw slots, side by side
        readers, stitch_out = [[raw_q], az_qs], (None, None)
        az_in = (shm_raw.name, raw_free)
    else:  # in series: stitch -> stitched slots -> azint
        readers, stitch_out = [[raw_q]], (st_free, az_qs)
        az_in = (shm_st.name, st_free)
    names = [f"azint.{i}" for i in range(azint_instances)]
    procs = [ctx.Process(target=_sim_proc, args=(frames, shm_raw.name, raw_free, readers,
                                                 ready_q, go, cpu_q)),
             ctx.Process(target=_stitch_proc, args=(shm_raw.name, shm_st.name, raw_free,
                                                    raw_q, *stitch_out, ready_q, cpu_q))]
    procs += [ctx.Process(target=_azint_proc, args=(*az_in, q, prof_q, ready_q, from_modules,
                                                    cpu_q, name))
              for q, name in zip(az_qs, names, strict=True)]
    others, heavy = heaviest_apart() if split else ((), ())
    t_wall = time.monotonic()
    try:
        for i, p in enumerate(procs):  # as the asapo side: the azint process(es) apart
            with placed("plain", heavy if i >= 2 else others):  # procs: sim, stitch, azint..
                p.start()
        for _ in procs:
            ready_q.get(timeout=300)
        go.set()
        out = np.zeros((frames, 3, NPT))
        first_in, last_out = None, 0
        cpu_main0 = time.process_time()
        with placed("plain main", others), h5py.File(root / "plain_profiles.h5", "w") as f:
            dset = f.create_dataset("profiles", (frames, 3, NPT), np.float64)
            ended = 0
            while ended < azint_instances:
                item = prof_q.get(timeout=300)
                if item is None:  # one azint instance is done
                    ended += 1
                    continue
                fid, t0, profile = item
                dset[fid - 1] = profile
                out[fid - 1] = profile
                first_in = t0 if first_in is None else min(first_in, t0)
                last_out = time.time_ns()
        cpu_main = (time.process_time() - cpu_main0) / frames * 1e3
        for p in procs:
            p.join(30)
        cpu = dict(cpu_q.get(timeout=30) for _ in procs)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        shm_raw.close()
        shm_raw.unlink()
        shm_st.close()
        shm_st.unlink()
    span = (last_out - first_in) / 1e9
    breakdown = {name: {"cpu": cpu[name]} for name in ("simulate", "stitch", *names)}
    breakdown["main"] = {"cpu": cpu_main}  # collecting and writing the profiles
    return {"seconds": span, "wall": time.monotonic() - t_wall, "fps": frames / span,
            "radial": out[:, 0], "intensity": out[:, 1], "sigma": out[:, 2],
            "breakdown": breakdown}


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
    ap.add_argument("--azint-from-modules", action="store_true",
                    help="both sides integrate the raw modules beside the stitch (see above)")
    ap.add_argument("--azint-instances", type=int, default=1,
                    help="azint processes on both sides (frames split by id)")
    ap.add_argument("--no-placement", action="store_true",
                    help="leave every process where the OS puts it (default: on both sides "
                         "the azint process(es) on the upper half of the CPUs, the rest on "
                         "the lower half)")
    args = ap.parse_args()
    load_before = os.getloadavg()
    probe_before = probe_and_print()
    stitch_equal = check_stitch()
    runs: dict[str, list[dict]] = {"asapo": [], "plain": []}
    same = True
    max_rel = 0.0
    for r in range(args.repeats):
        for name, fn in (("asapo", run_asapo), ("plain", run_plain)):
            with tempfile.TemporaryDirectory(prefix="benchpipe") as tmp:
                runs[name].append(fn(args.frames, Path(tmp), args.azint_from_modules,
                                     args.azint_instances, not args.no_placement))
            print(f"repeat {r + 1} {name:>5}: {runs[name][-1]['fps']:7.1f} frames/s "
                  f"({runs[name][-1]['seconds']:.2f} s streaming, "
                  f"{runs[name][-1]['wall']:.1f} s wall)", flush=True)
            if "breakdown" in runs[name][-1]:
                print("    " + format_breakdown(runs[name][-1]["breakdown"]), flush=True)
        a, b = runs["asapo"][-1], runs["plain"][-1]
        print(f"repeat {r + 1} ratio: {a['fps'] / b['fps']:.2f}x", flush=True)
        for key in ("radial", "intensity", "sigma"):
            same &= bool(np.allclose(a[key], b[key], rtol=1e-9, atol=1e-12))
            scale = np.maximum(np.abs(b[key]), 1e-300)
            max_rel = max(max_rel, float(np.max(np.abs(a[key] - b[key]) / scale)))
    probe_after = probe_and_print()
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
                   f"--repeats {args.repeats}"
                   + (" --azint-from-modules" if args.azint_from_modules else "")
                   + (f" --azint-instances {args.azint_instances}"
                      if args.azint_instances != 1 else "")
                   + (" --no-placement" if args.no_placement else ""),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                    "handoff_probe_before": probe_before, "handoff_probe_after": probe_after},
        "frames": args.frames, "repeats": args.repeats,
        "azint_from_modules": args.azint_from_modules,
        "azint_instances": args.azint_instances,
        "placement": "none" if args.no_placement else "azint on the upper half of the CPUs, "
                     "simulator and stitch on the lower half, both sides; the asapo node "
                     "service beside azint, the plain main process on the lower half",
        "raw_recording": "excluded in both; profiles recorded to HDF5 in both",
        "fps": fps, "ratio": ratio, "target_ratio": 10.0,
        "runs": {k: [{"fps": x["fps"], "streaming_s": x["seconds"], "wall_s": x["wall"],
                      "cpu_ms_per_frame": {p: d["cpu"] for p, d in x["breakdown"].items()}}
                     for x in v] for k, v in runs.items()},
        "profiles_allclose": same, "max_rel_diff": max_rel, "stitch_equal": stitch_equal,
    }, indent=2) + "\n")
    # bench/plot.py: module "plot" when run as python bench/pipeline.py (bench/ is sys.path[0])
    import_module(f"{__package__}.plot" if __package__ else "plot").draw("pipeline")


if __name__ == "__main__":
    main()
