"""Draw the benchmarks' results: one PNG beside each bench/results/<name>.json.

    python bench/plot.py [NAME ...] [--dir DIR]

Without names it draws every benchmark whose JSON exists (transport, handoff, azint,
row_updates, stitch, sink, catalog, pipeline) and says which it skipped. Each benchmark also
calls ``draw`` for its own result when it has written it. Every PNG is titled with the
machine the JSON records (or says it records none), when the JSON was written, and the
command that made it: the one recorded in the JSON, or one rebuilt from the settings the
JSON holds (marked so).
Targets are dashed lines: from the JSON where it holds them, else from docs/benchmarks.md.
Only the Agg canvas is used (no display, no pyplot state), so it runs anywhere.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import EngFormatter

RESULTS = Path(__file__).resolve().parent / "results"

OURS, PEER, REFERENCE, TARGET = "tab:blue", "0.65", "0.35", "tab:red"
BAR_HEIGHT = 0.38  # per bar in inches: figures grow with the number of bars
REBUILT = "   [command rebuilt from the JSON]"

# Targets the JSON files do not hold, as docs/benchmarks.md states them (the issues' goals).
TRANSPORT_TARGETS = {  # workload -> (factor, peer it multiplies, label)
    "small": [(2.0, "pyzmq-ipc", "target 2× pyzmq, one message per call"),
              (5.0, "pyzmq-ipc", "target 5× pyzmq, batch calls")],
    "large": [(4.0, "pyzmq-ipc", "target 4× pyzmq"),
              (1.5, "shm-ring+queues", "target 1.5× shm ring + index queues")],
}
HANDOFF_REFERENCE = "shm + index queues"  # the peer handoff.py divides by
HANDOFF_TARGET = 100_000  # frames/s through the ring
AZINT_FLOOR_TARGET = 0.5  # fraction of the bandwidth floor
STITCH_TARGET = 0.70  # u16 -> u16 time of memcpy / time of stitch
SINK_TARGET = 0.90  # writer with bslz4 / a hand-written h5py writer of the same chunks
SINK_TARGET_PEERS = [  # docs: against ready-made chunks; sink.py also has the same-cores peer
    ("direct_chunk_precompressed", "ready-made chunks"),
    ("compress_2_threads_then_direct_chunk", "compress + write, same cores"),
]
CATALOG_INSERT_TARGET = 100_000  # records/s


# --- shared pieces -----------------------------------------------------------------------


def rate_text(value: float, unit: str) -> str:
    """(484469, "msgs/s") -> '484 k msgs/s': rates span 10 to 10^7, and three digits are
    what a reader compares."""
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix} {unit}"
    return f"{value:.3g} {unit}"


def new_figure(rows: int, cols: int = 1, bars: int = 4, width: float = 11.0) -> Figure:
    """A figure whose height follows the number of bars it will show."""
    fig = Figure(figsize=(width, 1.9 + BAR_HEIGHT * bars), layout="constrained")
    FigureCanvasAgg(fig)  # Agg, whatever backend the environment would pick
    fig.subplots(rows, cols, squeeze=False)
    return fig


def hbars(ax: Axes, labels: Sequence[str], values: Sequence[float], texts: Sequence[str],
          colors: Sequence[str], log: bool = False,
          runs: Sequence[Sequence[float]] | None = None) -> None:
    """Horizontal bars, first label on top, each with its text just past its end; ``runs``
    (one list per bar) adds a tick per run, so that the spread around the median shows."""
    ys = list(range(len(labels)))
    ax.barh(ys, values, color=colors, height=0.7)
    ax.set_yticks(ys, labels)
    ax.invert_yaxis()
    ends = list(values)
    for y, xs in zip(ys, runs or [], strict=False):
        ax.plot(xs, [y] * len(xs), "|", color="black", ms=14)
        ends[y] = max([ends[y], *xs])  # the text goes past the last run, not over it
    top = max([v for v in ends if v > 0], default=1.0)
    if log:
        ax.set_xscale("log")
        low = min([v for v in values if v > 0], default=1.0)
        ax.set_xlim(low / 3, top * 30)  # room for the texts on a log axis
    else:
        ax.set_xlim(0, top * 1.6)
    for y, end, text in zip(ys, ends, texts, strict=True):
        ax.text(end if end > 0 else ax.get_xlim()[0], y, "  " + text, va="center", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)


def rate_axis(ax: Axes, unit: str) -> None:
    """Tick labels as 500 k, 1 M: plain numbers in the millions are hard to read."""
    ax.xaxis.set_major_formatter(EngFormatter(sep=" "))
    ax.set_xlabel(unit)


def legend(ax: Axes, **kwargs: Any) -> None:
    """Beside the axes: inside, it would cover the texts at the bars' ends."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, **kwargs)


def target_line(ax: Axes, x: float, label: str, color: str = TARGET, ls: str = "--") -> None:
    ax.axvline(x, ls=ls, lw=1.2, color=color, label=label)


def target_tick(ax: Axes, x: float, y: float, label: str | None) -> None:
    """A dashed target across one bar only: for targets that differ from bar to bar."""
    ax.plot([x, x], [y - 0.45, y + 0.45], ls="--", lw=1.5, color=TARGET, label=label)


def median_low(values: Sequence[float]) -> float:
    return statistics.median_low(sorted(values))


def written_at(doc: dict, path: Path) -> str:
    stamp = doc.get("started_unix") or path.stat().st_mtime
    return dt.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M")


def load_text(load: Any) -> str:
    return f"load {load[0]:.2f}" if isinstance(load, list) and load else ""


def join(*parts: Any) -> str:
    return ", ".join(str(p) for p in parts if p not in (None, ""))


# --- transport ---------------------------------------------------------------------------


def transport_figure(doc: dict) -> Figure:
    rows, ref = doc["results"], doc["settings"]["reference"]
    workloads = {w["name"]: w for w in doc.get("workloads", [])}
    names = list(dict.fromkeys(r["workload"] for r in rows))  # first-seen order
    fig = new_figure(len(names), bars=len(rows) + 2 * len(names))
    for ax, name in zip(fig.axes, names, strict=True):
        transport_axes(ax, [r for r in rows if r["workload"] == name], ref,
                       workloads.get(name, {"name": name}), doc["settings"].get("repeats"))
    return fig


def transport_axes(ax: Axes, rows: list[dict], ref: str, workload: dict,
                   repeats: int | None) -> None:
    frames = workload.get("frame_shape") is not None or workload["name"] == "large"
    key, unit = ("median_gb_per_s", "GB/s") if frames else ("median_msgs_per_s", "messages/s")
    values = [r.get(key, 0.0) for r in rows]
    hbars(ax, [r["peer"] for r in rows], values, [transport_text(r, ref, unit) for r in rows],
          [peer_color(r["peer"], ref) for r in rows])
    medians = {r["peer"]: r[key] for r in rows if key in r}
    targets = TRANSPORT_TARGETS.get(workload["name"], [])
    for (factor, peer, label), ls in zip(targets, ["--", ":", "-."], strict=False):
        if peer in medians:  # a target relative to a peer that did not run has no place
            target_line(ax, factor * medians[peer], label, ls=ls)
    size = f"{workload['count']:,} × {workload['nbytes']:,} B" if "count" in workload else ""
    ax.set_title(join(f"{workload['name']}: {size}".rstrip(": "),
                      f"median of {repeats} runs" if repeats else "", f"ratio to {ref}"),
                 fontsize=10, loc="left")
    rate_axis(ax, unit)
    if ax.get_legend_handles_labels()[0]:
        legend(ax)


def transport_text(row: dict, ref: str, unit: str) -> str:
    if "median_msgs_per_s" not in row:
        return f"failed ({row.get('failed_runs', '?')} runs)"
    value = (f"{row['median_gb_per_s']:.2f} GB/s" if unit == "GB/s"
             else rate_text(row["median_msgs_per_s"], "msgs/s"))
    ratio = row.get("ratio_to_reference")
    notes = [] if row.get("data_ok", True) else ["DATA MISMATCH"]
    if row.get("failed_runs"):
        notes.append(f"{row['failed_runs']} run(s) failed")
    return join(value, f"{ratio:.2f}× {ref}" if ratio is not None else "", *notes)


def peer_color(name: str, reference: str) -> str:
    if name.startswith("asapo"):
        return OURS
    return REFERENCE if name == reference else PEER


def transport_machine(doc: dict) -> str:
    m = doc.get("machine", {})
    return join(m.get("platform"), f"{m['cpus']} CPUs" if "cpus" in m else "",
                f"Python {m['python']}" if "python" in m else "",
                load_text(m.get("loadavg_at_start")))


def transport_command(doc: dict) -> str:
    s = doc["settings"]
    counts = {w["name"]: w["count"] for w in doc.get("workloads", [])}
    parts = ["python -m bench.transport", f"--repeats {s['repeats']}",
             f"--workloads {','.join(counts)}"]
    parts += [f"--{name}-count {count}" for name, count in counts.items()]
    return " ".join([*parts, f"--reference {s['reference']}"]) + REBUILT


# --- handoff -----------------------------------------------------------------------------


def handoff_figure(doc: dict) -> Figure:
    rates: dict[str, list[float]] = doc["rates"]
    medians = {name: statistics.median(v) for name, v in rates.items() if v}
    ref = medians.get(HANDOFF_REFERENCE)
    fig = new_figure(1, bars=len(medians) + 1)
    ax = fig.axes[0]
    texts = [join(rate_text(v, "frames/s"), f"{v / ref:.2f}× {HANDOFF_REFERENCE}" if ref else "")
             for v in medians.values()]
    hbars(ax, list(medians), list(medians.values()), texts,
          [peer_color(n, HANDOFF_REFERENCE) for n in medians], runs=[rates[n] for n in medians])
    target_line(ax, HANDOFF_TARGET, f"target {rate_text(HANDOFF_TARGET, 'frames/s')} (ring)")
    rate_axis(ax, "frame slots handed over per second (bar: median, |: each run)")
    ax.set_title(f"18 MiB frame slots, {doc.get('count', '?'):,} per run, "
                 "ratio to shm + index queues", fontsize=10, loc="left")
    legend(ax)
    return fig


def handoff_command(doc: dict) -> str:
    runs = max((len(v) for v in doc["rates"].values()), default=0)
    return f"python bench/handoff.py --count {doc.get('count')} --repeats {runs}" + REBUILT


# --- azint -------------------------------------------------------------------------------


def azint_figure(doc: dict) -> Figure:
    rows = doc["rows"]
    fig = new_figure(1, 2, bars=3 * len(rows) + 1, width=14)
    azint_times(fig.axes[0], rows, doc.get("pyfai_ms", {}))
    rates = doc.get("stream_read_rates_GBps") or (
        {"fastest": doc["stream_read_GBps"]} if "stream_read_GBps" in doc else {})
    azint_floor(fig.axes[1], rows, rates)
    return fig


def azint_times(ax: Axes, rows: list[dict], pyfai: dict[str, float]) -> None:
    labels, values, texts, colors = [], [], [], []
    for r in rows:
        peer = next((k for k, v in pyfai.items() if v == r["pyfai_ms"]), "pyFAI")
        labels += [f"{r['method']}: ours", f"{r['method']}: pyFAI {peer}"]
        values += [r["ours_ms"], r["pyfai_ms"]]
        texts += [f"{r['ours_ms']:.2f} ms, {r['speedup']:.0f}× pyFAI "
                  f"(target {r['target_speedup']:.0f}×)", f"{r['pyfai_ms']:.0f} ms"]
        colors += [OURS, PEER]
    hbars(ax, labels, values, texts, colors, log=True)
    for i, r in enumerate(rows):  # target time = pyFAI's / target speed-up, one per method
        target_tick(ax, r["pyfai_ms"] / r["target_speedup"], 2 * i,
                    "target: pyFAI ms / target speed-up" if i == 0 else None)
    ax.set_xlabel("ms per frame (log), end to end, median")
    ax.set_title("time per frame, ours vs pyFAI", fontsize=10, loc="left")
    legend(ax)


def azint_floor(ax: Axes, rows: list[dict], rates: dict[str, float]) -> None:
    """Per method: end to end and kernel alone against the fastest read of the run, and end
    to end against the one-thread read (the ceiling ../shared/BASELINES.md documents)."""
    fast = max(rates.values()) if rates else None
    one = rates.get("numpy_sum_1t")
    bars = [("end to end", "fraction_of_floor", OURS, fast),
            ("kernel alone", "kernel_fraction_of_floor", "tab:cyan", fast),
            ("end to end, 1-thread read", "fraction_of_1t_read_floor", "tab:olive", one)]
    labels, values, texts, colors = [], [], [], []
    for r in rows:
        for what, key, color, rate in bars:
            if key not in r:
                continue
            labels.append(f"{r['method']}: {what}")
            values.append(100 * r[key])
            at = f" at {rate:.1f} GB/s" if rate else ""
            texts.append(f"{100 * r[key]:.0f} %{at}")
            colors.append(color)
    hbars(ax, labels, values, texts, colors)
    ax.set_xlim(0, max(100.0, max(values) * 1.3))
    target_line(ax, 100 * AZINT_FLOOR_TARGET, f"target {100 * AZINT_FLOOR_TARGET:.0f} %")
    ax.set_xlabel("% of the floor: bytes the pass reads / streaming-read rate")
    ax.set_title("floor time / measured time", fontsize=10, loc="left")
    legend(ax)


def azint_machine(doc: dict) -> str:
    return join(doc.get("machine"), f"{doc['cpus']} CPUs" if "cpus" in doc else "",
                f"Numba {doc['numba_threads']} threads" if "numba_threads" in doc else "",
                f"{doc['stream_read_GBps']:.1f} GB/s read" if "stream_read_GBps" in doc else "")


def azint_command(doc: dict) -> str:
    return (f"python bench/azint.py --repeats {doc['repeats']} --size {doc['frame_shape'][0]}"
            + REBUILT)


# --- row updates -------------------------------------------------------------------------


def row_updates_figure(doc: dict) -> Figure:
    """ns per update: the bare loop by row width (L1-sized tables of 1000 rows, random rows
    and runs of 3), then the integration passes per update, and the uint16 split pass's
    arithmetic alone per pixel (what is left without its row updates)."""
    bare = [r for r in doc["bare"] if r["rows"] == 1000]
    fig = new_figure(1, bars=len(bare) + len(doc["passes"]) + 1)
    labels = [f"bare loop, {r['bytes']} B rows, {r['pattern']}" for r in bare]
    values = [r["ns"] for r in bare]
    texts = [f"{r['ns']:.3f} ns ({r['table_kb']:.0f} kB table)" for r in bare]
    colors = [PEER] * len(bare)
    for p in doc["passes"]:
        labels.append(f"pass: {p['pass_']}")
        values.append(p["ns"])
        texts.append(f"{p['ns']:.3f} ns per update ({p['ms']:.2f} ms a frame)")
        colors.append(OURS)
    hbars(fig.axes[0], labels, values, texts, colors)
    fig.axes[0].set_xlabel("ns per row update, one thread")
    fig.axes[0].set_title("the split pass spends most of its time in its arithmetic: compare "
                          "it with its arithmetic alone", fontsize=10, loc="left")
    return fig


def row_updates_command(doc: dict) -> str:
    return f"python bench/row_updates.py --repeats {doc.get('repeats', 7)}" + REBUILT


# --- stitch ------------------------------------------------------------------------------


def stitch_figure(doc: dict) -> Figure:
    rows = [r for r in doc["rows"] if not r["case"].startswith("memcpy")]
    fig = new_figure(1, bars=len(rows) + 1)
    ax = fig.axes[0]
    threads = sorted({thread_count(r["case"]) for r in rows})
    palette = dict(zip(threads, ["tab:blue", "tab:green", "tab:purple", "tab:orange"],
                       strict=False))
    texts = [f"{r['ratio_to_memcpy']:.2f}  (traffic {r['traffic_ratio']:.2f}, "
             f"{r['median_ms']:.2f} ms)" for r in rows]
    hbars(ax, [r["case"] for r in rows], [r["ratio_to_memcpy"] for r in rows], texts,
          [palette.get(thread_count(r["case"]), OURS) for r in rows])
    ax.set_xlim(0, max(1.5, ax.get_xlim()[1]))
    target_line(ax, 1.0, "memcpy of the same bytes, same threads", color="0.3")
    target_line(ax, STITCH_TARGET, f"target {STITCH_TARGET:.2f} (u16 → u16)")
    handles, _ = ax.get_legend_handles_labels()
    legend(ax, handles=handles + [Patch(color=c, label=t.replace("thr", "thread(s)"))
                                  for t, c in palette.items()])
    ax.set_xlabel("memcpy time / stitch time (1.0 = memcpy speed for the input bytes)")
    ax.set_title(f"{stitch_memcpy_text(doc['rows'])}; median of {doc.get('rounds', '?')} "
                 "rounds", fontsize=10, loc="left")
    return fig


def thread_count(case: str) -> str:
    return case[case.rindex("[") + 1:-1] if "[" in case else "?"


def stitch_memcpy_text(rows: list[dict]) -> str:
    peers = [r for r in rows if r["case"].startswith("memcpy uint16")]
    return "memcpy uint16: " + ", ".join(
        f"{thread_count(r['case'])} {r['median_ms']:.2f} ms" for r in peers)


def stitch_machine(doc: dict) -> str:
    return join(doc.get("machine"), f"{doc['cpus']} CPUs" if "cpus" in doc else "")


def stitch_command(doc: dict) -> str:
    threads = sorted({thread_count(r["case"]) for r in doc["rows"]} - {"copyto"},
                     key=lambda t: int(t.split()[0]) if t.split()[0].isdigit() else 0)
    counts = ",".join(t.split()[0] for t in threads)
    return f"python bench/stitch.py --rounds {doc.get('rounds')} --threads {counts}" + REBUILT


# --- sink --------------------------------------------------------------------------------


SINK_RATIO_TEXT = {  # case -> (ratio key in the JSON, short name of the peer)
    "writer_bslz4": [("writer_bslz4 / direct_chunk", "direct chunk"),
                     ("writer_bslz4 / compress_only", "compress only"),
                     ("writer_bslz4 / compress+direct_chunk", "compress+write")],
    "writer_none": [("writer_none / h5py_chunked", "h5py chunked")],
}


def sink_figure(doc: dict) -> Figure:
    writes = doc.get("writes", {})
    bars = sum(len(w["GB_per_s_raw"]) for w in writes.values()) + 2 * len(doc.get("reads", {}))
    fig = new_figure(len(writes) + 1, bars=bars + 3 * len(writes), width=13)
    for ax, (label, w) in zip(fig.axes, writes.items(), strict=False):
        sink_writes(ax, label, w)
    sink_reads(fig.axes[-1], doc.get("reads", {}))
    return fig


def sink_writes(ax: Axes, label: str, w: dict) -> None:
    rates: dict[str, float] = w["GB_per_s_raw"]
    texts = []
    for case, rate in rates.items():
        ratios = [f"{w['ratios'][k]:.2f}× {peer}" for k, peer in SINK_RATIO_TEXT.get(case, [])
                  if k in w["ratios"]]
        texts.append(join(f"{rate:.2f} GB/s", *ratios))
    hbars(ax, list(rates), list(rates.values()), texts,
          [OURS if c.startswith("writer") else PEER for c in rates])
    peers = [(case, text) for case, text in SINK_TARGET_PEERS if case in rates]
    for (case, text), ls in zip(peers, ["--", ":"], strict=False):
        target_line(ax, SINK_TARGET * rates[case],
                    f"target: writer_bslz4 ≥\n{SINK_TARGET:.0%} of {text}", ls=ls)
    if peers:
        legend(ax)
    ax.set_title(f"writes, {label}: {w['frames']} frames × {w['parts']} part(s), bslz4 ratio "
                 f"{w['bslz4_ratio']}, flush + fsync included", fontsize=10, loc="left")
    ax.set_xlabel("GB/s of raw frames (median)")


def sink_reads(ax: Axes, reads: dict) -> None:
    labels, values, texts, colors = [], [], [], []
    for codec, r in reads.items():
        ms = r["ms_per_frame"]
        labels.append(f"{codec}: FrameReader by location")
        values.append(ms["reader_by_location"])
        texts.append(f"{ms['reader_by_location']:.3f} ms, "
                     f"{r['ratio reader / h5py (speed)']:.2f}× h5py speed")
        colors.append(OURS)
        if "get_by_id_from_disk" in ms:  # results of 2026-11-24 09:30 and later
            labels.append(f"{codec}: get_by_id (catalog + read)")
            values.append(ms["get_by_id_from_disk"])
            texts.append(f"{ms['get_by_id_from_disk']:.3f} ms, "
                         f"{r['ratio get_by_id / h5py (speed)']:.2f}× h5py speed")
            colors.append(OURS)
        labels.append(f"{codec}: plain h5py")
        values.append(ms["h5py_plain_read"])
        texts.append(f"{ms['h5py_plain_read']:.3f} ms")
        colors.append(PEER)
    hbars(ax, labels, values, texts, colors)
    ax.set_title("read one 1536×512 frame, random order (lower is better)", fontsize=10,
                 loc="left")
    ax.set_xlabel("ms per frame (median)")


def sink_machine(doc: dict) -> str:
    m = doc.get("machine", {})
    return join(f"{m['cpus']} CPUs" if "cpus" in m else "",
                f"Python {m['python']}" if "python" in m else "",
                f"h5py {m['h5py']}" if "h5py" in m else "",
                f"HDF5 {m['hdf5']}" if "hdf5" in m else "",
                m.get("platform", "(platform not recorded)"))


def sink_command(doc: dict) -> str:
    if doc.get("command"):  # recorded since 2026-11-24 09:30
        return doc["command"]
    writes = doc.get("writes", {})
    frames = writes.get("module_1536x512", {}).get("frames")
    parts = ["python bench/sink.py", f"--frames {frames}" if frames else ""]
    if "lambda9m_12x1536x512" not in writes:
        parts.append("--no-9m")
    return " ".join(p for p in parts if p) + " (repeats not recorded)" + REBUILT


# --- catalog -----------------------------------------------------------------------------


CATALOG_OPERATIONS = [  # (label, our key, plain sqlite3 key or None)
    ("record inserts/s", "insert_catalog", "insert_plain"),
    ("get_by_id/s", "get_catalog", "get_plain"),
    ("group_next/s", "group_next_catalog", None),
]


def catalog_figure(doc: dict) -> Figure:
    median = doc["median"]
    labels, values, texts, colors, insert_row = [], [], [], [], None
    for label, ours, plain in CATALOG_OPERATIONS:
        if ours not in median:
            continue
        if ours == "insert_catalog":
            insert_row = len(labels)
        ratio = f"{median[ours] / median[plain]:.2f}× plain" if median.get(plain) else ""
        labels.append(f"{label}: Catalog")
        values.append(median[ours])
        texts.append(join(rate_text(median[ours], "ops/s"), ratio))
        colors.append(OURS)
        if plain and plain in median:
            labels.append(f"{label}: plain sqlite3")
            values.append(median[plain])
            texts.append(rate_text(median[plain], "ops/s"))
            colors.append(PEER)
    fig = new_figure(1, bars=len(labels) + 1)
    ax = fig.axes[0]
    hbars(ax, labels, values, texts, colors)
    if insert_row is not None:
        target_tick(ax, CATALOG_INSERT_TARGET, insert_row,
                    f"target {rate_text(CATALOG_INSERT_TARGET, 'records/s')} inserted")
        legend(ax)
    p = doc.get("params", {})
    ax.set_title(f"{p.get('records', '?'):,} records in batches of {p.get('batch', '?')}, "
                 f"median of {p.get('repeats', '?')}", fontsize=10, loc="left")
    rate_axis(ax, "operations per second (median)")
    return fig


def catalog_machine(doc: dict) -> str:
    return join("machine not recorded", f"sqlite {doc['sqlite_version']}"
                if "sqlite_version" in doc else "")


def catalog_command(doc: dict) -> str:
    p = doc.get("params", {})
    return "python bench/catalog.py " + " ".join(f"--{k} {v}" for k, v in p.items()) + REBUILT


# --- pipeline ----------------------------------------------------------------------------


def pipeline_figure(doc: dict) -> Figure:
    fig = new_figure(1, 2, bars=6, width=14)
    pipeline_rates(fig.axes[0], doc)
    pipeline_cpu(fig.axes[1], doc.get("runs", {}))
    return fig


def pipeline_rates(ax: Axes, doc: dict) -> None:
    fps, runs = doc["fps"], doc.get("runs", {})
    names = list(fps)
    texts = [join(f"{fps[n]:.1f} frames/s",
                  f"{fps[n] / fps['plain']:.2f}× plain" if n != "plain" and "plain" in fps
                  else "") for n in names]
    hbars(ax, names, [fps[n] for n in names], texts,
          [OURS if n != "plain" else PEER for n in names],
          runs=[[r["fps"] for r in runs.get(n, [])] for n in names])
    if "plain" in fps and doc.get("target_ratio"):
        target_line(ax, doc["target_ratio"] * fps["plain"],
                    f"target {doc['target_ratio']:g}× plain")
        ax.set_xlim(0, max(ax.get_xlim()[1], doc["target_ratio"] * fps["plain"] * 1.15))
        legend(ax)
    same = doc.get("profiles_allclose")
    ax.set_title(join(f"{doc.get('frames', '?')} frames, median of {doc.get('repeats', '?')}",
                      f"profiles identical: {same}" if same is not None else ""),
                 fontsize=10, loc="left")
    ax.set_xlabel("frames per second, first frame in → last profile out (| = each run)")


def pipeline_cpu(ax: Axes, runs: dict[str, list[dict]]) -> None:
    """CPU per frame of each process, stacked, for each side's median run: on 2 cores
    ours is bound by the sum, the plain pipeline by its slowest process."""
    colors: dict[str, str] = {}  # one colour per kind of process: azint.0 and azint.1 alike
    names = [n for n in runs if runs[n]]
    medians = {n: sorted(runs[n], key=lambda r: r["fps"])[(len(runs[n]) - 1) // 2]
               for n in names}
    widest = max([sum(r.get("cpu_ms_per_frame", {}).values()) for r in medians.values()],
                 default=1.0)
    for y, name in enumerate(names):
        left = 0.0
        for process, ms in medians[name].get("cpu_ms_per_frame", {}).items():
            color = colors.setdefault(process.split(".")[0], f"C{len(colors)}")
            ax.barh(y, ms, left=left, color=color, height=0.6, edgecolor="white")
            if ms > 0.07 * widest:  # a number only where it fits; the legend names them all
                ax.text(left + ms / 2, y, f"{process}\n{ms:.1f}", ha="center", va="center",
                        fontsize=7)
            left += ms
        ax.text(left, y, f"  {left:.1f} ms", va="center", fontsize=8)
    legend(ax, handles=[Patch(color=c, label=k) for k, c in colors.items()])
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, ax.get_xlim()[1] * 1.15)
    ax.set_xlabel("CPU ms per frame, by process (median run)")
    ax.set_title("where the CPU goes", fontsize=10, loc="left")
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)


def pipeline_machine(doc: dict) -> str:
    m = doc.get("machine", {})
    return join(f"{m['cpus']} CPUs" if "cpus" in m else "",
                f"Python {m['python']}" if "python" in m else "",
                load_text(m.get("loadavg_before")) + " before" if m.get("loadavg_before")
                else "", "(platform not recorded)")


def pipeline_command(doc: dict) -> str:
    return doc.get("command") or "python bench/pipeline.py" + REBUILT


# --- drawing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Bench:
    figure: Callable[[dict], Figure]
    machine: Callable[[dict], str]
    command: Callable[[dict], str]


def no_machine(doc: dict) -> str:
    return "machine not recorded"


BENCHES: dict[str, Bench] = {
    "transport": Bench(transport_figure, transport_machine, transport_command),
    "handoff": Bench(handoff_figure, no_machine, handoff_command),
    "azint": Bench(azint_figure, azint_machine, azint_command),
    "row_updates": Bench(row_updates_figure, azint_machine, row_updates_command),
    "stitch": Bench(stitch_figure, stitch_machine, stitch_command),
    "sink": Bench(sink_figure, sink_machine, sink_command),
    "catalog": Bench(catalog_figure, catalog_machine, catalog_command),
    "pipeline": Bench(pipeline_figure, pipeline_machine, pipeline_command),
}


def draw(name: str, json_path: str | Path | None = None) -> Path | None:
    """Draw benchmark ``name`` from ``json_path`` (default bench/results/<name>.json) into
    the same path with .png; returns it, or None (with a message) when the JSON is missing."""
    bench = BENCHES[name]
    path = Path(json_path) if json_path is not None else RESULTS / f"{name}.json"
    if not path.is_file():
        print(f"{name}: no {path}, skipped")
        return None
    doc = json.loads(path.read_text())
    fig = bench.figure(doc)
    width = int(fig.get_figwidth() * 13)  # characters of 10-point text across the figure
    lines = [f"{name} — {bench.machine(doc)} — results of {written_at(doc, path)}",
             bench.command(doc)]
    fig.suptitle("\n".join(textwrap.fill(line, width) for line in lines), fontsize=10)
    png = path.with_suffix(".png")
    fig.savefig(png, dpi=100)
    print(f"drew {png}")
    return png


def draw_all(results: Path = RESULTS, names: Sequence[str] = ()) -> dict[str, Path | None]:
    """Draw ``names`` (default: every benchmark) from ``results``; a JSON the drawing fails
    on (an older schema, say) is reported and skipped, the others are still drawn."""
    drawn: dict[str, Path | None] = {}
    for name in names or BENCHES:
        try:
            drawn[name] = draw(name, results / f"{name}.json")
        except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError) as exc:
            print(f"{name}: could not draw {results / f'{name}.json'}: "
                  f"{type(exc).__name__}: {exc}", file=sys.stderr)
            drawn[name] = None
    return drawn


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to draw (default all: {', '.join(BENCHES)})")
    parser.add_argument("--dir", type=Path, default=RESULTS, help="folder of the JSON files")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(BENCHES))
    if unknown:  # checked here: argparse's choices reject an empty nargs="*" list
        parser.error(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHES)}")
    drawn = draw_all(args.dir, args.names)
    failed = [n for n, png in drawn.items() if png is None and (args.dir / f"{n}.json").is_file()]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
