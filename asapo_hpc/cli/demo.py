"""``asapo-hpc demo``: the whole chain on one machine, from embedded defaults.

Simulated Lambda 9M (12 module parts per frame) -> ring "raw" -> stitch (large-pixel
corrected, counts kept as uint16) -> ring "stitched" -> radial integration (1000 bins in
q, Poisson sigma) -> ring "profiles". The node service records "raw" and "profiles" to HDF5
while the stages work. Prints a live progress line, a summary (frames, frames/s, GB/s,
per-stage latency percentiles from the message timestamps) and writes a PNG of one
stitched frame and its profile.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from asapo_hpc.cli.progress import StatusLine

DEFAULT_FRAMES = 40
BEAMTIME = "demo"
_BAR = 30


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``demo``."""
    p.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help="frames to simulate")
    p.add_argument("--rate", type=float, default=0.0, help="frames/s; 0 = as fast as possible")
    p.add_argument("--data-root", default="./asapo_demo", help="where files are left")
    p.add_argument("--npt", type=int, default=1000, help="radial bins")
    p.add_argument("--stitch-instances", type=int, default=1, help="stitch processes")
    p.add_argument("--compression", default="bslz4", choices=("bslz4", "zstd", "none"),
                   help="raw-data recording (bslz4: ~15 ms of CPU per frame, 3.4x smaller)")


def demo_spec(frames: int, rate: float, data_root: Path, npt: int = 1000,
              stitch_instances: int = 1, compression: str = "bslz4") -> Any:
    """The demo's pipeline, as a PipelineSpec."""
    from asapo_hpc.pipeline import PipelineSpec

    return PipelineSpec.from_dict({
        "beamtime": BEAMTIME, "data_root": str(data_root.resolve()), "compression": compression,
        "sources": [{"name": "raw", "record": True, "frames_in_ring": 16},
                    {"name": "stitched", "frames_in_ring": 8},
                    {"name": "profiles", "record": True, "frames_in_ring": 64}],
        "stages": [{"name": "stitch", "worker": "stitch", "input": "raw",
                    "output": "stitched", "instances": stitch_instances,
                    "options": {"large_pixels": True, "output": "input"}},
                   {"name": "azint", "worker": "azint", "input": "stitched",
                    "output": "profiles", "options": {"npt": npt, "unit": "q_nm^-1"}}],
        "simulate": {"source": "raw", "frames": frames, "rate": rate},
    })


class ProgressLine:
    """The demo's progress: bar, frames per step, live rates (a StatusLine)."""

    def __init__(self, frames: int, raw_frame_bytes: int, out=None):
        self.frames, self.raw_frame_bytes = frames, raw_frame_bytes
        self.line = StatusLine(out)
        self._last: tuple[float, int] | None = None
        self._rate = 0.0

    def __call__(self, status: Any) -> None:
        raw = status.simulated
        done = status.frames_written("profiles")
        if self._last is not None and status.elapsed > self._last[0]:
            now_rate = (raw - self._last[1]) / (status.elapsed - self._last[0])
            # smoothed from the first frames' rate on: an average started at 0 showed a
            # fraction of the rate for the whole of a short run
            self._rate = 0.7 * self._rate + 0.3 * now_rate if self._rate else now_rate
        self._last = (status.elapsed, raw)
        filled = int(_BAR * done / max(self.frames, 1))
        stages = " ".join(f"{k} {v}" for k, v in status.stage_frames.items())
        self.line.show(f"[{'#' * filled}{'.' * (_BAR - filled)}] {status.elapsed:5.1f} s  "
                       f"raw {raw}/{self.frames}  {stages}  saved {done}  {self._rate:6.1f} "
                       f"frames/s {self._rate * self.raw_frame_bytes / 1e9:5.2f} GB/s ")

    def close(self) -> None:
        self.line.end()


def summary_lines(result: Any, latencies: dict[str, np.ndarray], frames: int,
                  raw_frame_bytes: int, span: float) -> list[str]:
    """The summary: frames, frames/s and GB/s over the streaming span (first frame in to
    last profile out, from the message timestamps; wall time if unknown), latencies."""
    from asapo_hpc.pipeline.results import percentiles

    span = span if span > 0 else max(result.seconds, 1e-9)
    lines = [f"frames: {frames} simulated, {result.stage_frames} processed, "
             f"wall time {result.seconds:.1f} s (process start-up and Numba load included)",
             f"throughput: {frames / span:.1f} frames/s, "
             f"{frames * raw_frame_bytes / span / 1e9:.2f} GB/s of raw data "
             f"(first frame in to last profile out: {span:.2f} s)"]
    if result.simulation:
        sim = result.simulation
        lines.append(f"simulator: {sim['frames'] / max(sim['seconds'], 1e-9):.1f} frames/s "
                     "held (0 = as fast as the ring takes them)")
    lines += stage_time_lines(result)
    for stage, values in latencies.items():
        p = percentiles(values)
        lines.append(f"latency {stage:>7}: p50 {p['p50'] * 1e3:8.1f} ms  "
                     f"p90 {p['p90'] * 1e3:8.1f} ms  p99 {p['p99'] * 1e3:8.1f} ms")
    return lines


def stage_time_lines(result: Any) -> list[str]:
    """Per process, per frame: CPU, and the share of its time spent waiting for input / for
    room downstream. The stage that never waits for input is the bottleneck."""
    lines = []
    sim = result.simulation or {}
    if sim.get("frames") and sim.get("seconds"):
        n, wall = sim["frames"], sim["seconds"]
        lines.append(f"cpu  simulate: {sim['cpu'] / n * 1e3:6.2f} ms/frame, waiting for ring "
                     f"room {sim['output_wait'] / wall:4.0%}")
    for stage, instances in result.stage_times.items():
        for i, t in enumerate(instances):
            if not t["frames"] or t["wall"] <= 0:
                continue
            name = stage if len(instances) == 1 else f"{stage}.{i}"
            lines.append(f"cpu {name:>9}: {t['cpu'] / t['frames'] * 1e3:6.2f} ms/frame, "
                         f"waiting for input {t['input_wait'] / t['wall']:4.0%}, "
                         f"for output room {t['output_wait'] / t['wall']:4.0%}")
    if sim.get("frames") and result.service_cpu > 0:
        lines.append(f"cpu     node: {result.service_cpu / sim['frames'] * 1e3:6.2f} ms/frame "
                     "(recording: HDF5 writer, compression, catalog; the runner)")
    return lines


def trace_span(catalog: Path, source: str, stream: str) -> float:
    """Seconds from the first stage's first input to the last stage's last output."""
    from asapo_hpc.catalog import Catalog

    cat = Catalog(catalog)
    try:
        records = cat.query_messages(source, stream, "_id > 0")
    finally:
        cat.close()
    traces = [r.meta_dict().get("trace") for r in records]
    traces = [t for t in traces if t]
    if not traces:
        return 0.0
    return (max(t[-1][2] for t in traces) - min(t[0][1] for t in traces)) / 1e9


def read_raw_frame(data_root: Path, source: str, stream: str, frame_id: int,
                   parts: int) -> np.ndarray:
    """The module parts (parts, rows, cols) of one recorded raw frame."""
    import h5py
    import hdf5plugin  # noqa: F401  (bslz4 filter)

    from asapo_hpc.pipeline.results import stream_files

    for path in stream_files(data_root, BEAMTIME, source, stream):
        with h5py.File(path, "r") as f:
            ids = f["/entry/data/message_id"][()]
            hit = np.flatnonzero(ids == frame_id)
            if hit.size:
                return np.stack([f[f"/entry/data/module_{k:02d}"][hit[0]]
                                 for k in range(1, parts + 1)])
    raise FileNotFoundError(f"frame {frame_id} not in the raw files under {data_root}")


def write_png(path: Path, image: np.ndarray, radial: np.ndarray, intensity: np.ndarray,
              sigma: np.ndarray, frame_id: int, unit: str) -> Path:
    """One stitched frame (log scale) beside its integrated profile with ±sigma."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    step = max(1, image.shape[1] // 1200)  # a readable PNG, not 12 Mpixel
    shown = image[::step, ::step].astype(np.float32)
    fig, (ax_img, ax_prof) = plt.subplots(1, 2, figsize=(15, 5.2),
                                          gridspec_kw={"width_ratios": [1.6, 1]})
    vmax = np.percentile(shown[shown > 0], 99.5) if np.any(shown > 0) else 1.0
    im = ax_img.imshow(np.log1p(shown), cmap="magma", vmin=0, vmax=np.log1p(vmax))
    ax_img.set_title(f"stitched frame {frame_id} ({image.shape[0]}x{image.shape[1]}, "
                     "log counts)")
    ax_img.set_xlabel(f"column (pixels / {step})")
    ax_img.set_ylabel(f"row (pixels / {step})")
    fig.colorbar(im, ax=ax_img, fraction=0.03, label="log(1 + counts)")
    valid = sigma > 0
    ax_prof.plot(radial[valid], intensity[valid], lw=0.8, color="C0", label="I")
    ax_prof.fill_between(radial[valid], (intensity - sigma)[valid], (intensity + sigma)[valid],
                         color="C0", alpha=0.3, label="±σ (Poisson)")
    ax_prof.set_xlabel(unit.replace("^-1", "$^{-1}$").replace("_", " "))
    ax_prof.set_ylabel("intensity (counts / solid angle)")
    ax_prof.set_title(f"integrated profile, frame {frame_id}")
    ax_prof.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def make_png(spec: Any, data_root: Path, frame_id: int) -> Path:
    """Stitch a recorded raw frame again and plot it beside its recorded profile."""
    from asapo_hpc.pipeline.results import read_profiles
    from asapo_hpc.pipeline.workers import load_layout
    from asapo_hpc.workers.stitch import Stitcher

    layout = load_layout(spec.detector, spec.base_dir)
    raw = read_raw_frame(data_root, "raw", "default", frame_id, layout.n_parts)
    image = Stitcher(layout, large_pixels=True, output="input")(raw)
    prof = read_profiles(data_root, BEAMTIME, "profiles", "default")
    k = int(np.flatnonzero(prof.ids == frame_id)[0])
    unit = spec.stage("azint").options.get("unit", "q_nm^-1")
    return write_png(data_root / "demo.png", image, prof.radial[k], prof.intensity[k],
                     prof.sigma[k], frame_id, unit)


def run_demo(frames: int = DEFAULT_FRAMES, rate: float = 0.0,
             data_root: str | Path = "./asapo_demo", npt: int = 1000,
             stitch_instances: int = 1, out: Any = sys.stdout,
             compression: str = "bslz4") -> dict[str, Any]:
    """Run the demo; returns paths and figures (also printed to ``out``)."""
    from asapo_hpc.pipeline import run_pipeline
    from asapo_hpc.pipeline.results import stage_latencies

    root = Path(data_root)
    spec = demo_spec(frames, rate, root, npt, stitch_instances, compression)
    raw = spec.source("raw")
    frame_bytes = raw.part_nbytes * raw.parts
    print(f"asapo-hpc demo: {frames} Lambda 9M frames ({frame_bytes / 1e6:.1f} MB each) -> "
          f"stitch -> azint; data in {spec.data_root}", file=out, flush=True)
    bar = ProgressLine(frames, frame_bytes)
    started = time.monotonic()
    try:
        result = run_pipeline(spec, on_tick=bar)
    finally:
        bar.close()
    catalog = spec.data_root / "catalog.sqlite"
    latencies = stage_latencies(catalog, "profiles", "default")
    span = trace_span(catalog, "profiles", "default")
    for line in summary_lines(result, latencies, frames, frame_bytes, span):
        print(line, file=out)
    png = make_png(spec, spec.data_root, max(1, (frames + 1) // 2))
    files = {name: result.files(name) for name in ("raw", "profiles")}
    for name, paths in files.items():
        print(f"{name} HDF5: {paths[0] if paths else '(none)'}"
              + (f" (+{len(paths) - 1} more)" if len(paths) > 1 else ""), file=out)
    print(f"PNG: {png}", file=out)
    print(f"done in {time.monotonic() - started:.1f} s", file=out, flush=True)
    return {"result": result, "latencies": latencies, "png": png, "files": files}


def run(args: argparse.Namespace) -> int:
    """0 on success, 1 when a stage failed (named on stderr)."""
    from asapo_hpc.errors import AsapoError

    try:
        run_demo(args.frames, args.rate, args.data_root, args.npt, args.stitch_instances,
                 compression=args.compression)
    except AsapoError as exc:
        print(f"asapo-hpc demo: {exc}", file=sys.stderr)
        return 1
    return 0
