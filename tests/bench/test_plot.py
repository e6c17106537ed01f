"""bench/plot.py draws a PNG from a JSON of each benchmark's schema and skips missing ones.

The documents below copy the structure each bench's JSON writer produces (see the writer in
bench/<name>.py), with small made-up numbers: the real benchmarks are far too slow here.
"""

from __future__ import annotations

import importlib.util
import json
import struct
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def plot() -> ModuleType:
    """bench/plot.py loaded from its file: ``bench`` is not an installed package."""
    spec = importlib.util.spec_from_file_location("bench_plot_under_test",
                                                  ROOT / "bench" / "plot.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def transport_row(peer: str, workload: str, rate: float, nbytes: int, ratio: float | None,
                  ) -> dict:
    run = {"seconds": 0.1, "msgs_per_s": rate, "gb_per_s": rate * nbytes / 1e9,
           "received": 1000, "data_ok": True}
    return {"peer": peer, "workload": workload, "runs": [run, run], "failed_runs": 0,
            "data_ok": True, "median_msgs_per_s": rate, "median_gb_per_s": run["gb_per_s"],
            "ratio_to_reference": ratio}


def transport_doc() -> dict:
    frame = 2 * 12 * 512 * 1536
    rows = [transport_row("pyzmq-ipc", "small", 5e5, 1024, 1.0),
            transport_row("asapo-ring-batch", "small", 2e6, 1024, 4.0),
            transport_row("pyzmq-ipc", "large", 100, frame, 1.0),
            transport_row("shm-ring+queues", "large", 600, frame, 6.0),
            transport_row("asapo-ring", "large", 1000, frame, 10.0),
            {"peer": "mp-queue", "workload": "small", "failed_runs": 2, "data_ok": False,
             "ratio_to_reference": None,
             "runs": [{"error": "RuntimeError: boom"}, {"error": "RuntimeError: boom"}]}]
    return {
        "benchmark": "transport", "started_unix": 1_795_499_807.5, "wall_seconds": 10.0,
        "machine": {"python": "3.11.7", "platform": "Linux-x86_64", "cpus": 2,
                    "numpy": "2.0", "loadavg_at_start": [0.5, 0.4, 0.3]},
        "settings": {"repeats": 2, "reference": "pyzmq-ipc", "start_method": "spawn",
                     "rate": "...", "median": "..."},
        "workloads": [{"name": "small", "nbytes": 1024, "count": 1000, "depth": 1024,
                       "frame_shape": None},
                      {"name": "large", "nbytes": frame, "count": 10, "depth": 8,
                       "frame_shape": [12, 512, 1536]}],
        "peers": {"pyzmq-ipc": {"description": "pyzmq"}}, "notes": [], "results": rows,
    }


def azint_row(method: str, ours: float, pyfai: float, target: float) -> dict:
    return {"method": method, "ours_ms": ours, "pyfai_ms": pyfai, "speedup": pyfai / ours,
            "target_speedup": target, "kernel_ms": {"1": ours * 1.8, "2": ours * 0.95},
            "threads": 2, "bytes_per_frame": 37_748_736, "floor_ms": ours / 2,
            "fraction_of_floor": 0.5, "kernel_fraction_of_floor": 0.55,
            "csr_bytes_per_frame": 37_748_736, "fraction_of_csr_floor": 0.5,
            "fraction_of_1t_read_floor": 0.5, "mpix_per_s": 3000.0}


def azint_doc() -> dict:
    pyfai = {"no/histogram/cython": 110.0, "no/csr/cython": 210.0,
             "bbox/csr/cython": 140.0, "full/csr/cython": 130.0}
    return {"frame_shape": [3072, 3072], "npt": 1000, "unit": "2th_deg", "repeats": 3,
            "numba_threads": 2, "cpus": 2, "machine": "x86_64", "stream_read_GBps": 26.5,
            "stream_read_rates_GBps": {"numpy_sum_1t": 26.5, "numba_sum_2t": 22.5},
            "pyfai_ms": pyfai,
            "rows": [azint_row("no", 2.6, 110.0, 15.0), azint_row("bbox", 7.5, 140.0, 10.0),
                     azint_row("full", 8.0, 130.0, 10.0)]}


def stitch_row(case: str, ms: float, memcpy_ms: float, peer: str) -> dict:
    return {"case": case, "median_ms": ms, "input_GB_per_s": 0.0189 / ms,
            "ratio_to_memcpy": memcpy_ms / ms, "memcpy_peer": peer,
            "ratio_to_copyto": 1.4 / ms, "moved_bytes": 37_748_736,
            "traffic_ratio": 1.1 * memcpy_ms / ms, "frames_per_s": 1e3 / ms}


def stitch_doc() -> dict:
    rows = [stitch_row("memcpy uint16 [copyto]", 1.4, 1.4, "memcpy uint16 [copyto]")]
    for n, memcpy in ((1, 1.37), (2, 0.92)):
        peer = f"memcpy uint16 [{n} thr]"
        rows += [stitch_row(peer, memcpy, memcpy, peer),
                 stitch_row(f"u16 -> u16 [{n} thr]", memcpy / 0.66, memcpy, peer),
                 stitch_row(f"u16 -> f32 large pixels [{n} thr]", memcpy / 0.4, memcpy, peer)]
    return {"what": "stitch", "stitched_shape": [2480, 4708],
            "stitched_shape_large_pixels": [2484, 4712], "rounds": 5,
            "machine": "Linux-x86_64", "cpus": 2, "rows": rows}


def sink_writes(parts: int) -> dict:
    rates = {"writer_bslz4": 1.0, "direct_chunk_precompressed": 4.1,
             "compress_only_2_threads": 1.15, "compress_2_threads_then_direct_chunk": 1.05,
             "writer_none": 0.43, "h5py_chunked_plain": 1.09}
    return {"parts": parts, "frames": 20, "raw_bytes": 31_457_280, "bslz4_ratio": 4.46,
            "median_s": {k: 0.0315 / v for k, v in rates.items()}, "GB_per_s_raw": rates,
            "ratios": {"writer_bslz4 / direct_chunk": 1.0 / 4.1,
                       "writer_bslz4 / compress_only": 1.0 / 1.15,
                       "writer_bslz4 / compress+direct_chunk": 1.0 / 1.05,
                       "writer_none / h5py_chunked": 0.43 / 1.09}}


def sink_doc() -> dict:
    reads = {codec: {"ms_per_frame": {"reader_by_location": ms, "h5py_plain_read": ms * 1.1},
                     "ratio reader / h5py (speed)": 1.1}
             for codec, ms in (("bslz4", 0.78), ("none", 0.3))}
    return {"machine": {"cpus": 2, "python": "3.11.7", "h5py": "3.16.0", "hdf5": "2.0.0"},
            "writes": {"module_1536x512": sink_writes(1), "lambda9m_12x1536x512": sink_writes(12)},
            "reads": reads}


def catalog_doc() -> dict:
    median = {"insert_catalog": 115_000.0, "insert_plain": 156_000.0, "get_catalog": 44_000.0,
              "get_plain": 65_000.0, "group_next_catalog": 8_500.0}
    return {"bench": "catalog", "sqlite_version": "3.40.1",
            "params": {"records": 1000, "batch": 100, "lookups": 500, "repeats": 1},
            "median": median, "ratios": {"insert": 115 / 156, "get_by_id": 44 / 65},
            "runs": [median]}


def pipeline_doc() -> dict:
    def run(fps: float, cpu: dict[str, float]) -> dict:
        return {"fps": fps, "streaming_s": 200 / fps, "wall_s": 8.0, "cpu_ms_per_frame": cpu}

    return {"command": "python bench/pipeline.py --frames 200 --repeats 2",
            "machine": {"cpus": 2, "python": "3.11.7", "loadavg_before": [0.8, 0.5, 0.4],
                        "loadavg_after": [1.5, 0.6, 0.4]},
            "frames": 200, "repeats": 2, "azint_from_modules": False,
            "raw_recording": "excluded in both", "fps": {"asapo": 110.0, "plain": 19.0},
            "ratio": 110 / 19, "target_ratio": 10.0,
            "runs": {"asapo": [run(100.0, {"simulate": 2.5, "stitch.0": 3.6, "azint.0": 7.0,
                                           "node": 1.5}),
                               run(120.0, {"simulate": 2.4, "stitch.0": 3.5, "azint.0": 6.9,
                                           "node": 1.4})],
                     "plain": [run(18.0, {"simulate": 3.7, "stitch": 15.5, "azint": 48.0,
                                          "main": 0.6}),
                               run(20.0, {"simulate": 3.8, "stitch": 15.4, "azint": 48.3,
                                          "main": 0.6})]},
            "profiles_allclose": True, "max_rel_diff": 0.0, "stitch_equal": True}


DOCS = {
    "transport": transport_doc,
    "handoff": lambda: {"count": 1000, "rates": {
        "asapo-ring reserve/commit": [250_000.0, 200_000.0, 320_000.0],
        "shm + index queues": [36_000.0, 35_000.0, 38_000.0]}},
    "azint": azint_doc,
    "row_updates": lambda: {
        "repeats": 3, "started_unix": 1_795_499_807.5,
        "bare": [{"bytes": b, "rows": rows, "table_kb": rows * b / 1024, "pattern": pattern,
                  "ns": 0.4 + b / 64} for b in (8, 16, 32, 64) for rows in (256, 1000)
                 for pattern in ("random", "runs of 3")],
        "passes": [{"pass_": "no split, quads (32 B, 1 per 4 px)", "ms": 2.2,
                    "updates": 2_359_296, "ns": 0.93, "ns_per_pixel": 0.23},
                   {"pass_": "bbox, uint16 (32 B, 1 per px)", "ms": 5.9,
                    "updates": 9_437_184, "ns": 0.62, "ns_per_pixel": 0.62}]},
    "stitch": stitch_doc,
    "sink": sink_doc,
    "catalog": catalog_doc,
    "pipeline": pipeline_doc,
}


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG's IHDR chunk, after checking the signature."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def test_every_benchmark_has_a_document_here(plot: ModuleType) -> None:
    assert set(DOCS) == set(plot.BENCHES)


@pytest.mark.parametrize("name", sorted(DOCS))
def test_draws_a_png_beside_the_json(plot: ModuleType, tmp_path: Path, name: str) -> None:
    source = tmp_path / f"{name}.json"
    source.write_text(json.dumps(DOCS[name]()))
    png = plot.draw(name, source)
    assert png == tmp_path / f"{name}.png"
    width, height = png_size(png)
    assert width >= 600 and height >= 250
    assert png.stat().st_size > 15_000  # bars, texts and titles, not an empty canvas


def test_redraw_all_skips_missing_files(plot: ModuleType, tmp_path: Path, capsys) -> None:
    for name in ("catalog", "handoff"):
        (tmp_path / f"{name}.json").write_text(json.dumps(DOCS[name]()))
    assert plot.main(["--dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["catalog.png", "handoff.png"]
    out = capsys.readouterr().out
    assert "transport: no " in out and "skipped" in out
    assert plot.draw("azint", tmp_path / "azint.json") is None


def test_a_json_of_another_schema_is_reported_not_fatal(plot: ModuleType, tmp_path: Path,
                                                        capsys) -> None:
    (tmp_path / "catalog.json").write_text(json.dumps({"bench": "catalog"}))  # no "median"
    (tmp_path / "handoff.json").write_text(json.dumps(DOCS["handoff"]()))
    assert plot.main(["--dir", str(tmp_path), "catalog", "handoff"]) == 1
    assert (tmp_path / "handoff.png").is_file() and not (tmp_path / "catalog.png").exists()
    assert "catalog: could not draw" in capsys.readouterr().err
