"""Sink benchmark: the StreamWriter and FrameReader against plain h5py, in one run.

(a) writer with bitshuffle-LZ4 vs ``write_direct_chunk`` of chunks compressed beforehand,
    vs the thread pool's compression alone (the ceiling on these cores), and vs a
    hand-written h5py writer that compresses on the same cores and writes direct chunks
    (the "given the cores available" peer);
(b) writer uncompressed vs plain h5py writing the same frames chunked per frame;
(c) read-back by location (FrameReader), and by id through the catalog the way
    ``Consumer.get_by_id`` falls back to disk (``DiskReader.read``: lookup, then read), vs
    a plain h5py read of the same frame.
Writes include the final flush, close and fsync. Frames are Poisson noise (bslz4 ratio ~4).
Prints a table of medians and ratios and writes bench/results/sink.json.

    PYTHONPATH=. /work/venv/bin/python bench/sink.py [--frames 300] [--repeats 3] [--no-9m]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from importlib import import_module
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np

from asapo_hpc.catalog import Catalog, MessageRecord
from asapo_hpc.client.disk import DiskReader
from asapo_hpc.sink import FrameReader, SinkSettings, StreamWriter
from asapo_hpc.sink.codecs import Compression, encode_chunk
from asapo_hpc.sink.datafile import fsync_path

MODULE = (1536, 512)
POOL = 8  # distinct frames, cycled


def make_frames(parts: int, seed: int = 0) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    # A slowly varying background with Poisson noise: bslz4 ratio ~4, like real data.
    background = 2.0 + np.outer(np.hanning(MODULE[0]), np.hanning(MODULE[1])) * 6
    return [[rng.poisson(background).astype(np.uint16) for _ in range(parts)]
            for _ in range(POOL)]


def run_writer(folder: Path, frames: list, count: int, compression: str) -> None:
    settings = SinkSettings(compression=compression, frames_per_file=count + 1,
                            master_file=False)
    with StreamWriter(folder, "bench", "det", f"w{time.monotonic_ns()}", settings) as writer:
        for i in range(count):
            writer.submit(i + 1, frames[i % POOL])
        writer.flush()


def _h5py_file(folder: Path, parts: int, count: int, filters: dict, fixed: bool):
    path = folder / f"plain{time.monotonic_ns()}.h5"
    f = h5py.File(path, "w", libver="latest")
    shape = (count if fixed else 0, *MODULE)
    dsets = [f.create_dataset(f"module_{k}", shape=shape, maxshape=(None, *MODULE),
                              chunks=(1, *MODULE), dtype=np.uint16, **filters)
             for k in range(parts)]
    return path, f, dsets


def _append_direct_chunks(folder: Path, parts: int, frames_chunks: Iterable[list]) -> None:
    """Append each frame's bslz4 chunks the way a hand-written h5py writer would."""
    path, f, dsets = _h5py_file(folder, parts, 0, dict(hdf5plugin.Bitshuffle(cname="lz4")),
                                fixed=False)
    for i, chunks in enumerate(frames_chunks):
        for dset, chunk in zip(dsets, chunks, strict=True):
            dset.resize(i + 1, axis=0)
            dset.id.write_direct_chunk((i, 0, 0), chunk)
    f.close()
    fsync_path(path)


def run_direct_chunks(folder: Path, chunks: list, count: int) -> None:
    """Chunks compressed beforehand: what writing alone reaches."""
    _append_direct_chunks(folder, len(chunks[0]), (chunks[i % POOL] for i in range(count)))


def run_compress_then_direct_chunks(folder: Path, frames: list, count: int,
                                    threads: int) -> None:
    """The same with compression on the cores available: chunks compressed in a thread pool
    and written as they come (pool.map keeps the order, so compressing frame i+1 overlaps
    writing frame i)."""
    with ThreadPoolExecutor(threads) as pool:
        _append_direct_chunks(folder, len(frames[0]), pool.map(
            lambda i: [encode_chunk(p, Compression.BSLZ4) for p in frames[i % POOL]],
            range(count)))


def run_plain_h5py(folder: Path, frames: list, count: int) -> None:
    """Uncompressed, chunked per frame, preallocated: h5py's best case."""
    path, f, dsets = _h5py_file(folder, len(frames[0]), count, {}, fixed=True)
    for i in range(count):
        for dset, part in zip(dsets, frames[i % POOL], strict=True):
            dset[i] = part
    f.close()
    fsync_path(path)


def run_compress_only(frames: list, count: int, threads: int) -> None:
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda i: [encode_chunk(p, Compression.BSLZ4) for p in frames[i % POOL]],
                      range(count)))


def timed(fn, repeats: int, cleanup=None) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if cleanup:
            cleanup()
    return times


def bench_writes(root: Path, parts: int, count: int, repeats: int) -> dict:
    frames = make_frames(parts)
    chunks = [[encode_chunk(p, Compression.BSLZ4) for p in frame] for frame in frames]
    raw_bytes = count * parts * MODULE[0] * MODULE[1] * 2
    ratio = sum(f.nbytes for fr in frames for f in fr) / sum(len(c) for cs in chunks for c in cs)
    cases = {
        "writer_bslz4": lambda: run_writer(root, frames, count, "bslz4"),
        "direct_chunk_precompressed": lambda: run_direct_chunks(root, chunks, count),
        "compress_only_2_threads": lambda: run_compress_only(frames, count, 2),
        "compress_2_threads_then_direct_chunk": lambda: run_compress_then_direct_chunks(
            root, frames, count, 2),
        "writer_none": lambda: run_writer(root, frames, count, "none"),
        "h5py_chunked_plain": lambda: run_plain_h5py(root, frames, count),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}

    def wipe():
        for entry in root.iterdir():
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

    for _ in range(repeats):  # interleaved, so drift hits every case alike
        for name, fn in cases.items():
            times[name] += timed(fn, 1, wipe)
    rates = {name: raw_bytes / statistics.median(t) / 1e9 for name, t in times.items()}
    return {"parts": parts, "frames": count, "raw_bytes": raw_bytes,
            "bslz4_ratio": round(ratio, 2), "median_s": {k: statistics.median(v)
                                                         for k, v in times.items()},
            "GB_per_s_raw": rates,
            "ratios": {
                "writer_bslz4 / direct_chunk": rates["writer_bslz4"]
                / rates["direct_chunk_precompressed"],
                "writer_bslz4 / compress_only": rates["writer_bslz4"]
                / rates["compress_only_2_threads"],
                "writer_bslz4 / compress+direct_chunk": rates["writer_bslz4"]
                / rates["compress_2_threads_then_direct_chunk"],
                "writer_none / h5py_chunked": rates["writer_none"] / rates["h5py_chunked_plain"],
            }}


def bench_reads(root: Path, count: int, repeats: int) -> dict:
    frames = make_frames(1)
    return {codec: _bench_read_codec(root, frames, count, repeats, codec)
            for codec in ("bslz4", "none")}


def _bench_read_codec(root: Path, frames: list, count: int, repeats: int,
                      compression: str) -> dict:
    settings = SinkSettings(compression=compression, master_file=False)
    with StreamWriter(root, "bench", "det", f"read_{compression}", settings) as writer:
        futures = [writer.submit(i + 1, frames[i % POOL]) for i in range(count)]
        locations = [f.result() for f in futures]
    order = np.random.default_rng(1).permutation(count)
    catalog_path = _catalog_of(root / f"catalog_{compression}.sqlite", locations,
                               frames[0][0].nbytes)
    by_id_reader = DiskReader(catalog_path)
    reader = FrameReader()
    plain = h5py.File(locations[0].file_path, "r")
    dset = plain[locations[0].dataset_paths[0]]
    reader.read(locations[0])  # open and cache the file handle, as plain h5py has it

    def by_location():
        for i in order:
            reader.read(locations[i])

    def by_id():
        for i in order:
            by_id_reader.read("det", "bench", int(i) + 1)

    def by_h5py():
        for i in order:
            dset[i]

    times = {"reader_by_location": [], "get_by_id_from_disk": [], "h5py_plain_read": []}
    by_id_reader.read("det", "bench", 1)  # the same warm file handle
    for _ in range(repeats):
        times["reader_by_location"] += timed(by_location, 1)
        times["get_by_id_from_disk"] += timed(by_id, 1)
        times["h5py_plain_read"] += timed(by_h5py, 1)
    assert np.array_equal(reader.read(locations[order[0]]), dset[order[0]])
    assert np.array_equal(by_id_reader.read("det", "bench", int(order[0]) + 1).array(np.uint16),
                          dset[order[0]].reshape(-1))
    by_id_reader.close()
    reader.close()
    plain.close()
    per_frame = {k: statistics.median(v) / count * 1e3 for k, v in times.items()}
    return {"ms_per_frame": per_frame,
            "ratio reader / h5py (speed)": per_frame["h5py_plain_read"]
            / per_frame["reader_by_location"],
            "ratio get_by_id / h5py (speed)": per_frame["h5py_plain_read"]
            / per_frame["get_by_id_from_disk"]}


def _catalog_of(path: Path, locations: list, nbytes: int) -> Path:
    """A catalog holding the written frames' records and locations, as a node's has."""
    catalog = Catalog(path)
    catalog.add_messages(MessageRecord("det", "bench", loc.message_id, f"f{loc.message_id}",
                                       nbytes, 0, file_path=loc.file_path,
                                       dataset_path=loc.dataset_paths[0],
                                       frame_index=loc.frame_index) for loc in locations)
    catalog.close()
    return path


def print_table(results: dict) -> None:
    for label, writes in results["writes"].items():
        print(f"\n== writes, {label}: {writes['frames']} frames, {writes['parts']} part(s) of "
              f"{MODULE[0]}x{MODULE[1]} uint16, bslz4 ratio {writes['bslz4_ratio']}")
        print(f"{'case':38s} {'median s':>9s} {'GB/s raw':>9s}")
        for name, rate in writes["GB_per_s_raw"].items():
            print(f"{name:38s} {writes['median_s'][name]:9.3f} {rate:9.2f}")
        for name, ratio in writes["ratios"].items():
            print(f"  {name:40s} {ratio:6.2f}")
    print("\n== reads by location, and by id through the catalog, vs plain h5py (one 1536x512 "
          "frame, random order)")
    print(f"{'codec':8s} {'reader ms':>10s} {'by id ms':>10s} {'h5py ms':>10s} "
          f"{'reader ratio':>13s} {'by id ratio':>12s}")
    for codec, r in results["reads"].items():
        ms = r["ms_per_frame"]
        print(f"{codec:8s} {ms['reader_by_location']:10.3f} {ms['get_by_id_from_disk']:10.3f} "
              f"{ms['h5py_plain_read']:10.3f} {r['ratio reader / h5py (speed)']:13.2f} "
              f"{r['ratio get_by_id / h5py (speed)']:12.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300, help="1536x512 frames per case")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-9m", action="store_true", help="skip the 12-module case")
    parser.add_argument("--dir", default=None, help="scratch folder (default: a temp folder)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "sink.json"))
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="asapo_sink_bench_", dir=args.dir))
    try:
        results = {"command": shlex.join(["python", "bench/sink.py", *sys.argv[1:]]),
                   "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                               "h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version,
                               "platform": platform.platform()},
                   "writes": {"module_1536x512": bench_writes(root, 1, args.frames,
                                                              args.repeats)},
                   "reads": bench_reads(root, min(args.frames, 100), args.repeats)}
        if not args.no_9m:
            results["writes"]["lambda9m_12x1536x512"] = bench_writes(
                root, 12, max(args.frames // 12, 4), args.repeats)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print_table(results)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")
    # bench/plot.py: module "plot" when run as python bench/sink.py (bench/ is sys.path[0])
    import_module(f"{__package__}.plot" if __package__ else "plot").draw("sink", args.out)


if __name__ == "__main__":
    main()
