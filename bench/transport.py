"""Moving data between two Python processes: the shared-memory ring against its peers.

Run from the repository root::

    python -m bench.transport [--only a,b] [--repeats 3] [--small-count N] [--large-count N]
                              [--reference NAME] [--json PATH] [--plugin MODULE] [--list]

Workloads: ``small`` = 1 KiB messages, one per call; ``large`` = 18 MiB frames (one Lambda 9M
frame, 12·512·1536 uint16). Every producer copies one prepared source message into the
transport per send; every consumer calls ``Workload.touch`` on each message where the
transport delivered it (large: one uint16 per 4 KiB page; small: the first byte) and the
harness checks the sum. The rate is measured in the consumer from the first message to the
last ((count - 1) messages over that interval), so process start and connection set-up are
excluded; each (peer, workload) runs ``--repeats`` times, interleaved, and the median run is
reported with its ratio to the ``--reference`` peer. The table goes to stdout, everything
(every run, machine, settings) to JSON. Nothing is asserted: failures are reported.

Processes are started with the 'spawn' context: both sides attach to the transport by name
as separate programs do in production (fork would hand the child the parent's mappings and
sockets for free), the parent owns helper threads (Queue feeders) that fork must not copy,
and the ring's cffi extension starts from a clean interpreter. Spawn's start-up cost lies
outside the measured interval.

The peer contract (see bench/_transport_api.py)
-----------------------------------------------
A peer is a ``Peer(name, description, setup, producer, consumer, teardown, workloads)``
registered with ``register_peer``. All functions are module-level (spawn pickles them by name).

- ``setup(workload, mp_context, tmpdir) -> (channel, handle)`` runs in the parent. It creates
  what both sides share (shared memory, queues from ``mp_context``, a socket path inside
  ``tmpdir``) and returns ``channel`` (pickled to both children) and ``handle`` (kept in the
  parent for teardown).
- ``producer(channel, workload, start)`` runs in the producer process: attach/connect, build
  the source with ``workload.make_source()``, call ``start()`` once (it returns when both
  sides are ready), send ``workload.count`` messages, each a fresh copy of the source (or,
  for reserve/commit, a copy into the reserved space), then flush and detach.
- ``consumer(channel, workload, start) -> ConsumerReport`` runs in the consumer process:
  attach, ``start()``, receive ``workload.count`` messages calling ``workload.touch`` on each,
  and return ``ConsumerReport(first_ns, last_ns, received, checksum)`` with
  ``time.perf_counter_ns()`` read right after the first message and after the last one.
- ``teardown(handle)`` runs in the parent after every run, success or not: unlink what
  setup created. The harness also kills leftover children and deletes ``tmpdir``.
- ``workloads`` names the workloads the peer supports; ``workload.depth`` is the number of
  messages in flight every peer should allow (ring slots, queue bound, high-water mark).

Adding the asapo_hpc ring: write ``bench/ring_peers.py`` (imported automatically when it
exists; other modules via ``--plugin``) that calls ``register_peer`` once per variant, e.g.
``asapo-ring`` (send), ``asapo-ring-reserve`` (reserve/commit), ``asapo-ring-batch64``
(batch calls: the producer and consumer loops move 64 descriptors per call, still
``workload.count`` messages and one ``touch`` per message).
"""

from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: make `bench` importable like `python -m bench.transport`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._machine import probe_and_print  # noqa: E402
from bench._transport_api import PEERS, ConsumerReport, Peer, Workload  # noqa: E402

BUILTIN_PEERS = "bench._transport_peers"
AUTO_PLUGINS = ("bench.ring_peers",)  # imported when present: the lead's ring variants
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "transport.json"
FRAME_SHAPE = (12, 512, 1536)
START_TIMEOUT_S = 60.0


def make_workloads(small_count: int, large_count: int) -> dict[str, Workload]:
    frame_bytes = 2 * FRAME_SHAPE[0] * FRAME_SHAPE[1] * FRAME_SHAPE[2]
    return {
        "small": Workload("small", 1024, small_count, depth=1024),
        "large": Workload("large", frame_bytes, large_count, depth=8, frame_shape=FRAME_SHAPE),
    }


# --- one run: two spawned children, synchronised start -----------------------------------


def _child_main(role: str, fn: Any, channel: Any, workload: Workload, barrier: Any, conn: Any):
    """Entry point of a child: run one side, send ("ok", report) or ("error", traceback)."""
    try:
        result = fn(channel, workload, lambda: barrier.wait(START_TIMEOUT_S))
        conn.send(("ok", asdict(result) if isinstance(result, ConsumerReport) else None))
    except BaseException:  # report everything, including KeyboardInterrupt, to the parent
        conn.send(("error", f"{role}: {traceback.format_exc()}"))
        raise SystemExit(1) from None
    finally:
        conn.close()


def _stop(processes: list[Any], *, failed: bool) -> None:
    """Join every child; terminate, then kill, the ones that do not leave.

    After a failure the survivors may be blocked for good (in open(), at the barrier, on a
    queue), so they are terminated at once instead of being given time to finish.
    """
    for proc in processes:
        proc.join(timeout=0.5 if failed else 30)
    for proc in processes:
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
            proc.join()


def _collect(children: dict[str, tuple[Any, Any]], barrier: Any, timeout: float) -> dict:
    """Wait for both children's messages; on an error or the timeout, abort the run."""
    replies: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    while len(replies) < len(children):
        pending = {role: c for role, c in children.items() if role not in replies}
        ready = mp_connection.wait(
            [conn for _, conn in pending.values()] + [p.sentinel for p, _ in pending.values()],
            timeout=max(0.0, deadline - time.monotonic()),
        )
        if not ready:
            barrier.abort()
            raise TimeoutError(f"run did not finish in {timeout:.0f} s (waiting: {list(pending)})")
        for role, (proc, conn) in pending.items():
            if conn in ready or conn.poll():
                try:
                    status, payload = conn.recv()
                except EOFError:
                    status, payload = "error", f"{role}: exited with code {proc.exitcode}"
                if status == "error":
                    barrier.abort()
                    raise RuntimeError(payload)
                replies[role] = payload
            elif proc.sentinel in ready:
                barrier.abort()
                proc.join(timeout=1)  # reap it, so that its exit code is known
                raise RuntimeError(f"{role}: died with exit code {proc.exitcode}, no report")
    return replies


def run_once(peer: Peer, workload: Workload, ctx: Any, timeout: float) -> dict[str, Any]:
    """One run of ``peer`` on ``workload``; returns rates and checks, never raises for a
    failed transport (the error is in the result)."""
    tmpdir = tempfile.mkdtemp(prefix="asapo_bench_")
    processes: list[Any] = []
    handle: Any = None
    set_up = failed = False
    try:
        channel, handle = peer.setup(workload, ctx, tmpdir)
        set_up = True
        barrier = ctx.Barrier(2)
        children = {}
        for role, fn in (("consumer", peer.consumer), ("producer", peer.producer)):
            receiver, sender = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=_child_main,
                args=(role, fn, channel, workload, barrier, sender),
                name=f"bench-{peer.name}-{role}",
                daemon=True,
            )
            proc.start()
            sender.close()  # the child holds the only writing end: EOF means it is gone
            processes.append(proc)
            children[role] = (proc, receiver)
        replies = _collect(children, barrier, timeout)
        return _rates(ConsumerReport(**replies["consumer"]), workload)
    except Exception as exc:  # a broken peer must not stop the comparison
        failed = True
        return {"error": f"{type(exc).__name__}: {exc}"}
    except BaseException:  # Ctrl-C: clean up, then stop
        failed = True
        raise
    finally:
        _stop(processes, failed=failed)
        if set_up:
            _teardown(peer, handle)
        shutil.rmtree(tmpdir, ignore_errors=True)


def _teardown(peer: Peer, handle: Any) -> None:
    try:
        peer.teardown(handle)
    except Exception as exc:
        print(f"warning: teardown of {peer.name} failed: {exc}", file=sys.stderr)


def _rates(report: ConsumerReport, workload: Workload) -> dict[str, Any]:
    seconds = (report.last_ns - report.first_ns) / 1e9
    messages = report.received - 1  # the interval starts at the first message
    msgs_per_s = messages / seconds if seconds > 0 else float("inf")
    expected = workload.count * workload.touch(workload.make_source())
    return {
        "seconds": seconds,
        "msgs_per_s": msgs_per_s,
        "gb_per_s": msgs_per_s * workload.nbytes / 1e9,
        "received": report.received,
        "data_ok": report.received == workload.count and report.checksum == expected,
    }


# --- the comparison -----------------------------------------------------------------------


def load_peers(plugins: list[str]) -> list[str]:
    """Import the built-in peers, the automatic plugins that exist, and ``plugins``."""
    notes = []
    importlib.import_module(BUILTIN_PEERS)
    for module in AUTO_PLUGINS:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # the plugin exists but its own import failed
                notes.append(f"plugin {module} not loaded: {exc}")
        except Exception as exc:
            notes.append(f"plugin {module} not loaded: {type(exc).__name__}: {exc}")
    for module in plugins:
        importlib.import_module(module)  # asked for explicitly: let its error show
    return notes


def compare(
    peers: list[Peer], workloads: list[Workload], repeats: int, timeout: float
) -> list[dict[str, Any]]:
    """Run every (peer, workload) ``repeats`` times, the repeats interleaved across peers."""
    ctx = mp.get_context("spawn")
    rows = {
        (p.name, w.name): {"peer": p.name, "workload": w.name, "runs": []}
        for w in workloads
        for p in peers
        if w.name in p.workloads
    }
    for repeat in range(repeats):
        for workload in workloads:
            for peer in peers:
                if (peer.name, workload.name) not in rows:
                    continue
                result = run_once(peer, workload, ctx, timeout)
                rows[(peer.name, workload.name)]["runs"].append(result)
                print(
                    f"  [{repeat + 1}/{repeats}] {workload.name:5} {peer.name:24} {_brief(result)}",
                    file=sys.stderr,
                    flush=True,
                )
    return [_summarise(row) for row in rows.values()]


def _brief(result: dict[str, Any]) -> str:
    if "error" in result:
        return "FAILED " + result["error"].strip().splitlines()[-1]
    return f"{result['msgs_per_s']:12,.0f} msgs/s  {result['gb_per_s']:7.3f} GB/s"


def _summarise(row: dict[str, Any]) -> dict[str, Any]:
    good = [r for r in row["runs"] if "error" not in r]
    row["failed_runs"] = len(row["runs"]) - len(good)
    row["data_ok"] = bool(good) and all(r["data_ok"] for r in good)
    if good:
        median = statistics.median_low(sorted(r["msgs_per_s"] for r in good))
        run = next(r for r in good if r["msgs_per_s"] == median)
        row["median_msgs_per_s"] = run["msgs_per_s"]
        row["median_gb_per_s"] = run["gb_per_s"]
    return row


def add_ratios(rows: list[dict[str, Any]], reference: str) -> None:
    """Ratio of every row's median rate to the reference peer's, per workload."""
    base = {r["workload"]: r.get("median_msgs_per_s") for r in rows if r["peer"] == reference}
    for row in rows:
        ref, rate = base.get(row["workload"]), row.get("median_msgs_per_s")
        row["ratio_to_reference"] = rate / ref if ref and rate is not None else None


def format_table(rows: list[dict[str, Any]], workloads: list[Workload], reference: str) -> str:
    lines = []
    for workload in workloads:
        lines.append(
            f"\n{workload.name}: {workload.count} × {workload.nbytes:,} B, depth "
            f"{workload.depth}, median of runs; ratio to {reference}"
        )
        lines.append(f"  {'transport':24} {'msgs/s':>12} {'GB/s':>8} {'× ref':>7}  note")
        for row in (r for r in rows if r["workload"] == workload.name):
            lines.append("  " + _table_line(row))
    return "\n".join(lines)


def _table_line(row: dict[str, Any]) -> str:
    if "median_msgs_per_s" not in row:
        return f"{row['peer']:24} {'failed':>12}"
    ratio = row["ratio_to_reference"]
    note = [] if row["data_ok"] else ["DATA MISMATCH"]
    if row["failed_runs"]:
        note.append(f"{row['failed_runs']} run(s) failed")
    return (
        f"{row['peer']:24} {row['median_msgs_per_s']:12,.0f} {row['median_gb_per_s']:8.3f} "
        f"{'-' if ratio is None else f'{ratio:7.2f}':>7}  {', '.join(note)}"
    )


def machine_info() -> dict[str, Any]:
    import numpy

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "numpy": numpy.__version__,
        "loadavg_at_start": os.getloadavg(),
    }
    try:
        import zmq

        info["pyzmq"], info["libzmq"] = zmq.__version__, zmq.zmq_version()
    except ImportError:
        pass
    return info


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated peer names (default: all)")
    parser.add_argument("--workloads", default="small,large", help="small,large (default both)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--small-count", type=int, default=200_000)
    parser.add_argument("--large-count", type=int, default=100)
    parser.add_argument("--reference", default="pyzmq-ipc", help="peer the ratios refer to")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per run")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--plugin", action="append", default=[], help="module registering peers")
    parser.add_argument("--list", action="store_true", help="list the peers and exit")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.small_count < 2 or args.large_count < 2:
        parser.error("--repeats must be >= 1 and the counts >= 2 (a rate needs two messages)")
    return args


def select_peers(only: str | None) -> list[Peer]:
    if not only:
        return list(PEERS.values())
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise SystemExit(f"unknown peer(s) {unknown}; known: {sorted(PEERS)}")
    return [PEERS[n] for n in names]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    notes = load_peers(args.plugin)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if args.list:
        for peer in PEERS.values():
            print(f"{peer.name:24} {','.join(peer.workloads):12} {peer.description}")
        return 0
    peers = select_peers(args.only)
    all_workloads = make_workloads(args.small_count, args.large_count)
    workloads = [all_workloads[n.strip()] for n in args.workloads.split(",") if n.strip()]
    started = time.time()
    probes = [probe_and_print()]
    rows = compare(peers, workloads, args.repeats, args.timeout)
    probes.append(probe_and_print())
    add_ratios(rows, args.reference)
    print(format_table(rows, workloads, args.reference))
    write_json(args, rows, workloads, peers, notes, started, probes)
    # bench/plot.py, imported only now: spawned children re-import this module, not matplotlib
    importlib.import_module("bench.plot").draw("transport", args.json)
    return 0


def write_json(args, rows, workloads, peers, notes, started, probes) -> None:
    document = {
        "benchmark": "transport",
        "started_unix": started,
        "wall_seconds": time.time() - started,
        "machine": {**machine_info(), "handoff_probe_before": probes[0],
                    "handoff_probe_after": probes[1]},
        "settings": {
            "repeats": args.repeats,
            "reference": args.reference,
            "start_method": "spawn",
            "rate": "(received - 1) / (last - first), measured in the consumer",
            "median": "median_low of the runs' msgs/s",
        },
        "workloads": [asdict(w) for w in workloads],
        "peers": {p.name: {"description": p.description, **p.details} for p in peers},
        "notes": notes,
        "results": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=2, default=str) + "\n")
    os.replace(tmp, args.json)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    sys.exit(main())
